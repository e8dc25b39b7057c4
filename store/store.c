/* store.c : opening a store read-only and reading it (read transactions
 * over the process's one environment per store file, see env.c). */
#define FST_STORE_LMDB
#include "store_impl.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>

/* Readers that ended are kept (transaction reset, reader slot held) so that
 * a worker's begin/end per batch allocates nothing in steady state. */
#define POOL_MAX 8

/* How long a reader that found the map too small waits for this process's
 * other readers to end before it may remap. */
#define REMAP_WAIT_S 30

/* ---- opening ---- */

void fst__reader_free(fst_reader *rd)
{
    if (rd->cur)
        mdb_cursor_close(rd->cur);
    if (rd->txn)
        mdb_txn_abort(rd->txn);
    free(rd);
}

const char *fst_store_path(const fst_store *st) { return st->path; }
bool fst_store_nolock(const fst_store *st) { return st->sh->nolock; }
unsigned fst__store_stale_cleared(const fst_store *st)
{
    return st->stale_cleared;
}

void fst_store_close(fst_store *st)
{
    if (!st)
        return;
    FST_ASSERT(st->live == 0);       /* every reader must have ended */
    if (st->sh)
        fst__env_release(st->sh);
    free(st->path);
    free(st);
}

fst_status fst_store_open(const char *path, unsigned flags, fst_store **out)
{
    if (!path || !out ||
        (flags & ~(unsigned)(FST_OPEN_CHECKSUMS | FST_OPEN_NOLOCK)))
        return fst__fail(FST_EINVAL, "fst_store_open: bad arguments");
    /* LMDB would create `<path>-lock` before finding that `path` is
     * missing: look first. */
    struct stat sb;
    if (stat(path, &sb) != 0)
        return fst__fail(FST_EIO, "%s: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode))
        return fst__fail(FST_EFORMAT, "%s: not a featstore store (not a "
                         "regular file)", path);
    if (sb.st_size < 2 * 4096)
        return fst__fail(FST_EFORMAT, "%s: not a featstore store (%lld "
                         "bytes)", path, (long long)sb.st_size);

    fst_store *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) {
        free(st);
        return fst__fail(FST_ENOMEM, "opening %s", path);
    }
    st->flags = flags;
    fst_status s = fst__env_acquire(path, &sb, flags, &st->sh,
                                    &st->stale_cleared);
    if (s) {
        fst_store_close(st);
        return s;
    }
    *out = st;
    return FST_OK;
}

/* ---- read transactions ---- */

/* Called with sh->mu held, by a reader that is not live: let the map follow
 * the file (a writer grew it) once no reader of this process is live. */
static fst_status remap_locked(fst__env *sh, const char *path)
{
    if (sh->remapping) {            /* another thread is at it: wait */
        while (sh->remapping)
            pthread_cond_wait(&sh->cv, &sh->mu);
        return FST_OK;
    }
    sh->remapping = true;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += REMAP_WAIT_S;
    int e = 0;
    while (sh->active > 0 && e == 0)
        e = pthread_cond_timedwait(&sh->cv, &sh->mu, &until);
    fst_status s;
    if (sh->active > 0)
        s = fst__fail(FST_EIO, "%s: the store grew (an append) and this "
                      "process kept %u reader(s) open for %d s; end them "
                      "and retry", path, sh->active, REMAP_WAIT_S);
    else
        s = fst__from_mdb(mdb_env_set_mapsize(sh->env, 0),
                          "%s: following the store's growth", path);
    sh->remapping = false;
    pthread_cond_broadcast(&sh->cv);
    return s;
}

static void reader_stop(fst_reader *rd)
{
    fst__env *sh = rd->sh;
    if (!rd->live)
        return;
    mdb_txn_reset(rd->txn);
    rd->live = false;
    pthread_mutex_lock(&sh->mu);
    rd->st->live--;
    if (--sh->active == 0)
        pthread_cond_broadcast(&sh->cv);
    pthread_mutex_unlock(&sh->mu);
}

static fst_status reader_start(fst_reader *rd)
{
    fst__env *sh = rd->sh;
    const char *path = rd->st->path;
    int rc;
    for (int tries = 0;; tries++) {
        pthread_mutex_lock(&sh->mu);
        while (sh->remapping)
            pthread_cond_wait(&sh->cv, &sh->mu);
        sh->active++;
        rd->st->live++;
        pthread_mutex_unlock(&sh->mu);

        rc = rd->txn ? mdb_txn_renew(rd->txn)
                     : mdb_txn_begin(sh->env, NULL, MDB_RDONLY, &rd->txn);
        if (rc == MDB_SUCCESS)
            break;
        pthread_mutex_lock(&sh->mu);
        rd->st->live--;
        if (--sh->active == 0)
            pthread_cond_broadcast(&sh->cv);
        fst_status s = FST_OK;
        if (rc == MDB_MAP_RESIZED && tries < 8)
            s = remap_locked(sh, path);
        pthread_mutex_unlock(&sh->mu);
        if (s)
            return s;
        if (rc != MDB_MAP_RESIZED || tries >= 8)
            return fst__from_mdb(rc, "%s: starting a read transaction", path);
    }
    rd->live = true;
    rd->iterating = false;
    rc = rd->cur ? mdb_cursor_renew(rd->txn, rd->cur)
                 : mdb_cursor_open(rd->txn, sh->images, &rd->cur);
    if (rc == MDB_SUCCESS)
        rc = fst__meta_u64(rd->txn, sh->meta, FST_META_GENERATION, &rd->gen);
    if (rc) {
        reader_stop(rd);
        return fst__from_mdb(rc, "%s: starting a read transaction", path);
    }
    if (sh->nolock && mdb_txn_id(rd->txn) != sh->txnid) {
        /* Only where flock(2) could not keep appends out. */
        reader_stop(rd);
        return fst__fail(FST_EIO, "%s: the store was written to while open "
                         "without its lock file (an append on a file system "
                         "without flock?): what was read meanwhile may be "
                         "wrong; open it again", path);
    }
    return FST_OK;
}

fst_status fst_reader_begin(fst_store *st, fst_reader **out)
{
    fst__env *sh = st->sh;
    pthread_mutex_lock(&sh->mu);
    fst_reader *rd = sh->pool;
    if (rd) {
        sh->pool = rd->next;
        sh->npool--;
    }
    pthread_mutex_unlock(&sh->mu);
    if (!rd) {
        rd = calloc(1, sizeof *rd);
        if (!rd)
            return fst__fail(FST_ENOMEM, "%s: reader", st->path);
        rd->sh = sh;
    }
    rd->st = st;
    fst_status s = reader_start(rd);
    if (s) {
        fst__reader_free(rd);
        return s;
    }
    *out = rd;
    return FST_OK;
}

void fst_reader_end(fst_reader *rd)
{
    if (!rd)
        return;
    fst__env *sh = rd->sh;
    reader_stop(rd);
    if (!rd->txn) {
        fst__reader_free(rd);
        return;
    }
    pthread_mutex_lock(&sh->mu);
    bool keep = sh->npool < POOL_MAX;
    if (keep) {
        rd->next = sh->pool;
        sh->pool = rd;
        sh->npool++;
    }
    pthread_mutex_unlock(&sh->mu);
    if (!keep)
        fst__reader_free(rd);
}

fst_status fst_reader_reset(fst_reader *rd)
{
    reader_stop(rd);
    return reader_start(rd);
}

/* Decode the record at k/v for a reader: bounds always, checksum on
 * request. *visible = false for a record of an unfinished append. */
fst_status fst__reader_decode(fst_reader *rd, const MDB_val *k, const MDB_val *v,
                              unsigned how, fst_view *out, bool *visible)
{
    fst_view tmp;
    fst__rec_info info;
    fst_status s = fst__record_decode(v->mv_data, v->mv_size, k->mv_data,
                                      k->mv_size, how, &tmp, &info);
    if (s) {
        char b[FST__NAME_MSG];
        return fst__failpre(s, "%s: image '%s': ", rd->st->path,
                            fst__name_for_msg(b, k->mv_data, k->mv_size));
    }
    *visible = info.generation <= rd->gen;
    if (*visible)
        *out = tmp;
    return FST_OK;
}

static fst_status reader_get(fst_reader *rd, const char *name, unsigned how,
                             fst_view *out);

static unsigned read_how(const fst_store *st)
{
    return FST__DEC_ALIGN |
           ((st->flags & FST_OPEN_CHECKSUMS) ? FST__DEC_CHECKSUM : 0u);
}

fst_status fst_reader_get(fst_reader *rd, const char *name, fst_view *out)
{
    return reader_get(rd, name, read_how(rd->st), out);
}

fst_status fst_reader_get_verified(fst_reader *rd, const char *name, fst_view *out)
{
    return reader_get(rd, name, read_how(rd->st) | FST__DEC_CHECKSUM, out);
}

static fst_status reader_get(fst_reader *rd, const char *name, unsigned how,
                             fst_view *out)
{
    fst_store *st = rd->st;
    if (!rd->live)
        return fst__fail(FST_EINVAL, "%s: reader has no transaction (a "
                         "failed reset)", st->path);
    char b[FST__NAME_MSG];
    size_t len = strlen(name);
    if (len == 0 || len > st->sh->maxkey)
        return fst__fail(FST_ENOTFOUND, "%s: no image '%s' (a name of %zu "
                         "bytes cannot be a key)", st->path,
                         fst__name_for_msg(b, name, len), len);
    MDB_val k = { len, (void *)name }, v;
    int rc = mdb_get(rd->txn, st->sh->images, &k, &v);
    if (rc == MDB_NOTFOUND)
        return fst__fail(FST_ENOTFOUND, "%s: no image '%s'", st->path,
                         fst__name_for_msg(b, name, len));
    if (rc)
        return fst__from_mdb(rc, "%s: image '%s'", st->path,
                             fst__name_for_msg(b, name, len));
    bool visible = false;
    fst_status s = fst__reader_decode(rd, &k, &v, how, out, &visible);
    if (s == FST_OK && !visible)
        return fst__fail(FST_ENOTFOUND, "%s: no image '%s' (an unfinished "
                         "append holds it)", st->path,
                         fst__name_for_msg(b, name, len));
    return s;
}

fst_status fst_reader_next(fst_reader *rd, fst_view *out)
{
    fst_store *st = rd->st;
    if (!rd->live)
        return fst__fail(FST_EINVAL, "%s: reader has no transaction (a "
                         "failed reset)", st->path);
    for (;;) {
        MDB_val k, v;
        int rc = mdb_cursor_get(rd->cur, &k, &v,
                                rd->iterating ? MDB_NEXT : MDB_FIRST);
        rd->iterating = true;
        if (rc == MDB_NOTFOUND)
            return FST_DONE;
        if (rc)
            return fst__from_mdb(rc, "%s: iterating", st->path);
        bool visible = false;
        fst_status s = fst__reader_decode(rd, &k, &v, read_how(st), out, &visible);
        if (s || visible)
            return s;
    }
}
/* ---- hooks ---- */

fst_status fst__store_map_range(fst_store *st, const void **base, size_t *len)
{
    /* LMDB does not say where its map is (me_mapaddr is only set for
     * MDB_FIXEDMAP): find this process's mapping of the store's inode. */
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f)
        return fst__fail(FST_EIO, "/proc/self/maps: %s", strerror(errno));
    char line[4096];
    unsigned long best_lo = 0, best_hi = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi, off, ino;
        unsigned maj, min;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s %lx %x:%x %lu", &lo, &hi, perms, &off,
                   &maj, &min, &ino) != 7)
            continue;
        if (ino == (unsigned long)st->sh->ino &&
            makedev(maj, min) == st->sh->dev && hi - lo > best_hi - best_lo) {
            best_lo = lo;
            best_hi = hi;
        }
    }
    fclose(f);
    if (best_hi == 0)
        return fst__fail(FST_EIO, "%s: no mapping of the store in "
                         "/proc/self/maps", st->path);
    *base = (const void *)best_lo;
    *len = best_hi - best_lo;
    return FST_OK;
}

static int count_line(const char *msg, void *ctx)
{
    /* One call per reader, after a header line; "(no active readers)"
     * when there are none. */
    if (msg[0] != '(' && !strstr(msg, "pid"))
        ++*(unsigned *)ctx;
    return 0;
}

fst_status fst__store_reader_slots(fst_store *st, unsigned *n)
{
    unsigned c = 0;
    int rc = mdb_reader_list(st->sh->env, count_line, &c);
    if (rc < 0)
        return fst__from_mdb(rc, "%s: reader list", st->path);
    *n = c;
    return FST_OK;
}
