/* fst_journal.h : the durable record of finished pairs of a match run.
 *
 * `featstore match` writes every finished pair here first (an LMDB file
 * beside the output, `MATCHES.h5.journal`, plus its lock file
 * `MATCHES.h5.journal-lock`), commits durably in batches, and writes
 * matches.h5 from it only when the run is complete. A run killed at any
 * point loses at most the puts since the last fst_journal_commit(); the
 * same command reads the journal back and goes on.
 *
 * One record per pair, keyed by the caller's pair key: the two image names
 * and the pair's result exactly as it goes into matches.h5 (matches0 as
 * int16 or int32, matching_scores0 as float16), with an XXH3 checksum.
 * A small `meta` table holds the run's parameters as strings.
 *
 * Memory: the file is mapped (LMDB) in a map that starts at 64 MB (or the
 * file's size) and doubles when a transaction needs more, so a journal
 * takes address space in proportion to its size (`ulimit -v` and valgrind
 * are fine). The map's pages a writer or a walk touches are dropped from
 * the process after each commit and as a walk goes, so they do not pile
 * up in its RSS either (they stay in the page cache).
 */
#ifndef FST_JOURNAL_H
#define FST_JOURNAL_H

#include "fst_base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fst_journal fst_journal;

/* Flags of fst_journal_open(). */
enum {
    FST_JOURNAL_CREATE = 1u << 0,   /* create the file if it is missing */
    FST_JOURNAL_RDONLY = 1u << 1,   /* no puts, no lock taken */
};

/* One pair's result as journaled. In a record returned by the journal the
 * pointers point into the journal's map (read-only, any alignment: copy
 * with memcpy) and are valid until the next call on the journal. */
typedef struct fst_journal_rec {
    const char *name0, *name1;   /* NUL-terminated image names */
    uint32_t    n0;              /* keypoints of name0 = elements below */
    uint32_t    nmatches;        /* entries of matches0 != -1 */
    uint32_t    index_size;      /* bytes per matches0 element: 2 or 4 */
    const void *matches0;        /* n0 little-endian int16 / int32, -1 = none */
    const void *scores0;         /* n0 little-endian IEEE float16 */
} fst_journal_rec;

/* fst_journal_open() :
 * Open the journal at `path` (one file, MDB_NOSUBDIR; lock file
 * `<path>-lock`). Without FST_JOURNAL_RDONLY the caller becomes its only
 * writer: an exclusive lock is held on the file until fst_journal_close(),
 * so a second run on the same output is refused. Open file descriptors are
 * close-on-exec. A reader copes with a writer in another process growing
 * the file past its map (it maps the file again). *out is the caller's:
 * fst_journal_close() it.
 * @return FST_OK; FST_ENOTFOUND (missing, no FST_JOURNAL_CREATE);
 *         FST_EEXIST (another process holds it; detail says so);
 *         FST_EFORMAT (not a journal); FST_EIO; FST_ENOMEM. */
fst_status fst_journal_open(const char *path, unsigned flags,
                            fst_journal **out);

/* fst_journal_close() : drop puts not yet committed, release the lock and
 * close. NULL is fine. */
void fst_journal_close(fst_journal *j);

/* fst_journal_remove() :
 * Delete the journal file and its lock file (a missing file is fine). The
 * journal must not be open in this process.
 * @return FST_OK; FST_EIO (detail names the file). */
fst_status fst_journal_remove(const char *path);

/* fst_journal_meta_get() :
 * The string stored under `key` in the meta table, committed or put in the
 * current transaction, into *val (malloc'd, the caller frees).
 * @return FST_OK; FST_ENOTFOUND; FST_EIO; FST_ENOMEM. */
fst_status fst_journal_meta_get(fst_journal *j, const char *key, char **val);

/* fst_journal_meta_put() :
 * Set `key` to `val` in the meta table, as part of the current
 * transaction (durable at the next fst_journal_commit()).
 * @return FST_OK; FST_EINVAL (read-only, key too long); FST_EFULL; FST_EIO;
 *         FST_ENOMEM (also: no address space to grow the map; the journal
 *         is then unusable: close it; what was committed is intact). */
fst_status fst_journal_meta_put(fst_journal *j, const char *key,
                                const char *val);

/* fst_journal_put() :
 * Add (or replace) the record of pair `key` as part of the current
 * transaction; it becomes durable at the next fst_journal_commit(). The
 * journal copies everything. Keys longer than LMDB's limit are stored under
 * a hash of the key (names are in the record, so nothing is lost).
 * The map grows as needed (the transaction is redone in a larger map).
 * @return FST_OK; FST_EINVAL (read-only, index_size not 2 or 4, empty key);
 *         FST_EFULL (disk full, also behind an EIO when the file system
 *         has no space left); FST_EIO; FST_ENOMEM (also: no address space
 *         to grow the map into; the journal is then unusable: close it).
 *         After an error the uncommitted puts are dropped. */
fst_status fst_journal_put(fst_journal *j, const char *key,
                           const fst_journal_rec *rec);

/* fst_journal_del() :
 * Delete the record of pair `key` (the caller's key, or the stored key a
 * walk gives) as part of the current transaction; durable at the next
 * fst_journal_commit(). Call it outside fst_journal_foreach().
 * @return FST_OK; FST_ENOTFOUND (no such record; nothing changes);
 *         FST_EINVAL (read-only); FST_EFULL; FST_EIO; FST_ENOMEM (as
 *         fst_journal_put()). After an error other than FST_ENOTFOUND the
 *         uncommitted puts and deletes are dropped. */
fst_status fst_journal_del(fst_journal *j, const char *key);

/* fst_journal_commit() :
 * Make every put so far durable (LMDB commit with fsync). A no-op when
 * nothing is pending. Then drops the map's pages from the process (RSS).
 * @return FST_OK; FST_EFULL (also an EIO on a full file system); FST_EIO;
 *         FST_ENOMEM (as fst_journal_put()). On error the uncommitted puts
 *         are lost; what was committed before stays. */
fst_status fst_journal_commit(fst_journal *j);

/* fst_journal_pending() : puts since the last commit. */
uint64_t fst_journal_pending(const fst_journal *j);

/* fst_journal_get() :
 * Find pair `key` (committed, or put in the current transaction) and verify
 * its checksum. *out points into the journal: valid until the next call on j.
 * @return FST_OK; FST_ENOTFOUND; FST_ECORRUPT (detail names the key);
 *         FST_EIO. */
fst_status fst_journal_get(fst_journal *j, const char *key,
                           fst_journal_rec *out);

/* fst_journal_count() : number of committed records into *n.
 * @return FST_OK; FST_EIO. */
fst_status fst_journal_count(fst_journal *j, uint64_t *n);

/* Called for each record in key order; returning anything but FST_OK stops
 * the walk with that status. `key` is the stored key (a hash for over-long
 * keys); rec's pointers are valid during the call only. */
typedef fst_status fst_journal_cb(const char *key, const fst_journal_rec *rec,
                                  void *ctx);

/* Flags of fst_journal_foreach(). */
enum {
    FST_JOURNAL_VERIFY = 1u << 0,   /* check each record's checksum */
};

/* fst_journal_foreach() :
 * Walk every committed record in key order (commit first to include the
 * pending puts). Without FST_JOURNAL_VERIFY only the record's header is
 * bounds-checked (fast: names and sizes, e.g. to learn what is done).
 * @return FST_OK; the callback's status; FST_ECORRUPT (detail names the
 *         key); FST_EIO. */
fst_status fst_journal_foreach(fst_journal *j, unsigned flags,
                               fst_journal_cb *cb, void *ctx);

#ifdef __cplusplus
}
#endif
#endif
