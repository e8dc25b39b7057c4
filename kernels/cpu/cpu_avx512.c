/* kernels/cpu/cpu_avx512.c : the AVX-512 path of the CPU matcher.
 *
 * Micro-kernel: 14 x 32 similarities in 28 zmm accumulators; per k one
 * broadcast of each A value and two loads of B (the shape of the usual
 * AVX-512 sgemm kernels: 28 FMAs per 16 loads, load ports to spare).
 * Each tile is reduced while it is hot in L1: rows into 16-lane state,
 * columns into per-column state, about 10 vector ops per 16 similarities
 * against d FMAs, so the reduction costs ~4% at d = 256.
 * Every function carries a target attribute; nothing here runs unless
 * supported() said yes, so one build runs on any x86-64.
 */
#include "cpu_impl.h"
#include "match_math.h"

#if FST_CPU_X86
#include <immintrin.h>

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define T512_INLINE T512 __attribute__((always_inline)) static inline

enum { MR = 14, NR = 32, LANES = 16 };

/* B panels per column block: keep the block (NR * d floats per panel) near
 * 512 KiB so it stays in L2 while every A panel passes over it. */
static uint32_t col_block(uint32_t d)
{
    uint32_t per = NR * (d ? d : 1) * (uint32_t)sizeof(float);
    uint32_t nb = (512u << 10) / per;
    return nb ? nb : 1;
}

static bool supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("fma");
}

/* In-register transpose of 16 rows of 16 floats. */
T512_INLINE void transpose16(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i]     = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        t[i]      = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4]  = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
        t[i + 8]  = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (int i = 0; i < 8; i++) {
        r[i]     = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    }
}

/* Widen and transpose 16 k-values of up to 16 rows at a time. Loads are
 * masked and unaligned: rows may be only 16-byte aligned, and the mask
 * keeps the last row's tail inside its buffer. */
T512 static void pack(const void *src, int dt, uint32_t n, uint32_t d,
                      unsigned w, uint32_t p0, uint32_t p1, float *dst)
{
    for (uint32_t p = p0; p < p1; p++) {
        float *pd = dst + (size_t)p * w * d;
        for (unsigned g = 0; g < w; g += 16) {
            uint32_t r0 = p * w + g;
            unsigned glanes = w - g < 16 ? w - g : 16;
            unsigned valid = r0 >= n ? 0 : (n - r0 < glanes ? n - r0 : glanes);
            __mmask16 smask = (__mmask16)((1u << glanes) - 1);
            for (uint32_t k0 = 0; k0 < d; k0 += 16) {
                unsigned kc = d - k0 < 16 ? d - k0 : 16;
                __mmask16 lmask = (__mmask16)((1u << kc) - 1);
                __m512 r[16];
                for (unsigned t = 0; t < 16; t++) {
                    if (t >= valid) {
                        r[t] = _mm512_setzero_ps();
                    } else if (dt == FST_DTYPE_F32) {
                        const float *row = (const float *)src + (size_t)(r0 + t) * d;
                        r[t] = _mm512_maskz_loadu_ps(lmask, row + k0);
                    } else {
                        const uint16_t *row = (const uint16_t *)src + (size_t)(r0 + t) * d;
                        __m256i h = _mm256_maskz_loadu_epi16(lmask, row + k0);
                        r[t] = _mm512_cvtph_ps(h);
                    }
                }
                transpose16(r);
                for (unsigned t = 0; t < kc; t++)
                    _mm512_mask_storeu_ps(pd + (size_t)(k0 + t) * w + g, smask, r[t]);
            }
        }
    }
}

#define ACC_LIST(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) \
                    X(10) X(11) X(12) X(13)

/* tile[r * NR + c] = sum_k a[k * MR + r] * b[k * NR + c] (float32 FMA,
 * k increasing: the same value for identical descriptors wherever they
 * sit, so exact ties stay exact). */
T512_INLINE void kernel(const float *restrict a, const float *restrict b,
                        uint32_t d, float *restrict tile)
{
#define DECL(r) __m512 c##r##_0 = _mm512_setzero_ps(), c##r##_1 = _mm512_setzero_ps();
    ACC_LIST(DECL)
#undef DECL
    for (uint32_t k = 0; k < d; k++) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
        __m512 t;
#define STEP(r) t = _mm512_set1_ps(a[r]);                 \
        c##r##_0 = _mm512_fmadd_ps(t, b0, c##r##_0);      \
        c##r##_1 = _mm512_fmadd_ps(t, b1, c##r##_1);
        ACC_LIST(STEP)
#undef STEP
        a += MR;
        b += NR;
    }
#define STORE(r) _mm512_store_ps(tile + (r) * NR, c##r##_0); \
                 _mm512_store_ps(tile + (r) * NR + 16, c##r##_1);
    ACC_LIST(STORE)
#undef STORE
}

/* The vector form of fst_top2_push for candidates arriving in increasing
 * index per lane: strict > keeps the lowest index on ties, and the
 * displaced or tied best becomes the second. Operand order makes a NaN
 * candidate change nothing (max/min return their second operand on NaN). */
T512_INLINE void push(__m512 *s1, __m512 *s2, __m512i *j1, __m512 x,
                      __m512i jx, bool want_s2)
{
    __mmask16 m = _mm512_cmp_ps_mask(x, *s1, _CMP_GT_OQ);
    if (want_s2)
        *s2 = _mm512_max_ps(_mm512_min_ps(*s1, x), *s2);
    *s1 = _mm512_max_ps(x, *s1);
    *j1 = _mm512_mask_mov_epi32(*j1, m, jx);
}

T512_INLINE void reduce_tile(const fst__cpu_sweep *sw, const float *tile,
                             uint32_t ir, uint32_t jr, bool want_s2,
                             bool want_cols)
{
    uint32_t i0 = ir * MR, j0 = jr * NR;
    unsigned vr = sw->n0 - i0 < MR ? sw->n0 - i0 : MR;
    unsigned vc = sw->n1 - j0 < NR ? sw->n1 - j0 : NR;
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9,
                                           10, 11, 12, 13, 14, 15);
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    __m512i jv0 = _mm512_add_epi32(_mm512_set1_epi32((int32_t)j0), iota);
    __m512i jv1 = _mm512_add_epi32(_mm512_set1_epi32((int32_t)j0 + 16), iota);

    if (vc == NR) {
        for (unsigned r = 0; r < vr; r++) {
            size_t o = (size_t)(i0 + r) * LANES;
            __m512 s1 = _mm512_load_ps(sw->rows.s1 + o);
            __m512 s2 = want_s2 ? _mm512_load_ps(sw->rows.s2 + o) : ninf;
            __m512i j1 = _mm512_load_si512(sw->rows.j1 + o);
            push(&s1, &s2, &j1, _mm512_load_ps(tile + r * NR), jv0, want_s2);
            push(&s1, &s2, &j1, _mm512_load_ps(tile + r * NR + 16), jv1, want_s2);
            _mm512_store_ps(sw->rows.s1 + o, s1);
            if (want_s2)
                _mm512_store_ps(sw->rows.s2 + o, s2);
            _mm512_store_si512(sw->rows.j1 + o, j1);
        }
    } else {
        /* last column panel: padding columns must never be candidates */
        __mmask16 cm0 = (__mmask16)(vc >= 16 ? 0xFFFFu : (1u << vc) - 1);
        __mmask16 cm1 = (__mmask16)(vc <= 16 ? 0u : (1u << (vc - 16)) - 1);
        for (unsigned r = 0; r < vr; r++) {
            size_t o = (size_t)(i0 + r) * LANES;
            __m512 s1 = _mm512_load_ps(sw->rows.s1 + o);
            __m512 s2 = want_s2 ? _mm512_load_ps(sw->rows.s2 + o) : ninf;
            __m512i j1 = _mm512_load_si512(sw->rows.j1 + o);
            __m512 x0 = _mm512_mask_load_ps(ninf, cm0, tile + r * NR);
            __m512 x1 = _mm512_mask_load_ps(ninf, cm1, tile + r * NR + 16);
            push(&s1, &s2, &j1, x0, jv0, want_s2);
            push(&s1, &s2, &j1, x1, jv1, want_s2);
            _mm512_store_ps(sw->rows.s1 + o, s1);
            if (want_s2)
                _mm512_store_ps(sw->rows.s2 + o, s2);
            _mm512_store_si512(sw->rows.j1 + o, j1);
        }
    }
    if (!want_cols)
        return;
    for (unsigned v = 0; v < NR / 16 && v * 16 < vc; v++) {
        size_t o = (size_t)j0 + v * 16;
        __m512 s1 = _mm512_load_ps(sw->cols.s1 + o);
        __m512 s2 = want_s2 ? _mm512_load_ps(sw->cols.s2 + o) : ninf;
        __m512i j1 = _mm512_load_si512(sw->cols.j1 + o);
        for (unsigned r = 0; r < vr; r++)
            push(&s1, &s2, &j1, _mm512_load_ps(tile + r * NR + v * 16),
                 _mm512_set1_epi32((int32_t)(i0 + r)), want_s2);
        _mm512_store_ps(sw->cols.s1 + o, s1);
        if (want_s2)
            _mm512_store_ps(sw->cols.s2 + o, s2);
        _mm512_store_si512(sw->cols.j1 + o, j1);
    }
}

T512_INLINE void sweep_impl(const fst__cpu_sweep *sw, bool want_s2,
                            bool want_cols, bool reduce)
{
    uint32_t d = sw->d, nb = col_block(d);
    for (uint32_t jc = sw->jr0; jc < sw->jr1; jc += nb) {
        uint32_t jend = jc + nb < sw->jr1 ? jc + nb : sw->jr1;
        for (uint32_t ir = sw->ir0; ir < sw->ir1; ir++) {
            const float *ap = sw->ap + (size_t)ir * MR * d;
            for (uint32_t jr = jc; jr < jend; jr++) {
                kernel(ap, sw->bp + (size_t)jr * NR * d, d, sw->tile);
                if (reduce)
                    reduce_tile(sw, sw->tile, ir, jr, want_s2, want_cols);
            }
        }
    }
}

T512 static void sweep(const fst__cpu_sweep *sw)
{
    if (sw->want_s2) {
        if (sw->want_cols) sweep_impl(sw, true, true, true);
        else               sweep_impl(sw, true, false, true);
    } else {
        if (sw->want_cols) sweep_impl(sw, false, true, true);
        else               sweep_impl(sw, false, false, true);
    }
}

T512 static void gemm_only(const fst__cpu_sweep *sw)
{
    sweep_impl(sw, false, false, false);
}

const fst__cpu_isa fst__cpu_isa_avx512 = {
    "avx512", MR, NR, LANES, supported, pack, sweep, gemm_only,
};

#else  /* not x86: never supported */

static bool supported(void) { return false; }
const fst__cpu_isa fst__cpu_isa_avx512 = {
    "avx512", 14, 32, 16, supported, NULL, NULL, NULL,
};
#endif
