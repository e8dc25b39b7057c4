/* worker.c : one worker process (fst_worker_main).
 *
 * Opens the store (and the query store) itself, read-only and shared with
 * every other worker through the page cache; opens its backend (a GPU
 * worker was started with CUDA_VISIBLE_DEVICES naming its one device, so
 * "cuda" with device=0 is that device); then matches the batches it is
 * sent. Views point into the map for the duration of one batch; results go
 * back as int16/int32 + float16, the output's own encoding, so the
 * coordinator copies them into the journal as they are. Buffers are kept
 * and reused from batch to batch (see CONTEXT.md on malloc fragmentation).
 */
#include "fst_config.h"
#include "worker_impl.h"
#include "fst_store.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

typedef struct wpair {
    uint32_t id;                 /* the coordinator's pair number */
    uint32_t off0, off1;         /* names in the name arena */
} wpair;

typedef struct wstate {
    int            fd;
    fst__wconfig   cfg;
    char          *strs[5];
    fst_store     *st, *qst;
    fst_backend   *be;
    fst_matcher   *nm;           /* a neural matcher instead of be */
    fst__buf       in, out;
    /* per batch, grown and reused */
    wpair         *pairs;
    fst_view      *va, *vb;
    fst_match_job *jobs;
    fst_matches   *outs;
    uint32_t      *jpair;        /* job -> index into pairs */
    size_t         pcap;
    char          *names;
    size_t         names_len, names_cap;
    int32_t       *mbuf;
    float         *sbuf;
    size_t         mcap, scap;
    /* test hooks */
    char          *crash0, *crash1;
    char          *hang0, *hang1;
    unsigned       delay_ms;
    int            logfd;
    char           fake_dev[32];  /* FST_TEST_FAKE_CUDA: the "GPU" */
    /* images whose checksum this process has verified (cfg.verify), of the
     * store and of the query store: each record is hashed once per worker,
     * the first time it is read, not on every pair */
    fst__strtab    verified, qverified;
} wstate;

static fst_status grow(void **p, size_t *cap, size_t want, size_t elsize, const char *what)
{
    if (want <= *cap) return FST_OK;
    size_t c = *cap ? *cap : 64;
    while (c < want) c *= 2;
    void *n = realloc(*p, c * elsize);
    if (!n) return fst__fail(FST_ENOMEM, "worker: %s (%zu)", what, c);
    *p = n;
    *cap = c;
    return FST_OK;
}

static fst_status grow_pairs(wstate *w, size_t n)
{
    if (n <= w->pcap) return FST_OK;
    size_t c = w->pcap ? w->pcap : 64;
    while (c < n) c *= 2;
    void *p;
#define RE(field) do {                                                   \
        p = realloc(w->field, c * sizeof *w->field);                     \
        if (!p) return fst__fail(FST_ENOMEM, "worker: batch of %zu", n); \
        w->field = p;                                                    \
    } while (0)
    RE(pairs); RE(va); RE(vb); RE(jobs); RE(outs); RE(jpair);
#undef RE
    w->pcap = c;
    return FST_OK;
}

#if FST_TEST_HOOKS
static void hook_pair(const char *env, char **n0, char **n1)
{
    const char *c = getenv(env);
    if (c && *c) {
        const char *sp = strpbrk(c, " \t");
        if (sp) {
            *n0 = strndup(c, (size_t)(sp - c));
            while (*sp == ' ' || *sp == '\t') sp++;
            *n1 = strdup(sp);
        }
    }
}
#endif

static void read_hooks(wstate *w)
{
    w->logfd = -1;
#if FST_TEST_HOOKS
    hook_pair("FST_TEST_CRASH_PAIR", &w->crash0, &w->crash1);
    hook_pair("FST_TEST_HANG_PAIR", &w->hang0, &w->hang1);
    const char *d = getenv("FST_TEST_PAIR_DELAY_MS");
    if (d && *d) w->delay_ms = (unsigned)strtoul(d, NULL, 10);
    const char *l = getenv("FST_TEST_MATCH_LOG");
    if (l && *l) w->logfd = open(l, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
#endif
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static _Noreturn void crash_now(void)
{
    struct rlimit rl = {0, 0};
    setrlimit(RLIMIT_CORE, &rl);     /* a test crash leaves no core file */
    abort();
}

static fst_status send_out(wstate *w)
{
    fst_status s = fst__write_all(w->fd, w->out.p, w->out.len);
    w->out.len = 0;
    return s;
}

static fst_status add_result_error(wstate *w, uint32_t batch, uint32_t id,
                                   fst_status st, uint32_t n0, const char *detail)
{
    size_t start;
    fst_status s;
    if ((s = fst__msg_begin(&w->out, FST__MSG_RESULT, &start)) ||
        (s = fst__msg_u32(&w->out, batch)) || (s = fst__msg_u32(&w->out, id)) ||
        (s = fst__msg_i32(&w->out, st)) || (s = fst__msg_u32(&w->out, n0)) ||
        (s = fst__msg_u32(&w->out, 0)) || (s = fst__msg_str(&w->out, detail)))
        return s;
    fst__msg_end(&w->out, start);
    return FST_OK;
}

/* One matched pair into a RESULT: matches0 as the output's int16/int32
 * (refusing an index int16 cannot hold rather than wrapping it, as
 * torch's .short() would), scores as float16. */
static fst_status add_result(wstate *w, uint32_t batch, const wpair *p,
                             const fst_matches *m)
{
    uint32_t isz = w->cfg.index_size;
    for (uint32_t i = 0; isz == 2 && i < m->n0; i++)
        if (m->matches0[i] > INT16_MAX) {
            char d[600];
            snprintf(d, sizeof d, "%s %s: keypoint index %d does not fit int16 "
                     "matches0 (use --matches-dtype int32)", w->names + p->off0,
                     w->names + p->off1, (int)m->matches0[i]);
            return add_result_error(w, batch, p->id, FST_EINVAL, m->n0, d);
        }
    size_t start;
    fst_status s;
    if ((s = fst__msg_begin(&w->out, FST__MSG_RESULT, &start)) ||
        (s = fst__msg_u32(&w->out, batch)) || (s = fst__msg_u32(&w->out, p->id)) ||
        (s = fst__msg_i32(&w->out, FST_OK)) || (s = fst__msg_u32(&w->out, m->n0)) ||
        (s = fst__msg_u32(&w->out, m->nmatches)) || (s = fst__msg_str(&w->out, "")))
        return s;
    unsigned char *mp = fst__msg_space(&w->out, (size_t)m->n0 * isz);
    if (!mp) return fst__fail(FST_ENOMEM, "worker: result of %u keypoints", m->n0);
    if (isz == 2) {
        for (uint32_t i = 0; i < m->n0; i++) {
            int16_t v = (int16_t)m->matches0[i];
            memcpy(mp + 2 * (size_t)i, &v, 2);
        }
    } else {
        memcpy(mp, m->matches0, (size_t)m->n0 * 4);
    }
    unsigned char *sp = fst__msg_space(&w->out, (size_t)m->n0 * 2);
    if (!sp) return fst__fail(FST_ENOMEM, "worker: result of %u keypoints", m->n0);
    for (uint32_t i = 0; i < m->n0; i++) {
        uint16_t h = fst_f32_to_f16(m->scores0[i]);
        memcpy(sp + 2 * (size_t)i, &h, 2);
    }
    fst__msg_end(&w->out, start);
    return FST_OK;
}

static void log_match(wstate *w, const wpair *p)
{
    if (w->logfd < 0) return;
    char line[1200];
    int n = w->fake_dev[0]
        ? snprintf(line, sizeof line, "%s %s cuda=%s\n", w->names + p->off0,
                   w->names + p->off1, w->fake_dev)
        : snprintf(line, sizeof line, "%s %s\n", w->names + p->off0, w->names + p->off1);
    if (n > 0 && (size_t)n < sizeof line && write(w->logfd, line, (size_t)n) < 0) {}
}

/* Image `name` from rd, its checksum verified the first time this worker
 * reads it (cfg.verify): a record is immutable once written (an append
 * adds records, never rewrites one), so once is enough. A corrupt record is
 * not remembered: every pair naming it fails with the store's detail. */
static fst_status get_image(wstate *w, fst_reader *rd, fst__strtab *seen,
                            const char *name, fst_view *out)
{
    size_t n = strlen(name);
    if (!w->cfg.verify || fst__strtab_find(seen, name, n) != UINT32_MAX)
        return fst_reader_get(rd, name, out);
    fst_status s = fst_reader_get_verified(rd, name, out);
    uint32_t id;
    if (s == FST_OK) s = fst__strtab_intern(seen, name, n, &id, NULL);
    return s;
}

/* Match pairs [b, e) of the batch; send their results. */
static fst_status run_chunk(wstate *w, uint32_t batch, fst_reader *rd, fst_reader *qrd,
                            size_t b, size_t e)
{
    fst_status s;
    size_t nj = 0, total = 0, start;
    /* Say which pairs are being matched, before matching them: if this
     * process dies now, they are the suspects. */
    FST_TRY(fst__msg_begin(&w->out, FST__MSG_WORKING, &start));
    FST_TRY(fst__msg_u32(&w->out, batch));
    FST_TRY(fst__msg_u32(&w->out, (uint32_t)b));
    FST_TRY(fst__msg_u32(&w->out, (uint32_t)(e - b)));
    fst__msg_end(&w->out, start);
    FST_TRY(send_out(w));
    if (w->crash0)
        for (size_t k = b; k < e; k++)
            if (!strcmp(w->names + w->pairs[k].off0, w->crash0) &&
                !strcmp(w->names + w->pairs[k].off1, w->crash1))
                crash_now();
    if (w->hang0 && w->hang1)
        for (size_t k = b; k < e; k++)
            if (!strcmp(w->names + w->pairs[k].off0, w->hang0) &&
                !strcmp(w->names + w->pairs[k].off1, w->hang1))
                raise(SIGSTOP);          /* test: a worker that hangs on a pair */
    for (size_t k = b; k < e; k++) {
        const wpair *p = &w->pairs[k];
        const char *n0 = w->names + p->off0, *n1 = w->names + p->off1;
        fst_status g = qrd ? get_image(w, qrd, &w->qverified, n0, &w->va[nj])
                           : get_image(w, rd, &w->verified, n0, &w->va[nj]);
        if (g == FST_OK) g = get_image(w, rd, &w->verified, n1, &w->vb[nj]);
        if (g != FST_OK) {
            char d[1100];
            snprintf(d, sizeof d, "%s", fst_errdetail());
            FST_TRY(add_result_error(w, batch, p->id, g, 0, d));
            continue;
        }
        w->jpair[nj] = (uint32_t)k;
        total += w->va[nj].n;
        nj++;
    }
    FST_TRY(grow((void **)&w->mbuf, &w->mcap, total ? total : 1, sizeof *w->mbuf, "matches"));
    if (w->scap != w->mcap) {
        /* sbuf grows with mbuf: same element count */
        float *sb = realloc(w->sbuf, w->mcap * sizeof *w->sbuf);
        if (!sb) { s = fst__fail(FST_ENOMEM, "worker: scores"); goto out; }
        w->sbuf = sb;
        w->scap = w->mcap;
    }
    size_t off = 0;
    for (size_t j = 0; j < nj; j++) {
        w->outs[j].matches0 = w->mbuf + off;
        w->outs[j].scores0 = w->sbuf + off;
        w->outs[j].n0 = w->outs[j].nmatches = 0;
        off += w->va[j].n;
        w->jobs[j].a = &w->va[j];
        w->jobs[j].b = &w->vb[j];
        w->jobs[j].out = &w->outs[j];
        w->jobs[j].status = FST_OK;
    }
    if (w->delay_ms) sleep_ms(w->delay_ms * (unsigned)(e - b));
    if (nj && w->nm) fst_matcher_match_batch(w->nm, w->jobs, nj);
    else if (nj) fst_backend_match_batch(w->be, w->jobs, nj);
    for (size_t j = 0; j < nj; j++) {
        const wpair *p = &w->pairs[w->jpair[j]];
        fst_status js = w->jobs[j].status;
        if (js == FST_EDEVICE) {
            /* The backend is gone: say why and end; the coordinator
             * requeues what this worker did not answer. */
            char d[1100];
            snprintf(d, sizeof d, "%s", fst_errdetail());
            s = fst__fail(FST_EDEVICE, "%s", d);
            goto out;
        }
        if (js != FST_OK) {
            /* Run it alone for its own detail message. */
            if (w->nm) fst_matcher_match(w->nm, w->jobs[j].a, w->jobs[j].b, w->jobs[j].out);
            else fst_backend_match(w->be, w->jobs[j].a, w->jobs[j].b, w->jobs[j].out);
            char d[1100];
            snprintf(d, sizeof d, "%s", fst_errdetail());
            FST_TRY(add_result_error(w, batch, p->id, js, w->va[j].n, d));
            continue;
        }
        FST_TRY(add_result(w, batch, p, &w->outs[j]));
        log_match(w, p);
    }
    s = send_out(w);
out:
    return s;
}

static fst_status run_batch(wstate *w, fst__rd *r)
{
    fst_status s;
    fst_reader *rd = NULL, *qrd = NULL;
    uint32_t batch = fst__rd_u32(r), n = fst__rd_u32(r);
    if (r->bad) return fst__fail(FST_EFORMAT, "worker: malformed batch");
    FST_TRY(grow_pairs(w, n));
    w->names_len = 0;
    for (uint32_t k = 0; k < n; k++) {
        w->pairs[k].id = fst__rd_u32(r);
        for (int side = 0; side < 2; side++) {
            uint32_t len;
            const char *nm = fst__rd_str(r, &len);
            FST_TRY(grow((void **)&w->names, &w->names_cap, w->names_len + len + 1, 1, "names"));
            memcpy(w->names + w->names_len, nm, len);
            w->names[w->names_len + len] = '\0';
            if (side) w->pairs[k].off1 = (uint32_t)w->names_len;
            else      w->pairs[k].off0 = (uint32_t)w->names_len;
            w->names_len += len + 1;
        }
    }
    if (r->bad) return fst__fail(FST_EFORMAT, "worker: malformed batch");

    FST_TRY(fst_reader_begin(w->st, &rd));
    if (w->qst) FST_TRY(fst_reader_begin(w->qst, &qrd));
    size_t chunk = w->cfg.chunk ? w->cfg.chunk : n;
    if (w->delay_ms) chunk = 1;          /* test pacing: one pair at a time */
    for (size_t b = 0; b < n; b += chunk)
        FST_TRY(run_chunk(w, batch, rd, qrd, b, b + chunk < n ? b + chunk : n));
    size_t start;
    FST_TRY(fst__msg_begin(&w->out, FST__MSG_DONE, &start));
    FST_TRY(fst__msg_u32(&w->out, batch));
    fst__msg_end(&w->out, start);
    s = send_out(w);
out:
    fst_reader_end(qrd);
    fst_reader_end(rd);
    return s;
}

static fst_status send_status(wstate *w, uint32_t type, fst_status st, const char *backend)
{
    char d[1100];
    snprintf(d, sizeof d, "%s", st == FST_OK ? "" : fst_errdetail());
    size_t start;
    fst_status s;
    w->out.len = 0;
    if ((s = fst__msg_begin(&w->out, type, &start)) || (s = fst__msg_i32(&w->out, st)) ||
        (s = fst__msg_str(&w->out, d)))
        return s;
    if (type == FST__MSG_READY && (s = fst__msg_str(&w->out, backend)))
        return s;
    fst__msg_end(&w->out, start);
    return send_out(w);
}

/* Is `item` one of the comma-separated entries of `list`? */
static bool in_list(const char *list, const char *item)
{
    size_t n = strlen(item);
    for (const char *p = list; *p;) {
        size_t l = strcspn(p, ",");
        if (l == n && !strncmp(p, item, n)) return true;
        p += l;
        if (*p == ',') p++;
    }
    return false;
}

/* A neural matcher: the weights read once per worker, the model checked
 * against the store (and query) before any pair. */
static fst_status open_neural(wstate *w)
{
    fst_status s;
    fst_store_meta meta;
    FST_TRY(fst_matcher_open(w->cfg.matcher, "cpu", NULL, &w->nm));
    FST_TRY(fst_store_meta_get(w->st, &meta));
    if ((s = fst_matcher_check_store(w->nm, meta.d)))
        return fst__failpre(s, "%s: ", w->cfg.store);
    if (w->qst) {
        FST_TRY(fst_store_meta_get(w->qst, &meta));
        if ((s = fst_matcher_check_store(w->nm, meta.d)))
            return fst__failpre(s, "%s: ", w->cfg.query);
    }
out:
    return s;
}

static fst_status open_all(wstate *w)
{
    fst_status s;
    FST_TRY(fst_store_open(w->cfg.store, 0, &w->st));
    if (w->cfg.query[0]) FST_TRY(fst_store_open(w->cfg.query, 0, &w->qst));
    if (w->cfg.matcher[0]) return open_neural(w);
    fst_match_opts mo = fst_match_opts_default();
    mo.mutual = w->cfg.mutual != 0;
    mo.ratio_threshold = w->cfg.ratio;
    mo.distance_threshold = w->cfg.distance;
    const char *backend = w->cfg.backend, *params = w->cfg.params;
#if FST_TEST_HOOKS
    const char *fake = getenv("FST_TEST_FAKE_CUDA");
#else
    const char *fake = NULL;
#endif
    if (fake && !strcmp(backend, "cuda")) {
        /* Test only: a "GPU" is a CPU backend; the devices listed work. */
        const char *dev = getenv("CUDA_VISIBLE_DEVICES");
        if (!dev || !*dev || !in_list(fake, dev)) {
            s = fst__fail(FST_ENODEVICE, "fake CUDA (test): device %s unusable",
                          dev && *dev ? dev : "(none)");
            goto out;
        }
        snprintf(w->fake_dev, sizeof w->fake_dev, "%s", dev);
        backend = "cpu";
        params = NULL;
    }
    FST_TRY(fst_backend_open(backend, &mo, params, &w->be));
    if (w->fake_dev[0] && w->logfd >= 0) {
        char line[64];
        int n = snprintf(line, sizeof line, "#ready cuda=%s\n", w->fake_dev);
        if (n > 0 && (size_t)n < sizeof line && write(w->logfd, line, (size_t)n) < 0) {}
    }
out:
    return s;
}

fst_status fst_worker_main(int fd)
{
    fst_status s;
    wstate w;
    memset(&w, 0, sizeof w);
    w.fd = fd;
    signal(SIGPIPE, SIG_IGN);            /* a dead coordinator is EPIPE, not death */
    read_hooks(&w);

    uint32_t type;
    fst__rd r;
    s = fst__read_msg(fd, &w.in, &type, &r);
    if (s == FST_DONE) { s = FST_OK; goto out; }
    if (s) goto out;
    if (type != FST__MSG_CONFIG) {
        s = fst__fail(FST_EFORMAT, "worker: expected a configuration first");
        goto out;
    }
    FST_TRY(fst__wconfig_decode(&r, &w.cfg, w.strs));
    fst_status o = open_all(&w);
    FST_TRY(send_status(&w, FST__MSG_READY, o, w.be ? fst_backend_name(w.be)
                                              : w.nm ? fst_matcher_device(w.nm) : w.cfg.backend));
    if (o != FST_OK) {
        s = o;
        goto out;
    }
    for (;;) {
        s = fst__read_msg(fd, &w.in, &type, &r);
        if (s == FST_DONE) { s = FST_OK; break; }
        if (s) break;
        if (type != FST__MSG_BATCH) {
            s = fst__fail(FST_EFORMAT, "worker: unexpected message %u", type);
            break;
        }
        s = run_batch(&w, &r);
        if (s == FST_EDEVICE) {
            send_status(&w, FST__MSG_FATAL, s, NULL);
            break;
        }
        if (s) {
            fst_status keep = s;
            send_status(&w, FST__MSG_FATAL, s, NULL);
            s = keep;
            break;
        }
    }
out:
    fst_backend_close(w.be);
    fst_matcher_close(w.nm);
    fst_store_close(w.qst);
    fst_store_close(w.st);
    for (int i = 0; i < 5; i++) free(w.strs[i]);
    fst__buf_free(&w.in);
    fst__buf_free(&w.out);
    free(w.pairs); free(w.va); free(w.vb); free(w.jobs); free(w.outs); free(w.jpair);
    free(w.names); free(w.mbuf); free(w.sbuf);
    free(w.crash0); free(w.crash1);
    free(w.hang0); free(w.hang1);
    fst__strtab_free(&w.verified);
    fst__strtab_free(&w.qverified);
    if (w.logfd >= 0) close(w.logfd);
    return s;
}
