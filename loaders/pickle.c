/* loaders/pickle.c : a pickle interpreter that can only build a state_dict.
 *
 * Python's unpickler imports and calls whatever a pickle names (GLOBAL +
 * REDUCE is os.system("...")); this one knows a fixed list of globals and
 * what each of them builds, and refuses everything else before acting on
 * it. Protocols 2 to 4 as torch writes them (binary opcodes; protocol 2 for
 * torch.save's default, 4 with pickle_protocol=4). Every read is bounds
 * checked; the stack, the marks and the memo are bounded by the size of the
 * pickle; values live in an arena freed at once, so shared or cyclic
 * containers are never walked. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "weights_impl.h"

/* Bounds, whatever the input: a stack deeper than this is refused. */
#define PK_MAX_STACK  (1u << 20)
#define PK_MIN_MEMO   4096u      /* memo indices allowed: < max(this, len) */

/* ---- arena ---- */

typedef struct chunk {
    struct chunk *next;
    size_t        used, cap;
    _Alignas(16) unsigned char mem[];
} chunk;

struct fst__pk {
    chunk           *chunks;
    fst__pk_storage *st;      /* storage table */
    size_t           nst, capst;
    uint32_t        *hash;    /* open addressing over st by key: index + 1,
                                 0 empty; 2 x capst slots */
};

static uint64_t key_hash(const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211u;
    return h;
}

/* The storage named key[0..n), or SIZE_MAX. */
static size_t storage_find(const fst__pk *pk, const uint8_t *key, size_t n)
{
    if (!pk->hash)
        return SIZE_MAX;
    size_t mask = 2 * pk->capst - 1;
    for (size_t h = (size_t)key_hash(key, n) & mask;; h = (h + 1) & mask) {
        uint32_t v = pk->hash[h];
        if (v == 0)
            return SIZE_MAX;
        const fst__pk_storage *st = &pk->st[v - 1];
        if (st->key_len == n && !memcmp(st->key, key, n))
            return v - 1;
    }
}

static void storage_hash_insert(fst__pk *pk, size_t i)
{
    size_t mask = 2 * pk->capst - 1;
    size_t h = (size_t)key_hash(pk->st[i].key, pk->st[i].key_len) & mask;
    while (pk->hash[h])
        h = (h + 1) & mask;
    pk->hash[h] = (uint32_t)(i + 1);
}

size_t fst__pk_storage_find(const fst__pk *pk, const uint8_t *key, size_t n)
{
    return storage_find(pk, key, n);
}

static void *arena_alloc(fst__pk *pk, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    chunk *c = pk->chunks;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > (64u << 10) ? n : (64u << 10);
        c = malloc(sizeof *c + cap);
        if (!c)
            return NULL;
        c->used = 0;
        c->cap = cap;
        c->next = pk->chunks;
        pk->chunks = c;
    }
    void *p = c->mem + c->used;
    c->used += n;
    return p;
}

fst__pk *fst__pk_new(void)
{
    return calloc(1, sizeof(fst__pk));
}

void fst__pk_free(fst__pk *pk)
{
    if (!pk)
        return;
    for (chunk *c = pk->chunks, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(pk->st);
    free(pk->hash);
    free(pk);
}

const fst__pk_storage *fst__pk_storages(const fst__pk *pk, size_t *n)
{
    *n = pk->nst;
    return pk->st;
}

const char *fst__pv_kind_name(const fst__pv *v)
{
    switch (v->kind) {
    case FST__PV_NONE:    return "None";
    case FST__PV_BOOL:    return "bool";
    case FST__PV_INT:     return "int";
    case FST__PV_BIGINT:  return "int";
    case FST__PV_FLOAT:   return "float";
    case FST__PV_STR:     return "str";
    case FST__PV_BYTES:   return "bytes";
    case FST__PV_TUPLE:   return "tuple";
    case FST__PV_LIST:    return "list";
    case FST__PV_DICT:    return v->u.dict.ordered ? "OrderedDict" : "dict";
    case FST__PV_GLOBAL:  return "global";
    case FST__PV_STORAGE: return "storage";
    case FST__PV_TENSOR:  return "tensor";
    }
    return "?";
}

/* ---- the machine ---- */

typedef struct vm {
    fst__pk       *pk;
    const uint8_t *buf;
    size_t         len, pos, op_pos;
    const char    *where;
    fst__pv      **stack;
    size_t         sp, stack_cap;
    size_t        *marks;
    size_t         nmarks, marks_cap;
    fst__pv      **memo;
    size_t         memo_cap, memo_max;
    size_t         memo_len;   /* indices set: Python's len(memo) */
} vm;

static fst_status fail(vm *m, const char *what)
{
    return fst__fail(FST_EFORMAT, "%s: %s (at byte %zu)", m->where, what, m->op_pos);
}

static fst_status oom(vm *m)
{
    return fst__fail(FST_ENOMEM, "%s: reading the pickle", m->where);
}

/* Printable, bounded copy of untrusted text for a message. */
static void safe_text(char *dst, size_t cap, const uint8_t *p, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 5 < cap; i++)
        dst[k++] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '?';
    if (n > 0 && k + 5 >= cap) {
        memcpy(dst + k, "...", 3);
        k += 3;
    }
    dst[k] = 0;
}

static bool take(vm *m, size_t n, const uint8_t **p)
{
    if (m->len - m->pos < n)
        return false;
    *p = m->buf + m->pos;
    m->pos += n;
    return true;
}

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static fst__pv *new_value(vm *m, fst__pv_kind kind)
{
    fst__pv *v = arena_alloc(m->pk, sizeof *v);
    if (v) {
        memset(v, 0, sizeof *v);
        v->kind = kind;
    }
    return v;
}

static fst_status push(vm *m, fst__pv *v)
{
    if (!v)
        return oom(m);
    if (m->sp == m->stack_cap) {
        if (m->stack_cap >= PK_MAX_STACK)
            return fail(m, "stack too deep");
        size_t nc = m->stack_cap ? 2 * m->stack_cap : 64;
        fst__pv **ns = realloc(m->stack, nc * sizeof *ns);
        if (!ns)
            return oom(m);
        m->stack = ns;
        m->stack_cap = nc;
    }
    m->stack[m->sp++] = v;
    return FST_OK;
}

/* Items above the innermost mark; the mark's position. */
static fst_status mark_base(vm *m, size_t *base)
{
    if (m->nmarks == 0)
        return fail(m, "no MARK before a mark-taking opcode");
    *base = m->marks[m->nmarks - 1];
    return FST_OK;
}

static fst_status need(vm *m, size_t n)
{
    size_t floor = m->nmarks ? m->marks[m->nmarks - 1] : 0;
    if (m->sp - floor < n)
        return fail(m, "stack underflow");
    return FST_OK;
}

/* Append items to a tuple/list's array (arena; grows by doubling). */
static fst_status seq_add(vm *m, fst__pv *seq, fst__pv *const *items, size_t n)
{
    size_t need_n = seq->u.seq.n + n;
    if (need_n > seq->u.seq.cap) {
        size_t nc = seq->u.seq.cap ? seq->u.seq.cap : 4;
        while (nc < need_n)
            nc *= 2;
        fst__pv **ni = arena_alloc(m->pk, nc * sizeof *ni);
        if (!ni)
            return oom(m);
        if (seq->u.seq.n)
            memcpy(ni, seq->u.seq.items, seq->u.seq.n * sizeof *ni);
        seq->u.seq.items = ni;
        seq->u.seq.cap = nc;
    }
    if (n)
        memcpy(seq->u.seq.items + seq->u.seq.n, items, n * sizeof *items);
    seq->u.seq.n = need_n;
    return FST_OK;
}

/* dict[key] = value for each pair, appended in order. Duplicate keys are
 * kept (Python would replace the value): nothing reads a dict but the
 * state_dict, whose duplicates the tensor table refuses. */
static fst_status dict_set(vm *m, fst__pv *d, fst__pv *const *kv, size_t npairs)
{
    for (size_t i = 0; i < npairs; i++) {
        fst__pv *k = kv[2 * i], *v = kv[2 * i + 1];
        if (d->u.dict.n == d->u.dict.cap) {
            size_t nc = d->u.dict.cap ? 2 * d->u.dict.cap : 8;
            fst__pv **nkv = arena_alloc(m->pk, 2 * nc * sizeof *nkv);
            if (!nkv)
                return oom(m);
            if (d->u.dict.n)
                memcpy(nkv, d->u.dict.kv, 2 * d->u.dict.n * sizeof *nkv);
            d->u.dict.kv = nkv;
            d->u.dict.cap = nc;
        }
        d->u.dict.kv[2 * d->u.dict.n] = k;
        d->u.dict.kv[2 * d->u.dict.n + 1] = v;
        d->u.dict.n++;
    }
    return FST_OK;
}

/* ---- globals ---- */

typedef struct allowed {
    const char       *module, *name;
    fst__pk_global    g;
    fst_weights_dtype dtype;
} allowed;

static const allowed allowed_globals[] = {
    {"collections",  "OrderedDict",                  FST__G_ORDERED_DICT, 0},
    {"torch._utils", "_rebuild_tensor",              FST__G_REBUILD_TENSOR, 0},
    {"torch._utils", "_rebuild_tensor_v2",           FST__G_REBUILD_TENSOR_V2, 0},
    {"torch._utils", "_rebuild_parameter",           FST__G_REBUILD_PARAMETER, 0},
    {"torch._utils", "_rebuild_parameter_with_state", FST__G_REBUILD_PARAMETER_STATE, 0},
    {"torch", "FloatStorage",    FST__G_STORAGE_TYPE, FST_WEIGHTS_F32},
    {"torch", "HalfStorage",     FST__G_STORAGE_TYPE, FST_WEIGHTS_F16},
    {"torch", "BFloat16Storage", FST__G_STORAGE_TYPE, FST_WEIGHTS_BF16},
    {"torch", "DoubleStorage",   FST__G_STORAGE_TYPE, FST_WEIGHTS_F64},
    {"torch", "LongStorage",     FST__G_STORAGE_TYPE, FST_WEIGHTS_I64},
    {"torch", "IntStorage",      FST__G_STORAGE_TYPE, FST_WEIGHTS_I32},
    {"torch", "ShortStorage",    FST__G_STORAGE_TYPE, FST_WEIGHTS_I16},
    {"torch", "CharStorage",     FST__G_STORAGE_TYPE, FST_WEIGHTS_I8},
    {"torch", "ByteStorage",     FST__G_STORAGE_TYPE, FST_WEIGHTS_U8},
    {"torch", "BoolStorage",     FST__G_STORAGE_TYPE, FST_WEIGHTS_BOOL},
};

static const char *global_name(const fst__pv *g)
{
    for (size_t i = 0; i < sizeof allowed_globals / sizeof allowed_globals[0]; i++)
        if (allowed_globals[i].g == g->u.global.g &&
            allowed_globals[i].dtype == g->u.global.dtype)
            return allowed_globals[i].name;
    return "?";
}

static fst_status push_global(vm *m, const uint8_t *mod, size_t nmod,
                              const uint8_t *name, size_t nname)
{
    /* Storages saved from a GPU by old PyTorch name torch.cuda.<T>Storage:
     * the same bytes, read as torch.load(map_location='cpu') would. */
    bool cuda = nmod == 10 && !memcmp(mod, "torch.cuda", 10);
    for (size_t i = 0; i < sizeof allowed_globals / sizeof allowed_globals[0]; i++) {
        const allowed *a = &allowed_globals[i];
        if (cuda && a->g == FST__G_STORAGE_TYPE && strlen(a->name) == nname &&
            !memcmp(a->name, name, nname)) {
            fst__pv *v = new_value(m, FST__PV_GLOBAL);
            if (v) {
                v->u.global.g = a->g;
                v->u.global.dtype = a->dtype;
            }
            return push(m, v);
        }
        if (strlen(a->module) == nmod && !memcmp(a->module, mod, nmod) &&
            strlen(a->name) == nname && !memcmp(a->name, name, nname)) {
            fst__pv *v = new_value(m, FST__PV_GLOBAL);
            if (v) {
                v->u.global.g = a->g;
                v->u.global.dtype = a->dtype;
            }
            return push(m, v);
        }
    }
    char sm[96], sn[96], msg[256];
    safe_text(sm, sizeof sm, mod, nmod);
    safe_text(sn, sizeof sn, name, nname);
    snprintf(msg, sizeof msg, "refusing global %s.%s", sm, sn);
    return fail(m, msg);
}

/* One text line (GLOBAL, INST arguments): bytes up to '\n', excluded. */
static bool take_line(vm *m, const uint8_t **p, size_t *n)
{
    const uint8_t *s = m->buf + m->pos;
    const uint8_t *e = memchr(s, '\n', m->len - m->pos);
    if (!e)
        return false;
    *p = s;
    *n = (size_t)(e - s);
    m->pos += *n + 1;
    return true;
}

/* ---- persistent ids, tensors ---- */

static bool is_str(const fst__pv *v, const char *s)
{
    return v->kind == FST__PV_STR && v->u.s.n == strlen(s) && !memcmp(v->u.s.p, s, v->u.s.n);
}

static fst_status persistent_load(vm *m, fst__pv *pid)
{
    if (pid->kind != FST__PV_TUPLE || pid->u.seq.n < 1)
        return fail(m, "persistent id is not a tuple");
    fst__pv **it = pid->u.seq.items;
    size_t n = pid->u.seq.n;
    if (!is_str(it[0], "storage")) {
        if (is_str(it[0], "module"))
            return fail(m, "refusing persistent id 'module' (a whole pickled model "
                           "with its source, not a state_dict)");
        return fail(m, "refusing persistent id that is not ('storage', ...)");
    }
    if (n != 5 && n != 6)
        return fail(m, "storage persistent id has not 5 or 6 fields");
    if (it[1]->kind != FST__PV_GLOBAL || it[1]->u.global.g != FST__G_STORAGE_TYPE)
        return fail(m, "storage persistent id without a torch storage type");
    if (it[2]->kind != FST__PV_STR || it[3]->kind != FST__PV_STR)
        return fail(m, "storage persistent id: key or location is not a string");
    if (it[4]->kind != FST__PV_INT || it[4]->u.i < 0)
        return fail(m, "storage persistent id: size is not an int >= 0");
    fst_weights_dtype dt = it[1]->u.global.dtype;
    int64_t numel = it[4]->u.i;
    if ((uint64_t)numel > (uint64_t)INT64_MAX / 8)
        return fail(m, "storage persistent id: size too large");
    /* the table: one entry per key */
    fst__pk *pk = m->pk;
    size_t found = storage_find(pk, it[2]->u.s.p, it[2]->u.s.n);
    uint32_t idx;
    if (found != SIZE_MAX) {
        if (pk->st[found].dtype != dt || pk->st[found].numel != numel)
            return fail(m, "storage named twice with another type or size");
        idx = (uint32_t)found;
    } else {
        if (pk->nst >= UINT32_MAX / 4)
            return fail(m, "too many storages");
        if (pk->nst == pk->capst) {
            /* grow the table (power of two) and rebuild its hash */
            size_t nc = pk->capst ? 2 * pk->capst : 16;
            fst__pk_storage *ns = realloc(pk->st, nc * sizeof *ns);
            if (!ns)
                return oom(m);
            pk->st = ns;
            uint32_t *nh = calloc(2 * nc, sizeof *nh);
            if (!nh)
                return oom(m);
            free(pk->hash);
            pk->hash = nh;
            pk->capst = nc;
            for (size_t i = 0; i < pk->nst; i++)
                storage_hash_insert(pk, i);
        }
        pk->st[pk->nst] = (fst__pk_storage){it[2]->u.s.p, it[2]->u.s.n, dt, numel};
        storage_hash_insert(pk, pk->nst);
        idx = (uint32_t)pk->nst++;
    }
    fst__pv *v = new_value(m, FST__PV_STORAGE);
    if (!v)
        return oom(m);
    v->u.storage.index = idx;
    v->u.storage.off = 0;
    v->u.storage.count = numel;
    /* legacy view_metadata: (view_key, offset, size), in elements */
    if (n == 6 && it[5]->kind != FST__PV_NONE) {
        fst__pv *vm_ = it[5];
        if (vm_->kind != FST__PV_TUPLE || vm_->u.seq.n != 3 ||
            vm_->u.seq.items[0]->kind != FST__PV_STR ||
            vm_->u.seq.items[1]->kind != FST__PV_INT ||
            vm_->u.seq.items[2]->kind != FST__PV_INT)
            return fail(m, "storage view metadata is not (key, offset, size)");
        int64_t off = vm_->u.seq.items[1]->u.i, cnt = vm_->u.seq.items[2]->u.i;
        if (off < 0 || cnt < 0 || off > numel || cnt > numel - off)
            return fail(m, "storage view lies outside its storage");
        v->u.storage.off = off;
        v->u.storage.count = cnt;
    }
    return push(m, v);
}

static fst_status int_tuple(vm *m, const fst__pv *t, int *ndim, int64_t *out, const char *what)
{
    char msg[96];
    if (t->kind != FST__PV_TUPLE) {
        snprintf(msg, sizeof msg, "tensor %s is not a tuple but of type %s", what, fst__pv_kind_name(t));
        return fail(m, msg);
    }
    if (t->u.seq.n > FST_WEIGHTS_MAX_DIMS) {
        snprintf(msg, sizeof msg, "tensor with %zu dimensions (at most %d)", t->u.seq.n,
                 FST_WEIGHTS_MAX_DIMS);
        return fail(m, msg);
    }
    for (size_t i = 0; i < t->u.seq.n; i++) {
        if (t->u.seq.items[i]->kind != FST__PV_INT || t->u.seq.items[i]->u.i < 0) {
            snprintf(msg, sizeof msg, "tensor %s holds something else than ints >= 0", what);
            return fail(m, msg);
        }
        out[i] = t->u.seq.items[i]->u.i;
    }
    *ndim = (int)t->u.seq.n;
    return FST_OK;
}

static fst_status rebuild_tensor(vm *m, fst__pv **a, size_t n, bool v2)
{
    if (v2 ? (n != 6 && n != 7) : n != 4)
        return fail(m, v2 ? "_rebuild_tensor_v2 takes 6 or 7 arguments"
                          : "_rebuild_tensor takes 4 arguments");
    if (a[0]->kind != FST__PV_STORAGE)
        return fail(m, "tensor rebuilt from something else than a storage");
    if (a[1]->kind != FST__PV_INT || a[1]->u.i < 0)
        return fail(m, "tensor storage offset is not an int >= 0");
    fst__pv *t = new_value(m, FST__PV_TENSOR);
    if (!t)
        return oom(m);
    int nd_stride = 0;
    fst_status s = int_tuple(m, a[2], &t->u.tensor.ndim, t->u.tensor.shape, "size");
    if (!s)
        s = int_tuple(m, a[3], &nd_stride, t->u.tensor.stride, "stride");
    if (s)
        return s;
    if (nd_stride != t->u.tensor.ndim)
        return fail(m, "tensor size and stride differ in length");
    if (v2) {
        if (a[4]->kind != FST__PV_BOOL)
            return fail(m, "tensor requires_grad is not a bool");
        if (a[5]->kind != FST__PV_DICT)
            return fail(m, "tensor backward hooks are not a dict");
        if (n == 7 && a[6]->kind != FST__PV_NONE && a[6]->kind != FST__PV_DICT)
            return fail(m, "tensor metadata is not a dict");
    }
    t->u.tensor.storage = a[0]->u.storage.index;
    t->u.tensor.base = a[0]->u.storage.off;
    t->u.tensor.count = a[0]->u.storage.count;
    t->u.tensor.offset = a[1]->u.i;
    return push(m, t);
}

static fst_status reduce(vm *m)
{
    FST_ASSERT(m->sp >= 2);
    fst__pv *args = m->stack[--m->sp];
    fst__pv *fn = m->stack[--m->sp];
    char msg[256];
    if (fn->kind != FST__PV_GLOBAL) {
        snprintf(msg, sizeof msg, "refusing REDUCE of type %s", fst__pv_kind_name(fn));
        return fail(m, msg);
    }
    if (args->kind != FST__PV_TUPLE)
        return fail(m, "REDUCE arguments are not a tuple");
    fst__pv **a = args->u.seq.items;
    size_t n = args->u.seq.n;
    switch (fn->u.global.g) {
    case FST__G_ORDERED_DICT: {
        if (n != 0)
            return fail(m, "OrderedDict() with arguments");
        fst__pv *d = new_value(m, FST__PV_DICT);
        if (d)
            d->u.dict.ordered = true;
        return push(m, d);
    }
    case FST__G_REBUILD_TENSOR:
        return rebuild_tensor(m, a, n, false);
    case FST__G_REBUILD_TENSOR_V2:
        return rebuild_tensor(m, a, n, true);
    case FST__G_REBUILD_PARAMETER:
    case FST__G_REBUILD_PARAMETER_STATE:
        if (n != (fn->u.global.g == FST__G_REBUILD_PARAMETER ? 3u : 4u))
            return fail(m, "_rebuild_parameter with a wrong number of arguments");
        if (a[0]->kind != FST__PV_TENSOR)
            return fail(m, "parameter rebuilt from something else than a tensor");
        if (a[1]->kind != FST__PV_BOOL || a[2]->kind != FST__PV_DICT)
            return fail(m, "parameter requires_grad or hooks of a wrong type");
        return push(m, a[0]);   /* a parameter is its tensor, for us */
    case FST__G_STORAGE_TYPE:
        break;
    }
    snprintf(msg, sizeof msg, "refusing REDUCE of torch.%s", global_name(fn));
    return fail(m, msg);
}

/* ---- opcodes ---- */

static const char *opname(uint8_t op)
{
    switch (op) {
    case 'i': return "INST";
    case 'o': return "OBJ";
    case 0x81: return "NEWOBJ";
    case 0x92: return "NEWOBJ_EX";
    case 0x82: return "EXT1";
    case 0x83: return "EXT2";
    case 0x84: return "EXT4";
    case 'P': return "PERSID";
    case 'I': return "INT";
    case 'L': return "LONG";
    case 'F': return "FLOAT";
    case 'S': return "STRING";
    case 'V': return "UNICODE";
    case 'p': return "PUT";
    case 'g': return "GET";
    case 0x8f: return "EMPTY_SET";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    default: return NULL;
    }
}

static fst_status memo_put(vm *m, uint64_t idx)
{
    if (m->sp == 0)
        return fail(m, "memo put on an empty stack");
    if (idx >= m->memo_max)
        return fail(m, "memo index too large");
    if (idx >= m->memo_cap) {
        size_t nc = m->memo_cap ? m->memo_cap : 256;
        while (nc <= idx)
            nc *= 2;
        fst__pv **nm = realloc(m->memo, nc * sizeof *nm);
        if (!nm)
            return oom(m);
        memset(nm + m->memo_cap, 0, (nc - m->memo_cap) * sizeof *nm);
        m->memo = nm;
        m->memo_cap = nc;
    }
    if (!m->memo[idx])
        m->memo_len++;
    m->memo[idx] = m->stack[m->sp - 1];
    return FST_OK;
}

static fst_status memo_get(vm *m, uint64_t idx)
{
    if (idx >= m->memo_cap || !m->memo[idx])
        return fail(m, "memo get of an index never put");
    return push(m, m->memo[idx]);
}

static fst_status new_str(vm *m, fst__pv_kind kind, uint64_t n)
{
    const uint8_t *p;
    if (n > m->len - m->pos || !take(m, (size_t)n, &p))
        return fail(m, "truncated string");
    fst__pv *v = new_value(m, kind);
    if (v) {
        v->u.s.p = p;
        v->u.s.n = (size_t)n;
    }
    return push(m, v);
}

static fst_status new_int(vm *m, int64_t i)
{
    fst__pv *v = new_value(m, FST__PV_INT);
    if (v)
        v->u.i = i;
    return push(m, v);
}

/* LONG1/LONG4: n bytes of little-endian two's complement. */
static fst_status new_long(vm *m, uint64_t n)
{
    const uint8_t *p;
    if (n > m->len - m->pos || !take(m, (size_t)n, &p))
        return fail(m, "truncated long");
    if (n <= 8) {
        uint64_t u = n ? le(p, (int)n) : 0;
        if (n && n < 8 && (p[n - 1] & 0x80))
            u |= ~(uint64_t)0 << (8 * n);          /* sign-extend */
        int64_t i;
        memcpy(&i, &u, sizeof i);
        return new_int(m, i);
    }
    fst__pv *v = new_value(m, FST__PV_BIGINT);
    if (v) {
        v->u.s.p = p;
        v->u.s.n = (size_t)n;
    }
    return push(m, v);
}

/* Pop the items above the innermost mark into a new tuple or list. */
static fst_status pop_mark_into(vm *m, fst__pv_kind kind)
{
    size_t base = 0;
    fst_status s = mark_base(m, &base);
    if (s)
        return s;
    fst__pv *v = new_value(m, kind);
    if (!v)
        return oom(m);
    if ((s = seq_add(m, v, m->stack + base, m->sp - base)))
        return s;
    m->sp = base;
    m->nmarks--;
    return push(m, v);
}

static fst_status tuple_n(vm *m, size_t n)
{
    fst_status s = need(m, n);
    if (s)
        return s;
    fst__pv *v = new_value(m, FST__PV_TUPLE);
    if (!v)
        return oom(m);
    if ((s = seq_add(m, v, m->stack + m->sp - n, n)))
        return s;
    m->sp -= n;
    return push(m, v);
}

static fst_status step(vm *m, bool *stop)
{
    const uint8_t *p;
    fst_status s;
    char msg[256];
    m->op_pos = m->pos;
    if (!take(m, 1, &p))
        return fail(m, "truncated pickle: no STOP");
    uint8_t op = p[0];
    switch (op) {
    case 0x80:                                   /* PROTO */
        if (!take(m, 1, &p))
            return fail(m, "truncated PROTO");
        if (p[0] < 2 || p[0] > 5) {
            snprintf(msg, sizeof msg, "pickle protocol %u (2 to 5 are read)", p[0]);
            return fail(m, msg);
        }
        return FST_OK;
    case 0x95:                                   /* FRAME: a length hint */
        return take(m, 8, &p) ? FST_OK : fail(m, "truncated FRAME");
    case '.':                                    /* STOP */
        if (m->sp != 1 || m->nmarks)
            return fail(m, "STOP with a stack not holding exactly one value");
        *stop = true;
        return FST_OK;
    case '(':                                    /* MARK */
        if (m->nmarks == m->marks_cap) {
            if (m->marks_cap >= PK_MAX_STACK)
                return fail(m, "too many MARKs");
            size_t nc = m->marks_cap ? 2 * m->marks_cap : 32;
            size_t *nm = realloc(m->marks, nc * sizeof *nm);
            if (!nm)
                return oom(m);
            m->marks = nm;
            m->marks_cap = nc;
        }
        m->marks[m->nmarks++] = m->sp;
        return FST_OK;
    case '0':                                    /* POP */
        if ((s = need(m, 1)))
            return s;
        m->sp--;
        return FST_OK;
    case '1': {                                  /* POP_MARK */
        size_t base = 0;
        if ((s = mark_base(m, &base)))
            return s;
        m->sp = base;
        m->nmarks--;
        return FST_OK;
    }
    case '2':                                    /* DUP */
        if ((s = need(m, 1)))
            return s;
        return push(m, m->stack[m->sp - 1]);
    case 'N':
        return push(m, new_value(m, FST__PV_NONE));
    case 0x88:
    case 0x89: {                                 /* NEWTRUE, NEWFALSE */
        fst__pv *v = new_value(m, FST__PV_BOOL);
        if (v)
            v->u.b = op == 0x88;
        return push(m, v);
    }
    case 'J': {                                  /* BININT */
        if (!take(m, 4, &p))
            return fail(m, "truncated BININT");
        uint32_t u = (uint32_t)le(p, 4);
        int32_t i;
        memcpy(&i, &u, sizeof i);
        return new_int(m, i);
    }
    case 'K':                                    /* BININT1 */
        if (!take(m, 1, &p))
            return fail(m, "truncated BININT1");
        return new_int(m, p[0]);
    case 'M':                                    /* BININT2 */
        if (!take(m, 2, &p))
            return fail(m, "truncated BININT2");
        return new_int(m, (int64_t)le(p, 2));
    case 0x8a:                                   /* LONG1 */
        if (!take(m, 1, &p))
            return fail(m, "truncated LONG1");
        return new_long(m, p[0]);
    case 0x8b: {                                 /* LONG4 */
        if (!take(m, 4, &p))
            return fail(m, "truncated LONG4");
        uint32_t n = (uint32_t)le(p, 4);
        if (n > INT32_MAX)
            return fail(m, "LONG4 of negative length");
        return new_long(m, n);
    }
    case 'G': {                                  /* BINFLOAT: big-endian */
        if (!take(m, 8, &p))
            return fail(m, "truncated BINFLOAT");
        uint64_t u = 0;
        for (int i = 0; i < 8; i++)
            u = u << 8 | p[i];
        fst__pv *v = new_value(m, FST__PV_FLOAT);
        if (v)
            memcpy(&v->u.f, &u, sizeof u);
        return push(m, v);
    }
    case 'X':                                    /* BINUNICODE */
    case 'T':                                    /* BINSTRING (py2 str) */
    case 'B':                                    /* BINBYTES */
        if (!take(m, 4, &p))
            return fail(m, "truncated string length");
        if (op == 'T' && (p[3] & 0x80))
            return fail(m, "BINSTRING of negative length");
        return new_str(m, op == 'B' ? FST__PV_BYTES : FST__PV_STR, le(p, 4));
    case 0x8c:                                   /* SHORT_BINUNICODE */
    case 'U':                                    /* SHORT_BINSTRING */
    case 'C':                                    /* SHORT_BINBYTES */
        if (!take(m, 1, &p))
            return fail(m, "truncated string length");
        return new_str(m, op == 'C' ? FST__PV_BYTES : FST__PV_STR, p[0]);
    case 0x8d:                                   /* BINUNICODE8 */
    case 0x8e:                                   /* BINBYTES8 */
        if (!take(m, 8, &p))
            return fail(m, "truncated string length");
        return new_str(m, op == 0x8e ? FST__PV_BYTES : FST__PV_STR, le(p, 8));
    case ')':
        return push(m, new_value(m, FST__PV_TUPLE));
    case 't':
        return pop_mark_into(m, FST__PV_TUPLE);
    case 0x85: case 0x86: case 0x87:             /* TUPLE1..3 */
        return tuple_n(m, (size_t)(op - 0x84));
    case ']':
        return push(m, new_value(m, FST__PV_LIST));
    case 'l':
        return pop_mark_into(m, FST__PV_LIST);
    case 'a': {                                  /* APPEND */
        if ((s = need(m, 2)))
            return s;
        fst__pv *l = m->stack[m->sp - 2];
        if (l->kind != FST__PV_LIST)
            return fail(m, "APPEND to something else than a list");
        if ((s = seq_add(m, l, m->stack + m->sp - 1, 1)))
            return s;
        m->sp--;
        return FST_OK;
    }
    case 'e': {                                  /* APPENDS */
        size_t base = 0;
        if ((s = mark_base(m, &base)))
            return s;
        if (base == 0 || m->stack[base - 1]->kind != FST__PV_LIST)
            return fail(m, "APPENDS to something else than a list");
        if ((s = seq_add(m, m->stack[base - 1], m->stack + base, m->sp - base)))
            return s;
        m->sp = base;
        m->nmarks--;
        return FST_OK;
    }
    case '}':
        return push(m, new_value(m, FST__PV_DICT));
    case 'd': {                                  /* DICT */
        size_t base = 0;
        if ((s = mark_base(m, &base)))
            return s;
        if ((m->sp - base) % 2)
            return fail(m, "DICT with an odd number of items");
        fst__pv *d = new_value(m, FST__PV_DICT);
        if (!d)
            return oom(m);
        if ((s = dict_set(m, d, m->stack + base, (m->sp - base) / 2)))
            return s;
        m->sp = base;
        m->nmarks--;
        return push(m, d);
    }
    case 's': {                                  /* SETITEM */
        if ((s = need(m, 3)))
            return s;
        fst__pv *d = m->stack[m->sp - 3];
        if (d->kind != FST__PV_DICT)
            return fail(m, "SETITEM on something else than a dict");
        if ((s = dict_set(m, d, m->stack + m->sp - 2, 1)))
            return s;
        m->sp -= 2;
        return FST_OK;
    }
    case 'u': {                                  /* SETITEMS */
        size_t base = 0;
        if ((s = mark_base(m, &base)))
            return s;
        if (base == 0 || m->stack[base - 1]->kind != FST__PV_DICT)
            return fail(m, "SETITEMS on something else than a dict");
        if ((m->sp - base) % 2)
            return fail(m, "SETITEMS with an odd number of items");
        if ((s = dict_set(m, m->stack[base - 1], m->stack + base, (m->sp - base) / 2)))
            return s;
        m->sp = base;
        m->nmarks--;
        return FST_OK;
    }
    case 'c': {                                  /* GLOBAL "module\nname\n" */
        const uint8_t *mod, *name;
        size_t nmod, nname;
        if (!take_line(m, &mod, &nmod) || !take_line(m, &name, &nname))
            return fail(m, "truncated GLOBAL");
        return push_global(m, mod, nmod, name, nname);
    }
    case 0x93: {                                 /* STACK_GLOBAL */
        if ((s = need(m, 2)))
            return s;
        fst__pv *mod = m->stack[m->sp - 2], *name = m->stack[m->sp - 1];
        if (mod->kind != FST__PV_STR || name->kind != FST__PV_STR)
            return fail(m, "STACK_GLOBAL of something else than strings");
        m->sp -= 2;
        return push_global(m, mod->u.s.p, mod->u.s.n, name->u.s.p, name->u.s.n);
    }
    case 'R':                                    /* REDUCE */
        if ((s = need(m, 2)))
            return s;
        return reduce(m);
    case 'b': {                                  /* BUILD */
        if ((s = need(m, 2)))
            return s;
        fst__pv *obj = m->stack[m->sp - 2];
        /* OrderedDict's state is its __dict__: torch's state_dict() sets
         * `_metadata` there. Nothing else of ours has a state. */
        if (obj->kind != FST__PV_DICT || !obj->u.dict.ordered) {
            snprintf(msg, sizeof msg, "refusing BUILD on type %s", fst__pv_kind_name(obj));
            return fail(m, msg);
        }
        if (m->stack[m->sp - 1]->kind != FST__PV_DICT)
            return fail(m, "BUILD of an OrderedDict with a state that is not a dict");
        m->sp--;
        return FST_OK;
    }
    case 'Q':                                    /* BINPERSID */
        if ((s = need(m, 1)))
            return s;
        return persistent_load(m, m->stack[--m->sp]);
    case 'q':                                    /* BINPUT */
        if (!take(m, 1, &p))
            return fail(m, "truncated BINPUT");
        return memo_put(m, p[0]);
    case 'r':                                    /* LONG_BINPUT */
        if (!take(m, 4, &p))
            return fail(m, "truncated LONG_BINPUT");
        return memo_put(m, le(p, 4));
    case 0x94:                                   /* MEMOIZE: len(memo) */
        return memo_put(m, m->memo_len);
    case 'h':                                    /* BINGET */
        if (!take(m, 1, &p))
            return fail(m, "truncated BINGET");
        return memo_get(m, p[0]);
    case 'j':                                    /* LONG_BINGET */
        if (!take(m, 4, &p))
            return fail(m, "truncated LONG_BINGET");
        return memo_get(m, le(p, 4));
    case 'i': {                                  /* INST: name what it is */
        const uint8_t *mod, *name;
        size_t nmod, nname;
        if (take_line(m, &mod, &nmod) && take_line(m, &name, &nname)) {
            char sm[96], sn[96];
            safe_text(sm, sizeof sm, mod, nmod);
            safe_text(sn, sizeof sn, name, nname);
            snprintf(msg, sizeof msg, "refusing INST %s.%s", sm, sn);
            return fail(m, msg);
        }
        return fail(m, "refusing opcode INST");
    }
    default:
        if (opname(op))
            snprintf(msg, sizeof msg, "refusing opcode %s", opname(op));
        else
            snprintf(msg, sizeof msg, "unknown opcode 0x%02x", op);
        return fail(m, msg);
    }
}

fst_status fst__pk_run(fst__pk *pk, const uint8_t *buf, size_t len,
                       const char *where, fst__pv **result, size_t *used)
{
    vm m = {.pk = pk, .buf = buf, .len = len, .where = where};
    m.memo_max = len > PK_MIN_MEMO ? len : PK_MIN_MEMO;
    /* never NULL: `stack + base` is computed for empty ranges too */
    m.stack_cap = 64;
    m.stack = malloc(m.stack_cap * sizeof *m.stack);
    if (!m.stack)
        return oom(&m);
    fst_status s = FST_OK;
    bool stop = false;
    while (!stop && (s = step(&m, &stop)) == FST_OK)
        ;
    if (s == FST_OK) {
        *result = m.stack[0];
        *used = m.pos;
    }
    free(m.stack);
    free(m.marks);
    free(m.memo);
    return s;
}
