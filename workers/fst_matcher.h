/* fst_matcher.h : a matcher = an algorithm + its conf, run on a device.
 *
 * Algorithms: "nn" (hloc's nearest_neighbor: fst_match_opts, any backend:
 * cpu, cuda), "lightglue" and "superglue" (kernels/neural: weights from a
 * file, CPU only). A conf has one canonical text form, "key=value\n" lines,
 * which is both what a worker is sent and, less the weights' path, what
 * the journal records as the run's identity (with the weights' content
 * hash: other weights or other settings => another identity, resume
 * refused):
 *
 *   fst_matcher_conf c;
 *   FST_TRY(fst_matcher_preset("superpoint+lightglue", &c));
 *   c.weights = "superpoint_lightglue.pth";
 *   char *text;
 *   FST_TRY(fst_matcher_conf_text(&c, &text));   (hashes the weights)
 *   ... worker: fst_matcher_open(text, "cpu", NULL, &m) ...
 */
#ifndef FST_MATCHER_H
#define FST_MATCHER_H

#include "fst_base.h"
#include "fst_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum fst_algo {
    FST_ALGO_NN        = 0,
    FST_ALGO_LIGHTGLUE = 1,
    FST_ALGO_SUPERGLUE = 2,
} fst_algo;

typedef struct fst_matcher_conf {
    fst_algo    algo;
    const char *preset;             /* hloc's conf name; static or caller's */
    const char *weights;            /* neural: the weight file (caller's) */
    fst_match_opts nn;              /* FST_ALGO_NN */
    /* LightGlue */
    double      depth_confidence;   /* <= 0: off (hloc: 0.95) */
    double      width_confidence;   /* <= 0: off (hloc: 0.99) */
    double      filter_threshold;   /* 0.1 */
    bool        scale_ori;          /* the preset's features carry scales
                                       and orientations (sift, doghardnet) */
    /* SuperGlue */
    int32_t     sinkhorn_iterations;/* 50 (superglue), 5 (superglue-fast) */
    double      match_threshold;    /* 0.2 */
} fst_matcher_conf;

/* fst_matcher_preset() :
 * hloc's match_features confs: "NN-mutual", "NN-ratio", "NN-superpoint"
 * (FST_ALGO_NN), "superpoint+lightglue", "disk+lightglue",
 * "aliked+lightglue", "sift+lightglue", "doghardnet+lightglue"
 * (FST_ALGO_LIGHTGLUE: depth 0.95, width 0.99, filter 0.1), "superglue"
 * (50 Sinkhorn iterations, match threshold 0.2), "superglue-fast" (5).
 * weights is left NULL. *out untouched on error.
 * @return FST_OK; FST_EINVAL for an unknown name (the detail lists them). */
fst_status fst_matcher_preset(const char *name, fst_matcher_conf *out);

/* fst_matcher_weights_hint() : for a neural preset, one line naming the
 * weight file it needs and where its authors publish it (static); NULL for
 * an NN preset or an unknown name. */
const char *fst_matcher_weights_hint(const char *preset);

/* fst_matcher_preset_help() : one line per preset saying what it sets
 * (static text, for --help). */
const char *fst_matcher_preset_help(void);

/* fst_matcher_conf_text() :
 * The canonical text of conf `c` into *out (malloc'd; the caller frees it).
 * A neural conf opens its weight file (a read-only map, nothing copied)
 * and records the file's path (for the workers) and an XXH3-64 of its
 * tensors (names, dtypes, shapes, bytes): the run's journal keeps every
 * line but the path, so the same tensors in another file resume, other
 * tensors do not. Any thread.
 * @return FST_OK; FST_EINVAL (no weights for a neural algorithm: the detail
 *         is the preset's fst_matcher_weights_hint(); a negative or
 *         non-finite threshold, sinkhorn_iterations < 1); FST_EIO /
 *         FST_EFORMAT / FST_ECORRUPT from the weight file (fst_weights_open);
 *         FST_ENOMEM. */
fst_status fst_matcher_conf_text(const fst_matcher_conf *c, char **out);

/* fst_matcher_check_weights() :
 * Build the model of neural conf text `text` once and check it against a
 * store of `d`-dimensional descriptors: the error names the weight file,
 * the tensor and both shapes. No-op (FST_OK) for "nn" or d == 0.
 * @return FST_OK; FST_EINVAL; the weight file's errors; FST_ENOMEM. */
fst_status fst_matcher_check_weights(const char *text, uint32_t d);

typedef struct fst_matcher fst_matcher;

/* fst_matcher_open() :
 * Open the matcher of conf text `text` (fst_matcher_conf_text()) on
 * `device` ("cpu", "cuda") with device parameters `params` (as for
 * fst_backend_open). "nn" opens the device's backend; a neural algorithm
 * maps its weight file, builds the model (which copies what it keeps) and
 * unmaps it; it runs on "cpu" only. *out is the caller's:
 * fst_matcher_close() it. One thread at a time.
 * @return FST_OK; FST_EINVAL (malformed text, a neural algorithm on a
 *         device other than cpu, a model the weights do not make: the
 *         detail names the tensor and both shapes); fst_backend_open's
 *         and fst_weights_open's errors. */
fst_status fst_matcher_open(const char *text, const char *device,
                            const char *params, fst_matcher **out);

/* fst_matcher_check_store() :
 * Whether `m` can match images of a store of `d`-dimensional descriptors
 * (d == 0: an empty store, fine). For a neural model the detail names the
 * weight file, the input tensor and both dimensions. Any NN backend takes
 * any d. @return FST_OK; FST_EINVAL. */
fst_status fst_matcher_check_store(const fst_matcher *m, uint32_t d);

/* fst_matcher_match_batch() :
 * As fst_backend_match_batch(): every job's status is set; the return is
 * the first failing job's status. A neural job that fails (an input the
 * model cannot take: no scales or scores, descriptors of another size)
 * has its detail set by running it alone (fst_matcher_match). */
fst_status fst_matcher_match_batch(fst_matcher *m, fst_match_job *jobs,
                                   size_t n_jobs);

/* fst_matcher_match() : one pair; fst_errdetail() names the images on
 * failure. */
fst_status fst_matcher_match(fst_matcher *m, const fst_view *a,
                             const fst_view *b, fst_matches *out);

/* fst_matcher_device() : the device's backend name ("cpu", "cuda"). */
const char *fst_matcher_device(const fst_matcher *m);

/* fst_matcher_close() : NULL is fine. */
void fst_matcher_close(fst_matcher *m);

#ifdef __cplusplus
}
#endif
#endif
