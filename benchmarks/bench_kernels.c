/* bench_kernels.c : the CPU matcher against this machine's sgemm peak and
 * against hloc's way in Python, measured in one run (issue 3).
 *
 *   bench_kernels [--quick] [--no-python]
 *
 * One line per case: name, median, p90 (ms per pair), ratio. The peak is
 * single-core sgemm: OpenBLAS sgemm 4096^3 (re-executed with
 * OPENBLAS_CORETYPE=SkylakeX on an AVX-512 CPU and OPENBLAS_NUM_THREADS=1)
 * or our own micro-kernel's bare multiply, whichever is higher; the line
 * `peak` says which. The Python baseline is benchmarks/baseline_nn.py, run
 * through popen with one BLAS thread. */
#include "bench.h"
#include "fst_kernels.h"
#include "cpu/cpu_impl.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if FST_BENCH_HAVE_OPENBLAS
#include <cblas.h>
char *openblas_get_corename(void);
#endif

#ifndef FST_BENCH_SRCDIR
#define FST_BENCH_SRCDIR "."
#endif

/* This machine is shared (2 cores, several engineers): a wall clock
 * mostly measures the scheduler. Single-thread cases are timed with this
 * thread's CPU time; wall-clock medians are printed beside them. */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rs = 88172645463325252ull;
static double unif(void)
{
    rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
    return (double)(rs >> 11) * 0x1.0p-53;
}
static double gauss(void)
{
    double u = unif(), v = unif();
    if (u < 1e-300) u = 1e-300;
    return sqrt(-2 * log(u)) * cos(6.283185307179586 * v);
}

static void norm_rows(float *x, uint32_t n, uint32_t d)
{
    for (uint32_t i = 0; i < n; i++) {
        double s = 0;
        for (uint32_t k = 0; k < d; k++) s += (double)x[(size_t)i * d + k] * x[(size_t)i * d + k];
        s = 1.0 / sqrt(s);
        for (uint32_t k = 0; k < d; k++) x[(size_t)i * d + k] = (float)(x[(size_t)i * d + k] * s);
    }
}

/* A and B as baseline_nn.py makes them: unit rows, the first half of B
 * noisy copies of A's. */
static void make_pair(uint32_t n, uint32_t d, float **xa, float **xb)
{
    float *a = malloc((size_t)n * d * sizeof *a), *b = malloc((size_t)n * d * sizeof *b);
    for (size_t k = 0; k < (size_t)n * d; k++) { a[k] = (float)gauss(); b[k] = (float)gauss(); }
    norm_rows(a, n, d);
    norm_rows(b, n, d);
    for (size_t k = 0; k < (size_t)(n / 2) * d; k++) b[k] = a[k] + 0.05f * (float)gauss();
    norm_rows(b, n, d);
    *xa = a;
    *xb = b;
}

typedef struct timing { double med, p90, best, wall; } timing;

/* threads > 1 are timed on the wall clock (the helpers' CPU time is not
 * this thread's). */
static timing time_ours(const char *params, const fst_match_opts *o,
                        const fst_view *a, const fst_view *b, int reps,
                        uint32_t *nmatches)
{
    fst_backend *be;
    timing t = { -1, -1, -1, -1 };
    if (fst_backend_open("cpu", o, params, &be) != FST_OK) {
        fprintf(stderr, "open cpu %s: %s\n", params, fst_errdetail());
        return t;
    }
    const char *th = strstr(params, "threads=");
    bool wall_only = th && atoi(th + 8) > 1;
    int32_t *m0 = malloc(a->n * sizeof *m0);
    float *s0 = malloc(a->n * sizeof *s0);
    fst_matches m = { m0, s0, 0, 0 };
    double *v = malloc((size_t)reps * sizeof *v), *w = malloc((size_t)reps * sizeof *w);
    fst_backend_match(be, a, b, &m);   /* warm: buffers, pages */
    for (int r = 0; r < reps; r++) {
        double c0 = cpu_now(), t0 = bench_now();
        fst_backend_match(be, a, b, &m);
        w[r] = (bench_now() - t0) * 1e3;
        v[r] = wall_only ? w[r] : (cpu_now() - c0) * 1e3;
    }
    t.best = bench_quantile(v, (size_t)reps, 0.0);
    t.med = bench_median(v, (size_t)reps);
    t.p90 = bench_p90(v, (size_t)reps);
    t.wall = bench_median(w, (size_t)reps);
    *nmatches = m.nmatches;
    free(v); free(w); free(m0); free(s0);
    fst_backend_close(be);
    return t;
}

/* baseline_nn.py for one case, both variants (see the script): fills
 * t[0] (gemm2) and t[1] (transpose); returns 0 if both came back. */
static int run_python(uint32_t n, uint32_t d, const char *dtype, int reps,
                      double ratio, timing t[2], uint32_t nm[2], char *blas,
                      size_t blas_len)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "OPENBLAS_NUM_THREADS=1 /usr/bin/python3 "
             "%s/baseline_nn.py --n %u --d %u --dtype %s --reps %d --ratio %g "
             "--variant gemm2 transpose", FST_BENCH_SRCDIR, n, d, dtype, reps,
             ratio);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    char line[1024];
    int got = 0;
    while (fgets(line, sizeof line, p)) {
        if (strncmp(line, "blas=", 5) == 0 && blas) {
            line[strcspn(line, "\n")] = '\0';
            snprintf(blas, blas_len, "%.400s", line);
        }
        char *q = strstr(line, " median_ms="), *r = strstr(line, " p90_ms="),
             *s = strstr(line, "nmatches="), *wm = strstr(line, "wall_median_ms=");
        int v = strstr(line, "variant=gemm2") ? 0 : strstr(line, "variant=transpose") ? 1 : -1;
        if (q && r && s && v >= 0) {
            t[v].med = atof(q + 11);
            t[v].p90 = atof(r + 8);
            t[v].best = t[v].med;
            t[v].wall = wm ? atof(wm + 15) : -1;
            nm[v] = (uint32_t)atol(s + 9);
            got |= 1 << v;
        }
    }
    if (pclose(p) != 0)
        return -1;
    return got == 3 ? 0 : -1;
}

/* Case lines are printed at the end, when the peak (measured at the start,
 * next to every case and at the end, the highest kept) is known. */
typedef struct row {
    char   name[96];
    double med, p90, best, wall, flops;   /* flops 0: no GFLOP/s columns */
    char   extra[160];
} row;
static row rows[96];
static int nrows;

static void add_row(const char *name, timing t, double flops, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void add_row(const char *name, timing t, double flops, const char *fmt, ...)
{
    if (nrows >= (int)(sizeof rows / sizeof rows[0]))
        return;
    row *r = &rows[nrows++];
    snprintf(r->name, sizeof r->name, "%s", name);
    r->med = t.med;
    r->p90 = t.p90;
    r->best = t.best;
    r->wall = t.wall;
    r->flops = flops;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->extra, sizeof r->extra, fmt, ap);
    va_end(ap);
    fprintf(stderr, "# %s %.3f ms\n", name, t.med);
}

#if FST_BENCH_HAVE_OPENBLAS
static double blas_sgemm_rate(int n, int reps)
{
    float *a = malloc((size_t)n * n * sizeof *a), *b = malloc((size_t)n * n * sizeof *b);
    float *c = malloc((size_t)n * n * sizeof *c);
    for (size_t k = 0; k < (size_t)n * n; k++) { a[k] = (float)unif() - 0.5f; b[k] = (float)unif() - 0.5f; }
    double best = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = cpu_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f,
                    a, n, b, n, 0.0f, c, n);
        double rate = 2.0 * n * (double)n * n / (cpu_now() - t0) * 1e-9;
        if (rate > best) best = rate;
    }
    free(a); free(b); free(c);
    return best;
}

/* The other design: OpenBLAS sgemm on T x T tiles of A B^T (float32 input,
 * GEMM only, no reduction): a lower bound for a BLAS-based matcher. */
static timing blas_tiles(const float *a, const float *b, int n, int d, int T,
                         int reps)
{
    float *c = malloc((size_t)T * T * sizeof *c);
    double *v = malloc((size_t)reps * sizeof *v), *w = malloc((size_t)reps * sizeof *w);
    for (int r = 0; r < reps; r++) {
        double t0 = cpu_now(), w0 = bench_now();
        for (int i = 0; i < n; i += T)
            for (int j = 0; j < n; j += T) {
                int mi = n - i < T ? n - i : T, mj = n - j < T ? n - j : T;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, mi, mj, d,
                            1.0f, a + (size_t)i * d, d, b + (size_t)j * d, d,
                            0.0f, c, T);
            }
        v[r] = (cpu_now() - t0) * 1e3;
        w[r] = (bench_now() - w0) * 1e3;
    }
    timing t;
    t.wall = bench_median(w, (size_t)reps);
    free(w);
    t.best = bench_quantile(v, (size_t)reps, 0.0);
    t.med = bench_median(v, (size_t)reps);
    t.p90 = bench_p90(v, (size_t)reps);
    free(c); free(v);
    return t;
}
#endif

int main(int argc, char **argv)
{
    bool quick = false, python = true;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) quick = true;
        else if (strcmp(argv[i], "--no-python") == 0) python = false;
        else {
            fprintf(stderr, "usage: bench_kernels [--quick] [--no-python]\n"
                    "  --quick      N0 = N1 <= 2048 only\n"
                    "  --no-python  without the numpy baseline\n");
            return strcmp(argv[i], "--help") && strcmp(argv[i], "-h") ? 2 : 0;
        }
    }
    /* OpenBLAS picks its kernels when it is loaded: set the environment
     * and start again before anything calls it. */
    if (!getenv("FST_BENCH_REEXEC")) {
        setenv("FST_BENCH_REEXEC", "1", 1);
        __builtin_cpu_init();
        /* Set even where the environment names another core: the peak and
         * the numpy baseline must run OpenBLAS's best kernels, or every
         * ratio to them flatters us (one of these machines exports
         * OPENBLAS_CORETYPE=Haswell: 108 against 202 GFLOP/s). */
        if (__builtin_cpu_supports("avx512f")) {
            const char *was = getenv("OPENBLAS_CORETYPE");
            if (was && strcmp(was, "SkylakeX"))
                setenv("FST_BENCH_CORETYPE_WAS", was, 1);
            setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
        }
        setenv("OPENBLAS_NUM_THREADS", "1", 1);
        execv("/proc/self/exe", argv);
        /* exec failed: go on in this process */
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    const fst__cpu_isa *isa = fst__cpu_isa_find("auto");
    const char *was = getenv("FST_BENCH_CORETYPE_WAS");
    printf("# kernels: cpu isa=%s, OPENBLAS_CORETYPE=%s%s%s%s OPENBLAS_NUM_THREADS=%s\n",
           isa->name, getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "(unset)",
           was ? " (the environment had " : "", was ? was : "", was ? ")" : "",
           getenv("OPENBLAS_NUM_THREADS") ? getenv("OPENBLAS_NUM_THREADS") : "(unset)");

    /* ---- the peak ---- */
    double own = fst__cpu_gemm_rate("auto", 2048, 256, quick ? 3 : 5);
    double own4 = fst__cpu_gemm_rate("auto", 4096, 256, 3);
    if (own4 > own) own = own4;
    double peak = 0;
    const char *peak_src = "none";
#if FST_BENCH_HAVE_OPENBLAS
    double blas = blas_sgemm_rate(quick ? 2048 : 4096, 3);
    printf("peak/openblas-sgemm-%d gflops=%.1f core=%s\n", quick ? 2048 : 4096,
           blas, openblas_get_corename());
    if (blas > peak) {
        peak = blas;
        peak_src = "OpenBLAS sgemm 4096^3, 1 thread";
    }
#endif

    /* ---- the cases ---- */
    static const uint32_t ns[] = { 1024, 2048, 4096 };
    static const uint32_t ds[] = { 128, 256 };
    static const char *const dts[] = { "float16", "float32" };
    fst_match_opts mutual = fst_match_opts_default(), ratio;
    fst_match_preset("NN-ratio", &ratio);
    char blasline[512] = "";
    for (size_t ni = 0; ni < (quick ? 2u : 3u); ni++)
    for (size_t di = 0; di < 2; di++)
    for (size_t ti = 0; ti < 2; ti++) {
        uint32_t n = ns[ni], d = ds[di];
        float *xa, *xb;
        make_pair(n, d, &xa, &xb);
        void *da = xa, *db = xb;
        uint16_t *ha = NULL, *hb = NULL;
        fst_dtype dt = ti == 0 ? FST_DTYPE_F16 : FST_DTYPE_F32;
        if (dt == FST_DTYPE_F16) {
            ha = malloc((size_t)n * d * 2);
            hb = malloc((size_t)n * d * 2);
            for (size_t k = 0; k < (size_t)n * d; k++) {
                ha[k] = fst_f32_to_f16(xa[k]);
                hb[k] = fst_f32_to_f16(xb[k]);
            }
            da = ha;
            db = hb;
        }
        fst_view a = { .name = "A", .n = n, .d = d, .dtype = dt, .desc = da };
        fst_view b = { .name = "B", .n = n, .d = d, .dtype = dt, .desc = db };
        int reps = n >= 4096 ? 7 : 11;
        if (quick) reps = 5;
        uint32_t nm = 0;
        timing t = time_ours("threads=1", &mutual, &a, &b, reps, &nm);
        double flops = 2.0 * n * (double)n * d;
        char name[96];
        snprintf(name, sizeof name, "kernels/nn-mutual/%u/%u/%s", n, d, dts[ti]);
        timing py[2] = { { -1, -1, -1, -1 }, { -1, -1, -1, -1 } };
        uint32_t pnm[2] = { 0, 0 };
        bool have_py = python && run_python(n, d, dts[ti], n >= 4096 ? 5 : 7, 0.0,
                                            py, pnm, blasline, sizeof blasline) == 0;
        /* the baseline is the faster of the two numpy variants */
        int pb = have_py && py[1].med < py[0].med ? 1 : 0;
        char sub[160];
        if (have_py) {
            snprintf(sub, sizeof sub, "%s/python-numpy-gemm2", name);
            add_row(sub, py[0], 0, "nmatches=%u", pnm[0]);
            snprintf(sub, sizeof sub, "%s/python-numpy-transpose", name);
            add_row(sub, py[1], 0, "nmatches=%u", pnm[1]);
            add_row(name, t, flops, "ratio=%.2f vs python-numpy-%s nmatches=%u",
                    py[pb].med / t.med, pb ? "transpose" : "gemm2", nm);
        } else {
            add_row(name, t, flops, "nmatches=%u", nm);
        }
        /* the bare kernel on the same shape, right after: the peak also
         * takes the best of these, so a busy machine during the first
         * measurement does not inflate the ratios */
        double own_here = fst__cpu_gemm_rate("auto", n, d, 3);
        if (own_here > own) own = own_here;

        if (n == 2048 && d == 256) {
            /* the target case, more views of it */
            timing t2 = time_ours("threads=2", &mutual, &a, &b, reps, &nm);
            snprintf(sub, sizeof sub, "%s/threads=2", name);
            add_row(sub, t2, flops, "ratio=%.2f vs threads=1", t.med / t2.med);
            timing tr = time_ours("threads=1", &ratio, &a, &b, reps, &nm);
            snprintf(sub, sizeof sub, "kernels/nn-ratio/%u/%u/%s", n, d, dts[ti]);
            add_row(sub, tr, flops, "nmatches=%u", nm);
            static const char *const other[] = { "avx2", "scalar" };
            for (int k = 0; k < 2; k++) {
                if (!fst__cpu_isa_find(other[k])->supported()) continue;
                char p[48];
                snprintf(p, sizeof p, "isa=%s", other[k]);
                timing ti2 = time_ours(p, &mutual, &a, &b, k ? 3 : 5, &nm);
                snprintf(sub, sizeof sub, "%s/isa=%s", name, other[k]);
                add_row(sub, ti2, flops, "ratio=%.2f vs %s", ti2.med / t.med, isa->name);
            }
#if FST_BENCH_HAVE_OPENBLAS
            if (dt == FST_DTYPE_F32) {
                static const int tiles[] = { 256, 512, 2048 };
                for (int k = 0; k < 3; k++) {
                    timing tb = blas_tiles(xa, xb, (int)n, (int)d, tiles[k], reps);
                    snprintf(sub, sizeof sub, "%s/openblas-sgemm-tiles-%d-gemm-only",
                             name, tiles[k]);
                    add_row(sub, tb, flops, "ratio=%.2f vs ours-with-reductions",
                            tb.med / t.med);
                }
            }
#endif
        }
        free(xa); free(xb); free(ha); free(hb);
    }
    double own_end = fst__cpu_gemm_rate("auto", 2048, 256, 5);
    if (own_end > own) own = own_end;
#if FST_BENCH_HAVE_OPENBLAS
    double blas_end = blas_sgemm_rate(quick ? 2048 : 4096, 2);
    printf("peak/openblas-sgemm-%d gflops=%.1f (again at the end)\n",
           quick ? 2048 : 4096, blas_end);
    if (blas_end > peak) {
        peak = blas_end;
        peak_src = "OpenBLAS sgemm 4096^3, 1 thread";
    }
#endif
    printf("peak/own-kernel gflops=%.1f (best over the run)\n", own);
    if (own > peak) {
        peak = own;
        peak_src = "own micro-kernel (bare multiply, best over the run)";
    }
    printf("peak gflops=%.1f source=%s\n", peak, peak_src);
    for (int r = 0; r < nrows; r++) {
        const row *w = &rows[r];
        printf("%s median=%.3f p90=%.3f ms %s", w->name, w->med, w->p90, w->extra);
        if (w->wall >= 0)
            printf(" wall_median=%.3f", w->wall);
        if (w->flops > 0)
            printf(" gflops=%.1f peak_frac=%.3f best_peak_frac=%.3f",
                   w->flops / (w->med * 1e-3) * 1e-9,
                   w->flops / (w->med * 1e-3) * 1e-9 / peak,
                   w->flops / (w->best * 1e-3) * 1e-9 / peak);
        printf("\n");
    }
    if (blasline[0])
        printf("# python baseline: %s\n", blasline);
    return 0;
}
