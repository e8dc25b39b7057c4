/* kernels/match_math.h : the matcher's decisions, shared by every backend.
 *
 * Compiled into the CPU backend, the CUDA kernels and the CPU test suite, so
 * the tests exercise the very logic the GPU runs. Plain C11 and CUDA C;
 * no allocation, no I/O. Private to kernels/.
 */
#ifndef FST_MATCH_MATH_H
#define FST_MATCH_MATH_H

#include <math.h>       /* INFINITY */
#include <stdbool.h>
#include <stdint.h>

#ifdef __CUDACC__
#  define FST_HD __host__ __device__
#else
#  define FST_HD
#endif

/* Best and second-best similarity of one row (or column), with the index of
 * the best. Start from fst_top2_init(). */
typedef struct fst_top2 {
    float   s1, s2;   /* best, second best similarity */
    int32_t j1;       /* index of the best; -1 if none seen */
} fst_top2;

static inline FST_HD fst_top2 fst_top2_init(void)
{
    fst_top2 t;
    t.s1 = -INFINITY;
    t.s2 = -INFINITY;
    t.j1 = -1;
    return t;
}

/* Offer candidate j with similarity s. Candidates may come in any order:
 * an exact tie goes to the lowest index, like torch.topk / argmax on hloc's
 * side. NaN never wins. */
static inline FST_HD void fst_top2_push(fst_top2 *t, float s, int32_t j)
{
    if (s > t->s1 || (s == t->s1 && t->j1 >= 0 && j < t->j1)) {
        /* the displaced best becomes second (also on a tie: equal values) */
        t->s2 = t->s1;
        t->s1 = s;
        t->j1 = j;
    } else if (s > t->s2 || (s == t->s1 && j != t->j1)) {
        t->s2 = s;
    }
}

/* Merge two partial results over disjoint candidate sets (tiles, threads,
 * warps): the result equals pushing every candidate of both into one. */
static inline FST_HD fst_top2 fst_top2_merge(fst_top2 a, fst_top2 b)
{
    if (b.j1 < 0) return a;
    if (a.j1 < 0) return b;
    fst_top2 r;
    bool a_first = a.s1 > b.s1 || (a.s1 == b.s1 && a.j1 < b.j1);
    fst_top2 hi = a_first ? a : b, lo = a_first ? b : a;
    r.s1 = hi.s1;
    r.j1 = hi.j1;
    r.s2 = hi.s2 > lo.s1 ? hi.s2 : lo.s1;
    return r;
}

/* The per-row decision of hloc's find_nn: returns the kept index (t->j1) or
 * -1, and writes the score ((sim + 1) / 2 where kept, else 0).
 * ratio2 = (float)(r * r), dist2 = (float)(t * t); 0 means off.
 * Ratio test only applies when both images have >= 2 keypoints
 * (`use_ratio`); dist = 2 (1 - sim) in float32. */
static inline FST_HD int32_t fst_nn_decide(const fst_top2 *t, float ratio2,
                                           float dist2, bool use_ratio,
                                           float *score)
{
    *score = 0.0f;
    if (t->j1 < 0) return -1;
    float d1 = 2.0f * (1.0f - t->s1);
    if (use_ratio && ratio2 > 0.0f) {
        float d2 = 2.0f * (1.0f - t->s2);
        if (!(d1 <= ratio2 * d2)) return -1;
    }
    if (dist2 > 0.0f && !(d1 <= dist2)) return -1;
    *score = (t->s1 + 1.0f) * 0.5f;
    return t->j1;
}

/* hloc's threshold as float32: t*t formed in double, then rounded
 * (0.8 -> 0.64f, not 0.8f*0.8f = 0.64000005f). 0 (off) stays 0. */
static inline FST_HD float fst_thresh2(double t)
{
    return (float)(t * t);
}

/* hloc drops the ratio test when either image has fewer than 2 keypoints. */
static inline FST_HD bool fst_use_ratio(uint32_t n0, uint32_t n1)
{
    return n0 >= 2 && n1 >= 2;
}

/* hloc's mutual_check for row i: keep m0i iff it is a match and the
 * backward match of m0i (m1_of_m0i = m1[m0i]) is i. */
static inline FST_HD int32_t fst_mutual_keep(int32_t m0i, int32_t m1_of_m0i,
                                             int32_t i)
{
    return (m0i >= 0 && m1_of_m0i == i) ? m0i : -1;
}

#endif
