/* kernels/cuda/cuda_math.h : what the CUDA kernels compute, as FST_HD code.
 *
 * The CUDA backend computes S = A B^T with cuBLAS into a column-major
 * workspace, S[i + j * ld] = dot(a_i, b_j), then reduces it with its own
 * kernels (cuda_kernels.cu). Everything those kernels decide is here, one
 * thread's ("lane's") share of one phase per function:
 *
 *   reduce  one block per (tile, strip of FST_CU_STRIP rows), 8 warps. Each
 *           warp takes every 8th group of 32 columns; per group and per
 *           32 x 32 subtile, fst_cu_sub_load() (a lane reads its row and
 *           offers it to its row's best/second-best) and, after __syncwarp,
 *           fst_cu_sub_cols() (a lane offers its column's 32 values). Column
 *           results go out as partials, one per strip; row results of the
 *           8 warps meet in fst_cu_rows_merge() and are decided at once.
 *   cols    one thread per column: fst_cu_col_final() merges the strips'
 *           partials, fst_nn_decide() gives the backward match m1[j].
 *   rows    one thread per row: fst_cu_mutual(), then the match count.
 *
 * tests/test_cudahost.c runs these very functions on the CPU, lane by lane
 * in the kernels' schedule, and compares them with a plain computation; the
 * GPU only adds the parallel execution and cuBLAS.
 *
 * The tables (fst_cu_pair, fst_cu_tile, fst_cu_item) are what the host
 * planner (plan.c) writes and the kernels read: same layout on both sides.
 *
 * Plain C11 and CUDA C; names no CUDA header; no allocation, no I/O.
 * Private to kernels/.
 */
#ifndef FST_CUDA_MATH_H
#define FST_CUDA_MATH_H

#include <math.h>       /* INFINITY, used by match_math.h */
#include <stddef.h>
#include <stdint.h>

#include "match_math.h"

#ifdef __CUDA_ARCH__            /* nvcc's device pass only: gcc warns */
#  define FST_CU_UNROLL _Pragma("unroll")
#else
#  define FST_CU_UNROLL
#endif
#ifdef __CUDACC__
#  define FST_CU_RESTRICT __restrict__
#else
#  define FST_CU_RESTRICT restrict
#endif

#define FST_CU_LANES   32    /* warp size; a subtile is 32 x 32 */
#define FST_CU_WARPS    8    /* warps per reduce block */
#define FST_CU_STRIP  128    /* rows per reduce block: 4 subtiles */
#define FST_CU_SUBS   (FST_CU_STRIP / FST_CU_LANES)
#define FST_CU_SUBLD   33    /* subtile pitch in shared memory: the store
                                (lanes along a row) and the load (lanes
                                along a column) both hit 32 banks */
#define FST_CU_FINISH 256    /* threads per cols/rows block */

/* The decision rule, the same for every pair of a backend.
 * ratio2 = fst_thresh2(r), dist2 = fst_thresh2(t); 0 means off. */
typedef struct fst_cu_rule {
    float   ratio2;
    float   dist2;
    int32_t mutual;          /* 0 or 1 */
} fst_cu_rule;

/* One pair of a chunk. Offsets count elements of the chunk's device
 * buffers: colpart (fst_top2), m1 (int32), out (32-bit words). */
typedef struct fst_cu_pair {
    uint64_t colpart;        /* fst_cu_strips(n0) x n1 partials, strip-major */
    uint64_t m1;             /* n1 backward matches */
    uint64_t out;            /* m0[n0] (int32), then scores0[n0] (float) */
    uint32_t n0, n1;         /* both >= 1: empty pairs never reach the GPU */
} fst_cu_pair;

/* One GEMM output block: rows row0 .. row0 + rows - 1 of the pair's a
 * against all of b, stored column-major with leading dimension ld. A pair
 * whose whole S fits in the workspace is one tile; a larger one is split
 * by rows (tiling for large N: device memory stays bounded). */
typedef struct fst_cu_tile {
    uint64_t s;              /* first float of the block in the workspace */
    uint32_t ld;             /* stored rows: >= rows, multiple of STRIP */
    uint32_t pair;           /* index in the chunk's pair table */
    uint32_t row0;           /* multiple of FST_CU_STRIP */
    uint32_t rows;           /* >= 1 */
} fst_cu_tile;

/* One block of work. reduce: (tile, strip within the tile);
 * cols / rows: (pair, block of FST_CU_FINISH columns / rows). */
typedef struct fst_cu_item {
    uint32_t what, part;
} fst_cu_item;

static inline FST_HD uint32_t fst_cu_strips(uint32_t n)
{
    return (n + FST_CU_STRIP - 1) / FST_CU_STRIP;
}

static inline FST_HD uint32_t fst_cu_blocks(uint32_t n)
{
    return (n + FST_CU_FINISH - 1) / FST_CU_FINISH;
}

static inline FST_HD uint32_t fst_cu_min(uint32_t a, uint32_t b)
{
    return a < b ? a : b;
}

/* Phase 1 of a subtile, one lane. The subtile holds tile rows sub_row0 ..
 * sub_row0 + 31 and columns col0 .. col0 + ncols - 1 (ncols <= 32); only
 * the first nrows rows are real. The lane reads its row (coalesced across
 * the warp: consecutive rows are adjacent in column-major S), offers the
 * values to *row when its row is real, and stores them for phase 2 at
 * sm[c * FST_CU_SUBLD + lane]. Rows past nrows are padding but still inside
 * the tile's ld rows, so the read is always in bounds. */
static inline FST_HD void fst_cu_sub_load(const float *FST_CU_RESTRICT S,
                                          uint32_t ld, uint32_t sub_row0,
                                          uint32_t col0, uint32_t ncols,
                                          uint32_t nrows, uint32_t lane,
                                          float *FST_CU_RESTRICT sm,
                                          fst_top2 *row)
{
    const float *p = S + (size_t)sub_row0 + lane + (size_t)col0 * ld;
    const bool real = lane < nrows;
    float v[FST_CU_LANES];
    if (ncols == FST_CU_LANES) {
        /* the common case: 32 independent loads in flight per lane */
        FST_CU_UNROLL
        for (uint32_t c = 0; c < FST_CU_LANES; c++)
            v[c] = p[(size_t)c * ld];
        FST_CU_UNROLL
        for (uint32_t c = 0; c < FST_CU_LANES; c++) {
            sm[c * FST_CU_SUBLD + lane] = v[c];
            if (real)
                fst_top2_push(row, v[c], (int32_t)(col0 + c));
        }
    } else {
        for (uint32_t c = 0; c < ncols; c++)
            v[c] = p[(size_t)c * ld];
        for (uint32_t c = 0; c < ncols; c++) {
            sm[c * FST_CU_SUBLD + lane] = v[c];
            if (real)
                fst_top2_push(row, v[c], (int32_t)(col0 + c));
        }
    }
}

/* Phase 2 of a subtile, one lane, after every lane's phase 1: the lane owns
 * column col0 + lane (when lane < ncols) and offers its nrows real values,
 * with their pair-wide row indices grow0 + k. */
static inline FST_HD void fst_cu_sub_cols(const float *sm, uint32_t ncols,
                                          uint32_t nrows, uint32_t grow0,
                                          uint32_t lane, fst_top2 *col)
{
    if (lane >= ncols)
        return;
    const float *q = sm + lane * FST_CU_SUBLD;
    for (uint32_t k = 0; k < nrows; k++)
        fst_top2_push(col, q[k], (int32_t)(grow0 + k));
}

/* Phase 3, thread t of the block (t < FST_CU_STRIP), after every warp has
 * stored its row results at rowsm[w * FST_CU_STRIP + t]: row t's result
 * over all the columns of the tile. */
static inline FST_HD fst_top2 fst_cu_rows_merge(const fst_top2 *rowsm,
                                                uint32_t t)
{
    fst_top2 r = rowsm[t];
    for (uint32_t w = 1; w < FST_CU_WARPS; w++)
        r = fst_top2_merge(r, rowsm[w * FST_CU_STRIP + t]);
    return r;
}

/* Where the reduce block of (tile, strip) puts the column partial of
 * column j: the pair's partials are strip-major over the pair's rows. */
static inline FST_HD uint64_t fst_cu_colpart_index(const fst_cu_pair *p,
                                                   const fst_cu_tile *t,
                                                   uint32_t strip, uint32_t j)
{
    uint32_t gstrip = t->row0 / FST_CU_STRIP + strip;
    return p->colpart + (uint64_t)gstrip * p->n1 + j;
}

/* Phase 3 output, thread t: decide row `i` (pair-wide) from its result and
 * write m0 (before the mutual check) and the score into the pair's output
 * words. */
static inline FST_HD void fst_cu_row_emit(const fst_cu_pair *p, uint32_t i,
                                          fst_top2 r, const fst_cu_rule *rule,
                                          int32_t *outm, float *outs)
{
    float score;
    int32_t m = fst_nn_decide(&r, rule->ratio2, rule->dist2,
                              fst_use_ratio(p->n0, p->n1), &score);
    outm[p->out + i] = m;
    outs[p->out + p->n0 + i] = score;
}

/* cols kernel, one thread: column j's result over every strip of the pair. */
static inline FST_HD fst_top2 fst_cu_col_final(const fst_top2 *colpart,
                                               const fst_cu_pair *p,
                                               uint32_t j)
{
    uint32_t ns = fst_cu_strips(p->n0);
    fst_top2 r = colpart[p->colpart + j];
    for (uint32_t s = 1; s < ns; s++)
        r = fst_top2_merge(r, colpart[p->colpart + (uint64_t)s * p->n1 + j]);
    return r;
}

/* cols kernel: the backward match of column j (hloc's find_nn on S^T). */
static inline FST_HD int32_t fst_cu_col_decide(fst_top2 c,
                                               const fst_cu_pair *p,
                                               const fst_cu_rule *rule)
{
    float unused;
    return fst_nn_decide(&c, rule->ratio2, rule->dist2,
                         fst_use_ratio(p->n0, p->n1), &unused);
}

/* rows kernel: hloc's mutual_check for row i (fst_mutual_keep). m1 points
 * at the pair's backward matches; read only for a real match. */
static inline FST_HD int32_t fst_cu_mutual(int32_t m0, const int32_t *m1,
                                           uint32_t i)
{
    return fst_mutual_keep(m0, m0 >= 0 ? m1[m0] : -1, (int32_t)i);
}

#endif
