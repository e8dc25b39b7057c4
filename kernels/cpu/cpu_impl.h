/* kernels/cpu/cpu_impl.h : what each instruction-set path of the CPU
 * backend provides; private to kernels/cpu/.
 *
 * The CPU matcher packs both images into panels (float16 widened, each
 * panel k-major: panel p holds rows p*w .. p*w+w-1, stored d x w, zero rows
 * past n), then sweeps micro-tiles of MR x NR similarities: each tile is
 * computed in registers by a micro-kernel and at once reduced into per-row
 * and per-column best/second-best (the vector form of fst_top2_push).
 * Memory: the packed images, O(n0 * lanes + n1) state, one tile; never
 * n0 x n1.
 * Each path (cpu_<isa>.c) defines its packing, micro-tile and vector
 * operations; the sweep, the micro-kernel's loop and the reductions come
 * from sweep_tmpl.h, compiled under each path's target.
 */
#ifndef FST_CPU_IMPL_H
#define FST_CPU_IMPL_H

#include "base_impl.h"

#include <stdbool.h>
#include <stdint.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#  define FST_CPU_X86 1
#else
#  define FST_CPU_X86 0
#endif

/* Per-row state is kept lane-wise (lane l sees the columns j with
 * j % lanes == l, in increasing j) and merged with fst_top2_merge at the
 * end; per-column state is one fst_top2 per column (lanes = columns). */
typedef struct fst__cpu_state {
    float   *s1, *s2;
    int32_t *j1;
} fst__cpu_state;

/* One thread's share of one pair: A panels [ir0, ir1) x B panels [jr0, jr1),
 * visiting each row's columns, and each column's rows, in increasing order
 * (ties go to the lowest index). */
typedef struct fst__cpu_sweep {
    const float *ap, *bp;       /* packed images */
    uint32_t n0, n1, d;
    uint32_t ir0, ir1, jr0, jr1;
    fst__cpu_state rows;        /* (panels(n0) * mr) rows x lanes */
    fst__cpu_state cols;        /* panels(n1) * nr columns */
    bool want_s2;               /* second best needed (ratio test) */
    bool want_cols;             /* column state needed (mutual check) */
    float *tile;                /* mr x nr scratch, 64-byte aligned */
} fst__cpu_sweep;

typedef struct fst__cpu_isa {
    const char *name;           /* "avx512", "avx2", "scalar" */
    unsigned mr, nr, lanes;     /* micro-tile rows, columns; row lanes */
    bool (*supported)(void);    /* this CPU (and OS) runs it */
    /* Pack rows [p0*w, min(p1*w, n)) of src (n x d elements of dt) into
     * panels p0..p1-1 of dst (panel p at dst + p*w*d), zero rows past n. */
    void (*pack)(const void *src, int dt, uint32_t n, uint32_t d, unsigned w,
                 uint32_t p0, uint32_t p1, float *dst);
    void (*sweep)(const fst__cpu_sweep *sw);
    /* The bare multiply of the same micro-kernel over the same sweep, with
     * no reduction: for benchmarks (the kernel's own GEMM peak). */
    void (*gemm_only)(const fst__cpu_sweep *sw);
} fst__cpu_isa;

extern const fst__cpu_isa fst__cpu_isa_avx512;
extern const fst__cpu_isa fst__cpu_isa_avx2;
extern const fst__cpu_isa fst__cpu_isa_scalar;

/* fst__cpu_isa_find() : "auto" gives the best this CPU runs; NULL if the
 * name is unknown. Does not check support for explicit names. */
const fst__cpu_isa *fst__cpu_isa_find(const char *name);

/* Panels of w rows holding n rows. */
static inline uint32_t fst__cpu_panels(uint32_t n, unsigned w)
{
    return (n + w - 1) / w;
}

/* fst__cpu_gemm_rate() :
 * For benchmarks: run the micro-kernel of `isa` ("auto", ...) over an
 * n x n x d product of random packed data with no reductions, `reps` times,
 * single thread; returns the best GFLOP/s, or a negative value if the isa
 * is unknown or unsupported or memory runs out. Timed in this thread's
 * CPU time. */
double fst__cpu_gemm_rate(const char *isa, uint32_t n, uint32_t d, int reps);

#endif
