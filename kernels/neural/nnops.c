/* nnops.c : the transformer pieces both networks use, written once: packed
 * matrix products (AVX2 + FMA 6 x 16 micro-kernel, a portable one
 * otherwise), one-head attention over blocks of query rows, layer norm,
 * GELU, vectorised exp / softmax / logsumexp, weight loading.
 *
 * Products accumulate each output in k order with one rounding per FMA;
 * C[i][j] and, with roles swapped, C'[j][i] are bit-identical, which the
 * cross attention relies on when it recomputes the similarity transposed.
 */
#include "nn_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define NN_X86 1
#include <immintrin.h>
#define T256 __attribute__((target("avx2,fma")))
#define T256_INLINE T256 __attribute__((always_inline)) static inline
#else
#define NN_X86 0
#endif

enum { MR = 6, KC = 256, MC = 96, ATT_ROWS = 24 };

/* ------------------------------------------------------------ buffers */

fst_status fst__nn_grow(nn_buf *b, size_t n)
{
    if (n <= b->cap)
        return FST_OK;
    size_t cap = n + n / 4 + 64;
    void *p = NULL;
    if (posix_memalign(&p, 64, cap * sizeof(float)) != 0)
        return fst__fail(FST_ENOMEM, "neural workspace: %zu floats", cap);
    free(b->p);
    b->p = p;
    b->cap = cap;
    return FST_OK;
}

void fst__nn_buf_free(nn_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->cap = 0;
}

/* ------------------------------------------------------------ packing */

size_t fst__nn_packed_size(int k, int n)
{
    return (size_t)((n + NN_NR - 1) / NN_NR) * NN_NR * (size_t)(k > 0 ? k : 1);
}

void fst__nn_pack_t(const float *W, int ldw, int n, int k, float *dst)
{
    for (int p = 0; p * NN_NR < n; p++) {
        float *d = dst + (size_t)p * NN_NR * k;
        int w = n - p * NN_NR < NN_NR ? n - p * NN_NR : NN_NR;
        for (int r = 0; r < NN_NR; r++) {
            if (r >= w) {
                for (int kk = 0; kk < k; kk++)
                    d[(size_t)kk * NN_NR + r] = 0.0f;
                continue;
            }
            const float *s = W + (size_t)(p * NN_NR + r) * ldw;
            for (int kk = 0; kk < k; kk++)
                d[(size_t)kk * NN_NR + r] = s[kk];
        }
    }
}

void fst__nn_pack(const float *src, int ld, int k, int n, float *dst)
{
    for (int p = 0; p * NN_NR < n; p++) {
        float *d = dst + (size_t)p * NN_NR * k;
        int w = n - p * NN_NR < NN_NR ? n - p * NN_NR : NN_NR;
        for (int kk = 0; kk < k; kk++) {
            const float *s = src + (size_t)kk * ld + p * NN_NR;
            float *o = d + (size_t)kk * NN_NR;
            int r = 0;
            for (; r < w; r++) o[r] = s[r];
            for (; r < NN_NR; r++) o[r] = 0.0f;
        }
    }
}

/* ------------------------------------------------------------ micro-kernels */

static bool have_avx2(void);

/* C tile (MR x 16, ldc) = init + A B over kc, where init is C itself
 * (acc) or the 16 values of `row0` (bias or zeros) broadcast down. */
static void kern_scalar(int kc, const float *A, const float *B,
                        float *C, int ldc, bool acc, const float *row0)
{
    float c[MR][NN_NR];
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NN_NR; j++)
            c[r][j] = acc ? C[(size_t)r * ldc + j] : row0[j];
    for (int kk = 0; kk < kc; kk++) {
        const float *b = B + (size_t)kk * NN_NR;
        for (int r = 0; r < MR; r++) {
            float a = A[(size_t)kk * MR + r];
            for (int j = 0; j < NN_NR; j++)
                c[r][j] = fmaf(a, b[j], c[r][j]);
        }
    }
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NN_NR; j++)
            C[(size_t)r * ldc + j] = c[r][j];
}

#if NN_X86
T256 static void kern_avx2(int kc, const float *A, const float *B,
                           float *C, int ldc, bool acc, const float *row0)
{
    __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    if (acc) {
        c00 = _mm256_loadu_ps(C + 0 * (size_t)ldc); c01 = _mm256_loadu_ps(C + 0 * (size_t)ldc + 8);
        c10 = _mm256_loadu_ps(C + 1 * (size_t)ldc); c11 = _mm256_loadu_ps(C + 1 * (size_t)ldc + 8);
        c20 = _mm256_loadu_ps(C + 2 * (size_t)ldc); c21 = _mm256_loadu_ps(C + 2 * (size_t)ldc + 8);
        c30 = _mm256_loadu_ps(C + 3 * (size_t)ldc); c31 = _mm256_loadu_ps(C + 3 * (size_t)ldc + 8);
        c40 = _mm256_loadu_ps(C + 4 * (size_t)ldc); c41 = _mm256_loadu_ps(C + 4 * (size_t)ldc + 8);
        c50 = _mm256_loadu_ps(C + 5 * (size_t)ldc); c51 = _mm256_loadu_ps(C + 5 * (size_t)ldc + 8);
    } else {
        c00 = c10 = c20 = c30 = c40 = c50 = _mm256_loadu_ps(row0);
        c01 = c11 = c21 = c31 = c41 = c51 = _mm256_loadu_ps(row0 + 8);
    }
    for (int kk = 0; kk < kc; kk++) {
        __m256 b0 = _mm256_load_ps(B), b1 = _mm256_load_ps(B + 8);
        __m256 a;
        a = _mm256_broadcast_ss(A + 0); c00 = _mm256_fmadd_ps(a, b0, c00); c01 = _mm256_fmadd_ps(a, b1, c01);
        a = _mm256_broadcast_ss(A + 1); c10 = _mm256_fmadd_ps(a, b0, c10); c11 = _mm256_fmadd_ps(a, b1, c11);
        a = _mm256_broadcast_ss(A + 2); c20 = _mm256_fmadd_ps(a, b0, c20); c21 = _mm256_fmadd_ps(a, b1, c21);
        a = _mm256_broadcast_ss(A + 3); c30 = _mm256_fmadd_ps(a, b0, c30); c31 = _mm256_fmadd_ps(a, b1, c31);
        a = _mm256_broadcast_ss(A + 4); c40 = _mm256_fmadd_ps(a, b0, c40); c41 = _mm256_fmadd_ps(a, b1, c41);
        a = _mm256_broadcast_ss(A + 5); c50 = _mm256_fmadd_ps(a, b0, c50); c51 = _mm256_fmadd_ps(a, b1, c51);
        A += MR;
        B += NN_NR;
    }
    _mm256_storeu_ps(C + 0 * (size_t)ldc, c00); _mm256_storeu_ps(C + 0 * (size_t)ldc + 8, c01);
    _mm256_storeu_ps(C + 1 * (size_t)ldc, c10); _mm256_storeu_ps(C + 1 * (size_t)ldc + 8, c11);
    _mm256_storeu_ps(C + 2 * (size_t)ldc, c20); _mm256_storeu_ps(C + 2 * (size_t)ldc + 8, c21);
    _mm256_storeu_ps(C + 3 * (size_t)ldc, c30); _mm256_storeu_ps(C + 3 * (size_t)ldc + 8, c31);
    _mm256_storeu_ps(C + 4 * (size_t)ldc, c40); _mm256_storeu_ps(C + 4 * (size_t)ldc + 8, c41);
    _mm256_storeu_ps(C + 5 * (size_t)ldc, c50); _mm256_storeu_ps(C + 5 * (size_t)ldc + 8, c51);
}
#endif

typedef void (*kern_fn)(int, const float *, const float *, float *, int, bool, const float *);

static kern_fn pick_kernel(void)
{
    static kern_fn k;
    if (!k) {
#if NN_X86
        __builtin_cpu_init();
        k = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? kern_avx2
                                                                            : kern_scalar;
#else
        k = kern_scalar;
#endif
    }
    return k;
}

/* One MR x 16 tile (A packed MR rows by k), through a local copy of C
 * where it overhangs. */
static void tile(kern_fn kern, int rows, int cols, int kc, const float *Ap,
                 const float *B, float *C, int ldc, bool acc, const float *row0)
{
    if (rows == MR && cols == NN_NR) {
        kern(kc, Ap, B, C, ldc, acc, row0);
        return;
    }
    float c[MR * NN_NR];
    if (acc)
        for (int r = 0; r < rows; r++)
            memcpy(c + r * NN_NR, C + (size_t)r * ldc, (size_t)cols * sizeof(float));
    kern(kc, Ap, B, c, NN_NR, acc, row0);
    for (int r = 0; r < rows; r++)
        memcpy(C + (size_t)r * ldc, c + r * NN_NR, (size_t)cols * sizeof(float));
}

#if NN_X86
/* Six rows, eight columns at a time: an 8 x 8 transpose (rows 6 and 7
 * zero) whose output rows are stored 6 floats apart, each store's last two
 * lanes overwritten by the next (dst has 8 floats of slack). */
T256 static int pack_a6_avx2(const float *A, int lda, int kc, float *d)
{
    int kk = 0;
    for (; kk + 8 <= kc; kk += 8) {
        __m256 r0 = _mm256_loadu_ps(A + kk), r1 = _mm256_loadu_ps(A + lda + kk);
        __m256 r2 = _mm256_loadu_ps(A + 2 * (size_t)lda + kk), r3 = _mm256_loadu_ps(A + 3 * (size_t)lda + kk);
        __m256 r4 = _mm256_loadu_ps(A + 4 * (size_t)lda + kk), r5 = _mm256_loadu_ps(A + 5 * (size_t)lda + kk);
        __m256 r6 = _mm256_setzero_ps(), r7 = _mm256_setzero_ps();
        __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
        __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
        __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
        __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
        __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
        __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
        __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
        __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
        float *o = d + (size_t)kk * MR;
        _mm256_storeu_ps(o + 0 * MR, _mm256_permute2f128_ps(u0, u4, 0x20));
        _mm256_storeu_ps(o + 1 * MR, _mm256_permute2f128_ps(u1, u5, 0x20));
        _mm256_storeu_ps(o + 2 * MR, _mm256_permute2f128_ps(u2, u6, 0x20));
        _mm256_storeu_ps(o + 3 * MR, _mm256_permute2f128_ps(u3, u7, 0x20));
        _mm256_storeu_ps(o + 4 * MR, _mm256_permute2f128_ps(u0, u4, 0x31));
        _mm256_storeu_ps(o + 5 * MR, _mm256_permute2f128_ps(u1, u5, 0x31));
        _mm256_storeu_ps(o + 6 * MR, _mm256_permute2f128_ps(u2, u6, 0x31));
        _mm256_storeu_ps(o + 7 * MR, _mm256_permute2f128_ps(u3, u7, 0x31));
    }
    return kk;
}
#endif

/* A's block (mc x kc at A, lda) into MR-row panels, k-major, zero rows
 * below the last. dst holds mc rounded up to MR rows, times kc, plus 8. */
static void pack_a(const float *A, int lda, int mc, int kc, float *dst)
{
    for (int i = 0; i < mc; i += MR) {
        float *d = dst + (size_t)i * kc;
        int rows = mc - i < MR ? mc - i : MR, k0 = 0;
#if NN_X86
        if (rows == MR && have_avx2())
            k0 = pack_a6_avx2(A + (size_t)i * lda, lda, kc, d);
#endif
        for (int r = 0; r < MR; r++) {
            if (r >= rows) {
                for (int kk = k0; kk < kc; kk++) d[(size_t)kk * MR + r] = 0.0f;
                continue;
            }
            const float *a = A + (size_t)(i + r) * lda;
            for (int kk = k0; kk < kc; kk++) d[(size_t)kk * MR + r] = a[kk];
        }
    }
}

void fst__nn_gemm(int m, int n, int k, const float *A, int lda,
                  const float *Bp, const float *bias, float *C, int ldc, bool acc)
{
    if (m <= 0 || n <= 0)
        return;
    kern_fn kern = pick_kernel();
    static const float zeros[NN_NR];
    if (k <= 0) {
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
                C[(size_t)i * ldc + j] = (acc ? C[(size_t)i * ldc + j] : 0.0f) +
                                         (bias ? bias[j] : 0.0f);
        return;
    }
    int np = (n + NN_NR - 1) / NN_NR;
    static _Thread_local float apack[MC * KC + 8] __attribute__((aligned(64)));
    for (int k0 = 0; k0 < k; k0 += KC) {
        int kc = k - k0 < KC ? k - k0 : KC;
        /* bias joins once: with the first k block when not accumulating, as
         * an extra pass after the last one when accumulating */
        bool first = k0 == 0;
        for (int i0 = 0; i0 < m; i0 += MC) {
            int mc = m - i0 < MC ? m - i0 : MC;
            pack_a(A + (size_t)i0 * lda + k0, lda, mc, kc, apack);
            for (int p = 0; p < np; p++) {
                int cols = n - p * NN_NR < NN_NR ? n - p * NN_NR : NN_NR;
                const float *b = Bp + (size_t)p * NN_NR * k + (size_t)k0 * NN_NR;
                float row0[NN_NR];
                const float *r0 = zeros;
                if (first && !acc && bias) {
                    memcpy(row0, bias + p * NN_NR, (size_t)cols * sizeof(float));
                    for (int j = cols; j < NN_NR; j++) row0[j] = 0.0f;
                    r0 = row0;
                }
                for (int i = 0; i < mc; i += MR) {
                    int rows = mc - i < MR ? mc - i : MR;
                    tile(kern, rows, cols, kc, apack + (size_t)i * kc, b,
                         C + (size_t)(i0 + i) * ldc + p * NN_NR, ldc, acc || !first, r0);
                }
            }
        }
    }
    if (acc && bias)
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
                C[(size_t)i * ldc + j] += bias[j];
}

/* ------------------------------------------------------------ vector math */

float fst__nn_sigmoid(float x)
{
    return 1.0f / (1.0f + expf(-x));
}

float fst__nn_logsigmoid(float x)
{
    /* torch: min(x, 0) - log1p(exp(-|x|)) */
    return fminf(x, 0.0f) - log1pf(expf(-fabsf(x)));
}

float fst__nn_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1f, mant = h & 0x3ffu;
    uint32_t bits;
    if (e == 0) {
        if (mant == 0) {
            bits = sign;
        } else {                       /* subnormal: renormalise */
            e = 127 - 15 + 1;
            while (!(mant & 0x400u)) { mant <<= 1; e--; }
            bits = sign | (e << 23) | ((mant & 0x3ffu) << 13);
        }
    } else if (e == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((e + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

void fst__nn_load_desc(const void *src, fst_dtype dt, int n, int d, float *dst, int ld)
{
    for (int i = 0; i < n; i++) {
        if (dt == FST_DTYPE_F16) {
            const uint16_t *s = (const uint16_t *)src + (size_t)i * d;
            for (int k = 0; k < d; k++) dst[(size_t)i * ld + k] = fst__nn_half_to_float(s[k]);
        } else {
            memcpy(dst + (size_t)i * ld, (const float *)src + (size_t)i * d,
                   (size_t)d * sizeof(float));
        }
    }
}

#if NN_X86
/* exp, Cephes' single-precision polynomial: about 1 ulp on [-87, 88];
 * below -87.3 it returns 0 (as expf underflows to). */
T256_INLINE __m256 exp256(__m256 x)
{
    const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.3365447504f);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    return _mm256_andnot_ps(under, y);
}

T256_INLINE float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

T256_INLINE float hmax256(__m256 v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

T256 static float max_avx2(const float *x, int n)
{
    __m256 m = _mm256_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 8 <= n; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + j));
    float r = hmax256(m);
    for (; j < n; j++) r = x[j] > r ? x[j] : r;
    return r;
}

T256 static float exp_sub_sum_avx2(float *x, int n, float c)
{
    __m256 s = _mm256_setzero_ps(), cv = _mm256_set1_ps(c);
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + j), cv));
        _mm256_storeu_ps(x + j, e);
        s = _mm256_add_ps(s, e);
    }
    float r = hsum256(s);
    for (; j < n; j++) { x[j] = expf(x[j] - c); r += x[j]; }
    return r;
}

T256 static float exp_scaled_sum_avx2(float *x, int n, float a, float c)
{
    __m256 s = _mm256_setzero_ps(), av = _mm256_set1_ps(a), cv = _mm256_set1_ps(c);
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 e = exp256(_mm256_fmsub_ps(_mm256_loadu_ps(x + j), av, cv));
        _mm256_storeu_ps(x + j, e);
        s = _mm256_add_ps(s, e);
    }
    float r = hsum256(s);
    for (; j < n; j++) { x[j] = expf(fmaf(x[j], a, -c)); r += x[j]; }
    return r;
}

T256 static float sum_exp_add_avx2(const float *x, const float *y, int n, float c)
{
    __m256 s = _mm256_setzero_ps(), cv = _mm256_set1_ps(c);
    int j = 0;
    for (; j + 8 <= n; j += 8)
        s = _mm256_add_ps(s, exp256(_mm256_sub_ps(
                _mm256_add_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(y + j)), cv)));
    float r = hsum256(s);
    for (; j < n; j++) r += expf(x[j] + y[j] - c);
    return r;
}

T256 static void scale_avx2(float *x, int n, float a)
{
    __m256 av = _mm256_set1_ps(a);
    int j = 0;
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(x + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), av));
    for (; j < n; j++) x[j] *= a;
}

/* erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), with exp256 */
T256 static void gelu_avx2(float *x, int n)
{
    const __m256 sgnmask = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f),
                 half = _mm256_set1_ps(0.5f), rs2 = _mm256_set1_ps(0.70710678118654752f);
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 v = _mm256_loadu_ps(x + j);
        __m256 z = _mm256_mul_ps(v, rs2);
        __m256 sg = _mm256_and_ps(z, sgnmask), az = _mm256_andnot_ps(sgnmask, z);
        __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), az, one));
        __m256 p = _mm256_set1_ps(1.061405429f);
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
        p = _mm256_mul_ps(p, t);
        __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(az, az)));
        __m256 erf = _mm256_fnmadd_ps(p, e, one);
        erf = _mm256_or_ps(erf, sg);
        _mm256_storeu_ps(x + j, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, erf)));
    }
    for (; j < n; j++) x[j] = 0.5f * x[j] * (1.0f + erff(x[j] * 0.70710678118654752f));
}

T256 static void colmax_add_avx2(const float *x, float u, float *cmax, int n)
{
    __m256 uv = _mm256_set1_ps(u);
    int j = 0;
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(cmax + j, _mm256_max_ps(_mm256_loadu_ps(cmax + j),
                                                 _mm256_add_ps(_mm256_loadu_ps(x + j), uv)));
    for (; j < n; j++) { float t = x[j] + u; cmax[j] = t > cmax[j] ? t : cmax[j]; }
}

T256 static void colsum_exp_avx2(const float *x, float u, const float *cmax, float *csum, int n)
{
    __m256 uv = _mm256_set1_ps(u);
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 t = _mm256_sub_ps(_mm256_add_ps(_mm256_loadu_ps(x + j), uv), _mm256_loadu_ps(cmax + j));
        _mm256_storeu_ps(csum + j, _mm256_add_ps(_mm256_loadu_ps(csum + j), exp256(t)));
    }
    for (; j < n; j++) csum[j] += expf((x[j] + u) - cmax[j]);
}

static bool have_avx2(void)
{
    static int h = -1;
    if (h < 0) {
        __builtin_cpu_init();
        h = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return h;
}
#else
static bool have_avx2(void) { return false; }
#endif

float fst__nn_max(const float *x, int n)
{
#if NN_X86
    if (have_avx2()) return max_avx2(x, n);
#endif
    float r = -INFINITY;
    for (int j = 0; j < n; j++) r = x[j] > r ? x[j] : r;
    return r;
}

float fst__nn_exp_sub_sum(float *x, int n, float c)
{
#if NN_X86
    if (have_avx2()) return exp_sub_sum_avx2(x, n, c);
#endif
    float r = 0.0f;
    for (int j = 0; j < n; j++) { x[j] = expf(x[j] - c); r += x[j]; }
    return r;
}

float fst__nn_sum_exp_add(const float *x, const float *y, int n, float c)
{
#if NN_X86
    if (have_avx2()) return sum_exp_add_avx2(x, y, n, c);
#endif
    float r = 0.0f;
    for (int j = 0; j < n; j++) r += expf(x[j] + y[j] - c);
    return r;
}

void fst__nn_colmax_add(const float *x, float u, float *cmax, int n)
{
#if NN_X86
    if (have_avx2()) { colmax_add_avx2(x, u, cmax, n); return; }
#endif
    for (int j = 0; j < n; j++) { float t = x[j] + u; cmax[j] = t > cmax[j] ? t : cmax[j]; }
}

void fst__nn_colsum_exp(const float *x, float u, const float *cmax, float *csum, int n)
{
#if NN_X86
    if (have_avx2()) { colsum_exp_avx2(x, u, cmax, csum, n); return; }
#endif
    for (int j = 0; j < n; j++) csum[j] += expf((x[j] + u) - cmax[j]);
}

/* x[j] = exp(x[j] a - c) with one rounding before the exp; the sum. With
 * a a power of two (1/8 in both networks' attention) this equals the
 * reference's exp(fl(x a) - c). */
static float exp_scaled_sum(float *x, int n, float a, float c)
{
#if NN_X86
    if (have_avx2()) return exp_scaled_sum_avx2(x, n, a, c);
#endif
    float r = 0.0f;
    for (int j = 0; j < n; j++) { x[j] = expf(fmaf(x[j], a, -c)); r += x[j]; }
    return r;
}

static void scale_row(float *x, int n, float a)
{
#if NN_X86
    if (have_avx2()) { scale_avx2(x, n, a); return; }
#endif
    for (int j = 0; j < n; j++) x[j] *= a;
}

float fst__nn_logsumexp(const float *x, const float *y, int n)
{
    float mx = -INFINITY;
    for (int j = 0; j < n; j++) {
        float v = y ? x[j] + y[j] : x[j];
        mx = v > mx ? v : mx;
    }
    if (isinf(mx)) mx = 0.0f;       /* torch: an infinite max shifts by 0 */
    float s = 0.0f;
    if (y) {
        s = fst__nn_sum_exp_add(x, y, n, mx);
    } else {
        for (int j = 0; j < n; j++) s += expf(x[j] - mx);
    }
    return logf(s) + mx;
}

void fst__nn_layernorm(float *x, int n, int d, int ld, const float *w, const float *b)
{
    for (int i = 0; i < n; i++) {
        float *r = x + (size_t)i * ld;
        double mean = 0, var = 0;
        for (int k = 0; k < d; k++) mean += r[k];
        mean /= d;
        for (int k = 0; k < d; k++) var += ((double)r[k] - mean) * ((double)r[k] - mean);
        var /= d;
        float rstd = (float)(1.0 / sqrt(var + 1e-5)), mu = (float)mean;
        for (int k = 0; k < d; k++) r[k] = (r[k] - mu) * rstd * w[k] + b[k];
    }
}

void fst__nn_gelu(float *x, int n, int d, int ld)
{
    for (int i = 0; i < n; i++) {
        float *r = x + (size_t)i * ld;
#if NN_X86
        if (have_avx2()) { gelu_avx2(r, d); continue; }
#endif
        for (int k = 0; k < d; k++) r[k] = 0.5f * r[k] * (1.0f + erff(r[k] * 0.70710678118654752f));
    }
}

void fst__nn_relu(float *x, int n, int d, int ld)
{
    for (int i = 0; i < n; i++)
        for (int k = 0; k < d; k++)
            if (!(x[(size_t)i * ld + k] > 0.0f)) x[(size_t)i * ld + k] = 0.0f;
}

/* ------------------------------------------------------------ attention */

fst_status fst__nn_attention(nn_attn_ws *ws, int n, int m, int hd,
                             const float *Q, int ldq, const float *K, int ldk,
                             const float *V, int ldv, float scale, float *O, int ldo)
{
    fst_status s;
    if (n <= 0)
        return FST_OK;
    if (m <= 0) {
        for (int i = 0; i < n; i++)
            memset(O + (size_t)i * ldo, 0, (size_t)hd * sizeof(float));
        return FST_OK;
    }
    FST_TRY(fst__nn_grow(&ws->kp, fst__nn_packed_size(hd, m)));
    FST_TRY(fst__nn_grow(&ws->vp, fst__nn_packed_size(m, hd)));
    FST_TRY(fst__nn_grow(&ws->s, (size_t)ATT_ROWS * m));
    fst__nn_pack_t(K, ldk, m, hd, ws->kp.p);
    fst__nn_pack(V, ldv, m, hd, ws->vp.p);
    float *S = ws->s.p;
    for (int i0 = 0; i0 < n; i0 += ATT_ROWS) {
        int br = n - i0 < ATT_ROWS ? n - i0 : ATT_ROWS;
        float inv[ATT_ROWS];
        fst__nn_gemm(br, m, hd, Q + (size_t)i0 * ldq, ldq, ws->kp.p, NULL, S, m, false);
        for (int r = 0; r < br; r++) {
            float *row = S + (size_t)r * m;
            /* softmax(scale x): the max of x scaled (scale > 0) */
            inv[r] = 1.0f / exp_scaled_sum(row, m, scale, fst__nn_max(row, m) * scale);
        }
        fst__nn_gemm(br, hd, m, S, m, ws->vp.p, NULL, O + (size_t)i0 * ldo, ldo, false);
        for (int r = 0; r < br; r++)
            scale_row(O + (size_t)(i0 + r) * ldo, hd, inv[r]);
    }
    return FST_OK;
out:
    return s;
}

/* ------------------------------------------------------------ weights */

static void shape_str(char *buf, size_t n, int ndim, const int64_t *shape)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, n - o, "(");
    for (int i = 0; i < ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (o < n)
        snprintf(buf + o, n - o, ")");
}

bool fst__nn_has(fst_nn_lookup get, void *ctx, const char *name, fst_nn_tensor *t)
{
    fst_nn_tensor tmp;
    memset(&tmp, 0, sizeof tmp);
    bool ok = get(ctx, name, &tmp) && tmp.data;
    if (ok && t)
        *t = tmp;
    return ok;
}

fst_status fst__nn_get(fst_nn_lookup get, void *ctx, const char *name, int ndim,
                       const int64_t *shape, const float **out)
{
    fst_nn_tensor t;
    char want[96], have[96];
    shape_str(want, sizeof want, ndim, shape);
    if (!fst__nn_has(get, ctx, name, &t))
        return fst__fail(FST_EINVAL, "weights: tensor %s %s is missing", name, want);
    bool same = t.ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = t.shape[i] == shape[i];
    if (!same) {
        shape_str(have, sizeof have, t.ndim < 0 ? 0 : t.ndim > 4 ? 4 : t.ndim, t.shape);
        return fst__fail(FST_EINVAL, "weights: tensor %s: expected shape %s, found %s",
                         name, want, have);
    }
    *out = t.data;
    return FST_OK;
}

fst_status fst__nn_linear_from(nn_linear *l, const float *w, const float *b,
                               int in, int out, const int *perm, const int *cperm)
{
    fst_status s = FST_OK;
    float *tmp = NULL;
    memset(l, 0, sizeof *l);
    l->in = in;
    l->out = out;
    l->wp = aligned_alloc(64, ((fst__nn_packed_size(in, out) * sizeof(float)) + 63) / 64 * 64);
    l->b = b ? malloc((size_t)out * sizeof(float)) : NULL;
    tmp = malloc((size_t)in * out * sizeof(float));
    if (!l->wp || (b && !l->b) || !tmp) {
        s = fst__fail(FST_ENOMEM, "weights: %d x %d layer", out, in);
        goto out;
    }
    for (int o = 0; o < out; o++) {
        int ro = perm ? perm[o] : o;
        for (int k = 0; k < in; k++)
            tmp[(size_t)o * in + k] = w[(size_t)ro * in + (cperm ? cperm[k] : k)];
        if (b)
            l->b[o] = b[ro];
    }
    fst__nn_pack_t(tmp, in, out, in, l->wp);
out:
    free(tmp);
    if (s != FST_OK)
        fst__nn_linear_free(l);
    return s;
}

fst_status fst__nn_linear_load(nn_linear *l, fst_nn_lookup get, void *ctx,
                               const char *prefix, int in, int out, bool bias,
                               bool conv, const int *perm, const int *cperm)
{
    fst_status s;
    char name[160];
    const float *w = NULL, *b = NULL;
    int64_t ws[3] = {out, in, 1}, bs[1] = {out};
    snprintf(name, sizeof name, "%s.weight", prefix);
    FST_TRY(fst__nn_get(get, ctx, name, conv ? 3 : 2, ws, &w));
    if (bias) {
        snprintf(name, sizeof name, "%s.bias", prefix);
        FST_TRY(fst__nn_get(get, ctx, name, 1, bs, &b));
    }
    return fst__nn_linear_from(l, w, b, in, out, perm, cperm);
out:
    return s;
}

void fst__nn_linear_free(nn_linear *l)
{
    free(l->wp);
    free(l->b);
    l->wp = NULL;
    l->b = NULL;
}

/* ------------------------------------------------------------ the model */

fst_nn_conf fst_nn_default_conf(fst_nn_kind kind)
{
    (void)kind;
    fst_nn_conf c = {
        .depth_confidence = 0.95,
        .width_confidence = 0.99,
        .filter_threshold = 0.1,
        .prune_min_kpts = -1,
        .sinkhorn_iterations = 100,
        .match_threshold = 0.2,
    };
    return c;
}

fst_status fst_nn_open(fst_nn_kind kind, fst_nn_lookup get, void *ctx,
                       const fst_nn_conf *conf, fst_nn_model **out)
{
    fst_status s;
    if (!get || !out)
        return fst__fail(FST_EINVAL, "fst_nn_open: no lookup or no output");
    fst_nn_model *m = calloc(1, sizeof *m);
    if (!m)
        return fst__fail(FST_ENOMEM, "neural model");
    m->conf = conf ? *conf : fst_nn_default_conf(kind);
    m->info.kind = kind;
    if (kind == FST_NN_LIGHTGLUE)
        s = fst__lightglue_open(m, get, ctx);
    else if (kind == FST_NN_SUPERGLUE)
        s = fst__superglue_open(m, get, ctx);
    else
        s = fst__fail(FST_EINVAL, "fst_nn_open: unknown model kind %d", (int)kind);
    if (s != FST_OK) {
        fst_nn_close(m);
        return s;
    }
    *out = m;
    return FST_OK;
}

fst_nn_info fst_nn_info_of(const fst_nn_model *m)
{
    return m->info;
}

void fst_nn_set_conf(fst_nn_model *m, const fst_nn_conf *conf)
{
    m->conf = *conf;
}

fst_status fst_nn_match(fst_nn_model *m, const fst_nn_image *a,
                        const fst_nn_image *b, int32_t *matches0, float *scores0)
{
    if (!m || !a || !b || (a->n && (!matches0 || !scores0)))
        return fst__fail(FST_EINVAL, "fst_nn_match: missing argument");
    m->flops = 0;
    return m->ops->match(m, a, b, matches0, scores0);
}

double fst_nn_flops(const fst_nn_model *m)
{
    return m->flops;
}

void fst_nn_close(fst_nn_model *m)
{
    if (!m)
        return;
    if (m->ops && m->impl)
        m->ops->free(m);
    free(m);
}
