/* arrays.c : array helpers shared by the store and the loaders
 * (base_impl.h): transposes between hloc's D x N descriptors and the
 * store's N x D, and the NaN/Inf scans. */
#include "base_impl.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__SSE2__)
#  include <emmintrin.h>
#endif

/* ---- transposes ---- */

/* The scalar tiled transpose of the block [r0, r1) x [c0, c1): tiles of 32
 * keep both sides in L1. */
#define TILE 32
#define DEFINE_SCALAR(fname, T)                                              \
static void fname(const T *restrict src, size_t lds, T *restrict dst,        \
                  size_t ldd, size_t r0, size_t r1, size_t c0, size_t c1)    \
{                                                                            \
    for (size_t ra = r0; ra < r1; ra += TILE) {                              \
        size_t rb = ra + TILE < r1 ? ra + TILE : r1;                         \
        for (size_t ca = c0; ca < c1; ca += TILE) {                          \
            size_t cb = ca + TILE < c1 ? ca + TILE : c1;                     \
            for (size_t c = ca; c < cb; c++)                                 \
                for (size_t r = ra; r < rb; r++)                             \
                    dst[c * ldd + r] = src[r * lds + c];                     \
        }                                                                    \
    }                                                                        \
}
DEFINE_SCALAR(scalar16, uint16_t)
DEFINE_SCALAR(scalar32, uint32_t)

#if defined(__SSE2__)
/* One 8 x 8 block of 16-bit elements: three rounds of unpacks. */
static inline void block16(const uint16_t *s, size_t ss, uint16_t *d, size_t ds)
{
    __m128i a0 = _mm_loadu_si128((const __m128i *)(s + 0 * ss));
    __m128i a1 = _mm_loadu_si128((const __m128i *)(s + 1 * ss));
    __m128i a2 = _mm_loadu_si128((const __m128i *)(s + 2 * ss));
    __m128i a3 = _mm_loadu_si128((const __m128i *)(s + 3 * ss));
    __m128i a4 = _mm_loadu_si128((const __m128i *)(s + 4 * ss));
    __m128i a5 = _mm_loadu_si128((const __m128i *)(s + 5 * ss));
    __m128i a6 = _mm_loadu_si128((const __m128i *)(s + 6 * ss));
    __m128i a7 = _mm_loadu_si128((const __m128i *)(s + 7 * ss));
    __m128i b0 = _mm_unpacklo_epi16(a0, a1), b1 = _mm_unpackhi_epi16(a0, a1);
    __m128i b2 = _mm_unpacklo_epi16(a2, a3), b3 = _mm_unpackhi_epi16(a2, a3);
    __m128i b4 = _mm_unpacklo_epi16(a4, a5), b5 = _mm_unpackhi_epi16(a4, a5);
    __m128i b6 = _mm_unpacklo_epi16(a6, a7), b7 = _mm_unpackhi_epi16(a6, a7);
    __m128i c0 = _mm_unpacklo_epi32(b0, b2), c1 = _mm_unpackhi_epi32(b0, b2);
    __m128i c2 = _mm_unpacklo_epi32(b1, b3), c3 = _mm_unpackhi_epi32(b1, b3);
    __m128i c4 = _mm_unpacklo_epi32(b4, b6), c5 = _mm_unpackhi_epi32(b4, b6);
    __m128i c6 = _mm_unpacklo_epi32(b5, b7), c7 = _mm_unpackhi_epi32(b5, b7);
    _mm_storeu_si128((__m128i *)(d + 0 * ds), _mm_unpacklo_epi64(c0, c4));
    _mm_storeu_si128((__m128i *)(d + 1 * ds), _mm_unpackhi_epi64(c0, c4));
    _mm_storeu_si128((__m128i *)(d + 2 * ds), _mm_unpacklo_epi64(c1, c5));
    _mm_storeu_si128((__m128i *)(d + 3 * ds), _mm_unpackhi_epi64(c1, c5));
    _mm_storeu_si128((__m128i *)(d + 4 * ds), _mm_unpacklo_epi64(c2, c6));
    _mm_storeu_si128((__m128i *)(d + 5 * ds), _mm_unpackhi_epi64(c2, c6));
    _mm_storeu_si128((__m128i *)(d + 6 * ds), _mm_unpacklo_epi64(c3, c7));
    _mm_storeu_si128((__m128i *)(d + 7 * ds), _mm_unpackhi_epi64(c3, c7));
}

/* One 4 x 4 block of 32-bit elements. */
static inline void block32(const uint32_t *s, size_t ss, uint32_t *d, size_t ds)
{
    __m128i a0 = _mm_loadu_si128((const __m128i *)(s + 0 * ss));
    __m128i a1 = _mm_loadu_si128((const __m128i *)(s + 1 * ss));
    __m128i a2 = _mm_loadu_si128((const __m128i *)(s + 2 * ss));
    __m128i a3 = _mm_loadu_si128((const __m128i *)(s + 3 * ss));
    __m128i b0 = _mm_unpacklo_epi32(a0, a1), b1 = _mm_unpackhi_epi32(a0, a1);
    __m128i b2 = _mm_unpacklo_epi32(a2, a3), b3 = _mm_unpackhi_epi32(a2, a3);
    _mm_storeu_si128((__m128i *)(d + 0 * ds), _mm_unpacklo_epi64(b0, b2));
    _mm_storeu_si128((__m128i *)(d + 1 * ds), _mm_unpackhi_epi64(b0, b2));
    _mm_storeu_si128((__m128i *)(d + 2 * ds), _mm_unpacklo_epi64(b1, b3));
    _mm_storeu_si128((__m128i *)(d + 3 * ds), _mm_unpackhi_epi64(b1, b3));
}
#endif

/* Blocks of B x B over the whole multiple-of-B part, in 32 x 32 tiles; the
 * scalar code takes the right and bottom strips. */
#define DEFINE_TRANSPOSE(fname, T, B, BLOCK, SCALAR)                         \
void fname(const T *restrict src, size_t lds, T *restrict dst, size_t ldd,   \
           size_t rows, size_t cols)                                         \
{                                                                            \
    size_t rb = rows - rows % B, cb = cols - cols % B;                       \
    for (size_t r0 = 0; r0 < rb; r0 += TILE) {                               \
        size_t r1 = r0 + TILE < rb ? r0 + TILE : rb;                         \
        for (size_t c0 = 0; c0 < cb; c0 += TILE) {                           \
            size_t c1 = c0 + TILE < cb ? c0 + TILE : cb;                     \
            for (size_t r = r0; r < r1; r += B)                              \
                for (size_t c = c0; c < c1; c += B)                          \
                    BLOCK(src + r * lds + c, lds, dst + c * ldd + r, ldd);   \
        }                                                                    \
    }                                                                        \
    SCALAR(src, lds, dst, ldd, 0, rows, cb, cols);                           \
    SCALAR(src, lds, dst, ldd, rb, rows, 0, cb);                             \
}
#if defined(__SSE2__)
DEFINE_TRANSPOSE(fst__transpose16_ld, uint16_t, 8, block16, scalar16)
DEFINE_TRANSPOSE(fst__transpose32_ld, uint32_t, 4, block32, scalar32)
#else
void fst__transpose16_ld(const uint16_t *restrict src, size_t lds,
                         uint16_t *restrict dst, size_t ldd, size_t rows,
                         size_t cols)
{
    scalar16(src, lds, dst, ldd, 0, rows, 0, cols);
}
void fst__transpose32_ld(const uint32_t *restrict src, size_t lds,
                         uint32_t *restrict dst, size_t ldd, size_t rows,
                         size_t cols)
{
    scalar32(src, lds, dst, ldd, 0, rows, 0, cols);
}
#endif

void fst__transpose16(const uint16_t *restrict src, uint16_t *restrict dst,
                      size_t rows, size_t cols)
{
    fst__transpose16_ld(src, cols, dst, rows, rows, cols);
}

void fst__transpose32(const uint32_t *restrict src, uint32_t *restrict dst,
                      size_t rows, size_t cols)
{
    fst__transpose32_ld(src, cols, dst, rows, rows, cols);
}

/* ---- finiteness ---- */

/* An element is NaN or Inf iff its exponent bits are all ones. The SSE2
 * loop only says whether one exists; the scalar one finds the first. */
static size_t first_bad16(const uint16_t *v, size_t from, size_t n)
{
    for (size_t i = from; i < n; i++)
        if ((v[i] & 0x7c00u) == 0x7c00u)
            return i;
    return n;
}

static size_t first_bad32(const uint32_t *v, size_t from, size_t n)
{
    for (size_t i = from; i < n; i++)
        if ((v[i] & 0x7f800000u) == 0x7f800000u)
            return i;
    return n;
}

/* Copy and check in one pass: the OR-reduction vectorizes. One template
 * for both widths: T the element, EXP its exponent bits. */
#define COPY_NONFINITE(name, T, EXP)                                    \
bool name(void *restrict dst, const void *restrict src, size_t n)       \
{                                                                       \
    unsigned char *d = dst;                                             \
    const unsigned char *s = src;                                       \
    unsigned bad = 0;                                                   \
    for (size_t i = 0; i < n; i++) {                                    \
        T x;                                                            \
        memcpy(&x, s + sizeof x * i, sizeof x);                         \
        memcpy(d + sizeof x * i, &x, sizeof x);                         \
        bad |= (x & EXP) == EXP;                                        \
    }                                                                   \
    return bad != 0;                                                    \
}
COPY_NONFINITE(fst__copy_nonfinite16, uint16_t, 0x7c00u)
COPY_NONFINITE(fst__copy_nonfinite32, uint32_t, 0x7f800000u)

size_t fst__find_nonfinite16(const uint16_t *v, size_t n)
{
    size_t i = 0;
#if defined(__SSE2__)
    const __m128i m = _mm_set1_epi16(0x7c00);
    for (; i + 32 <= n; i += 32) {
        __m128i a = _mm_cmpeq_epi16(_mm_and_si128(_mm_loadu_si128((const __m128i *)(v + i)), m), m);
        __m128i b = _mm_cmpeq_epi16(_mm_and_si128(_mm_loadu_si128((const __m128i *)(v + i + 8)), m), m);
        __m128i c = _mm_cmpeq_epi16(_mm_and_si128(_mm_loadu_si128((const __m128i *)(v + i + 16)), m), m);
        __m128i d = _mm_cmpeq_epi16(_mm_and_si128(_mm_loadu_si128((const __m128i *)(v + i + 24)), m), m);
        if (_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, d))))
            return first_bad16(v, i, n);
    }
#endif
    return first_bad16(v, i, n);
}

size_t fst__find_nonfinite32(const void *p, size_t n)
{
    const uint32_t *v = p;
    size_t i = 0;
#if defined(__SSE2__)
    const __m128i m = _mm_set1_epi32(0x7f800000);
    for (; i + 16 <= n; i += 16) {
        __m128i a = _mm_cmpeq_epi32(_mm_and_si128(_mm_loadu_si128((const __m128i *)(v + i)), m), m);
        __m128i b = _mm_cmpeq_epi32(_mm_and_si128(_mm_loadu_si128((const __m128i *)(v + i + 4)), m), m);
        __m128i c = _mm_cmpeq_epi32(_mm_and_si128(_mm_loadu_si128((const __m128i *)(v + i + 8)), m), m);
        __m128i d = _mm_cmpeq_epi32(_mm_and_si128(_mm_loadu_si128((const __m128i *)(v + i + 12)), m), m);
        if (_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, d))))
            return first_bad32(v, i, n);
    }
#endif
    return first_bad32(v, i, n);
}
