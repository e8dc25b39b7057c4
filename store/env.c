/* env.c : LMDB environments of stores, one per file per process (the
 * registry); the lock file beside each store; LMDB's error codes as ours.
 *
 * fst_store_open() takes an environment here (fst__env_acquire()) and
 * fst_store_close() gives it back (fst__env_release()); APPEND and raw
 * writes claim the file here first (fst__claim_write()), so that a process
 * never has one store file open twice through LMDB.
 */
#define FST_STORE_LMDB
#include "store_impl.h"

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
#include <unistd.h>

/* Files this process writes through an LMDB environment (APPEND, raw). */
typedef struct wclaim {
    dev_t       dev;
    ino_t       ino;
    pid_t       pid;
    struct wclaim *next;
} wclaim;

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static fst__env *reg_envs;
static wclaim *reg_writes;

/* A child forked while another thread holds reg_mu would deadlock on its
 * first open: hold it across fork(). */
static void reg_lock(void) { pthread_mutex_lock(&reg_mu); }
static void reg_unlock(void) { pthread_mutex_unlock(&reg_mu); }
static void reg_atfork(void) { pthread_atfork(reg_lock, reg_unlock, reg_unlock); }
static pthread_once_t reg_once = PTHREAD_ONCE_INIT;

/* ---- LMDB's codes ---- */

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
    case MDB_MAP_FULL:          s = FST_EFULL; break;
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:  s = FST_EFORMAT; break;
    default:    /* LMDB's other codes are negative, errno values positive */
        s = rc > 0 ? fst__errno_status(rc) : FST_EIO;
        break;
    }
    if (s == FST_EFULL)
        return fst__fail(s, "%s: %s (disk or map full)", what,
                         mdb_strerror(rc));
    return fst__fail(s, "%s: %s", what, mdb_strerror(rc));
}

/* ---- the registry ---- */

static bool same_file(dev_t dev, ino_t ino, pid_t pid, dev_t d2, ino_t i2)
{
    return dev == d2 && ino == i2 && pid == getpid();
}

fst_status fst__claim_write(const char *path, const struct stat *sb)
{
    fst_status s = FST_OK;
    pthread_once(&reg_once, reg_atfork);
    pthread_mutex_lock(&reg_mu);
    for (fst__env *e = reg_envs; e; e = e->next)
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

static void env_free(fst__env *sh)
{
    while (sh->pool) {
        fst_reader *rd = sh->pool;
        sh->pool = rd->next;
        fst__reader_free(rd);
    }
    if (sh->env)
        mdb_env_close(sh->env);
    if (sh->flockfd >= 0)
        close(sh->flockfd);         /* lets an append in */
    pthread_cond_destroy(&sh->cv);
    pthread_mutex_destroy(&sh->mu);
    free(sh);
}

void fst__env_release(fst__env *sh)
{
    bool last = false;
    pthread_mutex_lock(&reg_mu);
    if (--sh->refs == 0) {
        for (fst__env **pe = &reg_envs; *pe; pe = &(*pe)->next)
            if (*pe == sh) {
                *pe = sh->next;
                break;
            }
        last = true;
    }
    pthread_mutex_unlock(&reg_mu);
    if (last)
        env_free(sh);
}

/* ---- lock files ---- */

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
    int e = errno;
    return fst__fail(fst__errno_status(e), "%s: %s (the store's lock file)",
                     lock, strerror(e));
}

fst_status fst__lock_prealloc(const char *file, unsigned maxreaders)
{
    char lock[PATH_MAX];
    if (snprintf(lock, sizeof lock, "%s-lock", file) >= (int)sizeof lock)
        return fst__fail(FST_EINVAL, "%s: path too long", file);
    bool created = true;
    int fd = open(lock, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 && errno == EEXIST) {
        created = false;
        fd = open(lock, O_RDWR | O_CLOEXEC);
    }
    if (fd < 0) {
        if (errno == ENOENT || errno == EACCES || errno == EROFS)
            return FST_OK;          /* LMDB reports it, with its own words */
        return fst__fail_io(errno, lock, 0, "%s", lock);
    }
    /* LMDB's table: two cache lines of header, one per reader slot; a
     * larger file only gives more slots. */
    off_t size = 4096 + (off_t)maxreaders * 64;
    int rc = posix_fallocate(fd, 0, size);
    close(fd);
    if (rc == 0 || rc == EOPNOTSUPP || rc == EINVAL)
        return FST_OK;              /* no fallocate here: LMDB as usual */
    if (created)
        unlink(lock);
    return fst__fail_io(rc, lock, 0, "%s: allocating the lock file", lock);
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
static fst_status hold_shared(fst__env *sh, const char *path,
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
static fst_status env_open(const char *path, const struct stat *sb,
                             unsigned flags, fst__env **out, unsigned *dead_out)
{
    fst_status s;
    MDB_txn *txn = NULL;
    fst__env *sh = calloc(1, sizeof *sh);
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
    env_free(sh);
    return s;
}

fst_status fst__env_acquire(const char *path, const struct stat *sb,
                            unsigned flags, fst__env **out, unsigned *dead_out)
{
    fst_status s = FST_OK;
    fst__env *sh = NULL;
    pthread_once(&reg_once, reg_atfork);
    pthread_mutex_lock(&reg_mu);
    for (wclaim *c = reg_writes; c && !s; c = c->next)
        if (same_file(c->dev, c->ino, c->pid, sb->st_dev, sb->st_ino))
            s = fst__fail(FST_EINVAL, "%s: this process is writing to the "
                          "store; finish or abort that first", path);
    for (fst__env *e = reg_envs; e && !s && !sh; e = e->next)
        if (same_file(e->dev, e->ino, e->pid, sb->st_dev, sb->st_ino)) {
            e->refs++;
            sh = e;
        }
    if (!s && !sh) {
        s = env_open(path, sb, flags, &sh, dead_out);
        if (!s) {
            sh->next = reg_envs;
            reg_envs = sh;
        }
    }
    pthread_mutex_unlock(&reg_mu);
    if (!s)
        *out = sh;
    return s;
}
