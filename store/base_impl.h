/* base_impl.h : helpers shared by featstore's own files; not public. */
#ifndef FST_BASE_IMPL_H
#define FST_BASE_IMPL_H

#include "fst_base.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#  define FST_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#  define FST_PRINTF(a, b)
#endif

/* fst__fail() :
 * Record a detail message for this thread (printf format) and return `s`,
 * so that `return fst__fail(FST_EIO, "%s: %s", path, strerror(errno));`
 * reads naturally. The message is truncated at 1023 bytes with "...". */
fst_status fst__fail(fst_status s, const char *fmt, ...) FST_PRINTF(2, 3);

/* fst__failpre() :
 * Prefix this thread's current detail message with a formatted context
 * ("features.h5: " + old detail) and return `s`. */
fst_status fst__failpre(fst_status s, const char *fmt, ...) FST_PRINTF(2, 3);

/* s = (e); on anything but FST_OK jump to the function's `out:` label. */
#define FST_TRY(e) do { s = (e); if (s != FST_OK) goto out; } while (0)

/* A "cannot happen" bug: abort with the location, in every build type. */
#define FST_ASSERT(c) do {                                              \
    if (!(c)) fst__assert_fail(#c, __FILE__, __LINE__);                 \
} while (0)
_Noreturn void fst__assert_fail(const char *what, const char *file, int line);

#ifdef __cplusplus
}
#endif
#endif
