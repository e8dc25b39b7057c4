/* meta.c : the meta table of a store: its values' encoding (8-byte
 * little-endian integers, strings), reading and checking it whole
 * (fst__meta_read()), the store's identity and its write history. */
#define FST_STORE_LMDB
#include "store_impl.h"

#include "fst_config.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

int fst__meta_u64(MDB_txn *txn, MDB_dbi meta, const char *key, uint64_t *v)
{
    MDB_val k = { strlen(key), (void *)key }, d;
    int rc = mdb_get(txn, meta, &k, &d);
    if (rc)
        return rc;
    if (d.mv_size != 8)
        return MDB_BAD_VALSIZE;
    const unsigned char *p = d.mv_data;
    uint64_t x = 0;
    for (int i = 7; i >= 0; i--)
        x = x << 8 | p[i];
    *v = x;
    return MDB_SUCCESS;
}

int fst__meta_put_u64(MDB_txn *txn, MDB_dbi meta, const char *key, uint64_t v)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    MDB_val k = { strlen(key), (void *)key }, d = { 8, b };
    return mdb_put(txn, meta, &k, &d, 0);
}

int fst__meta_put_str(MDB_txn *txn, MDB_dbi meta, const char *key,
                      const char *s)
{
    MDB_val k = { strlen(key), (void *)key }, d = { strlen(s), (void *)s };
    if (d.mv_size == 0)             /* LMDB stores empty values fine, but */
        d.mv_data = (void *)"";     /* wants a valid pointer */
    return mdb_put(txn, meta, &k, &d, 0);
}

static void meta_str(MDB_txn *txn, MDB_dbi meta, const char *key, char *out,
                     size_t cap)
{
    MDB_val k = { strlen(key), (void *)key }, d;
    out[0] = '\0';
    if (mdb_get(txn, meta, &k, &d) == MDB_SUCCESS) {
        size_t n = d.mv_size < cap - 1 ? d.mv_size : cap - 1;
        memcpy(out, d.mv_data, n);
        out[n] = '\0';
    }
}

fst_status fst__meta_read(MDB_txn *txn, MDB_dbi meta, const char *path,
                          fst_store_meta *out, uint64_t *gen)
{
    fst_store_meta m;
    memset(&m, 0, sizeof m);
    uint64_t major, minor = 0, complete = 0, v;
    int rc = fst__meta_u64(txn, meta, FST_META_FORMAT_MAJOR, &major);
    if (rc == MDB_NOTFOUND || rc == MDB_BAD_VALSIZE)
        return fst__fail(FST_EFORMAT, "%s: not a featstore store (no format "
                         "version)", path);
    if (rc)
        return fst__from_mdb(rc, "%s: reading metadata", path);
    fst__meta_u64(txn, meta, FST_META_FORMAT_MINOR, &minor);
    if (major > FST_FORMAT_MAJOR)
        return fst__fail(FST_EVERSION, "%s: store format %llu.%llu; this "
                         "featstore (%s) reads format %d.x: upgrade featstore",
                         path, (unsigned long long)major,
                         (unsigned long long)minor, FST_VERSION_STRING,
                         FST_FORMAT_MAJOR);
    if (major < 1)
        return fst__fail(FST_EFORMAT, "%s: store format %llu.%llu does not "
                         "exist", path, (unsigned long long)major,
                         (unsigned long long)minor);
    rc = fst__meta_u64(txn, meta, FST_META_COMPLETE, &complete);
    if ((rc && rc != MDB_NOTFOUND) || complete != 1)
        return fst__fail(FST_EFORMAT, "%s: incomplete import: run the import "
                         "again", path);

    static const struct { const char *key; size_t off; } req[] = {
        { FST_META_D, offsetof(fst_store_meta, d) },
        { FST_META_DTYPE, offsetof(fst_store_meta, dtype) },
        { FST_META_N_IMAGES, offsetof(fst_store_meta, n_images) },
        { FST_META_N_KEYPOINTS, offsetof(fst_store_meta, n_keypoints) },
        { FST_META_PAYLOAD_BYTES, offsetof(fst_store_meta, payload_bytes) },
        { FST_META_CREATED, offsetof(fst_store_meta, created) },
        { FST_META_MODIFIED, offsetof(fst_store_meta, modified) },
        { FST_META_GENERATION, 0 },
    };
    uint64_t g = 0;
    for (size_t i = 0; i < sizeof req / sizeof req[0]; i++) {
        rc = fst__meta_u64(txn, meta, req[i].key, &v);
        if (rc == MDB_NOTFOUND || rc == MDB_BAD_VALSIZE)
            return fst__fail(FST_ECORRUPT, "%s: metadata lacks a valid '%s'",
                             path, req[i].key);
        if (rc)
            return fst__from_mdb(rc, "%s: reading metadata", path);
        char *f = (char *)&m + req[i].off;
        if (i == 0) {
            if (v > UINT32_MAX)
                return fst__fail(FST_ECORRUPT, "%s: metadata d = %llu", path,
                                 (unsigned long long)v);
            m.d = (uint32_t)v;
        } else if (i == 1) {
            if (v != 0 && fst_dtype_size((fst_dtype)v) == 0)
                return fst__fail(FST_ECORRUPT, "%s: metadata dtype %llu",
                                 path, (unsigned long long)v);
            m.dtype = (fst_dtype)v;
        } else if (i == 7) {
            g = v;
        } else {
            memcpy(f, &v, 8);       /* u64 and i64 fields alike */
        }
    }
    m.format_major = (uint32_t)major;
    m.format_minor = (uint32_t)minor;
    meta_str(txn, meta, FST_META_VERSION, m.featstore_version,
             sizeof m.featstore_version);
    meta_str(txn, meta, FST_META_SOURCE_NAME, m.source_name,
             sizeof m.source_name);
    if (fst__meta_u64(txn, meta, FST_META_SOURCE_SIZE, &v) == MDB_SUCCESS)
        m.source_size = v;
    if (fst__meta_u64(txn, meta, FST_META_SOURCE_MTIME, &v) == MDB_SUCCESS)
        m.source_mtime = (int64_t)v;
    m.generation = g;
    /* format 1.1: the store's id; a 1.0 store has none (an id of another
     * size is damage, not an old store) */
    MDB_val ik = { strlen(FST_META_STORE_ID), (void *)FST_META_STORE_ID }, iv;
    rc = mdb_get(txn, meta, &ik, &iv);
    if (rc == MDB_SUCCESS && iv.mv_size != sizeof m.id)
        return fst__fail(FST_ECORRUPT, "%s: metadata '%s' has %zu bytes, not "
                         "%zu", path, FST_META_STORE_ID, iv.mv_size,
                         sizeof m.id);
    if (rc && rc != MDB_NOTFOUND)
        return fst__from_mdb(rc, "%s: reading metadata", path);
    if (rc == MDB_SUCCESS) {
        memcpy(m.id, iv.mv_data, sizeof m.id);
        m.has_id = true;
        /* the last entry of the history is this generation's write */
        MDB_val hk = { strlen(FST_META_HISTORY), (void *)FST_META_HISTORY }, hv;
        rc = mdb_get(txn, meta, &hk, &hv);
        const unsigned char *e = rc == MDB_SUCCESS && hv.mv_size >= FST_HISTORY_ENTRY &&
                                 hv.mv_size % FST_HISTORY_ENTRY == 0
                                 ? (const unsigned char *)hv.mv_data + hv.mv_size -
                                   FST_HISTORY_ENTRY : NULL;
        uint64_t eg = 0;
        for (int i = 7; e && i >= 0; i--)
            eg = eg << 8 | e[i];
        if (rc && rc != MDB_NOTFOUND)
            return fst__from_mdb(rc, "%s: reading metadata", path);
        if (!e || eg != g)
            return fst__fail(FST_ECORRUPT, "%s: metadata '%s' lacks generation %llu",
                             path, FST_META_HISTORY, (unsigned long long)g);
        memcpy(m.write_id, e + 8, sizeof m.write_id);
    }
    if (out)
        *out = m;
    if (gen)
        *gen = g;
    return FST_OK;
}

void fst_store_identity(const fst_store_meta *m, char *buf)
{
    if (m->has_id) {
        char *p = buf + sprintf(buf, "id=");
        for (size_t i = 0; i < sizeof m->id; i++)
            p += sprintf(p, "%02x", m->id[i]);
        return;
    }
    snprintf(buf, FST_STORE_IDENTITY_LEN, "legacy=%llu,%llu,%llu,%lld,%lld,%u,%u",
             (unsigned long long)m->n_images, (unsigned long long)m->n_keypoints,
             (unsigned long long)m->payload_bytes, (long long)m->created,
             (long long)m->modified, m->d, (unsigned)m->dtype);
}

fst_status fst_store_meta_get(fst_store *st, fst_store_meta *out)
{
    fst_reader *rd = NULL;
    fst_status s = fst_reader_begin(st, &rd);
    if (s)
        return s;
    s = fst__meta_read(rd->txn, st->sh->meta, st->path, out, NULL);
    fst_reader_end(rd);
    return s;
}

fst_status fst_store_write_id(fst_store *st, uint64_t generation, uint8_t out[16])
{
    fst_reader *rd = NULL;
    fst_status s = fst_reader_begin(st, &rd);
    if (s)
        return s;
    MDB_val hk = { strlen(FST_META_HISTORY), (void *)FST_META_HISTORY }, hv;
    int rc = mdb_get(rd->txn, st->sh->meta, &hk, &hv);
    if (rc == MDB_NOTFOUND) {
        s = fst__fail(FST_ENOTFOUND, "%s: no write history (format 1.0)", st->path);
    } else if (rc) {
        s = fst__from_mdb(rc, "%s: reading metadata", st->path);
    } else if (hv.mv_size % FST_HISTORY_ENTRY) {
        s = fst__fail(FST_ECORRUPT, "%s: metadata '%s' has %zu bytes", st->path,
                      FST_META_HISTORY, hv.mv_size);
    } else {
        s = fst__fail(FST_ENOTFOUND, "%s: no generation %llu in its history", st->path,
                      (unsigned long long)generation);
        const unsigned char *p = hv.mv_data;
        for (size_t off = 0; off < hv.mv_size; off += FST_HISTORY_ENTRY) {
            uint64_t g = 0;
            for (int i = 7; i >= 0; i--)
                g = g << 8 | p[off + (size_t)i];
            if (g == generation) {
                memcpy(out, p + off + 8, 16);
                s = FST_OK;
                break;
            }
        }
    }
    fst_reader_end(rd);
    return s;
}
