/* format.c : encode and decode the on-disk record (fst_format.h). */
#include "store_impl.h"

#include "fst_config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <xxhash.h>

/* Fixed-width little-endian loads and stores: the header may sit at any
 * address (a hand-made value need not be aligned) and the format is
 * little-endian whatever the host. */
static uint16_t ld16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (unsigned)p[1] << 8);
}
static uint32_t ld32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}
static uint64_t ld64(const unsigned char *p)
{
    return (uint64_t)ld32(p) | (uint64_t)ld32(p + 4) << 32;
}
static void st16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}
static void st32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static void st64(unsigned char *p, uint64_t v)
{
    st32(p, (uint32_t)v);
    st32(p + 4, (uint32_t)(v >> 32));
}
static float ldf32(const unsigned char *p)
{
    uint32_t b = ld32(p);
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}
static void stf32(unsigned char *p, float f)
{
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    st32(p, b);
}

/* The smallest offset >= off that lands on a 64-byte boundary in the map,
 * given that the value itself starts FST_REC_MAP_SKEW past one. */
static uint64_t place(uint64_t off)
{
    uint64_t r = off % FST_REC_ALIGN;
    return off + (FST_REC_BLOCK_PHASE + FST_REC_ALIGN - r) % FST_REC_ALIGN;
}

/* n * d * size, or false on overflow. */
static bool desc_bytes(uint64_t n, uint64_t d, uint64_t size, uint64_t *out)
{
    if (d != 0 && n > UINT64_MAX / d)
        return false;
    uint64_t nd = n * d;
    if (size != 0 && nd > UINT64_MAX / size)
        return false;
    *out = nd * size;
    return true;
}

static bool has_scores(const fst_image *img)
{
    return img->scores != NULL || (img->flags & FST_VIEW_HAS_SCORES);
}

static bool has_scales(const fst_image *img)
{
    return img->scales != NULL || (img->flags & FST_VIEW_HAS_SCALES);
}

static bool has_oris(const fst_image *img)
{
    return img->oris != NULL || (img->flags & FST_VIEW_HAS_ORIS);
}

/* The record's flags: the image's, with the HAS_ bits saying which blocks
 * the record really holds. */
static uint32_t record_flags(const fst_image *img)
{
    uint32_t flags = img->flags & ~(uint32_t)(FST_VIEW_HAS_SCORES |
                                              FST_VIEW_HAS_SCALES |
                                              FST_VIEW_HAS_ORIS);
    if (has_scores(img))
        flags |= FST_VIEW_HAS_SCORES;
    if (has_scales(img))
        flags |= FST_VIEW_HAS_SCALES;
    if (has_oris(img))
        flags |= FST_VIEW_HAS_ORIS;
    return flags;
}

typedef struct layout {
    uint64_t header, name_off, name_len, kp_off, kp_len, sc_off, sc_len,
             sca_off, sca_len, ori_off, ori_len,
             desc_off, desc_len, payload_end, value_len;
} layout;

static bool plan(const fst_image *img, layout *L)
{
    size_t dsize = fst_dtype_size(img->dtype);
    memset(L, 0, sizeof *L);
    /* Only a record with scales or oris has the 1.2 header: every other
     * record stays byte for byte what a 1.0 writer wrote. */
    L->header = has_scales(img) || has_oris(img) ? FST_REC_HEADER_SIZE_SO
                                                 : FST_REC_HEADER_SIZE;
    L->name_off = L->header;
    L->name_len = (img->name ? strlen(img->name) : 0) + 1;
    L->kp_off = place(L->name_off + L->name_len);
    L->kp_len = (uint64_t)img->n * 2 * sizeof(float);
    uint64_t end = L->kp_off + L->kp_len;
    if (has_scores(img)) {
        L->sc_off = place(end);
        L->sc_len = (uint64_t)img->n * sizeof(float);
        end = L->sc_off + L->sc_len;
    }
    if (has_scales(img)) {
        L->sca_off = place(end);
        L->sca_len = (uint64_t)img->n * sizeof(float);
        end = L->sca_off + L->sca_len;
    }
    if (has_oris(img)) {
        L->ori_off = place(end);
        L->ori_len = (uint64_t)img->n * sizeof(float);
        end = L->ori_off + L->ori_len;
    }
    L->desc_off = place(end);
    if (!desc_bytes(img->n, img->d, dsize, &L->desc_len) ||
        L->desc_len > SIZE_MAX / 2)
        return false;
    L->payload_end = L->desc_off + L->desc_len;
    L->value_len = L->payload_end < FST_REC_MIN_SIZE ? FST_REC_MIN_SIZE
                                                     : L->payload_end;
    return L->value_len <= SIZE_MAX;
}

size_t fst__record_size(const fst_image *img, uint64_t *payload_len)
{
    layout L;
    if (!plan(img, &L))
        return 0;
    if (payload_len)
        *payload_len = L.payload_end - L.header;
    return (size_t)L.value_len;
}

/* The record is written front to back once: each block is copied (and,
 * when checking, scanned for non-finite values in the same pass:
 * fst__copy_nonfinite32(); the writer's check of its input costs no extra
 * read) in CHUNK-byte pieces, and each piece is hashed while it is still
 * in L1. Padding is zeroed where it lies, never the whole value first: the
 * destination is LMDB's page (with MDB_WRITEMAP a page-cache page), and
 * every extra pass over it costs. */
#define CHUNK (16u << 10)

typedef struct emitter {
    unsigned char *v;
    uint64_t       at;          /* bytes of v written */
    uint64_t       hashed;      /* bytes of v fed to the hash */
    uint64_t       hash_end;    /* the checksum covers [FROM, hash_end) */
    XXH3_state_t  *xs;
    bool           check, bad;
} emitter;

static void emit_hash(emitter *e)
{
    uint64_t end = e->at < e->hash_end ? e->at : e->hash_end;
    if (end > e->hashed) {
        XXH3_64bits_update(e->xs, e->v + e->hashed, (size_t)(end - e->hashed));
        e->hashed = end;
    }
}

static void emit_zero(emitter *e, uint64_t upto)
{
    if (upto > e->at) {
        memset(e->v + e->at, 0, (size_t)(upto - e->at));
        e->at = upto;
    }
}

/* elem: 4 (f32 data), 2 (f16 data) or 1 (bytes, never checked). */
static void emit_copy(emitter *e, const void *src, uint64_t len, unsigned elem)
{
    const unsigned char *s = src;
    while (len) {
        size_t n = len < CHUNK ? (size_t)len : CHUNK;
        unsigned char *d = e->v + e->at;
        if (!e->check || elem == 1)
            memcpy(d, s, n);
        else if (elem == 4)
            e->bad |= fst__copy_nonfinite32(d, s, n / 4);
        else
            e->bad |= fst__copy_nonfinite16(d, s, n / 2);
        e->at += n;
        s += n;
        len -= n;
        emit_hash(e);
    }
}

/* The descriptors of a d x n source (img->desc_dn): DN_PIECE bytes of
 * keypoints at a time are transposed into their n x d place, then checked
 * and hashed while the piece is in L2. One read of the source, one write
 * of the record. The source is read in d short runs per piece: pieces of
 * 128 kB (runs of 8 cache lines for 256-D float16) encode 1.4x faster than
 * pieces of 16 kB (runs of one line), which the prefetchers do not follow
 * (measured: 2048 x 256 float16, 5.2 against 3.8 GB/s). */
#define DN_PIECE (128u << 10)
/* Keypoints [k0, k0 + k) of img's d x n descriptors, transposed to k x d
 * at dst. */
static void transpose_piece(const fst_image *img, size_t k0, size_t k, void *dst)
{
    size_t n = img->n, d = img->d;
    if (fst_dtype_size(img->dtype) == 2)
        fst__transpose16_ld((const uint16_t *)img->desc + k0, n, dst, d, d, k);
    else
        fst__transpose32_ld((const uint32_t *)img->desc + k0, n, dst, d, d, k);
}

static void emit_desc_dn(emitter *e, const fst_image *img)
{
    size_t n = img->n, d = img->d, es = fst_dtype_size(img->dtype);
    size_t kp = DN_PIECE / (d * es);
    if (kp < 8)
        kp = 8;
    for (size_t k0 = 0; k0 < n; k0 += kp) {
        size_t k = n - k0 < kp ? n - k0 : kp;
        unsigned char *dst = e->v + e->at;
        transpose_piece(img, k0, k, dst);
        if (e->check)
            e->bad |= es == 2 ? fst__find_nonfinite16((uint16_t *)(void *)dst, k * d) < k * d
                              : fst__find_nonfinite32(dst, k * d) < k * d;
        e->at += k * d * es;
        emit_hash(e);
    }
}

static fst_status encode(const fst_image *img, uint64_t gen, void *buf,
                         size_t len, bool check, bool *bad)
{
    layout L;
    if (!plan(img, &L) || L.value_len != len)
        return fst__fail(FST_EINVAL, "record of image '%s': buffer of %zu "
                         "bytes for a record of %llu", img->name, len,
                         (unsigned long long)L.value_len);
    XXH3_state_t *xs = XXH3_createState();
    if (!xs || XXH3_64bits_reset(xs) != XXH_OK) {
        XXH3_freeState(xs);
        return fst__fail(FST_ENOMEM, "record of image '%s'", img->name);
    }
    unsigned char *v = buf;
    uint32_t flags = record_flags(img);
    bool ext = L.header > FST_REC_HEADER_SIZE;

    memset(v, 0, (size_t)L.header);
    memcpy(v + FST_REC_OFF_MAGIC, FST_REC_MAGIC, 4);
    st16(v + FST_REC_OFF_MAJOR, FST_FORMAT_MAJOR);
    st16(v + FST_REC_OFF_MINOR, ext ? FST_REC_FORMAT_MINOR_SO
                                    : FST_REC_FORMAT_MINOR);
    st32(v + FST_REC_OFF_HEADER_SIZE, (uint32_t)L.header);
    st32(v + FST_REC_OFF_DTYPE, (uint32_t)img->dtype);
    st32(v + FST_REC_OFF_FLAGS, flags);
    st32(v + FST_REC_OFF_N, img->n);
    st32(v + FST_REC_OFF_D, img->d);
    stf32(v + FST_REC_OFF_UNCERTAINTY, img->uncertainty);
    st64(v + FST_REC_OFF_IMAGE_SIZE, (uint64_t)img->image_size[0]);
    st64(v + FST_REC_OFF_IMAGE_SIZE + 8, (uint64_t)img->image_size[1]);
    st64(v + FST_REC_OFF_GENERATION, gen);
    st64(v + FST_REC_OFF_PAYLOAD_LEN, L.payload_end - L.header);
    st32(v + FST_REC_OFF_NAME, (uint32_t)L.name_off);
    st32(v + FST_REC_OFF_NAME + 4, (uint32_t)L.name_len);
    st64(v + FST_REC_OFF_KP, L.kp_off);
    st64(v + FST_REC_OFF_KP + 8, L.kp_len);
    st64(v + FST_REC_OFF_SCORES, L.sc_off);
    st64(v + FST_REC_OFF_SCORES + 8, L.sc_len);
    st64(v + FST_REC_OFF_DESC, L.desc_off);
    st64(v + FST_REC_OFF_DESC + 8, L.desc_len);
    if (ext) {
        st64(v + FST_REC_OFF_SCALES, L.sca_off);
        st64(v + FST_REC_OFF_SCALES + 8, L.sca_len);
        st64(v + FST_REC_OFF_ORIS, L.ori_off);
        st64(v + FST_REC_OFF_ORIS + 8, L.ori_len);
    }

    /* Arrays are copied as the host holds them: the format is little-endian
     * and so is every host featstore builds for (checked below). */
    emitter e = { .v = v, .at = L.header,
                  .hashed = FST_REC_CHECKSUM_FROM, .hash_end = L.payload_end,
                  .xs = xs, .check = check };
    emit_copy(&e, img->name, L.name_len - 1, 1);
    emit_zero(&e, L.kp_off);                /* the name's NUL, padding */
    emit_copy(&e, img->keypoints, L.kp_len, 4);
    if (L.sc_len) {
        emit_zero(&e, L.sc_off);
        if (img->scores)
            emit_copy(&e, img->scores, L.sc_len, 4);
        else
            emit_zero(&e, L.sc_off + L.sc_len);
    }
    if (L.sca_len) {
        emit_zero(&e, L.sca_off);
        if (img->scales)
            emit_copy(&e, img->scales, L.sca_len, 4);
        else
            emit_zero(&e, L.sca_off + L.sca_len);
    }
    if (L.ori_len) {
        emit_zero(&e, L.ori_off);
        if (img->oris)
            emit_copy(&e, img->oris, L.ori_len, 4);
        else
            emit_zero(&e, L.ori_off + L.ori_len);
    }
    emit_zero(&e, L.desc_off);
    if (img->desc_dn && L.desc_len)
        emit_desc_dn(&e, img);
    else
        emit_copy(&e, img->desc, L.desc_len,
                  (unsigned)fst_dtype_size(img->dtype));
    emit_zero(&e, L.payload_end);
    emit_hash(&e);
    emit_zero(&e, len);                     /* up to FST_REC_MIN_SIZE */
    st64(v + FST_REC_OFF_CHECKSUM, XXH3_64bits_digest(xs));
    XXH3_freeState(xs);
    if (bad)
        *bad = e.bad;
    return FST_OK;
}

fst_status fst__record_encode(const fst_image *img, uint64_t gen, void *buf,
                              size_t len)
{
    return encode(img, gen, buf, len, false, NULL);
}

fst_status fst__record_encode_checked(const fst_image *img, uint64_t gen,
                                      void *buf, size_t len)
{
    bool bad = false;
    fst_status s = encode(img, gen, buf, len, true, &bad);
    if (s == FST_OK && bad) {
        /* Rare: scan again for the first bad element to name it. */
        s = fst__image_check(img);
        if (s == FST_OK)        /* cannot happen: the scans agree */
            s = fst__fail(FST_EINVAL, "image '%s': NaN or Inf", img->name);
    }
    return s;
}

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#  error "featstore stores arrays little-endian and maps them as they are"
#endif

/* Is block [off, off+len) inside [lo, hi)? Overflow-safe. */
static bool inside(uint64_t off, uint64_t len, uint64_t lo, uint64_t hi)
{
    return off >= lo && off <= hi && len <= hi - off;
}

fst_status fst__record_decode(const void *val, size_t len, const void *key,
                              size_t keylen, unsigned how, fst_view *out,
                              fst__rec_info *info)
{
    const unsigned char *v = val;
    if (len < 8)
        return fst__fail(FST_ECORRUPT, "value of %zu bytes is too short for "
                         "a record header", len);
    if (memcmp(v, FST_REC_MAGIC, 4) != 0)
        return fst__fail(FST_ECORRUPT, "bad magic (not a featstore record)");
    unsigned major = ld16(v + FST_REC_OFF_MAJOR);
    unsigned minor = ld16(v + FST_REC_OFF_MINOR);
    if (major > FST_FORMAT_MAJOR)
        return fst__fail(FST_EVERSION, "record format %u.%u; this featstore "
                         "(%s) reads format %d.x: upgrade featstore",
                         major, minor, FST_VERSION_STRING, FST_FORMAT_MAJOR);
    if (major < 1)
        return fst__fail(FST_ECORRUPT, "record format %u.%u does not exist",
                         major, minor);
    if (len < FST_REC_HEADER_SIZE)
        return fst__fail(FST_ECORRUPT, "value of %zu bytes is shorter than "
                         "the %u-byte record header", len, FST_REC_HEADER_SIZE);

    uint64_t hsize = ld32(v + FST_REC_OFF_HEADER_SIZE);
    uint64_t plen = ld64(v + FST_REC_OFF_PAYLOAD_LEN);
    if (hsize < FST_REC_HEADER_SIZE || hsize > len)
        return fst__fail(FST_ECORRUPT, "header size %llu outside [%u, %zu]",
                         (unsigned long long)hsize, FST_REC_HEADER_SIZE, len);
    if (plen > len - hsize)
        return fst__fail(FST_ECORRUPT, "payload of %llu bytes runs past the "
                         "end of the %zu-byte value",
                         (unsigned long long)plen, len);
    uint64_t pend = hsize + plen;

    uint32_t dtype = ld32(v + FST_REC_OFF_DTYPE);
    uint32_t flags = ld32(v + FST_REC_OFF_FLAGS);
    uint32_t n = ld32(v + FST_REC_OFF_N);
    uint32_t d = ld32(v + FST_REC_OFF_D);
    size_t dsize = fst_dtype_size((fst_dtype)dtype);
    if (dsize == 0)
        return fst__fail(FST_ECORRUPT, "unknown descriptor dtype %u", dtype);
    if (n > 0 && d == 0)
        return fst__fail(FST_ECORRUPT, "%u keypoints but descriptor "
                         "dimension 0", n);

    static const struct { int off; const char *what; } blk[6] = {
        { FST_REC_OFF_NAME, "name" }, { FST_REC_OFF_KP, "keypoint" },
        { FST_REC_OFF_SCORES, "score" }, { FST_REC_OFF_DESC, "descriptor" },
        { FST_REC_OFF_SCALES, "scales" }, { FST_REC_OFF_ORIS, "oris" },
    };
    uint64_t off[6] = {0}, blen[6] = {0};
    off[0] = ld32(v + FST_REC_OFF_NAME);
    blen[0] = ld32(v + FST_REC_OFF_NAME + 4);
    /* The scales and oris fields exist only in a header of 160 bytes or
     * more (1.2); a record flagged with them and a shorter header is bad. */
    bool ext = hsize >= FST_REC_HEADER_SIZE_SO;
    for (int i = 1; i < (ext ? 6 : 4); i++) {
        off[i] = ld64(v + blk[i].off);
        blen[i] = ld64(v + blk[i].off + 8);
    }
    bool scores = flags & FST_VIEW_HAS_SCORES;
    bool scales = flags & FST_VIEW_HAS_SCALES, oris = flags & FST_VIEW_HAS_ORIS;
    if ((scales || oris) && !ext)
        return fst__fail(FST_ECORRUPT, "flagged with %s but a header of %llu "
                         "bytes (needs %u)", scales ? "scales" : "oris",
                         (unsigned long long)hsize, FST_REC_HEADER_SIZE_SO);
    for (int i = 0; i < 6; i++) {
        if ((i == 2 && !scores) || (i == 4 && !scales) || (i == 5 && !oris))
            continue;
        if (!inside(off[i], blen[i], hsize, pend))
            return fst__fail(FST_ECORRUPT, "%s block [%llu, +%llu) outside "
                             "the payload [%llu, %llu)", blk[i].what,
                             (unsigned long long)off[i],
                             (unsigned long long)blen[i],
                             (unsigned long long)hsize,
                             (unsigned long long)pend);
    }

    /* Lengths must be what n and d say, so that a reader trusting n and d
     * stays inside the blocks. */
    uint64_t want_desc = 0;
    if (!desc_bytes(n, d, dsize, &want_desc) || blen[3] != want_desc)
        return fst__fail(FST_ECORRUPT, "descriptor block of %llu bytes; "
                         "%u x %u %s needs %llu", (unsigned long long)blen[3],
                         n, d, fst_dtype_name((fst_dtype)dtype),
                         (unsigned long long)want_desc);
    if (blen[1] != (uint64_t)n * 8)
        return fst__fail(FST_ECORRUPT, "keypoint block of %llu bytes; %u "
                         "keypoints need %llu", (unsigned long long)blen[1], n,
                         (unsigned long long)n * 8);
    if (scores ? blen[2] != (uint64_t)n * 4 : (blen[2] != 0 || off[2] != 0))
        return fst__fail(FST_ECORRUPT, "score block of %llu bytes with %u "
                         "keypoints and%s scores", (unsigned long long)blen[2],
                         n, scores ? "" : " no");
    for (int i = 4; i < 6; i++) {
        bool has = i == 4 ? scales : oris;
        if (has ? blen[i] != (uint64_t)n * 4 : (blen[i] != 0 || off[i] != 0))
            return fst__fail(FST_ECORRUPT, "%s block of %llu bytes with %u "
                             "keypoints and%s %s", blk[i].what,
                             (unsigned long long)blen[i], n, has ? "" : " no",
                             blk[i].what);
    }

    const char *name = (const char *)v + off[0];
    if (blen[0] == 0 || name[blen[0] - 1] != '\0' ||
        memchr(name, '\0', blen[0] - 1) != NULL)
        return fst__fail(FST_ECORRUPT, "name block is not one NUL-terminated "
                         "string");
    if (key && (keylen != blen[0] - 1 || memcmp(key, name, keylen) != 0)) {
        char b[FST__NAME_MSG];
        return fst__fail(FST_ECORRUPT, "record names image '%s', not its key",
                         fst__name_for_msg(b, name, blen[0] - 1));
    }

    const unsigned char *kp = v + off[1], *sc = scores ? v + off[2] : NULL,
                        *desc = v + off[3], *sca = scales ? v + off[4] : NULL,
                        *ori = oris ? v + off[5] : NULL;
    if ((how & FST__DEC_ALIGN) &&
        (((uintptr_t)kp | (uintptr_t)desc | (uintptr_t)sc | (uintptr_t)sca |
          (uintptr_t)ori) % 16) != 0)
        return fst__fail(FST_ECORRUPT, "blocks not 16-byte aligned in memory "
                         "(keypoints at %p, descriptors at %p)",
                         (const void *)kp, (const void *)desc);

    if (how & FST__DEC_CHECKSUM) {
        uint64_t want = ld64(v + FST_REC_OFF_CHECKSUM);
        uint64_t got = XXH3_64bits(v + FST_REC_CHECKSUM_FROM,
                                   pend - FST_REC_CHECKSUM_FROM);
        if (got != want)
            return fst__fail(FST_ECORRUPT, "checksum mismatch: stored "
                             "%016llx, computed %016llx",
                             (unsigned long long)want, (unsigned long long)got);
    }

    if (info) {
        info->generation = ld64(v + FST_REC_OFF_GENERATION);
        info->payload_len = plen;
        info->checksum = ld64(v + FST_REC_OFF_CHECKSUM);
    }
    out->name = name;
    out->n = n;
    out->d = d;
    out->dtype = (fst_dtype)dtype;
    out->flags = flags;
    out->image_size[0] = (int64_t)ld64(v + FST_REC_OFF_IMAGE_SIZE);
    out->image_size[1] = (int64_t)ld64(v + FST_REC_OFF_IMAGE_SIZE + 8);
    out->uncertainty = ldf32(v + FST_REC_OFF_UNCERTAINTY);
    out->keypoints = (const float *)(const void *)kp;
    out->scores = (const float *)(const void *)sc;
    out->desc = desc;
    out->scales = (const float *)(const void *)sca;
    out->oris = (const float *)(const void *)ori;
    return FST_OK;
}

static const char *nan_or_inf(double x) { return isnan(x) ? "NaN" : "Inf"; }

fst_status fst__image_check_shape(const fst_image *img)
{
    char b[FST__NAME_MSG];
    if (!img || !img->name || !img->name[0])
        return fst__fail(FST_EINVAL, "image with an empty name");
    const char *nm = fst__name_for_msg(b, img->name, strlen(img->name));
    if (fst_dtype_size(img->dtype) == 0)
        return fst__fail(FST_EINVAL, "image '%s': unknown descriptor dtype %d",
                         nm, (int)img->dtype);
    if (img->n > 0) {
        if (img->d == 0)
            return fst__fail(FST_EINVAL, "image '%s': %u keypoints but "
                             "descriptor dimension 0", nm, img->n);
        if (!img->keypoints || !img->desc)
            return fst__fail(FST_EINVAL, "image '%s': %u keypoints but no "
                             "keypoint or descriptor array", nm, img->n);
        if ((img->flags & FST_VIEW_HAS_SCORES) && !img->scores)
            return fst__fail(FST_EINVAL, "image '%s': flagged with scores "
                             "but no score array", nm);
        if ((img->flags & FST_VIEW_HAS_SCALES) && !img->scales)
            return fst__fail(FST_EINVAL, "image '%s': flagged with scales "
                             "but no scales array", nm);
        if ((img->flags & FST_VIEW_HAS_ORIS) && !img->oris)
            return fst__fail(FST_EINVAL, "image '%s': flagged with oris "
                             "but no oris array", nm);
    }
    if (fst__record_size(img, NULL) == 0)
        return fst__fail(FST_EINVAL, "image '%s': %u x %u descriptors are "
                         "too large", nm, img->n, img->d);
    return FST_OK;
}

fst_status fst__image_check(const fst_image *img)
{
    fst_status s = fst__image_check_shape(img);
    if (s)
        return s;
    char b[FST__NAME_MSG];
    const char *nm = fst__name_for_msg(b, img->name, strlen(img->name));
    size_t n = img->n, i;
    if ((i = fst__find_nonfinite32(img->keypoints, n * 2)) < n * 2)
        return fst__fail(FST_EINVAL, "image '%s': keypoints[%zu][%zu] is %s",
                         nm, i / 2, i % 2, nan_or_inf(img->keypoints[i]));
    if (img->scores && (i = fst__find_nonfinite32(img->scores, n)) < n)
        return fst__fail(FST_EINVAL, "image '%s': scores[%zu] is %s", nm, i,
                         nan_or_inf(img->scores[i]));
    if (img->scales && (i = fst__find_nonfinite32(img->scales, n)) < n)
        return fst__fail(FST_EINVAL, "image '%s': scales[%zu] is %s", nm, i,
                         nan_or_inf(img->scales[i]));
    if (img->oris && (i = fst__find_nonfinite32(img->oris, n)) < n)
        return fst__fail(FST_EINVAL, "image '%s': oris[%zu] is %s", nm, i,
                         nan_or_inf(img->oris[i]));
    size_t nd = n * img->d;
    double x = 0;
    if (img->dtype == FST_DTYPE_F32) {
        const float *dd = img->desc;
        if ((i = fst__find_nonfinite32(dd, nd)) < nd)
            x = dd[i];
    } else {
        const uint16_t *dh = img->desc;
        if ((i = fst__find_nonfinite16(dh, nd)) < nd)
            x = fst_f16_to_f32(dh[i]);
    }
    if (i < nd) {
        /* n x d: i = keypoint * d + dimension; d x n the other way. */
        size_t kp = img->desc_dn ? i % n : i / img->d;
        size_t dim = img->desc_dn ? i / n : i % img->d;
        return fst__fail(FST_EINVAL, "image '%s': descriptors[%zu][%zu] "
                         "(keypoint, dimension) is %s", nm, kp, dim,
                         nan_or_inf(x));
    }
    return FST_OK;
}

/* nvec: how many n-float blocks (scores, scales, oris) the image has. */
static uint64_t data_bytes(uint64_t n, uint64_t d, fst_dtype dt, unsigned nvec)
{
    return n * 2 * sizeof(float) + nvec * n * sizeof(float) +
           n * d * fst_dtype_size(dt);
}

uint64_t fst__image_data_bytes(const fst_image *img)
{
    return data_bytes(img->n, img->d, img->dtype,
                      (unsigned)has_scores(img) + has_scales(img) +
                      has_oris(img));
}

uint64_t fst__view_data_bytes(const fst_view *v)
{
    return data_bytes(v->n, v->d, v->dtype,
                      (unsigned)(v->scores != NULL) + (v->scales != NULL) +
                      (v->oris != NULL));
}

static bool same_float(float a, float b)
{
    if (isnan(a) && isnan(b))
        return true;
    return memcmp(&a, &b, sizeof a) == 0;
}

bool fst__image_same(const fst_view *v, const fst_image *img)
{
    uint32_t flags = record_flags(img);
    if (v->n != img->n || v->d != img->d || v->dtype != img->dtype ||
        v->flags != flags || v->image_size[0] != img->image_size[0] ||
        v->image_size[1] != img->image_size[1] ||
        !same_float(v->uncertainty, img->uncertainty))
        return false;
    size_t n = img->n;
    if (n && memcmp(v->keypoints, img->keypoints, n * 2 * sizeof(float)))
        return false;
    if (n && img->scores && memcmp(v->scores, img->scores, n * sizeof(float)))
        return false;
    if (n && img->scales && memcmp(v->scales, img->scales, n * sizeof(float)))
        return false;
    if (n && img->oris && memcmp(v->oris, img->oris, n * sizeof(float)))
        return false;
    size_t es = fst_dtype_size(img->dtype), d = img->d;
    if (!img->desc_dn || n == 0 || d == 0)
        return n * d == 0 || memcmp(v->desc, img->desc, n * d * es) == 0;
    /* d x n source: transpose a few keypoints at a time and compare. */
    uint64_t tmp[CHUNK / 8];
    size_t kp = sizeof tmp / (d * es);
    if (kp == 0) {          /* a row larger than tmp: element by element */
        const unsigned char *a = v->desc, *b = img->desc;
        for (size_t k = 0; k < n; k++)
            for (size_t j = 0; j < d; j++)
                if (memcmp(a + (k * d + j) * es, b + (j * n + k) * es, es))
                    return false;
        return true;
    }
    for (size_t k0 = 0; k0 < n; k0 += kp) {
        size_t k = n - k0 < kp ? n - k0 : kp;
        transpose_piece(img, k0, k, tmp);
        if (memcmp((const unsigned char *)v->desc + k0 * d * es, tmp,
                   k * d * es))
            return false;
    }
    return true;
}

fst_status fst_view_require(const fst_view *v, uint32_t need,
                            const char *where)
{
    if (!v)
        return fst__fail(FST_EINVAL, "fst_view_require: no view");
    static const struct { uint32_t bit; const char *what; } blk[3] = {
        { FST_VIEW_HAS_SCORES, "scores" }, { FST_VIEW_HAS_SCALES, "scales" },
        { FST_VIEW_HAS_ORIS, "oris" },
    };
    const float *arr[3] = { v->scores, v->scales, v->oris };
    char lack[64] = "";
    for (int i = 0; i < 3; i++)
        if ((need & blk[i].bit) && (!(v->flags & blk[i].bit) || !arr[i]))
            snprintf(lack + strlen(lack), sizeof lack - strlen(lack), "%s%s",
                     lack[0] ? ", " : "", blk[i].what);
    if (!lack[0])
        return FST_OK;
    char b[FST__NAME_MSG];
    const char *nm = v->name ? fst__name_for_msg(b, v->name, strlen(v->name))
                             : "?";
    bool dog = need & (FST_VIEW_HAS_SCALES | FST_VIEW_HAS_ORIS);
    return fst__fail(FST_EFORMAT, "%s%simage '%s' lacks keypoint %s, which "
                     "the matcher needs%s", where ? where : "",
                     where ? ": " : "", nm, lack,
                     dog ? " (hloc's DoG/SIFT extractor writes `scales` and "
                           "`oris`: import its features.h5)" : "");
}

const char *fst__name_for_msg(char *buf, const char *name, size_t len)
{
    if (len < 80) {
        snprintf(buf, FST__NAME_MSG, "%.*s", (int)len, name);
    } else {
        snprintf(buf, FST__NAME_MSG, "%.60s...(%zu bytes)", name, len);
    }
    return buf;
}
