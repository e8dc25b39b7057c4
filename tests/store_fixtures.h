/* store_fixtures.h : fixtures shared by the store module's test programs
 * (test_format.c, test_writer.c, test_store.c): a mkdtemp directory under
 * /tmp removed at exit, test images and stores, raw records, corruptions.
 * Include after fst_test.h. Each program uses some of these. */
#ifndef FST_STORE_FIXTURES_H
#define FST_STORE_FIXTURES_H

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wunused-variable"
#pragma GCC diagnostic ignored "-Wunused-const-variable"
#include "fst_config.h"
#include "fst_format.h"
#include "fst_store.h"
#include "store_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

/* ---- fixtures ---- */

static char g_dir[64];
static pid_t g_main_pid;

static int rm_entry(const char *p, const struct stat *sb, int flag,
                    struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

static void cleanup_dir(void)
{
    if (getenv("FST_KEEP_TMP"))         /* to look at the fixtures */
        printf("# fixtures kept in %s\n", g_dir);
    else if (getpid() == g_main_pid && g_dir[0])
        nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

__attribute__((constructor)) static void setup_dir(void)
{
    g_main_pid = getpid();
    snprintf(g_dir, sizeof g_dir, "/tmp/fst_test_store.XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        exit(1);
    }
    atexit(cleanup_dir);
}

/* A fresh path in the fixture directory (nothing there yet). */
static const char *tpath(const char *name)
{
    static char buf[8][512];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 512, "%s/%s", g_dir, name);
    return p;
}

static bool exists(const char *p)
{
    struct stat sb;
    return lstat(p, &sb) == 0;
}

/* Deterministic pseudo-random bits. */
static uint32_t mix(uint32_t x)
{
    x ^= x >> 16; x *= 0x7feb352du;
    x ^= x >> 15; x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

typedef struct timg {
    fst_image img;
    char      name[1024];
    float    *kp, *sc;
    void     *desc;
    float    *sca, *ori;            /* timg_add_so() */
} timg;

static void timg_make(timg *t, const char *name, uint32_t n, uint32_t d,
                      fst_dtype dt, bool scores, uint32_t seed)
{
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->kp = malloc((size_t)n * 2 * sizeof(float) + 1);
    t->sc = scores ? malloc((size_t)n * sizeof(float) + 1) : NULL;
    size_t es = fst_dtype_size(dt);
    t->desc = malloc((size_t)n * d * es + 1);
    for (uint32_t i = 0; i < 2 * n; i++)
        t->kp[i] = (float)(mix(seed * 7919u + i) % 4000) * 0.25f;
    for (uint32_t i = 0; scores && i < n; i++)
        t->sc[i] = (float)(mix(seed * 31u + i + 77) % 1000) / 1000.0f;
    for (size_t i = 0; i < (size_t)n * d; i++) {
        float f = ((float)(mix(seed * 104729u + (uint32_t)i) % 20001) -
                   10000.0f) / 10000.0f;
        if (dt == FST_DTYPE_F32)
            ((float *)t->desc)[i] = f;
        else
            ((uint16_t *)t->desc)[i] = fst_f32_to_f16(f);
    }
    t->img.name = t->name;
    t->img.n = n;
    t->img.d = d;
    t->img.dtype = dt;
    t->img.flags = (scores ? FST_VIEW_HAS_SCORES : 0) |
                   FST_VIEW_HAS_IMAGE_SIZE | (seed & 1 ? FST_VIEW_KEYPOINTS_F16
                                                       : 0);
    t->img.image_size[0] = 640 + seed;
    t->img.image_size[1] = 480 + 2 * (int64_t)seed;
    t->img.uncertainty = seed % 3 == 0 ? NAN : 1.0f + (float)seed / 8.0f;
    t->img.keypoints = t->kp;
    t->img.scores = t->sc;
    t->img.desc = t->desc;
}

/* Give t DoG-style scales and/or oris (format 1.2), flagged float16 in
 * the source when f16 (the values stay float32 in the record). */
static void timg_add_so(timg *t, bool scales, bool oris, bool f16)
{
    uint32_t n = t->img.n;
    if (scales) {
        t->sca = malloc((size_t)n * sizeof(float) + 1);
        for (uint32_t i = 0; i < n; i++)
            t->sca[i] = 1.0f + (float)(mix(n * 13u + i) % 500) / 16.0f;
        t->img.scales = t->sca;
        t->img.flags |= FST_VIEW_HAS_SCALES | (f16 ? FST_VIEW_SCALES_F16 : 0);
    }
    if (oris) {
        t->ori = malloc((size_t)n * sizeof(float) + 1);
        for (uint32_t i = 0; i < n; i++)
            t->ori[i] = ((float)(mix(n * 17u + i + 5) % 6283) - 3141.0f) / 1000.0f;
        t->img.oris = t->ori;
        t->img.flags |= FST_VIEW_HAS_ORIS | (f16 ? FST_VIEW_ORIS_F16 : 0);
    }
}

static void timg_free(timg *t)
{
    free(t->kp);
    free(t->sc);
    free(t->desc);
    free(t->sca);
    free(t->ori);
    t->kp = t->sc = t->sca = t->ori = NULL;
    t->desc = NULL;
}

/* The view holds exactly what the image held. */
static void assert_view_is(const fst_view *v, const fst_image *img)
{
    ASSERT_STREQ(v->name, img->name);
    ASSERT_EQ(v->n, img->n);
    ASSERT_EQ(v->d, img->d);
    ASSERT_EQ(v->dtype, img->dtype);
    uint32_t want_flags = img->flags | (img->scores ? FST_VIEW_HAS_SCORES : 0);
    ASSERT_EQ(v->flags, want_flags);
    ASSERT_EQ(v->image_size[0], img->image_size[0]);
    ASSERT_EQ(v->image_size[1], img->image_size[1]);
    if (isnan(img->uncertainty))
        ASSERT_TRUE(isnan(v->uncertainty));
    else
        ASSERT_TRUE(v->uncertainty == img->uncertainty);
    ASSERT_MEMEQ(v->keypoints, img->keypoints, (size_t)img->n * 8);
    if (img->scores) {
        ASSERT_TRUE(v->scores != NULL);
        ASSERT_MEMEQ(v->scores, img->scores, (size_t)img->n * 4);
    } else {
        ASSERT_TRUE(v->scores == NULL);
    }
    if (img->scales) {
        ASSERT_TRUE(v->scales != NULL);
        ASSERT_MEMEQ(v->scales, img->scales, (size_t)img->n * 4);
    } else {
        ASSERT_TRUE(v->scales == NULL);
    }
    if (img->oris) {
        ASSERT_TRUE(v->oris != NULL);
        ASSERT_MEMEQ(v->oris, img->oris, (size_t)img->n * 4);
    } else {
        ASSERT_TRUE(v->oris == NULL);
    }
    ASSERT_MEMEQ(v->desc, img->desc,
                 (size_t)img->n * img->d * fst_dtype_size(img->dtype));
}

/* Standard image i of a fixture store: name img_%04u, n varying with i
 * (0 included), scores on even i. */
static void std_image(timg *t, unsigned i, uint32_t d, fst_dtype dt)
{
    char name[64];
    snprintf(name, sizeof name, "img_%04u", i);
    uint32_t n = (i % 5 == 1) ? 0 : 10 + (mix(i) % 90);
    timg_make(t, name, n, d, dt, i % 2 == 0, i + 1);
}

static void make_store(const char *path, unsigned count, uint32_t d,
                       fst_dtype dt)
{
    fst_writer *w;
    ASSERT_OK(fst_writer_open(path, FST_WRITE_CREATE, &w));
    for (unsigned i = 0; i < count; i++) {
        timg t;
        std_image(&t, i, d, dt);
        int added = -1;
        fst_status s = fst_writer_put(w, &t.img, &added);
        timg_free(&t);
        ASSERT_OK(s);
        ASSERT_EQ(added, 1);
    }
    fst_source src = { "features.h5", 12345, 1700000000 };
    ASSERT_OK(fst_writer_finish(w, &src));
}

static unsigned count_images(fst_store *st)
{
    fst_reader *rd;
    fst_view v;
    unsigned c = 0;
    fst_status s;
    ASSERT_OK(fst_reader_begin(st, &rd));
    while ((s = fst_reader_next(rd, &v)) == FST_OK)
        c++;
    fst_reader_end(rd);
    ASSERT_STATUS(s, FST_DONE);
    return c;
}

typedef struct badlist {
    unsigned n;
    char     names[8][600];
    fst_status st[8];
} badlist;

static void on_bad(const char *name, fst_status s, const char *detail,
                   void *ctx)
{
    (void)detail;
    badlist *b = ctx;
    if (b->n < 8) {
        snprintf(b->names[b->n], sizeof b->names[0], "%s", name);
        b->st[b->n] = s;
    }
    b->n++;
}

static void assert_verify_clean(const char *path, uint64_t want_checked)
{
    fst_store *st;
    ASSERT_OK(fst_store_open(path, 0, &st));
    uint64_t checked = 0, nbad = 99;
    badlist bl = { 0 };
    fst_status s = fst_store_verify(st, on_bad, &bl, &checked, &nbad);
    fst_store_close(st);
    ASSERT_OK(s);
    ASSERT_EQ(nbad, 0);
    ASSERT_EQ(bl.n, 0);
    ASSERT_EQ(checked, want_checked);
}

/* Write whole buffers through pipes (children and parent). */
static bool write_full(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t k = write(fd, c, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return false;
        c += k;
        n -= (size_t)k;
    }
    return true;
}

static bool read_full(int fd, void *p, size_t n)
{
    char *c = p;
    while (n) {
        ssize_t k = read(fd, c, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return false;
        c += k;
        n -= (size_t)k;
    }
    return true;
}

/* A pid that certainly belonged to a process that is now gone. */
static pid_t dead_pid(void)
{
    pid_t p = fork();
    if (p == 0)
        _exit(0);
    waitpid(p, NULL, 0);
    return p;
}

/* In a forked child: fail by exit code, never by longjmp into the
 * harness (the child would go on running the parent's tests). */
#define CHILD_CHECK(c, code) do { if (!(c)) _exit(code); } while (0)

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* A record encoded in a buffer of exactly its size (ASan sees any read
 * past the end), placed 16 bytes past a 64-byte boundary like in the map. */
typedef struct rawrec {
    unsigned char *mem;
    unsigned char *v;
    size_t len;
} rawrec;

static void rawrec_make(rawrec *r, const fst_image *img)
{
    r->len = fst__record_size(img, NULL);
    ASSERT_TRUE(r->len >= FST_REC_MIN_SIZE);
    r->mem = aligned_alloc(64, (r->len + 16 + 63) / 64 * 64);
    ASSERT_TRUE(r->mem != NULL);
    r->v = r->mem + 16;
    ASSERT_OK(fst__record_encode(img, 1, r->v, r->len));
}

static void le32put(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void le64put(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint64_t le64get(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}
static uint32_t le32get(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

/* Decode a copy of v[0..len) in a malloc'd buffer of exactly len bytes. */
static fst_status decode_exact(const void *v, size_t len, const char *key,
                               unsigned how, fst_view *out)
{
    unsigned char *b = malloc(len ? len : 1);
    memcpy(b, v, len);
    fst_view tmp;
    fst_status s = fst__record_decode(b, len, key, key ? strlen(key) : 0, how,
                                      &tmp, NULL);
    if (s == FST_OK) {
        /* every block lies inside the buffer */
        const unsigned char *lo = b, *hi = b + len;
        size_t es = fst_dtype_size(tmp.dtype);
        ASSERT_TRUE((const unsigned char *)tmp.keypoints >= lo &&
                    (const unsigned char *)tmp.keypoints + (size_t)tmp.n * 8
                        <= hi);
        ASSERT_TRUE((const unsigned char *)tmp.desc >= lo &&
                    (const unsigned char *)tmp.desc +
                        (size_t)tmp.n * tmp.d * es <= hi);
        if (tmp.scores)
            ASSERT_TRUE((const unsigned char *)tmp.scores >= lo &&
                        (const unsigned char *)tmp.scores + (size_t)tmp.n * 4
                            <= hi);
        if (tmp.scales)
            ASSERT_TRUE((const unsigned char *)tmp.scales >= lo &&
                        (const unsigned char *)tmp.scales + (size_t)tmp.n * 4
                            <= hi);
        if (tmp.oris)
            ASSERT_TRUE((const unsigned char *)tmp.oris >= lo &&
                        (const unsigned char *)tmp.oris + (size_t)tmp.n * 4
                            <= hi);
        if (out)
            *out = tmp;
    }
    free(b);
    return s;
}

/* One hand-made corruption of a valid record. */
typedef struct corruption {
    const char *what;
    fst_status  want;
    const char *detail;
    void (*apply)(unsigned char *v, size_t len);
} corruption;

static void c_magic(unsigned char *v, size_t len) { (void)len; v[0] = 'X'; }

static void c_major(unsigned char *v, size_t len) { (void)len; v[4] = 2; }

static void c_major0(unsigned char *v, size_t len) { (void)len; v[4] = 0; }

static void c_n_big(unsigned char *v, size_t len)
{
    (void)len;
    le32put(v + FST_REC_OFF_N, le32get(v + FST_REC_OFF_N) + 1000);
}

static void c_n_consistent_huge(unsigned char *v, size_t len)
{
    /* n, kp_len and desc_len agree with each other, but not with the value */
    (void)len;
    uint32_t n = 1000000, d = le32get(v + FST_REC_OFF_D);
    le32put(v + FST_REC_OFF_N, n);
    le64put(v + FST_REC_OFF_KP + 8, (uint64_t)n * 8);
    le64put(v + FST_REC_OFF_SCORES + 8, (uint64_t)n * 4);
    le64put(v + FST_REC_OFF_DESC + 8, (uint64_t)n * d * 4);
}

static void c_nd_overflow(unsigned char *v, size_t len)
{
    (void)len;
    le32put(v + FST_REC_OFF_N, 0xffffffffu);
    le32put(v + FST_REC_OFF_D, 0xffffffffu);
    le64put(v + FST_REC_OFF_DESC + 8, 0);
    le64put(v + FST_REC_OFF_KP + 8, 0xffffffffull * 8);
}

static void c_desc_off_past(unsigned char *v, size_t len)
{
    le64put(v + FST_REC_OFF_DESC, len + 64);
}

static void c_desc_off_wrap(unsigned char *v, size_t len)
{
    (void)len;
    le64put(v + FST_REC_OFF_DESC, UINT64_MAX - 8);
}

static void c_payload_huge(unsigned char *v, size_t len)
{
    le64put(v + FST_REC_OFF_PAYLOAD_LEN, len);
}

static void c_header_size(unsigned char *v, size_t len)
{
    le32put(v + FST_REC_OFF_HEADER_SIZE, (uint32_t)len + 1);
}

static void c_name_nonul(unsigned char *v, size_t len)
{
    (void)len;
    uint32_t off = le32get(v + FST_REC_OFF_NAME);
    uint32_t nl = le32get(v + FST_REC_OFF_NAME + 4);
    v[off + nl - 1] = 'X';
}

static void c_name_len_huge(unsigned char *v, size_t len)
{
    (void)len;
    le32put(v + FST_REC_OFF_NAME + 4, 0xfffffff0u);
}

static void c_name_other(unsigned char *v, size_t len)
{
    (void)len;
    uint32_t off = le32get(v + FST_REC_OFF_NAME);
    v[off] = 'Q';                      /* "bad" -> "Qad": not the key */
}

static void c_dtype(unsigned char *v, size_t len)
{
    (void)len;
    le32put(v + FST_REC_OFF_DTYPE, 7);
}

static void c_scores_flag(unsigned char *v, size_t len)
{
    (void)len;                         /* claims no scores, has a block */
    le32put(v + FST_REC_OFF_FLAGS, le32get(v + FST_REC_OFF_FLAGS) &
                                       ~(uint32_t)FST_VIEW_HAS_SCORES);
}

static const corruption corruptions[] = {
    { "bad magic", FST_ECORRUPT, "magic", c_magic },
    { "newer major", FST_EVERSION, "format 2.0", c_major },
    { "major 0", FST_ECORRUPT, "format 0", c_major0 },
    { "n too large", FST_ECORRUPT, "needs", c_n_big },
    { "n huge, lengths agree", FST_ECORRUPT, "outside", c_n_consistent_huge },
    { "n*d overflow", FST_ECORRUPT, "", c_nd_overflow },
    { "desc offset past end", FST_ECORRUPT, "descriptor block", c_desc_off_past },
    { "desc offset wraps", FST_ECORRUPT, "descriptor block", c_desc_off_wrap },
    { "payload past end", FST_ECORRUPT, "payload", c_payload_huge },
    { "header size", FST_ECORRUPT, "header size", c_header_size },
    { "name without NUL", FST_ECORRUPT, "NUL", c_name_nonul },
    { "name length huge", FST_ECORRUPT, "name block", c_name_len_huge },
    { "name is not the key", FST_ECORRUPT, "not its key", c_name_other },
    { "unknown dtype", FST_ECORRUPT, "dtype", c_dtype },
    { "scores flag", FST_ECORRUPT, "score", c_scores_flag },
};

/* ---- descriptors given d x n ---- */

/* A d x n copy of t's n x d descriptors. */
static void *to_dn(const timg *t)
{
    size_t n = t->img.n, d = t->img.d, es = fst_dtype_size(t->img.dtype);
    unsigned char *dn = malloc(n * d * es + 1);
    const unsigned char *nd = t->desc;
    for (size_t k = 0; k < n; k++)
        for (size_t j = 0; j < d; j++)
            memcpy(dn + (j * n + k) * es, nd + (k * d + j) * es, es);
    return dn;
}

#pragma GCC diagnostic pop

#endif
