/* fst_test.h : a small test harness speaking TAP.
 *
 *   FST_TEST(name) { ASSERT_OK(f()); ASSERT_EQ(a, b); }
 *
 * Each test program runs every FST_TEST in the order they appear (or only
 * those named on the command line) and prints one TAP line per test. A test
 * stops at its first failing ASSERT_*, which prints both sides. The program
 * exits 0 if all passed, 1 if any failed, and 77 (meson's SKIP) if every test
 * that ran called FST_SKIP(). Include it in exactly one .c file per program.
 */
#ifndef FST_TEST_H
#define FST_TEST_H

#include <inttypes.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fst_base.h"

typedef void (*fst_test_fn)(void);
typedef struct fst_test_case { const char *name; fst_test_fn fn; } fst_test_case;

#define FST_TEST_MAX 512
static fst_test_case fst_test_cases[FST_TEST_MAX];
static int fst_test_ncases;
static jmp_buf fst_test_jmp;
static int fst_test_state;          /* 0 running, 1 failed, 2 skipped */
static char fst_test_skip_why[256];

static inline void fst_test_register(const char *name, fst_test_fn fn)
{
    if (fst_test_ncases >= FST_TEST_MAX) {
        fprintf(stderr, "fst_test.h: more than %d tests\n", FST_TEST_MAX);
        abort();
    }
    fst_test_cases[fst_test_ncases].name = name;
    fst_test_cases[fst_test_ncases].fn = fn;
    fst_test_ncases++;
}

#define FST_TEST(name)                                                   \
    static void fst_test_##name(void);                                   \
    __attribute__((constructor)) static void fst_test_reg_##name(void)   \
    { fst_test_register(#name, fst_test_##name); }                       \
    static void fst_test_##name(void)

#define FST_TEST_FAIL_(...) do {                                         \
    printf("# %s:%d: ", __FILE__, __LINE__);                             \
    printf(__VA_ARGS__);                                                 \
    printf("\n");                                                        \
    fst_test_state = 1;                                                  \
    longjmp(fst_test_jmp, 1);                                            \
} while (0)

/* Mark the current test skipped (reason shown) and leave it. */
#define FST_SKIP(...) do {                                               \
    snprintf(fst_test_skip_why, sizeof fst_test_skip_why, __VA_ARGS__);  \
    fst_test_state = 2;                                                  \
    longjmp(fst_test_jmp, 1);                                            \
} while (0)

#define ASSERT_TRUE(c) do { if (!(c))                                    \
    FST_TEST_FAIL_("ASSERT_TRUE(%s) failed", #c); } while (0)

#define ASSERT_OK(e) do { fst_status s_ = (e); if (s_ != FST_OK)         \
    FST_TEST_FAIL_("%s returned %s (%s): %s", #e, fst_status_name(s_),  \
                   fst_strerror(s_), fst_errdetail()); } while (0)

#define ASSERT_STATUS(e, want) do { fst_status s_ = (e);                 \
    fst_status w_ = (want); if (s_ != w_)                                \
    FST_TEST_FAIL_("%s returned %s, expected %s (detail: %s)", #e,      \
                   fst_status_name(s_), fst_status_name(w_),             \
                   fst_errdetail()); } while (0)

#define ASSERT_CMP_(a, b, op) do {                                       \
    long long a_ = (long long)(a), b_ = (long long)(b);                  \
    if (!(a_ op b_))                                                     \
        FST_TEST_FAIL_("%s %s %s failed: %lld vs %lld", #a, #op, #b,     \
                       a_, b_); } while (0)
#define ASSERT_EQ(a, b) ASSERT_CMP_(a, b, ==)
#define ASSERT_NE(a, b) ASSERT_CMP_(a, b, !=)
#define ASSERT_LT(a, b) ASSERT_CMP_(a, b, <)
#define ASSERT_LE(a, b) ASSERT_CMP_(a, b, <=)
#define ASSERT_GT(a, b) ASSERT_CMP_(a, b, >)
#define ASSERT_GE(a, b) ASSERT_CMP_(a, b, >=)

#define ASSERT_NEAR(a, b, tol) do {                                      \
    double a_ = (double)(a), b_ = (double)(b), t_ = (double)(tol);       \
    if (!(fabs(a_ - b_) <= t_))                                          \
        FST_TEST_FAIL_("%s ~ %s failed: %.9g vs %.9g (tol %.3g)",        \
                       #a, #b, a_, b_, t_); } while (0)

#define ASSERT_STREQ(a, b) do {                                          \
    const char *a_ = (a), *b_ = (b);                                     \
    if (!a_ || !b_ || strcmp(a_, b_) != 0)                               \
        FST_TEST_FAIL_("%s == %s failed: \"%s\" vs \"%s\"", #a, #b,      \
                       a_ ? a_ : "(null)", b_ ? b_ : "(null)"); } while (0)

/* Substring check, for error messages. */
#define ASSERT_CONTAINS(hay, needle) do {                                \
    const char *h_ = (hay), *n_ = (needle);                              \
    if (!h_ || !strstr(h_, n_))                                          \
        FST_TEST_FAIL_("\"%s\" does not contain \"%s\"",                 \
                       h_ ? h_ : "(null)", n_); } while (0)

#define ASSERT_MEMEQ(a, b, n) do {                                       \
    const unsigned char *a_ = (const unsigned char *)(a);                \
    const unsigned char *b_ = (const unsigned char *)(b);                \
    size_t n_ = (n);                                                     \
    for (size_t i_ = 0; i_ < n_; i_++) if (a_[i_] != b_[i_])             \
        FST_TEST_FAIL_("%s and %s differ at byte %zu of %zu: %u vs %u",  \
                       #a, #b, i_, n_, a_[i_], b_[i_]); } while (0)

/* setjmp lives in its own frame so main's counters are never clobbered. */
static int fst_test_run_one(fst_test_fn fn)
{
    fst_test_state = 0;
    fst_errclear();
    if (setjmp(fst_test_jmp) == 0)
        fn();
    return fst_test_state;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int run = 0, failed = 0, skipped = 0;
    int selected[FST_TEST_MAX];
    for (int i = 0; i < fst_test_ncases; i++) {
        selected[i] = argc <= 1;
        for (int a = 1; a < argc; a++)
            if (strcmp(argv[a], fst_test_cases[i].name) == 0) selected[i] = 1;
        run += selected[i];
    }
    printf("1..%d\n", run);
    int k = 0;
    for (int i = 0; i < fst_test_ncases; i++) {
        if (!selected[i]) continue;
        k++;
        int state = fst_test_run_one(fst_test_cases[i].fn);
        if (state == 1) {
            failed++;
            printf("not ok %d %s\n", k, fst_test_cases[i].name);
        } else if (state == 2) {
            skipped++;
            printf("ok %d %s # SKIP %s\n", k, fst_test_cases[i].name,
                   fst_test_skip_why);
        } else {
            printf("ok %d %s\n", k, fst_test_cases[i].name);
        }
    }
    if (run > 0 && skipped == run) return 77;
    return failed ? 1 : 0;
}

/* FST_TEST_ASAN: defined in AddressSanitizer builds, where a test that
 * needs an address-space limit (RLIMIT_AS) cannot run: ASan reserves
 * terabytes of shadow memory. */
#if defined(__SANITIZE_ADDRESS__)
#  define FST_TEST_ASAN 1
#elif defined(__has_feature)
#  if __has_feature(address_sanitizer)
#    define FST_TEST_ASAN 1
#  endif
#endif

/* This process's virtual size (VmSize, bytes), 0 if unknown: the base for
 * an RLIMIT_AS that leaves a known amount of address space. */
static inline uint64_t fst_test_vm_size(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    unsigned long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmSize: %lu kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return (uint64_t)kb << 10;
}

#endif
