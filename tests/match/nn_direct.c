/* nn_direct.c : the `neural` e2e case's reference: fst_nn_match() called
 * directly (no coordinator, no workers, no fst_matcher) on the pairs of a
 * store, printed for e2e.py to compare with `featstore match`'s output.
 *
 *   nn_direct lightglue|superglue WEIGHTS STORE PAIRS [key=value...]
 *
 * keys: depth, width, filter, sinkhorn, match (fst_nn_conf's fields).
 * One line per pair: "name0 name1 m m m ... | h h h ..." with matches0 and
 * matching_scores0 as float16 bits (the output's own encoding). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fst_neural.h"
#include "fst_store.h"
#include "fst_weights.h"

static bool lookup(void *ctx, const char *name, fst_nn_tensor *out)
{
    const fst_weights_tensor *t = fst_weights_find(ctx, name);
    if (!t || t->dtype != FST_WEIGHTS_F32) return false;
    out->data = t->data;
    out->ndim = t->ndim;
    for (int i = 0; i < 4; i++) out->shape[i] = i < t->ndim ? t->shape[i] : 0;
    return true;
}

static int fail(const char *what, fst_status s)
{
    fprintf(stderr, "nn_direct: %s: %s: %s\n", what, fst_strerror(s), fst_errdetail());
    return 1;
}

static fst_nn_image image(const fst_view *v)
{
    fst_nn_image im = {.n = v->n, .kpts = v->keypoints, .scores = v->scores, .desc = v->desc,
                       .desc_dtype = v->dtype, .width = (float)v->image_size[0],
                       .height = (float)v->image_size[1], .name = v->name,
                       .scales = v->scales, .oris = v->oris};
    return im;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: nn_direct lightglue|superglue WEIGHTS STORE PAIRS [k=v...]\n");
        return 2;
    }
    fst_nn_kind kind = !strcmp(argv[1], "superglue") ? FST_NN_SUPERGLUE : FST_NN_LIGHTGLUE;
    fst_nn_conf conf = fst_nn_default_conf(kind);
    conf.sinkhorn_iterations = 50;             /* hloc's superglue */
    for (int i = 5; i < argc; i++) {
        double v = atof(strchr(argv[i], '=') ? strchr(argv[i], '=') + 1 : "0");
        if (!strncmp(argv[i], "depth=", 6)) conf.depth_confidence = v;
        else if (!strncmp(argv[i], "width=", 6)) conf.width_confidence = v;
        else if (!strncmp(argv[i], "filter=", 7)) conf.filter_threshold = v;
        else if (!strncmp(argv[i], "sinkhorn=", 9)) conf.sinkhorn_iterations = (int32_t)v;
        else if (!strncmp(argv[i], "match=", 6)) conf.match_threshold = v;
    }
    fst_weights *w = NULL;
    fst_nn_model *m = NULL;
    fst_store *st = NULL;
    fst_status s;
    if ((s = fst_weights_open(argv[2], &w))) return fail(argv[2], s);
    if (kind == FST_NN_LIGHTGLUE && (s = fst_weights_rename_lightglue(w, 0)))
        return fail(argv[2], s);
    if ((s = fst_nn_open(kind, lookup, w, &conf, &m))) return fail(argv[2], s);
    fst_weights_close(w);
    if ((s = fst_store_open(argv[3], 0, &st))) return fail(argv[3], s);
    FILE *pf = fopen(argv[4], "r");
    if (!pf) { perror(argv[4]); return 1; }
    char n0[512], n1[512];
    while (fscanf(pf, "%511s %511s", n0, n1) == 2) {
        fst_reader *rd = NULL;
        fst_view a, b;
        if ((s = fst_reader_begin(st, &rd)) || (s = fst_reader_get(rd, n0, &a)) ||
            (s = fst_reader_get(rd, n1, &b)))
            return fail(n0, s);
        fst_nn_image ia = image(&a), ib = image(&b);
        int32_t *mm = malloc((a.n + 1) * sizeof *mm);
        float *sc = malloc((a.n + 1) * sizeof *sc);
        if ((s = fst_nn_match(m, &ia, &ib, mm, sc))) return fail(n0, s);
        printf("%s %s", n0, n1);
        for (uint32_t i = 0; i < a.n; i++) printf(" %d", (int)mm[i]);
        printf(" |");
        for (uint32_t i = 0; i < a.n; i++) printf(" %u", (unsigned)fst_f32_to_f16(sc[i]));
        printf("\n");
        free(mm);
        free(sc);
        fst_reader_end(rd);
    }
    fclose(pf);
    fst_store_close(st);
    fst_nn_close(m);
    return 0;
}
