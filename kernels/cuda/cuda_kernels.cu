/* kernels/cuda/cuda_kernels.cu : the reductions after the similarity GEMM.
 *
 * Three kernels, each a thin schedule around the FST_HD functions of
 * cuda_math.h (which tests/test_cudahost.c runs on the CPU):
 *   reduce  (tile, strip) blocks: row best/second-best over all columns,
 *           decided at once; column partials per strip;
 *   cols    merge the column partials, decide the backward matches;
 *   rows    mutual check and match count.
 * S is read exactly once, by `reduce`; everything else is O(n) per pair.
 */
#include <cuda_runtime.h>

#include "cuda_kernels.h"

__global__ void __launch_bounds__(FST_CU_WARPS * FST_CU_LANES)
k_reduce(const float *__restrict__ ws, const fst_cu_tile *__restrict__ tiles,
         const fst_cu_pair *__restrict__ pairs,
         const fst_cu_item *__restrict__ items, uint32_t item0,
         fst_top2 *__restrict__ colpart, uint32_t *__restrict__ out,
         fst_cu_rule rule)
{
    __shared__ float    sm_all[FST_CU_WARPS][FST_CU_LANES * FST_CU_SUBLD];
    __shared__ fst_top2 rowsm[FST_CU_WARPS * FST_CU_STRIP];

    const fst_cu_item it = items[item0 + blockIdx.x];
    const fst_cu_tile tl = tiles[it.what];
    const fst_cu_pair pr = pairs[tl.pair];
    const uint32_t w = threadIdx.x / FST_CU_LANES;
    const uint32_t lane = threadIdx.x % FST_CU_LANES;
    const uint32_t rbase = it.part * FST_CU_STRIP;          /* tile-local */
    const float *S = ws + tl.s;
    float *sm = sm_all[w];

    fst_top2 racc[FST_CU_SUBS];
    FST_CU_UNROLL
    for (int r = 0; r < FST_CU_SUBS; r++)
        racc[r] = fst_top2_init();

    for (uint32_t col0 = w * FST_CU_LANES; col0 < pr.n1;
         col0 += FST_CU_WARPS * FST_CU_LANES) {
        const uint32_t ncols = fst_cu_min(FST_CU_LANES, pr.n1 - col0);
        fst_top2 cacc = fst_top2_init();
        FST_CU_UNROLL
        for (int r = 0; r < FST_CU_SUBS; r++) {
            const uint32_t sub0 = rbase + (uint32_t)r * FST_CU_LANES;
            if (sub0 < tl.rows) {                     /* uniform per block */
                const uint32_t nrows = fst_cu_min(FST_CU_LANES, tl.rows - sub0);
                fst_cu_sub_load(S, tl.ld, sub0, col0, ncols, nrows, lane, sm,
                                &racc[r]);
                __syncwarp();
                fst_cu_sub_cols(sm, ncols, nrows, tl.row0 + sub0, lane, &cacc);
                __syncwarp();
            }
        }
        if (lane < ncols)
            colpart[fst_cu_colpart_index(&pr, &tl, it.part, col0 + lane)] = cacc;
    }

    FST_CU_UNROLL
    for (int r = 0; r < FST_CU_SUBS; r++)
        rowsm[w * FST_CU_STRIP + (uint32_t)r * FST_CU_LANES + lane] = racc[r];
    __syncthreads();

    const uint32_t rows_here = fst_cu_min(FST_CU_STRIP, tl.rows - rbase);
    if (threadIdx.x < rows_here) {
        fst_top2 res = fst_cu_rows_merge(rowsm, threadIdx.x);
        fst_cu_row_emit(&pr, tl.row0 + rbase + threadIdx.x, res, &rule,
                        reinterpret_cast<int32_t *>(out),
                        reinterpret_cast<float *>(out));
    }
}

__global__ void __launch_bounds__(FST_CU_FINISH)
k_cols(const fst_cu_pair *__restrict__ pairs,
       const fst_cu_item *__restrict__ items,
       const fst_top2 *__restrict__ colpart, int32_t *__restrict__ m1,
       fst_cu_rule rule)
{
    const fst_cu_item it = items[blockIdx.x];
    const fst_cu_pair pr = pairs[it.what];
    const uint32_t j = it.part * FST_CU_FINISH + threadIdx.x;
    if (j < pr.n1)
        m1[pr.m1 + j] = fst_cu_col_decide(fst_cu_col_final(colpart, &pr, j),
                                          &pr, &rule);
}

__global__ void __launch_bounds__(FST_CU_FINISH)
k_rows(const fst_cu_pair *__restrict__ pairs,
       const fst_cu_item *__restrict__ items, const int32_t *__restrict__ m1,
       uint32_t *__restrict__ out, uint32_t *__restrict__ nmatch,
       fst_cu_rule rule)
{
    const fst_cu_item it = items[blockIdx.x];
    const fst_cu_pair pr = pairs[it.what];
    const uint32_t i = it.part * FST_CU_FINISH + threadIdx.x;
    int32_t *m0 = reinterpret_cast<int32_t *>(out) + pr.out;
    int32_t m = -1;
    if (i < pr.n0) {
        m = m0[i];
        if (rule.mutual) {
            m = fst_cu_mutual(m, m1 + pr.m1, i);
            m0[i] = m;
        }
    }
    /* every thread reaches the barrier: the count is block-wide */
    int kept = __syncthreads_count(m >= 0);
    if (threadIdx.x == 0 && kept > 0)
        atomicAdd(&nmatch[it.what], (unsigned)kept);
}

extern "C" cudaError_t fst__cu_launch_reduce(const float *ws,
                                             const fst_cu_tile *tiles,
                                             const fst_cu_pair *pairs,
                                             const fst_cu_item *items,
                                             uint32_t item0, uint32_t nitems,
                                             fst_top2 *colpart, uint32_t *out,
                                             fst_cu_rule rule, cudaStream_t st)
{
    if (nitems == 0)
        return cudaSuccess;
    k_reduce<<<nitems, FST_CU_WARPS * FST_CU_LANES, 0, st>>>(
        ws, tiles, pairs, items, item0, colpart, out, rule);
    return cudaGetLastError();
}

extern "C" cudaError_t fst__cu_launch_cols(const fst_cu_pair *pairs,
                                           const fst_cu_item *items,
                                           uint32_t nitems,
                                           const fst_top2 *colpart,
                                           int32_t *m1, fst_cu_rule rule,
                                           cudaStream_t st)
{
    if (nitems == 0)
        return cudaSuccess;
    k_cols<<<nitems, FST_CU_FINISH, 0, st>>>(pairs, items, colpart, m1, rule);
    return cudaGetLastError();
}

extern "C" cudaError_t fst__cu_launch_rows(const fst_cu_pair *pairs,
                                           const fst_cu_item *items,
                                           uint32_t nitems, const int32_t *m1,
                                           uint32_t *out, uint32_t *nmatch,
                                           fst_cu_rule rule, cudaStream_t st)
{
    if (nitems == 0)
        return cudaSuccess;
    k_rows<<<nitems, FST_CU_FINISH, 0, st>>>(pairs, items, m1, out, nmatch,
                                             rule);
    return cudaGetLastError();
}

/* fault=hang (tests): keep the device busy for `ns` nanoseconds. */
__global__ void k_spin(unsigned long long ns)
{
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < ns);
}

extern "C" cudaError_t fst__cu_launch_spin(double seconds, cudaStream_t st)
{
    k_spin<<<1, 1, 0, st>>>((unsigned long long)(seconds * 1e9));
    return cudaGetLastError();
}

extern "C" cudaError_t fst__cu_kernels_loadable(int *built_for)
{
    cudaFuncAttributes a;
    cudaError_t e = cudaFuncGetAttributes(&a, k_reduce);
    *built_for = e == cudaSuccess ? a.binaryVersion : 0;
    if (e == cudaSuccess)
        e = cudaFuncGetAttributes(&a, k_cols);
    if (e == cudaSuccess)
        e = cudaFuncGetAttributes(&a, k_rows);
    return e;
}
