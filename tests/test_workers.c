/* test_workers.c : pairs files (hloc's parsing and order), pair keys, the
 * coordinator/worker protocol, and matches.h5 from a journal (the journal
 * itself: test_journal.c).
 * The processes themselves are tested end to end in tests/match/. */
#include "fst_test.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fst_journal.h"
#include "fst_loader.h"
#include "fst_store.h"
#include "fst_worker.h"
#include "worker_impl.h"
#include "journal_fixtures.h"

/* ---- helpers ---- */

static char tmpdir[256];

static const char *tmp_path(const char *name)
{
    static char buf[4][512];
    static int k;
    if (!tmpdir[0]) {
        snprintf(tmpdir, sizeof tmpdir, "/tmp/fst-test-workers-XXXXXX");
        if (!mkdtemp(tmpdir)) abort();
    }
    char *b = buf[k++ % 4];
    snprintf(b, 512, "%s/%s", tmpdir, name);
    return b;
}

static fst_pairs *parse(const char *text)
{
    fst_pairs *p = NULL;
    fst_status s = fst_pairs_parse_mem(text, strlen(text), "pairs.txt", &p);
    if (s != FST_OK) {
        printf("# parse failed: %s\n", fst_errdetail());
        return NULL;
    }
    return p;
}

/* "a b;c d;..." of the parsed pairs, for compact comparisons. */
static const char *pairs_str(const fst_pairs *p)
{
    static char buf[4096];
    size_t l = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < fst_pairs_count(p); i++) {
        fst_pair q = fst_pairs_get(p, i);
        l += (size_t)snprintf(buf + l, sizeof buf - l, "%s%s %s", i ? ";" : "",
                              fst_pairs_name(p, q.i0), fst_pairs_name(p, q.i1));
    }
    return buf;
}

/* ---- pairs files ---- */

FST_TEST(pairs_plain)
{
    fst_pairs *p = parse("a.jpg b.jpg\nb.jpg c.jpg\n");
    ASSERT_TRUE(p);
    ASSERT_EQ(fst_pairs_count(p), 2);
    ASSERT_EQ(fst_pairs_nnames(p), 3);
    ASSERT_STREQ(pairs_str(p), "a.jpg b.jpg;b.jpg c.jpg");
    ASSERT_EQ(fst_pairs_stats(p)->lines, 2);
    fst_pairs_free(p);
}

FST_TEST(pairs_format_quirks)
{
    /* comments, blank and blank-only lines, CRLF, tabs, leading and
     * trailing blanks, no final newline */
    fst_pairs *p = parse("# the header\n\n  \t \na b\r\n\tc\td  \r\n# x y z\n  e   f");
    ASSERT_TRUE(p);
    ASSERT_STREQ(pairs_str(p), "a b;c d;e f");
    ASSERT_EQ(fst_pairs_stats(p)->lines, 3);
    fst_pairs_free(p);
    /* empty file, only comments */
    p = parse("");
    ASSERT_TRUE(p);
    ASSERT_EQ(fst_pairs_count(p), 0);
    fst_pairs_free(p);
    p = parse("# nothing here\n#\n\n");
    ASSERT_TRUE(p);
    ASSERT_EQ(fst_pairs_count(p), 0);
    fst_pairs_free(p);
    /* names keep every other byte: slashes, dashes, '#' inside a name */
    p = parse("db/seq-1/x#1.jpg q_2.png\n");
    ASSERT_TRUE(p);
    ASSERT_STREQ(pairs_str(p), "db/seq-1/x#1.jpg q_2.png");
    fst_pairs_free(p);
}

FST_TEST(pairs_hash_lines_of_two_names_are_pairs_as_in_hloc)
{
    /* hloc: `q, r = p.split()` on every line, no comments. A '#' line of
     * two names is a pair; '#' lines hloc would refuse are comments. */
    fst_pairs *p = parse("# retrieval top 2\n#1.jpg b.jpg\n  #\n\t#only\n# x\n#a b c d\n"
                         "b.jpg #1.jpg\n");
    ASSERT_TRUE(p);
    ASSERT_STREQ(pairs_str(p), "#1.jpg b.jpg;# x");
    ASSERT_EQ(fst_pairs_stats(p)->lines, 3);
    ASSERT_EQ(fst_pairs_stats(p)->reversed, 1);
    ASSERT_EQ(fst_pairs_stats(p)->comments, 4);
    fst_pairs_free(p);
    /* a line not starting with '#' keeps being an error */
    fst_pairs *q = NULL;
    const char *bad = "a b\nx #y z\n";
    ASSERT_STATUS(fst_pairs_parse_mem(bad, strlen(bad), "pairs.txt", &q), FST_EFORMAT);
    ASSERT_CONTAINS(fst_errdetail(), "pairs.txt:2:");
}

FST_TEST(pairs_utf8_bom_at_the_start_removed_and_counted)
{
    fst_pairs *p = parse("\xEF\xBB\xBF" "a.jpg b.jpg\nb.jpg c.jpg\n");
    ASSERT_TRUE(p);
    ASSERT_STREQ(pairs_str(p), "a.jpg b.jpg;b.jpg c.jpg");
    ASSERT_EQ(fst_pairs_stats(p)->bom, 1);
    fst_pairs_free(p);
    /* only at the start: elsewhere those bytes are part of a name */
    p = parse("a.jpg b.jpg\n\xEF\xBB\xBF" "c.jpg d.jpg\n");
    ASSERT_TRUE(p);
    ASSERT_EQ(fst_pairs_stats(p)->bom, 0);
    ASSERT_STREQ(fst_pairs_name(p, fst_pairs_get(p, 1).i0), "\xEF\xBB\xBF" "c.jpg");
    fst_pairs_free(p);
    p = parse("\xEF\xBB\xBF");
    ASSERT_TRUE(p);
    ASSERT_EQ(fst_pairs_count(p), 0);
    ASSERT_EQ(fst_pairs_stats(p)->bom, 1);
    fst_pairs_free(p);
}

FST_TEST(pairs_colliding_keys_refused)
{
    /* x/y.jpg and x-y.jpg: the same key part under hloc's names_to_pair */
    fst_pairs *p = parse("a.jpg b.jpg\nx/y.jpg b.jpg\nc.jpg d.jpg\nx-y.jpg b.jpg\n"
                         "b.jpg x-y.jpg\nq/r/s.jpg t.jpg\nq-r/s.jpg t.jpg\n");
    ASSERT_TRUE(p);
    ASSERT_STATUS(fst_pairs_check_keys(p, NULL), FST_EEXIST);
    ASSERT_CONTAINS(fst_errdetail(), "(x/y.jpg, b.jpg) and (x-y.jpg, b.jpg)");
    ASSERT_CONTAINS(fst_errdetail(), "'x-y.jpg/b.jpg'");
    ASSERT_CONTAINS(fst_errdetail(), "images x/y.jpg and x-y.jpg");
    ASSERT_CONTAINS(fst_errdetail(), "2 colliding pairs in all");
    /* pairs left out (unknown images under --skip-missing) cannot collide */
    bool skip[16] = {false};
    ASSERT_TRUE(fst_pairs_nnames(p) <= 16);
    skip[fst__pairs_find(p, "x-y.jpg")] = true;
    skip[fst__pairs_find(p, "q-r/s.jpg")] = true;
    ASSERT_OK(fst_pairs_check_keys(p, skip));
    skip[fst__pairs_find(p, "q-r/s.jpg")] = false;
    ASSERT_STATUS(fst_pairs_check_keys(p, skip), FST_EEXIST);
    ASSERT_CONTAINS(fst_errdetail(), "'q-r-s.jpg/t.jpg'");
    ASSERT_CONTAINS(fst_errdetail(), "1 colliding pair in all");
    fst_pairs_free(p);
    /* the same look-alike names in pairs with different partners are fine,
     * and so is a pair and its reverse (hloc's de-duplication first) */
    p = parse("x/y.jpg b.jpg\nx-y.jpg c.jpg\nb.jpg x/y.jpg\nb.jpg x-y.jpg\n");
    ASSERT_TRUE(p);
    ASSERT_OK(fst_pairs_check_keys(p, NULL));
    fst_pairs_free(p);
    p = parse("");
    ASSERT_TRUE(p);
    ASSERT_OK(fst_pairs_check_keys(p, NULL));
    fst_pairs_free(p);
}

FST_TEST(pairs_malformed_lines_name_file_and_line)
{
    fst_pairs *p = NULL;
    const char *one = "a b\n\n# c\nlonely.jpg\n";
    ASSERT_STATUS(fst_pairs_parse_mem(one, strlen(one), "pairs.txt", &p), FST_EFORMAT);
    ASSERT_CONTAINS(fst_errdetail(), "pairs.txt:4:");
    ASSERT_CONTAINS(fst_errdetail(), "found 1");
    ASSERT_CONTAINS(fst_errdetail(), "lonely.jpg");
    const char *three = "a b\r\na b c\r\n";
    ASSERT_STATUS(fst_pairs_parse_mem(three, strlen(three), "x.txt", &p), FST_EFORMAT);
    ASSERT_CONTAINS(fst_errdetail(), "x.txt:2:");
    ASSERT_CONTAINS(fst_errdetail(), "found 3");
    const char nul[] = "a b\nc\0d e\n";
    ASSERT_STATUS(fst_pairs_parse_mem(nul, sizeof nul - 1, "n.txt", &p), FST_EFORMAT);
    ASSERT_CONTAINS(fst_errdetail(), "n.txt:2:");
    ASSERT_TRUE(p == NULL);
}

FST_TEST(pairs_hloc_order_groups_by_first_name)
{
    /* parse_retrieval: {a: [b, c], x: [y], d: [e]} in order of first
     * appearance of the first name */
    fst_pairs *p = parse("a b\nx y\nd e\na c\nx z\n");
    ASSERT_TRUE(p);
    ASSERT_STREQ(pairs_str(p), "a b;a c;x y;x z;d e");
    fst_pairs_free(p);
}

FST_TEST(pairs_hloc_unique_and_reversed)
{
    /* find_unique_new_pairs: (i, j) kept unless (j, i) kept; repeats
     * collapse. Orientation follows the grouped order, not the file's:
     * "b c" groups under b, so "c b" (group c, later) is the one dropped... */
    fst_pairs *p = parse("c b\nb c\na b\nb a\na b\n");
    ASSERT_TRUE(p);
    /* groups: c:[b], b:[c, a], a:[b, b] -> (c,b) (b,c)x (b,a) (a,b)x (a,b)x */
    ASSERT_STREQ(pairs_str(p), "c b;b a");
    ASSERT_EQ(fst_pairs_stats(p)->reversed, 3);   /* hloc tests (j, i) first */
    ASSERT_EQ(fst_pairs_stats(p)->duplicates, 0);
    fst_pairs_free(p);
    /* ...and a later first name's pair drops an earlier reversed line */
    p = parse("x a\nb c\nc b\nx d\n");
    ASSERT_TRUE(p);
    ASSERT_STREQ(pairs_str(p), "x a;x d;b c");
    fst_pairs_free(p);
}

FST_TEST(pairs_self_pairs_kept_once)
{
    fst_pairs *p = parse("a b\nc c\nc c\nb a\n");
    ASSERT_TRUE(p);
    ASSERT_STREQ(pairs_str(p), "a b;c c");
    ASSERT_EQ(fst_pairs_stats(p)->self_pairs, 1);
    ASSERT_EQ(fst_pairs_stats(p)->first_self_line, 2);
    ASSERT_EQ(fst_pairs_stats(p)->duplicates, 1);
    ASSERT_EQ(fst_pairs_stats(p)->reversed, 1);
    fst_pairs_free(p);
}

FST_TEST(pairs_file_errors_and_hash)
{
    fst_pairs *p = NULL;
    ASSERT_STATUS(fst_pairs_parse(tmp_path("missing.txt"), &p), FST_EIO);
    ASSERT_CONTAINS(fst_errdetail(), "missing.txt");
    ASSERT_STATUS(fst_pairs_parse(tmpdir, &p), FST_EIO);
    ASSERT_CONTAINS(fst_errdetail(), "directory");
    const char *path = tmp_path("p.txt");
    FILE *f = fopen(path, "w");
    ASSERT_TRUE(f);
    fputs("a b\nb c\n", f);
    fclose(f);
    ASSERT_OK(fst_pairs_parse(path, &p));
    fst_pairs *q = parse("a b\nb c\n");
    ASSERT_TRUE(q);
    ASSERT_EQ(fst_pairs_stats(p)->hash, fst_pairs_stats(q)->hash);
    fst_pairs_free(q);
    q = parse("a b\nb c\n\n");
    ASSERT_NE(fst_pairs_stats(p)->hash, fst_pairs_stats(q)->hash);
    fst_pairs_free(q);
    fst_pairs_free(p);
}

FST_TEST(pairs_many)
{
    /* 200 first names x 50 second names, then every pair reversed */
    size_t cap = 1 << 20, l = 0;
    char *t = malloc(cap);
    ASSERT_TRUE(t);
    for (int i = 0; i < 200; i++)
        for (int j = 0; j < 50; j++)
            l += (size_t)snprintf(t + l, cap - l, "q%d d%d\n", i, j);
    for (int i = 0; i < 200; i++)
        for (int j = 0; j < 50; j++)
            l += (size_t)snprintf(t + l, cap - l, "d%d q%d\n", j, i);
    fst_pairs *p = NULL;
    ASSERT_OK(fst_pairs_parse_mem(t, l, "big.txt", &p));
    ASSERT_EQ(fst_pairs_count(p), 10000);
    ASSERT_EQ(fst_pairs_stats(p)->reversed, 10000);
    fst_pair last = fst_pairs_get(p, 9999);
    ASSERT_STREQ(fst_pairs_name(p, last.i0), "q199");
    ASSERT_STREQ(fst_pairs_name(p, last.i1), "d49");
    ASSERT_EQ(fst__pairs_find(p, "d7") != UINT32_MAX, 1);
    ASSERT_EQ(fst__pairs_find(p, "d77"), UINT32_MAX);
    fst_pairs_free(p);
    free(t);
}

/* ---- shards (match --shard K/N) ---- */

/* Pairs files shaped like hloc's own. covis: a sequence of `n` images,
 * each paired with its 20 nearest frames along the track (gaps where frames
 * were dropped) and now and then a loop closure, as pairs_from_covisibility
 * writes them (every image lists its neighbours, so each pair also comes
 * reversed). retrieval: `q` queries, each with its top `k` database images
 * (pairs_from_retrieval, Aachen's 1015 x 50). */
static char *covis_pairs(int n, size_t *len)
{
    size_t cap = (size_t)n * 24 * 40, l = 0;
    char *t = malloc(cap);
    if (!t) abort();
    for (int i = 0; i < n; i++) {
        int got = 0;
        for (int d = 1; got < 20 && d < 40; d++)
            for (int sgn = -1; sgn <= 1 && got < 20; sgn += 2) {
                int j = i + sgn * d;
                if (j < 0 || j >= n || (j * 7 + i * 3) % 11 == 0) continue;   /* not covisible */
                l += (size_t)snprintf(t + l, cap - l, "seq/f%05d.jpg seq/f%05d.jpg\n", i, j);
                got++;
            }
        if (i % 97 == 0 && i > 500)                                         /* loop closure */
            l += (size_t)snprintf(t + l, cap - l, "seq/f%05d.jpg seq/f%05d.jpg\n", i, i - 400);
    }
    *len = l;
    return t;
}

static char *retrieval_pairs(int q, int k, size_t *len)
{
    size_t cap = (size_t)q * k * 40, l = 0;
    char *t = malloc(cap);
    if (!t) abort();
    for (int i = 0; i < q; i++)
        for (int j = 0; j < k; j++)
            l += (size_t)snprintf(t + l, cap - l, "query/q%04d.jpg db/d%05d.jpg\n", i,
                                  (i * 131 + j * 17) % 4328);
    *len = l;
    return t;
}

/* Check the parts of every N in [2, maxn]: disjoint and complete (part k
 * is the next run of the list), never splitting a first image's pairs, the
 * same from a fresh parse, each within `tol` of total / N, and within the
 * largest group of it whatever tol. */
static void check_split(const char *text, size_t len, uint32_t maxn, double tol)
{
    fst_pairs *p = NULL, *again = NULL;
    ASSERT_OK(fst_pairs_parse_mem(text, len, "real.txt", &p));
    size_t total = fst_pairs_count(p), biggest = 0, run = 0;
    for (size_t i = 0; i < total; i++) {
        run = i && fst_pairs_get(p, i).i0 == fst_pairs_get(p, i - 1).i0 ? run + 1 : 1;
        if (run > biggest) biggest = run;
    }
    ASSERT_GT(total, (size_t)10000);
    double worst = 0;
    for (uint32_t n = 2; n <= maxn; n++) {
        size_t next = 0;
        for (uint32_t k = 0; k < n; k++) {
            size_t lo, hi;
            ASSERT_OK(fst_pairs_shard_bounds(p, k, n, &lo, &hi));
            ASSERT_EQ(lo, next);                      /* disjoint, nothing skipped */
            ASSERT_LE(lo, hi);
            next = hi;
            if (lo > 0 && lo < total)                 /* a first image's pairs stay together */
                ASSERT_NE(fst_pairs_get(p, lo).i0, fst_pairs_get(p, lo - 1).i0);
            double want = (double)total / n, dev = fabs((double)(hi - lo) - want);
            ASSERT_LE(dev, (double)biggest + 1);
            if (dev / want > worst) worst = dev / want;
            if (tol > 0 && dev > tol * want) {
                printf("# part %u/%u: %zu pairs, %.1f wanted\n", k, n, hi - lo, want);
                ASSERT_LE(dev, tol * want);
            }
        }
        ASSERT_EQ(next, total);                       /* complete */
    }
    printf("# %zu pairs, largest group %zu: worst part %.1f%% from total / N (N = 2..%u)\n",
           total, biggest, 100 * worst, maxn);
    /* deterministic: a new parse, in place, gives the same pairs */
    for (uint32_t k = 0; k < 7; k++) {
        size_t lo, hi;
        ASSERT_OK(fst_pairs_shard_bounds(p, k, 7, &lo, &hi));
        ASSERT_OK(fst_pairs_parse_mem(text, len, "real.txt", &again));
        ASSERT_OK(fst_pairs_shard(again, k, 7));
        ASSERT_EQ(fst_pairs_count(again), hi - lo);
        for (size_t i = lo; i < hi; i++) {
            fst_pair a = fst_pairs_get(p, i), b = fst_pairs_get(again, i - lo);
            ASSERT_STREQ(fst_pairs_name(p, a.i0), fst_pairs_name(again, b.i0));
            ASSERT_STREQ(fst_pairs_name(p, a.i1), fst_pairs_name(again, b.i1));
        }
        ASSERT_EQ(fst_pairs_stats(again)->whole, total);
        ASSERT_EQ(fst_pairs_stats(again)->list_hash, fst_pairs_stats(p)->list_hash);
        fst_pairs_free(again);
        again = NULL;
    }
    fst_pairs_free(p);
}

FST_TEST(pairs_shard_split_of_real_shaped_lists)
{
    size_t len;
    char *t = covis_pairs(2000, &len);
    check_split(t, len, 64, 0.10);
    free(t);
    t = retrieval_pairs(1015, 50, &len);
    check_split(t, len, 64, 0.10);
    free(t);
    /* exhaustive pairs (groups from 299 down to 1): the bound still holds */
    size_t cap = 300 * 300 * 24, l = 0;
    t = malloc(cap);
    ASSERT_TRUE(t);
    for (int i = 0; i < 300; i++)
        for (int j = i + 1; j < 300; j++) l += (size_t)snprintf(t + l, cap - l, "i%d i%d\n", i, j);
    check_split(t, l, 64, 0);
    free(t);
}

FST_TEST(pairs_shard_edges)
{
    fst_pairs *p = parse("a b\na c\nb c\nd a\n");
    ASSERT_TRUE(p);
    size_t lo, hi;
    ASSERT_STATUS(fst_pairs_shard_bounds(p, 0, 0, &lo, &hi), FST_EINVAL);
    ASSERT_STATUS(fst_pairs_shard_bounds(p, 3, 3, &lo, &hi), FST_EINVAL);
    ASSERT_OK(fst_pairs_shard_bounds(p, 0, 1, &lo, &hi));
    ASSERT_EQ(lo, 0);
    ASSERT_EQ(hi, 4);
    /* more parts than groups: some are empty, none splits a group */
    uint32_t seen = 0;
    for (uint32_t k = 0; k < 10; k++) {
        ASSERT_OK(fst_pairs_shard_bounds(p, k, 10, &lo, &hi));
        seen += (uint32_t)(hi - lo);
    }
    ASSERT_EQ(seen, (uint32_t)fst_pairs_count(p));
    ASSERT_OK(fst_pairs_shard(p, 1, 2));
    ASSERT_STREQ(pairs_str(p), "b c;d a");
    ASSERT_EQ(fst_pairs_stats(p)->whole, 4);
    fst_pairs_free(p);
    /* the list's hash ignores what does not change the list */
    fst_pairs *x = parse("a b\n# top 2\nb c\nb a\n"), *y = parse("a b\r\n\nb\tc\n");
    ASSERT_TRUE(x && y);
    ASSERT_EQ(fst_pairs_stats(x)->list_hash, fst_pairs_stats(y)->list_hash);
    ASSERT_NE(fst_pairs_stats(x)->hash, fst_pairs_stats(y)->hash);
    fst_pairs_free(y);
    y = parse("a b\nc b\n");
    ASSERT_NE(fst_pairs_stats(x)->list_hash, fst_pairs_stats(y)->list_hash);
    fst_pairs_free(x);
    fst_pairs_free(y);
}

/* ---- pair keys ---- */

FST_TEST(pair_keys_are_hlocs)
{
    char buf[64];
    ASSERT_EQ(fst_pair_key("a.jpg", "b.jpg", '/', buf, sizeof buf), 11);
    ASSERT_STREQ(buf, "a.jpg/b.jpg");
    fst_pair_key("db/seq1/1.jpg", "q/2.jpg", '/', buf, sizeof buf);
    ASSERT_STREQ(buf, "db-seq1-1.jpg/q-2.jpg");
    fst_pair_key("db/seq1/1.jpg", "q/2.jpg", '_', buf, sizeof buf);
    ASSERT_STREQ(buf, "db-seq1-1.jpg_q-2.jpg");
    /* like snprintf: the full length, truncated output, always terminated */
    char small[6];
    ASSERT_EQ(fst_pair_key("abcd", "efgh", '/', small, sizeof small), 9);
    ASSERT_STREQ(small, "abcd/");
    ASSERT_EQ(fst_pair_key("abcd", "efgh", '/', NULL, 0), 9);
}

/* ---- protocol ---- */

FST_TEST(protocol_roundtrip_and_partial_messages)
{
    fst__buf b = {0};
    size_t start;
    ASSERT_OK(fst__msg_begin(&b, FST__MSG_RESULT, &start));
    ASSERT_OK(fst__msg_u32(&b, 7));
    ASSERT_OK(fst__msg_i32(&b, -5));
    ASSERT_OK(fst__msg_f64(&b, 0.8));
    ASSERT_OK(fst__msg_str(&b, "name/with spaces"));
    fst__msg_end(&b, start);
    fst__wconfig c = {.store = "s.fst", .query = "", .backend = "cpu", .params = "threads=1",
                      .mutual = 1, .ratio = 0.8, .distance = 0, .index_size = 2,
                      .chunk = 8, .slot = 3, .verify = 1,
                      .matcher = "algorithm=lightglue\n"};
    ASSERT_OK(fst__wconfig_encode(&b, &c));

    /* fed byte by byte: nothing until complete */
    fst__buf in = {0};
    uint32_t type;
    fst__rd r;
    int got = 0;
    size_t k;
    for (k = 0; k < b.len && !got; k++) {
        ASSERT_OK(fst__buf_reserve(&in, 1));
        in.p[in.len++] = b.p[k];
        got = fst__msg_next(&in, &type, &r);
    }
    ASSERT_EQ(got, 1);
    ASSERT_EQ(type, FST__MSG_RESULT);
    ASSERT_EQ(fst__rd_u32(&r), 7);
    ASSERT_EQ(fst__rd_i32(&r), -5);
    ASSERT_NEAR(fst__rd_f64(&r), 0.8, 0);
    uint32_t l;
    const char *s = fst__rd_str(&r, &l);
    ASSERT_EQ(l, 16);
    ASSERT_TRUE(!memcmp(s, "name/with spaces", 16));
    ASSERT_TRUE(!r.bad);
    fst__rd_u32(&r);                          /* past the end: flagged */
    ASSERT_TRUE(r.bad);
    for (; k < b.len; k++) in.p[in.len++] = b.p[k];
    ASSERT_EQ(fst__msg_next(&in, &type, &r), 1);
    ASSERT_EQ(type, FST__MSG_CONFIG);
    fst__wconfig d;
    char *strs[5];
    ASSERT_OK(fst__wconfig_decode(&r, &d, strs));
    ASSERT_STREQ(d.matcher, "algorithm=lightglue\n");
    ASSERT_STREQ(d.store, "s.fst");
    ASSERT_STREQ(d.params, "threads=1");
    ASSERT_EQ(d.slot, 3);
    ASSERT_EQ(d.chunk, 8);
    ASSERT_EQ(d.verify, 1);
    ASSERT_NEAR(d.ratio, 0.8, 0);
    for (int i = 0; i < 5; i++) free(strs[i]);
    ASSERT_EQ(fst__msg_next(&in, &type, &r), 0);

    /* an impossible header is an error, not a wait */
    fst__buf bad = {0};
    ASSERT_OK(fst__buf_reserve(&bad, 8));
    uint32_t hdr[2] = {FST__MSG_RESULT, 0xfffffff0u};
    memcpy(bad.p, hdr, 8);
    bad.len = 8;
    ASSERT_EQ(fst__msg_next(&bad, &type, &r), FST_EFORMAT);
    fst__buf_free(&bad);
    fst__buf_free(&in);
    fst__buf_free(&b);
}

/* A configuration that fails to decode leaves no string for the caller to
 * free twice (the worker frees all five at its end, whatever happened). */
FST_TEST(protocol_bad_config_frees_its_strings_once)
{
    fst__buf b = {0};
    fst__wconfig c = {.store = "s.fst", .query = "", .backend = "cpu", .params = "",
                      .index_size = 3};                   /* neither 2 nor 4 */
    ASSERT_OK(fst__wconfig_encode(&b, &c));
    uint32_t type;
    fst__rd r;
    ASSERT_EQ(fst__msg_next(&b, &type, &r), 1);
    fst__wconfig d;
    char *strs[5] = {0};
    ASSERT_STATUS(fst__wconfig_decode(&r, &d, strs), FST_EFORMAT);
    for (int i = 0; i < 5; i++) {
        ASSERT_TRUE(strs[i] == NULL);
        free(strs[i]);                    /* as fst_worker_main does */
    }
    fst__buf_free(&b);
}

FST_TEST(matcher_presets_are_hlocs_confs)
{
    fst_matcher_conf c;
    ASSERT_OK(fst_matcher_preset("superglue", &c));
    ASSERT_EQ(c.algo, FST_ALGO_SUPERGLUE);
    ASSERT_EQ(c.sinkhorn_iterations, 50);
    ASSERT_NEAR(c.match_threshold, 0.2, 0);
    ASSERT_OK(fst_matcher_preset("superglue-fast", &c));
    ASSERT_EQ(c.sinkhorn_iterations, 5);
    ASSERT_OK(fst_matcher_preset("disk+lightglue", &c));
    ASSERT_EQ(c.algo, FST_ALGO_LIGHTGLUE);
    ASSERT_NEAR(c.depth_confidence, 0.95, 0);
    ASSERT_NEAR(c.width_confidence, 0.99, 0);
    ASSERT_NEAR(c.filter_threshold, 0.1, 0);
    ASSERT_TRUE(!c.scale_ori);
    ASSERT_OK(fst_matcher_preset("doghardnet+lightglue", &c));
    ASSERT_TRUE(c.scale_ori);
    ASSERT_OK(fst_matcher_preset("NN-ratio", &c));
    ASSERT_EQ(c.algo, FST_ALGO_NN);
    ASSERT_NEAR(c.nn.ratio_threshold, 0.8, 0);
    fst_matcher_conf keep = c;
    ASSERT_STATUS(fst_matcher_preset("lightglue", &c), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "superglue-fast");
    ASSERT_MEMEQ(&c, &keep, sizeof c);                   /* untouched */
    /* a neural conf without weights: the hint, naming file and publisher */
    ASSERT_OK(fst_matcher_preset("superpoint+lightglue", &c));
    char *text = NULL;
    ASSERT_STATUS(fst_matcher_conf_text(&c, &text), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "superpoint_lightglue.pth");
    ASSERT_CONTAINS(fst_errdetail(), "github.com/cvg/LightGlue");
    ASSERT_TRUE(text == NULL);
    ASSERT_TRUE(fst_matcher_weights_hint("NN-mutual") == NULL);
    c.weights = "/nonexistent/w.pth";
    ASSERT_STATUS(fst_matcher_conf_text(&c, &text), FST_EIO);
    ASSERT_CONTAINS(fst_errdetail(), "/nonexistent/w.pth");
    c.depth_confidence = -1;
    ASSERT_STATUS(fst_matcher_conf_text(&c, &text), FST_EINVAL);
    /* nn: the text carries the options; a neural algorithm refuses CUDA */
    ASSERT_OK(fst_matcher_preset("NN-superpoint", &c));
    ASSERT_OK(fst_matcher_conf_text(&c, &text));
    ASSERT_STREQ(text, "algorithm=nn\nmutual=1\nratio_threshold=0\n"
                       "distance_threshold=0.69999999999999996\n");
    free(text);
    fst_matcher *m = NULL;
    ASSERT_STATUS(fst_matcher_open("algorithm=superglue\nweights=x.pth\n", "cuda", NULL, &m),
                  FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "CPU only");
    ASSERT_STATUS(fst_matcher_open("mutual=1\n", "cpu", NULL, &m), FST_EINVAL);
    ASSERT_TRUE(m == NULL);
}

FST_TEST(protocol_over_a_socket)
{
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    fst__buf b = {0};
    size_t start;
    ASSERT_OK(fst__msg_begin(&b, FST__MSG_DONE, &start));
    ASSERT_OK(fst__msg_u32(&b, 42));
    fst__msg_end(&b, start);
    ASSERT_OK(fst__write_all(sv[0], b.p, b.len));
    close(sv[0]);
    fst__buf in = {0};
    uint32_t type;
    fst__rd r;
    ASSERT_OK(fst__read_msg(sv[1], &in, &type, &r));
    ASSERT_EQ(type, FST__MSG_DONE);
    ASSERT_EQ(fst__rd_u32(&r), 42);
    ASSERT_STATUS(fst__read_msg(sv[1], &in, &type, &r), FST_DONE);   /* clean end */
    close(sv[1]);
    fst__buf_free(&in);
    fst__buf_free(&b);
}

FST_TEST(tables)
{
    fst__strtab t = {0};
    uint32_t id;
    int added;
    char name[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(name, sizeof name, "img%d", i);
        ASSERT_OK(fst__strtab_intern(&t, name, strlen(name), &id, &added));
        ASSERT_EQ(id, i);
        ASSERT_EQ(added, 1);
    }
    ASSERT_OK(fst__strtab_intern(&t, "img17", 5, &id, &added));
    ASSERT_EQ(id, 17);
    ASSERT_EQ(added, 0);
    ASSERT_STREQ(fst__strtab_str(&t, 4999), "img4999");
    ASSERT_EQ(fst__strtab_find(&t, "img5000", 7), UINT32_MAX);
    fst__strtab_free(&t);
    fst__u64set s = {0};
    for (uint64_t x = 0; x < 10000; x++) ASSERT_EQ(fst__u64set_add(&s, x * 7919), 1);
    ASSERT_EQ(fst__u64set_add(&s, 7919), 0);
    ASSERT_TRUE(fst__u64set_has(&s, 9999 * 7919ULL));
    ASSERT_TRUE(!fst__u64set_has(&s, 3));
    fst__u64set_free(&s);
}

/* ---- progress rate ---- */

/* pairs/s over the window: steady 100 pairs/s sampled every 200 ms must
 * read 100 before and long after the window first fills (it read 0 once
 * full: the oldest sample was overwritten before being read). */
FST_TEST(rate_window_is_steady_past_its_length)
{
    fst__rate r;
    memset(&r, 0, sizeof r);
    ASSERT_NEAR(fst__rate_push(&r, 1000000000LL, 7), 0.0, 0.0);  /* one sample */
    for (int k = 1; k < 4 * FST__RATE_SLOTS; k++) {
        int64_t now = 1000000000LL + (int64_t)k * 200000000LL;
        double rate = fst__rate_push(&r, now, 7 + 20u * (uint64_t)k);
        if (rate < 99.999 || rate > 100.001)
            printf("# sample %d: %.3f pairs/s\n", k, rate);
        ASSERT_NEAR(rate, 100.0, 1e-3);
    }
    /* the window forgets: 5 s of no progress later the rate is 0 */
    int64_t t = 1000000000LL + (int64_t)4 * FST__RATE_SLOTS * 200000000LL;
    double rate = -1;
    for (int k = 0; k <= FST__RATE_SLOTS; k++)
        rate = fst__rate_push(&r, t + (int64_t)k * 200000000LL, 7 + 20u * 4 * FST__RATE_SLOTS);
    ASSERT_NEAR(rate, 0.0, 0.0);
    /* samples closer than 50 ms give 0, not a huge number */
    fst__rate q;
    memset(&q, 0, sizeof q);
    fst__rate_push(&q, 0, 0);
    ASSERT_NEAR(fst__rate_push(&q, 1000000, 50), 0.0, 0.0);
}

FST_TEST(stall_limit_is_the_floor_or_ten_slowest_chunks)
{
    const int64_t S = 1000000000LL;
    /* nothing measured yet: the floor */
    ASSERT_EQ(fst__stall_limit_ns(60 * S, 0, 8), 60 * S);
    /* fast pairs: the floor still */
    ASSERT_EQ(fst__stall_limit_ns(60 * S, S / 100, 8), 60 * S);
    /* slow pairs: 10 x the slowest pair x the pairs in hand */
    ASSERT_EQ(fst__stall_limit_ns(60 * S, 2 * S, 8), 160 * S);
    ASSERT_EQ(fst__stall_limit_ns(2 * S, S / 5, 1), 2 * S);
    ASSERT_EQ(fst__stall_limit_ns(S, S / 5, 0), 2 * S);      /* 0 pairs: 1 */
    /* absurd times saturate, never wrap to a tiny or negative limit */
    int64_t big = fst__stall_limit_ns(60 * S, INT64_MAX / 3, 65536);
    ASSERT_GE(big, 60 * S);
    ASSERT_GE(fst__stall_limit_ns(60 * S, INT64_MAX, UINT32_MAX), 60 * S);
    ASSERT_EQ(fst__stall_limit_ns(60 * S, -5, 8), 60 * S);
}

/* Issue 10, item 1: what a journal's identity says about today's data,
 * without a store (the cases that need no look-up of an older generation). */
FST_TEST(identity_check_without_history)
{
    static const char a[] = "id=00112233445566778899aabbccddeeff generation=3 "
                            "write=0123456789abcdef0123456789abcdef";
    static const char a_copy[] = "id=00112233445566778899aabbccddeeff generation=3 "
                                 "write=fedcba9876543210fedcba9876543210";
    static const char a_old[] = "id=00112233445566778899aabbccddeeff generation=2 "
                                "write=0123456789abcdef0123456789abcdef";
    static const char b[] = "id=ffeeddccbbaa99887766554433221100 generation=3 "
                            "write=0123456789abcdef0123456789abcdef";
    fst__identity_verdict v;
    const char *none = "/nonexistent/store.fst";   /* never opened here */
    ASSERT_OK(fst__identity_check(none, a, a, &v));
    ASSERT_EQ(v, FST__ID_SAME);
    ASSERT_OK(fst__identity_check(none, a, b, &v));
    ASSERT_EQ(v, FST__ID_OTHER);
    ASSERT_OK(fst__identity_check(none, a, a_copy, &v));   /* same generation, other write */
    ASSERT_EQ(v, FST__ID_COPY);
    ASSERT_OK(fst__identity_check(none, a, a_old, &v));    /* the journal is newer */
    ASSERT_EQ(v, FST__ID_COPY);
    /* a later generation needs the store's history: a missing store is an error */
    ASSERT_TRUE(fst__identity_check(none, a_old, a, &v) != FST_OK);
    ASSERT_TRUE(fst__identity_same(a, a_old));
    ASSERT_TRUE(!fst__identity_same(a, b));
    ASSERT_OK(fst__identity_check(none, "h5=00ff,10", "h5=00ff,10", &v));
    ASSERT_EQ(v, FST__ID_SAME);
    ASSERT_OK(fst__identity_check(none, "h5=00ff,10", "h5=00fe,10", &v));
    ASSERT_EQ(v, FST__ID_OTHER);
    ASSERT_OK(fst__identity_check(none, "", "", &v));       /* no query, both times */
    ASSERT_EQ(v, FST__ID_SAME);
    ASSERT_OK(fst__identity_check(none, "legacy=1,2,3,4,5,6,1 generation=1",
                                  "legacy=1,2,3,4,6,6,1 generation=2", &v));
    ASSERT_EQ(v, FST__ID_OTHER);
    ASSERT_OK(fst__identity_check(none, "legacy=1,2,3,4,5,6,1 generation=1",
                                  "legacy=1,2,3,4,5,6,1 generation=1", &v));
    ASSERT_EQ(v, FST__ID_SAME);
}

/* ---- matches.h5 from a journal ---- */

typedef struct keys_ctx { char buf[1024]; } keys_ctx;

static fst_status key_cb(const char *key, void *ctx)
{
    keys_ctx *k = ctx;
    size_t l = strlen(k->buf);
    snprintf(k->buf + l, sizeof k->buf - l, "%s%s", l ? ";" : "", key);
    return FST_OK;
}

FST_TEST(matchfile_write_and_list)
{
    const char *jp = tmp_path("mf.journal");
    const char *out = tmp_path("mf.h5");
    fst_journal_remove(jp);
    unlink(out);
    fst_journal *j = NULL;
    ASSERT_OK(fst_journal_open(jp, FST_JOURNAL_CREATE, &j));
    int16_t m[50];
    uint16_t s[50];
    fst_journal_rec r = rec_of("db/a.jpg", "b.jpg", 50, m, s);
    ASSERT_OK(fst_journal_put(j, "db-a.jpg/b.jpg", &r));
    r = rec_of("db/a.jpg", "c.jpg", 0, m, s);
    ASSERT_OK(fst_journal_put(j, "db-a.jpg/c.jpg", &r));
    r = rec_of("b.jpg", "c.jpg", 3, m, s);
    ASSERT_OK(fst_journal_put(j, "b.jpg/c.jpg", &r));
    ASSERT_OK(fst_journal_commit(j));
    fst_matchfile_opts mo = {.copy_existing = true};
    uint64_t n = 0;
    ASSERT_OK(fst_matchfile_write(out, j, &mo, &n));
    ASSERT_EQ(n, 3);
    keys_ctx k = {""};
    ASSERT_OK(fst_matchfile_keys(out, key_cb, &k));
    ASSERT_STREQ(k.buf, "b.jpg/c.jpg;db-a.jpg/b.jpg;db-a.jpg/c.jpg");
    /* again over the existing file: same pairs, nothing else */
    ASSERT_OK(fst_matchfile_write(out, j, &mo, &n));
    k.buf[0] = '\0';
    ASSERT_OK(fst_matchfile_keys(out, key_cb, &k));
    ASSERT_STREQ(k.buf, "b.jpg/c.jpg;db-a.jpg/b.jpg;db-a.jpg/c.jpg");
    /* a pair written the other way round replaces the reversed key */
    fst_journal_close(j);
    fst_journal_remove(jp);
    ASSERT_OK(fst_journal_open(jp, FST_JOURNAL_CREATE, &j));
    r = rec_of("c.jpg", "b.jpg", 3, m, s);
    ASSERT_OK(fst_journal_put(j, "c.jpg/b.jpg", &r));
    ASSERT_OK(fst_journal_commit(j));
    ASSERT_OK(fst_matchfile_write(out, j, &mo, &n));
    k.buf[0] = '\0';
    ASSERT_OK(fst_matchfile_keys(out, key_cb, &k));
    ASSERT_STREQ(k.buf, "c.jpg/b.jpg;db-a.jpg/b.jpg;db-a.jpg/c.jpg");
    fst_journal_close(j);
    fst_journal_remove(jp);
    /* nothing left behind but the output */
    struct stat sb;
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", out, (long)getpid());
    ASSERT_TRUE(stat(tmp, &sb) != 0);
    /* errors: not HDF5, unwritable place */
    const char *junk = tmp_path("junk.h5");
    FILE *f = fopen(junk, "w");
    fputs("nope", f);
    fclose(f);
    ASSERT_STATUS(fst_matchfile_keys(junk, key_cb, &k), FST_EFORMAT);
    ASSERT_STATUS(fst_matchfile_write(junk, NULL, &mo, &n), FST_EFORMAT);
    ASSERT_STATUS(fst_matchfile_keys(tmp_path("none.h5"), key_cb, &k), FST_EIO);
    ASSERT_STATUS(fst_matchfile_write("/proc/nope/m.h5", NULL, NULL, &n), FST_EIO);
    unlink(junk);
    unlink(out);
}

/* A part of a sharded run: the pairs (a_i, b_i) of `names` into `path`
 * with the root attributes a `match --shard k/n` run writes; `over`
 * replaces one attribute (name, value) or is NULL. */
static void write_part(const char *path, const char *const *names, int npairs, unsigned k,
                       unsigned n, const char *const *over)
{
    const char *jp = tmp_path("part.journal");
    fst_journal_remove(jp);
    fst_journal *j = NULL;
    if (fst_journal_open(jp, FST_JOURNAL_CREATE, &j)) abort();
    int16_t m[20];
    uint16_t s[20];
    char key[256], shard[16], cnt[16];
    for (int i = 0; i < npairs; i++) {
        fst_journal_rec r = rec_of(names[2 * i], names[2 * i + 1], 10 + (uint32_t)i, m, s);
        fst_pair_key(names[2 * i], names[2 * i + 1], '/', key, sizeof key);
        if (fst_journal_put(j, key, &r)) abort();
    }
    if (fst_journal_commit(j)) abort();
    snprintf(shard, sizeof shard, "%u/%u", k, n);
    snprintf(cnt, sizeof cnt, "%d", npairs);
    const char *kv[] = {"featstore_shard", shard, "featstore_store", "id=ab generation=1",
                        "featstore_query", "", "featstore_pairs", "list=1234 pairs=4",
                        "featstore_params", "mutual=1\noverwrite=0\n",
                        "featstore_shard_pairs", cnt, "featstore_failed", "0", NULL};
    for (int i = 0; over && kv[i]; i += 2)
        if (!strcmp(kv[i], over[0])) kv[i + 1] = over[1];
    fst_matchfile_opts mo = {.attrs = kv};
    unlink(path);
    if (fst_matchfile_write(path, j, &mo, NULL)) abort();
    fst_journal_close(j);
    fst_journal_remove(jp);
}

FST_TEST(merge_joins_parts_and_refuses_what_is_not_one_run)
{
    static const char *const all[] = {"a.jpg", "b.jpg", "a.jpg", "c.jpg", "db/x.jpg", "a.jpg",
                                      "db/x.jpg", "b.jpg"};
    char p0[512], p1[512], out[512], whole[512], m2[512];   /* tmp_path reuses its buffers */
    snprintf(p0, sizeof p0, "%s", tmp_path("p0.h5"));
    snprintf(p1, sizeof p1, "%s", tmp_path("p1.h5"));
    snprintf(out, sizeof out, "%s", tmp_path("merged.h5"));
    snprintf(whole, sizeof whole, "%s", tmp_path("whole.h5"));
    snprintf(m2, sizeof m2, "%s", tmp_path("m2.h5"));
    write_part(p0, all, 2, 0, 2, NULL);
    write_part(p1, all + 4, 2, 1, 2, NULL);
    write_part(whole, all, 4, 0, 1, NULL);     /* the single run's pairs, in one file */
    unlink(out);
    uint64_t n = 0;
    const char *parts[] = {p1, p0};
    ASSERT_OK(fst_matchfile_merge(out, parts, 2, NULL, &n));
    ASSERT_EQ(n, 4);
    keys_ctx k = {""}, kw = {""};
    ASSERT_OK(fst_matchfile_keys(out, key_cb, &k));
    ASSERT_OK(fst_matchfile_keys(whole, key_cb, &kw));
    ASSERT_STREQ(k.buf, kw.buf);
    char *v = NULL;
    ASSERT_OK(fst_matchfile_attr(out, "featstore_shard", &v));
    ASSERT_TRUE(v == NULL);                      /* a merged file is no part */
    int32_t *m0 = NULL;
    float *sc = NULL;
    uint32_t n0 = 0;
    int rev = 0;
    ASSERT_OK(fst_matchfile_get(out, "db/x.jpg", "b.jpg", &m0, &sc, &n0, &rev));
    ASSERT_EQ(n0, 11);                           /* part 1 wrote it second: 10 + 1 keypoints */
    free(m0);
    free(sc);
    unlink(out);

    /* refused, nothing written, the detail names what is wrong */
    struct {
        const char *const *parts;
        size_t n;
        const char *over[2];
        const char *want;
    } bad[] = {
        {(const char *[]){p0}, 1, {NULL, NULL}, "missing shard 1 of 2"},
        {(const char *[]){p0, p0, p1}, 3, {NULL, NULL}, "are both shard 0/2"},
        {(const char *[]){p0, p1}, 2, {"featstore_store", "id=cd generation=1"},
         "their store differ ('id=ab generation=1' vs 'id=cd generation=1')"},
        {(const char *[]){p0, p1}, 2, {"featstore_params", "mutual=0\noverwrite=0\n"},
         "matcher settings differ ('mutual=1' vs 'mutual=0')"},
        {(const char *[]){p0, p1}, 2, {"featstore_pairs", "list=9999 pairs=4"}, "pair list"},
        {(const char *[]){p0, p1}, 2, {"featstore_failed", "2"},
         "(shard 1/2) is incomplete: 2 pairs failed"},
        {(const char *[]){p0, p1}, 2, {"featstore_shard_pairs", "3"},
         "holds 2 pairs, its shard 3"},
        {(const char *[]){p0, p1}, 2, {"featstore_shard", "1/3"}, "parts of different splits"},
        {(const char *[]){p0, whole}, 2, {NULL, NULL}, "parts of different splits"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (bad[i].over[0]) write_part(p1, all + 4, 2, 1, 2, bad[i].over);
        fst_status s = fst_matchfile_merge(out, bad[i].parts, bad[i].n, NULL, &n);
        if (s == FST_OK) printf("# case %zu merged\n", i);
        ASSERT_EQ(s, FST_EINVAL);
        ASSERT_CONTAINS(fst_errdetail(), bad[i].want);
        ASSERT_CONTAINS(fst_errdetail(), "nothing written");
        struct stat sb;
        ASSERT_TRUE(stat(out, &sb) != 0);
        if (bad[i].over[0]) write_part(p1, all + 4, 2, 1, 2, NULL);
    }
    /* overwrite= is not a result setting: a part run with --overwrite joins */
    const char *ow[2] = {"featstore_params", "mutual=1\noverwrite=1\n"};
    write_part(p1, all + 4, 2, 1, 2, ow);
    ASSERT_OK(fst_matchfile_merge(out, parts, 2, NULL, &n));
    /* a plain matches.h5 is not a part; the output may not be a part */
    ASSERT_STATUS(fst_matchfile_merge(m2, (const char *[]){p0, out}, 2, NULL, &n),
                  FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "is not a part of a sharded run");
    ASSERT_STATUS(fst_matchfile_merge(p0, (const char *[]){p0, p1}, 2, NULL, &n), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "is the part");
    /* a pair in two parts */
    write_part(p1, all + 2, 2, 1, 2, NULL);
    unlink(out);
    ASSERT_STATUS(fst_matchfile_merge(out, parts, 2, NULL, &n), FST_EEXIST);
    ASSERT_CONTAINS(fst_errdetail(), "a.jpg/c.jpg is in two parts");
    struct stat sb;
    ASSERT_TRUE(stat(out, &sb) != 0);
    unlink(p0);
    unlink(p1);
    unlink(whole);
}

/* ---- a whole run, in process, against the kernel's own results ---- */

static uint64_t rng_state = 88172645463325252ULL;
static float frand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)(rng_state >> 40) / (float)(1 << 24) * 2.0f - 1.0f;
}

/* A store of `n` images, image i sharing half its descriptors (with noise)
 * with image i-1, float16 like hloc's. */
static void make_store(const char *path, int n, uint32_t d)
{
    fst_writer *w = NULL;
    unlink(path);
    if (fst_writer_open(path, FST_WRITE_CREATE, &w) != FST_OK) abort();
    float *prev = NULL;
    uint32_t nprev = 0;
    for (int i = 0; i < n; i++) {
        uint32_t k = i == 3 ? 0 : 50 + (uint32_t)(i * 37 % 90);   /* image 3: no keypoints */
        float *desc = malloc(((size_t)k * d + 1) * sizeof *desc);
        uint16_t *h = malloc(((size_t)k * d + 1) * sizeof *h);
        float *kp = calloc((size_t)k * 2 + 1, sizeof *kp);
        for (uint32_t r = 0; r < k; r++) {
            float norm = 0;
            for (uint32_t c = 0; c < d; c++) {
                float v = frand();
                if (prev && r % 2 == 0 && r / 2 < nprev) v = prev[(size_t)(r / 2) * d + c] + 0.05f * v;
                desc[(size_t)r * d + c] = v;
                norm += v * v;
            }
            for (uint32_t c = 0; c < d; c++) desc[(size_t)r * d + c] /= sqrtf(norm);
        }
        for (size_t q = 0; q < (size_t)k * d; q++) h[q] = fst_f32_to_f16(desc[q]);
        char name[64];
        snprintf(name, sizeof name, "db/img%02d.jpg", i);
        fst_image img = {.name = name, .n = k, .d = d, .dtype = FST_DTYPE_F16,
                         .image_size = {640, 480}, .uncertainty = NAN, .keypoints = kp,
                         .desc = h};
        if (fst_writer_put(w, &img, NULL) != FST_OK) abort();
        free(prev);
        prev = desc;
        nprev = k;
        free(h);
        free(kp);
    }
    free(prev);
    fst_source src = {.name = "test", .size = 0, .mtime = 0};
    if (fst_writer_finish(w, &src) != FST_OK) abort();
}

FST_TEST(run_equals_the_kernels_own_results)
{
    const char *exe = getenv("FEATSTORE");
    if (!exe || access(exe, X_OK) != 0) FST_SKIP("FEATSTORE not set");
    const char *store = tmp_path("run.fst");
    const char *pairs = tmp_path("run-pairs.txt");
    const char *out = tmp_path("run.h5");
    make_store(store, 8, 32);
    FILE *f = fopen(pairs, "w");
    ASSERT_TRUE(f);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j++)
            if (i != j && (i + j) % 3) fprintf(f, "db/img%02d.jpg db/img%02d.jpg\n", i, j);
    fclose(f);
    unlink(out);
    const char *presets[] = {"NN-mutual", "NN-ratio", "NN-superpoint"};
    for (int pr = 0; pr < 3; pr++) {
        fst_run_opts o = fst_run_opts_default();
        o.store = store;
        o.pairs = pairs;
        o.output = out;
        o.device = "cpu";
        o.workers = 2;
        o.worker_exe = exe;
        o.overwrite = true;
        ASSERT_OK(fst_match_preset(presets[pr], &o.match));
        fst_run_stats st;
        ASSERT_OK(fst_match_run(&o, &st));
        ASSERT_EQ(st.pairs_lines, 38);
        ASSERT_EQ(st.pairs_unique, 19);          /* every (i, j) came with (j, i) */
        ASSERT_EQ(st.pairs_matched, 19);
        ASSERT_EQ(st.workers, 2);
        ASSERT_TRUE(st.output_written);
        ASSERT_TRUE(st.first_pair_ms >= 0);
        ASSERT_GT(st.peak_pss, 0);
        ASSERT_STREQ(st.backend, "cpu");
        uint64_t matches = st.matches;
        fst_run_stats_free(&st);

        /* every pair, as the backend computes it in this process */
        fst_store *s = NULL;
        fst_reader *rd = NULL;
        fst_backend *be = NULL;
        ASSERT_OK(fst_store_open(store, 0, &s));
        ASSERT_OK(fst_reader_begin(s, &rd));
        ASSERT_OK(fst_backend_open("cpu", &o.match, NULL, &be));
        fst_pairs *p = NULL;
        ASSERT_OK(fst_pairs_parse(pairs, &p));
        uint64_t total = 0;
        for (size_t i = 0; i < fst_pairs_count(p); i++) {
            fst_pair q = fst_pairs_get(p, i);
            const char *n0 = fst_pairs_name(p, q.i0), *n1 = fst_pairs_name(p, q.i1);
            fst_view a, b;
            ASSERT_OK(fst_reader_get(rd, n0, &a));
            ASSERT_OK(fst_reader_get(rd, n1, &b));
            int32_t *m = malloc((a.n + 1) * sizeof *m);
            float *sc = malloc((a.n + 1) * sizeof *sc);
            fst_matches mm = {.matches0 = m, .scores0 = sc};
            ASSERT_OK(fst_backend_match(be, &a, &b, &mm));
            total += mm.nmatches;
            int32_t *fm = NULL;
            float *fs = NULL;
            uint32_t fn = 0;
            int rev = -1;
            ASSERT_OK(fst_matchfile_get(out, n0, n1, &fm, &fs, &fn, &rev));
            ASSERT_EQ(rev, 0);
            ASSERT_EQ(fn, a.n);
            for (uint32_t r = 0; r < a.n; r++) {
                ASSERT_EQ(fm[r], m[r]);
                ASSERT_EQ(fst_f32_to_f16(fs[r]), fst_f32_to_f16(sc[r]));
            }
            free(fm);
            free(fs);
            /* hloc's reader finds the reversed orientation too */
            ASSERT_OK(fst_matchfile_get(out, n1, n0, &fm, &fs, &fn, &rev));
            ASSERT_EQ(rev, 1);
            free(fm);
            free(fs);
            free(m);
            free(sc);
        }
        ASSERT_EQ(total, matches);
        ASSERT_GT(total, 100);
        int32_t *fm = NULL;
        float *fs = NULL;
        uint32_t fn;
        int rev;
        ASSERT_STATUS(fst_matchfile_get(out, "db/img00.jpg", "nope", &fm, &fs, &fn, &rev),
                      FST_ENOTFOUND);
        fst_pairs_free(p);
        fst_backend_close(be);
        fst_reader_end(rd);
        fst_store_close(s);
    }
    /* nothing left behind but the output */
    char j[600];
    snprintf(j, sizeof j, "%s.journal", out);
    ASSERT_TRUE(access(j, F_OK) != 0);
}

FST_TEST(run_reports_errors_without_printing)
{
    const char *exe = getenv("FEATSTORE");
    if (!exe || access(exe, X_OK) != 0) FST_SKIP("FEATSTORE not set");
    const char *store = tmp_path("run.fst");
    const char *pairs = tmp_path("run-bad.txt");
    const char *out = tmp_path("run-bad.h5");
    if (access(store, F_OK) != 0) make_store(store, 8, 32);
    FILE *f = fopen(pairs, "w");
    ASSERT_TRUE(f);
    fprintf(f, "db/img00.jpg db/img01.jpg\ndb/img00.jpg nope.jpg\n");
    fclose(f);
    fst_run_opts o = fst_run_opts_default();
    o.store = store;
    o.pairs = pairs;
    o.output = out;
    o.device = "cpu";
    o.workers = 1;
    o.worker_exe = exe;
    fst_run_stats st;
    ASSERT_STATUS(fst_match_run(&o, &st), FST_ENOTFOUND);
    ASSERT_CONTAINS(fst_errdetail(), "'nope.jpg'");
    ASSERT_EQ(st.names_missing, 1);
    fst_run_stats_free(&st);
    ASSERT_TRUE(access(out, F_OK) != 0);
    o.skip_missing = true;
    ASSERT_OK(fst_match_run(&o, &st));
    ASSERT_EQ(st.pairs_missing, 1);
    ASSERT_EQ(st.pairs_matched, 1);
    fst_run_stats_free(&st);
    o.device = "tpu";
    ASSERT_STATUS(fst_match_run(&o, &st), FST_EINVAL);
    fst_run_stats_free(&st);
    o.device = "cuda:99";                 /* built or not, GPU or not */
    ASSERT_STATUS(fst_match_run(&o, &st), FST_ENODEVICE);
    fst_run_stats_free(&st);
    unlink(out);
}

/* Runs after the tests, whichever were picked. */
FST_TEST_CLEANUP(remove_tmpdir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (tmpdir[0]) ASSERT_EQ(system(cmd), 0);
}
