/* bench.h : timing helpers for benchmarks. Every case prints one line:
 *   <case> median=<x> p90=<y> <unit> [ratio=<r> vs <baseline>] [key=value...]
 * Ratios compare with a baseline measured in the same run on the same data,
 * because these machines are shared and noisy. */
#ifndef FST_BENCH_H
#define FST_BENCH_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline double bench_now(void)   /* seconds, monotonic */
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* q-quantile (0..1) of n samples; sorts `v` in place. n > 0. */
static inline double bench_quantile(double *v, size_t n, double q)
{
    qsort(v, n, sizeof *v, bench_cmp_double);
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

static inline double bench_median(double *v, size_t n) { return bench_quantile(v, n, 0.5); }
static inline double bench_p90(double *v, size_t n)    { return bench_quantile(v, n, 0.9); }

#endif
