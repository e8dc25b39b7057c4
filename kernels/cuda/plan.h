/* kernels/cuda/plan.h : the CUDA backend's parameters, and how a batch of
 * pairs becomes chunks of GPU work.
 *
 * Pure host C: no CUDA header, no device call, so that tests/test_cudahost.c
 * checks it without a GPU. Private to kernels/cuda/.
 *
 * A chunk is what one round of GEMMs and reductions handles with the
 * backend's fixed device buffers: either many whole pairs whose similarity
 * blocks fit the workspace together (one pass), or one pair too large for
 * it, split by rows into tiles, one pass per tile. Pairs are planned in
 * size-class order so that equal shapes share one batched GEMM.
 */
#ifndef FST_CUDA_PLAN_H
#define FST_CUDA_PLAN_H

#include "fst_base.h"
#include "cuda_math.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- parameters ("key=value,..." of fst_backend_open) ------------------ */

enum { FST_CU_XFER_RING = 0, FST_CU_XFER_REGISTER = 1 };

/* fault= (tests only, parsed only in builds with FST_TEST_HOOKS): make the
 * first batch after open fail on the device so that tests/test_parity.c
 * can check every error path. */
enum { FST_CU_FAULT_NONE = 0, FST_CU_FAULT_OOM, FST_CU_FAULT_KERNEL,
       FST_CU_FAULT_HANG };

typedef struct fst_cu_params {
    int      device;        /* device=N: index among visible devices (0) */
    uint64_t cache_mb;      /* cache_mb=N: descriptor cache; 0 = automatic:
                               free memory - headroom - workspaces */
    uint64_t headroom_mb;   /* headroom_mb=N: left free on the device (2048) */
    uint32_t share;         /* share=K: one of K processes on this device:
                               the automatic cache takes 1/K of it (1) */
    uint64_t sim_mb;        /* sim_mb=N: similarity workspace (512) */
    uint64_t ring_mb;       /* ring_mb=N: pinned staging ring (64) */
    int      transfer;      /* transfer=ring|register (ring) */
    int      tf32;          /* tf32=0|1: TF32 tensor cores for float32
                               stores (0: exact FP32) */
    uint32_t pad;           /* pad=N: keypoint counts round up to N in the
                               cache and the GEMMs (128; multiple of 128) */
    uint32_t timeout_s;     /* timeout_s=N: longest wait for the device
                               before FST_EDEVICE (120) */
    int      profile;       /* profile=0|1: time GEMMs and reductions (0) */
    int      fault;         /* fault=none|oom|kernel|hang: tests only */
} fst_cu_params;

/* fst__cu_params_parse() :
 * Defaults, then each key of `params` (NULL or "" for none).
 * @return FST_OK; FST_EINVAL naming the key or value at fault. */
fst_status fst__cu_params_parse(const char *params, fst_cu_params *out);

/* ---- planning ---------------------------------------------------------- */

/* A job as the planner sees it: shapes and distinct-image ids. */
typedef struct fst_cu_pjob {
    uint32_t n0, n1;        /* both >= 1 */
    uint32_t d;
    uint32_t dtype;         /* fst_dtype */
    uint32_t img0, img1;    /* indices into the batch's image table */
} fst_cu_pjob;

/* What one chunk may use: the sizes of the backend's buffers. */
typedef struct fst_cu_caps {
    uint64_t ws;            /* floats of similarity workspace */
    uint64_t colpart;       /* fst_top2 column partials */
    uint64_t m1;            /* int32 backward matches */
    uint64_t out;           /* 32-bit output words, match counts included */
    uint64_t img_bytes;     /* device bytes of a chunk's distinct images */
    uint32_t pairs;         /* pairs of a chunk (and its distinct images:
                               at most 2 per pair) */
    uint32_t tiles;         /* tiles (also GEMM groups and passes) */
    uint32_t items;         /* work items of all three kernels */
} fst_cu_caps;

/* One batched GEMM: tiles tile0 .. tile0 + count - 1, all m x n x k. */
typedef struct fst_cu_gemm {
    uint32_t m, n, k, dtype;
    uint32_t tile0, count;
} fst_cu_gemm;

/* One fill of the workspace: its GEMMs, then the reduce over its items. */
typedef struct fst_cu_pass {
    uint32_t gemm0, ngemm;
    uint32_t item0, nitems;
} fst_cu_pass;

/* A chunk. The arrays belong to the caller and hold what the caps allow;
 * the planner fills them and the counts. */
typedef struct fst_cu_plan {
    fst_cu_pair *pairs;     /* caps.pairs */
    fst_cu_tile *tiles;     /* caps.tiles */
    fst_cu_item *items;     /* caps.items */
    fst_cu_gemm *gemms;     /* caps.tiles */
    fst_cu_pass *passes;    /* caps.tiles */
    uint32_t    *jobs;      /* caps.pairs: pair p is batch job jobs[p] */
    uint32_t    *imgs;      /* 2 * caps.pairs: the chunk's distinct images */

    uint32_t npairs, ntiles, nitems, ngemms, npasses, nimgs;
    uint32_t cols_item0, ncols;  /* cols kernel items (0 unless mutual) */
    uint32_t rows_item0, nrows;  /* rows kernel items */
    uint64_t colpart_used, m1_used;
    uint64_t nmatch;        /* word offset of the per-pair match counts */
    uint64_t out_used;      /* words: m0 and scores of every pair, counts */
    uint64_t img_bytes;     /* device bytes of the distinct images */
    bool     split;         /* one pair, one pass per tile */
} fst_cu_plan;

/* The batch being planned. */
typedef struct fst_cu_batch {
    const fst_cu_pjob *jobs;
    uint32_t           njobs;
    uint32_t          *order;      /* njobs: fst__cu_plan_order() fills it */
    const uint64_t    *img_bytes;  /* device bytes of each distinct image */
    uint32_t          *img_mark;   /* one per image, zeroed by the caller */
    uint32_t           nimages;
    uint32_t           pad;        /* size-class step, multiple of STRIP */
    bool               mutual;
    uint32_t           next;       /* position in order[] */
    uint32_t           stamp;      /* chunks planned so far */
} fst_cu_batch;

/* Keypoint count as stored and multiplied: n rounded up to `pad`. */
static inline uint32_t fst_cu_class(uint32_t n, uint32_t pad)
{
    return (uint32_t)(((uint64_t)n + pad - 1) / pad * pad);
}

/* Device bytes of an image in the cache: class rows, 256-byte multiple. */
static inline uint64_t fst_cu_img_bytes(uint32_t n, uint32_t d, uint32_t esize,
                                        uint32_t pad)
{
    uint64_t b = (uint64_t)fst_cu_class(n, pad) * d * esize;
    return (b + 255) / 256 * 256;
}

/* fst__cu_plan_order() : fill b->order with the jobs in planning order:
 * by (dtype, d, class of n0, class of n1), the caller's order within a
 * class. @return FST_OK; FST_ENOMEM. */
fst_status fst__cu_plan_order(fst_cu_batch *b);

/* fst__cu_plan_need() :
 * What job `j` needs alone in a chunk, in *need (pairs, tiles, items,
 * colpart, m1, out, ws: the largest single workspace block). A job whose
 * need.ws exceeds the workspace cannot run; the caps must cover every
 * other field for every job of a batch before fst__cu_plan_next(). */
void fst__cu_plan_need(const fst_cu_pjob *j, uint32_t pad, uint64_t ws,
                       bool mutual, fst_cu_caps *need);

/* fst__cu_plan_next() :
 * Plan the next chunk from b->order[b->next ...] into *pl and advance.
 * @return true if a chunk was planned; false when the batch is done. */
bool fst__cu_plan_next(fst_cu_batch *b, const fst_cu_caps *caps,
                       fst_cu_plan *pl);

#ifdef __cplusplus
}
#endif
#endif
