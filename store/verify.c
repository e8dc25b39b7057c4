/* verify.c : fst_store_verify(): every record's checksum and bounds, and
 * the meta table's totals against the records. */
#define FST_STORE_LMDB
#include "store_impl.h"

#include <string.h>

fst_status fst_store_verify(fst_store *st, fst_verify_cb *bad, void *ctx,
                            uint64_t *n_checked, uint64_t *n_bad)
{
    fst_reader *rd = NULL;
    fst_status s = fst_reader_begin(st, &rd);
    if (s)
        return s;
    fst_store_meta m;
    uint64_t checked = 0, nbad = 0, nkp = 0, payload = 0;
    char name[1024];
    s = fst__meta_read(rd->txn, st->sh->meta, st->path, &m, NULL);
    if (s)
        goto out;
    MDB_cursor_op op = MDB_FIRST;
    for (;;) {
        MDB_val k, v;
        int rc = mdb_cursor_get(rd->cur, &k, &v, op);
        op = MDB_NEXT;
        if (rc == MDB_NOTFOUND)
            break;
        if (rc) {
            s = fst__from_mdb(rc, "%s: iterating", st->path);
            goto out;
        }
        size_t kl = k.mv_size < sizeof name - 1 ? k.mv_size : sizeof name - 1;
        memcpy(name, k.mv_data, kl);
        name[kl] = '\0';
        fst_view vw;
        bool visible = true;
        fst_status rs = fst__reader_decode(rd, &k, &v, FST__DEC_ALIGN | FST__DEC_CHECKSUM,
                               &vw, &visible);
        if (rs == FST_OK && !visible)
            continue;               /* an unfinished append's record */
        checked++;
        if (rs == FST_OK && vw.d != 0 &&
            (vw.d != m.d || vw.dtype != m.dtype)) {
            char b[FST__NAME_MSG];
            rs = fst__fail(FST_ECORRUPT, "%s: image '%s': %s x %u "
                           "descriptors in a store of %s x %u", st->path,
                           fst__name_for_msg(b, k.mv_data, k.mv_size),
                           fst_dtype_name(vw.dtype), vw.d,
                           fst_dtype_name(m.dtype), m.d);
        }
        if (rs) {
            nbad++;
            if (bad)
                bad(name, rs, fst_errdetail(), ctx);
            continue;
        }
        nkp += vw.n;
        payload += fst__view_data_bytes(&vw);
    }
    /* The totals in meta must add up (only when every record was good:
     * a bad record's share is unknown). */
    if (nbad == 0 && (checked != m.n_images || nkp != m.n_keypoints ||
                      payload != m.payload_bytes)) {
        fst__fail(FST_ECORRUPT, "%s: metadata says %llu images, %llu "
                  "keypoints, %llu data bytes; the records hold %llu, "
                  "%llu, %llu", st->path, (unsigned long long)m.n_images,
                  (unsigned long long)m.n_keypoints,
                  (unsigned long long)m.payload_bytes,
                  (unsigned long long)checked, (unsigned long long)nkp,
                  (unsigned long long)payload);
        nbad++;
        if (bad)
            bad("(metadata)", FST_ECORRUPT, fst_errdetail(), ctx);
    }
    s = nbad ? FST_ECORRUPT : FST_OK;
    if (s)
        fst__fail(s, "%s: %llu of %llu records bad", st->path,
                  (unsigned long long)nbad, (unsigned long long)checked);
out:
    fst_reader_end(rd);
    if (s == FST_OK || s == FST_ECORRUPT) {
        if (n_checked)
            *n_checked = checked;
        if (n_bad)
            *n_bad = nbad;
    }
    return s;
}
