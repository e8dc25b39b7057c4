/* test_cudahost.c : the CUDA backend's logic, on the CPU, no GPU needed.
 *
 * The reduction kernels (kernels/cuda/cuda_kernels.cu) are thin schedules
 * around the FST_HD functions of kernels/cuda/cuda_math.h. Here an emulator
 * runs those very functions lane by lane, warp by warp, block by block, in
 * the kernels' order (shared memory and __syncwarp / __syncthreads become
 * plain arrays and phase boundaries), over similarity matrices with ties
 * and poisoned padding, and compares every row / column result and every
 * decision with a plain computation written here from hloc's definition.
 * With the backend built (FST_HAVE_CUDA) it also checks the chunk planner,
 * the device-cache bookkeeping and the parameter parser, and runs whole
 * batches through planner + emulator against fst_match_reference().
 */
#include "fst_test.h"
#include "fst_config.h"
#include "fst_kernels.h"
#include "cuda/cuda_math.h"
#include "cuda/emulate.h"
#if FST_HAVE_CUDA
#  include "cuda/devcache.h"
#  include "cuda/plan.h"
#endif

#include <stdint.h>
#include <stdlib.h>

/* ---- helpers ------------------------------------------------------------ */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void)              /* xorshift64* */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

static float rnd_unit(void)            /* [-1, 1) */
{
    return (float)((double)(rnd() >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

static const float POISON = 9.0f;      /* would win every comparison */

/* A column-major similarity block with padding rows and columns: ld >= n0
 * rows stored, n1c >= n1 columns stored; padding is POISON so that any
 * read of it that reaches a decision shows. Values are multiples of 1/q,
 * so that small q gives many exact ties. */
static float *make_sim(uint32_t n0, uint32_t n1, uint32_t ld, uint32_t n1c,
                       int q)
{
    float *S = malloc((size_t)ld * n1c * sizeof *S);
    for (uint32_t j = 0; j < n1c; j++)
        for (uint32_t i = 0; i < ld; i++)
            S[i + (size_t)j * ld] =
                (i < n0 && j < n1)
                    ? (float)((int)(rnd() % (uint64_t)(2 * q + 1)) - q) / (float)q
                    : POISON;
    return S;
}

/* ---- the plain computation, from hloc's definition ---------------------- */

typedef struct plain_top2 { float s1, s2; int32_t j1; } plain_top2;

/* best (lowest index on ties) and the second largest value of v[0..n) */
static plain_top2 plain_best(const float *v, size_t stride, uint32_t n)
{
    plain_top2 t = { -INFINITY, -INFINITY, -1 };
    for (uint32_t j = 0; j < n; j++)
        if (t.j1 < 0 || v[j * stride] > t.s1) {
            t.s1 = v[j * stride];
            t.j1 = (int32_t)j;
        }
    for (uint32_t j = 0; j < n; j++)
        if ((int32_t)j != t.j1 && v[j * stride] > t.s2)
            t.s2 = v[j * stride];
    return t;
}

static int32_t plain_decide(plain_top2 t, double ratio, double dist,
                            bool two_each, float *score)
{
    float d1 = 2.0f * (1.0f - t.s1), d2 = 2.0f * (1.0f - t.s2);
    bool keep = t.j1 >= 0;
    if (ratio > 0 && two_each)
        keep = keep && d1 <= (float)(ratio * ratio) * d2;
    if (dist > 0)
        keep = keep && d1 <= (float)(dist * dist);
    *score = keep ? (t.s1 + 1.0f) / 2.0f : 0.0f;
    return keep ? t.j1 : -1;
}

/* hloc's nearest_neighbor on a column-major S (ld rows stored). */
static void plain_match(const float *S, uint32_t ld, uint32_t n0, uint32_t n1,
                        const fst_match_opts *o, int32_t *m0, float *sc,
                        uint32_t *nm)
{
    bool two = n0 >= 2 && n1 >= 2;
    int32_t *m1 = malloc((n1 + 1) * sizeof *m1);
    for (uint32_t j = 0; j < n1; j++) {
        float unused;
        m1[j] = plain_decide(plain_best(S + (size_t)j * ld, 1, n0),
                             o->ratio_threshold, o->distance_threshold, two,
                             &unused);
    }
    *nm = 0;
    for (uint32_t i = 0; i < n0; i++) {
        m0[i] = plain_decide(plain_best(S + i, ld, n1), o->ratio_threshold,
                             o->distance_threshold, two, &sc[i]);
        if (o->mutual && m0[i] >= 0 && m1[m0[i]] != (int32_t)i)
            m0[i] = -1;
        *nm += m0[i] >= 0;
    }
    free(m1);
}

/* ---- the emulator: the kernels' schedule, lane by lane ------------------ */
/* (kernels/cuda/emulate.h, shared with the CPU mock of the CUDA runtime) */

typedef fst_cu_emu emu;
#define emu_reduce fst_cu_emu_reduce
#define emu_cols   fst_cu_emu_cols
#define emu_rows   fst_cu_emu_rows

static fst_cu_rule rule_of(const fst_match_opts *o)
{
    fst_cu_rule r = { fst_thresh2(o->ratio_threshold),
                      fst_thresh2(o->distance_threshold), o->mutual };
    return r;
}

/* One pair through the kernels, its rows split into tiles of `tile_rows`
 * rows (0: one tile), every tile's S block a copy of the pair's rows with
 * its own ld, laid out one after another in a workspace. Outputs m0, sc,
 * nm, and optionally every row's and column's best / second best. */
static void emu_pair(const float *S, uint32_t ld, uint32_t n0, uint32_t n1,
                     uint32_t n1c, uint32_t tile_rows, const fst_match_opts *o,
                     int32_t *m0, float *sc, uint32_t *nm, fst_top2 *rows,
                     fst_top2 *cols)
{
    if (tile_rows == 0)
        tile_rows = ld;
    uint32_t ntiles = (n0 + tile_rows - 1) / tile_rows;
    fst_cu_tile *tiles = calloc(ntiles, sizeof *tiles);
    size_t wsz = 0;
    for (uint32_t t = 0; t < ntiles; t++) {
        uint32_t row0 = t * tile_rows;
        uint32_t tld = fst_cu_min(tile_rows, ld - row0);
        tiles[t] = (fst_cu_tile){ .s = wsz, .ld = tld, .pair = 0,
                                  .row0 = row0,
                                  .rows = fst_cu_min(tile_rows, n0 - row0) };
        wsz += (size_t)tld * n1c;
    }
    float *ws = malloc(wsz * sizeof *ws);
    for (uint32_t t = 0; t < ntiles; t++)
        for (uint32_t j = 0; j < n1c; j++)
            for (uint32_t r = 0; r < tiles[t].ld; r++)
                ws[tiles[t].s + r + (size_t)j * tiles[t].ld] =
                    S[tiles[t].row0 + r + (size_t)j * ld];
    fst_cu_pair pr = { .colpart = 0, .m1 = 0, .out = 0, .n0 = n0, .n1 = n1 };
    fst_top2 *colpart = malloc((size_t)fst_cu_strips(n0) * n1 * sizeof *colpart);
    int32_t *m1 = malloc((n1 + 1) * sizeof *m1);
    uint32_t *out = malloc((2 * (size_t)n0 + 1) * sizeof *out);
    uint32_t count = 0;
    emu E = { ws, tiles, &pr, colpart, m1, out, &count, rule_of(o), rows };
    for (uint32_t t = 0; t < ntiles; t++)
        for (uint32_t s = 0; s < fst_cu_strips(tiles[t].rows); s++)
            emu_reduce(&E, (fst_cu_item){ t, s });
    if (cols)
        for (uint32_t j = 0; j < n1; j++)
            cols[j] = fst_cu_col_final(colpart, &pr, j);
    if (o->mutual)
        for (uint32_t b = 0; b < fst_cu_blocks(n1); b++)
            emu_cols(&E, (fst_cu_item){ 0, b });
    for (uint32_t b = 0; b < fst_cu_blocks(n0); b++)
        emu_rows(&E, (fst_cu_item){ 0, b });
    memcpy(m0, out, n0 * sizeof *m0);
    memcpy(sc, out + n0, n0 * sizeof *sc);
    *nm = count;
    free(tiles);
    free(ws);
    free(colpart);
    free(m1);
    free(out);
}

static uint32_t class_of(uint32_t n)
{
    return (n + FST_CU_STRIP - 1) / FST_CU_STRIP * FST_CU_STRIP;
}

static const uint32_t sizes[] = { 1, 2, 3, 31, 32, 33, 127, 128, 129, 255,
                                  257, 300, 513 };
#define NSIZES (sizeof sizes / sizeof *sizes)

/* ---- reduction -------------------------------------------------------- */

FST_TEST(reduce_rows_and_cols_equal_plain_scan)
{
    for (size_t a = 0; a < NSIZES; a++)
        for (size_t b = 0; b < NSIZES; b += 2) {
            uint32_t n0 = sizes[a], n1 = sizes[(b + a) % NSIZES];
            uint32_t ld = class_of(n0), n1c = class_of(n1);
            int q = (a + b) % 3 == 0 ? 4 : 1000;        /* ties, or few */
            float *S = make_sim(n0, n1, ld, n1c, q);
            fst_match_opts o = fst_match_opts_default();
            int32_t *m0 = malloc(n0 * sizeof *m0);
            float *sc = malloc(n0 * sizeof *sc);
            fst_top2 *rows = malloc(n0 * sizeof *rows);
            fst_top2 *cols = malloc(n1 * sizeof *cols);
            uint32_t nm;
            emu_pair(S, ld, n0, n1, n1c, 0, &o, m0, sc, &nm, rows, cols);
            for (uint32_t i = 0; i < n0; i++) {
                plain_top2 p = plain_best(S + i, ld, n1);
                ASSERT_EQ(rows[i].j1, p.j1);
                ASSERT_TRUE(rows[i].s1 == p.s1);
                ASSERT_TRUE(rows[i].s2 == p.s2 || (n1 == 1 && rows[i].s2 == -INFINITY));
            }
            for (uint32_t j = 0; j < n1; j++) {
                plain_top2 p = plain_best(S + (size_t)j * ld, 1, n0);
                ASSERT_EQ(cols[j].j1, p.j1);
                ASSERT_TRUE(cols[j].s1 == p.s1);
                ASSERT_TRUE(cols[j].s2 == p.s2);
            }
            free(S); free(m0); free(sc); free(rows); free(cols);
        }
}

FST_TEST(reduce_ties_go_to_the_lowest_index)
{
    /* every value equal: row i's best is column 0, column j's best row 0 */
    uint32_t n0 = 300, n1 = 260, ld = class_of(n0), n1c = class_of(n1);
    float *S = make_sim(n0, n1, ld, n1c, 1);
    for (uint32_t j = 0; j < n1; j++)
        for (uint32_t i = 0; i < n0; i++)
            S[i + (size_t)j * ld] = 0.5f;
    fst_match_opts o = fst_match_opts_default();
    int32_t m0[300]; float sc[300]; fst_top2 rows[300], cols[260];
    uint32_t nm;
    emu_pair(S, ld, n0, n1, n1c, 0, &o, m0, sc, &nm, rows, cols);
    for (uint32_t i = 0; i < n0; i++) {
        ASSERT_EQ(rows[i].j1, 0);
        ASSERT_TRUE(rows[i].s2 == 0.5f);
    }
    for (uint32_t j = 0; j < n1; j++)
        ASSERT_EQ(cols[j].j1, 0);
    /* mutual: only row 0 <-> column 0 survives */
    ASSERT_EQ(nm, 1);
    ASSERT_EQ(m0[0], 0);
    ASSERT_EQ(m0[1], -1);
    ASSERT_NEAR(sc[1], 0.75, 0);      /* scores are not zeroed by mutual */
    free(S);
}

FST_TEST(reduce_ignores_poisoned_padding)
{
    /* stored rows and columns far beyond the real ones, all POISON */
    uint32_t n0 = 5, n1 = 3, ld = 256, n1c = 384;
    float *S = make_sim(n0, n1, ld, n1c, 1000);
    fst_match_opts o = fst_match_opts_default();
    int32_t m0[5]; float sc[5]; fst_top2 rows[5], cols[3];
    uint32_t nm;
    emu_pair(S, ld, n0, n1, n1c, 0, &o, m0, sc, &nm, rows, cols);
    for (uint32_t i = 0; i < n0; i++) {
        ASSERT_TRUE(rows[i].s1 <= 1.0f);
        ASSERT_TRUE(rows[i].j1 >= 0 && rows[i].j1 < 3);
    }
    for (uint32_t j = 0; j < n1; j++)
        ASSERT_TRUE(cols[j].s1 <= 1.0f && cols[j].j1 < 5);
    free(S);
}

/* ---- decisions -------------------------------------------------------- */

static void check_against_plain(uint32_t n0, uint32_t n1, int q,
                                const fst_match_opts *o, uint32_t tile_rows)
{
    uint32_t ld = class_of(n0), n1c = class_of(n1);
    float *S = make_sim(n0, n1, ld, n1c, q);
    int32_t *m0 = malloc(n0 * sizeof *m0), *w0 = malloc(n0 * sizeof *w0);
    float *sc = malloc(n0 * sizeof *sc), *wsc = malloc(n0 * sizeof *wsc);
    uint32_t nm, wnm;
    emu_pair(S, ld, n0, n1, n1c, tile_rows, o, m0, sc, &nm, NULL, NULL);
    plain_match(S, ld, n0, n1, o, w0, wsc, &wnm);
    for (uint32_t i = 0; i < n0; i++) {
        if (m0[i] != w0[i] || sc[i] != wsc[i])
            printf("# n0=%u n1=%u q=%d tile=%u row %u\n", n0, n1, q,
                   tile_rows, i);
        ASSERT_EQ(m0[i], w0[i]);
        ASSERT_TRUE(sc[i] == wsc[i]);
    }
    ASSERT_EQ(nm, wnm);
    free(S); free(m0); free(w0); free(sc); free(wsc);
}

FST_TEST(decisions_equal_hloc_for_every_preset)
{
    const double ratios[] = { 0, 0.8, 0.95 }, dists[] = { 0, 0.7, 1.2 };
    for (int mu = 0; mu < 2; mu++)
        for (int r = 0; r < 3; r++)
            for (int d = 0; d < 3; d++)
                for (size_t a = 0; a < NSIZES; a += 3) {
                    fst_match_opts o = { mu == 1, ratios[r], dists[d] };
                    uint32_t n0 = sizes[a], n1 = sizes[(a * 7 + 3) % NSIZES];
                    check_against_plain(n0, n1, 64, &o, 0);
                    check_against_plain(n1, n0, 5, &o, 0);
                }
}

FST_TEST(split_tiles_equal_one_tile)
{
    /* tiling for large N: the same pair cut into row tiles of 128 and 256
     * rows (column partials merged across tiles) gives the same answer */
    fst_match_opts o = { true, 0.9, 0 };
    const uint32_t n0s[] = { 129, 300, 513, 700 };
    for (int k = 0; k < 4; k++) {
        check_against_plain(n0s[k], 77, 100, &o, 128);
        check_against_plain(n0s[k], 260, 7, &o, 256);
    }
}

/* ---- descriptors, against fst_match_reference -------------------------- */

/* Random unit descriptors; b holds noisy copies of a's, shuffled. */
static void make_views(uint32_t n0, uint32_t n1, uint32_t d, fst_dtype t,
                       fst_view *a, fst_view *b, void **da, void **db)
{
    size_t es = fst_dtype_size(t);
    float *fa = malloc(((size_t)n0 * d + 1) * sizeof *fa);
    float *fb = malloc(((size_t)n1 * d + 1) * sizeof *fb);
    for (uint32_t i = 0; i < n0; i++) {
        double nn = 0;
        for (uint32_t k = 0; k < d; k++) {
            fa[(size_t)i * d + k] = rnd_unit();
            nn += fa[(size_t)i * d + k] * fa[(size_t)i * d + k];
        }
        for (uint32_t k = 0; k < d; k++)
            fa[(size_t)i * d + k] /= (float)sqrt(nn > 0 ? nn : 1);
    }
    for (uint32_t j = 0; j < n1; j++) {
        uint32_t src = (uint32_t)(rnd() % n0);
        bool planted = rnd() % 3 != 0;
        double nn = 0;
        for (uint32_t k = 0; k < d; k++) {
            float v = planted ? fa[(size_t)src * d + k] + 0.15f * rnd_unit()
                              : rnd_unit();
            fb[(size_t)j * d + k] = v;
            nn += (double)v * v;
        }
        for (uint32_t k = 0; k < d; k++)
            fb[(size_t)j * d + k] /= (float)sqrt(nn > 0 ? nn : 1);
    }
    *da = malloc((size_t)n0 * d * es + 1);
    *db = malloc((size_t)n1 * d * es + 1);
    for (size_t k = 0; k < (size_t)n0 * d; k++) {
        if (t == FST_DTYPE_F16) ((uint16_t *)*da)[k] = fst_f32_to_f16(fa[k]);
        else ((float *)*da)[k] = fa[k];
    }
    for (size_t k = 0; k < (size_t)n1 * d; k++) {
        if (t == FST_DTYPE_F16) ((uint16_t *)*db)[k] = fst_f32_to_f16(fb[k]);
        else ((float *)*db)[k] = fb[k];
    }
    free(fa);
    free(fb);
    memset(a, 0, sizeof *a);
    memset(b, 0, sizeof *b);
    a->name = "a"; a->n = n0; a->d = d; a->dtype = t; a->desc = *da;
    b->name = "b"; b->n = n1; b->d = d; b->dtype = t; b->desc = *db;
    a->uncertainty = b->uncertainty = NAN;
}

static double elem(const fst_view *v, size_t k)
{
    return v->dtype == FST_DTYPE_F16 ? fst_f16_to_f32(((const uint16_t *)v->desc)[k])
                                     : ((const float *)v->desc)[k];
}

/* What cuBLAS computes, but as the reference rounds it: each similarity a
 * double sum rounded once, into a column-major block (ld x n1c). */
static void host_gemm(const fst_view *a, const fst_view *b, uint32_t row0,
                      uint32_t ld, uint32_t n1c, float *C)
{
    for (uint32_t j = 0; j < n1c; j++)
        for (uint32_t r = 0; r < ld; r++) {
            uint32_t i = row0 + r;
            double acc = 0;
            if (i < a->n && j < b->n)
                for (uint32_t k = 0; k < a->d; k++)
                    acc += elem(a, (size_t)i * a->d + k) *
                           elem(b, (size_t)j * a->d + k);
            C[r + (size_t)j * ld] = (i < a->n && j < b->n) ? (float)acc : POISON;
        }
}

FST_TEST(emulated_kernels_equal_reference_on_descriptors)
{
    const fst_match_opts presets[] = { { true, 0, 0 }, { true, 0.8, 0 },
                                       { true, 0, 0.7 }, { false, 0.9, 0 } };
    const uint32_t dims[] = { 7, 64, 256 };
    for (int t = 0; t < 2; t++)
        for (int k = 0; k < 3; k++)
            for (int p = 0; p < 4; p++) {
                uint32_t n0 = sizes[(size_t)(p * 3 + k) % NSIZES];
                uint32_t n1 = sizes[(size_t)(p * 5 + k + t) % NSIZES];
                fst_view a, b;
                void *da, *db;
                make_views(n0, n1, dims[k], t ? FST_DTYPE_F16 : FST_DTYPE_F32,
                           &a, &b, &da, &db);
                uint32_t ld = class_of(n0), n1c = class_of(n1);
                float *S = malloc((size_t)ld * n1c * sizeof *S);
                host_gemm(&a, &b, 0, ld, n1c, S);
                int32_t *m0 = malloc(n0 * sizeof *m0), *r0 = malloc(n0 * sizeof *r0);
                float *sc = malloc(n0 * sizeof *sc), *rs = malloc(n0 * sizeof *rs);
                uint32_t nm;
                emu_pair(S, ld, n0, n1, n1c, (p & 1) ? 128 : 0, &presets[p],
                         m0, sc, &nm, NULL, NULL);
                fst_matches ref = { r0, rs, 0, 0 };
                ASSERT_OK(fst_match_reference(&a, &b, &presets[p], &ref));
                ASSERT_EQ(nm, ref.nmatches);
                for (uint32_t i = 0; i < n0; i++) {
                    ASSERT_EQ(m0[i], r0[i]);
                    ASSERT_TRUE(sc[i] == rs[i]);
                }
                free(S); free(m0); free(r0); free(sc); free(rs);
                free(da); free(db);
            }
}

#if FST_HAVE_CUDA
/* ---- parameters --------------------------------------------------------- */

FST_TEST(params_defaults_and_keys)
{
    fst_cu_params p;
    ASSERT_OK(fst__cu_params_parse(NULL, &p));
    ASSERT_EQ(p.device, 0);
    ASSERT_EQ(p.cache_mb, 0);
    ASSERT_EQ(p.headroom_mb, 2048);
    ASSERT_EQ(p.transfer, FST_CU_XFER_RING);
    ASSERT_EQ(p.tf32, 0);
    ASSERT_EQ(p.pad, 128);
    ASSERT_OK(fst__cu_params_parse("device=3,cache_mb=100,headroom_mb=0,"
                                   "transfer=register,tf32=1,pad=256,"
                                   "sim_mb=64,ring_mb=8,share=4,timeout_s=5,"
                                   "profile=1", &p));
    ASSERT_EQ(p.device, 3);
    ASSERT_EQ(p.cache_mb, 100);
    ASSERT_EQ(p.headroom_mb, 0);
    ASSERT_EQ(p.transfer, FST_CU_XFER_REGISTER);
    ASSERT_EQ(p.tf32, 1);
    ASSERT_EQ(p.pad, 256);
    ASSERT_EQ(p.sim_mb, 64);
    ASSERT_EQ(p.ring_mb, 8);
    ASSERT_EQ(p.share, 4);
    ASSERT_EQ(p.timeout_s, 5);
    ASSERT_EQ(p.profile, 1);
}

FST_TEST(params_errors_name_the_key)
{
    fst_cu_params p;
    ASSERT_STATUS(fst__cu_params_parse("devcie=1", &p), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "devcie");
    ASSERT_STATUS(fst__cu_params_parse("device=-1", &p), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "device=-1");
    ASSERT_STATUS(fst__cu_params_parse("cache_mb=12x", &p), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "cache_mb");
    ASSERT_STATUS(fst__cu_params_parse("cache_mb=0", &p), FST_EINVAL);
    ASSERT_STATUS(fst__cu_params_parse("transfer=dma", &p), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "ring or register");
    ASSERT_STATUS(fst__cu_params_parse("pad=200", &p), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "multiple of 128");
    ASSERT_STATUS(fst__cu_params_parse("tf32=yes", &p), FST_EINVAL);
    ASSERT_STATUS(fst__cu_params_parse("device", &p), FST_EINVAL);
}

/* ---- planner ------------------------------------------------------------ */

typedef struct planned {
    fst_cu_plan pl;
    fst_cu_pair pairs[64];
    fst_cu_tile tiles[64];
    fst_cu_item items[4096];
    fst_cu_gemm gemms[64];
    fst_cu_pass passes[64];
    uint32_t    jobs[64], imgs[128];
} planned;

static void planned_init(planned *P)
{
    memset(P, 0, sizeof *P);
    P->pl.pairs = P->pairs;
    P->pl.tiles = P->tiles;
    P->pl.items = P->items;
    P->pl.gemms = P->gemms;
    P->pl.passes = P->passes;
    P->pl.jobs = P->jobs;
    P->pl.imgs = P->imgs;
}

static fst_cu_caps small_caps(uint64_t ws)
{
    fst_cu_caps c = { .ws = ws, .colpart = 1u << 20, .m1 = 1u << 20,
                      .out = 1u << 20, .img_bytes = 1ull << 40, .pairs = 64,
                      .tiles = 64, .items = 4096 };
    return c;
}

/* Plan every job; check coverage, limits, layout. */
static void plan_all(fst_cu_pjob *jobs, uint32_t n, uint32_t nimg,
                     const fst_cu_caps *caps, bool mutual, uint32_t *nchunks)
{
    uint32_t *order = malloc(n * sizeof *order);
    uint64_t *ib = malloc(nimg * sizeof *ib);
    uint32_t *mark = calloc(nimg, sizeof *mark);
    uint32_t *seen = calloc(n, sizeof *seen);
    for (uint32_t i = 0; i < nimg; i++)
        ib[i] = 1000 + i;
    fst_cu_batch B = { .jobs = jobs, .njobs = n, .order = order,
                       .img_bytes = ib, .img_mark = mark, .nimages = nimg,
                       .pad = 128, .mutual = mutual };
    ASSERT_OK(fst__cu_plan_order(&B));
    static planned P;
    planned_init(&P);
    *nchunks = 0;
    while (fst__cu_plan_next(&B, caps, &P.pl)) {
        fst_cu_plan *pl = &P.pl;
        (*nchunks)++;
        ASSERT_GT(pl->npairs, 0);
        ASSERT_LE(pl->npairs, caps->pairs);
        ASSERT_LE(pl->ntiles, caps->tiles);
        ASSERT_LE(pl->nitems, caps->items);
        ASSERT_LE(pl->colpart_used, caps->colpart);
        ASSERT_LE(pl->m1_used, caps->m1);
        ASSERT_LE(pl->out_used, caps->out);
        ASSERT_EQ(pl->nmatch + pl->npairs, pl->out_used);
        if (pl->split)
            ASSERT_EQ(pl->npairs, 1);
        else
            ASSERT_LE(pl->img_bytes, caps->img_bytes);
        /* each pair: its job once; its output, m1, colpart disjoint */
        uint64_t out_next = 0, m1_next = 0, cp_next = 0;
        for (uint32_t p = 0; p < pl->npairs; p++) {
            const fst_cu_pjob *j = &jobs[pl->jobs[p]];
            ASSERT_EQ(seen[pl->jobs[p]], 0);
            seen[pl->jobs[p]] = 1;
            ASSERT_EQ(pl->pairs[p].n0, j->n0);
            ASSERT_EQ(pl->pairs[p].n1, j->n1);
            ASSERT_EQ(pl->pairs[p].out, out_next);
            ASSERT_EQ(pl->pairs[p].m1, m1_next);
            ASSERT_EQ(pl->pairs[p].colpart, cp_next);
            out_next += 2 * (uint64_t)j->n0;
            m1_next += mutual ? j->n1 : 0;
            cp_next += (uint64_t)fst_cu_strips(j->n0) * j->n1;
            /* both images listed */
            bool f0 = false, f1 = false;
            for (uint32_t k = 0; k < pl->nimgs; k++) {
                f0 |= pl->imgs[k] == j->img0;
                f1 |= pl->imgs[k] == j->img1;
            }
            ASSERT_TRUE(f0 && f1);
        }
        ASSERT_EQ(pl->nmatch, out_next);
        /* tiles: cover each pair's rows exactly, fit ws per pass */
        uint32_t *rows_cov = calloc(pl->npairs, sizeof *rows_cov);
        for (uint32_t t = 0; t < pl->ntiles; t++) {
            const fst_cu_tile *tl = &pl->tiles[t];
            const fst_cu_pair *pr = &pl->pairs[tl->pair];
            ASSERT_EQ(tl->row0 % FST_CU_STRIP, 0);
            ASSERT_EQ(tl->ld % FST_CU_STRIP, 0);
            ASSERT_EQ(tl->row0, rows_cov[tl->pair]);
            ASSERT_GE(tl->ld, tl->rows);
            ASSERT_LE(tl->row0 + tl->ld, (pr->n0 + 127) / 128 * 128);
            rows_cov[tl->pair] += tl->rows;
            ASSERT_LE((uint64_t)tl->s + (uint64_t)tl->ld *
                      ((pr->n1 + 127) / 128 * 128), caps->ws);
        }
        for (uint32_t p = 0; p < pl->npairs; p++)
            ASSERT_EQ(rows_cov[p], pl->pairs[p].n0);
        free(rows_cov);
        /* GEMMs: one shape per group, consecutive tiles, all tiles once */
        uint32_t next_tile = 0;
        for (uint32_t g = 0; g < pl->ngemms; g++) {
            const fst_cu_gemm *gm = &pl->gemms[g];
            ASSERT_EQ(gm->tile0, next_tile);
            for (uint32_t t = gm->tile0; t < gm->tile0 + gm->count; t++) {
                const fst_cu_tile *tl = &pl->tiles[t];
                const fst_cu_pjob *j = &jobs[pl->jobs[tl->pair]];
                ASSERT_EQ(gm->m, tl->ld);
                ASSERT_EQ(gm->n, (j->n1 + 127) / 128 * 128);
                ASSERT_EQ(gm->k, j->d);
                ASSERT_EQ(gm->dtype, j->dtype);
            }
            next_tile += gm->count;
        }
        ASSERT_EQ(next_tile, pl->ntiles);
        /* items: every (tile, strip) once, then cols, then rows */
        uint32_t it = 0;
        for (uint32_t ps = 0; ps < pl->npasses; ps++) {
            ASSERT_EQ(pl->passes[ps].item0, it);
            it += pl->passes[ps].nitems;
        }
        ASSERT_EQ(pl->cols_item0, it);
        uint32_t want = 0;
        for (uint32_t t = 0; t < pl->ntiles; t++)
            want += fst_cu_strips(pl->tiles[t].rows);
        ASSERT_EQ(it, want);
        ASSERT_EQ(pl->rows_item0, pl->cols_item0 + pl->ncols);
        ASSERT_EQ(pl->nitems, pl->rows_item0 + pl->nrows);
        if (!mutual)
            ASSERT_EQ(pl->ncols, 0);
    }
    for (uint32_t i = 0; i < n; i++)
        ASSERT_EQ(seen[i], 1);
    free(order); free(ib); free(mark); free(seen);
}

FST_TEST(plan_covers_every_job_once_within_caps)
{
    enum { N = 300 };
    static fst_cu_pjob jobs[N];
    for (uint32_t i = 0; i < N; i++)
        jobs[i] = (fst_cu_pjob){ sizes[rnd() % NSIZES], sizes[rnd() % NSIZES],
                                 rnd() % 2 ? 128 : 256,
                                 rnd() % 2 ? FST_DTYPE_F16 : FST_DTYPE_F32,
                                 (uint32_t)(rnd() % 40), (uint32_t)(rnd() % 40) };
    uint32_t nch;
    fst_cu_caps caps = small_caps(4u << 20);
    plan_all(jobs, N, 40, &caps, true, &nch);
    ASSERT_GT(nch, 1);
    plan_all(jobs, N, 40, &caps, false, &nch);
    caps.img_bytes = 5000;                 /* at most ~4 images a chunk */
    plan_all(jobs, N, 40, &caps, true, &nch);
    ASSERT_GT(nch, N / 4);
}

FST_TEST(plan_groups_equal_shapes_into_one_gemm)
{
    enum { N = 40 };
    static fst_cu_pjob jobs[N];
    for (uint32_t i = 0; i < N; i++)          /* two shapes, interleaved */
        jobs[i] = (fst_cu_pjob){ i % 2 ? 300 : 200, 250, 256, FST_DTYPE_F16,
                                 i, i + 1 };
    uint32_t *order = malloc(N * sizeof *order);
    uint64_t ib[N + 1];
    uint32_t mark[N + 1] = { 0 };
    for (int i = 0; i <= N; i++) ib[i] = 1;
    fst_cu_batch B = { .jobs = jobs, .njobs = N, .order = order,
                       .img_bytes = ib, .img_mark = mark, .nimages = N + 1,
                       .pad = 128, .mutual = true };
    ASSERT_OK(fst__cu_plan_order(&B));
    static planned P;
    planned_init(&P);
    fst_cu_caps caps = small_caps(1u << 30);
    ASSERT_TRUE(fst__cu_plan_next(&B, &caps, &P.pl));
    ASSERT_EQ(P.pl.npairs, N);
    ASSERT_EQ(P.pl.ngemms, 2);
    ASSERT_EQ(P.pl.gemms[0].count, N / 2);
    ASSERT_EQ(P.pl.gemms[0].m, 256);
    ASSERT_EQ(P.pl.gemms[1].m, 384);
    /* the caller's order within a class */
    for (uint32_t p = 1; p < N / 2; p++)
        ASSERT_LT(P.pl.jobs[p - 1], P.pl.jobs[p]);
    ASSERT_TRUE(!fst__cu_plan_next(&B, &caps, &P.pl));
    /* same shape, other dtype or d: another GEMM */
    fst_cu_pjob mixed[3] = { { 100, 100, 64, FST_DTYPE_F16, 0, 1 },
                             { 100, 100, 64, FST_DTYPE_F32, 0, 1 },
                             { 100, 100, 96, FST_DTYPE_F32, 0, 1 } };
    memset(mark, 0, sizeof mark);
    fst_cu_batch M = { .jobs = mixed, .njobs = 3, .order = order,
                       .img_bytes = ib, .img_mark = mark, .nimages = 2,
                       .pad = 128, .mutual = true };
    ASSERT_OK(fst__cu_plan_order(&M));
    ASSERT_TRUE(fst__cu_plan_next(&M, &caps, &P.pl));
    ASSERT_EQ(P.pl.npairs, 3);
    ASSERT_EQ(P.pl.ngemms, 3);
    free(order);
}

FST_TEST(plan_splits_a_pair_larger_than_the_workspace)
{
    fst_cu_pjob jobs[3] = { { 100, 100, 64, FST_DTYPE_F32, 0, 1 },
                            { 1000, 700, 64, FST_DTYPE_F32, 1, 2 },
                            { 90, 100, 64, FST_DTYPE_F32, 2, 0 } };
    /* 1024 x 768 floats do not fit 300 x 768: tiles of 256 rows */
    fst_cu_caps caps = small_caps(300 * 768);
    fst_cu_caps need;
    fst__cu_plan_need(&jobs[1], 128, caps.ws, true, &need);
    ASSERT_EQ(need.tiles, 4);
    ASSERT_EQ(need.ws, 256 * 768);
    uint32_t nch;
    plan_all(jobs, 3, 3, &caps, true, &nch);
    ASSERT_EQ(nch, 2);
    /* a workspace smaller than one strip of b's columns cannot run */
    fst__cu_plan_need(&jobs[1], 128, 100 * 768, true, &need);
    ASSERT_GT(need.ws, 100 * 768);
}

FST_TEST(planned_batches_through_the_emulator_equal_reference)
{
    /* planner + emulated kernels on host-computed similarity blocks: the
     * whole GPU path but cuBLAS, against the reference */
    enum { NIMG = 12, NJOB = 40 };
    fst_view v[NIMG];
    void *data[NIMG];
    uint32_t ns[NIMG];
    for (int i = 0; i < NIMG; i++) {
        fst_view tmp;
        void *tmpd;
        ns[i] = sizes[(size_t)(i * 5) % NSIZES] + (uint32_t)(rnd() % 40);
        make_views(ns[i], 1, 32, FST_DTYPE_F16, &v[i], &tmp, &data[i], &tmpd);
        free(tmpd);
        v[i].name = NULL;
    }
    fst_cu_pjob jobs[NJOB];
    for (int k = 0; k < NJOB; k++) {
        uint32_t i = (uint32_t)(rnd() % NIMG), j = (uint32_t)(rnd() % NIMG);
        jobs[k] = (fst_cu_pjob){ ns[i], ns[j], 32, FST_DTYPE_F16, i, j };
    }
    uint32_t order[NJOB], mark[NIMG] = { 0 };
    uint64_t ib[NIMG];
    for (int i = 0; i < NIMG; i++) ib[i] = 1;
    const fst_match_opts o = { true, 0.9, 0 };
    fst_cu_batch B = { .jobs = jobs, .njobs = NJOB, .order = order,
                       .img_bytes = ib, .img_mark = mark, .nimages = NIMG,
                       .pad = 128, .mutual = o.mutual };
    ASSERT_OK(fst__cu_plan_order(&B));
    static planned P;
    planned_init(&P);
    fst_cu_caps caps = small_caps(384 * 640);   /* few pairs a chunk; splits */
    uint32_t chunks = 0;
    while (fst__cu_plan_next(&B, &caps, &P.pl)) {
        fst_cu_plan *pl = &P.pl;
        chunks++;
        float *ws = malloc(caps.ws * sizeof *ws);
        fst_top2 *colpart = malloc(pl->colpart_used * sizeof *colpart + 1);
        int32_t *m1 = malloc(pl->m1_used * sizeof *m1 + 4);
        uint32_t *out = malloc(pl->out_used * sizeof *out);
        memset(out + pl->nmatch, 0, pl->npairs * sizeof *out);
        emu E = { ws, pl->tiles, pl->pairs, colpart, m1, out,
                  out + pl->nmatch, rule_of(&o), NULL };
        for (uint32_t ps = 0; ps < pl->npasses; ps++) {
            const fst_cu_pass *pass = &pl->passes[ps];
            for (uint32_t g = pass->gemm0; g < pass->gemm0 + pass->ngemm; g++)
                for (uint32_t t = pl->gemms[g].tile0;
                     t < pl->gemms[g].tile0 + pl->gemms[g].count; t++) {
                    const fst_cu_tile *tl = &pl->tiles[t];
                    const fst_cu_pjob *j = &jobs[pl->jobs[tl->pair]];
                    host_gemm(&v[j->img0], &v[j->img1], tl->row0, tl->ld,
                              pl->gemms[g].n, ws + tl->s);
                }
            for (uint32_t k = 0; k < pass->nitems; k++)
                emu_reduce(&E, pl->items[pass->item0 + k]);
        }
        for (uint32_t k = 0; k < pl->ncols; k++)
            emu_cols(&E, pl->items[pl->cols_item0 + k]);
        for (uint32_t k = 0; k < pl->nrows; k++)
            emu_rows(&E, pl->items[pl->rows_item0 + k]);
        for (uint32_t p = 0; p < pl->npairs; p++) {
            const fst_cu_pjob *j = &jobs[pl->jobs[p]];
            int32_t r0[700];
            float rs[700];
            fst_matches ref = { r0, rs, 0, 0 };
            ASSERT_OK(fst_match_reference(&v[j->img0], &v[j->img1], &o, &ref));
            ASSERT_EQ(out[pl->nmatch + p], ref.nmatches);
            for (uint32_t i = 0; i < j->n0; i++) {
                int32_t m;
                float s;
                memcpy(&m, out + pl->pairs[p].out + i, 4);
                memcpy(&s, out + pl->pairs[p].out + j->n0 + i, 4);
                ASSERT_EQ(m, r0[i]);
                ASSERT_TRUE(s == rs[i]);
            }
        }
        free(ws); free(colpart); free(m1); free(out);
    }
    ASSERT_GT(chunks, 3);
    for (int i = 0; i < NIMG; i++)
        free(data[i]);
}

/* ---- device cache bookkeeping ------------------------------------------ */

static fst_cu_key key_of(const char *name, uint32_t n)
{
    fst_cu_key k = { name, n, 256, FST_DTYPE_F16, 42 };
    return k;
}

FST_TEST(cache_hits_misses_and_lru_order)
{
    fst_cu_cache *c;
    ASSERT_OK(fst__cu_cache_create(4096, 256, &c));
    uint64_t off[5];
    bool hit;
    const char *names[] = { "a", "b", "c", "d", "e" };
    for (int i = 0; i < 4; i++) {
        fst_cu_key k = key_of(names[i], 10);
        ASSERT_OK(fst__cu_cache_get(c, &k, 1000, 1, 1, &off[i], &hit));
        ASSERT_TRUE(!hit);
    }
    fst_cu_key ka = key_of("a", 10);
    uint64_t o;
    ASSERT_OK(fst__cu_cache_get(c, &ka, 1000, 2, 2, &o, &hit));
    ASSERT_TRUE(hit);
    ASSERT_EQ(o, off[0]);
    /* full: "e" evicts the least recently used, which is now "b" */
    fst_cu_key ke = key_of("e", 10);
    ASSERT_OK(fst__cu_cache_get(c, &ke, 1000, 3, 3, &off[4], &hit));
    ASSERT_TRUE(!hit);
    ASSERT_EQ(off[4], off[1]);
    fst_cu_key kb = key_of("b", 10);
    ASSERT_OK(fst__cu_cache_get(c, &kb, 1000, 4, 4, &o, &hit));
    ASSERT_TRUE(!hit);                     /* b was evicted: c goes now */
    ASSERT_EQ(o, off[2]);
    ASSERT_OK(fst__cu_cache_get(c, &ka, 1000, 5, 5, &o, &hit));
    ASSERT_TRUE(hit);
    fst_cu_cache_stats st;
    fst__cu_cache_stats(c, &st);
    ASSERT_EQ(st.entries, 4);
    ASSERT_EQ(st.evictions, 2);
    ASSERT_EQ(st.used, 4096);
    fst__cu_cache_destroy(c);
}

FST_TEST(cache_never_evicts_busy_entries)
{
    fst_cu_cache *c;
    ASSERT_OK(fst__cu_cache_create(2048, 256, &c));
    uint64_t o;
    bool hit;
    fst_cu_key ka = key_of("a", 1), kb = key_of("b", 1), kc = key_of("c", 1);
    ASSERT_OK(fst__cu_cache_get(c, &ka, 1024, 7, 5, &o, &hit));   /* chunk 7 */
    ASSERT_OK(fst__cu_cache_get(c, &kb, 1024, 8, 5, &o, &hit));   /* chunk 8 */
    /* chunks up to 6 done: a and b are both in flight */
    ASSERT_STATUS(fst__cu_cache_get(c, &kc, 1024, 8, 6, &o, &hit), FST_EFULL);
    /* chunk 7 done: a may go */
    ASSERT_OK(fst__cu_cache_get(c, &kc, 1024, 8, 7, &o, &hit));
    ASSERT_TRUE(!hit);
    ASSERT_OK(fst__cu_cache_get(c, &kb, 1024, 9, 7, &o, &hit));
    ASSERT_TRUE(hit);
    ASSERT_STATUS(fst__cu_cache_get(c, &ka, 4096, 9, 9, &o, &hit), FST_EINVAL);
    fst__cu_cache_destroy(c);
}

FST_TEST(cache_keys_include_shape_and_fingerprint)
{
    fst_cu_cache *c;
    ASSERT_OK(fst__cu_cache_create(1 << 20, 256, &c));
    uint64_t o1, o2;
    bool hit;
    fst_cu_key k1 = key_of("img", 10), k2 = k1;
    ASSERT_OK(fst__cu_cache_get(c, &k1, 512, 1, 0, &o1, &hit));
    k2.fp = 43;                                    /* same name, other data */
    ASSERT_OK(fst__cu_cache_get(c, &k2, 512, 1, 0, &o2, &hit));
    ASSERT_TRUE(!hit);
    ASSERT_NE(o1, o2);
    k2 = k1;
    k2.dtype = FST_DTYPE_F32;
    ASSERT_OK(fst__cu_cache_get(c, &k2, 512, 1, 0, &o2, &hit));
    ASSERT_TRUE(!hit);
    k2 = k1;
    k2.name = NULL;                                /* transient */
    ASSERT_OK(fst__cu_cache_get(c, &k2, 512, 1, 0, &o2, &hit));
    ASSERT_TRUE(!hit);
    ASSERT_OK(fst__cu_cache_get(c, &k2, 512, 1, 0, &o2, &hit));
    ASSERT_TRUE(hit);
    fst__cu_cache_drop_transient(c);
    ASSERT_OK(fst__cu_cache_get(c, &k2, 512, 1, 0, &o2, &hit));
    ASSERT_TRUE(!hit);
    ASSERT_OK(fst__cu_cache_get(c, &k1, 512, 1, 0, &o2, &hit));
    ASSERT_TRUE(hit);
    ASSERT_EQ(o1, o2);
    /* fingerprints: head and tail bytes, and the salt */
    unsigned char buf[300] = { 0 };
    uint64_t f = fst__cu_fingerprint(buf, sizeof buf, 0);
    buf[299] = 1;
    ASSERT_NE(fst__cu_fingerprint(buf, sizeof buf, 0), f);
    ASSERT_NE(fst__cu_fingerprint(buf, sizeof buf, 1),
              fst__cu_fingerprint(buf, sizeof buf, 0));
    fst__cu_cache_destroy(c);
}

/* Random traffic (each chunk done before the next): an entry never moves
 * while it lives, offsets stay aligned and inside the arena, and freed
 * space coalesces: once all is idle, a request for the whole arena fits. */
FST_TEST(cache_random_traffic_keeps_the_arena_consistent)
{
    enum { NAMES = 200 };
    const uint64_t cap = 1 << 20;
    fst_cu_cache *c;
    ASSERT_OK(fst__cu_cache_create(cap, 256, &c));
    static char names[NAMES][16];
    static uint64_t off[NAMES];
    static bool seen[NAMES];
    for (int i = 0; i < NAMES; i++)
        snprintf(names[i], sizeof names[i], "img%d", i);
    uint64_t seq = 1, hits = 0;
    for (int step = 0; step < 20000; step++, seq++) {
        int i = (int)(rnd() % NAMES);
        uint64_t len = 256 * (1 + (uint64_t)(i * 37 % 64));
        fst_cu_key k = key_of(names[i], (uint32_t)i);
        uint64_t o;
        bool hit;
        ASSERT_OK(fst__cu_cache_get(c, &k, len, seq, seq - 1, &o, &hit));
        if (hit) {
            ASSERT_TRUE(seen[i]);
            ASSERT_EQ(o, off[i]);
            hits++;
        }
        off[i] = o;
        seen[i] = true;
        ASSERT_EQ(o % 256, 0);
        ASSERT_LE(o + len, cap);
    }
    ASSERT_GT(hits, 1000);
    fst_cu_cache_stats st;
    fst__cu_cache_stats(c, &st);
    ASSERT_LE(st.used, cap);
    ASSERT_GT(st.evictions, 0);
    fst_cu_key big = key_of("big", 1);
    uint64_t o;
    bool hit;
    ASSERT_OK(fst__cu_cache_get(c, &big, cap, seq, seq, &o, &hit));
    ASSERT_EQ(o, 0);
    fst__cu_cache_clear(c);
    fst__cu_cache_stats(c, &st);
    ASSERT_EQ(st.entries, 0);
    ASSERT_EQ(st.used, 0);
    fst__cu_cache_destroy(c);
}

FST_TEST(cache_entries_of_one_chunk_never_overlap)
{
    /* as the backend uses it: all images of a chunk placed with the same
     * seq are live together; check pairwise disjointness */
    enum { K = 40 };
    fst_cu_cache *c;
    ASSERT_OK(fst__cu_cache_create(64 * 1024, 256, &c));
    static char names[1000][16];
    uint64_t seq = 1;
    for (int round = 0; round < 200; round++, seq++) {
        uint64_t o[K], l[K];
        int got = 0;
        uint64_t used = 0;
        for (int k = 0; k < K; k++) {
            int id = (int)(rnd() % 1000);
            snprintf(names[id], sizeof names[id], "n%d", id);
            fst_cu_key key = key_of(names[id], (uint32_t)id);
            uint64_t len = 256 * (1 + (uint64_t)(id % 13));
            bool hit, dup = false;
            uint64_t off;
            if (used + len > 32 * 1024)
                break;                     /* a chunk takes <= half */
            fst_status s = fst__cu_cache_get(c, &key, len, seq, seq - 1, &off,
                                             &hit);
            if (s == FST_EFULL) {          /* fragmented: the backend clears */
                fst__cu_cache_clear(c);
                got = 0;
                used = 0;
                k = -1;
                continue;
            }
            ASSERT_OK(s);
            for (int q = 0; q < got; q++)
                dup |= o[q] == off;
            if (dup)
                continue;                  /* the same name twice */
            o[got] = off;
            l[got++] = len;
            used += len;
        }
        for (int a = 0; a < got; a++)
            for (int b = a + 1; b < got; b++)
                ASSERT_TRUE(o[a] + l[a] <= o[b] || o[b] + l[b] <= o[a]);
    }
    fst__cu_cache_destroy(c);
}
#endif /* FST_HAVE_CUDA */
