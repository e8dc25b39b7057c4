/* fst_store.h : reading and writing a featstore store.
 *
 * A store is one LMDB environment in a single file (MDB_NOSUBDIR), plus its
 * lock file `<path>-lock` (its reader table; readers write to it). A reader
 * that cannot write the lock file (another user's store, a read-only
 * directory or file system) or asks not to use it (FST_OPEN_NOLOCK, for
 * network file systems) reads without it, and the store is then immutable
 * while it is open: appends are refused. One record per
 * image, keyed by the image name as in the source HDF5 file; the record
 * layout is in fst_format.h and store/FORMAT.md. Any number of processes
 * may read a store at once while one writer appends; readers see a
 * consistent snapshot per transaction and never an unfinished append.
 *
 * Within one process, every fst_store handle on the same file shares one
 * LMDB environment (LMDB breaks if a process opens a file twice), and a
 * process cannot append to a store it has open for reading.
 */
#ifndef FST_STORE_H
#define FST_STORE_H

#include "fst_base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fst_store  fst_store;    /* an open store (read-only) */
typedef struct fst_reader fst_reader;   /* a read transaction */
typedef struct fst_writer fst_writer;   /* the one write handle */

/* Store-wide metadata (the `meta` table). Strings are NUL-terminated and
 * owned by the structure. */
typedef struct fst_store_meta {
    uint32_t  format_major, format_minor;
    char      featstore_version[32];
    uint32_t  d;                    /* descriptor dimension (0: empty store) */
    fst_dtype dtype;                /* descriptor dtype of every record
                                       (0 while d is 0) */
    uint64_t  n_images;
    uint64_t  n_keypoints;          /* summed over images */
    uint64_t  payload_bytes;        /* keypoint + score + descriptor bytes,
                                       summed over images */
    char      source_name[512];     /* file the last import read */
    uint64_t  source_size;
    int64_t   source_mtime;         /* seconds since the epoch */
    int64_t   created;              /* seconds since the epoch */
    int64_t   modified;
    /* Identity (format 1.1): 128 random bits drawn when the store was
     * created (getrandom), kept by every append, and the generation, which
     * every finished write advances (1 after the creating import). A store
     * re-imported at the same path gets another id; a byte copy keeps it.
     * A format 1.0 store has no id (has_id false) until its next append. */
    bool      has_id;
    uint8_t   id[16];
    uint64_t  generation;
    /* 128 random bits drawn by the write that made this generation (valid
     * with has_id): two byte copies of one store appended to separately
     * share the id but not their write ids (fst_store_write_id()). */
    uint8_t   write_id[16];
} fst_store_meta;

/* Length of fst_store_identity()'s text, NUL included. */
#define FST_STORE_IDENTITY_LEN 160

/* fst_store_identity() :
 * What identifies the store's content, as text, into buf (at least
 * FST_STORE_IDENTITY_LEN bytes): "id=<32 hex digits>" for a store with an
 * id; for a format 1.0 store without one, a fallback that changes with
 * any write (but not with a re-import of the same counts within one
 * second): "legacy=<images>,<keypoints>,<bytes>,<created>,<modified>,<d>,
 * <dtype>". The generation is not part of it (see fst_store_meta).
 * Pure function; any thread. */
void fst_store_identity(const fst_store_meta *m, char *buf);

/* Flags of fst_store_open(). */
enum {
    FST_OPEN_CHECKSUMS = 1u << 0,   /* fst_reader_get() verifies XXH3 */
    FST_OPEN_NOLOCK    = 1u << 1,   /* read without the lock file (below) */
};

/* fst_store_open() :
 * Open the store at `path` read-only, for any number of concurrent
 * processes (LMDB lock table sized for 4096 readers; stale reader slots
 * of dead processes are cleared at open). Refuses a store whose format
 * major version is newer than this build's, and a store whose import did
 * not complete. O(1): reads the metadata, scans nothing.
 * `flags`: 0, or FST_OPEN_CHECKSUMS and/or FST_OPEN_NOLOCK.
 * Without the lock file: when FST_OPEN_NOLOCK is given, or the environment
 * variable FST_NO_LOCK is set (to anything but "" or "0"), or the lock file
 * `<path>-lock` cannot be opened for writing nor created (EACCES, EPERM,
 * EROFS: another user's store, a read-only directory or file system),
 * the store is opened with LMDB's MDB_NOLOCK and no lock file is created
 * or touched; only read access to `path` is needed. LMDB's reader table
 * is what stops an append from reusing pages a reader still sees, so such
 * a handle holds a shared flock(2) on the store file while it is open:
 * an append started meanwhile is refused (FST_EEXIST, fst_writer_open()),
 * and this open is refused while an append is in progress. On a file
 * system without flock the handle reads unguarded; a transaction started
 * after the store was written to fails (FST_EIO) instead of reading it.
 * Reading itself is the same either way.
 * *out is owned by the caller: fst_store_close() it. Any thread; a handle
 * may be shared by threads (each with its own reader). Opening the same
 * file again in this process is fine (the handles share one map). A forked
 * child must open its own store; a handle does not survive fork().
 * @return FST_OK; FST_EIO (missing/unreadable, detail names the path, or
 *         the lock file when that is the file at fault);
 *         FST_EFORMAT (not a featstore store, or incomplete import);
 *         FST_EVERSION (newer major version); FST_EINVAL (bad flags, or
 *         this process is appending to the store); FST_EEXIST (without
 *         the lock file: an append is in progress); FST_ENOMEM. */
fst_status fst_store_open(const char *path, unsigned flags, fst_store **out);

/* fst_store_nolock() : true if `st` reads its store without the lock file
 * (see fst_store_open()): the store cannot be appended to while it is
 * open. Any thread. */
bool fst_store_nolock(const fst_store *st);

/* fst_store_close() : close; every reader of this handle must have ended
 * (a live one is a bug: abort). NULL is fine. */
void fst_store_close(fst_store *st);

/* fst_store_path() : the path the store was opened with. Owned by st. */
const char *fst_store_path(const fst_store *st);

/* fst_store_write_id() :
 * The write id of generation `generation` of the store (as of now) into
 * out[0..16): with it a caller that recorded (id, generation, write id)
 * can tell whether today's store descends from that state (appends since)
 * or is another copy that was appended to separately. Any thread.
 * @return FST_OK; FST_ENOTFOUND (no such generation, or one written before
 *         the store had an id); FST_ECORRUPT (history malformed); FST_EIO. */
fst_status fst_store_write_id(fst_store *st, uint64_t generation, uint8_t out[16]);

/* fst_store_meta_get() : copy the store's metadata (as of now: a finished
 * append shows) into *out. Any thread.
 * @return FST_OK; FST_EIO; FST_ECORRUPT (meta table unreadable). */
fst_status fst_store_meta_get(fst_store *st, fst_store_meta *out);

/* fst_reader_begin() :
 * Start a read transaction: a consistent snapshot of the store. A reader
 * is used by one thread at a time; a thread should hold one reader at a
 * time. *out is owned by the caller and ended with fst_reader_end(). Keep
 * transactions short-lived in long-running processes: an open reader pins
 * the snapshot's pages, and when an append has grown the file past this
 * process's map, the next begin waits (up to 30 s) for the process's other
 * readers to end before it remaps. No allocation in steady state (ended
 * readers are reused).
 * @return FST_OK; FST_EIO (e.g. reader table full, or other readers of
 *         this process held too long during a remap); FST_ENOMEM. */
fst_status fst_reader_begin(fst_store *st, fst_reader **out);

/* fst_reader_get() :
 * Find image `name` and describe it in *out. *out points into the shared
 * map: read-only, valid until fst_reader_end(rd) or fst_reader_reset(rd).
 * Bounds are always checked; the checksum too if the store was opened with
 * FST_OPEN_CHECKSUMS. On failure *out is untouched.
 * @return FST_OK; FST_ENOTFOUND; FST_ECORRUPT (detail names store+image);
 *         FST_EVERSION (a record of a newer major format). */
fst_status fst_reader_get(fst_reader *rd, const char *name, fst_view *out);

/* fst_reader_get_verified() :
 * fst_reader_get() that always re-computes the record's XXH3 checksum,
 * whatever the store's open flags: for a caller that verifies each image
 * once (a match worker, the first time it reads an image) rather than on
 * every read. Same view lifetime and threads as fst_reader_get().
 * @return FST_OK; FST_ENOTFOUND; FST_ECORRUPT (checksum or bounds; the
 *         detail names store and image); FST_EVERSION. */
fst_status fst_reader_get_verified(fst_reader *rd, const char *name, fst_view *out);

/* fst_reader_next() :
 * Iterate every image in key order (bytes, as memcmp): the first call gives
 * the first image, each later call the next. Same view lifetime and checks
 * as fst_reader_get(). After FST_ECORRUPT the next call goes on with the
 * following image.
 * @return FST_OK; FST_DONE after the last image (and on every later call);
 *         FST_ECORRUPT (detail names store+image); FST_EVERSION. */
fst_status fst_reader_next(fst_reader *rd, fst_view *out);

/* fst_reader_reset() :
 * Release the snapshot and take a fresh one (sees later appends); views
 * obtained so far become invalid; iteration restarts.
 * @return FST_OK; FST_EIO. */
fst_status fst_reader_reset(fst_reader *rd);

/* fst_reader_end() : end the transaction; every view from it is gone.
 * NULL is fine. */
void fst_reader_end(fst_reader *rd);

/* fst_store_verify() :
 * Re-read every record in one snapshot, re-compute every checksum, check
 * every bound and that d and dtype are the store's. For each bad record
 * call `bad(name, status, detail, ctx)` (name may be a key that is not
 * valid UTF-8; it is NUL-terminated; `detail` is valid during the call).
 * When every record is good, the metadata totals (images, keypoints, data
 * bytes) must match the records; if not, `bad` is called once with the
 * name "(metadata)". `bad` may be NULL. *n_checked and *n_bad receive the
 * counts (either pointer may be NULL). Any thread.
 * @return FST_OK if every record is good; FST_ECORRUPT if any is bad;
 *         FST_EIO. */
typedef void fst_verify_cb(const char *name, fst_status s, const char *detail,
                           void *ctx);
fst_status fst_store_verify(fst_store *st, fst_verify_cb *bad, void *ctx,
                            uint64_t *n_checked, uint64_t *n_bad);

/* ---- writing (used by loaders/) ---- */

/* One image to write. The writer copies everything; the caller keeps
 * ownership of the arrays. Descriptors are n x d row-major in `dtype`, or
 * d x n row-major (hloc's layout, one column per keypoint) when `desc_dn`
 * is set: the writer then transposes them as it copies them into the
 * record, so a loader needs no pass of its own over them. */
typedef struct fst_image {
    const char  *name;
    uint32_t     n, d;
    fst_dtype    dtype;
    uint32_t     flags;          /* FST_VIEW_* */
    int64_t      image_size[2];
    float        uncertainty;    /* NaN if absent */
    const float *keypoints;      /* n x 2 */
    const float *scores;         /* n, or NULL */
    const void  *desc;           /* n x d, or d x n if desc_dn */
    bool         desc_dn;        /* desc is d x n (hloc's layout) */
    const float *scales;         /* n, or NULL (FST_VIEW_HAS_SCALES) */
    const float *oris;           /* n, or NULL (FST_VIEW_HAS_ORIS) */
} fst_image;

/* Modes of fst_writer_open(). */
typedef enum fst_write_mode {
    FST_WRITE_CREATE = 1,   /* new store; refuses an existing path */
    FST_WRITE_APPEND = 2,   /* add to an existing complete store */
} fst_write_mode;

/* fst_writer_open() :
 * CREATE: build a new store at `path` through a temporary file
 * `<path>.tmp-<pid>` that becomes `path` only in fst_writer_finish(); a
 * crash leaves no file at `path`. Stale temporaries of dead processes are
 * removed. APPEND: open the complete store at `path` for adding; nothing is
 * visible to readers before fst_writer_finish(), and a crash leaves the
 * store as it was for every reader (records of an unfinished append are
 * invisible; the next append, or an abort, deletes them). APPEND writes
 * nothing to the file before the first new record is put (except deleting
 * a dead append's leftovers), so an append aborted before then leaves it
 * byte-identical. One writer per store at a time, and none while any
 * process reads the store without its lock file (fst_store_open()). A
 * writer is used by one thread. APPEND needs write access to the store
 * and its lock file (an error names the one refused).
 * @return FST_OK; FST_EEXIST (CREATE over an existing path, or APPEND while
 *         another writer appends or a reader without the lock file has the
 *         store open); FST_EIO; FST_EFORMAT / FST_EVERSION
 *         (APPEND to a bad store); FST_EINVAL (APPEND to a store this
 *         process has open for reading); FST_ENOMEM. */
fst_status fst_writer_open(const char *path, fst_write_mode mode,
                           fst_writer **out);

/* fst_writer_put() :
 * Add one image. An image whose name is already present is skipped if its
 * content is identical (*added = 0) and refused with FST_EEXIST (detail
 * names it) if it differs. A name longer than LMDB's key limit (511
 * bytes), a dtype or d different from the store's (the first image with
 * d > 0 sets them; an image with n = 0 and d = 0 fits any store), or
 * NaN/Inf in keypoints, scores or descriptors is FST_EINVAL with a detail
 * naming the image (and the first bad element). `added` may be NULL.
 * Memory stays bounded: the writer commits a batch every 1000 records or
 * 64 MB (invisible to readers until fst_writer_finish()).
 * @return FST_OK; FST_EINVAL; FST_EEXIST; FST_EFULL (disk or map full);
 *         FST_ECORRUPT (the store's record of that name is damaged);
 *         FST_EIO; FST_ENOMEM. After an error only fst_writer_abort()
 *         (fst_writer_finish() then fails with FST_EINVAL). */
fst_status fst_writer_put(fst_writer *w, const fst_image *img, int *added);

/* fst_writer_has() :
 * *present = whether the store (as this writer sees it: this write's own
 * puts included) holds an image named `name`. Writes nothing; a name that
 * cannot be a key is simply absent.
 * @return FST_OK; FST_EIO; FST_EINVAL (an earlier put failed). */
fst_status fst_writer_has(fst_writer *w, const char *name, bool *present);

/* fst_writer_check() :
 * Every check fst_writer_put(w, img) makes, without writing anything and
 * without failing the writer: FST_OK with *present = true if the store
 * holds an identical image of that name (put would skip it), with
 * *present = false if it holds none (put would add it, unless it fails
 * while writing, or a later image sets d first). Errors as put's:
 * FST_EEXIST (different content, detail names the image and the store),
 * FST_EINVAL, FST_ECORRUPT, FST_EIO. A put commits batches as it goes
 * (invisible, but they grow the file), so an importer that wants a
 * conflicting append refused with the store byte-identical checks the
 * images already present (fst_writer_has()) before its first put. */
fst_status fst_writer_check(fst_writer *w, const fst_image *img,
                            bool *present);

/* Where the data came from, recorded in the meta table at finish. */
typedef struct fst_source {
    const char *name;     /* source file path as given */
    uint64_t    size;
    int64_t     mtime;
} fst_source;

/* fst_writer_finish() :
 * Write the meta table (`src` may be NULL: APPEND keeps the recorded
 * source, CREATE records none), commit, fsync, and (CREATE) rename the
 * temporary file to `path` without replacing anything and fsync the
 * directory. Frees w whatever the result.
 * @return FST_OK; FST_EIO; FST_EFULL; FST_EEXIST (CREATE: `path` appeared
 *         meanwhile); FST_EINVAL (an earlier put failed). On error the
 *         store at `path` is as it was before fst_writer_open(), with one
 *         exception, said in the detail ("the append is complete for
 *         readers, but syncing it failed"): APPEND, when LMDB reported its
 *         last commit failed although its meta page was written (a write
 *         cut short of bytes holding nothing new); the generation is read
 *         back to tell, and FST_OK returned if an fsync then succeeds. */
fst_status fst_writer_finish(fst_writer *w, const fst_source *src);

/* fst_writer_abort() : drop everything written (CREATE: remove the
 * temporary file; APPEND: delete the batches already committed, or leave
 * them invisible for the next append to delete); free w. NULL is fine. */
void fst_writer_abort(fst_writer *w);

#ifdef __cplusplus
}
#endif
#endif
