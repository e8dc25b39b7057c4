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

/* The vector operations sweep_tmpl.h builds the micro-kernel and the
 * reductions from. */
typedef __m512 vf;
typedef __m512i vi;
typedef __mmask16 vk;
T512_INLINE vf vf_zero(void) { return _mm512_setzero_ps(); }
T512_INLINE vf vf_set1(float x) { return _mm512_set1_ps(x); }
T512_INLINE vf vf_load(const float *p) { return _mm512_load_ps(p); }
T512_INLINE void vf_store(float *p, vf v) { _mm512_store_ps(p, v); }
T512_INLINE vf vf_bcast(const float *p) { return _mm512_set1_ps(*p); }
T512_INLINE vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
T512_INLINE vi vi_set1(int32_t x) { return _mm512_set1_epi32(x); }
T512_INLINE vi vi_add(vi a, vi b) { return _mm512_add_epi32(a, b); }
T512_INLINE vi vi_load(const int32_t *p) { return _mm512_load_si512(p); }
T512_INLINE void vi_store(int32_t *p, vi v) { _mm512_store_si512(p, v); }
T512_INLINE vi vi_iota(void)
{
    return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}
T512_INLINE vk vk_first(int n)
{
    return (vk)(n >= 16 ? 0xFFFFu : n <= 0 ? 0u : (1u << n) - 1);
}
T512_INLINE vf vf_load_keep(const float *p, vk k, vf y)
{
    return _mm512_mask_load_ps(y, k, p);
}

/* The vector form of fst_top2_push for candidates arriving in increasing
 * index per lane: strict > keeps the lowest index on ties, and the
 * displaced or tied best becomes the second. Operand order makes a NaN
 * candidate change nothing (max/min return their second operand on NaN). */
T512_INLINE void vf_push(vf *s1, vf *s2, vi *j1, vf x, vi jx, bool want_s2)
{
    __mmask16 m = _mm512_cmp_ps_mask(x, *s1, _CMP_GT_OQ);
    if (want_s2)
        *s2 = _mm512_max_ps(_mm512_min_ps(*s1, x), *s2);
    *s1 = _mm512_max_ps(x, *s1);
    *j1 = _mm512_mask_mov_epi32(*j1, m, jx);
}

#define CPU_VEC
#define CPU_ISA fst__cpu_isa_avx512
#define CPU_ISA_NAME "avx512"
#define CPU_COL_KIB 512
#define CPU_TARGET T512
#include "sweep_tmpl.h"

#else  /* not x86: never supported */

static bool supported(void) { return false; }
const fst__cpu_isa fst__cpu_isa_avx512 = {
    "avx512", 14, 32, 16, supported, NULL, NULL, NULL,
};
#endif
