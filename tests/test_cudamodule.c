/* test_cudamodule.c : the CUDA backend module (libfst_cuda.so) in a host
 * program that exports no featstore symbol.
 *
 * This program links featstore's libraries statically and is built without
 * -rdynamic / export_dynamic, and without the backend linked in: the only
 * way to the backend is the module, which must find everything it needs in
 * the versioned table the host hands its entry point (kernels/module_abi.h).
 * Its errors must land in this program's error detail. Without a GPU,
 * opening the backend fails cleanly with "no CUDA device"; with one, a pair
 * with one clear match per keypoint matches as the CPU reference does.
 * tests/meson.build runs it with FST_CUDA_MODULE naming the built module.
 */
#include "fst_test.h"
#include "fst_kernels.h"

#include <dlfcn.h>
#include <stdint.h>

FST_TEST(host_exports_no_featstore_symbol)
{
    /* the premise of every test below: nothing of ours to resolve against */
    ASSERT_TRUE(dlsym(RTLD_DEFAULT, "fst__fail") == NULL);
    ASSERT_TRUE(dlsym(RTLD_DEFAULT, "fst_errdetail") == NULL);
    ASSERT_TRUE(dlsym(RTLD_DEFAULT, "fst__match_check") == NULL);
    ASSERT_TRUE(dlsym(RTLD_DEFAULT, "fst__cuda_backend") == NULL);
    ASSERT_TRUE(getenv("FST_CUDA_MODULE") != NULL);
}

FST_TEST(module_errors_reach_the_host)
{
    fst_backend *be = NULL;
    /* both parsed inside the module before it looks for a device */
    ASSERT_STATUS(fst_backend_open("cuda", NULL, "sim_mb=lots", &be), FST_EINVAL);
    ASSERT_STREQ(fst_errdetail(), "cuda backend: sim_mb=lots: not a number");
    /* the host's parameter walker, through the table, then a prefix */
    ASSERT_STATUS(fst_backend_open("cuda", NULL, "device", &be), FST_EINVAL);
    ASSERT_STREQ(fst_errdetail(), "cuda backend: malformed parameter 'device' "
                                  "(expected key=value)");
    ASSERT_TRUE(be == NULL);
}

/* A: n random rows; B: A's rows in reverse order, slightly perturbed. */
static void make_pair(uint32_t n, uint32_t d, float *a, float *b)
{
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t k = 0; k < (size_t)n * d; k++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        a[k] = (float)((double)(x >> 11) * 0x1.0p-53 - 0.5);
    }
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t k = 0; k < d; k++)
            b[(size_t)(n - 1 - i) * d + k] = a[(size_t)i * d + k] * 1.01f;
}

FST_TEST(module_opens_or_says_no_device)
{
    fst_backend *be = NULL;
    fst_status s = fst_backend_open("cuda", NULL, NULL, &be);
    if (s == FST_ENODEVICE) {
        /* the module loaded and ran its open(), which found no GPU */
        printf("# %s\n", fst_errdetail());
        ASSERT_CONTAINS(fst_errdetail(), "no CUDA device");
        ASSERT_TRUE(strstr(fst_errdetail(), "module") == NULL);
        ASSERT_TRUE(be == NULL);
        return;
    }
    ASSERT_OK(s);
    ASSERT_STREQ(fst_backend_name(be), "cuda");
    enum { N = 96, D = 64 };
    static float da[N * D], db[N * D];
    make_pair(N, D, da, db);
    fst_view a = { .name = "A", .n = N, .d = D, .dtype = FST_DTYPE_F32, .desc = da };
    fst_view b = { .name = "B", .n = N, .d = D, .dtype = FST_DTYPE_F32, .desc = db };
    int32_t m0[N], r0[N];
    float s0[N], rs0[N];
    fst_matches got = { .matches0 = m0, .scores0 = s0 };
    fst_matches ref = { .matches0 = r0, .scores0 = rs0 };
    ASSERT_OK(fst_match_reference(&a, &b, NULL, &ref));
    ASSERT_OK(fst_backend_match(be, &a, &b, &got));
    ASSERT_OK(fst_backend_sync(be));
    ASSERT_EQ(got.nmatches, ref.nmatches);
    for (int i = 0; i < N; i++) {
        ASSERT_EQ(m0[i], r0[i]);
        ASSERT_NEAR(s0[i], rs0[i], 1e-3);
    }
    /* the backend's batch checks each job with the host's check, through
     * the table */
    fst_view bad = b;
    bad.d = D / 2;
    fst_match_job job = { &a, &bad, &got, FST_OK };
    ASSERT_STATUS(fst_backend_match_batch(be, &job, 1), FST_EINVAL);
    ASSERT_STATUS(job.status, FST_EINVAL);
    ASSERT_CONTAINS(fst_errdetail(), "descriptor dimensions differ");
    fst_backend_close(be);
}
