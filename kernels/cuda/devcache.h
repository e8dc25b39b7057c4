/* kernels/cuda/devcache.h : bookkeeping of the device-resident descriptor
 * cache: which image lives at which offset of one device allocation, LRU
 * eviction, hit counts.
 *
 * Pure host C: it hands out offsets and never touches the device, so that
 * tests/test_cudahost.c checks it without a GPU. Private to kernels/cuda/.
 *
 * Entries are keyed by image name, n, d, dtype and a fingerprint of the
 * descriptor bytes (views from a store name their image; the fingerprint
 * catches a hand-built view that reuses a name for other data). An entry
 * used by a chunk still on the device is busy (its last use > done) and is
 * never evicted, so an upload never overwrites what a running GEMM reads.
 * Entries without a name are transient: dropped at the end of each batch.
 */
#ifndef FST_CUDA_DEVCACHE_H
#define FST_CUDA_DEVCACHE_H

#include "fst_base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fst_cu_cache fst_cu_cache;

typedef struct fst_cu_key {
    const char *name;       /* NULL: transient */
    uint32_t    n, d, dtype;
    uint64_t    fp;         /* fst__cu_fingerprint() of the descriptors */
} fst_cu_key;

typedef struct fst_cu_cache_stats {
    uint64_t capacity, used;     /* bytes */
    uint64_t entries, evictions, clears;
} fst_cu_cache_stats;

/* fst__cu_fingerprint() : a 64-bit hash of the first and last 64 bytes of
 * `bytes` bytes at p (and of `salt`). */
uint64_t fst__cu_fingerprint(const void *p, size_t bytes, uint64_t salt);

/* fst__cu_cache_create() : an empty cache of `capacity` bytes whose offsets
 * are multiples of `align` (a power of two).
 * @return FST_OK; FST_EINVAL; FST_ENOMEM. */
fst_status fst__cu_cache_create(uint64_t capacity, uint64_t align,
                                fst_cu_cache **out);
void fst__cu_cache_destroy(fst_cu_cache *c);     /* NULL is fine */

/* fst__cu_cache_get() :
 * Find `k`, or make room for `bytes` and insert it. Either way the entry is
 * marked used by chunk `seq` (busy until done >= seq) and moves to the
 * front of the LRU order; *off is its offset, *hit says whether its data is
 * already there (else the caller uploads it).
 * Room comes from free space, then from evicting the least recently used
 * entries with last use <= done.
 * @return FST_OK; FST_EFULL (nothing left to evict: the caller waits for the
 *         device and retries with a larger `done`, or clears the cache);
 *         FST_EINVAL (bytes > capacity); FST_ENOMEM (host memory). */
fst_status fst__cu_cache_get(fst_cu_cache *c, const fst_cu_key *k,
                             uint64_t bytes, uint64_t seq, uint64_t done,
                             uint64_t *off, bool *hit);

/* fst__cu_cache_clear() : forget every entry (none may be busy). */
void fst__cu_cache_clear(fst_cu_cache *c);

/* fst__cu_cache_drop_transient() : forget the entries without a name. */
void fst__cu_cache_drop_transient(fst_cu_cache *c);

void fst__cu_cache_stats(const fst_cu_cache *c, fst_cu_cache_stats *out);

#ifdef __cplusplus
}
#endif
#endif
