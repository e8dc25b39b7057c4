/* test_kernels.c : the matcher's semantics (hloc's nearest_neighbor), the
 * reference implementation, match_math.h, and every fast CPU path (each
 * instruction set this CPU runs, 1 and 2 threads, single and batched)
 * against the reference. */
#include "fst_test.h"
#include "backend_impl.h"
#include "match_math.h"
#include "cpu/cpu_impl.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* ---- helpers ---------------------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static void rng_seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }

static uint64_t rng_u64(void)   /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_unif(void) { return (double)(rng_u64() >> 11) * 0x1.0p-53; }

static double rng_gauss(void)
{
    double u = rng_unif(), v = rng_unif();
    if (u < 1e-300) u = 1e-300;
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

static void normalize(float *x, uint32_t d)
{
    double s = 0;
    for (uint32_t k = 0; k < d; k++) s += (double)x[k] * x[k];
    s = sqrt(s);
    if (s > 0)
        for (uint32_t k = 0; k < d; k++) x[k] = (float)(x[k] / s);
}

static float *rand_unit(uint32_t n, uint32_t d)
{
    float *x = malloc(((size_t)n * d + 1) * sizeof *x);
    for (size_t i = 0; i < n; i++) {
        for (uint32_t k = 0; k < d; k++) x[i * d + k] = (float)rng_gauss();
        normalize(x + i * d, d);
    }
    return x;
}

/* B for image A: `frac` of its rows are noisy copies of random rows of A
 * (noise sigma per component, renormalised), the rest random unit. */
static float *rand_related(const float *a, uint32_t n0, uint32_t n1,
                           uint32_t d, double frac, double sigma_lo,
                           double sigma_hi, int32_t *src_of)
{
    float *y = rand_unit(n1, d);
    for (uint32_t j = 0; j < n1; j++) {
        if (src_of) src_of[j] = -1;
        if (n0 == 0 || rng_unif() >= frac) continue;
        uint32_t i = (uint32_t)(rng_u64() % n0);
        double sg = sigma_lo + (sigma_hi - sigma_lo) * rng_unif();
        for (uint32_t k = 0; k < d; k++)
            y[(size_t)j * d + k] = (float)(a[(size_t)i * d + k] + sg * rng_gauss());
        normalize(y + (size_t)j * d, d);
        if (src_of) src_of[j] = (int32_t)i;
    }
    return y;
}

/* An image whose descriptors sit 16 bytes past a 64-byte boundary, as the
 * loosest alignment a view may have. `f` is what the matcher sees
 * (float16 widened). */
typedef struct img {
    fst_view v;
    void    *mem;
    float   *f;
} img;

static img img_make(const char *name, uint32_t n, uint32_t d, fst_dtype dt,
                    const float *src)
{
    img m;
    memset(&m, 0, sizeof m);
    size_t cnt = (size_t)n * d;
    if (posix_memalign(&m.mem, 64, cnt * 4 + 128) != 0) abort();
    void *data = (char *)m.mem + 16;
    m.f = malloc((cnt + 1) * sizeof *m.f);
    for (size_t k = 0; k < cnt; k++) {
        if (dt == FST_DTYPE_F32) {
            ((float *)data)[k] = src[k];
            m.f[k] = src[k];
        } else {
            uint16_t h = fst_f32_to_f16(src[k]);
            ((uint16_t *)data)[k] = h;
            m.f[k] = fst_f16_to_f32(h);
        }
    }
    m.v.name = name;
    m.v.n = n;
    m.v.d = d;
    m.v.dtype = dt;
    m.v.uncertainty = NAN;
    m.v.desc = data;
    return m;
}

static void img_free(img *m)
{
    free(m->mem);
    free(m->f);
}

typedef struct result {
    fst_matches m;
    int32_t *m0;
    float *s0;
} result;

static result res_make(uint32_t n0)
{
    result r;
    r.m0 = malloc((n0 + 1) * sizeof *r.m0);
    r.s0 = malloc((n0 + 1) * sizeof *r.s0);
    for (uint32_t i = 0; i <= n0; i++) { r.m0[i] = 12345; r.s0[i] = -7.0f; }
    memset(&r.m, 0, sizeof r.m);
    r.m.matches0 = r.m0;
    r.m.scores0 = r.s0;
    return r;
}

static void res_free(result *r) { free(r->m0); free(r->s0); }

static fst_match_opts opts_make(bool mutual, double ratio, double dist)
{
    fst_match_opts o;
    o.mutual = mutual;
    o.ratio_threshold = ratio;
    o.distance_threshold = dist;
    return o;
}

/* The reference's best/second-best per row and column, computed here the
 * same way (double sums rounded to float), to tell where a float32 path may
 * legitimately differ. */
typedef struct tops {
    fst_top2 *row, *col;
    double    eps;          /* 1e-6 in similarity, scaled by the norms */
} tops;

static tops tops_make(const img *a, const img *b)
{
    tops t;
    uint32_t n0 = a->v.n, n1 = b->v.n, d = a->v.d;
    t.row = malloc((n0 + 1) * sizeof *t.row);
    t.col = malloc((n1 + 1) * sizeof *t.col);
    double na = 0, nb = 0;
    for (uint32_t i = 0; i < n0; i++) {
        double s = 0;
        for (uint32_t k = 0; k < d; k++) s += (double)a->f[(size_t)i * d + k] * a->f[(size_t)i * d + k];
        if (s > na) na = s;
    }
    for (uint32_t j = 0; j < n1; j++) {
        double s = 0;
        for (uint32_t k = 0; k < d; k++) s += (double)b->f[(size_t)j * d + k] * b->f[(size_t)j * d + k];
        if (s > nb) nb = s;
    }
    double scale = sqrt(na) * sqrt(nb);
    t.eps = 1e-6 * (scale > 1 ? scale : 1);
    for (uint32_t j = 0; j < n1; j++) t.col[j] = fst_top2_init();
    for (uint32_t i = 0; i < n0; i++) {
        t.row[i] = fst_top2_init();
        for (uint32_t j = 0; j < n1; j++) {
            double s = 0;
            for (uint32_t k = 0; k < d; k++)
                s += (double)a->f[(size_t)i * d + k] * (double)b->f[(size_t)j * d + k];
            fst_top2_push(&t.row[i], (float)s, (int32_t)j);
            fst_top2_push(&t.col[j], (float)s, (int32_t)i);
        }
    }
    return t;
}

static void tops_free(tops *t) { free(t->row); free(t->col); }

/* Could a float32 path decide this top-2 otherwise? A near tie (not an
 * exact one: identical descriptors tie exactly in every path), or a
 * distance within eps of a threshold. */
static bool ambiguous_top(const fst_top2 *t, double eps, float ratio2,
                          bool use_ratio, float dist2)
{
    if (t->j1 < 0)
        return false;
    if (t->s2 != t->s1 && (double)t->s1 - t->s2 < eps)
        return true;
    double d1 = 2.0 * (1.0 - t->s1), d2 = 2.0 * (1.0 - t->s2);
    if (use_ratio && ratio2 > 0 && fabs(d1 - ratio2 * d2) <= 4 * eps)
        return true;
    if (dist2 > 0 && fabs(d1 - dist2) <= 4 * eps)
        return true;
    return false;
}

static int n_compared, n_exempt;

/* got must equal ref except on rows the reference itself leaves within
 * eps; scores within 1e-5 (scaled). */
static void expect_same(const char *what, const img *a, const img *b,
                        const fst_match_opts *o, const tops *t,
                        const result *got, const result *ref)
{
    uint32_t n0 = a->v.n, n1 = b->v.n;
    float ratio2 = fst_thresh2(o->ratio_threshold);
    float dist2 = fst_thresh2(o->distance_threshold);
    bool ur = fst_use_ratio(n0, n1);
    if (got->m.n0 != n0) {
        printf("# %s\n", what);
        ASSERT_EQ(got->m.n0, n0);
    }
    uint32_t cnt = 0;
    for (uint32_t i = 0; i < n0; i++) {
        cnt += got->m0[i] >= 0;
        bool amb = false;
        if (n1 > 0) {
            amb = ambiguous_top(&t->row[i], t->eps, ratio2, ur, dist2);
            if (o->mutual) {
                int32_t j = t->row[i].j1;
                if (j >= 0 && ambiguous_top(&t->col[j], t->eps, ratio2, ur, dist2))
                    amb = true;
                j = got->m0[i];
                if (j >= 0 && j < (int32_t)n1 &&
                    ambiguous_top(&t->col[j], t->eps, ratio2, ur, dist2))
                    amb = true;
            }
        }
        n_compared++;
        if (amb) {
            n_exempt++;
            continue;
        }
        if (got->m0[i] != ref->m0[i] ||
            !(fabs(got->s0[i] - ref->s0[i]) <= 1e-5 * (t->eps / 1e-6))) {
            printf("# %s: row %u: got (%d, %.9g), reference (%d, %.9g); "
                   "row top2 %.9g %.9g j=%d\n", what, i, got->m0[i],
                   got->s0[i], ref->m0[i], ref->s0[i], t->row[i].s1,
                   t->row[i].s2, t->row[i].j1);
            ASSERT_EQ(got->m0[i], ref->m0[i]);
            ASSERT_NEAR(got->s0[i], ref->s0[i], 1e-5 * (t->eps / 1e-6));
        }
    }
    if (got->m.nmatches != cnt) {
        printf("# %s\n", what);
        ASSERT_EQ(got->m.nmatches, cnt);
    }
    ASSERT_EQ(got->m0[n0], 12345);    /* nothing written past n0 */
}

static const char *const isa_names[] = { "avx512", "avx2", "scalar" };
#define N_ISA 3

static bool isa_ok(const char *name)
{
    const fst__cpu_isa *isa = fst__cpu_isa_find(name);
    return isa && isa->supported();
}

/* The instruction set (index into isa_names) the running FST_ISA_TEST
 * checks; -1 outside one. */
static int cur_isa = -1;

/* Run body for isa_names[k], or SKIP if this CPU lacks it. */
static void run_isa_test(int k, void (*body)(void))
{
    cur_isa = -1;
    if (!isa_ok(isa_names[k]))
        FST_SKIP("this CPU lacks %s", isa_names[k]);
    cur_isa = k;
    body();
    cur_isa = -1;
}

/* Whether the running FST_ISA_TEST checks isa_names[k]. */
static bool isa_selected(int k)
{
    return k == cur_isa;
}

/* FST_ISA_TEST(name) { body }: three tests, name_avx512, name_avx2 and
 * name_scalar, each running body with isa_selected() true for its own
 * instruction set only. One this CPU lacks shows as SKIP, not as a pass. */
#define FST_ISA_TEST(name)                                               \
    static void isa_body_##name(void);                                   \
    FST_TEST(name##_avx512) { run_isa_test(0, isa_body_##name); }        \
    FST_TEST(name##_avx2)   { run_isa_test(1, isa_body_##name); }        \
    FST_TEST(name##_scalar) { run_isa_test(2, isa_body_##name); }        \
    static void isa_body_##name(void)

/* Fast configurations on one pair of images, every option combination,
 * against fst_match_reference. `all`: every isa x threads 1, 2 x single,
 * batch for every combination; else (large cases, to keep ASan runs
 * short) each isa once per combination, threads and batch rotating so
 * that the eight combinations cover all four. */
static void check_all_paths(const img *a, const img *b, bool all)
{
    ASSERT_TRUE(cur_isa >= 0);       /* called from an FST_ISA_TEST only */
    tops t = tops_make(a, b);
    static const double ratios[] = { 0.0, 0.8 };
    static const double dists[] = { 0.0, 0.7 };
    for (int mu = 0; mu < 2; mu++)
    for (int ri = 0; ri < 2; ri++)
    for (int di = 0; di < 2; di++) {
        fst_match_opts o = opts_make(mu, ratios[ri], dists[di]);
        result ref = res_make(a->v.n);
        ASSERT_OK(fst_match_reference(&a->v, &b->v, &o, &ref.m));
        for (int k = 0; k < N_ISA; k++) {
            if (!isa_selected(k)) continue;
            for (int th = 1; th <= 2; th++)
            for (int batch = 0; batch < 2; batch++) {
                int combo = mu * 4 + ri * 2 + di;
                if (!all && (th - 1) * 2 + batch != (combo + k) % 4)
                    continue;
                char params[64], what[256];
                snprintf(params, sizeof params, "isa=%s,threads=%d", isa_names[k], th);
                snprintf(what, sizeof what, "%s %s n0=%u n1=%u d=%u %s mutual=%d "
                         "ratio=%g dist=%g", params, batch ? "batch" : "single",
                         a->v.n, b->v.n, a->v.d, fst_dtype_name(a->v.dtype),
                         mu, ratios[ri], dists[di]);
                fst_backend *be = NULL;
                ASSERT_OK(fst_backend_open("cpu", &o, params, &be));
                result got = res_make(a->v.n);
                if (batch) {
                    fst_match_job job = { &a->v, &b->v, &got.m, FST_EIO };
                    ASSERT_OK(fst_backend_match_batch(be, &job, 1));
                    ASSERT_EQ(job.status, FST_OK);
                } else {
                    ASSERT_OK(fst_backend_match(be, &a->v, &b->v, &got.m));
                }
                expect_same(what, a, b, &o, &t, &got, &ref);
                res_free(&got);
                fst_backend_close(be);
            }
        }
        res_free(&ref);
    }
    tops_free(&t);
}

static void check_sizes(uint32_t n0, uint32_t n1, uint32_t d, fst_dtype dt,
                        bool all)
{
    float *x = rand_unit(n0, d);
    float *y = rand_related(x, n0, n1, d, 0.5, 0.02, 0.12, NULL);
    img a = img_make("imgA", n0, d, dt, x);
    img b = img_make("imgB", n1, d, dt, y);
    check_all_paths(&a, &b, all);
    img_free(&a);
    img_free(&b);
    free(x);
    free(y);
}

/* ---- match_math.h ----------------------------------------------------- */

static bool top2_eq(fst_top2 p, fst_top2 q)
{
    return p.j1 == q.j1 && p.s1 == q.s1 && (p.s2 == q.s2 || (isinf(p.s2) && isinf(q.s2)));
}

FST_TEST(top2_push_is_order_independent)
{
    rng_seed(1);
    for (int trial = 0; trial < 2000; trial++) {
        int n = 1 + (int)(rng_u64() % 12);
        float v[12];
        int perm[12];
        for (int k = 0; k < n; k++) {
            v[k] = (float)(rng_u64() % 4) * 0.25f;   /* many exact ties */
            perm[k] = k;
        }
        fst_top2 seq = fst_top2_init();
        for (int k = 0; k < n; k++) fst_top2_push(&seq, v[k], k);
        /* expected by brute force: lowest index of the max, then the max of
         * the rest */
        int jb = 0;
        for (int k = 1; k < n; k++) if (v[k] > v[jb]) jb = k;
        float s2 = -INFINITY;
        for (int k = 0; k < n; k++) if (k != jb && v[k] > s2) s2 = v[k];
        ASSERT_EQ(seq.j1, jb);
        ASSERT_TRUE(seq.s1 == v[jb]);
        ASSERT_TRUE(seq.s2 == s2);
        for (int k = n - 1; k > 0; k--) {
            int r = (int)(rng_u64() % (uint64_t)(k + 1));
            int tmp = perm[k]; perm[k] = perm[r]; perm[r] = tmp;
        }
        fst_top2 sh = fst_top2_init();
        for (int k = 0; k < n; k++) fst_top2_push(&sh, v[perm[k]], perm[k]);
        ASSERT_TRUE(top2_eq(seq, sh));
        /* merge of any split of the shuffled order equals sequential */
        int cut = (int)(rng_u64() % (uint64_t)(n + 1));
        fst_top2 p = fst_top2_init(), q = fst_top2_init();
        for (int k = 0; k < cut; k++) fst_top2_push(&p, v[perm[k]], perm[k]);
        for (int k = cut; k < n; k++) fst_top2_push(&q, v[perm[k]], perm[k]);
        ASSERT_TRUE(top2_eq(fst_top2_merge(p, q), seq));
        ASSERT_TRUE(top2_eq(fst_top2_merge(q, p), seq));
    }
}

FST_TEST(top2_ignores_nan_and_handles_empty)
{
    fst_top2 t = fst_top2_init();
    ASSERT_EQ(t.j1, -1);
    fst_top2_push(&t, NAN, 0);
    ASSERT_EQ(t.j1, -1);
    fst_top2_push(&t, 0.5f, 1);
    fst_top2_push(&t, NAN, 2);
    ASSERT_EQ(t.j1, 1);
    ASSERT_TRUE(t.s1 == 0.5f);
    fst_top2 e = fst_top2_init();
    ASSERT_TRUE(top2_eq(fst_top2_merge(t, e), t));
    ASSERT_TRUE(top2_eq(fst_top2_merge(e, t), t));
    float sc = 1.0f;
    ASSERT_EQ(fst_nn_decide(&e, 0, 0, true, &sc), -1);
    ASSERT_TRUE(sc == 0.0f);
}

FST_TEST(decide_follows_hloc_find_nn)
{
    fst_top2 t = { 0.9f, 0.5f, 3 };
    float sc;
    ASSERT_EQ(fst_nn_decide(&t, 0, 0, true, &sc), 3);
    ASSERT_TRUE(sc == (0.9f + 1.0f) / 2.0f);
    /* d1 = 0.2, d2 = 1.0: ratio 0.8 (0.64) keeps, 0.4 (0.16) drops */
    ASSERT_EQ(fst_nn_decide(&t, fst_thresh2(0.8), 0, true, &sc), 3);
    ASSERT_EQ(fst_nn_decide(&t, fst_thresh2(0.4), 0, true, &sc), -1);
    ASSERT_TRUE(sc == 0.0f);
    /* ratio ignored when an image has < 2 keypoints */
    ASSERT_EQ(fst_nn_decide(&t, fst_thresh2(0.4), 0, false, &sc), 3);
    /* distance: d1 = 0.2 <= 0.49 keeps; 0.3 (0.09) drops */
    ASSERT_EQ(fst_nn_decide(&t, 0, fst_thresh2(0.7), true, &sc), 3);
    ASSERT_EQ(fst_nn_decide(&t, 0, fst_thresh2(0.3), true, &sc), -1);
    ASSERT_TRUE(fst_thresh2(0.8) == 0.64f);
    ASSERT_TRUE(fst_thresh2(0.8) != 0.8f * 0.8f);
    ASSERT_TRUE(fst_thresh2(0.0) == 0.0f);
    ASSERT_EQ(fst_mutual_keep(4, 2, 2), 4);
    ASSERT_EQ(fst_mutual_keep(4, 1, 2), -1);
    ASSERT_EQ(fst_mutual_keep(-1, -1, 2), -1);
    ASSERT_TRUE(fst_use_ratio(2, 2) && !fst_use_ratio(1, 5) && !fst_use_ratio(5, 1));
}

/* ---- the reference: hand-computed cases and hloc's semantics ----------- */

FST_TEST(reference_hand_computed)
{
    /* D = 2. a0 = (1,0), a1 = (0,1), a2 = (0.6,0.8);
     *        b0 = (0.8,0.6), b1 = (0,1), b2 = (-1,0).
     * sim rows: a0: 0.8 0 -1 ; a1: 0.6 1 0 ; a2: 0.96 0.8 -0.6
     * forward best: a0->b0, a1->b1, a2->b0
     * backward (columns): b0: 0.8, 0.6, 0.96 -> a2; b1: 0, 1, 0.8 -> a1;
     * mutual: a0 loses (b0's best is a2), a1 keeps, a2 keeps. */
    float x[] = { 1, 0, 0, 1, 0.6f, 0.8f };
    float y[] = { 0.8f, 0.6f, 0, 1, -1, 0 };
    img a = img_make("a", 3, 2, FST_DTYPE_F32, x);
    img b = img_make("b", 3, 2, FST_DTYPE_F32, y);
    fst_match_opts o = opts_make(true, 0, 0);
    result r = res_make(3);
    ASSERT_OK(fst_match_reference(&a.v, &b.v, &o, &r.m));
    ASSERT_EQ(r.m.n0, 3);
    ASSERT_EQ(r.m0[0], -1);
    ASSERT_EQ(r.m0[1], 1);
    ASSERT_EQ(r.m0[2], 0);
    ASSERT_EQ(r.m.nmatches, 2);
    /* the mutual check removed a0's match but kept its forward score */
    ASSERT_NEAR(r.s0[0], (0.8 + 1) / 2, 1e-7);
    ASSERT_NEAR(r.s0[1], 1.0, 1e-7);
    ASSERT_NEAR(r.s0[2], (0.96 + 1) / 2, 1e-7);
    /* without mutual a0 keeps b0 */
    o.mutual = false;
    ASSERT_OK(fst_match_reference(&a.v, &b.v, &o, &r.m));
    ASSERT_EQ(r.m0[0], 0);
    ASSERT_EQ(r.m.nmatches, 3);
    /* ratio 0.8 (0.64): a0: d1 = 0.4, d2 = 2 -> keep; a1: d1 = 0, keep;
     * a2: d1 = 0.08, d2 = 0.4, 0.08 <= 0.256 keep. ratio 0.3 (0.09): a0
     * 0.4 <= 0.18 no; a2: 0.08 <= 0.036 no; a1: 0 <= 0.72 yes. */
    o.ratio_threshold = 0.3;
    ASSERT_OK(fst_match_reference(&a.v, &b.v, &o, &r.m));
    ASSERT_EQ(r.m0[0], -1);
    ASSERT_EQ(r.m0[1], 1);
    ASSERT_EQ(r.m0[2], -1);
    ASSERT_TRUE(r.s0[0] == 0.0f && r.s0[2] == 0.0f);
    /* distance 0.5 (0.25): a0 0.4 no, a1 0 yes, a2 0.08 yes */
    o.ratio_threshold = 0;
    o.distance_threshold = 0.5;
    ASSERT_OK(fst_match_reference(&a.v, &b.v, &o, &r.m));
    ASSERT_EQ(r.m0[0], -1);
    ASSERT_EQ(r.m0[1], 1);
    ASSERT_EQ(r.m0[2], 0);
    res_free(&r);
    img_free(&a);
    img_free(&b);
}

FST_TEST(reference_ratio_disabled_with_one_keypoint)
{
    /* n1 = 1: no second neighbour, hloc drops the ratio test */
    float x[] = { 1, 0, 0, 1 };
    float y[] = { 0.6f, 0.8f };
    img a = img_make("a", 2, 2, FST_DTYPE_F32, x);
    img b = img_make("b", 1, 2, FST_DTYPE_F32, y);
    fst_match_opts o = opts_make(false, 0.1, 0);
    result r = res_make(2);
    ASSERT_OK(fst_match_reference(&a.v, &b.v, &o, &r.m));
    ASSERT_EQ(r.m0[0], 0);
    ASSERT_EQ(r.m0[1], 0);
    /* and with n0 = 1 the backward direction also skips it */
    img a1 = img_make("a1", 1, 2, FST_DTYPE_F32, x);
    float y2[] = { 0.6f, 0.8f, 0.8f, 0.6f };
    img b2 = img_make("b2", 2, 2, FST_DTYPE_F32, y2);
    o.mutual = true;
    ASSERT_OK(fst_match_reference(&a1.v, &b2.v, &o, &r.m));
    ASSERT_EQ(r.m0[0], 1);
    res_free(&r);
    img_free(&a); img_free(&b); img_free(&a1); img_free(&b2);
}

/* Images where row 0's d1 == ratio2 * d2 exactly in float32: with
 * s1 = 1 - q and s2 = 0, d1 = 2q and d2 = 2, so d1 == q * d2 exactly. */
static void boundary_images(float q, img *a, img *b)
{
    float s1 = 1.0f - q;
    ASSERT_TRUE(1.0f - s1 == q);
    float c = (float)sqrt(1.0 - (double)s1 * s1);
    float x[] = { 1, 0, -1, 0 };
    float y[] = { s1, c, 0, 1 };
    *a = img_make("a", 2, 2, FST_DTYPE_F32, x);
    *b = img_make("b", 2, 2, FST_DTYPE_F32, y);
}

FST_ISA_TEST(reference_ratio_boundary_is_inclusive_at_064f)
{
    /* r = 0.8 -> (float)(0.8 * 0.8) = 0.64f. d1 == 0.64f * d2 is kept. */
    img a, b;
    boundary_images(0.64f, &a, &b);
    fst_match_opts o = opts_make(true, 0.8, 0);
    result r = res_make(2);
    ASSERT_OK(fst_match_reference(&a.v, &b.v, &o, &r.m));
    ASSERT_EQ(r.m0[0], 0);
    ASSERT_EQ(r.m0[1], -1);
    for (int k = 0; k < N_ISA; k++) {
        if (!isa_selected(k)) continue;
        char p[32];
        snprintf(p, sizeof p, "isa=%s", isa_names[k]);
        fst_backend *be;
        result g = res_make(2);
        ASSERT_OK(fst_backend_open("cpu", &o, p, &be));
        ASSERT_OK(fst_backend_match(be, &a.v, &b.v, &g.m));
        ASSERT_EQ(g.m0[0], 0);
        ASSERT_TRUE(g.s0[0] == r.s0[0]);
        fst_backend_close(be);
        res_free(&g);
    }
    img_free(&a);
    img_free(&b);
    /* q = 0.8f * 0.8f (0.64000005f) > 0.64f: d1 = q * d2 > 0.64f * d2, so
     * hloc drops it; forming r*r in float32 would keep it. */
    float q = 0.8f * 0.8f;
    ASSERT_TRUE(q > 0.64f);
    boundary_images(q, &a, &b);
    ASSERT_OK(fst_match_reference(&a.v, &b.v, &o, &r.m));
    ASSERT_EQ(r.m0[0], -1);
    ASSERT_TRUE(r.s0[0] == 0.0f);
    res_free(&r);
    img_free(&a);
    img_free(&b);
}

FST_TEST(reference_empty_images)
{
    float x[] = { 1, 0, 0, 1 };
    img a = img_make("a", 2, 2, FST_DTYPE_F32, x);
    img e = img_make("empty", 0, 0, FST_DTYPE_F32, x);
    fst_match_opts o = fst_match_opts_default();
    result r = res_make(2);
    ASSERT_OK(fst_match_reference(&a.v, &e.v, &o, &r.m));
    ASSERT_EQ(r.m.n0, 2);
    ASSERT_EQ(r.m.nmatches, 0);
    ASSERT_EQ(r.m0[0], -1);
    ASSERT_EQ(r.m0[1], -1);
    ASSERT_TRUE(r.s0[0] == 0.0f && r.s0[1] == 0.0f);
    ASSERT_EQ(r.m0[2], 12345);
    result r0 = res_make(0);
    ASSERT_OK(fst_match_reference(&e.v, &a.v, &o, &r0.m));
    ASSERT_EQ(r0.m.n0, 0);
    ASSERT_EQ(r0.m0[0], 12345);
    fst_backend *be;
    ASSERT_OK(fst_backend_open("cpu", &o, NULL, &be));
    r.m0[0] = 5;
    ASSERT_OK(fst_backend_match(be, &a.v, &e.v, &r.m));
    ASSERT_EQ(r.m0[0], -1);
    ASSERT_EQ(r.m0[1], -1);
    fst_backend_close(be);
    res_free(&r);
    res_free(&r0);
    img_free(&a);
    img_free(&e);
}

FST_TEST(reference_float16_is_widened_float32)
{
    rng_seed(7);
    float *x = rand_unit(40, 64), *y = rand_unit(50, 64);
    img a16 = img_make("a16", 40, 64, FST_DTYPE_F16, x);
    img b16 = img_make("b16", 50, 64, FST_DTYPE_F16, y);
    img a32 = img_make("a32", 40, 64, FST_DTYPE_F32, a16.f);
    img b32 = img_make("b32", 50, 64, FST_DTYPE_F32, b16.f);
    fst_match_opts o = opts_make(true, 0.9, 0);
    result r16 = res_make(40), r32 = res_make(40);
    ASSERT_OK(fst_match_reference(&a16.v, &b16.v, &o, &r16.m));
    ASSERT_OK(fst_match_reference(&a32.v, &b32.v, &o, &r32.m));
    ASSERT_MEMEQ(r16.m0, r32.m0, 40 * sizeof(int32_t));
    ASSERT_MEMEQ(r16.s0, r32.s0, 40 * sizeof(float));
    res_free(&r16); res_free(&r32);
    img_free(&a16); img_free(&b16); img_free(&a32); img_free(&b32);
    free(x); free(y);
}

/* ---- errors, options, parameters --------------------------------------- */

FST_TEST(mismatched_images_are_einval_naming_both)
{
    float x[8] = { 1, 0, 0, 1, 1, 0, 0, 1 };
    img a = img_make("left.jpg", 2, 2, FST_DTYPE_F32, x);
    img b = img_make("right.jpg", 1, 4, FST_DTYPE_F32, x);
    img c = img_make("half.jpg", 2, 2, FST_DTYPE_F16, x);
    fst_match_opts o = fst_match_opts_default();
    result r = res_make(2);
    ASSERT_STATUS(fst_match_reference(&a.v, &b.v, &o, &r.m), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "left.jpg");
    ASSERT_CONTAINS(fst_errdetail(), "right.jpg");
    fst_backend *be;
    ASSERT_OK(fst_backend_open("cpu", &o, NULL, &be));
    ASSERT_STATUS(fst_backend_match(be, &a.v, &b.v, &r.m), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "left.jpg");
    ASSERT_CONTAINS(fst_errdetail(), "right.jpg");
    ASSERT_STATUS(fst_backend_match(be, &a.v, &c.v, &r.m), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "left.jpg");
    ASSERT_CONTAINS(fst_errdetail(), "half.jpg");
    ASSERT_CONTAINS(fst_errdetail(), "float16");
    /* a batch reports the failing job and still runs the others */
    result r2 = res_make(2);
    fst_match_job jobs[3] = {
        { &a.v, &a.v, &r.m, FST_EIO },
        { &a.v, &c.v, &r2.m, FST_EIO },
        { &c.v, &c.v, &r2.m, FST_EIO },
    };
    ASSERT_STATUS(fst_backend_match_batch(be, jobs, 3), FST_EINVAL);
    ASSERT_EQ(jobs[0].status, FST_OK);
    ASSERT_EQ(jobs[1].status, FST_EINVAL);
    ASSERT_EQ(jobs[2].status, FST_OK);
    ASSERT_EQ(r.m0[0], 0);
    ASSERT_EQ(r.m0[1], 1);
    ASSERT_EQ(r2.m0[0], 0);
    ASSERT_EQ(r2.m0[1], 1);
    fst_backend_close(be);
    res_free(&r); res_free(&r2);
    img_free(&a); img_free(&b); img_free(&c);
}

FST_TEST(backend_params_and_presets)
{
    fst_backend *be = NULL;
    fst_match_opts o = fst_match_opts_default();
    ASSERT_TRUE(o.mutual && o.ratio_threshold == 0 && o.distance_threshold == 0);
    ASSERT_STATUS(fst_backend_open("cpu", &o, "threads=2,frobnicate=1", &be), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "frobnicate");
    ASSERT_STATUS(fst_backend_open("cpu", &o, "threads=0", &be), FST_EINVAL);
    ASSERT_STATUS(fst_backend_open("cpu", &o, "threads=x", &be), FST_EINVAL);
    ASSERT_STATUS(fst_backend_open("cpu", &o, "isa=sse9", &be), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "sse9");
    ASSERT_STATUS(fst_backend_open("cpu", &o, "threads", &be), FST_EINVAL);
    ASSERT_STATUS(fst_backend_open("nope", &o, NULL, &be), FST_EINVAL);
    ASSERT_TRUE(be == NULL);
    fst_match_opts bad = opts_make(true, -0.5, 0);
    ASSERT_STATUS(fst_backend_open("cpu", &bad, NULL, &be), FST_EINVAL);
    ASSERT_TRUE(fst_backend_available("cpu"));
    ASSERT_TRUE(!fst_backend_available("nope"));
    if (!fst_backend_available("cuda"))
        ASSERT_STATUS(fst_backend_open("cuda", &o, NULL, &be), FST_ENODEVICE);
    ASSERT_OK(fst_backend_open("cpu", NULL, " threads = 2 , isa=scalar,", &be));
    ASSERT_STREQ(fst_backend_name(be), "cpu");
    char st[256];
    fst_backend_stats(be, st, sizeof st);
    ASSERT_CONTAINS(st, "isa=scalar");
    ASSERT_CONTAINS(st, "threads=2");
    ASSERT_OK(fst_backend_sync(be));
    fst_backend_close(be);
    fst_backend_close(NULL);

    ASSERT_OK(fst_match_preset("NN-mutual", &o));
    ASSERT_TRUE(o.mutual && o.ratio_threshold == 0 && o.distance_threshold == 0);
    ASSERT_OK(fst_match_preset("NN-ratio", &o));
    ASSERT_TRUE(o.mutual && o.ratio_threshold == 0.8 && o.distance_threshold == 0);
    ASSERT_OK(fst_match_preset("NN-superpoint", &o));
    ASSERT_TRUE(o.mutual && o.ratio_threshold == 0 && o.distance_threshold == 0.7);
    fst_match_opts keep = o;
    ASSERT_STATUS(fst_match_preset("NN-magic", &o), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "NN-magic");
    ASSERT_TRUE(o.distance_threshold == keep.distance_threshold);
}

FST_TEST(backend_params_checked_without_opening)
{
    /* the match coordinator refuses a typo before any worker or journal */
    ASSERT_OK(fst_backend_check_params("cpu", NULL));
    ASSERT_OK(fst_backend_check_params("cpu", ""));
    ASSERT_OK(fst_backend_check_params("cpu", " threads = 2 , isa=scalar,"));
    ASSERT_STATUS(fst_backend_check_params("cpu", "threads=2,thread=1"), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "unknown parameter 'thread' (known: threads, isa)");
    ASSERT_STATUS(fst_backend_check_params("cpu", "cache_mb=4"), FST_EINVAL);
    ASSERT_STATUS(fst_backend_check_params("cpu", "threads"), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "malformed parameter 'threads'");
    /* every key the CPU check accepts, the CPU backend opens with */
    fst_backend *be = NULL;
    ASSERT_OK(fst_backend_open("cpu", NULL, "threads=1,isa=auto", &be));
    fst_backend_close(be);
    /* CUDA's keys, checked the same way on any build (no module loaded) */
    ASSERT_OK(fst_backend_check_params("cuda", "device=0,cache_mb=64,headroom_mb=1,share=2,"
                                       "sim_mb=8,ring_mb=8,transfer=ring,tf32=1,pad=128,"
                                       "timeout_s=5,profile=1"));
    ASSERT_STATUS(fst_backend_check_params("cuda", "cachemb=64"), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "cuda backend: unknown parameter 'cachemb'");
    ASSERT_STATUS(fst_backend_check_params("cuda", "threads=2"), FST_EINVAL);
    ASSERT_STATUS(fst_backend_check_params("tpu", ""), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "unknown backend 'tpu'");
}

FST_TEST(param_walker)
{
    const char *p = "a=1,,bb= two ,c=";
    char k[8], v[8];
    ASSERT_OK(fst__param_next(&p, k, sizeof k, v, sizeof v));
    ASSERT_STREQ(k, "a"); ASSERT_STREQ(v, "1");
    ASSERT_OK(fst__param_next(&p, k, sizeof k, v, sizeof v));
    ASSERT_STREQ(k, "bb"); ASSERT_STREQ(v, "two");
    ASSERT_OK(fst__param_next(&p, k, sizeof k, v, sizeof v));
    ASSERT_STREQ(k, "c"); ASSERT_STREQ(v, "");
    ASSERT_EQ(fst__param_next(&p, k, sizeof k, v, sizeof v), FST_DONE);
    const char *q = "=3";
    ASSERT_STATUS(fst__param_next(&q, k, sizeof k, v, sizeof v), FST_EINVAL);
    q = "toolongkey=1";
    ASSERT_STATUS(fst__param_next(&q, k, sizeof k, v, sizeof v), FST_EINVAL);
    q = NULL;
    ASSERT_EQ(fst__param_next(&q, k, sizeof k, v, sizeof v), FST_DONE);
}

FST_TEST(isa_auto_picks_a_supported_path)
{
    const fst__cpu_isa *isa = fst__cpu_isa_find("auto");
    ASSERT_TRUE(isa != NULL && isa->supported());
    ASSERT_TRUE(fst__cpu_isa_find("scalar")->supported());
    printf("# auto isa: %s; avx512 %d avx2 %d\n", isa->name,
           isa_ok("avx512"), isa_ok("avx2"));
    for (int k = 0; k < N_ISA; k++) {
        if (isa_ok(isa_names[k])) continue;
        fst_backend *be;
        char p[32];
        snprintf(p, sizeof p, "isa=%s", isa_names[k]);
        ASSERT_STATUS(fst_backend_open("cpu", NULL, p, &be), FST_ENODEVICE);
    }
}

/* ---- fast paths against the reference ---------------------------------- */

FST_ISA_TEST(fast_paths_tiny_sizes_every_d)
{
    static const uint32_t ns[] = { 0, 1, 2, 17 };
    static const uint32_t ds[] = { 1, 64, 100, 128, 256 };
    rng_seed(11);
    for (size_t di = 0; di < 5; di++)
    for (size_t p = 0; p < 4; p++)
    for (size_t q = 0; q < 4; q++)
        check_sizes(ns[p], ns[q], ds[di], (p + q + di) % 2 ? FST_DTYPE_F16 : FST_DTYPE_F32, true);
    printf("# rows compared %d, exempt (reference within 1e-6) %d\n", n_compared, n_exempt);
}

FST_ISA_TEST(fast_paths_odd_sizes)
{
    rng_seed(12);
    check_sizes(1023, 33, 100, FST_DTYPE_F32, true);
    check_sizes(31, 1023, 128, FST_DTYPE_F16, true);
    check_sizes(257, 300, 256, FST_DTYPE_F16, true);
    check_sizes(2049, 1023, 64, FST_DTYPE_F32, false);
    check_sizes(1023, 2049, 16, FST_DTYPE_F16, false);
    printf("# rows compared %d, exempt %d\n", n_compared, n_exempt);
}

FST_ISA_TEST(fast_paths_5000)
{
    rng_seed(13);
    check_sizes(5000, 5000, 4, FST_DTYPE_F32, false);
    check_sizes(5000, 2049, 1, FST_DTYPE_F16, false);
    printf("# rows compared %d, exempt %d\n", n_compared, n_exempt);
}

FST_ISA_TEST(fast_paths_exact_ties)
{
    /* duplicated descriptors on both sides: every path must pick the
     * lowest index, exactly as the reference */
    rng_seed(14);
    static const uint32_t ds[] = { 1, 64, 100 };
    for (int di = 0; di < 3; di++) {
        uint32_t d = ds[di], n0 = 70, n1 = 90;
        float *x = rand_unit(n0, d);
        float *y = rand_related(x, n0, n1, d, 0.5, 0.0, 0.05, NULL);
        for (uint32_t j = 1; j < n1; j += 3)   /* B rows repeated */
            memcpy(y + (size_t)j * d, y + (size_t)(j - 1) * d, d * sizeof *y);
        for (uint32_t j = 40; j < n1; j++)     /* and repeated far apart */
            if (j % 7 == 0) memcpy(y + (size_t)j * d, y + (size_t)(j - 37) * d, d * sizeof *y);
        for (uint32_t i = 2; i < n0; i += 5)   /* A rows repeated */
            memcpy(x + (size_t)i * d, x + (size_t)(i - 2) * d, d * sizeof *x);
        for (int dt = 0; dt < 2; dt++) {
            img a = img_make("tieA", n0, d, dt ? FST_DTYPE_F16 : FST_DTYPE_F32, x);
            img b = img_make("tieB", n1, d, dt ? FST_DTYPE_F16 : FST_DTYPE_F32, y);
            check_all_paths(&a, &b, true);
            img_free(&a);
            img_free(&b);
        }
        free(x);
        free(y);
    }
}

FST_ISA_TEST(fast_paths_non_unit_descriptors)
{
    rng_seed(15);
    uint32_t n0 = 300, n1 = 333, d = 100;
    float *x = rand_unit(n0, d);
    float *y = rand_related(x, n0, n1, d, 0.5, 0.02, 0.2, NULL);
    for (uint32_t i = 0; i < n0; i++) {
        float f = (float)(0.25 + 2.0 * rng_unif());
        for (uint32_t k = 0; k < d; k++) x[(size_t)i * d + k] *= f;
    }
    for (uint32_t j = 0; j < n1; j++) {
        float f = (float)(0.25 + 2.0 * rng_unif());
        for (uint32_t k = 0; k < d; k++) y[(size_t)j * d + k] *= f;
    }
    img a = img_make("bigA", n0, d, FST_DTYPE_F32, x);
    img b = img_make("bigB", n1, d, FST_DTYPE_F32, y);
    check_all_paths(&a, &b, true);
    img_free(&a); img_free(&b);
    free(x); free(y);
}

FST_ISA_TEST(batch_reuses_packed_images)
{
    rng_seed(16);
    uint32_t d = 128;
    float *x = rand_unit(200, d), *y = rand_unit(150, d), *z = rand_unit(99, d);
    img a = img_make("q", 200, d, FST_DTYPE_F16, x);
    img b = img_make("r1", 150, d, FST_DTYPE_F16, y);
    img c = img_make("r2", 99, d, FST_DTYPE_F16, z);
    fst_match_opts o = fst_match_opts_default();
    /* q-r1, q-r2, q-r2 (same pointers), r2-r1 (a swaps role) */
    const img *pa[4] = { &a, &a, &a, &c }, *pb[4] = { &b, &c, &c, &b };
    for (int k = 0; k < N_ISA; k++) {
        if (!isa_selected(k)) continue;
        char p[48];
        snprintf(p, sizeof p, "isa=%s,threads=2", isa_names[k]);
        fst_backend *be;
        ASSERT_OK(fst_backend_open("cpu", &o, p, &be));
        result res[4], one[4];
        fst_match_job jobs[4];
        for (int j = 0; j < 4; j++) {
            res[j] = res_make(pa[j]->v.n);
            one[j] = res_make(pa[j]->v.n);
            jobs[j].a = &pa[j]->v;
            jobs[j].b = &pb[j]->v;
            jobs[j].out = &res[j].m;
            jobs[j].status = FST_EIO;
        }
        ASSERT_OK(fst_backend_match_batch(be, jobs, 4));
        char st[256];
        fst_backend_stats(be, st, sizeof st);
        printf("# %s: %s\n", isa_names[k], st);
        /* packs: q, r1, r2(B), r2 again hits both, r2 as A, r1 as B */
        ASSERT_CONTAINS(st, "pairs=4 packs=5 pack_hits=3");
        for (int j = 0; j < 4; j++) {
            ASSERT_EQ(jobs[j].status, FST_OK);
            ASSERT_OK(fst_backend_match(be, &pa[j]->v, &pb[j]->v, &one[j].m));
            ASSERT_MEMEQ(one[j].m0, res[j].m0, pa[j]->v.n * sizeof(int32_t));
            ASSERT_MEMEQ(one[j].s0, res[j].s0, pa[j]->v.n * sizeof(float));
            ASSERT_EQ(one[j].m.nmatches, res[j].m.nmatches);
            res_free(&res[j]);
            res_free(&one[j]);
        }
        fst_backend_close(be);
    }
    img_free(&a); img_free(&b); img_free(&c);
    free(x); free(y); free(z);
}

FST_TEST(buffers_are_reused_across_sizes)
{
    /* growing and shrinking pairs on one backend: results must not depend
     * on what an earlier, larger pair left in the buffers */
    rng_seed(17);
    fst_backend *be;
    fst_match_opts o = opts_make(true, 0.8, 0);
    ASSERT_OK(fst_backend_open("cpu", &o, "threads=2", &be));
    static const uint32_t sz[][2] = { {5, 7}, {600, 500}, {3, 2}, {300, 900}, {1, 1}, {64, 64} };
    for (int t = 0; t < 6; t++) {
        uint32_t n0 = sz[t][0], n1 = sz[t][1], d = 64;
        float *x = rand_unit(n0, d);
        float *y = rand_related(x, n0, n1, d, 0.5, 0.02, 0.1, NULL);
        img a = img_make("a", n0, d, FST_DTYPE_F32, x);
        img b = img_make("b", n1, d, FST_DTYPE_F32, y);
        tops tp = tops_make(&a, &b);
        result got = res_make(n0), ref = res_make(n0);
        ASSERT_OK(fst_match_reference(&a.v, &b.v, &o, &ref.m));
        ASSERT_OK(fst_backend_match(be, &a.v, &b.v, &got.m));
        expect_same("reuse", &a, &b, &o, &tp, &got, &ref);
        res_free(&got); res_free(&ref); tops_free(&tp);
        img_free(&a); img_free(&b);
        free(x); free(y);
    }
    fst_backend_close(be);
}

/* ---- the planted-correspondence criterion ----------------------- */

FST_ISA_TEST(nn_mutual_recovers_planted_correspondences)
{
    rng_seed(18);
    uint32_t n0 = 1500, n1 = 1500, d = 128;
    float *x = rand_unit(n0, d);
    /* B: 60% noisy copies (sigma 0.05 per component, renormalised) of
     * distinct rows of A, the rest random */
    float *y = rand_unit(n1, d);
    int32_t *truth = malloc(n1 * sizeof *truth);
    uint32_t *perm = malloc(n0 * sizeof *perm);
    for (uint32_t i = 0; i < n0; i++) perm[i] = i;
    for (uint32_t i = n0 - 1; i > 0; i--) {
        uint32_t r = (uint32_t)(rng_u64() % (i + 1));
        uint32_t tmp = perm[i]; perm[i] = perm[r]; perm[r] = tmp;
    }
    uint32_t planted = 0;
    for (uint32_t j = 0; j < n1; j++) {
        truth[j] = -1;
        if (j % 5 >= 3) continue;            /* 3 of 5 */
        uint32_t i = perm[planted++];
        for (uint32_t k = 0; k < d; k++)
            y[(size_t)j * d + k] = (float)(x[(size_t)i * d + k] + 0.05 * rng_gauss());
        normalize(y + (size_t)j * d, d);
        truth[j] = (int32_t)i;
    }
    fst_match_opts o;
    ASSERT_OK(fst_match_preset("NN-mutual", &o));
    for (int dt = 0; dt < 2; dt++)
    for (int k = 0; k < N_ISA; k++) {
        if (!isa_selected(k)) continue;
        img a = img_make("A", n0, d, dt ? FST_DTYPE_F16 : FST_DTYPE_F32, x);
        img b = img_make("B", n1, d, dt ? FST_DTYPE_F16 : FST_DTYPE_F32, y);
        char p[32];
        snprintf(p, sizeof p, "isa=%s", isa_names[k]);
        fst_backend *be;
        ASSERT_OK(fst_backend_open("cpu", &o, p, &be));
        result r = res_make(n0);
        ASSERT_OK(fst_backend_match(be, &a.v, &b.v, &r.m));
        uint32_t found = 0;
        for (uint32_t j = 0; j < n1; j++)
            if (truth[j] >= 0 && r.m0[truth[j]] == (int32_t)j) found++;
        printf("# %s %s: recovered %u of %u planted\n", p,
               dt ? "float16" : "float32", found, planted);
        ASSERT_GE(found * 100, planted * 95);
        res_free(&r);
        fst_backend_close(be);
        img_free(&a); img_free(&b);
    }
    free(x); free(y); free(truth); free(perm);
}

FST_TEST(cache_never_outlives_a_call)
{
    /* the same buffer, rewritten between calls, must be packed again: views
     * of separate calls may put other data at the same address */
    rng_seed(19);
    uint32_t n = 40, d = 64;
    float *x = rand_unit(n, d), *y = rand_unit(n, d), *z = rand_unit(n, d);
    img a = img_make("a", n, d, FST_DTYPE_F32, x);
    img b = img_make("b", n, d, FST_DTYPE_F32, y);
    fst_match_opts o = opts_make(false, 0, 0);
    fst_backend *be;
    ASSERT_OK(fst_backend_open("cpu", &o, NULL, &be));
    result r1 = res_make(n), r2 = res_make(n), ref = res_make(n);
    fst_match_job job = { &a.v, &b.v, &r1.m, FST_EIO };
    ASSERT_OK(fst_backend_match_batch(be, &job, 1));
    memcpy((void *)b.v.desc, z, (size_t)n * d * sizeof(float));  /* same pointer */
    memcpy(b.f, z, (size_t)n * d * sizeof(float));
    ASSERT_OK(fst_match_reference(&a.v, &b.v, &o, &ref.m));
    job.out = &r2.m;
    ASSERT_OK(fst_backend_match_batch(be, &job, 1));
    tops t = tops_make(&a, &b);
    expect_same("rewritten batch", &a, &b, &o, &t, &r2, &ref);
    ASSERT_OK(fst_backend_match(be, &a.v, &b.v, &r1.m));
    expect_same("rewritten single", &a, &b, &o, &t, &r1, &ref);
    tops_free(&t);
    res_free(&r1); res_free(&r2); res_free(&ref);
    fst_backend_close(be);
    img_free(&a); img_free(&b);
    free(x); free(y); free(z);
}
