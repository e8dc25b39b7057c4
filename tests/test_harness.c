/* test_harness.c : the harness (fst_test.h) tested by itself.
 *
 * Each case runs an assert that must fail, with stdout captured, and checks
 * that it failed and printed both sides in their own type; the asserts that
 * must hold are run directly. What must not compile (ASSERT_EQ on floats, a
 * pointer against a number) is checked by tests/harness_nocompile.py. */
#include <limits.h>
#include <stdint.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fst_test.h"

/* Run fn as a test of its own, stdout captured into out (NUL-terminated).
 * @return the state fst_test_run_one() gave: 0 passed, 1 failed. */
static int run_captured(fst_test_fn fn, char *out, size_t n)
{
    jmp_buf saved;
    memcpy(saved, fst_test_jmp, sizeof saved);
    fflush(stdout);
    int keep = dup(1);
    FILE *tmp = tmpfile();
    if (keep < 0 || !tmp) abort();
    dup2(fileno(tmp), 1);
    int state = fst_test_run_one(fn);
    fflush(stdout);
    dup2(keep, 1);
    close(keep);
    size_t got = 0;
    if (fseek(tmp, 0, SEEK_SET) == 0)
        got = fread(out, 1, n - 1, tmp);
    out[got] = '\0';
    fclose(tmp);
    memcpy(fst_test_jmp, saved, sizeof saved);
    fst_test_state = 0;
    return state;
}

/* The assert in fn must fail and its message contain want. */
#define EXPECT_FAIL(fn, want) do {                                       \
    char msg_[1024];                                                     \
    int st_ = run_captured(fn, msg_, sizeof msg_);                       \
    printf("# %s: %s", #fn, msg_[0] ? strchr(msg_, ' ') + 1 : "(passed)\n"); \
    ASSERT_EQ(st_, 1);                                                   \
    ASSERT_CONTAINS(msg_, want);                                         \
} while (0)

/* ---- floats compare as floats ---- */

static void gt_03_07(void)     { ASSERT_GT(0.3, 0.7); }
static void near_03_07(void)   { ASSERT_NEAR(0.3, 0.7, 0.1); }
static void near_nan(void)     { ASSERT_NEAR(NAN, NAN, 1.0); }
static void le_nan(void)       { ASSERT_LE(NAN, 1.0); }
static void lt_float_int(void) { ASSERT_LT(2.5f, 2); }
static void near_int_tol(void) { ASSERT_NEAR(10, 13, 2); }

FST_TEST(floats_compare_as_floats)
{
    ASSERT_LT(0.3, 0.7);              /* (long long) made these 0 < 0 */
    ASSERT_GT(0.7f, 0.3f);
    ASSERT_GE(2.5, 2);                /* mixed: the integer as a float */
    ASSERT_LE(1e300, 1e300);
    ASSERT_NEAR(0.3, 0.7, 0.5);
    ASSERT_NEAR(0.1 + 0.2, 0.3, 1e-15);
    ASSERT_NEAR(0.5f, 0.5, 0);        /* tol 0: bit-exact values */
    ASSERT_NEAR(INFINITY, INFINITY, 0);
    EXPECT_FAIL(gt_03_07, "ASSERT_GT(0.3, 0.7) failed: 0.29999999999999999 vs 0.69999999999999996");
    EXPECT_FAIL(near_03_07, "0.29999999999999999 vs 0.69999999999999996");
    EXPECT_FAIL(near_nan, "nan vs nan");
    EXPECT_FAIL(le_nan, "nan vs 1");
    EXPECT_FAIL(lt_float_int, "2.5 vs 2");
    EXPECT_FAIL(near_int_tol, "10 vs 13 (differ by 3, tol 2)");
}

/* ---- integers compare by value, whatever their signedness ---- */

static void eq_m1_uintmax(void) { ASSERT_EQ(-1, UINT_MAX); }
static void eq_u64max_m1(void)  { ASSERT_EQ(UINT64_MAX, -1); }
static void gt_m1_0u(void)      { ASSERT_GT(-1, 0u); }
static void ne_same(void)       { ASSERT_NE((short)-5, -5LL); }
static void eq_big(void)        { ASSERT_EQ((uint64_t)1 << 40, 0); }
static void lt_i64min(void)     { ASSERT_LT(INT64_MAX, INT64_MIN); }

FST_TEST(integers_compare_by_value)
{
    ASSERT_LT(-1, 1u);                /* C's conversions make this false */
    ASSERT_GT(UINT64_MAX, 0);         /* (long long) made it -1 > 0 */
    ASSERT_NE(-1, UINT_MAX);
    ASSERT_EQ((unsigned char)200, 200);
    ASSERT_EQ('a', 97);
    ASSERT_EQ(true, 1);
    ASSERT_EQ(FST_OK, 0);
    ASSERT_GE(INT64_MAX, (uint64_t)INT64_MAX);
    EXPECT_FAIL(eq_m1_uintmax, "ASSERT_EQ(-1, UINT_MAX) failed: -1 vs 4294967295");
    EXPECT_FAIL(eq_u64max_m1, "18446744073709551615 vs -1");
    EXPECT_FAIL(gt_m1_0u, "-1 vs 0");
    EXPECT_FAIL(ne_same, "-5 vs -5");
    EXPECT_FAIL(eq_big, "1099511627776 vs 0");
    EXPECT_FAIL(lt_i64min, "9223372036854775807 vs -9223372036854775808");
}

/* ---- pointers compare as addresses ---- */

static int arr[2];
static void eq_ptrs(void)   { ASSERT_EQ(&arr[0], &arr[1]); }
static void eq_null(void)   { ASSERT_EQ((const char *)"x", NULL); }

FST_TEST(pointers_compare_as_addresses)
{
    const int *p = arr;
    ASSERT_EQ(p, &arr[0]);
    ASSERT_LT(&arr[0], &arr[1]);
    ASSERT_NE(p, NULL);
    EXPECT_FAIL(eq_ptrs, "failed: 0x");
    EXPECT_FAIL(eq_null, "vs (nil)");
}

/* ---- each operand is evaluated once ---- */

FST_TEST(operands_evaluated_once)
{
    int i = 0, j = 10;
    ASSERT_EQ(i++, 0);
    ASSERT_LT(j++, 11);
    ASSERT_NEAR(i++ * 1.0, 1.0, 0);
    ASSERT_EQ(i, 2);
    ASSERT_EQ(j, 11);
}

/* ---- cleanups run whichever tests were picked ---- */

/* Writes "cleaned" to $FST_HARNESS_MARK when set (by the test below). */
FST_TEST_CLEANUP(write_mark)
{
    const char *mark = getenv("FST_HARNESS_MARK");
    if (!mark) return;
    FILE *f = fopen(mark, "w");
    ASSERT_TRUE(f != NULL);
    fputs("cleaned", f);
    ASSERT_EQ(fclose(f), 0);
}

/* Run this program with args, FST_HARNESS_MARK=mark: its exit status. */
static int run_self(const char *mark, char *const args[])
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        setenv("FST_HARNESS_MARK", mark, 1);
        execv("/proc/self/exe", args);
        _exit(127);
    }
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) != pid) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

FST_TEST(cleanup_runs_whichever_tests_are_picked)
{
    char dir[] = "/tmp/fst-test-harness-XXXXXX", mark[64];
    ASSERT_TRUE(mkdtemp(dir) != NULL);
    snprintf(mark, sizeof mark, "%s/mark", dir);
    char *one[] = { "test_harness", "operands_evaluated_once", NULL };
    char *none[] = { "test_harness", "no_such_test", NULL };
    char *const *cases[] = { one, none };
    for (int i = 0; i < 2; i++) {
        unlink(mark);
        ASSERT_EQ(run_self(mark, cases[i]), 0);
        char buf[16] = "";
        FILE *f = fopen(mark, "r");
        ASSERT_TRUE(f != NULL);
        ASSERT_TRUE(fgets(buf, sizeof buf, f) != NULL);
        fclose(f);
        ASSERT_STREQ(buf, "cleaned");
    }
    unlink(mark);
    rmdir(dir);
    /* a cleanup that fails makes the program fail, its tests passed or not */
    ASSERT_EQ(run_self("/nonexistent-dir/mark", one), 1);
}
