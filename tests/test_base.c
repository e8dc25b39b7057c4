/* test_base.c : status table, error detail, float16 conversion. */
#include "fst_test.h"
#include "base_impl.h"

#include <math.h>

FST_TEST(strerror_covers_every_code)
{
#define CHECK_(name, value, msg)                               \
    ASSERT_STREQ(fst_strerror(FST_##name), msg);               \
    ASSERT_STREQ(fst_status_name(FST_##name), #name);          \
    ASSERT_LE(-(value), 127);
    FST_STATUS_MAP(CHECK_)
#undef CHECK_
    ASSERT_STREQ(fst_strerror((fst_status)-99), "unknown status");
}

FST_TEST(fail_sets_detail_and_prefix)
{
    fst_errclear();
    ASSERT_STREQ(fst_errdetail(), "");
    ASSERT_EQ(fst__fail(FST_EIO, "%s: %d", "x.h5", 7), FST_EIO);
    ASSERT_STREQ(fst_errdetail(), "x.h5: 7");
    ASSERT_EQ(fst__failpre(FST_EIO, "%s: ", "db.fst"), FST_EIO);
    ASSERT_STREQ(fst_errdetail(), "db.fst: x.h5: 7");
}

FST_TEST(long_detail_is_marked_truncated)
{
    char big[3000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    fst__fail(FST_EINVAL, "%s", big);
    size_t n = strlen(fst_errdetail());
    ASSERT_EQ(n, 1023);
    ASSERT_STREQ(fst_errdetail() + n - 3, "...");
}

FST_TEST(f16_every_half_round_trips)
{
    /* Every finite half widens exactly and narrows back to itself. */
    for (uint32_t h = 0; h < 0x10000u; h++) {
        float f = fst_f16_to_f32((uint16_t)h);
        if (isnan(f)) {
            ASSERT_TRUE(isnan(fst_f16_to_f32(fst_f32_to_f16(f))));
            continue;
        }
        ASSERT_EQ(fst_f32_to_f16(f), h);
    }
}

FST_TEST(f16_known_values_and_rounding)
{
    ASSERT_EQ(fst_f32_to_f16(1.0f), 0x3c00);
    ASSERT_EQ(fst_f32_to_f16(-2.0f), 0xc000);
    ASSERT_EQ(fst_f32_to_f16(65504.0f), 0x7bff);
    ASSERT_EQ(fst_f32_to_f16(65520.0f), 0x7c00);          /* rounds to Inf */
    ASSERT_EQ(fst_f32_to_f16(0x1p-24f), 0x0001);          /* smallest subnormal */
    ASSERT_EQ(fst_f32_to_f16(0x1p-26f), 0x0000);          /* rounds to 0 */
    ASSERT_EQ(fst_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);   /* tie -> even */
    ASSERT_EQ(fst_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);/* tie -> even */
    ASSERT_EQ(fst_f32_to_f16(INFINITY), 0x7c00);
    ASSERT_TRUE(isnan(fst_f16_to_f32(fst_f32_to_f16(NAN))));
    ASSERT_NEAR(fst_f16_to_f32(0x3555), 0.333251953125, 0);
}

FST_TEST(f16_matches_hardware_conversion)
{
    /* Compare with the compiler's _Float16 where it has one (x86-64 gcc 12
     * does), over many floats across the whole range. */
#if defined(__FLT16_MAX__)
    uint32_t x = 12345;
    for (int i = 0; i < 1000000; i++) {
        x = x * 1664525u + 1013904223u;
        float f;
        memcpy(&f, &x, sizeof f);
        if (isnan(f)) continue;
        _Float16 h = (_Float16)f;
        uint16_t hb;
        memcpy(&hb, &h, sizeof hb);
        ASSERT_EQ(fst_f32_to_f16(f), hb);
    }
#else
    FST_SKIP("compiler has no _Float16");
#endif
}

FST_TEST(dtype_sizes)
{
    ASSERT_EQ(fst_dtype_size(FST_DTYPE_F16), 2);
    ASSERT_EQ(fst_dtype_size(FST_DTYPE_F32), 4);
    ASSERT_EQ(fst_dtype_size((fst_dtype)9), 0);
    ASSERT_STREQ(fst_dtype_name(FST_DTYPE_F16), "float16");
}
