/* fst_base.h : status codes, error details, dtypes and image views.
 * Included everywhere; names no LMDB, HDF5 or CUDA type. */
#ifndef FST_BASE_H
#define FST_BASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Every status code: name, value, message. Negative values are errors.
 * A worker process exits with -status, so every value fits in 0..127. */
#define FST_STATUS_MAP(X)                                            \
    X(OK,          0, "success")                                     \
    X(DONE,        1, "no more items")                               \
    X(EINVAL,     -1, "invalid argument")                            \
    X(ENOMEM,     -2, "out of memory")                               \
    X(EIO,        -3, "I/O error")                                   \
    X(ENOTFOUND,  -4, "no such image in store")                      \
    X(ECORRUPT,   -5, "record fails checksum or bounds")             \
    X(ENODEVICE,  -6, "backend not available")                       \
    X(EDEVICE,    -7, "GPU or BLAS call failed")                     \
    X(EFORMAT,    -8, "unsupported or malformed input")              \
    X(EVERSION,   -9, "store written by a newer featstore")          \
    X(EEXIST,    -10, "already exists or conflicts")                 \
    X(EFULL,     -11, "disk or map full")                            \
    X(EINTR,     -12, "interrupted")                                 \
    X(ECHILD,    -13, "worker process failed")

typedef enum fst_status {
#define FST_STATUS_ENUM_(name, value, msg) FST_##name = value,
    FST_STATUS_MAP(FST_STATUS_ENUM_)
#undef FST_STATUS_ENUM_
} fst_status;

/* fst_strerror() :
 * The fixed message of status `s` ("unknown status" for a value not in the
 * table). Static storage; never NULL. Any thread. */
const char *fst_strerror(fst_status s);

/* fst_status_name() :
 * The code's name without prefix, e.g. "ECORRUPT". Static; never NULL. */
const char *fst_status_name(fst_status s);

/* fst_errdetail() :
 * This thread's last detailed error message, naming the file, image or pair
 * at fault, e.g. "features.h5: /img_0042/descriptors: expected 256 rows,
 * found 128". Empty string if none. Valid until this thread's next failing
 * call. Thread-local storage; never NULL. */
const char *fst_errdetail(void);

/* fst_errclear() : empty this thread's detail message. */
void fst_errclear(void);

/* Descriptor element types as stored. Values are part of the store format. */
typedef enum fst_dtype {
    FST_DTYPE_F16 = 1,   /* IEEE binary16 */
    FST_DTYPE_F32 = 2,   /* IEEE binary32 */
} fst_dtype;

/* fst_dtype_size() : bytes per element (2 or 4); 0 for an unknown dtype. */
size_t fst_dtype_size(fst_dtype t);

/* fst_dtype_name() : "float16", "float32" or "unknown". Static. */
const char *fst_dtype_name(fst_dtype t);

/* Half <-> single conversion, exact IEEE semantics: NaN stays NaN,
 * subnormals kept, float->half rounds to nearest even, overflow -> Inf. */
float    fst_f16_to_f32(uint16_t h);
uint16_t fst_f32_to_f16(float f);

/* fst_view.flags : how the source file stored what the view holds, so that
 * an export gives the same file back. Values are part of the store format. */
enum {
    FST_VIEW_HAS_SCORES       = 1u << 0, /* source had scores */
    FST_VIEW_SCORES_KEYPOINT  = 1u << 1, /* ...named `keypoint_scores` */
    FST_VIEW_SCORES_F16       = 1u << 2, /* ...as float16 */
    FST_VIEW_KEYPOINTS_F16    = 1u << 3, /* keypoints were float16 */
    FST_VIEW_HAS_IMAGE_SIZE   = 1u << 4, /* source had `image_size` */
    FST_VIEW_HAS_UNCERTAINTY  = 1u << 5, /* keypoints had `uncertainty` attr */
    FST_VIEW_DESC_CONVERTED   = 1u << 6, /* descriptors' dtype was changed at
                                            import (--dtype) */
    FST_VIEW_UNCERTAINTY_F64  = 1u << 7, /* the uncertainty attr was float64
                                            (hloc under NumPy 1.x); the view
                                            has it rounded to float32 */
    /* (format 1.2) each keypoint's `scales` and `oris`, as hloc's DoG
     * extractor writes them (sift+lightglue needs them). */
    FST_VIEW_HAS_SCALES       = 1u << 8, /* source had `scales` (N,) */
    FST_VIEW_SCALES_F16       = 1u << 9, /* ...as float16 */
    FST_VIEW_HAS_ORIS         = 1u << 10, /* source had `oris` (N,) */
    FST_VIEW_ORIS_F16         = 1u << 11, /* ...as float16 */
};

/* One image as the matchers see it. In a view returned by the store every
 * pointer points into the shared read-only map (zero-copy): never written,
 * never freed, valid until the read transaction that produced it ends.
 * Keypoints and descriptors are at least 16-byte aligned; the store puts
 * descriptors on 64 bytes. A view built by hand (tests, query files) follows
 * the same rules with memory its builder owns. */
typedef struct fst_view {
    const char  *name;          /* NUL-terminated image name, as in the h5 */
    uint32_t     n;             /* keypoints */
    uint32_t     d;             /* descriptor dimension (0 only if n == 0
                                   and unknown) */
    fst_dtype    dtype;         /* descriptor element type */
    uint32_t     flags;         /* FST_VIEW_* */
    int64_t      image_size[2]; /* hloc's image_size: (width, height) */
    float        uncertainty;   /* keypoints' uncertainty attr, or NaN */
    const float *keypoints;     /* n x 2 (x, y), float32 */
    const float *scores;        /* n, float32; NULL if the source had none */
    const void  *desc;          /* n x d row-major, `dtype` elements */
    const float *scales;        /* n, float32: each keypoint's scale; NULL
                                   if the source had none (format 1.2) */
    const float *oris;          /* n, float32: each keypoint's orientation
                                   (radians, as hloc wrote it); NULL if
                                   none (format 1.2) */
} fst_view;

/* fst_view_require() :
 * Check that view `v` carries the per-keypoint blocks `need` names
 * (FST_VIEW_HAS_SCORES, FST_VIEW_HAS_SCALES, FST_VIEW_HAS_ORIS; other bits
 * are ignored), as a matcher whose weights need them (sift+lightglue:
 * scales and oris) must before matching it. `where` names the store or
 * file in the detail (NULL: none). Reads only *v. Any thread.
 * @return FST_OK; FST_EFORMAT with a detail naming the image and every
 *         block it lacks, e.g. "db.fst: image 'a.jpg' lacks keypoint
 *         scales, oris, which the matcher needs (hloc's DoG/SIFT extractor
 *         writes ...)"; FST_EINVAL if v is NULL. */
fst_status fst_view_require(const fst_view *v, uint32_t need,
                            const char *where);

/* Result of matching image a (n0 keypoints) against image b, in hloc's
 * terms. Arrays belong to the caller and hold at least n0 elements
 * (fst_matches_bound()). */
typedef struct fst_matches {
    int32_t  *matches0;   /* n0: index into b, or -1 */
    float    *scores0;    /* n0: matching_scores0 */
    uint32_t  n0;         /* set by the matcher: a->n */
    uint32_t  nmatches;   /* set by the matcher: entries != -1 */
} fst_matches;

#ifdef __cplusplus
}
#endif
#endif /* FST_BASE_H */
