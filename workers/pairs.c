/* pairs.c : hloc's pairs files, pair keys, and the hash tables behind them. */
#include "worker_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

uint64_t fst__hash_bytes(const void *p, size_t n) { return XXH3_64bits(p, n); }

/* ---- string table ---- */

static fst_status strtab_grow_slots(fst__strtab *t)
{
    size_t ns = t->nslots ? t->nslots * 2 : 1024;
    uint32_t *slots = calloc(ns, sizeof *slots);
    if (!slots) return fst__fail(FST_ENOMEM, "name table of %zu slots", ns);
    for (size_t id = 0; id < t->n; id++) {
        size_t h = fst__hash_bytes(t->arena + t->off[id], t->len[id]) & (ns - 1);
        while (slots[h]) h = (h + 1) & (ns - 1);
        slots[h] = (uint32_t)id + 1;
    }
    free(t->slots);
    t->slots = slots;
    t->nslots = ns;
    return FST_OK;
}

uint32_t fst__strtab_find(const fst__strtab *t, const char *s, size_t n)
{
    if (!t->nslots) return UINT32_MAX;
    size_t h = fst__hash_bytes(s, n) & (t->nslots - 1);
    for (uint32_t v; (v = t->slots[h]); h = (h + 1) & (t->nslots - 1)) {
        uint32_t id = v - 1;
        if (t->len[id] == n && memcmp(t->arena + t->off[id], s, n) == 0)
            return id;
    }
    return UINT32_MAX;
}

fst_status fst__strtab_intern(fst__strtab *t, const char *s, size_t n, uint32_t *id,
                              int *added)
{
    fst_status st;
    uint32_t found = fst__strtab_find(t, s, n);
    if (found != UINT32_MAX) {
        *id = found;
        if (added) *added = 0;
        return FST_OK;
    }
    if (t->n >= UINT32_MAX - 2 || t->arena_len + n + 1 > UINT32_MAX)
        return fst__fail(FST_EINVAL, "too many names");
    if ((t->n + 1) * 2 > t->nslots && (st = strtab_grow_slots(t)))
        return st;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        uint32_t *off = realloc(t->off, cap * sizeof *off);
        if (!off) return fst__fail(FST_ENOMEM, "name table");
        t->off = off;
        uint32_t *len = realloc(t->len, cap * sizeof *len);
        if (!len) return fst__fail(FST_ENOMEM, "name table");
        t->len = len;
        t->cap = cap;
    }
    if (t->arena_len + n + 1 > t->arena_cap) {
        size_t cap = t->arena_cap ? t->arena_cap : 4096;
        while (cap < t->arena_len + n + 1) cap *= 2;
        char *a = realloc(t->arena, cap);
        if (!a) return fst__fail(FST_ENOMEM, "name table");
        t->arena = a;
        t->arena_cap = cap;
    }
    uint32_t nid = (uint32_t)t->n++;
    t->off[nid] = (uint32_t)t->arena_len;
    t->len[nid] = (uint32_t)n;
    memcpy(t->arena + t->arena_len, s, n);
    t->arena[t->arena_len + n] = '\0';
    t->arena_len += n + 1;
    size_t h = fst__hash_bytes(s, n) & (t->nslots - 1);
    while (t->slots[h]) h = (h + 1) & (t->nslots - 1);
    t->slots[h] = nid + 1;
    *id = nid;
    if (added) *added = 1;
    return FST_OK;
}

void fst__strtab_free(fst__strtab *t)
{
    free(t->slots);
    free(t->off);
    free(t->len);
    free(t->arena);
    memset(t, 0, sizeof *t);
}

/* ---- u64 set ---- */

static size_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x;
}

bool fst__u64set_has(const fst__u64set *s, uint64_t x)
{
    if (!s->nslots) return false;
    for (size_t h = mix64(x) & (s->nslots - 1); s->slots[h] != UINT64_MAX;
         h = (h + 1) & (s->nslots - 1))
        if (s->slots[h] == x) return true;
    return false;
}

int fst__u64set_add(fst__u64set *s, uint64_t x)
{
    if ((s->n + 1) * 2 > s->nslots) {
        size_t ns = s->nslots ? s->nslots * 2 : 1024;
        uint64_t *slots = malloc(ns * sizeof *slots);
        if (!slots) return (int)fst__fail(FST_ENOMEM, "pair set of %zu slots", ns);
        memset(slots, 0xff, ns * sizeof *slots);
        for (size_t i = 0; i < s->nslots; i++) {
            uint64_t v = s->slots[i];
            if (v == UINT64_MAX) continue;
            size_t h = mix64(v) & (ns - 1);
            while (slots[h] != UINT64_MAX) h = (h + 1) & (ns - 1);
            slots[h] = v;
        }
        free(s->slots);
        s->slots = slots;
        s->nslots = ns;
    }
    size_t h = mix64(x) & (s->nslots - 1);
    for (; s->slots[h] != UINT64_MAX; h = (h + 1) & (s->nslots - 1))
        if (s->slots[h] == x) return 0;
    s->slots[h] = x;
    s->n++;
    return 1;
}

void fst__u64set_free(fst__u64set *s)
{
    free(s->slots);
    memset(s, 0, sizeof *s);
}

/* ---- keys ---- */

size_t fst_pair_key(const char *name0, const char *name1, char sep, char *buf, size_t len)
{
    size_t n = 0;
    for (int k = 0; k < 2; k++) {
        const char *s = k ? name1 : name0;
        if (k) {
            if (n + 1 < len) buf[n] = sep;
            n++;
        }
        size_t m = strlen(s);
        if (n + 1 < len)
            fst__pair_key_part(s, m < len - 1 - n ? m : len - 1 - n, buf + n);
        n += m;
    }
    if (len) buf[n < len ? n : len - 1] = '\0';
    return n;
}

/* ---- parsing ---- */

struct fst_pairs {
    fst__strtab    names;
    fst_pair      *pairs;
    size_t         n;
    fst_pairs_info info;
};

void fst_pairs_free(fst_pairs *p)
{
    if (!p) return;
    fst__strtab_free(&p->names);
    free(p->pairs);
    free(p);
}

size_t fst_pairs_count(const fst_pairs *p) { return p->n; }
fst_pair fst_pairs_get(const fst_pairs *p, size_t i) { return p->pairs[i]; }
size_t fst_pairs_nnames(const fst_pairs *p) { return p->names.n; }
const char *fst_pairs_name(const fst_pairs *p, uint32_t id) { return fst__strtab_str(&p->names, id); }
const fst_pairs_info *fst_pairs_stats(const fst_pairs *p) { return &p->info; }

fst_status fst_pairs_check_keys(const fst_pairs *p, const bool *skip)
{
    fst_status s = FST_OK;
    fst__strtab parts = {0};
    fst__u64set seen = {0};
    char *buf = NULL;
    size_t cap = 0;
    uint32_t *part = malloc((p->names.n ? p->names.n : 1) * sizeof *part);
    if (!part) return fst__fail(FST_ENOMEM, "pair keys of %zu names", p->names.n);
    /* Each name's key part (hloc: name.replace('/', '-')) as an id: names
     * that differ only by '/' and '-' share one. */
    bool shared = false;
    for (uint32_t id = 0; id < p->names.n; id++) {
        const char *nm = fst__strtab_str(&p->names, id);
        size_t n = p->names.len[id];
        if (n + 1 > cap) {
            char *b = realloc(buf, (n + 1) * 2);
            if (!b) { s = fst__fail(FST_ENOMEM, "pair keys"); goto out; }
            buf = b;
            cap = (n + 1) * 2;
        }
        fst__pair_key_part(nm, n, buf);
        int added;
        FST_TRY(fst__strtab_intern(&parts, buf, n, &part[id], &added));
        shared |= !added;
    }
    if (!shared) goto out;   /* the usual case: no two names can collide */
    /* Keys use '/' between the parts, and parts have none: two pairs share
     * a key exactly when they share both parts. */
    uint64_t collisions = 0;
    size_t first = SIZE_MAX;
    for (size_t k = 0; k < p->n; k++) {
        fst_pair a = p->pairs[k];
        if (skip && (skip[a.i0] || skip[a.i1])) continue;
        int r = fst__u64set_add(&seen, (uint64_t)part[a.i0] << 32 | part[a.i1]);
        if (r < 0) { s = (fst_status)r; goto out; }
        if (r == 0 && !collisions++) first = k;
    }
    if (!collisions) goto out;
    fst_pair b = p->pairs[first], a = b;
    for (size_t e = 0; e < first; e++) {
        a = p->pairs[e];
        if (!(skip && (skip[a.i0] || skip[a.i1])) && part[a.i0] == part[b.i0] &&
            part[a.i1] == part[b.i1])
            break;
    }
    const char *a0 = fst__strtab_str(&p->names, a.i0), *a1 = fst__strtab_str(&p->names, a.i1);
    const char *b0 = fst__strtab_str(&p->names, b.i0), *b1 = fst__strtab_str(&p->names, b.i1);
    size_t kn = fst_pair_key(a0, a1, '/', NULL, 0);
    char *key = malloc(kn + 1);
    if (!key) { s = fst__fail(FST_ENOMEM, "pair keys"); goto out; }
    fst_pair_key(a0, a1, '/', key, kn + 1);
    s = fst__fail(FST_EEXIST, "pairs (%s, %s) and (%s, %s) would both be written to the "
                  "matches.h5 key '%s' (hloc's names_to_pair replaces '/' by '-'), one over "
                  "the other: images %s and %s cannot be told apart there%s%llu colliding "
                  "pair%s in all; rename one of each such image",
                  a0, a1, b0, b1, key, a.i0 != b.i0 ? a0 : a1, a.i0 != b.i0 ? b0 : b1,
                  "; ", (unsigned long long)collisions, collisions > 1 ? "s" : "");
    free(key);
out:
    free(part);
    free(buf);
    fst__strtab_free(&parts);
    fst__u64set_free(&seen);
    return s;
}

uint32_t fst__pairs_find(const fst_pairs *p, const char *name)
{
    return fst__strtab_find(&p->names, name, strlen(name));
}

static bool blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* A growable array of u32. */
typedef struct u32vec { uint32_t *p; size_t n, cap; } u32vec;

static fst_status u32_push(u32vec *v, uint32_t x)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 1024;
        uint32_t *p = realloc(v->p, cap * sizeof *p);
        if (!p) return fst__fail(FST_ENOMEM, "pairs list");
        v->p = p;
        v->cap = cap;
    }
    v->p[v->n++] = x;
    return FST_OK;
}

static fst_status bad_line(const char *fname, uint64_t line, int nf, const char *l, size_t n)
{
    int shown = n > 120 ? 120 : (int)n;
    if (nf == 1)
        return fst__fail(FST_EFORMAT, "%s:%llu: expected 2 image names, found 1: '%.*s%s'",
                         fname, (unsigned long long)line, shown, l, n > 120 ? "..." : "");
    return fst__fail(FST_EFORMAT, "%s:%llu: expected 2 image names, found %d: '%.*s%s'",
                     fname, (unsigned long long)line, nf, shown, l, n > 120 ? "..." : "");
}

/* XXH3-64 of pairs [lo, hi) as "name0\0name1\0" each: the list itself,
 * whatever the file's blanks, comments, line ends or dropped lines. */
static fst_status list_hash(const fst_pairs *p, size_t lo, size_t hi, uint64_t *out)
{
    XXH3_state_t *st = XXH3_createState();
    if (!st) return fst__fail(FST_ENOMEM, "hashing the pairs");
    XXH3_64bits_reset(st);
    for (size_t k = lo; k < hi; k++) {
        fst_pair a = p->pairs[k];
        XXH3_64bits_update(st, fst__strtab_str(&p->names, a.i0), p->names.len[a.i0] + 1);
        XXH3_64bits_update(st, fst__strtab_str(&p->names, a.i1), p->names.len[a.i1] + 1);
    }
    *out = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return FST_OK;
}

fst_status fst_pairs_shard_bounds(const fst_pairs *p, uint32_t k, uint32_t n, size_t *lo,
                                  size_t *hi)
{
    if (n == 0 || k >= n)
        return fst__fail(FST_EINVAL, "shard %u/%u: expected K/N with 0 <= K < N", k, n);
    /* Parts are runs of whole groups (pairs with the same first image are
     * next to each other in hloc's order). Boundary j (0 < j < n) is the
     * group start nearest to j * total / n, so a part is within one group
     * of total / n pairs. Only the list decides: every node computes the
     * same parts. */
    size_t b[2];
    for (int e = 0; e < 2; e++) {
        uint64_t j = (uint64_t)k + (uint64_t)e;
        if (j == 0) { b[e] = 0; continue; }
        if (j == n) { b[e] = p->n; continue; }
        /* target = round(j * total / n), without overflow for any total */
        uint64_t t = (uint64_t)(((unsigned __int128)j * p->n * 2 + n) / (2 * (uint64_t)n));
        size_t up = (size_t)t, down = (size_t)t;
        while (up < p->n && up > 0 && p->pairs[up].i0 == p->pairs[up - 1].i0) up++;
        while (down > 0 && down < p->n && p->pairs[down].i0 == p->pairs[down - 1].i0) down--;
        b[e] = (up - t < t - down) ? up : down;   /* ties: the earlier start */
    }
    *lo = b[0];
    *hi = b[1];
    return FST_OK;
}

fst_status fst_pairs_shard(fst_pairs *p, uint32_t k, uint32_t n)
{
    size_t lo, hi;
    fst_status s = fst_pairs_shard_bounds(p, k, n, &lo, &hi);
    if (s) return s;
    memmove(p->pairs, p->pairs + lo, (hi - lo) * sizeof *p->pairs);
    p->n = hi - lo;
    return FST_OK;
}

fst_status fst_pairs_parse_mem(const char *text, size_t len, const char *fname, fst_pairs **out)
{
    fst_status s = FST_OK;
    u32vec lq = {0}, lr = {0}, rank = {0};  /* lines' first/second ids; rank of a first name */
    uint32_t *count = NULL, *order = NULL;
    fst__u64set kept = {0};
    fst_pairs *p = calloc(1, sizeof *p);
    if (!p) return fst__fail(FST_ENOMEM, "%s", fname);
    p->info.hash = fst__hash_bytes(text, len);
    /* A UTF-8 byte-order mark (Windows editors write one) would otherwise
     * become part of the first name, invisibly. */
    if (len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3)) {
        text += 3;
        len -= 3;
        p->info.bom = 1;
    }

    uint64_t lineno = 0;
    uint32_t nranks = 0;
    const char *end = text + len;
    for (const char *l = text; l < end;) {
        const char *nl = memchr(l, '\n', (size_t)(end - l));
        const char *le = nl ? nl : end;
        lineno++;
        const char *q = l;
        while (q < le && blank(*q)) q++;
        const char *e = le;
        while (e > q && blank(e[-1])) e--;
        if (q < e) {
            if (memchr(q, '\0', (size_t)(e - q))) {
                s = fst__fail(FST_EFORMAT, "%s:%llu: NUL byte in the line", fname,
                              (unsigned long long)lineno);
                goto out;
            }
            const char *f[3];
            size_t fl[3];
            int nf = 0;
            for (const char *c = q; c < e;) {
                const char *b = c;
                while (c < e && !blank(*c)) c++;
                if (nf < 3) {
                    f[nf] = b;
                    fl[nf] = (size_t)(c - b);
                }
                nf++;
                while (c < e && blank(*c)) c++;
            }
            /* hloc splits every line in two (`q, r = p.split()`) and has no
             * comments: a line of two names is a pair, '#' or not. A '#' line
             * hloc would refuse (one name, or three and more) is a comment. */
            if (nf != 2 && *q == '#') {
                p->info.comments++;
            } else if (nf != 2) {
                s = bad_line(fname, lineno, nf, q, (size_t)(e - q));
                goto out;
            } else {
                uint32_t a, b;
                FST_TRY(fst__strtab_intern(&p->names, f[0], fl[0], &a, NULL));
                FST_TRY(fst__strtab_intern(&p->names, f[1], fl[1], &b, NULL));
                while (rank.n < p->names.n)
                    FST_TRY(u32_push(&rank, UINT32_MAX));
                if (rank.p[a] == UINT32_MAX)
                    rank.p[a] = nranks++;
                FST_TRY(u32_push(&lq, a));
                FST_TRY(u32_push(&lr, b));
                p->info.lines++;
                if (a == b && !p->info.first_self_line)
                    p->info.first_self_line = lineno;
            }
        }
        l = nl ? nl + 1 : end;
    }

    /* parse_retrieval: a dict of lists keyed by first name, in order of
     * first appearance; flattened. A stable counting sort by rank. */
    size_t nl = lq.n;
    count = calloc((size_t)nranks + 1, sizeof *count);
    order = malloc((nl ? nl : 1) * sizeof *order);
    p->pairs = malloc((nl ? nl : 1) * sizeof *p->pairs);
    if (!count || !order || !p->pairs) {
        s = fst__fail(FST_ENOMEM, "%s: %zu pairs", fname, nl);
        goto out;
    }
    for (size_t i = 0; i < nl; i++) count[rank.p[lq.p[i]] + 1]++;
    for (uint32_t r = 0; r < nranks; r++) count[r + 1] += count[r];
    for (size_t i = 0; i < nl; i++) order[count[rank.p[lq.p[i]]]++] = (uint32_t)i;

    /* find_unique_new_pairs: keep (i, j) unless (j, i) is kept; a repeat of
     * a kept (i, j) collapses into it. */
    for (size_t k = 0; k < nl; k++) {
        uint32_t i = lq.p[order[k]], j = lr.p[order[k]];
        uint64_t ij = (uint64_t)i << 32 | j, ji = (uint64_t)j << 32 | i;
        if (i != j && fst__u64set_has(&kept, ji)) {
            p->info.reversed++;
            continue;
        }
        int added = fst__u64set_add(&kept, ij);
        if (added < 0) {
            s = (fst_status)added;
            goto out;
        }
        if (!added) {
            p->info.duplicates++;
            continue;
        }
        p->pairs[p->n].i0 = i;
        p->pairs[p->n].i1 = j;
        p->n++;
        if (i == j) p->info.self_pairs++;
    }
    FST_TRY(list_hash(p, 0, p->n, &p->info.list_hash));
    p->info.whole = p->n;
    *out = p;
    p = NULL;
out:
    free(lq.p);
    free(lr.p);
    free(rank.p);
    free(count);
    free(order);
    fst__u64set_free(&kept);
    fst_pairs_free(p);
    return s;
}

fst_status fst_pairs_parse(const char *path, fst_pairs **out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fst__fail(FST_EIO, "pairs file %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return fst__fail(FST_EIO, "pairs file %s: %s", path, strerror(e));
    }
    if (S_ISDIR(sb.st_mode)) {   /* pipes and FIFOs are fine */
        close(fd);
        return fst__fail(FST_EIO, "pairs file %s: is a directory", path);
    }
    size_t cap = (S_ISREG(sb.st_mode) ? (size_t)sb.st_size : 65536) + 1, n = 0;
    char *text = malloc(cap);
    if (!text) {
        close(fd);
        return fst__fail(FST_ENOMEM, "pairs file %s (%zu bytes)", path, cap);
    }
    for (;;) {
        if (n == cap) {
            char *t = realloc(text, cap * 2);
            if (!t) {
                free(text);
                close(fd);
                return fst__fail(FST_ENOMEM, "pairs file %s", path);
            }
            text = t;
            cap *= 2;
        }
        ssize_t r = read(fd, text + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            free(text);
            close(fd);
            return fst__fail(FST_EIO, "pairs file %s: %s", path, strerror(e));
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    close(fd);
    fst_status s = fst_pairs_parse_mem(text, n, path, out);
    free(text);
    return s;
}
