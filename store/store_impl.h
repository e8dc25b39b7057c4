/* store_impl.h : the store module's private helpers; not public.
 *
 * The first part names no LMDB type and may be used by tests and loaders/
 * (record codec, checks, test hooks). The second part, compiled only when a
 * store/ source defines FST_STORE_LMDB before including this header, holds
 * what the store/ files that use LMDB share (env.c, store.c, meta.c,
 * verify.c, writer.c, journal.c): this header is the one place that
 * includes lmdb.h.
 */
#ifndef FST_STORE_IMPL_H
#define FST_STORE_IMPL_H

#include "base_impl.h"
#include "fst_format.h"
#include "fst_store.h"

#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the record codec (format.c) ---- */

/* fst__record_size() :
 * Bytes of the LMDB value that encodes `img` (>= FST_REC_MIN_SIZE); the
 * payload length goes to *payload_len (may be NULL). 0 if the sizes
 * overflow. Checks nothing else (see fst__image_check()). Any thread. */
size_t fst__record_size(const fst_image *img, uint64_t *payload_len);

/* fst__record_encode() :
 * Encode `img` as a format-1.0 record of generation `gen` into buf[0..len),
 * len == fst__record_size(img). Every byte of buf is written (padding is
 * zero) and the checksum is set. The FST_VIEW_HAS_SCORES flag is set if
 * img->scores is non-NULL. Any thread.
 * @return FST_OK; FST_EINVAL (len is not the record's size); FST_ENOMEM. */
fst_status fst__record_encode(const fst_image *img, uint64_t gen, void *buf,
                              size_t len);

/* fst__record_encode_checked() :
 * fst__record_encode(), checking the arrays for NaN and Inf in the same
 * pass as the copy (the writer's way: one read of the data, not two).
 * After a NaN or Inf, buf holds a whole record that must not be kept, and
 * the detail is fst__image_check()'s. Any thread.
 * @return FST_OK; FST_EINVAL (NaN or Inf, or len is not the size);
 *         FST_ENOMEM (the hash state). */
fst_status fst__record_encode_checked(const fst_image *img, uint64_t gen,
                                      void *buf, size_t len);

/* How fst__record_decode() checks. */
enum {
    FST__DEC_CHECKSUM = 1u << 0,   /* re-compute the XXH3 checksum */
    FST__DEC_ALIGN    = 1u << 1,   /* blocks must be 16-byte aligned in memory */
};

/* What a record's header says besides the view. */
typedef struct fst__rec_info {
    uint64_t generation;    /* the write that added the record */
    uint64_t payload_len;
    uint64_t checksum;      /* as stored */
} fst__rec_info;

/* fst__record_decode() :
 * Check the record val[0..len) and describe it in *out (pointers into val).
 * Bounds are always checked: no byte outside val[0..len) is ever read. If
 * key is non-NULL the name block must equal key[0..keylen). *info (may be
 * NULL) receives generation, payload length and checksum. On failure *out
 * and *info are untouched and the detail says what is wrong, without
 * naming store or image (the caller prefixes them).
 * @return FST_OK; FST_ECORRUPT; FST_EVERSION (a newer major version). */
fst_status fst__record_decode(const void *val, size_t len, const void *key,
                              size_t keylen, unsigned how, fst_view *out,
                              fst__rec_info *info);

/* fst__image_check() :
 * Check an image before writing: a name, a known dtype, arrays present for
 * n > 0, d > 0 when n > 0, and no NaN or Inf in keypoints, scores or
 * descriptors. The detail names the image and the first bad element.
 * @return FST_OK; FST_EINVAL. */
fst_status fst__image_check(const fst_image *img);

/* fst__image_check_shape() : fst__image_check() without the NaN/Inf scans
 * (fst__record_encode_checked() does those while copying).
 * @return FST_OK; FST_EINVAL. */
fst_status fst__image_check_shape(const fst_image *img);

/* fst__image_data_bytes() : keypoint, score and descriptor bytes of an
 * image (what meta `payload_bytes` sums); fst__view_data_bytes() : same
 * for a view. */
uint64_t fst__image_data_bytes(const fst_image *img);
uint64_t fst__view_data_bytes(const fst_view *v);

/* fst__image_same() : true if view v holds exactly img's content (flags,
 * sizes, uncertainty and every array byte for byte). */
bool fst__image_same(const fst_view *v, const fst_image *img);

/* fst__name_for_msg() :
 * Print name[0..len) for an error message into buf (size >= FST__NAME_MSG):
 * as is when short, else its first bytes, "..." and its length in bytes.
 * Returns buf. */
#define FST__NAME_MSG 128
const char *fst__name_for_msg(char *buf, const char *name, size_t len);

/* ---- test and loader hooks (store.c, writer.c) ---- */

/* fst__store_map_range() :
 * The address range of st's memory map, to prove that views point into it.
 * @return FST_OK; FST_EIO. */
fst_status fst__store_map_range(fst_store *st, const void **base, size_t *len);

/* fst__store_stale_cleared() : reader slots of dead processes that
 * fst_store_open() cleared in this handle's lock table. */
unsigned fst__store_stale_cleared(const fst_store *st);

/* fst__store_reader_slots() :
 * Count the reader slots in use in st's lock table (all processes, this one
 * included; a pooled reader of this process keeps its slot).
 * @return FST_OK; FST_EIO. */
fst_status fst__store_reader_slots(fst_store *st, unsigned *n);

/* fst__store_put_raw() :
 * Write bytes[0..len) as the value of key `name` in table `table`
 * (FST_DB_IMAGES or FST_DB_META) of the store file at `path`, replacing
 * what is there, in one committed transaction; bytes == NULL deletes the
 * key. For tests that need hand-made (corrupt) records or meta. The store
 * must not be open in this process.
 * @return FST_OK; FST_EIO; FST_ENOTFOUND (delete of a missing key). */
fst_status fst__store_put_raw(const char *path, const char *table,
                              const char *name, const void *bytes, size_t len);

/* fst__writer_set_batch() :
 * Commit a batch every `records` records or `bytes` payload bytes, whichever
 * comes first (defaults 1000 and 64 MB). For tests of interrupted writes. */
void fst__writer_set_batch(fst_writer *w, unsigned records, uint64_t bytes);

/* fst__writer_through_map() :
 * CREATE: encode records straight into LMDB's map (the fallback used where
 * the map cannot be found in /proc/self/maps) instead of a staging buffer
 * and pwrite. For tests of that path. */
void fst__writer_through_map(fst_writer *w);

/* fst__writer_direct() :
 * CREATE: with on = false, write every record through the page cache from
 * now on instead of writing its whole pages with O_DIRECT. Returns whether
 * O_DIRECT writing was on (the file system took an O_DIRECT open). For
 * tests of both paths. */
bool fst__writer_direct(fst_writer *w, bool on);

/* fst__direct_fail_errno : when non-zero, CREATE's O_DIRECT record writes
 * are not submitted but end as if the kernel had failed them with this
 * errno (EINVAL: O_DIRECT refused, which must fall back to the page cache;
 * ENOSPC, EIO: a failure naming the image). For tests. */
extern int fst__direct_fail_errno;

/* fst__writer_tmp_path() : CREATE: the temporary file being written; NULL
 * in APPEND mode. Owned by w. */
const char *fst__writer_tmp_path(const fst_writer *w);

/* fst__lock_prealloc() : (env.c)
 * Create `<file>-lock` if it is absent and allocate its blocks for at
 * least `maxreaders` reader slots, before mdb_env_open() maps it. LMDB
 * writes its reader table through a shared mapping: on a full disk a store
 * into a page without blocks is SIGBUS, not an error. A lock file this
 * call created is removed again when allocation fails.
 * @return FST_OK; FST_EFULL (no space: detail names the file); FST_EIO. */
fst_status fst__lock_prealloc(const char *file, unsigned maxreaders);

/* fst__lock_usable() : (env.c)
 * Whether this process can use the lock file `<path>-lock` of the store
 * at `path` as LMDB will: *usable = true if it opens read-write or could be
 * created (it is then created, as LMDB would), false if that is refused
 * with EACCES, EPERM or EROFS (another user's store, a read-only directory
 * or file system: fst_store_open() then reads without it; *why, if not
 * NULL, gets that errno).
 * @return FST_OK; FST_EFULL; FST_EIO (any other failure, naming the lock
 *         file); FST_EINVAL (path too long). */
fst_status fst__lock_usable(const char *path, bool *usable, int *why);

/* fst__network_fs() :
 * The name of the network file system holding `path` ("NFS", "Lustre",
 * "GPFS", "BeeGFS", "CephFS", "CIFS"...: statfs(2)'s f_type), or NULL for
 * a local one (or when statfs fails). fst_store_open() reads a store on
 * such a file system without its lock file, as with FST_OPEN_NOLOCK.
 * fst__network_fs_name() : the same from an f_type value. */
const char *fst__network_fs(const char *path);
const char *fst__network_fs_name(unsigned long magic);

#ifdef __cplusplus
}
#endif

/* fst__journal_from_mdb() :
 * The journal's status for LMDB or errno code rc of an operation `what` on
 * the journal at `path`: its own words for MDB_NOTFOUND and for a file that
 * is not a journal (FST_EFORMAT), EIO through fst__fail_io(), anything else
 * as fst__from_mdb() (so ENOSPC and EDQUOT are FST_EFULL here as in the
 * store). rc is an int: this needs no LMDB type. */
fst_status fst__journal_from_mdb(int rc, const char *path, const char *what);

/* ---- shared by the store/ files that use LMDB only ---- */
#ifdef FST_STORE_LMDB
#include <lmdb.h>
#include <pthread.h>
#include <sys/stat.h>

/* Lock table size: the issue asks for >= 1024 concurrent readers. */
#define FST__MAX_READERS 4096
#define FST__MAX_DBS     4

/* fst__from_mdb() : (env.c)
 * Our status for LMDB or errno code rc (MDB_SUCCESS -> FST_OK), with a
 * detail "<what>: <LMDB's message>" (printf format). MDB_NOTFOUND ->
 * FST_ENOTFOUND, MDB_MAP_FULL -> FST_EFULL, MDB_INVALID /
 * MDB_VERSION_MISMATCH -> FST_EFORMAT, an errno as fst__errno_status()
 * says (ENOSPC / EDQUOT -> FST_EFULL, ENOMEM -> FST_ENOMEM), anything else
 * -> FST_EIO. A full map or disk adds " (disk or map full)". */
fst_status fst__from_mdb(int rc, const char *fmt, ...) FST_PRINTF(2, 3);

/* ---- the registry of environments (env.c) ---- */

/* One LMDB environment per store file per process, shared by every
 * fst_store handle on that file. LMDB forbids opening one file twice in a
 * process: the second open takes the lock file's "exclusive" fcntl lock
 * (fcntl locks are per process, so it always succeeds), re-initializes the
 * reader table under the first handle's live readers, and closing either
 * handle drops the other's locks. Measured: a second mdb_env_open() in the
 * same process empties the reader table. So handles share, and a writer on
 * the same file in the same process is refused (fst__claim_write()). */
typedef struct fst__env {
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
    struct fst__env *next;
} fst__env;

struct fst_store {
    fst__env   *sh;
    char       *path;
    unsigned    flags;          /* FST_OPEN_* */
    unsigned    stale_cleared;
    unsigned    live;           /* this handle's live readers (sh->mu) */
};

struct fst_reader {
    fst_store  *st;
    fst__env   *sh;
    MDB_txn    *txn;            /* live, or reset (kept for reuse) */
    MDB_cursor *cur;
    uint64_t    gen;            /* last completed write in this snapshot */
    bool        live;
    bool        iterating;
    fst_reader *next;           /* pool link */
};

/* fst__env_acquire() :
 * The environment of the store file at `path` (`sb` its stat) for a new
 * fst_store handle: this process's one for that file if it has one (one
 * more reference), else opened with `flags` (FST_OPEN_*), its meta table
 * checked, and registered; *stale_cleared then gets the reader slots of
 * dead processes it cleared (else untouched). Any thread.
 * @return FST_OK; FST_EINVAL (this process is writing that file);
 *         fst_store_open()'s failures. */
fst_status fst__env_acquire(const char *path, const struct stat *sb,
                            unsigned flags, fst__env **out,
                            unsigned *stale_cleared);

/* fst__env_release() : drop a reference from fst__env_acquire(); the last
 * one closes the environment and frees its pooled readers. */
void fst__env_release(fst__env *sh);

/* fst__reader_free() : (store.c) close a reader's cursor and transaction
 * and free it (for the environment's reader pool). */
void fst__reader_free(fst_reader *rd);

/* fst__reader_decode() : (store.c)
 * Decode the record at k/v for reader rd as `how` (FST__DEC_*) says and
 * put its view in *out; *visible = false (and *out untouched) for a record
 * of an unfinished append. The detail names the store and the image.
 * @return FST_OK; fst__record_decode()'s failures. */
fst_status fst__reader_decode(fst_reader *rd, const MDB_val *k,
                              const MDB_val *v, unsigned how, fst_view *out,
                              bool *visible);

/* ---- the meta table (meta.c) ---- */

/* fst__meta_u64() : read an 8-byte integer value of the meta table.
 * @return MDB_SUCCESS; MDB_NOTFOUND; MDB_BAD_VALSIZE (not 8 bytes). */
int fst__meta_u64(MDB_txn *txn, MDB_dbi meta, const char *key, uint64_t *v);

/* fst__meta_put_u64() / fst__meta_put_str() : write a meta value. */
int fst__meta_put_u64(MDB_txn *txn, MDB_dbi meta, const char *key, uint64_t v);
int fst__meta_put_str(MDB_txn *txn, MDB_dbi meta, const char *key,
                      const char *s);

/* fst__meta_read() :
 * Fill *out from the meta table and check that the store can be read:
 * format major (FST_EVERSION if newer, detail names both versions) and the
 * complete marker (FST_EFORMAT "incomplete import"). *gen receives the
 * last completed write's generation. `path` names the store in details.
 * @return FST_OK; FST_EFORMAT; FST_EVERSION; FST_ECORRUPT; FST_EIO. */
fst_status fst__meta_read(MDB_txn *txn, MDB_dbi meta, const char *path,
                          fst_store_meta *out, uint64_t *gen);

/* fst__claim_write() : (env.c)
 * Register that this process is about to write the store file `sb`
 * describes through its own LMDB environment (APPEND, raw writes). LMDB
 * breaks when a process opens one file twice, so this refuses if the
 * process has the store open for reading (FST_EINVAL) or is already
 * writing it (FST_EEXIST). fst__release_write() ends the claim.
 * @return FST_OK; FST_EINVAL; FST_EEXIST; FST_ENOMEM. */
fst_status fst__claim_write(const char *path, const struct stat *sb);
void fst__release_write(const struct stat *sb);

#endif /* FST_STORE_LMDB */

#endif /* FST_STORE_IMPL_H */
