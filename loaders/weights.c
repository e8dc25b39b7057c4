/* loaders/weights.c : weight files (fst_weights.h): torch.save's zip and
 * legacy formats and safetensors, into one table of named tensors.
 *
 * The file is mapped read-only and shared; tensors point into the map
 * where its bytes are already contiguous and 64-byte aligned (torch's zip
 * storages), into copies otherwise. The pickles are read by pickle.c,
 * which builds values and never calls anything. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "weights_impl.h"

struct fst_weights {
    char               *name;          /* for messages */
    const uint8_t      *buf;
    size_t              len;
    void               *map;           /* fst_weights_open(): our map */
    const char         *format;
    fst_weights_tensor *t;
    size_t              n, cap;
    size_t             *sorted;        /* tensor indices by name */
    void              **copies;        /* aligned buffers we own */
    size_t              ncopies, capcopies;
    uint64_t            copied, copy_limit;
};

/* data of empty tensors: never NULL, 64-byte aligned */
static _Alignas(64) const uint8_t empty_data[64];

/* ---- dtypes ---- */

static const struct { const char *name, *st; size_t size; } dtypes[] = {
    [FST_WEIGHTS_F32]  = {"float32",  "F32",  4},
    [FST_WEIGHTS_F16]  = {"float16",  "F16",  2},
    [FST_WEIGHTS_BF16] = {"bfloat16", "BF16", 2},
    [FST_WEIGHTS_F64]  = {"float64",  "F64",  8},
    [FST_WEIGHTS_I64]  = {"int64",    "I64",  8},
    [FST_WEIGHTS_I32]  = {"int32",    "I32",  4},
    [FST_WEIGHTS_I16]  = {"int16",    "I16",  2},
    [FST_WEIGHTS_I8]   = {"int8",     "I8",   1},
    [FST_WEIGHTS_U8]   = {"uint8",    "U8",   1},
    [FST_WEIGHTS_BOOL] = {"bool",     "BOOL", 1},
};
#define N_DTYPES (sizeof dtypes / sizeof dtypes[0])

const char *fst_weights_dtype_name(fst_weights_dtype t)
{
    return (unsigned)t < N_DTYPES && dtypes[t].name ? dtypes[t].name : "unknown";
}

size_t fst_weights_dtype_size(fst_weights_dtype t)
{
    return (unsigned)t < N_DTYPES ? dtypes[t].size : 0;
}

char *fst_weights_shape_str(int ndim, const int64_t *shape, char *buf, size_t len)
{
    size_t k = 0;
    if (len == 0)
        return buf;
    buf[0] = 0;
    k += (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && k < len; i++)
        k += (size_t)snprintf(buf + k, len - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < len)
        k += (size_t)snprintf(buf + k, len - k, "]");
    if (k >= len && len > 4)
        memcpy(buf + len - 4, "...", 4);
    return buf;
}

/* Printable copy of a name from the file, for messages. */
static const char *printable(const uint8_t *p, size_t n, char *buf, size_t cap)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 4 < cap; i++)
        buf[k++] = p[i] >= 0x20 && p[i] != 0x7f ? (char)p[i] : '?';
    if (k + 4 >= cap && n > k) {
        memcpy(buf + k, "...", 3);
        k += 3;
    }
    buf[k] = 0;
    return buf;
}

/* ---- the tensor table ---- */

static fst_status keep_copy(fst_weights *w, void *p)
{
    if (w->ncopies == w->capcopies) {
        size_t nc = w->capcopies ? 2 * w->capcopies : 16;
        void **n = realloc(w->copies, nc * sizeof *n);
        if (!n)
            return fst__fail(FST_ENOMEM, "%s: tensor copies", w->name);
        w->copies = n;
        w->capcopies = nc;
    }
    w->copies[w->ncopies++] = p;
    return FST_OK;
}

/* Gather a strided view into dst, element by element (row-major order). */
static void gather(uint8_t *dst, const uint8_t *src, size_t es, int ndim,
                   const int64_t *shape, const int64_t *stride, int64_t numel)
{
    int64_t idx[FST_WEIGHTS_MAX_DIMS] = {0};
    int64_t off = 0;
    for (int64_t k = 0; k < numel; k++) {
        memcpy(dst + (size_t)k * es, src + (size_t)off * es, es);
        for (int d = ndim - 1; d >= 0; d--) {
            if (++idx[d] < shape[d]) {
                off += stride[d];
                break;
            }
            off -= stride[d] * (shape[d] - 1);
            idx[d] = 0;
        }
    }
}

/* Add tensor `name` (klen bytes, not NUL-ended) of `shape` viewing
 * `region` (region_elems elements of dt) at element `offset` with `stride`
 * (NULL: contiguous). `what` names the region in messages. */
static fst_status put_tensor(fst_weights *w, const char *where, const uint8_t *name, size_t klen,
                             fst_weights_dtype dt, int ndim, const int64_t *shape,
                             const int64_t *stride, const uint8_t *region,
                             int64_t region_elems, int64_t offset, const char *what)
{
    char pn[160];
    size_t es = fst_weights_dtype_size(dt);
    FST_ASSERT(es && ndim >= 0 && ndim <= FST_WEIGHTS_MAX_DIMS);
    if (memchr(name, 0, klen))
        return fst__fail(FST_EFORMAT, "%s: tensor name '%s' holds a NUL byte", where,
                         printable(name, klen, pn, sizeof pn));
    fst_weights_tensor t = {.dtype = dt, .ndim = ndim, .numel = 1};
    int64_t rowmajor[FST_WEIGHTS_MAX_DIMS];
    for (int d = ndim - 1; d >= 0; d--) {
        rowmajor[d] = t.numel;
        t.shape[d] = shape[d];
        if (shape[d] < 0 || (shape[d] && t.numel > INT64_MAX / (int64_t)es / shape[d]))
            return fst__fail(FST_EFORMAT, "%s: tensor '%s': shape too large", where,
                             printable(name, klen, pn, sizeof pn));
        t.numel *= shape[d];
    }
    if (!stride)
        stride = rowmajor;
    t.nbytes = (size_t)t.numel * es;
    if (t.numel == 0) {
        t.data = empty_data;
    } else {
        /* the last element the view touches lies inside the region */
        int64_t last = offset;
        bool contiguous = true;
        for (int d = 0; d < ndim; d++) {
            int64_t step;
            if (stride[d] < 0 || __builtin_mul_overflow(shape[d] - 1, stride[d], &step) ||
                __builtin_add_overflow(last, step, &last))
                return fst__fail(FST_EFORMAT, "%s: tensor '%s': stride out of range", where,
                                 printable(name, klen, pn, sizeof pn));
            if (shape[d] != 1 && stride[d] != rowmajor[d])
                contiguous = false;
        }
        if (offset < 0 || last >= region_elems)
            return fst__fail(FST_EFORMAT, "%s: tensor '%s': needs elements %lld..%lld of %s, "
                             "which has %lld", where, printable(name, klen, pn, sizeof pn),
                             (long long)offset, (long long)last, what,
                             (long long)region_elems);
        const uint8_t *src = region + (size_t)offset * es;
        if (contiguous && ((uintptr_t)src & 63) == 0) {
            t.data = src;
        } else {
            /* A view may repeat elements (stride 0: expand()), so a small
             * file could ask for huge copies: they are bounded in all. */
            if (t.nbytes > w->copy_limit - w->copied)
                return fst__fail(FST_EFORMAT, "%s: tensor '%s': copies of views exceed %llu "
                                 "bytes (a view repeating its storage's elements?): "
                                 "refused", where, printable(name, klen, pn, sizeof pn),
                                 (unsigned long long)w->copy_limit);
            uint8_t *dst = aligned_alloc(64, (t.nbytes + 63) & ~(size_t)63);
            if (!dst)
                return fst__fail(FST_ENOMEM, "%s: tensor '%s': %zu bytes", where,
                                 printable(name, klen, pn, sizeof pn), t.nbytes);
            if (keep_copy(w, dst)) {
                free(dst);
                return FST_ENOMEM;
            }
            if (contiguous)
                memcpy(dst, src, t.nbytes);
            else
                gather(dst, src, es, ndim, shape, stride, t.numel);
            w->copied += t.nbytes;
            t.data = dst;
        }
    }
    char *nm = malloc(klen + 1);
    if (!nm)
        return fst__fail(FST_ENOMEM, "%s: tensor names", where);
    memcpy(nm, name, klen);
    nm[klen] = 0;
    t.name = nm;
    if (w->n == w->cap) {
        size_t nc = w->cap ? 2 * w->cap : 64;
        fst_weights_tensor *nt = realloc(w->t, nc * sizeof *nt);
        if (!nt) {
            free(nm);
            return fst__fail(FST_ENOMEM, "%s: tensor table", where);
        }
        w->t = nt;
        w->cap = nc;
    }
    w->t[w->n++] = t;
    return FST_OK;
}

static int by_name_r(const void *a, const void *b, void *ctx)
{
    const fst_weights_tensor *t = ctx;
    return strcmp(t[*(const size_t *)a].name, t[*(const size_t *)b].name);
}

/* The name index; refuses duplicates. */
static fst_status index_names(fst_weights *w)
{
    size_t *ix = malloc((w->n ? w->n : 1) * sizeof *ix);
    if (!ix)
        return fst__fail(FST_ENOMEM, "%s: tensor index", w->name);
    for (size_t i = 0; i < w->n; i++)
        ix[i] = i;
    qsort_r(ix, w->n, sizeof *ix, by_name_r, w->t);
    for (size_t i = 1; i < w->n; i++)
        if (!strcmp(w->t[ix[i - 1]].name, w->t[ix[i]].name)) {
            char pn[160];
            fst_status s = fst__fail(FST_EFORMAT, "%s: tensor '%s' appears twice", w->name,
                                     printable((const uint8_t *)w->t[ix[i]].name,
                                               strlen(w->t[ix[i]].name), pn, sizeof pn));
            free(ix);
            return s;
        }
    free(w->sorted);
    w->sorted = ix;
    return FST_OK;
}

/* ---- torch: the state_dict a pickle built ---- */

typedef struct region {
    const uint8_t *p;
    int64_t        elems;
    char           what[200];
} region;

static fst_status take_state_dict(fst_weights *w, const char *where, const fst__pv *top,
                                  const fst__pk_storage *st, const region *reg)
{
    char pn[160];
    if (top->kind != FST__PV_DICT)
        return fst__fail(FST_EFORMAT, "%s: the pickled object is not a dict of tensors "
                         "(a state_dict) but of type %s", where, fst__pv_kind_name(top));
    for (size_t i = 0; i < top->u.dict.n; i++) {
        const fst__pv *k = top->u.dict.kv[2 * i], *v = top->u.dict.kv[2 * i + 1];
        if (k->kind != FST__PV_STR)
            return fst__fail(FST_EFORMAT, "%s: key %zu of the state_dict is not a string "
                             "but of type %s",
                             where, i, fst__pv_kind_name(k));
        if (v->kind != FST__PV_TENSOR)
            return fst__fail(FST_EFORMAT, "%s: entry '%s' is not a tensor but of type %s%s", where,
                             printable(k->u.s.p, k->u.s.n, pn, sizeof pn),
                             fst__pv_kind_name(v), v->kind == FST__PV_DICT
                             ? " (a checkpoint wrapping the state_dict? LightGlue's and "
                               "SuperGlue's loaders take the state_dict itself)" : "");
        uint32_t si = v->u.tensor.storage;
        const region *r = &reg[si];
        /* a legacy storage view: elements base .. base + count */
        size_t es = fst_weights_dtype_size(st[si].dtype);
        FST_ASSERT(v->u.tensor.base >= 0 && v->u.tensor.count >= 0 &&
                   v->u.tensor.base + v->u.tensor.count <= st[si].numel);
        fst_status s = put_tensor(w, where, k->u.s.p, k->u.s.n, st[si].dtype, v->u.tensor.ndim,
                                  v->u.tensor.shape, v->u.tensor.stride,
                                  r->p + (size_t)v->u.tensor.base * es, v->u.tensor.count,
                                  v->u.tensor.offset, r->what);
        if (s)
            return s;
    }
    return FST_OK;
}

/* Every storage's bytes were found and hold numel elements. */
static fst_status check_regions(const char *where, const fst__pk_storage *st, const region *reg,
                                size_t nst, const uint64_t *avail)
{
    for (size_t i = 0; i < nst; i++) {
        uint64_t need = (uint64_t)st[i].numel * fst_weights_dtype_size(st[i].dtype);
        if (need > avail[i])
            return fst__fail(FST_EFORMAT, "%s: %s holds %llu bytes, its tensors' storage "
                             "needs %llu", where, reg[i].what, (unsigned long long)avail[i],
                             (unsigned long long)need);
    }
    return FST_OK;
}

/* ---- torch zip ---- */

static int entry_cmp(const void *a, const void *b)
{
    const fst__zip_entry *x = a, *y = b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);
    return c ? c : (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

static const fst__zip_entry *find_entry(const fst__zip_entry *sorted, size_t n,
                                        const char *name, size_t len)
{
    fst__zip_entry key = {.name = (const uint8_t *)name, .name_len = len};
    return bsearch(&key, sorted, n, sizeof *sorted, entry_cmp);
}

/* A stored entry's bytes, CRC-checked. */
static fst_status entry_bytes(const char *file, const fst__zip_entry *e, const char *what)
{
    if (e->flags & 1)
        return fst__fail(FST_EFORMAT, "%s: %s is encrypted", file, what);
    if (e->method != 0)
        return fst__fail(FST_EFORMAT, "%s: %s is compressed (zip method %u): torch.save "
                         "stores entries uncompressed; was the file zipped again?", file, what,
                         e->method);
    if (e->size != e->usize)
        return fst__fail(FST_EFORMAT, "%s: %s: stored entry whose sizes differ (%llu, %llu)",
                         file, what, (unsigned long long)e->size, (unsigned long long)e->usize);
    uint32_t crc = fst__crc32(0, e->data, (size_t)e->size);
    if (crc != e->crc)
        return fst__fail(FST_ECORRUPT, "%s: %s fails its CRC-32 (%08x, expected %08x)", file,
                         what, crc, e->crc);
    return FST_OK;
}

static fst_status open_zip(fst_weights *w)
{
    fst__zip_entry *ent = NULL, *sorted = NULL;
    fst__pk *pk = NULL;
    region *reg = NULL;
    uint64_t *avail = NULL;
    char *path = NULL;
    size_t n = 0;
    fst_status s;
    FST_TRY(fst__zip_read(w->buf, w->len, w->name, &ent, &n));
    /* <archive>/data.pkl: one directory level, whatever its name */
    const fst__zip_entry *pkl = NULL;
    bool script = false;
    for (size_t i = 0; i < n; i++) {
        const fst__zip_entry *e = &ent[i];
        const uint8_t *slash = memchr(e->name, '/', e->name_len);
        if (!slash || slash == e->name)
            continue;
        size_t rest = e->name_len - (size_t)(slash + 1 - e->name);
        if (rest == 8 && !memcmp(slash + 1, "data.pkl", 8)) {
            if (pkl) {
                s = fst__fail(FST_EFORMAT, "%s: zip archive with two data.pkl", w->name);
                goto out;
            }
            pkl = e;
        }
        if (rest == 13 && !memcmp(slash + 1, "constants.pkl", 13))
            script = true;
    }
    if (!pkl) {
        s = fst__fail(FST_EFORMAT, "%s: a zip archive without <name>/data.pkl: %s", w->name,
                      script ? "a TorchScript archive (torch.jit.save), not a state_dict"
                             : "not written by torch.save");
        goto out;
    }
    size_t plen = (size_t)((const uint8_t *)memchr(pkl->name, '/', pkl->name_len) - pkl->name);
    char where[512], pn[160];
    snprintf(where, sizeof where, "%s: %s", w->name,
             printable(pkl->name, pkl->name_len, pn, sizeof pn));
    sorted = malloc((n ? n : 1) * sizeof *sorted);
    path = malloc(plen + 64 + 65536);
    if (!sorted || !path) {
        s = fst__fail(FST_ENOMEM, "%s: zip directory", w->name);
        goto out;
    }
    memcpy(sorted, ent, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, entry_cmp);
    memcpy(path, pkl->name, plen);
    /* byteorder (torch >= 2.1): only little-endian files are read */
    memcpy(path + plen, "/byteorder", 10);
    const fst__zip_entry *bo = find_entry(sorted, n, path, plen + 10);
    if (bo) {
        FST_TRY(entry_bytes(w->name, bo, "byteorder"));
        if (bo->size != 6 || memcmp(bo->data, "little", 6)) {
            s = fst__fail(FST_EFORMAT, "%s: a big-endian file (byteorder is not 'little'): "
                          "not supported", w->name);
            goto out;
        }
    }
    FST_TRY(entry_bytes(w->name, pkl, where));
    if (!(pk = fst__pk_new())) {
        s = fst__fail(FST_ENOMEM, "%s", where);
        goto out;
    }
    fst__pv *top;
    size_t used;
    FST_TRY(fst__pk_run(pk, pkl->data, (size_t)pkl->size, where, &top, &used));
    /* the storages: <archive>/data/<key> */
    size_t nst;
    const fst__pk_storage *st = fst__pk_storages(pk, &nst);
    reg = calloc(nst ? nst : 1, sizeof *reg);
    avail = calloc(nst ? nst : 1, sizeof *avail);
    if (!reg || !avail) {
        s = fst__fail(FST_ENOMEM, "%s: storages", w->name);
        goto out;
    }
    for (size_t i = 0; i < nst; i++) {
        size_t klen = st[i].key_len < 65536 ? st[i].key_len : 65536;
        memcpy(path + plen, "/data/", 6);
        memcpy(path + plen + 6, st[i].key, klen);
        size_t total = plen + 6 + klen;
        snprintf(reg[i].what, sizeof reg[i].what, "storage '%s'",
                 printable((const uint8_t *)path, total, pn, sizeof pn));
        const fst__zip_entry *e = st[i].key_len == klen ? find_entry(sorted, n, path, total)
                                                        : NULL;
        if (!e) {
            s = fst__fail(FST_EFORMAT, "%s: %s is missing from the archive", w->name,
                          reg[i].what);
            goto out;
        }
        FST_TRY(entry_bytes(w->name, e, reg[i].what));
        reg[i].p = e->data;
        reg[i].elems = st[i].numel;
        avail[i] = e->size;
    }
    FST_TRY(check_regions(w->name, st, reg, nst, avail));
    FST_TRY(take_state_dict(w, where, top, st, reg));
    w->format = "torch-zip";
out:
    fst__pk_free(pk);
    free(reg);
    free(avail);
    free(path);
    free(sorted);
    free(ent);
    return s;
}

/* ---- torch legacy ---- */

static const uint8_t legacy_magic[10] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8,
                                         0x50, 0x19};   /* 0x1950a86a20f9469cfc6c */

static fst_status open_legacy(fst_weights *w)
{
    fst__pk *pk = fst__pk_new();
    region *reg = NULL;
    uint64_t *avail = NULL;
    bool *seen = NULL;
    fst_status s;
    char where[512];
    size_t pos = 0, used;
    fst__pv *v, *top;
    if (!pk)
        return fst__fail(FST_ENOMEM, "%s", w->name);
    snprintf(where, sizeof where, "%s: legacy pickle 1 (magic number)", w->name);
    FST_TRY(fst__pk_run(pk, w->buf, w->len, where, &v, &used));
    if (v->kind != FST__PV_BIGINT || v->u.s.n != sizeof legacy_magic ||
        memcmp(v->u.s.p, legacy_magic, sizeof legacy_magic)) {
        s = fst__fail(FST_EFORMAT, "%s: a pickle, but not one torch.save wrote (no magic "
                      "number)", w->name);
        goto out;
    }
    pos += used;
    snprintf(where, sizeof where, "%s: legacy pickle 2 (protocol version)", w->name);
    FST_TRY(fst__pk_run(pk, w->buf + pos, w->len - pos, where, &v, &used));
    if (v->kind != FST__PV_INT || v->u.i != 1001) {
        s = fst__fail(FST_EFORMAT, "%s: torch legacy protocol version %lld (1001 is read)",
                      w->name, v->kind == FST__PV_INT ? (long long)v->u.i : -1LL);
        goto out;
    }
    pos += used;
    snprintf(where, sizeof where, "%s: legacy pickle 3 (sys_info)", w->name);
    FST_TRY(fst__pk_run(pk, w->buf + pos, w->len - pos, where, &v, &used));
    if (v->kind != FST__PV_DICT) {
        s = fst__fail(FST_EFORMAT, "%s: sys_info is not a dict but of type %s", where,
                      fst__pv_kind_name(v));
        goto out;
    }
    for (size_t i = 0; i < v->u.dict.n; i++) {
        const fst__pv *k = v->u.dict.kv[2 * i], *x = v->u.dict.kv[2 * i + 1];
        if (k->kind == FST__PV_STR && k->u.s.n == 13 && !memcmp(k->u.s.p, "little_endian", 13)
            && !(x->kind == FST__PV_BOOL && x->u.b)) {
            s = fst__fail(FST_EFORMAT, "%s: written on a big-endian machine: not supported",
                          w->name);
            goto out;
        }
    }
    pos += used;
    char where_sd[512];
    snprintf(where_sd, sizeof where_sd, "%s: legacy pickle 4 (state_dict)", w->name);
    FST_TRY(fst__pk_run(pk, w->buf + pos, w->len - pos, where_sd, &top, &used));
    pos += used;
    snprintf(where, sizeof where, "%s: legacy pickle 5 (storage keys)", w->name);
    fst__pv *keys;
    FST_TRY(fst__pk_run(pk, w->buf + pos, w->len - pos, where, &keys, &used));
    pos += used;
    if (keys->kind != FST__PV_LIST) {
        s = fst__fail(FST_EFORMAT, "%s: not a list but of type %s", where, fst__pv_kind_name(keys));
        goto out;
    }
    size_t nst;
    const fst__pk_storage *st = fst__pk_storages(pk, &nst);
    reg = calloc(nst ? nst : 1, sizeof *reg);
    avail = calloc(nst ? nst : 1, sizeof *avail);
    seen = calloc(nst ? nst : 1, sizeof *seen);
    if (!reg || !avail || !seen) {
        s = fst__fail(FST_ENOMEM, "%s: storages", w->name);
        goto out;
    }
    /* the storages follow in the keys' order: an 8-byte element count,
     * then the bytes */
    char pn[160];
    for (size_t i = 0; i < keys->u.seq.n; i++) {
        const fst__pv *k = keys->u.seq.items[i];
        if (k->kind != FST__PV_STR) {
            s = fst__fail(FST_EFORMAT, "%s: key %zu is not a string but of type %s", where, i, fst__pv_kind_name(k));
            goto out;
        }
        size_t si = fst__pk_storage_find(pk, k->u.s.p, k->u.s.n);
        printable(k->u.s.p, k->u.s.n, pn, sizeof pn);
        if (si == SIZE_MAX) {
            s = fst__fail(FST_EFORMAT, "%s: storage '%s' is listed but no tensor uses it",
                          where, pn);
            goto out;
        }
        if (seen[si]) {
            s = fst__fail(FST_EFORMAT, "%s: storage '%s' is listed twice", where, pn);
            goto out;
        }
        seen[si] = true;
        snprintf(reg[si].what, sizeof reg[si].what, "storage '%s'", pn);
        if (w->len - pos < 8) {
            s = fst__fail(FST_EFORMAT, "%s: storage '%s': truncated file (its size is missing)",
                          w->name, pn);
            goto out;
        }
        uint64_t count = 0;
        for (int b = 7; b >= 0; b--)
            count = count << 8 | w->buf[pos + (size_t)b];
        pos += 8;
        if (count != (uint64_t)st[si].numel) {
            s = fst__fail(FST_EFORMAT, "%s: storage '%s' holds %llu elements, the state_dict "
                          "says %lld", w->name, pn, (unsigned long long)count,
                          (long long)st[si].numel);
            goto out;
        }
        uint64_t bytes = count * fst_weights_dtype_size(st[si].dtype);
        if (bytes > w->len - pos) {
            s = fst__fail(FST_EFORMAT, "%s: storage '%s': %llu bytes at offset %zu, past the end "
                          "of the file (%zu bytes; truncated?)", w->name, pn,
                          (unsigned long long)bytes, pos, w->len);
            goto out;
        }
        reg[si].p = w->buf + pos;
        reg[si].elems = st[si].numel;
        avail[si] = bytes;
        pos += (size_t)bytes;
    }
    for (size_t j = 0; j < nst; j++)
        if (!seen[j]) {
            s = fst__fail(FST_EFORMAT, "%s: storage '%s' has no data in the file", w->name,
                          printable(st[j].key, st[j].key_len, pn, sizeof pn));
            goto out;
        }
    FST_TRY(check_regions(w->name, st, reg, nst, avail));
    FST_TRY(take_state_dict(w, where_sd, top, st, reg));
    w->format = "torch-legacy";
out:
    fst__pk_free(pk);
    free(reg);
    free(avail);
    free(seen);
    return s;
}

/* ---- safetensors ---- */

#define ST_MAX_HEADER (100u << 20)   /* safetensors' own limit */
#define JS_MAX_DEPTH  64

typedef struct js {
    const uint8_t *p, *e;
    const char    *where;
} js;

static fst_status js_fail(js *j, const char *what)
{
    return fst__fail(FST_EFORMAT, "%s: %s", j->where, what);
}

static void js_ws(js *j)
{
    while (j->p < j->e && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static bool js_lit(js *j, char c)
{
    js_ws(j);
    if (j->p < j->e && *j->p == c) {
        j->p++;
        return true;
    }
    return false;
}

static int hexv(uint8_t c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static bool js_hex4(js *j, uint32_t *u)
{
    if (j->e - j->p < 4)
        return false;
    *u = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexv(j->p[i]);
        if (h < 0)
            return false;
        *u = *u << 4 | (uint32_t)h;
    }
    j->p += 4;
    return true;
}

/* A JSON string, decoded into out (cap bytes; the header's size bounds every
 * string, so the caller gives a buffer that large). */
static fst_status js_str(js *j, uint8_t *out, size_t *n)
{
    if (!js_lit(j, '"'))
        return js_fail(j, "header: expected a string");
    size_t k = 0;
    for (;;) {
        if (j->p >= j->e)
            return js_fail(j, "header: unterminated string");
        uint8_t c = *j->p++;
        if (c == '"')
            break;
        if (c < 0x20)
            return js_fail(j, "header: control character in a string");
        if (c != '\\') {
            out[k++] = c;
            continue;
        }
        if (j->p >= j->e)
            return js_fail(j, "header: unterminated string");
        c = *j->p++;
        uint32_t u;
        switch (c) {
        case '"': case '\\': case '/': out[k++] = c; continue;
        case 'b': out[k++] = '\b'; continue;
        case 'f': out[k++] = '\f'; continue;
        case 'n': out[k++] = '\n'; continue;
        case 'r': out[k++] = '\r'; continue;
        case 't': out[k++] = '\t'; continue;
        case 'u':
            if (!js_hex4(j, &u))
                return js_fail(j, "header: bad \\u escape");
            if (u >= 0xD800 && u < 0xDC00) {
                uint32_t lo;
                if (j->e - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u')
                    return js_fail(j, "header: lone surrogate");
                j->p += 2;
                if (!js_hex4(j, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                    return js_fail(j, "header: lone surrogate");
                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
            } else if (u >= 0xDC00 && u < 0xE000) {
                return js_fail(j, "header: lone surrogate");
            }
            /* UTF-8: at most 4 bytes for 6 bytes of escape */
            if (u < 0x80) {
                out[k++] = (uint8_t)u;
            } else if (u < 0x800) {
                out[k++] = (uint8_t)(0xC0 | u >> 6);
                out[k++] = (uint8_t)(0x80 | (u & 0x3F));
            } else if (u < 0x10000) {
                out[k++] = (uint8_t)(0xE0 | u >> 12);
                out[k++] = (uint8_t)(0x80 | ((u >> 6) & 0x3F));
                out[k++] = (uint8_t)(0x80 | (u & 0x3F));
            } else {
                out[k++] = (uint8_t)(0xF0 | u >> 18);
                out[k++] = (uint8_t)(0x80 | ((u >> 12) & 0x3F));
                out[k++] = (uint8_t)(0x80 | ((u >> 6) & 0x3F));
                out[k++] = (uint8_t)(0x80 | (u & 0x3F));
            }
            continue;
        default:
            return js_fail(j, "header: bad escape in a string");
        }
    }
    *n = k;
    return FST_OK;
}

static fst_status js_uint(js *j, int64_t *v)
{
    js_ws(j);
    if (j->p >= j->e || *j->p < '0' || *j->p > '9')
        return js_fail(j, "header: expected an integer >= 0");
    int64_t x = 0;
    while (j->p < j->e && *j->p >= '0' && *j->p <= '9') {
        if (x > (INT64_MAX - 9) / 10)
            return js_fail(j, "header: integer too large");
        x = x * 10 + (*j->p++ - '0');
    }
    if (j->p < j->e && (*j->p == '.' || *j->p == 'e' || *j->p == 'E'))
        return js_fail(j, "header: expected an integer");
    *v = x;
    return FST_OK;
}

/* Skip any JSON value (in __metadata__ and unknown fields). */
static fst_status js_skip(js *j, uint8_t *scratch, int depth)
{
    if (depth > JS_MAX_DEPTH)
        return js_fail(j, "header: nested too deeply");
    js_ws(j);
    if (j->p >= j->e)
        return js_fail(j, "header: truncated");
    size_t n;
    uint8_t c = *j->p;
    if (c == '"')
        return js_str(j, scratch, &n);
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        j->p++;
        if (js_lit(j, close))
            return FST_OK;
        do {
            fst_status s;
            if (c == '{') {
                if ((s = js_str(j, scratch, &n)))
                    return s;
                if (!js_lit(j, ':'))
                    return js_fail(j, "header: expected ':'");
            }
            if ((s = js_skip(j, scratch, depth + 1)))
                return s;
        } while (js_lit(j, ','));
        return js_lit(j, close) ? FST_OK : js_fail(j, "header: expected ',' or a closing bracket");
    }
    /* numbers, true, false, null */
    const uint8_t *start = j->p;
    while (j->p < j->e && (strchr("+-.eE", *j->p) || (*j->p >= '0' && *j->p <= '9') ||
                           (*j->p >= 'a' && *j->p <= 'z')))
        j->p++;
    return j->p > start ? FST_OK : js_fail(j, "header: unexpected character");
}

typedef struct st_info {
    int64_t begin, end;
    size_t  idx;   /* tensor index */
} st_info;

static int by_begin(const void *a, const void *b)
{
    const st_info *x = a, *y = b;
    return (x->begin > y->begin) - (x->begin < y->begin);
}

static fst_status open_safetensors(fst_weights *w, uint64_t hlen)
{
    fst_status s;
    uint8_t *name = NULL, *scratch = NULL;
    st_info *info = NULL;
    size_t ninfo = 0, capinfo = 0;
    char where[512];
    snprintf(where, sizeof where, "%s: safetensors header", w->name);
    js j = {w->buf + 8, w->buf + 8 + hlen, where};
    const uint8_t *data = w->buf + 8 + hlen;
    int64_t dlen = (int64_t)(w->len - 8 - hlen);
    name = malloc(hlen + 1);
    scratch = malloc(hlen + 1);
    if (!name || !scratch) {
        s = fst__fail(FST_ENOMEM, "%s", where);
        goto out;
    }
    if (!js_lit(&j, '{')) {
        s = js_fail(&j, "not a JSON object");
        goto out;
    }
    if (!js_lit(&j, '}')) {
        do {
            size_t nlen;
            FST_TRY(js_str(&j, name, &nlen));
            if (!js_lit(&j, ':')) {
                s = js_fail(&j, "header: expected ':'");
                goto out;
            }
            if (nlen == 12 && !memcmp(name, "__metadata__", 12)) {
                FST_TRY(js_skip(&j, scratch, 1));
                continue;
            }
            char pn[160];
            printable(name, nlen, pn, sizeof pn);
            if (!js_lit(&j, '{')) {
                s = fst__fail(FST_EFORMAT, "%s: tensor '%s' is not an object", where, pn);
                goto out;
            }
            fst_weights_dtype dt = 0;
            int ndim = -1;
            int64_t shape[FST_WEIGHTS_MAX_DIMS] = {0}, off[2] = {-1, -1};
            if (!js_lit(&j, '}')) {
                do {
                    size_t flen;
                    FST_TRY(js_str(&j, scratch, &flen));
                    if (!js_lit(&j, ':')) {
                        s = js_fail(&j, "header: expected ':'");
                        goto out;
                    }
                    if (flen == 5 && !memcmp(scratch, "dtype", 5)) {
                        size_t dl;
                        FST_TRY(js_str(&j, scratch, &dl));
                        dt = 0;
                        for (unsigned t = 1; t < N_DTYPES; t++)
                            if (strlen(dtypes[t].st) == dl && !memcmp(dtypes[t].st, scratch, dl))
                                dt = (fst_weights_dtype)t;
                        if (!dt) {
                            char dn[64];
                            s = fst__fail(FST_EFORMAT, "%s: tensor '%s': dtype %s is not "
                                          "supported", where, pn,
                                          printable(scratch, dl, dn, sizeof dn));
                            goto out;
                        }
                    } else if (flen == 5 && !memcmp(scratch, "shape", 5)) {
                        if (!js_lit(&j, '[')) {
                            s = js_fail(&j, "header: shape is not a list");
                            goto out;
                        }
                        ndim = 0;
                        if (!js_lit(&j, ']')) {
                            do {
                                if (ndim == FST_WEIGHTS_MAX_DIMS) {
                                    s = fst__fail(FST_EFORMAT, "%s: tensor '%s': more than %d "
                                                  "dimensions", where, pn, FST_WEIGHTS_MAX_DIMS);
                                    goto out;
                                }
                                FST_TRY(js_uint(&j, &shape[ndim++]));
                            } while (js_lit(&j, ','));
                            if (!js_lit(&j, ']')) {
                                s = js_fail(&j, "header: shape: expected ',' or ']'");
                                goto out;
                            }
                        }
                    } else if (flen == 12 && !memcmp(scratch, "data_offsets", 12)) {
                        if (!js_lit(&j, '[') || js_uint(&j, &off[0]) || !js_lit(&j, ',') ||
                            js_uint(&j, &off[1]) || !js_lit(&j, ']')) {
                            s = fst__fail(FST_EFORMAT, "%s: tensor '%s': data_offsets is not "
                                          "[begin, end]", where, pn);
                            goto out;
                        }
                    } else {
                        FST_TRY(js_skip(&j, scratch, 2));
                    }
                } while (js_lit(&j, ','));
                if (!js_lit(&j, '}')) {
                    s = js_fail(&j, "header: expected ',' or '}'");
                    goto out;
                }
            }
            if (!dt || ndim < 0 || off[0] < 0) {
                s = fst__fail(FST_EFORMAT, "%s: tensor '%s' lacks its dtype, shape or "
                              "data_offsets", where, pn);
                goto out;
            }
            if (off[1] < off[0] || off[1] > dlen) {
                s = fst__fail(FST_EFORMAT, "%s: tensor '%s': data_offsets [%lld, %lld] outside "
                              "the %lld bytes of data (truncated?)", where, pn,
                              (long long)off[0], (long long)off[1], (long long)dlen);
                goto out;
            }
            size_t es = fst_weights_dtype_size(dt);
            FST_TRY(put_tensor(w, where, name, nlen, dt, ndim, shape, NULL, data + off[0],
                               (off[1] - off[0]) / (int64_t)es, 0, "its data_offsets"));
            if (w->t[w->n - 1].nbytes != (uint64_t)(off[1] - off[0])) {
                s = fst__fail(FST_EFORMAT, "%s: tensor '%s': %s %s needs %zu bytes, "
                              "data_offsets give %lld", where, pn, fst_weights_dtype_name(dt),
                              fst_weights_shape_str(ndim, shape, (char *)scratch, hlen + 1),
                              w->t[w->n - 1].nbytes, (long long)(off[1] - off[0]));
                goto out;
            }
            if (ninfo == capinfo) {
                size_t nc = capinfo ? 2 * capinfo : 64;
                st_info *ni = realloc(info, nc * sizeof *ni);
                if (!ni) {
                    s = fst__fail(FST_ENOMEM, "%s", where);
                    goto out;
                }
                info = ni;
                capinfo = nc;
            }
            info[ninfo++] = (st_info){off[0], off[1], w->n - 1};
        } while (js_lit(&j, ','));
        if (!js_lit(&j, '}')) {
            s = js_fail(&j, "header: expected ',' or '}'");
            goto out;
        }
    }
    js_ws(&j);
    if (j.p != j.e) {
        s = js_fail(&j, "header: bytes after the JSON object");
        goto out;
    }
    /* as safetensors validates: the tensors tile the data exactly */
    if (ninfo > 1)
        qsort(info, ninfo, sizeof *info, by_begin);
    int64_t at = 0;
    for (size_t i = 0; i < ninfo; i++) {
        if (info[i].begin != at) {
            s = fst__fail(FST_EFORMAT, "%s: tensor '%s' starts at byte %lld of the data, "
                          "expected %lld (tensors overlap or leave a hole)", where,
                          w->t[info[i].idx].name, (long long)info[i].begin, (long long)at);
            goto out;
        }
        at = info[i].end;
    }
    if (at != dlen) {
        s = fst__fail(FST_EFORMAT, "%s: the tensors cover %lld bytes of data, the file has "
                      "%lld", where, (long long)at, (long long)dlen);
        goto out;
    }
    w->format = "safetensors";
    s = FST_OK;
out:
    free(name);
    free(scratch);
    free(info);
    return s;
}

/* ---- open, close ---- */

static fst_status parse(fst_weights *w)
{
    const uint8_t *b = w->buf;
    size_t n = w->len;
    if (n == 0)
        return fst__fail(FST_EFORMAT, "%s: empty file", w->name);
    if (n >= 4 && b[0] == 'P' && b[1] == 'K' &&
        ((b[2] == 3 && b[3] == 4) || (b[2] == 5 && b[3] == 6)))
        return open_zip(w);
    if (b[0] == 0x80)
        return open_legacy(w);
    if (n >= 9) {
        uint64_t h = 0;
        for (int i = 7; i >= 0; i--)
            h = h << 8 | b[i];
        if (b[8] == '{') {
            if (h > ST_MAX_HEADER)
                return fst__fail(FST_EFORMAT, "%s: safetensors header of %llu bytes (at most "
                                 "%u)", w->name, (unsigned long long)h, ST_MAX_HEADER);
            if (h > n - 8)
                return fst__fail(FST_EFORMAT, "%s: safetensors header of %llu bytes in a file "
                                 "of %zu (truncated?)", w->name, (unsigned long long)h, n);
            return open_safetensors(w, h);
        }
    }
    if (n >= 262 && !memcmp(b + 257, "ustar", 5))
        return fst__fail(FST_EFORMAT, "%s: the tar format of PyTorch < 0.4: not supported "
                         "(load it with torch and save it again)", w->name);
    return fst__fail(FST_EFORMAT, "%s: not a weight file (neither a torch.save file, zip or "
                     "legacy, nor safetensors)", w->name);
}

void fst_weights_close(fst_weights *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n; i++)
        free((char *)w->t[i].name);
    for (size_t i = 0; i < w->ncopies; i++)
        free(w->copies[i]);
    free(w->copies);
    free(w->t);
    free(w->sorted);
    if (w->map)
        munmap(w->map, w->len);
    free(w->name);
    free(w);
}

static fst_status finish_open(fst_weights *w, fst_weights **out)
{
    fst_status s;
    w->copy_limit = 2 * (uint64_t)w->len + (64u << 20);
    FST_TRY(parse(w));
    FST_TRY(index_names(w));
    *out = w;
    return FST_OK;
out:
    fst_weights_close(w);
    return s;
}

fst_status fst_weights_open_mem(const void *data, size_t size, const char *name,
                                fst_weights **out)
{
    fst_weights *w = calloc(1, sizeof *w);
    if (w)
        w->name = strdup(name ? name : "(memory)");
    if (!w || !w->name) {
        free(w);
        return fst__fail(FST_ENOMEM, "opening %s", name ? name : "weights");
    }
    w->buf = size ? data : empty_data;
    w->len = size;
    return finish_open(w, out);
}

fst_status fst_weights_open(const char *path, fst_weights **out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fst__fail(FST_EIO, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        fst_status s = fst__fail(FST_EIO, "%s: %s", path, strerror(errno));
        close(fd);
        return s;
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return fst__fail(FST_EIO, "%s: not a regular file", path);
    }
    fst_weights *w = calloc(1, sizeof *w);
    if (!w || !(w->name = strdup(path))) {
        free(w);
        close(fd);
        return fst__fail(FST_ENOMEM, "opening %s", path);
    }
    w->len = (size_t)sb.st_size;
    w->buf = empty_data;
    if (w->len) {
        void *m = mmap(NULL, w->len, PROT_READ, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED) {
            fst_status s = fst__fail(errno == ENOMEM ? FST_ENOMEM : FST_EIO, "%s: mapping: %s",
                                     path, strerror(errno));
            close(fd);
            fst_weights_close(w);
            return s;
        }
        w->map = m;
        w->buf = m;
    }
    close(fd);
    return finish_open(w, out);
}

/* ---- queries ---- */

const char *fst_weights_format(const fst_weights *w) { return w->format; }
const char *fst_weights_name(const fst_weights *w) { return w->name; }
size_t fst_weights_count(const fst_weights *w) { return w->n; }

const fst_weights_tensor *fst_weights_at(const fst_weights *w, size_t i)
{
    return i < w->n ? &w->t[i] : NULL;
}

const fst_weights_tensor *fst_weights_find(const fst_weights *w, const char *name)
{
    size_t lo = 0, hi = w->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(w->t[w->sorted[mid]].name, name);
        if (c == 0)
            return &w->t[w->sorted[mid]];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

fst_status fst_weights_expect(const fst_weights *w, const char *name, fst_weights_dtype dtype,
                              int ndim, const int64_t *shape, const fst_weights_tensor **out)
{
    const fst_weights_tensor *t = fst_weights_find(w, name);
    if (!t)
        return fst__fail(FST_ENOTFOUND, "%s: no tensor '%s'", w->name, name);
    bool ok = (!dtype || t->dtype == dtype) && t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = shape[i] < 0 || shape[i] == t->shape[i];
    if (!ok) {
        char want[160], got[160];
        int nd = ndim < 0 ? 0 : ndim > FST_WEIGHTS_MAX_DIMS ? FST_WEIGHTS_MAX_DIMS : ndim;
        size_t k = (size_t)snprintf(want, sizeof want, "%s ",
                                    dtype ? fst_weights_dtype_name(dtype) : "any dtype");
        fst_weights_shape_str(nd, shape, want + k, sizeof want - k);
        /* -1 entries print as such: "any" would read better, but the
         * numbers are what the caller wrote */
        k = (size_t)snprintf(got, sizeof got, "%s ", fst_weights_dtype_name(t->dtype));
        fst_weights_shape_str(t->ndim, t->shape, got + k, sizeof got - k);
        return fst__fail(FST_EFORMAT, "%s: tensor '%s': expected %s, found %s", w->name, name,
                         want, got);
    }
    if (out)
        *out = t;
    return FST_OK;
}

/* ---- LightGlue's key renames ---- */

/* Python's s.replace(old, new): every non-overlapping occurrence, left to
 * right. Returns a malloc'd string (a copy when nothing matches). */
static char *replace_all(const char *s, const char *old, const char *new_)
{
    size_t lo = strlen(old), ln = strlen(new_), count = 0;
    for (const char *p = strstr(s, old); p; p = strstr(p + lo, old))
        count++;
    char *r = malloc(strlen(s) + count * (ln > lo ? ln - lo : 0) + 1);
    if (!r)
        return NULL;
    char *d = r;
    for (const char *p; (p = strstr(s, old)); s = p + lo) {
        memcpy(d, s, (size_t)(p - s));
        d += p - s;
        memcpy(d, new_, ln);
        d += ln;
    }
    strcpy(d, s);
    return r;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* 1 + the largest i in "self_attn.<i>" / "cross_attn.<i>" over all names. */
static int layers_named(const fst_weights *w)
{
    int n = 0;
    static const char *const pre[] = {"self_attn.", "cross_attn."};
    for (size_t i = 0; i < w->n; i++)
        for (int k = 0; k < 2; k++)
            for (const char *p = strstr(w->t[i].name, pre[k]); p; p = strstr(p + 1, pre[k])) {
                const char *d = p + strlen(pre[k]);
                long v = 0;
                while (*d >= '0' && *d <= '9' && v < 100000)
                    v = v * 10 + (*d++ - '0');
                if (d > p + strlen(pre[k]) && v + 1 > n)
                    n = (int)(v + 1);
            }
    return n;
}

fst_status fst_weights_rename_lightglue(fst_weights *w, int n_layers)
{
    if (n_layers <= 0)
        n_layers = layers_named(w);
    if (w->n == 0 || n_layers == 0)
        return FST_OK;
    char **names = calloc(w->n, sizeof *names);
    fst_weights_tensor *t = malloc(w->n * sizeof *t);
    size_t *ix = malloc(w->n * sizeof *ix);
    fst_status s = FST_OK;
    if (!names || !t || !ix) {
        s = fst__fail(FST_ENOMEM, "%s: renaming", w->name);
        goto out;
    }
    for (size_t i = 0; i < w->n && !s; i++) {
        /* Python's loop over every layer, done only for the layers that
         * can match: "self_attn.<l>" needs <l> to be a prefix of a run of
         * digits after a '.' of the name (a replacement moves such runs,
         * never makes new ones), so the others are no-ops. Ascending, as
         * the reference. */
        const char *nm = w->t[i].name;
        int *cand = malloc((strlen(nm) + 1) * sizeof *cand);
        size_t nc = 0;
        if (!cand) {
            s = fst__fail(FST_ENOMEM, "%s: renaming", w->name);
            break;
        }
        for (const char *p = strchr(nm, '.'); p; p = strchr(p + 1, '.')) {
            long v = 0;
            for (const char *d = p + 1; *d >= '0' && *d <= '9'; d++) {
                v = v * 10 + (*d - '0');
                if (v >= n_layers)
                    break;
                cand[nc++] = (int)v;
            }
        }
        qsort(cand, nc, sizeof *cand, cmp_int);
        char *cur = strdup(nm);
        for (size_t c = 0; c < nc && cur; c++) {
            if (c && cand[c] == cand[c - 1])
                continue;
            int l = cand[c];
            char o[48], nw[64];
            for (int k = 0; k < 2 && cur; k++) {
                const char *kind = k ? "cross_attn" : "self_attn";
                snprintf(o, sizeof o, "%s.%d", kind, l);
                snprintf(nw, sizeof nw, "transformers.%d.%s", l, kind);
                char *next = replace_all(cur, o, nw);
                free(cur);
                cur = next;
            }
        }
        free(cand);
        if (!cur)
            s = fst__fail(FST_ENOMEM, "%s: renaming", w->name);
        names[i] = cur;
    }
    if (s)
        goto out;
    /* check the new names before anything changes */
    memcpy(t, w->t, w->n * sizeof *t);
    for (size_t i = 0; i < w->n; i++) {
        t[i].name = names[i];
        ix[i] = i;
    }
    qsort_r(ix, w->n, sizeof *ix, by_name_r, t);
    for (size_t i = 1; i < w->n && !s; i++)
        if (!strcmp(names[ix[i - 1]], names[ix[i]]))
            s = fst__fail(FST_EFORMAT, "%s: renaming old LightGlue keys gives '%s' twice (the "
                          "file has both old and new names)", w->name, names[ix[i]]);
    if (s)
        goto out;
    for (size_t i = 0; i < w->n; i++) {
        free((char *)w->t[i].name);
        w->t[i].name = names[i];
        names[i] = NULL;
    }
    free(w->sorted);
    w->sorted = ix;
    ix = NULL;
out:
    if (names)
        for (size_t i = 0; i < w->n; i++)
            free(names[i]);
    free(names);
    free(t);
    free(ix);
    return s;
}
