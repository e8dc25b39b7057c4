/* cmd_match.c : `featstore match` (the coordinator, fst_match_run) and the
 * internal `featstore worker` it spawns (fst_worker_main). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "cmd.h"
#include "cmdutil.h"
#include "fst_worker.h"

static const char usage_line[] =
    "usage: featstore match STORE PAIRS.txt -o MATCHES.h5 [options]\n";

static const char usage_text[] =
    "usage: featstore match STORE PAIRS.txt -o MATCHES.h5 [options]\n"
    "\n"
    "Match every pair of PAIRS.txt (hloc's format: `name0 name1` per line) with\n"
    "N worker processes reading STORE zero-copy, into hloc's matches.h5. Pairs\n"
    "already in MATCHES.h5 are skipped; an interrupted run resumes when the same\n"
    "command is run again (from MATCHES.h5.journal).\n"
    "\n"
    "options:\n"
    "  -o, --output PATH          matches.h5 to write (required)\n"
    "  --device cpu|cuda|cuda:0,2|auto\n"
    "                             where workers run (default auto: CUDA if built and\n"
    "                             a GPU is there, else CPU)\n"
    "  --workers N                worker processes (cpu: default one per CPU;\n"
    "                             cuda: spread over the devices)\n"
    "  --workers-per-device K     cuda: workers per GPU (default 1)\n"
    "  --threads T                cpu: matcher threads per worker (default 1)\n"
    "  --preset NAME              hloc's matcher conf (default NN-mutual; the list\n"
    "                             below says what each sets)\n"
    "  --weights FILE             the weight file of a neural preset (.pth as its\n"
    "                             authors publish it, or .safetensors)\n"
    "  --depth-confidence X       lightglue: early stop (0: off)\n"
    "  --width-confidence X       lightglue: point pruning (0: off)\n"
    "  --filter-threshold X       lightglue: match score threshold\n"
    "  --sinkhorn-iterations N    superglue: Sinkhorn iterations\n"
    "  --match-threshold X        superglue: match score threshold\n"
    "  --mutual, --no-mutual      mutual nearest-neighbour check (default on)\n"
    "  --ratio-threshold R        Lowe's ratio test (0: off)\n"
    "  --distance-threshold T     descriptor distance test (0: off)\n"
    "  --query PATH               first image of each pair from this hloc\n"
    "                             features.h5 or store\n"
    "  --matches-dtype int16|int32\n"
    "                             matches0 type (hloc: int16; int32 for images\n"
    "                             with more than 32767 keypoints)\n"
    "  --skip-missing             drop pairs naming images not in the store\n"
    "  --overwrite                recompute pairs already in the output; discard\n"
    "                             a journal of a run with other parameters\n"
    "  --batch N                  most pairs per batch (default 128)\n"
    "  --shard K/N                match only part K (0..N-1) of N of the pairs, for\n"
    "                             `featstore merge`; default inside Slurm: the array\n"
    "                             task or srun task; 'all': every pair\n"
    "  --backend-params K=V,...   extra backend parameters for every worker\n"
    "  --no-lock                  read the store(s) without the lock file (for\n"
    "                             network file systems; automatic where it cannot\n"
    "                             be written): appends are refused meanwhile\n"
    "  --quiet                    no progress or summary (warnings and errors only)\n"
    "  --json                     one JSON summary object on stdout\n"
    "  --no-verify                do not check each image's checksum the first\n"
    "                             time a worker reads it (a corrupt record is\n"
    "                             then matched as it is)\n"
    "  --stall-timeout S          kill a worker that has work and sends nothing\n"
    "                             for max(S, 10 x the slowest pair time seen);\n"
    "                             its pairs are redone (default 60, cuda 150,\n"
    "                             neural presets 600)\n"
    "  -h, --help                 this text\n"
    "\n"
    "Neural presets (LightGlue, SuperGlue) run on the CPU only (--device cpu or\n"
    "auto) and need --weights; nothing is downloaded.\n"
    "\n"
    "exit status: 0 all pairs matched; 1 error, or some pairs failed (listed);\n"
    "2 usage; 130/143 interrupted by SIGINT/SIGTERM (run again to resume).\n";

/* ---- signals: one byte per signal into a pipe the run polls ---- */

static int sig_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    int e = errno;
    unsigned char b = (unsigned char)sig;
    if (write(sig_pipe[1], &b, 1) < 0) {}
    errno = e;
}

/* ---- display: cmdutil's progress bar, with the run's own figures ---- */

typedef struct ui {
    bool    quiet, json;
    int     phase;        /* -1: none yet */
    fst__bar bar;
    char    unit[128];
} ui;

static void on_progress(const fst_run_progress *p, void *ctx)
{
    ui *u = ctx;
    if (u->quiet || p->phase == FST_RUN_PREPARING) return;
    if ((int)p->phase != u->phase) {
        fst__bar_clear(&u->bar);
        fst__bar_init(&u->bar, u->unit, u->quiet);
        u->phase = (int)p->phase;
    }
    if (p->phase == FST_RUN_WRITING) {
        snprintf(u->unit, sizeof u->unit, "pairs written to matches.h5");
    } else {
        int n = snprintf(u->unit, sizeof u->unit, "pairs  %.1f pairs/s  workers %u/%u",
                         p->pairs_per_s, p->workers_alive, p->workers);
        if (p->failed && n > 0 && (size_t)n < sizeof u->unit)
            snprintf(u->unit + n, sizeof u->unit - (size_t)n, "  failed %llu",
                     (unsigned long long)p->failed);
    }
    fst__bar_update(&u->bar, p->done + p->failed, p->total, 0);
}

static void on_notice(const char *msg, void *ctx)
{
    ui *u = ctx;
    if (u->quiet && !strncmp(msg, "note:", 5))
        return;                         /* warnings are printed even then */
    fst__bar_clear(&u->bar);
    fprintf(stderr, "featstore match: %s\n", msg);
}

static void json_num(FILE *f, const char *key, double v)
{
    if (isfinite(v)) fprintf(f, ",\"%s\":%.6g", key, v);
    else fprintf(f, ",\"%s\":null", key);
}

static void json_shard(FILE *f, const fst_run_opts *o, const fst_run_stats *st);

static void print_json(const fst_run_stats *st, const fst_run_opts *o, fst_status s,
                       const char *err, int code, const char *preset,
                       const char *weights)
{
    const char *output = o->output;
    FILE *f = stdout;
    const char *status = s == FST_OK ? "ok" : s == FST_EINTR ? "interrupted"
                         : (s == FST_ECHILD && st->output_written) ? "failed_pairs" : "error";
    fprintf(f, "{\"status\":\"%s\",\"exit_code\":%d,\"output\":", status, code);
    fst__json_str(f, output);
    fprintf(f, ",\"pairs\":%llu,\"pairs_lines\":%llu,\"pairs_unique\":%llu,\"pairs_self\":%llu,"
            "\"pairs_missing\":%llu,\"names_missing\":%llu,\"pairs_existing\":%llu,"
            "\"pairs_resumed\":%llu,\"pairs_todo\":%llu,\"pairs_matched\":%llu,"
            "\"pairs_failed\":%llu,\"pairs_written\":%llu,\"matches\":%llu",
            (unsigned long long)st->pairs_matched, (unsigned long long)st->pairs_lines,
            (unsigned long long)st->pairs_unique, (unsigned long long)st->pairs_self,
            (unsigned long long)st->pairs_missing, (unsigned long long)st->names_missing,
            (unsigned long long)st->pairs_existing, (unsigned long long)st->pairs_resumed,
            (unsigned long long)st->pairs_todo, (unsigned long long)st->pairs_matched,
            (unsigned long long)st->pairs_failed, (unsigned long long)st->pairs_written,
            (unsigned long long)st->matches);
    fprintf(f, ",\"pairs_bom\":%llu", (unsigned long long)st->pairs_bom);
    fprintf(f, ",\"pairs_duplicates\":%llu,\"pairs_reversed\":%llu,\"journal_stale\":%llu",
            (unsigned long long)st->pairs_duplicates, (unsigned long long)st->pairs_reversed,
            (unsigned long long)st->journal_stale);
    json_num(f, "wall_s", st->wall_s);
    json_num(f, "match_s", st->match_s);
    json_num(f, "write_s", st->write_s);
    json_num(f, "pairs_per_s", st->match_s > 0 ? (double)st->pairs_matched / st->match_s : 0);
    if (st->first_pair_ms >= 0) json_num(f, "first_pair_ms", st->first_pair_ms);
    else fputs(",\"first_pair_ms\":null", f);
    fprintf(f, ",\"workers\":%u,\"worker_restarts\":%u,\"device\":", st->workers,
            st->worker_restarts);
    fst__json_str(f, st->device);
    fputs(",\"backend\":", f);
    fst__json_str(f, st->backend);
    fputs(",\"preset\":", f);
    fst__json_str(f, preset ? preset : "NN-mutual");
    fputs(",\"weights\":", f);
    if (weights) fst__json_str(f, weights);
    else fputs("null", f);
    fprintf(f, ",\"verify\":%s,\"worker_stalls\":%u", st->verified ? "true" : "false",
            st->worker_stalls);
    fprintf(f, ",\"peak_pss_bytes\":%llu,\"store_bytes\":%llu,\"signal\":%d,"
            "\"output_written\":%s,\"failures\":[",
            (unsigned long long)st->peak_pss, (unsigned long long)st->store_bytes, st->signal,
            st->output_written ? "true" : "false");
    for (size_t i = 0; i < st->n_failures; i++) {
        const fst_run_failure *fl = &st->failures[i];
        fputs(i ? ",{\"name0\":" : "{\"name0\":", f);
        fst__json_str(f, fl->name0);
        fputs(",\"name1\":", f);
        fst__json_str(f, fl->name1);
        fputs(",\"status\":", f);
        fst__json_str(f, fst_status_name(fl->status));
        fputs(",\"detail\":", f);
        fst__json_str(f, fl->detail);
        fputc('}', f);
    }
    fputc(']', f);
    json_shard(f, o, st);
    if (err) {
        fputs(",\"error\":", f);
        fst__json_str(f, err);
    }
    fputs("}\n", f);
    fflush(f);
}

static void print_summary(FILE *f, const fst_run_stats *st, const char *output, fst_status s)
{
    char pss[FST__HUMAN_LEN], store[FST__HUMAN_LEN];
    fst__human_bytes(st->peak_pss, pss);
    fst__human_bytes(st->store_bytes, store);
    if (s == FST_EINTR)
        fprintf(f, "featstore match: interrupted: %llu pairs matched and saved by this run",
                (unsigned long long)st->pairs_matched);
    else if (!st->pairs_todo)
        fprintf(f, "featstore match: nothing to match");
    else
        fprintf(f, "featstore match: %llu pair%s matched, %llu match%s",
                (unsigned long long)st->pairs_matched, st->pairs_matched == 1 ? "" : "s",
                (unsigned long long)st->matches, st->matches == 1 ? "" : "es");
    const char *sep = " (";
    if (st->pairs_existing) {
        fprintf(f, "%s%llu already in the output", sep, (unsigned long long)st->pairs_existing);
        sep = ", ";
    }
    if (st->pairs_resumed) {
        fprintf(f, "%s%llu resumed from the journal", sep, (unsigned long long)st->pairs_resumed);
        sep = ", ";
    }
    if (st->pairs_missing) {
        fprintf(f, "%s%llu skipped: unknown images", sep, (unsigned long long)st->pairs_missing);
        sep = ", ";
    }
    if (st->journal_stale) {
        fprintf(f, "%s%llu journaled pair%s no longer listed: discarded", sep,
                (unsigned long long)st->journal_stale, st->journal_stale == 1 ? "" : "s");
        sep = ", ";
    }
    fputs(sep[0] == ',' ? ")\n" : "\n", f);
    fprintf(f, "  pairs file: %llu line%s, %llu unique pair%s", (unsigned long long)st->pairs_lines,
            st->pairs_lines == 1 ? "" : "s", (unsigned long long)st->pairs_unique,
            st->pairs_unique == 1 ? "" : "s");
    if (st->pairs_duplicates)
        fprintf(f, ", %llu duplicate%s dropped", (unsigned long long)st->pairs_duplicates,
                st->pairs_duplicates == 1 ? "" : "s");
    if (st->pairs_reversed)
        fprintf(f, ", %llu reversed dropped", (unsigned long long)st->pairs_reversed);
    if (st->pairs_self)
        fprintf(f, ", %llu self pair%s", (unsigned long long)st->pairs_self,
                st->pairs_self == 1 ? "" : "s");
    fputc('\n', f);
    if (st->pairs_todo) {
        fprintf(f, "  %.2f s wall, %.1f pairs/s on %u %s worker%s", st->wall_s,
                st->match_s > 0 ? (double)st->pairs_matched / st->match_s : 0.0, st->workers,
                st->backend, st->workers == 1 ? "" : "s");
        if (st->first_pair_ms >= 0) fprintf(f, ", first pair after %.0f ms", st->first_pair_ms);
        if (st->worker_restarts) fprintf(f, ", %u worker restart%s", st->worker_restarts,
                                         st->worker_restarts > 1 ? "s" : "");
        if (st->worker_stalls) fprintf(f, ", %u stalled worker%s killed", st->worker_stalls,
                                       st->worker_stalls > 1 ? "s" : "");
        fprintf(f, "\n  peak memory (PSS, coordinator + workers): %s; store %s\n", pss, store);
        if (!st->verified)
            fprintf(f, "  checksums not verified (--no-verify): a corrupt record would be "
                    "matched as it is\n");
    }
    if (st->output_written)
        fprintf(f, "  wrote %s (%llu pair%s from the run and journal)\n", output,
                (unsigned long long)st->pairs_written, st->pairs_written == 1 ? "" : "s");
    if (st->n_failures) {
        fprintf(f, "  %zu pair%s failed (not in the output; the same command retries them):\n",
                st->n_failures, st->n_failures > 1 ? "s" : "");
        for (size_t i = 0; i < st->n_failures; i++)
            fprintf(f, "    %s %s: %s: %s\n", st->failures[i].name0, st->failures[i].name1,
                    fst_strerror(st->failures[i].status), st->failures[i].detail);
    }
}

/* --device: cpu, auto, cuda, or cuda: and device numbers (digits) joined
 * by commas. */
static bool device_ok(const char *d)
{
    if (!strcmp(d, "cpu") || !strcmp(d, "auto") || !strcmp(d, "cuda")) return true;
    if (strncmp(d, "cuda:", 5)) return false;
    for (const char *p = d + 5;;) {
        size_t n = strspn(p, "0123456789");
        if (!n || n > 4) return false;
        p += n;
        if (!*p) return true;
        if (*p++ != ',') return false;
    }
}

static bool parse_thr(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= 0) || !isfinite(v)) return false;
    *out = v;
    return true;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

enum {
    OPT_DEVICE = 1000, OPT_WORKERS, OPT_WPD, OPT_THREADS, OPT_PRESET, OPT_MUTUAL,
    OPT_NO_MUTUAL, OPT_RATIO, OPT_DIST, OPT_QUERY, OPT_DTYPE, OPT_SKIP, OPT_OVERWRITE,
    OPT_BATCH, OPT_PARAMS, OPT_QUIET, OPT_JSON, OPT_SHARD,
    OPT_NO_LOCK = 1100, OPT_NO_VERIFY, OPT_STALL,
    OPT_WEIGHTS = 1200, OPT_DEPTH, OPT_WIDTH, OPT_FILTER, OPT_SINKHORN, OPT_MTHR,
};

/* The shard line of the summary and --json. */
static const char *shard_source;

static void print_shard(FILE *f, const fst_run_opts *o, const fst_run_stats *st)
{
    if (o->shard_n)
        fprintf(f, "  shard %u/%u (from %s): %llu of the %llu unique pairs\n", o->shard_k,
                o->shard_n, shard_source, (unsigned long long)st->pairs_shard,
                (unsigned long long)st->pairs_unique);
}

static void json_shard(FILE *f, const fst_run_opts *o, const fst_run_stats *st)
{
    if (!o->shard_n) {
        fputs(",\"shard\":null", f);
        return;
    }
    fprintf(f, ",\"shard\":{\"index\":%u,\"count\":%u,\"source\":", o->shard_k, o->shard_n);
    fst__json_str(f, shard_source);
    fprintf(f, ",\"pairs\":%llu}", (unsigned long long)st->pairs_shard);
}

/* Neural options given on the command line (< 0: the preset's). */
typedef struct neural_cli {
    const char *weights;
    double depth, width, filter, mthr;
    int sinkhorn;
} neural_cli;

/* --preset and its options into o (o->matcher points to *mc for a neural
 * preset). Returns 0, or the exit status of a usage error. */
static int apply_preset(const char *preset, int mutual, double ratio, double dist,
                        const neural_cli *nc, fst_matcher_conf *mc, fst_run_opts *o)
{
    if (fst_matcher_preset(preset ? preset : "NN-mutual", mc) != FST_OK)
        return fst__cli_usage("match", usage_line, "--preset %s: %s", preset, fst_errdetail());
    bool lg = mc->algo == FST_ALGO_LIGHTGLUE, sg = mc->algo == FST_ALGO_SUPERGLUE;
    const char *bad = !lg && nc->depth >= 0 ? "--depth-confidence"
                    : !lg && nc->width >= 0 ? "--width-confidence"
                    : !lg && nc->filter >= 0 ? "--filter-threshold"
                    : !sg && nc->sinkhorn >= 0 ? "--sinkhorn-iterations"
                    : !sg && nc->mthr >= 0 ? "--match-threshold"
                    : mc->algo == FST_ALGO_NN && nc->weights ? "--weights"
                    : mc->algo != FST_ALGO_NN && mutual >= 0 ? "--mutual/--no-mutual"
                    : mc->algo != FST_ALGO_NN && ratio >= 0 ? "--ratio-threshold"
                    : mc->algo != FST_ALGO_NN && dist >= 0 ? "--distance-threshold" : NULL;
    if (bad)
        return fst__cli_usage("match", usage_line, "%s does not apply to --preset %s", bad,
                              mc->preset);
    if (mc->algo == FST_ALGO_NN) {
        o->match = mc->nn;
        if (mutual >= 0) o->match.mutual = mutual;
        if (ratio >= 0) o->match.ratio_threshold = ratio;
        if (dist >= 0) o->match.distance_threshold = dist;
        return 0;
    }
    if (!nc->weights) {
        fprintf(stderr, "featstore match: %s\n", fst_matcher_weights_hint(mc->preset));
        return 2;
    }
    mc->weights = nc->weights;
    if (nc->depth >= 0) mc->depth_confidence = nc->depth;
    if (nc->width >= 0) mc->width_confidence = nc->width;
    if (nc->filter >= 0) mc->filter_threshold = nc->filter;
    if (nc->mthr >= 0) mc->match_threshold = nc->mthr;
    if (nc->sinkhorn >= 0) mc->sinkhorn_iterations = nc->sinkhorn;
    o->matcher = mc;
    return 0;
}

int fst_cmd_match(int argc, char **argv)
{
    int64_t t_launch = now_ns();
    static const struct option longopts[] = {
        {"output", required_argument, 0, 'o'},
        {"device", required_argument, 0, OPT_DEVICE},
        {"workers", required_argument, 0, OPT_WORKERS},
        {"workers-per-device", required_argument, 0, OPT_WPD},
        {"threads", required_argument, 0, OPT_THREADS},
        {"preset", required_argument, 0, OPT_PRESET},
        {"mutual", no_argument, 0, OPT_MUTUAL},
        {"no-mutual", no_argument, 0, OPT_NO_MUTUAL},
        {"ratio-threshold", required_argument, 0, OPT_RATIO},
        {"distance-threshold", required_argument, 0, OPT_DIST},
        {"query", required_argument, 0, OPT_QUERY},
        {"matches-dtype", required_argument, 0, OPT_DTYPE},
        {"skip-missing", no_argument, 0, OPT_SKIP},
        {"overwrite", no_argument, 0, OPT_OVERWRITE},
        {"batch", required_argument, 0, OPT_BATCH},
        {"backend-params", required_argument, 0, OPT_PARAMS},
        {"quiet", no_argument, 0, OPT_QUIET},
        {"json", no_argument, 0, OPT_JSON},
        {"shard", required_argument, 0, OPT_SHARD},
        {"no-lock", no_argument, 0, OPT_NO_LOCK},
        {"help", no_argument, 0, 'h'},
        {"no-verify", no_argument, 0, OPT_NO_VERIFY},
        {"stall-timeout", required_argument, 0, OPT_STALL},
        {"weights", required_argument, 0, OPT_WEIGHTS},
        {"depth-confidence", required_argument, 0, OPT_DEPTH},
        {"width-confidence", required_argument, 0, OPT_WIDTH},
        {"filter-threshold", required_argument, 0, OPT_FILTER},
        {"sinkhorn-iterations", required_argument, 0, OPT_SINKHORN},
        {"match-threshold", required_argument, 0, OPT_MTHR},
        {0, 0, 0, 0},
    };
    fst_run_opts o = fst_run_opts_default();
    ui u;
    memset(&u, 0, sizeof u);
    u.phase = -1;
    const char *preset = NULL;
    int mutual = -1;
    double ratio = -1, dist = -1;
    const char *shard = NULL;
    neural_cli nc = {NULL, -1, -1, -1, -1, -1};
    fst_matcher_conf mc;
    int c, li = 0;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":o:h", longopts, &li)) != -1) {
        const char *opt = c >= OPT_DEVICE ? longopts[li].name : "";
        char optname[40];
        snprintf(optname, sizeof optname, "--%s", opt);
        switch (c) {
        case 'o': o.output = optarg; break;
        case OPT_DEVICE:
            if (!device_ok(optarg))
                return fst__cli_usage("match", usage_line, "--device '%s': expected cpu, cuda, "
                                      "cuda:N[,N...] (device numbers, e.g. cuda:0,2) or auto",
                                      optarg);
            o.device = optarg;
            break;
        case OPT_WORKERS:
            if (fst__cli_u32("match", optname, optarg, 1, 4096, &o.workers)) return 2;
            break;
        case OPT_WPD:
            if (fst__cli_u32("match", optname, optarg, 1, 64, &o.workers_per_device)) return 2;
            break;
        case OPT_THREADS:
            if (fst__cli_u32("match", optname, optarg, 1, 64, &o.threads)) return 2;
            break;
        case OPT_BATCH:
            if (fst__cli_u32("match", optname, optarg, 1, 65536, &o.batch_pairs)) return 2;
            break;
        case OPT_PRESET: preset = optarg; break;
        case OPT_MUTUAL: mutual = 1; break;
        case OPT_NO_MUTUAL: mutual = 0; break;
        case OPT_RATIO:
        case OPT_DIST:
            if (!parse_thr(optarg, c == OPT_RATIO ? &ratio : &dist))
                return fst__cli_usage("match", usage_line, "%s: expected a number >= 0, not "
                                      "'%s'", optname, optarg);
            break;
        case OPT_WEIGHTS: nc.weights = optarg; break;
        case OPT_DEPTH:
        case OPT_WIDTH:
        case OPT_FILTER:
        case OPT_MTHR:
            if (!parse_thr(optarg, c == OPT_DEPTH ? &nc.depth : c == OPT_WIDTH ? &nc.width
                                   : c == OPT_FILTER ? &nc.filter : &nc.mthr))
                return fst__cli_usage("match", usage_line, "%s: expected a number >= 0, not "
                                      "'%s'", optname, optarg);
            break;
        case OPT_SINKHORN: {
            uint32_t it;
            if (fst__cli_u32("match", optname, optarg, 1, 100000, &it)) return 2;
            nc.sinkhorn = (int)it;
            break;
        }
        case OPT_QUERY: o.query = optarg; break;
        case OPT_DTYPE:
            if (!strcmp(optarg, "int16")) o.index_size = 2;
            else if (!strcmp(optarg, "int32")) o.index_size = 4;
            else
                return fst__cli_usage("match", usage_line, "--matches-dtype: expected int16 "
                                      "or int32, not '%s'", optarg);
            break;
        case OPT_SKIP: o.skip_missing = true; break;
        case OPT_OVERWRITE: o.overwrite = true; break;
        case OPT_PARAMS: o.backend_params = optarg; break;
        case OPT_QUIET: u.quiet = true; break;
        case OPT_JSON: u.json = true; break;
        case OPT_SHARD: shard = optarg; break;
        case OPT_NO_LOCK:   /* fst_store_open() reads it, here and in workers */
            setenv("FST_NO_LOCK", "1", 1);
            break;
        case 'h':
            fputs(usage_text, stdout);
            printf("\npresets:\n%s", fst_matcher_preset_help());
            return 0;
        case OPT_NO_VERIFY: o.no_verify = true; break;
        case OPT_STALL:
            if (!parse_thr(optarg, &o.stall_timeout_s) || o.stall_timeout_s < 0.5 ||
                o.stall_timeout_s > 86400)
                return fst__cli_usage("match", usage_line, "--stall-timeout: expected seconds "
                                      "from 0.5 to 86400, not '%s'", optarg);
            break;
        default:
            return fst__cli_getopt_error("match", usage_line, c, argv);
        }
    }
    if (argc - optind != 2 || !o.output)
        return fst__cli_usage("match", usage_line, "expected STORE PAIRS.txt -o MATCHES.h5");
    o.store = argv[optind];
    o.pairs = argv[optind + 1];
    int pc = apply_preset(preset, mutual, ratio, dist, &nc, &mc, &o);
    if (pc) return pc;
    {
        char err[300];
        int rc = fst__shard_resolve(shard, &o.shard_k, &o.shard_n, &shard_source, err,
                                    sizeof err);
        if (rc == 2) return fst__cli_usage("match", usage_line, "%s", err);
        if (rc) {
            fprintf(stderr, "featstore match: %s\n", err);
            return 1;
        }
    }

    o.progress = on_progress;
    o.notice = on_notice;
    o.ctx = &u;
    o.t_launch_ns = t_launch;

    /* SIGINT / SIGTERM: the run stops handing out work, commits, returns. */
    if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        perror("featstore match: pipe");
        return 1;
    }
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    o.stop_fd = sig_pipe[0];

    fst_run_stats st;
    fst_status s = fst_match_run(&o, &st);

    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    close(sig_pipe[0]);
    close(sig_pipe[1]);
    fst__bar_clear(&u.bar);

    int code = s == FST_OK ? 0 : 1;
    if (s == FST_EINTR && st.signal > 0) code = 128 + st.signal;
    char err[1200] = "";
    if (s != FST_OK) {
        const char *d = fst_errdetail();
        snprintf(err, sizeof err, "%s%s%s", fst_strerror(s), d[0] ? ": " : "", d);
    }
    if (!u.quiet && (st.pairs_todo || st.output_written || s == FST_OK)) {
        print_summary(u.json ? stderr : stdout, &st, o.output, s);
        print_shard(u.json ? stderr : stdout, &o, &st);
    }
    if (s != FST_OK) {
        if (s == FST_EINTR)
            fprintf(stderr, "featstore match: %s\n", fst_errdetail());
        else
            fst_cmd_error("match", s);
    }
    if (u.json)
        print_json(&st, &o, s, s ? err : NULL, code, mc.preset,
                   o.matcher ? o.matcher->weights : NULL);
    fst_run_stats_free(&st);
    return code;
}

/* `featstore worker --fd N --parent PID [--slot K]`: spawned by match. */
int fst_cmd_worker(int argc, char **argv)
{
    int fd = -1;
    long parent = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--fd")) fd = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--parent")) parent = atol(argv[i + 1]);
    }
    if (fd < 0 || parent <= 0) {
        fprintf(stderr, "featstore worker: internal command, started by 'featstore match'\n");
        return 2;
    }
    /* Die with the coordinator, whatever kills it (kill -9 included). */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != (pid_t)parent)
        return 1;
    signal(SIGINT, SIG_IGN);            /* the coordinator decides */
    fst_status s = fst_worker_main(fd);
    close(fd);
    return s == FST_OK ? 0 : (-(int)s) & 127;
}
