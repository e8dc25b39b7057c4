/* kernels/cpu/sweep_tmpl.h : the sweep of the CPU matcher, written once and
 * compiled under each instruction set's target; private to kernels/cpu/.
 *
 * Each path (cpu_avx512.c, cpu_avx2.c, cpu_scalar.c) defines its micro-tile,
 * its target and its micro-kernel, then includes this file, which defines
 * the sweep over the tiles, its four specializations (second best wanted or
 * not, columns wanted or not) and the path's fst__cpu_isa. Included once
 * per .c file, at its end; no include guard on purpose.
 *
 * The includer defines:
 *   MR, NR, LANES     micro-tile rows and columns, row-state lanes (enum)
 *   CPU_ISA           the fst__cpu_isa object to define
 *   CPU_ISA_NAME      its name, as isa= takes it
 *   CPU_COL_KIB       B panels per column block: about this many KiB of
 *                     them, kept in L2 while every A panel passes over it
 *   CPU_TARGET        the target attribute of every function here (may be
 *                     empty)
 *   static bool supported(void), static void pack(...) as in cpu_impl.h
 * and either CPU_VEC, for a SIMD path whose tile rows are two vectors of
 * LANES floats, with these (CPU_TARGET, always inline):
 *   vf, vi, vk        float vector, int32 vector, lane mask
 *   ACC_LIST(X)       X(0) ... X(MR - 1): one row of accumulators each
 *   vf_zero() vf_set1(x) vf_load(p) vf_store(p, v) vf_bcast(p) vf_fma(a, b, c)
 *                     aligned loads and stores; vf_fma(a, b, c) = a * b + c
 *   vi_set1(x) vi_iota() vi_add(a, b) vi_load(p) vi_store(p, v)
 *                     vi_iota() = 0, 1, ..., LANES - 1
 *   vk_first(n)       the lanes below n (n may be < 0 or > LANES)
 *   vf_load_keep(p, k, y)  vf_load(p) in the lanes of k, y elsewhere
 *   vf_push(s1, s2, j1, x, jx, want_s2)
 *                     fst_top2_push in every lane, for candidates arriving
 *                     in increasing index per lane
 * or, for a path without vectors, its own
 *   kernel(a, b, d, tile) and reduce_tile(sw, tile, ir, jr, want_s2, want_cols)
 * with the meaning of the ones below.
 */

#define CPU_INLINE CPU_TARGET __attribute__((always_inline)) static inline

#ifdef CPU_VEC

_Static_assert(NR == 2 * LANES, "a tile row is two vectors");

/* tile[r * NR + c] = sum_k a[k * MR + r] * b[k * NR + c] (float32 FMA,
 * k increasing: the same value for identical descriptors wherever they
 * sit, so exact ties stay exact). One broadcast of each A value and two
 * loads of B per k, every accumulator a named register. */
CPU_INLINE void kernel(const float *restrict a, const float *restrict b,
                       uint32_t d, float *restrict tile)
{
#define DECL(r) vf c##r##_0 = vf_zero(), c##r##_1 = vf_zero();
    ACC_LIST(DECL)
#undef DECL
    for (uint32_t k = 0; k < d; k++) {
        vf b0 = vf_load(b), b1 = vf_load(b + LANES);
        vf t;
#define STEP(r) t = vf_bcast(a + (r));                    \
        c##r##_0 = vf_fma(t, b0, c##r##_0);               \
        c##r##_1 = vf_fma(t, b1, c##r##_1);
        ACC_LIST(STEP)
#undef STEP
        a += MR;
        b += NR;
    }
#define STORE(r) vf_store(tile + (r) * NR, c##r##_0); \
                 vf_store(tile + (r) * NR + LANES, c##r##_1);
    ACC_LIST(STORE)
#undef STORE
}

/* Reduce one tile while it is hot in L1: rows into LANES-lane state (lane
 * l sees the columns j0 + l and j0 + LANES + l), columns into per-column
 * state. */
CPU_INLINE void reduce_tile(const fst__cpu_sweep *sw, const float *tile,
                            uint32_t ir, uint32_t jr, bool want_s2,
                            bool want_cols)
{
    uint32_t i0 = ir * MR, j0 = jr * NR;
    unsigned vr = sw->n0 - i0 < MR ? sw->n0 - i0 : MR;
    unsigned vc = sw->n1 - j0 < NR ? sw->n1 - j0 : NR;
    const vi iota = vi_iota();
    const vf ninf = vf_set1(-INFINITY);
    vi jv0 = vi_add(vi_set1((int32_t)j0), iota);
    vi jv1 = vi_add(vi_set1((int32_t)j0 + LANES), iota);
    /* last column panel: padding columns are loaded as -inf, never
     * candidates */
    vk keep0 = vk_first((int)vc), keep1 = vk_first((int)vc - LANES);

    for (unsigned r = 0; r < vr; r++) {
        size_t o = (size_t)(i0 + r) * LANES;
        vf s1 = vf_load(sw->rows.s1 + o);
        vf s2 = want_s2 ? vf_load(sw->rows.s2 + o) : ninf;
        vi j1 = vi_load(sw->rows.j1 + o);
        vf x0, x1;
        if (vc < NR) {
            x0 = vf_load_keep(tile + r * NR, keep0, ninf);
            x1 = vf_load_keep(tile + r * NR + LANES, keep1, ninf);
        } else {
            x0 = vf_load(tile + r * NR);
            x1 = vf_load(tile + r * NR + LANES);
        }
        vf_push(&s1, &s2, &j1, x0, jv0, want_s2);
        vf_push(&s1, &s2, &j1, x1, jv1, want_s2);
        vf_store(sw->rows.s1 + o, s1);
        if (want_s2)
            vf_store(sw->rows.s2 + o, s2);
        vi_store(sw->rows.j1 + o, j1);
    }
    if (!want_cols)
        return;
    /* padding columns have state too (the buffers hold whole panels): what
     * lands there is never read */
    for (unsigned v = 0; v < NR / LANES && v * LANES < vc; v++) {
        size_t o = (size_t)j0 + v * LANES;
        vf s1 = vf_load(sw->cols.s1 + o);
        vf s2 = want_s2 ? vf_load(sw->cols.s2 + o) : ninf;
        vi j1 = vi_load(sw->cols.j1 + o);
        for (unsigned r = 0; r < vr; r++)
            vf_push(&s1, &s2, &j1, vf_load(tile + r * NR + v * LANES),
                    vi_set1((int32_t)(i0 + r)), want_s2);
        vf_store(sw->cols.s1 + o, s1);
        if (want_s2)
            vf_store(sw->cols.s2 + o, s2);
        vi_store(sw->cols.j1 + o, j1);
    }
}

#endif /* CPU_VEC */

static uint32_t col_block(uint32_t d)
{
    uint32_t per = NR * (d ? d : 1) * (uint32_t)sizeof(float);
    uint32_t nb = ((uint32_t)CPU_COL_KIB << 10) / per;
    return nb ? nb : 1;
}

/* Column blocks of B panels, outermost, so that a block stays in cache
 * while every A panel passes over it; rows and columns each visited in
 * increasing order (ties go to the lowest index). */
CPU_INLINE void sweep_impl(const fst__cpu_sweep *sw, bool want_s2,
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

/* The flags become constants, so each of the four copies carries only the
 * reductions it needs. */
CPU_TARGET static void sweep(const fst__cpu_sweep *sw)
{
    if (sw->want_s2) {
        if (sw->want_cols) sweep_impl(sw, true, true, true);
        else               sweep_impl(sw, true, false, true);
    } else {
        if (sw->want_cols) sweep_impl(sw, false, true, true);
        else               sweep_impl(sw, false, false, true);
    }
}

CPU_TARGET static void gemm_only(const fst__cpu_sweep *sw)
{
    sweep_impl(sw, false, false, false);
}

const fst__cpu_isa CPU_ISA = {
    CPU_ISA_NAME, MR, NR, LANES, supported, pack, sweep, gemm_only,
};

#undef CPU_INLINE
