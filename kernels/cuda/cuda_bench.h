/* kernels/cuda/cuda_bench.h : measurements for benchmarks/bench_cuda.c that
 * need CUDA calls (only kernels/cuda/ makes them). Plain C; private to
 * featstore's own benchmarks. Every function runs on an open "cuda" backend
 * (its device, its streams, its cuBLAS handle) and needs no other state. */
#ifndef FST_CUDA_BENCH_H
#define FST_CUDA_BENCH_H

#include "fst_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* fst__cuda_bench_gemm() :
 * cuBLAS alone, as the backend calls it for one shape: `batch` similarity
 * GEMMs (m x n x k, C = A^T B; float16 inputs with float32 accumulation, or
 * float32 per the backend's tf32 parameter) in one strided-batched call.
 * Warm-up, then `reps` timed calls (CUDA events); *sec = median seconds
 * per call. Allocates its operands for the call (about
 * batch * (2 (m + n) k + 4 m n) bytes) and frees them.
 * @return FST_OK; FST_EINVAL (not a cuda backend); FST_EDEVICE. */
fst_status fst__cuda_bench_gemm(fst_backend *be, uint32_t m, uint32_t n,
                                uint32_t k, fst_dtype dt, uint32_t batch,
                                int reps, double *sec);

/* fst__cuda_bench_upload() :
 * Host-to-device bandwidth of the backend's own upload path (its transfer=
 * parameter: the pinned ring, or a registered file map) for `bytes` at
 * `src`, into a scratch device buffer: wall clock from the first byte
 * handed over to the last one on the device, CPU copies included. `reps`
 * runs; *gbps = median. src stays the caller's.
 * @return FST_OK; FST_EINVAL; FST_EDEVICE. */
fst_status fst__cuda_bench_upload(fst_backend *be, const void *src,
                                  size_t bytes, int reps, double *gbps);

/* fst__cuda_bench_pinned() :
 * The link's practical limit: `bytes` from page-locked host memory to the
 * device, one DMA, `reps` times; *gbps = median. */
fst_status fst__cuda_bench_pinned(fst_backend *be, size_t bytes, int reps,
                                  double *gbps);

#ifdef __cplusplus
}
#endif
#endif
