/* kernels/module_abi.h : what a backend module (libfst_cuda.so) and the
 * program that loads it share; private to kernels/.
 *
 * A module links none of featstore's libraries and needs no symbol of the
 * program that loads it: it exports one function, FST_MODULE_ENTRY, and
 * everything it uses from featstore comes through the table of host
 * functions that function is given. So it loads in any program that links
 * featstore (the featstore command, a test, a Python extension), whether or
 * not that program exports its symbols, and its error details land in the
 * host's one per-thread slot (fst_errdetail()).
 *
 * Versioning: FST_MODULE_ABI changes whenever fst_module_host,
 * fst_backend_ops, struct fst_backend, or a type they pass (fst_view,
 * fst_matches, fst_match_job, fst_match_opts, fst_status values) changes
 * layout or meaning. Host and module must have the same number; a module of
 * another featstore build is refused with both numbers, never called.
 */
#ifndef FST_MODULE_ABI_H
#define FST_MODULE_ABI_H

#include "backend_impl.h"

#include <stdarg.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FST_MODULE_ABI   1u
#define FST_MODULE_ENTRY "fst_module_entry"

/* The host's functions, each what the same-named featstore function does
 * (base_impl.h, backend_impl.h, fst_kernels.h), in the host's copy. */
typedef struct fst_module_host {
    uint32_t abi;               /* FST_MODULE_ABI of the host */
    uint32_t size;              /* sizeof(fst_module_host) in the host */
    /* fst__fail (prefix false) or fst__failpre (prefix true) */
    fst_status (*vfail)(fst_status s, bool prefix, const char *fmt, va_list ap);
    const char *(*errdetail)(void);
    void (*assert_fail)(const char *what, const char *file, int line);
    size_t (*dtype_size)(fst_dtype t);
    fst_status (*param_next)(const char **p, char *key, size_t key_len,
                             char *val, size_t val_len);
    fst_status (*match_check)(const fst_view *a, const fst_view *b,
                              fst_matches *out);
    const char *(*backend_name)(const fst_backend *be);
    fst_status (*match_reference)(const fst_view *a, const fst_view *b,
                                  const fst_match_opts *opts, fst_matches *out);
} fst_module_host;

/* fst_module_entry() (exported by the module as FST_MODULE_ENTRY) :
 * Hand the module the host's table and get its backend's ops. `host` must
 * stay valid while the module is loaded (the host's is static). Call once,
 * before any other use of the module.
 * @return the module's FST_MODULE_ABI. *ops is set only when it equals
 *         `host_abi` and host->size is at least the module's table size;
 *         else *ops is untouched and the module must not be used. */
typedef uint32_t (*fst_module_entry_fn)(uint32_t host_abi,
                                        const fst_module_host *host,
                                        const fst_backend_ops **ops);

#ifdef __cplusplus
}
#endif
#endif
