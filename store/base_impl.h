/* base_impl.h : helpers shared by featstore's own files; not public. */
#ifndef FST_BASE_IMPL_H
#define FST_BASE_IMPL_H

#include "fst_base.h"

#include <sys/types.h>

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

/* fst__fsync_path() :
 * fsync the file (dir false) or directory (dir true) at `path`. A directory
 * whose filesystem refuses fsync (EINVAL) is no failure.
 * @return FST_OK; FST_EFULL (ENOSPC, EDQUOT, or EIO on a full disk: see
 *         fst__fail_io()); FST_EIO. The detail names `path`. */
fst_status fst__fsync_path(const char *path, bool dir);

/* fst__fsync_parent() :
 * fsync the directory that holds `path`, making a create, rename or unlink
 * of `path` durable. Same returns as fst__fsync_path(). */
fst_status fst__fsync_parent(const char *path);

/* fst__remove_stale() :
 * Remove the siblings of `path` left by dead processes: files named
 * `<basename(path)><infix><pid><rest>` where <rest> is one of the strings
 * of `rests` (NULL-terminated; "" for nothing after the pid; a string
 * ending in '*' matches any <rest> that starts with the rest of it) and process
 * <pid> no longer exists (kill(pid, 0) fails with ESRCH), or is this
 * process when `own_is_stale` (it is about to create that name). Best
 * effort: nothing is reported. A pid from another PID namespace sharing the
 * directory would be misjudged; featstore does not support that. */
void fst__remove_stale(const char *path, const char *infix,
                       const char *const *rests, bool own_is_stale);

/* Free space below which fst__disk_full() calls a file system full
 * whatever the write needed: blocks for metadata, B-tree pages and the
 * file system's own reserve make a few MB the practical end. */
#define FST__DISK_SLACK ((uint64_t)4 << 20)

/* fst__disk_full() :
 * Whether the file system that holds `path` (asked through its directory,
 * so the file need not exist) has fewer than max(need, FST__DISK_SLACK)
 * bytes available to this process (statvfs: f_bavail * f_frsize, i.e.
 * without root's reserve). *avail (may be NULL) gets the bytes available.
 * false when statvfs fails. For telling a full disk behind an EIO: LMDB
 * reports a short write (what a full disk gives) as EIO. */
bool fst__disk_full(const char *path, uint64_t need, uint64_t *avail);

/* fst__errno_status() :
 * featstore's status for a system call's errno `err`: FST_EFULL for
 * ENOSPC and EDQUOT (no space, or the user's quota), FST_ENOMEM for ENOMEM,
 * FST_EIO for anything else. The one place errno becomes a status:
 * fst__fail_io() and the LMDB translation (fst__from_mdb()) use it. */
fst_status fst__errno_status(int err);

/* fst__fail_io() :
 * Record the failure of a write to `path` with system error `err` (an
 * errno, or LMDB's EIO for a short write) after a printf-formatted context
 * (which names the file), and return its status: FST_EFULL "<context>:
 * <strerror> (disk full)" for ENOSPC and EDQUOT, and for EIO when
 * fst__disk_full(path, need) says the file system is full ("<context>:
 * disk full (Input/output error; N kB left on its file system)"); FST_EIO
 * "<context>: <strerror(err)>" otherwise (FST_ENOMEM for ENOMEM). `path`
 * may be NULL: then EIO is not probed. Every writer of files uses it. */
fst_status fst__fail_io(int err, const char *path, uint64_t need,
                        const char *fmt, ...) FST_PRINTF(4, 5);

/* fst__file_map() :
 * Where this process maps the file open as `fd` from offset 0 over exactly
 * `size` bytes, found in /proc/self/maps (LMDB does not say where its map
 * is: MDB_envinfo.me_mapaddr is set only for MDB_FIXEDMAP). `inside` (may
 * be NULL) is an address known to lie in the mapping wanted, which tells
 * it from other mappings of the same file (a forked child holds its
 * parent's too). NULL if no such mapping is found or /proc cannot be read.
 * Without `inside`, of several, the lowest. */
void *fst__file_map(int fd, size_t size, const void *inside);

/* fst__in_child() :
 * Run fn(ctx, result) in a forked child process and return its status,
 * with its detail message as this thread's. For work after whose failure a
 * third-party library cannot exit cleanly (HDF5 1.10 after a failed
 * H5Fclose crashes or loops in its exit handler): the child ends with
 * _exit(), so whatever is left dies with it. fn must not use handles that
 * do not survive fork() (LMDB environments): it reopens by path.
 * `result` (result_len bytes, may be NULL/0) is the caller's buffer: fn
 * fills the child's copy of it, and its bytes come back into the caller's
 * whenever the child reported (success or fn's own error). A child that
 * dies of a signal (or exits without a result) gives FST_ECHILD naming
 * `what` and the signal; `result` is then untouched. */
fst_status fst__in_child(fst_status (*fn)(void *ctx, void *result), void *ctx,
                         void *result, size_t result_len, const char *what);

/* fst__in_child_watched() :
 * fst__in_child(), and while the child works the parent calls
 * watch(wctx, pid) about every 200 ms (watch may be NULL: fst__in_child());
 * when it returns true the child is killed with SIGKILL and the call
 * returns as for a child that died of a signal (FST_ECHILD). The watcher
 * decides on deadlines (a stalled child, a stop request not obeyed). */
fst_status fst__in_child_watched(fst_status (*fn)(void *ctx, void *result),
                                 void *ctx, void *result, size_t result_len,
                                 const char *what,
                                 bool (*watch)(void *wctx, pid_t pid),
                                 void *wctx);

/* fst__pair_key_part() :
 * hloc's part of a pair key for an image name (names_to_pair():
 * name.replace('/', '-')): the n bytes of name into out[0..n), each '/'
 * as '-'; no terminator is added. out may be name (in place). The one
 * place this rule is written: workers' fst_pair_key() and the matches.h5
 * writer both use it. */
void fst__pair_key_part(const char *name, size_t n, char *out);

/* ---- arrays (arrays.c) ---- */

/* fst__find_nonfinite16() / fst__find_nonfinite32() :
 * Index of the first NaN or Inf among n float16 (bits) / float32 values,
 * or n if there is none. Vectorised; no alignment needed. */
size_t fst__find_nonfinite16(const uint16_t *v, size_t n);
size_t fst__find_nonfinite32(const void *v, size_t n);

/* fst__copy_nonfinite16() / fst__copy_nonfinite32() :
 * Copy n float16 (bits) / float32 values from src to dst and say whether
 * any is NaN or Inf, in one pass (the record encoder's copy and check of
 * its input in one read). No alignment needed; src and dst must not
 * overlap. */
bool fst__copy_nonfinite16(void *restrict dst, const void *restrict src,
                           size_t n);
bool fst__copy_nonfinite32(void *restrict dst, const void *restrict src,
                           size_t n);

/* fst__transpose16() / fst__transpose32() :
 * dst (cols x rows) = transpose of src (rows x cols), both row-major,
 * elements of 2 / 4 bytes copied bit for bit (hloc's D x N descriptors to
 * the store's N x D, and back). SSE2 8 x 8 / 4 x 4 blocks where the build
 * has SSE2; no alignment needed; src and dst must not overlap. */
void fst__transpose16(const uint16_t *restrict src, uint16_t *restrict dst,
                      size_t rows, size_t cols);
void fst__transpose32(const uint32_t *restrict src, uint32_t *restrict dst,
                      size_t rows, size_t cols);

/* fst__transpose16_ld() / fst__transpose32_ld() :
 * The same on sub-matrices: dst[c * ldd + r] = src[r * lds + c] for
 * r < rows, c < cols (lds >= cols, ldd >= rows, in elements). The record
 * encoder uses it to transpose a D x N source a few keypoints at a time. */
void fst__transpose16_ld(const uint16_t *restrict src, size_t lds,
                         uint16_t *restrict dst, size_t ldd, size_t rows,
                         size_t cols);
void fst__transpose32_ld(const uint32_t *restrict src, size_t lds,
                         uint32_t *restrict dst, size_t ldd, size_t rows,
                         size_t cols);

#ifdef __cplusplus
}
#endif
#endif
