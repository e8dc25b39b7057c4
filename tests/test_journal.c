/* test_journal.c : the journal of finished pairs (store/journal.c): puts,
 * commits and reopening, order, corruption, one writer, growing maps, and
 * how it reports LMDB's and the system's failures. */
#include "fst_test.h"
#include "store_fixtures.h"
#include "journal_fixtures.h"

#include <sys/resource.h>

FST_TEST(journal_put_commit_reopen)
{
    const char *path = tpath("j1.journal");
    fst_journal_remove(path);
    fst_journal *j = NULL;
    ASSERT_STATUS(fst_journal_open(path, 0, &j), FST_ENOTFOUND);
    ASSERT_OK(fst_journal_open(path, FST_JOURNAL_CREATE, &j));
    ASSERT_OK(fst_journal_meta_put(j, "params", "store=x\nmutual=1\n"));
    int16_t m[100];
    uint16_t s[100];
    fst_journal_rec r = rec_of("db/a.jpg", "b.jpg", 100, m, s);
    ASSERT_OK(fst_journal_put(j, "db-a.jpg/b.jpg", &r));
    ASSERT_EQ(fst_journal_pending(j), 2);
    fst_journal_rec g;
    ASSERT_OK(fst_journal_get(j, "db-a.jpg/b.jpg", &g));       /* visible before commit */
    ASSERT_EQ(g.n0, 100);
    ASSERT_OK(fst_journal_commit(j));
    ASSERT_EQ(fst_journal_pending(j), 0);
    r = rec_of("c.jpg", "d.jpg", 0, m, s);                      /* no keypoints */
    ASSERT_OK(fst_journal_put(j, "c.jpg/d.jpg", &r));
    ASSERT_OK(fst_journal_commit(j));
    r = rec_of("e.jpg", "f.jpg", 7, m, s);                      /* never committed */
    ASSERT_OK(fst_journal_put(j, "e.jpg/f.jpg", &r));
    fst_journal_close(j);

    ASSERT_OK(fst_journal_open(path, 0, &j));
    uint64_t n;
    ASSERT_OK(fst_journal_count(j, &n));
    ASSERT_EQ(n, 2);
    char *params = NULL;
    ASSERT_OK(fst_journal_meta_get(j, "params", &params));
    ASSERT_STREQ(params, "store=x\nmutual=1\n");
    free(params);
    ASSERT_STATUS(fst_journal_meta_get(j, "nope", &params), FST_ENOTFOUND);
    ASSERT_STATUS(fst_journal_get(j, "e.jpg/f.jpg", &g), FST_ENOTFOUND);
    ASSERT_OK(fst_journal_get(j, "db-a.jpg/b.jpg", &g));
    ASSERT_STREQ(g.name0, "db/a.jpg");
    ASSERT_STREQ(g.name1, "b.jpg");
    ASSERT_EQ(g.index_size, 2);
    int16_t m2[100];
    uint16_t s2[100];
    rec_of("x", "y", 100, m2, s2);
    ASSERT_MEMEQ(g.matches0, m2, sizeof m2);
    ASSERT_MEMEQ(g.scores0, s2, sizeof s2);
    ASSERT_EQ(g.nmatches, 66);
    ASSERT_OK(fst_journal_get(j, "c.jpg/d.jpg", &g));
    ASSERT_EQ(g.n0, 0);
    fst_journal_close(j);
    ASSERT_OK(fst_journal_remove(path));
    struct stat sb;
    ASSERT_TRUE(stat(path, &sb) != 0);
    char lock[600];
    snprintf(lock, sizeof lock, "%s-lock", path);
    ASSERT_TRUE(stat(lock, &sb) != 0);
}

typedef struct walk_ctx { char keys[8][64]; int n; } walk_ctx;

static fst_status walk_cb(const char *key, const fst_journal_rec *r, void *ctx)
{
    walk_ctx *w = ctx;
    (void)r;
    if (w->n < 8) snprintf(w->keys[w->n], 64, "%s", key);
    w->n++;
    return FST_OK;
}

FST_TEST(journal_foreach_in_key_order_and_long_keys)
{
    const char *path = tpath("j2.journal");
    fst_journal_remove(path);
    fst_journal *j = NULL;
    ASSERT_OK(fst_journal_open(path, FST_JOURNAL_CREATE, &j));
    int16_t m[10];
    uint16_t s[10];
    fst_journal_rec r = rec_of("b", "a", 10, m, s);
    ASSERT_OK(fst_journal_put(j, "b/a", &r));
    r = rec_of("a", "c", 10, m, s);
    ASSERT_OK(fst_journal_put(j, "a/c", &r));
    /* a key longer than LMDB's limit: stored under a hash, found again */
    char longname[700];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    char longkey[1500];
    snprintf(longkey, sizeof longkey, "%s/%s", longname, "y");
    r = rec_of(longname, "y", 10, m, s);
    ASSERT_OK(fst_journal_put(j, longkey, &r));
    ASSERT_OK(fst_journal_commit(j));
    fst_journal_rec g;
    ASSERT_OK(fst_journal_get(j, longkey, &g));
    ASSERT_STREQ(g.name0, longname);
    walk_ctx w = {.n = 0};
    ASSERT_OK(fst_journal_foreach(j, FST_JOURNAL_VERIFY, walk_cb, &w));
    ASSERT_EQ(w.n, 3);
    ASSERT_TRUE(!strncmp(w.keys[0], "#h:", 3));     /* hashed keys sort first */
    ASSERT_STREQ(w.keys[1], "a/c");
    ASSERT_STREQ(w.keys[2], "b/a");
    fst_journal_close(j);
    fst_journal_remove(path);
}

FST_TEST(journal_detects_corruption)
{
    const char *path = tpath("j3.journal");
    fst_journal_remove(path);
    fst_journal *j = NULL;
    ASSERT_OK(fst_journal_open(path, FST_JOURNAL_CREATE, &j));
    int16_t m[300];
    uint16_t s[300];
    fst_journal_rec r = rec_of("a", "b", 300, m, s);
    ASSERT_OK(fst_journal_put(j, "a/b", &r));
    ASSERT_OK(fst_journal_commit(j));
    fst_journal_close(j);
    /* flip one byte of the record's matches (a distinctive run of them) */
    int fd = open(path, O_RDWR);
    ASSERT_TRUE(fd >= 0);
    struct stat sb;
    ASSERT_EQ(fstat(fd, &sb), 0);
    unsigned char *buf = malloc((size_t)sb.st_size);
    ASSERT_EQ(pread(fd, buf, (size_t)sb.st_size, 0), sb.st_size);
    int16_t want[4] = {-1, 2, 4, -1};
    off_t at = -1;
    for (off_t o = 0; o + 8 <= sb.st_size; o++)
        if (!memcmp(buf + o, want, 8)) { at = o; break; }
    ASSERT_TRUE(at >= 0);
    buf[at + 2] ^= 0x40;
    ASSERT_EQ(pwrite(fd, buf + at + 2, 1, at + 2), 1);
    close(fd);
    free(buf);
    ASSERT_OK(fst_journal_open(path, 0, &j));
    fst_journal_rec g;
    ASSERT_STATUS(fst_journal_get(j, "a/b", &g), FST_ECORRUPT);
    ASSERT_CONTAINS(fst_errdetail(), "a/b");
    walk_ctx w = {.n = 0};
    ASSERT_OK(fst_journal_foreach(j, 0, walk_cb, &w));          /* headers only: fine */
    ASSERT_STATUS(fst_journal_foreach(j, FST_JOURNAL_VERIFY, walk_cb, &w), FST_ECORRUPT);
    fst_journal_close(j);
    fst_journal_remove(path);
}

FST_TEST(journal_one_writer_and_bad_files)
{
    const char *path = tpath("j4.journal");
    fst_journal_remove(path);
    fst_journal *j = NULL, *k = NULL;
    ASSERT_OK(fst_journal_open(path, FST_JOURNAL_CREATE, &j));
    /* another process cannot take it while we hold it */
    pid_t pid = fork();
    if (pid == 0) {
        fst_journal *x = NULL;
        fst_status s = fst_journal_open(path, 0, &x);
        fst_journal_close(x);
        _exit(s == FST_EEXIST ? 0 : 1);
    }
    int ws;
    ASSERT_EQ(waitpid(pid, &ws, 0), pid);
    ASSERT_TRUE(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    ASSERT_OK(fst_journal_open(path, FST_JOURNAL_RDONLY, &k));     /* readers may */
    int16_t m[4];
    uint16_t s[4];
    fst_journal_rec r = rec_of("a", "b", 4, m, s);
    ASSERT_STATUS(fst_journal_put(k, "a/b", &r), FST_EINVAL);
    fst_journal_close(k);
    r.index_size = 3;
    ASSERT_STATUS(fst_journal_put(j, "a/b", &r), FST_EINVAL);
    fst_journal_close(j);
    fst_journal_remove(path);
    /* not a journal */
    const char *junk = tpath("junk.journal");
    FILE *f = fopen(junk, "w");
    ASSERT_TRUE(f);
    for (int i = 0; i < 20000; i++) fputc(i * 7, f);
    fclose(f);
    ASSERT_STATUS(fst_journal_open(junk, 0, &j), FST_EFORMAT);
    ASSERT_CONTAINS(fst_errdetail(), "junk.journal");
    fst_journal_remove(junk);
    /* a directory that cannot be written */
    ASSERT_STATUS(fst_journal_open("/proc/nope/x.journal", FST_JOURNAL_CREATE, &j), FST_EIO);
}

/* The journal's map: how large this process maps `path` and how much of
 * that mapping is resident (from /proc/self/smaps; all its mappings). */
static bool map_of(const char *path, uint64_t *size, uint64_t *rss)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return false;
    char line[4096];
    bool in = false, found = false;
    *size = *rss = 0;
    size_t pl = strlen(path);
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, ' ')) {
            size_t l = strlen(line);
            while (l && line[l - 1] == '\n') line[--l] = '\0';
            in = l >= pl && !strcmp(line + l - pl, path) && line[l - pl - 1] == ' ';
            found |= in;
            continue;
        }
        unsigned long kb;
        if (in && sscanf(line, "Size: %lu kB", &kb) == 1) *size += (uint64_t)kb << 10;
        if (in && sscanf(line, "Rss: %lu kB", &kb) == 1) *rss += (uint64_t)kb << 10;
    }
    fclose(f);
    return found;
}

/* Record number i of the big journals: its own names and content, from
 * 0 to 1999 keypoints (records inline in LMDB's leaves and records on
 * overflow pages). */
static fst_journal_rec big_rec(uint32_t i, char *key, size_t klen, int16_t *m, uint16_t *s)
{
    static char a[32], b[32];
    snprintf(a, sizeof a, "q/%06u.jpg", i);
    snprintf(b, sizeof b, "db/%06u.jpg", (i * 7u) % 100000u);
    snprintf(key, klen, "%s/%s", a, b);
    uint32_t n0 = (i * 37u) % 2000u, nm = 0;
    for (uint32_t t = 0; t < n0; t++) {
        m[t] = (int16_t)((i + t) % 5 == 0 ? -1 : (int)((i * 3u + t) % 30000u));
        s[t] = (uint16_t)(i * 31u + t);
        nm += m[t] >= 0;
    }
    fst_journal_rec r = {.name0 = a, .name1 = b, .n0 = n0, .nmatches = nm, .index_size = 2,
                         .matches0 = m, .scores0 = s};
    return r;
}

/* Puts records first..first+n-1 in a shuffled order (as hloc's pairs come:
 * all over the key space), committing every `every` (0: once at the end). */
static fst_status put_big(fst_journal *j, uint32_t first, uint32_t n, uint32_t every)
{
    static int16_t m[2000];
    static uint16_t s[2000];
    char key[80];
    for (uint32_t k = 0; k < n; k++) {
        uint32_t i = first + (uint32_t)(((uint64_t)k * 7919u) % n);   /* n not a multiple of 7919 */
        fst_journal_rec r = big_rec(i, key, sizeof key, m, s);
        fst_status st = fst_journal_put(j, key, &r);
        if (st) return st;
        if (every && (k + 1) % every == 0 && (st = fst_journal_commit(j))) return st;
    }
    return fst_journal_commit(j);
}

/* Every record of first..first+n-1 is there, with its content. */
static bool check_big(fst_journal *j, uint32_t first, uint32_t n)
{
    static int16_t m[2000];
    static uint16_t s[2000];
    char key[80];
    for (uint32_t i = first; i < first + n; i++) {
        fst_journal_rec want = big_rec(i, key, sizeof key, m, s), got;
        if (fst_journal_get(j, key, &got) != FST_OK || got.n0 != want.n0 ||
            got.nmatches != want.nmatches || strcmp(got.name0, want.name0) ||
            strcmp(got.name1, want.name1) || memcmp(got.matches0, m, (size_t)want.n0 * 2) ||
            memcmp(got.scores0, s, (size_t)want.n0 * 2)) {
            printf("# record %u: %s\n", i, fst_errdetail());
            return false;
        }
    }
    return true;
}

static fst_status count_cb(const char *key, const fst_journal_rec *r, void *ctx)
{
    (void)key;
    (void)r;
    ++*(uint64_t *)ctx;
    return FST_OK;
}

#define BIG_N 24000u      /* ~95 MB of records: more than the 64 MB initial map */

FST_TEST(journal_map_grows_on_demand_and_reopens)
{
    const char *path = tpath("big.journal");
    fst_journal_remove(path);
    fst_journal *j = NULL;
    uint64_t msize, mrss, n;
    struct stat sb;
    ASSERT_OK(fst_journal_open(path, FST_JOURNAL_CREATE, &j));
    ASSERT_TRUE(map_of(path, &msize, &mrss));
    ASSERT_LE(msize, 64 << 20);            /* a small map, not 1 TiB of address space */
    /* batches as a run commits them, then one transaction of ~40 MB that
     * outgrows the map in its middle (redone in a larger one) */
    ASSERT_OK(put_big(j, 0, 14000, 500));
    ASSERT_OK(put_big(j, 14000, BIG_N - 14000, 0));
    ASSERT_EQ(stat(path, &sb), 0);
    ASSERT_GT(sb.st_size, 80 << 20);
    ASSERT_TRUE(map_of(path, &msize, &mrss));
    ASSERT_GE(msize, (uint64_t)sb.st_size);
    ASSERT_LE(msize, 4 * (uint64_t)sb.st_size);
    /* after a commit none of the map's pages stays in the process */
    ASSERT_LT(mrss, 8 << 20);
    ASSERT_OK(fst_journal_count(j, &n));
    ASSERT_EQ(n, BIG_N);
    ASSERT_TRUE(check_big(j, 0, BIG_N));
    fst_journal_close(j);

    /* reopened (for a resumed run): larger than the initial map */
    ASSERT_OK(fst_journal_open(path, 0, &j));
    ASSERT_OK(fst_journal_count(j, &n));
    ASSERT_EQ(n, BIG_N);
    ASSERT_TRUE(check_big(j, BIG_N - 100, 100));
    ASSERT_OK(put_big(j, BIG_N, 6000, 500));                     /* ...and goes on */
    ASSERT_TRUE(check_big(j, BIG_N, 6000));
    n = 0;
    ASSERT_OK(fst_journal_foreach(j, FST_JOURNAL_VERIFY, count_cb, &n));
    ASSERT_EQ(n, BIG_N + 6000);
    ASSERT_TRUE(map_of(path, &msize, &mrss));
    ASSERT_LT(mrss, 8 << 20);              /* a walk drops what it read too */
    fst_journal_close(j);

    /* read-only, as the matches.h5 writer reads it */
    ASSERT_OK(fst_journal_open(path, FST_JOURNAL_RDONLY, &j));
    ASSERT_OK(fst_journal_count(j, &n));
    ASSERT_EQ(n, BIG_N + 6000);
    ASSERT_TRUE(check_big(j, 0, BIG_N + 6000));
    fst_journal_close(j);
    ASSERT_OK(fst_journal_remove(path));
}

/* Issue 10, item 9: a resumed run deletes the journaled pairs its list no
 * longer has. A delete is undone by nothing: not by a map that grows in
 * the same transaction (which redoes the transaction), not by a reopen. */
FST_TEST(journal_del_survives_a_grow_and_a_reopen)
{
    const char *path = tpath("del.journal");
    fst_journal_remove(path);
    fst_journal *j = NULL;
    uint64_t n;
    int16_t m[10];
    uint16_t s[10];
    ASSERT_OK(fst_journal_open(path, FST_JOURNAL_CREATE, &j));
    fst_journal_rec r = rec_of("a", "b", 10, m, s);
    ASSERT_OK(fst_journal_put(j, "a/b", &r));
    r = rec_of("a", "c", 10, m, s);
    ASSERT_OK(fst_journal_put(j, "a/c", &r));
    char longname[700], longkey[1500];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    snprintf(longkey, sizeof longkey, "%s/y", longname);
    r = rec_of(longname, "y", 10, m, s);
    ASSERT_OK(fst_journal_put(j, longkey, &r));
    ASSERT_OK(fst_journal_commit(j));
    ASSERT_OK(fst_journal_del(j, "a/b"));
    ASSERT_OK(fst_journal_del(j, longkey));                 /* stored under its hash */
    ASSERT_STATUS(fst_journal_del(j, "a/b"), FST_ENOTFOUND);
    ASSERT_STATUS(fst_journal_del(j, "zz/zz"), FST_ENOTFOUND);
    fst_journal_rec g;
    ASSERT_STATUS(fst_journal_get(j, "a/b", &g), FST_ENOTFOUND);  /* before the commit */
    /* the same transaction outgrows the 64 MB map: it is redone in a larger one */
    ASSERT_OK(put_big(j, 0, 18000, 0));
    ASSERT_OK(fst_journal_count(j, &n));
    ASSERT_EQ(n, 18000 + 1);
    ASSERT_STATUS(fst_journal_get(j, "a/b", &g), FST_ENOTFOUND);
    ASSERT_STATUS(fst_journal_get(j, longkey, &g), FST_ENOTFOUND);
    fst_journal_close(j);
    ASSERT_OK(fst_journal_open(path, 0, &j));
    ASSERT_OK(fst_journal_count(j, &n));
    ASSERT_EQ(n, 18000 + 1);
    ASSERT_STATUS(fst_journal_get(j, "a/b", &g), FST_ENOTFOUND);
    ASSERT_OK(fst_journal_get(j, "a/c", &g));
    ASSERT_TRUE(check_big(j, 0, 18000));
    /* a deleted key that a walk gave (the stored hash) works as well */
    walk_ctx w = {.n = 0};
    r = rec_of(longname, "y", 10, m, s);
    ASSERT_OK(fst_journal_put(j, longkey, &r));
    ASSERT_OK(fst_journal_commit(j));
    ASSERT_OK(fst_journal_foreach(j, 0, walk_cb, &w));
    ASSERT_TRUE(!strncmp(w.keys[0], "#h:", 3));
    ASSERT_OK(fst_journal_del(j, w.keys[0]));
    ASSERT_OK(fst_journal_commit(j));
    ASSERT_STATUS(fst_journal_get(j, longkey, &g), FST_ENOTFOUND);
    fst_journal_close(j);
    ASSERT_OK(fst_journal_open(path, FST_JOURNAL_RDONLY, &j));
    ASSERT_STATUS(fst_journal_del(j, "a/c"), FST_EINVAL);
    fst_journal_close(j);
    ASSERT_OK(fst_journal_remove(path));
}

FST_TEST(journal_reader_follows_a_growing_writer)
{
    const char *path = tpath("grow.journal");
    fst_journal_remove(path);
    fst_journal *j = NULL, *r = NULL;
    uint64_t n;
    ASSERT_OK(fst_journal_open(path, FST_JOURNAL_CREATE, &j));
    ASSERT_OK(put_big(j, 0, 100, 0));
    fst_journal_close(j);
    ASSERT_OK(fst_journal_open(path, FST_JOURNAL_RDONLY, &r));     /* a 64 MB map */
    ASSERT_OK(fst_journal_count(r, &n));
    ASSERT_EQ(n, 100);
    /* another process grows the file far past the reader's map */
    pid_t pid = fork();
    if (pid == 0) {
        fst_journal *w = NULL;
        fst_status s = fst_journal_open(path, 0, &w);
        if (s == FST_OK) s = put_big(w, 100, BIG_N - 100, 1000);
        if (s) printf("# writer: %s: %s\n", fst_status_name(s), fst_errdetail());
        fst_journal_close(w);
        _exit(s == FST_OK ? 0 : 1);
    }
    int ws;
    ASSERT_EQ(waitpid(pid, &ws, 0), pid);
    ASSERT_TRUE(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    ASSERT_OK(fst_journal_count(r, &n));       /* MDB_MAP_RESIZED: maps the file again */
    ASSERT_EQ(n, BIG_N);
    ASSERT_TRUE(check_big(r, 0, BIG_N));
    n = 0;
    ASSERT_OK(fst_journal_foreach(r, FST_JOURNAL_VERIFY, count_cb, &n));
    ASSERT_EQ(n, BIG_N);
    fst_journal_close(r);
    ASSERT_OK(fst_journal_remove(path));
}

FST_TEST(journal_without_address_space_to_grow)
{
#ifdef FST_TEST_ASAN
    FST_SKIP("ASan reserves terabytes of shadow memory: no address-space limit");
#else
    const char *path = tpath("as.journal");
    fst_journal_remove(path);
    pid_t pid = fork();
    if (pid == 0) {
        /* room for the 64 MB map and the batches, not for a 128 MB one */
        fst_journal *j = NULL;
        fst_status s = fst_journal_open(path, FST_JOURNAL_CREATE, &j);
        struct rlimit rl = {.rlim_cur = fst_test_vm_size() + (48 << 20), .rlim_max = RLIM_INFINITY};
        if (s == FST_OK && setrlimit(RLIMIT_AS, &rl) != 0) _exit(2);
        if (s == FST_OK) s = put_big(j, 0, BIG_N, 500);
        int ok = s == FST_ENOMEM && strstr(fst_errdetail(), "address space") != NULL;
        printf("# growing under a limit: %s: %s\n", fst_status_name(s), fst_errdetail());
        uint64_t n;
        ok = ok && fst_journal_count(j, &n) == FST_ENOMEM;        /* unusable, no crash */
        fst_journal_close(j);
        _exit(ok ? 0 : 1);
    }
    int ws;
    ASSERT_EQ(waitpid(pid, &ws, 0), pid);
    ASSERT_TRUE(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    /* what was committed before is intact */
    fst_journal *j = NULL;
    uint64_t n = 0, walked = 0;
    ASSERT_OK(fst_journal_open(path, 0, &j));
    ASSERT_OK(fst_journal_count(j, &n));
    ASSERT_GT(n, 0);
    ASSERT_EQ(n % 500, 0);
    ASSERT_OK(fst_journal_foreach(j, FST_JOURNAL_VERIFY, count_cb, &walked));
    ASSERT_EQ(walked, n);
    fst_journal_close(j);
    ASSERT_OK(fst_journal_remove(path));
#endif
}

/* The journal reports the system's failures as the store does: no space
 * and an exceeded quota are both "full", not an I/O error. */
FST_TEST(journal_maps_no_space_and_quota_to_full)
{
    ASSERT_STATUS(fst__journal_from_mdb(EDQUOT, "q.journal", "committing"), FST_EFULL);
    ASSERT_CONTAINS(fst_errdetail(), "q.journal: committing: ");
    ASSERT_STATUS(fst__journal_from_mdb(ENOSPC, "q.journal", "committing"), FST_EFULL);
    ASSERT_STATUS(fst__journal_from_mdb(ENOMEM, "q.journal", "putting"), FST_ENOMEM);
    ASSERT_STATUS(fst__journal_from_mdb(EACCES, "q.journal", "opening"), FST_EIO);
    ASSERT_STATUS(fst__journal_from_mdb(0, "q.journal", "opening"), FST_OK);
}
