/* superglue.c : SuperGlue's forward pass (magicleap/SuperGluePretrainedNetwork
 * models/superglue.py, the copy hloc vendors) on the CPU.
 *
 * Batch norm (eval: running statistics) is folded into the 1x1 convolution
 * before it. The reference splits heads as view(dim, heads, n): channel c
 * belongs to head c % heads. The projections' rows and the merge's columns
 * are permuted at load time so that a head's channels are contiguous.
 */
#include "nn_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { SG_HEADS = 4, SG_MAX_KENC = 8 };

typedef struct sg_layer {
    nn_linear proj[3], merge, mlp0, mlp3;   /* mlp0 carries the folded BN */
} sg_layer;

typedef struct sg_img {
    int n;
    nn_buf xm;       /* n x 2D: [desc | message] */
    nn_buf qkv;      /* n x 3D */
    nn_buf ctx;      /* n x D */
} sg_img;

typedef struct sg_model {
    int D, L, hd, nkenc;
    nn_linear kenc[SG_MAX_KENC];   /* BN folded into all but the last */
    int kenc_relu[SG_MAX_KENC];
    sg_layer *layers;
    nn_linear final_proj;
    float bin_score;
    sg_img img[2];
    nn_buf h, z, u, v, cmax, csum, kin, kh[2];
    int *colarg, *rarg;
    size_t arg_cap;
    nn_attn_ws aws;
} sg_model;

/* Conv1d `conv` (out x in x 1) followed by BatchNorm1d `bn`, folded. */
static fst_status load_conv_bn(nn_linear *l, fst_nn_lookup get, void *ctx,
                               const char *conv, const char *bn, int in, int out,
                               const int *perm, const int *cperm)
{
    fst_status s;
    char name[192];
    const float *w, *b, *g, *beta, *mean, *var;
    int64_t ws[3] = {out, in, 1}, vs[1] = {out};
    snprintf(name, sizeof name, "%s.weight", conv);
    FST_TRY(fst__nn_get(get, ctx, name, 3, ws, &w));
    snprintf(name, sizeof name, "%s.bias", conv);
    FST_TRY(fst__nn_get(get, ctx, name, 1, vs, &b));
    if (!bn)
        return fst__nn_linear_from(l, w, b, in, out, perm, cperm);
    snprintf(name, sizeof name, "%s.weight", bn);
    FST_TRY(fst__nn_get(get, ctx, name, 1, vs, &g));
    snprintf(name, sizeof name, "%s.bias", bn);
    FST_TRY(fst__nn_get(get, ctx, name, 1, vs, &beta));
    snprintf(name, sizeof name, "%s.running_mean", bn);
    FST_TRY(fst__nn_get(get, ctx, name, 1, vs, &mean));
    snprintf(name, sizeof name, "%s.running_var", bn);
    FST_TRY(fst__nn_get(get, ctx, name, 1, vs, &var));
    {
        float *fw = malloc((size_t)in * out * sizeof(float)), *fb = malloc((size_t)out * sizeof(float));
        if (!fw || !fb) {
            free(fw);
            free(fb);
            return fst__fail(FST_ENOMEM, "weights: %s", conv);
        }
        for (int o = 0; o < out; o++) {
            /* torch's eval batch norm: y * alpha + (beta - mean * alpha) */
            float alpha = g[o] / sqrtf(var[o] + 1e-5f);
            for (int k = 0; k < in; k++)
                fw[(size_t)o * in + k] = w[(size_t)o * in + k] * alpha;
            fb[o] = b[o] * alpha + (beta[o] - mean[o] * alpha);
        }
        s = fst__nn_linear_from(l, fw, fb, in, out, perm, cperm);
        free(fw);
        free(fb);
    }
out:
    return s;
}

static void sg_free(fst_nn_model *mm)
{
    sg_model *g = mm->impl;
    if (!g)
        return;
    for (int i = 0; i < SG_MAX_KENC; i++)
        fst__nn_linear_free(&g->kenc[i]);
    for (int i = 0; g->layers && i < g->L; i++) {
        for (int k = 0; k < 3; k++)
            fst__nn_linear_free(&g->layers[i].proj[k]);
        fst__nn_linear_free(&g->layers[i].merge);
        fst__nn_linear_free(&g->layers[i].mlp0);
        fst__nn_linear_free(&g->layers[i].mlp3);
    }
    free(g->layers);
    fst__nn_linear_free(&g->final_proj);
    for (int k = 0; k < 2; k++) {
        fst__nn_buf_free(&g->img[k].xm);
        fst__nn_buf_free(&g->img[k].qkv);
        fst__nn_buf_free(&g->img[k].ctx);
        fst__nn_buf_free(&g->kh[k]);
    }
    nn_buf *bufs[] = {&g->h, &g->z, &g->u, &g->v, &g->cmax, &g->csum, &g->kin,
                      &g->aws.kp, &g->aws.vp, &g->aws.s};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        fst__nn_buf_free(bufs[i]);
    free(g->colarg);
    free(g->rarg);
    free(g);
    mm->impl = NULL;
}

static fst_status sg_match(fst_nn_model *mm, const fst_nn_image *a,
                           const fst_nn_image *b, int32_t *m0, float *s0);

static const nn_ops sg_ops = { sg_match, sg_free };

fst_status fst__superglue_open(fst_nn_model *mm, fst_nn_lookup get, void *ctx)
{
    fst_status s = FST_OK;
    char name[192], bn[192];
    fst_nn_tensor t;
    int *perm = NULL;
    sg_model *g = calloc(1, sizeof *g);
    if (!g)
        return fst__fail(FST_ENOMEM, "SuperGlue model");
    mm->impl = g;
    mm->ops = &sg_ops;
    if (!fst__nn_has(get, ctx, "final_proj.weight", &t) || t.ndim != 3)
        return fst__fail(FST_EINVAL, "weights: no SuperGlue tensor final_proj.weight "
                         "(D, D, 1): not SuperGlue weights?");
    g->D = (int)t.shape[0];
    if (g->D % SG_HEADS)
        return fst__fail(FST_EINVAL, "weights: descriptor dim %d not a multiple of %d heads",
                         g->D, SG_HEADS);
    g->hd = g->D / SG_HEADS;
    FST_TRY(fst__nn_linear_load(&g->final_proj, get, ctx, "final_proj", g->D, g->D, true, true,
                                NULL, NULL));
    {
        const float *bs;
        FST_TRY(fst__nn_get(get, ctx, "bin_score", 0, NULL, &bs));
        g->bin_score = bs[0];
    }
    /* keypoint encoder: convolutions at 0, 3, 6, ..., batch norms after all
     * but the last */
    int in = 3;
    for (int c = 0;; c += 3) {
        snprintf(name, sizeof name, "kenc.encoder.%d.weight", c);
        if (!fst__nn_has(get, ctx, name, &t))
            break;
        if (g->nkenc == SG_MAX_KENC || t.ndim != 3)
            return fst__fail(FST_EINVAL, "weights: %s: unexpected keypoint encoder layer", name);
        int out = (int)t.shape[0];
        snprintf(name, sizeof name, "kenc.encoder.%d", c);
        snprintf(bn, sizeof bn, "kenc.encoder.%d.weight", c + 3);
        bool last = !fst__nn_has(get, ctx, bn, NULL);
        snprintf(bn, sizeof bn, "kenc.encoder.%d", c + 1);
        FST_TRY(load_conv_bn(&g->kenc[g->nkenc], get, ctx, name, last ? NULL : bn, in, out,
                             NULL, NULL));
        g->kenc_relu[g->nkenc] = !last;
        g->nkenc++;
        in = out;
    }
    if (g->nkenc == 0 || in != g->D)
        return fst__fail(FST_EINVAL, "weights: keypoint encoder kenc.encoder.* missing or "
                         "not ending in %d channels", g->D);
    for (;;) {
        snprintf(name, sizeof name, "gnn.layers.%d.attn.merge.weight", g->L);
        if (!fst__nn_has(get, ctx, name, NULL))
            break;
        g->L++;
    }
    if (g->L == 0)
        return fst__fail(FST_EINVAL, "weights: no gnn.layers.0.attn.merge.weight");
    g->layers = calloc((size_t)g->L, sizeof *g->layers);
    perm = malloc((size_t)g->D * sizeof(int));
    if (!g->layers || !perm) {
        s = fst__fail(FST_ENOMEM, "weights");
        goto out;
    }
    /* new channel h * hd + d <- reference channel d * heads + h */
    for (int k = 0; k < g->D; k++)
        perm[k] = (k % g->hd) * SG_HEADS + k / g->hd;
    for (int i = 0; i < g->L; i++) {
        sg_layer *y = &g->layers[i];
        int D = g->D;
        for (int k = 0; k < 3; k++) {
            snprintf(name, sizeof name, "gnn.layers.%d.attn.proj.%d", i, k);
            FST_TRY(fst__nn_linear_load(&y->proj[k], get, ctx, name, D, D, true, true, perm, NULL));
        }
        snprintf(name, sizeof name, "gnn.layers.%d.attn.merge", i);
        FST_TRY(fst__nn_linear_load(&y->merge, get, ctx, name, D, D, true, true, NULL, perm));
        snprintf(name, sizeof name, "gnn.layers.%d.mlp.0", i);
        snprintf(bn, sizeof bn, "gnn.layers.%d.mlp.1", i);
        FST_TRY(load_conv_bn(&y->mlp0, get, ctx, name, bn, 2 * D, 2 * D, NULL, NULL));
        snprintf(name, sizeof name, "gnn.layers.%d.mlp.3", i);
        FST_TRY(fst__nn_linear_load(&y->mlp3, get, ctx, name, 2 * D, D, true, true, NULL, NULL));
    }
    mm->info.input_dim = g->D;
    mm->info.dim = g->D;
    mm->info.n_layers = g->L;
    mm->info.heads = SG_HEADS;
    mm->info.needs_scores = true;
    mm->info.needs_image_size = true;
out:
    free(perm);
    return s;
}

static const char *img_name(const fst_nn_image *im)
{
    return im->name ? im->name : "(unnamed image)";
}

static fst_status grow(sg_model *g, int n0, int n1)
{
    fst_status s;
    int D = g->D, nmax = n0 > n1 ? n0 : n1;
    for (int k = 0; k < 2; k++) {
        size_t n = (size_t)(k ? n1 : n0);
        FST_TRY(fst__nn_grow(&g->img[k].xm, n * 2 * D));
        FST_TRY(fst__nn_grow(&g->img[k].qkv, n * 3 * D));
        FST_TRY(fst__nn_grow(&g->img[k].ctx, n * D));
    }
    FST_TRY(fst__nn_grow(&g->h, (size_t)nmax * 2 * D));
    FST_TRY(fst__nn_grow(&g->z, (size_t)(n0 + 1) * (n1 + 1)));
    FST_TRY(fst__nn_grow(&g->u, (size_t)n0 + 1));
    FST_TRY(fst__nn_grow(&g->v, (size_t)n1 + 1));
    FST_TRY(fst__nn_grow(&g->cmax, (size_t)n1 + 1));
    FST_TRY(fst__nn_grow(&g->csum, (size_t)nmax + 1));   /* also the row maxima */
    if (g->arg_cap < (size_t)nmax) {
        int *p = realloc(g->colarg, (size_t)nmax * sizeof(int));
        if (p) g->colarg = p;
        int *q = p ? realloc(g->rarg, (size_t)nmax * sizeof(int)) : NULL;
        if (q) g->rarg = q;
        if (!p || !q)
            return fst__fail(FST_ENOMEM, "SuperGlue workspace");
        g->arg_cap = (size_t)nmax;
    }
out:
    return s;
}

/* desc + kenc([normalised kpts, scores]) into the image's x */
static fst_status encode(sg_model *g, const fst_nn_image *src, sg_img *im, double *flops)
{
    fst_status s;
    int n = (int)src->n, D = g->D;
    if (!(src->width > 0 && src->height > 0))
        return fst__fail(FST_EINVAL, "%s: SuperGlue needs the image size", img_name(src));
    if (!src->scores || !src->kpts || !src->desc)
        return fst__fail(FST_EINVAL, "%s: SuperGlue needs keypoints, scores and descriptors",
                         img_name(src));
    float W = src->width, H = src->height;
    float cx = W / 2, cy = H / 2, sc = (W > H ? W : H) * 0.7f;
    /* widest encoder layer: grow the buffer to two of them */
    int wmax = 3;
    for (int l = 0; l < g->nkenc; l++)
        wmax = g->kenc[l].out > wmax ? g->kenc[l].out : wmax;
    FST_TRY(fst__nn_grow(&g->kin, (size_t)n * 2 * wmax));
    float *bufA = g->kin.p, *bufB = g->kin.p + (size_t)n * wmax;
    for (int i = 0; i < n; i++) {
        bufA[3 * i] = (src->kpts[2 * i] - cx) / sc;
        bufA[3 * i + 1] = (src->kpts[2 * i + 1] - cy) / sc;
        bufA[3 * i + 2] = src->scores[i];
    }
    float *cur = bufA, *nxt = bufB;
    for (int l = 0; l < g->nkenc; l++) {
        const nn_linear *L = &g->kenc[l];
        if (l == g->nkenc - 1) {
            fst__nn_load_desc(src->desc, src->desc_dtype, n, D, im->xm.p, 2 * D);
            fst__nn_linear(L, n, cur, L->in, im->xm.p, 2 * D, true);
        } else {
            fst__nn_linear(L, n, cur, L->in, nxt, L->out, false);
            if (g->kenc_relu[l])
                fst__nn_relu(nxt, n, L->out, L->out);
            float *t = cur; cur = nxt; nxt = t;
        }
        *flops += 2.0 * n * L->in * L->out;
    }
    im->n = n;
out:
    return s;
}

/* message of image `k` from the source's k, v into its xm right half,
 * then x += mlp([x, message]) */
static fst_status layer(sg_model *g, const sg_layer *y, bool cross, double *flops)
{
    fst_status s;
    int D = g->D, hd = g->hd;
    for (int k = 0; k < 2; k++) {
        sg_img *im = &g->img[k];
        for (int p = 0; p < 3; p++)
            fst__nn_linear(&y->proj[p], im->n, im->xm.p, 2 * D, im->qkv.p + p * D, 3 * D, false);
        *flops += 6.0 * im->n * D * D;
    }
    float scale = (float)(1.0 / sqrt((double)hd));
    for (int k = 0; k < 2; k++) {
        sg_img *im = &g->img[k], *src = cross ? &g->img[1 - k] : im;
        for (int h = 0; h < SG_HEADS; h++)
            FST_TRY(fst__nn_attention(&g->aws, im->n, src->n, hd, im->qkv.p + h * hd, 3 * D,
                                      src->qkv.p + D + h * hd, 3 * D,
                                      src->qkv.p + 2 * D + h * hd, 3 * D, scale,
                                      im->ctx.p + h * hd, D));
        *flops += 4.0 * im->n * src->n * D;
    }
    for (int k = 0; k < 2; k++) {
        sg_img *im = &g->img[k];
        fst__nn_linear(&y->merge, im->n, im->ctx.p, D, im->xm.p + D, 2 * D, false);
        fst__nn_linear(&y->mlp0, im->n, im->xm.p, 2 * D, g->h.p, 2 * D, false);
        fst__nn_relu(g->h.p, im->n, 2 * D, 2 * D);
        fst__nn_linear(&y->mlp3, im->n, g->h.p, 2 * D, im->xm.p, 2 * D, true);
        *flops += 2.0 * im->n * D * D + 2.0 * im->n * (2 * D) * (2 * D) + 2.0 * im->n * (2 * D) * D;
    }
out:
    return s;
}

static void sinkhorn(sg_model *g, int m, int n, int iters)
{
    int ld = n + 1;
    float *Z = g->z.p, *u = g->u.p, *v = g->v.p, *cmax = g->cmax.p, *csum = g->csum.p;
    float norm = -logf((float)m + (float)n);
    float mu_bin = logf((float)n) + norm, nu_bin = logf((float)m) + norm;
    for (int i = 0; i <= m; i++) u[i] = 0.0f;
    for (int j = 0; j <= n; j++) v[j] = 0.0f;
    for (int it = 0; it < iters; it++) {
        for (int i = 0; i <= m; i++)
            u[i] = (i < m ? norm : mu_bin) - fst__nn_logsumexp(Z + (size_t)i * ld, v, ld);
        for (int j = 0; j <= n; j++) { cmax[j] = -INFINITY; csum[j] = 0.0f; }
        for (int i = 0; i <= m; i++)
            fst__nn_colmax_add(Z + (size_t)i * ld, u[i], cmax, ld);
        for (int j = 0; j <= n; j++)
            if (isinf(cmax[j])) cmax[j] = 0.0f;
        for (int i = 0; i <= m; i++)
            fst__nn_colsum_exp(Z + (size_t)i * ld, u[i], cmax, csum, ld);
        for (int j = 0; j <= n; j++)
            v[j] = (j < n ? norm : nu_bin) - (logf(csum[j]) + cmax[j]);
    }
}

static fst_status sg_match(fst_nn_model *mm, const fst_nn_image *a,
                           const fst_nn_image *b, int32_t *m0, float *s0)
{
    fst_status s;
    sg_model *g = mm->impl;
    int m = (int)a->n, n = (int)b->n, D = g->D;
    double flops = 0;
    for (int i = 0; i < m; i++) { m0[i] = -1; s0[i] = 0.0f; }
    if (m == 0 || n == 0)
        return FST_OK;              /* the reference's "no keypoints" result */
    FST_TRY(grow(g, m, n));
    FST_TRY(encode(g, a, &g->img[0], &flops));
    FST_TRY(encode(g, b, &g->img[1], &flops));
    for (int l = 0; l < g->L; l++)
        FST_TRY(layer(g, &g->layers[l], l % 2 == 1, &flops));
    /* final_proj into ctx; scores / sqrt(D) into Z with the dustbins */
    for (int k = 0; k < 2; k++) {
        sg_img *im = &g->img[k];
        fst__nn_linear(&g->final_proj, im->n, im->xm.p, 2 * D, im->ctx.p, D, false);
        flops += 2.0 * im->n * D * D;
    }
    FST_TRY(fst__nn_grow(&g->aws.kp, fst__nn_packed_size(D, n)));
    fst__nn_pack_t(g->img[1].ctx.p, D, n, D, g->aws.kp.p);
    int ld = n + 1;
    float *Z = g->z.p;
    fst__nn_gemm(m, n, D, g->img[0].ctx.p, D, g->aws.kp.p, NULL, Z, ld, false);
    flops += 2.0 * m * n * D;
    float sq = (float)sqrt((double)D);
    for (int i = 0; i < m; i++) {
        float *r = Z + (size_t)i * ld;
        for (int j = 0; j < n; j++) r[j] /= sq;
        r[n] = g->bin_score;
    }
    for (int j = 0; j <= n; j++) Z[(size_t)m * ld + j] = g->bin_score;
    sinkhorn(g, m, n, mm->conf.sinkhorn_iterations);
    /* max over the inner (m x n) block of Z + u + v - norm */
    float norm = -logf((float)m + (float)n);
    float *u = g->u.p, *v = g->v.p, *cbest = g->cmax.p, *rbest = g->csum.p;
    for (int j = 0; j < n; j++) { cbest[j] = -INFINITY; g->colarg[j] = 0; }
    for (int i = 0; i < m; i++) {
        const float *r = Z + (size_t)i * ld;
        float best = -INFINITY;
        int arg = 0;
        for (int j = 0; j < n; j++) {
            float x = ((r[j] + u[i]) + v[j]) - norm;
            if (x > best) { best = x; arg = j; }
            if (x > cbest[j]) { cbest[j] = x; g->colarg[j] = i; }
        }
        g->rarg[i] = arg;
        rbest[i] = best;
    }
    float th = (float)mm->conf.match_threshold;
    for (int i = 0; i < m; i++) {
        bool mutual = g->colarg[g->rarg[i]] == i;
        float sc = mutual ? expf(rbest[i]) : 0.0f;
        m0[i] = mutual && sc > th ? g->rarg[i] : -1;
        s0[i] = sc;
    }
    mm->flops = flops;
out:
    return s;
}
