/* journal.c : the LMDB journal of finished pairs (fst_journal.h).
 *
 * One LMDB environment in one file (MDB_NOSUBDIR) with two tables: `meta`
 * (string -> string) and `pairs` (pair key -> record). Only the coordinator
 * of a match run writes it, in transactions of many puts, each commit
 * fsynced by LMDB; a kill at any point leaves the last committed state.
 *
 * Record layout (little-endian, what the writer's CPU uses; journals never
 * travel between machines):
 *   u32 magic "FJR1", u32 n0, u32 nmatches, u32 len0, u32 len1,
 *   u32 index_size, name0 NUL, name1 NUL, matches0[n0], scores0[n0] (f16),
 *   u64 XXH3-64 of every byte before it.
 *
 * The map. LMDB maps the whole file (MAP_SHARED, read-only: without
 * MDB_WRITEMAP pages are written with pwrite) and needs the map's size up
 * front. It starts small (MAP_INITIAL, or the file's size on reopening)
 * and doubles when a transaction does not fit (MDB_MAP_FULL): the
 * transaction is aborted, the map grown, and the transaction's puts, kept
 * in `log` until commit, are put again (grow()). A map can only change
 * between transactions, hence the replay. A reserved size for the largest
 * journal would be simpler, but address space is limited where a run is
 * most likely to be large (`ulimit -v` on shared clusters, valgrind).
 *
 * Its pages in this process's memory. Every put reads the B-tree pages on
 * its path through the map (LMDB copies a leaf before changing it), and
 * records are small enough to live in the leaves, so over a run the
 * writer touches nearly every page of the file, and its RSS grows by the
 * journal's size (~1 GB per million pairs) although none of it is its own
 * memory: they are clean page-cache pages of the file, mapped. After each
 * commit, and every DROP_EVERY bytes of a walk, drop_pages() unmaps them
 * from the process (madvise MADV_DONTNEED over the whole map): for a
 * shared file mapping that only removes the page-table entries; the data
 * stays in the file and the page cache, and a later access maps it again
 * (a minor fault). So it is safe even where a pointer into the map is
 * still held: it reads the same bytes afterwards.
 */
#define FST_STORE_LMDB
#include "fst_journal.h"
#include "store_impl.h"  /* lmdb.h, fst__from_mdb(), fst__lock_prealloc() */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define REC_MAGIC 0x31524a46u        /* "FJR1" */
#define REC_HDR   24u
#define JOURNAL_FORMAT "featstore-journal 1"
#define MAP_INITIAL ((size_t)64 << 20)  /* the map a new journal starts with */
#define MAP_ROUND   ((size_t)1 << 20)
#define DROP_EVERY  ((size_t)64 << 20)  /* walks: bytes read between drops */

struct fst_journal {
    MDB_env  *env;
    MDB_dbi   meta, pairs;
    MDB_txn  *wtxn;        /* the open write transaction, if any puts */
    MDB_txn  *rtxn;        /* reused read transaction (reset between calls) */
    bool      rtxn_live;
    bool      rdonly;
    uint64_t  pending;
    int       maxkey;
    char     *path;
    unsigned char *buf;    /* record encoding buffer, kept and reused */
    size_t    cap;
    size_t    mapsize;     /* LMDB's map: its size, */
    void     *map;         /* ...and where it is (NULL: not found) */
    bool      tables;      /* meta and pairs are open */
    bool      broken;      /* the map could not be remapped: no more use */
    size_t    failed_size; /* ...at this size, */
    int       failed_rc;   /* ...for this reason */
    unsigned char *log;    /* the open write transaction's puts, for replay */
    size_t    loglen, logcap;
};

/* An entry of `log`: table (0 meta, 1 pairs), key and value sizes, then the
 * key and value bytes. */
#define LOG_HDR 9u
#define LOG_DEL 2u     /* a logged delete from the pairs table (0 meta, 1 pairs: puts) */

/* The journal's words for what is not a journal and what is missing;
 * every other code is translated as the store's are (fst__from_mdb()). */
fst_status fst__journal_from_mdb(int rc, const char *path, const char *what)
{
    if (rc == MDB_SUCCESS)  return FST_OK;
    if (rc == MDB_NOTFOUND) return fst__fail(FST_ENOTFOUND, "%s: %s: not found", path, what);
    if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH || rc == MDB_INCOMPATIBLE)
        return fst__fail(FST_EFORMAT, "%s: not a featstore journal (%s)", path,
                         mdb_strerror(rc));
    if (rc == EIO)    /* LMDB's word for a short write: a full disk? */
        return fst__fail_io(rc, path, 0, "%s: %s", path, what);
    return fst__from_mdb(rc, "%s: %s", path, what);
}

/* Unmap the map's pages from this process (see the top of this file):
 * only page-table entries go, the data stays in the page cache. */
static void drop_pages(fst_journal *j)
{
    if (j->map)
        madvise(j->map, j->mapsize, MADV_DONTNEED);   /* advice: may fail */
}

/* Learn the map's size and place after LMDB (re)mapped it. The place is
 * told from other mappings of the file (a forked child has its parent's)
 * by a value read through it: the format mark, once the tables are open. */
static void map_changed(fst_journal *j)
{
    MDB_envinfo info;
    MDB_txn *t = NULL;
    int fd = -1;
    j->map = NULL;
    if (mdb_env_info(j->env, &info) != MDB_SUCCESS)
        return;
    j->mapsize = info.me_mapsize;
    if (!j->tables || mdb_env_get_fd(j->env, &fd) != MDB_SUCCESS ||
        mdb_txn_begin(j->env, NULL, MDB_RDONLY, &t) != MDB_SUCCESS)
        return;
    MDB_val k = {strlen("format"), "format"}, v;
    if (mdb_get(t, j->meta, &k, &v) == MDB_SUCCESS)
        j->map = fst__file_map(fd, j->mapsize, v.mv_data);
    mdb_txn_abort(t);
}

/* Remap at `size` bytes (LMDB rounds it up to the pages in use). No
 * transaction may be open. LMDB 0.9 unmaps the old map before it maps the
 * new one, and keeps none if that fails (no address space: ENOMEM), so
 * the environment is then good only for mdb_env_close(): the journal says
 * so from then on (usable()), and its committed content is intact. */
static int remap(fst_journal *j, size_t size)
{
    int rc = mdb_env_set_mapsize(j->env, size);
    if (rc) {
        j->broken = true;
        j->map = NULL;
        j->failed_size = size;
        j->failed_rc = rc;
        return rc;
    }
    map_changed(j);
    return MDB_SUCCESS;
}

/* The map size for a file of `size` bytes: all of it, plus `headroom`
 * of it (a writer's next batches), at least MAP_INITIAL. */
static size_t map_for(uint64_t size, uint64_t headroom)
{
    uint64_t want = size + headroom;
    want = (want + MAP_ROUND - 1) / MAP_ROUND * MAP_ROUND;
    if (want < MAP_INITIAL)
        want = MAP_INITIAL;
    return want > SIZE_MAX / 2 ? SIZE_MAX / 2 : (size_t)want;
}

/* Begin (renew: *txn is a reset read transaction) a read transaction. If
 * another process grew the file past our map (MDB_MAP_RESIZED), map the
 * file's current size and try again. Not mdb_env_set_mapsize(env, 0), the
 * size the writer recorded: a journal written before the map grew on
 * demand records 1 TiB, which would fail again where address space is
 * limited. */
static int begin_read(fst_journal *j, MDB_txn **txn, bool renew)
{
    int rc = MDB_MAP_RESIZED;
    for (int tries = 0; rc == MDB_MAP_RESIZED && tries < 4; tries++) {
        if (tries) {
            if (j->wtxn)    /* (only a writer grows, and never past its map) */
                return rc;
            struct stat sb;
            int fd = -1;
            if (mdb_env_get_fd(j->env, &fd) != MDB_SUCCESS || fstat(fd, &sb) != 0)
                return EIO;
            int r = remap(j, map_for((uint64_t)sb.st_size, 0));
            if (r)
                return r;
        }
        rc = renew ? mdb_txn_renew(*txn)
                   : mdb_txn_begin(j->env, NULL, MDB_RDONLY, txn);
    }
    return rc;
}

static fst_status usable(const fst_journal *j)
{
    if (j->broken)
        return fst__fail(j->failed_rc == ENOMEM ? FST_ENOMEM : FST_EIO,
                         "%s: mapping it at %zu MB failed (%s)%s", j->path,
                         j->failed_size >> 20, mdb_strerror(j->failed_rc),
                         j->failed_rc == ENOMEM ? ": not enough address space "
                         "(ulimit -v?)" : "");
    return FST_OK;
}

/* The status of a failed LMDB call `rc`, with the map's failure if that
 * is what happened. */
static fst_status failed(const fst_journal *j, int rc, const char *what)
{
    if (j->broken)
        return usable(j);
    return fst__journal_from_mdb(rc, j->path, what);
}

/* A stored key: the caller's key, or "#h:" + XXH3-128 hex when too long
 * for LMDB (the record keeps the names, so nothing is lost). */
static void make_key(const fst_journal *j, const char *key, char *buf,
                     size_t len, MDB_val *k)
{
    size_t n = strlen(key);
    if (n <= (size_t)j->maxkey) {
        k->mv_data = (void *)key;
        k->mv_size = n;
        return;
    }
    XXH128_hash_t h = XXH3_128bits(key, n);
    snprintf(buf, len, "#h:%016llx%016llx", (unsigned long long)h.high64,
             (unsigned long long)h.low64);
    k->mv_data = buf;
    k->mv_size = strlen(buf);
}

static void end_rtxn(fst_journal *j)
{
    if (j->rtxn_live) {
        mdb_txn_reset(j->rtxn);
        j->rtxn_live = false;
    }
}

/* The transaction reads go through: the write transaction if one is open
 * (so that pending puts are visible), else the reused read transaction. */
static fst_status read_txn(fst_journal *j, MDB_txn **out)
{
    if (j->wtxn) {
        *out = j->wtxn;
        return FST_OK;
    }
    fst_status s = usable(j);
    if (s) return s;
    end_rtxn(j);
    int rc = begin_read(j, &j->rtxn, j->rtxn != NULL);
    if (rc) return failed(j, rc, "starting a read transaction");
    j->rtxn_live = true;
    *out = j->rtxn;
    return FST_OK;
}

static fst_status write_txn(fst_journal *j)
{
    if (j->rdonly)
        return fst__fail(FST_EINVAL, "%s: journal opened read-only", j->path);
    if (j->wtxn) return FST_OK;
    fst_status s = usable(j);
    if (s) return s;
    end_rtxn(j);
    j->loglen = 0;
    int rc = mdb_txn_begin(j->env, NULL, 0, &j->wtxn);
    if (rc) j->wtxn = NULL;
    return fst__journal_from_mdb(rc, j->path, "starting a write transaction");
}

static void drop_wtxn(fst_journal *j)
{
    if (j->wtxn) mdb_txn_abort(j->wtxn);
    j->wtxn = NULL;
    j->pending = 0;
    j->loglen = 0;
}

/* Keep a copy of a put for replay (false: out of memory). */
static bool log_put(fst_journal *j, unsigned table, const MDB_val *k, const MDB_val *v)
{
    size_t need = LOG_HDR + k->mv_size + v->mv_size;
    if (k->mv_size > UINT32_MAX || v->mv_size > UINT32_MAX)
        return false;
    if (j->loglen + need > j->logcap) {
        size_t cap = j->logcap ? j->logcap : 65536;
        while (cap < j->loglen + need) cap *= 2;
        unsigned char *b = realloc(j->log, cap);
        if (!b) return false;
        j->log = b;
        j->logcap = cap;
    }
    unsigned char *p = j->log + j->loglen;
    uint32_t ks = (uint32_t)k->mv_size, vs = (uint32_t)v->mv_size;
    p[0] = (unsigned char)table;
    memcpy(p + 1, &ks, 4);
    memcpy(p + 5, &vs, 4);
    memcpy(p + LOG_HDR, k->mv_data, ks);
    memcpy(p + LOG_HDR + ks, v->mv_data, vs);
    j->loglen += need;
    return true;
}

/* The transaction did not fit in the map (MDB_MAP_FULL, from a put or the
 * commit; j->wtxn is open or already freed by the commit): abort it, double
 * the map, begin again and put everything in `log` again; repeat while it
 * still does not fit. Returns an LMDB code: MDB_SUCCESS with the
 * transaction open again and holding every logged put. */
static int grow(fst_journal *j)
{
    int rc = MDB_MAP_FULL;
    while (rc == MDB_MAP_FULL) {
        if (j->wtxn) mdb_txn_abort(j->wtxn);
        j->wtxn = NULL;
        if (j->mapsize > SIZE_MAX / 4)
            return MDB_MAP_FULL;
        rc = remap(j, j->mapsize * 2);
        if (rc) return rc;
        rc = mdb_txn_begin(j->env, NULL, 0, &j->wtxn);
        if (rc) {
            j->wtxn = NULL;
            return rc;
        }
        for (size_t off = 0; rc == MDB_SUCCESS && off < j->loglen;) {
            unsigned char *p = j->log + off;
            uint32_t ks, vs;
            memcpy(&ks, p + 1, 4);
            memcpy(&vs, p + 5, 4);
            MDB_val k = {ks, p + LOG_HDR}, v = {vs, p + LOG_HDR + ks};
            if (p[0] == LOG_DEL) {
                rc = mdb_del(j->wtxn, j->pairs, &k, NULL);
                if (rc == MDB_NOTFOUND) rc = MDB_SUCCESS;   /* as the first time */
            } else {
                rc = mdb_put(j->wtxn, p[0] ? j->pairs : j->meta, &k, &v, 0);
            }
            off += LOG_HDR + ks + vs;
        }
    }
    return rc;
}

/* Put k -> v into `table` (0 meta, 1 pairs) in the write transaction,
 * growing the map if it is full. On failure the transaction is dropped. */
static int put(fst_journal *j, unsigned table, MDB_val *k, MDB_val *v)
{
    if (!log_put(j, table, k, v)) {
        drop_wtxn(j);
        return ENOMEM;
    }
    int rc = mdb_put(j->wtxn, table ? j->pairs : j->meta, k, v, 0);
    if (rc == MDB_MAP_FULL)
        rc = grow(j);
    if (rc) drop_wtxn(j);
    return rc;
}

fst_status fst_journal_open(const char *path, unsigned flags, fst_journal **out)
{
    fst_status s;
    int rc;
    if (!path || !*path || !out)
        return fst__fail(FST_EINVAL, "fst_journal_open: no path");
    struct stat sb;
    bool existed = stat(path, &sb) == 0;
    if (!existed) {
        if (errno != ENOENT)
            return fst__fail(FST_EIO, "%s: %s", path, strerror(errno));
        if (!(flags & FST_JOURNAL_CREATE) || (flags & FST_JOURNAL_RDONLY))
            return fst__fail(FST_ENOTFOUND, "%s: no such journal", path);
    } else if (!S_ISREG(sb.st_mode)) {
        return fst__fail(FST_EFORMAT, "%s: not a featstore journal (not a file)", path);
    }

    fst_journal *j = calloc(1, sizeof *j);
    if (!j || !(j->path = strdup(path))) {
        free(j);
        return fst__fail(FST_ENOMEM, "opening %s", path);
    }
    j->rdonly = flags & FST_JOURNAL_RDONLY;
    FST_TRY(fst__journal_from_mdb(mdb_env_create(&j->env), path, "creating the environment"));
    FST_TRY(fst__journal_from_mdb(mdb_env_set_maxdbs(j->env, 4), path, "mdb_env_set_maxdbs"));
    /* All of an existing file (LMDB would round a smaller map up to the
     * pages in use anyway), and for a writer half as much again for the
     * batches to come, so that a resumed run does not grow at once. */
    uint64_t fsize = existed ? (uint64_t)sb.st_size : 0;
    FST_TRY(fst__journal_from_mdb(mdb_env_set_mapsize(j->env, map_for(fsize, j->rdonly ? 0 : fsize / 2)),
                     path, "mdb_env_set_mapsize"));
    unsigned envflags = MDB_NOSUBDIR | MDB_NOTLS | (j->rdonly ? MDB_RDONLY : 0);
    if (!j->rdonly) {
        unsigned maxreaders = 0;
        mdb_env_get_maxreaders(j->env, &maxreaders);
        FST_TRY(fst__lock_prealloc(path, maxreaders));
    }
    rc = mdb_env_open(j->env, path, envflags, 0644);
    if (rc == EACCES || rc == EROFS || rc == ENOENT || rc == ENOTDIR) {
        s = fst__fail(FST_EIO, "%s: %s", path, strerror(rc));
        goto out;
    }
    FST_TRY(fst__journal_from_mdb(rc, path, "opening"));
    j->maxkey = mdb_env_get_maxkeysize(j->env);
    map_changed(j);

    int fd = -1;
    if (mdb_env_get_fd(j->env, &fd) == 0 && fd >= 0) {
        /* LMDB 0.9.24 opens without O_CLOEXEC: workers must not inherit
         * the file (nor, through it, our lock). */
        fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | FD_CLOEXEC);
        /* (A filesystem without locks, some NFS: go on unlocked.) */
        if (!j->rdonly && flock(fd, LOCK_EX | LOCK_NB) != 0 && errno != ENOLCK &&
            errno != EOPNOTSUPP && errno != ENOSYS) {
            s = errno == EWOULDBLOCK
                ? fst__fail(FST_EEXIST, "%s: in use by another featstore match run", path)
                : fst__fail(FST_EIO, "%s: locking: %s", path, strerror(errno));
            goto out;
        }
    }

    /* Tables, and the format mark that tells a journal from any LMDB file. */
    MDB_txn *txn = NULL;
    FST_TRY(fst__journal_from_mdb(j->rdonly ? begin_read(j, &txn, false)
                               : mdb_txn_begin(j->env, NULL, 0, &txn),
                     path, "starting a transaction"));
    unsigned dbflags = j->rdonly ? 0 : MDB_CREATE;
    rc = mdb_dbi_open(txn, "meta", dbflags, &j->meta);
    if (!rc) rc = mdb_dbi_open(txn, "pairs", dbflags, &j->pairs);
    if (rc == MDB_NOTFOUND || rc == MDB_INCOMPATIBLE) {
        mdb_txn_abort(txn);
        s = fst__fail(FST_EFORMAT, "%s: not a featstore journal", path);
        goto out;
    }
    if (rc) {
        mdb_txn_abort(txn);
        FST_TRY(fst__journal_from_mdb(rc, path, "opening tables"));
    }
    MDB_val k = {strlen("format"), "format"}, v;
    rc = mdb_get(txn, j->meta, &k, &v);
    if (rc == MDB_NOTFOUND && !j->rdonly) {
        v.mv_data = (void *)JOURNAL_FORMAT;
        v.mv_size = strlen(JOURNAL_FORMAT);
        rc = mdb_put(txn, j->meta, &k, &v, 0);
        if (!rc) rc = mdb_txn_commit(txn);
        else     mdb_txn_abort(txn);
        txn = NULL;
        FST_TRY(fst__journal_from_mdb(rc, path, "writing the format mark"));
        if (!existed) FST_TRY(fst__fsync_parent(path));
    } else if (rc == MDB_SUCCESS) {
        bool ok = v.mv_size == strlen(JOURNAL_FORMAT) &&
                  memcmp(v.mv_data, JOURNAL_FORMAT, v.mv_size) == 0;
        /* Commit, not abort: handles opened in an aborted transaction are
         * closed with it. */
        rc = mdb_txn_commit(txn);
        txn = NULL;
        FST_TRY(fst__journal_from_mdb(rc, path, "opening tables"));
        if (!ok) {
            s = fst__fail(FST_EFORMAT, "%s: not a featstore journal of this "
                          "version", path);
            goto out;
        }
    } else {
        mdb_txn_abort(txn);
        s = rc == MDB_NOTFOUND
            ? fst__fail(FST_EFORMAT, "%s: not a featstore journal", path)
            : fst__journal_from_mdb(rc, path, "reading the format mark");
        goto out;
    }
    j->tables = true;
    map_changed(j);                    /* now it can tell where the map is */
    *out = j;
    return FST_OK;
out:
    fst_journal_close(j);
    return s;
}

void fst_journal_close(fst_journal *j)
{
    if (!j) return;
    drop_wtxn(j);
    if (j->rtxn) mdb_txn_abort(j->rtxn);
    if (j->env) mdb_env_close(j->env);   /* closes the fd, releasing flock */
    free(j->log);
    free(j->buf);
    free(j->path);
    free(j);
}

fst_status fst_journal_remove(const char *path)
{
    size_t n = strlen(path);
    char *lock = malloc(n + 6);
    if (!lock) return fst__fail(FST_ENOMEM, "%s", path);
    memcpy(lock, path, n);
    memcpy(lock + n, "-lock", 6);
    fst_status s = FST_OK;
    if (unlink(path) != 0 && errno != ENOENT)
        s = fst__fail(FST_EIO, "removing %s: %s", path, strerror(errno));
    if (s == FST_OK && unlink(lock) != 0 && errno != ENOENT)
        s = fst__fail(FST_EIO, "removing %s: %s", lock, strerror(errno));
    free(lock);
    if (s == FST_OK) fst__fsync_parent(path);   /* best effort: removal need not be durable */
    return s;
}

fst_status fst_journal_meta_get(fst_journal *j, const char *key, char **val)
{
    fst_status s;
    MDB_txn *txn = NULL;
    FST_TRY(read_txn(j, &txn));
    MDB_val k = {strlen(key), (void *)key}, v;
    int rc = mdb_get(txn, j->meta, &k, &v);
    if (rc == MDB_NOTFOUND) {
        s = fst__fail(FST_ENOTFOUND, "%s: no meta entry '%s'", j->path, key);
    } else if (rc) {
        s = fst__journal_from_mdb(rc, j->path, "reading meta");
    } else {
        char *r = malloc(v.mv_size + 1);
        if (!r) {
            s = fst__fail(FST_ENOMEM, "%s: meta '%s'", j->path, key);
        } else {
            memcpy(r, v.mv_data, v.mv_size);
            r[v.mv_size] = '\0';
            *val = r;
            s = FST_OK;
        }
    }
out:
    end_rtxn(j);
    return s;
}

fst_status fst_journal_meta_put(fst_journal *j, const char *key, const char *val)
{
    fst_status s;
    size_t kn = strlen(key);
    if (kn == 0 || kn > (size_t)j->maxkey || !strcmp(key, "format"))
        return fst__fail(FST_EINVAL, "%s: bad meta key '%s'", j->path, key);
    FST_TRY(write_txn(j));
    MDB_val k = {kn, (void *)key}, v = {strlen(val), (void *)val};
    int rc = put(j, 0, &k, &v);
    if (rc)
        return failed(j, rc, "writing meta");
    j->pending++;
    return FST_OK;
out:
    return s;
}

static void put_u32(unsigned char *p, uint32_t x) { memcpy(p, &x, 4); }
static uint32_t get_u32(const unsigned char *p) { uint32_t x; memcpy(&x, p, 4); return x; }

fst_status fst_journal_put(fst_journal *j, const char *key, const fst_journal_rec *rec)
{
    fst_status s;
    if (!key || !*key || !rec || !rec->name0 || !rec->name1 ||
        (rec->index_size != 2 && rec->index_size != 4) ||
        (rec->n0 && (!rec->matches0 || !rec->scores0)))
        return fst__fail(FST_EINVAL, "%s: bad record for pair '%s'", j->path,
                         key ? key : "(null)");
    size_t len0 = strlen(rec->name0), len1 = strlen(rec->name1);
    size_t mbytes = (size_t)rec->n0 * rec->index_size, sbytes = (size_t)rec->n0 * 2;
    size_t total = REC_HDR + len0 + 1 + len1 + 1 + mbytes + sbytes + 8;
    if (len0 > UINT32_MAX / 2 || len1 > UINT32_MAX / 2)
        return fst__fail(FST_EINVAL, "%s: names too long for pair '%s'", j->path, key);
    if (total > j->cap) {
        size_t cap = j->cap ? j->cap : 4096;
        while (cap < total) cap *= 2;
        unsigned char *b = realloc(j->buf, cap);
        if (!b) return fst__fail(FST_ENOMEM, "%s: pair '%s'", j->path, key);
        j->buf = b;
        j->cap = cap;
    }
    unsigned char *p = j->buf;
    put_u32(p, REC_MAGIC);
    put_u32(p + 4, rec->n0);
    put_u32(p + 8, rec->nmatches);
    put_u32(p + 12, (uint32_t)len0);
    put_u32(p + 16, (uint32_t)len1);
    put_u32(p + 20, rec->index_size);
    p += REC_HDR;
    memcpy(p, rec->name0, len0 + 1); p += len0 + 1;
    memcpy(p, rec->name1, len1 + 1); p += len1 + 1;
    if (mbytes) memcpy(p, rec->matches0, mbytes);
    p += mbytes;
    if (sbytes) memcpy(p, rec->scores0, sbytes);
    p += sbytes;
    uint64_t h = XXH3_64bits(j->buf, (size_t)(p - j->buf));
    memcpy(p, &h, 8);

    FST_TRY(write_txn(j));
    char hk[48];
    MDB_val k, v = {total, j->buf};
    make_key(j, key, hk, sizeof hk, &k);
    int rc = put(j, 1, &k, &v);
    if (rc)
        return fst__failpre(failed(j, rc, "writing"), "pair '%s': ", key);
    j->pending++;
    return FST_OK;
out:
    return s;
}

fst_status fst_journal_del(fst_journal *j, const char *key)
{
    fst_status s;
    if (!key || !*key)
        return fst__fail(FST_EINVAL, "%s: no pair key to delete", j->path);
    FST_TRY(write_txn(j));
    char hk[48];
    MDB_val k, v = {0, (void *)""};      /* logged with no value */
    make_key(j, key, hk, sizeof hk, &k);
    int rc = mdb_del(j->wtxn, j->pairs, &k, NULL);
    if (rc == MDB_NOTFOUND)
        return fst__fail(FST_ENOTFOUND, "%s: no pair '%s'", j->path, key);
    if (rc == MDB_SUCCESS && !log_put(j, LOG_DEL, &k, &v)) {
        drop_wtxn(j);
        rc = ENOMEM;
    }
    if (rc == MDB_MAP_FULL)         /* the copied pages did not fit */
        rc = grow(j) == MDB_SUCCESS && log_put(j, LOG_DEL, &k, &v)
             ? mdb_del(j->wtxn, j->pairs, &k, NULL) : MDB_MAP_FULL;
    if (rc) {
        drop_wtxn(j);
        return fst__failpre(failed(j, rc, "deleting"), "pair '%s': ", key);
    }
    j->pending++;
    return FST_OK;
out:
    return s;
}

fst_status fst_journal_commit(fst_journal *j)
{
    if (!j->wtxn) return FST_OK;
    int rc = mdb_txn_commit(j->wtxn);   /* frees the txn whatever happens */
    j->wtxn = NULL;
    /* the free list's own pages may not fit: nothing was written yet */
    while (rc == MDB_MAP_FULL) {
        rc = grow(j);
        if (rc == MDB_SUCCESS) {
            rc = mdb_txn_commit(j->wtxn);
            j->wtxn = NULL;
        }
    }
    drop_wtxn(j);
    if (rc) return failed(j, rc, "committing");
    drop_pages(j);
    return FST_OK;
}

uint64_t fst_journal_pending(const fst_journal *j) { return j->pending; }

/* Decode a stored record; `verify` checks the checksum too. */
static fst_status decode(const fst_journal *j, const MDB_val *k, const MDB_val *v,
                         bool verify, fst_journal_rec *out)
{
    const unsigned char *p = v->mv_data;
    size_t n = v->mv_size;
    int klen = k->mv_size > 300 ? 300 : (int)k->mv_size;
    if (n < REC_HDR + 2 + 8 || get_u32(p) != REC_MAGIC)
        goto bad;
    uint32_t n0 = get_u32(p + 4), nm = get_u32(p + 8);
    uint64_t len0 = get_u32(p + 12), len1 = get_u32(p + 16);
    uint32_t isz = get_u32(p + 20);
    if ((isz != 2 && isz != 4) || nm > n0)
        goto bad;
    uint64_t want = REC_HDR + len0 + 1 + len1 + 1 + (uint64_t)n0 * (isz + 2) + 8;
    if (want != n || p[REC_HDR + len0] != '\0' || p[REC_HDR + len0 + 1 + len1] != '\0')
        goto bad;
    if (verify) {
        uint64_t h;
        memcpy(&h, p + n - 8, 8);
        if (XXH3_64bits(p, n - 8) != h)
            return fst__fail(FST_ECORRUPT, "%s: pair '%.*s': record fails its checksum",
                             j->path, klen, (const char *)k->mv_data);
    }
    out->name0 = (const char *)p + REC_HDR;
    out->name1 = out->name0 + len0 + 1;
    out->n0 = n0;
    out->nmatches = nm;
    out->index_size = isz;
    out->matches0 = out->name1 + len1 + 1;
    out->scores0 = (const unsigned char *)out->matches0 + (size_t)n0 * isz;
    return FST_OK;
bad:
    return fst__fail(FST_ECORRUPT, "%s: pair '%.*s': malformed record (%zu bytes)",
                     j->path, klen, (const char *)k->mv_data, n);
}

fst_status fst_journal_get(fst_journal *j, const char *key, fst_journal_rec *out)
{
    fst_status s;
    MDB_txn *txn = NULL;
    FST_TRY(read_txn(j, &txn));
    char hk[48];
    MDB_val k, v;
    make_key(j, key, hk, sizeof hk, &k);
    int rc = mdb_get(txn, j->pairs, &k, &v);
    if (rc == MDB_NOTFOUND) {
        s = fst__fail(FST_ENOTFOUND, "%s: no pair '%s'", j->path, key);
        goto out;
    }
    if (rc) {
        s = fst__journal_from_mdb(rc, j->path, "reading");
        goto out;
    }
    fst_journal_rec r;
    FST_TRY(decode(j, &k, &v, true, &r));
    *out = r;
    /* The read transaction stays live so that *out stays valid until the
     * next call (which resets it). */
    return FST_OK;
out:
    end_rtxn(j);
    return s;
}

fst_status fst_journal_count(fst_journal *j, uint64_t *n)
{
    fst_status s;
    MDB_txn *txn = NULL;
    FST_TRY(usable(j));
    int rc0 = begin_read(j, &txn, false);
    FST_TRY(failed(j, rc0, "starting a read transaction"));
    MDB_stat st;
    FST_TRY(fst__journal_from_mdb(mdb_stat(txn, j->pairs, &st), j->path, "mdb_stat"));
    *n = st.ms_entries;
out:
    if (txn) mdb_txn_abort(txn);
    return s;
}

fst_status fst_journal_foreach(fst_journal *j, unsigned flags, fst_journal_cb *cb,
                               void *ctx)
{
    fst_status s;
    MDB_txn *txn = NULL;
    MDB_cursor *cur = NULL;
    char *kbuf = NULL;
    size_t walked = 0;
    end_rtxn(j);
    FST_TRY(usable(j));
    int rc0 = begin_read(j, &txn, false);
    FST_TRY(failed(j, rc0, "starting a read transaction"));
    FST_TRY(fst__journal_from_mdb(mdb_cursor_open(txn, j->pairs, &cur), j->path, "opening a cursor"));
    kbuf = malloc((size_t)j->maxkey + 1);
    if (!kbuf) {
        s = fst__fail(FST_ENOMEM, "%s: walking", j->path);
        goto out;
    }
    MDB_val k, v;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    while (rc == MDB_SUCCESS) {
        fst_journal_rec r;
        FST_TRY(decode(j, &k, &v, flags & FST_JOURNAL_VERIFY, &r));
        memcpy(kbuf, k.mv_data, k.mv_size);
        kbuf[k.mv_size] = '\0';
        FST_TRY(cb(kbuf, &r, ctx));
        /* between records (r is dead) the pages read so far can go */
        if ((walked += k.mv_size + v.mv_size) >= DROP_EVERY) {
            drop_pages(j);
            walked = 0;
        }
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    s = rc == MDB_NOTFOUND ? FST_OK : fst__journal_from_mdb(rc, j->path, "walking");
out:
    free(kbuf);
    if (cur) mdb_cursor_close(cur);
    if (txn) mdb_txn_abort(txn);
    drop_pages(j);
    return s;
}
