/* test_writer.c : creating and appending to stores (writer.c and
 * direct_io.c): both ways of writing records, refusals, memory, crash
 * safety (kill -9 during create and append), aborts. */
#include "fst_test.h"
#include "store_fixtures.h"

/* ---- the writer's two ways of writing records ---- */

/* Image i of the "mixed" stores: a few pages, or less than one. */
static void mixed_image(timg *t, unsigned i, fst_dtype dt)
{
    char name[32];
    snprintf(name, sizeof name, "mixed_%03u", i);
    timg_make(t, name, i % 3 == 0 ? 5 : 300 + 97 * i, 64, dt, i % 4 != 1, i + 11);
}

/* The mixed images, descriptors n x d and d x n in turn. Returns the first
 * failure (its detail kept), or FST_OK. */
static fst_status put_mixed(fst_writer *w, unsigned count, fst_dtype dt)
{
    for (unsigned i = 0; i < count; i++) {
        timg t;
        mixed_image(&t, i, dt);
        void *dn = to_dn(&t);
        fst_image img = t.img;
        if (i % 2 == 0) {
            img.desc = dn;
            img.desc_dn = true;
        }
        fst_status s = fst_writer_put(w, &img, NULL);
        free(dn);
        timg_free(&t);
        if (s)
            return s;
    }
    return FST_OK;
}

static void assert_mixed(const char *path, unsigned count, fst_dtype dt)
{
    fst_store *st;
    fst_reader *rd;
    ASSERT_OK(fst_store_open(path, FST_OPEN_CHECKSUMS, &st));
    ASSERT_OK(fst_reader_begin(st, &rd));
    for (unsigned i = 0; i < count; i++) {
        timg t;
        mixed_image(&t, i, dt);
        fst_view v;
        ASSERT_OK(fst_reader_get(rd, t.name, &v));
        assert_view_is(&v, &t.img);
        timg_free(&t);
    }
    fst_reader_end(rd);
    fst_store_close(st);
    assert_verify_clean(path, count);
}

FST_TEST(writer_direct_and_buffered_records_agree)
{
    /* direct (where the file system takes O_DIRECT), and buffered */
    for (int way = 0; way < 4; way++) {
        fst_dtype dt = way / 2 ? FST_DTYPE_F32 : FST_DTYPE_F16;
        char name[64];
        snprintf(name, sizeof name, "mixed-%s-%s.fst", way % 2 ? "buffered" : "direct",
                 fst_dtype_name(dt));
        const char *p = tpath(name);
        fst_writer *w;
        ASSERT_OK(fst_writer_open(p, FST_WRITE_CREATE, &w));
        bool had = fst__writer_direct(w, way % 2 == 0);
        if (way == 0 && !had)
            printf("# this file system refuses O_DIRECT: both ways buffered\n");
        ASSERT_OK(put_mixed(w, 24, dt));
        ASSERT_OK(fst_writer_finish(w, NULL));
        assert_mixed(p, 24, dt);
    }
}

FST_TEST(writer_direct_refused_falls_back_or_fails)
{
    fst_writer *w;
    const char *p = tpath("mixed-einval.fst");
    ASSERT_OK(fst_writer_open(p, FST_WRITE_CREATE, &w));
    if (!fst__writer_direct(w, true)) {
        fst_writer_abort(w);
        FST_SKIP("this file system refuses O_DIRECT opens (or no AIO)");
    }
    /* EINVAL (O_DIRECT refused at write time): the records that tried go
     * through the page cache, and so does every later one */
    fst__direct_fail_errno = EINVAL;
    fst_status s = put_mixed(w, 24, FST_DTYPE_F16);
    fst__direct_fail_errno = 0;
    ASSERT_OK(s);
    ASSERT_TRUE(!fst__writer_direct(w, true));
    ASSERT_OK(fst_writer_finish(w, NULL));
    assert_mixed(p, 24, FST_DTYPE_F16);

    /* ENOSPC, EIO: a failure naming the first image whose write failed
     * (found at a later put, or at finish), and no store left */
    for (int k = 0; k < 2; k++) {
        p = tpath(k ? "mixed-eio.fst" : "mixed-enospc.fst");
        ASSERT_OK(fst_writer_open(p, FST_WRITE_CREATE, &w));
        fst__direct_fail_errno = k ? EIO : ENOSPC;
        s = put_mixed(w, k ? 2 : 24, FST_DTYPE_F32);
        fst__direct_fail_errno = 0;
        if (s == FST_OK)
            s = fst_writer_finish(w, NULL);     /* frees w either way */
        else
            fst_writer_abort(w);
        ASSERT_STATUS(s, k ? FST_EIO : FST_EFULL);
        ASSERT_CONTAINS(fst_errdetail(), "mixed_001");
        ASSERT_CONTAINS(fst_errdetail(), k ? "Input/output error" : "No space left");
        ASSERT_TRUE(!exists(p));
    }
}

FST_TEST(append_without_address_space_to_grow)
{
#ifdef FST_TEST_ASAN
    FST_SKIP("ASan reserves terabytes of shadow memory: no address-space limit");
#else
    const char *p = tpath("as-append.fst");
    make_store(p, 6, 64, FST_DTYPE_F16);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        fst_writer *w;
        if (fst_writer_open(p, FST_WRITE_APPEND, &w))
            _exit(2);
        /* room for a few images, not for the map to double many times */
        uint64_t vm = fst_test_vm_size();
        struct rlimit rl = {.rlim_cur = vm + (48 << 20), .rlim_max = RLIM_INFINITY};
        if (!vm || setrlimit(RLIMIT_AS, &rl) != 0)
            _exit(3);
        fst_status s = FST_OK;
        for (unsigned i = 0; i < 64 && s == FST_OK; i++) {
            timg t;
            char name[32];
            snprintf(name, sizeof name, "as_%02u", i);
            timg_make(&t, name, 20000, 64, FST_DTYPE_F16, false, i);
            s = fst_writer_put(w, &t.img, NULL);
            timg_free(&t);
        }
        printf("# appending under a limit: %s: %s\n", fst_status_name(s),
               fst_errdetail());
        fflush(stdout);
        fst_writer_abort(w);            /* must not touch the lost map */
        _exit(s == FST_ENOMEM || s == FST_EFULL ? 0 : 1);
    }
    int ws;
    ASSERT_EQ(waitpid(pid, &ws, 0), pid);
    ASSERT_TRUE(WIFEXITED(ws));
    ASSERT_EQ(WEXITSTATUS(ws), 0);
    assert_verify_clean(p, 6);
    fst_store *st;
    ASSERT_OK(fst_store_open(p, 0, &st));
    ASSERT_EQ(count_images(st), 6);
    fst_store_close(st);
    /* the next append cleans up and completes */
    fst_writer *w;
    ASSERT_OK(fst_writer_open(p, FST_WRITE_APPEND, &w));
    ASSERT_OK(fst_writer_finish(w, NULL));
    assert_verify_clean(p, 6);
#endif
}

/* ---- creating and appending ---- */

FST_TEST(create_refuses_existing_path)
{
    const char *p = tpath("exists.fst");
    make_store(p, 3, 4, FST_DTYPE_F32);
    fst_writer *w = NULL;
    ASSERT_STATUS(fst_writer_open(p, FST_WRITE_CREATE, &w), FST_EEXIST);
    ASSERT_TRUE(w == NULL);
    ASSERT_CONTAINS(fst_errdetail(), p);
    assert_verify_clean(p, 3);
    const char *plain = tpath("plain.txt");
    FILE *f = fopen(plain, "w");
    fputs("hello", f);
    fclose(f);
    ASSERT_STATUS(fst_writer_open(plain, FST_WRITE_CREATE, &w), FST_EEXIST);
}

FST_TEST(append_skips_identical_refuses_conflicting)
{
    const char *p = tpath("dup.fst");
    make_store(p, 3, 8, FST_DTYPE_F16);
    fst_writer *w;
    ASSERT_OK(fst_writer_open(p, FST_WRITE_APPEND, &w));
    timg t;
    std_image(&t, 1, 8, FST_DTYPE_F16);
    int added = -1;
    ASSERT_OK(fst_writer_put(w, &t.img, &added));
    ASSERT_EQ(added, 0);                          /* identical: skipped */
    timg_free(&t);
    std_image(&t, 7, 8, FST_DTYPE_F16);
    ASSERT_OK(fst_writer_put(w, &t.img, &added));
    ASSERT_EQ(added, 1);
    ASSERT_OK(fst_writer_put(w, &t.img, &added)); /* again, same write */
    ASSERT_EQ(added, 0);
    timg_free(&t);
    ASSERT_OK(fst_writer_finish(w, NULL));

    fst_store *st;
    fst_store_meta m;
    ASSERT_OK(fst_store_open(p, 0, &st));
    ASSERT_OK(fst_store_meta_get(st, &m));
    ASSERT_EQ(m.n_images, 4);
    ASSERT_STREQ(m.source_name, "features.h5");   /* kept: no new source */
    ASSERT_GE(m.modified, m.created);
    fst_store_close(st);
    assert_verify_clean(p, 4);

    /* same name, one descriptor element different: refused by name */
    ASSERT_OK(fst_writer_open(p, FST_WRITE_APPEND, &w));
    std_image(&t, 2, 8, FST_DTYPE_F16);
    ((uint16_t *)t.desc)[3] ^= 1;
    ASSERT_STATUS(fst_writer_put(w, &t.img, &added), FST_EEXIST);
    ASSERT_CONTAINS(fst_errdetail(), "img_0002");
    ASSERT_CONTAINS(fst_errdetail(), "different content");
    ASSERT_STATUS(fst_writer_finish(w, NULL), FST_EINVAL); /* failed writer */
    timg_free(&t);
    assert_verify_clean(p, 4);

    /* image_size alone differing is a conflict too */
    ASSERT_OK(fst_writer_open(p, FST_WRITE_APPEND, &w));
    std_image(&t, 2, 8, FST_DTYPE_F16);
    t.img.image_size[0]++;
    ASSERT_STATUS(fst_writer_put(w, &t.img, &added), FST_EEXIST);
    fst_writer_abort(w);
    timg_free(&t);

    /* and within one CREATE */
    const char *p2 = tpath("dup2.fst");
    ASSERT_OK(fst_writer_open(p2, FST_WRITE_CREATE, &w));
    std_image(&t, 3, 8, FST_DTYPE_F16);
    ASSERT_OK(fst_writer_put(w, &t.img, &added));
    t.kp[0] += 1.0f;
    ASSERT_STATUS(fst_writer_put(w, &t.img, &added), FST_EEXIST);
    fst_writer_abort(w);
    timg_free(&t);
    ASSERT_TRUE(!exists(p2));
}

FST_TEST(append_refuses_other_d_or_dtype)
{
    const char *p = tpath("mismatch.fst");
    make_store(p, 2, 8, FST_DTYPE_F32);
    fst_writer *w;
    timg t;
    ASSERT_OK(fst_writer_open(p, FST_WRITE_APPEND, &w));
    timg_make(&t, "wide/one", 4, 16, FST_DTYPE_F32, false, 1);
    ASSERT_STATUS(fst_writer_put(w, &t.img, NULL), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "wide/one");
    ASSERT_CONTAINS(fst_errdetail(), "float32 x 16");
    ASSERT_CONTAINS(fst_errdetail(), "float32 x 8");
    fst_writer_abort(w);
    timg_free(&t);

    ASSERT_OK(fst_writer_open(p, FST_WRITE_APPEND, &w));
    timg_make(&t, "half/one", 4, 8, FST_DTYPE_F16, false, 1);
    ASSERT_STATUS(fst_writer_put(w, &t.img, NULL), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "half/one");
    ASSERT_CONTAINS(fst_errdetail(), "float16 x 8");
    ASSERT_CONTAINS(fst_errdetail(), "float32 x 8");
    fst_writer_abort(w);
    timg_free(&t);
    assert_verify_clean(p, 2);

    /* within a CREATE: the first image sets d */
    const char *p2 = tpath("mismatch2.fst");
    ASSERT_OK(fst_writer_open(p2, FST_WRITE_CREATE, &w));
    timg_make(&t, "first", 4, 8, FST_DTYPE_F16, false, 1);
    ASSERT_OK(fst_writer_put(w, &t.img, NULL));
    timg_free(&t);
    timg_make(&t, "second", 4, 9, FST_DTYPE_F16, false, 2);
    ASSERT_STATUS(fst_writer_put(w, &t.img, NULL), FST_EINVAL);
    fst_writer_abort(w);
    timg_free(&t);
}

FST_TEST(key_length_limit)
{
    const char *p = tpath("keys.fst");
    fst_writer *w;
    ASSERT_OK(fst_writer_open(p, FST_WRITE_CREATE, &w));
    timg t;
    char name[600];
    memset(name, 'k', 511);
    name[0] = 'L';
    name[511] = '\0';
    timg_make(&t, name, 3, 4, FST_DTYPE_F32, false, 1);
    ASSERT_OK(fst_writer_put(w, &t.img, NULL));    /* 511 bytes: the limit */
    timg_free(&t);
    memset(name, 'x', 512);
    memcpy(name, "very/long/", 10);
    name[512] = '\0';
    timg_make(&t, name, 3, 4, FST_DTYPE_F32, false, 2);
    ASSERT_STATUS(fst_writer_put(w, &t.img, NULL), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "very/long/xxx");
    ASSERT_CONTAINS(fst_errdetail(), "...(512 bytes)");
    ASSERT_CONTAINS(fst_errdetail(), "key limit of 511 bytes");
    ASSERT_LT(strlen(fst_errdetail()), 300);
    fst_writer_abort(w);
    timg_free(&t);

    ASSERT_OK(fst_writer_open(p, FST_WRITE_CREATE, &w));
    memset(name, 'k', 511);
    name[0] = 'L';
    name[511] = '\0';
    timg_make(&t, name, 3, 4, FST_DTYPE_F32, false, 1);
    ASSERT_OK(fst_writer_put(w, &t.img, NULL));
    ASSERT_OK(fst_writer_finish(w, NULL));
    fst_store *st;
    fst_reader *rd;
    fst_view v;
    ASSERT_OK(fst_store_open(p, FST_OPEN_CHECKSUMS, &st));
    ASSERT_OK(fst_reader_begin(st, &rd));
    ASSERT_OK(fst_reader_get(rd, name, &v));
    assert_view_is(&v, &t.img);
    memset(name, 'x', 512);
    name[512] = '\0';
    ASSERT_STATUS(fst_reader_get(rd, name, &v), FST_ENOTFOUND);
    fst_reader_end(rd);
    fst_store_close(st);
    timg_free(&t);
}

FST_TEST(put_refuses_nan)
{
    const char *p = tpath("nan.fst");
    fst_writer *w;
    ASSERT_OK(fst_writer_open(p, FST_WRITE_CREATE, &w));
    timg t;
    timg_make(&t, "seq/nan.jpg", 20, 8, FST_DTYPE_F32, true, 1);
    ((float *)t.desc)[13 * 8 + 6] = NAN;
    ASSERT_STATUS(fst_writer_put(w, &t.img, NULL), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "seq/nan.jpg");
    ASSERT_CONTAINS(fst_errdetail(), "descriptors[13][6]");
    ASSERT_CONTAINS(fst_errdetail(), "NaN");
    fst_writer_abort(w);
    timg_free(&t);
    ASSERT_TRUE(!exists(p));
}

/* A NaN found while copying fails the writer like any bad image: a CREATE
 * leaves no file, an APPEND leaves the store as it was, even after batches
 * of the append were committed. */
FST_TEST(put_nan_after_batches_leaves_store)
{
    const char *p = tpath("nan_late.fst");
    fst_writer *w;
    ASSERT_OK(fst_writer_open(p, FST_WRITE_CREATE, &w));
    fst__writer_set_batch(w, 3, 1 << 20);
    for (unsigned i = 0; i < 10; i++) {
        timg t;
        std_image(&t, i, 64, FST_DTYPE_F16);
        ASSERT_OK(fst_writer_put(w, &t.img, NULL));
        timg_free(&t);
    }
    timg t;
    timg_make(&t, "zz/late_nan", 3000, 64, FST_DTYPE_F16, true, 5);
    ((uint16_t *)t.desc)[2999 * 64 + 63] = 0x7e00;
    ASSERT_STATUS(fst_writer_put(w, &t.img, NULL), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "descriptors[2999][63]");
    ASSERT_STATUS(fst_writer_finish(w, NULL), FST_EINVAL);
    ASSERT_TRUE(!exists(p));

    make_store(p, 4, 64, FST_DTYPE_F16);
    ASSERT_OK(fst_writer_open(p, FST_WRITE_APPEND, &w));
    fst__writer_set_batch(w, 2, 1 << 20);
    for (unsigned i = 100; i < 107; i++) {
        timg u;
        std_image(&u, i, 64, FST_DTYPE_F16);
        ASSERT_OK(fst_writer_put(w, &u.img, NULL));
        timg_free(&u);
    }
    ASSERT_STATUS(fst_writer_put(w, &t.img, NULL), FST_EINVAL);
    fst_writer_abort(w);
    assert_verify_clean(p, 4);
    /* a name already in the store: NaN is still what is reported */
    ASSERT_OK(fst_writer_open(p, FST_WRITE_APPEND, &w));
    timg u;
    std_image(&u, 2, 64, FST_DTYPE_F16);
    if (u.img.n) {
        u.kp[0] = NAN;
        ASSERT_STATUS(fst_writer_put(w, &u.img, NULL), FST_EINVAL);
        ASSERT_CONTAINS(fst_errdetail(), "keypoints[0][0] is NaN");
    }
    fst_writer_abort(w);
    timg_free(&u);
    timg_free(&t);
    assert_verify_clean(p, 4);
}

static long rss_file_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "RssFile:", 8))
            kb = atol(line + 8);
    if (f)
        fclose(f);
    return kb;
}

/* CREATE uses a shared map (MDB_WRITEMAP); the pages it wrote must not
 * stay mapped, or the writer's memory grows with the store. 96 MB of 1 MB
 * records in one batch: the mapped file pages stay far below, whether the
 * records are pwritten (the default) or encoded through the map. */
static void create_memory_case(bool through_map)
{
    const char *p = tpath("rss.fst");
    fst_writer *w;
    ASSERT_OK(fst_writer_open(p, FST_WRITE_CREATE, &w));
    fst__writer_set_batch(w, 1000, 1ull << 30);
    if (through_map)
        fst__writer_through_map(w);
    timg t;
    timg_make(&t, "rss/img", 4096, 128, FST_DTYPE_F16, true, 1);
    long base = rss_file_kb(), peak = base;
    ASSERT_GE(base, 0);
    for (unsigned i = 0; i < 96; i++) {
        snprintf(t.name, sizeof t.name, "rss/img%03u", i);
        ((uint16_t *)t.desc)[i] ^= 1;
        ASSERT_OK(fst_writer_put(w, &t.img, NULL));
        long kb = rss_file_kb();
        if (kb > peak)
            peak = kb;
    }
    ASSERT_OK(fst_writer_finish(w, NULL));
    timg_free(&t);
    printf("# mapped file pages while writing 96 MB%s: %ld kB over %ld kB\n",
           through_map ? " through the map" : "", peak - base, base);
    ASSERT_LT(peak - base, 16 * 1024);
    assert_verify_clean(p, 96);
    unlink(p);
}

FST_TEST(create_memory_stays_bounded)
{
    create_memory_case(false);
    create_memory_case(true);
}

FST_TEST(stale_tmp_files_removed)
{
    const char *p = tpath("stale.fst");
    pid_t dead = dead_pid();
    char t1[600], t2[600], alive[600];
    snprintf(t1, sizeof t1, "%s.tmp-%ld", p, (long)dead);
    snprintf(t2, sizeof t2, "%s.tmp-%ld-lock", p, (long)dead);
    snprintf(alive, sizeof alive, "%s.tmp-%ld", p, (long)getppid());
    const char *files[] = { t1, t2, alive };
    for (int i = 0; i < 3; i++) {
        FILE *f = fopen(files[i], "w");
        ASSERT_TRUE(f != NULL);
        fputs("half a store", f);
        fclose(f);
    }
    make_store(p, 2, 4, FST_DTYPE_F32);
    ASSERT_TRUE(!exists(t1));
    ASSERT_TRUE(!exists(t2));
    ASSERT_TRUE(exists(alive));                  /* a live process's: kept */
    unlink(alive);
    assert_verify_clean(p, 2);
}

/* kill -9 in the middle of a CREATE: nothing at the path, the store does
 * not open, and running the import again succeeds. */
FST_TEST(kill9_during_create)
{
    const char *p = tpath("killed_create.fst");
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        fst_writer *w;
        CHILD_CHECK(fst_writer_open(p, FST_WRITE_CREATE, &w) == FST_OK, 2);
        fst__writer_set_batch(w, 8, 1 << 20);
        for (unsigned i = 0;; i++) {
            timg t;
            std_image(&t, i, 32, FST_DTYPE_F16);
            CHILD_CHECK(fst_writer_put(w, &t.img, NULL) == FST_OK, 3);
            timg_free(&t);
            if (i == 40)
                CHILD_CHECK(write_full(fds[1], "x", 1), 4);
            if (i > 40)
                usleep(2000);
        }
    }
    close(fds[1]);
    char c;
    ASSERT_TRUE(read_full(fds[0], &c, 1));
    close(fds[0]);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", p, (long)pid);
    ASSERT_TRUE(exists(tmp));                   /* it was mid-write */
    kill(pid, SIGKILL);
    int wst;
    ASSERT_EQ(waitpid(pid, &wst, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(wst) && WTERMSIG(wst) == SIGKILL);

    ASSERT_TRUE(!exists(p));
    fst_store *st;
    ASSERT_STATUS(fst_store_open(p, 0, &st), FST_EIO);
    ASSERT_TRUE(exists(tmp));
    /* the temporary file is not a complete store either */
    ASSERT_STATUS(fst_store_open(tmp, 0, &st), FST_EFORMAT);

    make_store(p, 50, 32, FST_DTYPE_F16);       /* the re-run */
    ASSERT_TRUE(!exists(tmp));
    char tmplock[620];
    snprintf(tmplock, sizeof tmplock, "%s-lock", tmp);
    ASSERT_TRUE(!exists(tmplock));
    assert_verify_clean(p, 50);
}

/* kill -9 in the middle of an APPEND that has committed batches: readers
 * see the store exactly as before; the next append removes the leftovers. */
FST_TEST(kill9_during_append)
{
    const char *p = tpath("killed_append.fst");
    make_store(p, 5, 32, FST_DTYPE_F16);
    fst_store *st;
    fst_store_meta before, after;
    ASSERT_OK(fst_store_open(p, 0, &st));
    ASSERT_OK(fst_store_meta_get(st, &before));
    fst_store_close(st);

    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        fst_writer *w;
        CHILD_CHECK(fst_writer_open(p, FST_WRITE_APPEND, &w) == FST_OK, 2);
        fst__writer_set_batch(w, 5, 1 << 20);
        for (unsigned i = 1000;; i++) {
            timg t;
            std_image(&t, i, 32, FST_DTYPE_F16);
            CHILD_CHECK(fst_writer_put(w, &t.img, NULL) == FST_OK, 3);
            timg_free(&t);
            if (i == 1020)                      /* 4 batches committed */
                CHILD_CHECK(write_full(fds[1], "x", 1), 4);
            if (i > 1020)
                usleep(2000);
        }
    }
    close(fds[1]);
    char c;
    ASSERT_TRUE(read_full(fds[0], &c, 1));
    close(fds[0]);
    kill(pid, SIGKILL);
    int wst;
    ASSERT_EQ(waitpid(pid, &wst, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(wst) && WTERMSIG(wst) == SIGKILL);

    ASSERT_OK(fst_store_open(p, FST_OPEN_CHECKSUMS, &st));
    ASSERT_OK(fst_store_meta_get(st, &after));
    ASSERT_MEMEQ(&before, &after, sizeof before);
    fst_reader *rd;
    fst_view v;
    ASSERT_OK(fst_reader_begin(st, &rd));
    ASSERT_STATUS(fst_reader_get(rd, "img_1000", &v), FST_ENOTFOUND);
    ASSERT_STATUS(fst_reader_get(rd, "img_1019", &v), FST_ENOTFOUND);
    ASSERT_OK(fst_reader_get(rd, "img_0004", &v));
    fst_reader_end(rd);
    ASSERT_EQ(count_images(st), 5);
    fst_store_close(st);
    assert_verify_clean(p, 5);

    /* the re-run: only the first ten this time */
    fst_writer *w;
    ASSERT_OK(fst_writer_open(p, FST_WRITE_APPEND, &w));
    for (unsigned i = 1000; i < 1010; i++) {
        timg t;
        std_image(&t, i, 32, FST_DTYPE_F16);
        int added;
        ASSERT_OK(fst_writer_put(w, &t.img, &added));
        ASSERT_EQ(added, 1);           /* the dead run's copy was removed */
        timg_free(&t);
    }
    ASSERT_OK(fst_writer_finish(w, NULL));
    ASSERT_OK(fst_store_open(p, 0, &st));
    ASSERT_EQ(count_images(st), 15);
    ASSERT_OK(fst_reader_begin(st, &rd));
    ASSERT_STATUS(fst_reader_get(rd, "img_1015", &v), FST_ENOTFOUND);
    fst_reader_end(rd);
    fst_store_close(st);
    assert_verify_clean(p, 15);
}

FST_TEST(abort_leaves_store_as_it_was)
{
    const char *p = tpath("abort_create.fst");
    fst_writer *w;
    ASSERT_OK(fst_writer_open(p, FST_WRITE_CREATE, &w));
    fst__writer_set_batch(w, 2, 1 << 20);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s", fst__writer_tmp_path(w));
    ASSERT_TRUE(exists(tmp));
    for (unsigned i = 0; i < 7; i++) {
        timg t;
        std_image(&t, i, 4, FST_DTYPE_F32);
        ASSERT_OK(fst_writer_put(w, &t.img, NULL));
        timg_free(&t);
    }
    fst_writer_abort(w);
    ASSERT_TRUE(!exists(p));
    ASSERT_TRUE(!exists(tmp));

    const char *q = tpath("abort_append.fst");
    make_store(q, 3, 4, FST_DTYPE_F32);
    ASSERT_OK(fst_writer_open(q, FST_WRITE_APPEND, &w));
    ASSERT_TRUE(fst__writer_tmp_path(w) == NULL);
    fst__writer_set_batch(w, 2, 1 << 20);
    for (unsigned i = 10; i < 17; i++) {
        timg t;
        std_image(&t, i, 4, FST_DTYPE_F32);
        ASSERT_OK(fst_writer_put(w, &t.img, NULL));
        timg_free(&t);
    }
    fst_writer_abort(w);
    fst_store *st;
    ASSERT_OK(fst_store_open(q, 0, &st));
    ASSERT_EQ(count_images(st), 3);
    fst_store_close(st);
    assert_verify_clean(q, 3);
    /* one writer at a time */
    fst_writer *w2;
    ASSERT_OK(fst_writer_open(q, FST_WRITE_APPEND, &w));
    ASSERT_STATUS(fst_writer_open(q, FST_WRITE_APPEND, &w2), FST_EEXIST);
    ASSERT_CONTAINS(fst_errdetail(), "another import");
    fst_writer_abort(w);
}

/* ---- refused appends ---- */

/* The whole content of `path` (malloc'd; *size gets its size). */
static char *slurp(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    ASSERT_TRUE(f != NULL);
    struct stat sb;
    ASSERT_TRUE(fstat(fileno(f), &sb) == 0);
    char *b = malloc((size_t)sb.st_size + 1);
    ASSERT_TRUE(b != NULL);
    ASSERT_EQ(fread(b, 1, (size_t)sb.st_size, f), (size_t)sb.st_size);
    fclose(f);
    *size = (size_t)sb.st_size;
    return b;
}

static void assert_file_is(const char *path, const char *bytes, size_t size)
{
    size_t n;
    char *now = slurp(path, &n);
    ASSERT_EQ(n, size);
    bool same = memcmp(now, bytes, size) == 0;
    free(now);
    ASSERT_TRUE(same);
}

/* A refused append leaves the store file byte for byte as it was: the
 * first append to a store (no `pending` table yet) used to create that
 * table and commit at open, growing the file by 8 kB. */
FST_TEST(append_refused_leaves_store_byte_identical)
{
    const char *p = tpath("refused.fst");
    make_store(p, 3, 8, FST_DTYPE_F16);
    size_t n0;
    char *b0 = slurp(p, &n0);
    fst_writer *w;
    timg bad, fresh, same;
    int added = -1;
    std_image(&bad, 2, 8, FST_DTYPE_F16);
    ((uint16_t *)bad.desc)[0] ^= 1;                  /* img_0002, changed */
    std_image(&fresh, 10, 8, FST_DTYPE_F16);         /* not in the store */
    std_image(&same, 1, 8, FST_DTYPE_F16);           /* identical */

    /* the conflict comes first */
    ASSERT_OK(fst_writer_open(p, FST_WRITE_APPEND, &w));
    ASSERT_STATUS(fst_writer_put(w, &bad.img, &added), FST_EEXIST);
    fst_writer_abort(w);
    assert_file_is(p, b0, n0);

    /* a new image first, then the conflict (one uncommitted batch) */
    ASSERT_OK(fst_writer_open(p, FST_WRITE_APPEND, &w));
    ASSERT_OK(fst_writer_put(w, &fresh.img, &added));
    ASSERT_EQ(added, 1);
    ASSERT_STATUS(fst_writer_put(w, &bad.img, &added), FST_EEXIST);
    fst_writer_abort(w);
    assert_file_is(p, b0, n0);

    /* fst_writer_has / fst_writer_check: put's verdict, nothing written,
     * the writer still usable */
    bool present = true;
    ASSERT_OK(fst_writer_open(p, FST_WRITE_APPEND, &w));
    ASSERT_OK(fst_writer_has(w, "img_0002", &present));
    ASSERT_TRUE(present);
    ASSERT_OK(fst_writer_has(w, "img_0010", &present));
    ASSERT_TRUE(!present);
    ASSERT_STATUS(fst_writer_check(w, &bad.img, &present), FST_EEXIST);
    ASSERT_CONTAINS(fst_errdetail(), "img_0002");
    ASSERT_CONTAINS(fst_errdetail(), "different content");
    ASSERT_OK(fst_writer_check(w, &same.img, &present));
    ASSERT_TRUE(present);
    ASSERT_OK(fst_writer_check(w, &fresh.img, &present));
    ASSERT_TRUE(!present);
    fst_writer_abort(w);
    assert_file_is(p, b0, n0);
    ASSERT_OK(fst_writer_open(p, FST_WRITE_APPEND, &w));
    ASSERT_STATUS(fst_writer_check(w, &bad.img, &present), FST_EEXIST);
    ASSERT_OK(fst_writer_put(w, &fresh.img, &added));   /* not failed */
    ASSERT_EQ(added, 1);
    ASSERT_OK(fst_writer_has(w, "img_0010", &present)); /* its own put */
    ASSERT_TRUE(present);
    ASSERT_OK(fst_writer_finish(w, NULL));
    fst_store *st;
    ASSERT_OK(fst_store_open(p, 0, &st));
    ASSERT_EQ(count_images(st), 4);
    fst_store_close(st);
    assert_verify_clean(p, 4);

    /* with a `pending` table now: still byte-identical */
    free(b0);
    b0 = slurp(p, &n0);
    ASSERT_OK(fst_writer_open(p, FST_WRITE_APPEND, &w));
    ASSERT_STATUS(fst_writer_put(w, &bad.img, &added), FST_EEXIST);
    fst_writer_abort(w);
    assert_file_is(p, b0, n0);
    free(b0);
    timg_free(&bad);
    timg_free(&fresh);
    timg_free(&same);
}
