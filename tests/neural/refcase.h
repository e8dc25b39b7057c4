/* refcase.h : the weights and inputs of a tests/neural/data case file,
 * drawn exactly as tests/neural/make_reference.py draws them (splitmix64 per
 * tensor name, scaled per tensor, then the case's rules), and a tensor
 * lookup over them for fst_nn_open(). Shared by tests/test_neural.c and
 * benchmarks/bench_neural.c; static functions, include once per program.
 *
 * load_case(name) reads $FST_SRCDIR/tests/neural/data/<name>.txt (NULL if
 * absent); load_case_n() overrides the keypoint counts (no outputs then).
 */
#ifndef FST_REFCASE_H
#define FST_REFCASE_H

#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fst_neural.h"

#ifndef FST_SRCDIR_DEFAULT
#define FST_SRCDIR_DEFAULT "."
#endif

/* ------------------------------------------------------------ draws */

static inline uint64_t fnv1a64(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ull;
    }
    return h;
}

/* k-th draw (k from 1) of make_reference.py's uniform(seed, n) */
static inline double uni(uint64_t seed, uint64_t k)
{
    uint64_t z = seed + k * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z = z ^ (z >> 31);
    return (double)(z >> 40) * 0x1.0p-24;
}

static inline double sym(uint64_t seed, const char *tag, uint64_t k)
{
    return 2.0 * uni(seed ^ fnv1a64(tag), k) - 1.0;
}

static inline uint16_t float_to_half(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000u, mant = x & 0x7fffffu;
    int32_t be = (int32_t)((x >> 23) & 0xff), e = be - 127 + 15;
    if (be == 0xff)
        return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0));
    if (e >= 31)
        return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        if (e < -10)
            return (uint16_t)sign;
        mant |= 0x800000u;
        int shift = 14 - e;
        uint32_t h = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1)))
            h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)e << 10) | (mant >> 13), rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
        h++;
    return (uint16_t)(sign | h);
}

/* ------------------------------------------------------------ case files */

enum { MAX_TENSORS = 512, MAX_RULES = 16 };

typedef struct tensor {
    char name[96];
    int ndim;
    int64_t shape[4];
    float *data;
} tensor;

typedef struct rule { char sub[64]; double mult, add; } rule;

typedef struct ref_case {
    char model[16], dtype[8];
    uint64_t wseed, iseed;
    rule rules[MAX_RULES];
    int nrules;
    int n0, n1, has_size, scale_ori;
    double depth, width, filter, match_threshold;
    int sinkhorn;
    tensor *t;
    int nt;
    int32_t *m0;
    float *s0;
    double *rowm, *colm;
    /* inputs */
    float *kp[2], *sc[2], *de[2], *ss[2], *so[2];
    uint16_t *de16[2];
    int dim;
    /* lookup: rename "transformers.N.self_attn" to the old "self_attn.N" */
    bool old_names;
} ref_case;

static inline void draw_tensor(tensor *t, uint64_t seed, const rule *rules, int nrules)
{
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
    t->data = malloc(n * sizeof(float));
    const char *leaf = strrchr(t->name, '.');
    leaf = leaf ? leaf + 1 : t->name;
    uint64_t s = seed ^ fnv1a64(t->name);
    double fan_in = 1;
    for (int i = 1; i < t->ndim; i++) fan_in *= (double)t->shape[i];
    for (size_t k = 0; k < n; k++) {
        double u = 2.0 * uni(s, k + 1) - 1.0, v;
        if (!strcmp(t->name, "bin_score"))
            v = 1.0;
        else if (!strcmp(leaf, "weight") && t->ndim >= 2)
            v = u * sqrt(3.0 / fan_in);
        else if (!strcmp(leaf, "weight"))
            v = 1.0 + 0.1 * u;
        else if (!strcmp(leaf, "running_var"))
            v = 1.0 + 0.5 * u;
        else
            v = 0.1 * u;
        for (int r = 0; r < nrules; r++)
            if (strstr(t->name, rules[r].sub)) {
                double m = v * rules[r].mult;
                v = m + rules[r].add;
            }
        t->data[k] = (float)v;
    }
}

static inline void make_inputs(ref_case *c)
{
    const double W = 640.0, H = 480.0, ds = sqrt(3.0 / c->dim);
    int n[2] = {c->n0, c->n1};
    char tag[16];
    for (int k = 0; k < 2; k++) {
        size_t nn = (size_t)n[k] ? (size_t)n[k] : 1;
        c->kp[k] = malloc(nn * 2 * sizeof(float));
        c->sc[k] = malloc(nn * sizeof(float));
        c->de[k] = malloc(nn * c->dim * sizeof(float));
        c->de16[k] = malloc(nn * c->dim * sizeof(uint16_t));
        c->ss[k] = malloc(nn * sizeof(float));
        c->so[k] = malloc(nn * sizeof(float));
        for (int i = 0; i < n[k]; i++) {
            snprintf(tag, sizeof tag, "kx%d", k);
            c->kp[k][2 * i] = (float)(uni(c->iseed ^ fnv1a64(tag), (uint64_t)i + 1) * W);
            snprintf(tag, sizeof tag, "ky%d", k);
            c->kp[k][2 * i + 1] = (float)(uni(c->iseed ^ fnv1a64(tag), (uint64_t)i + 1) * H);
            snprintf(tag, sizeof tag, "sc%d", k);
            c->sc[k][i] = (float)uni(c->iseed ^ fnv1a64(tag), (uint64_t)i + 1);
            snprintf(tag, sizeof tag, "de%d", k);
            for (int d = 0; d < c->dim; d++)
                c->de[k][(size_t)i * c->dim + d] =
                    (float)(sym(c->iseed, tag, (uint64_t)i * c->dim + d + 1) * ds);
        }
    }
    int ns = (int)(0.6 * (c->n0 < c->n1 ? c->n0 : c->n1));
    for (int i = 0; i < ns; i++) {
        for (int a = 0; a < 2; a++)
            c->kp[1][2 * i + a] = (float)((double)c->kp[0][2 * i + a] +
                                          sym(c->iseed, "nk", (uint64_t)i * 2 + a + 1) * 2.0);
        for (int d = 0; d < c->dim; d++)
            c->de[1][(size_t)i * c->dim + d] =
                (float)((double)c->de[0][(size_t)i * c->dim + d] +
                        sym(c->iseed, "nd", (uint64_t)i * c->dim + d + 1) * (0.3 * ds));
    }
    for (int k = 0; k < 2; k++) {
        for (size_t e = 0; e < (size_t)n[k] * c->dim; e++)
            c->de16[k][e] = float_to_half(c->de[k][e]);
        for (int i = 0; i < n[k]; i++) {
            snprintf(tag, sizeof tag, "ss%d", k);
            c->ss[k][i] = (float)(1.0 + 4.0 * uni(c->iseed ^ fnv1a64(tag), (uint64_t)i + 1));
            snprintf(tag, sizeof tag, "so%d", k);
            c->so[k][i] = (float)(sym(c->iseed, tag, (uint64_t)i + 1) * 3.14159265358979323846);
        }
    }
}

static inline double parse_double(const char *s)
{
    if (!strcmp(s, "inf")) return INFINITY;
    return strtod(s, NULL);
}

static inline ref_case *load_case_n(const char *name, int n0, int n1)
{
    const char *src = getenv("FST_SRCDIR");
    char path[1024], line[512];
    snprintf(path, sizeof path, "%s/tests/neural/data/%s.txt", src ? src : FST_SRCDIR_DEFAULT, name);
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    ref_case *c = calloc(1, sizeof *c);
    c->t = calloc(MAX_TENSORS, sizeof *c->t);
    c->sinkhorn = 100;
    c->filter = 0.1;
    c->match_threshold = 0.2;
    while (fgets(line, sizeof line, f)) {
        char key[32], a[128];
        if (line[0] == '#' || sscanf(line, "%31s", key) != 1)
            continue;
        if (!strcmp(key, "model")) sscanf(line, "%*s %15s", c->model);
        else if (!strcmp(key, "dtype")) sscanf(line, "%*s %7s", c->dtype);
        else if (!strcmp(key, "wseed")) sscanf(line, "%*s %" SCNu64, &c->wseed);
        else if (!strcmp(key, "iseed")) sscanf(line, "%*s %" SCNu64, &c->iseed);
        else if (!strcmp(key, "n0")) sscanf(line, "%*s %d", &c->n0);
        else if (!strcmp(key, "n1")) sscanf(line, "%*s %d", &c->n1);
        else if (!strcmp(key, "size")) sscanf(line, "%*s %d", &c->has_size);
        else if (!strcmp(key, "scale_ori")) sscanf(line, "%*s %d", &c->scale_ori);
        else if (!strcmp(key, "depth")) { sscanf(line, "%*s %127s", a); c->depth = parse_double(a); }
        else if (!strcmp(key, "width")) { sscanf(line, "%*s %127s", a); c->width = parse_double(a); }
        else if (!strcmp(key, "filter")) { sscanf(line, "%*s %127s", a); c->filter = parse_double(a); }
        else if (!strcmp(key, "match_threshold")) { sscanf(line, "%*s %127s", a); c->match_threshold = parse_double(a); }
        else if (!strcmp(key, "sinkhorn")) sscanf(line, "%*s %d", &c->sinkhorn);
        else if (!strcmp(key, "rule")) {
            rule *r = &c->rules[c->nrules++];
            char m[64], ad[64];
            sscanf(line, "%*s %63s %63s %63s", r->sub, m, ad);
            r->mult = parse_double(m);
            r->add = parse_double(ad);
        } else if (!strcmp(key, "tensor")) {
            tensor *t = &c->t[c->nt++];
            long long s[4] = {0};
            sscanf(line, "%*s %95s %d %lld %lld %lld %lld", t->name, &t->ndim, &s[0], &s[1], &s[2], &s[3]);
            for (int i = 0; i < 4; i++) t->shape[i] = s[i];
        } else if (!strcmp(key, "outputs")) {
            int n;
            sscanf(line, "%*s %d", &n);
            size_t nn = n ? (size_t)n : 1;
            c->m0 = malloc(nn * sizeof *c->m0);
            c->s0 = malloc(nn * sizeof *c->s0);
            c->rowm = malloc(nn * sizeof *c->rowm);
            c->colm = malloc(nn * sizeof *c->colm);
            for (int i = 0; i < n && fgets(line, sizeof line, f); i++) {
                char sm[64], sr[64], sc[64];
                int idx, m;
                sscanf(line, "%d %d %63s %63s %63s", &idx, &m, sm, sr, sc);
                c->m0[i] = m;
                c->s0[i] = (float)parse_double(sm);
                c->rowm[i] = parse_double(sr);
                c->colm[i] = parse_double(sc);
            }
        }
    }
    fclose(f);
    if (n0 >= 0) {
        c->n0 = n0;
        c->n1 = n1;
        free(c->m0); free(c->s0); free(c->rowm); free(c->colm);
        c->m0 = NULL; c->s0 = NULL; c->rowm = NULL; c->colm = NULL;
    }
    for (int i = 0; i < c->nt; i++)
        draw_tensor(&c->t[i], c->wseed, c->rules, c->nrules);
    c->dim = c->scale_ori ? 128 : 256;
    make_inputs(c);
    return c;
}

static inline ref_case *load_case(const char *name)
{
    return load_case_n(name, -1, -1);
}

static inline void free_case(ref_case *c)
{
    if (!c) return;
    for (int i = 0; i < c->nt; i++) free(c->t[i].data);
    free(c->t);
    free(c->m0); free(c->s0); free(c->rowm); free(c->colm);
    for (int k = 0; k < 2; k++) {
        free(c->kp[k]); free(c->sc[k]); free(c->de[k]); free(c->de16[k]);
        free(c->ss[k]); free(c->so[k]);
    }
    free(c);
}

/* the new name of an old one: "self_attn.3.x" -> "transformers.3.self_attn.x" */
static inline bool lookup(void *ctx, const char *name, fst_nn_tensor *out)
{
    ref_case *c = ctx;
    char want[160];
    snprintf(want, sizeof want, "%s", name);
    if (c->old_names) {
        int layer, off = 0;
        char block[16];
        if (!strncmp(name, "transformers.", 13))
            return false;                     /* an old file has no new names */
        if (sscanf(name, "%15[a-z_].%d.%n", block, &layer, &off) == 2 && off > 0 &&
            (!strcmp(block, "self_attn") || !strcmp(block, "cross_attn")))
            snprintf(want, sizeof want, "transformers.%d.%s.%s", layer, block, name + off);
    }
    for (int i = 0; i < c->nt; i++)
        if (!strcmp(c->t[i].name, want)) {
            out->data = c->t[i].data;
            out->ndim = c->t[i].ndim;
            memcpy(out->shape, c->t[i].shape, sizeof out->shape);
            return true;
        }
    return false;
}

static inline fst_nn_kind kind_of(const ref_case *c)
{
    return !strcmp(c->model, "superglue") ? FST_NN_SUPERGLUE : FST_NN_LIGHTGLUE;
}

static inline fst_nn_conf conf_of(const ref_case *c)
{
    fst_nn_conf cf = fst_nn_default_conf(kind_of(c));
    cf.depth_confidence = c->depth;
    cf.width_confidence = c->width;
    cf.filter_threshold = c->filter;
    cf.sinkhorn_iterations = c->sinkhorn;
    cf.match_threshold = c->match_threshold;
    return cf;
}

static inline fst_nn_image image_of(const ref_case *c, int k)
{
    fst_nn_image im = {
        .n = (uint32_t)(k ? c->n1 : c->n0),
        .kpts = c->kp[k], .scores = c->sc[k],
        .desc = !strcmp(c->dtype, "f16") ? (const void *)c->de16[k] : (const void *)c->de[k],
        .desc_dtype = !strcmp(c->dtype, "f16") ? FST_DTYPE_F16 : FST_DTYPE_F32,
        .width = c->has_size ? 640.0f : 0.0f, .height = c->has_size ? 480.0f : 0.0f,
        .scales = c->scale_ori ? c->ss[k] : NULL, .oris = c->scale_ori ? c->so[k] : NULL,
        .name = k ? "image1" : "image0",
    };
    return im;
}

#endif
