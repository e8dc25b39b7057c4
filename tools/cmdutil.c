/* tools/cmdutil.c : helpers shared by the featstore subcommands. */
#include "cmdutil.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* ---- usage errors ---- */

int fst__cli_usage(const char *cmd, const char *usage, const char *fmt, ...)
{
    if (fmt) {
        fprintf(stderr, "featstore %s: ", cmd);
        va_list ap;
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
    }
    fputs(usage, stderr);
    fprintf(stderr, "'featstore %s --help' describes the options.\n", cmd);
    return 2;
}

int fst__cli_getopt_error(const char *cmd, const char *usage, int ret, char **argv)
{
    extern int optind, optopt;
    /* getopt_long has already moved optind past the offending argument. */
    const char *arg = optind > 0 ? argv[optind - 1] : "?";
    if (ret == ':')
        return fst__cli_usage(cmd, usage, "option '%s' needs a value", arg);
    if (optopt && arg[0] == '-' && arg[1] != '-')
        return fst__cli_usage(cmd, usage, "unknown option '-%c'", optopt);
    return fst__cli_usage(cmd, usage, "unknown option '%s'", arg);
}

/* ---- option values ---- */

static int bad_value(const char *cmd, const char *opt, const char *arg, const char *why)
{
    fprintf(stderr, "featstore %s: %s: '%s' %s\n", cmd, opt, arg, why);
    return -1;
}

int fst__cli_u64(const char *cmd, const char *opt, const char *arg,
                 uint64_t min, uint64_t max, uint64_t *out)
{
    if (!arg || !arg[0] || arg[0] == '-' || arg[0] == '+')
        return bad_value(cmd, opt, arg ? arg : "", "is not a non-negative integer");
    errno = 0;
    char *end;
    unsigned long long v = strtoull(arg, &end, 0);
    if (*end || end == arg)
        return bad_value(cmd, opt, arg, "is not a non-negative integer");
    if (errno == ERANGE || v < min || v > max) {
        char why[96];
        snprintf(why, sizeof why, "is out of range (%" PRIu64 "..%" PRIu64 ")", min, max);
        return bad_value(cmd, opt, arg, why);
    }
    *out = v;
    return 0;
}

int fst__cli_u32(const char *cmd, const char *opt, const char *arg,
                 uint32_t min, uint32_t max, uint32_t *out)
{
    uint64_t v;
    if (fst__cli_u64(cmd, opt, arg, min, max, &v))
        return -1;
    *out = (uint32_t)v;
    return 0;
}

int fst__cli_float(const char *cmd, const char *opt, const char *arg,
                   double min, double max, float *out)
{
    if (!arg || !arg[0])
        return bad_value(cmd, opt, "", "is not a number");
    errno = 0;
    char *end;
    double v = strtod(arg, &end);
    if (*end || end == arg || !isfinite(v))
        return bad_value(cmd, opt, arg, "is not a number");
    if (v < min || v > max) {
        char why[96];
        snprintf(why, sizeof why, "is out of range (%g..%g)", min, max);
        return bad_value(cmd, opt, arg, why);
    }
    *out = (float)v;
    return 0;
}

int fst__cli_dtype(const char *cmd, const char *opt, const char *arg, fst_dtype *out)
{
    if (arg && (!strcasecmp(arg, "float16") || !strcasecmp(arg, "f16") ||
                !strcasecmp(arg, "half"))) {
        *out = FST_DTYPE_F16;
        return 0;
    }
    if (arg && (!strcasecmp(arg, "float32") || !strcasecmp(arg, "f32") ||
                !strcasecmp(arg, "float"))) {
        *out = FST_DTYPE_F32;
        return 0;
    }
    return bad_value(cmd, opt, arg ? arg : "", "is not a dtype (float16 or float32)");
}

/* ---- Ctrl-C ---- */

static volatile sig_atomic_t caught;

static void on_signal(int sig)
{
    if (caught && sig == SIGINT) {
        /* Asked twice: stop now; the next run removes what is left. */
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    caught = sig;
}

void fst__cli_catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

int fst__cli_interrupted(void)
{
    return caught;
}

/* ---- progress bar ---- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void fst__bar_init(fst__bar *b, const char *unit, bool quiet)
{
    memset(b, 0, sizeof *b);
    b->unit = unit;
    b->enabled = !quiet && isatty(STDERR_FILENO);
    b->start = now_s();
    b->last = 0;
}

double fst__bar_elapsed(const fst__bar *b)
{
    return now_s() - b->start;
}

static void draw(fst__bar *b, double t)
{
    enum { WIDTH = 30 };
    char bar[WIDTH + 1];
    double frac = b->total ? (double)b->done / (double)b->total : 0.0;
    if (frac > 1.0)
        frac = 1.0;
    int full = (int)(frac * WIDTH + 0.5);
    for (int i = 0; i < WIDTH; i++)
        bar[i] = i < full ? '#' : ' ';
    bar[WIDTH] = '\0';

    double el = t - b->start;
    char rate[48] = "", eta[48] = "", h[FST__HUMAN_LEN];
    if (b->bytes && el > 0.05)
        snprintf(rate, sizeof rate, "  %s/s", fst__human_bytes((uint64_t)(b->bytes / el), h));
    if (b->done && b->done < b->total && el > 0.05)
        snprintf(eta, sizeof eta, "  ETA %s",
                 fst__human_duration(el / (double)b->done * (double)(b->total - b->done), h));
    else if (b->done >= b->total && b->total)
        snprintf(eta, sizeof eta, "  %s", fst__human_duration(el, h));
    /* \r to the line start, \033[K to clear what a longer line left. */
    fprintf(stderr, "\r[%s] %" PRIu64 "/%" PRIu64 " %s%s%s\033[K", bar, b->done, b->total,
            b->unit, rate, eta);
    fflush(stderr);
    b->drawn = true;
    b->last = t;
}

void fst__bar_update(fst__bar *b, uint64_t done, uint64_t total, uint64_t bytes)
{
    b->done = done;
    b->total = total;
    b->bytes = bytes;
    if (!b->enabled)
        return;
    double t = now_s();
    if (t - b->last >= 0.1 || done == total)
        draw(b, t);
}

int fst__bar_cb(uint64_t done, uint64_t total, uint64_t bytes, void *ctx)
{
    fst__bar_update(ctx, done, total, bytes);
    return fst__cli_interrupted();
}

void fst__bar_clear(fst__bar *b)
{
    if (b->drawn) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
        b->drawn = false;
    }
}

/* ---- formatting ---- */

const char *fst__human_bytes(uint64_t bytes, char *buf)
{
    static const char *units[] = {"B", "kB", "MB", "GB", "TB", "PB", "EB"};
    if (bytes < 1000) {
        snprintf(buf, FST__HUMAN_LEN, "%" PRIu64 " B", bytes);
        return buf;
    }
    double v = (double)bytes;
    int u = 0;
    while (v >= 999.5 && u < 6) {
        v /= 1000.0;
        u++;
    }
    snprintf(buf, FST__HUMAN_LEN, v < 9.995 ? "%.2f %s" : v < 99.95 ? "%.1f %s" : "%.0f %s",
             v, units[u]);
    return buf;
}

const char *fst__human_duration(double s, char *buf)
{
    if (!isfinite(s) || s < 0 || s > 1e9) {
        snprintf(buf, FST__HUMAN_LEN, "?");
        return buf;
    }
    uint64_t t = (uint64_t)(s + 0.5);
    uint64_t h = t / 3600, m = t / 60 % 60, sec = t % 60;
    if (h)
        snprintf(buf, FST__HUMAN_LEN, "%" PRIu64 ":%02" PRIu64 ":%02" PRIu64, h, m, sec);
    else
        snprintf(buf, FST__HUMAN_LEN, "%" PRIu64 ":%02" PRIu64, m, sec);
    return buf;
}

const char *fst__human_time(int64_t t, char *buf)
{
    struct tm tm;
    time_t tt = (time_t)t;
    if (t == 0 || !gmtime_r(&tt, &tm)) {
        snprintf(buf, 32, "unknown");
        return buf;
    }
    strftime(buf, 32, "%Y-%m-%d %H:%M:%S UTC", &tm);
    return buf;
}

void fst__json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        switch (*p) {
        case '"':  fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (*p < 0x20)
                fprintf(f, "\\u%04x", *p);
            else
                fputc(*p, f);
        }
    }
    fputc('"', f);
}
