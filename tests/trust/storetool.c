/* storetool.c : test helper for tests/trust/: change a store in ways no
 * featstore command does (a newer format version, a damaged record), and
 * count reader slots.
 *
 *   storetool meta-u64 STORE KEY VALUE      set a u64 meta value (e.g.
 *                                           format_major 2)
 *   storetool record-major STORE NAME MAJOR rewrite image NAME's record
 *                                           with another format major (the
 *                                           checksum still matches: only the
 *                                           version is "wrong")
 *   storetool slots STORE                   print the reader slots in use
 *
 * Exits 0 on success, 1 with a message on error. */
#include "fst_format.h"
#include "fst_store.h"
#include "store_impl.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int die(const char *what, fst_status s)
{
    fprintf(stderr, "storetool: %s: %s: %s\n", what, fst_strerror(s),
            fst_errdetail());
    return 1;
}

int main(int argc, char **argv)
{
    fst_status s;
    if (argc == 5 && !strcmp(argv[1], "meta-u64")) {
        uint64_t v = strtoull(argv[4], NULL, 0);
        unsigned char b[8];
        for (int i = 0; i < 8; i++)
            b[i] = (unsigned char)(v >> (8 * i));
        if ((s = fst__store_put_raw(argv[2], FST_DB_META, argv[3], b, 8)))
            return die("meta-u64", s);
        return 0;
    }
    if (argc == 5 && !strcmp(argv[1], "record-major")) {
        fst_store *st = NULL;
        fst_reader *rd = NULL;
        fst_view v;
        if ((s = fst_store_open(argv[2], 0, &st)))
            return die("open", s);
        if ((s = fst_reader_begin(st, &rd)) ||
            (s = fst_reader_get(rd, argv[3], &v)))
            return die("get", s);
        /* re-encode the image from its view, then patch the major */
        fst_image img = {
            .name = v.name, .n = v.n, .d = v.d, .dtype = v.dtype,
            .flags = v.flags, .image_size = {v.image_size[0], v.image_size[1]},
            .uncertainty = v.uncertainty, .keypoints = v.keypoints,
            .scores = v.scores, .desc = v.desc,
        };
        size_t len = fst__record_size(&img, NULL);
        unsigned char *rec = calloc(1, len);
        if (!rec || (s = fst__record_encode(&img, 1, rec, len)))
            return die("encode", s ? s : FST_ENOMEM);
        fst_reader_end(rd);
        fst_store_close(st);
        unsigned major = (unsigned)strtoul(argv[4], NULL, 0);
        rec[FST_REC_OFF_MAJOR] = (unsigned char)major;
        rec[FST_REC_OFF_MAJOR + 1] = (unsigned char)(major >> 8);
        if ((s = fst__store_put_raw(argv[2], FST_DB_IMAGES, argv[3], rec,
                                    len)))
            return die("put", s);
        free(rec);
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "slots")) {
        fst_store *st = NULL;
        unsigned n = 0;
        if ((s = fst_store_open(argv[2], 0, &st)))
            return die("open", s);
        if ((s = fst__store_reader_slots(st, &n)))
            return die("slots", s);
        printf("%u\n", n);
        fst_store_close(st);
        return 0;
    }
    fprintf(stderr, "usage: storetool meta-u64 STORE KEY VALUE | "
                    "record-major STORE NAME MAJOR | slots STORE\n");
    return 2;
}
