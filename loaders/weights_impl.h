/* weights_impl.h : the pieces of the weight-file reader (fst_weights.h),
 * shared by weights.c, pickle.c and zipread.c; not public.
 *
 * pickle.c  a restricted pickle interpreter: builds values (dicts, tuples,
 *           ints, strings...) and torch tensors that refer to storages by
 *           key; knows no other callable.
 * zipread.c a zip directory reader for stored (uncompressed) entries,
 *           zip64 included, and CRC-32.
 * weights.c the formats (torch-zip, torch-legacy, safetensors), the tensor
 *           table, the public functions.
 */
#ifndef FST_WEIGHTS_IMPL_H
#define FST_WEIGHTS_IMPL_H

#include <stdint.h>

#include "base_impl.h"
#include "fst_weights.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- pickle.c ---- */

typedef enum fst__pv_kind {
    FST__PV_NONE, FST__PV_BOOL, FST__PV_INT, FST__PV_BIGINT, FST__PV_FLOAT,
    FST__PV_STR, FST__PV_BYTES, FST__PV_TUPLE, FST__PV_LIST, FST__PV_DICT,
    FST__PV_GLOBAL, FST__PV_STORAGE, FST__PV_TENSOR,
} fst__pv_kind;

/* The only globals a pickle may name (anything else is refused). */
typedef enum fst__pk_global {
    FST__G_ORDERED_DICT = 1,      /* collections.OrderedDict */
    FST__G_REBUILD_TENSOR,        /* torch._utils._rebuild_tensor */
    FST__G_REBUILD_TENSOR_V2,     /* torch._utils._rebuild_tensor_v2 */
    FST__G_REBUILD_PARAMETER,     /* torch._utils._rebuild_parameter */
    FST__G_REBUILD_PARAMETER_STATE, /* ..._rebuild_parameter_with_state */
    FST__G_STORAGE_TYPE,          /* torch.<Dtype>Storage (dtype says which) */
} fst__pk_global;

/* A pickle value. Values live in the interpreter's arena; containers may be
 * shared (the memo) and even cyclic, so nothing walks them recursively. */
typedef struct fst__pv fst__pv;
struct fst__pv {
    fst__pv_kind kind;
    union {
        bool    b;
        int64_t i;
        double  f;
        struct { const uint8_t *p; size_t n; } s;  /* STR (UTF-8 as in the
                            file), BYTES, BIGINT (little-endian two's
                            complement); points into the pickle's bytes */
        struct { fst__pv **items; size_t n, cap; } seq;   /* TUPLE, LIST */
        struct { fst__pv **kv; size_t n, cap; bool ordered; } dict;
                            /* n pairs: kv[2i] key, kv[2i + 1] value */
        struct { fst__pk_global g; fst_weights_dtype dtype; } global;
        struct { uint32_t index; int64_t off, count; } storage;
                            /* storage `index` of the interpreter's table,
                               elements off .. off + count (a legacy view) */
        struct {
            uint32_t storage;              /* index in the table */
            int64_t  base;                 /* the storage value's `off` */
            int64_t  count;                /* the storage value's `count` */
            int64_t  offset;               /* storage_offset */
            int      ndim;
            int64_t  shape[FST_WEIGHTS_MAX_DIMS];
            int64_t  stride[FST_WEIGHTS_MAX_DIMS];
        } tensor;
    } u;
};

/* A storage named by persistent ids: ('storage', torch.<T>Storage, key,
 * location, numel[, view_metadata]). One entry per distinct key. */
typedef struct fst__pk_storage {
    const uint8_t    *key;       /* into the pickle's bytes; not NUL-ended */
    size_t            key_len;
    fst_weights_dtype dtype;
    int64_t           numel;
} fst__pk_storage;

typedef struct fst__pk fst__pk;

/* fst__pk_new() : an interpreter (its arena and storage table). NULL when
 * out of memory. fst__pk_free(NULL) is fine. */
fst__pk *fst__pk_new(void);
void     fst__pk_free(fst__pk *pk);

/* fst__pk_run() :
 * Interpret one pickle starting at buf[0] (len bytes available) up to its
 * STOP; *result gets the value, *used the bytes consumed (STOP included).
 * Values stay valid until fst__pk_free(). Storages met in persistent ids
 * are added to pk's table (shared by every run on pk). `where` prefixes
 * messages ("w.pth: data.pkl").
 * @return FST_OK; FST_EFORMAT (refused, malformed or truncated: the detail
 *         says what and at which byte); FST_ENOMEM. */
fst_status fst__pk_run(fst__pk *pk, const uint8_t *buf, size_t len,
                       const char *where, fst__pv **result, size_t *used);

/* fst__pk_storages() : pk's storage table (*n entries). */
const fst__pk_storage *fst__pk_storages(const fst__pk *pk, size_t *n);

/* fst__pk_storage_find() : the index in that table of the storage named
 * key[0..n), or SIZE_MAX. O(1) expected. */
size_t fst__pk_storage_find(const fst__pk *pk, const uint8_t *key, size_t n);

/* fst__pv_kind_name() : "dict", "tuple", "tensor"... for messages. */
const char *fst__pv_kind_name(const fst__pv *v);

/* ---- zipread.c ---- */

typedef struct fst__zip_entry {
    const uint8_t *name;      /* into the archive; not NUL-ended */
    size_t         name_len;
    uint16_t       method;    /* 0 stored, 8 deflate... */
    uint16_t       flags;     /* general purpose bit flags */
    uint32_t       crc;
    uint64_t       size;      /* compressed size = bytes at data */
    uint64_t       usize;     /* uncompressed size */
    const uint8_t *data;      /* the entry's bytes, inside the archive */
} fst__zip_entry;

/* fst__zip_read() :
 * Read the central directory of the zip archive buf[0..len) (zip64 end
 * records and extra fields understood), check every entry's local header
 * and that its bytes lie inside the archive. *entries (malloc'd, the
 * caller frees) gets *n entries in directory order. Names are unique.
 * `where` prefixes messages.
 * @return FST_OK; FST_EFORMAT (not a zip, multi-disk, out of bounds,
 *         truncated, duplicate names); FST_ENOMEM. */
fst_status fst__zip_read(const uint8_t *buf, size_t len, const char *where,
                         fst__zip_entry **entries, size_t *n);

/* fst__crc32() : the zip (IEEE 802.3) CRC-32 of p[0..n), continuing `crc`
 * (start with 0). */
uint32_t fst__crc32(uint32_t crc, const void *p, size_t n);

#ifdef __cplusplus
}
#endif
#endif
