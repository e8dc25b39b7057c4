/* kernels/cuda/cuda_bench.c : the measurements of cuda_bench.h. */
#include "cuda_impl.h"
#include "cuda_bench.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

static double wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static fst_status usable(fst_backend *be)
{
    if (!be || strcmp(fst_backend_name(be), "cuda") != 0 || !be->impl)
        return fst__fail(FST_EINVAL, "benchmark needs an open cuda backend");
    if (be->failed)
        return fst__fail(FST_EDEVICE, "cuda backend failed earlier");
    return FST_OK;
}

fst_status fst__cuda_bench_gemm(fst_backend *be, uint32_t m, uint32_t n,
                                uint32_t k, fst_dtype dt, uint32_t batch,
                                int reps, double *sec)
{
    fst_status s = usable(be);
    if (s != FST_OK)
        return s;
    fst_cuda *cu = be->impl;
    size_t es = fst_dtype_size(dt);
    void *A = NULL, *B = NULL, *C = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    double *t = calloc(reps > 0 ? (size_t)reps : 1, sizeof *t);
    if (!t || reps <= 0 || es == 0) {
        s = fst__fail(FST_EINVAL, "bench gemm: bad arguments");
        goto out;
    }
    FST_CUDA_TRY(be, cudaMalloc(&A, (size_t)batch * m * k * es));
    FST_CUDA_TRY(be, cudaMalloc(&B, (size_t)batch * n * k * es));
    FST_CUDA_TRY(be, cudaMalloc(&C, (size_t)batch * m * n * sizeof(float)));
    FST_CUDA_TRY(be, cudaMemsetAsync(A, 0, (size_t)batch * m * k * es,
                                     cu->compute));
    FST_CUDA_TRY(be, cudaMemsetAsync(B, 0, (size_t)batch * n * k * es,
                                     cu->compute));
    FST_CUDA_TRY(be, cudaEventCreate(&e0));
    FST_CUDA_TRY(be, cudaEventCreate(&e1));
    cudaDataType_t ty = dt == FST_DTYPE_F16 ? CUDA_R_16F : CUDA_R_32F;
    cublasComputeType_t ct = (dt == FST_DTYPE_F32 && cu->prm.tf32)
                                 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                 : CUBLAS_COMPUTE_32F;
    const float one = 1.0f, zero = 0.0f;
    for (int r = -2; r < reps; r++) {               /* two warm-ups */
        FST_CUDA_TRY(be, cudaEventRecord(e0, cu->compute));
        FST_CUBLAS_TRY(be, cublasGemmStridedBatchedEx(cu->blas, CUBLAS_OP_T,
            CUBLAS_OP_N, (int)m, (int)n, (int)k, &one, A, ty, (int)k,
            (long long)m * k, B, ty, (int)k, (long long)n * k, &zero, C,
            CUDA_R_32F, (int)m, (long long)m * n, (int)batch, ct,
            CUBLAS_GEMM_DEFAULT));
        FST_CUDA_TRY(be, cudaEventRecord(e1, cu->compute));
        FST_TRY(fst__cu_wait(be, e1, "bench gemm"));
        float ms = 0;
        FST_CUDA_TRY(be, cudaEventElapsedTime(&ms, e0, e1));
        if (r >= 0)
            t[r] = ms * 1e-3;
    }
    *sec = median(t, reps);
out:
    if (!cu->hung) {
        cudaFree(A);
        cudaFree(B);
        cudaFree(C);
        if (e0) cudaEventDestroy(e0);
        if (e1) cudaEventDestroy(e1);
    }
    free(t);
    return s;
}

fst_status fst__cuda_bench_upload(fst_backend *be, const void *src,
                                  size_t bytes, int reps, double *gbps)
{
    fst_status s = usable(be);
    if (s != FST_OK)
        return s;
    fst_cuda *cu = be->impl;
    void *dst = NULL;
    cudaEvent_t e = NULL;
    double *t = calloc(reps > 0 ? (size_t)reps : 1, sizeof *t);
    if (!t || reps <= 0 || bytes == 0) {
        s = fst__fail(FST_EINVAL, "bench upload: bad arguments");
        goto out;
    }
    FST_CUDA_TRY(be, cudaMalloc(&dst, bytes));
    FST_CUDA_TRY(be, cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    for (int r = -1; r < reps; r++) {
        double t0 = wall();
        FST_TRY(fst__cu_upload(be, dst, src, bytes));
        FST_CUDA_TRY(be, cudaEventRecord(e, cu->copy));
        FST_TRY(fst__cu_wait(be, e, "bench upload"));
        FST_TRY(fst__cu_ring_idle(be));
        if (r >= 0)
            t[r] = wall() - t0;
    }
    *gbps = (double)bytes / median(t, reps) * 1e-9;
out:
    if (!cu->hung) {
        cudaFree(dst);
        if (e) cudaEventDestroy(e);
    }
    free(t);
    return s;
}

fst_status fst__cuda_bench_pinned(fst_backend *be, size_t bytes, int reps,
                                  double *gbps)
{
    fst_status s = usable(be);
    if (s != FST_OK)
        return s;
    fst_cuda *cu = be->impl;
    void *dst = NULL, *src = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    double *t = calloc(reps > 0 ? (size_t)reps : 1, sizeof *t);
    if (!t || reps <= 0 || bytes == 0) {
        s = fst__fail(FST_EINVAL, "bench pinned: bad arguments");
        goto out;
    }
    FST_CUDA_TRY(be, cudaMalloc(&dst, bytes));
    FST_CUDA_TRY(be, cudaHostAlloc(&src, bytes, cudaHostAllocDefault));
    memset(src, 1, bytes);
    FST_CUDA_TRY(be, cudaEventCreate(&e0));
    FST_CUDA_TRY(be, cudaEventCreate(&e1));
    for (int r = -1; r < reps; r++) {
        FST_CUDA_TRY(be, cudaEventRecord(e0, cu->copy));
        FST_CUDA_TRY(be, cudaMemcpyAsync(dst, src, bytes,
                                         cudaMemcpyHostToDevice, cu->copy));
        FST_CUDA_TRY(be, cudaEventRecord(e1, cu->copy));
        FST_TRY(fst__cu_wait(be, e1, "bench pinned"));
        float ms = 0;
        FST_CUDA_TRY(be, cudaEventElapsedTime(&ms, e0, e1));
        if (r >= 0)
            t[r] = ms * 1e-3;
    }
    *gbps = (double)bytes / median(t, reps) * 1e-9;
out:
    if (!cu->hung) {
        cudaFree(dst);
        cudaFreeHost(src);
        if (e0) cudaEventDestroy(e0);
        if (e1) cudaEventDestroy(e1);
    }
    free(t);
    return s;
}
