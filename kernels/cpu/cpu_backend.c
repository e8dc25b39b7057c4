/* kernels/cpu/cpu_backend.c : the "cpu" backend.
 *
 * Per pair: pack both images (widening float16) into panels, sweep the
 * micro-tiles of the instruction-set path chosen at open time (each tile
 * reduced into row and column best/second-best as it is produced), then
 * hloc's decisions through match_math.h. Buffers only grow and are kept for
 * the backend's life: a worker runs millions of pairs, and a malloc/free of
 * a big buffer per pair fragments glibc's heap.
 * threads=N splits the column panels between N threads (N-1 helpers kept
 * for the backend's life); each thread keeps its own row state, merged with
 * fst_top2_merge, so the result does not depend on N.
 */
#include "backend_impl.h"
#include "match_math.h"
#include "cpu_impl.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { MAX_THREADS = 64 };

typedef struct buf {
    void  *p;
    size_t cap;
} buf;

/* One image packed for one role (A panels of mr rows, B panels of nr). */
typedef struct packed {
    const void *key;    /* desc pointer; valid only within one call */
    uint32_t n, d;
    int dt;
    bool valid;
    buf mem;
} packed;

typedef struct cpu_impl cpu_impl;

typedef struct helper_arg {
    cpu_impl *impl;
    unsigned  t;
} helper_arg;

struct cpu_impl {
    const fst__cpu_isa *isa;
    unsigned threads;
    packed pa, pb;
    buf rs1[MAX_THREADS], rs2[MAX_THREADS], rj[MAX_THREADS], tile[MAX_THREADS];
    buf cs1, cs2, cj, m1;
    fst__cpu_sweep sw[MAX_THREADS];
    unsigned active;                 /* threads taking part in this pair */
    int phase;                       /* 0: pack, 1: sweep */
    const fst_view *topack[2];       /* images to pack (A, B) or NULL */
    /* helper threads 1..threads-1 */
    pthread_t th[MAX_THREADS];
    helper_arg harg[MAX_THREADS];
    unsigned nhelpers;
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    uint64_t gen;
    unsigned pending;
    bool quit, sync_init;
    /* counters for fst_backend_stats */
    uint64_t pairs, packs, pack_hits;
};

static fst_status buf_reserve(buf *b, size_t bytes)
{
    if (bytes <= b->cap)
        return FST_OK;
    size_t want = bytes + bytes / 4;   /* slack: sizes creep up pair by pair */
    want = (want + 4095) & ~(size_t)4095;
    void *p = NULL;
    if (posix_memalign(&p, 64, want) != 0)
        return fst__fail(FST_ENOMEM, "cpu backend: %zu bytes", want);
    free(b->p);
    b->p = p;
    b->cap = want;
    return FST_OK;
}

static void buf_free(buf *b)
{
    free(b->p);
    b->p = NULL;
    b->cap = 0;
}

const fst__cpu_isa *fst__cpu_isa_find(const char *name)
{
    static const fst__cpu_isa *const all[] = {
        &fst__cpu_isa_avx512, &fst__cpu_isa_avx2, &fst__cpu_isa_scalar,
    };
    bool any = strcmp(name, "auto") == 0;
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) {
        if (any ? all[i]->supported() : strcmp(name, all[i]->name) == 0)
            return all[i];
    }
    return NULL;
}

/* ---- threads ---------------------------------------------------------- */

/* One thread's share of a pair: pack its share of the panels that need it,
 * set up its state, then sweep. Packing ends before any sweep starts
 * (run_all twice), since every sweep reads every A panel. */
static void state_init(float *s1, float *s2, int32_t *j1, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        s1[k] = -INFINITY;
        s2[k] = -INFINITY;
        j1[k] = -1;
    }
}

static void run_share(cpu_impl *c, unsigned t)
{
    const fst__cpu_isa *isa = c->isa;
    fst__cpu_sweep *sw = &c->sw[t];
    unsigned T = c->active;
    if (c->phase == 0) {
        for (int k = 0; k < 2; k++) {
            const fst_view *v = c->topack[k];
            if (!v)
                continue;
            unsigned w = k == 0 ? isa->mr : isa->nr;
            uint32_t np = fst__cpu_panels(v->n, w);
            uint32_t p0 = (uint32_t)((uint64_t)np * t / T);
            uint32_t p1 = (uint32_t)((uint64_t)np * (t + 1) / T);
            if (p0 < p1)
                isa->pack(v->desc, (int)v->dtype, v->n, v->d, w, p0, p1,
                          (float *)(k == 0 ? sw->ap : sw->bp));
        }
        return;
    }
    state_init(sw->rows.s1, sw->rows.s2, sw->rows.j1,
               (size_t)sw->ir1 * isa->mr * isa->lanes);
    if (sw->want_cols) {
        size_t c0 = (size_t)sw->jr0 * isa->nr, c1 = (size_t)sw->jr1 * isa->nr;
        state_init(sw->cols.s1 + c0, sw->cols.s2 + c0, sw->cols.j1 + c0, c1 - c0);
    }
    if (sw->jr0 < sw->jr1)
        isa->sweep(sw);
}

static void *helper_main(void *p)
{
    helper_arg *h = p;
    cpu_impl *c = h->impl;
    uint64_t seen = 0;
    for (;;) {
        pthread_mutex_lock(&c->mu);
        while (!c->quit && c->gen == seen)
            pthread_cond_wait(&c->go, &c->mu);
        if (c->quit) {
            pthread_mutex_unlock(&c->mu);
            return NULL;
        }
        seen = c->gen;
        bool mine = h->t < c->active;
        pthread_mutex_unlock(&c->mu);
        if (mine)
            run_share(c, h->t);
        pthread_mutex_lock(&c->mu);
        if (--c->pending == 0)
            pthread_cond_signal(&c->done);
        pthread_mutex_unlock(&c->mu);
    }
}

static void run_all(cpu_impl *c)
{
    if (c->active <= 1 || c->nhelpers == 0) {
        for (unsigned t = 0; t < c->active; t++)
            run_share(c, t);
        return;
    }
    pthread_mutex_lock(&c->mu);
    c->pending = c->nhelpers;
    c->gen++;
    pthread_cond_broadcast(&c->go);
    pthread_mutex_unlock(&c->mu);
    run_share(c, 0);
    pthread_mutex_lock(&c->mu);
    while (c->pending > 0)
        pthread_cond_wait(&c->done, &c->mu);
    pthread_mutex_unlock(&c->mu);
}

static void stop_helpers(cpu_impl *c)
{
    if (!c->sync_init)
        return;
    pthread_mutex_lock(&c->mu);
    c->quit = true;
    pthread_cond_broadcast(&c->go);
    pthread_mutex_unlock(&c->mu);
    for (unsigned i = 0; i < c->nhelpers; i++)
        pthread_join(c->th[i], NULL);
    c->nhelpers = 0;
    pthread_cond_destroy(&c->go);
    pthread_cond_destroy(&c->done);
    pthread_mutex_destroy(&c->mu);
    c->sync_init = false;
}

static fst_status start_helpers(cpu_impl *c)
{
    if (c->threads <= 1)
        return FST_OK;
    if (pthread_mutex_init(&c->mu, NULL) != 0)
        return fst__fail(FST_ENOMEM, "cpu backend: mutex");
    pthread_cond_init(&c->go, NULL);
    pthread_cond_init(&c->done, NULL);
    c->sync_init = true;
    for (unsigned t = 1; t < c->threads; t++) {
        c->harg[t - 1].impl = c;
        c->harg[t - 1].t = t;
        int e = pthread_create(&c->th[t - 1], NULL, helper_main, &c->harg[t - 1]);
        if (e != 0)
            return fst__fail(FST_ENOMEM, "cpu backend: starting thread %u "
                             "of %u: %s", t + 1, c->threads, strerror(e));
        c->nhelpers++;
    }
    return FST_OK;
}

/* ---- one pair --------------------------------------------------------- */

/* Make slot hold v packed in panels of w rows: a hit leaves it as it is;
 * else the buffer is sized, the key set, and *todo = v (packed later,
 * split between the threads). */
static fst_status prepare_packed(cpu_impl *c, packed *slot, const fst_view *v,
                                 unsigned w, const fst_view **todo)
{
    *todo = NULL;
    if (slot->valid && slot->key == v->desc && slot->n == v->n &&
        slot->d == v->d && slot->dt == (int)v->dtype) {
        c->pack_hits++;
        return FST_OK;
    }
    slot->valid = false;
    uint32_t np = fst__cpu_panels(v->n, w);
    size_t bytes = (size_t)np * w * v->d * sizeof(float);
    fst_status s = buf_reserve(&slot->mem, bytes ? bytes : 64);
    if (s != FST_OK)
        return fst__failpre(s, "packing %s: ", v->name ? v->name : "");
    slot->key = v->desc;
    slot->n = v->n;
    slot->d = v->d;
    slot->dt = (int)v->dtype;
    slot->valid = true;
    c->packs++;
    *todo = v;
    return FST_OK;
}

static fst_status match_pair(fst_backend *be, const fst_view *a,
                             const fst_view *b, fst_matches *out)
{
    cpu_impl *c = be->impl;
    const fst__cpu_isa *isa = c->isa;
    fst_status s;
    uint32_t n0 = a->n, n1 = b->n;
    uint32_t pa_n = fst__cpu_panels(n0, isa->mr);
    uint32_t pb_n = fst__cpu_panels(n1, isa->nr);

    FST_TRY(prepare_packed(c, &c->pa, a, isa->mr, &c->topack[0]));
    FST_TRY(prepare_packed(c, &c->pb, b, isa->nr, &c->topack[1]));

    float ratio2 = fst_thresh2(be->opts.ratio_threshold);
    float dist2 = fst_thresh2(be->opts.distance_threshold);
    bool use_ratio = fst_use_ratio(n0, n1);
    bool want_s2 = use_ratio && ratio2 > 0.0f;
    bool want_cols = be->opts.mutual;

    unsigned T = c->threads < pb_n ? c->threads : pb_n;
    size_t rows_n = (size_t)pa_n * isa->mr * isa->lanes;
    size_t cols_n = (size_t)pb_n * isa->nr;
    for (unsigned t = 0; t < T; t++) {
        FST_TRY(buf_reserve(&c->rs1[t], rows_n * sizeof(float)));
        FST_TRY(buf_reserve(&c->rs2[t], rows_n * sizeof(float)));
        FST_TRY(buf_reserve(&c->rj[t], rows_n * sizeof(int32_t)));
        FST_TRY(buf_reserve(&c->tile[t], (size_t)isa->mr * isa->nr * sizeof(float)));
    }
    FST_TRY(buf_reserve(&c->cs1, cols_n * sizeof(float)));
    FST_TRY(buf_reserve(&c->cs2, cols_n * sizeof(float)));
    FST_TRY(buf_reserve(&c->cj, cols_n * sizeof(int32_t)));
    FST_TRY(buf_reserve(&c->m1, (size_t)n1 * sizeof(int32_t)));

    for (unsigned t = 0; t < T; t++) {
        fst__cpu_sweep *sw = &c->sw[t];
        sw->ap = c->pa.mem.p;
        sw->bp = c->pb.mem.p;
        sw->n0 = n0;
        sw->n1 = n1;
        sw->d = a->d;
        sw->ir0 = 0;
        sw->ir1 = pa_n;
        sw->jr0 = (uint32_t)((uint64_t)pb_n * t / T);
        sw->jr1 = (uint32_t)((uint64_t)pb_n * (t + 1) / T);
        sw->rows.s1 = c->rs1[t].p;
        sw->rows.s2 = c->rs2[t].p;
        sw->rows.j1 = c->rj[t].p;
        sw->cols.s1 = c->cs1.p;
        sw->cols.s2 = c->cs2.p;
        sw->cols.j1 = c->cj.p;
        sw->want_s2 = want_s2;
        sw->want_cols = want_cols;
        sw->tile = c->tile[t].p;
    }
    c->active = T;
    if (c->topack[0] || c->topack[1]) {
        c->phase = 0;
        run_all(c);
    }
    c->phase = 1;
    run_all(c);

    /* rows: merge the lanes of every thread, then hloc's find_nn */
    unsigned lanes = isa->lanes;
    for (uint32_t i = 0; i < n0; i++) {
        fst_top2 best = fst_top2_init();
        for (unsigned t = 0; t < T; t++) {
            const float *s1 = c->sw[t].rows.s1, *s2 = c->sw[t].rows.s2;
            const int32_t *j1 = c->sw[t].rows.j1;
            for (unsigned l = 0; l < lanes; l++) {
                size_t at = (size_t)i * lanes + l;
                fst_top2 lane = { s1[at], want_s2 ? s2[at] : -INFINITY, j1[at] };
                best = fst_top2_merge(best, lane);
            }
        }
        out->matches0[i] = fst_nn_decide(&best, ratio2, dist2, use_ratio,
                                         &out->scores0[i]);
    }
    if (want_cols) {
        const float *s1 = c->cs1.p, *s2 = c->cs2.p;
        const int32_t *j1 = c->cj.p;
        int32_t *m1 = c->m1.p;
        for (uint32_t j = 0; j < n1; j++) {
            fst_top2 col = { s1[j], want_s2 ? s2[j] : -INFINITY, j1[j] };
            float unused;
            m1[j] = fst_nn_decide(&col, ratio2, dist2, use_ratio, &unused);
        }
        for (uint32_t i = 0; i < n0; i++) {
            int32_t m = out->matches0[i];
            out->matches0[i] = fst_mutual_keep(m, m >= 0 ? m1[m] : -1,
                                               (int32_t)i);
        }
    }
    uint32_t nm = 0;
    for (uint32_t i = 0; i < n0; i++)
        nm += out->matches0[i] >= 0;
    out->nmatches = nm;
    c->pairs++;
    return FST_OK;
out:
    /* a slot may be keyed but not yet packed: forget both */
    c->pa.valid = c->pb.valid = false;
    return s;
}

/* ---- ops -------------------------------------------------------------- */

static void cpu_close(fst_backend *be)
{
    cpu_impl *c = be->impl;
    if (!c)
        return;
    stop_helpers(c);
    buf_free(&c->pa.mem);
    buf_free(&c->pb.mem);
    for (unsigned t = 0; t < MAX_THREADS; t++) {
        buf_free(&c->rs1[t]);
        buf_free(&c->rs2[t]);
        buf_free(&c->rj[t]);
        buf_free(&c->tile[t]);
    }
    buf_free(&c->cs1);
    buf_free(&c->cs2);
    buf_free(&c->cj);
    buf_free(&c->m1);
    free(c);
    be->impl = NULL;
}

static fst_status cpu_open(fst_backend *be, const char *params)
{
    fst_status s;
    unsigned threads = 1;
    const fst__cpu_isa *isa = fst__cpu_isa_find("auto");
    const char *p = params;
    char key[32], val[64];
    while ((s = fst__param_next(&p, key, sizeof key, val, sizeof val)) == FST_OK) {
        if (strcmp(key, "threads") == 0) {
            char *end;
            errno = 0;
            long v = strtol(val, &end, 10);
            if (errno || *end || end == val || v < 1 || v > MAX_THREADS)
                return fst__fail(FST_EINVAL, "cpu backend: threads=%s: "
                                 "expected 1..%d", val, MAX_THREADS);
            threads = (unsigned)v;
        } else if (strcmp(key, "isa") == 0) {
            isa = fst__cpu_isa_find(val);
            if (!isa)
                return fst__fail(FST_EINVAL, "cpu backend: isa=%s: expected "
                                 "auto, avx512, avx2 or scalar", val);
            if (!isa->supported())
                return fst__fail(FST_ENODEVICE, "cpu backend: isa=%s: not "
                                 "supported by this CPU", val);
        } else {
            return fst__fail(FST_EINVAL, "cpu backend: unknown parameter "
                             "'%s' (known: threads, isa)", key);
        }
    }
    if (s != FST_DONE)
        return s;

    cpu_impl *c = calloc(1, sizeof *c);
    if (!c)
        return fst__fail(FST_ENOMEM, "opening cpu backend");
    c->isa = isa;
    c->threads = threads;
    be->impl = c;
    s = start_helpers(c);
    if (s != FST_OK) {
        cpu_close(be);
        return s;
    }
    return FST_OK;
}

static fst_status cpu_match(fst_backend *be, const fst_view *a,
                            const fst_view *b, fst_matches *out)
{
    cpu_impl *c = be->impl;
    /* Views of separate calls may reuse an address for other data: the
     * packed-image cache lives only within one call. */
    c->pa.valid = c->pb.valid = false;
    return match_pair(be, a, b, out);
}

static fst_status cpu_match_batch(fst_backend *be, fst_match_job *jobs,
                                  size_t n)
{
    cpu_impl *c = be->impl;
    c->pa.valid = c->pb.valid = false;
    fst_status first = FST_OK;
    for (size_t i = 0; i < n; i++) {
        fst_match_job *j = &jobs[i];
        fst_status s = fst__match_check(j->a, j->b, j->out);
        if (s == FST_OK)
            s = match_pair(be, j->a, j->b, j->out);
        else if (s == FST_DONE)
            s = FST_OK;
        j->status = s;
        if (s != FST_OK && first == FST_OK)
            first = s;
    }
    return first;
}

static void cpu_stats(fst_backend *be, char *buf, size_t len)
{
    cpu_impl *c = be->impl;
    snprintf(buf, len, "cpu isa=%s threads=%u pairs=%llu packs=%llu "
             "pack_hits=%llu", c->isa->name, c->threads,
             (unsigned long long)c->pairs, (unsigned long long)c->packs,
             (unsigned long long)c->pack_hits);
}

static const fst_backend_ops cpu_ops = {
    .name = "cpu",
    .open = cpu_open,
    .match = cpu_match,
    .match_batch = cpu_match_batch,
    .sync = NULL,
    .stats = cpu_stats,
    .close = cpu_close,
};

const fst_backend_ops *fst__cpu_backend(void)
{
    return &cpu_ops;
}

/* ---- benchmark hook --------------------------------------------------- */

/* This thread's CPU time: the benchmark machines are shared, and a wall
 * clock would time the scheduler. */
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double fst__cpu_gemm_rate(const char *isa_name, uint32_t n, uint32_t d,
                          int reps)
{
    const fst__cpu_isa *isa = fst__cpu_isa_find(isa_name);
    if (!isa || !isa->supported() || n == 0 || d == 0)
        return -1.0;
    uint32_t pa_n = fst__cpu_panels(n, isa->mr), pb_n = fst__cpu_panels(n, isa->nr);
    float *src = malloc((size_t)n * d * sizeof *src);
    float *ap = NULL, *bp = NULL, *tile = NULL;
    double best = -1.0;
    if (!src ||
        posix_memalign((void **)&ap, 64, (size_t)pa_n * isa->mr * d * sizeof(float)) ||
        posix_memalign((void **)&bp, 64, (size_t)pb_n * isa->nr * d * sizeof(float)) ||
        posix_memalign((void **)&tile, 64, (size_t)isa->mr * isa->nr * sizeof(float)))
        goto out;
    uint32_t x = 12345;
    for (size_t k = 0; k < (size_t)n * d; k++) {
        x = x * 1664525u + 1013904223u;
        src[k] = (float)(x >> 8) / 16777216.0f - 0.5f;
    }
    isa->pack(src, FST_DTYPE_F32, n, d, isa->mr, 0, pa_n, ap);
    isa->pack(src, FST_DTYPE_F32, n, d, isa->nr, 0, pb_n, bp);
    fst__cpu_sweep sw;
    memset(&sw, 0, sizeof sw);
    sw.ap = ap;
    sw.bp = bp;
    sw.n0 = sw.n1 = n;
    sw.d = d;
    sw.ir1 = pa_n;
    sw.jr1 = pb_n;
    sw.tile = tile;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        isa->gemm_only(&sw);
        double dt = now_s() - t0;
        double rate = 2.0 * n * (double)n * d / dt * 1e-9;
        if (rate > best)
            best = rate;
    }
out:
    free(src);
    free(ap);
    free(bp);
    free(tile);
    return best;
}
