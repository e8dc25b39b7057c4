/* bench_neural.c : LightGlue and SuperGlue per pair on one core
 * (kernels/neural, issue 11), against this machine's sgemm peak and against
 * the reference networks in PyTorch, measured in the same run.
 *
 *   bench_neural [--sizes 1024,2048] [--reps N] [--torch LIGHTGLUE_GIT SUPERGLUE_GIT]
 *
 * Weights and features: those of tests/neural/data/lg_scaled.txt (superpoint
 * LightGlue) and sg_random.txt (SuperGlue), at N x N keypoints, drawn as
 * tests/neural/make_reference.py draws them. One line per case: median and
 * p90 seconds per pair (this thread's CPU time: the machine is shared),
 * GFLOP counted by fst_nn_flops() / median, the fraction of the peak, and
 * the ratio to PyTorch (same weights, same features, 1 thread) when --torch
 * names the reference repositories. The peak is single-core sgemm: OpenBLAS
 * 4096^3 with one thread, or our own packed product on 2048 x 2048 x 512,
 * whichever is higher.
 */
#include "bench.h"
#include "fst_neural.h"
#include "neural/refcase.h"
#include "../kernels/neural/nn_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if FST_BENCH_HAVE_OPENBLAS
#include <cblas.h>
#endif

#ifndef FST_BENCH_SRCDIR
#define FST_BENCH_SRCDIR "."
#endif

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static float *rand_mat(size_t n, uint64_t seed)
{
    float *a = malloc(n * sizeof *a);
    for (size_t k = 0; k < n; k++) a[k] = (float)sym(seed, "bench", k + 1);
    return a;
}

#if FST_BENCH_HAVE_OPENBLAS
static double blas_rate(int n)
{
    float *a = rand_mat((size_t)n * n, 1), *b = rand_mat((size_t)n * n, 2);
    float *c = malloc((size_t)n * n * sizeof *c);
    double best = 0;
    for (int r = 0; r < 2; r++) {
        double t0 = cpu_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n,
                    0.0f, c, n);
        double rate = 2.0 * n * (double)n * n / (cpu_now() - t0) * 1e-9;
        best = rate > best ? rate : best;
    }
    free(a); free(b); free(c);
    return best;
}
#endif

static double own_rate(int m, int n, int k)
{
    float *a = rand_mat((size_t)m * k, 3), *w = rand_mat((size_t)n * k, 4);
    float *bp = aligned_alloc(64, fst__nn_packed_size(k, n) * sizeof(float));
    float *c = malloc((size_t)m * n * sizeof *c);
    fst__nn_pack_t(w, k, n, k, bp);
    double best = 0;
    for (int r = 0; r < 3; r++) {
        double t0 = cpu_now();
        fst__nn_gemm(m, n, k, a, k, bp, NULL, c, n, false);
        double rate = 2.0 * m * (double)n * k / (cpu_now() - t0) * 1e-9;
        best = rate > best ? rate : best;
    }
    free(a); free(w); free(bp); free(c);
    return best;
}

typedef struct bcase {
    const char *label, *file;
    double depth, width;
    int iters;
} bcase;

static const bcase cases[] = {
    {"lightglue-adaptive-off", "lg_scaled", -1, -1, 0},
    {"lightglue-adaptive-on", "lg_scaled", 0.95, 0.99, 0},
    {"superglue-50", "sg_random", 0, 0, 50},
    {"superglue-5", "sg_random", 0, 0, 5},
};

/* PyTorch's median seconds for (label, n), from make_reference.py --bench */
static double torch_s[8][16];
static int torch_n[16], n_torch_n;

static void run_torch(const char *lg, const char *sg, const int *sizes, int ns, int reps)
{
    char cmd[4096];
    int o = snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "
                     "/usr/bin/python3 %s/../tests/neural/make_reference.py '%s' '%s' "
                     "--reps %d --bench", FST_BENCH_SRCDIR, lg, sg, reps);
    for (int i = 0; i < ns; i++)
        o += snprintf(cmd + o, sizeof cmd - (size_t)o, " %d", sizes[i]);
    FILE *p = popen(cmd, "r");
    if (!p) {
        fprintf(stderr, "bench_neural: cannot run %s\n", cmd);
        return;
    }
    char line[512], label[64];
    int n;
    double s;
    while (fgets(line, sizeof line, p)) {
        if (sscanf(line, "torch %63s %d %lf", label, &n, &s) != 3)
            continue;
        int ni = 0;
        while (ni < n_torch_n && torch_n[ni] != n) ni++;
        if (ni == n_torch_n && n_torch_n < 16) torch_n[n_torch_n++] = n;
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
            if (!strcmp(cases[c].label, label)) torch_s[c][ni] = s;
        fprintf(stderr, "# %s", line);
    }
    pclose(p);
}

int main(int argc, char **argv)
{
    int sizes[16] = {1024, 2048}, ns = 2, reps = 3;
    const char *lg_git = NULL, *sg_git = NULL;
    /* before parsing: strtok below rewrites argv */
    if (!getenv("FST_BENCH_REEXEC")) {     /* OpenBLAS reads this when loaded */
        setenv("FST_BENCH_REEXEC", "1", 1);
        setenv("OPENBLAS_NUM_THREADS", "1", 1);
        execv("/proc/self/exe", argv);
    }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--sizes") && i + 1 < argc) {
            ns = 0;
            for (char *t = strtok(argv[++i], ","); t && ns < 16; t = strtok(NULL, ","))
                sizes[ns++] = atoi(t);
        } else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--torch") && i + 2 < argc) {
            lg_git = argv[++i];
            sg_git = argv[++i];
        } else {
            fprintf(stderr, "usage: bench_neural [--sizes 1024,2048] [--reps N] "
                    "[--torch LIGHTGLUE_GIT SUPERGLUE_GIT]\n");
            return 2;
        }
    }
    if (!getenv("FST_SRCDIR"))
        setenv("FST_SRCDIR", FST_BENCH_SRCDIR "/..", 1);
    setvbuf(stdout, NULL, _IOLBF, 0);

    double peak = 0, own = own_rate(2048, 2048, 512);
    const char *src = "own packed product 2048 x 2048 x 512";
    printf("peak/own-gemm gflops=%.1f\n", own);
    peak = own;
#if FST_BENCH_HAVE_OPENBLAS
    double blas = blas_rate(4096);
    printf("peak/openblas-sgemm-4096 gflops=%.1f\n", blas);
    if (blas > peak) {
        peak = blas;
        src = "OpenBLAS sgemm 4096^3, 1 thread";
    }
#endif
    printf("peak gflops=%.1f source=%s\n", peak, src);
    if (lg_git)
        run_torch(lg_git, sg_git, sizes, ns, reps);

    for (int si = 0; si < ns; si++)
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
            const bcase *bc = &cases[ci];
            int n = sizes[si];
            ref_case *c = load_case_n(bc->file, n, n);
            if (!c) {
                fprintf(stderr, "bench_neural: no tests/neural/data/%s.txt\n", bc->file);
                return 1;
            }
            fst_nn_kind kind = kind_of(c);
            fst_nn_conf cf = fst_nn_default_conf(kind);
            cf.depth_confidence = bc->depth;
            cf.width_confidence = bc->width;
            if (bc->iters) cf.sinkhorn_iterations = bc->iters;
            fst_nn_model *m = NULL;
            if (fst_nn_open(kind, lookup, c, &cf, &m) != FST_OK) {
                fprintf(stderr, "bench_neural: %s\n", fst_errdetail());
                return 1;
            }
            int32_t *m0 = malloc((size_t)n * sizeof *m0);
            float *s0 = malloc((size_t)n * sizeof *s0);
            fst_nn_image a = image_of(c, 0), b = image_of(c, 1);
            double *t = malloc((size_t)reps * sizeof *t), flops = 0;
            int matches = 0;
            for (int r = 0; r < reps; r++) {
                double t0 = cpu_now();
                if (fst_nn_match(m, &a, &b, m0, s0) != FST_OK) {
                    fprintf(stderr, "bench_neural: %s\n", fst_errdetail());
                    return 1;
                }
                t[r] = cpu_now() - t0;
                flops = fst_nn_flops(m);
            }
            for (int i = 0; i < n; i++) matches += m0[i] >= 0;
            double med = bench_median(t, (size_t)reps), p90 = bench_p90(t, (size_t)reps);
            printf("%s/%d median=%.3f p90=%.3f s gflop=%.1f gflops=%.1f peak_frac=%.3f "
                   "matches=%d", bc->label, n, med, p90, flops * 1e-9, flops / med * 1e-9,
                   flops / med * 1e-9 / peak, matches);
            int ni = 0;
            while (ni < n_torch_n && torch_n[ni] != n) ni++;
            if (ni < n_torch_n && torch_s[ci][ni] > 0)
                printf(" torch=%.3f ratio=%.2f vs torch", torch_s[ci][ni], torch_s[ci][ni] / med);
            printf("\n");
            free(t); free(m0); free(s0);
            fst_nn_close(m);
            free_case(c);
        }
    return 0;
}
