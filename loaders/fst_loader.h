/* fst_loader.h : HDF5 in and out. hloc's features.h5 into a store (once),
 * a store back into features.h5, synthetic example data, and hloc's
 * matches.h5. The only public header that stands between featstore and
 * HDF5; hdf5.h itself appears only in loaders/*.c.
 */
#ifndef FST_LOADER_H
#define FST_LOADER_H

#include "fst_base.h"
#include "fst_store.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Progress callback for long work: called at most a few times a second
 * and once at the end (done == total). Returning non-zero asks the work to
 * stop (FST_EINTR). `ctx` is the caller's. */
typedef int fst_progress_cb(uint64_t done, uint64_t total,
                            uint64_t bytes_done, void *ctx);

/* ---- import / export (loaders/import.c, loaders/export.c) ---- */

typedef struct fst_import_opts {
    bool             append;      /* add to an existing store */
    int              dtype;       /* 0: keep the source's; else fst_dtype */
    fst_progress_cb *progress;    /* may be NULL */
    void            *progress_ctx;
} fst_import_opts;

typedef struct fst_import_stats {
    uint64_t images_added, images_skipped;  /* skipped: identical dups */
    uint64_t keypoints, payload_bytes;
} fst_import_stats;

/* fst_import_h5() :
 * Walk `src` (hloc features.h5) recursively and put every group holding
 * `descriptors` and `keypoints` into the store at `dest` (created, or
 * appended to with opts->append). Streams: peak memory is a few records.
 * On any error nothing is visible at `dest` that was not there before; the
 * detail names the file, the image and what is wrong. `stats` may be NULL.
 * @return FST_OK; FST_EFORMAT (bad input); FST_EEXIST (conflicting
 *         duplicate, or create over an existing store); FST_EIO; FST_EFULL;
 *         FST_EINTR (progress asked to stop); FST_ENOMEM. */
fst_status fst_import_h5(const char *src, const char *dest,
                         const fst_import_opts *opts, fst_import_stats *stats);

/* fst_export_h5() :
 * Write every image of `st` to `dest` in hloc's layout (descriptors D x N,
 * the source's dtypes and dataset names), through `<dest>.tmp-<pid>` then
 * rename. Refuses an existing `dest`.
 * @return FST_OK; FST_EEXIST; FST_EIO; FST_EFULL; FST_ENOMEM. */
fst_status fst_export_h5(fst_store *st, const char *dest,
                         fst_progress_cb *progress, void *progress_ctx);

/* ---- synthetic data (loaders/synth.c) ---- */

typedef struct fst_synth_opts {
    uint32_t  n_images;          /* default 24 */
    uint32_t  n_keypoints;       /* per image; default 1024 */
    uint32_t  d;                 /* default 128 */
    fst_dtype dtype;             /* default FST_DTYPE_F16 */
    uint32_t  n_pairs;           /* pairs written to the pairs file
                                    (0: every consecutive pair) */
    float     planted_fraction;  /* share of keypoints with a planted
                                    correspondence in the paired image;
                                    default 0.5 */
    float     noise;             /* std-dev of the noise added to a planted
                                    descriptor before re-normalising;
                                    default 0.05 */
    uint64_t  seed;              /* default 1 */
    const char *prefix;          /* image name prefix, default "synth/img" */
} fst_synth_opts;

/* fst_synth_opts_default() : the defaults above. */
fst_synth_opts fst_synth_opts_default(void);

/* fst_synth_h5() :
 * Write a features.h5 in hloc's exact layout with unit-length random
 * descriptors and planted correspondences, deterministic in `seed`, and
 * (if pairs_path is not NULL) a pairs file `name0 name1` per line. If
 * truth_path is not NULL, write the planted correspondences as lines
 * `name0 name1 i j`. Streams: memory is one image.
 * @return FST_OK; FST_EINVAL; FST_EIO; FST_EFULL. */
fst_status fst_synth_h5(const char *h5_path, const char *pairs_path,
                        const char *truth_path, const fst_synth_opts *opts,
                        fst_progress_cb *progress, void *progress_ctx);

#ifdef __cplusplus
}
#endif
#endif
