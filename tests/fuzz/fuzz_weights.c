/* fuzz_weights.c : the weight-file reader, fst_weights_open_mem(), on any
 * bytes (torch zip and legacy files, safetensors, pickles).
 *
 * Invariants on success: a known format; every tensor's name is
 * NUL-terminated and found by fst_weights_find() as itself (names unique);
 * 0 <= ndim <= FST_WEIGHTS_MAX_DIMS, shape entries >= 0, numel their
 * product, nbytes numel x the dtype's size; data non-NULL, 64-byte aligned,
 * and every byte of it readable (ASan checks each is inside memory the
 * reader owns or the input); the result does not depend on the run (a
 * second open gives the same table and bytes); renaming LightGlue keys
 * either succeeds with the same count or fails with FST_EFORMAT leaving the
 * names as they were. On failure: FST_EFORMAT or FST_ECORRUPT (FST_ENOMEM
 * only if malloc failed), a detail naming the input, nothing returned. */
#include "fuzz_util.h"

#include "fst_weights.h"

static uint64_t hash_tensors(const fst_weights *w)
{
    uint64_t h = 1469598103934665603u;
    for (size_t i = 0; i < fst_weights_count(w); i++) {
        const fst_weights_tensor *t = fst_weights_at(w, i);
        for (const char *p = t->name; *p; p++)
            h = (h ^ (uint8_t)*p) * 1099511628211u;
        for (size_t k = 0; k < t->nbytes; k++)
            h = (h ^ ((const uint8_t *)t->data)[k]) * 1099511628211u;
        h = (h ^ (uint64_t)t->dtype ^ ((uint64_t)t->ndim << 8)) * 1099511628211u;
    }
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fst_weights *w = NULL;
    fst_status s = fst_weights_open_mem(data, size, "fuzz.pth", &w);
    if (s != FST_OK) {
        FUZZ_CHECK(w == NULL);
        FUZZ_CHECK(s == FST_EFORMAT || s == FST_ECORRUPT || s == FST_ENOMEM);
        FUZZ_CHECK(strstr(fst_errdetail(), "fuzz.pth") != NULL);
        return 0;
    }
    const char *fmt = fst_weights_format(w);
    FUZZ_CHECK(!strcmp(fmt, "torch-zip") || !strcmp(fmt, "torch-legacy") ||
               !strcmp(fmt, "safetensors"));
    size_t n = fst_weights_count(w);
    for (size_t i = 0; i < n; i++) {
        const fst_weights_tensor *t = fst_weights_at(w, i);
        FUZZ_CHECK(t && t->name && t->data);
        FUZZ_CHECK(fst_weights_find(w, t->name) == t);
        FUZZ_CHECK(t->ndim >= 0 && t->ndim <= FST_WEIGHTS_MAX_DIMS);
        size_t es = fst_weights_dtype_size(t->dtype);
        FUZZ_CHECK(es > 0);
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            FUZZ_CHECK(t->shape[d] >= 0);
            numel *= t->shape[d];
        }
        FUZZ_CHECK(numel == t->numel);
        FUZZ_CHECK(t->nbytes == (size_t)numel * es);
        FUZZ_CHECK(((uintptr_t)t->data & 63) == 0);
    }
    FUZZ_CHECK(fst_weights_at(w, n) == NULL);
    uint64_t h = hash_tensors(w);   /* reads every byte */

    fst_weights *w2 = NULL;
    FUZZ_CHECK(fst_weights_open_mem(data, size, "fuzz.pth", &w2) == FST_OK);
    FUZZ_CHECK(fst_weights_count(w2) == n && hash_tensors(w2) == h);
    fst_weights_close(w2);

    char *first = n ? strdup(fst_weights_at(w, 0)->name) : NULL;
    s = fst_weights_rename_lightglue(w, 0);
    FUZZ_CHECK(s == FST_OK || s == FST_EFORMAT || s == FST_ENOMEM);
    FUZZ_CHECK(fst_weights_count(w) == n);
    if (s != FST_OK && first)
        FUZZ_CHECK(!strcmp(first, fst_weights_at(w, 0)->name));
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(fst_weights_find(w, fst_weights_at(w, i)->name) == fst_weights_at(w, i));
    free(first);
    fst_weights_close(w);
    return 0;
}
