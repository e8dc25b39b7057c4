/* store.c : opening a store read-only, read transactions, verify. */
#define FST_STORE_LMDB
#include "store_impl.h"

#include "fst_config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <time.h>

/* Readers that ended are kept (transaction reset, reader slot held) so that
 * a worker's begin/end per batch allocates nothing in steady state. */
#define POOL_MAX 8

/* How long a reader that found the map too small waits for this process's
 * other readers to end before it may remap. */
#define REMAP_WAIT_S 30

/* One LMDB environment per store file per process, shared by every
 * fst_store handle on that file. LMDB forbids opening one file twice in a
 * process: the second open takes the lock file's "exclusive" fcntl lock
 * (fcntl locks are per process, so it always succeeds), re-initializes the
 * reader table under the first handle's live readers, and closing either
 * handle drops the other's locks. Measured: a second mdb_env_open() in the
 * same process empties the reader table. So handles share, and a writer on
 * the same file in the same process is refused (fst__claim_write()). */
typedef struct shenv {
    dev_t       dev;
    ino_t       ino;
    pid_t       pid;            /* a forked child does not inherit it */
    unsigned    refs;
    MDB_env    *env;
    MDB_dbi     images, meta;
    size_t      maxkey;
    /* Remapping (mdb_env_set_mapsize) moves the map: no read transaction
     * of this process may be live meanwhile. `active` counts live readers;
     * `remapping` holds new ones back. A mutex and a condition rather than
     * a rwlock, so that a reader may end on another thread than it began. */
    pthread_mutex_t mu;
    pthread_cond_t  cv;
    unsigned    active;
    bool        remapping;
    fst_reader *pool;           /* ended readers: txn reset, slot held */
    unsigned    npool;
    /* Opened without the lock file (MDB_NOLOCK, see lock_usable()): no
     * reader slots, so nothing would keep an append from reusing pages
     * this process reads. `flockfd` holds a shared flock(2) on the store
     * file that refuses appends (they take it exclusive) while the handle
     * is open; where the file system has no flock, `txnid` (the snapshot
     * seen at open) catches a change at the next read transaction. */
    bool        nolock;
    int         flockfd;
    size_t      txnid;
    struct shenv *next;
} shenv;

/* Files this process writes through an LMDB environment (APPEND, raw). */
typedef struct wclaim {
    dev_t       dev;
    ino_t       ino;
    pid_t       pid;
    struct wclaim *next;
} wclaim;

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static shenv  *reg_envs;
static wclaim *reg_writes;

/* A child forked while another thread holds reg_mu would deadlock on its
 * first open: hold it across fork(). */
static void reg_lock(void) { pthread_mutex_lock(&reg_mu); }
static void reg_unlock(void) { pthread_mutex_unlock(&reg_mu); }
static void reg_atfork(void) { pthread_atfork(reg_lock, reg_unlock, reg_unlock); }
static pthread_once_t reg_once = PTHREAD_ONCE_INIT;

struct fst_store {
    shenv      *sh;
    char       *path;
    unsigned    flags;          /* FST_OPEN_* */
    unsigned    stale_cleared;
    unsigned    live;           /* this handle's live readers (sh->mu) */
};

struct fst_reader {
    fst_store  *st;
    shenv      *sh;
    MDB_txn    *txn;            /* live, or reset (kept for reuse) */
    MDB_cursor *cur;
    uint64_t    gen;            /* last completed write in this snapshot */
    bool        live;
    bool        iterating;
    fst_reader *next;           /* pool link */
};

fst_status fst__from_mdb(int rc, const char *fmt, ...)
{
    if (rc == MDB_SUCCESS)
        return FST_OK;
    char what[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    fst_status s;
    switch (rc) {
    case MDB_NOTFOUND:          s = FST_ENOTFOUND; break;
    case MDB_MAP_FULL:
    case ENOSPC:
    case EDQUOT:                s = FST_EFULL; break;
    case ENOMEM:                s = FST_ENOMEM; break;
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:  s = FST_EFORMAT; break;
    default:                    s = FST_EIO; break;
    }
    if (rc == MDB_MAP_FULL || rc == ENOSPC || rc == EDQUOT)
        return fst__fail(s, "%s: %s (disk or map full)", what,
                         mdb_strerror(rc));
    return fst__fail(s, "%s: %s", what, mdb_strerror(rc));
}

/* ---- the meta table ---- */

int fst__meta_u64(MDB_txn *txn, MDB_dbi meta, const char *key, uint64_t *v)
{
    MDB_val k = { strlen(key), (void *)key }, d;
    int rc = mdb_get(txn, meta, &k, &d);
    if (rc)
        return rc;
    if (d.mv_size != 8)
        return MDB_BAD_VALSIZE;
    const unsigned char *p = d.mv_data;
    uint64_t x = 0;
    for (int i = 7; i >= 0; i--)
        x = x << 8 | p[i];
    *v = x;
    return MDB_SUCCESS;
}

int fst__meta_put_u64(MDB_txn *txn, MDB_dbi meta, const char *key, uint64_t v)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    MDB_val k = { strlen(key), (void *)key }, d = { 8, b };
    return mdb_put(txn, meta, &k, &d, 0);
}

int fst__meta_put_str(MDB_txn *txn, MDB_dbi meta, const char *key,
                      const char *s)
{
    MDB_val k = { strlen(key), (void *)key }, d = { strlen(s), (void *)s };
    if (d.mv_size == 0)             /* LMDB stores empty values fine, but */
        d.mv_data = (void *)"";     /* wants a valid pointer */
    return mdb_put(txn, meta, &k, &d, 0);
}

static void meta_str(MDB_txn *txn, MDB_dbi meta, const char *key, char *out,
                     size_t cap)
{
    MDB_val k = { strlen(key), (void *)key }, d;
    out[0] = '\0';
    if (mdb_get(txn, meta, &k, &d) == MDB_SUCCESS) {
        size_t n = d.mv_size < cap - 1 ? d.mv_size : cap - 1;
        memcpy(out, d.mv_data, n);
        out[n] = '\0';
    }
}

fst_status fst__meta_read(MDB_txn *txn, MDB_dbi meta, const char *path,
                          fst_store_meta *out, uint64_t *gen)
{
    fst_store_meta m;
    memset(&m, 0, sizeof m);
    uint64_t major, minor = 0, complete = 0, v;
    int rc = fst__meta_u64(txn, meta, FST_META_FORMAT_MAJOR, &major);
    if (rc == MDB_NOTFOUND || rc == MDB_BAD_VALSIZE)
        return fst__fail(FST_EFORMAT, "%s: not a featstore store (no format "
                         "version)", path);
    if (rc)
        return fst__from_mdb(rc, "%s: reading metadata", path);
    fst__meta_u64(txn, meta, FST_META_FORMAT_MINOR, &minor);
    if (major > FST_FORMAT_MAJOR)
        return fst__fail(FST_EVERSION, "%s: store format %llu.%llu; this "
                         "featstore (%s) reads format %d.x: upgrade featstore",
                         path, (unsigned long long)major,
                         (unsigned long long)minor, FST_VERSION_STRING,
                         FST_FORMAT_MAJOR);
    if (major < 1)
        return fst__fail(FST_EFORMAT, "%s: store format %llu.%llu does not "
                         "exist", path, (unsigned long long)major,
                         (unsigned long long)minor);
    rc = fst__meta_u64(txn, meta, FST_META_COMPLETE, &complete);
    if ((rc && rc != MDB_NOTFOUND) || complete != 1)
        return fst__fail(FST_EFORMAT, "%s: incomplete import: run the import "
                         "again", path);

    static const struct { const char *key; size_t off; } req[] = {
        { FST_META_D, offsetof(fst_store_meta, d) },
        { FST_META_DTYPE, offsetof(fst_store_meta, dtype) },
        { FST_META_N_IMAGES, offsetof(fst_store_meta, n_images) },
        { FST_META_N_KEYPOINTS, offsetof(fst_store_meta, n_keypoints) },
        { FST_META_PAYLOAD_BYTES, offsetof(fst_store_meta, payload_bytes) },
        { FST_META_CREATED, offsetof(fst_store_meta, created) },
        { FST_META_MODIFIED, offsetof(fst_store_meta, modified) },
        { FST_META_GENERATION, 0 },
    };
    uint64_t g = 0;
    for (size_t i = 0; i < sizeof req / sizeof req[0]; i++) {
        rc = fst__meta_u64(txn, meta, req[i].key, &v);
        if (rc == MDB_NOTFOUND || rc == MDB_BAD_VALSIZE)
            return fst__fail(FST_ECORRUPT, "%s: metadata lacks a valid '%s'",
                             path, req[i].key);
        if (rc)
            return fst__from_mdb(rc, "%s: reading metadata", path);
        char *f = (char *)&m + req[i].off;
        if (i == 0) {
            if (v > UINT32_MAX)
                return fst__fail(FST_ECORRUPT, "%s: metadata d = %llu", path,
                                 (unsigned long long)v);
            m.d = (uint32_t)v;
        } else if (i == 1) {
            if (v != 0 && fst_dtype_size((fst_dtype)v) == 0)
                return fst__fail(FST_ECORRUPT, "%s: metadata dtype %llu",
                                 path, (unsigned long long)v);
            m.dtype = (fst_dtype)v;
        } else if (i == 7) {
            g = v;
        } else {
            memcpy(f, &v, 8);       /* u64 and i64 fields alike */
        }
    }
    m.format_major = (uint32_t)major;
    m.format_minor = (uint32_t)minor;
    meta_str(txn, meta, FST_META_VERSION, m.featstore_version,
             sizeof m.featstore_version);
    meta_str(txn, meta, FST_META_SOURCE_NAME, m.source_name,
             sizeof m.source_name);
    if (fst__meta_u64(txn, meta, FST_META_SOURCE_SIZE, &v) == MDB_SUCCESS)
        m.source_size = v;
    if (fst__meta_u64(txn, meta, FST_META_SOURCE_MTIME, &v) == MDB_SUCCESS)
        m.source_mtime = (int64_t)v;
    m.generation = g;
    /* format 1.1: the store's id; a 1.0 store has none (an id of another
     * size is damage, not an old store) */
    MDB_val ik = { strlen(FST_META_STORE_ID), (void *)FST_META_STORE_ID }, iv;
    rc = mdb_get(txn, meta, &ik, &iv);
    if (rc == MDB_SUCCESS && iv.mv_size != sizeof m.id)
        return fst__fail(FST_ECORRUPT, "%s: metadata '%s' has %zu bytes, not "
                         "%zu", path, FST_META_STORE_ID, iv.mv_size,
                         sizeof m.id);
    if (rc && rc != MDB_NOTFOUND)
        return fst__from_mdb(rc, "%s: reading metadata", path);
    if (rc == MDB_SUCCESS) {
        memcpy(m.id, iv.mv_data, sizeof m.id);
        m.has_id = true;
        /* the last entry of the history is this generation's write */
        MDB_val hk = { strlen(FST_META_HISTORY), (void *)FST_META_HISTORY }, hv;
        rc = mdb_get(txn, meta, &hk, &hv);
        const unsigned char *e = rc == MDB_SUCCESS && hv.mv_size >= FST_HISTORY_ENTRY &&
                                 hv.mv_size % FST_HISTORY_ENTRY == 0
                                 ? (const unsigned char *)hv.mv_data + hv.mv_size -
                                   FST_HISTORY_ENTRY : NULL;
        uint64_t eg = 0;
        for (int i = 7; e && i >= 0; i--)
            eg = eg << 8 | e[i];
        if (rc && rc != MDB_NOTFOUND)
            return fst__from_mdb(rc, "%s: reading metadata", path);
        if (!e || eg != g)
            return fst__fail(FST_ECORRUPT, "%s: metadata '%s' lacks generation %llu",
                             path, FST_META_HISTORY, (unsigned long long)g);
        memcpy(m.write_id, e + 8, sizeof m.write_id);
    }
    if (out)
        *out = m;
    if (gen)
        *gen = g;
    return FST_OK;
}

void fst_store_identity(const fst_store_meta *m, char *buf)
{
    if (m->has_id) {
        char *p = buf + sprintf(buf, "id=");
        for (size_t i = 0; i < sizeof m->id; i++)
            p += sprintf(p, "%02x", m->id[i]);
        return;
    }
    snprintf(buf, FST_STORE_IDENTITY_LEN, "legacy=%llu,%llu,%llu,%lld,%lld,%u,%u",
             (unsigned long long)m->n_images, (unsigned long long)m->n_keypoints,
             (unsigned long long)m->payload_bytes, (long long)m->created,
             (long long)m->modified, m->d, (unsigned)m->dtype);
}

/* ---- opening ---- */

static bool same_file(dev_t dev, ino_t ino, pid_t pid, dev_t d2, ino_t i2)
{
    return dev == d2 && ino == i2 && pid == getpid();
}

fst_status fst__claim_write(const char *path, const struct stat *sb)
{
    fst_status s = FST_OK;
    pthread_once(&reg_once, reg_atfork);
    pthread_mutex_lock(&reg_mu);
    for (shenv *e = reg_envs; e; e = e->next)
        if (same_file(e->dev, e->ino, e->pid, sb->st_dev, sb->st_ino))
            s = fst__fail(FST_EINVAL, "%s: this process has the store open "
                          "for reading; close it before writing to it", path);
    for (wclaim *c = reg_writes; c && !s; c = c->next)
        if (same_file(c->dev, c->ino, c->pid, sb->st_dev, sb->st_ino))
            s = fst__fail(FST_EEXIST, "%s: another import is writing to this "
                          "store (in this process)", path);
    wclaim *c = s ? NULL : malloc(sizeof *c);
    if (!s && !c)
        s = fst__fail(FST_ENOMEM, "%s", path);
    if (c) {
        *c = (wclaim){ sb->st_dev, sb->st_ino, getpid(), reg_writes };
        reg_writes = c;
    }
    pthread_mutex_unlock(&reg_mu);
    return s;
}

void fst__release_write(const struct stat *sb)
{
    pthread_mutex_lock(&reg_mu);
    for (wclaim **pc = &reg_writes; *pc; pc = &(*pc)->next) {
        wclaim *c = *pc;
        if (same_file(c->dev, c->ino, c->pid, sb->st_dev, sb->st_ino)) {
            *pc = c->next;
            free(c);
            break;
        }
    }
    pthread_mutex_unlock(&reg_mu);
}

static void reader_free(fst_reader *rd)
{
    if (rd->cur)
        mdb_cursor_close(rd->cur);
    if (rd->txn)
        mdb_txn_abort(rd->txn);
    free(rd);
}

static void shenv_free(shenv *sh)
{
    while (sh->pool) {
        fst_reader *rd = sh->pool;
        sh->pool = rd->next;
        reader_free(rd);
    }
    if (sh->env)
        mdb_env_close(sh->env);
    if (sh->flockfd >= 0)
        close(sh->flockfd);         /* lets an append in */
    pthread_cond_destroy(&sh->cv);
    pthread_mutex_destroy(&sh->mu);
    free(sh);
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
    shenv *sh = st->sh, *last = NULL;
    if (sh) {
        pthread_mutex_lock(&reg_mu);
        if (--sh->refs == 0) {
            for (shenv **pe = &reg_envs; *pe; pe = &(*pe)->next)
                if (*pe == sh) {
                    *pe = sh->next;
                    break;
                }
            last = sh;
        }
        pthread_mutex_unlock(&reg_mu);
    }
    if (last)
        shenv_free(last);
    free(st->path);
    free(st);
}

static bool nolock_errno(int e)
{
    return e == EACCES || e == EPERM || e == EROFS;
}

fst_status fst__lock_usable(const char *path, bool *usable, int *why)
{
    char lock[PATH_MAX];
    if (snprintf(lock, sizeof lock, "%s-lock", path) >= (int)sizeof lock)
        return fst__fail(FST_EINVAL, "%s: path too long", path);
    /* What LMDB will do: open it read-write, creating it if missing. */
    int fd = open(lock, O_RDWR | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT)
        fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0664);
    if (fd >= 0) {
        close(fd);
        *usable = true;
        return FST_OK;
    }
    if (nolock_errno(errno)) {
        *usable = false;
        if (why)
            *why = errno;
        return FST_OK;
    }
    return fst__fail(errno == ENOSPC || errno == EDQUOT ? FST_EFULL : FST_EIO,
                     "%s: %s (the store's lock file)", lock, strerror(errno));
}

/* File systems shared over a network, by statfs(2) f_type: LMDB's lock
 * file (a shared mapping plus POSIX locks) does not work across their
 * clients. The kernels' and vendors' magic numbers. */
static const struct { unsigned long magic; const char *name; } network_fs[] = {
    {0x6969UL, "NFS"},          {0x0BD00BD0UL, "Lustre"},   {0x47504653UL, "GPFS"},
    {0x19830326UL, "BeeGFS"},   {0x00C36400UL, "CephFS"},   {0xFF534D42UL, "CIFS"},
    {0xFE534D42UL, "SMB2"},     {0x517BUL, "SMB"},          {0x5346414FUL, "AFS"},
    {0x6B414653UL, "AFS"},      {0xAAD7AAEAUL, "PanFS"},    {0x20030528UL, "OrangeFS"},
    {0x013111A8UL, "IBRIX"},    {0x7461636FUL, "OCFS2"},    {0x01161970UL, "GFS2"},
};

const char *fst__network_fs_name(unsigned long magic)
{
    for (size_t i = 0; i < sizeof network_fs / sizeof network_fs[0]; i++)
        if (network_fs[i].magic == (magic & 0xFFFFFFFFUL)) return network_fs[i].name;
    return NULL;
}

const char *fst__network_fs(const char *path)
{
    struct statfs sf;
    if (statfs(path, &sf) != 0) return NULL;     /* the open says what is wrong */
    return fst__network_fs_name((unsigned long)sf.f_type);
}

/* FST_NO_LOCK in the environment, set and not "0": every store opens as
 * with FST_OPEN_NOLOCK (how `--no-lock` reaches match's workers). */
static bool nolock_asked(unsigned flags)
{
    const char *e = getenv("FST_NO_LOCK");
    return (flags & FST_OPEN_NOLOCK) || (e && *e && strcmp(e, "0") != 0);
}

/* A store read without its lock file must not change while it is open:
 * hold a shared flock(2) on the store file for the handle's life. An
 * append takes it exclusive (writer.c open_append()), so each refuses the
 * other. A file system without flock (some network ones) is read
 * unguarded: reader_start() then notices a change after the fact. */
static fst_status hold_shared(shenv *sh, const char *path,
                              const struct stat *sb)
{
    sh->flockfd = open(path, O_RDONLY | O_CLOEXEC);
    if (sh->flockfd < 0)
        return fst__fail(FST_EIO, "%s: %s", path, strerror(errno));
    struct stat now;
    if (fstat(sh->flockfd, &now) != 0 || now.st_dev != sb->st_dev ||
        now.st_ino != sb->st_ino)
        return fst__fail(FST_EIO, "%s: replaced while being opened; open it "
                         "again", path);
    if (flock(sh->flockfd, LOCK_SH | LOCK_NB) == 0)
        return FST_OK;
    int e = errno;
    if (e == EWOULDBLOCK)
        return fst__fail(FST_EEXIST, "%s: an append to this store is in "
                         "progress, and a store read without its lock file "
                         "cannot be read beside one: retry when it has "
                         "finished", path);
    if (e == ENOLCK || e == ENOSYS || e == EOPNOTSUPP || e == EINVAL) {
        close(sh->flockfd);         /* no flock here: read unguarded */
        sh->flockfd = -1;
        return FST_OK;
    }
    return fst__fail(FST_EIO, "%s: flock: %s", path, strerror(e));
}

/* mdb_env_open() failed with `rc` on a store opened with its lock file:
 * LMDB's message ("No locks available", "No space left on device") does
 * not say which file. If the store opens without the lock file, the lock
 * file was at fault: name it. */
static fst_status open_failed(const char *path, int rc)
{
    MDB_env *probe = NULL;
    int prc = mdb_env_create(&probe);
    if (prc == MDB_SUCCESS)
        prc = mdb_env_open(probe, path, MDB_RDONLY | MDB_NOSUBDIR | MDB_NOLOCK,
                           0664);
    if (probe)
        mdb_env_close(probe);
    if (prc != MDB_SUCCESS)
        return fst__from_mdb(rc, "%s", path);
    char lock[PATH_MAX];
    snprintf(lock, sizeof lock, "%s-lock", path);
    return fst__from_mdb(rc, "%s (the lock file of %s; a store on a network "
                         "file system, or shared read-only, opens without it: "
                         "--no-lock)", lock, path);
}

/* Open the LMDB environment of `path` and check that it is a complete
 * store this build can read. */
static fst_status shenv_open(const char *path, const struct stat *sb,
                             unsigned flags, shenv **out, unsigned *dead_out)
{
    fst_status s;
    MDB_txn *txn = NULL;
    shenv *sh = calloc(1, sizeof *sh);
    if (!sh)
        return fst__fail(FST_ENOMEM, "opening %s", path);
    pthread_mutex_init(&sh->mu, NULL);
    pthread_cond_init(&sh->cv, NULL);
    sh->dev = sb->st_dev;
    sh->ino = sb->st_ino;
    sh->pid = getpid();
    sh->refs = 1;
    sh->flockfd = -1;
    sh->nolock = nolock_asked(flags) || fst__network_fs(path);
    if (!sh->nolock) {
        bool usable;
        FST_TRY(fst__lock_usable(path, &usable, NULL));
        sh->nolock = !usable;
    }
    if (sh->nolock)
        FST_TRY(hold_shared(sh, path, sb));
    FST_TRY(fst__from_mdb(mdb_env_create(&sh->env), "%s", path));
    FST_TRY(fst__from_mdb(mdb_env_set_maxreaders(sh->env, FST__MAX_READERS),
                          "%s", path));
    FST_TRY(fst__from_mdb(mdb_env_set_maxdbs(sh->env, FST__MAX_DBS), "%s",
                          path));
    /* Map size 0 before open: LMDB takes the file's. NOTLS: reader slots
     * belong to transactions, not threads. MDB_NOLOCK only where the lock
     * file cannot be used or when asked, with the flock above standing in
     * for the lock table (which is what keeps an append from reusing pages
     * a reader still sees). */
    int rc = mdb_env_open(sh->env, path, MDB_RDONLY | MDB_NOTLS | MDB_NOSUBDIR |
                          (sh->nolock ? MDB_NOLOCK : 0), 0664);
    if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH) {
        s = fst__fail(FST_EFORMAT, "%s: not a featstore store (%s)", path,
                      mdb_strerror(rc));
        goto out;
    }
    if (rc && !sh->nolock) {
        s = open_failed(path, rc);
        goto out;
    }
    FST_TRY(fst__from_mdb(rc, "%s", path));
    /* A truncated file would be mapped past its end, and the first read of
     * a missing page would be SIGBUS: every page the newest meta page names
     * must lie inside the file. Files only grow, so a stat after the meta
     * read is the conservative order. */
    MDB_envinfo info;
    MDB_stat est;
    struct stat now;
    FST_TRY(fst__from_mdb(mdb_env_info(sh->env, &info), "%s", path));
    FST_TRY(fst__from_mdb(mdb_env_stat(sh->env, &est), "%s", path));
    if (stat(path, &now) != 0) {
        s = fst__fail(FST_EIO, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (((uint64_t)info.me_last_pgno + 1) * est.ms_psize > (uint64_t)now.st_size) {
        s = fst__fail(FST_ECORRUPT, "%s: truncated store: %llu bytes, its "
                      "pages need %llu (restore the file or import again)",
                      path, (unsigned long long)now.st_size,
                      ((unsigned long long)info.me_last_pgno + 1) * est.ms_psize);
        goto out;
    }
    int dead = 0;
    FST_TRY(fst__from_mdb(mdb_reader_check(sh->env, &dead),
                          "%s: clearing stale readers", path));
    *dead_out = (unsigned)dead;
    sh->maxkey = (size_t)mdb_env_get_maxkeysize(sh->env);

    for (int tries = 0;; tries++) {
        rc = mdb_txn_begin(sh->env, NULL, MDB_RDONLY, &txn);
        if (rc != MDB_MAP_RESIZED || tries > 8)
            break;
        FST_TRY(fst__from_mdb(mdb_env_set_mapsize(sh->env, 0), "%s", path));
    }
    FST_TRY(fst__from_mdb(rc, "%s: starting a read transaction", path));
    rc = mdb_dbi_open(txn, FST_DB_META, 0, &sh->meta);
    if (rc == MDB_SUCCESS)
        rc = mdb_dbi_open(txn, FST_DB_IMAGES, 0, &sh->images);
    if (rc == MDB_NOTFOUND || rc == MDB_INCOMPATIBLE) {
        s = fst__fail(FST_EFORMAT, "%s: not a featstore store (an LMDB file "
                      "without featstore's tables)", path);
        goto out;
    }
    FST_TRY(fst__from_mdb(rc, "%s: opening tables", path));
    FST_TRY(fst__meta_read(txn, sh->meta, path, NULL, NULL));
    sh->txnid = mdb_txn_id(txn);
    /* Commit, not abort: the table handles then outlive the transaction. */
    rc = mdb_txn_commit(txn);
    txn = NULL;
    FST_TRY(fst__from_mdb(rc, "%s", path));
    *out = sh;
    return FST_OK;
out:
    if (txn)
        mdb_txn_abort(txn);
    shenv_free(sh);
    return s;
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
    fst_status s = FST_OK;
    pthread_once(&reg_once, reg_atfork);
    pthread_mutex_lock(&reg_mu);
    for (wclaim *c = reg_writes; c && !s; c = c->next)
        if (same_file(c->dev, c->ino, c->pid, sb.st_dev, sb.st_ino))
            s = fst__fail(FST_EINVAL, "%s: this process is writing to the "
                          "store; finish or abort that first", path);
    for (shenv *e = reg_envs; e && !s && !st->sh; e = e->next)
        if (same_file(e->dev, e->ino, e->pid, sb.st_dev, sb.st_ino)) {
            e->refs++;
            st->sh = e;
        }
    if (!s && !st->sh) {
        s = shenv_open(path, &sb, flags, &st->sh, &st->stale_cleared);
        if (!s) {
            st->sh->next = reg_envs;
            reg_envs = st->sh;
        }
    }
    pthread_mutex_unlock(&reg_mu);
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
static fst_status remap_locked(shenv *sh, const char *path)
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
    shenv *sh = rd->sh;
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
    shenv *sh = rd->sh;
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
    shenv *sh = st->sh;
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
        reader_free(rd);
        return s;
    }
    *out = rd;
    return FST_OK;
}

void fst_reader_end(fst_reader *rd)
{
    if (!rd)
        return;
    shenv *sh = rd->sh;
    reader_stop(rd);
    if (!rd->txn) {
        reader_free(rd);
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
        reader_free(rd);
}

fst_status fst_reader_reset(fst_reader *rd)
{
    reader_stop(rd);
    return reader_start(rd);
}

/* Decode the record at k/v for a reader: bounds always, checksum on
 * request. *visible = false for a record of an unfinished append. */
static fst_status decode(fst_reader *rd, const MDB_val *k, const MDB_val *v,
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

static unsigned read_how(const fst_store *st)
{
    return FST__DEC_ALIGN |
           ((st->flags & FST_OPEN_CHECKSUMS) ? FST__DEC_CHECKSUM : 0u);
}

fst_status fst_reader_get(fst_reader *rd, const char *name, fst_view *out)
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
    fst_status s = decode(rd, &k, &v, read_how(st), out, &visible);
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
        fst_status s = decode(rd, &k, &v, read_how(st), out, &visible);
        if (s || visible)
            return s;
    }
}

fst_status fst_store_meta_get(fst_store *st, fst_store_meta *out)
{
    fst_reader *rd = NULL;
    fst_status s = fst_reader_begin(st, &rd);
    if (s)
        return s;
    s = fst__meta_read(rd->txn, st->sh->meta, st->path, out, NULL);
    fst_reader_end(rd);
    return s;
}

fst_status fst_store_write_id(fst_store *st, uint64_t generation, uint8_t out[16])
{
    fst_reader *rd = NULL;
    fst_status s = fst_reader_begin(st, &rd);
    if (s)
        return s;
    MDB_val hk = { strlen(FST_META_HISTORY), (void *)FST_META_HISTORY }, hv;
    int rc = mdb_get(rd->txn, st->sh->meta, &hk, &hv);
    if (rc == MDB_NOTFOUND) {
        s = fst__fail(FST_ENOTFOUND, "%s: no write history (format 1.0)", st->path);
    } else if (rc) {
        s = fst__from_mdb(rc, "%s: reading metadata", st->path);
    } else if (hv.mv_size % FST_HISTORY_ENTRY) {
        s = fst__fail(FST_ECORRUPT, "%s: metadata '%s' has %zu bytes", st->path,
                      FST_META_HISTORY, hv.mv_size);
    } else {
        s = fst__fail(FST_ENOTFOUND, "%s: no generation %llu in its history", st->path,
                      (unsigned long long)generation);
        const unsigned char *p = hv.mv_data;
        for (size_t off = 0; off < hv.mv_size; off += FST_HISTORY_ENTRY) {
            uint64_t g = 0;
            for (int i = 7; i >= 0; i--)
                g = g << 8 | p[off + (size_t)i];
            if (g == generation) {
                memcpy(out, p + off + 8, 16);
                s = FST_OK;
                break;
            }
        }
    }
    fst_reader_end(rd);
    return s;
}

/* ---- verify ---- */

fst_status fst_store_verify(fst_store *st, fst_verify_cb *bad, void *ctx,
                            uint64_t *n_checked, uint64_t *n_bad)
{
    fst_reader *rd = NULL;
    fst_status s = fst_reader_begin(st, &rd);
    if (s)
        return s;
    fst_store_meta m;
    uint64_t checked = 0, nbad = 0, nkp = 0, payload = 0;
    char name[1024];
    s = fst__meta_read(rd->txn, st->sh->meta, st->path, &m, NULL);
    if (s)
        goto out;
    MDB_cursor_op op = MDB_FIRST;
    for (;;) {
        MDB_val k, v;
        int rc = mdb_cursor_get(rd->cur, &k, &v, op);
        op = MDB_NEXT;
        if (rc == MDB_NOTFOUND)
            break;
        if (rc) {
            s = fst__from_mdb(rc, "%s: iterating", st->path);
            goto out;
        }
        size_t kl = k.mv_size < sizeof name - 1 ? k.mv_size : sizeof name - 1;
        memcpy(name, k.mv_data, kl);
        name[kl] = '\0';
        fst_view vw;
        bool visible = true;
        fst_status rs = decode(rd, &k, &v, FST__DEC_ALIGN | FST__DEC_CHECKSUM,
                               &vw, &visible);
        if (rs == FST_OK && !visible)
            continue;               /* an unfinished append's record */
        checked++;
        if (rs == FST_OK && vw.d != 0 &&
            (vw.d != m.d || vw.dtype != m.dtype)) {
            char b[FST__NAME_MSG];
            rs = fst__fail(FST_ECORRUPT, "%s: image '%s': %s x %u "
                           "descriptors in a store of %s x %u", st->path,
                           fst__name_for_msg(b, k.mv_data, k.mv_size),
                           fst_dtype_name(vw.dtype), vw.d,
                           fst_dtype_name(m.dtype), m.d);
        }
        if (rs) {
            nbad++;
            if (bad)
                bad(name, rs, fst_errdetail(), ctx);
            continue;
        }
        nkp += vw.n;
        payload += fst__view_data_bytes(&vw);
    }
    /* The totals in meta must add up (only when every record was good:
     * a bad record's share is unknown). */
    if (nbad == 0 && (checked != m.n_images || nkp != m.n_keypoints ||
                      payload != m.payload_bytes)) {
        fst__fail(FST_ECORRUPT, "%s: metadata says %llu images, %llu "
                  "keypoints, %llu data bytes; the records hold %llu, "
                  "%llu, %llu", st->path, (unsigned long long)m.n_images,
                  (unsigned long long)m.n_keypoints,
                  (unsigned long long)m.payload_bytes,
                  (unsigned long long)checked, (unsigned long long)nkp,
                  (unsigned long long)payload);
        nbad++;
        if (bad)
            bad("(metadata)", FST_ECORRUPT, fst_errdetail(), ctx);
    }
    s = nbad ? FST_ECORRUPT : FST_OK;
    if (s)
        fst__fail(s, "%s: %llu of %llu records bad", st->path,
                  (unsigned long long)nbad, (unsigned long long)checked);
out:
    fst_reader_end(rd);
    if (s == FST_OK || s == FST_ECORRUPT) {
        if (n_checked)
            *n_checked = checked;
        if (n_bad)
            *n_bad = nbad;
    }
    return s;
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
