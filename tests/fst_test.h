/* fst_test.h : a small test harness speaking TAP.
 *
 *   FST_TEST(name) { ASSERT_OK(f()); ASSERT_EQ(a, b); ASSERT_NEAR(x, y, 1e-6); }
 *
 * Each test program runs every FST_TEST in the order they appear (or only
 * those named on the command line) and prints one TAP line per test. A test
 * stops at its first failing ASSERT_*, which prints both sides in their own
 * type (comparisons are typed: see ASSERT_EQ below). The program
 * exits 0 if all passed, 1 if any failed, and 77 (meson's SKIP) if every test
 * that ran called FST_SKIP(). FST_TEST_CLEANUP functions run after the tests,
 * whichever ran. Include it in exactly one .c file per program.
 */
#ifndef FST_TEST_H
#define FST_TEST_H

#include <inttypes.h>
#include <math.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>
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

/* FST_TEST_CLEANUP(name) { ... } : a function main runs once after the
 * tests, whichever were selected (none included), in reverse order of
 * appearance: for removing what the tests left (a temporary directory).
 * ASSERT_* work in it; a failing cleanup makes the program exit 1. */
#define FST_TEST_CLEANUP_MAX 16
static fst_test_case fst_test_cleanups[FST_TEST_CLEANUP_MAX];
static int fst_test_ncleanups;

static inline void fst_test_register_cleanup(const char *name, fst_test_fn fn)
{
    if (fst_test_ncleanups >= FST_TEST_CLEANUP_MAX) {
        fprintf(stderr, "fst_test.h: more than %d cleanups\n", FST_TEST_CLEANUP_MAX);
        abort();
    }
    fst_test_cleanups[fst_test_ncleanups].name = name;
    fst_test_cleanups[fst_test_ncleanups].fn = fn;
    fst_test_ncleanups++;
}

#define FST_TEST_CLEANUP(name)                                           \
    static void fst_test_cleanup_##name(void);                           \
    __attribute__((constructor)) static void fst_test_creg_##name(void)  \
    { fst_test_register_cleanup(#name, fst_test_cleanup_##name); }       \
    static void fst_test_cleanup_##name(void)

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

/* ---- typed comparisons ----
 * ASSERT_EQ and friends classify each operand by its type (C11 _Generic):
 * a signed integer, an unsigned integer, a floating value or a pointer.
 * Integers compare by value whatever their signedness (-1 < 1u holds, and
 * -1 == UINT_MAX does not); floats compare as floats; pointers as
 * addresses. Both sides print in their own type. Comparing a pointer with
 * a number, and ASSERT_EQ / ASSERT_NE on a floating value, do not compile:
 * floating equality is meant with a tolerance, ASSERT_NEAR(a, b, tol)
 * (tol 0 for bit-exact values). */
enum { FST_TV_S = 1, FST_TV_U = 2, FST_TV_F = 3, FST_TV_P = 4 };
typedef struct fst_tv {
    int kind;
    int fprec;                      /* digits that print a float exactly */
    intmax_t i;
    uintmax_t u;
    long double f;
    const volatile void *p;
} fst_tv;

static inline fst_tv fst_tv_s(intmax_t v)  { fst_tv t = {FST_TV_S, 0, v, 0, 0, 0}; return t; }
static inline fst_tv fst_tv_u(uintmax_t v) { fst_tv t = {FST_TV_U, 0, 0, v, 0, 0}; return t; }
static inline fst_tv fst_tv_c(char v)
{ return (char)-1 < 0 ? fst_tv_s((intmax_t)v) : fst_tv_u((uintmax_t)(unsigned char)v); }
static inline fst_tv fst_tv_f(float v)       { fst_tv t = {FST_TV_F, 9, 0, 0, v, 0}; return t; }
static inline fst_tv fst_tv_d(double v)      { fst_tv t = {FST_TV_F, 17, 0, 0, v, 0}; return t; }
static inline fst_tv fst_tv_ld(long double v){ fst_tv t = {FST_TV_F, 21, 0, 0, v, 0}; return t; }
static inline fst_tv fst_tv_p(const volatile void *v) { fst_tv t = {FST_TV_P, 0, 0, 0, 0, v}; return t; }

#define FST_TV_(x) _Generic((x),                                         \
    _Bool: fst_tv_u, char: fst_tv_c,                                     \
    signed char: fst_tv_s, short: fst_tv_s, int: fst_tv_s,               \
    long: fst_tv_s, long long: fst_tv_s,                                 \
    unsigned char: fst_tv_u, unsigned short: fst_tv_u,                   \
    unsigned int: fst_tv_u, unsigned long: fst_tv_u,                     \
    unsigned long long: fst_tv_u,                                        \
    float: fst_tv_f, double: fst_tv_d, long double: fst_tv_ld,           \
    default: fst_tv_p)(x)

/* Integer constant expressions for the compile-time checks. */
#define FST_TV_IS_FLOAT_(x) _Generic((x), float: 1, double: 1,           \
    long double: 1, default: 0)
#define FST_TV_IS_NUM_(x) _Generic((x), _Bool: 1, char: 1,               \
    signed char: 1, short: 1, int: 1, long: 1, long long: 1,             \
    unsigned char: 1, unsigned short: 1, unsigned int: 1,                \
    unsigned long: 1, unsigned long long: 1,                             \
    float: 1, double: 1, long double: 1, default: 0)

/* -1, 0 or 1 as a is below, equal to or above b; 2 if unordered (a NaN). */
static inline int fst_tv_cmp(fst_tv a, fst_tv b)
{
    if (a.kind == FST_TV_F || b.kind == FST_TV_F) {
        long double x = a.kind == FST_TV_F ? a.f : a.kind == FST_TV_S ? (long double)a.i : (long double)a.u;
        long double y = b.kind == FST_TV_F ? b.f : b.kind == FST_TV_S ? (long double)b.i : (long double)b.u;
        return x < y ? -1 : x > y ? 1 : x == y ? 0 : 2;
    }
    if (a.kind == FST_TV_P || b.kind == FST_TV_P) {
        uintptr_t x = (uintptr_t)a.p, y = (uintptr_t)b.p;
        return x < y ? -1 : x > y;
    }
    if (a.kind == FST_TV_S && b.kind == FST_TV_S)
        return a.i < b.i ? -1 : a.i > b.i;
    if (a.kind == FST_TV_S && a.i < 0) return -1;     /* negative < any unsigned */
    if (b.kind == FST_TV_S && b.i < 0) return 1;
    uintmax_t x = a.kind == FST_TV_S ? (uintmax_t)a.i : a.u;
    uintmax_t y = b.kind == FST_TV_S ? (uintmax_t)b.i : b.u;
    return x < y ? -1 : x > y;
}

static inline const char *fst_tv_str(fst_tv t, char *buf, size_t n)
{
    switch (t.kind) {
    case FST_TV_S: snprintf(buf, n, "%jd", t.i); break;
    case FST_TV_U: snprintf(buf, n, "%ju", t.u); break;
    case FST_TV_F: snprintf(buf, n, "%.*Lg", t.fprec, t.f); break;
    default:       snprintf(buf, n, "%p", (const void *)t.p); break;
    }
    return buf;
}

static inline bool fst_tv_holds(int c, int op)
{
    switch (op) {
    case 0: return c == 0;                  /* EQ */
    case 1: return c != 0;                  /* NE (NaN is unequal) */
    case 2: return c == -1;                 /* LT */
    case 3: return c == -1 || c == 0;       /* LE */
    case 4: return c == 1;                  /* GT */
    default: return c == 1 || c == 0;       /* GE */
    }
}

/* sa, sb: the operands' text, taken before macro expansion. */
#define ASSERT_CMP_(a, b, op, opname, sa, sb) do {                       \
    _Static_assert(FST_TV_IS_NUM_(a) == FST_TV_IS_NUM_(b),               \
        "ASSERT_" opname ": one side is a pointer, the other a number"); \
    fst_tv a_ = FST_TV_(a), b_ = FST_TV_(b);                             \
    if (!fst_tv_holds(fst_tv_cmp(a_, b_), op)) {                         \
        char as_[64], bs_[64];                                           \
        FST_TEST_FAIL_("ASSERT_%s(%s, %s) failed: %s vs %s", opname,     \
                       sa, sb, fst_tv_str(a_, as_, sizeof as_),          \
                       fst_tv_str(b_, bs_, sizeof bs_));                 \
    } } while (0)
#define ASSERT_NOFLOAT_(a, b, opname)                                    \
    _Static_assert(!FST_TV_IS_FLOAT_(a) && !FST_TV_IS_FLOAT_(b),         \
        "ASSERT_" opname " on a floating value: use ASSERT_NEAR(a, b, tol)")
#define ASSERT_EQ(a, b) do { ASSERT_NOFLOAT_(a, b, "EQ");                \
    ASSERT_CMP_(a, b, 0, "EQ", #a, #b); } while (0)
#define ASSERT_NE(a, b) do { ASSERT_NOFLOAT_(a, b, "NE");                \
    ASSERT_CMP_(a, b, 1, "NE", #a, #b); } while (0)
#define ASSERT_LT(a, b) ASSERT_CMP_(a, b, 2, "LT", #a, #b)
#define ASSERT_LE(a, b) ASSERT_CMP_(a, b, 3, "LE", #a, #b)
#define ASSERT_GT(a, b) ASSERT_CMP_(a, b, 4, "GT", #a, #b)
#define ASSERT_GE(a, b) ASSERT_CMP_(a, b, 5, "GE", #a, #b)

/* |a - b| <= tol, computed in long double; equal infinities are near, a
 * NaN on either side fails. */
#define ASSERT_NEAR(a, b, tol) do {                                      \
    _Static_assert(FST_TV_IS_NUM_(a) && FST_TV_IS_NUM_(b) &&             \
                   FST_TV_IS_NUM_(tol), "ASSERT_NEAR takes numbers");    \
    fst_tv a_ = FST_TV_(a), b_ = FST_TV_(b), t_ = FST_TV_(tol);          \
    long double x_ = a_.kind == FST_TV_F ? a_.f : a_.kind == FST_TV_S ?  \
        (long double)a_.i : (long double)a_.u;                           \
    long double y_ = b_.kind == FST_TV_F ? b_.f : b_.kind == FST_TV_S ?  \
        (long double)b_.i : (long double)b_.u;                           \
    long double d_ = x_ > y_ ? x_ - y_ : y_ - x_;                        \
    long double tl_ = t_.kind == FST_TV_F ? t_.f : t_.kind == FST_TV_S ? \
        (long double)t_.i : (long double)t_.u;                           \
    if (!(x_ == y_ || d_ <= tl_)) {                                                  \
        char as_[64], bs_[64], ts_[64];                                  \
        FST_TEST_FAIL_("ASSERT_NEAR(%s, %s, %s) failed: %s vs %s "       \
                       "(differ by %.3Lg, tol %s)", #a, #b, #tol,        \
                       fst_tv_str(a_, as_, sizeof as_),                  \
                       fst_tv_str(b_, bs_, sizeof bs_), d_,              \
                       fst_tv_str(t_, ts_, sizeof ts_));                 \
    } } while (0)

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
    for (int i = fst_test_ncleanups - 1; i >= 0; i--)
        if (fst_test_run_one(fst_test_cleanups[i].fn) == 1) {
            failed++;
            printf("# cleanup %s failed\n", fst_test_cleanups[i].name);
        }
    if (failed) return 1;
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
