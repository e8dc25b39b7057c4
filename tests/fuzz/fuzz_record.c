/* fuzz_record.c : the store's record decoder, fst__record_decode(), on
 * mutated records.
 *
 * Input: one control byte, then the record (the LMDB value as it lies in
 * the map). Control bits:
 *   0-1  checks: FST__DEC_CHECKSUM / FST__DEC_ALIGN
 *   2    re-compute the checksum of the mutated record before decoding, so
 *        that mutations reach the bounds checks behind the checksum
 *   3    pass the record's own name block as the key (else no key)
 * The record is decoded from an exact-size heap copy placed 16 bytes past a
 * 64-byte boundary, as LMDB places an overflow value in the map, so ASan
 * catches a read of even one byte outside it.
 *
 * Invariants checked on success: every block the view points to lies
 * inside the record, the name is NUL-terminated inside it, the dtype is a
 * known one, and with a key the name equals it; scales and oris (format
 * 1.2) are there exactly when flagged, inside the record and aligned like
 * the other blocks. Decoding twice gives the
 * same view (no hidden state). */
#include "fuzz_util.h"

#include "fst_format.h"
#include "store_impl.h"

#include <xxhash.h>

static uint64_t rd64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void wr64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static bool inside(const void *p, size_t n, const uint8_t *lo, size_t len)
{
    const uint8_t *q = p;
    return q >= lo && (size_t)(q - lo) <= len && n <= len - (size_t)(q - lo);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned ctl = data[0];
    data++;
    size--;

    /* 16 bytes past a 64-byte boundary, exactly `size` bytes long */
    uint8_t *raw = aligned_alloc(64, 64 + ((size + 63) / 64) * 64 + 64);
    FUZZ_CHECK(raw != NULL);
    uint8_t *rec = raw + FST_REC_MAP_SKEW;
    memcpy(rec, data, size);
    if ((ctl & 4) && size >= FST_REC_HEADER_SIZE) {
        uint64_t hs = rd64(rec + FST_REC_OFF_HEADER_SIZE) & 0xffffffffu;
        uint64_t pl = rd64(rec + FST_REC_OFF_PAYLOAD_LEN);
        if (hs >= FST_REC_CHECKSUM_FROM && hs <= size && pl <= size - hs)
            wr64(rec + FST_REC_OFF_CHECKSUM,
                 XXH3_64bits(rec + FST_REC_CHECKSUM_FROM,
                             (size_t)(hs + pl) - FST_REC_CHECKSUM_FROM));
    }
    /* ASan: make the bytes around the record unreadable by copying it into
     * a heap block of exactly its size when it does not need the skew. */
    uint8_t *exact = malloc(size ? size : 1);
    FUZZ_CHECK(exact != NULL);
    memcpy(exact, rec, size);

    /* key: the name block as the record itself says (bounded), or none */
    const char *key = NULL;
    size_t keylen = 0;
    char keybuf[600];
    if ((ctl & 8) && size >= FST_REC_HEADER_SIZE) {
        uint32_t no = (uint32_t)rd64(rec + FST_REC_OFF_NAME);
        uint32_t nl = (uint32_t)(rd64(rec + FST_REC_OFF_NAME) >> 32);
        uint64_t hs = rd64(rec + FST_REC_OFF_HEADER_SIZE) & 0xffffffffu;
        if (nl >= 1 && nl < sizeof keybuf && hs + no <= size &&
            nl <= size - (hs + no)) {
            memcpy(keybuf, rec + hs + no, nl - 1);
            keybuf[nl - 1] = 0;
            key = keybuf;
            keylen = nl - 1;
        }
    }

    unsigned how = ctl & (FST__DEC_CHECKSUM | FST__DEC_ALIGN);
    for (int pass = 0; pass < 2; pass++) {
        /* pass 0: the exact-size copy (no alignment promise: drop ALIGN);
         * pass 1: the map-like placement */
        const uint8_t *buf = pass == 0 ? exact : rec;
        unsigned h = pass == 0 ? (how & ~(unsigned)FST__DEC_ALIGN) : how;
        fst_view v, v2;
        fst__rec_info info, info2;
        memset(&v, 0xa5, sizeof v);
        fst_status s = fst__record_decode(buf, size, key, keylen, h, &v, &info);
        FUZZ_CHECK(s == FST_OK || s == FST_ECORRUPT || s == FST_EVERSION);
        if (s != FST_OK) {
            FUZZ_CHECK(fst_errdetail()[0] != 0);   /* says what is wrong */
            continue;
        }
        size_t es = fst_dtype_size(v.dtype);
        FUZZ_CHECK(es == 2 || es == 4);
        FUZZ_CHECK(v.name && inside(v.name, 1, buf, size));
        size_t room = size - (size_t)((const uint8_t *)v.name - buf);
        FUZZ_CHECK(memchr(v.name, 0, room) != NULL);
        if (key)
            FUZZ_CHECK(strlen(v.name) == keylen &&
                       memcmp(v.name, key, keylen) == 0);
        FUZZ_CHECK(v.n == 0 || v.keypoints);
        if (v.n) {
            FUZZ_CHECK(inside(v.keypoints, (size_t)v.n * 8, buf, size));
            FUZZ_CHECK(v.d > 0 && v.desc);
            FUZZ_CHECK((size_t)v.n * v.d / v.d == v.n);
            FUZZ_CHECK(inside(v.desc, (size_t)v.n * v.d * es, buf, size));
            if (v.scores)
                FUZZ_CHECK(inside(v.scores, (size_t)v.n * 4, buf, size));
            if (v.scales)
                FUZZ_CHECK(inside(v.scales, (size_t)v.n * 4, buf, size));
            if (v.oris)
                FUZZ_CHECK(inside(v.oris, (size_t)v.n * 4, buf, size));
        }
        FUZZ_CHECK(!v.scales == !(v.flags & FST_VIEW_HAS_SCALES));
        FUZZ_CHECK(!v.oris == !(v.flags & FST_VIEW_HAS_ORIS));
        if (h & FST__DEC_ALIGN) {
            FUZZ_CHECK(!v.n || (uintptr_t)v.keypoints % 16 == 0);
            FUZZ_CHECK(!v.n || (uintptr_t)v.desc % 16 == 0);
            FUZZ_CHECK(!v.n || (uintptr_t)v.scales % 16 == 0);
            FUZZ_CHECK(!v.n || (uintptr_t)v.oris % 16 == 0);
        }
        FUZZ_CHECK(info.payload_len <= size);
        /* touch every byte the view promises: ASan reports any overrun */
        volatile uint8_t sink = 0;
        for (size_t i = 0; i < (size_t)v.n * 8; i++)
            sink ^= ((const uint8_t *)v.keypoints)[i];
        for (size_t i = 0; v.scores && i < (size_t)v.n * 4; i++)
            sink ^= ((const uint8_t *)v.scores)[i];
        for (size_t i = 0; v.scales && i < (size_t)v.n * 4; i++)
            sink ^= ((const uint8_t *)v.scales)[i];
        for (size_t i = 0; v.oris && i < (size_t)v.n * 4; i++)
            sink ^= ((const uint8_t *)v.oris)[i];
        for (size_t i = 0; i < (size_t)v.n * v.d * es; i++)
            sink ^= ((const uint8_t *)v.desc)[i];
        (void)sink;
        /* deterministic */
        FUZZ_CHECK(fst__record_decode(buf, size, key, keylen, h, &v2,
                                      &info2) == FST_OK);
        FUZZ_CHECK(v2.n == v.n && v2.d == v.d && v2.desc == v.desc &&
                   v2.keypoints == v.keypoints && v2.scores == v.scores &&
                   v2.scales == v.scales && v2.oris == v.oris &&
                   info2.generation == info.generation);
    }
    free(exact);
    free(raw);
    return 0;
}
