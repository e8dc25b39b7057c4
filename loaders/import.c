/* import.c : hloc's features.h5 into a store (fst_import_h5).
 *
 * Two passes over the file: a walk that lists the image groups (names only,
 * so that progress has a total and the writer gets its keys in order), then
 * one image at a time: read, check, hand to the writer. The descriptors go
 * to the writer as the file holds them, D x N (fst_image.desc_dn): it
 * transposes them to N x D, checks them for NaN/Inf and hashes them in its
 * one pass over the record. Only --dtype conversions transpose here.
 *
 * The second pass is a two-stage pipeline: a producer thread does all the
 * HDF5 work (read, check, transpose) into a ring of NSLOT image slots while
 * the calling thread hands finished slots to the store's writer, so reading
 * the source and writing the store overlap. HDF5 (not thread-safe here) is
 * only ever called by one thread at a time: the caller before and after,
 * the producer in between. Buffers are reused, never freed per image. Peak
 * memory: NSLOT records, one raw D x N buffer and the names, whatever the
 * file size. If no thread can be started the same code runs sequentially.
 *
 * Appending, a pass between the two (precheck()) reads and compares the
 * images the store already holds, so that a conflicting one is refused
 * before anything is written.
 */
#include "loader_impl.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int fst__import_threads = 1;

#define NSLOT 3

/* LMDB values are limited to 4 GiB; a record must fit in one. */
#define MAX_RECORD_BYTES ((uint64_t)0xffffffffu - 65536u)

typedef struct importer {
    const char            *src;        /* as given: names the file in messages */
    hid_t                  file;
    hid_t                  f16;        /* float16 memory type */
    const fst_import_opts *opts;

    char                 **names;      /* image names, without leading '/' */
    size_t                 nnames, capnames;
    size_t                 done0;      /* appending: identical images the
                                          precheck took off the list */

    /* Descriptor dimension and dtype of the first image (or of the store,
     * when appending): every image must agree. */
    uint32_t               d;
    fst_dtype              src_dtype;  /* 0 until the first image */
    const char            *first;      /* image that set them */
    uint32_t               store_d;    /* appending: the store's, or 0 */
    fst_dtype              store_dtype;

    /* The producer's scratch, reused for every image. */
    void                  *raw;   size_t rawcap;     /* D x N as in the file */
    uint16_t              *h16;   size_t h16cap;     /* f16 keypoints/scores */

    uint64_t               ignored;
    char                   ignored_example[256];
} importer;

/* One image between the stages: what the writer gets, in buffers the slot
 * owns, or the error that stopped the producer. */
typedef struct slot {
    fst_image   img;
    void       *desc;  size_t desccap;    /* N x D for the store */
    float      *kp;    size_t kpcap;
    float      *sc;    size_t sccap;
    float      *sca;   size_t scacap;     /* scales */
    float      *ori;   size_t oricap;     /* oris */
    fst_status  status;
    char        detail[1024];             /* the producer's fst_errdetail() */
} slot;

/* The ring: slot i % NSLOT holds image i. The producer fills slots while
 * produced - consumed < NSLOT; the consumer takes them in order. */
typedef struct ring {
    pthread_mutex_t mu;
    pthread_cond_t  cv;
    slot            slots[NSLOT];
    size_t          produced, consumed;
    int             stop;                 /* the consumer gave up */
    importer       *im;
} ring;

/* ---- pass 1: list the images ---- */

static fst_status add_name(importer *im, const char *path)
{
    if (im->nnames == im->capnames) {
        size_t nc = im->capnames ? 2 * im->capnames : 256;
        char **nn = realloc(im->names, nc * sizeof *nn);
        if (!nn)
            return fst__fail(FST_ENOMEM, "%s: listing images", im->src);
        im->names = nn;
        im->capnames = nc;
    }
    char *dup = strdup(path + 1);   /* drop the leading '/' */
    if (!dup)
        return fst__fail(FST_ENOMEM, "%s: listing images", im->src);
    im->names[im->nnames++] = dup;
    return FST_OK;
}

static fst_status list_group(hid_t g, const char *path, void *ctx)
{
    importer *im = ctx;
    int has_d = fst__h5_has_link(g, "descriptors");
    int has_k = fst__h5_has_link(g, "keypoints");
    if (!has_d && !has_k)
        return FST_OK;
    /* Half an image is refused rather than skipped: dropping it silently
     * would surface much later as "no such image" in a matching run. */
    if (!has_d)
        return fst__fail(FST_EFORMAT, "%s: %s: has keypoints but no descriptors "
                         "(features from a detector-free matcher?)", im->src, path);
    if (!has_k)
        return fst__fail(FST_EFORMAT, "%s: %s: has descriptors but no keypoints",
                         im->src, path);
    if (path[1] == '\0')
        return fst__fail(FST_EFORMAT, "%s: the root group holds keypoints and "
                         "descriptors; images must be named groups", im->src);
    return add_name(im, path);
}

static int cmp_name(const void *a, const void *b)
{
    /* LMDB's default key order: bytewise. */
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- checks and conversions ---- */

/* Transpose src (rows x cols, row-major) into dst (cols x rows) in tiles
 * that stay in L1, converting each element with CONV (--dtype; the plain
 * copies are fst__transpose16/32). */
#define TILE 32
#define DEFINE_TRANSPOSE(fname, S, T, CONV)                                  \
static void fname(const S *restrict src, T *restrict dst,                    \
                  size_t rows, size_t cols)                                  \
{                                                                            \
    for (size_t r0 = 0; r0 < rows; r0 += TILE) {                             \
        size_t r1 = r0 + TILE < rows ? r0 + TILE : rows;                     \
        for (size_t c0 = 0; c0 < cols; c0 += TILE) {                         \
            size_t c1 = c0 + TILE < cols ? c0 + TILE : cols;                 \
            for (size_t c = c0; c < c1; c++)                                 \
                for (size_t r = r0; r < r1; r++)                             \
                    dst[c * rows + r] = CONV(src[r * cols + c]);             \
        }                                                                    \
    }                                                                        \
}
DEFINE_TRANSPOSE(transpose_f16_f32, uint16_t, float, fst_f16_to_f32)
DEFINE_TRANSPOSE(transpose_f32_f16, float, uint16_t, fst_f32_to_f16)

/* ---- pass 2: one image ---- */

/* Read a float16 or float32 dataset of n elements into float32 `dst`. */
static fst_status read_floats(importer *im, const fst__h5_dset *ds, const char *where,
                              size_t n, float *dst)
{
    fst_status s;
    if (ds->kind == FST__H5_F32)
        return fst__h5_dset_read(ds, where, H5T_NATIVE_FLOAT, dst);
    FST_TRY(fst__grow((void **)&im->h16, &im->h16cap, n * sizeof(uint16_t), where));
    FST_TRY(fst__h5_dset_read(ds, where, im->f16, im->h16));
    for (size_t i = 0; i < n; i++)
        dst[i] = fst_f16_to_f32(im->h16[i]);
out:
    return s;
}

/* hloc's DoG extractor writes each keypoint's `scales` and `oris` (N,),
 * float32, or float16 under as_half: read dataset `dsname` of group g of
 * image `name` into *buf if present (*present = 1) and check it as the
 * keypoints are checked; the record keeps float32 and flags the dtype. */
static fst_status read_vec(importer *im, hid_t g, const char *name,
                           const char *dsname, uint32_t n, float **buf,
                           size_t *cap, int *present, int *f16)
{
    fst_status s = FST_OK;
    char where[1200];
    fst__h5_dset ds = {0};
    ds.id = ds.type = H5I_INVALID_HID;
    *present = fst__h5_has_link(g, dsname);
    if (!*present)
        return FST_OK;
    snprintf(where, sizeof where, "%s: /%s/%s", im->src, name, dsname);
    FST_TRY(fst__h5_dset_open(g, dsname, where, &ds));
    FST_TRY(fst__h5_dset_expect(&ds, where, 1, (const int64_t[]){n}, FST__H5_KFLOAT));
    *f16 = ds.kind == FST__H5_F16;
    FST_TRY(fst__grow((void **)buf, cap, (size_t)n * sizeof(float), where));
    FST_TRY(read_floats(im, &ds, where, n, *buf));
    size_t bad = fst__find_nonfinite32(*buf, n);
    if (bad < n)
        s = fst__fail(FST_EFORMAT, "%s: %s at row %zu", where,
                      isnan((*buf)[bad]) ? "NaN" : "Inf", bad);
out:
    fst__h5_dset_close(&ds);
    return s;
}

static void note_ignored(hid_t g, const char *name, importer *im, unsigned known)
{
    /* Datasets a store does not know are not kept; count them so the
     * command can say that an export will not have them. */
    H5G_info_t gi;
    if (H5Gget_info(g, &gi) < 0) {
        fst__h5_clear();
        return;
    }
    if (gi.nlinks <= known)
        return;
    im->ignored += gi.nlinks - known;
    if (im->ignored_example[0])
        return;
    static const char *mine[] = {"keypoints", "descriptors", "scores",
                                 "keypoint_scores", "image_size", "scales",
                                 "oris"};
    for (hsize_t i = 0; i < gi.nlinks; i++) {
        char ln[200];
        if (H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, ln, sizeof ln,
                               H5P_DEFAULT) < 0) {
            fst__h5_clear();
            return;
        }
        int is_mine = 0;
        for (size_t k = 0; k < sizeof mine / sizeof mine[0]; k++)
            is_mine |= !strcmp(ln, mine[k]);
        if (!is_mine) {
            snprintf(im->ignored_example, sizeof im->ignored_example, "/%s/%s", name, ln);
            return;
        }
    }
}

/* NaN or Inf among hloc's D x N descriptors `raw`: FST_EFORMAT naming the
 * first by row and column as they are in the file. */
static fst_status desc_nonfinite(const void *raw, fst_dtype dt, uint32_t d, uint32_t n,
                                 const char *where)
{
    size_t nel = (size_t)n * d;
    size_t bad = dt == FST_DTYPE_F16 ? fst__find_nonfinite16(raw, nel)
                                     : fst__find_nonfinite32(raw, nel);
    if (bad == nel)
        return FST_OK;
    float v = dt == FST_DTYPE_F16 ? fst_f16_to_f32(((const uint16_t *)raw)[bad])
                                  : ((const float *)raw)[bad];
    return fst__fail(FST_EFORMAT, "%s: %s at row %zu, column %zu (keypoint %zu)", where,
                     isnan(v) ? "NaN" : "Inf", bad / n, bad % n, bad % n);
}

static fst_status read_image(importer *im, const char *name, slot *sl)
{
    fst_image *img = &sl->img;
    fst_status s;
    char where[1200];
    fst__h5_dset kp = {0}, de = {0}, sc = {0}, is = {0};
    kp.id = de.id = sc.id = is.id = H5I_INVALID_HID;
    kp.type = de.type = sc.type = is.type = H5I_INVALID_HID;
    hid_t g = H5Gopen2(im->file, name, H5P_DEFAULT);
    if (g < 0)
        return fst__h5_fail(FST_EFORMAT, "%s: /%s: cannot open group", im->src, name);

    memset(img, 0, sizeof *img);
    img->name = name;
    img->uncertainty = NAN;

    /* keypoints: (N, 2) float16/float32 */
    snprintf(where, sizeof where, "%s: /%s/keypoints", im->src, name);
    FST_TRY(fst__h5_dset_open(g, "keypoints", where, &kp));
    FST_TRY(fst__h5_dset_expect(&kp, where, 2, (const int64_t[]){-1, 2}, FST__H5_KFLOAT));
    if (kp.dims[0] > UINT32_MAX) {
        s = fst__fail(FST_EFORMAT, "%s: %llu keypoints: more than a store record holds",
                      where, (unsigned long long)kp.dims[0]);
        goto out;
    }
    uint32_t n = (uint32_t)kp.dims[0];
    img->n = n;
    if (kp.kind == FST__H5_F16)
        img->flags |= FST_VIEW_KEYPOINTS_F16;
    {
        int present;
        double u;
        fst__h5_kind uk;
        FST_TRY(fst__h5_attr_read_double(kp.id, "uncertainty", where, &present, &u,
                                         &uk, NULL));
        if (present) {
            /* hloc writes float32 under NumPy 2 and float64 under NumPy 1.x
             * (`1 * np.float32(...)`), holding a float32 value either way:
             * keep the float and say which to write back. */
            img->uncertainty = (float)u;
            img->flags |= FST_VIEW_HAS_UNCERTAINTY;
            if (uk == FST__H5_F64)
                img->flags |= FST_VIEW_UNCERTAINTY_F64;
        }
    }

    /* descriptors: (D, N) float16/float32 */
    snprintf(where, sizeof where, "%s: /%s/descriptors", im->src, name);
    FST_TRY(fst__h5_dset_open(g, "descriptors", where, &de));
    FST_TRY(fst__h5_dset_expect(&de, where, 2, (const int64_t[]){-1, -1}, FST__H5_KFLOAT));
    if (de.dims[1] != n) {
        s = fst__fail(FST_EFORMAT, "%s: %llu columns but keypoints has %u rows "
                      "(descriptors are D x N, one column per keypoint; shape (%llu, %llu))",
                      where, (unsigned long long)de.dims[1], n,
                      (unsigned long long)de.dims[0], (unsigned long long)de.dims[1]);
        goto out;
    }
    if (de.dims[0] == 0 || de.dims[0] > UINT32_MAX) {
        s = fst__fail(FST_EFORMAT, "%s: descriptor dimension %llu", where,
                      (unsigned long long)de.dims[0]);
        goto out;
    }
    uint32_t d = (uint32_t)de.dims[0];
    fst_dtype dt = de.kind == FST__H5_F16 ? FST_DTYPE_F16 : FST_DTYPE_F32;
    if (im->store_d && d != im->store_d) {
        s = fst__fail(FST_EFORMAT, "%s: expected %u rows, found %u (the store holds "
                      "%u-D descriptors)", where, im->store_d, d, im->store_d);
        goto out;
    }
    if (im->d && d != im->d) {
        s = fst__fail(FST_EFORMAT, "%s: expected %u rows, found %u (image /%s has "
                      "%u-D descriptors)", where, im->d, d, im->first, im->d);
        goto out;
    }
    if (!im->opts->dtype) {
        /* Without --dtype every image keeps its dtype, so they must agree. */
        if (im->store_dtype && dt != im->store_dtype) {
            s = fst__fail(FST_EFORMAT, "%s: %s, but the store holds %s descriptors "
                          "(--dtype %s converts)", where, fst_dtype_name(dt),
                          fst_dtype_name(im->store_dtype), fst_dtype_name(im->store_dtype));
            goto out;
        }
        if (im->src_dtype && dt != im->src_dtype) {
            s = fst__fail(FST_EFORMAT, "%s: %s, but image /%s has %s descriptors "
                          "(--dtype converts all to one)", where, fst_dtype_name(dt),
                          im->first, fst_dtype_name(im->src_dtype));
            goto out;
        }
    }
    if (!im->d) {
        im->d = d;
        im->src_dtype = dt;
        im->first = name;
    }
    fst_dtype out_dt = im->opts->dtype ? (fst_dtype)im->opts->dtype : dt;
    img->d = d;
    img->dtype = out_dt;
    if (out_dt != dt)
        img->flags |= FST_VIEW_DESC_CONVERTED;

    size_t es_in = fst_dtype_size(dt), es_out = fst_dtype_size(out_dt);
    uint64_t rec = (uint64_t)n * (2 * sizeof(float) + 3 * sizeof(float)) +
                   (uint64_t)n * d * (es_in > es_out ? es_in : es_out);
    if (rec > MAX_RECORD_BYTES) {
        s = fst__fail(FST_EFORMAT, "%s: %u keypoints x %u dimensions: more than the "
                      "4 GiB a store record holds", where, n, d);
        goto out;
    }

    /* scores (N,) or keypoint_scores (N,), float16/float32, or neither */
    int has_s = fst__h5_has_link(g, "scores");
    int has_ks = fst__h5_has_link(g, "keypoint_scores");
    if (has_s && has_ks) {
        s = fst__fail(FST_EFORMAT, "%s: /%s: has both scores and keypoint_scores "
                      "(a store keeps one)", im->src, name);
        goto out;
    }
    if (has_s || has_ks) {
        const char *sn = has_s ? "scores" : "keypoint_scores";
        snprintf(where, sizeof where, "%s: /%s/%s", im->src, name, sn);
        FST_TRY(fst__h5_dset_open(g, sn, where, &sc));
        FST_TRY(fst__h5_dset_expect(&sc, where, 1, (const int64_t[]){n}, FST__H5_KFLOAT));
        img->flags |= FST_VIEW_HAS_SCORES;
        if (has_ks)
            img->flags |= FST_VIEW_SCORES_KEYPOINT;
        if (sc.kind == FST__H5_F16)
            img->flags |= FST_VIEW_SCORES_F16;
    }

    /* image_size (2,) integer: (width, height) */
    if (fst__h5_has_link(g, "image_size")) {
        snprintf(where, sizeof where, "%s: /%s/image_size", im->src, name);
        FST_TRY(fst__h5_dset_open(g, "image_size", where, &is));
        FST_TRY(fst__h5_dset_expect(&is, where, 1, (const int64_t[]){2}, FST__H5_KINT));
        FST_TRY(fst__h5_dset_read(&is, where, H5T_NATIVE_INT64, img->image_size));
        img->flags |= FST_VIEW_HAS_IMAGE_SIZE;
    }
    /* scales and oris (N,), float16/float32, or neither (DoG) */
    int has_sca = 0, has_ori = 0, f16 = 0;
    FST_TRY(read_vec(im, g, name, "scales", n, &sl->sca, &sl->scacap, &has_sca, &f16));
    if (has_sca) {
        img->scales = sl->sca;
        img->flags |= FST_VIEW_HAS_SCALES | (f16 ? FST_VIEW_SCALES_F16 : 0);
    }
    FST_TRY(read_vec(im, g, name, "oris", n, &sl->ori, &sl->oricap, &has_ori, &f16));
    if (has_ori) {
        img->oris = sl->ori;
        img->flags |= FST_VIEW_HAS_ORIS | (f16 ? FST_VIEW_ORIS_F16 : 0);
    }
    note_ignored(g, name, im,
                 2u + (unsigned)(has_s || has_ks) + ((img->flags & FST_VIEW_HAS_IMAGE_SIZE) != 0) +
                 (unsigned)has_sca + (unsigned)has_ori);

    /* Read the data. */
    snprintf(where, sizeof where, "%s: /%s/keypoints", im->src, name);
    FST_TRY(fst__grow((void **)&sl->kp, &sl->kpcap, (size_t)n * 2 * sizeof(float), where));
    FST_TRY(read_floats(im, &kp, where, (size_t)n * 2, sl->kp));
    size_t kbad = fst__find_nonfinite32(sl->kp, (size_t)n * 2);
    if (kbad < (size_t)n * 2) {
        s = fst__fail(FST_EFORMAT, "%s: %s at row %zu (keypoint %zu, %s)", where,
                      isnan(sl->kp[kbad]) ? "NaN" : "Inf", kbad / 2, kbad / 2,
                      kbad % 2 ? "y" : "x");
        goto out;
    }
    img->keypoints = sl->kp;

    if (img->flags & FST_VIEW_HAS_SCORES) {
        snprintf(where, sizeof where, "%s: /%s/%s", im->src, name,
                 has_s ? "scores" : "keypoint_scores");
        FST_TRY(fst__grow((void **)&sl->sc, &sl->sccap, (size_t)n * sizeof(float), where));
        FST_TRY(read_floats(im, &sc, where, n, sl->sc));
        img->scores = sl->sc;
    }

    snprintf(where, sizeof where, "%s: /%s/descriptors", im->src, name);
    size_t nel = (size_t)n * d;
    hid_t memtype = dt == FST_DTYPE_F16 ? im->f16 : H5T_NATIVE_FLOAT;
    FST_TRY(fst__grow(&sl->desc, &sl->desccap, nel * es_out, where));
    if (dt == out_dt) {
        /* As in the file, D x N: the writer transposes it while copying it
         * into the record, and checks it for NaN/Inf on the way
         * (desc_nonfinite() words the error). One pass instead of three. */
        FST_TRY(fst__h5_dset_read(&de, where, memtype, sl->desc));
        img->desc_dn = true;
    } else {
        FST_TRY(fst__grow(&im->raw, &im->rawcap, nel * es_in, where));
        FST_TRY(fst__h5_dset_read(&de, where, memtype, im->raw));
        FST_TRY(desc_nonfinite(im->raw, dt, d, n, where));
        if (dt == FST_DTYPE_F16)
            transpose_f16_f32(im->raw, sl->desc, d, n);
        else
            transpose_f32_f16(im->raw, sl->desc, d, n);
    }
    img->desc = sl->desc;
    s = FST_OK;
out:
    fst__h5_dset_close(&kp);
    fst__h5_dset_close(&de);
    fst__h5_dset_close(&sc);
    fst__h5_dset_close(&is);
    H5Gclose(g);
    return s;
}

static uint64_t payload_of(const fst_image *img)
{
    uint64_t n = img->n;
    return n * 2 * sizeof(float) + (img->scores ? n * sizeof(float) : 0) +
           (img->scales ? n * sizeof(float) : 0) + (img->oris ? n * sizeof(float) : 0) +
           n * img->d * fst_dtype_size(img->dtype);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Fill slot `sl` with image i; an error is kept in the slot, with its
 * detail (thread-local, hence copied). */
static void produce_one(importer *im, size_t i, slot *sl)
{
    sl->status = read_image(im, im->names[i], sl);
    if (sl->status)
        snprintf(sl->detail, sizeof sl->detail, "%s", fst_errdetail());
}

static void *producer(void *arg)
{
    ring *r = arg;
    importer *im = r->im;
    for (size_t i = 0; i < im->nnames; i++) {
        pthread_mutex_lock(&r->mu);
        while (r->produced - r->consumed == NSLOT && !r->stop)
            pthread_cond_wait(&r->cv, &r->mu);
        int stop = r->stop;
        pthread_mutex_unlock(&r->mu);
        if (stop)
            break;
        /* The consumer never looks at slot `produced` until it is counted. */
        slot *sl = &r->slots[i % NSLOT];
        produce_one(im, i, sl);
        pthread_mutex_lock(&r->mu);
        r->produced++;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        if (sl->status)
            break;
    }
    return NULL;
}

/* The writer refused `img` with status s: NaN/Inf in descriptors the
 * writer transposed is named as the file holds it; anything else names
 * the image already: say which file it came from. */
static fst_status writer_refused(importer *im, const fst_image *img, fst_status s)
{
    char where[1200];
    snprintf(where, sizeof where, "%s: /%s/descriptors", im->src, img->name);
    fst_status ds = FST_OK;
    if (s == FST_EINVAL && img->desc_dn)
        ds = desc_nonfinite(img->desc, img->dtype, img->d, img->n, where);
    return ds ? ds : fst__failpre(s, "%s: ", im->src);
}

/* Appending: the images the store already holds are read and compared
 * before anything is written, so that a conflicting one is refused while
 * the store is still byte-identical (puts commit batches as they go, and
 * even an aborted batch grows the file). Identical ones leave the list,
 * are counted as skipped, and are not read again. */
static fst_status precheck(importer *im, fst_writer *w, fst_import_stats *st)
{
    const fst_import_opts *opts = im->opts;
    bool *same = calloc(im->nnames ? im->nnames : 1, sizeof *same);
    if (!same)
        return fst__fail(FST_ENOMEM, "%s: checking the store", im->src);
    slot sl;
    memset(&sl, 0, sizeof sl);
    fst_status s = FST_OK;
    size_t nsame = 0;
    double last = now_s();
    for (size_t i = 0; i < im->nnames && s == FST_OK; i++) {
        bool present = false;
        s = fst_writer_has(w, im->names[i], &present);
        if (s || !present)
            continue;
        s = read_image(im, im->names[i], &sl);
        if (s == FST_OK && (s = fst_writer_check(w, &sl.img, &present)))
            s = writer_refused(im, &sl.img, s);
        if (s == FST_OK && present) {
            same[i] = true;
            nsame++;
        }
        double t = now_s();
        if (s == FST_OK && opts->progress && t - last >= 0.2) {
            last = t;
            if (opts->progress(nsame, im->nnames, 0, opts->progress_ctx))
                s = fst__fail(FST_EINTR, "%s: import interrupted", im->src);
        }
    }
    if (s == FST_OK) {
        size_t keep = 0;
        for (size_t i = 0; i < im->nnames; i++) {
            if (same[i])
                free(im->names[i]);
            else
                im->names[keep++] = im->names[i];
        }
        im->nnames = keep;
        im->done0 = nsame;
        st->images_skipped += nsame;
        if (keep == 0 && opts->progress)   /* run() has nothing to say */
            opts->progress(nsame, nsame, 0, opts->progress_ctx);
    }
    free(same);
    free(sl.desc);
    free(sl.kp);
    free(sl.sc);
    free(sl.sca);
    free(sl.ori);
    return s;
}

/* Hand every image to the writer, in order, producing them on a thread if
 * one can be started (and fst__import_threads), else inline. */
static fst_status run(importer *im, fst_writer *w, fst_import_stats *st)
{
    const fst_import_opts *opts = im->opts;
    ring r = {.im = im};
    pthread_t th;
    int threaded = 0;
    fst_status s = FST_OK;
    if (fst__import_threads && im->nnames > 1) {
        if (pthread_mutex_init(&r.mu, NULL) == 0) {
            if (pthread_cond_init(&r.cv, NULL) == 0) {
                if (pthread_create(&th, NULL, producer, &r) == 0)
                    threaded = 1;
                else
                    pthread_cond_destroy(&r.cv);
            }
            if (!threaded)
                pthread_mutex_destroy(&r.mu);
        }
    }

    double last = now_s();
    uint64_t bytes = 0;
    for (size_t i = 0; i < im->nnames; i++) {
        slot *sl = &r.slots[i % NSLOT];
        if (threaded) {
            pthread_mutex_lock(&r.mu);
            while (r.produced == i)
                pthread_cond_wait(&r.cv, &r.mu);
            pthread_mutex_unlock(&r.mu);
        } else {
            produce_one(im, i, sl);
        }
        if (sl->status) {
            s = fst__fail(sl->status, "%s", sl->detail);
            break;
        }
        int added = 0;
        s = fst_writer_put(w, &sl->img, &added);
        if (s) {
            s = writer_refused(im, &sl->img, s);
            break;
        }
        uint64_t pb = payload_of(&sl->img);
        bytes += pb;
        if (added) {
            st->images_added++;
            st->keypoints += sl->img.n;
            st->payload_bytes += pb;
        } else {
            st->images_skipped++;
        }
        if (threaded) {
            pthread_mutex_lock(&r.mu);
            r.consumed++;
            pthread_cond_broadcast(&r.cv);
            pthread_mutex_unlock(&r.mu);
        }
        double t = now_s();
        if (opts->progress && (t - last >= 0.2 || i + 1 == im->nnames)) {
            last = t;
            if (opts->progress(im->done0 + i + 1, im->done0 + im->nnames, bytes,
                               opts->progress_ctx)) {
                s = fst__fail(FST_EINTR, "%s: import interrupted after %zu of %zu images",
                              im->src, i + 1, im->nnames);
                break;
            }
        }
    }
    if (threaded) {
        pthread_mutex_lock(&r.mu);
        r.stop = 1;
        pthread_cond_broadcast(&r.cv);
        pthread_mutex_unlock(&r.mu);
        pthread_join(th, NULL);
        pthread_cond_destroy(&r.cv);
        pthread_mutex_destroy(&r.mu);
    }
    for (int k = 0; k < NSLOT; k++) {
        free(r.slots[k].desc);
        free(r.slots[k].kp);
        free(r.slots[k].sc);
        free(r.slots[k].sca);
        free(r.slots[k].ori);
    }
    return s;
}

/* Appending: learn the store's D and dtype first, so that a mismatch is
 * reported against the source image with a hint, before anything is written.
 * A store that cannot be opened is left for the writer to report. */
static void learn_store(importer *im, const char *dest)
{
    fst_store *st = NULL;
    fst_store_meta meta;
    if (fst_store_open(dest, 0, &st) == FST_OK && fst_store_meta_get(st, &meta) == FST_OK &&
        meta.n_images > 0) {
        im->store_d = meta.d;
        im->store_dtype = meta.dtype;
    }
    fst_store_close(st);
    fst_errclear();
}

/* The group walk alone, in a child process (fst__in_child): a damaged
 * file can make HDF5 1.10 itself crash while reading group metadata (a
 * local heap of a size read from the file; see tests/fuzz/known/). */
static fst_status prewalk_child(void *ctx, void *result)
{
    (void)result;
    importer im = {.src = ctx, .file = H5I_INVALID_HID};
    fst__h5_quiet q;
    fst__h5_quiet_begin(&q);
    fst_status s = fst__h5_open_read(im.src, &im.file, NULL, NULL);
    if (s == FST_OK)
        s = fst__h5_walk(im.file, im.src, list_group, &im);
    /* the child _exit()s: nothing to free, and HDF5 must not be closed
     * down if it is in a bad state */
    return s;
}

fst_status fst_import_h5(const char *src, const char *dest,
                         const fst_import_opts *opts, fst_import_stats *stats)
{
    static const fst_import_opts no_opts;
    if (!src || !dest)
        return fst__fail(FST_EINVAL, "fst_import_h5: NULL path");
    if (!opts)
        opts = &no_opts;
    if (opts->dtype && !fst_dtype_size((fst_dtype)opts->dtype))
        return fst__fail(FST_EINVAL, "fst_import_h5: unknown dtype %d", opts->dtype);

    fst__h5_quiet q;
    fst__h5_quiet_begin(&q);
    fst_status s;
    importer im = {.src = src, .file = H5I_INVALID_HID, .f16 = H5I_INVALID_HID,
                   .opts = opts};
    fst_writer *w = NULL;
    fst_import_stats st = {0};
    fst_source source = {.name = src};

    s = fst__in_child(prewalk_child, (void *)src, NULL, 0, "the group walk");
    if (s == FST_ECHILD)
        s = fst__failpre(FST_EFORMAT, "%s: damaged HDF5 file: reading its "
                         "groups crashed the HDF5 library: ", src);
    if (s)
        goto out;
    FST_TRY(fst__h5_open_read(src, &im.file, &source.size, &source.mtime));
    im.f16 = fst__h5_f16_create();
    if (im.f16 < 0) {
        s = FST_ENOMEM;
        goto out;
    }
    fst__h5_skipped skipped;
    FST_TRY(fst__h5_walk_ex(im.file, src, list_group, &im, &skipped));
    st.links_skipped = skipped.n;
    memcpy(st.link_example, skipped.example, sizeof st.link_example);
    if (im.nnames == 0) {
        s = fst__fail(FST_EFORMAT, "%s: no group holds both keypoints and descriptors "
                      "(not an hloc features file?)%s%s%s", src,
                      skipped.n ? " (soft or external links are not followed: " : "",
                      skipped.example, skipped.n ? ")" : "");
        goto out;
    }
    qsort(im.names, im.nnames, sizeof *im.names, cmp_name);

    if (opts->append)
        learn_store(&im, dest);
    FST_TRY(fst_writer_open(dest, opts->append ? FST_WRITE_APPEND : FST_WRITE_CREATE, &w));

    if (opts->progress && opts->progress(0, im.nnames, 0, opts->progress_ctx)) {
        s = fst__fail(FST_EINTR, "%s: import interrupted", src);
        goto out;
    }
    if (opts->append)
        FST_TRY(precheck(&im, w, &st));
    FST_TRY(run(&im, w, &st));
    st.datasets_ignored = im.ignored;
    memcpy(st.ignored_example, im.ignored_example, sizeof st.ignored_example);
    fst_writer *wf = w;
    w = NULL;
    FST_TRY(fst_writer_finish(wf, &source));
    if (stats)
        *stats = st;
out:
    fst_writer_abort(w);
    if (im.f16 >= 0)
        H5Tclose(im.f16);
    if (im.file >= 0)
        H5Fclose(im.file);
    fst__h5_clear();
    fst__h5_quiet_end(&q);
    for (size_t i = 0; i < im.nnames; i++)
        free(im.names[i]);
    free(im.names);
    free(im.raw);
    free(im.h16);
    return s;
}
