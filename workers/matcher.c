/* matcher.c : algorithm x device (fst_matcher.h).
 *
 * "nn" is the backend (cpu, cuda) with fst_match_opts; "lightglue" and
 * "superglue" are kernels/neural models built from a weight file
 * (loaders/fst_weights.h), CPU only. The conf travels and is journaled as
 * text, so a worker, the journal and a message all see the same thing.
 */
#include "fst_matcher.h"
#include "fst_neural.h"
#include "fst_weights.h"
#include "base_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

typedef struct preset {
    const char *name;
    fst_algo algo;
    bool scale_ori;
    const char *hint;      /* the weight file and where it is published */
    const char *help;
} preset;

#define LG_URL "https://github.com/cvg/LightGlue/releases (release assets)"
static const preset presets[] = {
    {"NN-mutual", FST_ALGO_NN, false, NULL, "nearest neighbour, mutual check"},
    {"NN-ratio", FST_ALGO_NN, false, NULL, "nearest neighbour, mutual, ratio 0.8"},
    {"NN-superpoint", FST_ALGO_NN, false, NULL, "nearest neighbour, mutual, distance 0.7"},
    {"superpoint+lightglue", FST_ALGO_LIGHTGLUE, false,
     "superpoint+lightglue needs --weights superpoint_lightglue.pth, published by "
     "LightGlue's authors: " LG_URL,
     "LightGlue, depth 0.95, width 0.99, filter 0.1 (superpoint_lightglue.pth)"},
    {"disk+lightglue", FST_ALGO_LIGHTGLUE, false,
     "disk+lightglue needs --weights disk_lightglue.pth, published by LightGlue's "
     "authors: " LG_URL,
     "LightGlue, depth 0.95, width 0.99, filter 0.1 (disk_lightglue.pth)"},
    {"aliked+lightglue", FST_ALGO_LIGHTGLUE, false,
     "aliked+lightglue needs --weights aliked_lightglue.pth, published by "
     "LightGlue's authors: " LG_URL,
     "LightGlue, depth 0.95, width 0.99, filter 0.1 (aliked_lightglue.pth)"},
    {"sift+lightglue", FST_ALGO_LIGHTGLUE, true,
     "sift+lightglue needs --weights sift_lightglue.pth, published by LightGlue's "
     "authors: " LG_URL,
     "LightGlue with scales and orientations, depth 0.95, width 0.99, filter 0.1 "
     "(sift_lightglue.pth)"},
    {"doghardnet+lightglue", FST_ALGO_LIGHTGLUE, true,
     "doghardnet+lightglue needs --weights doghardnet_lightglue.pth, published by "
     "LightGlue's authors: " LG_URL,
     "LightGlue with scales and orientations, depth 0.95, width 0.99, filter 0.1 "
     "(doghardnet_lightglue.pth)"},
    {"superglue", FST_ALGO_SUPERGLUE, false,
     "superglue needs --weights superglue_outdoor.pth, published by SuperGlue's "
     "authors: https://github.com/magicleap/SuperGluePretrainedNetwork "
     "(models/weights/superglue_outdoor.pth)",
     "SuperGlue, 50 Sinkhorn iterations, match threshold 0.2 (superglue_outdoor.pth)"},
    {"superglue-fast", FST_ALGO_SUPERGLUE, false,
     "superglue-fast needs --weights superglue_outdoor.pth, published by "
     "SuperGlue's authors: https://github.com/magicleap/SuperGluePretrainedNetwork "
     "(models/weights/superglue_outdoor.pth)",
     "SuperGlue, 5 Sinkhorn iterations, match threshold 0.2 (superglue_outdoor.pth)"},
};
#define N_PRESETS (sizeof presets / sizeof presets[0])

static const char *algo_name(fst_algo a)
{
    return a == FST_ALGO_LIGHTGLUE ? "lightglue" : a == FST_ALGO_SUPERGLUE ? "superglue" : "nn";
}

static const preset *find_preset(const char *name)
{
    for (size_t i = 0; name && i < N_PRESETS; i++)
        if (!strcmp(presets[i].name, name)) return &presets[i];
    return NULL;
}

fst_status fst_matcher_preset(const char *name, fst_matcher_conf *out)
{
    const preset *p = find_preset(name);
    if (!p) {
        char list[512] = "";
        for (size_t i = 0; i < N_PRESETS; i++) {
            strcat(list, i ? ", " : "");
            strcat(list, presets[i].name);
        }
        return fst__fail(FST_EINVAL, "unknown preset '%s' (known: %s)", name ? name : "", list);
    }
    fst_matcher_conf c;
    memset(&c, 0, sizeof c);
    c.algo = p->algo;
    c.preset = p->name;
    c.scale_ori = p->scale_ori;
    c.nn = fst_match_opts_default();
    if (p->algo == FST_ALGO_NN) {
        fst_status s = fst_match_preset(name, &c.nn);
        if (s) return s;
    }
    /* hloc's match_features confs over LightGlue's and SuperGlue's own
     * defaults (hloc/matchers/lightglue.py, superglue.py) */
    c.depth_confidence = 0.95;
    c.width_confidence = 0.99;
    c.filter_threshold = 0.1;
    c.sinkhorn_iterations = !strcmp(name, "superglue-fast") ? 5 : 50;
    c.match_threshold = 0.2;
    *out = c;
    return FST_OK;
}

const char *fst_matcher_weights_hint(const char *name)
{
    const preset *p = find_preset(name);
    return p ? p->hint : NULL;
}

const char *fst_matcher_preset_help(void)
{
    static char text[2048];
    if (!text[0]) {
        size_t o = 0;
        for (size_t i = 0; i < N_PRESETS && o < sizeof text; i++)
            o += (size_t)snprintf(text + o, sizeof text - o, "  %-22s %s\n",
                                  presets[i].name, presets[i].help);
    }
    return text;
}

/* XXH3-64 of every tensor: name, dtype, shape and bytes, in file order. */
static fst_status weights_hash(const fst_weights *w, uint64_t *out)
{
    XXH3_state_t *h = XXH3_createState();
    if (!h || XXH3_64bits_reset(h) != XXH_OK) {
        XXH3_freeState(h);
        return fst__fail(FST_ENOMEM, "hashing %s", fst_weights_name(w));
    }
    for (size_t i = 0; i < fst_weights_count(w); i++) {
        const fst_weights_tensor *t = fst_weights_at(w, i);
        int32_t dt = (int32_t)t->dtype, nd = t->ndim;
        XXH3_64bits_update(h, t->name, strlen(t->name) + 1);
        XXH3_64bits_update(h, &dt, sizeof dt);
        XXH3_64bits_update(h, &nd, sizeof nd);
        XXH3_64bits_update(h, t->shape, (size_t)nd * sizeof t->shape[0]);
        XXH3_64bits_update(h, t->data, t->nbytes);
    }
    *out = XXH3_64bits_digest(h);
    XXH3_freeState(h);
    return FST_OK;
}

static bool thr_ok(double x) { return isfinite(x) && x >= 0; }

fst_status fst_matcher_conf_text(const fst_matcher_conf *c, char **out)
{
    char buf[4096 + 64];
    if (c->algo == FST_ALGO_NN) {
        snprintf(buf, sizeof buf, "algorithm=nn\nmutual=%d\nratio_threshold=%.17g\n"
                 "distance_threshold=%.17g\n", c->nn.mutual ? 1 : 0,
                 c->nn.ratio_threshold, c->nn.distance_threshold);
    } else {
        if (!c->weights || !*c->weights) {
            const char *h = fst_matcher_weights_hint(c->preset);
            return fst__fail(FST_EINVAL, "%s", h ? h : "a neural matcher needs --weights FILE");
        }
        if (strlen(c->weights) > 4000 || strchr(c->weights, '\n'))
            return fst__fail(FST_EINVAL, "weights path too long or holds a newline");
        if (!thr_ok(c->depth_confidence) || !thr_ok(c->width_confidence) ||
            !thr_ok(c->filter_threshold) || !thr_ok(c->match_threshold) ||
            c->sinkhorn_iterations < 1)
            return fst__fail(FST_EINVAL, "%s: thresholds must be finite and >= 0, "
                             "sinkhorn iterations >= 1", c->preset ? c->preset : algo_name(c->algo));
        fst_weights *w = NULL;
        fst_status s = fst_weights_open(c->weights, &w);
        uint64_t hash = 0;
        if (!s) s = weights_hash(w, &hash);
        fst_weights_close(w);
        if (s) return s;
        int n = snprintf(buf, sizeof buf, "algorithm=%s\npreset=%s\nweights=%s\n"
                         "weights_xxh3=%016llx\n", algo_name(c->algo),
                         c->preset ? c->preset : algo_name(c->algo), c->weights,
                         (unsigned long long)hash);
        if (c->algo == FST_ALGO_LIGHTGLUE)
            snprintf(buf + n, sizeof buf - (size_t)n,
                     "depth_confidence=%.17g\nwidth_confidence=%.17g\n"
                     "filter_threshold=%.17g\nscale_ori=%d\n", c->depth_confidence,
                     c->width_confidence, c->filter_threshold, c->scale_ori ? 1 : 0);
        else
            snprintf(buf + n, sizeof buf - (size_t)n,
                     "sinkhorn_iterations=%d\nmatch_threshold=%.17g\n",
                     (int)c->sinkhorn_iterations, c->match_threshold);
    }
    char *t = strdup(buf);
    if (!t) return fst__fail(FST_ENOMEM, "matcher conf");
    *out = t;
    return FST_OK;
}

/* ---- the text back into a conf ---- */

typedef struct parsed {
    fst_algo algo;
    char weights[4096];
    fst_nn_conf nn;
    fst_match_opts mo;
    bool scale_ori;
} parsed;

static fst_status parse_text(const char *text, parsed *p)
{
    memset(p, 0, sizeof *p);
    p->mo = fst_match_opts_default();
    bool have_algo = false;
    for (const char *l = text; l && *l;) {
        const char *e = strchr(l, '\n');
        size_t n = e ? (size_t)(e - l) : strlen(l);
        const char *eq = memchr(l, '=', n);
        if (!eq) return fst__fail(FST_EINVAL, "matcher conf: malformed line '%.*s'", (int)n, l);
        size_t kl = (size_t)(eq - l), vl = n - kl - 1;
        char v[4096];
        if (vl >= sizeof v) return fst__fail(FST_EINVAL, "matcher conf: value too long");
        memcpy(v, eq + 1, vl);
        v[vl] = '\0';
#define KEY(k) (kl == strlen(k) && !memcmp(l, k, kl))
        if (KEY("algorithm")) {
            have_algo = true;
            if (!strcmp(v, "nn")) p->algo = FST_ALGO_NN;
            else if (!strcmp(v, "lightglue")) p->algo = FST_ALGO_LIGHTGLUE;
            else if (!strcmp(v, "superglue")) p->algo = FST_ALGO_SUPERGLUE;
            else return fst__fail(FST_EINVAL, "matcher conf: unknown algorithm '%s'", v);
            p->nn = fst_nn_default_conf(p->algo == FST_ALGO_SUPERGLUE ? FST_NN_SUPERGLUE
                                                                     : FST_NN_LIGHTGLUE);
        } else if (KEY("weights")) {
            memcpy(p->weights, v, vl + 1);
        } else if (KEY("depth_confidence")) {
            p->nn.depth_confidence = strtod(v, NULL);
        } else if (KEY("width_confidence")) {
            p->nn.width_confidence = strtod(v, NULL);
        } else if (KEY("filter_threshold")) {
            p->nn.filter_threshold = strtod(v, NULL);
        } else if (KEY("sinkhorn_iterations")) {
            p->nn.sinkhorn_iterations = (int32_t)strtol(v, NULL, 10);
        } else if (KEY("match_threshold")) {
            p->nn.match_threshold = strtod(v, NULL);
        } else if (KEY("mutual")) {
            p->mo.mutual = v[0] == '1';
        } else if (KEY("ratio_threshold")) {
            p->mo.ratio_threshold = strtod(v, NULL);
        } else if (KEY("distance_threshold")) {
            p->mo.distance_threshold = strtod(v, NULL);
        } else if (KEY("scale_ori")) {
            p->scale_ori = v[0] == '1';
        }   /* preset, weights_xxh3: identity only */
#undef KEY
        l = e ? e + 1 : NULL;
    }
    if (!have_algo) return fst__fail(FST_EINVAL, "matcher conf: no algorithm");
    if (p->algo != FST_ALGO_NN && !p->weights[0])
        return fst__fail(FST_EINVAL, "matcher conf: no weights");
    return FST_OK;
}

/* ---- models from weight files ---- */

static bool lookup(void *ctx, const char *name, fst_nn_tensor *out)
{
    const fst_weights_tensor *t = fst_weights_find(ctx, name);
    if (!t || t->dtype != FST_WEIGHTS_F32 || t->ndim > 4) return false;
    out->data = t->data;
    out->ndim = t->ndim;
    for (int i = 0; i < 4; i++) out->shape[i] = i < t->ndim ? t->shape[i] : 0;
    return true;
}

static fst_status open_model(const parsed *p, fst_nn_model **out)
{
    fst_weights *w = NULL;
    fst_status s = fst_weights_open(p->weights, &w);
    if (!s && p->algo == FST_ALGO_LIGHTGLUE) s = fst_weights_rename_lightglue(w, 0);
    if (!s) {
        s = fst_nn_open(p->algo == FST_ALGO_SUPERGLUE ? FST_NN_SUPERGLUE : FST_NN_LIGHTGLUE,
                        lookup, w, &p->nn, out);
        if (s) {
            char d[1024];
            snprintf(d, sizeof d, "%s", fst_errdetail());
            s = fst__fail(s, "%s: %s", p->weights, d);
        }
    }
    fst_weights_close(w);   /* the model copied what it keeps */
    return s;
}

static fst_status check_dim(const fst_nn_info *in, const char *weights, uint32_t d)
{
    if (d == 0 || (uint32_t)in->input_dim == d) return FST_OK;
    const char *tensor = in->kind == FST_NN_SUPERGLUE ? "kenc.encoder.12.weight / "
                         "final_proj.weight" : in->input_dim != in->dim ? "input_proj.weight"
                         : "posenc / transformers.0.self_attn.Wqkv.weight";
    return fst__fail(FST_EINVAL, "%s: the model takes %d-D descriptors (%s: %d columns), "
                     "the store holds %u-D descriptors", weights, (int)in->input_dim,
                     tensor, (int)in->input_dim, (unsigned)d);
}

fst_status fst_matcher_check_weights(const char *text, uint32_t d)
{
    parsed p;
    fst_status s = parse_text(text, &p);
    if (s || p.algo == FST_ALGO_NN || d == 0) return s;
    fst_nn_model *m = NULL;
    s = open_model(&p, &m);
    if (!s) {
        fst_nn_info in = fst_nn_info_of(m);
        s = check_dim(&in, p.weights, d);
    }
    fst_nn_close(m);
    return s;
}

struct fst_matcher {
    fst_algo algo;
    fst_backend *be;               /* nn */
    fst_nn_model *model;           /* neural */
    fst_nn_info info;
    char weights[4096];
};

fst_status fst_matcher_open(const char *text, const char *device, const char *params,
                            fst_matcher **out)
{
    parsed p;
    fst_status s = parse_text(text, &p);
    if (s) return s;
    fst_matcher *m = calloc(1, sizeof *m);
    if (!m) return fst__fail(FST_ENOMEM, "matcher");
    m->algo = p.algo;
    memcpy(m->weights, p.weights, sizeof m->weights);
    if (p.algo == FST_ALGO_NN) {
        s = fst_backend_open(device, &p.mo, params, &m->be);
    } else if (device && strcmp(device, "cpu")) {
        s = fst__fail(FST_EINVAL, "%s runs on the CPU only (device '%s'): use --device cpu",
                      algo_name(p.algo), device);
    } else if (params && *params) {
        s = fst__fail(FST_EINVAL, "%s takes no device parameters ('%s')", algo_name(p.algo),
                      params);
    } else {
        s = open_model(&p, &m->model);
        if (!s) m->info = fst_nn_info_of(m->model);
    }
    if (s) {
        fst_matcher_close(m);
        return s;
    }
    *out = m;
    return FST_OK;
}

fst_status fst_matcher_check_store(const fst_matcher *m, uint32_t d)
{
    return m->model ? check_dim(&m->info, m->weights, d) : FST_OK;
}

const char *fst_matcher_device(const fst_matcher *m)
{
    return m->be ? fst_backend_name(m->be) : "cpu";
}

static fst_status image_of(const fst_matcher *m, const fst_view *v, fst_nn_image *im)
{
    memset(im, 0, sizeof *im);
    im->name = v->name;
    im->n = v->n;
    im->kpts = v->keypoints;
    im->desc = v->desc;
    im->desc_dtype = v->dtype;
    im->width = (float)v->image_size[0];
    im->height = (float)v->image_size[1];
    if (v->n && (uint32_t)m->info.input_dim != v->d)
        return fst__fail(FST_EINVAL, "%s: %u-D descriptors, %s takes %d-D", v->name,
                         (unsigned)v->d, m->weights, (int)m->info.input_dim);
    if (m->info.needs_scale_ori) {
        fst_status s = fst_view_require(v, FST_VIEW_HAS_SCALES | FST_VIEW_HAS_ORIS, NULL);
        if (s && v->n) return s;
        im->scales = v->scales;
        im->oris = v->oris;
    }
    if (m->info.needs_scores) {
        if (!v->scores && v->n)
            return fst__fail(FST_EINVAL, "%s: %s needs keypoint scores, the store has none",
                             v->name, m->weights);
        im->scores = v->scores;
    }
    return FST_OK;
}

fst_status fst_matcher_match(fst_matcher *m, const fst_view *a, const fst_view *b,
                             fst_matches *out)
{
    if (m->be) return fst_backend_match(m->be, a, b, out);
    fst_nn_image ia, ib;
    fst_status s = image_of(m, a, &ia);
    if (!s) s = image_of(m, b, &ib);
    if (!s) s = fst_nn_match(m->model, &ia, &ib, out->matches0, out->scores0);
    if (s) {
        if (s != FST_ENOMEM) {
            char d[1024];
            snprintf(d, sizeof d, "%s", fst_errdetail());
            s = fst__fail(s, "pair %s %s: %s", a->name, b->name, d);
        }
        return s;
    }
    out->n0 = a->n;
    out->nmatches = 0;
    for (uint32_t i = 0; i < a->n; i++) out->nmatches += out->matches0[i] >= 0;
    return FST_OK;
}

fst_status fst_matcher_match_batch(fst_matcher *m, fst_match_job *jobs, size_t n_jobs)
{
    if (m->be) return fst_backend_match_batch(m->be, jobs, n_jobs);
    fst_status first = FST_OK;
    for (size_t j = 0; j < n_jobs; j++) {
        jobs[j].status = fst_matcher_match(m, jobs[j].a, jobs[j].b, jobs[j].out);
        if (jobs[j].status && !first) first = jobs[j].status;
    }
    return first;
}

void fst_matcher_close(fst_matcher *m)
{
    if (!m) return;
    fst_backend_close(m->be);
    fst_nn_close(m->model);
    free(m);
}
