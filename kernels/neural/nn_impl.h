/* nn_impl.h : the pieces LightGlue and SuperGlue share (nnops.c), and the
 * model struct; not public.
 *
 * Matrices are row-major float32. A right-hand operand B (k x n) is packed
 * once into panels of NN_NR columns (k x 16 each, zero-padded) so the
 * micro-kernel streams it: weights are packed at open, attention's K and V
 * per head per pair. */
#ifndef FST_NN_IMPL_H
#define FST_NN_IMPL_H

#include <stddef.h>

#include "base_impl.h"
#include "fst_neural.h"

enum { NN_NR = 16 };

/* A growable buffer: grows, never shrinks, contents not kept on growth. */
typedef struct nn_buf {
    float *p;
    size_t cap;      /* floats */
} nn_buf;

/* Make b hold at least n floats (64-byte aligned). FST_ENOMEM on failure. */
fst_status fst__nn_grow(nn_buf *b, size_t n);
void fst__nn_buf_free(nn_buf *b);

/* Floats a packed k x n operand takes. */
size_t fst__nn_packed_size(int k, int n);

/* Pack B where B[kk][j] = W[j * ldw + kk]: W holds the n output rows of a
 * linear layer (n x k), so that X W^T = X B. */
void fst__nn_pack_t(const float *W, int ldw, int n, int k, float *dst);

/* Pack B where B[kk][j] = src[kk * ld + j] (k x n). */
void fst__nn_pack(const float *src, int ld, int k, int n, float *dst);

/* C (m x n, ldc) = A (m x k, lda) B + bias, or C += A B + bias when `acc`.
 * Bp packed by the functions above; bias (n) may be NULL. */
void fst__nn_gemm(int m, int n, int k, const float *A, int lda,
                  const float *Bp, const float *bias, float *C, int ldc, bool acc);

/* A linear layer: out = x W^T + b, W packed at load time. */
typedef struct nn_linear {
    int in, out;
    float *wp;       /* packed, fst__nn_packed_size(in, out) */
    float *b;        /* out, or NULL */
} nn_linear;

static inline void fst__nn_linear(const nn_linear *l, int n, const float *x, int ldx,
                                  float *y, int ldy, bool acc)
{
    fst__nn_gemm(n, l->out, l->in, x, ldx, l->wp, l->b, y, ldy, acc);
}

/* Workspace of one attention call, reused by the model. */
typedef struct nn_attn_ws {
    nn_buf kp, vp, s;
} nn_attn_ws;

/* One head of softmax attention: O[i] = sum_j softmax_j(scale * Q[i].K[j]) V[j],
 * n queries, m keys, head dim hd. Never holds more than a block of rows of
 * the n x m similarity. m == 0 gives zeros (as the reference). */
fst_status fst__nn_attention(nn_attn_ws *ws, int n, int m, int hd,
                             const float *Q, int ldq, const float *K, int ldk,
                             const float *V, int ldv, float scale, float *O, int ldo);

/* In place over n rows of width d (stride ld): LayerNorm (eps 1e-5, affine). */
void fst__nn_layernorm(float *x, int n, int d, int ld, const float *w, const float *b);
/* In place: exact (erf) GELU over n rows of d (stride ld). */
void fst__nn_gelu(float *x, int n, int d, int ld);
/* In place: ReLU. */
void fst__nn_relu(float *x, int n, int d, int ld);

/* Vectorised helpers over a row. */
float fst__nn_max(const float *x, int n);
/* x[j] = exp(x[j] - c); returns the sum. */
float fst__nn_exp_sub_sum(float *x, int n, float c);
/* sum_j exp(x[j] + y[j] - c), nothing stored. */
float fst__nn_sum_exp_add(const float *x, const float *y, int n, float c);
/* torch.logsumexp of x[j] + y[j] (y may be NULL). */
float fst__nn_logsumexp(const float *x, const float *y, int n);

/* cmax[j] = max(cmax[j], x[j] + u) */
void fst__nn_colmax_add(const float *x, float u, float *cmax, int n);
/* csum[j] += exp((x[j] + u) - cmax[j]) */
void fst__nn_colsum_exp(const float *x, float u, const float *cmax, float *csum, int n);

/* torch's scalar forms. */
float fst__nn_sigmoid(float x);
float fst__nn_logsigmoid(float x);
float fst__nn_half_to_float(uint16_t h);

/* Widen n x d descriptors of either dtype into dst (ld >= d). */
void fst__nn_load_desc(const void *src, fst_dtype dt, int n, int d, float *dst, int ld);

/* Tensor lookup with a shape check: the detail names the tensor and both
 * shapes. ndim <= 4; shape entries as expected. */
fst_status fst__nn_get(fst_nn_lookup get, void *ctx, const char *name, int ndim,
                       const int64_t *shape, const float **out);
/* Does a tensor of this name exist? Its shape in *t. */
bool fst__nn_has(fst_nn_lookup get, void *ctx, const char *name, fst_nn_tensor *t);

/* Linear layer from `<prefix>.weight` (out x in, or out x in x 1 for a 1x1
 * convolution when conv) and `<prefix>.bias` (if bias). Rows of the weight
 * may be permuted: output o of the layer is row perm[o] (perm NULL: none);
 * columns likewise by cperm. */
fst_status fst__nn_linear_load(nn_linear *l, fst_nn_lookup get, void *ctx,
                               const char *prefix, int in, int out, bool bias,
                               bool conv, const int *perm, const int *cperm);
/* Same from raw arrays (w: out x in row-major). */
fst_status fst__nn_linear_from(nn_linear *l, const float *w, const float *b,
                               int in, int out, const int *perm, const int *cperm);
void fst__nn_linear_free(nn_linear *l);

/* Model internals, per algorithm (lightglue.c, superglue.c). */
typedef struct nn_ops {
    fst_status (*match)(fst_nn_model *m, const fst_nn_image *a,
                        const fst_nn_image *b, int32_t *m0, float *s0);
    void (*free)(fst_nn_model *m);
} nn_ops;

struct fst_nn_model {
    const nn_ops *ops;
    fst_nn_info info;
    fst_nn_conf conf;
    double flops;          /* of the last match */
    void *impl;
};

fst_status fst__lightglue_open(fst_nn_model *m, fst_nn_lookup get, void *ctx);
fst_status fst__superglue_open(fst_nn_model *m, fst_nn_lookup get, void *ctx);

#endif
