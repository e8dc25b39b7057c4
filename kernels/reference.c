/* kernels/reference.c : the plain matcher every fast path is tested against.
 * No tiling, no SIMD: each similarity is a double-precision sum rounded once
 * to float32; then hloc's decisions through match_math.h. */
#include "backend_impl.h"
#include "match_math.h"

#include <stdlib.h>

static void widen(const fst_view *v, float *dst)
{
    size_t count = (size_t)v->n * v->d;
    if (v->dtype == FST_DTYPE_F32) {
        const float *src = v->desc;
        for (size_t k = 0; k < count; k++)
            dst[k] = src[k];
    } else {
        const uint16_t *src = v->desc;
        for (size_t k = 0; k < count; k++)
            dst[k] = fst_f16_to_f32(src[k]);
    }
}

fst_status fst_match_reference(const fst_view *a, const fst_view *b,
                               const fst_match_opts *opts, fst_matches *out)
{
    fst_match_opts o = opts ? *opts : fst_match_opts_default();
    fst_status s = fst__match_check(a, b, out);
    if (s == FST_DONE)
        return FST_OK;
    if (s != FST_OK)
        return s;

    uint32_t n0 = a->n, n1 = b->n, d = a->d;
    float *x = malloc(((size_t)n0 * d + 1) * sizeof *x);
    float *y = malloc(((size_t)n1 * d + 1) * sizeof *y);
    fst_top2 *col = malloc((size_t)n1 * sizeof *col);
    int32_t *m1 = malloc((size_t)n1 * sizeof *m1);
    if (!x || !y || !col || !m1) {
        s = fst__fail(FST_ENOMEM, "reference match %s - %s", a->name,
                      b->name);
        goto out;
    }
    widen(a, x);
    widen(b, y);

    float ratio2 = fst_thresh2(o.ratio_threshold);
    float dist2 = fst_thresh2(o.distance_threshold);
    bool use_ratio = fst_use_ratio(n0, n1);

    for (uint32_t j = 0; j < n1; j++)
        col[j] = fst_top2_init();
    for (uint32_t i = 0; i < n0; i++) {
        fst_top2 row = fst_top2_init();
        const float *xi = x + (size_t)i * d;
        for (uint32_t j = 0; j < n1; j++) {
            const float *yj = y + (size_t)j * d;
            double acc = 0.0;
            for (uint32_t k = 0; k < d; k++)
                acc += (double)xi[k] * (double)yj[k];
            float sim = (float)acc;
            fst_top2_push(&row, sim, (int32_t)j);
            fst_top2_push(&col[j], sim, (int32_t)i);
        }
        out->matches0[i] = fst_nn_decide(&row, ratio2, dist2, use_ratio,
                                         &out->scores0[i]);
    }
    if (o.mutual) {
        for (uint32_t j = 0; j < n1; j++) {
            float unused;
            m1[j] = fst_nn_decide(&col[j], ratio2, dist2, use_ratio, &unused);
        }
        for (uint32_t i = 0; i < n0; i++) {
            int32_t m = out->matches0[i];
            out->matches0[i] = fst_mutual_keep(m, m >= 0 ? m1[m] : -1,
                                               (int32_t)i);
        }
    }
    uint32_t nm = 0;
    for (uint32_t i = 0; i < n0; i++)
        nm += out->matches0[i] >= 0;
    out->nmatches = nm;
    s = FST_OK;
out:
    free(x);
    free(y);
    free(col);
    free(m1);
    return s;
}
