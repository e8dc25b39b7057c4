/* test_parity.c : the CUDA backend against the CPU reference, on a GPU.
 *
 * Every test opens fst_backend_open("cuda", ...) and calls
 * FST_SKIP("no CUDA device") when that is FST_ENODEVICE (no driver, no
 * device, or a binary built without CUDA), so the program always builds and
 * its SKIPs are counted. Two tests run without a GPU: the ENODEVICE path
 * itself, and the parameter checks (done before any device is touched).
 *
 * Parity: matches0 identical to fst_match_reference() except near ties,
 * scores0 within 1e-3. A row may differ only when, in the similarities
 * computed here in double precision, its best and second best are within
 * TIE, or so are the best and second best of the column its match falls
 * in (the mutual check), or a threshold test is within 4 * TIE of its
 * bound. Everything else must be equal.
 *
 * FST_PARITY_QUICK=1 keeps sizes and pair counts small: for runs against
 * the CPU mock of the CUDA runtime (tests/cuda_mock/), where the "GPU" is
 * a plain loop.
 *
 * Child processes (fork + exec of this program, FST_PARITY_CHILD=<what>)
 * cover what must not share a process with other tests: a device made
 * invisible (CUDA_VISIBLE_DEVICES=""), device faults that poison a CUDA
 * context (fault=oom|kernel|hang, test-only parameter), and two processes
 * on one device.
 */
#include "fst_test.h"
#include "fst_config.h"
#include "fst_kernels.h"

#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The CUDA driver maps memory where ASan keeps its shadow gap, and keeps
 * a few allocations for the life of the process. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "protect_shadow_gap=0";
}
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:libcuda.so\nleak:libcudart.so\nleak:libcublas.so\n"
           "leak:libcublasLt.so\nleak:libnvidia-\n";
}

#define TIE 1e-3           /* similarity: fp16 tensor cores, fp32 sums */
#define SCORE_TOL 1e-3

/* ---- data ---------------------------------------------------------------- */

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;

static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

static float rnd_unit(void)
{
    return (float)((double)(rnd() >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

typedef struct image {
    fst_view v;
    void    *data;
    float   *f;          /* as float32, for the checks */
    char     name[32];
} image;

/* Unit-norm descriptors; when `like` is given, about 2/3 of the rows are
 * noisy copies of its rows (planted correspondences), the rest random. */
static void make_image(image *im, const char *name, uint32_t n, uint32_t d,
                       fst_dtype t, const image *like)
{
    memset(im, 0, sizeof *im);
    snprintf(im->name, sizeof im->name, "%s", name);
    size_t es = fst_dtype_size(t);
    im->f = malloc(((size_t)n * d + 1) * sizeof *im->f);
    im->data = aligned_alloc(64, ((size_t)n * d * es + 64) / 64 * 64);
    for (uint32_t i = 0; i < n; i++) {
        float *row = im->f + (size_t)i * d;
        bool planted = like && like->v.n > 0 && rnd() % 3 != 0;
        uint32_t src = planted ? (uint32_t)(rnd() % like->v.n) : 0;
        double nn = 0;
        for (uint32_t k = 0; k < d; k++) {
            row[k] = planted ? like->f[(size_t)src * d + k] + 0.2f * rnd_unit()
                             : rnd_unit();
            nn += (double)row[k] * row[k];
        }
        for (uint32_t k = 0; k < d; k++) {
            row[k] = (float)(row[k] / sqrt(nn > 0 ? nn : 1));
            if (t == FST_DTYPE_F16) {
                uint16_t h = fst_f32_to_f16(row[k]);
                ((uint16_t *)im->data)[(size_t)i * d + k] = h;
                row[k] = fst_f16_to_f32(h);
            } else {
                ((float *)im->data)[(size_t)i * d + k] = row[k];
            }
        }
    }
    im->v.name = im->name;
    im->v.n = n;
    im->v.d = d;
    im->v.dtype = t;
    im->v.uncertainty = NAN;
    im->v.desc = im->data;
}

static void free_image(image *im)
{
    free(im->data);
    free(im->f);
}

typedef struct result {
    int32_t    *m0;
    float      *sc;
    fst_matches m;
} result;

static void result_init(result *r, uint32_t n0)
{
    r->m0 = malloc((n0 + 1) * sizeof *r->m0);
    r->sc = malloc((n0 + 1) * sizeof *r->sc);
    r->m.matches0 = r->m0;
    r->m.scores0 = r->sc;
    r->m.n0 = 0;
    r->m.nmatches = 0;
}

static void result_free(result *r)
{
    free(r->m0);
    free(r->sc);
}

/* ---- the parity check ------------------------------------------------------ */

typedef struct top2d { double s1, s2; int32_t j1; } top2d;

static void top2d_push(top2d *t, double s, int32_t j)
{
    if (t->j1 < 0 || s > t->s1) {
        t->s2 = t->s1;
        t->s1 = s;
        t->j1 = j;
    } else if (s > t->s2) {
        t->s2 = s;
    }
}

static bool near_threshold(const top2d *t, const fst_match_opts *o,
                           bool two_each)
{
    double d1 = 2 * (1 - t->s1), d2 = 2 * (1 - t->s2);
    double r2 = o->ratio_threshold * o->ratio_threshold;
    double t2 = o->distance_threshold * o->distance_threshold;
    if (o->ratio_threshold > 0 && two_each && fabs(d1 - r2 * d2) < 4 * TIE)
        return true;
    return o->distance_threshold > 0 && fabs(d1 - t2) < 4 * TIE;
}

static bool ambiguous(const top2d *t, const fst_match_opts *o, bool two_each)
{
    return (t->j1 >= 0 && t->s1 - t->s2 < TIE) ||
           near_threshold(t, o, two_each);
}

/* GPU result `g` for a against b under o, against the reference. */
static void check_parity(const image *a, const image *b,
                         const fst_match_opts *o, const fst_matches *g,
                         const char *what)
{
    uint32_t n0 = a->v.n, n1 = b->v.n, d = a->v.d;
    result ref;
    result_init(&ref, n0);
    ASSERT_OK(fst_match_reference(&a->v, &b->v, o, &ref.m));
    ASSERT_EQ(g->n0, n0);
    uint32_t kept = 0;
    for (uint32_t i = 0; i < n0; i++)
        kept += g->matches0[i] >= 0;
    ASSERT_EQ(g->nmatches, kept);
    bool two = n0 >= 2 && n1 >= 2;
    top2d *rows = malloc((n0 + 1) * sizeof *rows);
    top2d *cols = malloc((n1 + 1) * sizeof *cols);
    for (uint32_t i = 0; i < n0; i++)
        rows[i] = (top2d){ -INFINITY, -INFINITY, -1 };
    for (uint32_t j = 0; j < n1; j++)
        cols[j] = (top2d){ -INFINITY, -INFINITY, -1 };
    for (uint32_t i = 0; i < n0; i++)
        for (uint32_t j = 0; j < n1; j++) {
            double s = 0;
            for (uint32_t k = 0; k < d; k++)
                s += (double)a->f[(size_t)i * d + k] * b->f[(size_t)j * d + k];
            top2d_push(&rows[i], s, (int32_t)j);
            top2d_push(&cols[j], s, (int32_t)i);
        }
    uint32_t differ = 0;
    for (uint32_t i = 0; i < n0; i++) {
        int32_t gm = g->matches0[i], rm = ref.m0[i];
        bool amb = ambiguous(&rows[i], o, two);
        if (o->mutual) {
            int32_t j = rows[i].j1;
            amb = amb || (j >= 0 && ambiguous(&cols[j], o, two));
            if (gm >= 0 && gm < (int32_t)n1)
                amb = amb || ambiguous(&cols[gm], o, two);
        }
        if (gm != rm) {
            differ++;
            if (!amb)
                printf("# %s: row %u: gpu %d, reference %d (best %.6f, "
                       "second %.6f)\n", what, i, gm, rm, rows[i].s1,
                       rows[i].s2);
            ASSERT_TRUE(amb);
        }
        if (!(fabs(g->scores0[i] - ref.sc[i]) <= SCORE_TOL)) {
            printf("# %s: row %u: score gpu %.6f, reference %.6f\n", what, i,
                   g->scores0[i], ref.sc[i]);
            ASSERT_TRUE(near_threshold(&rows[i], o, two));
        }
    }
    if (differ)
        printf("# %s: %u of %u rows differ, all at near ties\n", what, differ,
               n0);
    free(rows);
    free(cols);
    result_free(&ref);
}

/* ---- helpers ------------------------------------------------------------ */

static bool quick(void)
{
    return getenv("FST_PARITY_QUICK") != NULL;
}

/* n scaled down in quick runs */
static size_t scaled(size_t n, size_t quick_n)
{
    return quick() ? quick_n : n;
}

static fst_backend *open_or_skip(const fst_match_opts *o, const char *params)
{
    fst_backend *be = NULL;
    fst_status s = fst_backend_open("cuda", o, params, &be);
    if (s == FST_ENODEVICE) {
        /* "no CUDA device: <why>", or why the backend is not there */
        const char *why = fst_errdetail();
        FST_SKIP("%s%s", strncmp(why, "no CUDA device", 14) == 0
                             ? "" : "no CUDA device: ", why);
    }
    ASSERT_OK(s);
    return be;
}

static bool have_device(void)
{
    fst_backend *be = NULL;
    if (fst_backend_open("cuda", NULL, NULL, &be) != FST_OK)
        return false;
    fst_backend_close(be);
    return true;
}

/* A pair list over `ni` images of sizes from `ns`, one batch call, every
 * result checked. */
static void batch_parity(fst_backend *be, const fst_match_opts *o,
                         const uint32_t *ns, size_t ni, uint32_t d,
                         fst_dtype t, size_t npairs, const char *what)
{
    image *im = malloc(ni * sizeof *im);
    for (size_t i = 0; i < ni; i++) {
        char nm[32];
        snprintf(nm, sizeof nm, "%s_%zu", what, i);
        make_image(&im[i], nm, ns[i], d, t, i ? &im[i - 1] : NULL);
    }
    fst_match_job *jobs = calloc(npairs, sizeof *jobs);
    result *res = calloc(npairs, sizeof *res);
    size_t *pa = malloc(npairs * sizeof *pa), *pb = malloc(npairs * sizeof *pb);
    for (size_t k = 0; k < npairs; k++) {
        /* neighbours more often than not: images recur across pairs */
        pa[k] = rnd() % ni;
        pb[k] = rnd() % 2 ? (pa[k] + 1) % ni : rnd() % ni;
        result_init(&res[k], ns[pa[k]]);
        jobs[k].a = &im[pa[k]].v;
        jobs[k].b = &im[pb[k]].v;
        jobs[k].out = &res[k].m;
    }
    ASSERT_OK(fst_backend_match_batch(be, jobs, npairs));
    for (size_t k = 0; k < npairs; k++) {
        char nm[64];
        snprintf(nm, sizeof nm, "%s pair %zu (%u x %u)", what, k,
                 ns[pa[k]], ns[pb[k]]);
        ASSERT_OK(jobs[k].status);
        check_parity(&im[pa[k]], &im[pb[k]], o, &res[k].m, nm);
        result_free(&res[k]);
    }
    for (size_t i = 0; i < ni; i++)
        free_image(&im[i]);
    free(im);
    free(jobs);
    free(res);
    free(pa);
    free(pb);
}

/* The number after `key` in the backend's stats line; -1 if absent. */
static double stat_of(fst_backend *be, const char *key)
{
    char buf[1024];
    fst_backend_stats(be, buf, sizeof buf);
    const char *p = strstr(buf, key);
    return p ? strtod(p + strlen(key), NULL) : -1;
}

/* ---- child processes ------------------------------------------------------ */

/* Run this program again with FST_PARITY_CHILD=what (and
 * CUDA_VISIBLE_DEVICES=visible unless NULL): the child's pid. */
static pid_t spawn_child(const char *what, const char *visible)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("FST_PARITY_CHILD", what, 1);
        if (visible)
            setenv("CUDA_VISIBLE_DEVICES", visible, 1);
        execl("/proc/self/exe", "test_parity", "(child)", (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* The child's exit status (128 + signal if killed), or -1 if it had to be
 * killed after limit_s seconds: a hang is a failure, never a wait. */
static int wait_child(pid_t pid, int limit_s)
{
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        int st = 0;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - t0.tv_sec > limit_s) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        struct timespec ts = { 0, 20 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
}

static int run_child(const char *what, const char *visible, int limit_s)
{
    pid_t pid = spawn_child(what, visible);
    ASSERT_TRUE(pid > 0);
    return wait_child(pid, limit_s);
}

#define CHILD_CHECK(c) do { if (!(c)) {                                   \
    fprintf(stderr, "child %s: %s:%d: %s failed (detail: %s)\n", what,    \
            __FILE__, __LINE__, #c, fst_errdetail());                     \
    _exit(1); } } while (0)

/* A device fault on the first batch: FST_EDEVICE naming the device; then
 * only close, which returns. */
static void child_fault(const char *what, const char *params)
{
    fst_backend *be = NULL;
    fst_status s = fst_backend_open("cuda", NULL, params, &be);
    if (s == FST_ENODEVICE)
        _exit(77);
    CHILD_CHECK(s == FST_OK);
    image a, b;
    make_image(&a, "fa", 300, 64, FST_DTYPE_F16, NULL);
    make_image(&b, "fb", 200, 64, FST_DTYPE_F16, &a);
    result r;
    result_init(&r, 300);
    s = fst_backend_match(be, &a.v, &b.v, &r.m);
    CHILD_CHECK(s == FST_EDEVICE);
    CHILD_CHECK(strstr(fst_errdetail(), "cuda:0") != NULL);
    fprintf(stderr, "child %s: %s\n", what, fst_errdetail());
    s = fst_backend_match(be, &a.v, &b.v, &r.m);
    CHILD_CHECK(s == FST_EDEVICE);                  /* only close now */
    fst_backend_close(be);
    _exit(0);
}

/* One of several processes on one device. */
static void child_share(const char *what)
{
    fst_backend *be = NULL;
    fst_match_opts o = fst_match_opts_default();
    fst_status s = fst_backend_open("cuda", &o, "share=2", &be);
    if (s == FST_ENODEVICE)
        _exit(77);
    CHILD_CHECK(s == FST_OK);
    image im[6];
    for (int i = 0; i < 6; i++) {
        char nm[16];
        snprintf(nm, sizeof nm, "s%d", i);
        make_image(&im[i], nm, (uint32_t)scaled(400, 100) + 100 * (uint32_t)i,
                   (uint32_t)scaled(128, 64), FST_DTYPE_F16,
                   i ? &im[i - 1] : NULL);
    }
    for (int rep = 0; rep < (quick() ? 2 : 20); rep++)
        for (int i = 0; i < 6; i++) {
            result r, ref;
            result_init(&r, im[i].v.n);
            result_init(&ref, im[i].v.n);
            const image *b = &im[(i + 1) % 6];
            CHILD_CHECK(fst_backend_match(be, &im[i].v, &b->v, &r.m) == FST_OK);
            CHILD_CHECK(fst_match_reference(&im[i].v, &b->v, &o, &ref.m) == FST_OK);
            uint32_t diff = 0;
            for (uint32_t k = 0; k < im[i].v.n; k++)
                diff += r.m0[k] != ref.m0[k];
            CHILD_CHECK(diff <= im[i].v.n / 50);   /* near ties only */
            result_free(&r);
            result_free(&ref);
        }
    fst_backend_close(be);
    _exit(0);
}

__attribute__((constructor)) static void parity_child_main(void)
{
    const char *what = getenv("FST_PARITY_CHILD");
    if (!what)
        return;
    if (strcmp(what, "nodevice") == 0) {
        fst_backend *be = NULL;
        fst_status s = fst_backend_open("cuda", NULL, NULL, &be);
        CHILD_CHECK(s == FST_ENODEVICE);
        CHILD_CHECK(strstr(fst_errdetail(), "no CUDA device") != NULL);
        _exit(0);
    }
    if (strcmp(what, "oom") == 0)
        child_fault(what, "fault=oom");
    if (strcmp(what, "kernel") == 0)
        child_fault(what, "fault=kernel");
    if (strcmp(what, "hang") == 0)
        child_fault(what, "fault=hang,timeout_s=2");
    if (strcmp(what, "share") == 0)
        child_share(what);
    fprintf(stderr, "unknown FST_PARITY_CHILD=%s\n", what);
    _exit(2);
}

/* ---- without a device ------------------------------------------------------ */

FST_TEST(open_without_device_is_enodevice)
{
    if (!fst_backend_available("cuda")) {
        fst_backend *be = NULL;
        ASSERT_STATUS(fst_backend_open("cuda", NULL, NULL, &be), FST_ENODEVICE);
        ASSERT_CONTAINS(fst_errdetail(), "cuda");
        return;
    }
    if (!have_device()) {
        /* this machine: the message says why */
        fst_backend *be = NULL;
        ASSERT_STATUS(fst_backend_open("cuda", NULL, NULL, &be), FST_ENODEVICE);
        ASSERT_CONTAINS(fst_errdetail(), "no CUDA device: ");
        ASSERT_TRUE(strlen(fst_errdetail()) > strlen("no CUDA device: "));
        return;
    }
    /* a GPU machine: hide the devices from a child process */
    ASSERT_EQ(run_child("nodevice", "", 120), 0);
}

FST_TEST(open_rejects_bad_parameters)
{
    if (!fst_backend_available("cuda"))
        FST_SKIP("built without CUDA");
    /* parameters are checked before any device is touched */
    fst_backend *be = NULL;
    ASSERT_STATUS(fst_backend_open("cuda", NULL, "cache=12", &be), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "unknown parameter 'cache'");
    ASSERT_STATUS(fst_backend_open("cuda", NULL, "transfer=zero-copy", &be),
                  FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "transfer=zero-copy");
    ASSERT_STATUS(fst_backend_open("cuda", NULL, "device=x", &be), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "device=x");
}

/* ---- parity ---------------------------------------------------------------- */

static const uint32_t sizes[][2] = {
    { 1, 1 }, { 1, 5 }, { 5, 1 }, { 2, 2 }, { 31, 33 }, { 127, 129 },
    { 128, 128 }, { 300, 257 }, { 1000, 1500 }, { 2048, 2048 }, { 3000, 700 },
};
#define NSIZES (sizeof sizes / sizeof *sizes)

static void sizes_parity(const char *params, fst_dtype t, uint32_t d,
                         const fst_match_opts *o, const char *what)
{
    fst_backend *be = open_or_skip(o, params);
    for (size_t k = 0; k < NSIZES; k++) {
        if (quick() && sizes[k][0] * sizes[k][1] > 700 * 700)
            continue;
        image a, b;
        make_image(&a, "a", sizes[k][0], d, t, NULL);
        make_image(&b, "b", sizes[k][1], d, t, &a);
        result r;
        result_init(&r, a.v.n);
        ASSERT_OK(fst_backend_match(be, &a.v, &b.v, &r.m));
        char nm[96];
        snprintf(nm, sizeof nm, "%s %ux%ux%u", what, a.v.n, b.v.n, d);
        check_parity(&a, &b, o, &r.m, nm);
        result_free(&r);
        free_image(&a);
        free_image(&b);
    }
    fst_backend_close(be);
}

FST_TEST(parity_f16_sizes)
{
    fst_match_opts o = fst_match_opts_default();
    sizes_parity(NULL, FST_DTYPE_F16, 256, &o, "f16");
    sizes_parity(NULL, FST_DTYPE_F16, 7, &o, "f16 d7");
}

FST_TEST(parity_f32_sizes)
{
    fst_match_opts o = fst_match_opts_default();
    sizes_parity(NULL, FST_DTYPE_F32, 128, &o, "f32");
}

FST_TEST(parity_f32_tf32)
{
    /* tf32=1 is allowed only where it stays within the tolerance */
    fst_match_opts o = fst_match_opts_default();
    sizes_parity("tf32=1", FST_DTYPE_F32, 256, &o, "tf32");
}

FST_TEST(parity_presets)
{
    const char *names[] = { "NN-mutual", "NN-ratio", "NN-superpoint" };
    for (int k = 0; k < 3; k++) {
        fst_match_opts o;
        ASSERT_OK(fst_match_preset(names[k], &o));
        sizes_parity(NULL, FST_DTYPE_F16, 128, &o, names[k]);
    }
    fst_match_opts o = { false, 0.9, 0 };
    sizes_parity(NULL, FST_DTYPE_F16, 128, &o, "one-way ratio");
}

FST_TEST(parity_empty_images)
{
    fst_backend *be = open_or_skip(NULL, NULL);
    image a, b, e;
    make_image(&a, "a", 50, 64, FST_DTYPE_F16, NULL);
    make_image(&b, "b", 40, 64, FST_DTYPE_F16, &a);
    make_image(&e, "e", 0, 64, FST_DTYPE_F16, NULL);
    result r;
    result_init(&r, 50);
    ASSERT_OK(fst_backend_match(be, &a.v, &e.v, &r.m));
    ASSERT_EQ(r.m.n0, 50);
    ASSERT_EQ(r.m.nmatches, 0);
    for (int i = 0; i < 50; i++) {
        ASSERT_EQ(r.m0[i], -1);
        ASSERT_TRUE(r.sc[i] == 0.0f);
    }
    ASSERT_OK(fst_backend_match(be, &e.v, &b.v, &r.m));
    ASSERT_EQ(r.m.n0, 0);
    result_free(&r);
    free_image(&a); free_image(&b); free_image(&e);
    fst_backend_close(be);
}

FST_TEST(parity_batch_of_many_pairs)
{
    fst_match_opts o = fst_match_opts_default();
    fst_backend *be = open_or_skip(&o, NULL);
    uint32_t ns[60];
    for (int i = 0; i < 60; i++)
        ns[i] = quick() ? 20 + (uint32_t)(rnd() % 200)
                        : 50 + (uint32_t)(rnd() % 600);
    batch_parity(be, &o, ns, 60, 64, FST_DTYPE_F16, scaled(1000, 150),
                 "batch");
    fst_match_opts r = { true, 0.8, 0 };
    fst_backend_close(be);
    be = open_or_skip(&r, NULL);
    batch_parity(be, &r, ns, 60, 64, FST_DTYPE_F32, scaled(300, 60),
                 "batch f32 ratio");
    fst_backend_close(be);
}

FST_TEST(parity_large_pair_is_tiled)
{
    /* sim_mb=2: a 1500 x 1200 pair (6 MB of similarities) runs in tiles */
    fst_match_opts o = fst_match_opts_default();
    fst_backend *be = open_or_skip(&o, "sim_mb=2");
    image a, b;
    uint32_t d = (uint32_t)scaled(128, 32);
    make_image(&a, "big_a", 1500, d, FST_DTYPE_F16, NULL);
    make_image(&b, "big_b", 1200, d, FST_DTYPE_F16, &a);
    result r;
    result_init(&r, 1500);
    ASSERT_OK(fst_backend_match(be, &a.v, &b.v, &r.m));
    check_parity(&a, &b, &o, &r.m, "tiled");
    ASSERT_NEAR(stat_of(be, "split="), 1, 0);        /* a count */
    /* a strip of 128 rows of b's 5000 columns does not fit 2 MB */
    image c;
    make_image(&c, "wide", 5000, d, FST_DTYPE_F16, NULL);
    ASSERT_STATUS(fst_backend_match(be, &a.v, &c.v, &r.m), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "sim_mb");
    ASSERT_OK(fst_backend_match(be, &a.v, &b.v, &r.m));   /* still usable */
    result_free(&r);
    free_image(&a); free_image(&b); free_image(&c);
    fst_backend_close(be);
}

FST_TEST(cache_under_eviction)
{
    /* cache_mb=1: ~10 images of 384 x 128 f16 fit; 40 images go round */
    fst_match_opts o = fst_match_opts_default();
    fst_backend *be = open_or_skip(&o, "cache_mb=1");
    uint32_t ns[40];
    for (int i = 0; i < 40; i++)
        ns[i] = quick() ? 100 + (uint32_t)(rnd() % 120)
                        : 200 + (uint32_t)(rnd() % 180);
    batch_parity(be, &o, ns, 40, 128, FST_DTYPE_F16, scaled(400, 120),
                 "evicting");
    ASSERT_GT(stat_of(be, "evictions="), 0);
    batch_parity(be, &o, ns, 40, 128, FST_DTYPE_F16, scaled(400, 120),
                 "evicting again");
    char buf[1024];
    fst_backend_stats(be, buf, sizeof buf);
    printf("# %s\n", buf);
    fst_backend_close(be);
}

FST_TEST(cache_hits_are_counted)
{
    fst_match_opts o = fst_match_opts_default();
    fst_backend *be = open_or_skip(&o, NULL);
    image im[8];
    for (int i = 0; i < 8; i++) {
        char nm[16];
        snprintf(nm, sizeof nm, "h%d", i);
        make_image(&im[i], nm, (uint32_t)scaled(500, 200), 128, FST_DTYPE_F16,
                   i ? &im[i - 1] : NULL);
    }
    fst_match_job jobs[28];
    result res[28];
    int ia[28], ib[28], k = 0;
    for (int i = 0; i < 8; i++)
        for (int j = i + 1; j < 8; j++, k++) {
            result_init(&res[k], im[i].v.n);
            ia[k] = i;
            ib[k] = j;
            jobs[k] = (fst_match_job){ &im[i].v, &im[j].v, &res[k].m, FST_OK };
        }
    ASSERT_OK(fst_backend_match_batch(be, jobs, 28));
    ASSERT_NEAR(stat_of(be, "misses="), 8, 0); /* each image crossed once */
    ASSERT_OK(fst_backend_match_batch(be, jobs, 28));
    ASSERT_NEAR(stat_of(be, "misses="), 8, 0); /* warm: no upload at all */
    ASSERT_GT(stat_of(be, "hits="), 0);
    char buf[1024];
    fst_backend_stats(be, buf, sizeof buf);
    ASSERT_CONTAINS(buf, "hit_rate=");
    printf("# %s\n", buf);
    for (k = 0; k < 28; k++)
        check_parity(&im[ia[k]], &im[ib[k]], &o, &res[k].m, "warm");
    for (k = 0; k < 28; k++)
        result_free(&res[k]);
    for (int i = 0; i < 8; i++)
        free_image(&im[i]);
    fst_backend_close(be);
}

FST_TEST(ring_smaller_than_an_image)
{
    /* ring_mb=1: 2 MB images go up in 256 KB pieces, wrapping the ring */
    fst_match_opts o = fst_match_opts_default();
    fst_backend *be = open_or_skip(&o, "ring_mb=1");
    uint32_t big[6] = { 2048, 2000, 1900, 2048, 1500, 1800 };
    uint32_t small[6] = { 700, 650, 600, 700, 500, 640 };    /* > 256 KB */
    batch_parity(be, &o, quick() ? small : big, 6, 256, FST_DTYPE_F32,
                 scaled(12, 4), "ring");
    ASSERT_TRUE(stat_of(be, "ring=") > 1);   /* MB through the ring */
    fst_backend_close(be);
}

FST_TEST(transfer_register_from_a_file_map)
{
    fst_match_opts o = fst_match_opts_default();
    fst_backend *be = open_or_skip(&o, "transfer=register");
    /* descriptors in a read-only shared file map, like a store's */
    image a, b;
    make_image(&a, "ma", 900, 128, FST_DTYPE_F16, NULL);
    make_image(&b, "mb", 800, 128, FST_DTYPE_F16, &a);
    char path[] = "/tmp/fst_parity_XXXXXX";
    int fd = mkstemp(path);
    ASSERT_TRUE(fd >= 0);
    size_t la = (size_t)900 * 128 * 2, lb = (size_t)800 * 128 * 2;
    size_t off_b = (la + 4095) / 4096 * 4096;
    ASSERT_TRUE(pwrite(fd, a.data, la, 0) == (ssize_t)la);
    ASSERT_TRUE(pwrite(fd, b.data, lb, (off_t)off_b) == (ssize_t)lb);
    unsigned char *map = mmap(NULL, off_b + lb, PROT_READ, MAP_SHARED, fd, 0);
    ASSERT_TRUE(map != MAP_FAILED);   /* linked while mapped, like a store */
    a.v.desc = map;
    b.v.desc = map + off_b;
    result r;
    result_init(&r, 900);
    ASSERT_OK(fst_backend_match(be, &a.v, &b.v, &r.m));
    check_parity(&a, &b, &o, &r.m, "registered");
    char buf[1024];
    fst_backend_stats(be, buf, sizeof buf);
    printf("# %s\n", buf);
    /* either DMA from the registered map or a counted fallback to the ring */
    ASSERT_TRUE(stat_of(be, "register=") > 0 ||
                stat_of(be, "register_fallbacks=") > 0);
    fst_backend_close(be);      /* unregisters before the unmap */
    munmap(map, off_b + lb);
    close(fd);
    unlink(path);
    result_free(&r);
    free_image(&a);
    free_image(&b);
}

/* ---- errors ------------------------------------------------------------------ */

FST_TEST(bad_jobs_fail_alone)
{
    fst_match_opts o = fst_match_opts_default();
    fst_backend *be = open_or_skip(&o, NULL);
    image a, b, c;
    make_image(&a, "a", 300, 128, FST_DTYPE_F16, NULL);
    make_image(&b, "b", 200, 128, FST_DTYPE_F16, &a);
    make_image(&c, "c", 200, 64, FST_DTYPE_F16, &a);
    result r[3];
    for (int k = 0; k < 3; k++)
        result_init(&r[k], 300);
    fst_match_job jobs[3] = { { &a.v, &b.v, &r[0].m, FST_OK },
                              { &a.v, &c.v, &r[1].m, FST_OK },
                              { &a.v, &b.v, &r[2].m, FST_OK } };
    ASSERT_STATUS(fst_backend_match_batch(be, jobs, 3), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "c");
    ASSERT_OK(jobs[0].status);
    ASSERT_EQ(jobs[1].status, FST_EINVAL);
    ASSERT_OK(jobs[2].status);
    check_parity(&a, &b, &o, &r[0].m, "good job");
    check_parity(&a, &b, &o, &r[2].m, "good job");
    ASSERT_OK(fst_backend_match(be, &a.v, &b.v, &r[1].m));  /* usable */
    for (int k = 0; k < 3; k++)
        result_free(&r[k]);
    free_image(&a); free_image(&b); free_image(&c);
    fst_backend_close(be);
}

FST_TEST(invalid_device_index_is_clear)
{
    fst_backend *be = open_or_skip(NULL, NULL);
    fst_backend_close(be);
    ASSERT_STATUS(fst_backend_open("cuda", NULL, "device=1000", &be),
                  FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "device=1000");
    ASSERT_CONTAINS(fst_errdetail(), "visible");
}

FST_TEST(absurd_memory_sizes_are_clear)
{
    fst_backend *be = open_or_skip(NULL, NULL);
    fst_backend_close(be);
    ASSERT_STATUS(fst_backend_open("cuda", NULL, "cache_mb=16000000", &be),
                  FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "cache_mb=16000000");
    ASSERT_CONTAINS(fst_errdetail(), "cuda:0");
    ASSERT_STATUS(fst_backend_open("cuda", NULL, "headroom_mb=16000000", &be),
                  FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "headroom_mb");
    ASSERT_STATUS(fst_backend_open("cuda", NULL, "sim_mb=1000000", &be),
                  FST_EINVAL);
    /* and a device that still works afterwards */
    be = open_or_skip(NULL, "cache_mb=64");
    fst_backend_close(be);
}

FST_TEST(device_faults_are_edevice_then_close_only)
{
#if !FST_TEST_HOOKS
    FST_SKIP("fault= is compiled in only with test hooks (-Dtest_hooks)");
#endif
    fst_backend *be = open_or_skip(NULL, NULL);
    fst_backend_close(be);
    /* each in its own process: a kernel fault poisons the CUDA context */
    ASSERT_EQ(run_child("oom", NULL, 120), 0);
    ASSERT_EQ(run_child("kernel", NULL, 120), 0);
    ASSERT_EQ(run_child("hang", NULL, 120), 0);    /* timeout_s=2 */
}

FST_TEST(two_processes_share_one_device)
{
    fst_backend *be = open_or_skip(NULL, NULL);
    fst_backend_close(be);
    pid_t p1 = spawn_child("share", NULL), p2 = spawn_child("share", NULL);
    ASSERT_TRUE(p1 > 0 && p2 > 0);
    int r1 = wait_child(p1, 300), r2 = wait_child(p2, 300);
    ASSERT_EQ(r1, 0);
    ASSERT_EQ(r2, 0);
}
