/* kernels/cpu/cpu_scalar.c : the portable path of the CPU matcher (any
 * x86-64 or other CPU; baseline instructions only). Same blocking as the
 * SIMD paths, plain C, one-lane row state pushed with fst_top2_push itself.
 */
#include "cpu_impl.h"
#include "match_math.h"

enum { MR = 4, NR = 8, LANES = 1 };

static bool supported(void) { return true; }

static void pack(const void *src, int dt, uint32_t n, uint32_t d,
                 unsigned w, uint32_t p0, uint32_t p1, float *dst)
{
    for (uint32_t p = p0; p < p1; p++) {
        float *pd = dst + (size_t)p * w * d;
        for (unsigned r = 0; r < w; r++) {
            uint32_t row = p * w + r;
            for (uint32_t k = 0; k < d; k++) {
                float v = 0.0f;
                if (row < n) {
                    size_t at = (size_t)row * d + k;
                    v = dt == FST_DTYPE_F32 ? ((const float *)src)[at]
                                            : fst_f16_to_f32(((const uint16_t *)src)[at]);
                }
                pd[(size_t)k * w + r] = v;
            }
        }
    }
}

static void kernel(const float *restrict a, const float *restrict b,
                   uint32_t d, float *restrict tile)
{
    float c[MR][NR] = {{0}};
    for (uint32_t k = 0; k < d; k++) {
        for (unsigned r = 0; r < MR; r++)
            for (unsigned q = 0; q < NR; q++)
                c[r][q] += a[r] * b[q];
        a += MR;
        b += NR;
    }
    for (unsigned r = 0; r < MR; r++)
        for (unsigned q = 0; q < NR; q++)
            tile[r * NR + q] = c[r][q];
}

static void push_state(const fst__cpu_state *st, size_t at, float s, int32_t j)
{
    fst_top2 t = { st->s1[at], st->s2[at], st->j1[at] };
    fst_top2_push(&t, s, j);
    st->s1[at] = t.s1;
    st->s2[at] = t.s2;
    st->j1[at] = t.j1;
}

/* One lane per row; fst_top2_push keeps the second best whether or not it
 * is wanted. */
static inline void reduce_tile(const fst__cpu_sweep *sw, const float *tile,
                               uint32_t ir, uint32_t jr, bool want_s2,
                               bool want_cols)
{
    (void)want_s2;
    uint32_t i0 = ir * MR, j0 = jr * NR;
    unsigned vr = sw->n0 - i0 < MR ? sw->n0 - i0 : MR;
    unsigned vc = sw->n1 - j0 < NR ? sw->n1 - j0 : NR;
    for (unsigned r = 0; r < vr; r++)
        for (unsigned q = 0; q < vc; q++) {
            float s = tile[r * NR + q];
            push_state(&sw->rows, i0 + r, s, (int32_t)(j0 + q));
            if (want_cols)
                push_state(&sw->cols, j0 + q, s, (int32_t)(i0 + r));
        }
}

#define CPU_ISA fst__cpu_isa_scalar
#define CPU_ISA_NAME "scalar"
#define CPU_COL_KIB 256
#define CPU_TARGET
#include "sweep_tmpl.h"
