/* seed_records.c : write the seed corpus of fuzz_record.
 *
 *   seed_records DIR
 *
 * Valid format-1.0 records (fst__record_encode) of small images in every
 * shape the writer makes (float16/float32, with and without scores, 0
 * keypoints, d = 1, long names), format-1.2 records with DoG scales and/or
 * oris (160-byte header), each prefixed with the fuzz target's
 * control byte, and a few hand-broken ones. Deterministic. */
#include "fuzz_util.h"

#include "fst_format.h"
#include "store_impl.h"

#include <math.h>

static uint32_t rng = 12345;
static float frand(void)
{
    rng = rng * 1664525u + 1013904223u;
    return (float)(rng >> 8) / 16777216.0f;
}

static void emit(const char *dir, const char *tag, unsigned ctl,
                 const uint8_t *rec, size_t len)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/%s-c%u", dir, tag, ctl);
    uint8_t *b = malloc(len + 1);
    b[0] = (uint8_t)ctl;
    memcpy(b + 1, rec, len);
    FILE *f = fopen(p, "wb");
    if (!f || fwrite(b, 1, len + 1, f) != len + 1) {
        perror(p);
        exit(1);
    }
    fclose(f);
    free(b);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: seed_records DIR\n");
        return 2;
    }
    struct { const char *name; uint32_t n, d; fst_dtype dt; bool sc;
             uint32_t flags; } cases[] = {
        { "a.jpg", 3, 8, FST_DTYPE_F16, true, FST_VIEW_HAS_IMAGE_SIZE },
        { "db/seq1/0001.jpg", 5, 4, FST_DTYPE_F32, false, 0 },
        { "q/empty.png", 0, 8, FST_DTYPE_F16, false, 0 },
        { "zero", 0, 0, FST_DTYPE_F32, false, 0 },
        { "one", 1, 1, FST_DTYPE_F16, true, FST_VIEW_SCORES_KEYPOINT |
          FST_VIEW_HAS_UNCERTAINTY },
        { "x/y/z/long-name-of-an-image-in-a-deep-folder-0000000001.jpg", 2,
          16, FST_DTYPE_F32, true, FST_VIEW_KEYPOINTS_F16 |
          FST_VIEW_SCORES_F16 },
        /* format 1.2: DoG scales and oris */
        { "dog/a.jpg", 4, 8, FST_DTYPE_F32, true, FST_VIEW_HAS_SCALES |
          FST_VIEW_HAS_ORIS },
        { "dog/b.jpg", 3, 4, FST_DTYPE_F16, false, FST_VIEW_HAS_SCALES |
          FST_VIEW_SCALES_F16 },
        { "dog/c.jpg", 0, 8, FST_DTYPE_F32, true, FST_VIEW_HAS_ORIS },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        uint32_t n = cases[c].n, d = cases[c].d;
        float *kp = malloc((n ? n : 1) * 2 * sizeof *kp);
        float *sc = malloc((n ? n : 1) * sizeof *sc);
        float *sca = malloc((n ? n : 1) * sizeof *sca);
        float *ori = malloc((n ? n : 1) * sizeof *ori);
        size_t es = fst_dtype_size(cases[c].dt);
        uint8_t *desc = malloc((n * d != 0 ? (size_t)n * d : 1) * es);
        for (uint32_t i = 0; i < 2 * n; i++)
            kp[i] = frand() * 640;
        for (uint32_t i = 0; i < n; i++)
            sc[i] = frand();
        for (uint32_t i = 0; i < n * d; i++) {
            float x = frand() - 0.5f;
            if (cases[c].dt == FST_DTYPE_F16) {
                uint16_t h = fst_f32_to_f16(x);
                memcpy(desc + 2 * i, &h, 2);
            } else {
                memcpy(desc + 4 * i, &x, 4);
            }
        }
        /* (drawn after the others: the 1.0 seeds stay as they were) */
        for (uint32_t i = 0; (cases[c].flags & FST_VIEW_HAS_SCALES) && i < n; i++)
            sca[i] = 1.6f + 10 * frand();
        for (uint32_t i = 0; (cases[c].flags & FST_VIEW_HAS_ORIS) && i < n; i++)
            ori[i] = 6.28f * frand() - 3.14f;
        fst_image img = {
            .name = cases[c].name, .n = n, .d = d, .dtype = cases[c].dt,
            .flags = cases[c].flags | (cases[c].sc ? FST_VIEW_HAS_SCORES : 0),
            .image_size = {640, 480},
            .uncertainty = (cases[c].flags & FST_VIEW_HAS_UNCERTAINTY)
                               ? 1.5f : NAN,
            .keypoints = kp, .scores = cases[c].sc ? sc : NULL, .desc = desc,
            .scales = (cases[c].flags & FST_VIEW_HAS_SCALES) ? sca : NULL,
            .oris = (cases[c].flags & FST_VIEW_HAS_ORIS) ? ori : NULL,
        };
        size_t len = fst__record_size(&img, NULL);
        uint8_t *rec = calloc(1, len);
        if (!len || fst__record_encode(&img, 1 + c, rec, len) != FST_OK) {
            fprintf(stderr, "encode %s: %s\n", img.name, fst_errdetail());
            return 1;
        }
        char tag[32];
        snprintf(tag, sizeof tag, "rec%zu", c);
        /* control bytes: no checks; checksum; checksum+fix+key; align */
        emit(argv[1], tag, 0, rec, len);
        emit(argv[1], tag, 1, rec, len);
        emit(argv[1], tag, 1 | 4 | 8, rec, len);
        emit(argv[1], tag, 2 | 8, rec, len);
        if (c == 0) {
            /* hand-broken: newer major, truncated, huge n, overlapping
             * blocks (desc_off pointing back at the header) */
            uint8_t *b = malloc(len);
            memcpy(b, rec, len);
            b[FST_REC_OFF_MAJOR] = FST_FORMAT_MAJOR + 1;
            emit(argv[1], "major", 0, b, len);
            emit(argv[1], "trunc", 4, rec, FST_REC_HEADER_SIZE + 7);
            memcpy(b, rec, len);
            b[FST_REC_OFF_N + 3] = 0x40;
            emit(argv[1], "hugen", 4, b, len);
            memcpy(b, rec, len);
            memset(b + FST_REC_OFF_DESC, 0, 8);
            emit(argv[1], "overlap", 4, b, len);
            free(b);
        }
        free(rec);
        free(kp);
        free(sc);
        free(sca);
        free(ori);
        free(desc);
    }
    return 0;
}
