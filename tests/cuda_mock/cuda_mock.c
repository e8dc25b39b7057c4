/* tests/cuda_mock/cuda_mock.c : a CPU stand-in for the part of the CUDA
 * runtime and cuBLAS the CUDA backend calls, and for its kernel launchers.
 *
 * Linked instead of libcudart / libcublas / cuda_kernels.o, it lets the
 * backend's host code (cuda_backend.c, transfer.c) run on a machine without
 * a GPU, under ASan, through tests/test_parity.c. It is strict where the
 * real thing would be silently slow or racy:
 *  - every async operation is queued on its stream and runs later, at a
 *    synchronisation point, in a random interleaving of the streams that
 *    respects only what was declared (stream order, cudaStreamWaitEvent):
 *    a missing wait or a pinned buffer reused too early gives wrong
 *    matches, not luck;
 *  - async copies must come from / go to pinned or registered host memory,
 *    and every device range touched (copies, memsets, GEMM operands) must
 *    lie inside one allocation;
 *  - the GEMM accumulates in float32, like tensor cores, not like the
 *    reference, so the parity tolerance is exercised;
 *  - the kernels run as kernels/cuda/emulate.h, the same schedule as
 *    cuda_kernels.cu; a fault makes the error sticky, as on a GPU.
 * Environment: CUDA_VISIBLE_DEVICES="" (no device), FST_CUDA_MOCK_MEM_MB
 * (device memory, 8192; only what is touched is ever resident),
 * FST_CUDA_MOCK_SEED (interleaving).
 * Not thread-safe: one backend per process at a time, as the tests use it.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "fst_base.h"
#include "cuda_kernels.h"
#include "emulate.h"

/* ---- state -------------------------------------------------------------- */

typedef struct range { unsigned char *p; size_t n; } range;

typedef struct ranges { range *v; size_t n, cap; } ranges;

enum { OP_COPY, OP_SET, OP_WAIT, OP_GEMM, OP_REDUCE, OP_COLS, OP_ROWS,
       OP_SPIN };

typedef struct op {
    int kind;
    union {
        struct { void *dst; const void *src; size_t n; } copy;
        struct { void *dst; int v; size_t n; } set;
        struct { struct CUstream_st *s; uint64_t target; } wait;
        struct {
            int m, n, k, lda, ldb, ldc, batch, tf32;
            const void *const *A, *const *B;   /* NULL: strided */
            void *const *C;
            const void *a0, *b0;
            void *c0;
            long long sa, sb, sc;
            cudaDataType at;
            float alpha, beta;
        } gemm;
        struct {
            fst_cu_emu E;
            const fst_cu_item *items;
            uint32_t item0, nitems;
        } k;
        struct { double until; } spin;
    } u;
} op;

struct CUstream_st {
    op      *q;
    size_t   head, n, cap;
    uint64_t issued, done;
    bool     live;
};

struct CUevent_st {
    struct CUstream_st *s;
    uint64_t            target;
    bool                recorded;
};

struct cublasContext {
    struct CUstream_st *s;
};

#define MAX_STREAMS 64

static struct {
    bool                init;
    int                 ndev, dev;
    size_t              total, used;
    cudaError_t         last, sticky;
    ranges              dmem, pinned, registered;
    struct CUstream_st *streams[MAX_STREAMS];
    uint64_t            rng;
} M;

static void mock_init(void)
{
    if (M.init)
        return;
    M.init = true;
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    M.ndev = vis && vis[0] == '\0' ? 0 : 1;
    const char *mem = getenv("FST_CUDA_MOCK_MEM_MB");
    M.total = (size_t)(mem ? strtoull(mem, NULL, 10) : 8192) << 20;
    const char *seed = getenv("FST_CUDA_MOCK_SEED");
    M.rng = seed ? strtoull(seed, NULL, 10) | 1 : 0x9E3779B97F4A7C15ull;
}

static uint64_t rnd(void)
{
    M.rng ^= M.rng >> 12;
    M.rng ^= M.rng << 25;
    M.rng ^= M.rng >> 27;
    return M.rng * 0x2545F4914F6CDD1Dull;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static cudaError_t fail(cudaError_t e, const char *fmt, const char *what)
{
    fprintf(stderr, "cuda mock: ");
    fprintf(stderr, fmt, what);
    fprintf(stderr, "\n");
    M.last = e;
    return e;
}

#define CHECK_STICKY() do { mock_init(); if (M.sticky) return M.sticky; } while (0)

static void ranges_add(ranges *r, void *p, size_t n)
{
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 64;
        r->v = realloc(r->v, r->cap * sizeof *r->v);
        if (!r->v)
            abort();
    }
    r->v[r->n++] = (range){ p, n };
}

/* index of the range starting at p, or -1 */
static long ranges_find(const ranges *r, const void *p)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->v[i].p == p)
            return (long)i;
    return -1;
}

static void ranges_del(ranges *r, long i)
{
    r->v[i] = r->v[--r->n];
}

/* whether [p, p + n) lies inside one range */
static bool ranges_cover(const ranges *r, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < r->n; i++)
        if (c >= r->v[i].p && c + n <= r->v[i].p + r->v[i].n)
            return true;
    return false;
}

static bool overlaps(const ranges *r, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < r->n; i++)
        if (c < r->v[i].p + r->v[i].n && r->v[i].p < c + n)
            return true;
    return false;
}

/* ---- streams and the scheduler ----------------------------------------- */

static void push(struct CUstream_st *s, op o)
{
    if (s->n == s->cap) {
        if (s->head > 0) {
            memmove(s->q, s->q + s->head, (s->n - s->head) * sizeof *s->q);
            s->n -= s->head;
            s->head = 0;
        }
        if (s->n == s->cap) {
            s->cap = s->cap ? 2 * s->cap : 64;
            s->q = realloc(s->q, s->cap * sizeof *s->q);
            if (!s->q)
                abort();
        }
    }
    s->q[s->n++] = o;
    s->issued++;
}

static bool runnable(const struct CUstream_st *s)
{
    if (s->head == s->n)
        return false;
    const op *o = &s->q[s->head];
    if (o->kind == OP_WAIT)
        return o->u.wait.s->done >= o->u.wait.target;
    if (o->kind == OP_SPIN)
        return now_s() >= o->u.spin.until;
    return true;
}

static float half(uint16_t h) { return fst_f16_to_f32(h); }

static float tf32(float x)
{
    uint32_t b;
    memcpy(&b, &x, 4);
    b = (b + 0x1000u) & ~0x1FFFu;
    memcpy(&x, &b, 4);
    return x;
}

static float elem(const void *p, cudaDataType t, size_t i, int round_tf32)
{
    float x = t == CUDA_R_16F ? half(((const uint16_t *)p)[i])
                              : ((const float *)p)[i];
    return round_tf32 ? tf32(x) : x;
}

static const void *opA(const op *o, int b)
{
    size_t es = o->u.gemm.at == CUDA_R_16F ? 2 : 4;
    return o->u.gemm.A ? o->u.gemm.A[b]
                       : (const char *)o->u.gemm.a0 + (size_t)b * o->u.gemm.sa * es;
}

static const void *opB(const op *o, int b)
{
    size_t es = o->u.gemm.at == CUDA_R_16F ? 2 : 4;
    return o->u.gemm.B ? o->u.gemm.B[b]
                       : (const char *)o->u.gemm.b0 + (size_t)b * o->u.gemm.sb * es;
}

static float *opC(const op *o, int b)
{
    return o->u.gemm.C ? (float *)o->u.gemm.C[b]
                       : (float *)o->u.gemm.c0 + (size_t)b * o->u.gemm.sc;
}

/* Every operand inside one device allocation (checked when the GEMM runs:
 * only then are the pointer arrays final). A GPU would fault. */
static bool gemm_in_bounds(const op *o)
{
    size_t es = o->u.gemm.at == CUDA_R_16F ? 2 : 4;
    for (int b = 0; b < o->u.gemm.batch; b++) {
        size_t na = ((size_t)o->u.gemm.m - 1) * o->u.gemm.lda + o->u.gemm.k;
        size_t nb = ((size_t)o->u.gemm.n - 1) * o->u.gemm.ldb + o->u.gemm.k;
        size_t nc = ((size_t)o->u.gemm.n - 1) * o->u.gemm.ldc + o->u.gemm.m;
        if (!ranges_cover(&M.dmem, opA(o, b), na * es) ||
            !ranges_cover(&M.dmem, opB(o, b), nb * es) ||
            !ranges_cover(&M.dmem, opC(o, b), nc * 4)) {
            fprintf(stderr, "cuda mock: GEMM %d of %d: operand outside "
                    "device memory\n", b, o->u.gemm.batch);
            return false;
        }
    }
    return true;
}

/* rows of an operand (k values each, ld apart) as float32 */
static float *widen(const void *p, cudaDataType t, int rows, int k, int ld,
                    int round_tf32)
{
    float *f = malloc(((size_t)rows * k + 1) * sizeof *f);
    if (!f)
        abort();
    for (int r = 0; r < rows; r++)
        for (int p2 = 0; p2 < k; p2++)
            f[(size_t)r * k + p2] = elem(p, t, (size_t)r * ld + p2, round_tf32);
    return f;
}

static void run_gemm(const op *o)
{
    const int m = o->u.gemm.m, n = o->u.gemm.n, k = o->u.gemm.k;
    for (int b = 0; b < o->u.gemm.batch; b++) {
        float *A = widen(opA(o, b), o->u.gemm.at, m, k, o->u.gemm.lda,
                         o->u.gemm.tf32);
        float *B = widen(opB(o, b), o->u.gemm.at, n, k, o->u.gemm.ldb,
                         o->u.gemm.tf32);
        float *C = opC(o, b);
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                const float *x = A + (size_t)i * k, *y = B + (size_t)j * k;
                float acc = 0.0f;            /* fp32 accumulation */
                for (int p = 0; p < k; p++)
                    acc += x[p] * y[p];
                float *c = &C[(size_t)j * o->u.gemm.ldc + i];
                *c = o->u.gemm.alpha * acc +
                     (o->u.gemm.beta != 0 ? o->u.gemm.beta * *c : 0.0f);
            }
        free(A);
        free(B);
    }
}

static void execute(op *o)
{
    switch (o->kind) {
    case OP_COPY:
        memcpy(o->u.copy.dst, o->u.copy.src, o->u.copy.n);
        break;
    case OP_SET:
        memset(o->u.set.dst, o->u.set.v, o->u.set.n);
        break;
    case OP_GEMM:
        if (o->u.gemm.m > 0 && o->u.gemm.n > 0 && !gemm_in_bounds(o)) {
            M.sticky = cudaErrorIllegalAddress;
            break;
        }
        run_gemm(o);
        break;
    case OP_REDUCE:
        if ((uintptr_t)o->u.k.E.colpart < 4096) {
            M.sticky = cudaErrorIllegalAddress;  /* what a GPU would say */
            break;
        }
        for (uint32_t k = 0; k < o->u.k.nitems; k++)
            fst_cu_emu_reduce(&o->u.k.E, o->u.k.items[o->u.k.item0 + k]);
        break;
    case OP_COLS:
        for (uint32_t k = 0; k < o->u.k.nitems; k++)
            fst_cu_emu_cols(&o->u.k.E, o->u.k.items[k]);
        break;
    case OP_ROWS:
        for (uint32_t k = 0; k < o->u.k.nitems; k++)
            fst_cu_emu_rows(&o->u.k.E, o->u.k.items[k]);
        break;
    default:
        break;
    }
}

/* Run one queued operation of a random stream that can run; false if none
 * can (all idle, or waiting for a spin to end). */
static bool step(void)
{
    struct CUstream_st *cand[MAX_STREAMS];
    int n = 0;
    for (int i = 0; i < MAX_STREAMS; i++)
        if (M.streams[i] && runnable(M.streams[i]))
            cand[n++] = M.streams[i];
    if (n == 0)
        return false;
    struct CUstream_st *s = cand[rnd() % (uint64_t)n];
    op o = s->q[s->head];
    if (!M.sticky)                 /* after a fault nothing runs */
        execute(&o);
    s->head++;
    s->done++;
    return true;
}

static bool idle(const struct CUstream_st *s)
{
    return s->head == s->n;
}

static bool all_idle(void)
{
    for (int i = 0; i < MAX_STREAMS; i++)
        if (M.streams[i] && !idle(M.streams[i]))
            return false;
    return true;
}

/* Run until `s` (or every stream, s == NULL) is idle. A stream that cannot
 * progress and is not waiting for a spin is a deadlock: a mock bug. */
static void drain(const struct CUstream_st *s)
{
    while (s ? !idle(s) : !all_idle()) {
        if (!step()) {
            struct timespec ts = { 0, 1000000 };
            nanosleep(&ts, NULL);             /* a spin is running */
        }
    }
}

static bool event_done(const struct CUevent_st *e)
{
    return !e->recorded || e->s->done >= e->target;
}

/* ---- runtime: errors, devices ------------------------------------------ */

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorHostMemoryAlreadyRegistered: return "part or all of the requested memory range is already mapped";
    case cudaErrorHostMemoryNotRegistered: return "pointer does not correspond to a registered memory region";
    default: return "unknown error (mock)";
    }
}

const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    default: return "cudaErrorUnknown";
    }
}

cudaError_t cudaGetLastError(void)
{
    mock_init();
    cudaError_t e = M.sticky ? M.sticky : M.last;
    M.last = cudaSuccess;
    return e;
}

cudaError_t cudaGetDeviceCount(int *count)
{
    mock_init();
    if (M.ndev == 0)
        return M.last = cudaErrorNoDevice;
    *count = M.ndev;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int dev)
{
    CHECK_STICKY();
    if (dev < 0 || dev >= M.ndev)
        return M.last = cudaErrorInvalidDevice;
    M.dev = dev;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int dev)
{
    CHECK_STICKY();
    if (dev < 0 || dev >= M.ndev)
        return M.last = cudaErrorInvalidDevice;
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "featstore CPU mock");
    p->major = 9;
    p->minor = 0;
    p->totalGlobalMem = M.total;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *v, enum cudaDeviceAttr a, int dev)
{
    CHECK_STICKY();
    (void)dev;
    *v = a == cudaDevAttrHostRegisterReadOnlySupported ? 1 : 0;
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b)
{
    CHECK_STICKY();
    *free_b = M.total - M.used;
    *total_b = M.total;
    return cudaSuccess;
}

/* ---- memory ------------------------------------------------------------- */

cudaError_t cudaMalloc(void **p, size_t n)
{
    CHECK_STICKY();
    size_t r = (n + 255) / 256 * 256;
    if (n == 0 || r > M.total - M.used)
        return M.last = cudaErrorMemoryAllocation;
    /* Small buffers from malloc, where ASan sees every stray access; the
     * big ones (workspace, cache) mapped lazily: only touched pages cost. */
    void *q;
    if (r < ((size_t)64 << 20)) {
        q = aligned_alloc(256, r);
    } else {
        q = mmap(NULL, r, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (q == MAP_FAILED)
            q = NULL;
    }
    if (!q)
        return M.last = cudaErrorMemoryAllocation;
    ranges_add(&M.dmem, q, n);
    M.used += r;
    *p = q;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p)
{
    mock_init();
    if (!p)
        return cudaSuccess;
    drain(NULL);                         /* cudaFree synchronises */
    long i = ranges_find(&M.dmem, p);
    if (i < 0)
        return fail(cudaErrorInvalidValue, "cudaFree(%s) of no allocation",
                    "p");
    size_t r = (M.dmem.v[i].n + 255) / 256 * 256;
    M.used -= r;
    ranges_del(&M.dmem, i);
    if (r < ((size_t)64 << 20))
        free(p);
    else
        munmap(p, r);
    return M.sticky ? M.sticky : cudaSuccess;
}

cudaError_t cudaHostAlloc(void **p, size_t n, unsigned flags)
{
    CHECK_STICKY();
    (void)flags;
    void *q = aligned_alloc(4096, (n + 4095) / 4096 * 4096);
    if (!q)
        return M.last = cudaErrorMemoryAllocation;
    ranges_add(&M.pinned, q, n);
    *p = q;
    return cudaSuccess;
}

cudaError_t cudaFreeHost(void *p)
{
    mock_init();
    if (!p)
        return cudaSuccess;
    drain(NULL);
    long i = ranges_find(&M.pinned, p);
    if (i < 0)
        return fail(cudaErrorInvalidValue, "cudaFreeHost(%s) of no allocation",
                    "p");
    ranges_del(&M.pinned, i);
    free(p);
    return cudaSuccess;
}

cudaError_t cudaHostRegister(void *p, size_t n, unsigned flags)
{
    CHECK_STICKY();
    (void)flags;
    if (overlaps(&M.registered, p, n))
        return M.last = cudaErrorHostMemoryAlreadyRegistered;
    ranges_add(&M.registered, p, n);
    return cudaSuccess;
}

cudaError_t cudaHostUnregister(void *p)
{
    mock_init();
    drain(NULL);
    long i = ranges_find(&M.registered, p);
    if (i < 0)
        return M.last = cudaErrorHostMemoryNotRegistered;
    ranges_del(&M.registered, i);
    return cudaSuccess;
}

static bool host_async_ok(const void *p, size_t n)
{
    return ranges_cover(&M.pinned, p, n) || ranges_cover(&M.registered, p, n);
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n,
                            enum cudaMemcpyKind kind, cudaStream_t s)
{
    CHECK_STICKY();
    if (kind == cudaMemcpyHostToDevice) {
        if (!host_async_ok(src, n))
            return fail(cudaErrorInvalidValue, "%s: async copy from pageable "
                        "memory (it would be synchronous and slow)",
                        "cudaMemcpyAsync H2D");
        if (!ranges_cover(&M.dmem, dst, n))
            return fail(cudaErrorInvalidValue, "%s: destination outside any "
                        "allocation", "cudaMemcpyAsync H2D");
    } else if (kind == cudaMemcpyDeviceToHost) {
        if (!ranges_cover(&M.pinned, dst, n))
            return fail(cudaErrorInvalidValue, "%s: async copy to pageable "
                        "memory", "cudaMemcpyAsync D2H");
        if (!ranges_cover(&M.dmem, src, n))
            return fail(cudaErrorInvalidValue, "%s: source outside any "
                        "allocation", "cudaMemcpyAsync D2H");
    } else {
        return fail(cudaErrorInvalidValue, "%s: kind not used by featstore",
                    "cudaMemcpyAsync");
    }
    if (n)
        push(s, (op){ .kind = OP_COPY, .u.copy = { dst, src, n } });
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *dst, int v, size_t n, cudaStream_t s)
{
    CHECK_STICKY();
    if (!ranges_cover(&M.dmem, dst, n))
        return fail(cudaErrorInvalidValue, "%s outside any allocation",
                    "cudaMemsetAsync");
    if (n)
        push(s, (op){ .kind = OP_SET, .u.set = { dst, v, n } });
    return cudaSuccess;
}

/* ---- streams and events -------------------------------------------------- */

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags)
{
    CHECK_STICKY();
    (void)flags;
    for (int i = 0; i < MAX_STREAMS; i++)
        if (!M.streams[i]) {
            M.streams[i] = calloc(1, sizeof *M.streams[i]);
            if (!M.streams[i])
                return M.last = cudaErrorMemoryAllocation;
            M.streams[i]->live = true;
            *s = M.streams[i];
            return cudaSuccess;
        }
    return M.last = cudaErrorMemoryAllocation;
}

cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    mock_init();
    drain(s);
    for (int i = 0; i < MAX_STREAMS; i++)
        if (M.streams[i] == s) {
            M.streams[i] = NULL;
            free(s->q);
            free(s);
            return cudaSuccess;
        }
    return M.last = cudaErrorInvalidValue;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    CHECK_STICKY();
    drain(s);
    return M.sticky ? M.sticky : cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags)
{
    CHECK_STICKY();
    (void)flags;
    if (e->recorded)
        push(s, (op){ .kind = OP_WAIT, .u.wait = { e->s, e->target } });
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *e)
{
    CHECK_STICKY();
    *e = calloc(1, sizeof **e);
    return *e ? cudaSuccess : (M.last = cudaErrorMemoryAllocation);
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags)
{
    (void)flags;
    return cudaEventCreate(e);
}

cudaError_t cudaEventDestroy(cudaEvent_t e)
{
    free(e);
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s)
{
    CHECK_STICKY();
    e->s = s;
    e->target = s->issued;
    e->recorded = true;
    return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t e)
{
    CHECK_STICKY();
    /* a little progress per poll: the caller sees "not ready" sometimes */
    for (uint64_t k = rnd() % 4; k > 0 && !event_done(e); k--)
        if (!step())
            break;
    if (M.sticky)
        return M.sticky;
    return event_done(e) ? cudaSuccess : cudaErrorNotReady;
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b)
{
    CHECK_STICKY();
    if (!event_done(a) || !event_done(b))
        return M.last = cudaErrorNotReady;
    *ms = 0.01f;
    return cudaSuccess;
}

/* ---- the kernels -------------------------------------------------------- */

cudaError_t fst__cu_launch_reduce(const float *ws, const fst_cu_tile *tiles,
                                  const fst_cu_pair *pairs,
                                  const fst_cu_item *items, uint32_t item0,
                                  uint32_t nitems, fst_top2 *colpart,
                                  uint32_t *out, fst_cu_rule rule,
                                  cudaStream_t st)
{
    CHECK_STICKY();
    op o = { .kind = OP_REDUCE };
    o.u.k.E = (fst_cu_emu){ ws, tiles, pairs, colpart, NULL, out, NULL, rule,
                            NULL };
    o.u.k.items = items;
    o.u.k.item0 = item0;
    o.u.k.nitems = nitems;
    if (nitems)
        push(st, o);
    return cudaSuccess;
}

cudaError_t fst__cu_launch_cols(const fst_cu_pair *pairs,
                                const fst_cu_item *items, uint32_t nitems,
                                const fst_top2 *colpart, int32_t *m1,
                                fst_cu_rule rule, cudaStream_t st)
{
    CHECK_STICKY();
    op o = { .kind = OP_COLS };
    o.u.k.E = (fst_cu_emu){ NULL, NULL, pairs, (fst_top2 *)colpart, m1, NULL,
                            NULL, rule, NULL };
    o.u.k.items = items;
    o.u.k.nitems = nitems;
    if (nitems)
        push(st, o);
    return cudaSuccess;
}

cudaError_t fst__cu_launch_rows(const fst_cu_pair *pairs,
                                const fst_cu_item *items, uint32_t nitems,
                                const int32_t *m1, uint32_t *out,
                                uint32_t *nmatch, fst_cu_rule rule,
                                cudaStream_t st)
{
    CHECK_STICKY();
    op o = { .kind = OP_ROWS };
    o.u.k.E = (fst_cu_emu){ NULL, NULL, pairs, NULL, (int32_t *)m1, out,
                            nmatch, rule, NULL };
    o.u.k.items = items;
    o.u.k.nitems = nitems;
    if (nitems)
        push(st, o);
    return cudaSuccess;
}

cudaError_t fst__cu_launch_spin(double seconds, cudaStream_t st)
{
    CHECK_STICKY();
    push(st, (op){ .kind = OP_SPIN, .u.spin = { now_s() + seconds } });
    return cudaSuccess;
}

cudaError_t fst__cu_kernels_loadable(int *built_for)
{
    CHECK_STICKY();
    *built_for = 90;
    return cudaSuccess;
}

/* ---- cuBLAS -------------------------------------------------------------- */

const char *cublasGetStatusString(cublasStatus_t s)
{
    return s == CUBLAS_STATUS_SUCCESS ? "success" : "mock cuBLAS failure";
}

const char *cublasGetStatusName(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    default: return "CUBLAS_STATUS_(mock)";
    }
}

cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    mock_init();
    if (M.sticky || M.ndev == 0)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    *h = calloc(1, sizeof **h);
    return *h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}

cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    free(h);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s)
{
    h->s = s;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetPointerMode(cublasHandle_t h, cublasPointerMode_t m)
{
    (void)h;
    return m == CUBLAS_POINTER_MODE_HOST ? CUBLAS_STATUS_SUCCESS
                                         : CUBLAS_STATUS_NOT_SUPPORTED;
}

cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void *ws, size_t n)
{
    (void)h;
    return ranges_cover(&M.dmem, ws, n) ? CUBLAS_STATUS_SUCCESS
                                        : CUBLAS_STATUS_INVALID_VALUE;
}

/* only what featstore uses: C = A^T B, fp16 or fp32 in, fp32 out */
static bool gemm_args_ok(cublasOperation_t ta, cublasOperation_t tb, int m,
                         int n, int k, cudaDataType at, int lda,
                         cudaDataType bt, int ldb, cudaDataType ct, int ldc,
                         int batch, cublasComputeType_t comp)
{
    if (ta != CUBLAS_OP_T || tb != CUBLAS_OP_N || m < 0 || n < 0 || k < 1 ||
        lda < k || ldb < k || ldc < (m > 1 ? m : 1) || batch < 0 ||
        at != bt || ct != CUDA_R_32F ||
        (at != CUDA_R_16F && at != CUDA_R_32F) ||
        (comp != CUBLAS_COMPUTE_32F &&
         !(comp == CUBLAS_COMPUTE_32F_FAST_TF32 && at == CUDA_R_32F))) {
        fprintf(stderr, "cuda mock: GEMM: unsupported or invalid arguments\n");
        return false;
    }
    return true;
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h,
    cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
    const void *alpha, const void *A, cudaDataType at, int lda, long long sa,
    const void *B, cudaDataType bt, int ldb, long long sb, const void *beta,
    void *C, cudaDataType ct, int ldc, long long sc, int batch,
    cublasComputeType_t comp, cublasGemmAlgo_t algo)
{
    (void)algo;
    if (M.sticky)
        return CUBLAS_STATUS_EXECUTION_FAILED;
    if (!gemm_args_ok(ta, tb, m, n, k, at, lda, bt, ldb, ct, ldc, batch, comp))
        return CUBLAS_STATUS_INVALID_VALUE;
    op o = { .kind = OP_GEMM };
    o.u.gemm.m = m;
    o.u.gemm.n = n;
    o.u.gemm.k = k;
    o.u.gemm.lda = lda;
    o.u.gemm.ldb = ldb;
    o.u.gemm.ldc = ldc;
    o.u.gemm.batch = batch;
    o.u.gemm.tf32 = comp == CUBLAS_COMPUTE_32F_FAST_TF32;
    o.u.gemm.a0 = A;
    o.u.gemm.b0 = B;
    o.u.gemm.c0 = C;
    o.u.gemm.sa = sa;
    o.u.gemm.sb = sb;
    o.u.gemm.sc = sc;
    o.u.gemm.at = at;
    o.u.gemm.alpha = *(const float *)alpha;
    o.u.gemm.beta = *(const float *)beta;
    if (batch > 0)
        push(h->s, o);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmBatchedEx(cublasHandle_t h, cublasOperation_t ta,
                                   cublasOperation_t tb, int m, int n, int k,
                                   const void *alpha, const void *const A[],
                                   cudaDataType at, int lda,
                                   const void *const B[], cudaDataType bt,
                                   int ldb, const void *beta,
                                   void *const C[], cudaDataType ct, int ldc,
                                   int batch, cublasComputeType_t comp,
                                   cublasGemmAlgo_t algo)
{
    (void)algo;
    if (M.sticky)
        return CUBLAS_STATUS_EXECUTION_FAILED;
    if (!gemm_args_ok(ta, tb, m, n, k, at, lda, bt, ldb, ct, ldc, batch, comp))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (batch == 0)
        return CUBLAS_STATUS_SUCCESS;
    /* the pointer arrays live in device memory: read at execution time */
    if (!ranges_cover(&M.dmem, A, batch * sizeof *A) ||
        !ranges_cover(&M.dmem, B, batch * sizeof *B) ||
        !ranges_cover(&M.dmem, C, batch * sizeof *C)) {
        fprintf(stderr, "cuda mock: cublasGemmBatchedEx: pointer arrays "
                "outside device memory\n");
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    op o = { .kind = OP_GEMM };
    o.u.gemm.m = m;
    o.u.gemm.n = n;
    o.u.gemm.k = k;
    o.u.gemm.lda = lda;
    o.u.gemm.ldb = ldb;
    o.u.gemm.ldc = ldc;
    o.u.gemm.batch = batch;
    o.u.gemm.tf32 = comp == CUBLAS_COMPUTE_32F_FAST_TF32;
    o.u.gemm.A = A;
    o.u.gemm.B = B;
    o.u.gemm.C = C;
    o.u.gemm.at = at;
    o.u.gemm.alpha = *(const float *)alpha;
    o.u.gemm.beta = *(const float *)beta;
    push(h->s, o);
    return CUBLAS_STATUS_SUCCESS;
}
