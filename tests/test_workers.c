/* test_workers.c : pairs files (hloc's parsing and order), pair keys, the
 * coordinator/worker protocol, the journal, and matches.h5 from a journal.
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

/* ---- journal ---- */

static fst_journal_rec rec_of(const char *a, const char *b, uint32_t n0, int16_t *m, uint16_t *s)
{
    uint32_t nm = 0;
    for (uint32_t i = 0; i < n0; i++) {
        m[i] = (int16_t)(i % 3 == 0 ? -1 : (int)(i * 2));
        s[i] = fst_f32_to_f16(m[i] < 0 ? 0.0f : 0.5f + (float)i / 1000.0f);
        nm += m[i] >= 0;
    }
    fst_journal_rec r = {.name0 = a, .name1 = b, .n0 = n0, .nmatches = nm, .index_size = 2,
                         .matches0 = m, .scores0 = s};
    return r;
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

FST_TEST(journal_put_commit_reopen)
{
    const char *path = tmp_path("j1.journal");
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
    const char *path = tmp_path("j2.journal");
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
    const char *path = tmp_path("j3.journal");
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
    const char *path = tmp_path("j4.journal");
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
    const char *junk = tmp_path("junk.journal");
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
    const char *path = tmp_path("big.journal");
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
    const char *path = tmp_path("del.journal");
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

FST_TEST(journal_reader_follows_a_growing_writer)
{
    const char *path = tmp_path("grow.journal");
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
    const char *path = tmp_path("as.journal");
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

FST_TEST(cleanup)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (tmpdir[0]) ASSERT_EQ(system(cmd), 0);
}
