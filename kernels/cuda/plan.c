/* kernels/cuda/plan.c : the CUDA backend's parameters and chunk planner.
 * Pure host code (see plan.h); tested by tests/test_cudahost.c. */
#include "fst_config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backend_impl.h"
#include "plan.h"

/* ---- parameters -------------------------------------------------------- */

static fst_status parse_u64(const char *key, const char *val, uint64_t lo,
                            uint64_t hi, uint64_t *out)
{
    char *end = NULL;
    if (val[0] < '0' || val[0] > '9')
        return fst__fail(FST_EINVAL, "cuda backend: %s=%s: not a number",
                         key, val);
    errno = 0;
    unsigned long long v = strtoull(val, &end, 10);
    if (errno || *end != '\0')
        return fst__fail(FST_EINVAL, "cuda backend: %s=%s: not a number",
                         key, val);
    if (v < lo || v > hi)
        return fst__fail(FST_EINVAL,
                         "cuda backend: %s=%s: out of range %llu..%llu", key,
                         val, (unsigned long long)lo, (unsigned long long)hi);
    *out = v;
    return FST_OK;
}

static fst_status parse_bool(const char *key, const char *val, int *out)
{
    if (strcmp(val, "0") == 0 || strcmp(val, "1") == 0) {
        *out = val[0] == '1';
        return FST_OK;
    }
    return fst__fail(FST_EINVAL, "cuda backend: %s=%s: expected 0 or 1", key,
                     val);
}

fst_status fst__cu_params_parse(const char *params, fst_cu_params *out)
{
    fst_cu_params p = {
        .device = 0, .cache_mb = 0, .headroom_mb = 2048, .share = 1,
        .sim_mb = 512, .ring_mb = 64, .transfer = FST_CU_XFER_RING,
        .tf32 = 0, .pad = 128, .timeout_s = 120, .profile = 0,
        .fault = FST_CU_FAULT_NONE,
    };
    const char *cur = params ? params : "";
    char key[64], val[256];
    uint64_t v;
    fst_status s;
    for (;;) {
        s = fst__param_next(&cur, key, sizeof key, val, sizeof val);
        if (s == FST_DONE)
            break;
        if (s != FST_OK)
            return fst__failpre(s, "cuda backend: ");
        if (strcmp(key, "device") == 0) {
            if ((s = parse_u64(key, val, 0, 1023, &v)) != FST_OK) return s;
            p.device = (int)v;
        } else if (strcmp(key, "cache_mb") == 0) {
            if ((s = parse_u64(key, val, 1, 1u << 24, &v)) != FST_OK) return s;
            p.cache_mb = v;
        } else if (strcmp(key, "headroom_mb") == 0) {
            if ((s = parse_u64(key, val, 0, 1u << 24, &v)) != FST_OK) return s;
            p.headroom_mb = v;
        } else if (strcmp(key, "share") == 0) {
            if ((s = parse_u64(key, val, 1, 256, &v)) != FST_OK) return s;
            p.share = (uint32_t)v;
        } else if (strcmp(key, "sim_mb") == 0) {
            if ((s = parse_u64(key, val, 1, 1u << 20, &v)) != FST_OK) return s;
            p.sim_mb = v;
        } else if (strcmp(key, "ring_mb") == 0) {
            if ((s = parse_u64(key, val, 1, 1u << 16, &v)) != FST_OK) return s;
            p.ring_mb = v;
        } else if (strcmp(key, "transfer") == 0) {
            if (strcmp(val, "ring") == 0)
                p.transfer = FST_CU_XFER_RING;
            else if (strcmp(val, "register") == 0)
                p.transfer = FST_CU_XFER_REGISTER;
            else
                return fst__fail(FST_EINVAL, "cuda backend: transfer=%s: "
                                 "expected ring or register", val);
        } else if (strcmp(key, "tf32") == 0) {
            if ((s = parse_bool(key, val, &p.tf32)) != FST_OK) return s;
        } else if (strcmp(key, "pad") == 0) {
            if ((s = parse_u64(key, val, FST_CU_STRIP, 1u << 16, &v)) != FST_OK)
                return s;
            if (v % FST_CU_STRIP != 0)
                return fst__fail(FST_EINVAL, "cuda backend: pad=%s: not a "
                                 "multiple of %d", val, FST_CU_STRIP);
            p.pad = (uint32_t)v;
        } else if (strcmp(key, "timeout_s") == 0) {
            if ((s = parse_u64(key, val, 1, 86400, &v)) != FST_OK) return s;
            p.timeout_s = (uint32_t)v;
        } else if (strcmp(key, "profile") == 0) {
            if ((s = parse_bool(key, val, &p.profile)) != FST_OK) return s;
#if FST_TEST_HOOKS
        } else if (strcmp(key, "fault") == 0) {
            static const char *const names[] = { "none", "oom", "kernel",
                                                 "hang" };
            p.fault = -1;
            for (int k = 0; k < 4; k++)
                if (strcmp(val, names[k]) == 0)
                    p.fault = k;
            if (p.fault < 0)
                return fst__fail(FST_EINVAL, "cuda backend: fault=%s: expected "
                                 "none, oom, kernel or hang", val);
#endif
        } else {
            return fst__fail(FST_EINVAL, "cuda backend: unknown parameter "
                             "'%s' (known: device, cache_mb, headroom_mb, "
                             "share, sim_mb, ring_mb, transfer, tf32, pad, "
                             "timeout_s, profile)", key);
        }
    }
    *out = p;
    return FST_OK;
}

/* ---- planning ---------------------------------------------------------- */

typedef struct sort_key {
    uint32_t dtype, d, c0, c1, idx;
} sort_key;

static int cmp_key(const void *pa, const void *pb)
{
    const sort_key *a = pa, *b = pb;
    if (a->dtype != b->dtype) return a->dtype < b->dtype ? -1 : 1;
    if (a->d != b->d)         return a->d < b->d ? -1 : 1;
    if (a->c0 != b->c0)       return a->c0 < b->c0 ? -1 : 1;
    if (a->c1 != b->c1)       return a->c1 < b->c1 ? -1 : 1;
    return (a->idx > b->idx) - (a->idx < b->idx);   /* stable */
}

fst_status fst__cu_plan_order(fst_cu_batch *b)
{
    if (b->njobs == 0)
        return FST_OK;
    sort_key *k = malloc((size_t)b->njobs * sizeof *k);
    if (!k)
        return fst__fail(FST_ENOMEM, "cuda backend: planning %u pairs",
                         b->njobs);
    for (uint32_t i = 0; i < b->njobs; i++) {
        const fst_cu_pjob *j = &b->jobs[i];
        k[i] = (sort_key){ j->dtype, j->d, fst_cu_class(j->n0, b->pad),
                           fst_cu_class(j->n1, b->pad), i };
    }
    qsort(k, b->njobs, sizeof *k, cmp_key);
    for (uint32_t i = 0; i < b->njobs; i++)
        b->order[i] = k[i].idx;
    free(k);
    b->next = 0;
    return FST_OK;
}

/* Rows of a tile when a pair's S does not fit the workspace; 0 if not even
 * one strip of rows fits. */
static uint32_t split_rows(uint64_t ws, uint32_t n1c)
{
    uint64_t r = ws / n1c / FST_CU_STRIP * FST_CU_STRIP;
    return r > UINT32_MAX ? UINT32_MAX / FST_CU_STRIP * FST_CU_STRIP
                          : (uint32_t)r;
}

void fst__cu_plan_need(const fst_cu_pjob *j, uint32_t pad, uint64_t ws,
                       bool mutual, fst_cu_caps *need)
{
    uint32_t n0c = fst_cu_class(j->n0, pad), n1c = fst_cu_class(j->n1, pad);
    uint64_t S = (uint64_t)n0c * n1c;
    memset(need, 0, sizeof *need);
    need->pairs = 1;
    if (S <= ws) {
        need->tiles = 1;
        need->ws = S;
    } else {
        uint32_t rows = split_rows(ws, n1c);
        if (rows == 0) {
            need->tiles = 1;
            need->ws = (uint64_t)FST_CU_STRIP * n1c;    /* > ws: cannot run */
        } else {
            need->tiles = (j->n0 + rows - 1) / rows;
            need->ws = (uint64_t)rows * n1c;
        }
    }
    need->items = fst_cu_strips(j->n0) + fst_cu_blocks(j->n0)
                + (mutual ? fst_cu_blocks(j->n1) : 0);
    need->colpart = (uint64_t)fst_cu_strips(j->n0) * j->n1;
    need->m1 = mutual ? j->n1 : 0;
    need->out = 2 * (uint64_t)j->n0 + 1;
}

/* Count image `img` for the chunk being planned (stamp): its bytes if not
 * counted yet. */
static uint64_t new_img_bytes(const fst_cu_batch *b, uint32_t img)
{
    return b->img_mark[img] == b->stamp ? 0 : b->img_bytes[img];
}

static void take_img(fst_cu_batch *b, fst_cu_plan *pl, uint32_t img)
{
    if (b->img_mark[img] != b->stamp) {
        b->img_mark[img] = b->stamp;
        pl->imgs[pl->nimgs++] = img;
        pl->img_bytes += b->img_bytes[img];
    }
}

static void reset_plan(fst_cu_plan *pl)
{
    pl->npairs = pl->ntiles = pl->nitems = pl->ngemms = pl->npasses = 0;
    pl->nimgs = 0;
    pl->cols_item0 = pl->ncols = pl->rows_item0 = pl->nrows = 0;
    pl->colpart_used = pl->m1_used = pl->nmatch = pl->out_used = 0;
    pl->img_bytes = 0;
    pl->split = false;
}

/* The finishing items (cols, rows) of pairs 0 .. npairs - 1. */
static void plan_finish(const fst_cu_batch *b, fst_cu_plan *pl)
{
    pl->cols_item0 = pl->nitems;
    if (b->mutual)
        for (uint32_t p = 0; p < pl->npairs; p++)
            for (uint32_t k = 0; k < fst_cu_blocks(pl->pairs[p].n1); k++)
                pl->items[pl->nitems++] = (fst_cu_item){ p, k };
    pl->ncols = pl->nitems - pl->cols_item0;
    pl->rows_item0 = pl->nitems;
    for (uint32_t p = 0; p < pl->npairs; p++)
        for (uint32_t k = 0; k < fst_cu_blocks(pl->pairs[p].n0); k++)
            pl->items[pl->nitems++] = (fst_cu_item){ p, k };
    pl->nrows = pl->nitems - pl->rows_item0;
    pl->nmatch = pl->out_used;
    pl->out_used += pl->npairs;
}

static void plan_pair(const fst_cu_batch *b, fst_cu_plan *pl, uint32_t job)
{
    const fst_cu_pjob *j = &b->jobs[job];
    uint32_t p = pl->npairs++;
    pl->jobs[p] = job;
    pl->pairs[p] = (fst_cu_pair){ .colpart = pl->colpart_used,
                                  .m1 = pl->m1_used, .out = pl->out_used,
                                  .n0 = j->n0, .n1 = j->n1 };
    pl->colpart_used += (uint64_t)fst_cu_strips(j->n0) * j->n1;
    pl->m1_used += b->mutual ? j->n1 : 0;
    pl->out_used += 2 * (uint64_t)j->n0;
}

/* One pair larger than the workspace: tiles of `rows` rows, one pass each,
 * every pass reusing the workspace from its start. */
static void plan_split(fst_cu_batch *b, const fst_cu_caps *caps,
                       fst_cu_plan *pl, uint32_t job)
{
    const fst_cu_pjob *j = &b->jobs[job];
    uint32_t n0c = fst_cu_class(j->n0, b->pad);
    uint32_t n1c = fst_cu_class(j->n1, b->pad);
    uint32_t rows = split_rows(caps->ws, n1c);
    pl->split = true;
    take_img(b, pl, j->img0);
    take_img(b, pl, j->img1);
    plan_pair(b, pl, job);
    for (uint32_t row0 = 0; row0 < j->n0; row0 += rows) {
        uint32_t t = pl->ntiles++;
        uint32_t r = fst_cu_min(rows, j->n0 - row0);
        uint32_t ld = fst_cu_min(rows, n0c - row0);
        pl->tiles[t] = (fst_cu_tile){ .s = 0, .ld = ld, .pair = 0,
                                      .row0 = row0, .rows = r };
        pl->gemms[pl->ngemms++] = (fst_cu_gemm){ ld, n1c, j->d, j->dtype,
                                                 t, 1 };
        fst_cu_pass *ps = &pl->passes[pl->npasses++];
        ps->gemm0 = t;
        ps->ngemm = 1;
        ps->item0 = pl->nitems;
        for (uint32_t s = 0; s < fst_cu_strips(r); s++)
            pl->items[pl->nitems++] = (fst_cu_item){ t, s };
        ps->nitems = pl->nitems - ps->item0;
    }
    plan_finish(b, pl);
}

bool fst__cu_plan_next(fst_cu_batch *b, const fst_cu_caps *caps,
                       fst_cu_plan *pl)
{
    reset_plan(pl);
    if (b->next >= b->njobs)
        return false;
    b->stamp++;

    const fst_cu_pjob *first = &b->jobs[b->order[b->next]];
    uint64_t S0 = (uint64_t)fst_cu_class(first->n0, b->pad)
                * fst_cu_class(first->n1, b->pad);
    if (S0 > caps->ws) {
        plan_split(b, caps, pl, b->order[b->next++]);
        return true;
    }

    /* Whole pairs, as many as every buffer allows, in one pass. */
    uint64_t ws = 0;
    uint32_t items = 0;
    fst_cu_pass *ps = &pl->passes[0];
    while (b->next < b->njobs) {
        uint32_t job = b->order[b->next];
        const fst_cu_pjob *j = &b->jobs[job];
        uint32_t n0c = fst_cu_class(j->n0, b->pad);
        uint32_t n1c = fst_cu_class(j->n1, b->pad);
        uint64_t S = (uint64_t)n0c * n1c;
        if (S > caps->ws)
            break;                          /* split: a chunk of its own */
        uint64_t ib = new_img_bytes(b, j->img0);
        if (j->img1 != j->img0)
            ib += new_img_bytes(b, j->img1);
        uint32_t it = fst_cu_strips(j->n0) + fst_cu_blocks(j->n0)
                    + (b->mutual ? fst_cu_blocks(j->n1) : 0);
        bool fits =
            ws + S <= caps->ws &&
            pl->npairs + 1 <= caps->pairs && pl->ntiles + 1 <= caps->tiles &&
            items + it <= caps->items &&
            pl->colpart_used + (uint64_t)fst_cu_strips(j->n0) * j->n1
                <= caps->colpart &&
            pl->m1_used + (b->mutual ? j->n1 : 0) <= caps->m1 &&
            pl->out_used + 2 * (uint64_t)j->n0 + pl->npairs + 1 <= caps->out &&
            pl->img_bytes + ib <= caps->img_bytes;
        if (!fits && pl->npairs > 0)
            break;
        /* (a first pair that does not fit alone was ruled out by the
         * caller through fst__cu_plan_need: take it anyway) */
        take_img(b, pl, j->img0);
        take_img(b, pl, j->img1);
        uint32_t t = pl->ntiles++;
        pl->tiles[t] = (fst_cu_tile){ .s = ws, .ld = n0c, .pair = pl->npairs,
                                      .row0 = 0, .rows = j->n0 };
        fst_cu_gemm *g = pl->ngemms ? &pl->gemms[pl->ngemms - 1] : NULL;
        if (g && g->m == n0c && g->n == n1c && g->k == j->d &&
            g->dtype == j->dtype)
            g->count++;
        else
            pl->gemms[pl->ngemms++] = (fst_cu_gemm){ n0c, n1c, j->d, j->dtype,
                                                     t, 1 };
        plan_pair(b, pl, job);
        ws += S;
        items += it;
        b->next++;
    }
    ps->gemm0 = 0;
    ps->ngemm = pl->ngemms;
    ps->item0 = 0;
    for (uint32_t t = 0; t < pl->ntiles; t++)
        for (uint32_t s = 0; s < fst_cu_strips(pl->tiles[t].rows); s++)
            pl->items[pl->nitems++] = (fst_cu_item){ t, s };
    ps->nitems = pl->nitems;
    pl->npasses = 1;
    plan_finish(b, pl);
    return true;
}
