/* test_store.c : opening and reading stores (store.c, env.c, meta.c,
 * verify.c): round trips, metadata and identity, damaged stores, readers
 * beside appends, lock files, multi-process zero-copy reading. */
#include "fst_test.h"
#include "store_fixtures.h"

/* ---- stores ---- */

FST_TEST(store_roundtrip)
{
    const char *p = tpath("roundtrip.fst");
    make_store(p, 12, 32, FST_DTYPE_F16);
    fst_store *st;
    ASSERT_OK(fst_store_open(p, FST_OPEN_CHECKSUMS, &st));
    ASSERT_STREQ(fst_store_path(st), p);
    fst_reader *rd;
    ASSERT_OK(fst_reader_begin(st, &rd));
    for (unsigned i = 0; i < 12; i++) {
        timg t;
        std_image(&t, i, 32, FST_DTYPE_F16);
        fst_view v;
        ASSERT_OK(fst_reader_get(rd, t.name, &v));
        assert_view_is(&v, &t.img);
        timg_free(&t);
    }
    fst_view v;
    ASSERT_STATUS(fst_reader_get(rd, "img_9999", &v), FST_ENOTFOUND);
    ASSERT_CONTAINS(fst_errdetail(), p);
    ASSERT_CONTAINS(fst_errdetail(), "img_9999");
    ASSERT_STATUS(fst_reader_get(rd, "", &v), FST_ENOTFOUND);
    fst_reader_end(rd);
    fst_store_close(st);
    assert_verify_clean(p, 12);
}

FST_TEST(empty_store_and_zero_keypoints)
{
    const char *p = tpath("empty.fst");
    fst_writer *w;
    ASSERT_OK(fst_writer_open(p, FST_WRITE_CREATE, &w));
    ASSERT_OK(fst_writer_finish(w, NULL));
    fst_store *st;
    ASSERT_OK(fst_store_open(p, 0, &st));
    fst_store_meta m;
    ASSERT_OK(fst_store_meta_get(st, &m));
    ASSERT_EQ(m.n_images, 0);
    ASSERT_EQ(m.d, 0);
    ASSERT_EQ(count_images(st), 0);
    fst_store_close(st);
    assert_verify_clean(p, 0);

    /* an append to the empty store sets d and dtype; 0-keypoint images
     * with d = 0 fit any store */
    ASSERT_OK(fst_writer_open(p, FST_WRITE_APPEND, &w));
    timg a, b, c;
    timg_make(&a, "zero", 0, 0, FST_DTYPE_F32, false, 1);
    timg_make(&b, "some", 5, 24, FST_DTYPE_F16, true, 2);
    timg_make(&c, "zero-with-d", 0, 24, FST_DTYPE_F16, true, 3);
    ASSERT_OK(fst_writer_put(w, &a.img, NULL));
    ASSERT_OK(fst_writer_put(w, &b.img, NULL));
    ASSERT_OK(fst_writer_put(w, &c.img, NULL));
    ASSERT_OK(fst_writer_finish(w, NULL));
    ASSERT_OK(fst_store_open(p, FST_OPEN_CHECKSUMS, &st));
    ASSERT_OK(fst_store_meta_get(st, &m));
    ASSERT_EQ(m.n_images, 3);
    ASSERT_EQ(m.d, 24);
    ASSERT_EQ(m.dtype, FST_DTYPE_F16);
    ASSERT_EQ(m.n_keypoints, 5);
    fst_reader *rd;
    fst_view v;
    ASSERT_OK(fst_reader_begin(st, &rd));
    ASSERT_OK(fst_reader_get(rd, "zero", &v));
    assert_view_is(&v, &a.img);
    ASSERT_OK(fst_reader_get(rd, "zero-with-d", &v));
    assert_view_is(&v, &c.img);
    ASSERT_TRUE(v.scores != NULL);                /* had (empty) scores */
    ASSERT_OK(fst_reader_get(rd, "some", &v));
    assert_view_is(&v, &b.img);
    fst_reader_end(rd);
    fst_store_close(st);
    timg_free(&a);
    timg_free(&b);
    timg_free(&c);
    assert_verify_clean(p, 3);
}

FST_TEST(alignment_many_n_and_d)
{
    static const uint32_t ns[] = { 0, 1, 2, 3, 7, 15, 16, 17, 100, 255, 1000,
                                   2048 };
    static const struct { uint32_t d; fst_dtype dt; } ds[] = {
        { 1, FST_DTYPE_F16 }, { 3, FST_DTYPE_F32 }, { 128, FST_DTYPE_F16 },
        { 256, FST_DTYPE_F32 },
    };
    size_t nn = sizeof ns / sizeof ns[0];
    for (size_t k = 0; k < sizeof ds / sizeof ds[0]; k++) {
        char file[64];
        snprintf(file, sizeof file, "align_%zu.fst", k);
        const char *p = tpath(file);
        fst_writer *w;
        ASSERT_OK(fst_writer_open(p, FST_WRITE_CREATE, &w));
        for (size_t i = 0; i < nn; i++) {
            /* names of many lengths shift the blocks behind them */
            char name[128];
            snprintf(name, sizeof name, "%0*zu", (int)(1 + (i * 7) % 70), i);
            timg t;
            timg_make(&t, name, ns[i], ds[k].d, ds[k].dt, i % 2 == 0,
                      (uint32_t)(i + 1));
            ASSERT_OK(fst_writer_put(w, &t.img, NULL));
            timg_free(&t);
        }
        ASSERT_OK(fst_writer_finish(w, NULL));

        fst_store *st;
        ASSERT_OK(fst_store_open(p, FST_OPEN_CHECKSUMS, &st));
        fst_reader *rd;
        ASSERT_OK(fst_reader_begin(st, &rd));
        for (size_t i = 0; i < nn; i++) {
            char name[128];
            snprintf(name, sizeof name, "%0*zu", (int)(1 + (i * 7) % 70), i);
            fst_view v;
            ASSERT_OK(fst_reader_get(rd, name, &v));
            ASSERT_EQ(v.n, ns[i]);
            ASSERT_EQ((uintptr_t)v.desc % 64, 0);
            ASSERT_EQ((uintptr_t)v.keypoints % 16, 0);
            if (v.scores)
                ASSERT_EQ((uintptr_t)v.scores % 16, 0);
        }
        fst_reader_end(rd);
        fst_store_close(st);
    }
}

FST_TEST(iteration_order_and_count)
{
    static const char *names[] = { "b.jpg", "a/x/1.jpg", "a", "c/0001.jpg",
                                   "a/x", "B.jpg", "ab", "a/x/0.jpg" };
    const size_t n = sizeof names / sizeof names[0];
    const char *p = tpath("order.fst");
    fst_writer *w;
    ASSERT_OK(fst_writer_open(p, FST_WRITE_CREATE, &w));
    for (size_t i = 0; i < n; i++) {
        timg t;
        timg_make(&t, names[i], 3, 4, FST_DTYPE_F32, false, (uint32_t)i);
        ASSERT_OK(fst_writer_put(w, &t.img, NULL));
        timg_free(&t);
    }
    ASSERT_OK(fst_writer_finish(w, NULL));
    fst_store *st;
    ASSERT_OK(fst_store_open(p, 0, &st));
    fst_reader *rd;
    ASSERT_OK(fst_reader_begin(st, &rd));
    char prev[256] = "";
    size_t c = 0;
    fst_view v;
    fst_status s;
    while ((s = fst_reader_next(rd, &v)) == FST_OK) {
        if (c)
            ASSERT_LT(strcmp(prev, v.name), 0);   /* byte order */
        snprintf(prev, sizeof prev, "%s", v.name);
        c++;
    }
    ASSERT_STATUS(s, FST_DONE);
    ASSERT_EQ(c, n);
    ASSERT_STATUS(fst_reader_next(rd, &v), FST_DONE);   /* stays done */
    ASSERT_OK(fst_reader_reset(rd));                    /* restarts */
    ASSERT_OK(fst_reader_next(rd, &v));
    ASSERT_STREQ(v.name, "B.jpg");
    fst_reader_end(rd);
    fst_store_close(st);
}

FST_TEST(meta_contents)
{
    const char *p = tpath("meta.fst");
    time_t t0 = time(NULL);
    make_store(p, 7, 16, FST_DTYPE_F32);
    uint64_t kp = 0, payload = 0;
    for (unsigned i = 0; i < 7; i++) {
        timg t;
        std_image(&t, i, 16, FST_DTYPE_F32);
        kp += t.img.n;
        payload += (uint64_t)t.img.n * (8 + (t.img.scores ? 4 : 0) + 16 * 4);
        timg_free(&t);
    }
    fst_store *st;
    ASSERT_OK(fst_store_open(p, 0, &st));
    fst_store_meta m;
    ASSERT_OK(fst_store_meta_get(st, &m));
    ASSERT_EQ(m.format_major, FST_FORMAT_MAJOR);
    ASSERT_EQ(m.format_minor, FST_FORMAT_MINOR);
    ASSERT_STREQ(m.featstore_version, FST_VERSION_STRING);
    ASSERT_EQ(m.d, 16);
    ASSERT_EQ(m.dtype, FST_DTYPE_F32);
    ASSERT_EQ(m.n_images, 7);
    ASSERT_EQ(m.n_keypoints, kp);
    ASSERT_EQ(m.payload_bytes, payload);
    ASSERT_STREQ(m.source_name, "features.h5");
    ASSERT_EQ(m.source_size, 12345);
    ASSERT_EQ(m.source_mtime, 1700000000);
    ASSERT_GE(m.created, t0);
    ASSERT_LE(m.created, time(NULL));
    ASSERT_EQ(m.modified, m.created);
    fst_store_close(st);
    /* store size on disk vs payload: small stores pay the 2 KB minimum
     * and LMDB's pages; just keep it sane */
    struct stat sb;
    ASSERT_EQ(stat(p, &sb), 0);
    ASSERT_LT(sb.st_size, (off_t)(payload + 7 * 4096 + 64 * 1024));
}

FST_TEST(store_size_close_to_payload)
{
    /* the figure: size on disk <= 1.05 x payload for real records */
    const char *p = tpath("size.fst");
    fst_writer *w;
    ASSERT_OK(fst_writer_open(p, FST_WRITE_CREATE, &w));
    for (unsigned i = 0; i < 16; i++) {
        char name[32];
        snprintf(name, sizeof name, "im%02u", i);
        timg t;
        timg_make(&t, name, 1000 + 37 * i, 128, FST_DTYPE_F16, true, i);
        ASSERT_OK(fst_writer_put(w, &t.img, NULL));
        timg_free(&t);
    }
    ASSERT_OK(fst_writer_finish(w, NULL));
    fst_store *st;
    fst_store_meta m;
    ASSERT_OK(fst_store_open(p, 0, &st));
    ASSERT_OK(fst_store_meta_get(st, &m));
    fst_store_close(st);
    struct stat sb;
    ASSERT_EQ(stat(p, &sb), 0);
    printf("# %llu payload bytes, %lld bytes on disk (%.3fx)\n",
           (unsigned long long)m.payload_bytes, (long long)sb.st_size,
           (double)sb.st_size / (double)m.payload_bytes);
    ASSERT_LE((double)sb.st_size, 1.05 * (double)m.payload_bytes);
}

FST_TEST(checksum_detection)
{
    const char *p = tpath("cksum.fst");
    make_store(p, 4, 8, FST_DTYPE_F32);
    timg t;
    std_image(&t, 2, 8, FST_DTYPE_F32);          /* img_0002, has keypoints */
    ASSERT_GT(t.img.n, 0);
    rawrec r;
    rawrec_make(&r, &t.img);
    r.v[le64get(r.v + FST_REC_OFF_DESC) + 5] ^= 0x01;   /* one payload bit */
    ASSERT_OK(fst__store_put_raw(p, FST_DB_IMAGES, "img_0002", r.v, r.len));
    free(r.mem);

    fst_store *st;
    fst_reader *rd;
    fst_view v;
    ASSERT_OK(fst_store_open(p, 0, &st));         /* bounds only: passes */
    ASSERT_OK(fst_reader_begin(st, &rd));
    ASSERT_OK(fst_reader_get(rd, "img_0002", &v));
    ASSERT_EQ(v.n, t.img.n);
    /* ... but a get that verifies, whatever the open flags, does not */
    ASSERT_STATUS(fst_reader_get_verified(rd, "img_0002", &v), FST_ECORRUPT);
    ASSERT_CONTAINS(fst_errdetail(), p);
    ASSERT_CONTAINS(fst_errdetail(), "img_0002");
    ASSERT_CONTAINS(fst_errdetail(), "checksum");
    ASSERT_OK(fst_reader_get_verified(rd, "img_0001", &v));
    ASSERT_STATUS(fst_reader_get_verified(rd, "img_9999", &v), FST_ENOTFOUND);
    fst_reader_end(rd);
    fst_store_close(st);

    ASSERT_OK(fst_store_open(p, FST_OPEN_CHECKSUMS, &st));
    ASSERT_OK(fst_reader_begin(st, &rd));
    ASSERT_STATUS(fst_reader_get(rd, "img_0002", &v), FST_ECORRUPT);
    ASSERT_CONTAINS(fst_errdetail(), p);
    ASSERT_CONTAINS(fst_errdetail(), "img_0002");
    ASSERT_CONTAINS(fst_errdetail(), "checksum");
    ASSERT_OK(fst_reader_get(rd, "img_0001", &v));
    fst_reader_end(rd);

    badlist bl = { 0 };
    uint64_t checked, nbad;
    ASSERT_STATUS(fst_store_verify(st, on_bad, &bl, &checked, &nbad),
                  FST_ECORRUPT);
    ASSERT_EQ(checked, 4);
    ASSERT_EQ(nbad, 1);
    ASSERT_EQ(bl.n, 1);
    ASSERT_STREQ(bl.names[0], "img_0002");
    ASSERT_EQ(bl.st[0], FST_ECORRUPT);
    fst_store_close(st);
    timg_free(&t);
}

/* Hand-made corrupt records in a real store: get, next and verify each
 * give FST_ECORRUPT (or FST_EVERSION) naming store and image. */
FST_TEST(store_corrupt_records)
{
    timg t;
    timg_make(&t, "bad", 6, 4, FST_DTYPE_F32, true, 11);
    rawrec r;
    rawrec_make(&r, &t.img);
    unsigned char *copy = malloc(r.len);
    for (size_t i = 0; i < sizeof corruptions / sizeof corruptions[0]; i++) {
        char file[64];
        snprintf(file, sizeof file, "corrupt_%zu.fst", i);
        const char *p = tpath(file);
        make_store(p, 2, 4, FST_DTYPE_F32);
        memcpy(copy, r.v, r.len);
        corruptions[i].apply(copy, r.len);
        ASSERT_OK(fst__store_put_raw(p, FST_DB_IMAGES, "bad", copy, r.len));
        fst_store *st;
        fst_reader *rd;
        fst_view v;
        ASSERT_OK(fst_store_open(p, 0, &st));
        ASSERT_OK(fst_reader_begin(st, &rd));
        fst_status s = fst_reader_get(rd, "bad", &v);
        if (s != corruptions[i].want)
            printf("# corruption '%s'\n", corruptions[i].what);
        ASSERT_STATUS(s, corruptions[i].want);
        ASSERT_CONTAINS(fst_errdetail(), p);
        ASSERT_CONTAINS(fst_errdetail(), "image 'bad'");
        /* iteration reports it in its turn and goes on past it */
        unsigned ok = 0, badc = 0;
        while ((s = fst_reader_next(rd, &v)) != FST_DONE) {
            if (s == FST_OK)
                ok++;
            else
                badc++;
        }
        ASSERT_EQ(ok, 2);
        ASSERT_EQ(badc, 1);
        fst_reader_end(rd);
        badlist bl = { 0 };
        uint64_t checked, nbad;
        ASSERT_STATUS(fst_store_verify(st, on_bad, &bl, &checked, &nbad),
                      FST_ECORRUPT);
        ASSERT_EQ(checked, 3);
        ASSERT_EQ(nbad, 1);
        ASSERT_STREQ(bl.names[0], "bad");
        fst_store_close(st);
    }
    /* a value too short for a header (LMDB keeps it inside a page) */
    const char *p = tpath("corrupt_short.fst");
    make_store(p, 1, 4, FST_DTYPE_F32);
    ASSERT_OK(fst__store_put_raw(p, FST_DB_IMAGES, "bad", r.v, 100));
    fst_store *st;
    fst_reader *rd;
    fst_view v;
    ASSERT_OK(fst_store_open(p, 0, &st));
    ASSERT_OK(fst_reader_begin(st, &rd));
    ASSERT_STATUS(fst_reader_get(rd, "bad", &v), FST_ECORRUPT);
    fst_reader_end(rd);
    fst_store_close(st);
    free(copy);
    free(r.mem);
    timg_free(&t);
}

FST_TEST(open_refuses_incomplete_store)
{
    const char *p = tpath("incomplete.fst");
    make_store(p, 2, 4, FST_DTYPE_F32);
    ASSERT_OK(fst__store_put_raw(p, FST_DB_META, FST_META_COMPLETE, NULL, 0));
    fst_store *st = NULL;
    ASSERT_STATUS(fst_store_open(p, 0, &st), FST_EFORMAT);
    ASSERT_TRUE(st == NULL);
    ASSERT_CONTAINS(fst_errdetail(), p);
    ASSERT_CONTAINS(fst_errdetail(), "incomplete import: run the import again");
    fst_writer *w = NULL;
    ASSERT_STATUS(fst_writer_open(p, FST_WRITE_APPEND, &w), FST_EFORMAT);
    ASSERT_TRUE(w == NULL);
}

static fst_store_meta meta_of(const char *p)
{
    fst_store *st;
    fst_store_meta m;
    ASSERT_OK(fst_store_open(p, 0, &st));
    ASSERT_OK(fst_store_meta_get(st, &m));
    fst_store_close(st);
    return m;
}

static void append_one(const char *p, unsigned i)
{
    fst_writer *w;
    ASSERT_OK(fst_writer_open(p, FST_WRITE_APPEND, &w));
    timg t;
    std_image(&t, i, 8, FST_DTYPE_F16);
    ASSERT_OK(fst_writer_put(w, &t.img, NULL));
    timg_free(&t);
    ASSERT_OK(fst_writer_finish(w, NULL));
}

/* Issue 10, item 1: a store re-imported from other data at the same path,
 * with the same counts, within the same second, is another store. */
FST_TEST(store_identity_id_and_generation)
{
    const char *a = tpath("ida.fst"), *b = tpath("idb.fst");
    make_store(a, 3, 8, FST_DTYPE_F16);
    make_store(b, 3, 8, FST_DTYPE_F16);          /* the same content */
    fst_store_meta ma = meta_of(a), mb = meta_of(b);
    ASSERT_TRUE(ma.has_id);
    ASSERT_TRUE(mb.has_id);
    ASSERT_TRUE(memcmp(ma.id, mb.id, sizeof ma.id) != 0);
    static const uint8_t zero[16];
    ASSERT_TRUE(memcmp(ma.id, zero, 16) != 0);
    ASSERT_EQ(ma.generation, 1);
    ASSERT_EQ(ma.format_minor, 1);
    char ia[FST_STORE_IDENTITY_LEN], ib[FST_STORE_IDENTITY_LEN];
    fst_store_identity(&ma, ia);
    fst_store_identity(&mb, ib);
    ASSERT_EQ(strlen(ia), 3 + 32);
    ASSERT_TRUE(!strncmp(ia, "id=", 3));
    ASSERT_TRUE(strcmp(ia, ib) != 0);
    char hex[3];
    snprintf(hex, sizeof hex, "%02x", ma.id[15]);
    ASSERT_STREQ(ia + 33, hex);
    /* an append keeps the id and advances the generation; so does a
     * refused one not */
    append_one(a, 9);
    fst_store_meta m2 = meta_of(a);
    ASSERT_TRUE(m2.has_id);
    ASSERT_MEMEQ(m2.id, ma.id, 16);
    ASSERT_EQ(m2.generation, 2);
    append_one(a, 10);
    fst_store_meta m3 = meta_of(a);
    ASSERT_EQ(m3.generation, 3);
    char i2[FST_STORE_IDENTITY_LEN];
    fst_store_identity(&m2, i2);
    ASSERT_STREQ(i2, ia);
    /* every write has its own write id, and the history keeps them all */
    ASSERT_TRUE(memcmp(ma.write_id, m2.write_id, 16) != 0);
    ASSERT_TRUE(memcmp(m2.write_id, m3.write_id, 16) != 0);
    ASSERT_TRUE(memcmp(ma.write_id, mb.write_id, 16) != 0);
    fst_store *st;
    uint8_t wid[16];
    ASSERT_OK(fst_store_open(a, 0, &st));
    ASSERT_OK(fst_store_write_id(st, 1, wid));
    ASSERT_MEMEQ(wid, ma.write_id, 16);
    ASSERT_OK(fst_store_write_id(st, 2, wid));
    ASSERT_MEMEQ(wid, m2.write_id, 16);
    ASSERT_OK(fst_store_write_id(st, 3, wid));
    ASSERT_MEMEQ(wid, m3.write_id, 16);
    ASSERT_STATUS(fst_store_write_id(st, 4, wid), FST_ENOTFOUND);
    ASSERT_STATUS(fst_store_write_id(st, 0, wid), FST_ENOTFOUND);
    fst_store_close(st);
}

/* A format 1.0 store (no id) opens, says so, and gets an id at its next
 * append; an id of the wrong size is damage. */
FST_TEST(store_identity_format_1_0)
{
    const char *p = tpath("old10.fst");
    make_store(p, 2, 8, FST_DTYPE_F16);
    unsigned char zero8[8] = { 0 };
    ASSERT_OK(fst__store_put_raw(p, FST_DB_META, FST_META_STORE_ID, NULL, 0));
    ASSERT_OK(fst__store_put_raw(p, FST_DB_META, FST_META_HISTORY, NULL, 0));
    ASSERT_OK(fst__store_put_raw(p, FST_DB_META, FST_META_FORMAT_MINOR, zero8, 8));
    fst_store_meta m = meta_of(p);
    ASSERT_TRUE(!m.has_id);
    ASSERT_EQ(m.format_minor, 0);
    ASSERT_EQ(m.generation, 1);
    char id[FST_STORE_IDENTITY_LEN];
    fst_store_identity(&m, id);
    ASSERT_TRUE(!strncmp(id, "legacy=2,", 9));
    fst_store *st = NULL;
    uint8_t wid[16];
    ASSERT_OK(fst_store_open(p, 0, &st));
    ASSERT_STATUS(fst_store_write_id(st, 1, wid), FST_ENOTFOUND);
    fst_store_close(st);
    append_one(p, 5);
    m = meta_of(p);
    ASSERT_TRUE(m.has_id);
    ASSERT_EQ(m.format_minor, 1);
    ASSERT_EQ(m.generation, 2);
    /* its history starts with the append that gave it the id */
    ASSERT_OK(fst_store_open(p, 0, &st));
    ASSERT_STATUS(fst_store_write_id(st, 1, wid), FST_ENOTFOUND);
    ASSERT_OK(fst_store_write_id(st, 2, wid));
    ASSERT_MEMEQ(wid, m.write_id, 16);
    fst_store_close(st);
    st = NULL;
    ASSERT_OK(fst__store_put_raw(p, FST_DB_META, FST_META_STORE_ID, "short", 5));
    ASSERT_STATUS(fst_store_open(p, 0, &st), FST_ECORRUPT);
    ASSERT_CONTAINS(fst_errdetail(), "metadata 'store_id' has 5 bytes");
    ASSERT_TRUE(st == NULL);
}

FST_TEST(open_refuses_newer_major)
{
    const char *p = tpath("newer.fst");
    make_store(p, 2, 4, FST_DTYPE_F32);
    unsigned char two[8] = { 2 }, zero[8] = { 0 };
    ASSERT_OK(fst__store_put_raw(p, FST_DB_META, FST_META_FORMAT_MAJOR, two, 8));
    ASSERT_OK(fst__store_put_raw(p, FST_DB_META, FST_META_FORMAT_MINOR, zero, 8));
    fst_store *st;
    ASSERT_STATUS(fst_store_open(p, 0, &st), FST_EVERSION);
    ASSERT_CONTAINS(fst_errdetail(), "store format 2.0");
    ASSERT_CONTAINS(fst_errdetail(), "reads format 1.x");
    fst_writer *w;
    ASSERT_STATUS(fst_writer_open(p, FST_WRITE_APPEND, &w), FST_EVERSION);
    /* a newer minor is fine */
    unsigned char one[8] = { 1 }, nine[8] = { 9 };
    ASSERT_OK(fst__store_put_raw(p, FST_DB_META, FST_META_FORMAT_MAJOR, one, 8));
    ASSERT_OK(fst__store_put_raw(p, FST_DB_META, FST_META_FORMAT_MINOR, nine, 8));
    ASSERT_OK(fst_store_open(p, 0, &st));
    fst_store_meta m;
    ASSERT_OK(fst_store_meta_get(st, &m));
    ASSERT_EQ(m.format_minor, 9);
    fst_store_close(st);
}

FST_TEST(open_errors)
{
    fst_store *st;
    const char *missing = tpath("missing.fst");
    ASSERT_STATUS(fst_store_open(missing, 0, &st), FST_EIO);
    ASSERT_CONTAINS(fst_errdetail(), missing);
    ASSERT_TRUE(!exists(tpath("missing.fst-lock")));   /* no litter */

    const char *junk = tpath("junk.fst");
    FILE *f = fopen(junk, "wb");
    ASSERT_TRUE(f != NULL);
    for (int i = 0; i < 16384; i++)
        fputc((int)(mix((uint32_t)i) & 0xff), f);
    fclose(f);
    ASSERT_STATUS(fst_store_open(junk, 0, &st), FST_EFORMAT);
    ASSERT_CONTAINS(fst_errdetail(), "not a featstore store");

    const char *empty = tpath("zero.fst");
    f = fopen(empty, "wb");
    fclose(f);
    ASSERT_STATUS(fst_store_open(empty, 0, &st), FST_EFORMAT);
    ASSERT_STATUS(fst_store_open(g_dir, 0, &st), FST_EFORMAT);
    ASSERT_STATUS(fst_store_open(junk, 0x80, &st), FST_EINVAL);
}

/* A store file cut short (a failed copy, a full disk) is refused at open
 * with a message, never mapped past its end (SIGBUS on the first read). */
FST_TEST(open_refuses_truncated_store)
{
    const char *path = tpath("trunc.fst");
    make_store(path, 40, 128, FST_DTYPE_F32);
    struct stat sb;
    ASSERT_EQ(stat(path, &sb), 0);
    ASSERT_GT(sb.st_size, 16 * 4096);
    off_t cuts[] = { sb.st_size - 4096, sb.st_size / 2, 3 * 4096 };
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        ASSERT_EQ(truncate(path, cuts[i]), 0);
        fst_store *st = NULL;
        ASSERT_STATUS(fst_store_open(path, 0, &st), FST_ECORRUPT);
        ASSERT_CONTAINS(fst_errdetail(), "truncated store");
        ASSERT_CONTAINS(fst_errdetail(), path);
        ASSERT_TRUE(st == NULL);
    }
}

FST_TEST(reader_snapshot_survives_concurrent_append)
{
    const char *p = tpath("snapshot.fst");
    make_store(p, 3, 16, FST_DTYPE_F32);
    fst_store *st;
    ASSERT_OK(fst_store_open(p, FST_OPEN_CHECKSUMS, &st));
    fst_reader *rd;
    fst_view a;
    ASSERT_OK(fst_reader_begin(st, &rd));
    ASSERT_OK(fst_reader_get(rd, "img_0000", &a));
    size_t bytes = (size_t)a.n * a.d * 4;
    void *copy = malloc(bytes);
    memcpy(copy, a.desc, bytes);

    pid_t pid = fork();
    if (pid == 0) {                       /* another process appends */
        fst_writer *w;
        CHILD_CHECK(fst_writer_open(p, FST_WRITE_APPEND, &w) == FST_OK, 2);
        fst__writer_set_batch(w, 2, 1 << 20);
        for (unsigned i = 100; i < 110; i++) {
            timg t;
            std_image(&t, i, 16, FST_DTYPE_F32);
            CHILD_CHECK(fst_writer_put(w, &t.img, NULL) == FST_OK, 3);
            timg_free(&t);
        }
        CHILD_CHECK(fst_writer_finish(w, NULL) == FST_OK, 4);
        _exit(0);
    }
    int wst;
    ASSERT_EQ(waitpid(pid, &wst, 0), pid);
    ASSERT_TRUE(WIFEXITED(wst));
    ASSERT_EQ(WEXITSTATUS(wst), 0);

    fst_view b;
    ASSERT_STATUS(fst_reader_get(rd, "img_0100", &b), FST_ENOTFOUND);
    ASSERT_MEMEQ(a.desc, copy, bytes);   /* the old view still holds */
    unsigned c = 0;
    while (fst_reader_next(rd, &b) == FST_OK)
        c++;
    ASSERT_EQ(c, 3);
    ASSERT_OK(fst_reader_reset(rd));
    ASSERT_OK(fst_reader_get(rd, "img_0100", &b));
    ASSERT_OK(fst_reader_get(rd, "img_0109", &b));
    fst_reader_end(rd);
    ASSERT_EQ(count_images(st), 13);
    fst_store_meta m;
    ASSERT_OK(fst_store_meta_get(st, &m));
    ASSERT_EQ(m.n_images, 13);
    fst_store_close(st);
    free(copy);
    assert_verify_clean(p, 13);
}

/* An append that grows the file past a reader's map: the reader's next
 * transaction remaps (MDB_MAP_RESIZED) and sees everything. */
FST_TEST(reader_follows_store_growth)
{
    const char *p = tpath("grow.fst");
    make_store(p, 1, 256, FST_DTYPE_F32);
    fst_store *st;
    ASSERT_OK(fst_store_open(p, 0, &st));
    const void *base0;
    size_t len0;
    ASSERT_OK(fst__store_map_range(st, &base0, &len0));
    fst_reader *rd;
    ASSERT_OK(fst_reader_begin(st, &rd));        /* leaves a pooled reader */
    fst_reader_end(rd);

    size_t per = 2048 * 256 * 4;                 /* 2 MiB per image */
    unsigned count = (unsigned)(len0 / per) + 4;
    pid_t pid = fork();
    if (pid == 0) {
        fst_writer *w;
        CHILD_CHECK(fst_writer_open(p, FST_WRITE_APPEND, &w) == FST_OK, 2);
        for (unsigned i = 0; i < count; i++) {
            char name[32];
            snprintf(name, sizeof name, "big%03u", i);
            timg t;
            timg_make(&t, name, 2048, 256, FST_DTYPE_F32, false, i);
            CHILD_CHECK(fst_writer_put(w, &t.img, NULL) == FST_OK, 3);
            timg_free(&t);
        }
        CHILD_CHECK(fst_writer_finish(w, NULL) == FST_OK, 4);
        _exit(0);
    }
    int wst;
    ASSERT_EQ(waitpid(pid, &wst, 0), pid);
    ASSERT_TRUE(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
    struct stat sb;
    ASSERT_EQ(stat(p, &sb), 0);
    ASSERT_GT((size_t)sb.st_size, len0);

    ASSERT_OK(fst_reader_begin(st, &rd));
    char last[32];
    snprintf(last, sizeof last, "big%03u", count - 1);
    fst_view v;
    ASSERT_OK(fst_reader_get(rd, last, &v));
    ASSERT_EQ(v.n, 2048);
    const void *base;
    size_t len;
    ASSERT_OK(fst__store_map_range(st, &base, &len));
    ASSERT_GE(len, (size_t)sb.st_size);
    ASSERT_TRUE((const char *)v.desc >= (const char *)base &&
                (const char *)v.desc + per <= (const char *)base + len);
    fst_reader_end(rd);
    ASSERT_EQ(count_images(st), count + 1);
    fst_store_close(st);
}

/* A store this process cannot write the lock file of (another user's, in
 * a directory it cannot write): opened without it, read as usual; an
 * append from here is refused naming the lock file. As `nobody` when the
 * test runs as root, else with the directory and lock file read-only.
 * Round 0: no lock file at all (a fresh import leaves none); round 1: the
 * lock file exists, read-only for this user. */
/* ---- stores read without their lock file ---- */

FST_TEST(open_without_write_access_to_lock_file)
{
    const char *dir = tpath("ro");
    ASSERT_TRUE(mkdir(dir, 0755) == 0);
    char p[600], lock[620];
    snprintf(p, sizeof p, "%s/db.fst", dir);
    snprintf(lock, sizeof lock, "%s-lock", p);
    make_store(p, 4, 8, FST_DTYPE_F32);
    ASSERT_TRUE(!exists(lock));
    ASSERT_TRUE(chmod(g_dir, 0755) == 0);            /* nobody passes through */
    bool root = geteuid() == 0;
    for (int round = 0; round < 2; round++) {
        if (round == 1) {                            /* a reader made it */
            fst_store *st;
            ASSERT_TRUE(chmod(dir, 0755) == 0);
            ASSERT_OK(fst_store_open(p, 0, &st));
            ASSERT_TRUE(!fst_store_nolock(st));
            fst_store_close(st);
            ASSERT_TRUE(exists(lock));
            ASSERT_TRUE(chmod(lock, 0644) == 0);
            if (!root)
                ASSERT_TRUE(chmod(lock, 0444) == 0);
        }
        if (!root)
            ASSERT_TRUE(chmod(dir, 0555) == 0);
        pid_t pid = fork();
        ASSERT_TRUE(pid >= 0);
        if (pid == 0) {
            if (root)
                CHILD_CHECK(setgid(65534) == 0 && setuid(65534) == 0, 10);
            fst_store *st;
            fst_reader *rd;
            fst_view v;
            CHILD_CHECK(fst_store_open(p, FST_OPEN_CHECKSUMS, &st) == FST_OK, 2);
            CHILD_CHECK(fst_store_nolock(st), 3);
            CHILD_CHECK(fst_reader_begin(st, &rd) == FST_OK, 4);
            unsigned n = 0;
            while (fst_reader_next(rd, &v) == FST_OK)
                n++;
            CHILD_CHECK(n == 4, 5);
            CHILD_CHECK(fst_reader_get(rd, "img_0003", &v) == FST_OK, 6);
            fst_reader_end(rd);
            uint64_t checked = 0, nbad = 1;
            CHILD_CHECK(fst_store_verify(st, NULL, NULL, &checked, &nbad) ==
                        FST_OK && checked == 4 && nbad == 0, 7);
            fst_store_close(st);
            fst_writer *w;
            CHILD_CHECK(fst_writer_open(p, FST_WRITE_APPEND, &w) == FST_EIO, 8);
            CHILD_CHECK(strstr(fst_errdetail(), "db.fst-lock: ") != NULL, 9);
            _exit(0);
        }
        int status = -1;
        ASSERT_EQ(waitpid(pid, &status, 0), pid);
        ASSERT_TRUE(WIFEXITED(status));
        ASSERT_EQ(WEXITSTATUS(status), 0);           /* else: the step */
        ASSERT_EQ(exists(lock), round == 1);         /* none was created */
    }
    ASSERT_TRUE(chmod(dir, 0755) == 0);
    ASSERT_TRUE(chmod(lock, 0644) == 0);
}

/* An open forked child reports through its exit status. */
static int child_status(pid_t pid)
{
    int status = -1;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
        return -1;
    return WEXITSTATUS(status);
}

/* A lock-less reader and an append exclude each other, in both orders,
 * while readers with the lock file and appends go on side by side. */
FST_TEST(nolock_reader_and_append_exclude_each_other)
{
    const char *p = tpath("excl.fst");
    char lock[600];
    snprintf(lock, sizeof lock, "%s-lock", p);
    make_store(p, 3, 8, FST_DTYPE_F32);
    fst_store *st;
    ASSERT_OK(fst_store_open(p, FST_OPEN_NOLOCK, &st));
    ASSERT_TRUE(fst_store_nolock(st));
    ASSERT_TRUE(!exists(lock));                      /* not even created */
    pid_t pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
        fst_writer *w;
        CHILD_CHECK(fst_writer_open(p, FST_WRITE_APPEND, &w) == FST_EEXIST, 2);
        CHILD_CHECK(strstr(fst_errdetail(), "without its lock file"), 3);
        _exit(0);
    }
    ASSERT_EQ(child_status(pid), 0);
    ASSERT_EQ(count_images(st), 3);
    fst_store_close(st);

    /* an append in progress: a lock-less open is refused, one with the
     * lock file sees the store as it was */
    fst_writer *w;
    timg t;
    ASSERT_OK(fst_writer_open(p, FST_WRITE_APPEND, &w));
    std_image(&t, 5, 8, FST_DTYPE_F32);
    ASSERT_OK(fst_writer_put(w, &t.img, NULL));
    timg_free(&t);
    pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
        fst_store *s2;
        CHILD_CHECK(fst_store_open(p, FST_OPEN_NOLOCK, &s2) == FST_EEXIST, 2);
        CHILD_CHECK(strstr(fst_errdetail(), "append"), 3);
        CHILD_CHECK(fst_store_open(p, 0, &s2) == FST_OK, 4);
        fst_store_meta m;
        CHILD_CHECK(fst_store_meta_get(s2, &m) == FST_OK && m.n_images == 3, 5);
        fst_store_close(s2);
        _exit(0);
    }
    ASSERT_EQ(child_status(pid), 0);
    ASSERT_OK(fst_writer_finish(w, NULL));

    /* finished: lock-less again, and it sees the append */
    ASSERT_OK(fst_store_open(p, FST_OPEN_NOLOCK, &st));
    ASSERT_EQ(count_images(st), 4);
    fst_store_close(st);
    assert_verify_clean(p, 4);

    /* FST_NO_LOCK in the environment works like the flag; "0" does not */
    ASSERT_TRUE(setenv("FST_NO_LOCK", "1", 1) == 0);
    ASSERT_OK(fst_store_open(p, 0, &st));
    bool nolock = fst_store_nolock(st);
    fst_store_close(st);
    ASSERT_TRUE(setenv("FST_NO_LOCK", "0", 1) == 0);
    ASSERT_OK(fst_store_open(p, 0, &st));
    bool nolock0 = fst_store_nolock(st);
    fst_store_close(st);
    unsetenv("FST_NO_LOCK");
    ASSERT_TRUE(nolock);
    ASSERT_TRUE(!nolock0);
}

/* A lock file that cannot be used for another reason than access: the
 * error names the lock file, not the store; FST_OPEN_NOLOCK does without
 * it. */
FST_TEST(lock_file_errors_name_the_lock_file)
{
    const char *p = tpath("lockdir.fst");
    char lock[600];
    snprintf(lock, sizeof lock, "%s-lock", p);
    make_store(p, 2, 8, FST_DTYPE_F32);
    ASSERT_TRUE(mkdir(lock, 0755) == 0);             /* EISDIR */
    fst_store *st;
    ASSERT_STATUS(fst_store_open(p, 0, &st), FST_EIO);
    ASSERT_CONTAINS(fst_errdetail(), "lockdir.fst-lock: ");
    fst_writer *w;
    ASSERT_STATUS(fst_writer_open(p, FST_WRITE_APPEND, &w), FST_EIO);
    ASSERT_CONTAINS(fst_errdetail(), "lockdir.fst-lock: ");
    ASSERT_OK(fst_store_open(p, FST_OPEN_NOLOCK, &st));
    ASSERT_EQ(count_images(st), 2);
    fst_store_close(st);
    ASSERT_TRUE(rmdir(lock) == 0);
}

/* A child that opens the store, optionally begins a reader, tells the
 * parent and waits to be killed. */
static pid_t spawn_store_child(const char *p, bool with_reader)
{
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        fst_store *st;
        fst_reader *rd;
        CHILD_CHECK(fst_store_open(p, 0, &st) == FST_OK, 2);
        if (with_reader)
            CHILD_CHECK(fst_reader_begin(st, &rd) == FST_OK, 3);
        CHILD_CHECK(write_full(fds[1], "x", 1), 4);
        for (;;)
            pause();
    }
    close(fds[1]);
    char c;
    bool ok = read_full(fds[0], &c, 1);
    close(fds[0]);
    return ok ? pid : -1;
}

/* A reader killed with its transaction open leaves a slot in the lock
 * table; the next open clears it (while other processes keep the table
 * alive, as running workers do). */
FST_TEST(stale_reader_slot_cleared)
{
    const char *p = tpath("readers.fst");
    make_store(p, 2, 4, FST_DTYPE_F32);
    pid_t holder = spawn_store_child(p, false);
    pid_t victim = spawn_store_child(p, true);
    ASSERT_GT(holder, 0);
    ASSERT_GT(victim, 0);
    fst_store *st;
    unsigned slots;
    ASSERT_OK(fst_store_open(p, 0, &st));
    ASSERT_EQ(fst__store_stale_cleared(st), 0);   /* the victim is alive */
    ASSERT_OK(fst__store_reader_slots(st, &slots));
    ASSERT_EQ(slots, 1);
    fst_store_close(st);

    kill(victim, SIGKILL);
    waitpid(victim, NULL, 0);
    ASSERT_OK(fst_store_open(p, 0, &st));
    ASSERT_EQ(fst__store_stale_cleared(st), 1);
    ASSERT_OK(fst__store_reader_slots(st, &slots));
    ASSERT_EQ(slots, 0);
    fst_reader *rd;
    ASSERT_OK(fst_reader_begin(st, &rd));
    ASSERT_OK(fst__store_reader_slots(st, &slots));
    ASSERT_EQ(slots, 1);
    fst_reader_end(rd);
    fst_store_close(st);
    kill(holder, SIGKILL);
    waitpid(holder, NULL, 0);
}

/* Opening a store twice in one process shares one LMDB environment: LMDB
 * would otherwise wipe the reader table under the first handle. And a
 * process cannot write a store it has open for reading. */
FST_TEST(second_open_in_process_shares)
{
    const char *p = tpath("twice.fst");
    make_store(p, 3, 4, FST_DTYPE_F32);
    fst_store *a, *b;
    fst_reader *ra, *rb;
    fst_view va, vb;
    unsigned slots;
    ASSERT_OK(fst_store_open(p, 0, &a));
    ASSERT_OK(fst_reader_begin(a, &ra));
    ASSERT_OK(fst_reader_get(ra, "img_0000", &va));
    ASSERT_OK(fst_store_open(p, FST_OPEN_CHECKSUMS, &b));
    ASSERT_OK(fst__store_reader_slots(b, &slots));
    ASSERT_EQ(slots, 1);                          /* a's reader survived */
    ASSERT_OK(fst_reader_begin(b, &rb));
    ASSERT_OK(fst_reader_get(rb, "img_0000", &vb));
    ASSERT_TRUE(va.desc == vb.desc);              /* one map */
    fst_writer *w;
    ASSERT_STATUS(fst_writer_open(p, FST_WRITE_APPEND, &w), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "open for reading");
    fst_reader_end(rb);
    fst_store_close(b);
    ASSERT_OK(fst__store_reader_slots(a, &slots));
    ASSERT_GE(slots, 1);                          /* still there */
    fst_reader_end(ra);
    fst_store_close(a);
    ASSERT_OK(fst_writer_open(p, FST_WRITE_APPEND, &w));
    ASSERT_STATUS(fst_store_open(p, 0, &a), FST_EINVAL);
    fst_writer_abort(w);
}

/* Pss and Rss (kB) of this process's mapping of `file`. */
static bool smaps_of(const char *file, long *pss, long *rss)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f)
        return false;
    char line[1024];
    bool in = false, found = false;
    *pss = *rss = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char perms[8];
        int off = 0;
        if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %n", &lo, &hi, perms,
                   &off) == 3 && off > 0) {
            char *path = line + off;
            path[strcspn(path, "\n")] = '\0';
            in = strcmp(path, file) == 0;
            found |= in;
            continue;
        }
        long kb;
        if (in && sscanf(line, "Pss: %ld kB", &kb) == 1)
            *pss += kb;
        else if (in && sscanf(line, "Rss: %ld kB", &kb) == 1)
            *rss += kb;
    }
    fclose(f);
    return found;
}

typedef struct child_report {
    uint64_t hash;
    uint32_t count;
    int32_t  ok;        /* 1: every view inside the map, checksums good */
} child_report;

typedef struct child_mem {
    long pss, rss;
} child_mem;

/* 8 processes started after the import read every record at once, agree
 * on every checksum, point into their maps, and together hold one copy. */
FST_TEST(zero_copy_eight_processes)
{
    enum { NPROC = 8, NIMG = 24 };
    const char *p = tpath("zerocopy.fst");
    uint64_t want = 0;
    fst_writer *w;
    ASSERT_OK(fst_writer_open(p, FST_WRITE_CREATE, &w));
    for (unsigned i = 0; i < NIMG; i++) {
        char name[32];
        snprintf(name, sizeof name, "zc/%03u.jpg", i);
        timg t;
        timg_make(&t, name, 1024, 128, FST_DTYPE_F16, true, i);
        ASSERT_OK(fst_writer_put(w, &t.img, NULL));
        want = XXH3_64bits_withSeed(t.desc, 1024 * 128 * 2, want);
        want = XXH3_64bits_withSeed(t.kp, 1024 * 8, want);
        timg_free(&t);
    }
    ASSERT_OK(fst_writer_finish(w, NULL));
    char real[PATH_MAX];
    ASSERT_TRUE(realpath(p, real) != NULL);
    struct stat sb;
    ASSERT_EQ(stat(p, &sb), 0);
    uint64_t data = (uint64_t)NIMG * 1024 * (128 * 2 + 8 + 4);

    int up[2], go[2], bye[2];
    ASSERT_EQ(pipe(up), 0);
    ASSERT_EQ(pipe(go), 0);
    ASSERT_EQ(pipe(bye), 0);
    pid_t pids[NPROC];
    for (int k = 0; k < NPROC; k++) {
        pids[k] = fork();
        if (pids[k] != 0)
            continue;
        close(up[0]);
        close(go[1]);
        close(bye[1]);
        child_report r = { 0, 0, 1 };
        fst_store *st;
        fst_reader *rd;
        CHILD_CHECK(fst_store_open(p, FST_OPEN_CHECKSUMS, &st) == FST_OK, 2);
        CHILD_CHECK(fst_reader_begin(st, &rd) == FST_OK, 3);
        const void *base;
        size_t len;
        CHILD_CHECK(fst__store_map_range(st, &base, &len) == FST_OK, 4);
        const char *lo = base, *hi = lo + len;
        fst_view v;
        fst_status s;
        while ((s = fst_reader_next(rd, &v)) == FST_OK) {
            const char *dp = v.desc, *kp = (const char *)v.keypoints;
            size_t db = (size_t)v.n * v.d * 2;
            if (!(dp >= lo && dp + db <= hi && kp >= lo && kp + v.n * 8 <= hi))
                r.ok = 0;
            if ((uintptr_t)dp % 64)
                r.ok = 0;
            r.hash = XXH3_64bits_withSeed(v.desc, db, r.hash);
            r.hash = XXH3_64bits_withSeed(v.keypoints, (size_t)v.n * 8,
                                          r.hash);
            volatile float sink = v.scores[v.n - 1];   /* touch scores */
            (void)sink;
            r.count++;
        }
        if (s != FST_DONE)
            r.ok = 0;
        CHILD_CHECK(write_full(up[1], &r, sizeof r), 5);
        char c;
        CHILD_CHECK(read_full(go[0], &c, 1), 6);   /* all have read */
        child_mem m = { 0, 0 };
        CHILD_CHECK(smaps_of(real, &m.pss, &m.rss), 7);
        CHILD_CHECK(write_full(up[1], &m, sizeof m), 8);
        CHILD_CHECK(read_full(bye[0], &c, 1), 9);  /* all have measured */
        fst_reader_end(rd);
        fst_store_close(st);
        _exit(0);
    }
    close(up[1]);
    close(go[0]);
    close(bye[0]);
    for (int k = 0; k < NPROC; k++) {
        child_report r;
        ASSERT_TRUE(read_full(up[0], &r, sizeof r));
        ASSERT_EQ(r.ok, 1);
        ASSERT_EQ(r.count, NIMG);
        ASSERT_EQ(r.hash, want);
    }
    for (int k = 0; k < NPROC; k++)
        ASSERT_TRUE(write_full(go[1], "g", 1));
    long pss_sum = 0, rss_sum = 0, rss_min = LONG_MAX;
    for (int k = 0; k < NPROC; k++) {
        child_mem m;
        ASSERT_TRUE(read_full(up[0], &m, sizeof m));
        pss_sum += m.pss;
        rss_sum += m.rss;
        if (m.rss < rss_min)
            rss_min = m.rss;
    }
    for (int k = 0; k < NPROC; k++)
        ASSERT_TRUE(write_full(bye[1], "b", 1));
    for (int k = 0; k < NPROC; k++) {
        int wst;
        ASSERT_EQ(waitpid(pids[k], &wst, 0), pids[k]);
        ASSERT_TRUE(WIFEXITED(wst));
        ASSERT_EQ(WEXITSTATUS(wst), 0);
    }
    close(up[0]);
    close(go[1]);
    close(bye[1]);
    printf("# store %lld kB, data %llu kB; %d processes: Rss sum %ld kB, "
           "Pss sum %ld kB (%.2fx the file)\n", (long long)sb.st_size / 1024,
           (unsigned long long)data / 1024, NPROC, rss_sum, pss_sum,
           (double)pss_sum * 1024 / (double)sb.st_size);
    ASSERT_GE(rss_min * 1024, (long)(0.9 * (double)data)); /* each saw all */
    ASSERT_LE((double)pss_sum * 1024, 1.3 * (double)sb.st_size);
    ASSERT_GE((double)pss_sum * 1024, 0.5 * (double)data);
}

typedef struct thr_arg {
    fst_store *st;
    unsigned   seed;
    int        fails;
} thr_arg;

static void *reader_thread(void *p)
{
    thr_arg *a = p;
    for (unsigned it = 0; it < 300; it++) {
        fst_reader *rd;
        if (fst_reader_begin(a->st, &rd) != FST_OK) {
            a->fails++;
            continue;
        }
        char name[32];
        snprintf(name, sizeof name, "img_%04u", mix(a->seed + it) % 20);
        fst_view v;
        if (fst_reader_get(rd, name, &v) != FST_OK ||
            strcmp(v.name, name) != 0)
            a->fails++;
        for (int k = 0; k < 3; k++)
            if (fst_reader_next(rd, &v) != FST_OK)
                a->fails++;
        fst_reader_end(rd);
    }
    return NULL;
}

FST_TEST(readers_on_threads_reuse_slots)
{
    const char *p = tpath("threads.fst");
    make_store(p, 20, 8, FST_DTYPE_F32);
    fst_store *st;
    ASSERT_OK(fst_store_open(p, FST_OPEN_CHECKSUMS, &st));
    pthread_t th[4];
    thr_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (thr_arg){ st, (unsigned)i * 1000, 0 };
        ASSERT_EQ(pthread_create(&th[i], NULL, reader_thread, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ASSERT_EQ(args[i].fails, 0);
    }
    unsigned slots;
    ASSERT_OK(fst__store_reader_slots(st, &slots));
    ASSERT_LE(slots, 8);                 /* pooled readers, not 1200 */
    ASSERT_GE(slots, 1);
    fst_store_close(st);
}

FST_TEST(verify_checks_meta_totals)
{
    const char *p = tpath("verify_meta.fst");
    make_store(p, 4, 8, FST_DTYPE_F32);
    assert_verify_clean(p, 4);
    unsigned char five[8] = { 5 };
    ASSERT_OK(fst__store_put_raw(p, FST_DB_META, FST_META_N_IMAGES, five, 8));
    fst_store *st;
    ASSERT_OK(fst_store_open(p, 0, &st));
    badlist bl = { 0 };
    uint64_t checked, nbad;
    ASSERT_STATUS(fst_store_verify(st, on_bad, &bl, &checked, &nbad),
                  FST_ECORRUPT);
    ASSERT_EQ(checked, 4);
    ASSERT_EQ(nbad, 1);
    ASSERT_STREQ(bl.names[0], "(metadata)");
    ASSERT_STATUS(fst_store_verify(st, NULL, NULL, NULL, NULL), FST_ECORRUPT);
    fst_store_close(st);
}

/* The figure is < 5 ms on a quiet machine with a release build
 * (benchmarks/ measures it); here, under sanitizers on a shared machine,
 * only that it is milliseconds and does not scan the store. */
FST_TEST(open_and_first_lookup_is_fast)
{
    const char *p = tpath("fast.fst");
    make_store(p, 300, 8, FST_DTYPE_F32);
    double t[15];
    for (int k = 0; k < 15; k++) {
        double t0 = now_ms();
        fst_store *st;
        fst_reader *rd;
        fst_view v;
        ASSERT_OK(fst_store_open(p, 0, &st));
        ASSERT_OK(fst_reader_begin(st, &rd));
        ASSERT_OK(fst_reader_get(rd, "img_0000", &v));
        fst_reader_end(rd);
        fst_store_close(st);
        t[k] = now_ms() - t0;
    }
    for (int i = 1; i < 15; i++)          /* insertion sort for the median */
        for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
            double x = t[j]; t[j] = t[j - 1]; t[j - 1] = x;
        }
    printf("# open + first lookup: median %.3f ms\n", t[7]);
    ASSERT_LT(t[7], 50.0);
}

/* Format 1.2: a store whose records carry DoG scales and oris reads them
 * back zero-copy, says 1.2 in its meta (a store without them stays 1.1,
 * appends to a 1.0/1.1 store with them make it 1.2), counts them in its
 * payload, and verify finds a damaged scale. Old records (header 128)
 * read beside new ones. */
FST_TEST(store_scales_oris)
{
    const char *p = tpath("dog.fst");
    make_store(p, 3, 8, FST_DTYPE_F16);          /* 1.1 records, no scales */
    fst_store_meta m0 = meta_of(p);
    ASSERT_EQ(m0.format_minor, FST_FORMAT_MINOR);
    fst_writer *w;
    ASSERT_OK(fst_writer_open(p, FST_WRITE_APPEND, &w));
    timg t[3];
    for (unsigned i = 0; i < 3; i++) {
        std_image(&t[i], 10 + i, 8, FST_DTYPE_F16);
        timg_add_so(&t[i], i != 1, i != 2, i == 0);
        ASSERT_OK(fst_writer_put(w, &t[i].img, NULL));
    }
    ASSERT_OK(fst_writer_finish(w, NULL));
    fst_store_meta m = meta_of(p);
    ASSERT_EQ(m.format_minor, FST_FORMAT_MINOR_SO);
    uint64_t want = m0.payload_bytes;
    for (unsigned i = 0; i < 3; i++)
        want += (uint64_t)t[i].img.n * (8 + (t[i].sc ? 4 : 0) +
                                        (t[i].sca ? 4 : 0) + (t[i].ori ? 4 : 0) +
                                        8 * 2);
    ASSERT_EQ(m.payload_bytes, want);
    assert_verify_clean(p, 6);

    fst_store *st;
    fst_reader *rd;
    fst_view v;
    ASSERT_OK(fst_store_open(p, FST_OPEN_CHECKSUMS, &st));
    ASSERT_OK(fst_reader_begin(st, &rd));
    for (unsigned i = 0; i < 3; i++) {
        ASSERT_OK(fst_reader_get(rd, t[i].img.name, &v));
        assert_view_is(&v, &t[i].img);
        if (v.scales)
            ASSERT_EQ((uintptr_t)v.scales % 64, 0);
        if (v.oris)
            ASSERT_EQ((uintptr_t)v.oris % 64, 0);
    }
    ASSERT_OK(fst_reader_get(rd, "img_0002", &v));   /* a 1.1 record */
    ASSERT_TRUE(v.scales == NULL && v.oris == NULL);
    fst_reader_end(rd);
    fst_store_close(st);

    /* the same images again: identical, skipped; another scale: refused */
    ASSERT_OK(fst_writer_open(p, FST_WRITE_APPEND, &w));
    int added = -1;
    ASSERT_OK(fst_writer_put(w, &t[0].img, &added));
    ASSERT_EQ(added, 0);
    t[0].sca[0] += 1.0f;
    ASSERT_STATUS(fst_writer_put(w, &t[0].img, &added), FST_EEXIST);
    ASSERT_CONTAINS(fst_errdetail(), t[0].img.name);
    t[0].sca[0] -= 1.0f;
    fst_writer_abort(w);
    /* a later append without scales keeps the store 1.2 */
    append_one(p, 20);
    ASSERT_EQ(meta_of(p).format_minor, FST_FORMAT_MINOR_SO);

    /* one damaged scale: verify names the image */
    rawrec r;
    rawrec_make(&r, &t[0].img);
    r.v[le64get(r.v + FST_REC_OFF_SCALES) + 2] ^= 0x10;
    ASSERT_OK(fst__store_put_raw(p, FST_DB_IMAGES, t[0].img.name, r.v, r.len));
    free(r.mem);
    ASSERT_OK(fst_store_open(p, 0, &st));
    badlist bl = { 0 };
    uint64_t checked, nbad;
    ASSERT_STATUS(fst_store_verify(st, on_bad, &bl, &checked, &nbad),
                  FST_ECORRUPT);
    ASSERT_EQ(nbad, 1);
    ASSERT_STREQ(bl.names[0], t[0].img.name);
    fst_store_close(st);
    for (unsigned i = 0; i < 3; i++)
        timg_free(&t[i]);
}
