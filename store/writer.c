/* writer.c : creating a store and appending to one.
 *
 * CREATE writes `<path>.tmp-<pid>` in batches (each committed without fsync:
 * the file is thrown away if anything fails), then meta and the complete
 * marker, one fsync, and renames it to `path` without replacing anything.
 * The environment is MDB_WRITEMAP, so LMDB keeps no copy of the records'
 * pages: MDB_RESERVE places each record in the map, and the writer encodes
 * it (copy, NaN/Inf check and checksum in one pass) into a staging buffer
 * and pwrites it there (put_staged()); finish trims the file LMDB sized to
 * the map.
 *
 * APPEND also commits in batches, because LMDB keeps every dirty page of a
 * transaction in memory until commit, and a record is one dirty-list entry
 * however large it is: one transaction for a whole append would hold the
 * whole append in RAM. Atomicity comes from generations instead: each
 * record carries the generation of the write that added it, readers see
 * only records whose generation is <= meta `generation`, and the final
 * commit bumps `generation` together with the counts. Until then the new
 * records are invisible; after a crash they stay invisible and the next
 * append (or an abort) deletes them, found through the `pending` table.
 */
#define FST_STORE_LMDB
#include "store_impl.h"
#include "direct_io.h"

#include "fst_config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BATCH_RECORDS   1000
#define BATCH_BYTES     (64ull << 20)
#define MAP_INITIAL     (16ull << 20)
#define MAP_ROUND       (1ull << 20)
#define ALLOC_STEP      (64ull << 20)

struct fst_writer {
    fst_write_mode mode;
    char       *path;
    char       *tmp, *tmplock;      /* CREATE only */
    int         lockfd;             /* APPEND: flock(2) on the store file */
    struct stat sb;                 /* APPEND: the store file */
    bool        claimed;            /* fst__claim_write() holds sb */
    MDB_env    *env;
    MDB_txn    *txn;
    MDB_dbi     images, meta, pending;
    bool        has_pending;        /* APPEND: `pending` exists (in txn) */
    bool        failed;
    uint64_t    gen;                /* generation of this write */
    size_t      maxkey;
    uint64_t    psize, mapsize;
    uint64_t    alloc_end;          /* CREATE: file blocks reserved below */
    bool        prealloc;           /* CREATE: fallocate(2) works here */
    char       *batch_lo, *batch_hi;   /* CREATE: the batch's records */
    char       *map;                /* CREATE: LMDB's map, NULL if unknown */
    bool        no_stage;           /* CREATE: test hook, never pwrite */
    int         fd;                 /* CREATE: the file, for pwrite */
    fst__dio    dio;                /* CREATE: O_DIRECT writes (direct_io.c) */
    bool        map_lost;           /* a map growth failed: close only */
    void       *stage;              /* CREATE: one record, encoded */
    size_t      stagecap;
    uint64_t    used_pages;         /* as of the last commit */
    uint64_t    batch_pages, batch_bytes;
    unsigned    batch_records;
    unsigned    max_records;
    uint64_t    max_bytes;
    uint32_t    d;                  /* the store's; 0 until known */
    fst_dtype   dtype;
    fst_store_meta old;             /* APPEND: meta before this write */
    uint64_t    add_images, add_keypoints, add_payload;
    bool        add_so;             /* a put record has scales or oris */
};

static fst_status fail(fst_writer *w, fst_status s)
{
    w->failed = true;
    return s;
}

static char *concat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);
    if (s) {
        memcpy(s, a, la);
        memcpy(s + la, b, lb + 1);
    }
    return s;
}

/* Truncate the file to `size` bytes and fsync it: data and size. */
static fst_status trim_and_sync(const char *file, uint64_t size)
{
    int fd = open(file, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return fst__fail(FST_EIO, "%s: %s", file, strerror(errno));
    const char *what = "truncating";
    int rc = ftruncate(fd, (off_t)size);
    if (rc == 0) {
        what = "fsync";
        rc = fsync(fd);
    }
    int e = errno;
    close(fd);
    if (rc != 0)
        return fst__fail_io(e, file, 0, "%s: %s", file, what);
    return FST_OK;
}

/* rename(2) that never replaces an existing `to`. */
static int rename_noreplace(const char *from, const char *to)
{
    if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -1;
    if (link(from, to) != 0)        /* file system without RENAME_NOREPLACE */
        return -1;
    unlink(from);
    return 0;
}

/* What CREATE writes through its shared map (MDB_WRITEMAP: LMDB's own
 * pages, and whole records where put_staged() cannot be used) stays
 * mapped, and counts in the writer's RSS, until unmapped, which would make
 * its memory the size of the store. Dropping the mapping of a
 * record once it is encoded keeps the data (the pages stay in the page
 * cache; dirty ones are written back as usual, fsync included) and keeps
 * the writer's memory a record. `keep_first` keeps the first page mapped:
 * it holds the overflow page header, which LMDB rewrites at commit, and a
 * fault there would map the cached pages around it too (fault-around);
 * commit() drops the batch's first pages after LMDB is done with them. */
static void drop_mapping(const void *data, size_t size, bool keep_first)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = (uintptr_t)data / pg * pg;
    uintptr_t hi = ((uintptr_t)data + size + pg - 1) / pg * pg;
    if (keep_first)
        lo += pg;
    if (hi > lo)
        madvise((void *)lo, hi - lo, MADV_DONTNEED);   /* advice: may fail */
}

/* Where LMDB mapped the file (fst__file_map()). NULL if not found: then
 * records are encoded through the map, the slower way (see put_staged()). */
static void find_map(fst_writer *w)
{
    w->map = NULL;
    int fd;
    if (!w->no_stage && mdb_env_get_fd(w->env, &fd) == MDB_SUCCESS)
        w->map = fst__file_map(fd, (size_t)w->mapsize, NULL);
}

static fst_status begin_txn(fst_writer *w)
{
    int rc = mdb_txn_begin(w->env, NULL, 0, &w->txn);
    if (rc) {
        w->txn = NULL;
        return fail(w, fst__from_mdb(rc, "%s: starting a write", w->path));
    }
    return FST_OK;
}

static fst_status refresh_used(fst_writer *w)
{
    MDB_envinfo info;
    MDB_stat ms;
    int rc = mdb_env_info(w->env, &info);
    if (rc == MDB_SUCCESS)
        rc = mdb_env_stat(w->env, &ms);
    if (rc)
        return fail(w, fst__from_mdb(rc, "%s", w->path));
    w->used_pages = (uint64_t)info.me_last_pgno + 1;
    w->mapsize = info.me_mapsize;
    w->psize = ms.ms_psize;
    return FST_OK;
}

/* Commit what the current transaction holds; start another unless last. */
static fst_status commit(fst_writer *w, bool again)
{
    int rc = mdb_txn_commit(w->txn);
    w->txn = NULL;
    const char *file = w->tmp ? w->tmp : w->path;
    if (rc == EIO)                  /* LMDB's word for a short write */
        return fail(w, fst__fail_io(rc, file, 0, "%s: committing", file));
    if (rc)
        return fail(w, fst__from_mdb(rc, "%s: committing", file));
    w->batch_pages = w->batch_bytes = 0;
    w->batch_records = 0;
    if (w->batch_hi)                /* their first pages, still mapped */
        drop_mapping(w->batch_lo, (size_t)(w->batch_hi - w->batch_lo),
                     false);
    w->batch_lo = w->batch_hi = NULL;
    fst_status s = refresh_used(w);
    if (s == FST_OK && again)
        s = begin_txn(w);
    return s;
}

/* CREATE writes through the map into a sparse file (LMDB sized it to the
 * map with ftruncate): a page written where the file system has no block
 * left cannot fail like a write(2) does, the process gets SIGBUS. So the
 * blocks are reserved with fallocate(2) before LMDB can touch the pages:
 * up to `pages` (ensure_room()'s pessimistic bound on what the next record
 * and its B-tree pages may use), ahead by up to ALLOC_STEP so that the
 * calls are rare. What is reserved past the data goes at finish (trim). A
 * file system without fallocate is written as before, unprotected. */
static fst_status reserve_blocks(fst_writer *w, uint64_t pages)
{
    uint64_t end = pages * w->psize;
    if (!w->prealloc || end <= w->alloc_end)
        return FST_OK;
    uint64_t step = w->alloc_end < ALLOC_STEP ? w->alloc_end : ALLOC_STEP;
    if (end < w->alloc_end + step)
        end = w->alloc_end + step;
    if (end > w->mapsize)
        end = w->mapsize;
    if (end <= w->alloc_end)
        return FST_OK;
    int fd;
    int rc = mdb_env_get_fd(w->env, &fd);
    if (rc)
        return fail(w, fst__from_mdb(rc, "%s", w->tmp));
    if (fallocate(fd, 0, (off_t)w->alloc_end,
                  (off_t)(end - w->alloc_end)) != 0) {
        int e = errno;
        if (e == EOPNOTSUPP || e == ENOSYS) {
            w->prealloc = false;
            return FST_OK;
        }
        return fail(w, fst__fail_io(e, w->tmp, 0, "%s: reserving disk space "
                                    "(%llu bytes)", w->tmp,
                                    (unsigned long long)end));
    }
    w->alloc_end = end;
    return FST_OK;
}

/* Make sure a record of `bytes` fits in the map. The map can only grow
 * between transactions, so this commits the current batch first. The
 * estimate is pessimistic: every record's overflow pages, one B-tree page
 * per record touched, and some slack for the free list. */
static fst_status ensure_room(fst_writer *w, uint64_t bytes)
{
    uint64_t rec = (bytes + 16 + w->psize - 1) / w->psize;
    uint64_t need = w->used_pages + w->batch_pages + w->batch_records + rec +
                    256;
    if (need * w->psize <= w->mapsize)
        return reserve_blocks(w, need);
    fst_status s = commit(w, false);
    if (s)
        return s;
    uint64_t want = (w->used_pages + 2 * rec + 1024) * w->psize;
    uint64_t size = w->mapsize * 2 > want ? w->mapsize * 2 : want;
    size = (size + MAP_ROUND - 1) / MAP_ROUND * MAP_ROUND;
    if (size > SIZE_MAX)
        return fail(w, fst__fail(FST_EFULL, "%s: map of %llu bytes does not "
                                 "fit the address space", w->path,
                                 (unsigned long long)size));
    int rc = mdb_env_set_mapsize(w->env, (size_t)size);
    if (rc) {
        /* LMDB unmapped the old map before failing to make the new one:
         * the environment can only be closed now. */
        w->map_lost = true;
        return fail(w, fst__from_mdb(rc, "%s: growing the map to %llu bytes",
                                     w->path, (unsigned long long)size));
    }
    w->mapsize = size;
    find_map(w);                        /* it may have moved */
    FST_TRY(reserve_blocks(w, w->used_pages + 2 * rec + 256));
    FST_TRY(begin_txn(w));
out:
    return s;
}

static fst_status env_open(fst_writer *w, const char *file, unsigned flags,
                           uint64_t mapsize)
{
    fst_status s;
    FST_TRY(fst__from_mdb(mdb_env_create(&w->env), "%s", file));
    FST_TRY(fst__from_mdb(mdb_env_set_maxreaders(w->env, FST__MAX_READERS),
                          "%s", file));
    FST_TRY(fst__from_mdb(mdb_env_set_maxdbs(w->env, FST__MAX_DBS), "%s",
                          file));
    if (mapsize)
        FST_TRY(fst__from_mdb(mdb_env_set_mapsize(w->env, mapsize), "%s",
                              file));
    FST_TRY(fst__lock_prealloc(file, FST__MAX_READERS));
    int rc = mdb_env_open(w->env, file, flags | MDB_NOSUBDIR, 0644);
    if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH)
        return fst__fail(FST_EFORMAT, "%s: not a featstore store (%s)", file,
                         mdb_strerror(rc));
    if (rc == EIO)                  /* a short write of its first pages */
        return fst__fail_io(rc, file, 0, "%s", file);
    FST_TRY(fst__from_mdb(rc, "%s", file));
    int dead;
    mdb_reader_check(w->env, &dead);
    w->maxkey = (size_t)mdb_env_get_maxkeysize(w->env);
    s = refresh_used(w);
out:
    return s;
}

/* Delete the records an unfinished append left (listed in `pending`, with
 * a generation above the store's), and empty `pending`. In w->txn. */
static fst_status drop_pending(fst_writer *w, uint64_t committed, bool *any)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(w->txn, w->pending, &c);
    if (rc)
        return fst__from_mdb(rc, "%s: pending table", w->path);
    MDB_val k, v;
    *any = false;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == MDB_SUCCESS;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        *any = true;
        MDB_val rv;
        int r2 = mdb_get(w->txn, w->images, &k, &rv);
        if (r2 == MDB_NOTFOUND)
            continue;
        if (r2) {
            rc = r2;
            break;
        }
        /* Only a record that readers cannot see goes: read its generation
         * straight from the header (it may be damaged elsewhere). */
        const unsigned char *p = rv.mv_data;
        if (rv.mv_size < FST_REC_OFF_GENERATION + 8 ||
            memcmp(p, FST_REC_MAGIC, 4) != 0)
            continue;
        uint64_t g = 0;
        for (int i = 7; i >= 0; i--)
            g = g << 8 | p[FST_REC_OFF_GENERATION + i];
        if (g > committed && (r2 = mdb_del(w->txn, w->images, &k, NULL))) {
            rc = r2;
            break;
        }
    }
    mdb_cursor_close(c);
    if (rc != MDB_NOTFOUND)
        return fst__from_mdb(rc, "%s: removing an unfinished append",
                             w->path);
    if (*any && (rc = mdb_drop(w->txn, w->pending, 0)))
        return fst__from_mdb(rc, "%s: removing an unfinished append",
                             w->path);
    return FST_OK;
}

static void writer_free(fst_writer *w)
{
    if (w->txn)
        mdb_txn_abort(w->txn);
    if (w->env)
        mdb_env_close(w->env);
    if (w->lockfd >= 0)
        close(w->lockfd);           /* releases the flock */
    if (w->claimed)
        fst__release_write(&w->sb);
    free(w->path);
    free(w->tmp);
    free(w->tmplock);
    free(w->stage);
    fst__dio_stop(&w->dio);
    free(w);
}

static fst_status open_create(fst_writer *w)
{
    struct stat sb;
    if (lstat(w->path, &sb) == 0)
        return fst__fail(FST_EEXIST, "%s: already exists (append to it, or "
                         "remove it first)", w->path);
    if (errno != ENOENT)
        return fst__fail(FST_EIO, "%s: %s", w->path, strerror(errno));
    /* `<path>.tmp-<pid>` and its `-lock` left by dead processes (kill -9,
     * power loss), so that running the import again just works; our own
     * pid's are stale too: we are about to create them. */
    fst__remove_stale(w->path, ".tmp-", (const char *const[]){"", "-lock", NULL}, true);
    char suffix[32];
    snprintf(suffix, sizeof suffix, ".tmp-%ld", (long)getpid());
    w->tmp = concat(w->path, suffix);
    w->tmplock = w->tmp ? concat(w->tmp, "-lock") : NULL;
    if (!w->tmplock)
        return fst__fail(FST_ENOMEM, "%s", w->path);
    /* No fsync per batch: until the final sync and rename nobody can take
     * the temporary file for a store. MDB_WRITEMAP: LMDB's dirty pages are
     * the file's page-cache pages, so a record is not first copied into
     * malloc'd pages (fresh memory every batch) and then pwritten by the
     * commit: put_staged() writes it once, where MDB_RESERVE placed it.
     * LMDB sizes the file to the map; finish trims it to the pages in use.
     * MDB_NORDAHEAD (MADV_RANDOM): a fault on the file's holes would else
     * read ahead, i.e. zero-fill large page-cache folios that LMDB's next
     * B-tree reads map whole: tens of MB of RSS at each map growth. */
    fst_status s = env_open(w, w->tmp, MDB_NOSYNC | MDB_WRITEMAP |
                            MDB_NORDAHEAD, MAP_INITIAL);
    if (s)
        return s;
    w->prealloc = true;             /* the tables' first pages, below */
    find_map(w);
    FST_TRY(fst__from_mdb(mdb_env_get_fd(w->env, &w->fd), "%s", w->tmp));
    /* Records bypass the page cache where the file system allows it (see
     * put_staged()); where it does not (tmpfs, some network file systems)
     * open fails with EINVAL and they go through it. */
    if (w->map && !w->no_stage)
        fst__dio_start(&w->dio, w->tmp, w->fd);
    FST_TRY(reserve_blocks(w, w->used_pages + 256));
    FST_TRY(begin_txn(w));
    FST_TRY(fst__from_mdb(mdb_dbi_open(w->txn, FST_DB_IMAGES, MDB_CREATE,
                                       &w->images), "%s", w->tmp));
    FST_TRY(fst__from_mdb(mdb_dbi_open(w->txn, FST_DB_META, MDB_CREATE,
                                       &w->meta), "%s", w->tmp));
    w->gen = 1;
out:
    return s;
}

/* LOCK_EX refused: another append holds it, or readers without the lock
 * file hold it shared (store.c hold_shared()). Which one only words the
 * message: a shared lock taken now means no append holds it. */
static fst_status flock_refused(fst_writer *w)
{
    if (errno != EWOULDBLOCK)
        return fst__fail(FST_EIO, "%s: flock: %s", w->path, strerror(errno));
    if (flock(w->lockfd, LOCK_SH | LOCK_NB) == 0) {
        flock(w->lockfd, LOCK_UN);
        return fst__fail(FST_EEXIST, "%s: the store is being read without "
                         "its lock file (by another user, from a read-only "
                         "directory, or with --no-lock), which keeps it "
                         "unchanged: append when those readers have "
                         "finished", w->path);
    }
    return fst__fail(FST_EEXIST, "%s: another import is writing to this "
                     "store", w->path);
}

/* Open the `pending` table in w->txn, creating it if `create` (in the
 * transaction of the first new record: a store that never had an append
 * lacks it). w->has_pending says whether it exists. */
static fst_status open_pending(fst_writer *w, bool create)
{
    int rc = mdb_dbi_open(w->txn, FST_DB_PENDING, create ? MDB_CREATE : 0,
                          &w->pending);
    if (rc == MDB_NOTFOUND && !create) {
        w->has_pending = false;
        return FST_OK;
    }
    if (rc)
        return fst__from_mdb(rc, "%s: pending table", w->path);
    w->has_pending = true;
    return FST_OK;
}

static fst_status open_append(fst_writer *w)
{
    if (stat(w->path, &w->sb) != 0)
        return fst__fail(FST_EIO, "%s: %s", w->path, strerror(errno));
    fst_status s = fst__claim_write(w->path, &w->sb);
    if (s)
        return s;
    w->claimed = true;
    /* One writer at a time across its batches (LMDB only serializes single
     * transactions). flock: LMDB's own locks are fcntl ones on -lock. */
    w->lockfd = open(w->path, O_RDONLY | O_CLOEXEC);
    if (w->lockfd < 0)
        return fst__fail(FST_EIO, "%s: %s", w->path, strerror(errno));
    if (flock(w->lockfd, LOCK_EX | LOCK_NB) != 0)
        return flock_refused(w);
    /* Name the lock file when it is the one refused (LMDB would say only
     * "Permission denied", as for the store). */
    bool usable;
    int why = 0;
    FST_TRY(fst__lock_usable(w->path, &usable, &why));
    if (!usable)
        return fst__fail(FST_EIO, "%s-lock: %s: appending to %s needs write "
                         "access to its lock file (and to its directory, to "
                         "create it)", w->path, strerror(why), w->path);
    s = env_open(w, w->path, 0, 0);
    if (s)
        return s;
    FST_TRY(begin_txn(w));
    int rc = mdb_dbi_open(w->txn, FST_DB_META, 0, &w->meta);
    if (rc == MDB_SUCCESS)
        rc = mdb_dbi_open(w->txn, FST_DB_IMAGES, 0, &w->images);
    if (rc == MDB_NOTFOUND || rc == MDB_INCOMPATIBLE) {
        s = fst__fail(FST_EFORMAT, "%s: not a featstore store (an LMDB file "
                      "without featstore's tables)", w->path);
        goto out;
    }
    FST_TRY(fst__from_mdb(rc, "%s: opening tables", w->path));
    uint64_t committed;
    FST_TRY(fst__meta_read(w->txn, w->meta, w->path, &w->old, &committed));
    /* Nothing is written before the first new record (fst_writer_put()): an
     * append refused before then leaves the file byte-identical. Only
     * the leftovers of a dead append are deleted now. */
    FST_TRY(open_pending(w, false));
    if (w->has_pending) {
        bool any;
        FST_TRY(drop_pending(w, committed, &any));
    }
    FST_TRY(commit(w, true));       /* table handles, and any cleanup */
    w->gen = committed + 1;
    w->d = w->old.d;
    w->dtype = w->old.dtype;
out:
    return s;
}

fst_status fst_writer_open(const char *path, fst_write_mode mode,
                           fst_writer **out)
{
    if (!path || !*path || !out ||
        (mode != FST_WRITE_CREATE && mode != FST_WRITE_APPEND))
        return fst__fail(FST_EINVAL, "fst_writer_open: bad arguments");
    fst_writer *w = calloc(1, sizeof *w);
    if (!w)
        return fst__fail(FST_ENOMEM, "%s", path);
    w->lockfd = -1;
    fst__dio_init(&w->dio);
    w->mode = mode;
    w->max_records = BATCH_RECORDS;
    w->max_bytes = BATCH_BYTES;
    w->path = strdup(path);
    if (!w->path) {
        free(w);
        return fst__fail(FST_ENOMEM, "%s", path);
    }
    fst_status s = mode == FST_WRITE_CREATE ? open_create(w) : open_append(w);
    if (s) {
        fst_writer_abort(w);
        return s;
    }
    *out = w;
    return FST_OK;
}

/* CREATE: encode the record into a staging buffer that stays in cache and
 * pwrite it into the file where LMDB reserved it (dst, in the map; the map
 * and the file share the page cache). A page written through the map is
 * first allocated, zero-filled and "read" from the hole by a page fault,
 * one per page; pwrite of whole pages skips all that.
 *
 * The record's first page also holds LMDB's overflow page header (written
 * through the map, rewritten by LMDB at commit). Where the record reaches
 * past that page and the file takes O_DIRECT, direct_io.c writes it: the
 * first page through the page cache, the rest straight to the disk,
 * asynchronously. Failures of a write in flight surface at a later put or
 * at finish, naming their image. */
static fst_status put_staged(fst_writer *w, const fst_image *img, char *dst,
                             size_t size)
{
    fst_status s;
    if (dst < w->map || size > w->mapsize ||
        (size_t)(dst - w->map) > w->mapsize - size)     /* cannot happen */
        return fst__record_encode_checked(img, w->gen, dst, size);
    size_t ps = (size_t)w->psize;
    off_t off = (off_t)(dst - w->map);
    if (fst__dio_fits(&w->dio, off, size, ps))
        return fst__dio_put(&w->dio, img, w->gen, off, size, ps);
    if (size > w->stagecap) {
        void *p = realloc(w->stage, size);
        if (!p)
            return fst__fail(FST_ENOMEM, "%s: image '%s'", w->tmp, img->name);
        w->stage = p;
        w->stagecap = size;
    }
    FST_TRY(fst__record_encode_checked(img, w->gen, w->stage, size));
    int e = fst__pwrite_all(w->fd, w->stage, size, off);
    if (e)
        return fst__fail_io(e, w->tmp, 0, "%s: writing image '%s'", w->tmp,
                            img->name);
out:
    return s;
}

/* The checks of an image against the store that write nothing: shape,
 * name length, d and dtype (`adopt`: an image with d > 0 sets them in an
 * empty store), and, if the name is present, the record there
 * (*present = true; FST_EEXIST if its content differs). */
static fst_status check_image(fst_writer *w, const fst_image *img, bool adopt,
                              bool *present)
{
    fst_status s = fst__image_check_shape(img);
    if (s)
        return s;
    char b[FST__NAME_MSG];
    size_t kl = strlen(img->name);
    const char *nm = fst__name_for_msg(b, img->name, kl);
    if (kl > w->maxkey)
        return fst__fail(FST_EINVAL, "image '%s': name of %zu bytes is longer "
                         "than the store's key limit of %zu bytes", nm, kl,
                         w->maxkey);
    if (img->d != 0) {
        if (w->d == 0 && adopt) {
            w->d = img->d;
            w->dtype = img->dtype;
        } else if (w->d != 0 && (img->d != w->d || img->dtype != w->dtype)) {
            return fst__fail(FST_EINVAL, "image '%s': %s x %u descriptors; "
                             "the store holds %s x %u", nm,
                             fst_dtype_name(img->dtype), img->d,
                             fst_dtype_name(w->dtype), w->d);
        }
    }
    MDB_val k = { kl, (void *)img->name }, v;
    int rc = mdb_get(w->txn, w->images, &k, &v);
    *present = rc == MDB_SUCCESS;
    if (rc == MDB_NOTFOUND)
        return FST_OK;
    if (rc)
        return fst__from_mdb(rc, "%s: image '%s'", w->path, nm);
    fst_view old;
    if ((s = fst__image_check(img)))    /* NaN/Inf still comes first */
        return s;
    s = fst__record_decode(v.mv_data, v.mv_size, k.mv_data, k.mv_size,
                           FST__DEC_CHECKSUM, &old, NULL);
    if (s)
        return fst__failpre(s, "%s: image '%s' (already in the store): ",
                            w->path, nm);
    if (!fst__image_same(&old, img))
        return fst__fail(FST_EEXIST, "image '%s' is already in %s with "
                         "different content", nm, w->path);
    return FST_OK;
}

fst_status fst_writer_has(fst_writer *w, const char *name, bool *present)
{
    if (w->failed)
        return fst__fail(FST_EINVAL, "%s: the writer failed earlier; only "
                         "abort is left", w->path);
    size_t kl = strlen(name);
    *present = false;
    if (kl == 0 || kl > w->maxkey)
        return FST_OK;              /* cannot be a key: put says why */
    MDB_val k = { kl, (void *)name }, v;
    int rc = mdb_get(w->txn, w->images, &k, &v);
    if (rc == MDB_NOTFOUND)
        return FST_OK;
    char b[FST__NAME_MSG];
    if (rc)
        return fst__from_mdb(rc, "%s: image '%s'", w->path,
                             fst__name_for_msg(b, name, kl));
    *present = true;
    return FST_OK;
}

fst_status fst_writer_check(fst_writer *w, const fst_image *img, bool *present)
{
    if (w->failed)
        return fst__fail(FST_EINVAL, "%s: the writer failed earlier; only "
                         "abort is left", w->path);
    return check_image(w, img, false, present);
}

fst_status fst_writer_put(fst_writer *w, const fst_image *img, int *added)
{
    if (w->failed)
        return fst__fail(FST_EINVAL, "%s: the writer failed earlier; only "
                         "abort is left", w->path);
    bool present;
    fst_status s = check_image(w, img, true, &present);
    if (s)
        return fail(w, s);
    if (present) {
        if (added)
            *added = 0;
        return FST_OK;
    }
    char b[FST__NAME_MSG];
    size_t kl = strlen(img->name);
    const char *nm = fst__name_for_msg(b, img->name, kl);
    MDB_val k = { kl, (void *)img->name }, v;
    int rc;

    size_t size = fst__record_size(img, NULL);
    FST_TRY(ensure_room(w, size));
    v.mv_size = size;
    v.mv_data = NULL;
    /* MDB_RESERVE: LMDB only places the record. APPEND encodes it straight
     * into LMDB's (malloc'd) page; CREATE pwrites it there. */
    rc = mdb_put(w->txn, w->images, &k, &v, MDB_RESERVE | MDB_NOOVERWRITE);
    if (rc)
        return fail(w, fst__from_mdb(rc, "%s: writing image '%s'",
                                     w->tmp ? w->tmp : w->path, nm));
    /* The NaN/Inf check is fused with the copy; on failure the half-made
     * record dies with the transaction (the writer only aborts now). */
    if (w->mode == FST_WRITE_CREATE && w->map)
        FST_TRY(put_staged(w, img, v.mv_data, size));
    else
        FST_TRY(fst__record_encode_checked(img, w->gen, v.mv_data, size));
    if (w->mode == FST_WRITE_CREATE) {
        char *lo = v.mv_data, *hi = lo + size;
        if (!w->map)
            drop_mapping(lo, size, true);
        if (!w->batch_hi || lo < w->batch_lo)
            w->batch_lo = lo;
        if (hi > w->batch_hi)
            w->batch_hi = hi;
    }
    if (w->mode == FST_WRITE_APPEND && !w->has_pending &&
        (s = open_pending(w, true)))
        return fail(w, s);
    if (w->mode == FST_WRITE_APPEND) {
        unsigned char g[8];
        for (int i = 0; i < 8; i++)
            g[i] = (unsigned char)(w->gen >> (8 * i));
        MDB_val gv = { 8, g };
        rc = mdb_put(w->txn, w->pending, &k, &gv, 0);
        if (rc)
            return fail(w, fst__from_mdb(rc, "%s: writing image '%s'",
                                         w->path, nm));
    }
    w->add_images++;
    w->add_keypoints += img->n;
    w->add_payload += fst__image_data_bytes(img);
    w->add_so |= img->scales || img->oris ||
                 (img->flags & (FST_VIEW_HAS_SCALES | FST_VIEW_HAS_ORIS));
    w->batch_records++;
    w->batch_bytes += size;
    w->batch_pages += (size + 16 + w->psize - 1) / w->psize;
    if (w->batch_records >= w->max_records || w->batch_bytes >= w->max_bytes)
        FST_TRY(commit(w, true));
    if (added)
        *added = 1;
    return FST_OK;
out:
    return fail(w, s);
}

/* 16 bytes from the kernel's random pool (getrandom never returns short
 * for 16 bytes once the pool is initialized; EINTR is retried). */
static fst_status random_id(const char *path, uint8_t id[16])
{
    size_t got = 0;
    while (got < 16) {
        ssize_t n = getrandom(id + got, 16 - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return fst__fail(FST_EIO, "%s: drawing the store's id (getrandom): "
                             "%s", path, n < 0 ? strerror(errno) : "no bytes");
        got += (size_t)n;
    }
    return FST_OK;
}

static fst_status write_meta(fst_writer *w, const fst_source *src)
{
    MDB_txn *t = w->txn;
    MDB_dbi m = w->meta;
    int64_t now = (int64_t)time(NULL);
    const fst_store_meta *o = &w->old;
    int rc = 0;
    /* The id is drawn once, at creation, and kept by every append; a
     * format 1.0 store gets one at its first append (it becomes 1.1). */
    uint8_t id[16];
    if (w->mode == FST_WRITE_APPEND && o->has_id) {
        memcpy(id, o->id, sizeof id);
    } else {
        fst_status s = random_id(w->path, id);
        if (s)
            return s;
    }
    MDB_val idk = { strlen(FST_META_STORE_ID), (void *)FST_META_STORE_ID };
    MDB_val idv = { sizeof id, id };
    /* The history gets this write's entry: its generation and a random
     * write id (FORMAT.md, "Identity"). */
    MDB_val hk = { strlen(FST_META_HISTORY), (void *)FST_META_HISTORY }, hv;
    size_t hold = 0;
    if (w->mode == FST_WRITE_APPEND && o->has_id) {
        rc = mdb_get(t, m, &hk, &hv);
        if (rc && rc != MDB_NOTFOUND)
            return fst__from_mdb(rc, "%s: reading metadata", w->path);
        hold = rc ? 0 : hv.mv_size - hv.mv_size % FST_HISTORY_ENTRY;
        rc = 0;
    }
    unsigned char *hist = malloc(hold + FST_HISTORY_ENTRY);
    if (!hist)
        return fst__fail(FST_ENOMEM, "%s: writing metadata", w->path);
    if (hold)
        memcpy(hist, hv.mv_data, hold);
    for (int i = 0; i < 8; i++)
        hist[hold + (size_t)i] = (unsigned char)(w->gen >> (8 * i));
    fst_status hs = random_id(w->path, hist + hold + 8);
    if (hs) {
        free(hist);
        return hs;
    }
    hv.mv_size = hold + FST_HISTORY_ENTRY;
    hv.mv_data = hist;
#define PUT(call) do { if (rc == 0) rc = (call); } while (0)
    PUT(fst__meta_put_u64(t, m, FST_META_FORMAT_MAJOR, FST_FORMAT_MAJOR));
    /* 1.2 only once a record needs it: a 1.1 featstore reads the store
     * whole, without the scales and oris it does not know (FORMAT.md). */
    bool so = w->add_so || (w->mode == FST_WRITE_APPEND &&
                            o->format_minor >= FST_FORMAT_MINOR_SO);
    PUT(fst__meta_put_u64(t, m, FST_META_FORMAT_MINOR,
                          so ? FST_FORMAT_MINOR_SO : FST_FORMAT_MINOR));
    PUT(fst__meta_put_str(t, m, FST_META_VERSION, FST_VERSION_STRING));
    PUT(fst__meta_put_u64(t, m, FST_META_D, w->d));
    PUT(fst__meta_put_u64(t, m, FST_META_DTYPE, w->d ? (uint64_t)w->dtype
                                                     : 0));
    PUT(fst__meta_put_u64(t, m, FST_META_N_IMAGES,
                          o->n_images + w->add_images));
    PUT(fst__meta_put_u64(t, m, FST_META_N_KEYPOINTS,
                          o->n_keypoints + w->add_keypoints));
    PUT(fst__meta_put_u64(t, m, FST_META_PAYLOAD_BYTES,
                          o->payload_bytes + w->add_payload));
    if (src) {
        PUT(fst__meta_put_str(t, m, FST_META_SOURCE_NAME,
                              src->name ? src->name : ""));
        PUT(fst__meta_put_u64(t, m, FST_META_SOURCE_SIZE, src->size));
        PUT(fst__meta_put_u64(t, m, FST_META_SOURCE_MTIME,
                              (uint64_t)src->mtime));
    } else if (w->mode == FST_WRITE_CREATE) {
        PUT(fst__meta_put_str(t, m, FST_META_SOURCE_NAME, ""));
        PUT(fst__meta_put_u64(t, m, FST_META_SOURCE_SIZE, 0));
        PUT(fst__meta_put_u64(t, m, FST_META_SOURCE_MTIME, 0));
    }
    PUT(fst__meta_put_u64(t, m, FST_META_CREATED, (uint64_t)(
        w->mode == FST_WRITE_CREATE ? now : o->created)));
    PUT(fst__meta_put_u64(t, m, FST_META_MODIFIED, (uint64_t)now));
    PUT(fst__meta_put_u64(t, m, FST_META_GENERATION, w->gen));
    PUT(mdb_put(t, m, &idk, &idv, 0));
    PUT(mdb_put(t, m, &hk, &hv, 0));
    free(hist);
    if (w->mode == FST_WRITE_APPEND && w->has_pending)
        PUT(mdb_drop(t, w->pending, 0));
    PUT(fst__meta_put_u64(t, m, FST_META_COMPLETE, 1));
#undef PUT
    return fst__from_mdb(rc, "%s: writing metadata", w->tmp ? w->tmp
                                                            : w->path);
}

/* APPEND: LMDB reported the final commit failed (status s), yet its meta
 * page may be in place all the same: a write of the page's tail cut short
 * of its last bytes, which hold nothing new (the transaction id's high
 * bytes), with LMDB's write-back of the old page failing too. Readers then
 * see the append complete. Say what is true: read the generation from the
 * file afresh; if it is this append's, make it durable and succeed. */
static fst_status append_landed(fst_writer *w, fst_status s)
{
    char detail[1024];
    snprintf(detail, sizeof detail, "%s", fst_errdetail());
    mdb_env_close(w->env);          /* LMDB marked it unusable */
    w->env = NULL;
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_dbi meta;
    uint64_t g = 0;
    /* NOLOCK: our exclusive flock keeps every writer out; this only reads */
    int rc = mdb_env_create(&env);
    if (rc == MDB_SUCCESS)
        rc = mdb_env_set_maxdbs(env, FST__MAX_DBS);
    if (rc == MDB_SUCCESS)
        rc = mdb_env_open(env, w->path, MDB_RDONLY | MDB_NOSUBDIR | MDB_NOLOCK,
                          0644);
    if (rc == MDB_SUCCESS)
        rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
    if (rc == MDB_SUCCESS)
        rc = mdb_dbi_open(txn, FST_DB_META, 0, &meta);
    if (rc == MDB_SUCCESS)
        rc = fst__meta_u64(txn, meta, FST_META_GENERATION, &g);
    if (txn)
        mdb_txn_abort(txn);
    if (env)
        mdb_env_close(env);
    if (rc != MDB_SUCCESS || g != w->gen)
        return fst__fail(s, "%s", detail);      /* the store as it was */
    int fd = open(w->path, O_RDONLY | O_CLOEXEC);
    int e = fd < 0 ? errno : fsync(fd) != 0 ? errno : 0;
    if (fd >= 0)
        close(fd);
    if (e)
        return fst__fail(FST_EIO, "%s: the append is complete for readers, "
                         "but syncing it failed: %s (%s)", w->path,
                         strerror(e), detail);
    return FST_OK;
}

fst_status fst_writer_finish(fst_writer *w, const fst_source *src)
{
    fst_status s;
    if (w->failed) {
        s = fst__fail(FST_EINVAL, "%s: the writer failed earlier; nothing "
                      "was written", w->path);
        goto out;
    }
    FST_TRY(fst__dio_drain(&w->dio));      /* CREATE: every record's direct write ended */
    FST_TRY(ensure_room(w, 4096));
    FST_TRY(write_meta(w, src));
    s = commit(w, false);
    if (s && w->mode == FST_WRITE_APPEND)
        s = append_landed(w, s);
    if (s)
        goto out;
    if (w->mode == FST_WRITE_APPEND) {
        /* Committed with LMDB's default fsync: the append is durable. */
        writer_free(w);
        return FST_OK;
    }
    /* The batches were committed without fsync (MDB_NOSYNC): one fsync
     * now, after trimming the file to the pages in use (MDB_WRITEMAP sized
     * it to the map). */
    mdb_env_close(w->env);
    w->env = NULL;
    FST_TRY(trim_and_sync(w->tmp, w->used_pages * w->psize));
    if (rename_noreplace(w->tmp, w->path) != 0) {
        s = fst__fail(errno == EEXIST ? FST_EEXIST : FST_EIO,
                      "%s: renaming %s into place: %s", w->path, w->tmp,
                      strerror(errno));
        goto out;
    }
    unlink(w->tmplock);
    s = fst__fsync_parent(w->path);
    free(w->tmp);                   /* the store is in place: keep it */
    w->tmp = NULL;
out:
    fst_writer_abort(w);
    return s;
}

void fst_writer_abort(fst_writer *w)
{
    if (!w)
        return;
    if (w->txn) {
        mdb_txn_abort(w->txn);
        w->txn = NULL;
    }
    if (w->mode == FST_WRITE_CREATE) {
        if (w->env)
            mdb_env_close(w->env);
        w->env = NULL;
        if (w->tmp)
            unlink(w->tmp);
        if (w->tmplock)
            unlink(w->tmplock);
    } else if (w->env && w->gen && !w->map_lost) {
        /* Best effort: delete this append's committed batches now. If it
         * fails, or cannot be tried (a failed map growth left LMDB without
         * a map), they stay invisible and the next append deletes them. */
        bool any = false;
        if (mdb_txn_begin(w->env, NULL, 0, &w->txn) == MDB_SUCCESS) {
            /* The table as committed (the aborted transaction may have
             * created it); none: nothing was committed. */
            if (open_pending(w, false) == FST_OK && w->has_pending &&
                drop_pending(w, w->gen - 1, &any) == FST_OK && any)
                mdb_txn_commit(w->txn);
            else
                mdb_txn_abort(w->txn);
            w->txn = NULL;
        }
    }
    writer_free(w);
}

void fst__writer_set_batch(fst_writer *w, unsigned records, uint64_t bytes)
{
    w->max_records = records ? records : 1;
    w->max_bytes = bytes ? bytes : 1;
}

const char *fst__writer_tmp_path(const fst_writer *w) { return w->tmp; }

void fst__writer_through_map(fst_writer *w)
{
    w->map = NULL;
    w->no_stage = true;
    fst__dio_stop(&w->dio);
}

bool fst__writer_direct(fst_writer *w, bool on)
{
    bool was = fst__dio_on(&w->dio);
    if (!on)
        fst__dio_stop(&w->dio);
    return was;
}

fst_status fst__store_put_raw(const char *path, const char *table,
                              const char *name, const void *bytes, size_t len)
{
    fst_writer w0, *w = &w0;
    memset(w, 0, sizeof *w);
    w->lockfd = -1;
    fst__dio_init(&w->dio);
    w->path = (char *)path;
    if (stat(path, &w->sb) != 0)
        return fst__fail(FST_EIO, "%s: %s", path, strerror(errno));
    fst_status s = fst__claim_write(path, &w->sb);
    if (s)
        return s;
    s = env_open(w, path, 0, (uint64_t)w->sb.st_size * 2 + len * 2 +
                             MAP_INITIAL);
    MDB_dbi dbi;
    if (s == FST_OK)
        s = begin_txn(w);
    if (s == FST_OK)
        s = fst__from_mdb(mdb_dbi_open(w->txn, table, 0, &dbi), "%s: %s",
                          path, table);
    if (s == FST_OK) {
        MDB_val k = { strlen(name), (void *)name };
        MDB_val v = { len, (void *)bytes };
        s = fst__from_mdb(bytes ? mdb_put(w->txn, dbi, &k, &v, 0)
                                : mdb_del(w->txn, dbi, &k, NULL),
                          "%s: %s: %s", path, table, name);
    }
    if (s == FST_OK) {
        int rc = mdb_txn_commit(w->txn);
        w->txn = NULL;
        s = fst__from_mdb(rc, "%s: commit", path);
    }
    if (w->txn)
        mdb_txn_abort(w->txn);
    if (w->env)
        mdb_env_close(w->env);
    fst__release_write(&w->sb);
    return s;
}
