/* kernels/backend_impl.h : what a backend implements; private to kernels/. */
#ifndef FST_BACKEND_IMPL_H
#define FST_BACKEND_IMPL_H

#include "fst_config.h"   /* FST_HAVE_CUDA, before the registry below */
#include "fst_kernels.h"
#include "base_impl.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fst_backend_ops {
    const char *name;
    /* Set up be->impl from params ("k=v,k=v", may be NULL). be->opts is set. */
    fst_status (*open)(fst_backend *be, const char *params);
    fst_status (*match)(fst_backend *be, const fst_view *a,
                        const fst_view *b, fst_matches *out);
    /* optional: may be NULL (then match() is called per job) */
    fst_status (*match_batch)(fst_backend *be, fst_match_job *jobs, size_t n);
    fst_status (*sync)(fst_backend *be);            /* optional: may be NULL */
    void       (*stats)(fst_backend *be, char *buf, size_t len); /* optional */
    void       (*close)(fst_backend *be);           /* frees be->impl only */
} fst_backend_ops;

struct fst_backend {
    const fst_backend_ops *ops;
    fst_match_opts         opts;
    bool                   failed;   /* after FST_EDEVICE only close() */
    void                  *impl;     /* the backend's own state */
};

/* Registry entries (backend.c lists them). */
const fst_backend_ops *fst__cpu_backend(void);
#if defined(FST_HAVE_CUDA) && FST_HAVE_CUDA
/* In kernels/cuda/, linked into the backend's tests and the GPU
 * benchmark; backend.c declares it weak and, where it is not linked in,
 * loads libfst_cuda.so, whose entry point returns it (module_abi.h). */
const fst_backend_ops *fst__cuda_backend(void);
#endif

/* fst__param_next() :
 * Walk a "k=v,k=v" parameter string: copies the next key and value into
 * key/val (NUL-terminated, truncated sizes are FST_EINVAL) and advances *p.
 * @return FST_OK; FST_DONE at the end; FST_EINVAL for a malformed item. */
fst_status fst__param_next(const char **p, char *key, size_t key_len,
                           char *val, size_t val_len);

/* fst__match_check() :
 * Validate one pair before any kernel runs: out and its arrays present,
 * descriptors present, same d and dtype on both sides (the detail names
 * both images). On success sets out->n0 = a->n and out->nmatches = 0; on
 * failure leaves out untouched. When either image has no keypoints it
 * fills out as hloc's empty case (n0 entries of -1, scores 0) and returns
 * FST_DONE: the pair needs no kernel (d and dtype are then not checked).
 * fst_backend_match() calls it before ops->match; a backend's match_batch
 * calls it per job.
 * @return FST_OK (run the kernel); FST_DONE (out filled); FST_EINVAL. */
fst_status fst__match_check(const fst_view *a, const fst_view *b,
                            fst_matches *out);

#ifdef __cplusplus
}
#endif
#endif
