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
 */
#include "fst_journal.h"
#include "base_impl.h"
#include "store_impl.h"  /* fst__lock_prealloc */

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define REC_MAGIC 0x31524a46u        /* "FJR1" */
#define REC_HDR   24u
#define JOURNAL_FORMAT "featstore-journal 1"
#define MAP_SIZE  ((size_t)1 << 40)   /* virtual only; the file grows as used */

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
};

static fst_status from_mdb(int rc, const char *path, const char *what)
{
    if (rc == MDB_SUCCESS)  return FST_OK;
    if (rc == MDB_NOTFOUND) return fst__fail(FST_ENOTFOUND, "%s: %s: not found", path, what);
    if (rc == MDB_MAP_FULL || rc == ENOSPC)
        return fst__fail(FST_EFULL, "%s: %s: %s", path, what, mdb_strerror(rc));
    if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH || rc == MDB_INCOMPATIBLE)
        return fst__fail(FST_EFORMAT, "%s: not a featstore journal (%s)", path,
                         mdb_strerror(rc));
    if (rc == ENOMEM) return fst__fail(FST_ENOMEM, "%s: %s", path, what);
    return fst__fail(FST_EIO, "%s: %s: %s", path, what, mdb_strerror(rc));
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
    int rc;
    if (j->rtxn) {
        end_rtxn(j);
        rc = mdb_txn_renew(j->rtxn);
    } else {
        rc = mdb_txn_begin(j->env, NULL, MDB_RDONLY, &j->rtxn);
    }
    if (rc) return from_mdb(rc, j->path, "starting a read transaction");
    j->rtxn_live = true;
    *out = j->rtxn;
    return FST_OK;
}

static fst_status write_txn(fst_journal *j)
{
    if (j->rdonly)
        return fst__fail(FST_EINVAL, "%s: journal opened read-only", j->path);
    if (j->wtxn) return FST_OK;
    end_rtxn(j);
    return from_mdb(mdb_txn_begin(j->env, NULL, 0, &j->wtxn), j->path,
                    "starting a write transaction");
}

static void drop_wtxn(fst_journal *j)
{
    if (j->wtxn) mdb_txn_abort(j->wtxn);
    j->wtxn = NULL;
    j->pending = 0;
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
    FST_TRY(from_mdb(mdb_env_create(&j->env), path, "creating the environment"));
    FST_TRY(from_mdb(mdb_env_set_maxdbs(j->env, 4), path, "mdb_env_set_maxdbs"));
    FST_TRY(from_mdb(mdb_env_set_mapsize(j->env, MAP_SIZE), path, "mdb_env_set_mapsize"));
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
    FST_TRY(from_mdb(rc, path, "opening"));
    j->maxkey = mdb_env_get_maxkeysize(j->env);

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
    FST_TRY(from_mdb(mdb_txn_begin(j->env, NULL, j->rdonly ? MDB_RDONLY : 0, &txn),
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
        FST_TRY(from_mdb(rc, path, "opening tables"));
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
        FST_TRY(from_mdb(rc, path, "writing the format mark"));
        if (!existed) FST_TRY(fst__fsync_parent(path));
    } else if (rc == MDB_SUCCESS) {
        bool ok = v.mv_size == strlen(JOURNAL_FORMAT) &&
                  memcmp(v.mv_data, JOURNAL_FORMAT, v.mv_size) == 0;
        /* Commit, not abort: handles opened in an aborted transaction are
         * closed with it. */
        rc = mdb_txn_commit(txn);
        txn = NULL;
        FST_TRY(from_mdb(rc, path, "opening tables"));
        if (!ok) {
            s = fst__fail(FST_EFORMAT, "%s: not a featstore journal of this "
                          "version", path);
            goto out;
        }
    } else {
        mdb_txn_abort(txn);
        s = rc == MDB_NOTFOUND
            ? fst__fail(FST_EFORMAT, "%s: not a featstore journal", path)
            : from_mdb(rc, path, "reading the format mark");
        goto out;
    }
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
        s = from_mdb(rc, j->path, "reading meta");
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
    int rc = mdb_put(j->wtxn, j->meta, &k, &v, 0);
    if (rc) {
        drop_wtxn(j);
        return from_mdb(rc, j->path, "writing meta");
    }
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
    int rc = mdb_put(j->wtxn, j->pairs, &k, &v, 0);
    if (rc) {
        drop_wtxn(j);
        return fst__failpre(from_mdb(rc, j->path, "writing"), "pair '%s': ", key);
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
    j->pending = 0;
    return from_mdb(rc, j->path, "committing");
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
        s = from_mdb(rc, j->path, "reading");
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
    FST_TRY(from_mdb(mdb_txn_begin(j->env, NULL, MDB_RDONLY, &txn), j->path,
                     "starting a read transaction"));
    MDB_stat st;
    FST_TRY(from_mdb(mdb_stat(txn, j->pairs, &st), j->path, "mdb_stat"));
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
    end_rtxn(j);
    FST_TRY(from_mdb(mdb_txn_begin(j->env, NULL, MDB_RDONLY, &txn), j->path,
                     "starting a read transaction"));
    FST_TRY(from_mdb(mdb_cursor_open(txn, j->pairs, &cur), j->path, "opening a cursor"));
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
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    s = rc == MDB_NOTFOUND ? FST_OK : from_mdb(rc, j->path, "walking");
out:
    free(kbuf);
    if (cur) mdb_cursor_close(cur);
    if (txn) mdb_txn_abort(txn);
    return s;
}
