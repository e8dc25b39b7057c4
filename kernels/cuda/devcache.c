/* kernels/cuda/devcache.c : offsets, LRU and keys of the device descriptor
 * cache (see devcache.h). Pure host code.
 *
 * The arena is a list of blocks in address order (free neighbours
 * coalesce) with the free blocks also binned by floor(log2(size)), so that
 * finding room costs a few bin probes, not a walk over tens of thousands of
 * entries. */
#include <stdlib.h>
#include <string.h>

#include "base_impl.h"
#include "devcache.h"

typedef struct entry entry;

typedef struct block {
    uint64_t      off, size;
    struct block *prev, *next;    /* address order */
    struct block *fprev, *fnext;  /* its bin, while free */
    entry        *owner;          /* NULL while free */
} block;

struct entry {
    char    *name;                /* NULL: transient */
    uint32_t n, d, dtype;
    uint64_t fp, hash;
    uint64_t last_use;
    block   *blk;
    entry   *lprev, *lnext;       /* LRU: head is the most recent */
    entry   *hnext;               /* hash chain */
};

#define NBINS 64

struct fst_cu_cache {
    uint64_t capacity, align, used;
    block   *bins[NBINS];
    entry  **buckets;
    size_t   nbuckets, nentries;
    entry   *lru_head, *lru_tail;
    block   *first;
    uint64_t evictions, clears;
};

/* ---- hashing ----------------------------------------------------------- */

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

uint64_t fst__cu_fingerprint(const void *p, size_t bytes, uint64_t salt)
{
    uint64_t h = fnv(0xcbf29ce484222325ull, &salt, sizeof salt);
    h = fnv(h, &bytes, sizeof bytes);
    if (!p || bytes == 0)
        return h;
    size_t head = bytes < 64 ? bytes : 64;
    h = fnv(h, p, head);
    if (bytes > 64)
        h = fnv(h, (const unsigned char *)p + bytes - 64, 64);
    return h;
}

static uint64_t key_hash(const fst_cu_key *k)
{
    uint64_t h = 0xcbf29ce484222325ull;
    if (k->name)
        h = fnv(h, k->name, strlen(k->name));
    uint32_t v[3] = { k->n, k->d, k->dtype };
    h = fnv(h, v, sizeof v);
    return fnv(h, &k->fp, sizeof k->fp);
}

static bool key_eq(const entry *e, const fst_cu_key *k, uint64_t h)
{
    if (e->hash != h || e->n != k->n || e->d != k->d || e->dtype != k->dtype ||
        e->fp != k->fp)
        return false;
    if (!e->name || !k->name)
        return !e->name && !k->name;
    return strcmp(e->name, k->name) == 0;
}

/* ---- arena ------------------------------------------------------------- */

static int bin_of(uint64_t size)
{
    return 63 - __builtin_clzll(size);            /* size > 0 */
}

static void bin_insert(fst_cu_cache *c, block *b)
{
    int i = bin_of(b->size);
    b->fprev = NULL;
    b->fnext = c->bins[i];
    if (c->bins[i])
        c->bins[i]->fprev = b;
    c->bins[i] = b;
}

static void bin_remove(fst_cu_cache *c, block *b)
{
    if (b->fprev)
        b->fprev->fnext = b->fnext;
    else
        c->bins[bin_of(b->size)] = b->fnext;
    if (b->fnext)
        b->fnext->fprev = b->fprev;
    b->fprev = b->fnext = NULL;
}

/* A free block of at least `size` bytes, split to size; NULL if none (or
 * no host memory for the split: then the caller sees "full"). */
static block *arena_alloc(fst_cu_cache *c, uint64_t size)
{
    block *b = NULL;
    int i = bin_of(size);
    for (block *f = c->bins[i]; f; f = f->fnext)
        if (f->size >= size) { b = f; break; }
    for (int j = i + 1; !b && j < NBINS; j++)
        b = c->bins[j];                           /* every one fits */
    if (!b)
        return NULL;
    bin_remove(c, b);
    if (b->size > size) {
        block *rest = calloc(1, sizeof *rest);
        if (rest) {
            rest->off = b->off + size;
            rest->size = b->size - size;
            rest->prev = b;
            rest->next = b->next;
            if (b->next)
                b->next->prev = rest;
            b->next = rest;
            b->size = size;
            bin_insert(c, rest);
        }   /* else keep the whole block: wasteful, never wrong */
    }
    return b;
}

static void arena_free(fst_cu_cache *c, block *b)
{
    b->owner = NULL;
    if (b->prev && !b->prev->owner) {             /* merge into prev */
        block *p = b->prev;
        bin_remove(c, p);
        p->size += b->size;
        p->next = b->next;
        if (b->next)
            b->next->prev = p;
        free(b);
        b = p;
    }
    if (b->next && !b->next->owner) {             /* absorb next */
        block *n = b->next;
        bin_remove(c, n);
        b->size += n->size;
        b->next = n->next;
        if (n->next)
            n->next->prev = b;
        free(n);
    }
    bin_insert(c, b);
}

static fst_status arena_reset(fst_cu_cache *c)
{
    block *b = c->first;
    while (b) {
        block *n = b->next;
        free(b);
        b = n;
    }
    memset(c->bins, 0, sizeof c->bins);
    c->first = calloc(1, sizeof *c->first);
    if (!c->first)
        return fst__fail(FST_ENOMEM, "cuda backend: cache bookkeeping");
    c->first->size = c->capacity;
    bin_insert(c, c->first);
    return FST_OK;
}

/* ---- entries ----------------------------------------------------------- */

static void lru_unlink(fst_cu_cache *c, entry *e)
{
    if (e->lprev) e->lprev->lnext = e->lnext; else c->lru_head = e->lnext;
    if (e->lnext) e->lnext->lprev = e->lprev; else c->lru_tail = e->lprev;
    e->lprev = e->lnext = NULL;
}

static void lru_front(fst_cu_cache *c, entry *e)
{
    e->lprev = NULL;
    e->lnext = c->lru_head;
    if (c->lru_head)
        c->lru_head->lprev = e;
    c->lru_head = e;
    if (!c->lru_tail)
        c->lru_tail = e;
}

static void hash_unlink(fst_cu_cache *c, entry *e)
{
    entry **pp = &c->buckets[e->hash % c->nbuckets];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
}

static void evict(fst_cu_cache *c, entry *e)
{
    hash_unlink(c, e);
    lru_unlink(c, e);
    c->used -= e->blk->size;
    arena_free(c, e->blk);
    c->nentries--;
    c->evictions++;
    free(e->name);
    free(e);
}

static void grow_buckets(fst_cu_cache *c)
{
    size_t nb = c->nbuckets * 2;
    entry **b = calloc(nb, sizeof *b);
    if (!b)
        return;                                   /* longer chains: fine */
    for (entry *e = c->lru_head; e; e = e->lnext) {
        e->hnext = b[e->hash % nb];
        b[e->hash % nb] = e;
    }
    free(c->buckets);
    c->buckets = b;
    c->nbuckets = nb;
}

fst_status fst__cu_cache_create(uint64_t capacity, uint64_t align,
                                fst_cu_cache **out)
{
    if (align == 0 || (align & (align - 1)) != 0 || capacity < align)
        return fst__fail(FST_EINVAL, "cuda backend: cache of %llu bytes, "
                         "alignment %llu", (unsigned long long)capacity,
                         (unsigned long long)align);
    fst_cu_cache *c = calloc(1, sizeof *c);
    if (!c)
        return fst__fail(FST_ENOMEM, "cuda backend: cache bookkeeping");
    c->capacity = capacity / align * align;
    c->align = align;
    c->nbuckets = 1024;
    c->buckets = calloc(c->nbuckets, sizeof *c->buckets);
    if (!c->buckets || arena_reset(c) != FST_OK) {
        fst__cu_cache_destroy(c);
        return fst__fail(FST_ENOMEM, "cuda backend: cache bookkeeping");
    }
    *out = c;
    return FST_OK;
}

void fst__cu_cache_clear(fst_cu_cache *c)
{
    while (c->lru_head) {
        entry *e = c->lru_head;
        c->lru_head = e->lnext;
        free(e->name);
        free(e);
    }
    c->lru_tail = NULL;
    memset(c->buckets, 0, c->nbuckets * sizeof *c->buckets);
    c->nentries = 0;
    c->used = 0;
    c->clears++;
    /* a failed reset leaves no free block: every get() then says FULL */
    (void)arena_reset(c);
}

void fst__cu_cache_destroy(fst_cu_cache *c)
{
    if (!c)
        return;
    if (c->buckets)
        fst__cu_cache_clear(c);
    block *b = c->first;
    while (b) {
        block *n = b->next;
        free(b);
        b = n;
    }
    free(c->buckets);
    free(c);
}

void fst__cu_cache_drop_transient(fst_cu_cache *c)
{
    entry *e = c->lru_head;
    while (e) {
        entry *n = e->lnext;
        if (!e->name) {
            evict(c, e);
            c->evictions--;               /* not pressure: do not count */
        }
        e = n;
    }
}

fst_status fst__cu_cache_get(fst_cu_cache *c, const fst_cu_key *k,
                             uint64_t bytes, uint64_t seq, uint64_t done,
                             uint64_t *off, bool *hit)
{
    uint64_t h = key_hash(k);
    for (entry *e = c->buckets[h % c->nbuckets]; e; e = e->hnext) {
        if (key_eq(e, k, h)) {
            e->last_use = seq;
            lru_unlink(c, e);
            lru_front(c, e);
            *off = e->blk->off;
            *hit = true;
            return FST_OK;
        }
    }
    uint64_t size = (bytes + c->align - 1) / c->align * c->align;
    if (size == 0)
        size = c->align;
    if (size > c->capacity)
        return fst__fail(FST_EINVAL, "cuda backend: image %s needs %llu MB, "
                         "the cache holds %llu MB", k->name ? k->name : "",
                         (unsigned long long)(size >> 20),
                         (unsigned long long)(c->capacity >> 20));
    block *b;
    while (!(b = arena_alloc(c, size))) {
        entry *v = c->lru_tail;
        while (v && v->last_use > done)
            v = v->lprev;
        if (!v)
            return FST_EFULL;             /* no detail: the caller handles it */
        evict(c, v);
    }
    entry *e = calloc(1, sizeof *e);
    if (e && k->name && !(e->name = strdup(k->name))) {
        free(e);
        e = NULL;
    }
    if (!e) {
        arena_free(c, b);
        return fst__fail(FST_ENOMEM, "cuda backend: cache bookkeeping");
    }
    e->n = k->n;
    e->d = k->d;
    e->dtype = k->dtype;
    e->fp = k->fp;
    e->hash = h;
    e->last_use = seq;
    e->blk = b;
    b->owner = e;
    c->used += b->size;
    if (c->nentries + 1 > c->nbuckets)
        grow_buckets(c);
    e->hnext = c->buckets[h % c->nbuckets];
    c->buckets[h % c->nbuckets] = e;
    c->nentries++;
    lru_front(c, e);
    *off = b->off;
    *hit = false;
    return FST_OK;
}

void fst__cu_cache_stats(const fst_cu_cache *c, fst_cu_cache_stats *out)
{
    out->capacity = c->capacity;
    out->used = c->used;
    out->entries = c->nentries;
    out->evictions = c->evictions;
    out->clears = c->clears;
}
