/* kernels/cuda/cuda_kernels.h : launchers of the reduction kernels
 * (cuda_kernels.cu), callable from C. Private to kernels/cuda/.
 *
 * Every launcher enqueues on `st` and returns cudaGetLastError() of the
 * launch (cudaSuccess when there is nothing to do); errors of the kernel's
 * execution show at the next synchronisation, as usual. */
#ifndef FST_CUDA_KERNELS_H
#define FST_CUDA_KERNELS_H

#include <cuda_runtime_api.h>

#include "cuda_math.h"

#ifdef __cplusplus
extern "C" {
#endif

/* reduce: items[item0 .. item0 + nitems - 1] are (tile, strip). Reads the
 * tiles' similarity blocks in `ws`, writes column partials to `colpart` and
 * each row's decision (before the mutual check) and score to `out`. */
cudaError_t fst__cu_launch_reduce(const float *ws, const fst_cu_tile *tiles,
                                  const fst_cu_pair *pairs,
                                  const fst_cu_item *items, uint32_t item0,
                                  uint32_t nitems, fst_top2 *colpart,
                                  uint32_t *out, fst_cu_rule rule,
                                  cudaStream_t st);

/* cols: items are (pair, block of columns); writes m1. */
cudaError_t fst__cu_launch_cols(const fst_cu_pair *pairs,
                                const fst_cu_item *items, uint32_t nitems,
                                const fst_top2 *colpart, int32_t *m1,
                                fst_cu_rule rule, cudaStream_t st);

/* rows: items are (pair, block of rows); applies the mutual check (when
 * rule.mutual) to m0 in `out` and adds each pair's match count to
 * nmatch[pair] (zeroed by the caller). */
cudaError_t fst__cu_launch_rows(const fst_cu_pair *pairs,
                                const fst_cu_item *items, uint32_t nitems,
                                const int32_t *m1, uint32_t *out,
                                uint32_t *nmatch, fst_cu_rule rule,
                                cudaStream_t st);

/* fault=hang (tests only): one thread spinning for `seconds`. */
cudaError_t fst__cu_launch_spin(double seconds, cudaStream_t st);

/* fst__cu_kernels_loadable() : whether this binary holds code the current
 * device can run (cudaErrorInvalidDeviceFunction or
 * cudaErrorNoKernelImageForDevice otherwise); fills the compute capability
 * the reduce kernel was built for (e.g. 90), or 0. */
cudaError_t fst__cu_kernels_loadable(int *built_for);

#ifdef __cplusplus
}
#endif
#endif
