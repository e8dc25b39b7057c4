/* cmd_merge.c : `featstore merge` (the parts of a sharded match run into
 * one matches.h5, fst_matchfile_merge) and the shard a `featstore match`
 * runs (--shard K/N, or Slurm's environment). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cmd.h"
#include "cmdutil.h"
#include "fst_loader.h"

/* ---- the shard of a match run ---- */

static bool parse_u32(const char *s, uint32_t *out)
{
    char *end;
    if (!s || *s < '0' || *s > '9') return false;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v > UINT32_MAX) return false;
    *out = (uint32_t)v;
    return true;
}

int fst__shard_resolve(const char *arg, uint32_t *k, uint32_t *n, const char **source,
                       char *err, size_t errlen)
{
    *k = *n = 0;
    *source = NULL;
    err[0] = '\0';
    if (arg) {
        if (!strcmp(arg, "all")) return 0;
        const char *slash = strchr(arg, '/');
        char kb[16];
        if (!slash || (size_t)(slash - arg) >= sizeof kb) goto bad;
        memcpy(kb, arg, (size_t)(slash - arg));
        kb[slash - arg] = '\0';
        if (!parse_u32(kb, k) || !parse_u32(slash + 1, n) || *n == 0 || *n > 1000000 ||
            *k >= *n)
            goto bad;
        *source = "--shard";
        return 0;
    bad:
        *k = *n = 0;
        snprintf(err, errlen, "--shard '%s': expected K/N with 0 <= K < N (e.g. 0/4 ... 3/4), "
                 "or all", arg);
        return 2;
    }
    const char *id = getenv("SLURM_ARRAY_TASK_ID");
    if (id) {
        /* Array tasks: K counts from the first index (--array=0-3 and
         * --array=1-4 both give 0..3), N is the number of tasks. */
        const char *cnt = getenv("SLURM_ARRAY_TASK_COUNT"), *mn = getenv("SLURM_ARRAY_TASK_MIN"),
                   *mx = getenv("SLURM_ARRAY_TASK_MAX"), *st = getenv("SLURM_ARRAY_TASK_STEP");
        uint32_t i, lo = 0, hi = 0, c = 0, step = 1;
        if (!parse_u32(id, &i) || (mn && !parse_u32(mn, &lo)) || (mx && !parse_u32(mx, &hi)) ||
            (cnt && !parse_u32(cnt, &c)) || (st && !parse_u32(st, &step)) || !mn ||
            (!cnt && !mx) || step == 0 || i < lo) {
            snprintf(err, errlen, "Slurm array task %s: cannot tell the shard from "
                     "SLURM_ARRAY_TASK_ID/_MIN/_MAX/_COUNT; pass --shard K/N", id);
            return 1;
        }
        if (!cnt) c = (hi - lo) / step + 1;
        if (mx && (hi - lo) / step + 1 != c) {
            snprintf(err, errlen, "Slurm array task %s: the array's indices (%s-%s, %" PRIu32
                     " tasks) are not one evenly spaced range; pass --shard K/N", id, mn, mx, c);
            return 1;
        }
        if (c == 1) {
            snprintf(err, errlen, "Slurm array task %s is an array of one task (a resubmitted "
                     "task?): its shard cannot be told from the environment; pass --shard "
                     "K/N (or --shard all for the whole list)", id);
            return 1;
        }
        *k = (i - lo) / step;
        *n = c;
        *source = "SLURM_ARRAY_TASK_ID";
        return 0;
    }
    /* srun tasks: SLURM_STEP_NUM_TASKS is set for a job step only, not
     * in a batch script given --ntasks. */
    const char *pid = getenv("SLURM_PROCID"), *nt = getenv("SLURM_STEP_NUM_TASKS");
    uint32_t p, t;
    if (pid && nt && parse_u32(pid, &p) && parse_u32(nt, &t) && t > 1 && p < t) {
        *k = p;
        *n = t;
        *source = "SLURM_PROCID";
    }
    return 0;
}

/* ---- featstore merge ---- */

static const char usage_line[] = "usage: featstore merge OUT.h5 PART.h5... [--quiet] [--json]\n";

static const char usage_text[] =
    "usage: featstore merge OUT.h5 PART.h5... [--quiet] [--json]\n"
    "\n"
    "Join the parts of a sharded match run (`featstore match ... --shard K/N`, one\n"
    "file per shard) into OUT.h5: the matches.h5 one run over the whole pairs file\n"
    "writes. Refuses, writing nothing, parts of different runs (store, query, pairs\n"
    "list, settings), missing or duplicate shards, and parts whose run had failed\n"
    "pairs. OUT.h5 appears complete or not at all (temporary file and rename).\n"
    "\n"
    "options:\n"
    "  --quiet      no progress or summary (errors only)\n"
    "  --json       one JSON summary object on stdout\n"
    "  -h, --help   this text\n"
    "\n"
    "exit status: 0 merged; 1 error (nothing written); 2 usage.\n";

typedef struct mui {
    bool     quiet;
    fst__bar bar;
} mui;

static int on_progress(uint64_t done, uint64_t total, uint64_t bytes, void *ctx)
{
    (void)bytes;
    mui *u = ctx;
    fst__bar_update(&u->bar, done, total, 0);
    return 0;
}

int fst_cmd_merge(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"quiet", no_argument, 0, 'q'},
        {"json", no_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    bool json = false;
    mui u;
    memset(&u, 0, sizeof u);
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case 'q': u.quiet = true; break;
        case 'j': json = true; break;
        case 'h':
            fputs(usage_text, stdout);
            return 0;
        default:
            return fst__cli_getopt_error("merge", usage_line, c, argv);
        }
    }
    if (argc - optind < 2)
        return fst__cli_usage("merge", usage_line, "expected OUT.h5 and at least one PART.h5");
    const char *out = argv[optind];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    fst__bar_init(&u.bar, "pairs merged", u.quiet);
    fst_matchfile_opts mo = {.progress = on_progress, .progress_ctx = &u};
    uint64_t n = 0;
    size_t np = (size_t)(argc - optind - 1);
    fst_status s = fst_matchfile_merge(out, (const char *const *)argv + optind + 1, np, &mo, &n);
    fst__bar_clear(&u.bar);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double wall = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (s) fst_cmd_error("merge", s);
    else if (!u.quiet)
        fprintf(json ? stderr : stdout, "featstore merge: wrote %s: %" PRIu64 " pair%s from %zu "
                "part%s in %.2f s (%.0f pairs/s)\n", out, n, n == 1 ? "" : "s", np,
                np == 1 ? "" : "s", wall, wall > 0 ? (double)n / wall : 0.0);
    if (json) {
        printf("{\"status\":\"%s\",\"output\":", s ? "error" : "ok");
        fst__json_str(stdout, out);
        printf(",\"parts\":%zu,\"pairs\":%" PRIu64 ",\"wall_s\":%.6g,\"pairs_per_s\":%.6g", np,
               n, wall, wall > 0 ? (double)n / wall : 0.0);
        if (s) {
            char err[1200];
            const char *d = fst_errdetail();
            snprintf(err, sizeof err, "%s%s%s", fst_strerror(s), d[0] ? ": " : "", d);
            fputs(",\"error\":", stdout);
            fst__json_str(stdout, err);
        }
        fputs("}\n", stdout);
    }
    return s ? 1 : 0;
}
