/* fuzz_matchfile.c : the matches.h5 reader a resumed run uses, on mutated
 * hloc matches files.
 *
 * Input: a whole file, written to the scratch directory as an existing
 * output. Then, as `featstore match` does with an existing MATCHES.h5:
 * fst_matchfile_keys() lists the pairs already done, and
 * fst_matchfile_write() (no journal, copy_existing) rewrites the file
 * keeping its content.
 *
 * Invariants: documented codes with a detail on failure; keys are
 * NUL-terminated and non-empty; on write failure the destination is byte for
 * byte the input (untouched) and no temporary is left; on success the new
 * file lists the same keys (listed again and compared). */
#define FUZZ_WITH_HDF5 1
#include "fuzz_util.h"

#include "fst_loader.h"

typedef struct keys {
    char  **k;
    size_t  n, cap;
} keys;

static fst_status add_key(const char *key, void *ctx)
{
    keys *ks = ctx;
    FUZZ_CHECK(key != NULL && key[0] != 0);
    if (ks->n == ks->cap) {
        ks->cap = ks->cap ? 2 * ks->cap : 16;
        ks->k = realloc(ks->k, ks->cap * sizeof *ks->k);
        FUZZ_CHECK(ks->k != NULL);
    }
    ks->k[ks->n] = strdup(key);
    FUZZ_CHECK(ks->k[ks->n] != NULL);
    ks->n++;
    return FST_OK;
}

static void keys_free(keys *ks)
{
    for (size_t i = 0; i < ks->n; i++)
        free(ks->k[i]);
    free(ks->k);
    memset(ks, 0, sizeof *ks);
}

static bool same_file(const char *path, const uint8_t *data, size_t size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    bool same = true;
    for (size_t i = 0; i < size && same; i++)
        same = fgetc(f) == data[i];
    same = same && fgetc(f) == EOF;
    fclose(f);
    return same;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *out = fuzz_path(0, "matches.h5");
    fuzz_clear_dir();
    fuzz_write_file(out, data, size);

    keys before = {0}, after = {0};
    fst_status s = fst_matchfile_keys(out, add_key, &before);
    FUZZ_CHECK(s == FST_OK || s == FST_EFORMAT || s == FST_EIO);
    if (s != FST_OK)
        FUZZ_CHECK(fst_errdetail()[0] != 0);

    fst_matchfile_opts mo = {.copy_existing = true};
    uint64_t written = 0;
    fst_status w = fst_matchfile_write(out, NULL, &mo, &written);
    FUZZ_CHECK(w == FST_OK || w == FST_EFORMAT || w == FST_EIO ||
               w == FST_ECORRUPT);
    if (w != FST_OK) {
        FUZZ_CHECK(fst_errdetail()[0] != 0);
        FUZZ_CHECK(same_file(out, data, size));
    } else {
        FUZZ_CHECK(written == 0);
        if (s == FST_OK) {
            /* what was listed is still there */
            FUZZ_CHECK(fst_matchfile_keys(out, add_key, &after) == FST_OK);
            FUZZ_CHECK(after.n == before.n);
            for (size_t i = 0; i < before.n; i++)
                FUZZ_CHECK(strcmp(before.k[i], after.k[i]) == 0);
        }
    }
    keys_free(&before);
    keys_free(&after);
    FUZZ_CHECK(fuzz_h5_open_objects() == 0);
    return 0;
}
