/* lightglue.c : LightGlue's forward pass (cvg/LightGlue lightglue.py),
 * on the CPU, with adaptive depth and width.
 *
 * Each image keeps one n x 2D buffer: the descriptors in its left half and
 * the block's message in its right half, so the feed-forward input
 * [x, message] is never copied. The self block's Wqkv rows are permuted at
 * load time from the reference's (head, head_dim, 3) order to (3, head,
 * head_dim), so q, k and v of a head are plain column ranges.
 */
#include "nn_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct lg_ffn {
    nn_linear l0, l3;
    float *ln_w, *ln_b;
} lg_ffn;

typedef struct lg_layer {
    nn_linear wqkv, out_proj, to_qk, to_v, to_out, final_proj;
    lg_ffn sffn, cffn;
    float *match_w, match_b;       /* log_assignment.i.matchability */
    float *tok_w, tok_b;           /* token_confidence.i (not the last layer) */
} lg_layer;

/* Per image, per pair. */
typedef struct lg_img {
    int n;                /* points still in play */
    nn_buf xm;            /* n x 2D: [desc | message] */
    nn_buf proj;          /* n x 3D: q k v (self) or qk v (cross) */
    nn_buf ctx;           /* n x D */
    nn_buf cs;            /* n x hd: cos (hd/2) then sin (hd/2) per point */
    nn_buf tok, z;        /* n: token confidence, matchability logits */
    int *ind;             /* n: original index */
    size_t ind_cap;
} lg_img;

typedef struct lg_model {
    int D, in_dim, L, H, hd, npos;
    bool has_input_proj;
    nn_linear input_proj;
    float *wr;            /* hd/2 x npos */
    lg_layer *layers;
    float *thr;           /* L: confidence thresholds, float32 as the buffer */
    lg_img img[2];
    nn_buf h;             /* n x 2D feed-forward hidden */
    nn_buf sim, rowbuf, colmax, colsum, colbest;
    int *colarg, *rarg;
    size_t colarg_cap;
    nn_attn_ws aws;
} lg_model;

/* ------------------------------------------------------------ loading */

static fst_status copy_vec(fst_nn_lookup get, void *ctx, const char *name, int n, float **out)
{
    const float *p;
    int64_t shape[1] = {n};
    fst_status s = fst__nn_get(get, ctx, name, 1, shape, &p);
    if (s != FST_OK)
        return s;
    *out = malloc((size_t)n * sizeof(float));
    if (!*out)
        return fst__fail(FST_ENOMEM, "weights: %s", name);
    memcpy(*out, p, (size_t)n * sizeof(float));
    return FST_OK;
}

static fst_status load_ffn(lg_ffn *f, fst_nn_lookup get, void *ctx, const char *pre, int D)
{
    fst_status s;
    char name[160];
    snprintf(name, sizeof name, "%s.ffn.0", pre);
    FST_TRY(fst__nn_linear_load(&f->l0, get, ctx, name, 2 * D, 2 * D, true, false, NULL, NULL));
    snprintf(name, sizeof name, "%s.ffn.3", pre);
    FST_TRY(fst__nn_linear_load(&f->l3, get, ctx, name, 2 * D, D, true, false, NULL, NULL));
    snprintf(name, sizeof name, "%s.ffn.1.weight", pre);
    FST_TRY(copy_vec(get, ctx, name, 2 * D, &f->ln_w));
    snprintf(name, sizeof name, "%s.ffn.1.bias", pre);
    FST_TRY(copy_vec(get, ctx, name, 2 * D, &f->ln_b));
out:
    return s;
}

static void free_ffn(lg_ffn *f)
{
    fst__nn_linear_free(&f->l0);
    fst__nn_linear_free(&f->l3);
    free(f->ln_w);
    free(f->ln_b);
}

/* The state_dict prefix of layer i's block, new names or old ones. */
static bool block_prefix(fst_nn_lookup get, void *ctx, int i, const char *block,
                         char *out, size_t n)
{
    char name[160];
    snprintf(out, n, "transformers.%d.%s", i, block);
    snprintf(name, sizeof name, "%s.%s", out, !strcmp(block, "self_attn") ? "Wqkv.weight"
                                                                           : "to_qk.weight");
    if (fst__nn_has(get, ctx, name, NULL))
        return true;
    snprintf(out, n, "%s.%d", block, i);
    snprintf(name, sizeof name, "%s.%s", out, !strcmp(block, "self_attn") ? "Wqkv.weight"
                                                                           : "to_qk.weight");
    return fst__nn_has(get, ctx, name, NULL);
}

static void lg_free(fst_nn_model *mm)
{
    lg_model *g = mm->impl;
    if (!g)
        return;
    if (g->has_input_proj)
        fst__nn_linear_free(&g->input_proj);
    free(g->wr);
    for (int i = 0; g->layers && i < g->L; i++) {
        lg_layer *y = &g->layers[i];
        fst__nn_linear_free(&y->wqkv);
        fst__nn_linear_free(&y->out_proj);
        fst__nn_linear_free(&y->to_qk);
        fst__nn_linear_free(&y->to_v);
        fst__nn_linear_free(&y->to_out);
        fst__nn_linear_free(&y->final_proj);
        free_ffn(&y->sffn);
        free_ffn(&y->cffn);
        free(y->match_w);
        free(y->tok_w);
    }
    free(g->layers);
    free(g->thr);
    for (int k = 0; k < 2; k++) {
        lg_img *im = &g->img[k];
        fst__nn_buf_free(&im->xm);
        fst__nn_buf_free(&im->proj);
        fst__nn_buf_free(&im->ctx);
        fst__nn_buf_free(&im->cs);
        fst__nn_buf_free(&im->tok);
        fst__nn_buf_free(&im->z);
        free(im->ind);
    }
    fst__nn_buf_free(&g->h);
    fst__nn_buf_free(&g->sim);
    fst__nn_buf_free(&g->rowbuf);
    fst__nn_buf_free(&g->colmax);
    fst__nn_buf_free(&g->colsum);
    fst__nn_buf_free(&g->colbest);
    free(g->colarg);
    free(g->rarg);
    fst__nn_buf_free(&g->aws.kp);
    fst__nn_buf_free(&g->aws.vp);
    fst__nn_buf_free(&g->aws.s);
    free(g);
    mm->impl = NULL;
}

static fst_status lg_match(fst_nn_model *mm, const fst_nn_image *a,
                           const fst_nn_image *b, int32_t *m0, float *s0);

static const nn_ops lg_ops = { lg_match, lg_free };

fst_status fst__lightglue_open(fst_nn_model *mm, fst_nn_lookup get, void *ctx)
{
    fst_status s;
    char pre[128], name[192];
    fst_nn_tensor t;
    lg_model *g = calloc(1, sizeof *g);
    if (!g)
        return fst__fail(FST_ENOMEM, "LightGlue model");
    mm->impl = g;
    mm->ops = &lg_ops;

    if (!fst__nn_has(get, ctx, "log_assignment.0.final_proj.weight", &t) || t.ndim != 2)
        return fst__fail(FST_EINVAL, "weights: no LightGlue tensor "
                         "log_assignment.0.final_proj.weight (D, D): not LightGlue weights?");
    g->D = (int)t.shape[0];
    if (!fst__nn_has(get, ctx, "posenc.Wr.weight", &t) || t.ndim != 2 ||
        (t.shape[1] != 2 && t.shape[1] != 4) || t.shape[0] <= 0 ||
        g->D % (int)(2 * t.shape[0]) != 0)
        return fst__fail(FST_EINVAL, "weights: tensor posenc.Wr.weight: expected shape "
                         "(head_dim / 2, 2 or 4) dividing D = %d, missing or other", g->D);
    g->hd = (int)(2 * t.shape[0]);
    g->npos = (int)t.shape[1];
    g->H = g->D / g->hd;
    g->in_dim = g->D;
    if (fst__nn_has(get, ctx, "input_proj.weight", &t) && t.ndim == 2) {
        g->has_input_proj = true;
        g->in_dim = (int)t.shape[1];
        FST_TRY(fst__nn_linear_load(&g->input_proj, get, ctx, "input_proj",
                                    g->in_dim, g->D, true, false, NULL, NULL));
    }
    while (block_prefix(get, ctx, g->L, "self_attn", pre, sizeof pre))
        g->L++;
    if (g->L == 0)
        return fst__fail(FST_EINVAL, "weights: no transformers.0.self_attn.Wqkv.weight");
    {
        int64_t shape[2] = {g->hd / 2, g->npos};
        const float *w;
        FST_TRY(fst__nn_get(get, ctx, "posenc.Wr.weight", 2, shape, &w));
        g->wr = malloc((size_t)g->hd / 2 * g->npos * sizeof(float));
        if (!g->wr)
            return fst__fail(FST_ENOMEM, "weights");
        memcpy(g->wr, w, (size_t)g->hd / 2 * g->npos * sizeof(float));
    }
    g->layers = calloc((size_t)g->L, sizeof *g->layers);
    g->thr = malloc((size_t)g->L * sizeof(float));
    int D = g->D, H = g->H, hd = g->hd;
    int *perm = malloc((size_t)3 * D * sizeof(int));
    if (!g->layers || !g->thr || !perm) {
        free(perm);
        return fst__fail(FST_ENOMEM, "weights");
    }
    /* new output (t, h, d) <- reference row (h, d, t) */
    for (int tt = 0; tt < 3; tt++)
        for (int h = 0; h < H; h++)
            for (int d = 0; d < hd; d++)
                perm[tt * D + h * hd + d] = h * hd * 3 + d * 3 + tt;
    for (int i = 0; i < g->L; i++) {
        lg_layer *y = &g->layers[i];
        g->thr[i] = (float)fmin(fmax(0.8 + 0.1 * exp(-4.0 * i / g->L), 0.0), 1.0);
        if (!block_prefix(get, ctx, i, "self_attn", pre, sizeof pre)) {
            s = fst__fail(FST_EINVAL, "weights: no self_attn of layer %d", i);
            goto out_perm;
        }
        snprintf(name, sizeof name, "%s.Wqkv", pre);
        s = fst__nn_linear_load(&y->wqkv, get, ctx, name, D, 3 * D, true, false, perm, NULL);
        if (s) goto out_perm;
        snprintf(name, sizeof name, "%s.out_proj", pre);
        s = fst__nn_linear_load(&y->out_proj, get, ctx, name, D, D, true, false, NULL, NULL);
        if (s) goto out_perm;
        if ((s = load_ffn(&y->sffn, get, ctx, pre, D))) goto out_perm;
        if (!block_prefix(get, ctx, i, "cross_attn", pre, sizeof pre)) {
            s = fst__fail(FST_EINVAL, "weights: tensor transformers.%d.cross_attn.to_qk.weight "
                          "(%d, %d) is missing", i, D, D);
            goto out_perm;
        }
        snprintf(name, sizeof name, "%s.to_qk", pre);
        if ((s = fst__nn_linear_load(&y->to_qk, get, ctx, name, D, D, true, false, NULL, NULL)))
            goto out_perm;
        snprintf(name, sizeof name, "%s.to_v", pre);
        if ((s = fst__nn_linear_load(&y->to_v, get, ctx, name, D, D, true, false, NULL, NULL)))
            goto out_perm;
        snprintf(name, sizeof name, "%s.to_out", pre);
        if ((s = fst__nn_linear_load(&y->to_out, get, ctx, name, D, D, true, false, NULL, NULL)))
            goto out_perm;
        if ((s = load_ffn(&y->cffn, get, ctx, pre, D))) goto out_perm;
        snprintf(name, sizeof name, "log_assignment.%d.final_proj", i);
        if ((s = fst__nn_linear_load(&y->final_proj, get, ctx, name, D, D, true, false, NULL, NULL)))
            goto out_perm;
        {
            const float *w, *bb;
            int64_t ws[2] = {1, D}, bs[1] = {1};
            snprintf(name, sizeof name, "log_assignment.%d.matchability.weight", i);
            if ((s = fst__nn_get(get, ctx, name, 2, ws, &w))) goto out_perm;
            snprintf(name, sizeof name, "log_assignment.%d.matchability.bias", i);
            if ((s = fst__nn_get(get, ctx, name, 1, bs, &bb))) goto out_perm;
            if (!(y->match_w = malloc((size_t)D * sizeof(float)))) {
                s = fst__fail(FST_ENOMEM, "weights");
                goto out_perm;
            }
            memcpy(y->match_w, w, (size_t)D * sizeof(float));
            y->match_b = bb[0];
            if (i < g->L - 1) {
                snprintf(name, sizeof name, "token_confidence.%d.token.0.weight", i);
                if ((s = fst__nn_get(get, ctx, name, 2, ws, &w))) goto out_perm;
                snprintf(name, sizeof name, "token_confidence.%d.token.0.bias", i);
                if ((s = fst__nn_get(get, ctx, name, 1, bs, &bb))) goto out_perm;
                if (!(y->tok_w = malloc((size_t)D * sizeof(float)))) {
                    s = fst__fail(FST_ENOMEM, "weights");
                    goto out_perm;
                }
                memcpy(y->tok_w, w, (size_t)D * sizeof(float));
                y->tok_b = bb[0];
            }
        }
    }
    free(perm);
    mm->info.input_dim = g->in_dim;
    mm->info.dim = D;
    mm->info.n_layers = g->L;
    mm->info.heads = H;
    mm->info.needs_scale_ori = g->npos == 4;
    return FST_OK;
out_perm:
    free(perm);
out:
    return s;
}

/* ------------------------------------------------------------ forward */

static fst_status grow_img(lg_model *g, lg_img *im, int n)
{
    fst_status s;
    size_t nn = (size_t)(n > 0 ? n : 1);
    FST_TRY(fst__nn_grow(&im->xm, nn * 2 * g->D));
    FST_TRY(fst__nn_grow(&im->proj, nn * 3 * g->D));
    FST_TRY(fst__nn_grow(&im->ctx, nn * g->D));
    FST_TRY(fst__nn_grow(&im->cs, nn * g->hd));
    FST_TRY(fst__nn_grow(&im->tok, nn));
    FST_TRY(fst__nn_grow(&im->z, nn));
    if (im->ind_cap < nn) {
        int *p = realloc(im->ind, nn * sizeof(int));
        if (!p)
            return fst__fail(FST_ENOMEM, "LightGlue workspace");
        im->ind = p;
        im->ind_cap = nn;
    }
    FST_TRY(fst__nn_grow(&g->h, nn * 2 * g->D));
out:
    return s;
}

static const char *img_name(const fst_nn_image *im)
{
    return im->name ? im->name : "(unnamed image)";
}

/* normalize_keypoints, the positional encoding's cos / sin, the input
 * projection. */
static fst_status prepare(lg_model *g, const fst_nn_image *src, lg_img *im)
{
    int n = (int)src->n, D = g->D, F = g->hd / 2;
    if (g->npos == 4 && n && (!src->scales || !src->oris))
        return fst__fail(FST_EINVAL, "%s: these LightGlue weights need keypoint scales "
                         "and orientations", img_name(src));
    if (n && (!src->kpts || !src->desc))
        return fst__fail(FST_EINVAL, "%s: no keypoints or descriptors", img_name(src));
    float sx = src->width, sy = src->height;
    if (!(sx > 0 && sy > 0) && n) {
        float mnx = INFINITY, mny = INFINITY, mxx = -INFINITY, mxy = -INFINITY;
        for (int i = 0; i < n; i++) {
            float x = src->kpts[2 * i], y = src->kpts[2 * i + 1];
            mnx = x < mnx ? x : mnx; mxx = x > mxx ? x : mxx;
            mny = y < mny ? y : mny; mxy = y > mxy ? y : mxy;
        }
        sx = 1.0f + (mxx - mnx);
        sy = 1.0f + (mxy - mny);
    }
    float shx = sx / 2, shy = sy / 2, sc = (sx > sy ? sx : sy) / 2;
    for (int i = 0; i < n; i++) {
        float p[4];
        p[0] = (src->kpts[2 * i] - shx) / sc;
        p[1] = (src->kpts[2 * i + 1] - shy) / sc;
        if (g->npos == 4) {
            p[2] = src->scales[i];
            p[3] = src->oris[i];
        }
        float *cs = im->cs.p + (size_t)i * g->hd;
        for (int f = 0; f < F; f++) {
            float acc = 0.0f;
            for (int k = 0; k < g->npos; k++)
                acc += p[k] * g->wr[f * g->npos + k];
            cs[f] = cosf(acc);
            cs[F + f] = sinf(acc);
        }
        im->ind[i] = i;
    }
    if (g->has_input_proj) {
        float *tmp = g->h.p;      /* n x in_dim fits in n x 2D unless in_dim > 2D */
        if (g->in_dim > 2 * D)
            return fst__fail(FST_EINVAL, "LightGlue: input_dim %d > 2 x %d", g->in_dim, D);
        fst__nn_load_desc(src->desc, src->desc_dtype, n, g->in_dim, tmp, g->in_dim);
        fst__nn_linear(&g->input_proj, n, tmp, g->in_dim, im->xm.p, 2 * D, false);
    } else {
        fst__nn_load_desc(src->desc, src->desc_dtype, n, D, im->xm.p, 2 * D);
    }
    im->n = n;
    return FST_OK;
}

/* x += ffn([x, message]) over the image's n rows. */
static void ffn(lg_model *g, const lg_ffn *f, lg_img *im, double *flops)
{
    int n = im->n, D = g->D;
    fst__nn_linear(&f->l0, n, im->xm.p, 2 * D, g->h.p, 2 * D, false);
    fst__nn_layernorm(g->h.p, n, 2 * D, 2 * D, f->ln_w, f->ln_b);
    fst__nn_gelu(g->h.p, n, 2 * D, 2 * D);
    fst__nn_linear(&f->l3, n, g->h.p, 2 * D, im->xm.p, 2 * D, true);
    *flops += 2.0 * n * (2 * D) * (2 * D) + 2.0 * n * (2 * D) * D;
}

static void rotary(lg_model *g, lg_img *im)
{
    int D = g->D, hd = g->hd, F = hd / 2;
    for (int i = 0; i < im->n; i++) {
        const float *c = im->cs.p + (size_t)i * hd, *sn = c + F;
        float *row = im->proj.p + (size_t)i * 3 * D;
        for (int part = 0; part < 2; part++)            /* q, then k */
            for (int h = 0; h < g->H; h++) {
                float *v = row + part * D + h * hd;
                for (int f = 0; f < F; f++) {
                    float x0 = v[2 * f], x1 = v[2 * f + 1];
                    float a0 = x0 * c[f], b0 = -x1 * sn[f];
                    float a1 = x1 * c[f], b1 = x0 * sn[f];
                    v[2 * f] = a0 + b0;
                    v[2 * f + 1] = a1 + b1;
                }
            }
    }
}

static fst_status self_block(lg_model *g, const lg_layer *y, lg_img *im, double *flops)
{
    fst_status s;
    int n = im->n, D = g->D, hd = g->hd;
    fst__nn_linear(&y->wqkv, n, im->xm.p, 2 * D, im->proj.p, 3 * D, false);
    rotary(g, im);
    float scale = (float)pow((double)hd, -0.5);
    for (int h = 0; h < g->H; h++)
        FST_TRY(fst__nn_attention(&g->aws, n, n, hd, im->proj.p + h * hd, 3 * D,
                                  im->proj.p + D + h * hd, 3 * D,
                                  im->proj.p + 2 * D + h * hd, 3 * D, scale,
                                  im->ctx.p + h * hd, D));
    fst__nn_linear(&y->out_proj, n, im->ctx.p, D, im->xm.p + D, 2 * D, false);
    *flops += 2.0 * n * D * 3 * D + 4.0 * n * n * D + 2.0 * n * D * D;
    ffn(g, &y->sffn, im, flops);
out:
    return s;
}

static fst_status cross_block(lg_model *g, const lg_layer *y, double *flops)
{
    fst_status s;
    int D = g->D, hd = g->hd;
    lg_img *i0 = &g->img[0], *i1 = &g->img[1];
    float sq = (float)sqrt(pow((double)hd, -0.5));
    for (int k = 0; k < 2; k++) {
        lg_img *im = &g->img[k];
        fst__nn_linear(&y->to_qk, im->n, im->xm.p, 2 * D, im->proj.p, 3 * D, false);
        fst__nn_linear(&y->to_v, im->n, im->xm.p, 2 * D, im->proj.p + D, 3 * D, false);
        for (int i = 0; i < im->n; i++) {
            float *r = im->proj.p + (size_t)i * 3 * D;
            for (int c = 0; c < D; c++) r[c] *= sq;
        }
        *flops += 4.0 * im->n * D * D;
    }
    /* sim = qk0 qk1^T serves both directions; row i of sim^T is computed
     * bit-identical to column i of sim */
    for (int h = 0; h < g->H; h++) {
        FST_TRY(fst__nn_attention(&g->aws, i0->n, i1->n, hd, i0->proj.p + h * hd, 3 * D,
                                  i1->proj.p + h * hd, 3 * D, i1->proj.p + D + h * hd, 3 * D,
                                  1.0f, i0->ctx.p + h * hd, D));
        FST_TRY(fst__nn_attention(&g->aws, i1->n, i0->n, hd, i1->proj.p + h * hd, 3 * D,
                                  i0->proj.p + h * hd, 3 * D, i0->proj.p + D + h * hd, 3 * D,
                                  1.0f, i1->ctx.p + h * hd, D));
    }
    *flops += 6.0 * i0->n * i1->n * D;
    for (int k = 0; k < 2; k++) {
        lg_img *im = &g->img[k];
        fst__nn_linear(&y->to_out, im->n, im->ctx.p, D, im->xm.p + D, 2 * D, false);
        *flops += 2.0 * im->n * D * D;
        ffn(g, &y->cffn, im, flops);
    }
out:
    return s;
}

/* out[i] = x_i . w + b over the image's rows */
static void dot_rows(const lg_img *im, int D, const float *w, float b, float *out)
{
    for (int i = 0; i < im->n; i++) {
        const float *x = im->xm.p + (size_t)i * 2 * D;
        float acc = 0.0f;
        for (int k = 0; k < D; k++) acc += x[k] * w[k];
        out[i] = acc + b;
    }
}

static void prune(lg_model *g, lg_img *im, const float *tok, float thr, float keep_above)
{
    int D = g->D, w = 0;
    for (int i = 0; i < im->n; i++) {
        float sc = fst__nn_sigmoid(im->z.p[i]);
        bool keep = sc > keep_above;
        if (tok)
            keep = keep || tok[i] <= thr;
        if (!keep)
            continue;
        if (w != i) {
            memcpy(im->xm.p + (size_t)w * 2 * D, im->xm.p + (size_t)i * 2 * D,
                   (size_t)D * sizeof(float));
            memcpy(im->cs.p + (size_t)w * g->hd, im->cs.p + (size_t)i * g->hd,
                   (size_t)g->hd * sizeof(float));
            im->ind[w] = im->ind[i];
        }
        w++;
    }
    im->n = w;
}

/* The assignment of layer y, filter_matches, the outputs in original order. */
static fst_status assign(lg_model *g, const lg_layer *y, int m, float th, int32_t *m0,
                         float *s0, double *flops)
{
    fst_status s;
    int D = g->D;
    lg_img *i0 = &g->img[0], *i1 = &g->img[1];
    int n0 = i0->n, n1 = i1->n;
    /* final_proj / d^0.25, into ctx */
    float q = (float)pow((double)D, 0.25);
    for (int k = 0; k < 2; k++) {
        lg_img *im = &g->img[k];
        fst__nn_linear(&y->final_proj, im->n, im->xm.p, 2 * D, im->ctx.p, D, false);
        for (size_t c = 0; c < (size_t)im->n * D; c++) im->ctx.p[c] /= q;
        dot_rows(im, D, y->match_w, y->match_b, im->z.p);
        *flops += 2.0 * im->n * D * D;
    }
    FST_TRY(fst__nn_grow(&g->sim, (size_t)n0 * n1));
    FST_TRY(fst__nn_grow(&g->aws.kp, fst__nn_packed_size(D, n1)));
    FST_TRY(fst__nn_grow(&g->rowbuf, (size_t)n1 * 4));
    if (g->colarg_cap < (size_t)(n0 > n1 ? n0 : n1)) {
        size_t c = (size_t)(n0 > n1 ? n0 : n1);
        int *p = realloc(g->colarg, c * sizeof(int)), *q2 = p ? realloc(g->rarg, c * sizeof(int)) : NULL;
        if (p) g->colarg = p;
        if (q2) g->rarg = q2;
        if (!p || !q2)
            return fst__fail(FST_ENOMEM, "LightGlue workspace");
        g->colarg_cap = c;
    }
    fst__nn_pack_t(i1->ctx.p, D, n1, D, g->aws.kp.p);
    fst__nn_gemm(n0, n1, D, i0->ctx.p, D, g->aws.kp.p, NULL, g->sim.p, n1, false);
    *flops += 2.0 * n0 * n1 * D;
    float *sim = g->sim.p;
    float *cmax = g->rowbuf.p, *csum = cmax + n1, *cterm = csum + n1, *row = cterm + n1;
    /* log_softmax over columns: max, sum exp(x - max), log */
    for (int j = 0; j < n1; j++) { cmax[j] = -INFINITY; csum[j] = 0.0f; }
    for (int i = 0; i < n0; i++) {
        const float *r = sim + (size_t)i * n1;
        for (int j = 0; j < n1; j++) cmax[j] = r[j] > cmax[j] ? r[j] : cmax[j];
    }
    for (int i = 0; i < n0; i++) {
        const float *r = sim + (size_t)i * n1;
        for (int j = 0; j < n1; j++) row[j] = r[j] - cmax[j];
        fst__nn_exp_sub_sum(row, n1, 0.0f);
        for (int j = 0; j < n1; j++) csum[j] += row[j];
    }
    for (int j = 0; j < n1; j++) {
        csum[j] = logf(csum[j]);
        cterm[j] = fst__nn_logsigmoid(i1->z.p[j]);
    }
    FST_TRY(fst__nn_grow(&g->colmax, (size_t)n1));
    float *rmax = i0->tok.p;            /* token confidences are spent by now */
    int *ra = g->rarg;
    float *cbest = g->colmax.p;
    for (int j = 0; j < n1; j++) { cbest[j] = -INFINITY; g->colarg[j] = 0; }
    for (int i = 0; i < n0; i++) {
        const float *r = sim + (size_t)i * n1;
        /* log_softmax over the row */
        float mx = fst__nn_max(r, n1);
        for (int j = 0; j < n1; j++) row[j] = r[j] - mx;
        float ls = logf(fst__nn_exp_sub_sum(row, n1, 0.0f));
        float c0 = fst__nn_logsigmoid(i0->z.p[i]);
        float best = -INFINITY;
        int arg = 0;
        for (int j = 0; j < n1; j++) {
            float a0 = (r[j] - mx) - ls;
            float a1 = (r[j] - cmax[j]) - csum[j];
            float v = (a0 + a1) + (c0 + cterm[j]);
            if (v > best) { best = v; arg = j; }
            if (v > cbest[j]) { cbest[j] = v; g->colarg[j] = i; }
        }
        rmax[i] = best;
        ra[i] = arg;
    }
    for (int i = 0; i < m; i++) { m0[i] = -1; s0[i] = 0.0f; }
    for (int i = 0; i < n0; i++) {
        bool mutual = g->colarg[ra[i]] == i;
        float sc = mutual ? expf(rmax[i]) : 0.0f;
        bool valid = mutual && sc > th;
        int oi = i0->ind[i];
        m0[oi] = valid ? i1->ind[ra[i]] : -1;
        s0[oi] = sc;
    }
    return FST_OK;
out:
    return s;
}

static fst_status lg_match(fst_nn_model *mm, const fst_nn_image *a,
                           const fst_nn_image *b, int32_t *m0, float *s0)
{
    fst_status s;
    lg_model *g = mm->impl;
    const fst_nn_conf *cf = &mm->conf;
    int m = (int)a->n, n = (int)b->n;
    const fst_nn_image *src[2] = {a, b};
    for (int i = 0; i < m; i++) { m0[i] = -1; s0[i] = 0.0f; }
    if (m == 0 || n == 0)
        return FST_OK;              /* the reference's "no keypoints" result */
    for (int k = 0; k < 2; k++) {
        FST_TRY(grow_img(g, &g->img[k], (int)src[k]->n));
        FST_TRY(prepare(g, src[k], &g->img[k]));
    }
    bool early = cf->depth_confidence > 0, width = cf->width_confidence > 0;
    float depth_c = (float)cf->depth_confidence;
    float keep_above = (float)(1.0 - cf->width_confidence);
    double flops = 0;
    int i;
    for (i = 0; i < g->L; i++) {
        if (g->img[0].n == 0 || g->img[1].n == 0)
            break;
        const lg_layer *y = &g->layers[i];
        FST_TRY(self_block(g, y, &g->img[0], &flops));
        FST_TRY(self_block(g, y, &g->img[1], &flops));
        FST_TRY(cross_block(g, y, &flops));
        if (i == g->L - 1)
            continue;
        if (early) {
            int below = 0;
            for (int k = 0; k < 2; k++) {
                lg_img *im = &g->img[k];
                dot_rows(im, g->D, y->tok_w, y->tok_b, im->tok.p);
                for (int p = 0; p < im->n; p++) {
                    im->tok.p[p] = fst__nn_sigmoid(im->tok.p[p]);
                    below += im->tok.p[p] < g->thr[i];
                }
            }
            float ratio = 1.0f - (float)below / (float)(m + n);
            if (ratio > depth_c)
                break;
        }
        for (int k = 0; k < 2 && width; k++) {
            lg_img *im = &g->img[k];
            if (im->n <= cf->prune_min_kpts)
                continue;
            dot_rows(im, g->D, y->match_w, y->match_b, im->z.p);
            prune(g, im, early ? im->tok.p : NULL, g->thr[i], keep_above);
        }
    }
    if (g->img[0].n == 0 || g->img[1].n == 0) {
        mm->flops = flops;
        return FST_OK;
    }
    FST_TRY(assign(g, &g->layers[i < g->L ? i : g->L - 1], m, (float)cf->filter_threshold,
                   m0, s0, &flops));
    mm->flops = flops;
out:
    return s;
}
