/* coordinator.c : fst_match_run(), the parent of a match run.
 *
 * Never reads a descriptor and never touches CUDA: it parses the pairs,
 * checks names against the store (key lookups), works out what is already
 * done (journal, existing output), spawns `featstore worker` processes
 * (each opens the store and its one device itself), hands out batches,
 * journals results, and writes matches.h5 at the end.
 *
 * Completion is exact: every pair of the run is in one state (todo, in
 * flight on one batch of one worker, done, failed) and the run ends when
 * done + failed is the number of pairs. Nothing polls for empty queues and
 * no timeout stands in for "done". Worker deaths are seen as end of file on
 * their socket (the only copy of the worker's end lives in the worker), then
 * reaped with waitpid: the unanswered pairs of its batches go back to the
 * queue; the batch being worked on is split at each death until a single
 * pair that killed two workers is isolated.
 */
#include "fst_config.h"
#include "worker_impl.h"
#include "fst_journal.h"
#include "fst_loader.h"
#include "fst_store.h"
#include "fst_format.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

enum { P_TODO = 0, P_INFLIGHT, P_DONE, P_FAILED };

typedef struct tpair {
    uint32_t i0, i1;          /* names in R->pairs */
    uint32_t batch;           /* batch id while in flight */
    uint8_t  state;
    uint8_t  kills;           /* worker deaths while this pair was being matched */
    uint8_t  points;          /* their weight (see requeue) */
} tpair;

typedef struct batch {
    uint32_t id, n, answered;
    uint32_t ids[];           /* indices into R->todo */
} batch;

#define DEPTH 2               /* batches in flight per worker */
#define TICK_NS   200000000   /* progress, PSS sampling */
/* Reading /proc/PID/smaps_rollup walks that process's page tables: about
 * 1.5 ms per GB of the store it has touched (measured here), so with a
 * 100 GB store and 8 workers one sample could take a second. Samples are
 * spaced so that they take at most 1/PSS_DUTY of the coordinator's time. */
#define PSS_DUTY  50

enum { W_OFF = 0, W_STARTING, W_READY };

typedef struct wk {
    int        state;
    pid_t      pid;
    int        fd;
    uint32_t   slot;
    bool       disabled;      /* not restarted (a GPU that does not work) */
    fst__buf   in, out;
    batch     *fl[DEPTH];
    int        nfl;
    uint32_t   sent;          /* batches sent (slow start) */
    uint32_t   work_batch;    /* WORKING: batch and pairs [work_lo, +work_n) */
    uint32_t   work_lo, work_n;
    fst_status last_status;   /* from READY or FATAL */
    char       last_words[600];
    int64_t    heard_ns;      /* last byte from it, or last time it was
                                 given work while idle (stall deadline) */
    int64_t    chunk_t0;      /* WORKING received (per-pair time), or 0 */
    uint32_t   chunk_n;
    bool       stalled;       /* killed for making no progress */
} wk;

typedef struct run {
    const fst_run_opts *o;
    fst_run_stats      *st;
    fst_pairs          *pairs;
    tpair              *todo;
    size_t              ntodo, next_fresh;
    batch             **retry;           /* requeued batches, LIFO */
    size_t              nretry, capretry;
    uint64_t            done, failed;    /* of todo */
    uint32_t            next_batch;
    wk                 *w;
    uint32_t            nw;
    /* devices */
    bool                cuda, auto_dev;
    char              **gpus;            /* CUDA_VISIBLE_DEVICES value per GPU */
    uint32_t            ngpu;
    char               *wparams;         /* cpu backend params */
    char               *mtext;           /* neural matcher's conf text, or NULL */
    const char         *store_path;
    char               *query_store;     /* store the workers open, or NULL */
    char               *query_tmp;       /* our temporary import, removed at end */
    char               *jpath;
    fst_journal        *j;
    fst_store_meta      meta;
    char                sid[256], qid[256];  /* identities (identity.c) */
    /* state */
    int64_t             t0, t_launch, t_match0;
    uint32_t            deaths_since_progress, startup_failures;
    bool                any_ready, stopping, dropping, fallback;
    fst_status          fatal;
    char                fatal_detail[1024];
    int64_t             first_pending;
    /* progress */
    int64_t             next_tick;
    int64_t             next_pss;        /* next PSS sample (see PSS_DUTY) */
    fst__rate           rate;            /* ~5 s of ticks for pairs/s */
    char               *key;
    size_t              keycap;
    bool                writer_child;    /* this process writes matches.h5 */
    /* deadlines (see "---- deadlines ----") */
    int64_t             pair_ns_max;     /* slowest per-pair time seen */
    int64_t             last_check_ns;   /* last check_deadlines() */
    int64_t             stop_deadline;   /* graceful stop ends here (0: none) */
    struct wshared     *wsh;             /* shared with the writer process */
} run;

/* A page shared with the process writing matches.h5 (MAP_SHARED): it says
 * it is alive, the coordinator asks it to stop. */
typedef struct wshared {
    volatile uint64_t beats;   /* progress callbacks so far (the writer) */
    volatile int      stop;    /* a signal number: stop now (the coordinator) */
} wshared;

fst_run_opts fst_run_opts_default(void)
{
    fst_run_opts o;
    memset(&o, 0, sizeof o);
    o.match = fst_match_opts_default();
    o.index_size = 2;
    o.stop_fd = -1;
    return o;
}

void fst_run_stats_free(fst_run_stats *st)
{
    if (!st) return;
    for (size_t i = 0; i < st->n_failures; i++) {
        free(st->failures[i].name0);
        free(st->failures[i].name1);
        free(st->failures[i].detail);
    }
    free(st->failures);
    memset(st, 0, sizeof *st);
}

static void notice(run *R, const char *fmt, ...) FST_PRINTF(2, 3);
static void notice(run *R, const char *fmt, ...)
{
    if (!R->o->notice) return;
    char buf[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    R->o->notice(buf, R->o->ctx);
}

static const char *nm(const run *R, uint32_t id) { return fst_pairs_name(R->pairs, id); }

static fst_status add_failure(run *R, uint32_t i0, uint32_t i1, fst_status s, const char *detail)
{
    fst_run_stats *st = R->st;
    fst_run_failure *f = realloc(st->failures, (st->n_failures + 1) * sizeof *f);
    if (!f) return fst__fail(FST_ENOMEM, "failure list");
    st->failures = f;
    f = &st->failures[st->n_failures];
    f->name0 = strdup(nm(R, i0));
    f->name1 = strdup(nm(R, i1));
    f->detail = strdup(detail ? detail : "");
    f->status = s;
    if (!f->name0 || !f->name1 || !f->detail) {
        free(f->name0); free(f->name1); free(f->detail);
        return fst__fail(FST_ENOMEM, "failure list");
    }
    st->n_failures++;
    st->pairs_failed++;
    return FST_OK;
}

/* hloc's key of pair (i0, i1) in R->key (sep '/' or '_'). */
static fst_status pair_key(run *R, uint32_t i0, uint32_t i1, char sep)
{
    size_t n = fst_pair_key(nm(R, i0), nm(R, i1), sep, R->key, R->keycap);
    if (n + 1 > R->keycap) {
        char *k = realloc(R->key, (n + 1) * 2);
        if (!k) return fst__fail(FST_ENOMEM, "pair key");
        R->key = k;
        R->keycap = (n + 1) * 2;
        fst_pair_key(nm(R, i0), nm(R, i1), sep, R->key, R->keycap);
    }
    return FST_OK;
}

static char *path_plus(const char *path, const char *suffix)
{
    size_t n = strlen(path) + strlen(suffix) + 1;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s%s", path, suffix);
    return p;
}

/* ---- setup ---- */

static bool is_hdf5(const char *path);

/* Can we create files beside `out`? A probe file, created and removed:
 * access() says yes to root on a read-only mount. */
static fst_status check_output(run *R)
{
    const char *out = R->o->output;
    struct stat sb;
    if (stat(out, &sb) == 0 && S_ISDIR(sb.st_mode))
        return fst__fail(FST_EIO, "output %s: is a directory", out);
    char *probe = malloc(strlen(out) + 40);
    if (!probe) return fst__fail(FST_ENOMEM, "%s", out);
    sprintf(probe, "%s.probe-%ld", out, (long)getpid());
    int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    fst_status s = FST_OK;
    if (fd < 0) {
        s = fst__fail_io(errno, out, 0, "cannot write output %s", out);
    } else {
        close(fd);
        unlink(probe);
    }
    free(probe);
    /* features.h5 given as the output: hloc would add match groups inside
     * its image groups; refuse before any work. */
    if (!s && stat(out, &sb) == 0 && S_ISREG(sb.st_mode) && is_hdf5(out))
        s = fst_matchfile_check_output(out);
    return s;
}

/* `-o link.h5`: the file the link points to (links followed, relative
 * targets taken from the link's folder), so that the output, its
 * temporary file and the journal go beside the target and the link stays
 * a link. *out is NULL when `path` is no link. */
static fst_status resolve_output(const char *path, char **out)
{
    char *cur = NULL;
    *out = NULL;
    for (int hops = 0;; hops++) {
        const char *p = cur ? cur : path;
        struct stat sb;
        if (lstat(p, &sb) != 0 || !S_ISLNK(sb.st_mode)) break;
        if (hops == 40) {
            free(cur);
            return fst__fail(FST_EIO, "output %s: too many levels of symbolic links", path);
        }
        char target[PATH_MAX];
        ssize_t n = readlink(p, target, sizeof target - 1);
        if (n < 0) {
            int e = errno;
            free(cur);
            return fst__fail(FST_EIO, "output %s: %s", p, strerror(e));
        }
        target[n] = '\0';
        const char *slash = strrchr(p, '/');
        size_t dl = target[0] == '/' || !slash ? 0 : (size_t)(slash - p) + 1;
        char *next = malloc(dl + (size_t)n + 1);
        if (!next) {
            free(cur);
            return fst__fail(FST_ENOMEM, "%s", path);
        }
        memcpy(next, p, dl);
        memcpy(next + dl, target, (size_t)n + 1);
        free(cur);
        cur = next;
    }
    *out = cur;
    return FST_OK;
}

static bool is_hdf5(const char *path)
{
    static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    bool yes = false;
    unsigned char b[8];
    for (off_t off = 0; off <= ((off_t)1 << 30) && !yes; off = off ? off * 2 : 512) {
        if (pread(fd, b, 8, off) != 8) break;
        yes = memcmp(b, sig, 8) == 0;
    }
    close(fd);
    return yes;
}

/* The query: a store used as is, or an hloc features.h5 imported once into
 * a temporary store beside the output (removed at the end). *id gets what
 * identifies its content for the journal: the store's id and generation,
 * or a hash of the features.h5 (its temporary store's id is new each run). */
static fst_status setup_query(run *R, char *id, size_t idlen)
{
    fst_status s;
    const char *q = R->o->query;
    struct stat sb;
    if (stat(q, &sb) != 0)
        return fst__fail(FST_EIO, "query %s: %s", q, strerror(errno));
    fst_store *qs = NULL;
    fst_store_meta qm;
    if (is_hdf5(q)) {
        char suffix[64];
        snprintf(suffix, sizeof suffix, ".query-%ld.fst", (long)getpid());
        R->query_tmp = path_plus(R->o->output, suffix);
        if (!R->query_tmp) return fst__fail(FST_ENOMEM, "%s", q);
        fst_journal_remove(R->query_tmp);   /* ours from an earlier attempt: same pid */
        fst_import_opts io;
        memset(&io, 0, sizeof io);
        io.dtype = R->meta.d ? (int)R->meta.dtype : 0;
        s = fst_import_h5(q, R->query_tmp, &io, NULL);
        if (s) return fst__failpre(s, "query %s: ", q);
        R->query_store = strdup(R->query_tmp);
        s = fst__identity_of_file(q, id, idlen);
        if (s) return fst__failpre(s, "query: ");
    } else {
        R->query_store = strdup(q);
        id[0] = '\0';
    }
    if (!R->query_store) return fst__fail(FST_ENOMEM, "%s", q);
    s = fst_store_open(R->query_store, 0, &qs);
    if (s) return fst__failpre(s, "query: ");
    s = fst_store_meta_get(qs, &qm);
    fst_store_close(qs);
    if (s) return fst__failpre(s, "query: ");
    if (!id[0]) fst__identity_of_store(&qm, id, idlen);
    if (qm.d && R->meta.d && (qm.d != R->meta.d || qm.dtype != R->meta.dtype))
        return fst__fail(FST_EINVAL, "query %s has %u-dimensional %s descriptors, store %s "
                         "%u-dimensional %s: they cannot be matched", q, qm.d,
                         fst_dtype_name(qm.dtype), R->store_path, R->meta.d,
                         fst_dtype_name(R->meta.dtype));
    return FST_OK;
}

/* Every name must be in its store: first names in the query (if any),
 * second names in the store. Key lookups only (no descriptor is read).
 * Also finds second images too large for int16 matches0. */
static fst_status check_names(run *R, bool *drop_name)
{
    fst_status s;
    const fst_run_opts *o = R->o;
    size_t nn = fst_pairs_nnames(R->pairs), np = fst_pairs_count(R->pairs);
    unsigned char *need = calloc(nn ? nn : 1, 1);   /* bit 0: first, bit 1: second */
    fst_store *st = NULL, *qs = NULL;
    fst_reader *rd = NULL, *qrd = NULL;
    char list[700];
    size_t listed = 0, nmissing = 0;
    list[0] = '\0';
    if (!need) return fst__fail(FST_ENOMEM, "checking names");
    for (size_t i = 0; i < np; i++) {
        fst_pair p = fst_pairs_get(R->pairs, i);
        need[p.i0] |= 1;
        need[p.i1] |= 2;
    }
    FST_TRY(fst_store_open(R->store_path, 0, &st));
    FST_TRY(fst_reader_begin(st, &rd));
    if (R->query_store) {
        FST_TRY(fst_store_open(R->query_store, 0, &qs));
        FST_TRY(fst_reader_begin(qs, &qrd));
    }
    const char *big = NULL;
    uint32_t bign = 0;
    bool hash_name = false;             /* a missing name from a '#' line? */
    for (uint32_t id = 0; id < nn; id++) {
        for (int side = 0; side < 2; side++) {
            if (!(need[id] & (1 << side))) continue;
            fst_reader *r = side == 0 && qrd ? qrd : rd;
            fst_view v;
            fst_status g = fst_reader_get(r, nm(R, id), &v);
            if (g == FST_ENOTFOUND) {
                if (!drop_name[id]) nmissing++;
                hash_name |= nm(R, id)[0] == '#';
                if (!drop_name[id] && listed < 5) {
                    size_t l = strlen(list);
                    snprintf(list + l, sizeof list - l, "%s'%s'%s", listed ? ", " : "",
                             nm(R, id), side == 0 && qrd ? " (query)" : "");
                    listed++;
                }
                drop_name[id] = true;
                continue;
            }
            if (g) {
                s = fst__failpre(g, "checking the pairs' images: ");
                goto out;
            }
            if (side == 1 && o->index_size == 2 && v.n > INT16_MAX && !big) {
                big = nm(R, id);
                bign = v.n;
            }
        }
    }
    R->st->names_missing = nmissing;
    if (nmissing && !o->skip_missing) {
        s = fst__fail(FST_ENOTFOUND, "%zu image%s named in %s %s not in %s%s: %s%s "
                      "(--skip-missing drops their pairs)%s", nmissing, nmissing > 1 ? "s" : "",
                      o->pairs, nmissing > 1 ? "are" : "is", R->store_path,
                      R->query_store ? " or the query" : "", list,
                      nmissing > listed ? ", ..." : "",
                      hash_name ? "; a line of two names is a pair even if it starts with '#', "
                                  "as in hloc" : "");
        goto out;
    }
    if (big) {
        s = fst__fail(FST_EINVAL, "image '%s' has %u keypoints: hloc's int16 matches0 cannot "
                      "index more than 32767 (pass --matches-dtype int32)", big, bign);
        goto out;
    }
    s = FST_OK;
out:
    fst_reader_end(qrd);
    fst_reader_end(rd);
    fst_store_close(qs);
    fst_store_close(st);
    free(need);
    return s;
}

typedef struct keyset_ctx {
    fst__strtab *t;
} keyset_ctx;

static fst_status add_key(const char *key, void *ctx)
{
    keyset_ctx *k = ctx;
    uint32_t id;
    return fst__strtab_intern(k->t, key, strlen(key), &id, NULL);
}

/* Is pair (i0, i1) in the existing output under any key hloc's find_pair
 * tries? */
static fst_status in_output(run *R, const fst__strtab *keys, uint32_t i0, uint32_t i1, bool *yes)
{
    fst_status s;
    static const char seps[2] = {'/', '_'};
    *yes = false;
    for (int k = 0; k < 4 && !*yes; k++) {
        bool rev = k & 1;
        if ((s = pair_key(R, rev ? i1 : i0, rev ? i0 : i1, seps[k >> 1]))) return s;
        *yes = fst__strtab_find(keys, R->key, strlen(R->key)) != UINT32_MAX;
    }
    return FST_OK;
}

static fst_status build_params(run *R, char **out)
{
    /* The matcher's settings. What else the results depend on is the
     * content of the store and the query, journaled apart as their
     * identities (R->sid, R->qid; identity.c). Not the pairs file: a pair
     * is the same result in any list, so an edited list resumes. */
    const fst_run_opts *o = R->o;
    size_t n = 1024;
    char *p = malloc(n);
    if (!p)
        return fst__fail(FST_ENOMEM, "journal parameters");
    snprintf(p, n,
             "mutual=%d\nratio_threshold=%.17g\ndistance_threshold=%.17g\n"
             "matches_dtype=%s\noverwrite=%d\n",
             o->match.mutual ? 1 : 0,
             o->match.ratio_threshold, o->match.distance_threshold,
             o->index_size == 4 ? "int32" : "int16", o->overwrite ? 1 : 0);
    if (R->mtext) {
        /* a neural matcher: its settings and its weights' hash, not their
         * path (the same tensors in a moved file resume) */
        size_t l = strlen(p), ml = strlen(R->mtext);
        char *q = realloc(p, l + ml + 1);
        if (!q) { free(p); return fst__fail(FST_ENOMEM, "journal parameters"); }
        p = q;
        for (const char *m = R->mtext; *m;) {
            const char *e = strchr(m, '\n');
            size_t n = e ? (size_t)(e - m) + 1 : strlen(m);
            if (strncmp(m, "weights=", 8)) {
                memcpy(p + l, m, n);
                l += n;
            }
            m += n;
        }
        p[l] = '\0';
    }
    *out = p;
    return FST_OK;
}

/* A journal value for a message: a number (journaled with %.17g, exact)
 * in the shortest form that reads back the same (0.8, not
 * 0.80000000000000004); anything else as it is. */
static void shown_value(const char *v, int vl, char *buf, size_t len)
{
    if (vl > 200) vl = 200;
    snprintf(buf, len, "%.*s", vl, v);
    char *end, t[40];
    double x = strtod(buf, &end);
    if (!vl || *end || !isfinite(x)) return;
    snprintf(t, sizeof t, "%.17g", x);
    if (strcmp(t, buf)) return;          /* not written by %.17g (a hash...) */
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(t, sizeof t, "%.*g", prec, x);
        if (strtod(t, NULL) == x) {
            snprintf(buf, len, "%s", t);
            return;
        }
    }
}

/* The first line where two parameter texts differ, for the message. */
static void params_diff(const char *a, const char *b, char *buf, size_t len)
{
    while (*a || *b) {
        const char *ea = strchr(a, '\n'), *eb = strchr(b, '\n');
        size_t la = ea ? (size_t)(ea - a) : strlen(a), lb = eb ? (size_t)(eb - b) : strlen(b);
        if (la != lb || memcmp(a, b, la)) {
            if (!*a || !*b) {
                /* one side has lines the other lacks: a neural matcher's
                 * (an NN run journals none of them) */
                const char *k = *a ? a : b;
                const char *eq = memchr(k, '=', *a ? la : lb);
                int kl = eq ? (int)(eq - k) : (int)(*a ? la : lb);
                int vl = (int)((*a ? la : lb) - (size_t)kl - (eq ? 1 : 0));
                bool algo = kl == 9 && !memcmp(k, "algorithm", 9);
                char v[256];
                shown_value(eq ? eq + 1 : k, vl, v, sizeof v);
                snprintf(buf, len, "%.*s was '%s', now '%s'", kl, k, *a ? v : algo ? "nn" : "",
                         *b ? v : algo ? "nn" : "");
                return;
            }
            const char *eq = memchr(b, '=', lb);
            int kl = eq ? (int)(eq - b) : (int)lb;
            const char *va = memchr(a, '=', la);
            va = va ? va + 1 : a;
            int vla = (int)(la - (size_t)(va - a));
            char was[256], now[256];
            shown_value(va, vla, was, sizeof was);
            shown_value(eq ? eq + 1 : b, (int)(lb - (size_t)kl - (eq ? 1 : 0)), now, sizeof now);
            snprintf(buf, len, "%.*s was '%s', now '%s'", kl, b, was, now);
            return;
        }
        a += la + (ea ? 1 : 0);
        b += lb + (eb ? 1 : 0);
    }
    snprintf(buf, len, "(unknown difference)");
}

typedef struct resume_ctx {
    run         *R;
    const bool  *drop;       /* names left out (--skip-missing) */
    fst__u64set *listed;     /* (i0 << 32 | i1) of this run's pairs */
    fst__u64set *done;       /* of those, the journaled ones */
    char       **stale;      /* stored keys of journaled pairs not listed */
    size_t       nstale, capstale;
} resume_ctx;

/* A journaled pair is reused when this run's list has it, in the same
 * orientation (its matches0 is its first image's), by name: the journal's
 * keys are names, so a reordered or edited pairs file resumes too. The
 * others are collected, to be deleted: matches.h5 holds the list's pairs
 * only. */
static fst_status resume_one(const char *key, const fst_journal_rec *rec, void *ctx)
{
    resume_ctx *c = ctx;
    uint32_t a = fst__pairs_find(c->R->pairs, rec->name0);
    uint32_t b = fst__pairs_find(c->R->pairs, rec->name1);
    uint64_t k = (uint64_t)a << 32 | b;
    if (a != UINT32_MAX && b != UINT32_MAX && !c->drop[a] && !c->drop[b] &&
        fst__u64set_has(c->listed, k)) {
        int r = fst__u64set_add(c->done, k);
        return r < 0 ? (fst_status)r : FST_OK;
    }
    if (c->nstale == c->capstale) {
        size_t cap = c->capstale ? c->capstale * 2 : 64;
        char **p = realloc(c->stale, cap * sizeof *p);
        if (!p) return fst__fail(FST_ENOMEM, "journal");
        c->stale = p;
        c->capstale = cap;
    }
    if (!(c->stale[c->nstale] = strdup(key))) return fst__fail(FST_ENOMEM, "journal");
    c->nstale++;
    return FST_OK;
}

/* Walk the journal: its pairs this run lists go into *done, the others are
 * deleted (committed before the run goes on). */
static fst_status resume(run *R, const bool *drop, fst__u64set *done)
{
    fst_status s;
    fst__u64set listed = {0};
    resume_ctx c = {R, drop, &listed, done, NULL, 0, 0};
    size_t np = fst_pairs_count(R->pairs);
    for (size_t i = 0; i < np; i++) {
        fst_pair p = fst_pairs_get(R->pairs, i);
        int r = fst__u64set_add(&listed, (uint64_t)p.i0 << 32 | p.i1);
        if (r < 0) { s = (fst_status)r; goto out; }
    }
    FST_TRY(fst_journal_foreach(R->j, 0, resume_one, &c));
    for (size_t i = 0; i < c.nstale; i++)
        FST_TRY(fst_journal_del(R->j, c.stale[i]));
    R->st->journal_stale = c.nstale;
    if (c.nstale) {
        FST_TRY(fst_journal_commit(R->j));
        notice(R, "note: %zu journaled pair%s not in %s (or naming images it skips): "
               "discarded, not written to %s", c.nstale, c.nstale > 1 ? "s are" : " is",
               R->o->pairs, R->o->output);
    }
out:
    for (size_t i = 0; i < c.nstale; i++) free(c.stale[i]);
    free(c.stale);
    fst__u64set_free(&listed);
    return s;
}

/* Why the journal's pairs may not be reused by this run, into why[0..len)
 * ("" if they may): computed from another store or query (or another copy
 * of it, appended to separately), or with other settings. A later
 * generation of the same store is fine (appends never change a record): a
 * note says so, and the journal takes the new one. */
static fst_status journal_mismatch(run *R, const char *old, const char *params, uint64_t nrec,
                                   char *why, size_t len)
{
    fst_status s;
    char *osid = NULL, *oqid = NULL;
    fst__identity_verdict vs = FST__ID_OTHER, vq = FST__ID_OTHER;
    static const char *const kind[] = {"", "", " (another copy of it, appended to separately)",
                                       ""};
    why[0] = '\0';
    s = fst_journal_meta_get(R->j, "store", &osid);
    if (s == FST_OK) s = fst_journal_meta_get(R->j, "query", &oqid);
    if (s && s != FST_ENOTFOUND) goto out;
    s = FST_OK;
    if (osid && oqid) {
        FST_TRY(fst__identity_check(R->store_path, osid, R->sid, &vs));
        FST_TRY(fst__identity_check(R->query_store ? R->query_store : "", oqid, R->qid, &vq));
    }
    if (!old || !osid || !oqid) {
        snprintf(why, len, "written by an older featstore, which did not record the identity "
                 "of the store its %llu pair%s were computed from", (unsigned long long)nrec,
                 nrec == 1 ? "" : "s");
    } else if (vs >= FST__ID_COPY) {
        snprintf(why, len, "%llu pair%s computed from another store%s: the journal's is %s, "
                 "%s is %s", (unsigned long long)nrec, nrec == 1 ? "" : "s", kind[vs], osid,
                 R->store_path, R->sid);
    } else if (vq >= FST__ID_COPY) {
        snprintf(why, len, "%llu pair%s computed with another query%s: the journal's is %s, "
                 "%s is %s", (unsigned long long)nrec, nrec == 1 ? "" : "s", kind[vq],
                 oqid[0] ? oqid : "none", R->o->query ? R->o->query : "this run's",
                 R->qid[0] ? R->qid : "none");
    } else if (strcmp(old, params) != 0) {
        char diff[600];
        params_diff(old, params, diff, sizeof diff);
        snprintf(why, len, "other parameters (%s)", diff);
    } else {
        if (vs == FST__ID_APPENDED)
            notice(R, "note: %s was appended to since %s was written (%s, now %s): its "
                   "pairs stay valid, as an append never changes a stored image",
                   R->store_path, R->jpath, osid, R->sid);
        if (vq == FST__ID_APPENDED)
            notice(R, "note: the query %s was appended to since %s was written (%s, now "
                   "%s): its pairs stay valid", R->o->query, R->jpath, oqid, R->qid);
        FST_TRY(fst_journal_meta_put(R->j, "store", R->sid));
        FST_TRY(fst_journal_meta_put(R->j, "query", R->qid));
        FST_TRY(fst_journal_commit(R->j));
    }
out:
    free(osid);
    free(oqid);
    return s;
}

/* Open the journal: resume a run on the same data with the same settings,
 * whatever its pairs file; refuse one on other data or with other settings
 * (or, with overwrite, start over). Reused pairs go into *done. */
static fst_status open_journal(run *R, const char *params, const bool *drop, fst__u64set *done,
                               bool create)
{
    fst_status s;
    const fst_run_opts *o = R->o;
    struct stat sb;
    if (stat(R->jpath, &sb) == 0) {
        s = fst_journal_open(R->jpath, 0, &R->j);
        /* A run that failed while creating its journal (disk full at the
         * first pages) leaves a small file LMDB cannot open, or one without
         * parameters: it holds no pair, so it goes without asking. */
        if (s == FST_EFORMAT && sb.st_size <= 65536) {
            notice(R, "note: removing %s, left by a run that failed while creating it",
                   R->jpath);
            FST_TRY(fst_journal_remove(R->jpath));
        } else if (s == FST_EFORMAT && o->overwrite) {
            notice(R, "note: %s is not a journal of this featstore: starting over (--overwrite)", R->jpath);
            FST_TRY(fst_journal_remove(R->jpath));
        } else if (s == FST_EFORMAT) {
            return fst__fail(FST_EFORMAT, "%s is not a journal this featstore can read; move it "
                             "away, or pass --overwrite to start over", R->jpath);
        } else if (s) {
            return s;
        } else {
            char *old = NULL;
            uint64_t nrec = 0;
            s = fst_journal_meta_get(R->j, "params", &old);
            if (s && s != FST_ENOTFOUND) return s;
            if ((s = fst_journal_count(R->j, &nrec)) != FST_OK) { free(old); return s; }
            char why[1200];
            if (!old && nrec == 0) {
                notice(R, "note: removing %s, left by a run that failed while creating it",
                       R->jpath);
                fst_journal_close(R->j);
                R->j = NULL;
                FST_TRY(fst_journal_remove(R->jpath));
            } else if ((s = journal_mismatch(R, old, params, nrec, why, sizeof why)) != FST_OK) {
                free(old);
                return s;
            } else if (why[0]) {
                bool settings = !strncmp(why, "other parameters", 16);
                free(old);
                if (!o->overwrite)
                    return fst__fail(FST_EEXIST, "%s belongs to an interrupted run with %s: %s, "
                                     "or pass --overwrite to start over", R->jpath, why,
                                     settings ? "run that command again to finish it"
                                              : "finish it on the data it was computed from");
                notice(R, "note: discarding %s from a run with %s: --overwrite", R->jpath, why);
                fst_journal_close(R->j);
                R->j = NULL;
                FST_TRY(fst_journal_remove(R->jpath));
            } else {
                free(old);
                return resume(R, drop, done);
            }
        }
    }
    if (!create) return FST_OK;
    FST_TRY(fst_journal_open(R->jpath, FST_JOURNAL_CREATE, &R->j));
    FST_TRY(fst_journal_meta_put(R->j, "params", params));
    FST_TRY(fst_journal_meta_put(R->j, "store", R->sid));
    FST_TRY(fst_journal_meta_put(R->j, "query", R->qid));
    FST_TRY(fst_journal_commit(R->j));
    return FST_OK;
out:
    return s;
}

/* ---- devices ---- */

static uint32_t cpu_count(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return (uint32_t)n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (uint32_t)n : 1;
}

static fst_status add_gpu(run *R, const char *id, size_t len)
{
    char **g = realloc(R->gpus, (R->ngpu + 1) * sizeof *g);
    if (!g) return fst__fail(FST_ENOMEM, "device list");
    R->gpus = g;
    if (!(R->gpus[R->ngpu] = strndup(id, len))) return fst__fail(FST_ENOMEM, "device list");
    R->ngpu++;
    return FST_OK;
}

/* The GPUs this process may use, as values for CUDA_VISIBLE_DEVICES,
 * without touching CUDA: the caller's CUDA_VISIBLE_DEVICES if set, else
 * the driver's /proc entries. `want` ("0,2") picks among them. */
static fst_status find_gpus(run *R, const char *want)
{
    fst_status s;
    char **vis = NULL;
    size_t nvis = 0;
    const char *env = getenv("CUDA_VISIBLE_DEVICES");
    if (env) {
        for (const char *p = env; *p;) {
            size_t l = strcspn(p, ",");
            if (l) {
                char **v = realloc(vis, (nvis + 1) * sizeof *v);
                if (!v) { s = fst__fail(FST_ENOMEM, "devices"); goto out; }
                vis = v;
                if (!(vis[nvis] = strndup(p, l))) { s = fst__fail(FST_ENOMEM, "devices"); goto out; }
                nvis++;
            }
            p += l;
            if (*p == ',') p++;
        }
    } else {
        /* The driver's list; else its device nodes /dev/nvidia0, 1... */
        DIR *d = opendir("/proc/driver/nvidia/gpus");
        if (d) {
            struct dirent *e;
            while ((e = readdir(d)))
                if (e->d_name[0] != '.') nvis++;
            closedir(d);
        } else if ((d = opendir("/dev"))) {
            struct dirent *e;
            while ((e = readdir(d)))
                if (!strncmp(e->d_name, "nvidia", 6) && e->d_name[6] >= '0' && e->d_name[6] <= '9')
                    nvis++;
            closedir(d);
        }
    }
    if (want && !*want) {
        s = fst__fail(FST_EINVAL, "--device cuda:: expected device numbers like cuda:0,2");
        goto out;
    }
    if (want) {
        for (const char *p = want; *p;) {
            size_t l = strcspn(p, ",");
            char *end;
            unsigned long k = strtoul(p, &end, 10);
            if (!l || end != p + l || *p < '0' || *p > '9') {
                s = fst__fail(FST_EINVAL, "--device cuda:%s: expected device numbers like 0,2", want);
                goto out;
            }
            if (k >= nvis) {
                s = fst__fail(FST_ENODEVICE, "--device cuda:%s: no CUDA device %lu (%zu visible%s)",
                              want, k, nvis, env ? " through CUDA_VISIBLE_DEVICES" : "");
                goto out;
            }
            char num[24];
            snprintf(num, sizeof num, "%lu", k);
            const char *id = vis ? vis[k] : num;
            FST_TRY(add_gpu(R, id, strlen(id)));
            p += l;
            if (*p == ',') p++;
        }
    } else {
        for (size_t k = 0; k < nvis; k++) {
            char num[24];
            snprintf(num, sizeof num, "%zu", k);
            const char *id = vis ? vis[k] : num;
            FST_TRY(add_gpu(R, id, strlen(id)));
        }
    }
    s = FST_OK;
out:
    for (size_t i = 0; vis && i < nvis; i++) free(vis[i]);
    free(vis);
    return s;
}

static fst_status plan_devices(run *R)
{
    fst_status s;
    const fst_run_opts *o = R->o;
    const char *dev = o->device && *o->device ? o->device : "auto";
    if (R->mtext) dev = "cpu";           /* checked by plan_matcher() */
    /* FST_TEST_FAKE_CUDA (tests only, see fst_worker.h): act as if built. */
    bool built = fst_backend_available("cuda");
#if FST_TEST_HOOKS
    built = built || getenv("FST_TEST_FAKE_CUDA");
#endif
    if (!strcmp(dev, "cpu")) {
        R->cuda = false;
    } else if (!strcmp(dev, "auto")) {
        R->auto_dev = true;
        if (built) FST_TRY(find_gpus(R, NULL));
        R->cuda = R->ngpu > 0;
        if (built && !R->cuda)
            notice(R, "note: no CUDA device found: matching on the CPU");
    } else if (!strncmp(dev, "cuda", 4) && (dev[4] == '\0' || dev[4] == ':')) {
        if (!built)
            return fst__fail(FST_ENODEVICE, "--device %s: this featstore was built without "
                             "the CUDA backend", dev);
        FST_TRY(find_gpus(R, dev[4] == ':' ? dev + 5 : NULL));
        if (!R->ngpu)
            return fst__fail(FST_ENODEVICE, "--device %s: no CUDA device found", dev);
        R->cuda = true;
    } else {
        return fst__fail(FST_EINVAL, "--device %s: expected cpu, cuda, cuda:0,2 or auto", dev);
    }
    return FST_OK;
out:
    return s;
}

/* A neural matcher (fst_matcher.h): CPU only; its conf text (weights
 * hashed) for the journal and the workers; the weights checked against the
 * store once here, so a wrong file is one message, not one per worker. */
static fst_status plan_matcher(run *R)
{
    const fst_run_opts *o = R->o;
    if (!o->matcher || o->matcher->algo == FST_ALGO_NN) return FST_OK;
    const char *dev = o->device && *o->device ? o->device : "auto";
    if (strcmp(dev, "cpu") && strcmp(dev, "auto"))
        return fst__fail(FST_EINVAL, "--device %s: the %s matcher runs on the CPU only "
                         "(use --device cpu)", dev, o->matcher->preset ? o->matcher->preset
                                                                       : "neural");
    if (o->threads > 1)
        return fst__fail(FST_EINVAL, "--threads %u: the %s matcher runs one thread per "
                         "worker (use --workers)", o->threads, o->matcher->preset
                         ? o->matcher->preset : "neural");
    if (o->backend_params && *o->backend_params)
        return fst__fail(FST_EINVAL, "--backend-params %s: the %s matcher takes none",
                         o->backend_params, o->matcher->preset ? o->matcher->preset : "neural");
    if (o->matcher->scale_ori && R->meta.format_minor < FST_FORMAT_MINOR_SO)
        /* no record of this store holds scales or orientations (a store
         * holds them from format 1.2 on): refuse up front rather than fail
         * every pair; a store that has some gets them checked per image */
        return fst__fail(FST_EINVAL, "%s: %s needs keypoint scales and orientations, which "
                         "no image of the store holds (image '%s'; import the features "
                         "file of hloc's DoG extractor, which writes `scales` and `oris`)",
                         o->store,
                         o->matcher->preset ? o->matcher->preset : "LightGlue",
                         fst_pairs_count(R->pairs) ? fst_pairs_name(R->pairs,
                             fst_pairs_get(R->pairs, 0).i0) : "(none)");
    fst_status s = fst_matcher_conf_text(o->matcher, &R->mtext);
    if (s) return s;
    s = fst_matcher_check_weights(R->mtext, R->meta.d);
    if (s) return fst__failpre(s, "%s: ", o->store);
    return FST_OK;
}

/* How many workers, and which device each. */
static uint32_t wanted_workers(const run *R)
{
    const fst_run_opts *o = R->o;
    uint32_t n;
    if (R->cuda)
        n = o->workers ? o->workers : R->ngpu * (o->workers_per_device ? o->workers_per_device : 1);
    else
        n = o->workers ? o->workers : cpu_count();
    uint64_t todo = R->ntodo ? R->ntodo : 1;
    return n > todo ? (uint32_t)todo : n;
}

static void describe_device(run *R)
{
    fst_run_stats *st = R->st;
    if (!R->cuda) {
        snprintf(st->device, sizeof st->device, "cpu");
        snprintf(st->backend, sizeof st->backend, "cpu");
        return;
    }
    size_t l = (size_t)snprintf(st->device, sizeof st->device, "cuda:");
    for (uint32_t g = 0; g < R->ngpu && l < sizeof st->device; g++)
        l += (size_t)snprintf(st->device + l, sizeof st->device - l, "%s%s", g ? "," : "",
                              R->gpus[g]);
    snprintf(st->backend, sizeof st->backend, "cuda");
}

/* ---- workers ---- */

static fst_status queue_config(run *R, wk *w)
{
    const fst_run_opts *o = R->o;
    char params[600];
    const char *extra = o->backend_params && *o->backend_params ? o->backend_params : NULL;
    if (R->cuda) {
        /* Each worker sees its one GPU as device 0. The K workers sharing a
         * GPU each size their descriptor cache to 1/K of its free memory
         * (share=K), or the first one's cache would take it all. */
        uint32_t ngpu = R->ngpu ? R->ngpu : 1;
        uint32_t k = (wanted_workers(R) + ngpu - 1) / ngpu;
        size_t l = 0;
        params[0] = '\0';
        if (!(extra && strstr(extra, "device=")))
            l += (size_t)snprintf(params + l, sizeof params - l, "device=0,");
        if (!(extra && strstr(extra, "share=")))
            l += (size_t)snprintf(params + l, sizeof params - l, "share=%u,", k ? k : 1);
        snprintf(params + l, sizeof params - l, "%s", extra ? extra : "");
        l = strlen(params);
        if (l && params[l - 1] == ',')
            params[l - 1] = '\0';
    } else
        snprintf(params, sizeof params, "%s%s%s",
                 extra && strstr(extra, "threads=") ? "" : R->wparams,
                 extra && !strstr(extra, "threads=") ? "," : "", extra ? extra : "");
    fst__wconfig c = {
        .store = R->store_path,
        .query = R->query_store ? R->query_store : "",
        .backend = R->cuda ? "cuda" : "cpu",
        .params = params,
        .mutual = o->match.mutual,
        .ratio = o->match.ratio_threshold,
        .distance = o->match.distance_threshold,
        .index_size = o->index_size,
        .chunk = R->cuda ? 0 : 8,
        .slot = w->slot,
        .verify = !o->no_verify,
        .matcher = R->mtext ? R->mtext : "",
    };
    if (R->mtext) c.params = "";   /* a neural matcher takes no backend params */
    return fst__wconfig_encode(&w->out, &c);
}

static fst_status spawn_worker(run *R, wk *w)
{
    fst_status s = FST_OK;
    int sv[2] = {-1, -1}, child = -1;
    char **envp = NULL;
    char *cvd = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    bool fa_ok = false, at_ok = false;

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return fst__fail(FST_EIO, "socketpair: %s", strerror(errno));
    /* The worker's end becomes its fd 3; keep it clear of 0..3 here so the
     * dup2 below always makes a fresh descriptor without close-on-exec. */
    child = fcntl(sv[1], F_DUPFD_CLOEXEC, 10);
    close(sv[1]);
    if (child < 0) {
        s = fst__fail(FST_EIO, "fcntl: %s", strerror(errno));
        goto out;
    }
    if (posix_spawn_file_actions_init(&fa) != 0) {
        s = fst__fail(FST_ENOMEM, "posix_spawn");
        goto out;
    }
    fa_ok = true;
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, 2, 1);     /* nothing of a worker's reaches stdout */
    posix_spawn_file_actions_adddup2(&fa, child, 3);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    posix_spawn_file_actions_addclosefrom_np(&fa, 4);
#endif
    if (posix_spawnattr_init(&at) != 0) {
        s = fst__fail(FST_ENOMEM, "posix_spawn");
        goto out;
    }
    at_ok = true;
    /* Own process group: a terminal's Ctrl-C reaches the coordinator only,
     * which decides. Default signal handling and an empty mask. */
    sigset_t none, defs;
    sigemptyset(&none);
    sigemptyset(&defs);
    sigaddset(&defs, SIGINT);
    sigaddset(&defs, SIGTERM);
    sigaddset(&defs, SIGPIPE);
    sigaddset(&defs, SIGCHLD);
    sigaddset(&defs, SIGHUP);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &defs);
    posix_spawnattr_setpgroup(&at, 0);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                  POSIX_SPAWN_SETSIGDEF);

    /* Environment: ours, with CUDA_VISIBLE_DEVICES naming the worker's one
     * GPU (set before the worker's CUDA starts: it sees only that device). */
    size_t ne = 0;
    while (environ[ne]) ne++;
    envp = calloc(ne + 2, sizeof *envp);
    if (!envp) { s = fst__fail(FST_ENOMEM, "environment"); goto out; }
    size_t k = 0;
    for (size_t i = 0; i < ne; i++)
        if (!R->cuda || strncmp(environ[i], "CUDA_VISIBLE_DEVICES=", 21))
            envp[k++] = environ[i];
    if (R->cuda) {
        const char *g = R->gpus[w->slot % R->ngpu];
        cvd = path_plus("CUDA_VISIBLE_DEVICES=", g);
        if (!cvd) { s = fst__fail(FST_ENOMEM, "environment"); goto out; }
        envp[k++] = cvd;
    }
    char ppid[24], slot[24];
    snprintf(ppid, sizeof ppid, "%ld", (long)getpid());
    snprintf(slot, sizeof slot, "%u", w->slot);
    const char *exe = R->o->worker_exe ? R->o->worker_exe : "/proc/self/exe";
    char *argv[] = {(char *)exe, "worker", "--fd", "3", "--parent", ppid, "--slot", slot, NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, exe, &fa, &at, argv, envp);
    if (rc != 0) {
        s = fst__fail(FST_ECHILD, "starting worker %s: %s", exe, strerror(rc));
        goto out;
    }
    int fl = fcntl(sv[0], F_GETFL);
    fcntl(sv[0], F_SETFL, fl | O_NONBLOCK);
    w->pid = pid;
    w->fd = sv[0];
    sv[0] = -1;
    w->state = W_STARTING;
    w->nfl = 0;
    w->sent = 0;
    w->work_batch = 0;
    w->in.len = w->in.off = 0;
    w->out.len = w->out.off = 0;
    w->last_status = FST_OK;
    w->last_words[0] = '\0';
    w->heard_ns = fst__now_ns();
    w->chunk_t0 = 0;
    w->stalled = false;
    s = queue_config(R, w);
out:
    if (fa_ok) posix_spawn_file_actions_destroy(&fa);
    if (at_ok) posix_spawnattr_destroy(&at);
    if (sv[0] >= 0) close(sv[0]);
    if (child >= 0) close(child);
    free(envp);
    free(cvd);
    return s;
}

static void describe_exit(int ws, char *buf, size_t len)
{
    if (WIFSIGNALED(ws)) {
        int sig = WTERMSIG(ws);
        snprintf(buf, len, "was killed by signal %d (%s)", sig, strsignal(sig));
    } else if (WIFEXITED(ws)) {
        int c = WEXITSTATUS(ws);
        if (c == 0)
            snprintf(buf, len, "exited");
        else
            snprintf(buf, len, "exited with status %d (%s)", c,
                     c < 128 ? fst_strerror((fst_status)-c) : "?");
    } else {
        snprintf(buf, len, "ended (wait status %d)", ws);
    }
}

static fst_status push_retry(run *R, batch *b)
{
    if (R->nretry == R->capretry) {
        size_t c = R->capretry ? R->capretry * 2 : 16;
        batch **p = realloc(R->retry, c * sizeof *p);
        if (!p) return fst__fail(FST_ENOMEM, "requeue");
        R->retry = p;
        R->capretry = c;
    }
    R->retry[R->nretry++] = b;
    return FST_OK;
}

static batch *new_batch(run *R, const uint32_t *ids, uint32_t n)
{
    batch *b = malloc(sizeof *b + (size_t)n * sizeof b->ids[0]);
    if (!b) return NULL;
    b->id = ++R->next_batch;
    b->n = n;
    b->answered = 0;
    memcpy(b->ids, ids, (size_t)n * sizeof b->ids[0]);
    return b;
}

/* Put the unanswered pairs of batch b back in the queue. Pairs [lo, lo+nb)
 * of the batch were being matched when the worker died (its last WORKING):
 * they are blamed, `points` each (a crash 2, a SIGKILL 1: the OOM killer,
 * or someone's kill -9, which says less about the pair), and requeued in
 * small pieces; the others go back as they were. A pair blamed alone that
 * reaches ISOLATE points (two crashes, or four kills) is isolated. */
#define ISOLATE 4
static fst_status requeue(run *R, batch *b, uint32_t lo, uint32_t nb, unsigned points,
                          const char *why)
{
    fst_status s = FST_OK;
    uint32_t *blamed = malloc(((size_t)b->n + 1) * sizeof *blamed);
    uint32_t *rest = malloc(((size_t)b->n + 1) * sizeof *rest);
    uint32_t n = 0, m = 0;
    if (!blamed || !rest) {
        s = fst__fail(FST_ENOMEM, "requeue");
        goto out;
    }
    for (uint32_t k = 0; k < b->n; k++) {
        tpair *p = &R->todo[b->ids[k]];
        if (p->state != P_INFLIGHT || p->batch != b->id) continue;
        p->state = P_TODO;
        if (points && k >= lo && k - lo < nb) {
            if (p->kills < 255) p->kills++;
            p->points = (uint8_t)(p->points + points > 255 ? 255 : p->points + points);
            blamed[n++] = b->ids[k];
        } else {
            rest[m++] = b->ids[k];
        }
    }
    if (m) {
        batch *rb = new_batch(R, rest, m);
        if (!rb) s = fst__fail(FST_ENOMEM, "requeue");
        else if ((s = push_retry(R, rb))) free(rb);
    }
    if (!s && n == 1 && R->todo[blamed[0]].points >= ISOLATE) {
        tpair *p = &R->todo[blamed[0]];
        p->state = P_FAILED;
        R->failed++;
        char d[800];
        snprintf(d, sizeof d, "killed %u worker processes (the last %s); isolated", p->kills, why);
        notice(R, "warning: pair %s %s %s", nm(R, p->i0), nm(R, p->i1), d);
        s = add_failure(R, p->i0, p->i1, FST_ECHILD, d);
    } else if (!s && n) {
        /* Split at each death (pushed last: taken first), so that a pair
         * that kills workers ends up alone in a few steps. */
        uint32_t parts = n < 8 ? n : 8;
        for (uint32_t q = parts; q-- > 0 && !s;) {
            uint32_t a = (uint32_t)((uint64_t)n * q / parts), z = (uint32_t)((uint64_t)n * (q + 1) / parts);
            if (z == a) continue;
            batch *nb2 = new_batch(R, blamed + a, z - a);
            if (!nb2) s = fst__fail(FST_ENOMEM, "requeue");
            else if ((s = push_retry(R, nb2))) free(nb2);
        }
    }
out:
    free(blamed);
    free(rest);
    free(b);
    return s;
}

static uint32_t alive(const run *R)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < R->nw; i++) n += R->w[i].state == W_READY;
    return n;
}

static batch *take_work(run *R, wk *w)
{
    if (R->nretry) return R->retry[--R->nretry];
    while (R->next_fresh < R->ntodo && R->todo[R->next_fresh].state != P_TODO)
        R->next_fresh++;
    if (R->next_fresh >= R->ntodo) return NULL;
    uint32_t B = R->o->batch_pairs ? R->o->batch_pairs : 128;
    /* Slow start (1, 2, 4...: the first pairs come back at once), then
     * guided (smaller batches near the end, so workers finish together). */
    uint32_t size = w->sent < 16 && (1u << w->sent) < B ? 1u << w->sent : B;
    uint64_t rest = R->ntodo - R->next_fresh, nal = alive(R) ? alive(R) : 1;
    uint64_t guided = (rest + 2 * nal - 1) / (2 * nal);
    if (guided < size) size = guided ? (uint32_t)guided : 1;
    batch *b = malloc(sizeof *b + (size_t)size * sizeof b->ids[0]);
    if (!b) {
        /* not "no work": without this the run would wait forever */
        R->fatal = FST_ENOMEM;
        snprintf(R->fatal_detail, sizeof R->fatal_detail, "a batch of pairs for worker %u", w->slot);
        return NULL;
    }
    b->id = ++R->next_batch;
    b->answered = 0;
    b->n = 0;
    while (b->n < size && R->next_fresh < R->ntodo) {
        if (R->todo[R->next_fresh].state == P_TODO)
            b->ids[b->n++] = (uint32_t)R->next_fresh;
        R->next_fresh++;
    }
    if (!b->n) {
        free(b);
        return NULL;
    }
    return b;
}

static fst_status send_batch(run *R, wk *w, batch *b)
{
    fst_status s;
    size_t start;
    FST_TRY(fst__msg_begin(&w->out, FST__MSG_BATCH, &start));
    FST_TRY(fst__msg_u32(&w->out, b->id));
    FST_TRY(fst__msg_u32(&w->out, b->n));
    for (uint32_t k = 0; k < b->n; k++) {
        tpair *p = &R->todo[b->ids[k]];
        FST_TRY(fst__msg_u32(&w->out, b->ids[k]));
        FST_TRY(fst__msg_str(&w->out, nm(R, p->i0)));
        FST_TRY(fst__msg_str(&w->out, nm(R, p->i1)));
        p->state = P_INFLIGHT;
        p->batch = b->id;
    }
    fst__msg_end(&w->out, start);
    if (!w->nfl) w->heard_ns = fst__now_ns();   /* idle until now: not a stall */
    w->fl[w->nfl++] = b;
    w->sent++;
out:
    return s;
}

/* Send what is buffered for w without blocking. */
static void flush_out(wk *w, bool *broken)
{
    while (w->out.off < w->out.len) {
        ssize_t n = send(w->fd, w->out.p + w->out.off, w->out.len - w->out.off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) *broken = true;
            break;
        }
        w->out.off += (size_t)n;
    }
    if (w->out.off == w->out.len) w->out.len = w->out.off = 0;
}

static fst_status commit(run *R)
{
    if (!R->j || !fst_journal_pending(R->j)) return FST_OK;
    R->first_pending = 0;
    return fst_journal_commit(R->j);
}

static fst_status on_result(run *R, wk *w, fst__rd *r)
{
    fst_status s;
    uint32_t bid = fst__rd_u32(r), id = fst__rd_u32(r);
    fst_status ps = (fst_status)fst__rd_i32(r);
    uint32_t n0 = fst__rd_u32(r), nmatch = fst__rd_u32(r), dl;
    const char *detail = fst__rd_str(r, &dl);
    batch *b = NULL;
    for (int k = 0; k < w->nfl; k++)
        if (w->fl[k]->id == bid) b = w->fl[k];
    if (r->bad || !b || id >= R->ntodo || R->todo[id].state != P_INFLIGHT ||
        R->todo[id].batch != bid)
        return fst__fail(FST_EFORMAT, "worker %u: result for a pair it was not given", w->slot);
    tpair *p = &R->todo[id];
    b->answered++;
    if (w->chunk_t0) {
        /* a chunk's results come together, after it: its first one ends it */
        int64_t per = (fst__now_ns() - w->chunk_t0) / (w->chunk_n ? w->chunk_n : 1);
        if (per > R->pair_ns_max) R->pair_ns_max = per;
        w->chunk_t0 = 0;
    }
    if (ps != FST_OK) {
        char d[1100];
        snprintf(d, sizeof d, "%.*s", (int)(dl > 1000 ? 1000 : dl), detail);
        p->state = P_FAILED;
        R->failed++;
        notice(R, "warning: pair %s %s failed: %s: %s", nm(R, p->i0), nm(R, p->i1), fst_strerror(ps), d);
        return add_failure(R, p->i0, p->i1, ps, d);
    }
    uint32_t isz = R->o->index_size;
    const void *m = fst__rd_bytes(r, (size_t)n0 * isz);
    const void *sc = fst__rd_bytes(r, (size_t)n0 * 2);
    if (r->bad || nmatch > n0)
        return fst__fail(FST_EFORMAT, "worker %u: malformed result", w->slot);
    FST_TRY(pair_key(R, p->i0, p->i1, '/'));
    fst_journal_rec rec = {.name0 = nm(R, p->i0), .name1 = nm(R, p->i1), .n0 = n0,
                           .nmatches = nmatch, .index_size = isz, .matches0 = m,
                           .scores0 = sc};
    FST_TRY(fst_journal_put(R->j, R->key, &rec));
    if (!R->first_pending) R->first_pending = fst__now_ns();
    p->state = P_DONE;
    R->done++;
    R->st->pairs_matched++;
    R->st->matches += nmatch;
    R->deaths_since_progress = 0;
    if (R->st->first_pair_ms < 0)
        R->st->first_pair_ms = (double)(fst__now_ns() - R->t_launch) / 1e6;
    uint32_t cp = R->o->commit_pairs ? R->o->commit_pairs : 512;
    if (fst_journal_pending(R->j) >= cp) FST_TRY(commit(R));
out:
    return s;
}

static void copy_words(wk *w, fst__rd *r)
{
    w->last_status = (fst_status)fst__rd_i32(r);
    uint32_t dl;
    const char *d = fst__rd_str(r, &dl);
    snprintf(w->last_words, sizeof w->last_words, "%.*s", (int)(dl > 500 ? 500 : dl), d);
}

static fst_status on_message(run *R, wk *w, uint32_t type, fst__rd *r)
{
    switch (type) {
    case FST__MSG_READY:
        copy_words(w, r);
        if (w->last_status == FST_OK && w->state == W_STARTING) {
            w->state = W_READY;
            R->any_ready = true;
        }
        return FST_OK;
    case FST__MSG_RESULT:
        return on_result(R, w, r);
    case FST__MSG_DONE: {
        uint32_t bid = fst__rd_u32(r);
        if (!w->nfl || w->fl[0]->id != bid)
            return fst__fail(FST_EFORMAT, "worker %u: unexpected end of batch", w->slot);
        batch *b = w->fl[0];
        memmove(w->fl, w->fl + 1, (size_t)(w->nfl - 1) * sizeof w->fl[0]);
        w->nfl--;
        if (w->work_batch == bid) w->work_batch = 0;
        if (b->answered < b->n)        /* cannot happen; never lose a pair */
            return requeue(R, b, 0, 0, 0, "");
        free(b);
        return FST_OK;
    }
    case FST__MSG_WORKING:
        w->work_batch = fst__rd_u32(r);
        w->work_lo = fst__rd_u32(r);
        w->work_n = fst__rd_u32(r);
        w->chunk_t0 = fst__now_ns();
        w->chunk_n = w->work_n;
        return FST_OK;
    case FST__MSG_FATAL:
        copy_words(w, r);
        return FST_OK;
    default:
        return fst__fail(FST_EFORMAT, "worker %u: unexpected message %u", w->slot, type);
    }
}

/* Read what w sent; process complete messages. *eof when the worker's end
 * is closed (it exited or died). */
static fst_status read_worker(run *R, wk *w, bool *eof)
{
    fst_status s = FST_OK;
    for (;;) {
        if ((s = fst__buf_reserve(&w->in, 1 << 16))) return s;
        ssize_t n = read(w->fd, w->in.p + w->in.len, w->in.cap - w->in.len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n <= 0) {
            *eof = true;
            break;
        }
        w->in.len += (size_t)n;
        w->heard_ns = fst__now_ns();
        if (w->in.cap - w->in.len > 0 && (size_t)n < (1u << 16)) break;
    }
    uint32_t type;
    fst__rd r;
    int got;
    while ((got = fst__msg_next(&w->in, &type, &r)) == 1)
        if ((s = on_message(R, w, type, &r))) return s;
    if (got < 0) return (fst_status)got;
    fst__buf_compact(&w->in);
    /* A worker that could not start says why and exits: handle it now, not
     * whenever its end of file is read (maybe after the run is over). */
    if (w->state == W_STARTING && w->last_status != FST_OK) *eof = true;
    return FST_OK;
}

static void kill_worker(wk *w)
{
    if (w->state == W_OFF) return;
    kill(w->pid, SIGKILL);
}

/* ---- deadlines ----
 *
 * Nothing waits without one. A worker that has work (a batch in flight, or
 * its start: store and backend opening) and sends nothing for its stall
 * limit is killed with SIGKILL and handled as a dead worker (its pairs go
 * back to the queue; the pairs it was matching get one point, as for any
 * SIGKILL, half a crash's two: a pair is isolated once it has four, the
 * last time blamed alone). The limit is max(floor, STALL_FACTOR x the slowest per-pair time
 * seen in this run x the pairs it is matching at once): a worker sends its
 * results after each chunk of pairs (8 on the CPU, a batch on a GPU), so a
 * live one is heard at least once per chunk. The floor (--stall-timeout,
 * default 60 s on the CPU) covers the first chunks, before any time was
 * measured: a first batch holds one pair, and one pair of 8k x 8k
 * keypoints takes about a second on one core. With CUDA the default floor
 * is 150 s: a GPU worker gives up by itself after its backend's timeout_s
 * (120 s) and says why, which is better than killing it. A start gets at
 * least the default floor (a CUDA context and cuBLAS take seconds). The
 * graceful stop after a first SIGINT/SIGTERM waits for the batches in
 * flight at most min(floor, STOP_GRACE_S), then drops them. Reaping a
 * process that closed its socket or was killed waits at most REAP_NS
 * (then SIGKILL, then REAP_NS more, then gives up on it: a process in an
 * uninterruptible sleep is left to init rather than waited for). */
#define STALL_FACTOR     10
#define STALL_FLOOR_CPU  60.0
#define STALL_FLOOR_CUDA 150.0
#define STALL_FLOOR_NEURAL 600.0   /* LightGlue at 4096 keypoints: a minute a
                                     pair on a busy core (RESULTS.md) */
#define STOP_GRACE_S     10.0
#define REAP_NS          3000000000LL

static int64_t default_floor_ns(const run *R)
{
    if (R->mtext) return (int64_t)(STALL_FLOOR_NEURAL * 1e9);
    return (int64_t)((R->cuda ? STALL_FLOOR_CUDA : STALL_FLOOR_CPU) * 1e9);
}

static int64_t stall_floor_ns(const run *R)
{
    double t = R->o->stall_timeout_s;
    return t > 0 ? (int64_t)(t * 1e9) : default_floor_ns(R);
}

int64_t fst__stall_limit_ns(int64_t floor_ns, int64_t pair_ns_max, uint32_t pairs)
{
    int64_t n = pairs ? (int64_t)pairs : 1;
    if (pair_ns_max < 0) pair_ns_max = 0;
    int64_t derived = pair_ns_max > INT64_MAX / 4 / STALL_FACTOR / n
                          ? INT64_MAX / 4
                          : pair_ns_max * STALL_FACTOR * n;
    return derived > floor_ns ? derived : floor_ns;
}

/* How long w may stay silent. */
static int64_t stall_limit_ns(const run *R, const wk *w)
{
    int64_t floor = stall_floor_ns(R);
    if (w->state == W_STARTING) {
        int64_t d = default_floor_ns(R);
        return floor > d ? floor : d;
    }
    return fst__stall_limit_ns(floor, R->pair_ns_max,
                               w->work_batch && w->work_n ? w->work_n : 1);
}

/* What w was doing, for the message. */
static void describe_work(const run *R, const wk *w, char *buf, size_t len)
{
    if (w->state == W_STARTING) {
        snprintf(buf, len, "starting (opening the store and its backend)");
        return;
    }
    for (int k = 0; k < w->nfl; k++) {
        const batch *b = w->fl[k];
        if (b->id != w->work_batch || w->work_lo >= b->n) continue;
        const tpair *p = &R->todo[b->ids[w->work_lo]];
        uint32_t n = w->work_n;
        snprintf(buf, len, "matching pair %s %s%s", nm(R, p->i0), nm(R, p->i1),
                 n > 1 ? " and the next ones of its chunk" : "");
        if (n > 1) {
            size_t l = strlen(buf);
            snprintf(buf + l, len - l, " (%u pairs)", n);
        }
        return;
    }
    uint32_t n = 0;
    for (int k = 0; k < w->nfl; k++) n += w->fl[k]->n;
    snprintf(buf, len, "holding %d batch%s (%u pairs) not yet begun", w->nfl,
             w->nfl == 1 ? "" : "es", n);
}

/* Kill the workers that have had work and sent nothing for their stall
 * limit; their end of file then goes through on_death. */
static void check_stalls(run *R, int64_t now)
{
    for (uint32_t i = 0; i < R->nw; i++) {
        wk *w = &R->w[i];
        if (w->state == W_OFF || w->stalled) continue;
        if (w->state != W_STARTING && w->nfl == 0) continue;
        int64_t limit = stall_limit_ns(R, w), quiet = now - w->heard_ns;
        if (quiet < limit) continue;
        char what[700];
        describe_work(R, w, what, sizeof what);
        notice(R, "warning: worker %u (pid %ld) made no progress for %.1f s (limit %.1f s) "
               "while %s: killing it (SIGKILL)", w->slot, (long)w->pid, (double)quiet / 1e9,
               (double)limit / 1e9, what);
        snprintf(w->last_words, sizeof w->last_words, "stalled (no progress for %.1f s)",
                 (double)quiet / 1e9);
        w->stalled = true;
        R->st->worker_stalls++;
        kill(w->pid, SIGKILL);
    }
}

/* The graceful stop's wait: the floor, at most STOP_GRACE_S. */
static double stop_grace_s(const run *R)
{
    double f = (double)stall_floor_ns(R) / 1e9;
    return f < STOP_GRACE_S ? f : STOP_GRACE_S;
}

/* Each tick (TICK_NS: the poll loop wakes at least that often). */
static void check_deadlines(run *R, int64_t now)
{
    /* Time this process was not listening (descheduled on a loaded machine,
     * a slow journal commit, Ctrl-Z) is not the workers' silence. */
    if (R->last_check_ns && now - R->last_check_ns > 2 * TICK_NS) {
        int64_t gap = now - R->last_check_ns - TICK_NS;
        for (uint32_t i = 0; i < R->nw; i++) R->w[i].heard_ns += gap;
    }
    R->last_check_ns = now;
    check_stalls(R, now);
    if (R->stopping && !R->dropping && R->stop_deadline && now >= R->stop_deadline) {
        uint32_t nb = 0;
        for (uint32_t i = 0; i < R->nw; i++) nb += (uint32_t)R->w[i].nfl;
        if (nb)
            notice(R, "note: stopping: the %u batch%s in flight did not finish within %.0f s: "
                   "dropping %s (the next run redoes %s pairs)", nb, nb > 1 ? "es" : "",
                   stop_grace_s(R), nb > 1 ? "them" : "it", nb > 1 ? "their" : "its");
        R->dropping = true;
    }
}

/* waitpid(pid) for at most REAP_NS, then SIGKILL and REAP_NS more.
 * false: it would not end (left unreaped; *ws is 0). */
static bool reap(pid_t pid, int *ws)
{
    *ws = 0;
    for (int round = 0; round < 2; round++) {
        int64_t deadline = fst__now_ns() + REAP_NS;
        for (;;) {
            pid_t r = waitpid(pid, ws, WNOHANG);
            if (r == pid) return true;
            if (r < 0 && errno != EINTR) return false;   /* not ours (any more) */
            if (fst__now_ns() > deadline) break;
            struct timespec ts = {0, 5000000};
            nanosleep(&ts, NULL);
        }
        kill(pid, SIGKILL);
    }
    *ws = 0;
    return false;
}

/* A worker's socket closed: reap it, requeue its pairs, maybe replace it. */
static fst_status on_death(run *R, wk *w)
{
    fst_status s = FST_OK;
    int ws = 0;
    close(w->fd);
    w->fd = -1;
    bool reaped = reap(w->pid, &ws);
    bool was_ready = w->state == W_READY;
    w->state = W_OFF;
    char why[800];
    if (reaped) describe_exit(ws, why, sizeof why);
    else snprintf(why, sizeof why, "closed its connection but did not end, even after SIGKILL");
    if (w->last_words[0]) {
        size_t l = strlen(why);
        snprintf(why + l, sizeof why - l, ": %s", w->last_words);
    }
    if (!was_ready) {
        if (w->last_status != FST_OK) {
            bool devfail = w->last_status == FST_ENODEVICE || w->last_status == FST_EDEVICE;
            if (R->cuda && devfail) {
                /* A GPU that does not work: go on with the others; with
                 * none left, auto falls back to the CPU and an explicit
                 * --device cuda is an error (never a quiet CPU run). */
                w->disabled = true;
                bool all = true;
                for (uint32_t i = 0; i < R->nw; i++) all &= R->w[i].disabled;
                if (!all) {
                    notice(R, "warning: worker %u cannot use GPU %s (%s); going on without it",
                           w->slot, R->gpus[w->slot % R->ngpu], w->last_words);
                    return FST_OK;
                }
                if (R->auto_dev) {
                    R->fallback = true;
                    snprintf(R->fatal_detail, sizeof R->fatal_detail, "%s", w->last_words);
                    return FST_OK;
                }
            }
            R->fatal = w->last_status;
            snprintf(R->fatal_detail, sizeof R->fatal_detail, "worker %u%s%.40s: %.600s", w->slot,
                     R->cuda ? " on GPU " : "", R->cuda ? R->gpus[w->slot % R->ngpu] : "",
                     w->last_words);
            return FST_OK;
        }
        R->startup_failures++;
        if (!R->any_ready && R->startup_failures > R->nw + 2) {
            R->fatal = FST_ECHILD;
            snprintf(R->fatal_detail, sizeof R->fatal_detail, "workers fail to start (worker "
                     "%u %.800s)", w->slot, why);
            return FST_OK;
        }
    }
    uint32_t back = 0;
    /* a crash says most about the pair; a SIGKILL (OOM killer, kill -9, a
     * stall: ours) less */
    unsigned points = !reaped || w->stalled || (WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL)
                          ? 1 : 2;
    for (int k = 0; k < w->nfl; k++) {
        batch *b = w->fl[k];
        for (uint32_t q = 0; q < b->n; q++)
            back += R->todo[b->ids[q]].state == P_INFLIGHT && R->todo[b->ids[q]].batch == b->id;
        bool working = b->id == w->work_batch;
        if (!s) s = requeue(R, b, working ? w->work_lo : 0, working ? w->work_n : 0,
                            working ? points : 0, why);
        else free(b);
    }
    w->work_batch = 0;
    w->nfl = 0;
    if (s) return s;
    if (R->stopping || R->dropping) return FST_OK;
    notice(R, "warning: worker %u (pid %ld) %s; %u pair%s go%s back to the queue", w->slot,
           (long)w->pid, why, back, back == 1 ? "" : "s", back == 1 ? "es" : "");
    R->deaths_since_progress++;
    if (R->deaths_since_progress > 2 * R->nw + 8) {
        R->fatal = FST_ECHILD;
        snprintf(R->fatal_detail, sizeof R->fatal_detail, "workers keep dying without finishing "
                 "any pair (the last one %.800s)", why);
        return FST_OK;
    }
    if (R->done + R->failed == R->ntodo) return FST_OK;
    R->st->worker_restarts++;
    return spawn_worker(R, w);
}

static uint64_t pss_of(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/smaps_rollup", (long)pid);
    FILE *f = fopen(path, "re");
    if (!f) return 0;
    char line[256];
    uint64_t kb = 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "Pss:", 4)) {
            kb = strtoull(line + 4, NULL, 10);
            break;
        }
    fclose(f);
    return kb * 1024;
}

static void sample_pss(run *R)
{
    uint64_t sum = pss_of(getpid());
    if (R->writer_child) sum += pss_of(getppid());     /* the coordinator waiting */
    for (uint32_t i = 0; i < R->nw; i++)
        if (R->w[i].state != W_OFF) sum += pss_of(R->w[i].pid);
    if (sum > R->st->peak_pss) R->st->peak_pss = sum;
}

/* sample_pss() during a phase: once `now` has reached R->next_pss, then
 * again after TICK_NS or PSS_DUTY times what this sample took, whichever
 * is longer. The sample alone is timed, not the work before it. */
static void sample_pss_paced(run *R, int64_t now)
{
    if (now < R->next_pss) return;
    int64_t t = fst__now_ns();
    sample_pss(R);
    int64_t cost = fst__now_ns() - t;
    R->next_pss = now + (cost * PSS_DUTY > TICK_NS ? cost * PSS_DUTY : TICK_NS);
}

double fst__rate_push(fst__rate *r, int64_t now_ns, uint64_t count)
{
    /* Once the window is full the oldest sample sits in the slot this one
     * replaces: read it before overwriting it. */
    unsigned slot = r->i % FST__RATE_SLOTS;
    unsigned oldest = r->i >= FST__RATE_SLOTS ? slot : 0;
    int64_t t_old = r->i ? r->t[oldest] : now_ns;
    uint64_t n_old = r->i ? r->n[oldest] : count;
    r->t[slot] = now_ns;
    r->n[slot] = count;
    r->i++;
    double dt = (double)(now_ns - t_old) / 1e9;
    return dt >= 0.05 && count >= n_old ? (double)(count - n_old) / dt : 0;
}

static void report(run *R, fst_run_phase phase, int64_t now)
{
    if (!R->o->progress) return;
    fst_run_progress p;
    memset(&p, 0, sizeof p);
    p.phase = phase;
    p.total = R->ntodo;
    p.done = R->done;
    p.failed = R->failed;
    p.workers_alive = alive(R);
    p.workers = R->nw;
    p.elapsed_s = (double)(now - (R->t_match0 ? R->t_match0 : R->t0)) / 1e9;
    p.pairs_per_s = fst__rate_push(&R->rate, now, R->done);
    uint64_t left = R->ntodo - R->done - R->failed;
    p.eta_s = p.pairs_per_s > 0 ? (double)left / p.pairs_per_s : (left ? -1 : 0);
    R->o->progress(&p, R->o->ctx);
}

/* End every worker: politely (close the socket: it finishes and exits),
 * then, after a grace period or when `now`, with SIGKILL. */
static void stop_workers(run *R, bool now)
{
    for (uint32_t i = 0; i < R->nw; i++) {
        wk *w = &R->w[i];
        if (w->state == W_OFF) continue;
        /* Half-close: the worker reads a clean end of file (a close with
         * its last DONE still unread here would reset the connection). */
        if (now) kill(w->pid, SIGKILL);
        else shutdown(w->fd, SHUT_WR);
    }
    int64_t deadline = fst__now_ns() + 3000000000LL;
    for (uint32_t i = 0; i < R->nw; i++) {
        wk *w = &R->w[i];
        if (w->state == W_OFF) continue;
        int ws = 0;
        bool reaped = false;
        for (;;) {
            pid_t r = waitpid(w->pid, &ws, WNOHANG);
            if (r == w->pid) {
                reaped = true;
                break;
            }
            if (r < 0 && errno != EINTR) break;
            if (fst__now_ns() > deadline) {
                /* bounded: one in an uninterruptible sleep is left to init */
                reaped = reap(w->pid, &ws);
                if (!reaped)
                    notice(R, "warning: worker %u (pid %ld) did not end after SIGKILL; "
                           "leaving it", w->slot, (long)w->pid);
                break;
            }
            struct timespec ts = {0, 5000000};
            nanosleep(&ts, NULL);
        }
        if (!now && reaped && w->state == W_READY && !(WIFEXITED(ws) && WEXITSTATUS(ws) == 0)) {
            /* Its work is all in; still worth saying (a sanitizer report,
             * a crash in cleanup). */
            char why[200];
            describe_exit(ws, why, sizeof why);
            notice(R, "warning: worker %u (pid %ld) %s at the end", w->slot, (long)w->pid, why);
        }
        close(w->fd);
        w->fd = -1;
        w->state = W_OFF;
        for (int k = 0; k < w->nfl; k++) {
            for (uint32_t q = 0; q < w->fl[k]->n; q++) {
                tpair *p = &R->todo[w->fl[k]->ids[q]];
                if (p->state == P_INFLIGHT && p->batch == w->fl[k]->id) p->state = P_TODO;
            }
            free(w->fl[k]);
        }
        w->nfl = 0;
    }
}

static fst_status supervise(run *R)
{
    fst_status s = FST_OK;
    const fst_run_opts *o = R->o;
    struct pollfd *pfd = calloc((size_t)R->nw + 1, sizeof *pfd);
    int *who = calloc((size_t)R->nw + 1, sizeof *who);
    if (!pfd || !who) {
        s = fst__fail(FST_ENOMEM, "poll set");
        goto out;
    }
    int64_t commit_ns = (int64_t)(o->commit_ms ? o->commit_ms : 250) * 1000000;
    R->next_tick = fst__now_ns();
    for (;;) {
        if (R->fatal || R->fallback) break;
        if (R->done + R->failed == R->ntodo) break;
        bool inflight = false;
        for (uint32_t i = 0; i < R->nw; i++) inflight |= R->w[i].nfl > 0;
        if (R->dropping || (R->stopping && !inflight)) break;

        /* hand out work */
        if (!R->stopping) {
            for (uint32_t i = 0; i < R->nw; i++) {
                wk *w = &R->w[i];
                while (w->state == W_READY && w->nfl < DEPTH) {
                    batch *b = take_work(R, w);
                    if (!b) break;
                    if ((s = send_batch(R, w, b))) {
                        free(b);
                        goto out;
                    }
                }
            }
        }
        bool anyone = false;
        for (uint32_t i = 0; i < R->nw; i++) anyone |= R->w[i].state != W_OFF;
        if (!anyone) {
            R->fatal = FST_ECHILD;
            snprintf(R->fatal_detail, sizeof R->fatal_detail, "no worker left to run");
            break;
        }

        int np = 0;
        for (uint32_t i = 0; i < R->nw; i++) {
            wk *w = &R->w[i];
            if (w->state == W_OFF) continue;
            bool broken = false;
            if (w->out.len) flush_out(w, &broken);
            pfd[np].fd = w->fd;
            pfd[np].events = POLLIN | (w->out.len ? POLLOUT : 0);
            pfd[np].revents = 0;
            who[np++] = (int)i;
        }
        if (o->stop_fd >= 0) {
            pfd[np].fd = o->stop_fd;
            pfd[np].events = POLLIN;
            pfd[np].revents = 0;
            who[np++] = -1;
        }
        int64_t now = fst__now_ns();
        int64_t wake = R->next_tick;
        if (R->first_pending && R->first_pending + commit_ns < wake)
            wake = R->first_pending + commit_ns;
        int timeout = wake > now ? (int)((wake - now) / 1000000) + 1 : 0;
        int rc = poll(pfd, (nfds_t)np, timeout);
        if (rc < 0 && errno != EINTR) {
            s = fst__fail(FST_EIO, "poll: %s", strerror(errno));
            goto out;
        }
        for (int k = 0; rc > 0 && k < np; k++) {
            if (!pfd[k].revents) continue;
            if (who[k] < 0) {
                unsigned char sig[16];
                ssize_t n = read(o->stop_fd, sig, sizeof sig);
                for (ssize_t q = 0; q < n; q++) {
                    R->st->signal = sig[q];
                    if (R->stopping) R->dropping = true;
                    R->stopping = true;
                }
                if (n > 0 && !R->dropping) {
                    uint32_t nb = 0;
                    for (uint32_t i = 0; i < R->nw; i++) nb += (uint32_t)R->w[i].nfl;
                    double grace = stop_grace_s(R);
                    if (!R->stop_deadline)
                        R->stop_deadline = fst__now_ns() + (int64_t)(grace * 1e9);
                    if (nb)
                        notice(R, "note: stopping: letting the %u batch%s in flight finish, "
                               "for at most %.0f s (interrupt again to drop %s)", nb,
                               nb > 1 ? "es" : "", grace, nb > 1 ? "them" : "it");
                }
                continue;
            }
            wk *w = &R->w[who[k]];
            if (w->state == W_OFF) continue;
            bool eof = false, broken = false;
            if (pfd[k].revents & POLLOUT) flush_out(w, &broken);
            if (pfd[k].revents & (POLLIN | POLLHUP | POLLERR)) {
                fst_status rs = read_worker(R, w, &eof);
                if (rs == FST_EFORMAT) {
                    /* a confused worker is treated as a dead one */
                    snprintf(w->last_words, sizeof w->last_words, "%s", fst_errdetail());
                    kill_worker(w);
                    eof = true;
                } else if (rs) {
                    s = rs;
                    goto out;
                }
            }
            if (eof || broken) {
                if (!eof) kill_worker(w);
                if ((s = on_death(R, w))) goto out;
            }
        }
        now = fst__now_ns();
        if (R->first_pending && now - R->first_pending >= commit_ns)
            if ((s = commit(R))) goto out;
        if (now >= R->next_tick) {
            check_deadlines(R, now);
            sample_pss_paced(R, now);
            report(R, FST_RUN_MATCHING, now);
            R->next_tick = now + TICK_NS;
        }
    }
out:
    free(pfd);
    free(who);
    return s;
}

static fst_status start_workers(run *R)
{
    fst_status s;
    uint32_t n = wanted_workers(R);
    if (R->cuda && !R->wparams) R->wparams = strdup("");
    if (!R->w) {
        R->w = calloc(n, sizeof *R->w);
        if (!R->w) return fst__fail(FST_ENOMEM, "workers");
    }
    R->nw = n;
    R->st->workers = n;
    describe_device(R);
    for (uint32_t i = 0; i < n; i++) {
        R->w[i].slot = i;
        R->w[i].fd = -1;
        R->w[i].disabled = false;
        if ((s = spawn_worker(R, &R->w[i]))) return s;
    }
    return FST_OK;
}

typedef struct wprog {
    run *R;
    int64_t next;
} wprog;

static int write_progress(uint64_t done, uint64_t total, uint64_t bytes, void *ctx)
{
    (void)bytes;
    wprog *p = ctx;
    run *R = p->R;
    /* the coordinator reads stop_fd while this process writes (write_watch) */
    R->wsh->beats++;
    if (R->wsh->stop) {
        R->st->signal = R->wsh->stop;
        return 1;
    }
    int64_t now = fst__now_ns();
    if (now < p->next && done != total)
        return 0;
    p->next = now + TICK_NS;
    sample_pss_paced(R, now);           /* the writer's memory counts too */
    if (R->o->progress) {
        fst_run_progress pr;
        memset(&pr, 0, sizeof pr);
        pr.phase = FST_RUN_WRITING;
        pr.total = total;
        pr.done = done;
        pr.elapsed_s = (double)(now - R->t0) / 1e9;
        pr.eta_s = -1;
        R->o->progress(&pr, R->o->ctx);
    }
    return 0;
}

/* --shard: part k of n of the list, checked as a whole before. The
 * counts of the summary that concern pairs to match are the part's. */
static fst_status apply_shard(run *R, const bool *drop)
{
    fst_status s = fst_pairs_shard(R->pairs, R->o->shard_k, R->o->shard_n);
    if (s) return s;
    R->st->pairs_shard = fst_pairs_count(R->pairs);
    R->st->pairs_missing = 0;
    for (size_t i = 0; i < R->st->pairs_shard; i++) {
        fst_pair p = fst_pairs_get(R->pairs, i);
        R->st->pairs_missing += drop[p.i0] || drop[p.i1];
    }
    return FST_OK;
}

/* A part's root attributes: what produced it, for `featstore merge`
 * (loaders/matchmerge.c compares them). kv: name, value, ..., NULL. */
typedef struct part_attrs {
    const char *kv[19];
    char       *params;
    char        shard[32], pairs[64], npairs[24], failed[24];
} part_attrs;

static fst_status part_attrs_make(run *R, part_attrs *pa)
{
    memset(pa, 0, sizeof *pa);
    fst_status s = build_params(R, &pa->params);
    if (s) return s;
    const fst_pairs_info *pi = fst_pairs_stats(R->pairs);
    snprintf(pa->shard, sizeof pa->shard, "%u/%u", R->o->shard_k, R->o->shard_n);
    snprintf(pa->pairs, sizeof pa->pairs, "list=%016llx pairs=%llu",
             (unsigned long long)pi->list_hash, (unsigned long long)pi->whole);
    snprintf(pa->npairs, sizeof pa->npairs, "%llu",
             (unsigned long long)(R->st->pairs_shard - R->st->pairs_missing));
    snprintf(pa->failed, sizeof pa->failed, "%zu", R->st->n_failures);
    const char *kv[] = {
        "featstore_shard", pa->shard,         "featstore_params", pa->params,
        "featstore_store", R->sid,            "featstore_query", R->qid,
        "featstore_pairs", pa->pairs,         "featstore_shard_pairs", pa->npairs,
        "featstore_failed", pa->failed,       "featstore_pairs_file", R->o->pairs,
        "featstore_skip_missing", R->o->skip_missing ? "1" : "0", NULL,
    };
    memcpy(pa->kv, kv, sizeof kv);
    return FST_OK;
}

/* Settings texts equal but for their `overwrite=` line. */
static bool same_settings(const char *a, const char *b)
{
    for (;;) {
        if (!strncmp(a, "overwrite=", 10)) { a += strcspn(a, "\n"); a += *a != 0; continue; }
        if (!strncmp(b, "overwrite=", 10)) { b += strcspn(b, "\n"); b += *b != 0; continue; }
        size_t la = strcspn(a, "\n"), lb = strcspn(b, "\n");
        if (la != lb || memcmp(a, b, la)) return false;
        if (!a[la] || !b[lb]) return !a[la] && !b[lb];
        a += la + 1;
        b += lb + 1;
    }
}

/* --shard over an existing output: its pairs are kept only if it is a
 * part of this very run (same shard, data, list and settings), else the
 * part would certify pairs it did not compute. */
static fst_status check_part(run *R)
{
    const char *out = R->o->output;
    part_attrs pa;
    fst_status s = part_attrs_make(R, &pa);
    if (s) return s;
    for (size_t i = 0; pa.kv[i] && !s; i += 2) {
        const char *name = pa.kv[i];
        bool params = !strcmp(name, "featstore_params");
        if (strcmp(name, "featstore_shard") && strcmp(name, "featstore_store") &&
            strcmp(name, "featstore_query") && strcmp(name, "featstore_pairs") && !params)
            continue;
        char *v = NULL;
        s = fst_matchfile_attr(out, name, &v);
        if (s) {
            s = fst__failpre(s, "existing output: ");
        } else if (!v) {
            s = fst__fail(FST_EEXIST, "%s exists and is not a part written by `featstore "
                          "match --shard` (no %s): its pairs cannot go into shard %s; pass "
                          "--overwrite to replace them, or name another output", out, name,
                          pa.shard);
        } else if (params ? !same_settings(v, pa.kv[i + 1]) : strcmp(v, pa.kv[i + 1]) != 0) {
            s = fst__fail(FST_EEXIST, "%s is a part of another run: its %s is '%.300s', this "
                          "run's '%.300s'; pass --overwrite to recompute its pairs, or name "
                          "another output", out, name + 10, v, pa.kv[i + 1]);
        }
        free(v);
    }
    free(pa.params);
    return s;
}

/* What the writer process reports besides its status. */
typedef struct wresult {
    int32_t  signal;
    uint64_t written, peak_pss;
} wresult;

/* In the writer process: matches.h5 from the journal (+ the existing
 * output). It opens the journal itself, read-only. */
static fst_status write_output_child(void *ctx, void *result)
{
    run *R = ctx;
    wresult *res = result;
    R->writer_child = true;
#if FST_TEST_HOOKS
    const char *hook = getenv("FST_TEST_WRITER_STOP");
    if (hook && *hook == '1') raise(SIGSTOP);     /* test hook: a stalled writer */
#endif
    fst_journal *j = NULL;
    fst_status s = R->j ? fst_journal_open(R->jpath, FST_JOURNAL_RDONLY, &j) : FST_OK;
    if (s == FST_OK) {
        wprog wp = {R, 0};
        /* a part holds its shard's pairs only: --overwrite starts it afresh */
        fst_matchfile_opts mo = {.copy_existing = !(R->o->shard_n && R->o->overwrite),
                                 .progress = write_progress, .progress_ctx = &wp};
        part_attrs pa;
        if (R->o->shard_n) s = part_attrs_make(R, &pa);
        if (R->o->shard_n && s == FST_OK) mo.attrs = pa.kv;
        if (s == FST_OK) s = fst_matchfile_write(R->o->output, j, &mo, &res->written);
        if (R->o->shard_n) free(pa.params);
    }
    fst_journal_close(j);
    sample_pss(R);
    res->signal = R->st->signal;
    res->peak_pss = R->st->peak_pss;
    return s;
}

/* Signs of life of process `pid`: CPU time and bytes read and written
 * (/proc/PID/stat, /proc/PID/io), and its state letter. */
static uint64_t activity(pid_t pid, char *state)
{
    char path[64], buf[1024];
    uint64_t sum = 0;
    *state = '?';
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    FILE *f = fopen(path, "re");
    if (f) {
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = '\0';
        fclose(f);
        const char *p = strrchr(buf, ')');
        unsigned long long ut = 0, stt = 0;
        if (p && sscanf(p + 2, "%c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
                        state, &ut, &stt) == 3)
            sum += ut + stt;
    }
    snprintf(path, sizeof path, "/proc/%ld/io", (long)pid);
    if ((f = fopen(path, "re"))) {
        char line[128];
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "rchar:", 6) || !strncmp(line, "wchar:", 6))
                sum += strtoull(line + 6, NULL, 10);
        fclose(f);
    }
    return sum;
}

typedef struct wwatch {
    run     *R;
    uint64_t last;            /* activity + beats when last seen changing */
    int64_t  alive_ns;        /* ... then */
    bool     stalled, stopped;
    double   quiet_s;
} wwatch;

/* The coordinator, while the writer process works (fst__in_child_watched):
 * a stop request is passed on to it (through the shared page), and obeyed
 * within the graceful stop's deadline or the writer is killed; a writer
 * showing no sign of life (progress callback, CPU time, bytes read or
 * written; a process in an uninterruptible sleep counts as busy) for the
 * stall floor is killed. Either way every pair stays in the journal. */
static bool write_watch(void *ctx, pid_t pid)
{
    wwatch *ww = ctx;
    run *R = ww->R;
    int64_t now = fst__now_ns();
    if (R->o->stop_fd >= 0) {
        struct pollfd pf = {R->o->stop_fd, POLLIN, 0};
        unsigned char sig[16];
        ssize_t n = poll(&pf, 1, 0) > 0 ? read(R->o->stop_fd, sig, sizeof sig) : 0;
        if (n > 0) {
            R->st->signal = sig[n - 1];
            R->wsh->stop = sig[n - 1];
            if (!R->stop_deadline) {
                R->stop_deadline = now + (int64_t)(stop_grace_s(R) * 1e9);
                notice(R, "note: stopping: letting the writing of %s end, for at most %.0f s",
                       R->o->output, stop_grace_s(R));
            }
        }
    }
    if (R->stop_deadline && now >= R->stop_deadline) {
        notice(R, "note: stopping: the process writing %s (pid %ld) did not stop within "
               "%.0f s: killing it", R->o->output, (long)pid, stop_grace_s(R));
        ww->stopped = true;
        return true;
    }
    char state;
    uint64_t a = activity(pid, &state) + R->wsh->beats;
    if (a != ww->last || state == 'D' || !ww->alive_ns) {
        ww->last = a;
        ww->alive_ns = now;
        return false;
    }
    int64_t limit = stall_floor_ns(R);
    if (now - ww->alive_ns < limit) return false;
    ww->quiet_s = (double)(now - ww->alive_ns) / 1e9;
    notice(R, "warning: the process writing %s (pid %ld) made no progress for %.1f s "
           "(limit %.1f s): killing it (SIGKILL)", R->o->output, (long)pid, ww->quiet_s,
           (double)limit / 1e9);
    ww->stalled = true;
    return true;
}

/* Write matches.h5 in a child process (fst__in_child). HDF5 1.10 does not
 * survive a failed write at close: the file stays half-closed and the
 * library's exit handler then crashes, or loops. The child ends with
 * _exit(), so whatever HDF5 is left with dies with it, and the coordinator
 * reports a clean error (journal kept: the same command writes again). */
static fst_status write_output(run *R)
{
    const fst_run_opts *o = R->o;
    wresult res;
    memset(&res, 0, sizeof res);
    char what[64 + PATH_MAX];
    snprintf(what, sizeof what, "writing %s", o->output);
    R->wsh = mmap(NULL, sizeof *R->wsh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                  -1, 0);
    if (R->wsh == MAP_FAILED) {
        R->wsh = NULL;
        return fst__fail(FST_ENOMEM, "%s: shared page: %s", what, strerror(errno));
    }
    wwatch ww = {.R = R};
    fst_status s = fst__in_child_watched(write_output_child, R, &res, sizeof res, what,
                                         write_watch, &ww);
    munmap(R->wsh, sizeof *R->wsh);
    R->wsh = NULL;
    /* its temporary file, if it died before removing it */
    fst__remove_stale(o->output, ".tmp-", (const char *const[]){"", NULL}, false);
    if (s == FST_ECHILD && ww.stopped)
        return fst__fail(FST_EINTR, "%s: stopped", what);
    if (s == FST_ECHILD && ww.stalled)
        return fst__fail(FST_EIO, "%s: the process writing it made no progress for %.1f s "
                         "and was killed; every pair is saved in %s: run the same command "
                         "again to write it", what, ww.quiet_s, R->jpath);
    if (s == FST_ECHILD)              /* died: an I/O failure, as before */
        return fst__failpre(FST_EIO, "%s", "");
    if (res.peak_pss > R->st->peak_pss) R->st->peak_pss = res.peak_pss;
    if (res.signal) R->st->signal = res.signal;
    R->st->pairs_written = res.written;
    if (o->progress) {
        /* the child's progress line is on screen: draw the last state here */
        fst_run_progress pr;
        memset(&pr, 0, sizeof pr);
        pr.phase = FST_RUN_WRITING;
        pr.total = pr.done = res.written;
        pr.eta_s = -1;
        o->progress(&pr, o->ctx);
    }
    return s;
}

fst_status fst_match_run(const fst_run_opts *o, fst_run_stats *stats)
{
    fst_status s;
    run RR, *R = &RR;
    memset(R, 0, sizeof *R);
    memset(stats, 0, sizeof *stats);
    stats->first_pair_ms = -1;
    stats->verified = !o->no_verify;
    R->o = o;
    R->st = stats;
    R->t0 = fst__now_ns();
    R->t_launch = o->t_launch_ns ? o->t_launch_ns : R->t0;
    fst__strtab existing = {0};
    fst__u64set done = {0};
    char *params = NULL;
    bool *drop = NULL;
    uint64_t existing_resumed = 0, journal_records = 0;

    if (!o->store || !o->pairs || !o->output)
        return fst__fail(FST_EINVAL, "fst_match_run: store, pairs and output are required");
    if (o->index_size != 2 && o->index_size != 4)
        return fst__fail(FST_EINVAL, "matches0 must be int16 or int32");
    fst_run_opts o_real;
    char *out_real = NULL;
    if ((s = resolve_output(o->output, &out_real))) return s;
    if (out_real) {                     /* from here on the link's target */
        o_real = *o;
        o_real.output = out_real;
        R->o = o = &o_real;
    }
    R->store_path = o->store;
    if (o->progress) {
        fst_run_progress p = {.phase = FST_RUN_PREPARING, .eta_s = -1};
        o->progress(&p, o->ctx);
    }

    /* 1. inputs: pairs, store, query, names; output writable; devices */
    FST_TRY(fst_pairs_parse(o->pairs, &R->pairs));
    const fst_pairs_info *pi = fst_pairs_stats(R->pairs);
    stats->pairs_lines = pi->lines;
    stats->pairs_unique = fst_pairs_count(R->pairs);
    stats->pairs_self = pi->self_pairs;
    stats->pairs_duplicates = pi->duplicates;
    stats->pairs_reversed = pi->reversed;
    if (pi->self_pairs)
        notice(R, "warning: %s:%llu: an image paired with itself (%llu such pair%s): matched "
               "as hloc does", o->pairs, (unsigned long long)pi->first_self_line,
               (unsigned long long)pi->self_pairs, pi->self_pairs > 1 ? "s" : "");
    stats->pairs_bom = pi->bom;
    if (pi->bom)
        notice(R, "note: %s: removed the UTF-8 byte-order mark at its start", o->pairs);
    {
        fst_store *st = NULL;
        FST_TRY(fst_store_open(o->store, 0, &st));
        s = fst_store_meta_get(st, &R->meta);
        fst_store_close(st);
        if (s) goto out;
        fst__identity_of_store(&R->meta, R->sid, sizeof R->sid);
        struct stat sb;
        if (stat(o->store, &sb) == 0) stats->store_bytes = (uint64_t)sb.st_size;
    }
    FST_TRY(check_output(R));
    R->jpath = path_plus(o->output, ".journal");
    if (!R->jpath) { s = fst__fail(FST_ENOMEM, "%s", o->output); goto out; }
    /* `<out>.query-<pid>.fst` (and its lock and temporaries) of dead runs */
    fst__remove_stale(o->output, ".query-", (const char *const[]){".fst*", NULL}, false);
    FST_TRY(plan_matcher(R));
    FST_TRY(plan_devices(R));
    /* a typo in --backend-params stops here, before any journal or worker */
    if ((s = fst_backend_check_params(R->cuda ? "cuda" : "cpu", o->backend_params))) {
        s = fst__failpre(s, "--backend-params %s: ", o->backend_params);
        goto out;
    }
    if (o->query) FST_TRY(setup_query(R, R->qid, sizeof R->qid));
    drop = calloc(fst_pairs_nnames(R->pairs) + 1, sizeof *drop);
    if (!drop) { s = fst__fail(FST_ENOMEM, "names"); goto out; }
    s = check_names(R, drop);
    /* counted also when the run stops here: the summary says how many */
    for (size_t i = 0, np = fst_pairs_count(R->pairs); i < np; i++) {
        fst_pair p = fst_pairs_get(R->pairs, i);
        stats->pairs_missing += drop[p.i0] || drop[p.i1];
    }
    if (s) goto out;
    if ((s = fst_pairs_check_keys(R->pairs, drop))) {
        s = fst__failpre(s, "%s: ", o->pairs);
        goto out;
    }
    if (o->shard_n) FST_TRY(apply_shard(R, drop));
    {
        char t[32];
        snprintf(t, sizeof t, "threads=%u", o->threads ? o->threads : 1);
        R->wparams = strdup(t);
        if (!R->wparams) { s = fst__fail(FST_ENOMEM, "params"); goto out; }
    }

    /* 2. what is done: existing output (unless overwrite), journal */
    struct stat osb;
    bool out_exists = stat(o->output, &osb) == 0;
    if (out_exists && !o->overwrite && o->shard_n) FST_TRY(check_part(R));
    if (out_exists && !o->overwrite) {
        keyset_ctx kc = {&existing};
        s = fst_matchfile_keys(o->output, add_key, &kc);
        if (s) {
            s = fst__failpre(s, "existing output: ");
            goto out;
        }
    }
    FST_TRY(build_params(R, &params));
    FST_TRY(open_journal(R, params, drop, &done, false));

    /* 3. the pairs of this run */
    size_t np = fst_pairs_count(R->pairs);
    R->todo = malloc((np ? np : 1) * sizeof *R->todo);
    if (!R->todo) { s = fst__fail(FST_ENOMEM, "%zu pairs", np); goto out; }
    for (size_t i = 0; i < np; i++) {
        fst_pair p = fst_pairs_get(R->pairs, i);
        if (drop[p.i0] || drop[p.i1]) continue;             /* pairs_missing */
        bool jd = fst__u64set_has(&done, (uint64_t)p.i0 << 32 | p.i1);
        bool od = false;
        if (existing.n) FST_TRY(in_output(R, &existing, p.i0, p.i1, &od));
        if (jd) {
            stats->pairs_resumed++;
            existing_resumed += od;
            continue;
        }
        if (od) {
            stats->pairs_existing++;
            continue;
        }
        R->todo[R->ntodo++] = (tpair){p.i0, p.i1, 0, P_TODO, 0, 0};
    }
    stats->pairs_todo = R->ntodo;
    if (stats->pairs_missing)
        notice(R, "warning: skipping %llu pair%s naming %llu image%s not in the store "
               "(--skip-missing)", (unsigned long long)stats->pairs_missing,
               stats->pairs_missing > 1 ? "s" : "", (unsigned long long)stats->names_missing,
               stats->names_missing > 1 ? "s" : "");
    if (R->j) FST_TRY(fst_journal_count(R->j, &journal_records));

    /* 4. match */
    if (R->ntodo) {
        if (!R->j) FST_TRY(open_journal(R, params, drop, &done, true));
        R->t_match0 = fst__now_ns();
        FST_TRY(start_workers(R));
        s = supervise(R);
        if (!s && R->fallback) {
            char why[sizeof R->fatal_detail];
            memcpy(why, R->fatal_detail, sizeof why);
            stop_workers(R, true);
            R->fallback = false;
            R->cuda = false;
            R->fatal_detail[0] = '\0';
            R->startup_failures = 0;
            uint32_t n = wanted_workers(R);
            notice(R, "warning: no usable CUDA device (%s): using %u CPU worker%s", why, n, n > 1 ? "s" : "");
            for (uint32_t i = 0; i < R->nw; i++) {
                fst__buf_free(&R->w[i].in);
                fst__buf_free(&R->w[i].out);
            }
            free(R->w);
            R->w = NULL;
            FST_TRY(start_workers(R));
            s = supervise(R);
        }
        sample_pss(R);
        if (s || R->fatal || R->dropping || R->stopping || R->done + R->failed < R->ntodo)
            stop_workers(R, true);
        else
            stop_workers(R, false);
        stats->match_s = (double)(fst__now_ns() - R->t_match0) / 1e9;
        fst_status cs = commit(R);
        if (s) goto out;
        if (cs) { s = cs; goto out; }
        report(R, FST_RUN_MATCHING, fst__now_ns());
        if (R->fatal) {
            s = fst__fail(R->fatal, "%s", R->fatal_detail);
            goto out;
        }
        if (R->done + R->failed < R->ntodo) {
            s = fst__fail(FST_EINTR, "interrupted by signal %d with %llu of %llu pairs done; "
                          "what is done is saved in %s: run the same command again to "
                          "resume", stats->signal,
                          (unsigned long long)(R->done + stats->pairs_resumed),
                          (unsigned long long)(R->ntodo + stats->pairs_resumed), R->jpath);
            goto out;
        }
    }

    /* 5. the output: journal + existing content, written in one go */
    bool need_write = R->ntodo > 0 || !out_exists ||
                      (R->j && !(out_exists && !o->overwrite &&
                                 existing_resumed == journal_records));
    if (need_write) {
        int64_t tw = fst__now_ns();
        s = write_output(R);
        if (s == FST_EINTR && R->j)
            s = fst__fail(FST_EINTR, "interrupted by signal %d while writing %s; every pair "
                          "is saved in %s: run the same command again to finish",
                          stats->signal, o->output, R->jpath);
        if (s) goto out;
        stats->write_s = (double)(fst__now_ns() - tw) / 1e9;
        stats->output_written = true;
    }
    if (R->j) {
        fst_journal_close(R->j);
        R->j = NULL;
        FST_TRY(fst_journal_remove(R->jpath));
    }
    s = stats->n_failures ? fst__fail(FST_ECHILD, "%zu pair%s could not be matched",
                                      stats->n_failures, stats->n_failures > 1 ? "s" : "")
                          : FST_OK;
out:
    if (R->w) {
        stop_workers(R, true);
        for (uint32_t i = 0; i < R->nw; i++) {
            fst__buf_free(&R->w[i].in);
            fst__buf_free(&R->w[i].out);
        }
    }
    if (R->j) {
        fst_journal_commit(R->j);
        fst_journal_close(R->j);
    }
    if (R->query_tmp) {
        char detail[1024];
        snprintf(detail, sizeof detail, "%s", fst_errdetail());
        fst_journal_remove(R->query_tmp);   /* a file and its -lock, like a journal */
        fst__fail(s, "%s", detail);
    }
    for (size_t i = 0; i < R->nretry; i++) free(R->retry[i]);
    free(R->retry);
    for (uint32_t g = 0; g < R->ngpu; g++) free(R->gpus[g]);
    free(R->gpus);
    free(R->w);
    free(R->todo);
    free(R->wparams);
    free(R->mtext);
    free(R->query_store);
    free(R->query_tmp);
    free(R->jpath);
    free(R->key);
    free(out_real);
    free(params);
    free(drop);
    fst__strtab_free(&existing);
    fst__u64set_free(&done);
    fst_pairs_free(R->pairs);
    stats->wall_s = (double)(fst__now_ns() - R->t0) / 1e9;
    return s;
}
