/* tools/cmdutil.h : helpers shared by the featstore subcommands; not public.
 *
 * Option values, usage errors, a progress bar, Ctrl-C, human-readable sizes
 * and JSON strings. Everything prints to stderr except where said; nothing
 * here exits.
 *
 *   static const char usage[] = "usage: featstore import SRC.h5 STORE [options]\n";
 *   ...
 *   case 'k': if (fst__cli_u32(cmd, "--keypoints", optarg, 0, 1u << 24, &k))
 *                 return fst__cli_usage(cmd, usage, NULL);
 */
#ifndef FST_TOOLS_CMDUTIL_H
#define FST_TOOLS_CMDUTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "fst_base.h"

#if defined(__GNUC__)
#  define FST_CLI_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#  define FST_CLI_PRINTF(a, b)
#endif

/* ---- usage errors (exit status 2) ---- */

/* fst__cli_usage() :
 * Print "featstore CMD: <message>" (if fmt is not NULL), then `usage` and a
 * pointer to --help, to stderr. Returns 2, the exit status of a usage error:
 *   return fst__cli_usage("import", usage, "unknown option '%s'", arg); */
int fst__cli_usage(const char *cmd, const char *usage, const char *fmt, ...)
    FST_CLI_PRINTF(3, 4);

/* fst__cli_getopt_error() :
 * The usage error for what getopt_long() returned ('?' or ':'), given the
 * argv it parsed (opterr must be 0 so getopt prints nothing itself).
 * Returns 2. */
int fst__cli_getopt_error(const char *cmd, const char *usage, int ret,
                          char **argv);

/* ---- option values ----
 * Each parses `arg` (the value of option `opt`), prints
 * "featstore CMD: --opt: <what is wrong>" on stderr if it is bad, and
 * returns 0 if good (*out set), -1 if bad (*out untouched). */
int fst__cli_u32(const char *cmd, const char *opt, const char *arg,
                 uint32_t min, uint32_t max, uint32_t *out);
int fst__cli_u64(const char *cmd, const char *opt, const char *arg,
                 uint64_t min, uint64_t max, uint64_t *out);
int fst__cli_float(const char *cmd, const char *opt, const char *arg,
                   double min, double max, float *out);
/* "float16" / "f16" / "half" or "float32" / "f32" / "float". */
int fst__cli_dtype(const char *cmd, const char *opt, const char *arg,
                   fst_dtype *out);

/* ---- Ctrl-C ---- */

/* fst__cli_catch_signals() :
 * From now on SIGINT and SIGTERM only set a flag that long work polls
 * through its progress callback (fst__bar_cb), so that it stops cleanly and
 * removes its temporary files. A second SIGINT kills at once. */
void fst__cli_catch_signals(void);

/* fst__cli_interrupted() : the signal caught, or 0. Async-signal-safe. */
int fst__cli_interrupted(void);

/* ---- progress bar ---- */

/* One line on stderr, redrawn in place:
 *   [#########           ] 1234/5000 images  312 MB/s  ETA 0:12
 * drawn only if stderr is a terminal and the command was not asked to be
 * quiet, at most 10 times a second. */
typedef struct fst__bar {
    const char *unit;          /* "images", "pairs"... */
    bool        enabled;
    bool        drawn;         /* a bar line is on screen */
    double      start, last;   /* monotonic seconds */
    uint64_t    done, total, bytes;
} fst__bar;

/* fst__bar_init() : start timing; draws nothing yet. */
void fst__bar_init(fst__bar *b, const char *unit, bool quiet);

/* fst__bar_update() : record progress and redraw if due (always when
 * done == total). `bytes` (0: no rate shown) is the work's byte count. */
void fst__bar_update(fst__bar *b, uint64_t done, uint64_t total, uint64_t bytes);

/* fst__bar_cb() : fst_progress_cb for a fst__bar passed as ctx; returns
 * non-zero (stop) once a signal was caught. */
int fst__bar_cb(uint64_t done, uint64_t total, uint64_t bytes, void *ctx);

/* fst__bar_clear() : erase the bar line, so that what follows starts on a
 * clean line. Call before printing anything else to stderr or stdout. */
void fst__bar_clear(fst__bar *b);

/* fst__bar_elapsed() : seconds since fst__bar_init(). */
double fst__bar_elapsed(const fst__bar *b);

/* ---- formatting ---- */

#define FST__HUMAN_LEN 24

/* fst__human_bytes() : "812 B", "6.3 kB", "312 MB", "4.19 GB" (decimal
 * units, 3 significant digits). Returns buf (>= FST__HUMAN_LEN bytes). */
const char *fst__human_bytes(uint64_t bytes, char *buf);

/* fst__human_duration() : "0:07", "12:34", "1:02:03" (h:mm:ss), or "?"
 * for a negative or non-finite value. Returns buf (>= FST__HUMAN_LEN). */
const char *fst__human_duration(double seconds, char *buf);

/* fst__human_time() : seconds since the epoch as "2024-05-01 12:00:00 UTC",
 * or "unknown" for 0. Returns buf (>= 32 bytes). */
const char *fst__human_time(int64_t t, char *buf);

/* fst__json_str() : write s as a JSON string literal (quotes, escapes) to f.
 * Bytes >= 0x80 pass through unchanged. */
void fst__json_str(FILE *f, const char *s);

#endif
