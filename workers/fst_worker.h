/* fst_worker.h : spawn, feed, supervise and resume worker processes.
 *
 * `featstore match` in library form. fst_match_run() is the coordinator: it
 * reads a pairs file (hloc's format and order), drops the pairs already
 * done (journal of an interrupted run, existing matches.h5), spawns N
 * worker processes (`featstore worker`, each opening the store and its own
 * device), hands out batches of pairs, journals every result durably and
 * writes one hloc matches.h5 at the end. It never reads descriptors and
 * never touches CUDA. fst_worker_main() is the worker's side.
 *
 * Test-only environment hooks, read by the workers (never set them in
 * production; compiled in only with -Dtest_hooks, on by default in all but
 * release and minsize builds, FST_TEST_HOOKS in fst_config.h):
 *   FST_TEST_CRASH_PAIR="name0 name1"  a worker abort()s when it is handed
 *                                      this pair (crash isolation tests);
 *   FST_TEST_HANG_PAIR="name0 name1"   a worker stops itself (SIGSTOP) when
 *                                      it is handed this pair (stall tests);
 *   FST_TEST_PAIR_DELAY_MS=N           a worker sleeps N ms per pair before
 *                                      matching (to kill things mid-run);
 *   FST_TEST_MATCH_LOG=PATH            a worker appends "name0 name1\n" to
 *                                      PATH for every pair it matched;
 *   FST_TEST_FAKE_CUDA="0,2"           the run acts as if CUDA were built; a
 *                                      "cuda" worker whose CUDA_VISIBLE_DEVICES
 *                                      is in the list runs the CPU backend
 *                                      (and logs "cuda=<id>" after the pair),
 *                                      any other fails as a missing device.
 *   FST_TEST_WRITER_STOP=1             read by the coordinator: the process
 *                                      it forks to write matches.h5 stops
 *                                      itself (SIGSTOP) before writing (the
 *                                      writer's deadline tests).
 */
#ifndef FST_WORKER_H
#define FST_WORKER_H

#include "fst_base.h"
#include "fst_kernels.h"
#include "fst_matcher.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- pairs files (workers/pairs.c) ---- */

typedef struct fst_pairs fst_pairs;

/* One unique pair: indices into the pairs' name table. */
typedef struct fst_pair {
    uint32_t i0, i1;
} fst_pair;

/* What parsing saw. */
typedef struct fst_pairs_info {
    uint64_t lines;          /* pair lines read (blank and comment lines not counted) */
    uint64_t comments;       /* '#' lines that are not pairs (see fst_pairs_parse) */
    uint64_t bom;            /* 1: a UTF-8 byte-order mark at the start, removed */
    uint64_t duplicates;     /* dropped: the same (name0, name1) again */
    uint64_t reversed;       /* dropped: (name1, name0) already kept */
    uint64_t self_pairs;     /* kept pairs of an image with itself */
    uint64_t first_self_line;/* line of the first self pair (0: none) */
    uint64_t hash;           /* XXH3-64 of the file's bytes */
    uint64_t list_hash;      /* XXH3-64 of the unique pairs in hloc's order
                                ("name0\0name1\0" each): the same for
                                any file giving the same list */
    uint64_t whole;          /* unique pairs of the whole file (before
                                fst_pairs_shard) */
} fst_pairs_info;

/* fst_pairs_parse() :
 * Read hloc's pairs file `path`: one pair `name0 name1` per line, fields
 * separated by spaces or tabs. Like hloc (`q, r = p.split()`), every line of
 * two names is a pair, whatever its first character: `#1.jpg b.jpg` is the
 * pair (#1.jpg, b.jpg). A line hloc would refuse because it does not hold
 * two names is a comment if its first non-blank character is '#'
 * (`# retrieval, top 20`, `#` alone), else an error. Blank lines, trailing
 * blanks, CRLF line ends, a UTF-8 byte-order mark at the start (removed,
 * info.bom) and a missing final newline are accepted. Pairs come out in hloc's order and orientation
 * (match_features: parse_retrieval groups pairs by first name in order of
 * first appearance; find_unique_new_pairs keeps (i, j) unless (j, i) was
 * kept; exact duplicates collapse). Self pairs are kept (counted in info).
 * *out is the caller's: fst_pairs_free() it.
 * @return FST_OK; FST_EIO (missing/unreadable, detail names the path);
 *         FST_EFORMAT (a line with 1 or 3+ fields, or a NUL byte: the detail
 *         is "PATH:LINE: ..."); FST_ENOMEM. */
fst_status fst_pairs_parse(const char *path, fst_pairs **out);

/* fst_pairs_parse_mem() : the same on `len` bytes of `text`; `fname` names
 * it in messages. */
fst_status fst_pairs_parse_mem(const char *text, size_t len, const char *fname,
                               fst_pairs **out);

/* fst_pairs_free() : NULL is fine. */
void fst_pairs_free(fst_pairs *p);

/* Unique pairs in hloc's order; names; what parsing saw. Names are owned by
 * p, NUL-terminated, valid until fst_pairs_free(). */
size_t          fst_pairs_count(const fst_pairs *p);
fst_pair        fst_pairs_get(const fst_pairs *p, size_t i);
size_t          fst_pairs_nnames(const fst_pairs *p);
const char     *fst_pairs_name(const fst_pairs *p, uint32_t id);
const fst_pairs_info *fst_pairs_stats(const fst_pairs *p);

/* fst_pairs_check_keys() :
 * Refuse two unique pairs that would be written to one matches.h5 key.
 * hloc's names_to_pair replaces '/' by '-' in each name, so (x/y.jpg, b.jpg)
 * and (x-y.jpg, b.jpg) both have the key "x-y.jpg/b.jpg", and one would
 * overwrite the other. Pairs naming an image whose skip[id] is true are left
 * out (skip: one flag per name id, or NULL).
 * @return FST_OK; FST_EEXIST (the detail names both pairs, the two images
 *         and the key, and counts the colliding pairs); FST_ENOMEM. */
fst_status fst_pairs_check_keys(const fst_pairs *p, const bool *skip);

/* fst_pairs_shard_bounds() :
 * Part k of n (0 <= k < n) of the unique pairs, as positions [*lo, *hi) in
 * hloc's order. Parts are disjoint, cover every pair, depend on the list
 * only (the same k/n gives the same pairs on any machine, in any run) and
 * keep locality: the pairs of one first image (contiguous in hloc's order)
 * are never split, and a part is a run of neighbouring groups. Boundary j
 * is the group start nearest to j * total / n pairs, so each part is
 * within one group's size of total / n (a part may be empty when groups
 * are large or n exceeds them).
 * @return FST_OK; FST_EINVAL (n == 0 or k >= n). */
fst_status fst_pairs_shard_bounds(const fst_pairs *p, uint32_t k, uint32_t n,
                                  size_t *lo, size_t *hi);

/* fst_pairs_shard() :
 * Keep only part k of n of the pairs (fst_pairs_shard_bounds), in place.
 * Names, fst_pairs_stats() (info.whole and info.list_hash describe the
 * whole list) are kept. Call it once.
 * @return FST_OK; FST_EINVAL (as fst_pairs_shard_bounds). */
fst_status fst_pairs_shard(fst_pairs *p, uint32_t k, uint32_t n);

/* fst_pair_key() :
 * hloc's names_to_pair(name0, name1, separator=sep): each name with '/'
 * replaced by '-', joined by `sep` ('/' for the current key, '_' for hloc's
 * old one, names_to_pair_old). Writes at most `len` bytes including the
 * NUL (len may be 0) and returns the key's length, as snprintf does. */
size_t fst_pair_key(const char *name0, const char *name1, char sep, char *buf,
                    size_t len);

/* ---- a match run (workers/coordinator.c) ---- */

/* Progress of a run, for a progress display. */
typedef enum fst_run_phase {
    FST_RUN_PREPARING = 0,   /* reading pairs, checking names, importing query */
    FST_RUN_MATCHING  = 1,
    FST_RUN_WRITING   = 2,   /* writing matches.h5 */
} fst_run_phase;

typedef struct fst_run_progress {
    fst_run_phase phase;
    uint64_t total;          /* pairs this run matches (MATCHING) or writes */
    uint64_t done;           /* of those, finished */
    uint64_t failed;         /* isolated or failed pairs */
    uint32_t workers_alive;  /* ready workers */
    uint32_t workers;        /* workers wanted */
    double   elapsed_s;      /* since the phase began */
    double   pairs_per_s;    /* recent rate (MATCHING) */
    double   eta_s;          /* < 0: unknown */
} fst_run_progress;

/* Called a few times a second and when something changes; the display is
 * the caller's. */
typedef void fst_run_progress_cb(const fst_run_progress *p, void *ctx);

/* Called for things a user should hear about as they happen. One line, no
 * newline, starting with "warning: " (a worker died, a pair failed or was
 * isolated, self pairs, skipped pairs, no usable GPU: falling back to the
 * CPU) or "note: " (informational: stopping, discarding an old journal
 * under overwrite, no GPU found in auto mode). */
typedef void fst_run_notice_cb(const char *msg, void *ctx);

typedef struct fst_run_opts {
    const char *store;          /* the store (required) */
    const char *pairs;          /* pairs file (required) */
    const char *output;         /* matches.h5 (required). A symbolic link
                                   is followed: its target is written (the
                                   temporary file and the journal,
                                   <target>.journal, beside it) and the
                                   link stays. An existing file holding
                                   features is refused (FST_EEXIST). */
    const char *query;          /* NULL, or an hloc features.h5 / a store
                                   holding the first image of every pair */
    const char *device;         /* "cpu", "cuda", "cuda:0,2", "auto" (NULL:
                                   "auto") */
    uint32_t    workers;        /* cpu: 0 = one per CPU; cuda: 0 = per device */
    uint32_t    workers_per_device; /* cuda: 0 = 1 */
    uint32_t    threads;        /* cpu backend threads per worker, 0 = 1 */
    const char *backend_params; /* extra "k=v,..." for every worker; NULL */
    fst_match_opts match;       /* matcher options */
    const fst_matcher_conf *matcher; /* NULL or FST_ALGO_NN: `match` above;
                                   else a neural matcher (LightGlue,
                                   SuperGlue: CPU workers only; its weights
                                   and settings are part of the journal's
                                   parameters) */
    uint32_t    index_size;     /* matches0 bytes: 2 (int16, hloc) or 4 */
    bool        overwrite;      /* recompute pairs already in the output;
                                   start a new journal if the old one's
                                   data (store, query) or parameters
                                   differ */
    bool        skip_missing;   /* drop pairs naming unknown images */
    uint32_t    shard_k, shard_n; /* shard_n > 0: match only part shard_k
                                   (0-based) of shard_n of the pairs
                                   (fst_pairs_shard, after hloc's
                                   de-duplication), and record the run in
                                   the output's root attributes
                                   (featstore_shard...) for `featstore
                                   merge`. Names and keys are still checked
                                   over the whole list, so every part
                                   refuses what the whole run would. An
                                   existing output is kept only if it is a
                                   part of this same run (else FST_EEXIST);
                                   with overwrite it is replaced, not
                                   added to. */
    uint32_t    batch_pairs;    /* most pairs per batch (0: 128) */
    uint32_t    commit_pairs;   /* journal commit every N results (0: 512) */
    uint32_t    commit_ms;      /* ... or every T ms (0: 250) */
    const char *worker_exe;     /* featstore binary (NULL: /proc/self/exe) */
    int         stop_fd;        /* -1, or a fd that becomes readable with
                                   one byte (a signal number) per request to
                                   stop: the first stops handing out work and
                                   lets batches in flight finish, the second
                                   drops them. Either way what is done is
                                   committed and the run returns FST_EINTR. */
    int64_t     t_launch_ns;    /* CLOCK_MONOTONIC of the process launch, for
                                   first_pair_ms (0: the call) */
    fst_run_progress_cb *progress;
    fst_run_notice_cb   *notice;
    void        *ctx;           /* passed to progress and notice */
    bool        no_verify;      /* workers skip checking each image's XXH3
                                   checksum the first time they read it */
    double      stall_timeout_s;/* a worker with work that sends nothing for
                                   max(this, 10 x the slowest per-pair time
                                   seen x its pairs in hand) is killed and its
                                   pairs requeued; also bounds the graceful
                                   stop (at most min(this, 10 s)).
                                   0: 60 s (cpu), 150 s (cuda), 600 s
                                   (a neural matcher) */
} fst_run_opts;

/* fst_run_opts_default() : hloc's NN-mutual, int16, auto device, no
 * callbacks, stop_fd -1. The three paths must still be set. */
fst_run_opts fst_run_opts_default(void);

/* A pair the run could not match. */
typedef struct fst_run_failure {
    char      *name0, *name1;
    fst_status status;       /* FST_ECHILD: it killed workers */
    char      *detail;
} fst_run_failure;

typedef struct fst_run_stats {
    /* pairs */
    uint64_t pairs_lines;      /* pair lines in the file */
    uint64_t pairs_unique;     /* after hloc's de-duplication */
    uint64_t pairs_self;
    uint64_t pairs_duplicates; /* lines dropped: the same pair again */
    uint64_t pairs_reversed;   /* lines dropped: the reverse of a kept pair */
    uint64_t pairs_missing;    /* dropped by skip_missing */
    uint64_t pairs_existing;   /* already in the output (skipped) */
    uint64_t pairs_resumed;    /* already in the journal (skipped) */
    uint64_t journal_stale;    /* journaled pairs this list no longer has
                                  (deleted from the journal, not written) */
    uint64_t pairs_todo;       /* handed to workers by this run */
    uint64_t pairs_matched;    /* matched and journaled by this run */
    uint64_t pairs_failed;     /* failures[] */
    uint64_t pairs_written;    /* pairs written into the output file */
    uint64_t matches;          /* sum of matches over pairs_matched */
    uint64_t names_missing;    /* distinct unknown image names */
    uint64_t pairs_bom;        /* 1: pairs file began with a UTF-8 BOM (removed) */
    uint64_t pairs_shard;      /* with shard_n: the unique pairs of this
                                  part (pairs_unique counts the whole list) */
    /* time */
    double   wall_s;           /* the whole call */
    double   match_s;          /* first worker spawned to last result */
    double   write_s;          /* writing matches.h5 */
    double   first_pair_ms;    /* launch to first journaled pair (< 0: none) */
    /* processes */
    uint32_t workers;          /* workers run at once */
    uint32_t worker_restarts;  /* workers started to replace dead ones */
    uint64_t peak_pss;         /* bytes: peak of the sum of PSS over the
                                  coordinator and its workers, sampled
                                  every 200 ms (less often where a sample
                                  costs more than 2% of the time: stores
                                  of tens of GB) and at the end */
    uint64_t store_bytes;      /* the store file's size */
    char     device[64];       /* "cpu", "cuda:0,1" */
    char     backend[16];      /* "cpu", "cuda" */
    int      signal;           /* the signal that stopped the run, or 0 */
    bool     output_written;
    fst_run_failure *failures;
    size_t   n_failures;
    bool     verified;         /* workers checked each image's checksum */
    uint32_t worker_stalls;    /* workers killed for making no progress */
} fst_run_stats;

/* fst_match_run() :
 * Run the whole job described by `opts`. Never prints (see the callbacks);
 * spawns and reaps its workers, and forks one child that writes matches.h5
 * (so that an HDF5 write failure cannot take the coordinator down);
 * everything it creates besides the output and the journal is removed
 * before it returns. Nothing it waits for waits without a deadline: a
 * stalled worker or writer is killed (see stall_timeout_s), the graceful
 * stop is bounded. Call it from a single-threaded process. *stats (zeroed first) is
 * filled as far as the run got; free it with fst_run_stats_free(). One run
 * per process at a time.
 * @return FST_OK: every pair done, output written, journal removed;
 *         FST_ECHILD: output written with every pair but stats->failures
 *           (pairs that failed or kept killing workers), or workers kept
 *           dying and the run gave up (journal kept, detail says why);
 *         FST_EINTR: stopped through stop_fd (journal kept: the same call
 *           resumes);
 *         FST_ENOTFOUND: unknown image names (detail lists the first few
 *           and the count);
 *         FST_EEXIST: a journal from a run on other data (another store
 *           or query, or another copy of the store appended to
 *           separately: the detail names both identities) or with other
 *           parameters, or another run on the same output; two pairs with one matches.h5
 *           key (fst_pairs_check_keys); an output holding features. A journal of
 *           the same data and parameters is resumed whatever the pairs
 *           file: the pairs it lists are reused (pairs_resumed), the
 *           others deleted from it (journal_stale);
 *         FST_ENODEVICE: device asked for is not there;
 *         FST_EINVAL, FST_EFORMAT, FST_EIO, FST_EFULL, FST_ENOMEM...: the
 *           detail names the file or pair at fault. */
fst_status fst_match_run(const fst_run_opts *opts, fst_run_stats *stats);

/* fst_run_stats_free() : free what *stats holds; zero it. */
void fst_run_stats_free(fst_run_stats *stats);

/* ---- the worker (workers/worker.c) ---- */

/* fst_worker_main() :
 * The worker process's life: read its configuration from the stream socket
 * `fd`, open the store(s) and the backend, report ready, then match batches
 * until the coordinator closes the socket. Never prints.
 * @return FST_OK after a clean end; else the status that ended it (the
 *         process exits with -status). */
fst_status fst_worker_main(int fd);

#ifdef __cplusplus
}
#endif
#endif
