/* kernels/cuda/cuda_impl.h : the CUDA backend's state, shared by its host
 * files (cuda_backend.c, transfer.c, cuda_bench.c). Private to
 * kernels/cuda/; the only place besides them that names CUDA types. */
#ifndef FST_CUDA_IMPL_H
#define FST_CUDA_IMPL_H

#include "fst_config.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "backend_impl.h"
#include "cuda_kernels.h"
#include "devcache.h"
#include "plan.h"

#define FST_CU_RING_SEGS 64          /* uploads in flight through the ring */
#define FST_CU_MB        (1024ull * 1024ull)

/* A host range we tried to register with the device: ok = registered (DMA
 * straight from it), else it goes through the ring. */
typedef struct fst_cu_region {
    uintptr_t lo, hi;
    bool      ok;
} fst_cu_region;

/* One chunk in flight. The plan's pairs, tiles and items live in args_host
 * (pinned), so that they go to the device as they are. */
typedef struct fst_cu_slot {
    unsigned char *args_host;        /* pinned: pairs | tiles | items | ptrs */
    uint32_t      *out_host;         /* pinned: output words */
    fst_cu_gemm   *gemms;            /* host: caps.tiles */
    fst_cu_pass   *passes;           /* host: caps.tiles */
    uint32_t      *jobs;             /* host: caps.pairs */
    uint32_t      *imgs;             /* host: 2 * caps.pairs */
    cudaEvent_t    uploaded;         /* copy stream: this chunk's uploads */
    cudaEvent_t    done;             /* compute stream: outputs are home */
    cudaEvent_t    t0, t1, t2;       /* profile: start, GEMMs, reductions */
    fst_cu_plan    plan;
    uint64_t       seq;              /* chunk number, from 1 */
    bool           busy, timed;
} fst_cu_slot;

/* One distinct image of the batch being run. */
typedef struct fst_cu_img {
    const fst_view *v;
    uint64_t        bytes;           /* on the device, padded */
    uint64_t        off;             /* in the cache, once placed */
    bool            upload;          /* placed by this chunk: data to send */
} fst_cu_img;

typedef struct fst_cuda {
    fst_cu_params  prm;
    fst_cu_rule    rule;
    int            dev;
    char           where[192];       /* "cuda:0 (NVIDIA H100 ..., sm_90)" */
    bool           hung;             /* a wait timed out: leave the device */
    cudaStream_t   compute, copy;
    cublasHandle_t blas;
    void          *blas_ws;
    size_t         blas_ws_bytes;

    /* device buffers of a chunk */
    fst_cu_caps    caps;
    float         *ws;
    fst_top2      *colpart;
    int32_t       *m1;
    uint32_t      *out_dev;
    unsigned char *args_dev;
    size_t         off_tiles, off_items, off_ptrs, args_bytes;
    fst_cu_slot    slot[2];

    /* descriptor cache */
    unsigned char *cache_dev;
    fst_cu_cache  *cache;
    uint64_t       seq, done;        /* chunks enqueued / known complete */

    /* transfers */
    unsigned char *ring;             /* pinned staging ring */
    size_t         ring_bytes, ring_head;
    struct { size_t off, len; cudaEvent_t ev; } seg[FST_CU_RING_SEGS];
    unsigned       seg_first, nseg;
    fst_cu_region *regions;
    size_t         nregions, cap_regions;
    bool           ro_register;      /* cudaHostRegisterReadOnly supported */

    /* the batch being run (grown, never shrunk) */
    fst_cu_img    *imgs;
    fst_cu_pjob   *pjobs;
    uint32_t      *jix;              /* pjob -> index in the caller's jobs */
    uint32_t      *order;
    uint64_t      *img_bytes;
    uint32_t      *img_mark;
    const void   **hkeys;            /* image table: desc pointer -> id */
    uint32_t      *hvals;
    size_t         cap_jobs, cap_imgs, cap_hash;

    /* counters for fst_backend_stats() */
    uint64_t       n_pairs, n_chunks, n_split, n_hits, n_misses;
    uint64_t       up_ring, up_reg, reg_fail;
    double         ms_gemm, ms_reduce, ms_chunks;
} fst_cuda;

/* fst__cu_fail() : record "<where>: <what>: <CUDA error>", mark the backend
 * failed (only close from now on) and return FST_EDEVICE. */
fst_status fst__cu_fail(fst_backend *be, cudaError_t e, const char *what);
fst_status fst__cu_blas_fail(fst_backend *be, cublasStatus_t e,
                             const char *what);

/* Check a CUDA runtime / cuBLAS call in a function with `fst_status s` and
 * an `out:` label, like FST_TRY. */
#define FST_CUDA_TRY(be, call) do {                                     \
    cudaError_t e_ = (call);                                            \
    if (e_ != cudaSuccess) { s = fst__cu_fail((be), e_, #call); goto out; } \
} while (0)
#define FST_CUBLAS_TRY(be, call) do {                                   \
    cublasStatus_t e_ = (call);                                         \
    if (e_ != CUBLAS_STATUS_SUCCESS) {                                  \
        s = fst__cu_blas_fail((be), e_, #call); goto out; }             \
} while (0)

/* fst__cu_wait() : wait for `ev` polling, at most prm.timeout_s; a timeout
 * is FST_EDEVICE ("no progress") and leaves the device alone at close. */
fst_status fst__cu_wait(fst_backend *be, cudaEvent_t ev, const char *what);

/* transfer.c */
/* fst__cu_upload() : enqueue bytes from host `src` (a view: pageable, maybe
 * a read-only map) to device `dst` on the copy stream, by the pinned ring
 * or, with transfer=register, straight from the registered map. `src` may
 * be released once the batch returns. */
fst_status fst__cu_upload(fst_backend *be, void *dst, const void *src,
                          size_t bytes);
/* fst__cu_ring_idle() : wait for every ring upload. */
fst_status fst__cu_ring_idle(fst_backend *be);
/* fst__cu_unregister_all() : undo every registration (close). */
void fst__cu_unregister_all(fst_cuda *cu);

#endif
