/* synth.c : a synthetic hloc features.h5 with planted correspondences
 * (fst_synth_h5).
 *
 * Design. Every image i draws a random permutation P_i of its K keypoints.
 * With m = floor(planted_fraction * K):
 *   - P_i[0..m)   receive a planted correspondence from image i-1,
 *   - P_i[m..2m)  give one to image i+1,
 * so the two sets are disjoint (hence planted_fraction <= 0.5) and no chain
 * of noisy copies links images two apart: the truth file is complete for
 * every pair, consecutive or not. The k-th planted correspondence of the
 * pair (i-1, i) is (P_{i-1}[m+k], P_i[k]); its descriptor in image i is the
 * one in image i-1 plus a gaussian vector of expected norm `noise`,
 * re-normalised; its position is the one in image i-1 moved by the pair's
 * shift (up to a tenth of the image) plus a pixel of jitter, clamped inside
 * the image. Everything else is random: positions uniform in the image,
 * descriptors uniform on the unit sphere (normalised gaussians), scores
 * uniform in (0, 1).
 *
 * Deterministic in the seed: each image has its own xoshiro256** stream
 * seeded from (seed, image index) through splitmix64, so the output does
 * not depend on anything but the options. Memory: two images (the previous
 * one is the source of the planted descriptors).
 */
#include "loader_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- random numbers ---- */

typedef struct rng {
    uint64_t s[4];
    float    spare;      /* second Box-Muller value */
    int      has_spare;
} rng;

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void rng_seed(rng *r, uint64_t seed, uint64_t stream, uint64_t purpose)
{
    uint64_t x = seed;
    uint64_t mix = splitmix64(&x) ^ (stream * 0xd1342543de82ef95ull) ^
                   (purpose * 0x2545f4914f6cdd1dull);
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&mix);
    r->has_spare = 0;
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static inline uint64_t rng_next(rng *r)   /* xoshiro256** */
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1) with 24 bits. */
static inline float rng_unif(rng *r) { return (float)(rng_next(r) >> 40) * 0x1p-24f; }

/* Uniform integer in [0, n), n > 0 (Lemire's multiply; bias < 2^-32). */
static inline uint32_t rng_below(rng *r, uint32_t n)
{
    return (uint32_t)(((rng_next(r) >> 32) * (uint64_t)n) >> 32);
}

/* Standard normal: Marsaglia's polar form of Box-Muller (no sin/cos; about
 * one pair in five is rejected); both values of a pair are used. */
static inline float rng_gauss(rng *r)
{
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    float u, v, q;
    do {
        uint64_t x = rng_next(r);
        u = (float)(x >> 40) * 0x1p-23f - 1.0f;                /* [-1, 1) */
        v = (float)(x & 0xffffffu) * 0x1p-23f - 1.0f;
        q = u * u + v * v;
    } while (q >= 1.0f || q == 0.0f);
    float f = sqrtf(-2.0f * logf(q) / q);
    r->spare = v * f;
    r->has_spare = 1;
    return u * f;
}

/* fst_f32_to_f16() with its normal-range path inline (the same arithmetic,
 * so the same bits); anything else goes to the real one. */
static inline uint16_t to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t ax = x & 0x7fffffffu;
    if (ax < 0x38800000u || ax >= 0x477ff000u)
        return fst_f32_to_f16(f);
    uint32_t r = ax - 0x38000000u;
    r += 0xfffu + ((r >> 13) & 1u);
    return (uint16_t)(((x >> 16) & 0x8000u) | (r >> 13));
}

static void normalize(float *v, uint32_t d)
{
    double ss = 0;
    for (uint32_t i = 0; i < d; i++)
        ss += (double)v[i] * v[i];
    float inv = ss > 0 ? (float)(1.0 / sqrt(ss)) : 0.0f;
    for (uint32_t i = 0; i < d; i++)
        v[i] *= inv;
}

/* ---- the generator ---- */

enum { P_IMAGE = 1, P_PERM = 2, P_PAIR = 3 };

typedef struct image {
    uint32_t *perm;       /* P_i */
    float    *kp;         /* K x 2 */
    float    *desc;       /* K x D, float32 before storage rounding */
    int64_t   size[2];
} image;

fst_synth_opts fst_synth_opts_default(void)
{
    fst_synth_opts o = {
        .n_images = 24,
        .n_keypoints = 1024,
        .d = 128,
        .dtype = FST_DTYPE_F16,
        .n_pairs = 0,
        .planted_fraction = 0.5f,
        .noise = 0.05f,
        .seed = 1,
        .prefix = "synth/img",
    };
    return o;
}

static void image_name(char *buf, size_t cap, const char *prefix, uint32_t i, uint32_t n)
{
    /* Zero-padded to the width of the largest index, at least 4 digits, so
     * that names sort in image order. */
    char num[16], last[16];
    int len = snprintf(num, sizeof num, "%u", i);
    int width = snprintf(last, sizeof last, "%u", n > 0 ? n - 1 : 0);
    if (width < 4)
        width = 4;
    char pad[16] = "0000000000";
    pad[width > len ? width - len : 0] = '\0';
    snprintf(buf, cap, "%s%s%s.jpg", prefix, pad, num);
}

static void make_perm(uint64_t seed, uint32_t i, uint32_t k, uint32_t *perm)
{
    rng r;
    rng_seed(&r, seed, i, P_PERM);
    for (uint32_t j = 0; j < k; j++)
        perm[j] = j;
    for (uint32_t j = k; j > 1; j--) {           /* Fisher-Yates */
        uint32_t t = rng_below(&r, j);
        uint32_t tmp = perm[j - 1];
        perm[j - 1] = perm[t];
        perm[t] = tmp;
    }
}

/* Fill image i; `prev` is image i-1 (NULL for the first). */
/* DoG-style `scales` and `oris` (N,), in the dtype of the scores: derived
 * from the scores (no draw from the generator, so every other dataset is
 * the same with or without them). */
static fst_status write_scales_oris(hid_t g, float *scores, uint32_t k, bool half,
                                    uint16_t *h16, hid_t ft, hid_t mt,
                                    const hsize_t *sd, const char *where)
{
    static const char *names[2] = {"scales", "oris"};
    fst_status s = FST_OK;
    float *tmp = malloc(((size_t)k + 1) * sizeof *tmp);
    if (!tmp)
        return fst__fail(FST_ENOMEM, "%s", where);
    for (int w = 0; w < 2 && !s; w++) {
        for (uint32_t j = 0; j < k; j++)
            tmp[j] = w == 0 ? 1.6f + 8.0f * scores[j]
                            : (scores[j] * 2.0f - 1.0f) * 3.14159265f;
        const void *src = tmp;
        if (half) {
            for (uint32_t j = 0; j < k; j++)
                h16[j] = to_f16(tmp[j]);
            src = h16;
        }
        s = fst__h5_write(g, names[w], ft, mt, 1, sd, src, where, NULL);
    }
    free(tmp);
    return s;
}

static void make_image(const fst_synth_opts *o, uint32_t i, const image *prev, image *im,
                       float *scores)
{
    uint32_t k = o->n_keypoints, d = o->d;
    uint32_t m = (uint32_t)floor((double)o->planted_fraction * k);
    rng r;
    rng_seed(&r, o->seed, i, P_IMAGE);
    static const int64_t widths[] = {640, 800, 1024, 1280};
    im->size[0] = widths[rng_below(&r, 4)];
    im->size[1] = im->size[0] * 3 / 4;
    float w = (float)im->size[0], h = (float)im->size[1];

    make_perm(o->seed, i, k, im->perm);
    for (uint32_t j = 0; j < k; j++) {
        /* Inside [0, size - 1]: the pixel centres of the image. */
        im->kp[2 * j] = rng_unif(&r) * (w - 1);
        im->kp[2 * j + 1] = rng_unif(&r) * (h - 1);
        scores[j] = 0.001f + 0.998f * rng_unif(&r);
        float *v = im->desc + (size_t)j * d;
        for (uint32_t t = 0; t < d; t++)
            v[t] = rng_gauss(&r);
        normalize(v, d);
    }
    if (!prev || m == 0)
        return;

    rng pr;
    rng_seed(&pr, o->seed, i, P_PAIR);
    float dx = (rng_unif(&pr) - 0.5f) * 0.2f * w, dy = (rng_unif(&pr) - 0.5f) * 0.2f * h;
    float sigma = o->noise / sqrtf((float)d);
    for (uint32_t c = 0; c < m; c++) {
        uint32_t src = prev->perm[m + c], dst = im->perm[c];
        float x = prev->kp[2 * src] + dx + rng_gauss(&pr);
        float y = prev->kp[2 * src + 1] + dy + rng_gauss(&pr);
        im->kp[2 * dst] = fminf(fmaxf(x, 0.0f), w - 1);
        im->kp[2 * dst + 1] = fminf(fmaxf(y, 0.0f), h - 1);
        const float *a = prev->desc + (size_t)src * d;
        float *v = im->desc + (size_t)dst * d;
        for (uint32_t t = 0; t < d; t++)
            v[t] = a[t] + sigma * rng_gauss(&pr);
        normalize(v, d);
    }
}

static fst_status check_opts(const fst_synth_opts *o, uint64_t *n_pairs)
{
    if (o->n_images < 1)
        return fst__fail(FST_EINVAL, "synth: need at least 1 image");
    if (o->d < 1 || o->d > 65536)
        return fst__fail(FST_EINVAL, "synth: descriptor dimension %u (1..65536)", o->d);
    if (!fst_dtype_size(o->dtype))
        return fst__fail(FST_EINVAL, "synth: unknown dtype %d", (int)o->dtype);
    if (!(o->planted_fraction >= 0.0f && o->planted_fraction <= 0.5f))
        return fst__fail(FST_EINVAL, "synth: planted fraction %g outside [0, 0.5] (each "
                         "image shares disjoint keypoints with the previous and the next)",
                         (double)o->planted_fraction);
    if (!(o->noise >= 0.0f) || !isfinite(o->noise))
        return fst__fail(FST_EINVAL, "synth: noise %g must be >= 0", (double)o->noise);
    if (!o->prefix || !o->prefix[0] || o->prefix[0] == '/' || strstr(o->prefix, "//"))
        return fst__fail(FST_EINVAL, "synth: image name prefix '%s' (non-empty, relative, "
                         "no '//')", o->prefix ? o->prefix : "");
    /* The names go into a pairs file, whose fields are split at blanks
     * (hloc: str.split()): a blank or control byte would make a file that
     * neither `featstore match` nor hloc reads. */
    for (const unsigned char *c = (const unsigned char *)o->prefix; *c; c++)
        if (*c <= ' ' || *c == 0x7f)
            return fst__fail(FST_EINVAL, "synth: image name prefix '%s' has a %s at byte %zu: "
                             "pairs files separate names by blanks, so names cannot hold "
                             "one", o->prefix, *c == ' ' ? "space" : "blank or control character",
                             (size_t)(c - (const unsigned char *)o->prefix));
    if ((uint64_t)o->n_keypoints * o->d * fst_dtype_size(o->dtype) > 0xffff0000ull)
        return fst__fail(FST_EINVAL, "synth: %u keypoints x %u dimensions: more than the "
                         "4 GiB a store record holds", o->n_keypoints, o->d);
    uint64_t n = o->n_images;
    uint64_t all = n * (n - 1) / 2;
    uint64_t want = o->n_pairs ? o->n_pairs : n - 1;
    if (want > all)
        return fst__fail(FST_EINVAL, "synth: %llu pairs asked, but %llu images have only "
                         "%llu distinct pairs", (unsigned long long)want,
                         (unsigned long long)n, (unsigned long long)all);
    *n_pairs = want;
    return FST_OK;
}

static fst_status write_pairs(const fst_synth_opts *o, uint64_t n_pairs, FILE *fp,
                              const char *path)
{
    /* Consecutive pairs first (they hold the planted correspondences), then
     * pairs two apart, three apart... until n_pairs. */
    char a[600], b[600];
    uint64_t written = 0;
    for (uint32_t gap = 1; gap < o->n_images && written < n_pairs; gap++)
        for (uint32_t i = 0; i + gap < o->n_images && written < n_pairs; i++) {
            image_name(a, sizeof a, o->prefix, i, o->n_images);
            image_name(b, sizeof b, o->prefix, i + gap, o->n_images);
            if (fprintf(fp, "%s %s\n", a, b) < 0)
                return fst__fail(FST_EIO, "%s: write failed", path);
            written++;
        }
    return FST_OK;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

fst_status fst_synth_h5(const char *h5_path, const char *pairs_path,
                        const char *truth_path, const fst_synth_opts *opts,
                        fst_progress_cb *progress, void *progress_ctx)
{
    fst_synth_opts o = opts ? *opts : fst_synth_opts_default();
    if (!h5_path)
        return fst__fail(FST_EINVAL, "synth: no output path");
    uint64_t n_pairs = 0;
    fst_status s = check_opts(&o, &n_pairs);
    if (s)
        return s;

    fst__h5_quiet q;
    fst__h5_quiet_begin(&q);
    fst__out h5 = {.h5 = H5I_INVALID_HID}, pf = {.h5 = H5I_INVALID_HID},
             tf = {.h5 = H5I_INVALID_HID};
    hid_t f16 = H5I_INVALID_HID, lcpl = H5I_INVALID_HID;
    uint32_t k = o.n_keypoints, d = o.d;
    uint32_t m = (uint32_t)floor((double)o.planted_fraction * k);
    image im[2] = {{0}};
    float *scores = NULL;
    void *buf = NULL;         /* D x K descriptors, or K x 2 / K as float16 */
    uint16_t *h16 = NULL, *rowmajor = NULL;
    size_t es = fst_dtype_size(o.dtype);

    /* Refuse any existing output before doing any work. */
    FST_TRY(fst__out_h5(h5_path, &h5));
    if (pairs_path)
        FST_TRY(fst__out_text(pairs_path, &pf));
    if (truth_path)
        FST_TRY(fst__out_text(truth_path, &tf));

    for (int t = 0; t < 2; t++) {
        im[t].perm = malloc(((size_t)k + 1) * sizeof *im[t].perm);
        im[t].kp = malloc(((size_t)k * 2 + 1) * sizeof *im[t].kp);
        im[t].desc = malloc(((size_t)k * d + 1) * sizeof *im[t].desc);
        if (!im[t].perm || !im[t].kp || !im[t].desc) {
            s = fst__fail(FST_ENOMEM, "synth: %u keypoints x %u dimensions", k, d);
            goto out;
        }
    }
    scores = malloc(((size_t)k + 1) * sizeof *scores);
    buf = malloc((size_t)k * d * es + 1);
    h16 = malloc(((size_t)k * 2 + 1) * sizeof *h16);
    rowmajor = malloc(((size_t)k * d + 1) * sizeof *rowmajor);
    if (!scores || !buf || !h16 || !rowmajor) {
        s = fst__fail(FST_ENOMEM, "synth: %u keypoints x %u dimensions", k, d);
        goto out;
    }
    f16 = fst__h5_f16_create();
    lcpl = H5Pcreate(H5P_LINK_CREATE);
    if (f16 < 0 || lcpl < 0 || H5Pset_create_intermediate_group(lcpl, 1) < 0) {
        s = fst__h5_fail(FST_ENOMEM, "%s: setting up HDF5 types", h5_path);
        goto out;
    }

    /* As hloc with as_half (its default): float16 for every float array. */
    int half = o.dtype == FST_DTYPE_F16;
    hid_t ft = half ? f16 : H5T_IEEE_F32LE, mt = half ? f16 : H5T_NATIVE_FLOAT;
    double last = now_s();
    uint64_t bytes = 0;
    char name[600], prevname[600], where[700];
    for (uint32_t i = 0; i < o.n_images; i++) {
        image *cur = &im[i & 1], *prev = i ? &im[(i - 1) & 1] : NULL;
        make_image(&o, i, prev, cur, scores);
        image_name(name, sizeof name, o.prefix, i, o.n_images);
        snprintf(where, sizeof where, "%s: /%s", h5_path, name);

        hid_t g = H5Gcreate2(h5.h5, name, lcpl, H5P_DEFAULT, H5P_DEFAULT);
        if (g < 0) {
            s = fst__h5_fail(FST_EIO, "%s: cannot create group", where);
            goto out;
        }
        hid_t kpd = H5I_INVALID_HID;
        hsize_t kd[2] = {k, 2}, sd[1] = {k}, dd[2] = {d, k}, id[1] = {2};
        float unc = 1.0f;

        const void *kpsrc = cur->kp;
        if (half) {
            for (size_t j = 0; j < (size_t)k * 2; j++)
                h16[j] = to_f16(cur->kp[j]);
            kpsrc = h16;
        }
        s = fst__h5_write(g, "keypoints", ft, mt, 2, kd, kpsrc, where, &kpd);
        if (!s)
            s = fst__h5_attr_write_scalar(kpd, "uncertainty", H5T_IEEE_F32LE,
                                          H5T_NATIVE_FLOAT, &unc, where);
        if (kpd >= 0)
            H5Dclose(kpd);

        /* Descriptors D x K (keypoint j is column j): convert row-major,
         * then one cache-friendly transpose. */
        if (!s) {
            if (half) {
                for (size_t j = 0; j < (size_t)k * d; j++)
                    rowmajor[j] = to_f16(cur->desc[j]);
                fst__transpose16(rowmajor, buf, k, d);
            } else {
                fst__transpose32((const uint32_t *)cur->desc, buf, k, d);
            }
            s = fst__h5_write(g, "descriptors", ft, mt, 2, dd, buf, where, NULL);
        }
        if (!s) {
            const void *ssrc = scores;
            if (half) {
                for (uint32_t j = 0; j < k; j++)
                    h16[j] = to_f16(scores[j]);
                ssrc = h16;
            }
            s = fst__h5_write(g, "scores", ft, mt, 1, sd, ssrc, where, NULL);
        }
        if (!s && o.scales_oris)
            s = write_scales_oris(g, scores, k, half, h16, ft, mt, sd, where);
        if (!s)
            s = fst__h5_write(g, "image_size", H5T_STD_I64LE, H5T_NATIVE_INT64, 1, id,
                              cur->size, where, NULL);
        H5Gclose(g);
        if (s)
            goto out;

        if (tf.fp && prev)
            for (uint32_t c = 0; c < m; c++)
                if (fprintf(tf.fp, "%s %s %u %u\n", prevname, name, prev->perm[m + c],
                            cur->perm[c]) < 0) {
                    s = fst__fail(FST_EIO, "%s: write failed", truth_path);
                    goto out;
                }
        memcpy(prevname, name, sizeof name);

        bytes += (uint64_t)k * (2 * es + es + (uint64_t)d * es);
        double t = now_s();
        if (progress && (t - last >= 0.2 || i + 1 == o.n_images)) {
            last = t;
            if (progress(i + 1, o.n_images, bytes, progress_ctx)) {
                s = fst__fail(FST_EINTR, "%s: synth interrupted", h5_path);
                goto out;
            }
        }
    }
    if (pf.fp)
        FST_TRY(write_pairs(&o, n_pairs, pf.fp, pairs_path));

    /* The features file last: with it in place, the others are too. */
    if (pairs_path)
        FST_TRY(fst__out_commit(&pf));
    if (truth_path)
        FST_TRY(fst__out_commit(&tf));
    FST_TRY(fst__out_commit(&h5));
out:
    fst__out_discard(&h5);
    fst__out_discard(&pf);
    fst__out_discard(&tf);
    if (f16 >= 0)
        H5Tclose(f16);
    if (lcpl >= 0)
        H5Pclose(lcpl);
    fst__h5_clear();
    fst__h5_quiet_end(&q);
    for (int t = 0; t < 2; t++) {
        free(im[t].perm);
        free(im[t].kp);
        free(im[t].desc);
    }
    free(scores);
    free(buf);
    free(h16);
    free(rowmajor);
    return s;
}
