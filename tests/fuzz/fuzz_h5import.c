/* fuzz_h5import.c : the HDF5 loader, fst_import_h5(), on mutated hloc
 * features.h5 files.
 *
 * Input: a whole file. It is written to the scratch directory and imported
 * into a new store there; on success the store is re-opened, verified (every
 * checksum and bound), exported back to HDF5 and imported again with
 * --append (identical images: nothing added). Then everything is removed.
 *
 * Invariants: the loader returns one of its documented codes with a detail
 * message; on failure nothing exists at the destination (the temporary
 * store was removed too); on success the store verifies clean and its
 * image count equals what the import reported. */
#define FUZZ_WITH_HDF5 1
#include "fuzz_util.h"

#include "fst_loader.h"
#include "fst_store.h"

#include <dirent.h>

static bool dir_has_only(const char *keep)
{
    DIR *d = opendir(fuzz_dir());
    FUZZ_CHECK(d != NULL);
    bool ok = true;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if (!strcmp(e->d_name, keep))
            continue;
        fprintf(stderr, "fuzz_h5import: left behind: %s\n", e->d_name);
        ok = false;
    }
    closedir(d);
    return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *src = fuzz_path(0, "in.h5");
    const char *dest = fuzz_path(1, "db.fst");
    const char *back = fuzz_path(2, "back.h5");
    fuzz_clear_dir();
    fuzz_write_file(src, data, size);

    fst_import_stats st;
    fst_import_opts opts = {0};
    fst_status s = fst_import_h5(src, dest, &opts, &st);
    FUZZ_CHECK(s == FST_OK || s == FST_EFORMAT || s == FST_EIO ||
               s == FST_EEXIST || s == FST_EINVAL);
    if (s != FST_OK) {
        FUZZ_CHECK(fst_errdetail()[0] != 0);
        /* nothing half-made: not the store, not its temporary */
        FUZZ_CHECK(access(dest, F_OK) != 0);
        FUZZ_CHECK(dir_has_only("in.h5"));
        FUZZ_CHECK(fuzz_h5_open_objects() == 0);
        return 0;
    }

    fst_store *store = NULL;
    FUZZ_CHECK(fst_store_open(dest, FST_OPEN_CHECKSUMS, &store) == FST_OK);
    fst_store_meta meta;
    FUZZ_CHECK(fst_store_meta_get(store, &meta) == FST_OK);
    FUZZ_CHECK(meta.n_images == st.images_added);
    uint64_t checked = 0, bad = 0;
    FUZZ_CHECK(fst_store_verify(store, NULL, NULL, &checked, &bad) == FST_OK);
    FUZZ_CHECK(checked == st.images_added && bad == 0);
    fst_status e = fst_export_h5(store, back, NULL, NULL);
    fst_store_close(store);
    FUZZ_CHECK(e == FST_OK);

    /* the exported file imports into the same store as identical
     * duplicates: the round trip is lossless for whatever was accepted */
    fst_import_opts app = {.append = true};
    fst_import_stats st2;
    e = fst_import_h5(back, dest, &app, &st2);
    if (e != FST_OK)
        fprintf(stderr, "fuzz_h5import: re-import of the export: %s: %s\n",
                fst_strerror(e), fst_errdetail());
    FUZZ_CHECK(e == FST_OK);
    FUZZ_CHECK(st2.images_added == 0 &&
               st2.images_skipped == st.images_added);
    FUZZ_CHECK(fuzz_h5_open_objects() == 0);
    return 0;
}
