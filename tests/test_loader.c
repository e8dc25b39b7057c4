/* test_loader.c : the HDF5 loader (import, export, synth) on files the
 * tests write in hloc's exact layout, and on every kind of bad input. */
#include "fst_test.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fst_loader.h"
#include "fst_store.h"
#include "loader_impl.h"   /* HDF5 helpers, to write the test files */

/* ---- scratch directory ---- */

static char tmpdir[512];

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

static void cleanup_tmpdir(void)
{
    if (tmpdir[0] && !getenv("FST_TEST_KEEP"))
        nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fresh path in the scratch directory: "<tmpdir>/<name>". Rotating
 * static buffers: valid for the next 15 calls. */
static const char *tpath(const char *fmt, ...)
{
    static char bufs[16][768];
    static int k;
    if (!tmpdir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(tmpdir, sizeof tmpdir, "%s/fst-test-loader-XXXXXX", base ? base : "/tmp");
        if (!mkdtemp(tmpdir)) {
            perror("mkdtemp");
            abort();
        }
        atexit(cleanup_tmpdir);
    }
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    char *b = bufs[k++ % 16];
    snprintf(b, sizeof bufs[0], "%s/%s", tmpdir, name);
    return b;
}

static int exists(const char *p)
{
    struct stat sb;
    return lstat(p, &sb) == 0;
}

/* No `<dest>.tmp-*` left either. */
static int tmp_left(const char *dest)
{
    char pat[800];
    snprintf(pat, sizeof pat, "%s.tmp-%ld", dest, (long)getpid());
    return exists(pat);
}

/* ---- deterministic test data ---- */

static uint32_t mix(uint32_t seed, uint32_t a, uint32_t b)
{
    uint32_t h = seed * 0x9e3779b9u ^ a * 0x85ebca6bu ^ b * 0xc2b2ae35u;
    h ^= h >> 16; h *= 0x7feb352du; h ^= h >> 15; h *= 0x846ca68bu; h ^= h >> 16;
    return h;
}
/* Values chosen so that float16 rounding matters (not multiples of 2^-k). */
static float kp_val(uint32_t seed, uint32_t i, uint32_t c)
{
    return (float)(mix(seed, i, c) % 100000u) / 77.0f;          /* 0..1300 */
}
static float score_val(uint32_t seed, uint32_t i)
{
    return (float)(mix(seed, i, 7777u) % 9999u + 1u) / 10001.0f; /* (0, 1) */
}
static float scale_val(uint32_t seed, uint32_t i)
{
    return 1.0f + (float)(mix(seed, i, 4242u) % 8000u) / 333.0f;   /* DoG scale */
}
static float ori_val(uint32_t seed, uint32_t i)
{
    return ((float)(mix(seed, i, 5151u) % 62831u) - 31415.0f) / 10001.0f; /* radians */
}
static float desc_val(uint32_t seed, uint32_t row, uint32_t col)
{
    return ((float)(mix(seed, row + 1000000u, col) % 20001u) - 10000.0f) / 10007.0f;
}
static float f16r(float v) { return fst_f16_to_f32(fst_f32_to_f16(v)); }

enum { SC_NONE, SC_SCORES, SC_KEYPOINT };

/* One image as hloc writes it. */
typedef struct spec {
    const char *name;
    uint32_t    n, d;
    int         desc_f16, kp_f16;
    int         scores;          /* SC_* */
    int         scores_f16;
    int         has_size, has_unc;   /* has_unc: 1 float32 attr, 2 float64 */
    uint32_t    seed;
    int         so;              /* DoG scales/oris: SO_* bits */
} spec;

enum { SO_SCALES = 1, SO_ORIS = 2, SO_SCALES_F16 = 4, SO_ORIS_F16 = 8 };

static hid_t h5_create(const char *path)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST);   /* as hloc */
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    if (f < 0) {
        fprintf(stderr, "cannot create %s\n", path);
        abort();
    }
    return f;
}

/* Write a float array as float16 or float32. */
static void put_floats(hid_t g, const char *name, int f16, int rank, const hsize_t *dims,
                       const float *v, size_t n, hid_t *out_id)
{
    hid_t t16 = fst__h5_f16_create();
    fst_status s;
    if (f16) {
        uint16_t *h = malloc(n * 2 + 2);
        for (size_t i = 0; i < n; i++)
            h[i] = fst_f32_to_f16(v[i]);
        s = fst__h5_write(g, name, t16, t16, rank, dims, h, name, out_id);
        free(h);
    } else {
        s = fst__h5_write(g, name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, rank, dims, v, name,
                          out_id);
    }
    H5Tclose(t16);
    if (s) {
        fprintf(stderr, "put_floats: %s\n", fst_errdetail());
        abort();
    }
}

static void write_image(hid_t file, const spec *sp)
{
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t g = H5Gcreate2(file, sp->name, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    H5Pclose(lcpl);
    if (g < 0) {
        fprintf(stderr, "cannot create group %s\n", sp->name);
        abort();
    }
    uint32_t n = sp->n, d = sp->d;
    float *kp = malloc(((size_t)n * 2 + 1) * sizeof *kp);
    float *sc = malloc(((size_t)n + 1) * sizeof *sc);
    float *de = malloc(((size_t)n * d + 1) * sizeof *de);
    for (uint32_t i = 0; i < n; i++) {
        kp[2 * i] = kp_val(sp->seed, i, 0);
        kp[2 * i + 1] = kp_val(sp->seed, i, 1);
        sc[i] = score_val(sp->seed, i);
    }
    for (uint32_t r = 0; r < d; r++)          /* D x N: row r, column i */
        for (uint32_t i = 0; i < n; i++)
            de[(size_t)r * n + i] = desc_val(sp->seed, r, i);

    hid_t kpid;
    put_floats(g, "keypoints", sp->kp_f16, 2, (hsize_t[]){n, 2}, kp, (size_t)n * 2, &kpid);
    if (sp->has_unc == 1) {
        float u = 1.5f + (float)sp->seed;
        fst__h5_attr_write_scalar(kpid, "uncertainty", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, &u,
                                  "uncertainty");
    } else if (sp->has_unc == 2) {     /* as hloc under NumPy 1.x */
        double u = 1.5 + sp->seed;
        fst__h5_attr_write_scalar(kpid, "uncertainty", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &u,
                                  "uncertainty");
    }
    H5Dclose(kpid);
    put_floats(g, "descriptors", sp->desc_f16, 2, (hsize_t[]){d, n}, de, (size_t)n * d, NULL);
    if (sp->scores != SC_NONE)
        put_floats(g, sp->scores == SC_KEYPOINT ? "keypoint_scores" : "scores",
                   sp->scores_f16, 1, (hsize_t[]){n}, sc, n, NULL);
    for (int w = 0; w < 2; w++) {
        if (!(sp->so & (w ? SO_ORIS : SO_SCALES)))
            continue;
        for (uint32_t i = 0; i < n; i++)
            sc[i] = w ? ori_val(sp->seed, i) : scale_val(sp->seed, i);
        put_floats(g, w ? "oris" : "scales", (sp->so & (w ? SO_ORIS_F16 : SO_SCALES_F16)) != 0,
                   1, (hsize_t[]){n}, sc, n, NULL);
    }
    if (sp->has_size) {
        int64_t sz[2] = {1000 + sp->seed, 700 + sp->seed};
        fst__h5_write(g, "image_size", H5T_STD_I64LE, H5T_NATIVE_INT64, 1, (hsize_t[]){2},
                      sz, "image_size", NULL);
    }
    H5Gclose(g);
    free(kp);
    free(sc);
    free(de);
}

static void write_file(const char *path, const spec *sp, size_t n)
{
    hid_t f = h5_create(path);
    for (size_t i = 0; i < n; i++)
        write_image(f, &sp[i]);
    H5Fclose(f);
}

/* Replace dataset `path` of an existing file with one of `type`. */
static void replace_ds(const char *file, const char *path, hid_t type, hid_t memtype,
                       int rank, const hsize_t *dims, const void *buf)
{
    hid_t f = H5Fopen(file, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    H5Ldelete(f, path, H5P_DEFAULT);
    H5Eclear2(H5E_DEFAULT);
    if (fst__h5_write(f, path, type, memtype, rank, dims, buf, path, NULL)) {
        fprintf(stderr, "replace_ds: %s\n", fst_errdetail());
        abort();
    }
    H5Fclose(f);
}

static void delete_link(const char *file, const char *path)
{
    hid_t f = H5Fopen(file, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Ldelete(f, path, H5P_DEFAULT);
    H5Fclose(f);
}

/* Check a view against the spec it came from; `dt` is the store's dtype. */
static void check_view(const fst_view *v, const spec *sp, fst_dtype dt)
{
    ASSERT_STREQ(v->name, sp->name);
    ASSERT_EQ(v->n, sp->n);
    ASSERT_EQ(v->d, sp->d);
    ASSERT_EQ(v->dtype, dt);
    uint32_t want = 0;
    if (sp->scores != SC_NONE) want |= FST_VIEW_HAS_SCORES;
    if (sp->scores == SC_KEYPOINT) want |= FST_VIEW_SCORES_KEYPOINT;
    if (sp->scores != SC_NONE && sp->scores_f16) want |= FST_VIEW_SCORES_F16;
    if (sp->kp_f16) want |= FST_VIEW_KEYPOINTS_F16;
    if (sp->has_size) want |= FST_VIEW_HAS_IMAGE_SIZE;
    if (sp->has_unc) want |= FST_VIEW_HAS_UNCERTAINTY;
    if (sp->has_unc == 2) want |= FST_VIEW_UNCERTAINTY_F64;
    fst_dtype src = sp->desc_f16 ? FST_DTYPE_F16 : FST_DTYPE_F32;
    if (src != dt) want |= FST_VIEW_DESC_CONVERTED;
    if (sp->so & SO_SCALES) want |= FST_VIEW_HAS_SCALES;
    if (sp->so & SO_ORIS) want |= FST_VIEW_HAS_ORIS;
    if ((sp->so & SO_SCALES) && (sp->so & SO_SCALES_F16)) want |= FST_VIEW_SCALES_F16;
    if ((sp->so & SO_ORIS) && (sp->so & SO_ORIS_F16)) want |= FST_VIEW_ORIS_F16;
    ASSERT_EQ(v->flags, want);
    for (int w = 0; w < 2; w++) {
        const float *got = w ? v->oris : v->scales;
        if (!(sp->so & (w ? SO_ORIS : SO_SCALES))) {
            ASSERT_TRUE(got == NULL);
            continue;
        }
        ASSERT_TRUE(got != NULL);
        for (uint32_t i = 0; i < sp->n; i++) {
            float e = w ? ori_val(sp->seed, i) : scale_val(sp->seed, i);
            if (sp->so & (w ? SO_ORIS_F16 : SO_SCALES_F16)) e = f16r(e);
            ASSERT_MEMEQ(&got[i], &e, sizeof e);
        }
    }
    if (sp->has_size) {
        ASSERT_EQ(v->image_size[0], 1000 + sp->seed);
        ASSERT_EQ(v->image_size[1], 700 + sp->seed);
    }
    if (sp->has_unc)
        ASSERT_TRUE(v->uncertainty == 1.5f + (float)sp->seed);
    else
        ASSERT_TRUE(isnan(v->uncertainty));
    for (uint32_t i = 0; i < sp->n; i++)
        for (int c = 0; c < 2; c++) {
            float e = kp_val(sp->seed, i, (uint32_t)c);
            if (sp->kp_f16) e = f16r(e);
            ASSERT_MEMEQ(&v->keypoints[2 * i + c], &e, sizeof e);
        }
    if (sp->scores == SC_NONE) {
        ASSERT_TRUE(v->scores == NULL);
    } else {
        ASSERT_TRUE(v->scores != NULL || sp->n == 0);
        for (uint32_t i = 0; i < sp->n; i++) {
            float e = score_val(sp->seed, i);
            if (sp->scores_f16) e = f16r(e);
            ASSERT_MEMEQ(&v->scores[i], &e, sizeof e);
        }
    }
    for (uint32_t i = 0; i < sp->n; i++)          /* N x D in the store */
        for (uint32_t r = 0; r < sp->d; r++) {
            float e = desc_val(sp->seed, r, i);
            size_t at = (size_t)i * sp->d + r;
            if (src == FST_DTYPE_F16) e = f16r(e);
            if (dt == FST_DTYPE_F16) {
                uint16_t eb = fst_f32_to_f16(e);
                ASSERT_EQ(((const uint16_t *)v->desc)[at], eb);
            } else {
                ASSERT_MEMEQ(&((const float *)v->desc)[at], &e, sizeof e);
            }
        }
}

static void check_store(const char *store, const spec *sp, size_t n, fst_dtype dt)
{
    fst_store *st = NULL;
    fst_reader *rd = NULL;
    ASSERT_OK(fst_store_open(store, FST_OPEN_CHECKSUMS, &st));
    fst_store_meta m;
    ASSERT_OK(fst_store_meta_get(st, &m));
    ASSERT_EQ(m.n_images, n);
    uint64_t kps = 0;
    for (size_t i = 0; i < n; i++)
        kps += sp[i].n;
    ASSERT_EQ(m.n_keypoints, kps);
    ASSERT_EQ(m.dtype, dt);
    ASSERT_OK(fst_reader_begin(st, &rd));
    for (size_t i = 0; i < n; i++) {
        fst_view v;
        ASSERT_OK(fst_reader_get(rd, sp[i].name, &v));
        check_view(&v, &sp[i], dt);
    }
    size_t count = 0;
    fst_view v;
    fst_status s;
    while ((s = fst_reader_next(rd, &v)) == FST_OK)
        count++;
    ASSERT_STATUS(s, FST_DONE);
    ASSERT_EQ(count, n);
    fst_reader_end(rd);
    fst_store_close(st);
}

/* Import that must fail with `want`, naming everything in `needles`, and
 * leave nothing at dest. */
static void expect_import_fails(const char *src, const char *dest,
                                const fst_import_opts *opts, fst_status want,
                                const char *n1, const char *n2, const char *n3)
{
    fst_status s = fst_import_h5(src, dest, opts, NULL);
    ASSERT_STATUS(s, want);
    const char *d = fst_errdetail();
    ASSERT_CONTAINS(d, src);
    if (n1) ASSERT_CONTAINS(d, n1);
    if (n2) ASSERT_CONTAINS(d, n2);
    if (n3) ASSERT_CONTAINS(d, n3);
    if (!opts || !opts->append)
        ASSERT_TRUE(!exists(dest));
    ASSERT_TRUE(!tmp_left(dest));
}

/* ---- the hloc layout, read back value by value ---- */

static const spec hloc_f16[] = {
    /* nested names, f32 keypoints, scores, image_size, uncertainty */
    {"db/seq1/0001.jpg", 50, 32, 1, 0, SC_SCORES, 0, 1, 1, 1, 0},
    /* no keypoints at all: descriptors (32, 0) */
    {"db/seq1/0002.jpg", 0, 32, 1, 0, SC_SCORES, 0, 1, 1, 2, 0},
    /* as_half: float16 keypoints and keypoint_scores, no image_size */
    {"db/seq2/a b.png", 17, 32, 1, 1, SC_KEYPOINT, 1, 0, 0, 3, 0},
    /* no scores */
    {"q.jpg", 40, 32, 1, 1, SC_NONE, 0, 1, 0, 4, 0},
    /* a deeper nest, f16 scores, a float64 uncertainty */
    {"x/y/z/w/deep.jpg", 3, 32, 1, 0, SC_SCORES, 1, 1, 2, 5, 0},
};
#define NSPEC(a) (sizeof(a) / sizeof((a)[0]))

FST_TEST(import_hloc_layout_f16)
{
    const char *src = tpath("hloc16.h5"), *dest = tpath("hloc16.fst");
    write_file(src, hloc_f16, NSPEC(hloc_f16));
    fst_import_stats st;
    ASSERT_OK(fst_import_h5(src, dest, NULL, &st));
    ASSERT_EQ(st.images_added, NSPEC(hloc_f16));
    ASSERT_EQ(st.images_skipped, 0);
    ASSERT_EQ(st.keypoints, 50 + 0 + 17 + 40 + 3);
    ASSERT_EQ(st.datasets_ignored, 0);
    ASSERT_TRUE(!tmp_left(dest));
    check_store(dest, hloc_f16, NSPEC(hloc_f16), FST_DTYPE_F16);

    fst_store *s = NULL;
    fst_store_meta m;
    ASSERT_OK(fst_store_open(dest, 0, &s));
    ASSERT_OK(fst_store_meta_get(s, &m));
    ASSERT_EQ(m.d, 32);
    ASSERT_STREQ(m.source_name, src);
    struct stat sb;
    ASSERT_EQ(stat(src, &sb), 0);
    ASSERT_EQ(m.source_size, sb.st_size);
    ASSERT_EQ(m.source_mtime, sb.st_mtime);
    fst_store_close(s);
}

static const spec hloc_f32[] = {
    {"img/a.jpg", 64, 24, 0, 0, SC_SCORES, 0, 1, 1, 11, 0},
    {"img/b.jpg", 1, 24, 0, 0, SC_KEYPOINT, 0, 1, 0, 12, 0},
    {"img/c.jpg", 0, 24, 0, 1, SC_NONE, 0, 0, 0, 13, 0},
};

FST_TEST(import_hloc_layout_f32)
{
    const char *src = tpath("hloc32.h5"), *dest = tpath("hloc32.fst");
    write_file(src, hloc_f32, NSPEC(hloc_f32));
    ASSERT_OK(fst_import_h5(src, dest, NULL, NULL));
    check_store(dest, hloc_f32, NSPEC(hloc_f32), FST_DTYPE_F32);
}

FST_TEST(import_dtype_converts)
{
    const char *s16 = tpath("conv16.h5"), *s32 = tpath("conv32.h5");
    write_file(s16, hloc_f16, NSPEC(hloc_f16));
    write_file(s32, hloc_f32, NSPEC(hloc_f32));
    fst_import_opts o = {.dtype = FST_DTYPE_F32};
    ASSERT_OK(fst_import_h5(s16, tpath("conv16.fst"), &o, NULL));
    check_store(tpath("conv16.fst"), hloc_f16, NSPEC(hloc_f16), FST_DTYPE_F32);
    o.dtype = FST_DTYPE_F16;
    ASSERT_OK(fst_import_h5(s32, tpath("conv32.fst"), &o, NULL));
    check_store(tpath("conv32.fst"), hloc_f32, NSPEC(hloc_f32), FST_DTYPE_F16);
    /* Asking for the dtype the file has changes nothing. */
    ASSERT_OK(fst_import_h5(s32, tpath("same32.fst"), &(fst_import_opts){.dtype = FST_DTYPE_F32},
                            NULL));
    check_store(tpath("same32.fst"), hloc_f32, NSPEC(hloc_f32), FST_DTYPE_F32);
}

FST_TEST(import_mixed_dtypes_need_dtype)
{
    const char *src = tpath("mixed.h5");
    spec sp[2] = {hloc_f16[0], hloc_f32[0]};
    sp[1].d = sp[0].d;
    write_file(src, sp, 2);
    expect_import_fails(src, tpath("mixed.fst"), NULL, FST_EFORMAT, "/img/a.jpg/descriptors",
                        "float32", "--dtype");
    fst_import_opts o = {.dtype = FST_DTYPE_F16};
    ASSERT_OK(fst_import_h5(src, tpath("mixed.fst"), &o, NULL));
    check_store(tpath("mixed.fst"), sp, 2, FST_DTYPE_F16);
}

FST_TEST(import_ignores_links_and_counts_extra_datasets)
{
    const char *src = tpath("links.h5"), *dest = tpath("links.fst");
    write_file(src, hloc_f16, 2);
    hid_t f = H5Fopen(src, H5F_ACC_RDWR, H5P_DEFAULT);
    /* A soft link and a second hard link to an image group: neither
     * doubles an image. */
    ASSERT_TRUE(H5Lcreate_soft("/db/seq1", f, "soft", H5P_DEFAULT, H5P_DEFAULT) >= 0);
    ASSERT_TRUE(H5Lcreate_hard(f, "db/seq1/0001.jpg", f, "zz_hard.jpg", H5P_DEFAULT,
                               H5P_DEFAULT) >= 0);
    /* A cycle: a group that holds a hard link to its parent. */
    ASSERT_TRUE(H5Lcreate_hard(f, "db", f, "db/seq1/up", H5P_DEFAULT, H5P_DEFAULT) >= 0);
    /* Datasets a store does not know: not kept, counted. (DoG's `scales`
     * and `oris` were such until format 1.2.) */
    float sc[50] = {0};
    ASSERT_OK(fst__h5_write(f, "db/seq1/0001.jpg/depths", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1,
                            (hsize_t[]){50}, sc, "depths", NULL));
    H5Fclose(f);
    fst_import_stats st;
    ASSERT_OK(fst_import_h5(src, dest, NULL, &st));
    /* The image met twice by hard links is kept once, under the first name
     * in the walk. */
    ASSERT_EQ(st.images_added, 2);
    ASSERT_EQ(st.datasets_ignored, 1);
    ASSERT_CONTAINS(st.ignored_example, "/depths");
}

/* ---- bad input ---- */

FST_TEST(bad_d_differs_between_images)
{
    const char *src = tpath("bad_d.h5");
    spec sp[2] = {hloc_f16[0], hloc_f16[3]};
    sp[1].d = 16;
    write_file(src, sp, 2);
    expect_import_fails(src, tpath("bad_d.fst"), NULL, FST_EFORMAT, "/q.jpg/descriptors",
                        "expected 32 rows, found 16", "db/seq1/0001.jpg");
}

FST_TEST(bad_n_differs_keypoints_descriptors)
{
    const char *src = tpath("bad_n.h5");
    write_file(src, hloc_f16, 1);
    float de[32 * 49] = {0};
    replace_ds(src, "db/seq1/0001.jpg/descriptors", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2,
               (hsize_t[]){32, 49}, de);
    expect_import_fails(src, tpath("bad_n.fst"), NULL, FST_EFORMAT,
                        "/db/seq1/0001.jpg/descriptors", "49 columns", "50 rows");
}

FST_TEST(bad_ranks_and_shapes)
{
    float buf[400] = {0};
    const char *src = tpath("bad_rank1.h5");
    write_file(src, hloc_f16, 1);
    replace_ds(src, "db/seq1/0001.jpg/keypoints", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1,
               (hsize_t[]){100}, buf);
    expect_import_fails(src, tpath("bad_rank1.fst"), NULL, FST_EFORMAT,
                        "/db/seq1/0001.jpg/keypoints", "expected 2 dimensions, found 1", NULL);

    src = tpath("bad_cols.h5");
    write_file(src, hloc_f16, 1);
    replace_ds(src, "db/seq1/0001.jpg/keypoints", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2,
               (hsize_t[]){50, 3}, buf);
    expect_import_fails(src, tpath("bad_cols.fst"), NULL, FST_EFORMAT,
                        "/db/seq1/0001.jpg/keypoints", "expected 2 columns, found 3", NULL);

    src = tpath("bad_rank3.h5");
    write_file(src, hloc_f16, 1);
    replace_ds(src, "db/seq1/0001.jpg/descriptors", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 3,
               (hsize_t[]){2, 4, 50}, buf);
    expect_import_fails(src, tpath("bad_rank3.fst"), NULL, FST_EFORMAT,
                        "/db/seq1/0001.jpg/descriptors", "expected 2 dimensions, found 3", NULL);

    src = tpath("bad_scores.h5");
    write_file(src, hloc_f16, 1);
    replace_ds(src, "db/seq1/0001.jpg/scores", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1,
               (hsize_t[]){49}, buf);
    expect_import_fails(src, tpath("bad_scores.fst"), NULL, FST_EFORMAT,
                        "/db/seq1/0001.jpg/scores", "expected length 50, found 49", NULL);

    src = tpath("bad_size.h5");
    write_file(src, hloc_f16, 1);
    replace_ds(src, "db/seq1/0001.jpg/image_size", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1,
               (hsize_t[]){2}, buf);
    expect_import_fails(src, tpath("bad_size.fst"), NULL, FST_EFORMAT,
                        "/db/seq1/0001.jpg/image_size", "unsupported dtype float32", NULL);

    /* A group where a dataset should be. */
    src = tpath("bad_group.h5");
    write_file(src, hloc_f16, 1);
    hid_t f = H5Fopen(src, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Ldelete(f, "db/seq1/0001.jpg/keypoints", H5P_DEFAULT);
    H5Gclose(H5Gcreate2(f, "db/seq1/0001.jpg/keypoints", H5P_DEFAULT, H5P_DEFAULT,
                        H5P_DEFAULT));
    H5Fclose(f);
    expect_import_fails(src, tpath("bad_group.fst"), NULL, FST_EFORMAT,
                        "/db/seq1/0001.jpg/keypoints", "cannot open as a dataset", NULL);
}

FST_TEST(bad_dtypes)
{
    const char *src = tpath("bad_int.h5");
    write_file(src, hloc_f16, 1);
    int32_t ibuf[32 * 50] = {0};
    replace_ds(src, "db/seq1/0001.jpg/descriptors", H5T_STD_I32LE, H5T_NATIVE_INT32, 2,
               (hsize_t[]){32, 50}, ibuf);
    expect_import_fails(src, tpath("bad_int.fst"), NULL, FST_EFORMAT,
                        "/db/seq1/0001.jpg/descriptors", "unsupported dtype int32", NULL);

    /* float64: hloc never writes it; refused rather than silently narrowed. */
    src = tpath("bad_f64.h5");
    write_file(src, hloc_f16, 1);
    static double dbuf[32 * 50];
    replace_ds(src, "db/seq1/0001.jpg/descriptors", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 2,
               (hsize_t[]){32, 50}, dbuf);
    expect_import_fails(src, tpath("bad_f64.fst"), NULL, FST_EFORMAT,
                        "/db/seq1/0001.jpg/descriptors", "unsupported dtype float64",
                        "expected float16 or float32");

    src = tpath("bad_kp64.h5");
    write_file(src, hloc_f16, 1);
    replace_ds(src, "db/seq1/0001.jpg/keypoints", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 2,
               (hsize_t[]){50, 2}, dbuf);
    expect_import_fails(src, tpath("bad_kp64.fst"), NULL, FST_EFORMAT,
                        "/db/seq1/0001.jpg/keypoints", "float64", NULL);

    /* A string attribute where uncertainty should be a number. */
    src = tpath("bad_unc.h5");
    write_file(src, hloc_f16, 1);
    hid_t f = H5Fopen(src, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t kp = H5Dopen2(f, "db/seq1/0001.jpg/keypoints", H5P_DEFAULT);
    H5Adelete(kp, "uncertainty");
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, 4);
    ASSERT_OK(fst__h5_attr_write_scalar(kp, "uncertainty", st, st, "abc", "u"));
    H5Tclose(st);
    H5Dclose(kp);
    H5Fclose(f);
    expect_import_fails(src, tpath("bad_unc.fst"), NULL, FST_EFORMAT,
                        "/db/seq1/0001.jpg/keypoints", "uncertainty", "string");
}

FST_TEST(bad_nan_inf)
{
    static float de[32 * 50];
    const char *src = tpath("bad_nan.h5");
    write_file(src, hloc_f16, 1);
    for (int i = 0; i < 32 * 50; i++)
        de[i] = 0.5f;
    de[3 * 50 + 7] = NAN;         /* row 3, keypoint 7 */
    replace_ds(src, "db/seq1/0001.jpg/descriptors", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2,
               (hsize_t[]){32, 50}, de);
    expect_import_fails(src, tpath("bad_nan.fst"), NULL, FST_EFORMAT,
                        "/db/seq1/0001.jpg/descriptors", "NaN at row 3, column 7", NULL);

    /* float16 Inf */
    src = tpath("bad_inf16.h5");
    write_file(src, hloc_f16, 1);
    static uint16_t h[32 * 50];
    h[5 * 50 + 9] = 0x7c00;
    hid_t t16 = fst__h5_f16_create();
    replace_ds(src, "db/seq1/0001.jpg/descriptors", t16, t16, 2, (hsize_t[]){32, 50}, h);
    H5Tclose(t16);
    expect_import_fails(src, tpath("bad_inf16.fst"), NULL, FST_EFORMAT,
                        "/db/seq1/0001.jpg/descriptors", "Inf at row 5, column 9", NULL);

    src = tpath("bad_kpinf.h5");
    write_file(src, hloc_f16, 1);
    static float kp[100];
    kp[2 * 11 + 1] = -INFINITY;
    replace_ds(src, "db/seq1/0001.jpg/keypoints", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2,
               (hsize_t[]){50, 2}, kp);
    expect_import_fails(src, tpath("bad_kpinf.fst"), NULL, FST_EFORMAT,
                        "/db/seq1/0001.jpg/keypoints", "Inf at row 11", NULL);
}

FST_TEST(bad_half_images)
{
    const char *src = tpath("bad_nodesc.h5");
    write_file(src, hloc_f16, 2);
    delete_link(src, "db/seq1/0002.jpg/descriptors");
    expect_import_fails(src, tpath("bad_nodesc.fst"), NULL, FST_EFORMAT, "/db/seq1/0002.jpg",
                        "keypoints but no descriptors", NULL);

    src = tpath("bad_nokp.h5");
    write_file(src, hloc_f16, 2);
    delete_link(src, "db/seq1/0002.jpg/keypoints");
    expect_import_fails(src, tpath("bad_nokp.fst"), NULL, FST_EFORMAT, "/db/seq1/0002.jpg",
                        "descriptors but no keypoints", NULL);

    src = tpath("bad_both.h5");
    spec sp = hloc_f16[0];
    write_file(src, &sp, 1);
    float sc[50] = {0};
    replace_ds(src, "db/seq1/0001.jpg/keypoint_scores", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1,
               (hsize_t[]){50}, sc);
    expect_import_fails(src, tpath("bad_both.fst"), NULL, FST_EFORMAT, "/db/seq1/0001.jpg",
                        "both scores and keypoint_scores", NULL);

    src = tpath("empty.h5");
    H5Fclose(h5_create(src));
    expect_import_fails(src, tpath("empty.fst"), NULL, FST_EFORMAT,
                        "no group holds both keypoints and descriptors", NULL, NULL);
}

static void write_bytes(const char *path, const void *buf, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(buf, 1, n, f) != n)) abort();
    fclose(f);
}

FST_TEST(bad_not_hdf5)
{
    const char *src = tpath("text.h5");
    const char *txt = "db/img1.jpg db/img2.jpg\n";
    write_bytes(src, txt, strlen(txt));
    expect_import_fails(src, tpath("text.fst"), NULL, FST_EFORMAT, "not an HDF5 file", NULL,
                        NULL);

    src = tpath("zero.h5");
    write_bytes(src, "", 0);
    expect_import_fails(src, tpath("zero.fst"), NULL, FST_EFORMAT, "not an HDF5 file", NULL,
                        NULL);

    src = tpath("random.h5");
    static unsigned char rnd[200000];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof rnd; i++)
        rnd[i] = (unsigned char)((x = x * 1103515245u + 12345u) >> 16);
    write_bytes(src, rnd, sizeof rnd);
    expect_import_fails(src, tpath("random.fst"), NULL, FST_EFORMAT, "not an HDF5 file", NULL,
                        NULL);

    /* The HDF5 signature followed by garbage: HDF5 itself must fail. */
    src = tpath("sig.h5");
    memcpy(rnd, "\211HDF\r\n\032\n", 8);
    write_bytes(src, rnd, sizeof rnd);
    ASSERT_TRUE(fst_import_h5(src, tpath("sig.fst"), NULL, NULL) != FST_OK);
    ASSERT_CONTAINS(fst_errdetail(), src);
    ASSERT_TRUE(!exists(tpath("sig.fst")));

    expect_import_fails(tpath("missing.h5"), tpath("missing.fst"), NULL, FST_EIO,
                        "No such file", NULL, NULL);
    expect_import_fails(tmpdir, tpath("dir.fst"), NULL, FST_EIO, "not a regular file", NULL,
                        NULL);
}

FST_TEST(bad_truncated)
{
    const char *src = tpath("full.h5");
    spec sp[3] = {hloc_f16[0], hloc_f16[0], hloc_f16[0]};
    sp[0].name = "a.jpg"; sp[1].name = "b.jpg"; sp[2].name = "c.jpg";
    for (int i = 0; i < 3; i++) {
        sp[i].n = 1000;
        sp[i].d = 64;
        sp[i].seed = (uint32_t)i;
    }
    write_file(src, sp, 3);
    struct stat sb;
    ASSERT_EQ(stat(src, &sb), 0);
    /* Cut in half, and at a few other places for good measure. */
    const double cuts[] = {0.5, 0.1, 0.9, 0.99};
    for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
        const char *cut = tpath("cut%zu.h5", c);
        FILE *in = fopen(src, "rb");
        size_t n = (size_t)((double)sb.st_size * cuts[c]);
        unsigned char *buf = malloc(n);
        ASSERT_EQ(fread(buf, 1, n, in), n);
        fclose(in);
        write_bytes(cut, buf, n);
        free(buf);
        const char *dest = tpath("cut%zu.fst", c);
        fst_status s = fst_import_h5(cut, dest, NULL, NULL);
        ASSERT_STATUS(s, FST_EFORMAT);
        ASSERT_CONTAINS(fst_errdetail(), cut);
        ASSERT_TRUE(!exists(dest));
        ASSERT_TRUE(!tmp_left(dest));
    }
}

/* ---- append ---- */

FST_TEST(append_dup_and_conflict)
{
    const char *a = tpath("app_a.h5"), *b = tpath("app_b.h5"), *c = tpath("app_c.h5");
    const char *dest = tpath("app.fst");
    write_file(a, hloc_f16, 2);                 /* images 0, 1 */
    write_file(b, hloc_f16 + 1, 2);             /* images 1 (identical), 2 */
    spec conflict = hloc_f16[2];
    conflict.seed = 99;                         /* same name, other content */
    spec more = hloc_f16[3];
    spec cs[2] = {more, conflict};
    write_file(c, cs, 2);

    ASSERT_OK(fst_import_h5(a, dest, NULL, NULL));
    /* create over an existing store: refused, store intact */
    ASSERT_STATUS(fst_import_h5(b, dest, NULL, NULL), FST_EEXIST);
    check_store(dest, hloc_f16, 2, FST_DTYPE_F16);

    fst_import_opts ap = {.append = true};
    fst_import_stats st;
    ASSERT_OK(fst_import_h5(b, dest, &ap, &st));
    ASSERT_EQ(st.images_added, 1);
    ASSERT_EQ(st.images_skipped, 1);
    check_store(dest, hloc_f16, 3, FST_DTYPE_F16);

    /* A conflicting duplicate refuses the whole append, by name. */
    fst_status s = fst_import_h5(c, dest, &ap, NULL);
    ASSERT_STATUS(s, FST_EEXIST);
    ASSERT_CONTAINS(fst_errdetail(), c);
    ASSERT_CONTAINS(fst_errdetail(), "db/seq2/a b.png");
    check_store(dest, hloc_f16, 3, FST_DTYPE_F16);

    /* Another D, or another dtype, refused before anything is written. */
    const char *d16 = tpath("app_d16.h5");
    spec other = hloc_f16[4];
    other.d = 16;
    write_file(d16, &other, 1);
    expect_import_fails(d16, dest, &ap, FST_EFORMAT, "/x/y/z/w/deep.jpg/descriptors",
                        "expected 32 rows, found 16", NULL);
    const char *f32 = tpath("app_f32.h5");
    other = hloc_f16[4];
    other.desc_f16 = 0;
    write_file(f32, &other, 1);
    expect_import_fails(f32, dest, &ap, FST_EFORMAT, "float32", "--dtype float16", NULL);
    check_store(dest, hloc_f16, 3, FST_DTYPE_F16);
    ap.dtype = FST_DTYPE_F16;
    ASSERT_OK(fst_import_h5(f32, dest, &ap, &st));
    ASSERT_EQ(st.images_added, 1);

    /* Appending to nothing is an error, not a silent create. */
    ap.dtype = 0;
    ASSERT_TRUE(fst_import_h5(a, tpath("nothing.fst"), &ap, NULL) != FST_OK);
    ASSERT_TRUE(!exists(tpath("nothing.fst")));
}

static int stop_after_one(uint64_t done, uint64_t total, uint64_t bytes, void *ctx)
{
    (void)total; (void)bytes;
    int *calls = ctx;
    (*calls)++;
    return done >= 1;
}

FST_TEST(progress_and_interrupt)
{
    const char *src = tpath("prog.h5"), *dest = tpath("prog.fst");
    write_file(src, hloc_f16, NSPEC(hloc_f16));
    int calls = 0;
    fst_import_opts o = {.progress = stop_after_one, .progress_ctx = &calls};
    /* Progress is throttled, but the last image always reports. */
    ASSERT_STATUS(fst_import_h5(src, dest, &o, NULL), FST_EINTR);
    ASSERT_TRUE(calls >= 2);
    ASSERT_TRUE(!exists(dest));
    ASSERT_TRUE(!tmp_left(dest));
}

/* ---- export ---- */

/* Compare two HDF5 objects' content: the same groups, datasets (dtype,
 * shape, bytes) and attributes, both ways. */
typedef struct cmpctx {
    hid_t other;
    int   diffs;
    char  first[1024];
} cmpctx;

static void diff(cmpctx *c, const char *fmt, const char *path)
{
    if (!c->diffs++)
        snprintf(c->first, sizeof c->first, fmt, path);
}

static void read_raw(hid_t ds, hid_t type, void **buf, size_t *n)
{
    hid_t sp = H5Dget_space(ds);
    hssize_t np = H5Sget_simple_extent_npoints(sp);
    H5Sclose(sp);
    *n = (size_t)np * H5Tget_size(type);
    *buf = calloc(1, *n + 1);
    if (np > 0)
        H5Dread(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, *buf);
}

static herr_t cmp_attr(hid_t loc, const char *name, const H5A_info_t *info, void *data)
{
    (void)info;
    cmpctx *c = data;
    char where[256];
    snprintf(where, sizeof where, "attr %.200s", name);
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    hid_t b = H5Aopen(c->other, name, H5P_DEFAULT);
    if (b < 0) {
        diff(c, "missing %s", where);
        H5Aclose(a);
        return 0;
    }
    hid_t ta = H5Aget_type(a), tb = H5Aget_type(b);
    if (H5Tequal(ta, tb) <= 0)
        diff(c, "dtype of %s", where);
    unsigned char va[64] = {0}, vb[64] = {0};
    if (H5Tget_size(ta) <= 64 && H5Tget_size(tb) <= 64) {
        H5Aread(a, ta, va);
        H5Aread(b, tb, vb);
        if (memcmp(va, vb, sizeof va))
            diff(c, "value of %s", where);
    }
    H5Tclose(ta);
    H5Tclose(tb);
    H5Aclose(a);
    H5Aclose(b);
    return 0;
}

static herr_t cmp_obj(hid_t root, const char *name, const H5O_info_t *info, void *data)
{
    cmpctx *c = data;
    if (!strcmp(name, "."))
        return 0;
    H5O_info_t oi;
    if (H5Oget_info_by_name2(c->other, name, &oi, H5O_INFO_BASIC | H5O_INFO_NUM_ATTRS,
                             H5P_DEFAULT) < 0) {
        H5Eclear2(H5E_DEFAULT);
        diff(c, "missing %s", name);
        return 0;
    }
    if (oi.type != info->type) {
        diff(c, "object type of %s", name);
        return 0;
    }
    if (oi.num_attrs != info->num_attrs)
        diff(c, "attribute count of %s", name);
    hid_t a = H5Oopen(root, name, H5P_DEFAULT), b = H5Oopen(c->other, name, H5P_DEFAULT);
    hid_t saved = c->other;
    c->other = b;
    H5Aiterate2(a, H5_INDEX_NAME, H5_ITER_INC, NULL, cmp_attr, c);
    c->other = saved;
    if (info->type == H5O_TYPE_DATASET) {
        hid_t ta = H5Dget_type(a), tb = H5Dget_type(b);
        hid_t sa = H5Dget_space(a), sb = H5Dget_space(b);
        if (H5Tequal(ta, tb) <= 0)
            diff(c, "dtype of %s", name);
        else if (H5Sextent_equal(sa, sb) <= 0)
            diff(c, "shape of %s", name);
        else {
            void *ba, *bb;
            size_t na, nb;
            read_raw(a, ta, &ba, &na);
            read_raw(b, tb, &bb, &nb);
            if (na != nb || memcmp(ba, bb, na))
                diff(c, "bytes of %s", name);
            free(ba);
            free(bb);
        }
        H5Tclose(ta); H5Tclose(tb); H5Sclose(sa); H5Sclose(sb);
    }
    H5Oclose(a);
    H5Oclose(b);
    return 0;
}

/* 0 if equal both ways; else the number of differences (first in msg). */
static int h5_same(const char *pa, const char *pb, char *msg, size_t cap)
{
    int total = 0;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    for (int dir = 0; dir < 2; dir++) {
        hid_t a = H5Fopen(dir ? pb : pa, H5F_ACC_RDONLY, H5P_DEFAULT);
        hid_t b = H5Fopen(dir ? pa : pb, H5F_ACC_RDONLY, H5P_DEFAULT);
        cmpctx c = {.other = b};
        H5Ovisit2(a, H5_INDEX_NAME, H5_ITER_INC, cmp_obj, &c,
                  H5O_INFO_BASIC | H5O_INFO_NUM_ATTRS);
        if (c.diffs && !total)
            snprintf(msg, cap, "%s%.500s", dir ? "(reverse) " : "", c.first);
        total += c.diffs;
        H5Fclose(a);
        H5Fclose(b);
    }
    return total;
}

FST_TEST(roundtrip_bit_for_bit)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    const spec *sets[2] = {hloc_f16, hloc_f32};
    size_t ns[2] = {NSPEC(hloc_f16), NSPEC(hloc_f32)};
    for (int k = 0; k < 2; k++) {
        const char *src = tpath("rt%d.h5", k), *s1 = tpath("rt%d.fst", k);
        const char *out = tpath("rt%d_out.h5", k), *s2 = tpath("rt%d_again.fst", k);
        const char *out2 = tpath("rt%d_out2.h5", k);
        write_file(src, sets[k], ns[k]);
        ASSERT_OK(fst_import_h5(src, s1, NULL, NULL));
        fst_store *st = NULL;
        ASSERT_OK(fst_store_open(s1, FST_OPEN_CHECKSUMS, &st));
        ASSERT_OK(fst_export_h5(st, out, NULL, NULL));
        ASSERT_TRUE(!tmp_left(out));
        /* Refuses to replace. */
        ASSERT_STATUS(fst_export_h5(st, out, NULL, NULL), FST_EEXIST);
        fst_store_close(st);
        char msg[600] = "";
        int nd = h5_same(src, out, msg, sizeof msg);
        if (nd)
            printf("# %d differences; first: %s\n", nd, msg);
        ASSERT_EQ(nd, 0);
        /* And again: import the export, export that. */
        ASSERT_OK(fst_import_h5(out, s2, NULL, NULL));
        check_store(s2, sets[k], ns[k], k ? FST_DTYPE_F32 : FST_DTYPE_F16);
        ASSERT_OK(fst_store_open(s2, 0, &st));
        ASSERT_OK(fst_export_h5(st, out2, NULL, NULL));
        fst_store_close(st);
        ASSERT_EQ(h5_same(src, out2, msg, sizeof msg), 0);
    }
}

FST_TEST(export_nested_name_is_also_group)
{
    /* "a" is an image and a group holding image "a/b": key order puts "a"
     * first; the export must put both back. */
    spec sp[3] = {hloc_f16[3], hloc_f16[3], hloc_f16[3]};
    sp[0].name = "a";
    sp[1].name = "a/b";
    sp[2].name = "a.jpg";
    sp[1].seed = 8;
    sp[2].seed = 9;
    const char *src = tpath("nest.h5"), *dest = tpath("nest.fst"), *out = tpath("nest_out.h5");
    write_file(src, sp, 3);
    ASSERT_OK(fst_import_h5(src, dest, NULL, NULL));
    check_store(dest, sp, 3, FST_DTYPE_F16);
    fst_store *st = NULL;
    ASSERT_OK(fst_store_open(dest, 0, &st));
    ASSERT_OK(fst_export_h5(st, out, NULL, NULL));
    fst_store_close(st);
    char msg[600] = "";
    ASSERT_EQ(h5_same(src, out, msg, sizeof msg), 0);
}

/* ---- synth ---- */

typedef struct h5img {
    uint32_t  n, d;
    float    *kp, *sc;
    float    *desc;        /* D x N as float */
    int64_t   size[2];
} h5img;

static void read_img(hid_t f, const char *name, h5img *im)
{
    char p[600];
    fst__h5_dset ds;
    snprintf(p, sizeof p, "%s/descriptors", name);
    if (fst__h5_dset_open(f, p, p, &ds)) abort();
    im->d = (uint32_t)ds.dims[0];
    im->n = (uint32_t)ds.dims[1];
    im->desc = malloc(sizeof(float) * im->n * im->d + 4);
    H5Dread(ds.id, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, im->desc);
    fst__h5_dset_close(&ds);
    snprintf(p, sizeof p, "%s/keypoints", name);
    if (fst__h5_dset_open(f, p, p, &ds)) abort();
    im->kp = malloc(sizeof(float) * 2 * im->n + 4);
    H5Dread(ds.id, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, im->kp);
    fst__h5_dset_close(&ds);
    snprintf(p, sizeof p, "%s/scores", name);
    if (fst__h5_dset_open(f, p, p, &ds)) abort();
    im->sc = malloc(sizeof(float) * im->n + 4);
    H5Dread(ds.id, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, im->sc);
    fst__h5_dset_close(&ds);
    snprintf(p, sizeof p, "%s/image_size", name);
    if (fst__h5_dset_open(f, p, p, &ds)) abort();
    H5Dread(ds.id, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, im->size);
    fst__h5_dset_close(&ds);
}

static void free_img(h5img *im)
{
    free(im->kp);
    free(im->sc);
    free(im->desc);
}

static double dot_cols(const h5img *a, uint32_t i, const h5img *b, uint32_t j)
{
    double s = 0;
    for (uint32_t t = 0; t < a->d; t++)
        s += (double)a->desc[(size_t)t * a->n + i] * b->desc[(size_t)t * b->n + j];
    return s;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (fread(b, 1, (size_t)n, f) != (size_t)n) abort();
    b[n] = '\0';
    fclose(f);
    if (len) *len = (size_t)n;
    return b;
}

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

FST_TEST(synth_deterministic)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    fst_synth_opts o = fst_synth_opts_default();
    o.n_images = 5;
    o.n_keypoints = 100;
    o.d = 16;
    o.n_pairs = 7;
    ASSERT_OK(fst_synth_h5(tpath("syn_a.h5"), tpath("syn_a.pairs"), tpath("syn_a.truth"), &o,
                           NULL, NULL));
    ASSERT_OK(fst_synth_h5(tpath("syn_b.h5"), tpath("syn_b.pairs"), tpath("syn_b.truth"), &o,
                           NULL, NULL));
    char msg[600] = "";
    ASSERT_EQ(h5_same(tpath("syn_a.h5"), tpath("syn_b.h5"), msg, sizeof msg), 0);
    char *pa = slurp(tpath("syn_a.pairs"), NULL), *pb = slurp(tpath("syn_b.pairs"), NULL);
    char *ta = slurp(tpath("syn_a.truth"), NULL), *tb = slurp(tpath("syn_b.truth"), NULL);
    ASSERT_STREQ(pa, pb);
    ASSERT_STREQ(ta, tb);
    ASSERT_EQ(count_lines(pa), 7);
    ASSERT_EQ(count_lines(ta), 4 * 50);
    /* Consecutive pairs first, then two apart. */
    ASSERT_TRUE(!strncmp(pa, "synth/img0000.jpg synth/img0001.jpg\n", 36));
    ASSERT_CONTAINS(pa, "synth/img0000.jpg synth/img0002.jpg\n");
    free(pa); free(pb); free(ta); free(tb);

    o.seed = 2;
    ASSERT_OK(fst_synth_h5(tpath("syn_c.h5"), NULL, NULL, &o, NULL, NULL));
    ASSERT_TRUE(h5_same(tpath("syn_a.h5"), tpath("syn_c.h5"), msg, sizeof msg) > 0);

    /* Refuses to replace, and leaves nothing behind on refusal. */
    ASSERT_STATUS(fst_synth_h5(tpath("syn_a.h5"), NULL, NULL, &o, NULL, NULL), FST_EEXIST);
    ASSERT_STATUS(fst_synth_h5(tpath("syn_d.h5"), tpath("syn_a.pairs"), NULL, &o, NULL, NULL),
                  FST_EEXIST);
    ASSERT_TRUE(!exists(tpath("syn_d.h5")));
    ASSERT_TRUE(!tmp_left(tpath("syn_d.h5")));
}

FST_TEST(synth_planted_truth)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    fst_synth_opts o = fst_synth_opts_default();
    o.n_images = 4;
    o.n_keypoints = 300;
    o.d = 64;
    o.planted_fraction = 0.3f;
    o.noise = 0.1f;
    o.seed = 77;
    const char *h5 = tpath("plant.h5"), *tr = tpath("plant.truth");
    ASSERT_OK(fst_synth_h5(h5, NULL, tr, &o, NULL, NULL));
    hid_t f = H5Fopen(h5, H5F_ACC_RDONLY, H5P_DEFAULT);
    h5img im[4];
    for (int i = 0; i < 4; i++) {
        char name[64];
        snprintf(name, sizeof name, "synth/img%04d.jpg", i);
        read_img(f, name, &im[i]);
        ASSERT_EQ(im[i].n, 300);
        ASSERT_EQ(im[i].d, 64);
        for (uint32_t j = 0; j < im[i].n; j++) {
            /* inside the image, scores in (0, 1), unit descriptors */
            ASSERT_TRUE(im[i].kp[2 * j] >= 0 && im[i].kp[2 * j] <= im[i].size[0] - 1);
            ASSERT_TRUE(im[i].kp[2 * j + 1] >= 0 && im[i].kp[2 * j + 1] <= im[i].size[1] - 1);
            ASSERT_TRUE(im[i].sc[j] > 0 && im[i].sc[j] < 1);
            ASSERT_NEAR(dot_cols(&im[i], j, &im[i], j), 1.0, 2e-3);
        }
    }
    H5Fclose(f);

    size_t len;
    char *t = slurp(tr, &len);
    ASSERT_EQ(count_lines(t), 3 * 90);       /* floor(0.3 * 300) per pair */
    int used[4][300] = {{0}};                /* 1: target from prev, 2: source to next */
    char *save = NULL;
    size_t lines = 0, nn_ok = 0;
    for (char *line = strtok_r(t, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        int a, b;
        unsigned i, j;
        ASSERT_EQ(sscanf(line, "synth/img%d.jpg synth/img%d.jpg %u %u", &a, &b, &i, &j), 4);
        ASSERT_EQ(b, a + 1);
        ASSERT_TRUE(i < 300 && j < 300);
        /* each keypoint in at most one correspondence per role, and the
         * two roles disjoint */
        ASSERT_EQ(used[a][i] & 2, 0);
        ASSERT_EQ(used[b][j] & 1, 0);
        used[a][i] |= 2;
        used[b][j] |= 1;
        ASSERT_TRUE(used[a][i] == 2);
        /* planted: close, and the nearest neighbour of i in image b */
        double dp = dot_cols(&im[a], i, &im[b], j);
        ASSERT_TRUE(dp > 0.98);
        uint32_t best = 0;
        double bd = -2;
        for (uint32_t k = 0; k < im[b].n; k++) {
            double dk = dot_cols(&im[a], i, &im[b], k);
            if (dk > bd) { bd = dk; best = k; }
        }
        nn_ok += best == j;
        lines++;
    }
    ASSERT_EQ(lines, 270);
    ASSERT_EQ(nn_ok, lines);
    free(t);
    for (int i = 0; i < 4; i++)
        free_img(&im[i]);
}

FST_TEST(synth_imports_and_options)
{
    fst_synth_opts o = fst_synth_opts_default();
    o.n_images = 6;
    o.n_keypoints = 64;
    o.d = 32;
    o.dtype = FST_DTYPE_F32;
    o.prefix = "a/b/c";
    const char *h5 = tpath("synimp.h5"), *dest = tpath("synimp.fst");
    ASSERT_OK(fst_synth_h5(h5, NULL, NULL, &o, NULL, NULL));
    fst_import_stats st;
    ASSERT_OK(fst_import_h5(h5, dest, NULL, &st));
    ASSERT_EQ(st.images_added, 6);
    fst_store *s = NULL;
    fst_reader *rd = NULL;
    fst_view v;
    ASSERT_OK(fst_store_open(dest, FST_OPEN_CHECKSUMS, &s));
    ASSERT_OK(fst_reader_begin(s, &rd));
    ASSERT_OK(fst_reader_get(rd, "a/b/c0005.jpg", &v));
    ASSERT_EQ(v.n, 64);
    ASSERT_EQ(v.dtype, FST_DTYPE_F32);
    ASSERT_EQ(v.flags & FST_VIEW_HAS_UNCERTAINTY, FST_VIEW_HAS_UNCERTAINTY);
    fst_reader_end(rd);
    fst_store_close(s);

    /* bad options */
    o = fst_synth_opts_default();
    o.planted_fraction = 0.6f;
    ASSERT_STATUS(fst_synth_h5(tpath("x.h5"), NULL, NULL, &o, NULL, NULL), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "0.5");
    o = fst_synth_opts_default();
    o.n_images = 3;
    o.n_pairs = 4;
    ASSERT_STATUS(fst_synth_h5(tpath("x.h5"), NULL, NULL, &o, NULL, NULL), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "3 distinct pairs");
    o = fst_synth_opts_default();
    o.d = 0;
    ASSERT_STATUS(fst_synth_h5(tpath("x.h5"), NULL, NULL, &o, NULL, NULL), FST_EINVAL);
    ASSERT_TRUE(!exists(tpath("x.h5")));

    /* zero keypoints per image is valid hloc */
    o = fst_synth_opts_default();
    o.n_images = 2;
    o.n_keypoints = 0;
    ASSERT_OK(fst_synth_h5(tpath("zero_kp.h5"), NULL, NULL, &o, NULL, NULL));
    ASSERT_OK(fst_import_h5(tpath("zero_kp.h5"), tpath("zero_kp.fst"), NULL, &st));
    ASSERT_EQ(st.images_added, 2);
    ASSERT_EQ(st.keypoints, 0);
}

/* ---- the helpers other loaders will reuse ---- */

FST_TEST(h5util_errors_carry_hdf5_reason)
{
    fst__h5_quiet q;
    fst__h5_quiet_begin(&q);
    const char *src = tpath("util.h5");
    write_file(src, hloc_f16, 1);
    hid_t f;
    ASSERT_OK(fst__h5_open_read(src, &f, NULL, NULL));
    fst__h5_dset ds;
    ASSERT_STATUS(fst__h5_dset_open(f, "nope/descriptors", "util.h5: /nope/descriptors", &ds),
                  FST_EFORMAT);
    /* ours, then HDF5's innermost reason */
    ASSERT_CONTAINS(fst_errdetail(), "util.h5: /nope/descriptors: cannot open as a dataset: ");
    ASSERT_TRUE(strlen(fst_errdetail()) > strlen("util.h5: /nope/descriptors: cannot open as a dataset: "));
    ASSERT_OK(fst__h5_dset_open(f, "db/seq1/0001.jpg/descriptors", "d", &ds));
    ASSERT_EQ(ds.kind, FST__H5_F16);
    ASSERT_EQ(ds.rank, 2);
    ASSERT_STATUS(fst__h5_dset_expect(&ds, "d", 2, (const int64_t[]){256, -1}, FST__H5_KFLOAT),
                  FST_EFORMAT);
    ASSERT_STREQ(fst_errdetail(), "d: expected 256 rows, found 32 (shape (32, 50))");
    ASSERT_STATUS(fst__h5_dset_expect(&ds, "d", 2, (const int64_t[]){-1, -1},
                                      FST__H5_K(FST__H5_F32)), FST_EFORMAT);
    ASSERT_STREQ(fst_errdetail(), "d: unsupported dtype float16 (expected float32)");
    fst__h5_dset_close(&ds);
    fst__h5_dset_close(&ds);   /* twice is fine */
    H5Fclose(f);
    fst__h5_quiet_end(&q);
}

FST_TEST(transpose_all_shapes)
{
    /* Every shape around the SIMD block sizes, against the naive loop. */
    enum { MAX = 70 };
    static uint16_t s16[MAX * MAX], d16[MAX * MAX + 1];
    static uint32_t s32[MAX * MAX], d32[MAX * MAX + 1];
    for (size_t i = 0; i < MAX * MAX; i++) {
        s16[i] = (uint16_t)(i * 40503u);
        s32[i] = (uint32_t)i * 2654435761u;
    }
    const size_t sizes[] = {0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40, 63, 64, 65, 70};
    const size_t ns = sizeof sizes / sizeof sizes[0];
    for (size_t a = 0; a < ns; a++)
        for (size_t b = 0; b < ns; b++) {
            size_t rows = sizes[a], cols = sizes[b];
            memset(d16, 0xee, sizeof d16);
            memset(d32, 0xee, sizeof d32);
            fst__transpose16(s16, d16, rows, cols);
            fst__transpose32(s32, d32, rows, cols);
            for (size_t r = 0; r < rows; r++)
                for (size_t c = 0; c < cols; c++) {
                    ASSERT_EQ(d16[c * rows + r], s16[r * cols + c]);
                    ASSERT_EQ(d32[c * rows + r], s32[r * cols + c]);
                }
            ASSERT_EQ(d16[rows * cols], 0xeeee);       /* nothing written past */
            ASSERT_EQ(d32[rows * cols], 0xeeeeeeeeu);
        }
}

FST_TEST(find_nonfinite_everywhere)
{
    enum { N = 100 };
    static uint16_t h[N];
    static float f[N];
    for (size_t n = 0; n <= N; n++) {
        for (size_t i = 0; i < N; i++) {
            h[i] = fst_f32_to_f16((float)i - 50.0f);
            f[i] = (float)i * -1e30f;            /* large, finite */
        }
        ASSERT_EQ(fst__find_nonfinite16(h, n), n);
        ASSERT_EQ(fst__find_nonfinite32(f, n), n);
        for (size_t at = 0; at < n; at += 7) {
            uint16_t hs = h[at];
            float fs = f[at];
            h[at] = at % 2 ? 0x7e00 : 0xfc00;    /* NaN, -Inf */
            f[at] = at % 2 ? NAN : INFINITY;
            ASSERT_EQ(fst__find_nonfinite16(h, n), at);
            ASSERT_EQ(fst__find_nonfinite32(f, n), at);
            h[at] = hs;
            f[at] = fs;
        }
    }
}

FST_TEST(import_sequential_same_results)
{
    /* The import without its reader thread: same records, same errors. */
    fst__import_threads = 0;
    const char *src = tpath("seq.h5"), *dest = tpath("seq.fst");
    write_file(src, hloc_f16, NSPEC(hloc_f16));
    fst_import_stats st;
    fst_status s = fst_import_h5(src, dest, NULL, &st);
    if (s == FST_OK)
        check_store(dest, hloc_f16, NSPEC(hloc_f16), FST_DTYPE_F16);
    const char *bad = tpath("seq_bad.h5");
    spec sp[3] = {hloc_f16[0], hloc_f16[3], hloc_f16[4]};
    sp[1].d = 16;
    write_file(bad, sp, 3);
    fst_status sb = fst_import_h5(bad, tpath("seq_bad.fst"), NULL, NULL);
    char detail[1024];
    snprintf(detail, sizeof detail, "%s", fst_errdetail());
    fst__import_threads = 1;
    ASSERT_OK(s);
    ASSERT_STATUS(sb, FST_EFORMAT);
    ASSERT_CONTAINS(detail, "/q.jpg/descriptors: expected 32 rows, found 16");
    ASSERT_TRUE(!exists(tpath("seq_bad.fst")));
}

FST_TEST(import_error_late_in_a_long_file)
{
    /* Many images, the bad one near the end: the reader thread is ahead of
     * the writer when it fails; the error still names the right image and
     * nothing is left. */
    enum { N = 40 };
    spec sp[N];
    char names[N][32];
    for (int i = 0; i < N; i++) {
        sp[i] = hloc_f16[3];
        snprintf(names[i], sizeof names[i], "many/img%02d.jpg", i);
        sp[i].name = names[i];
        sp[i].seed = (uint32_t)i;
    }
    sp[N - 3].d = 8;
    const char *src = tpath("late.h5"), *dest = tpath("late.fst");
    write_file(src, sp, N);
    expect_import_fails(src, dest, NULL, FST_EFORMAT, "/many/img37.jpg/descriptors",
                        "expected 32 rows, found 8", NULL);
    sp[N - 3].d = 32;
    write_file(src, sp, N);
    ASSERT_OK(fst_import_h5(src, dest, NULL, NULL));
    check_store(dest, sp, N, FST_DTYPE_F16);
}

/* ---- DoG scales and oris (format 1.2) ---- */

static const spec hloc_dog[] = {
    /* hloc's dog extractor, float32 (as_half off) */
    {"dog/a.jpg", 60, 128, 0, 0, SC_SCORES, 0, 1, 1, 21, SO_SCALES | SO_ORIS},
    /* as_half: keypoints, scores, scales, oris float16 (descriptors as a) */
    {"dog/b.jpg", 33, 128, 0, 1, SC_SCORES, 1, 1, 1, 22,
     SO_SCALES | SO_ORIS | SO_SCALES_F16 | SO_ORIS_F16},
    /* no keypoints */
    {"dog/c.jpg", 0, 128, 0, 0, SC_SCORES, 0, 1, 0, 23, SO_SCALES | SO_ORIS},
    /* one without the other, mixed dtypes */
    {"dog/d.jpg", 7, 128, 0, 0, SC_NONE, 0, 0, 0, 24, SO_SCALES | SO_SCALES_F16},
    {"dog/e.jpg", 9, 128, 0, 1, SC_KEYPOINT, 0, 1, 0, 25, SO_ORIS},
    /* an image without either, in the same file */
    {"f.jpg", 12, 128, 0, 0, SC_SCORES, 0, 1, 1, 26, 0},
};

FST_TEST(import_export_dog_scales_oris_bit_for_bit)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    const char *src = tpath("dog.h5"), *s1 = tpath("dog.fst"), *out = tpath("dog_out.h5");
    const char *s2 = tpath("dog_again.fst"), *out2 = tpath("dog_out2.h5");
    write_file(src, hloc_dog, NSPEC(hloc_dog));
    fst_import_stats st;
    ASSERT_OK(fst_import_h5(src, s1, NULL, &st));
    ASSERT_EQ(st.datasets_ignored, 0);          /* scales and oris are kept */
    ASSERT_EQ(st.images_added, NSPEC(hloc_dog));
    uint64_t payload = 0;
    for (size_t i = 0; i < NSPEC(hloc_dog); i++) {
        const spec *sp = &hloc_dog[i];
        payload += (uint64_t)sp->n * (8 + (sp->scores != SC_NONE ? 4 : 0) +
                                      (sp->so & SO_SCALES ? 4 : 0) +
                                      (sp->so & SO_ORIS ? 4 : 0) + 128 * 4);
    }
    ASSERT_EQ(st.payload_bytes, payload);
    check_store(s1, hloc_dog, NSPEC(hloc_dog), FST_DTYPE_F32);
    fst_store *fs = NULL;
    fst_store_meta m;
    ASSERT_OK(fst_store_open(s1, 0, &fs));
    ASSERT_OK(fst_store_meta_get(fs, &m));
    ASSERT_EQ(m.format_minor, 2);
    ASSERT_EQ(m.payload_bytes, payload);
    uint64_t checked = 0, nbad = 9;
    ASSERT_OK(fst_store_verify(fs, NULL, NULL, &checked, &nbad));
    ASSERT_EQ(nbad, 0);
    ASSERT_OK(fst_export_h5(fs, out, NULL, NULL));
    fst_store_close(fs);
    char msg[600] = "";
    int nd = h5_same(src, out, msg, sizeof msg);
    if (nd)
        printf("# %d differences; first: %s\n", nd, msg);
    ASSERT_EQ(nd, 0);
    ASSERT_OK(fst_import_h5(out, s2, NULL, NULL));
    check_store(s2, hloc_dog, NSPEC(hloc_dog), FST_DTYPE_F32);
    ASSERT_OK(fst_store_open(s2, 0, &fs));
    ASSERT_OK(fst_export_h5(fs, out2, NULL, NULL));
    fst_store_close(fs);
    ASSERT_EQ(h5_same(src, out2, msg, sizeof msg), 0);

    /* a store without them stays format 1.1 */
    const char *h11 = tpath("dog_plain.h5"), *p11 = tpath("dog_plain.fst");
    write_file(h11, hloc_dog + 5, 1);
    ASSERT_OK(fst_import_h5(h11, p11, NULL, NULL));
    ASSERT_OK(fst_store_open(p11, 0, &fs));
    ASSERT_OK(fst_store_meta_get(fs, &m));
    ASSERT_EQ(m.format_minor, 1);
    fst_store_close(fs);
}

/* Appending the same DoG file is a no-op; one whose scales differ is
 * refused, naming the image. */
FST_TEST(append_dog_dup_and_conflict)
{
    const char *src = tpath("dogapp.h5"), *dest = tpath("dogapp.fst");
    write_file(src, hloc_dog, 2);
    ASSERT_OK(fst_import_h5(src, dest, NULL, NULL));
    fst_import_opts o = {.append = true};
    fst_import_stats st;
    ASSERT_OK(fst_import_h5(src, dest, &o, &st));
    ASSERT_EQ(st.images_added, 0);
    ASSERT_EQ(st.images_skipped, 2);
    float sc[60];
    for (uint32_t i = 0; i < 60; i++)
        sc[i] = scale_val(21, i);
    sc[59] += 0.25f;
    replace_ds(src, "dog/a.jpg/scales", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, (hsize_t[]){60},
               sc);
    ASSERT_STATUS(fst_import_h5(src, dest, &o, NULL), FST_EEXIST);
    ASSERT_CONTAINS(fst_errdetail(), "dog/a.jpg");
}

FST_TEST(bad_dog_scales_oris)
{
    static float buf[200];
    const char *src;
    for (int i = 0; i < 200; i++)
        buf[i] = 1.0f;
    /* wrong length */
    src = tpath("bad_sca_len.h5");
    write_file(src, hloc_dog, 1);
    replace_ds(src, "dog/a.jpg/scales", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, (hsize_t[]){59},
               buf);
    expect_import_fails(src, tpath("bad_sca_len.fst"), NULL, FST_EFORMAT, "/dog/a.jpg/scales",
                        "expected length 60, found 59", NULL);
    /* wrong rank */
    src = tpath("bad_ori_rank.h5");
    write_file(src, hloc_dog, 1);
    replace_ds(src, "dog/a.jpg/oris", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, (hsize_t[]){60, 2},
               buf);
    expect_import_fails(src, tpath("bad_ori_rank.fst"), NULL, FST_EFORMAT, "/dog/a.jpg/oris",
                        "expected 1 dimension", NULL);
    /* float64 */
    static double dbuf[60];
    src = tpath("bad_ori_f64.h5");
    write_file(src, hloc_dog, 1);
    replace_ds(src, "dog/a.jpg/oris", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, (hsize_t[]){60},
               dbuf);
    expect_import_fails(src, tpath("bad_ori_f64.fst"), NULL, FST_EFORMAT, "/dog/a.jpg/oris",
                        NULL, NULL);
    /* NaN in float32 scales */
    src = tpath("bad_sca_nan.h5");
    write_file(src, hloc_dog, 1);
    buf[17] = NAN;
    replace_ds(src, "dog/a.jpg/scales", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, (hsize_t[]){60},
               buf);
    buf[17] = 1.0f;
    expect_import_fails(src, tpath("bad_sca_nan.fst"), NULL, FST_EFORMAT, "/dog/a.jpg/scales",
                        "NaN at row 17", NULL);
    /* Inf in float16 oris */
    src = tpath("bad_ori_inf16.h5");
    write_file(src, hloc_dog, 2);
    static uint16_t h[33];
    h[32] = 0xfc00;
    hid_t t16 = fst__h5_f16_create();
    replace_ds(src, "dog/b.jpg/oris", t16, t16, 1, (hsize_t[]){33}, h);
    H5Tclose(t16);
    expect_import_fails(src, tpath("bad_ori_inf16.fst"), NULL, FST_EFORMAT, "/dog/b.jpg/oris",
                        "Inf at row 32", NULL);
}
