/* bench_cuda.c : the CUDA backend's figures (issue 5), one line per case
 * (bench.h):
 *
 *   cublas_gemm_2048x2048x256_f16      cuBLAS alone, the backend's GEMM for
 *                                      one pair shape, strided batch of 64
 *   nn_mutual_2048x2048x256_f16_b<B>   the whole backend, warm cache, batches
 *                                      of B = 1 .. 4096 pairs: pairs/s, and
 *                                      ratio = cuBLAS-alone time per pair /
 *                                      pipeline time per pair (the GEMM's
 *                                      share of its own peak: target >= 0.6)
 *   nn_mutual_..._cold_b<B>            the same from an empty cache (uploads)
 *   h2d_pinned / h2d_ring / h2d_register   host-to-device GB/s: the link's
 *                                      practical limit, the backend's ring
 *                                      from pageable memory, the backend's
 *                                      registered file map
 *
 * No CUDA device: prints "no CUDA device: <why>" and exits 77 (SKIP).
 * Environment: FST_BENCH_CUDA_PARAMS (extra backend parameters),
 * FST_BENCH_CUDA_IMAGES (images in the set, 256), FST_BENCH_CUDA_QUICK=1
 * (a small smoke run).
 */
#include "bench.h"
#include "fst_kernels.h"
#include "cuda/cuda_bench.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* In a sanitized build: the CUDA driver maps memory where ASan keeps its
 * shadow gap. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "protect_shadow_gap=0";
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545F4914F6CDD1Dull;
}

static float rnd_unit(void)
{
    return (float)((double)(rnd() >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

typedef struct set {
    uint32_t  ni, n, d;
    fst_view *v;
    uint16_t *data;
    char    (*names)[24];
} set;

/* ni images of n unit descriptors; image i+1 holds noisy copies of about
 * 2/3 of image i's rows, as overlapping views do. */
static void make_set(set *S, uint32_t ni, uint32_t n, uint32_t d)
{
    S->ni = ni;
    S->n = n;
    S->d = d;
    S->v = calloc(ni, sizeof *S->v);
    S->names = calloc(ni, sizeof *S->names);
    S->data = aligned_alloc(64, (size_t)ni * n * d * 2);
    float *row = malloc(d * sizeof *row), *prev = malloc((size_t)n * d * sizeof *prev);
    float *cur = malloc((size_t)n * d * sizeof *cur);
    if (!S->v || !S->names || !S->data || !row || !prev || !cur) {
        fprintf(stderr, "bench_cuda: out of memory\n");
        exit(1);
    }
    for (uint32_t i = 0; i < ni; i++) {
        for (uint32_t r = 0; r < n; r++) {
            bool planted = i > 0 && rnd() % 3 != 0;
            uint32_t src = (uint32_t)(rnd() % n);
            double nn = 0;
            for (uint32_t k = 0; k < d; k++) {
                row[k] = planted ? prev[(size_t)src * d + k] + 0.2f * rnd_unit()
                                 : rnd_unit();
                nn += (double)row[k] * row[k];
            }
            for (uint32_t k = 0; k < d; k++) {
                float x = (float)(row[k] / sqrt(nn));
                cur[(size_t)r * d + k] = x;
                S->data[((size_t)i * n + r) * d + k] = fst_f32_to_f16(x);
            }
        }
        memcpy(prev, cur, (size_t)n * d * sizeof *cur);
        snprintf(S->names[i], sizeof S->names[i], "bench_%u", i);
        S->v[i] = (fst_view){ .name = S->names[i], .n = n, .d = d,
                              .dtype = FST_DTYPE_F16, .uncertainty = NAN,
                              .desc = S->data + (size_t)i * n * d };
    }
    free(row);
    free(prev);
    free(cur);
}

typedef struct batch {
    size_t         n;
    fst_match_job *jobs;
    fst_matches   *out;
    int32_t       *m0;
    float         *sc;
} batch;

static void make_batch(batch *B, const set *S, size_t n)
{
    B->n = n;
    B->jobs = calloc(n, sizeof *B->jobs);
    B->out = calloc(n, sizeof *B->out);
    B->m0 = malloc(n * S->n * sizeof *B->m0);
    B->sc = malloc(n * S->n * sizeof *B->sc);
    if (!B->jobs || !B->out || !B->m0 || !B->sc) {
        fprintf(stderr, "bench_cuda: out of memory\n");
        exit(1);
    }
    for (size_t k = 0; k < n; k++) {
        uint32_t i = (uint32_t)(rnd() % S->ni), j = (uint32_t)(rnd() % S->ni);
        if (j == i)
            j = (i + 1) % S->ni;
        B->out[k] = (fst_matches){ B->m0 + k * S->n, B->sc + k * S->n, 0, 0 };
        B->jobs[k] = (fst_match_job){ &S->v[i], &S->v[j], &B->out[k], FST_OK };
    }
}

static void free_batch(batch *B)
{
    free(B->jobs);
    free(B->out);
    free(B->m0);
    free(B->sc);
}

static void die(const char *what)
{
    fprintf(stderr, "bench_cuda: %s: %s\n", what, fst_errdetail());
    exit(1);
}

static fst_backend *open_cuda(const char *extra)
{
    char params[512];
    const char *env = getenv("FST_BENCH_CUDA_PARAMS");
    snprintf(params, sizeof params, "%s%s%s", env ? env : "",
             env && *env && extra && *extra ? "," : "", extra ? extra : "");
    fst_match_opts o;
    fst_match_preset("NN-mutual", &o);
    fst_backend *be = NULL;
    fst_status s = fst_backend_open("cuda", &o, params, &be);
    if (s == FST_ENODEVICE) {
        const char *why = fst_errdetail();
        printf("%s%s\n", strncmp(why, "no CUDA device", 14) ? "no CUDA device: "
                                                            : "", why);
        exit(77);
    }
    if (s != FST_OK)
        die("opening the cuda backend");
    return be;
}

/* Seconds per call of a batch: median and p90 over enough runs for ~2 s. */
static void time_batch(fst_backend *be, batch *B, double *med, double *p90)
{
    double t0 = bench_now();
    if (fst_backend_match_batch(be, B->jobs, B->n) != FST_OK)
        die("matching");
    double one = bench_now() - t0;
    int reps = one > 0 ? (int)(2.0 / one) : 200;
    if (reps < 5) reps = 5;
    if (reps > 200) reps = 200;
    double *t = malloc((size_t)reps * sizeof *t);
    for (int r = 0; r < reps; r++) {
        t0 = bench_now();
        if (fst_backend_match_batch(be, B->jobs, B->n) != FST_OK)
            die("matching");
        t[r] = bench_now() - t0;
    }
    double tmp[200];
    memcpy(tmp, t, (size_t)reps * sizeof *t);
    *med = bench_median(t, (size_t)reps);
    *p90 = bench_p90(tmp, (size_t)reps);
    free(t);
}

/* One pair against the reference, so that a broken build cannot post
 * figures: matches agree but for near ties. */
static void sanity(fst_backend *be, const set *S)
{
    int32_t *g = malloc(S->n * sizeof *g), *r = malloc(S->n * sizeof *r);
    float *gs = malloc(S->n * sizeof *gs), *rs = malloc(S->n * sizeof *rs);
    fst_matches gm = { g, gs, 0, 0 }, rm = { r, rs, 0, 0 };
    fst_match_opts o;
    fst_match_preset("NN-mutual", &o);
    if (fst_backend_match(be, &S->v[0], &S->v[1], &gm) != FST_OK ||
        fst_match_reference(&S->v[0], &S->v[1], &o, &rm) != FST_OK)
        die("sanity pair");
    uint32_t diff = 0;
    for (uint32_t i = 0; i < S->n; i++)
        diff += g[i] != r[i];
    printf("# sanity: %u of %u matches0 differ from the reference "
           "(near ties), nmatches %u vs %u\n", diff, S->n, gm.nmatches,
           rm.nmatches);
    if (diff > S->n / 100 + 1) {
        fprintf(stderr, "bench_cuda: results disagree with the reference\n");
        exit(1);
    }
    free(g); free(r); free(gs); free(rs);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    bool quick = getenv("FST_BENCH_CUDA_QUICK") != NULL;
    const char *ni_env = getenv("FST_BENCH_CUDA_IMAGES");
    uint32_t n = quick ? 256 : 2048, d = quick ? 64 : 256;
    uint32_t ni = ni_env ? (uint32_t)strtoul(ni_env, NULL, 10) : (quick ? 8 : 256);
    if (ni < 2)
        ni = 2;
    char shape[64];
    snprintf(shape, sizeof shape, "%ux%ux%u_f16", n, n, d);

    fst_backend *be = open_cuda("profile=1");     /* exits 77 without GPU */
    char stats[1024];
    set S;
    make_set(&S, ni, n, d);
    sanity(be, &S);

    /* cuBLAS alone: the baseline of every ratio below */
    uint32_t gb = quick ? 4 : 64;
    double gsec;
    if (fst__cuda_bench_gemm(be, n, n, d, FST_DTYPE_F16, gb, 20, &gsec) != FST_OK)
        die("cuBLAS alone");
    double gemm_pair = gsec / gb;
    printf("cublas_gemm_%s median=%.6g p90=%.6g s per_pair=%.3g s "
           "tflops=%.1f pairs_per_s=%.0f batch=%u\n", shape, gsec, gsec,
           gemm_pair, 2.0 * n * n * d / gemm_pair * 1e-12, 1.0 / gemm_pair, gb);

    /* warm: every image once into the cache */
    batch W;
    make_batch(&W, &S, ni);
    for (uint32_t i = 0; i < ni; i++)
        W.jobs[i].a = &S.v[i];
    if (fst_backend_match_batch(be, W.jobs, W.n) != FST_OK)
        die("warming the cache");
    free_batch(&W);

    const size_t sizes[] = { 1, 4, 16, 64, 256, 1024, 4096 };
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        if (quick && sizes[k] > 64)
            break;
        batch B;
        make_batch(&B, &S, sizes[k]);
        double med, p90;
        time_batch(be, &B, &med, &p90);
        double per_pair = med / (double)sizes[k];
        printf("nn_mutual_%s_b%zu median=%.6g p90=%.6g s pairs_per_s=%.0f "
               "ratio=%.2f vs cublas_gemm_alone\n", shape, sizes[k], med, p90,
               1.0 / per_pair, gemm_pair / per_pair);
        free_batch(&B);
    }
    fst_backend_stats(be, stats, sizeof stats);
    printf("# warm: %s\n", stats);
    fst_backend_close(be);

    /* cold: a fresh backend, every image uploaded on first use */
    be = open_cuda(NULL);
    {
        batch B;
        size_t nb = quick ? 64 : 4096;
        make_batch(&B, &S, nb);
        double t0 = bench_now();
        if (fst_backend_match_batch(be, B.jobs, B.n) != FST_OK)
            die("cold batch");
        double t = bench_now() - t0;
        printf("nn_mutual_%s_cold_b%zu median=%.6g p90=%.6g s pairs_per_s=%.0f "
               "images=%u\n", shape, nb, t, t, (double)nb / t, ni);
        fst_backend_stats(be, stats, sizeof stats);
        printf("# cold: %s\n", stats);
        free_batch(&B);
    }

    /* host to device */
    size_t bytes = (size_t)(quick ? 16 : 256) << 20;
    double gbps_pinned, gbps_ring, gbps_reg;
    if (fst__cuda_bench_pinned(be, bytes, 10, &gbps_pinned) != FST_OK)
        die("pinned copy");
    printf("h2d_pinned median=%.3g GB/s bytes=%zu\n", gbps_pinned, bytes);
    unsigned char *page = malloc(bytes);
    memset(page, 7, bytes);
    if (fst__cuda_bench_upload(be, page, bytes, 10, &gbps_ring) != FST_OK)
        die("ring upload");
    printf("h2d_ring median=%.3g GB/s ratio=%.2f vs h2d_pinned\n", gbps_ring,
           gbps_ring / gbps_pinned);
    fst_backend_close(be);

    be = open_cuda("transfer=register");
    char path[] = "/tmp/fst_bench_cuda_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, page, bytes) != (ssize_t)bytes)
        die("temp file");
    /* linked while mapped: a deleted file's mapping is not registered */
    void *map = mmap(NULL, bytes, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED)
        die("mmap");
    if (fst__cuda_bench_upload(be, map, bytes, 10, &gbps_reg) != FST_OK)
        die("registered upload");
    fst_backend_stats(be, stats, sizeof stats);
    printf("h2d_register median=%.3g GB/s ratio=%.2f vs h2d_pinned (%s)\n",
           gbps_reg, gbps_reg / gbps_pinned,
           strstr(stats, "register_fallbacks=0") ? "registered map"
                                                 : "fell back to the ring");
    fst_backend_close(be);
    munmap(map, bytes);
    close(fd);
    unlink(path);
    free(page);
    free(S.v);
    free(S.names);
    free(S.data);
    return 0;
}
