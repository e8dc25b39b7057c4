/* loaders/zipread.c : the directory of a zip archive held in memory, as
 * torch.save writes it (stored entries, zip64 end records), and CRC-32.
 * Reads nothing outside [buf, buf + len): every offset and length read
 * from the archive is checked before use. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "weights_impl.h"

static uint64_t rd(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* ---- CRC-32 (slice by 8) ---- */

static uint32_t crc_tab[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_tab[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_tab[t][i] = crc_tab[0][crc_tab[t - 1][i] & 0xff] ^ (crc_tab[t - 1][i] >> 8);
}

uint32_t fst__crc32(uint32_t crc, const void *data, size_t n)
{
    pthread_once(&crc_once, crc_init);
    const uint8_t *p = data;
    uint32_t c = ~crc;
    while (n >= 8) {
        uint32_t a = c ^ (uint32_t)rd(p, 4), b = (uint32_t)rd(p + 4, 4);
        c = crc_tab[7][a & 0xff] ^ crc_tab[6][(a >> 8) & 0xff] ^
            crc_tab[5][(a >> 16) & 0xff] ^ crc_tab[4][a >> 24] ^
            crc_tab[3][b & 0xff] ^ crc_tab[2][(b >> 8) & 0xff] ^
            crc_tab[1][(b >> 16) & 0xff] ^ crc_tab[0][b >> 24];
        p += 8;
        n -= 8;
    }
    while (n--)
        c = crc_tab[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    return ~c;
}

/* ---- directory ---- */

#define EOCD_LEN      22u
#define LOC64_LEN     20u
#define EOCD64_LEN    56u
#define CEN_LEN       46u
#define LOC_LEN       30u

static int by_name(const void *a, const void *b)
{
    const fst__zip_entry *x = a, *y = b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);
    return c ? c : (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

/* The zip64 extended information of a central entry: the fields whose
 * 32-bit value is saturated, in this order. */
static fst_status zip64_extra(const uint8_t *x, size_t xlen, uint64_t *usize, uint64_t *csize,
                              uint64_t *lho, const char *where, size_t idx)
{
    while (xlen >= 4) {
        uint16_t id = (uint16_t)rd(x, 2), sz = (uint16_t)rd(x + 2, 2);
        if (sz > xlen - 4)
            return fst__fail(FST_EFORMAT, "%s: zip entry %zu: extra field past its end",
                             where, idx);
        if (id == 1) {
            const uint8_t *f = x + 4, *e = x + 4 + sz;
            uint64_t *want[3] = {usize, csize, lho};
            for (int k = 0; k < 3; k++) {
                if (*want[k] != 0xFFFFFFFFu)
                    continue;
                if (e - f < 8)
                    return fst__fail(FST_EFORMAT, "%s: zip entry %zu: short zip64 field",
                                     where, idx);
                *want[k] = rd(f, 8);
                f += 8;
            }
            return FST_OK;
        }
        x += 4 + sz;
        xlen -= 4 + (size_t)sz;
    }
    if (*usize == 0xFFFFFFFFu || *csize == 0xFFFFFFFFu || *lho == 0xFFFFFFFFu)
        return fst__fail(FST_EFORMAT, "%s: zip entry %zu: saturated size or offset "
                         "without a zip64 field", where, idx);
    return FST_OK;
}

fst_status fst__zip_read(const uint8_t *buf, size_t len, const char *where,
                         fst__zip_entry **entries, size_t *n_out)
{
    /* the end of central directory record, searched backwards over the
     * longest comment a zip may have */
    if (len < EOCD_LEN)
        return fst__fail(FST_EFORMAT, "%s: truncated zip archive (no end record)", where);
    size_t eocd = SIZE_MAX;
    size_t lo = len - EOCD_LEN > 65535 ? len - EOCD_LEN - 65535 : 0;
    for (size_t i = len - EOCD_LEN + 1; i-- > lo;) {
        const uint8_t *p = buf + i;
        if (p[0] == 'P' && p[1] == 'K' && p[2] == 5 && p[3] == 6 &&
            i + EOCD_LEN + rd(p + 20, 2) <= len) {
            eocd = i;
            break;
        }
    }
    if (eocd == SIZE_MAX)
        return fst__fail(FST_EFORMAT, "%s: truncated zip archive (no end record)", where);
    const uint8_t *e = buf + eocd;
    uint64_t disk = rd(e + 4, 2), cd_disk = rd(e + 6, 2), n_disk = rd(e + 8, 2);
    uint64_t n = rd(e + 10, 2), cd_size = rd(e + 12, 4), cd_off = rd(e + 16, 4);
    /* zip64: a locator just before the end record points at the zip64 end
     * record, whose counts and offsets replace the saturated ones */
    if (eocd >= LOC64_LEN && !memcmp(e - LOC64_LEN, "PK\6\7", 4)) {
        const uint8_t *l = e - LOC64_LEN;
        uint64_t off = rd(l + 8, 8);
        if (rd(l + 4, 4) != 0 || rd(l + 16, 4) > 1)
            return fst__fail(FST_EFORMAT, "%s: multi-disk zip archive", where);
        if (off > len || len - off < EOCD64_LEN || memcmp(buf + off, "PK\6\6", 4))
            return fst__fail(FST_EFORMAT, "%s: zip64 end record missing or out of bounds",
                             where);
        const uint8_t *z = buf + off;
        disk = rd(z + 16, 4);
        cd_disk = rd(z + 20, 4);
        n_disk = rd(z + 24, 8);
        n = rd(z + 32, 8);
        cd_size = rd(z + 40, 8);
        cd_off = rd(z + 48, 8);
    } else if (n == 0xFFFF || cd_size == 0xFFFFFFFFu || cd_off == 0xFFFFFFFFu) {
        return fst__fail(FST_EFORMAT, "%s: zip64 archive without its zip64 end record",
                         where);
    }
    if (disk != 0 || cd_disk != 0 || n_disk != n)
        return fst__fail(FST_EFORMAT, "%s: multi-disk zip archive", where);
    if (cd_off > len || cd_size > len - cd_off)
        return fst__fail(FST_EFORMAT, "%s: zip central directory out of bounds "
                         "(truncated file?)", where);
    if (n > cd_size / CEN_LEN)
        return fst__fail(FST_EFORMAT, "%s: zip directory claims %llu entries in %llu bytes",
                         where, (unsigned long long)n, (unsigned long long)cd_size);

    fst__zip_entry *ent = calloc(n ? (size_t)n : 1, sizeof *ent);
    if (!ent)
        return fst__fail(FST_ENOMEM, "%s: zip directory", where);
    fst_status s = FST_OK;
    const uint8_t *c = buf + cd_off, *cend = c + cd_size;
    for (size_t i = 0; i < n; i++) {
        if ((size_t)(cend - c) < CEN_LEN || memcmp(c, "PK\1\2", 4)) {
            s = fst__fail(FST_EFORMAT, "%s: zip directory entry %zu damaged", where, i);
            goto out;
        }
        fst__zip_entry *z = &ent[i];
        z->flags = (uint16_t)rd(c + 8, 2);
        z->method = (uint16_t)rd(c + 10, 2);
        z->crc = (uint32_t)rd(c + 16, 4);
        uint64_t csize = rd(c + 20, 4), usize = rd(c + 24, 4);
        size_t nlen = (size_t)rd(c + 28, 2), xlen = (size_t)rd(c + 30, 2),
               clen = (size_t)rd(c + 32, 2);
        uint64_t lho = rd(c + 42, 4);
        if ((size_t)(cend - c) - CEN_LEN < nlen + xlen + clen) {
            s = fst__fail(FST_EFORMAT, "%s: zip directory entry %zu past the directory",
                          where, i);
            goto out;
        }
        z->name = c + CEN_LEN;
        z->name_len = nlen;
        if ((s = zip64_extra(c + CEN_LEN + nlen, xlen, &usize, &csize, &lho, where, i)))
            goto out;
        z->size = csize;
        z->usize = usize;
        c += CEN_LEN + nlen + xlen + clen;
        /* the local header: its name must be the directory's */
        if (lho > len || len - lho < LOC_LEN || memcmp(buf + lho, "PK\3\4", 4)) {
            s = fst__fail(FST_EFORMAT, "%s: zip entry %zu: local header missing or out of "
                          "bounds", where, i);
            goto out;
        }
        const uint8_t *l = buf + lho;
        size_t lnlen = (size_t)rd(l + 26, 2), lxlen = (size_t)rd(l + 28, 2);
        uint64_t data = lho + LOC_LEN + lnlen + lxlen;
        if (data > len || lnlen != nlen || memcmp(l + LOC_LEN, z->name, nlen)) {
            s = fst__fail(FST_EFORMAT, "%s: zip entry %zu: local header does not match "
                          "the directory", where, i);
            goto out;
        }
        if (csize > len - data) {
            char nm[128];
            size_t k = nlen < sizeof nm - 1 ? nlen : sizeof nm - 1;
            for (size_t j = 0; j < k; j++)
                nm[j] = z->name[j] >= 0x20 && z->name[j] < 0x7f ? (char)z->name[j] : '?';
            nm[k] = 0;
            s = fst__fail(FST_EFORMAT, "%s: zip entry %s: %llu bytes at offset %llu, past the "
                          "end of the file (%zu bytes; truncated?)", where, nm,
                          (unsigned long long)csize, (unsigned long long)data, len);
            goto out;
        }
        z->data = buf + data;
    }
    /* names unique: sort a copy */
    if (n > 1) {
        fst__zip_entry *sorted = malloc((size_t)n * sizeof *sorted);
        if (!sorted) {
            s = fst__fail(FST_ENOMEM, "%s: zip directory", where);
            goto out;
        }
        memcpy(sorted, ent, (size_t)n * sizeof *sorted);
        qsort(sorted, (size_t)n, sizeof *sorted, by_name);
        for (size_t i = 1; i < n && !s; i++)
            if (!by_name(&sorted[i - 1], &sorted[i]))
                s = fst__fail(FST_EFORMAT, "%s: zip archive names an entry twice", where);
        free(sorted);
        if (s)
            goto out;
    }
    *entries = ent;
    *n_out = (size_t)n;
    return FST_OK;
out:
    free(ent);
    return s;
}
