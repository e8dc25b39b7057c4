/* fst_loader.h : HDF5 in and out. hloc's features.h5 into a store (once),
 * a store back into features.h5, synthetic example data, and hloc's
 * matches.h5. The only public header that stands between featstore and
 * HDF5; hdf5.h itself appears only in the .c files of loaders/.
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
    int              dtype;       /* 0: keep the source's; else an fst_dtype
                                     every image's descriptors are converted
                                     to (FST_VIEW_DESC_CONVERTED) */
    fst_progress_cb *progress;    /* may be NULL; done/total count images,
                                     bytes_done record payload bytes */
    void            *progress_ctx;
} fst_import_opts;

typedef struct fst_import_stats {
    uint64_t images_added, images_skipped;  /* skipped: identical dups */
    uint64_t keypoints, payload_bytes;      /* of the images added */
    /* Datasets in image groups that a store does not keep (any but those
     * fst_import_h5() lists): an export will not have them. */
    uint64_t datasets_ignored;
    char     ignored_example[256];          /* one of them, "/img/depths" */
    /* Soft and external links, which are not followed: an image reached
     * only through one is not imported. */
    uint64_t links_skipped;
    char     link_example[256];             /* "/alias.jpg -> /img.jpg" */
} fst_import_stats;

/* fst_import_h5() :
 * Walk `src` (hloc features.h5) recursively and put every group holding
 * `descriptors` and `keypoints` into the store at `dest` (created, or
 * appended to with opts->append), in key order. Accepted: keypoints (N, 2)
 * float32/float16; descriptors (D, N) float16/float32, transposed to
 * N x D; `scores` or `keypoint_scores` (N,) float32/float16, or neither;
 * `scales` and `oris` (N,) float32/float16 (hloc's DoG extractor), either,
 * both or neither, kept as float32 with their dtype flagged (format 1.2);
 * image_size (2,) of any integer type; the keypoints' `uncertainty`
 * attribute (a number). Hard links only; a group met twice is taken once;
 * soft and external links are not followed, and counted in stats.
 * Refused (FST_EFORMAT), naming file, image and dataset: a D or (without
 * opts->dtype) a dtype differing between images or from the store's; N
 * differing between datasets; wrong ranks or shapes; float64, integer or
 * other dtypes; NaN/Inf in keypoints, descriptors, scales or oris; a group with only
 * one of keypoints/descriptors, or with both scores and keypoint_scores;
 * a file with no image at all; a file that is not HDF5, truncated or
 * damaged. Other datasets in image groups are not kept (counted in stats).
 * Streams: peak memory is two records plus the names, whatever the file
 * size. On any error nothing is visible at `dest` that was not there
 * before. Appending, the images the store already holds are compared
 * before anything is written: one with different content is refused
 * (FST_EEXIST) with the store file byte-identical, wherever it comes in
 * the file. `stats` may be NULL. Not thread-safe (HDF5 is not).
 * @return FST_OK; FST_EFORMAT (bad input); FST_EEXIST (conflicting
 *         duplicate, or create over an existing store); FST_EIO (src
 *         missing or unreadable; store errors); FST_EFULL; FST_EINTR
 *         (progress asked to stop); FST_EINVAL (bad opts); FST_ENOMEM. */
fst_status fst_import_h5(const char *src, const char *dest,
                         const fst_import_opts *opts, fst_import_stats *stats);

/* fst_export_h5() :
 * Write every image of `st` to `dest` in hloc's layout: a group per image
 * (nested at '/'), keypoints (N, 2), descriptors (D, N), scores or
 * keypoint_scores (N,), scales and oris (N,) (DoG), image_size (2,)
 * int64, the keypoints' uncertainty attribute, each under the name and dtype the imported file had (record
 * flags), descriptors in the store's dtype. One record in memory at a
 * time; through `<dest>.tmp-<pid>`, fsync, then rename. Refuses an existing
 * `dest`. import -> export gives back every dataset and attribute bit for
 * bit, except datasets the import did not keep and descriptors converted
 * with --dtype. Not thread-safe (HDF5 is not). The work runs in a forked
 * child process (HDF5 1.10 cannot exit cleanly after a failed close), which
 * opens the store again by fst_store_path(st), with checksums verified;
 * `progress` is called there.
 * @return FST_OK; FST_EEXIST; FST_EIO; FST_EFULL; FST_ECORRUPT (a record
 *         fails its checks); FST_EINTR; FST_ENOMEM. */
fst_status fst_export_h5(fst_store *st, const char *dest,
                         fst_progress_cb *progress, void *progress_ctx);

/* ---- synthetic data (loaders/synth.c) ---- */

typedef struct fst_synth_opts {
    uint32_t  n_images;          /* default 24 */
    uint32_t  n_keypoints;       /* per image; default 1024 */
    uint32_t  d;                 /* default 128 */
    fst_dtype dtype;             /* default FST_DTYPE_F16: like hloc's
                                    as_half, keypoints and scores float16
                                    too; FST_DTYPE_F32: all float32 */
    uint32_t  n_pairs;           /* pairs written to the pairs file: the
                                    consecutive ones first, then images 2
                                    apart, 3 apart... (0: every consecutive
                                    pair, n_images - 1) */
    float     planted_fraction;  /* share of keypoints with a planted
                                    correspondence in the next image, in
                                    [0, 0.5] (the sets shared with the
                                    previous and the next image are
                                    disjoint); default 0.5 */
    float     noise;             /* expected norm of the gaussian vector
                                    added to a planted unit descriptor
                                    before re-normalising (per-component
                                    std-dev noise / sqrt(d)); default 0.05 */
    uint64_t  seed;              /* default 1 */
    const char *prefix;          /* image names <prefix>0000.jpg, ... (at
                                    least 4 digits); default "synth/img";
                                    no blank or control character (a
                                    pairs file could not hold the names) */
    bool      scales_oris;       /* also write DoG-style `scales` and `oris`
                                    (N,) per image, in the scores' dtype,
                                    derived from the scores (every other
                                    dataset unchanged); default false */
} fst_synth_opts;

/* fst_synth_opts_default() : the defaults above. */
fst_synth_opts fst_synth_opts_default(void);

/* fst_synth_h5() :
 * Write a features.h5 in hloc's exact layout with unit-length random
 * descriptors and planted correspondences, deterministic in `seed`, and
 * (if pairs_path is not NULL) a pairs file `name0 name1` per line. If
 * truth_path is not NULL, write the planted correspondences as lines
 * `name0 name1 i j` (keypoint i of name0 is keypoint j of name1); they
 * exist only between consecutive images, and the truth is complete for
 * every pair. Keypoints lie inside image_size, scores in (0, 1). Every
 * output goes through `<path>.tmp-<pid>` and a rename; existing files are
 * refused before any work. Streams: memory is two images. Not thread-safe.
 * @return FST_OK; FST_EINVAL (bad options, detail says which); FST_EEXIST;
 *         FST_EIO; FST_EFULL; FST_EINTR; FST_ENOMEM. */
fst_status fst_synth_h5(const char *h5_path, const char *pairs_path,
                        const char *truth_path, const fst_synth_opts *opts,
                        fst_progress_cb *progress, void *progress_ctx);

/* ==== hloc matches.h5 (loaders/matchfile.c; issue 4, `featstore match`) ==== */

#include "fst_journal.h"

/* Called with each pair key found in a matches.h5 ("a/b" or hloc's old
 * "a_b"); returning anything but FST_OK stops the listing with it. */
typedef fst_status fst_matchfile_key_cb(const char *key, void *ctx);

/* fst_matchfile_keys() :
 * List the pairs of hloc matches file `path`: every group at depth 1 or 2
 * holding a `matches0` (so hloc's current "name0/name1" keys and its old
 * "name0_name1" ones), in name order. A group without `matches0` (say, left
 * by a crashed hloc run) is not a pair.
 * @return FST_OK; the callback's status; FST_EIO (missing, unreadable);
 *         FST_EFORMAT (not HDF5, damaged). */
fst_status fst_matchfile_keys(const char *path, fst_matchfile_key_cb *cb,
                              void *ctx);

/* fst_matchfile_check_output() :
 * Refuse an existing `path` that holds hloc features rather than matches
 * (e.g. features.h5 given as the output by mistake): writing pairs into it
 * would add match groups inside its image groups. Looks down the first
 * group of each level (so nested image names too) for a `keypoints` or
 * `descriptors` dataset: a few object headers whatever the file's size, so
 * a file mixing features after matches is not caught.
 * @return FST_OK (not features); FST_EEXIST (the detail names the file and
 *         the dataset found); FST_EIO; FST_EFORMAT (not HDF5, damaged). */
fst_status fst_matchfile_check_output(const char *path);

typedef struct fst_matchfile_opts {
    bool             copy_existing;  /* start from dest's current content,
                                        as hloc appends to its file */
    fst_progress_cb *progress;       /* may be NULL; non-zero stops */
    void            *progress_ctx;
} fst_matchfile_opts;

/* fst_matchfile_write() :
 * Write every record of journal `j` (may be NULL: no pairs) into `dest` in
 * hloc's layout: group name0-key/name1-key with `matches0` (int16 or int32,
 * as journaled) and `matching_scores0` (float16). With copy_existing and an
 * existing `dest`, its content is kept: a journaled pair replaces the same
 * key, and the reversed and old-style keys of that pair are removed (so
 * hloc's find_pair cannot find a stale result first). Works through
 * `<dest>.tmp-<pid>` (stale ones of dead processes are removed), fsyncs,
 * renames, fsyncs the directory: `dest` is the old file or the complete
 * new one, never a partial one. Checksums of the journal are verified.
 * *n_written (may be NULL) gets the number of pairs written.
 * @return FST_OK; FST_ECORRUPT (journal record); FST_EFORMAT (dest exists
 *         and is not HDF5, or has a non-group where a group must go);
 *         FST_EINTR (progress asked to stop); FST_EIO; FST_EFULL;
 *         FST_ENOMEM. On error `dest` is untouched. */
fst_status fst_matchfile_write(const char *dest, fst_journal *j,
                               const fst_matchfile_opts *opts,
                               uint64_t *n_written);

/* fst_matchfile_get() :
 * hloc's find_pair and the two datasets: find pair (name0, name1) in `path`
 * under its key, its reversed key or hloc's old keys, in find_pair's order
 * (*reversed = 1 when found the other way round: then the arrays are those
 * of (name1, name0), as stored). *matches0 (as int32) and *scores0 (as
 * float32) are malloc'd arrays of *n0 elements; the caller frees them.
 * @return FST_OK; FST_ENOTFOUND; FST_EIO; FST_EFORMAT; FST_ENOMEM. */
fst_status fst_matchfile_get(const char *path, const char *name0,
                             const char *name1, int32_t **matches0,
                             float **scores0, uint32_t *n0, int *reversed);

/* ==== end of matchfile section ==== */

#ifdef __cplusplus
}
#endif
#endif
