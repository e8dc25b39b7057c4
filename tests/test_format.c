/* test_format.c : the store's on-disk record (format.c): encoding and
 * decoding, bounds and checksums against every truncation and corruption,
 * d x n descriptors, the NaN/Inf checks. */
#include "fst_test.h"
#include "store_fixtures.h"

/* ---- the record codec ---- */

FST_TEST(record_roundtrip)
{
    struct { uint32_t n, d; fst_dtype dt; bool sc; } cases[] = {
        { 100, 128, FST_DTYPE_F32, true },
        { 37, 256, FST_DTYPE_F16, false },
        { 0, 128, FST_DTYPE_F32, true },
        { 0, 0, FST_DTYPE_F16, false },
        { 1, 1, FST_DTYPE_F16, true },
        { 2048, 256, FST_DTYPE_F16, true },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        timg t;
        timg_make(&t, "db/seq1/0001.jpg", cases[c].n, cases[c].d, cases[c].dt,
                  cases[c].sc, (uint32_t)c + 3);
        rawrec r;
        rawrec_make(&r, &t.img);
        fst_view v;
        fst__rec_info info;
        ASSERT_OK(fst__record_decode(r.v, r.len, "db/seq1/0001.jpg", 16,
                                     FST__DEC_CHECKSUM | FST__DEC_ALIGN, &v,
                                     &info));
        assert_view_is(&v, &t.img);
        ASSERT_EQ(info.generation, 1);
        ASSERT_EQ((uintptr_t)v.desc % 64, 0);
        ASSERT_EQ((uintptr_t)v.keypoints % 64, 0);
        if (v.scores)
            ASSERT_EQ((uintptr_t)v.scores % 64, 0);
        ASSERT_TRUE(fst__image_same(&v, &t.img));
        free(r.mem);
        timg_free(&t);
    }
}

FST_TEST(record_layout)
{
    timg t;
    timg_make(&t, "a", 3, 5, FST_DTYPE_F32, true, 9);
    rawrec r;
    rawrec_make(&r, &t.img);
    const unsigned char *v = r.v;
    ASSERT_EQ(r.len, FST_REC_MIN_SIZE);           /* small: padded */
    ASSERT_MEMEQ(v, "FSTR", 4);
    ASSERT_EQ(v[4] | v[5] << 8, FST_FORMAT_MAJOR);
    ASSERT_EQ(v[6] | v[7] << 8, FST_REC_FORMAT_MINOR);
    ASSERT_EQ(le32get(v + FST_REC_OFF_HEADER_SIZE), FST_REC_HEADER_SIZE);
    ASSERT_EQ(le32get(v + FST_REC_OFF_DTYPE), FST_DTYPE_F32);
    ASSERT_EQ(le32get(v + FST_REC_OFF_N), 3);
    ASSERT_EQ(le32get(v + FST_REC_OFF_D), 5);
    ASSERT_EQ(le32get(v + FST_REC_OFF_NAME), FST_REC_HEADER_SIZE);
    ASSERT_EQ(le32get(v + FST_REC_OFF_NAME + 4), 2);
    uint64_t kp = le64get(v + FST_REC_OFF_KP), sc = le64get(v + FST_REC_OFF_SCORES),
             de = le64get(v + FST_REC_OFF_DESC);
    ASSERT_EQ(kp % 64, 48);
    ASSERT_EQ(sc % 64, 48);
    ASSERT_EQ(de % 64, 48);
    ASSERT_EQ(le64get(v + FST_REC_OFF_KP + 8), 24);
    ASSERT_EQ(le64get(v + FST_REC_OFF_SCORES + 8), 12);
    ASSERT_EQ(le64get(v + FST_REC_OFF_DESC + 8), 60);
    ASSERT_EQ(le64get(v + FST_REC_OFF_PAYLOAD_LEN), de + 60 - 128);
    ASSERT_EQ(le64get(v + FST_REC_OFF_CHECKSUM),
              XXH3_64bits(v + 16, de + 60 - 16));
    for (size_t i = de + 60; i < r.len; i++)      /* padding is zero */
        ASSERT_EQ(v[i], 0);
    free(r.mem);
    timg_free(&t);

    /* A large record is not padded: it ends with its descriptors. */
    timg_make(&t, "big", 1000, 64, FST_DTYPE_F16, false, 4);
    uint64_t plen;
    size_t len = fst__record_size(&t.img, &plen);
    ASSERT_EQ(len, FST_REC_HEADER_SIZE + plen);
    ASSERT_GT(len, FST_REC_MIN_SIZE);
    timg_free(&t);
}

/* Every truncation of a valid record is refused, and ASan proves that no
 * byte past the (exact-size) buffer is read. */
FST_TEST(record_every_truncation)
{
    timg t;
    timg_make(&t, "trunc", 5, 8, FST_DTYPE_F32, true, 2);
    rawrec r;
    rawrec_make(&r, &t.img);
    uint64_t pend = FST_REC_HEADER_SIZE + le64get(r.v + FST_REC_OFF_PAYLOAD_LEN);
    for (size_t len = 0; len <= r.len; len++) {
        fst_status s = decode_exact(r.v, len, "trunc", FST__DEC_CHECKSUM, NULL);
        if (len < pend)
            ASSERT_STATUS(s, FST_ECORRUPT);
        else
            ASSERT_OK(s);                          /* only padding cut */
    }
    free(r.mem);
    timg_free(&t);
}

/* Random damage to the header: never a crash or a read outside the value;
 * anything accepted without checksum has every block inside the value;
 * with the checksum, any damaged covered byte is caught. */
FST_TEST(record_header_fuzz)
{
    timg t;
    timg_make(&t, "fuzz/img.jpg", 9, 16, FST_DTYPE_F16, true, 5);
    rawrec r;
    rawrec_make(&r, &t.img);
    unsigned char *copy = malloc(r.len);
    unsigned accepted = 0;
    for (uint32_t it = 0; it < 4000; it++) {
        memcpy(copy, r.v, r.len);
        uint32_t x = mix(it + 1);
        int nflips = 1 + (int)(x % 3);
        bool covered = false;
        for (int f = 0; f < nflips; f++) {
            uint32_t y = mix(x + (uint32_t)f * 977u);
            size_t pos = 8 + y % (FST_REC_HEADER_SIZE - 8);
            unsigned char nv = (unsigned char)(y >> 8);
            if ((y >> 16) % 4 == 0)
                nv = 0xff;
            if (copy[pos] != nv && pos >= 16)
                covered = true;
            copy[pos] = nv;
        }
        fst_status s = decode_exact(copy, r.len, NULL, 0, NULL);
        ASSERT_TRUE(s == FST_OK || s == FST_ECORRUPT);
        accepted += s == FST_OK;
        s = decode_exact(copy, r.len, NULL, FST__DEC_CHECKSUM, NULL);
        if (covered)
            ASSERT_STATUS(s, FST_ECORRUPT);
    }
    ASSERT_LT(accepted, 4000);
    free(copy);
    free(r.mem);
    timg_free(&t);
}

static void c_desc_byte(unsigned char *v, size_t len)
{
    (void)len;                         /* bounds fine, checksum not */
    v[le64get(v + FST_REC_OFF_DESC) + 3] ^= 0x40;
}

FST_TEST(record_corruptions_exact_buffer)
{
    timg t;
    timg_make(&t, "bad", 6, 4, FST_DTYPE_F32, true, 11);
    rawrec r;
    rawrec_make(&r, &t.img);
    unsigned char *copy = malloc(r.len);
    for (size_t i = 0; i < sizeof corruptions / sizeof corruptions[0]; i++) {
        memcpy(copy, r.v, r.len);
        corruptions[i].apply(copy, r.len);
        fst_errclear();
        fst_status s = decode_exact(copy, r.len, "bad", 0, NULL);
        if (s != corruptions[i].want)
            printf("# corruption '%s'\n", corruptions[i].what);
        ASSERT_STATUS(s, corruptions[i].want);
        ASSERT_CONTAINS(fst_errdetail(), corruptions[i].detail);
    }
    /* a damaged descriptor byte passes bounds, fails the checksum */
    memcpy(copy, r.v, r.len);
    c_desc_byte(copy, r.len);
    ASSERT_OK(decode_exact(copy, r.len, "bad", 0, NULL));
    ASSERT_STATUS(decode_exact(copy, r.len, "bad", FST__DEC_CHECKSUM, NULL),
                  FST_ECORRUPT);
    ASSERT_CONTAINS(fst_errdetail(), "checksum");
    /* a newer minor version is read */
    memcpy(copy, r.v, r.len);
    copy[6] = 9;
    fst_view v;
    ASSERT_OK(decode_exact(copy, r.len, "bad", 0, &v));
    ASSERT_EQ(v.n, 6);
    free(copy);
    free(r.mem);
    timg_free(&t);
}

FST_TEST(image_check_refuses_nan_inf)
{
    timg t;
    timg_make(&t, "nan/img", 10, 8, FST_DTYPE_F32, true, 1);
    ASSERT_OK(fst__image_check(&t.img));
    t.kp[7] = NAN;
    ASSERT_STATUS(fst__image_check(&t.img), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "nan/img");
    ASSERT_CONTAINS(fst_errdetail(), "keypoints[3][1] is NaN");
    t.kp[7] = 1.0f;
    t.sc[4] = INFINITY;
    ASSERT_STATUS(fst__image_check(&t.img), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "scores[4] is Inf");
    t.sc[4] = 0.5f;
    ((float *)t.desc)[5 * 8 + 2] = -INFINITY;
    ASSERT_STATUS(fst__image_check(&t.img), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "descriptors[5][2]");
    ASSERT_CONTAINS(fst_errdetail(), "Inf");
    timg_free(&t);

    timg_make(&t, "half", 4, 16, FST_DTYPE_F16, false, 2);
    ((uint16_t *)t.desc)[3 * 16 + 15] = 0x7e00;      /* float16 NaN */
    ASSERT_STATUS(fst__image_check(&t.img), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "descriptors[3][15] (keypoint, dimension) "
                    "is NaN");
    timg_free(&t);
}

/* ---- descriptors given d x n (hloc's layout, fst_image.desc_dn) ---- */

FST_TEST(record_desc_dn_encodes_like_nd)
{
    /* shapes around the SSE2 blocks (8 x 8 f16, 4 x 4 f32), several of
     * the encoder's pieces, pieces clamped to 8 keypoints (rows over 16 kB),
     * and rows wider than fst__image_same()'s 16 kB buffer */
    static const uint32_t shapes[][2] = {
        {0, 0}, {1, 1}, {1, 128}, {7, 3}, {9, 8}, {33, 17}, {100, 256},
        {1000, 128}, {2049, 256}, {3, 9000}, {20, 5000}};
    for (int dt = 0; dt < 2; dt++)
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
            fst_dtype dtype = dt ? FST_DTYPE_F32 : FST_DTYPE_F16;
            timg t;
            timg_make(&t, "dn/img", shapes[k][0], shapes[k][1], dtype,
                      k % 2 == 0, (uint32_t)k + 3);
            void *dn = to_dn(&t);
            fst_image di = t.img;
            di.desc = dn;
            di.desc_dn = true;
            size_t len = fst__record_size(&t.img, NULL);
            ASSERT_TRUE(len > 0);
            ASSERT_EQ(fst__record_size(&di, NULL), len);
            unsigned char *a = malloc(len), *b = malloc(len);
            memset(b, 0xee, len);
            ASSERT_OK(fst__record_encode(&t.img, 1, a, len));
            ASSERT_OK(fst__record_encode_checked(&di, 1, b, len));
            if (memcmp(a, b, len) != 0)
                printf("# %u x %u %s\n", shapes[k][0], shapes[k][1],
                       fst_dtype_name(dtype));
            ASSERT_MEMEQ(a, b, len);
            /* the same content compares equal either way, and a one-bit
             * change in the d x n copy does not */
            fst_view v;
            ASSERT_OK(fst__record_decode(a, len, "dn/img", 6, FST__DEC_CHECKSUM, &v, NULL));
            ASSERT_TRUE(fst__image_same(&v, &di));
            if (t.img.n) {
                size_t at = (size_t)mix((uint32_t)k) % ((size_t)t.img.n * t.img.d);
                ((unsigned char *)dn)[at * fst_dtype_size(dtype)] ^= 1;
                ASSERT_TRUE(!(fst__image_same(&v, &di)));
            }
            free(a);
            free(b);
            free(dn);
            timg_free(&t);
        }
}

FST_TEST(record_desc_dn_names_nonfinite_element)
{
    for (int dt = 0; dt < 2; dt++) {
        timg t;
        timg_make(&t, "dn/nan", 40, 24, dt ? FST_DTYPE_F32 : FST_DTYPE_F16,
                  true, 5);
        unsigned char *dn = to_dn(&t);
        fst_image di = t.img;
        di.desc = dn;
        di.desc_dn = true;
        /* keypoint 37, dimension 5: element (5, 37) of the d x n array */
        size_t at = 5 * 40 + 37;
        if (dt)
            ((float *)(void *)dn)[at] = NAN;
        else
            ((uint16_t *)(void *)dn)[at] = 0x7c00;      /* float16 +Inf */
        size_t len = fst__record_size(&di, NULL);
        unsigned char *buf = malloc(len);
        ASSERT_STATUS(fst__record_encode_checked(&di, 1, buf, len), FST_EINVAL);
        ASSERT_CONTAINS(fst_errdetail(), "dn/nan");
        ASSERT_CONTAINS(fst_errdetail(), "descriptors[37][5] (keypoint, dimension)");
        ASSERT_CONTAINS(fst_errdetail(), dt ? "NaN" : "Inf");
        ASSERT_STATUS(fst__image_check(&di), FST_EINVAL);
        ASSERT_CONTAINS(fst_errdetail(), "descriptors[37][5]");
        free(buf);
        free(dn);
        timg_free(&t);
    }
}

/* The writer checks NaN/Inf while it copies (fst__record_encode_checked):
 * the same bytes as fst__record_encode() for clean images, whatever the
 * shape (descriptor blocks spanning many copy chunks included), and a
 * refusal naming the element for a bad value at any position. */
FST_TEST(encode_checked_same_bytes_and_refuses_nan)
{
    static const struct { uint32_t n, d; fst_dtype dt; bool sc; } c[] = {
        {0, 0, FST_DTYPE_F16, false}, {0, 8, FST_DTYPE_F32, true},
        {1, 1, FST_DTYPE_F32, true},  {3, 7, FST_DTYPE_F16, false},
        {100, 128, FST_DTYPE_F32, true}, {2048, 256, FST_DTYPE_F16, true},
        {4097, 33, FST_DTYPE_F32, false},
    };
    for (size_t k = 0; k < sizeof c / sizeof c[0]; k++) {
        timg t;
        timg_make(&t, "enc/checked", c[k].n, c[k].d, c[k].dt, c[k].sc,
                  (uint32_t)k + 3);
        size_t len = fst__record_size(&t.img, NULL);
        unsigned char *a = malloc(len), *b = malloc(len);
        memset(a, 0xa5, len);
        memset(b, 0x5a, len);              /* every byte must be written */
        ASSERT_OK(fst__record_encode(&t.img, 9, a, len));
        ASSERT_OK(fst__record_encode_checked(&t.img, 9, b, len));
        ASSERT_MEMEQ(a, b, len);
        fst_view v;
        ASSERT_OK(fst__record_decode(b, len, "enc/checked", 11,
                                     FST__DEC_CHECKSUM, &v, NULL));
        size_t nd = (size_t)c[k].n * c[k].d;
        if (nd) {
            /* the last descriptor element: the end of the last chunk */
            size_t at = nd - 1;
            if (c[k].dt == FST_DTYPE_F32)
                ((float *)t.desc)[at] = -INFINITY;
            else
                ((uint16_t *)t.desc)[at] = 0xfc00;     /* float16 -Inf */
            ASSERT_STATUS(fst__record_encode_checked(&t.img, 9, b, len),
                          FST_EINVAL);
            ASSERT_CONTAINS(fst_errdetail(), "enc/checked");
            ASSERT_CONTAINS(fst_errdetail(), "Inf");
            char want[64];
            snprintf(want, sizeof want, "descriptors[%zu][%zu]",
                     at / c[k].d, at % c[k].d);
            ASSERT_CONTAINS(fst_errdetail(), want);
            ASSERT_OK(fst__record_encode(&t.img, 9, a, len)); /* unchecked */
            if (c[k].dt == FST_DTYPE_F32)
                ((float *)t.desc)[at] = 0.0f;
            else
                ((uint16_t *)t.desc)[at] = 0;
            t.kp[2 * c[k].n - 1] = NAN;
            ASSERT_STATUS(fst__record_encode_checked(&t.img, 9, b, len),
                          FST_EINVAL);
            ASSERT_CONTAINS(fst_errdetail(), "is NaN");
            t.kp[2 * c[k].n - 1] = 1.0f;
            if (c[k].sc) {
                t.sc[0] = INFINITY;
                ASSERT_STATUS(fst__record_encode_checked(&t.img, 9, b, len),
                              FST_EINVAL);
                ASSERT_CONTAINS(fst_errdetail(), "scores[0] is Inf");
                t.sc[0] = 0.5f;
            }
            ASSERT_OK(fst__record_encode_checked(&t.img, 9, b, len));
        }
        free(a);
        free(b);
        timg_free(&t);
    }
}

/* ---- scales and oris (format 1.2) ---- */

/* Records with DoG scales and/or oris carry them bit for bit, 64-byte
 * aligned, in a 160-byte header of record minor 2; a record without them
 * keeps the 1.0 header (128 bytes, minor 0) and decodes with NULLs. */
FST_TEST(record_scales_oris_roundtrip)
{
    static const struct { uint32_t n, d; bool sc, sca, ori; } c[] = {
        { 0, 8, false, true, true }, { 1, 1, true, true, false },
        { 3, 5, false, false, true }, { 100, 128, true, true, true },
        { 2048, 256, true, true, true }, { 17, 3, true, false, false },
    };
    for (size_t k = 0; k < sizeof c / sizeof c[0]; k++) {
        timg t;
        timg_make(&t, "dog/0001.jpg", c[k].n, c[k].d, FST_DTYPE_F16, c[k].sc,
                  (uint32_t)k + 2);
        timg_add_so(&t, c[k].sca, c[k].ori, k % 2 == 0);
        rawrec r;
        rawrec_make(&r, &t.img);
        bool ext = c[k].sca || c[k].ori;
        ASSERT_EQ(le32get(r.v + FST_REC_OFF_HEADER_SIZE),
                  ext ? FST_REC_HEADER_SIZE_SO : FST_REC_HEADER_SIZE);
        ASSERT_EQ(r.v[6] | r.v[7] << 8,
                  ext ? FST_REC_FORMAT_MINOR_SO : FST_REC_FORMAT_MINOR);
        ASSERT_EQ(le32get(r.v + FST_REC_OFF_NAME),
                  ext ? FST_REC_HEADER_SIZE_SO : FST_REC_HEADER_SIZE);
        if (ext) {
            ASSERT_EQ(le64get(r.v + FST_REC_OFF_SCALES + 8),
                      c[k].sca ? (uint64_t)c[k].n * 4 : 0);
            ASSERT_EQ(le64get(r.v + FST_REC_OFF_ORIS + 8),
                      c[k].ori ? (uint64_t)c[k].n * 4 : 0);
            if (!c[k].sca)
                ASSERT_EQ(le64get(r.v + FST_REC_OFF_SCALES), 0);
            if (!c[k].ori)
                ASSERT_EQ(le64get(r.v + FST_REC_OFF_ORIS), 0);
        }
        fst_view v;
        fst__rec_info info;
        ASSERT_OK(fst__record_decode(r.v, r.len, "dog/0001.jpg", 12,
                                     FST__DEC_CHECKSUM | FST__DEC_ALIGN, &v,
                                     &info));
        assert_view_is(&v, &t.img);
        if (v.scales)
            ASSERT_EQ((uintptr_t)v.scales % 64, 0);
        if (v.oris)
            ASSERT_EQ((uintptr_t)v.oris % 64, 0);
        ASSERT_EQ((uintptr_t)v.desc % 64, 0);
        ASSERT_TRUE(fst__image_same(&v, &t.img));
        /* another scale or orientation is another image */
        if (c[k].n && c[k].sca) {
            t.sca[c[k].n - 1] += 1.0f;
            ASSERT_TRUE(!fst__image_same(&v, &t.img));
            t.sca[c[k].n - 1] -= 1.0f;
        }
        if (c[k].n && c[k].ori) {
            t.ori[0] += 0.5f;
            ASSERT_TRUE(!fst__image_same(&v, &t.img));
            t.ori[0] -= 0.5f;
        }
        /* the same image without them is another image too */
        if (ext) {
            fst_image plain = t.img;
            plain.scales = plain.oris = NULL;
            plain.flags &= ~(uint32_t)(FST_VIEW_HAS_SCALES | FST_VIEW_HAS_ORIS |
                                       FST_VIEW_SCALES_F16 | FST_VIEW_ORIS_F16);
            ASSERT_TRUE(!fst__image_same(&v, &plain));
        }
        /* every truncation that cuts the payload is refused */
        uint64_t pend = le32get(r.v + FST_REC_OFF_HEADER_SIZE) +
                        le64get(r.v + FST_REC_OFF_PAYLOAD_LEN);
        for (size_t len = 0; len <= r.len && c[k].n < 200; len++) {
            fst_status s = decode_exact(r.v, len, "dog/0001.jpg",
                                        FST__DEC_CHECKSUM, NULL);
            if (len < pend)
                ASSERT_STATUS(s, FST_ECORRUPT);
            else
                ASSERT_OK(s);
        }
        free(r.mem);
        timg_free(&t);
    }
}

/* Damage to the scales and oris fields or blocks: bounds refuse what they
 * can see, the checksum the rest; never a read outside the value. */
FST_TEST(record_scales_oris_corruptions)
{
    timg t;
    timg_make(&t, "dog/bad", 6, 4, FST_DTYPE_F32, true, 11);
    timg_add_so(&t, true, true, false);
    rawrec r;
    rawrec_make(&r, &t.img);
    unsigned char *copy = malloc(r.len);
    uint64_t sca = le64get(r.v + FST_REC_OFF_SCALES),
             ori = le64get(r.v + FST_REC_OFF_ORIS);

    /* a scales block of the wrong length */
    memcpy(copy, r.v, r.len);
    le64put(copy + FST_REC_OFF_SCALES + 8, 5 * 4);
    ASSERT_STATUS(decode_exact(copy, r.len, "dog/bad", 0, NULL), FST_ECORRUPT);
    ASSERT_CONTAINS(fst_errdetail(), "scales block of 20 bytes");
    /* an oris block past the payload */
    memcpy(copy, r.v, r.len);
    le64put(copy + FST_REC_OFF_ORIS, r.len + 64);
    ASSERT_STATUS(decode_exact(copy, r.len, "dog/bad", 0, NULL), FST_ECORRUPT);
    ASSERT_CONTAINS(fst_errdetail(), "oris block");
    ASSERT_CONTAINS(fst_errdetail(), "outside the payload");
    /* an offset that wraps */
    memcpy(copy, r.v, r.len);
    le64put(copy + FST_REC_OFF_SCALES, UINT64_MAX - 8);
    ASSERT_STATUS(decode_exact(copy, r.len, "dog/bad", 0, NULL), FST_ECORRUPT);
    /* flagged, but the header is the 1.0 one: the fields do not exist */
    memcpy(copy, r.v, r.len);
    le32put(copy + FST_REC_OFF_HEADER_SIZE, FST_REC_HEADER_SIZE);
    le64put(copy + FST_REC_OFF_PAYLOAD_LEN,
            le64get(r.v + FST_REC_OFF_PAYLOAD_LEN) + 32);
    ASSERT_STATUS(decode_exact(copy, r.len, "dog/bad", 0, NULL), FST_ECORRUPT);
    ASSERT_CONTAINS(fst_errdetail(), "flagged with scales but a header of 128");
    /* not flagged, yet a block described */
    memcpy(copy, r.v, r.len);
    le32put(copy + FST_REC_OFF_FLAGS,
            le32get(r.v + FST_REC_OFF_FLAGS) & ~(uint32_t)FST_VIEW_HAS_ORIS);
    ASSERT_STATUS(decode_exact(copy, r.len, "dog/bad", 0, NULL), FST_ECORRUPT);
    ASSERT_CONTAINS(fst_errdetail(), "and no oris");
    /* not flagged and no block: read without them */
    le64put(copy + FST_REC_OFF_ORIS, 0);
    le64put(copy + FST_REC_OFF_ORIS + 8, 0);
    fst_view v;
    ASSERT_OK(decode_exact(copy, r.len, "dog/bad", 0, &v));
    ASSERT_TRUE(v.oris == NULL && v.scales != NULL);
    /* a damaged scale or orientation passes bounds, fails the checksum */
    for (int w = 0; w < 2; w++) {
        memcpy(copy, r.v, r.len);
        copy[(w ? ori : sca) + 9] ^= 0x08;
        ASSERT_OK(decode_exact(copy, r.len, "dog/bad", 0, NULL));
        ASSERT_STATUS(decode_exact(copy, r.len, "dog/bad", FST__DEC_CHECKSUM,
                                   NULL), FST_ECORRUPT);
        ASSERT_CONTAINS(fst_errdetail(), "checksum");
    }
    /* so does a damaged extended header field */
    memcpy(copy, r.v, r.len);
    copy[FST_REC_OFF_ORIS + 12] ^= 0x01;            /* high bits of oris_len */
    ASSERT_STATUS(decode_exact(copy, r.len, "dog/bad", FST__DEC_CHECKSUM, NULL),
                  FST_ECORRUPT);
    /* random damage to the 160-byte header: never a crash, and any damaged
     * covered byte caught by the checksum */
    for (uint32_t it = 0; it < 3000; it++) {
        memcpy(copy, r.v, r.len);
        uint32_t y = mix(it + 12345);
        size_t pos = 16 + y % (FST_REC_HEADER_SIZE_SO - 16);
        unsigned char nv = (unsigned char)(y >> 8);
        bool changed = copy[pos] != nv;
        copy[pos] = nv;
        fst_status s = decode_exact(copy, r.len, NULL, 0, NULL);
        ASSERT_TRUE(s == FST_OK || s == FST_ECORRUPT);
        s = decode_exact(copy, r.len, NULL, FST__DEC_CHECKSUM, NULL);
        if (changed)
            ASSERT_STATUS(s, FST_ECORRUPT);
    }
    free(copy);
    free(r.mem);
    timg_free(&t);
}

FST_TEST(scales_oris_refuse_nan_inf)
{
    timg t;
    timg_make(&t, "dog/nan", 10, 8, FST_DTYPE_F32, true, 1);
    timg_add_so(&t, true, true, false);
    size_t len = fst__record_size(&t.img, NULL);
    unsigned char *b = malloc(len);
    ASSERT_OK(fst__image_check(&t.img));
    ASSERT_OK(fst__record_encode_checked(&t.img, 1, b, len));
    t.sca[9] = NAN;
    ASSERT_STATUS(fst__image_check(&t.img), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "dog/nan");
    ASSERT_CONTAINS(fst_errdetail(), "scales[9] is NaN");
    ASSERT_STATUS(fst__record_encode_checked(&t.img, 1, b, len), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "scales[9] is NaN");
    t.sca[9] = 2.0f;
    t.ori[0] = -INFINITY;
    ASSERT_STATUS(fst__image_check(&t.img), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "oris[0] is Inf");
    ASSERT_STATUS(fst__record_encode_checked(&t.img, 1, b, len), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "oris[0] is Inf");
    t.ori[0] = 0.0f;
    /* flagged without the array */
    t.img.scales = NULL;
    ASSERT_STATUS(fst__image_check_shape(&t.img), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "flagged with scales");
    free(b);
    timg_free(&t);
}

/* A matcher whose weights need scales and oris (sift+lightglue) asks
 * fst_view_require(): a view without them is refused, naming the image
 * and what it lacks; one with them (even with 0 keypoints) passes. */
FST_TEST(view_require_names_image_and_missing_blocks)
{
    timg t;
    timg_make(&t, "db/q 1.jpg", 5, 4, FST_DTYPE_F32, true, 3);
    rawrec r;
    rawrec_make(&r, &t.img);
    fst_view v;
    ASSERT_OK(fst__record_decode(r.v, r.len, "db/q 1.jpg", 10, 0, &v, NULL));
    ASSERT_OK(fst_view_require(&v, FST_VIEW_HAS_SCORES, "db.fst"));
    ASSERT_OK(fst_view_require(&v, 0, NULL));
    ASSERT_STATUS(fst_view_require(&v, FST_VIEW_HAS_SCALES | FST_VIEW_HAS_ORIS,
                                   "db.fst"), FST_EFORMAT);
    ASSERT_CONTAINS(fst_errdetail(), "db.fst: image 'db/q 1.jpg' lacks "
                    "keypoint scales, oris, which the matcher needs");
    ASSERT_CONTAINS(fst_errdetail(), "DoG");
    free(r.mem);
    timg_add_so(&t, true, false, false);
    rawrec_make(&r, &t.img);
    ASSERT_OK(fst__record_decode(r.v, r.len, "db/q 1.jpg", 10, 0, &v, NULL));
    ASSERT_STATUS(fst_view_require(&v, FST_VIEW_HAS_SCALES | FST_VIEW_HAS_ORIS,
                                   NULL), FST_EFORMAT);
    ASSERT_CONTAINS(fst_errdetail(), "image 'db/q 1.jpg' lacks keypoint oris,");
    ASSERT_OK(fst_view_require(&v, FST_VIEW_HAS_SCALES, NULL));
    free(r.mem);
    timg_free(&t);
    timg_make(&t, "empty", 0, 4, FST_DTYPE_F32, false, 3);
    timg_add_so(&t, true, true, false);
    rawrec_make(&r, &t.img);
    ASSERT_OK(fst__record_decode(r.v, r.len, "empty", 5, 0, &v, NULL));
    ASSERT_OK(fst_view_require(&v, FST_VIEW_HAS_SCALES | FST_VIEW_HAS_ORIS, NULL));
    ASSERT_STATUS(fst_view_require(NULL, 0, NULL), FST_EINVAL);
    free(r.mem);
    timg_free(&t);
}
