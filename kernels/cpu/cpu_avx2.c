/* kernels/cpu/cpu_avx2.c : the AVX2 + FMA path of the CPU matcher.
 *
 * Micro-kernel: 6 x 16 similarities in 12 ymm accumulators (the usual
 * Haswell sgemm shape: 12 FMAs per 2 loads and 6 broadcasts), reduced per
 * tile like the AVX-512 path with 8-lane row state. float16 needs F16C,
 * which every AVX2 CPU we know of has; supported() checks it anyway.
 */
#include "cpu_impl.h"
#include "match_math.h"

#if FST_CPU_X86
#include <cpuid.h>
#include <immintrin.h>

#define T256 __attribute__((target("avx2,fma,f16c")))
#define T256_INLINE T256 __attribute__((always_inline)) static inline

enum { MR = 6, NR = 16, LANES = 8 };

static uint32_t col_block(uint32_t d)
{
    uint32_t per = NR * (d ? d : 1) * (uint32_t)sizeof(float);
    uint32_t nb = (256u << 10) / per;
    return nb ? nb : 1;
}

static bool supported(void)
{
    /* F16C by CPUID: clang's __builtin_cpu_supports does not know it */
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_F16C))
        return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

/* Widen one row into tmp (F16C for float16), then scatter it into the
 * k-major panel. Packing is O((n0 + n1) d) against O(n0 n1 d) for the
 * multiply, so plain strided stores are good enough here. */
T256 static void pack(const void *src, int dt, uint32_t n, uint32_t d,
                      unsigned w, uint32_t p0, uint32_t p1, float *dst)
{
    float tmp[8];
    for (uint32_t p = p0; p < p1; p++) {
        float *pd = dst + (size_t)p * w * d;
        for (unsigned r = 0; r < w; r++) {
            uint32_t row = p * w + r;
            if (row >= n) {
                for (uint32_t k = 0; k < d; k++)
                    pd[(size_t)k * w + r] = 0.0f;
                continue;
            }
            if (dt == FST_DTYPE_F32) {
                const float *s = (const float *)src + (size_t)row * d;
                for (uint32_t k = 0; k < d; k++)
                    pd[(size_t)k * w + r] = s[k];
                continue;
            }
            const uint16_t *s = (const uint16_t *)src + (size_t)row * d;
            uint32_t k = 0;
            for (; k + 8 <= d; k += 8) {
                __m128i h = _mm_loadu_si128((const __m128i *)(s + k));
                _mm256_storeu_ps(tmp, _mm256_cvtph_ps(h));
                for (unsigned t = 0; t < 8; t++)
                    pd[(size_t)(k + t) * w + r] = tmp[t];
            }
            for (; k < d; k++)
                pd[(size_t)k * w + r] = fst_f16_to_f32(s[k]);
        }
    }
}

#define ACC_LIST(X) X(0) X(1) X(2) X(3) X(4) X(5)

T256_INLINE void kernel(const float *restrict a, const float *restrict b,
                        uint32_t d, float *restrict tile)
{
#define DECL(r) __m256 c##r##_0 = _mm256_setzero_ps(), c##r##_1 = _mm256_setzero_ps();
    ACC_LIST(DECL)
#undef DECL
    for (uint32_t k = 0; k < d; k++) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
        __m256 t;
#define STEP(r) t = _mm256_broadcast_ss(a + (r));         \
        c##r##_0 = _mm256_fmadd_ps(t, b0, c##r##_0);      \
        c##r##_1 = _mm256_fmadd_ps(t, b1, c##r##_1);
        ACC_LIST(STEP)
#undef STEP
        a += MR;
        b += NR;
    }
#define STORE(r) _mm256_store_ps(tile + (r) * NR, c##r##_0); \
                 _mm256_store_ps(tile + (r) * NR + 8, c##r##_1);
    ACC_LIST(STORE)
#undef STORE
}

/* fst_top2_push in 8 lanes; see cpu_avx512.c for the operand order. */
T256_INLINE void push(__m256 *s1, __m256 *s2, __m256i *j1, __m256 x,
                      __m256i jx, bool want_s2)
{
    __m256 m = _mm256_cmp_ps(x, *s1, _CMP_GT_OQ);
    if (want_s2)
        *s2 = _mm256_max_ps(_mm256_min_ps(*s1, x), *s2);
    *s1 = _mm256_max_ps(x, *s1);
    *j1 = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(*j1),
                                               _mm256_castsi256_ps(jx), m));
}

T256_INLINE void reduce_tile(const fst__cpu_sweep *sw, const float *tile,
                             uint32_t ir, uint32_t jr, bool want_s2,
                             bool want_cols)
{
    uint32_t i0 = ir * MR, j0 = jr * NR;
    unsigned vr = sw->n0 - i0 < MR ? sw->n0 - i0 : MR;
    unsigned vc = sw->n1 - j0 < NR ? sw->n1 - j0 : NR;
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    __m256i jv0 = _mm256_add_epi32(_mm256_set1_epi32((int32_t)j0), iota);
    __m256i jv1 = _mm256_add_epi32(_mm256_set1_epi32((int32_t)j0 + 8), iota);
    /* padding columns become -inf: never candidates */
    __m256 keep0 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
        _mm256_set1_epi32((int32_t)vc), iota));
    __m256 keep1 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
        _mm256_set1_epi32((int32_t)vc - 8), iota));

    for (unsigned r = 0; r < vr; r++) {
        size_t o = (size_t)(i0 + r) * LANES;
        __m256 s1 = _mm256_load_ps(sw->rows.s1 + o);
        __m256 s2 = want_s2 ? _mm256_load_ps(sw->rows.s2 + o) : ninf;
        __m256i j1 = _mm256_load_si256((const __m256i *)(sw->rows.j1 + o));
        __m256 x0 = _mm256_load_ps(tile + r * NR);
        __m256 x1 = _mm256_load_ps(tile + r * NR + 8);
        if (vc < NR) {
            x0 = _mm256_blendv_ps(ninf, x0, keep0);
            x1 = _mm256_blendv_ps(ninf, x1, keep1);
        }
        push(&s1, &s2, &j1, x0, jv0, want_s2);
        push(&s1, &s2, &j1, x1, jv1, want_s2);
        _mm256_store_ps(sw->rows.s1 + o, s1);
        if (want_s2)
            _mm256_store_ps(sw->rows.s2 + o, s2);
        _mm256_store_si256((__m256i *)(sw->rows.j1 + o), j1);
    }
    if (!want_cols)
        return;
    for (unsigned v = 0; v < NR / 8 && v * 8 < vc; v++) {
        size_t o = (size_t)j0 + v * 8;
        __m256 s1 = _mm256_load_ps(sw->cols.s1 + o);
        __m256 s2 = want_s2 ? _mm256_load_ps(sw->cols.s2 + o) : ninf;
        __m256i j1 = _mm256_load_si256((const __m256i *)(sw->cols.j1 + o));
        for (unsigned r = 0; r < vr; r++)
            push(&s1, &s2, &j1, _mm256_load_ps(tile + r * NR + v * 8),
                 _mm256_set1_epi32((int32_t)(i0 + r)), want_s2);
        _mm256_store_ps(sw->cols.s1 + o, s1);
        if (want_s2)
            _mm256_store_ps(sw->cols.s2 + o, s2);
        _mm256_store_si256((__m256i *)(sw->cols.j1 + o), j1);
    }
}

T256_INLINE void sweep_impl(const fst__cpu_sweep *sw, bool want_s2,
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

T256 static void sweep(const fst__cpu_sweep *sw)
{
    if (sw->want_s2) {
        if (sw->want_cols) sweep_impl(sw, true, true, true);
        else               sweep_impl(sw, true, false, true);
    } else {
        if (sw->want_cols) sweep_impl(sw, false, true, true);
        else               sweep_impl(sw, false, false, true);
    }
}

T256 static void gemm_only(const fst__cpu_sweep *sw)
{
    sweep_impl(sw, false, false, false);
}

const fst__cpu_isa fst__cpu_isa_avx2 = {
    "avx2", MR, NR, LANES, supported, pack, sweep, gemm_only,
};

#else

static bool supported(void) { return false; }
const fst__cpu_isa fst__cpu_isa_avx2 = {
    "avx2", 6, 16, 8, supported, NULL, NULL, NULL,
};
#endif
