/* kernels/cuda/cuda_backend.c : the "cuda" backend behind fst_kernels.h.
 *
 * A batch of pairs runs as chunks (plan.c): for each chunk, the distinct
 * images are placed in the device-resident cache (devcache.c) and the
 * missing ones uploaded on the copy stream (transfer.c); then, on the
 * compute stream, the chunk's tables go up, cuBLAS computes the similarity
 * blocks (batched GEMM per shape: float16 with float32 accumulation on
 * tensor cores; float32 exact unless tf32=1), our kernels reduce them
 * (cuda_kernels.cu) and the matches come home to pinned memory. Two chunks
 * are in flight: while the GPU runs chunk k, the host places and uploads
 * chunk k+1 and unpacks chunk k-1 into the caller's arrays.
 *
 * Errors: no driver or no device is FST_ENODEVICE at open ("no CUDA device:
 * ..."); any failing CUDA or cuBLAS call, an out-of-memory or a wait that
 * exceeds timeout_s is FST_EDEVICE naming the device and the call, after
 * which the backend only accepts close. Nothing here aborts or waits
 * without a deadline.
 */
#include "cuda_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- errors and waiting ------------------------------------------------ */

static const char *where(const fst_backend *be)
{
    const fst_cuda *cu = be->impl;
    return cu ? cu->where : "cuda";
}

fst_status fst__cu_fail(fst_backend *be, cudaError_t e, const char *what)
{
    be->failed = true;
    return fst__fail(FST_EDEVICE, "%s: %s: %s (%s)", where(be), what,
                     cudaGetErrorString(e), cudaGetErrorName(e));
}

fst_status fst__cu_blas_fail(fst_backend *be, cublasStatus_t e,
                             const char *what)
{
    be->failed = true;
    return fst__fail(FST_EDEVICE, "%s: %s: %s (%s)", where(be), what,
                     cublasGetStatusString(e), cublasGetStatusName(e));
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

fst_status fst__cu_wait(fst_backend *be, cudaEvent_t ev, const char *what)
{
    fst_cuda *cu = be->impl;
    double t0 = 0;
    for (unsigned spin = 0;; spin++) {
        cudaError_t e = cudaEventQuery(ev);
        if (e == cudaSuccess)
            return FST_OK;
        if (e != cudaErrorNotReady)
            return fst__cu_fail(be, e, what);
        if (spin < 64)
            continue;                 /* short waits: stay on the CPU */
        if (t0 == 0)
            t0 = now_s();
        else if (now_s() - t0 > cu->prm.timeout_s) {
            cu->hung = true;
            be->failed = true;
            return fst__fail(FST_EDEVICE, "%s: %s: no progress in %u s "
                             "(timeout_s); the device is left as it is",
                             cu->where, what, cu->prm.timeout_s);
        }
        struct timespec ts = { 0, 20000 };
        nanosleep(&ts, NULL);
    }
}

/* ---- buffers ----------------------------------------------------------- */

static size_t align_up(size_t v, size_t a)
{
    return (v + a - 1) / a * a;
}

/* Capacities for a workspace of W floats; see plan.h. Every whole pair
 * takes at least pad x pad floats of it, which bounds the rest. */
static fst_cu_caps caps_for(uint64_t W, uint32_t pad)
{
    fst_cu_caps c;
    uint64_t P = W / ((uint64_t)pad * pad);
    if (P < 1) P = 1;
    if (P > 16384) P = 16384;
    c.ws = W;
    c.pairs = (uint32_t)P;
    c.tiles = (uint32_t)P;
    c.colpart = W / FST_CU_STRIP;
    c.m1 = W / pad;
    c.out = 2 * (W / pad) + P;
    c.items = (uint32_t)(3 * (W / ((uint64_t)FST_CU_STRIP * pad)) + 2 * P);
    c.img_bytes = 0;                                  /* set from the cache */
    return c;
}

static size_t args_layout(fst_cuda *cu, const fst_cu_caps *c)
{
    cu->off_tiles = align_up((size_t)c->pairs * sizeof(fst_cu_pair), 256);
    cu->off_items = cu->off_tiles +
                    align_up((size_t)c->tiles * sizeof(fst_cu_tile), 256);
    cu->off_ptrs = cu->off_items +
                   align_up((size_t)c->items * sizeof(fst_cu_item), 256);
    return cu->off_ptrs + 3 * (size_t)c->tiles * sizeof(void *);
}

static uint64_t chunk_device_bytes(const fst_cu_caps *c, size_t args)
{
    return c->ws * sizeof(float) + c->colpart * sizeof(fst_top2) +
           c->m1 * sizeof(int32_t) + c->out * sizeof(uint32_t) + args;
}

static void free_chunk_buffers(fst_cuda *cu)
{
    cudaFree(cu->colpart);
    cudaFree(cu->m1);
    cudaFree(cu->out_dev);
    cudaFree(cu->args_dev);
    cu->colpart = NULL;
    cu->m1 = NULL;
    cu->out_dev = NULL;
    cu->args_dev = NULL;
    for (int i = 0; i < 2; i++) {
        fst_cu_slot *sl = &cu->slot[i];
        cudaFreeHost(sl->args_host);
        cudaFreeHost(sl->out_host);
        free(sl->gemms);
        free(sl->passes);
        free(sl->jobs);
        free(sl->imgs);
        sl->args_host = NULL;
        sl->out_host = NULL;
        sl->gemms = NULL;
        sl->passes = NULL;
        sl->jobs = NULL;
        sl->imgs = NULL;
    }
}

/* (Re)allocate everything sized by the caps but the workspace. No chunk may
 * be in flight. */
static fst_status alloc_chunk_buffers(fst_backend *be, const fst_cu_caps *c)
{
    fst_cuda *cu = be->impl;
    fst_status s = FST_OK;
    free_chunk_buffers(cu);
    cu->caps = *c;
    cu->args_bytes = args_layout(cu, c);
    FST_CUDA_TRY(be, cudaMalloc((void **)&cu->colpart,
                                c->colpart * sizeof(fst_top2)));
    FST_CUDA_TRY(be, cudaMalloc((void **)&cu->m1,
                                (c->m1 ? c->m1 : 1) * sizeof(int32_t)));
    FST_CUDA_TRY(be, cudaMalloc((void **)&cu->out_dev,
                                c->out * sizeof(uint32_t)));
    FST_CUDA_TRY(be, cudaMalloc((void **)&cu->args_dev, cu->args_bytes));
    for (int i = 0; i < 2; i++) {
        fst_cu_slot *sl = &cu->slot[i];
        FST_CUDA_TRY(be, cudaHostAlloc((void **)&sl->args_host, cu->args_bytes,
                                       cudaHostAllocDefault));
        FST_CUDA_TRY(be, cudaHostAlloc((void **)&sl->out_host,
                                       c->out * sizeof(uint32_t),
                                       cudaHostAllocDefault));
        sl->gemms = malloc(c->tiles * sizeof *sl->gemms);
        sl->passes = malloc(c->tiles * sizeof *sl->passes);
        sl->jobs = malloc(c->pairs * sizeof *sl->jobs);
        sl->imgs = malloc(2 * (size_t)c->pairs * sizeof *sl->imgs);
        if (!sl->gemms || !sl->passes || !sl->jobs || !sl->imgs) {
            s = fst__fail(FST_ENOMEM, "%s: chunk tables", cu->where);
            goto out;
        }
        fst_cu_plan *pl = &sl->plan;
        memset(pl, 0, sizeof *pl);
        pl->pairs = (fst_cu_pair *)sl->args_host;
        pl->tiles = (fst_cu_tile *)(sl->args_host + cu->off_tiles);
        pl->items = (fst_cu_item *)(sl->args_host + cu->off_items);
        pl->gemms = sl->gemms;
        pl->passes = sl->passes;
        pl->jobs = sl->jobs;
        pl->imgs = sl->imgs;
    }
out:
    return s;
}

/* ---- open / close ------------------------------------------------------ */

static void cu_close(fst_backend *be)
{
    fst_cuda *cu = be->impl;
    if (!cu)
        return;
    if (!cu->hung) {
        /* After a timeout the device may still run our kernels: freeing
         * would wait for them. The process is about to exit; let it. */
        if (cu->compute) (void)cudaStreamSynchronize(cu->compute);
        if (cu->copy)    (void)cudaStreamSynchronize(cu->copy);
        fst__cu_unregister_all(cu);
        free_chunk_buffers(cu);
        cudaFree(cu->ws);
        cudaFree(cu->cache_dev);
        cudaFree(cu->blas_ws);
        cudaFreeHost(cu->ring);
        for (int i = 0; i < 2; i++) {
            fst_cu_slot *sl = &cu->slot[i];
            if (sl->uploaded) cudaEventDestroy(sl->uploaded);
            if (sl->done) cudaEventDestroy(sl->done);
            if (sl->t0) cudaEventDestroy(sl->t0);
            if (sl->t1) cudaEventDestroy(sl->t1);
            if (sl->t2) cudaEventDestroy(sl->t2);
        }
        for (int i = 0; i < FST_CU_RING_SEGS; i++)
            if (cu->seg[i].ev) cudaEventDestroy(cu->seg[i].ev);
        if (cu->blas) cublasDestroy(cu->blas);
        if (cu->compute) cudaStreamDestroy(cu->compute);
        if (cu->copy) cudaStreamDestroy(cu->copy);
        (void)cudaGetLastError();
    } else {
        for (int i = 0; i < 2; i++) {          /* host-only parts */
            free(cu->slot[i].gemms);
            free(cu->slot[i].passes);
            free(cu->slot[i].jobs);
            free(cu->slot[i].imgs);
        }
        free(cu->regions);
    }
    fst__cu_cache_destroy(cu->cache);
    free(cu->imgs);
    free(cu->pjobs);
    free(cu->jix);
    free(cu->order);
    free(cu->img_bytes);
    free(cu->img_mark);
    free(cu->hkeys);
    free(cu->hvals);
    free(cu);
    be->impl = NULL;
}

static const char *visible_devices(void)
{
    const char *v = getenv("CUDA_VISIBLE_DEVICES");
    return v ? v : "unset";
}

static fst_status cu_open(fst_backend *be, const char *params)
{
    fst_cu_params prm;
    fst_status s = fst__cu_params_parse(params, &prm);
    if (s != FST_OK)
        return s;

    /* Before anything else touches CUDA: is there a device at all? */
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return fst__fail(FST_ENODEVICE, "no CUDA device: %s (%s)",
                         cudaGetErrorString(e), cudaGetErrorName(e));
    }
    if (count <= 0)
        return fst__fail(FST_ENODEVICE, "no CUDA device: none visible "
                         "(CUDA_VISIBLE_DEVICES=%s)", visible_devices());
    if (prm.device >= count)
        return fst__fail(FST_EINVAL, "cuda backend: device=%d: only %d CUDA "
                         "device(s) visible (CUDA_VISIBLE_DEVICES=%s)",
                         prm.device, count, visible_devices());

    fst_cuda *cu = calloc(1, sizeof *cu);
    if (!cu)
        return fst__fail(FST_ENOMEM, "cuda backend: state");
    be->impl = cu;
    cu->prm = prm;
    cu->dev = prm.device;
    snprintf(cu->where, sizeof cu->where, "cuda:%d", prm.device);
    cu->rule.ratio2 = fst_thresh2(be->opts.ratio_threshold);
    cu->rule.dist2 = fst_thresh2(be->opts.distance_threshold);
    cu->rule.mutual = be->opts.mutual ? 1 : 0;

    FST_CUDA_TRY(be, cudaSetDevice(cu->dev));
    struct cudaDeviceProp prop;
    FST_CUDA_TRY(be, cudaGetDeviceProperties(&prop, cu->dev));
    snprintf(cu->where, sizeof cu->where, "cuda:%d (%.100s, sm_%d%d, pci "
             "%04x:%02x:%02x)", cu->dev, prop.name, prop.major & 0xff,
             prop.minor & 0xff, prop.pciDomainID & 0xffff,
             prop.pciBusID & 0xff, prop.pciDeviceID & 0xff);
    int built = 0;
    e = fst__cu_kernels_loadable(&built);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        s = fst__fail(FST_ENODEVICE, "%s: this build has no kernels for it "
                      "(%s); rebuild with -Dcuda_args=-gencode=arch=compute_%d%d,"
                      "code=sm_%d%d", cu->where, cudaGetErrorString(e),
                      prop.major, prop.minor, prop.major, prop.minor);
        goto out;
    }
    int ro = 0;
    if (cudaDeviceGetAttribute(&ro, cudaDevAttrHostRegisterReadOnlySupported,
                               cu->dev) != cudaSuccess) {
        (void)cudaGetLastError();
        ro = 0;
    }
    cu->ro_register = ro != 0;

    FST_CUDA_TRY(be, cudaStreamCreateWithFlags(&cu->compute,
                                               cudaStreamNonBlocking));
    FST_CUDA_TRY(be, cudaStreamCreateWithFlags(&cu->copy,
                                               cudaStreamNonBlocking));
    for (int i = 0; i < 2; i++) {
        fst_cu_slot *sl = &cu->slot[i];
        FST_CUDA_TRY(be, cudaEventCreateWithFlags(&sl->uploaded,
                                                  cudaEventDisableTiming));
        FST_CUDA_TRY(be, cudaEventCreateWithFlags(&sl->done,
                                                  cudaEventDisableTiming));
        FST_CUDA_TRY(be, cudaEventCreate(&sl->t0));
        FST_CUDA_TRY(be, cudaEventCreate(&sl->t1));
        FST_CUDA_TRY(be, cudaEventCreate(&sl->t2));
    }
    for (int i = 0; i < FST_CU_RING_SEGS; i++)
        FST_CUDA_TRY(be, cudaEventCreateWithFlags(&cu->seg[i].ev,
                                                  cudaEventDisableTiming));
    FST_CUBLAS_TRY(be, cublasCreate(&cu->blas));
    FST_CUBLAS_TRY(be, cublasSetStream(cu->blas, cu->compute));
    FST_CUBLAS_TRY(be, cublasSetPointerMode(cu->blas, CUBLAS_POINTER_MODE_HOST));
    /* our own workspace: cuBLAS never allocates behind our back */
    cu->blas_ws_bytes = 32 * FST_CU_MB;
    FST_CUDA_TRY(be, cudaMalloc(&cu->blas_ws, cu->blas_ws_bytes));
    FST_CUBLAS_TRY(be, cublasSetWorkspace(cu->blas, cu->blas_ws,
                                          cu->blas_ws_bytes));

    /* Memory: workspaces first, then the cache takes what is left. */
    size_t free_b = 0, total_b = 0;
    FST_CUDA_TRY(be, cudaMemGetInfo(&free_b, &total_b));
    uint64_t W = prm.sim_mb * FST_CU_MB / sizeof(float);
    fst_cu_caps caps = caps_for(W, prm.pad);
    uint64_t work = chunk_device_bytes(&caps, args_layout(cu, &caps));
    uint64_t cache;
    if (prm.cache_mb) {
        cache = prm.cache_mb * FST_CU_MB;
        if (cache + work > free_b) {
            s = fst__fail(FST_EINVAL, "cuda backend: cache_mb=%llu: %s has "
                          "%llu MB free and needs %llu MB for its workspaces",
                          (unsigned long long)prm.cache_mb, cu->where,
                          (unsigned long long)(free_b / FST_CU_MB),
                          (unsigned long long)(work / FST_CU_MB));
            goto out;
        }
    } else {
        uint64_t head = prm.headroom_mb * FST_CU_MB;
        uint64_t avail = free_b > head ? free_b - head : 0;
        uint64_t fair = total_b > head ? (total_b - head) / prm.share : 0;
        if (fair < avail)
            avail = fair;
        cache = avail > work ? avail - work : 0;
        if (cache < 64 * FST_CU_MB) {
            s = fst__fail(FST_EINVAL, "cuda backend: %s: %llu MB free of "
                          "%llu MB leaves %llu MB for the descriptor cache "
                          "after headroom_mb=%llu, share=%u and %llu MB of "
                          "workspaces; lower headroom_mb or sim_mb, or set "
                          "cache_mb", cu->where,
                          (unsigned long long)(free_b / FST_CU_MB),
                          (unsigned long long)(total_b / FST_CU_MB),
                          (unsigned long long)(cache / FST_CU_MB),
                          (unsigned long long)prm.headroom_mb, prm.share,
                          (unsigned long long)(work / FST_CU_MB));
            goto out;
        }
    }
    FST_CUDA_TRY(be, cudaMalloc((void **)&cu->ws, W * sizeof(float)));
    FST_TRY(alloc_chunk_buffers(be, &caps));
    FST_CUDA_TRY(be, cudaMalloc((void **)&cu->cache_dev, cache));
    FST_TRY(fst__cu_cache_create(cache, 256, &cu->cache));
    {
        fst_cu_cache_stats cs;
        fst__cu_cache_stats(cu->cache, &cs);
        cu->caps.img_bytes = cs.capacity / 2;  /* two chunks in flight */
    }
    cu->ring_bytes = prm.ring_mb * FST_CU_MB;
    FST_CUDA_TRY(be, cudaHostAlloc((void **)&cu->ring, cu->ring_bytes,
                                   cudaHostAllocWriteCombined));
    return FST_OK;
out:
    if (s == FST_EDEVICE) {
        /* The message names the call; open failures are not "failed
         * backends": there is none to close. */
        be->failed = false;
    }
    cu_close(be);
    return s;
}

/* ---- one batch --------------------------------------------------------- */

/* Grow *p to hold `need` elements of `elem` bytes (capacity *cap, shared
 * by arrays that grow together: the caller updates it after all of them). */
static fst_status grow(void **p, size_t cap, size_t need, size_t elem)
{
    if (need <= cap)
        return FST_OK;
    void *q = realloc(*p, need * elem);
    if (!q)
        return fst__fail(FST_ENOMEM, "cuda backend: batch of %zu", need);
    *p = q;
    return FST_OK;
}

static size_t next_pow2(size_t n)
{
    size_t c = 64;
    while (c < n)
        c *= 2;
    return c;
}

static fst_status batch_scratch(fst_cuda *cu, size_t njobs)
{
    fst_status s = FST_OK;
    size_t cj = next_pow2(njobs), ci = next_pow2(2 * njobs);
    if (njobs > cu->cap_jobs) {
        FST_TRY(grow((void **)&cu->pjobs, cu->cap_jobs, cj, sizeof *cu->pjobs));
        FST_TRY(grow((void **)&cu->jix, cu->cap_jobs, cj, sizeof *cu->jix));
        FST_TRY(grow((void **)&cu->order, cu->cap_jobs, cj, sizeof *cu->order));
        cu->cap_jobs = cj;
    }
    if (2 * njobs > cu->cap_imgs) {
        FST_TRY(grow((void **)&cu->imgs, cu->cap_imgs, ci, sizeof *cu->imgs));
        FST_TRY(grow((void **)&cu->img_bytes, cu->cap_imgs, ci,
                     sizeof *cu->img_bytes));
        FST_TRY(grow((void **)&cu->img_mark, cu->cap_imgs, ci,
                     sizeof *cu->img_mark));
        cu->cap_imgs = ci;
    }
    /* image table: open addressing on the desc pointer, load <= 1/2 */
    if (2 * ci > cu->cap_hash) {
        FST_TRY(grow((void **)&cu->hkeys, cu->cap_hash, 2 * ci,
                     sizeof *cu->hkeys));
        FST_TRY(grow((void **)&cu->hvals, cu->cap_hash, 2 * ci,
                     sizeof *cu->hvals));
        cu->cap_hash = 2 * ci;
    }
    memset(cu->hkeys, 0, cu->cap_hash * sizeof *cu->hkeys);
out:
    return s;
}

/* The batch's id of the image viewed by v (same desc pointer, same image). */
static uint32_t image_id(fst_cuda *cu, const fst_view *v, uint32_t *nimgs)
{
    size_t mask = cu->cap_hash - 1;
    size_t h = ((uintptr_t)v->desc >> 4) * 0x9E3779B97F4A7C15ull;
    for (size_t i = (h >> 17) & mask;; i = (i + 1) & mask) {
        if (cu->hkeys[i] == v->desc) {
            const fst_view *w = cu->imgs[cu->hvals[i]].v;
            if (w->n == v->n && w->d == v->d && w->dtype == v->dtype)
                return cu->hvals[i];
            continue;                /* same bytes, other shape: another id */
        }
        if (cu->hkeys[i] == NULL) {
            uint32_t id = (*nimgs)++;
            cu->hkeys[i] = v->desc;
            cu->hvals[i] = id;
            cu->imgs[id] = (fst_cu_img){ .v = v,
                .bytes = fst_cu_img_bytes(v->n, v->d,
                                          (uint32_t)fst_dtype_size(v->dtype),
                                          cu->prm.pad) };
            cu->img_bytes[id] = cu->imgs[id].bytes;
            cu->img_mark[id] = 0;
            return id;
        }
    }
}

/* Validate one job (fst__match_check, then what this backend can hold).
 * @return FST_OK (to plan), FST_DONE (answered: no keypoints on a side, or
 *         d == 0, which the reference answers on the host), or the job's
 *         error; the detail message is only written for the `first` one. */
static fst_status check_job(fst_backend *be, fst_match_job *j, bool first)
{
    fst_cuda *cu = be->impl;
    char keep[1024];
    if (!first)                   /* keep the first failure's detail */
        snprintf(keep, sizeof keep, "%s", fst_errdetail());
    fst_status s = fst__match_check(j->a, j->b, j->out);
    if (s == FST_OK && j->a->d == 0)   /* all similarities are 0 */
        s = fst_match_reference(j->a, j->b, &be->opts, j->out) == FST_OK
                ? FST_DONE : FST_ENOMEM;
    if (s != FST_OK) {
        if (!first && s != FST_DONE)
            fst__fail(s, "%s", keep);
        return s;
    }
    const fst_view *a = j->a, *b = j->b;
    const char *na = a->name ? a->name : "(unnamed)";
    const char *nb = b->name ? b->name : "(unnamed)";
    if (a->n > INT32_MAX || b->n > INT32_MAX) {
        s = FST_EINVAL;
        if (first)
            fst__fail(s, "match %s - %s: more than 2^31 keypoints", na, nb);
    }
    fst_cu_pjob pj = { a->n, b->n, a->d, a->dtype, 0, 0 };
    fst_cu_caps need;
    fst__cu_plan_need(&pj, cu->prm.pad, cu->caps.ws, cu->rule.mutual, &need);
    if (s == FST_OK && need.ws > cu->caps.ws) {
        s = FST_EINVAL;
        if (first)
            fst__fail(s, "match %s - %s: %u keypoints in %s: one strip of "
                      "%d rows needs %llu MB of similarity workspace, more "
                      "than sim_mb=%llu", na, nb, b->n, nb, FST_CU_STRIP,
                      (unsigned long long)(need.ws * 4 / FST_CU_MB),
                      (unsigned long long)cu->prm.sim_mb);
    }
    uint32_t es = (uint32_t)fst_dtype_size(a->dtype);
    uint64_t ib = fst_cu_img_bytes(a->n, a->d, es, cu->prm.pad) +
                  fst_cu_img_bytes(b->n, b->d, es, cu->prm.pad);
    if (s == FST_OK && ib > cu->caps.img_bytes) {
        s = FST_ENOMEM;
        if (first)
            fst__fail(s, "match %s - %s: the two images need %llu MB on %s; "
                      "a chunk may use half the cache, %llu MB (raise "
                      "cache_mb)", na, nb, (unsigned long long)(ib / FST_CU_MB),
                      cu->where,
                      (unsigned long long)(cu->caps.img_bytes / FST_CU_MB));
    }
    return s;
}

/* Make sure one chunk can hold any single pair of the batch. */
static fst_status fit_caps(fst_backend *be, uint32_t npj)
{
    fst_cuda *cu = be->impl;
    fst_cu_caps c = cu->caps, need;
    bool more = false;
    for (uint32_t i = 0; i < npj; i++) {
        fst__cu_plan_need(&cu->pjobs[i], cu->prm.pad, c.ws, cu->rule.mutual,
                          &need);
#define FIT_(f) if (need.f > c.f) { c.f = need.f; more = true; }
        FIT_(pairs) FIT_(tiles) FIT_(items) FIT_(colpart) FIT_(m1) FIT_(out)
#undef FIT_
    }
    if (!more)
        return FST_OK;
    /* rare: a pair split over many tiles; nothing is in flight here. A
     * failure leaves the buffers half made: only close from then on. */
    fst_status s = alloc_chunk_buffers(be, &c);
    if (s != FST_OK)
        be->failed = true;
    return s;
}

/* Place the chunk's images in the cache; EFULL never escapes. */
static fst_status place_images(fst_backend *be, fst_cu_slot *sl,
                               fst_cu_slot *other)
{
    fst_cuda *cu = be->impl;
    fst_cu_plan *pl = &sl->plan;
    fst_status s = FST_OK;
    bool cleared = false;
    uint32_t hits = 0, misses = 0;
restart:
    hits = misses = 0;
    for (uint32_t k = 0; k < pl->nimgs; k++) {
        fst_cu_img *im = &cu->imgs[pl->imgs[k]];
        const fst_view *v = im->v;
        size_t raw = (size_t)v->n * v->d * fst_dtype_size(v->dtype);
        fst_cu_key key = { v->name, v->n, v->d, (uint32_t)v->dtype,
                           fst__cu_fingerprint(v->desc, raw,
                                               v->name ? 0 : (uintptr_t)v->desc) };
        bool hit = false;
        for (;;) {
            s = fst__cu_cache_get(cu->cache, &key, im->bytes, sl->seq,
                                  cu->done, &im->off, &hit);
            if (s != FST_EFULL)
                break;
            if (other->busy && other->seq > cu->done) {
                /* the chunk in flight holds what we would evict */
                FST_TRY(fst__cu_wait(be, other->done, "previous chunk"));
                cu->done = other->seq;
                continue;
            }
            if (!cleared) {
                /* fragmented by this chunk's own entries: nothing on the
                 * device uses the cache now; start afresh (a chunk takes at
                 * most half the cache, so it fits an empty one) */
                fst__cu_cache_clear(cu->cache);
                cleared = true;
                goto restart;
            }
            s = fst__fail(FST_ENOMEM, "%s: descriptor cache cannot place a "
                          "chunk of %llu MB", cu->where,
                          (unsigned long long)(pl->img_bytes / FST_CU_MB));
            goto out;
        }
        if (s != FST_OK)
            goto out;
        im->upload = !hit;
        hits += hit;
        misses += !hit;
    }
    cu->n_hits += hits;
    cu->n_misses += misses;
out:
    return s;
}

static cudaDataType_t cuda_type(uint32_t dtype)
{
    return dtype == FST_DTYPE_F16 ? CUDA_R_16F : CUDA_R_32F;
}

/* Everything for one chunk, enqueued; nothing waited for but the room in
 * the cache and the ring. */
static fst_status enqueue_chunk(fst_backend *be, fst_cu_slot *sl,
                                fst_cu_slot *other)
{
    fst_cuda *cu = be->impl;
    fst_cu_plan *pl = &sl->plan;
    fst_status s = FST_OK;
    sl->seq = ++cu->seq;
    FST_TRY(place_images(be, sl, other));

    /* uploads, copy stream */
    bool any = false;
    for (uint32_t k = 0; k < pl->nimgs; k++) {
        fst_cu_img *im = &cu->imgs[pl->imgs[k]];
        if (!im->upload)
            continue;
        const fst_view *v = im->v;
        size_t raw = (size_t)v->n * v->d * fst_dtype_size(v->dtype);
        unsigned char *dst = cu->cache_dev + im->off;
        FST_TRY(fst__cu_upload(be, dst, v->desc, raw));
        if (im->bytes > raw)      /* padding rows: zeros, never garbage */
            FST_CUDA_TRY(be, cudaMemsetAsync(dst + raw, 0, im->bytes - raw,
                                             cu->copy));
        any = true;
    }
    if (any) {
        FST_CUDA_TRY(be, cudaEventRecord(sl->uploaded, cu->copy));
        FST_CUDA_TRY(be, cudaStreamWaitEvent(cu->compute, sl->uploaded, 0));
    }

    /* the chunk's tables: GEMM pointer arrays after the items */
    uint32_t nt = pl->ntiles;
    const void **pa = (const void **)(sl->args_host + cu->off_ptrs);
    const void **pb = pa + nt;
    void **pc = (void **)(pb + nt);
    for (uint32_t t = 0; t < nt; t++) {
        const fst_cu_tile *tl = &pl->tiles[t];
        const fst_cu_pjob *j = &cu->pjobs[pl->jobs[tl->pair]];
        size_t es = fst_dtype_size((fst_dtype)j->dtype);
        pa[t] = cu->cache_dev + cu->imgs[j->img0].off +
                (size_t)tl->row0 * j->d * es;
        pb[t] = cu->cache_dev + cu->imgs[j->img1].off;
        pc[t] = cu->ws + tl->s;
    }
    /* fault= (tests): fail this chunk the way a device does */
    fst_top2 *colpart = cu->colpart;
    if (cu->prm.fault == FST_CU_FAULT_OOM) {
        void *huge = NULL;
        cu->prm.fault = FST_CU_FAULT_NONE;
        FST_CUDA_TRY(be, cudaMalloc(&huge, (size_t)1 << 50));
        cudaFree(huge);
    } else if (cu->prm.fault == FST_CU_FAULT_KERNEL) {
        cu->prm.fault = FST_CU_FAULT_NONE;
        colpart = (fst_top2 *)(uintptr_t)0x100;  /* illegal address */
    } else if (cu->prm.fault == FST_CU_FAULT_HANG) {
        cu->prm.fault = FST_CU_FAULT_NONE;
        FST_CUDA_TRY(be, fst__cu_launch_spin(3.0 * cu->prm.timeout_s + 5,
                                             cu->compute));
    }

    const bool prof = cu->prm.profile && !pl->split;
    sl->timed = prof;
    if (prof)
        FST_CUDA_TRY(be, cudaEventRecord(sl->t0, cu->compute));
    FST_CUDA_TRY(be, cudaMemcpyAsync(cu->args_dev, sl->args_host,
                                     pl->npairs * sizeof(fst_cu_pair),
                                     cudaMemcpyHostToDevice, cu->compute));
    FST_CUDA_TRY(be, cudaMemcpyAsync(cu->args_dev + cu->off_tiles,
                                     sl->args_host + cu->off_tiles,
                                     nt * sizeof(fst_cu_tile),
                                     cudaMemcpyHostToDevice, cu->compute));
    FST_CUDA_TRY(be, cudaMemcpyAsync(cu->args_dev + cu->off_items,
                                     sl->args_host + cu->off_items,
                                     pl->nitems * sizeof(fst_cu_item),
                                     cudaMemcpyHostToDevice, cu->compute));
    FST_CUDA_TRY(be, cudaMemcpyAsync(cu->args_dev + cu->off_ptrs,
                                     sl->args_host + cu->off_ptrs,
                                     3 * (size_t)nt * sizeof(void *),
                                     cudaMemcpyHostToDevice, cu->compute));
    const fst_cu_pair *dpairs = (const fst_cu_pair *)cu->args_dev;
    const fst_cu_tile *dtiles = (const fst_cu_tile *)(cu->args_dev + cu->off_tiles);
    const fst_cu_item *ditems = (const fst_cu_item *)(cu->args_dev + cu->off_items);
    const void *const *da = (const void *const *)(cu->args_dev + cu->off_ptrs);
    const void *const *db = da + nt;
    void *const *dc = (void *const *)(db + nt);

    /* GEMMs and reductions, pass by pass (one pass unless split) */
    const float one = 1.0f, zero = 0.0f;
    for (uint32_t p = 0; p < pl->npasses; p++) {
        const fst_cu_pass *ps = &pl->passes[p];
        for (uint32_t g = ps->gemm0; g < ps->gemm0 + ps->ngemm; g++) {
            const fst_cu_gemm *gm = &pl->gemms[g];
            cublasComputeType_t ct = CUBLAS_COMPUTE_32F;
            if (gm->dtype == FST_DTYPE_F32 && cu->prm.tf32)
                ct = CUBLAS_COMPUTE_32F_FAST_TF32;
            /* column-major: C (m x n) = A^T B with A = a's rows (d x m,
             * lda = d) and B = b's rows (d x n): C[i + j m] = a_i . b_j */
            FST_CUBLAS_TRY(be, cublasGemmBatchedEx(cu->blas, CUBLAS_OP_T,
                CUBLAS_OP_N, (int)gm->m, (int)gm->n, (int)gm->k, &one,
                da + gm->tile0, cuda_type(gm->dtype), (int)gm->k,
                db + gm->tile0, cuda_type(gm->dtype), (int)gm->k, &zero,
                dc + gm->tile0, CUDA_R_32F, (int)gm->m, (int)gm->count, ct,
                CUBLAS_GEMM_DEFAULT));
        }
        if (prof)
            FST_CUDA_TRY(be, cudaEventRecord(sl->t1, cu->compute));
        FST_CUDA_TRY(be, fst__cu_launch_reduce(cu->ws, dtiles, dpairs, ditems,
                                               ps->item0, ps->nitems,
                                               colpart, cu->out_dev,
                                               cu->rule, cu->compute));
    }
    if (pl->ncols)
        FST_CUDA_TRY(be, fst__cu_launch_cols(dpairs, ditems + pl->cols_item0,
                                             pl->ncols, cu->colpart, cu->m1,
                                             cu->rule, cu->compute));
    FST_CUDA_TRY(be, cudaMemsetAsync(cu->out_dev + pl->nmatch, 0,
                                     pl->npairs * sizeof(uint32_t),
                                     cu->compute));
    FST_CUDA_TRY(be, fst__cu_launch_rows(dpairs, ditems + pl->rows_item0,
                                         pl->nrows, cu->m1, cu->out_dev,
                                         cu->out_dev + pl->nmatch, cu->rule,
                                         cu->compute));
    if (prof)
        FST_CUDA_TRY(be, cudaEventRecord(sl->t2, cu->compute));
    FST_CUDA_TRY(be, cudaMemcpyAsync(sl->out_host, cu->out_dev,
                                     pl->out_used * sizeof(uint32_t),
                                     cudaMemcpyDeviceToHost, cu->compute));
    FST_CUDA_TRY(be, cudaEventRecord(sl->done, cu->compute));
    sl->busy = true;
out:
    return s;
}

/* Wait for a chunk and hand its matches to the caller's arrays. */
static fst_status finish_chunk(fst_backend *be, fst_cu_slot *sl,
                               fst_match_job *jobs)
{
    fst_cuda *cu = be->impl;
    fst_cu_plan *pl = &sl->plan;
    fst_status s = fst__cu_wait(be, sl->done, "matching chunk");
    if (s != FST_OK)
        return s;
    sl->busy = false;
    if (sl->seq > cu->done)
        cu->done = sl->seq;
    for (uint32_t p = 0; p < pl->npairs; p++) {
        const fst_cu_pair *pr = &pl->pairs[p];
        fst_match_job *j = &jobs[cu->jix[pl->jobs[p]]];
        memcpy(j->out->matches0, sl->out_host + pr->out,
               pr->n0 * sizeof(int32_t));
        memcpy(j->out->scores0, sl->out_host + pr->out + pr->n0,
               pr->n0 * sizeof(float));
        j->out->nmatches = sl->out_host[pl->nmatch + p];
        j->status = FST_OK;
    }
    cu->n_pairs += pl->npairs;
    cu->n_chunks++;
    cu->n_split += pl->split;
    if (sl->timed) {
        float g = 0, r = 0, all = 0;
        if (cudaEventElapsedTime(&g, sl->t0, sl->t1) == cudaSuccess &&
            cudaEventElapsedTime(&r, sl->t1, sl->t2) == cudaSuccess &&
            cudaEventElapsedTime(&all, sl->t0, sl->t2) == cudaSuccess) {
            cu->ms_gemm += g;
            cu->ms_reduce += r;
            cu->ms_chunks += all;
        }
        (void)cudaGetLastError();
    }
    return FST_OK;
}

static fst_status cu_match_batch(fst_backend *be, fst_match_job *jobs,
                                 size_t n)
{
    fst_cuda *cu = be->impl;
    fst_status s = FST_OK, first = FST_OK;
    if (be->failed || !cu)
        return fst__fail(FST_EDEVICE, "%s: failed earlier; only "
                         "fst_backend_close() is possible", where(be));
    if (n > UINT32_MAX / 2)
        return fst__fail(FST_EINVAL, "cuda backend: batch of %zu pairs", n);
    FST_TRY(batch_scratch(cu, n));

    uint32_t npj = 0, nimgs = 0;
    for (size_t i = 0; i < n; i++) {
        fst_status js = check_job(be, &jobs[i], first == FST_OK);
        if (js == FST_DONE) {
            jobs[i].status = FST_OK;
            continue;
        }
        if (js != FST_OK) {
            jobs[i].status = js;
            if (first == FST_OK)
                first = js;
            continue;
        }
        jobs[i].status = FST_DONE;                /* pending */
        fst_cu_pjob *pj = &cu->pjobs[npj];
        *pj = (fst_cu_pjob){ jobs[i].a->n, jobs[i].b->n, jobs[i].a->d,
                             (uint32_t)jobs[i].a->dtype, 0, 0 };
        pj->img0 = image_id(cu, jobs[i].a, &nimgs);
        pj->img1 = image_id(cu, jobs[i].b, &nimgs);
        cu->jix[npj++] = (uint32_t)i;
    }
    if (npj == 0)
        return first;
    FST_TRY(fit_caps(be, npj));

    fst_cu_batch B = {
        .jobs = cu->pjobs, .njobs = npj, .order = cu->order,
        .img_bytes = cu->img_bytes, .img_mark = cu->img_mark,
        .nimages = nimgs, .pad = cu->prm.pad, .mutual = cu->rule.mutual,
    };
    FST_TRY(fst__cu_plan_order(&B));
    int cur = 0;
    while (fst__cu_plan_next(&B, &cu->caps, &cu->slot[cur].plan)) {
        FST_TRY(enqueue_chunk(be, &cu->slot[cur], &cu->slot[cur ^ 1]));
        if (cu->slot[cur ^ 1].busy)
            FST_TRY(finish_chunk(be, &cu->slot[cur ^ 1], jobs));
        cur ^= 1;
    }
    if (cu->slot[cur ^ 1].busy)
        FST_TRY(finish_chunk(be, &cu->slot[cur ^ 1], jobs));
    fst__cu_cache_drop_transient(cu->cache);
out:
    if (s != FST_OK) {
        for (size_t i = 0; i < n; i++)
            if (jobs[i].status == FST_DONE)
                jobs[i].status = s;
        if (!be->failed) {
            /* a host-side failure with chunks in flight: drain them so
             * that the next batch starts clean */
            for (int k = 0; k < 2; k++)
                if (cu->slot[k].busy &&
                    fst__cu_wait(be, cu->slot[k].done, "draining") == FST_OK)
                    cu->slot[k].busy = false;
            if (!be->failed)
                fst__cu_cache_drop_transient(cu->cache);
        }
        return s;
    }
    return first;
}

static fst_status cu_match(fst_backend *be, const fst_view *a,
                           const fst_view *b, fst_matches *out)
{
    fst_match_job j = { .a = a, .b = b, .out = out, .status = FST_OK };
    return cu_match_batch(be, &j, 1);
}

static fst_status cu_sync(fst_backend *be)
{
    /* every batch is complete when it returns */
    if (be->failed)
        return fst__fail(FST_EDEVICE, "%s: failed earlier", where(be));
    return FST_OK;
}

static void cu_stats(fst_backend *be, char *buf, size_t len)
{
    fst_cuda *cu = be->impl;
    if (!len)
        return;
    if (!cu) {
        snprintf(buf, len, "cuda: not open");
        return;
    }
    fst_cu_cache_stats cs = { 0 };
    if (cu->cache)
        fst__cu_cache_stats(cu->cache, &cs);
    uint64_t look = cu->n_hits + cu->n_misses;
    int n = snprintf(buf, len,
        "%s pairs=%llu chunks=%llu split=%llu cache: hit_rate=%.1f%% "
        "hits=%llu misses=%llu entries=%llu used=%llu/%llu MB "
        "evictions=%llu clears=%llu uploads: ring=%.1f MB register=%.1f MB "
        "(transfer=%s, register_fallbacks=%llu, read_only_register=%s)%s",
        cu->where, (unsigned long long)cu->n_pairs,
        (unsigned long long)cu->n_chunks, (unsigned long long)cu->n_split,
        look ? 100.0 * (double)cu->n_hits / (double)look : 0.0,
        (unsigned long long)cu->n_hits, (unsigned long long)cu->n_misses,
        (unsigned long long)cs.entries,
        (unsigned long long)(cs.used / FST_CU_MB),
        (unsigned long long)(cs.capacity / FST_CU_MB),
        (unsigned long long)cs.evictions, (unsigned long long)cs.clears,
        (double)cu->up_ring / FST_CU_MB, (double)cu->up_reg / FST_CU_MB,
        cu->prm.transfer == FST_CU_XFER_REGISTER ? "register" : "ring",
        (unsigned long long)cu->reg_fail, cu->ro_register ? "yes" : "no",
        be->failed ? " FAILED" : "");
    if (cu->prm.profile && n > 0 && (size_t)n < len)
        snprintf(buf + n, len - (size_t)n,
                 " profile: gemm=%.1f ms reduce=%.1f ms chunks=%.1f ms",
                 cu->ms_gemm, cu->ms_reduce, cu->ms_chunks);
}

static const fst_backend_ops cuda_ops = {
    .name = "cuda",
    .open = cu_open,
    .match = cu_match,
    .match_batch = cu_match_batch,
    .sync = cu_sync,
    .stats = cu_stats,
    .close = cu_close,
};

const fst_backend_ops *fst__cuda_backend(void)
{
    return &cuda_ops;
}
