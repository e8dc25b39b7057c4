/* test_neural.c : LightGlue and SuperGlue (kernels/neural) against the
 * reference implementations run in PyTorch.
 *
 * tests/neural/make_reference.py ran the published forward passes on random
 * weights at the published shapes and wrote, per case, the tensor names and
 * shapes, the seeds and rules that make the weights and inputs, and the
 * reference outputs. This program makes the same weights and inputs with the
 * same splitmix64 draws and compares:
 *   - matches0 identical on >= 99.9% of keypoints, and every difference at a
 *     keypoint whose reference best and second best log-assignment scores
 *     (in its row or in its best column) are within 1e-4, or whose score is
 *     within 1e-3 of the threshold;
 *   - matching_scores0 within 1e-3 elsewhere.
 */
#include "fst_test.h"
#include "fst_neural.h"


#include "neural/refcase.h"

/* Run `name`; compare with the reference. Returns the number of matches. */
static int check_case(const char *name, bool old_names, int32_t *out_m0)
{
    ref_case *c = load_case(name);
    if (!c)
        FST_TEST_FAIL_("tests/neural/data/%s.txt: cannot open (FST_SRCDIR=%s)", name,
                       getenv("FST_SRCDIR") ? getenv("FST_SRCDIR") : "unset");
    c->old_names = old_names;
    fst_nn_conf cf = conf_of(c);
    fst_nn_model *m = NULL;
    ASSERT_OK(fst_nn_open(kind_of(c), lookup, c, &cf, &m));
    size_t n0 = c->n0 ? (size_t)c->n0 : 1;
    int32_t *m0 = malloc(n0 * sizeof *m0);
    float *s0 = malloc(n0 * sizeof *s0);
    fst_nn_image a = image_of(c, 0), b = image_of(c, 1);
    ASSERT_OK(fst_nn_match(m, &a, &b, m0, s0));
    /* twice: the reused workspace gives the same answer */
    int32_t *m0b = malloc(n0 * sizeof *m0b);
    float *s0b = malloc(n0 * sizeof *s0b);
    ASSERT_OK(fst_nn_match(m, &a, &b, m0b, s0b));
    ASSERT_MEMEQ(m0, m0b, (size_t)c->n0 * sizeof *m0);
    ASSERT_MEMEQ(s0, s0b, (size_t)c->n0 * sizeof *s0);
    double th = kind_of(c) == FST_NN_SUPERGLUE ? c->match_threshold : c->filter;
    int same = 0, excused = 0, matches = 0;
    double worst = 0;
    for (int i = 0; i < c->n0; i++) {
        bool near = c->rowm[i] < 1e-4 || c->colm[i] < 1e-4 || fabs(c->s0[i] - th) < 1e-3;
        matches += c->m0[i] >= 0;
        if (m0[i] == c->m0[i]) {
            same++;
        } else if (near) {
            excused++;
            printf("# %s: keypoint %d: %d, reference %d (near tie: row %.3g col %.3g)\n",
                   name, i, m0[i], c->m0[i], c->rowm[i], c->colm[i]);
            continue;
        } else {
            FST_TEST_FAIL_("%s: keypoint %d matched to %d, reference %d (score %.6g vs %.6g, "
                           "margins row %.3g col %.3g)", name, i, m0[i], c->m0[i], s0[i],
                           c->s0[i], c->rowm[i], c->colm[i]);
        }
        double e = fabs((double)s0[i] - c->s0[i]);
        worst = e > worst ? e : worst;
        if (!(e <= 1e-3))
            FST_TEST_FAIL_("%s: keypoint %d: score %.7g, reference %.7g", name, i, s0[i], c->s0[i]);
    }
    ASSERT_TRUE(c->n0 == 0 || (double)same >= 0.999 * c->n0 || same + excused == c->n0);
    if (c->n0 >= 1000)
        ASSERT_TRUE((double)same >= 0.999 * c->n0);
    printf("# %s: %d of %d identical, %d near-tie differences, %d matches, worst score "
           "error %.3g, %.3f GFLOP\n", name, same, c->n0, excused, matches, worst,
           fst_nn_flops(m) * 1e-9);
    if (out_m0)
        memcpy(out_m0, m0, (size_t)c->n0 * sizeof *m0);
    free(m0); free(s0); free(m0b); free(s0b);
    fst_nn_close(m);
    free_case(c);
    return matches;
}

/* ------------------------------------------------------------ parity */

FST_TEST(lightglue_random_weights)    { check_case("lg_random", false, NULL); }
FST_TEST(lightglue_scaled)            { ASSERT_GE(check_case("lg_scaled", false, NULL), 50); }
FST_TEST(lightglue_adaptive)          { ASSERT_GE(check_case("lg_adapt", false, NULL), 40); }
FST_TEST(lightglue_adaptive_float16)  { ASSERT_GE(check_case("lg_adapt_f16", false, NULL), 40); }
FST_TEST(lightglue_float16)           { ASSERT_GE(check_case("lg_f16", false, NULL), 40); }
FST_TEST(lightglue_unequal_counts)    { check_case("lg_unequal", false, NULL); }
FST_TEST(lightglue_one_keypoint)      { check_case("lg_one", false, NULL); }
FST_TEST(lightglue_one_keypoint_b)    { check_case("lg_one_b", false, NULL); }
FST_TEST(lightglue_zero_keypoints)    { check_case("lg_zero", false, NULL); }
FST_TEST(lightglue_no_image_size)     { ASSERT_GE(check_case("lg_nosize", false, NULL), 30); }
FST_TEST(lightglue_sift_scale_ori)    { ASSERT_GE(check_case("lg_sift", false, NULL), 30); }
FST_TEST(superglue_random_weights)    { ASSERT_GE(check_case("sg_random", false, NULL), 30); }
FST_TEST(superglue_hloc_float16)      { ASSERT_GE(check_case("sg_hloc", false, NULL), 30); }
FST_TEST(superglue_fast)              { check_case("sg_fast", false, NULL); }
FST_TEST(superglue_unequal_counts)    { check_case("sg_unequal", false, NULL); }
FST_TEST(superglue_one_keypoint)      { check_case("sg_one", false, NULL); }
FST_TEST(superglue_zero_keypoints)    { check_case("sg_zero", false, NULL); }

/* Old weight files name blocks self_attn.N / cross_attn.N. */
FST_TEST(lightglue_old_tensor_names)
{
    ASSERT_GE(check_case("lg_scaled", true, NULL), 50);
}

/* ------------------------------------------------------------ refusals */

FST_TEST(open_names_tensor_and_both_shapes)
{
    ref_case *c = load_case("lg_one");
    ASSERT_TRUE(c != NULL);
    for (int i = 0; i < c->nt; i++)
        if (!strcmp(c->t[i].name, "transformers.4.cross_attn.to_v.weight"))
            c->t[i].shape[1] = 128;
    fst_nn_model *m = NULL;
    ASSERT_STATUS(fst_nn_open(FST_NN_LIGHTGLUE, lookup, c, NULL, &m), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "transformers.4.cross_attn.to_v.weight");
    ASSERT_CONTAINS(fst_errdetail(), "(256, 256)");
    ASSERT_CONTAINS(fst_errdetail(), "(256, 128)");
    ASSERT_TRUE(m == NULL);
    free_case(c);
}

FST_TEST(open_names_missing_tensor)
{
    ref_case *c = load_case("sg_one");
    ASSERT_TRUE(c != NULL);
    for (int i = 0; i < c->nt; i++)
        if (!strcmp(c->t[i].name, "gnn.layers.7.mlp.1.running_var"))
            strcpy(c->t[i].name, "gnn.layers.7.mlp.1.running_varX");
    fst_nn_model *m = NULL;
    ASSERT_STATUS(fst_nn_open(FST_NN_SUPERGLUE, lookup, c, NULL, &m), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "gnn.layers.7.mlp.1.running_var (512) is missing");
    /* and LightGlue's model is not SuperGlue's */
    ASSERT_STATUS(fst_nn_open(FST_NN_LIGHTGLUE, lookup, c, NULL, &m), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "not LightGlue weights");
    free_case(c);
}

FST_TEST(match_refuses_missing_inputs)
{
    ref_case *c = load_case("sg_one");
    ASSERT_TRUE(c != NULL);
    fst_nn_model *m = NULL;
    ASSERT_OK(fst_nn_open(FST_NN_SUPERGLUE, lookup, c, NULL, &m));
    fst_nn_info info = fst_nn_info_of(m);
    ASSERT_EQ(info.n_layers, 18);
    ASSERT_EQ(info.heads, 4);
    ASSERT_TRUE(info.needs_image_size && info.needs_scores);
    fst_nn_image a = image_of(c, 0), b = image_of(c, 1);
    int32_t m0[1];
    float s0[1];
    b.width = b.height = 0;
    ASSERT_STATUS(fst_nn_match(m, &a, &b, m0, s0), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "image1: SuperGlue needs the image size");
    fst_nn_close(m);
    free_case(c);

    c = load_case("lg_sift");
    ASSERT_TRUE(c != NULL);
    ASSERT_OK(fst_nn_open(FST_NN_LIGHTGLUE, lookup, c, NULL, &m));
    info = fst_nn_info_of(m);
    ASSERT_EQ(info.input_dim, 128);
    ASSERT_EQ(info.n_layers, 9);
    ASSERT_TRUE(info.needs_scale_ori);
    a = image_of(c, 0);
    b = image_of(c, 1);
    a.scales = NULL;
    int32_t *mm = malloc((size_t)c->n0 * sizeof *mm);
    float *ss = malloc((size_t)c->n0 * sizeof *ss);
    ASSERT_STATUS(fst_nn_match(m, &a, &b, mm, ss), FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "image0: these LightGlue weights need keypoint scales");
    free(mm);
    free(ss);
    fst_nn_close(m);
    free_case(c);
}
