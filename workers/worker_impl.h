/* worker_impl.h : shared by the workers/ sources; not public.
 *
 * The coordinator <-> worker protocol and two small hash tables.
 *
 * Protocol: a stream socket (socketpair) per worker carrying messages
 *   u32 type, u32 payload length, payload
 * with little-endian integers, strings as u32 length + bytes. Descriptors
 * never cross it: a batch names pairs, a result carries matches0 (as the
 * output's int16/int32) and matching_scores0 (float16) of one pair.
 *
 *   coordinator -> worker   CONFIG  once, first
 *                           BATCH   u32 batch, u32 n, n x (u32 pair, str
 *                                   name0, str name1)
 *   worker -> coordinator   READY   i32 status, str detail, str backend
 *                                   (status != OK: the worker then exits)
 *                           RESULT  u32 batch, u32 pair, i32 status,
 *                                   u32 n0, u32 nmatches, str detail,
 *                                   n0 x index_size bytes matches0,
 *                                   n0 x 2 bytes scores0 (only if OK)
 *                           WORKING u32 batch, u32 first, u32 count: the
 *                                   pairs (positions in the batch) about to
 *                                   be matched, so that a death is blamed
 *                                   on them and not on the whole batch
 *                           DONE    u32 batch  (every pair of it answered)
 *                           FATAL   i32 status, str detail (then exits)
 * A worker matches its batches in the order received and answers every
 * pair of a batch before DONE. End of file on either side ends the worker.
 */
#ifndef FST_WORKER_IMPL_H
#define FST_WORKER_IMPL_H

#include "fst_worker.h"
#include "base_impl.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    FST__MSG_CONFIG = 1,
    FST__MSG_BATCH  = 2,
    FST__MSG_READY  = 3,
    FST__MSG_RESULT = 4,
    FST__MSG_DONE   = 5,
    FST__MSG_FATAL  = 6,
    FST__MSG_WORKING = 7,
};

#define FST__MSG_HDR 8u
#define FST__MSG_MAX ((uint32_t)1 << 30)   /* a larger length is corruption */

/* The worker's configuration (CONFIG). Strings owned by whoever built it. */
typedef struct fst__wconfig {
    const char *store;        /* second image of each pair (and first too,
                                 without query) */
    const char *query;        /* first image store, or "" */
    const char *backend;      /* "cpu", "cuda" */
    const char *params;       /* backend parameter string */
    uint32_t    mutual;
    double      ratio, distance;
    uint32_t    index_size;   /* 2 or 4 */
    uint32_t    chunk;        /* pairs per fst_backend_match_batch call
                                 (0: the whole batch) */
    uint32_t    slot;         /* the worker's number, for messages */
    uint32_t    verify;       /* 1: check each image's checksum the first
                                 time this worker reads it */
    const char *matcher;      /* fst_matcher_conf_text() of a neural
                                 matcher, or "" (nn: the fields above) */
} fst__wconfig;

/* A growing byte buffer: messages are built here and read from here. */
typedef struct fst__buf {
    unsigned char *p;
    size_t len, cap;
    size_t off;               /* read / send position */
} fst__buf;

fst_status fst__buf_reserve(fst__buf *b, size_t more);
void       fst__buf_free(fst__buf *b);
/* Drop the bytes before b->off (after they have been consumed). */
void       fst__buf_compact(fst__buf *b);

/* Building a message: begin, append fields, end (patches the length).
 * Appends never fail once fst__buf_reserve() made room; fst__msg_* grow the
 * buffer themselves and return FST_ENOMEM when they cannot. */
fst_status fst__msg_begin(fst__buf *b, uint32_t type, size_t *start);
fst_status fst__msg_u32(fst__buf *b, uint32_t x);
fst_status fst__msg_i32(fst__buf *b, int32_t x);
fst_status fst__msg_f64(fst__buf *b, double x);
fst_status fst__msg_str(fst__buf *b, const char *s);
fst_status fst__msg_bytes(fst__buf *b, const void *p, size_t n);
/* Reserve n bytes at the end and return where they start (filled by the
 * caller), or NULL on ENOMEM. */
void      *fst__msg_space(fst__buf *b, size_t n);
void       fst__msg_end(fst__buf *b, size_t start);

/* Reading a message payload: a cursor that turns any overrun into
 * `bad = true` (and zeros) instead of reading past the end. */
typedef struct fst__rd {
    const unsigned char *p;
    size_t n, off;
    bool   bad;
} fst__rd;

uint32_t    fst__rd_u32(fst__rd *r);
int32_t     fst__rd_i32(fst__rd *r);
double      fst__rd_f64(fst__rd *r);
/* A string as a pointer into the payload (not NUL-terminated) + length. */
const char *fst__rd_str(fst__rd *r, uint32_t *len);
const void *fst__rd_bytes(fst__rd *r, size_t n);

/* A complete message at b->off? Sets *type and the payload cursor and
 * advances b->off past it. @return 1 yes, 0 need more bytes, FST_EFORMAT
 * (as a negative int) for an impossible length. */
int fst__msg_next(fst__buf *b, uint32_t *type, fst__rd *payload);

/* Blocking I/O for the worker's side: write all of b->p[0..len), read
 * exactly one message into b (b is reset first). */
fst_status fst__write_all(int fd, const void *p, size_t n);
/* @return FST_OK; FST_DONE on a clean end of file before any byte;
 *         FST_EIO; FST_EFORMAT; FST_ENOMEM. */
fst_status fst__read_msg(int fd, fst__buf *b, uint32_t *type, fst__rd *payload);

fst_status fst__wconfig_encode(fst__buf *b, const fst__wconfig *c);
/* Strings point into the payload: copy them before the buffer is reused.
 * On failure every strings[i] is freed and NULL (freeing them again is
 * harmless). @return FST_OK; FST_ENOMEM; FST_EFORMAT. */
fst_status fst__wconfig_decode(fst__rd *r, fst__wconfig *c,
                               char **strings /* 5 malloc'd copies */);

/* ---- hash tables ---- */

uint64_t fst__hash_bytes(const void *p, size_t n);

/* A set of strings, interned: each distinct string gets an id 0, 1, 2...
 * in order of insertion. The strings are copied into an arena. */
typedef struct fst__strtab {
    uint32_t *slots;          /* id + 1, 0 = empty */
    size_t    nslots;
    uint32_t *off;            /* id -> offset in arena */
    uint32_t *len;            /* id -> length */
    size_t    n, cap;
    char     *arena;
    size_t    arena_len, arena_cap;
} fst__strtab;

/* fst__strtab_intern() : the id of (s, n), adding it if new (*added = 1).
 * `added` may be NULL. @return FST_OK; FST_ENOMEM; FST_EINVAL (more than
 * 2^32-2 strings or 4 GiB of text). */
fst_status  fst__strtab_intern(fst__strtab *t, const char *s, size_t n,
                               uint32_t *id, int *added);
/* fst__strtab_find() : the id of (s, n), or UINT32_MAX. */
uint32_t    fst__strtab_find(const fst__strtab *t, const char *s, size_t n);
static inline const char *fst__strtab_str(const fst__strtab *t, uint32_t id)
{
    return t->arena + t->off[id];
}
void        fst__strtab_free(fst__strtab *t);

/* A set of 64-bit values (pairs as i0 << 32 | i1); UINT64_MAX not allowed. */
typedef struct fst__u64set {
    uint64_t *slots;          /* UINT64_MAX = empty */
    size_t    nslots, n;
} fst__u64set;

/* @return 1 if x was added, 0 if present, FST_ENOMEM (negative). */
int  fst__u64set_add(fst__u64set *s, uint64_t x);
bool fst__u64set_has(const fst__u64set *s, uint64_t x);
void fst__u64set_free(fst__u64set *s);

/* fst__pairs_find() : the id of image `name` in p's name table, or
 * UINT32_MAX if no pair names it. */
uint32_t fst__pairs_find(const fst_pairs *p, const char *name);

/* ---- identities of a run's data (identity.c) ---- */

struct fst_store_meta;

/* fst__identity_of_store() : "id=<hex> generation=<g> write=<hex>" (or the
 * format 1.0 fallback "legacy=... generation=<g>", see
 * fst_store_identity()) into buf. */
void fst__identity_of_store(const struct fst_store_meta *m, char *buf, size_t len);

/* fst__identity_of_file() : "h5=<XXH3-128 hex of the bytes>,<size>" of the
 * file at `path` (one read of it) into buf.
 * @return FST_OK; FST_EIO (detail names the file); FST_ENOMEM. */
fst_status fst__identity_of_file(const char *path, char *buf, size_t len);

/* fst__identity_same() : do two identities name the same content? Ids (or
 * file hashes) are compared; generations are not (an append keeps every
 * record as it was). */
bool fst__identity_same(const char *a, const char *b);

typedef enum fst__identity_verdict {
    FST__ID_SAME = 0,     /* the very same content */
    FST__ID_APPENDED,     /* the same store, appended to since: its records
                             are those of then, and more */
    FST__ID_COPY,         /* the same id, another history: a copy appended
                             to separately, or an older copy */
    FST__ID_OTHER,        /* another store or file */
} fst__identity_verdict;

/* fst__identity_check() :
 * How the data now identified by `now` (the store at `path`, or a file
 * hash) relates to what a journal recorded as `old`. Opens the store at
 * `path` only to look up an earlier generation's write id.
 * @return FST_OK with *out set; FST_EIO / FST_ECORRUPT... opening it. */
fst_status fst__identity_check(const char *path, const char *old, const char *now,
                               fst__identity_verdict *out);

/* ---- deadlines (coordinator.c) ---- */

/* fst__stall_limit_ns() :
 * How long a worker matching `pairs` pairs at once may send nothing before
 * it counts as stalled: max(floor_ns, 10 x pair_ns_max x pairs), the
 * slowest per-pair time seen in the run; saturates instead of overflowing
 * (pairs 0 counts as 1). Pure. */
int64_t fst__stall_limit_ns(int64_t floor_ns, int64_t pair_ns_max, uint32_t pairs);

/* ---- time ---- */
int64_t fst__now_ns(void);   /* CLOCK_MONOTONIC */

/* A rate over a sliding window: the last FST__RATE_SLOTS samples of a
 * growing count (pairs done), for the progress line's pairs/s. Zeroed is
 * empty. */
#define FST__RATE_SLOTS 25
typedef struct fst__rate {
    int64_t  t[FST__RATE_SLOTS];
    uint64_t n[FST__RATE_SLOTS];
    unsigned i;               /* samples pushed so far */
} fst__rate;

/* fst__rate_push() : add the sample (now_ns, count) and return the rate,
 * per second, between the oldest sample still in the window and this one;
 * 0 while they lie less than 50 ms apart. */
double fst__rate_push(fst__rate *r, int64_t now_ns, uint64_t count);

#ifdef __cplusplus
}
#endif
#endif
