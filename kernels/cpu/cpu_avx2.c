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

/* The vector operations sweep_tmpl.h builds the micro-kernel and the
 * reductions from; a lane mask is a vector of all-ones or zero lanes. */
typedef __m256 vf;
typedef __m256i vi;
typedef __m256 vk;
T256_INLINE vf vf_zero(void) { return _mm256_setzero_ps(); }
T256_INLINE vf vf_set1(float x) { return _mm256_set1_ps(x); }
T256_INLINE vf vf_load(const float *p) { return _mm256_load_ps(p); }
T256_INLINE void vf_store(float *p, vf v) { _mm256_store_ps(p, v); }
T256_INLINE vf vf_bcast(const float *p) { return _mm256_broadcast_ss(p); }
T256_INLINE vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
T256_INLINE vi vi_set1(int32_t x) { return _mm256_set1_epi32(x); }
T256_INLINE vi vi_add(vi a, vi b) { return _mm256_add_epi32(a, b); }
T256_INLINE vi vi_load(const int32_t *p) { return _mm256_load_si256((const __m256i *)p); }
T256_INLINE void vi_store(int32_t *p, vi v) { _mm256_store_si256((__m256i *)p, v); }
T256_INLINE vi vi_iota(void) { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
T256_INLINE vk vk_first(int n)
{
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), vi_iota()));
}
T256_INLINE vf vf_load_keep(const float *p, vk k, vf y)
{
    return _mm256_blendv_ps(y, _mm256_load_ps(p), k);
}

/* fst_top2_push in 8 lanes; see cpu_avx512.c for the operand order. */
T256_INLINE void vf_push(vf *s1, vf *s2, vi *j1, vf x, vi jx, bool want_s2)
{
    __m256 m = _mm256_cmp_ps(x, *s1, _CMP_GT_OQ);
    if (want_s2)
        *s2 = _mm256_max_ps(_mm256_min_ps(*s1, x), *s2);
    *s1 = _mm256_max_ps(x, *s1);
    *j1 = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(*j1),
                                               _mm256_castsi256_ps(jx), m));
}

#define CPU_VEC
#define CPU_ISA fst__cpu_isa_avx2
#define CPU_ISA_NAME "avx2"
#define CPU_COL_KIB 256
#define CPU_TARGET T256
#include "sweep_tmpl.h"

#else

static bool supported(void) { return false; }
const fst__cpu_isa fst__cpu_isa_avx2 = {
    "avx2", 6, 16, 8, supported, NULL, NULL, NULL,
};
#endif
