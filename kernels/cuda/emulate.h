/* kernels/cuda/emulate.h : the reduction kernels' schedule on the CPU.
 *
 * cuda_kernels.cu runs the FST_HD functions of cuda_math.h in a fixed
 * schedule: per block, 8 warps of 32 lanes, phases separated by __syncwarp
 * and __syncthreads. This header runs the very same functions in the very
 * same schedule, one lane after another, with shared memory as plain arrays
 * (poisoned before each subtile so that a read of stale data shows). Used
 * by tests/test_cudahost.c and by the CPU mock of the CUDA runtime
 * (tests/cuda_mock/). Keep it in step with cuda_kernels.cu.
 *
 * Plain C; no CUDA header. Private to kernels/ and the tests.
 */
#ifndef FST_CUDA_EMULATE_H
#define FST_CUDA_EMULATE_H

#include "cuda_math.h"

/* What the kernels see: the chunk's tables and buffers. */
typedef struct fst_cu_emu {
    const float       *ws;
    const fst_cu_tile *tiles;
    const fst_cu_pair *pairs;
    fst_top2          *colpart;
    int32_t           *m1;
    uint32_t          *out;          /* m0 and scores, 32-bit words */
    uint32_t          *nmatch;       /* per pair */
    fst_cu_rule        rule;
    fst_top2          *rows_seen;    /* optional: row i of a pair's final
                                        result at rows_seen[pair.out / 2 + i] */
} fst_cu_emu;

#define FST_CU_EMU_POISON (-9.0f)

/* k_reduce, one block: item (tile, strip). */
static inline void fst_cu_emu_reduce(const fst_cu_emu *E, fst_cu_item it)
{
    static float sm[FST_CU_WARPS][FST_CU_LANES * FST_CU_SUBLD];
    static fst_top2 rowsm[FST_CU_WARPS * FST_CU_STRIP];
    static fst_top2 racc[FST_CU_LANES][FST_CU_SUBS];
    const fst_cu_tile tl = E->tiles[it.what];
    const fst_cu_pair pr = E->pairs[tl.pair];
    const uint32_t rbase = it.part * FST_CU_STRIP;
    const float *S = E->ws + tl.s;
    for (uint32_t w = 0; w < FST_CU_WARPS; w++) {
        for (uint32_t l = 0; l < FST_CU_LANES; l++)
            for (int r = 0; r < FST_CU_SUBS; r++)
                racc[l][r] = fst_top2_init();
        for (uint32_t col0 = w * FST_CU_LANES; col0 < pr.n1;
             col0 += FST_CU_WARPS * FST_CU_LANES) {
            const uint32_t ncols = fst_cu_min(FST_CU_LANES, pr.n1 - col0);
            fst_top2 cacc[FST_CU_LANES];
            for (uint32_t l = 0; l < FST_CU_LANES; l++)
                cacc[l] = fst_top2_init();
            for (int r = 0; r < FST_CU_SUBS; r++) {
                const uint32_t sub0 = rbase + (uint32_t)r * FST_CU_LANES;
                if (sub0 >= tl.rows)
                    continue;
                const uint32_t nrows = fst_cu_min(FST_CU_LANES,
                                                  tl.rows - sub0);
                for (size_t k = 0; k < FST_CU_LANES * FST_CU_SUBLD; k++)
                    sm[w][k] = FST_CU_EMU_POISON;
                for (uint32_t l = 0; l < FST_CU_LANES; l++)
                    fst_cu_sub_load(S, tl.ld, sub0, col0, ncols, nrows, l,
                                    sm[w], &racc[l][r]);
                /* __syncwarp() */
                for (uint32_t l = 0; l < FST_CU_LANES; l++)
                    fst_cu_sub_cols(sm[w], ncols, nrows, tl.row0 + sub0, l,
                                    &cacc[l]);
                /* __syncwarp() */
            }
            for (uint32_t l = 0; l < ncols; l++)
                E->colpart[fst_cu_colpart_index(&pr, &tl, it.part,
                                                col0 + l)] = cacc[l];
        }
        for (uint32_t l = 0; l < FST_CU_LANES; l++)
            for (int r = 0; r < FST_CU_SUBS; r++)
                rowsm[w * FST_CU_STRIP + (uint32_t)r * FST_CU_LANES + l] =
                    racc[l][r];
    }
    /* __syncthreads() */
    const uint32_t rows_here = fst_cu_min(FST_CU_STRIP, tl.rows - rbase);
    for (uint32_t t = 0; t < rows_here; t++) {
        fst_top2 res = fst_cu_rows_merge(rowsm, t);
        uint32_t i = tl.row0 + rbase + t;
        if (E->rows_seen)
            E->rows_seen[pr.out / 2 + i] = res;
        fst_cu_row_emit(&pr, i, res, &E->rule, (int32_t *)E->out,
                        (float *)E->out);
    }
}

/* k_cols, one block: item (pair, block of columns). */
static inline void fst_cu_emu_cols(const fst_cu_emu *E, fst_cu_item it)
{
    const fst_cu_pair pr = E->pairs[it.what];
    for (uint32_t t = 0; t < FST_CU_FINISH; t++) {
        uint32_t j = it.part * FST_CU_FINISH + t;
        if (j < pr.n1)
            E->m1[pr.m1 + j] = fst_cu_col_decide(
                fst_cu_col_final(E->colpart, &pr, j), &pr, &E->rule);
    }
}

/* k_rows, one block: item (pair, block of rows). */
static inline void fst_cu_emu_rows(const fst_cu_emu *E, fst_cu_item it)
{
    const fst_cu_pair pr = E->pairs[it.what];
    int32_t *m0 = (int32_t *)E->out + pr.out;
    uint32_t kept = 0;
    for (uint32_t t = 0; t < FST_CU_FINISH; t++) {
        uint32_t i = it.part * FST_CU_FINISH + t;
        if (i >= pr.n0)
            continue;
        int32_t m = m0[i];
        if (E->rule.mutual) {
            m = fst_cu_mutual(m, E->m1 + pr.m1, i);
            m0[i] = m;
        }
        kept += m >= 0;
    }
    /* __syncthreads_count + atomicAdd */
    E->nmatch[it.what] += kept;
}

#endif
