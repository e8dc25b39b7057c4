/* fst_neural.h : the LightGlue and SuperGlue forward passes on the CPU.
 *
 * A model is built once from named float32 tensors (a state_dict as the
 * reference code names it; a weight-file reader supplies them through a
 * lookup callback) and then matches image pairs, one at a time, exactly as
 * the reference implementations do (cvg/LightGlue `lightglue/lightglue.py`,
 * magicleap/SuperGluePretrainedNetwork `models/superglue.py`):
 *
 *   fst_nn_model *m;
 *   fst_nn_conf conf = fst_nn_default_conf(FST_NN_LIGHTGLUE);
 *   FST_TRY(fst_nn_open(FST_NN_LIGHTGLUE, lookup, ctx, &conf, &m));
 *   FST_TRY(fst_nn_match(m, &img0, &img1, matches0, scores0));
 *   fst_nn_close(m);
 *
 * A model owns a copy of its weights (packed for its matrix kernels) and a
 * workspace that grows to the largest pair seen and is reused: no per-pair
 * allocation once it has grown. One model per thread; models are
 * independent. Single-threaded: run one per worker process.
 *
 * Thresholds are doubles, as the reference's Python floats; like torch, the
 * comparisons against float32 tensors round them to float32 first.
 */
#ifndef FST_NEURAL_H
#define FST_NEURAL_H

#include <stdbool.h>
#include <stdint.h>

#include "fst_base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum fst_nn_kind {
    FST_NN_LIGHTGLUE = 1,
    FST_NN_SUPERGLUE = 2,
} fst_nn_kind;

/* One tensor as the lookup callback hands it over: float32, contiguous,
 * row-major, `ndim` <= 4 dimensions. */
typedef struct fst_nn_tensor {
    const float *data;
    int ndim;
    int64_t shape[4];
} fst_nn_tensor;

/* fst_nn_lookup :
 * Fill *out with the tensor named `name` (state_dict name, e.g.
 * "transformers.3.self_attn.Wqkv.weight") and return true; return false
 * when there is no such tensor. The data must stay valid until fst_nn_open()
 * returns; the model copies what it keeps. */
typedef bool (*fst_nn_lookup)(void *ctx, const char *name, fst_nn_tensor *out);

/* Pruning rule of LightGlue's adaptive width, which the reference makes
 * depend on the device: points are pruned only while an image has more
 * than `prune_min_kpts` of them (reference: -1 on the CPU, i.e. always;
 * 1024 on CUDA; 1536 with flash attention). */
typedef struct fst_nn_conf {
    /* LightGlue */
    double depth_confidence;  /* early stop; <= 0 disables (reference: 0.95) */
    double width_confidence;  /* point pruning; <= 0 disables (0.99) */
    double filter_threshold;  /* match score threshold (0.1) */
    int32_t prune_min_kpts;   /* see above (-1: the CPU rule) */
    /* SuperGlue */
    int32_t sinkhorn_iterations;  /* 100 (SuperGlue), 50 (hloc), 5 (fast) */
    double match_threshold;       /* 0.2 */
} fst_nn_conf;

/* fst_nn_default_conf() : the reference's defaults for `kind` (CPU rule). */
fst_nn_conf fst_nn_default_conf(fst_nn_kind kind);

/* What the model was built for, read from its tensors. */
typedef struct fst_nn_info {
    fst_nn_kind kind;
    int32_t input_dim;        /* descriptor length the images must have */
    int32_t dim;              /* internal width (256 for published weights) */
    int32_t n_layers;         /* LightGlue: transformer layers; SuperGlue: GNN layers */
    int32_t heads;
    bool needs_scale_ori;     /* LightGlue for SIFT / DoGHardNet */
    bool needs_scores;        /* SuperGlue: keypoint scores */
    bool needs_image_size;    /* SuperGlue: an image size is required */
} fst_nn_info;

/* One image's inputs. Pointers are borrowed for the duration of the call. */
typedef struct fst_nn_image {
    uint32_t n;               /* keypoints; 0 is fine */
    const float *kpts;        /* n x 2 (x, y) */
    const float *scores;      /* n; SuperGlue only */
    const void *desc;         /* n x input_dim row-major */
    fst_dtype desc_dtype;     /* FST_DTYPE_F32 or FST_DTYPE_F16 (widened) */
    float width, height;      /* image size; 0 x 0: none (LightGlue then uses
                               * the keypoints' extent + 1) */
    const float *scales;      /* n; LightGlue with needs_scale_ori */
    const float *oris;        /* n */
    const char *name;         /* for error messages; may be NULL */
} fst_nn_image;

typedef struct fst_nn_model fst_nn_model;

/* fst_nn_open() :
 * Build a `kind` model from the tensors `get` returns, shapes inferred from
 * them (LightGlue: input_dim from `input_proj`, layers from the
 * `transformers.N` present (old files' `self_attn.N` / `cross_attn.N` names
 * are accepted too), heads from `posenc.Wr`; SuperGlue: `gnn.layers.N`).
 * Copies the weights. `conf` may be NULL for the defaults.
 * @return FST_OK; FST_EINVAL if a tensor is missing or has the wrong shape
 *         (the detail names the tensor and both shapes); FST_ENOMEM. */
fst_status fst_nn_open(fst_nn_kind kind, fst_nn_lookup get, void *ctx,
                       const fst_nn_conf *conf, fst_nn_model **out);

/* fst_nn_info_of() : what `m` expects. */
fst_nn_info fst_nn_info_of(const fst_nn_model *m);

/* fst_nn_set_conf() : change the thresholds of an open model. */
void fst_nn_set_conf(fst_nn_model *m, const fst_nn_conf *conf);

/* fst_nn_match() :
 * Match image a against image b. matches0 (a->n entries, caller-owned) gets
 * the index in b of each keypoint of a, or -1; scores0 (a->n) gets the
 * reference's matching_scores0: exp of the best log-assignment score for a
 * mutual best pair (even one below the threshold), 0 otherwise.
 * @return FST_OK; FST_EINVAL for an input the model cannot take (missing
 *         scales, scores or image size where the model needs them), the
 *         detail naming the image; FST_ENOMEM when the workspace cannot grow. */
fst_status fst_nn_match(fst_nn_model *m, const fst_nn_image *a,
                        const fst_nn_image *b, int32_t *matches0, float *scores0);

/* fst_nn_flops() :
 * Floating-point operations (2 per multiply-add) of the matrix products and
 * attention of the last fst_nn_match() call, as the reference computes them
 * (the work this implementation recomputes on purpose is not counted). */
double fst_nn_flops(const fst_nn_model *m);

/* fst_nn_close() : free `m` (NULL is fine). */
void fst_nn_close(fst_nn_model *m);

#ifdef __cplusplus
}
#endif
#endif
