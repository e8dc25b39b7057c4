/* tools/cmd_store.c : featstore import, export, info, verify, synth. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base_impl.h"
#include "cmd.h"
#include "cmdutil.h"
#include "fst_loader.h"
#include "fst_store.h"

/* getopt_long state is global: start every command afresh. */
static void getopt_reset(void)
{
    extern int optind, opterr;
    optind = 0;     /* GNU: 0 re-initialises completely */
    opterr = 0;     /* our messages, not getopt's */
}

/* After a failure: the message, then 1 (or 130 for Ctrl-C, like a shell). */
static int failed(const char *cmd, fst_status s)
{
    fst_cmd_error(cmd, s);
    return s == FST_EINTR ? 130 : 1;
}

/* ---- import ---- */

static const char import_usage[] =
    "usage: featstore import SRC.h5 STORE [--append] [--dtype float16|float32] [--quiet]\n";

static const char import_help[] =
    "Convert an hloc features.h5 into a featstore store, once. Every group\n"
    "holding `keypoints` and `descriptors` becomes one record, named by its\n"
    "path in the file (db/seq1/0001.jpg). Kept with it: scores or\n"
    "keypoint_scores, image_size, the keypoints' uncertainty, and each\n"
    "keypoint's `scales` and `oris` where hloc's DoG (SIFT) extractor wrote\n"
    "them (a store holding those is format 1.2).\n"
    "\n"
    "  --append         add to the existing STORE: identical images are\n"
    "                   skipped, images that differ under the same name are\n"
    "                   refused (nothing is added then)\n"
    "  --dtype T        store descriptors as float16 or float32 (default: as\n"
    "                   in SRC.h5)\n"
    "  -q, --quiet      no progress bar, no summary\n"
    "  -h, --help       this text\n"
    "\n"
    "On any error nothing is written: a new STORE does not appear, an existing\n"
    "one is unchanged. An interrupted import (Ctrl-C, kill -9) leaves no\n"
    "STORE; run the same command again.\n";

int fst_cmd_import(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"append", no_argument, NULL, 'a'},
        {"dtype", required_argument, NULL, 't'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "import";
    fst_import_opts opts = {0};
    bool quiet = false;
    int c;
    getopt_reset();
    while ((c = getopt_long(argc, argv, ":qh", longopts, NULL)) != -1) {
        switch (c) {
        case 'a': opts.append = true; break;
        case 'q': quiet = true; break;
        case 'h': fputs(import_usage, stdout); fputs("\n", stdout);
                  fputs(import_help, stdout); return 0;
        case 't': {
            fst_dtype dt;
            if (fst__cli_dtype(cmd, "--dtype", optarg, &dt))
                return fst__cli_usage(cmd, import_usage, NULL);
            opts.dtype = dt;
            break;
        }
        default: return fst__cli_getopt_error(cmd, import_usage, c, argv);
        }
    }
    if (argc - optind != 2)
        return fst__cli_usage(cmd, import_usage, argc - optind < 2
                              ? "needs SRC.h5 and STORE" : "too many arguments");
    const char *src = argv[optind], *dest = argv[optind + 1];

    fst__bar bar;
    fst__bar_init(&bar, "images", quiet);
    opts.progress = fst__bar_cb;
    opts.progress_ctx = &bar;
    fst__cli_catch_signals();
    fst_import_stats st;
    fst_status s = fst_import_h5(src, dest, &opts, &st);
    fst__bar_clear(&bar);
    if (s)
        return failed(cmd, s);
    if (!quiet) {
        char h[FST__HUMAN_LEN];
        printf("%s %s -> %s: %" PRIu64 " images added, %" PRIu64 " skipped (identical), "
               "%" PRIu64 " keypoints, %s in %.2f s\n", opts.append ? "appended" : "imported",
               src, dest, st.images_added, st.images_skipped, st.keypoints,
               fst__human_bytes(st.payload_bytes, h), fst__bar_elapsed(&bar));
        if (st.datasets_ignored)
            fprintf(stderr, "featstore import: note: %" PRIu64 " dataset%s not kept (e.g. %s); "
                    "an export will not have them\n", st.datasets_ignored,
                    st.datasets_ignored == 1 ? "" : "s", st.ignored_example);
    }
    if (st.links_skipped)               /* a warning: printed even with --quiet */
        fprintf(stderr, "featstore import: warning: %" PRIu64 " soft or external link%s not "
                "followed (e.g. %s): images reached only through them are not imported\n",
                st.links_skipped, st.links_skipped == 1 ? "" : "s", st.link_example);
    return 0;
}

/* ---- export ---- */

static const char export_usage[] = "usage: featstore export STORE OUT.h5 [--no-lock] [--quiet]\n";

static const char export_help[] =
    "Write every image of STORE to OUT.h5 in hloc's features.h5 layout: a group\n"
    "per image (nested at '/'), keypoints (N, 2), descriptors (D, N), scores or\n"
    "keypoint_scores (N,), DoG scales and oris (N,), image_size (2,), with the\n"
    "dtypes and names the imported file had. Refuses an existing OUT.h5; writes a temporary file\n"
    "and renames it when complete.\n"
    "\n"
    "  --no-lock        read STORE without its lock file (automatic where it\n"
    "                   cannot be written); appends are refused meanwhile\n"
    "  -q, --quiet      no progress bar, no summary\n"
    "  -h, --help       this text\n";

int fst_cmd_export(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"quiet", no_argument, NULL, 'q'},
        {"no-lock", no_argument, NULL, 'L'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "export";
    bool quiet = false;
    unsigned nolock = 0;
    int c;
    getopt_reset();
    while ((c = getopt_long(argc, argv, ":qh", longopts, NULL)) != -1) {
        switch (c) {
        case 'q': quiet = true; break;
        case 'L': nolock = FST_OPEN_NOLOCK; break;
        case 'h': fputs(export_usage, stdout); fputs("\n", stdout);
                  fputs(export_help, stdout); return 0;
        default: return fst__cli_getopt_error(cmd, export_usage, c, argv);
        }
    }
    if (argc - optind != 2)
        return fst__cli_usage(cmd, export_usage, argc - optind < 2
                              ? "needs STORE and OUT.h5" : "too many arguments");
    const char *path = argv[optind], *dest = argv[optind + 1];

    fst_store *st = NULL;
    /* Verify checksums: an export must not pass corruption on silently. */
    fst_status s = fst_store_open(path, FST_OPEN_CHECKSUMS | nolock, &st);
    fst_store_meta meta;
    if (s == FST_OK && (s = fst_store_meta_get(st, &meta)) != FST_OK)
        fst_store_close(st);
    if (s)
        return failed(cmd, s);
    fst__bar bar;
    fst__bar_init(&bar, "images", quiet);
    fst__cli_catch_signals();
    s = fst_export_h5(st, dest, fst__bar_cb, &bar);
    fst__bar_clear(&bar);
    fst_store_close(st);
    if (s)
        return failed(cmd, s);
    if (!quiet) {
        char h[FST__HUMAN_LEN];
        /* the export ran in a child process: its counts are the store's */
        printf("exported %s -> %s: %" PRIu64 " images, %s in %.2f s\n", path, dest,
               meta.n_images, fst__human_bytes(meta.payload_bytes, h),
               fst__bar_elapsed(&bar));
    }
    return 0;
}

/* ---- info ---- */

static const char info_usage[] = "usage: featstore info STORE [--json] [--no-lock]\n";

static const char info_help[] =
    "Print a store's metadata (format, descriptor dimension and dtype, images,\n"
    "keypoints, payload and file size, the source file) and the keypoints per\n"
    "image (min, median, max; computed by reading every record), and how many\n"
    "images carry keypoint scales and orientations (DoG `scales`, `oris`).\n"
    "\n"
    "  --json           one JSON object instead of text\n"
    "  --no-lock        read STORE without its lock file (automatic where it\n"
    "                   cannot be written); appends are refused meanwhile\n"
    "  -h, --help       this text\n";

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

typedef struct kp_stats {
    uint64_t n;
    uint32_t min, median, max;
    uint64_t with_scales, with_oris;   /* images carrying them (DoG, 1.2) */
} kp_stats;

static fst_status keypoint_stats(fst_store *st, kp_stats *out)
{
    fst_status s;
    fst_reader *rd = NULL;
    uint32_t *ns = NULL;
    size_t n = 0, cap = 0;
    uint64_t sca = 0, ori = 0;
    FST_TRY(fst_reader_begin(st, &rd));
    for (;;) {
        fst_view v;
        s = fst_reader_next(rd, &v);
        if (s == FST_DONE)
            break;
        if (s)
            goto out;
        if (n == cap) {
            size_t nc = cap ? 2 * cap : 1024;
            uint32_t *nn = realloc(ns, nc * sizeof *nn);
            if (!nn) {
                s = fst__fail(FST_ENOMEM, "%s: keypoint counts", fst_store_path(st));
                goto out;
            }
            ns = nn;
            cap = nc;
        }
        ns[n++] = v.n;
        sca += v.scales != NULL;
        ori += v.oris != NULL;
    }
    s = FST_OK;
    memset(out, 0, sizeof *out);
    out->n = n;
    out->with_scales = sca;
    out->with_oris = ori;
    if (n) {
        qsort(ns, n, sizeof *ns, cmp_u32);
        out->min = ns[0];
        out->max = ns[n - 1];
        out->median = ns[n / 2];   /* upper median: one of the values */
    }
out:
    fst_reader_end(rd);
    free(ns);
    return s;
}

int fst_cmd_info(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"json", no_argument, NULL, 'j'},
        {"no-lock", no_argument, NULL, 'L'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "info";
    bool json = false;
    unsigned nolock = 0;
    int c;
    getopt_reset();
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case 'j': json = true; break;
        case 'L': nolock = FST_OPEN_NOLOCK; break;
        case 'h': fputs(info_usage, stdout); fputs("\n", stdout);
                  fputs(info_help, stdout); return 0;
        default: return fst__cli_getopt_error(cmd, info_usage, c, argv);
        }
    }
    if (argc - optind != 1)
        return fst__cli_usage(cmd, info_usage, argc - optind < 1 ? "needs STORE"
                              : "too many arguments");
    const char *path = argv[optind];

    fst_store *st = NULL;
    fst_store_meta m;
    kp_stats ks;
    bool lockless = false;
    fst_status s = fst_store_open(path, nolock, &st);
    if (!s)
        s = fst_store_meta_get(st, &m);
    if (!s)
        s = keypoint_stats(st, &ks);
    if (!s)
        lockless = fst_store_nolock(st);
    fst_store_close(st);
    if (s)
        return failed(cmd, s);
    struct stat sb;
    uint64_t file_bytes = stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0;
    char id[FST_STORE_IDENTITY_LEN];
    fst_store_identity(&m, id);

    if (json) {
        printf("{\"store\": ");
        fst__json_str(stdout, path);
        printf(", \"format_version\": \"%u.%u\", \"featstore_version\": ", m.format_major,
               m.format_minor);
        fst__json_str(stdout, m.featstore_version);
        printf(", \"d\": %u, \"dtype\": \"%s\", \"images\": %" PRIu64 ", \"keypoints\": %" PRIu64
               ", \"payload_bytes\": %" PRIu64 ", \"file_bytes\": %" PRIu64, m.d,
               m.d ? fst_dtype_name(m.dtype) : "none", m.n_images, m.n_keypoints,
               m.payload_bytes, file_bytes);
        printf(", \"keypoints_per_image\": {\"min\": %u, \"median\": %u, \"max\": %u}",
               ks.min, ks.median, ks.max);
        printf(", \"images_with_scales\": %" PRIu64 ", \"images_with_oris\": %" PRIu64,
               ks.with_scales, ks.with_oris);
        printf(", \"source\": {\"name\": ");
        fst__json_str(stdout, m.source_name);
        printf(", \"size\": %" PRIu64 ", \"mtime\": %" PRId64 "}", m.source_size,
               m.source_mtime);
        printf(", \"created\": %" PRId64 ", \"modified\": %" PRId64, m.created,
               m.modified);
        printf(", \"store_id\": ");
        if (m.has_id)
            printf("\"%s\"", id + 3);
        else
            printf("null");
        printf(", \"generation\": %" PRIu64 ", \"identity\": ", m.generation);
        fst__json_str(stdout, id);
        printf(", \"lock_file\": %s}\n", lockless ? "false" : "true");
        return ferror(stdout) ? 1 : 0;
    }
    char h1[FST__HUMAN_LEN], h2[FST__HUMAN_LEN], h3[FST__HUMAN_LEN], t1[32], t2[32], t3[32];
    printf("store        %s\n", path);
    printf("format       %u.%u (written by featstore %s)\n", m.format_major, m.format_minor,
           m.featstore_version);
    printf("images       %" PRIu64 "\n", m.n_images);
    printf("keypoints    %" PRIu64 " (per image: min %u, median %u, max %u)\n", m.n_keypoints,
           ks.min, ks.median, ks.max);
    printf("scales, oris %" PRIu64 ", %" PRIu64 " of %" PRIu64 " images (DoG keypoint scales "
           "and orientations)\n", ks.with_scales, ks.with_oris, ks.n);
    if (m.d)
        printf("descriptors  %u-D %s\n", m.d, fst_dtype_name(m.dtype));
    else
        printf("descriptors  none (empty store)\n");
    printf("payload      %s (%" PRIu64 " bytes)\n", fst__human_bytes(m.payload_bytes, h1),
           m.payload_bytes);
    printf("file         %s (%.3fx payload)\n", fst__human_bytes(file_bytes, h2),
           m.payload_bytes ? (double)file_bytes / (double)m.payload_bytes : 0.0);
    printf("source       %s (%s, modified %s)\n", m.source_name[0] ? m.source_name : "-",
           fst__human_bytes(m.source_size, h3), fst__human_time(m.source_mtime, t1));
    printf("created      %s\n", fst__human_time(m.created, t2));
    printf("modified     %s\n", fst__human_time(m.modified, t3));
    if (m.has_id)
        printf("id           %s, generation %" PRIu64 "\n", id + 3, m.generation);
    else
        printf("id           none (format %u.%u store; matches identify it by its counts "
               "and times; its next append gives it an id), generation %" PRIu64 "\n",
               m.format_major, m.format_minor, m.generation);
    if (lockless)
        printf("read         without the lock file: appends are refused while it is open\n");
    return ferror(stdout) ? 1 : 0;
}

/* ---- verify ---- */

static const char verify_usage[] = "usage: featstore verify STORE [--no-lock] [--quiet]\n";

static const char verify_help[] =
    "Re-read every record of STORE, re-compute its checksum and check its\n"
    "bounds. Names each bad record on stdout; exits 1 if any is bad.\n"
    "\n"
    "  --no-lock        read STORE without its lock file (automatic where it\n"
    "                   cannot be written); appends are refused meanwhile\n"
    "  -q, --quiet      print only the bad records\n"
    "  -h, --help       this text\n";

static void print_bad(const char *name, fst_status s, const char *detail, void *ctx)
{
    (void)ctx;
    printf("bad record ");
    fst__json_str(stdout, name);   /* quoted: a damaged key may hold anything */
    printf(": %s%s%s\n", fst_strerror(s), detail && detail[0] ? ": " : "",
           detail ? detail : "");
}

int fst_cmd_verify(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"quiet", no_argument, NULL, 'q'},
        {"no-lock", no_argument, NULL, 'L'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "verify";
    bool quiet = false;
    unsigned nolock = 0;
    int c;
    getopt_reset();
    while ((c = getopt_long(argc, argv, ":qh", longopts, NULL)) != -1) {
        switch (c) {
        case 'q': quiet = true; break;
        case 'L': nolock = FST_OPEN_NOLOCK; break;
        case 'h': fputs(verify_usage, stdout); fputs("\n", stdout);
                  fputs(verify_help, stdout); return 0;
        default: return fst__cli_getopt_error(cmd, verify_usage, c, argv);
        }
    }
    if (argc - optind != 1)
        return fst__cli_usage(cmd, verify_usage, argc - optind < 1 ? "needs STORE"
                              : "too many arguments");
    const char *path = argv[optind];

    fst_store *st = NULL;
    uint64_t checked = 0, bad = 0;
    fst_status s = fst_store_open(path, nolock, &st);
    if (!s)
        s = fst_store_verify(st, print_bad, NULL, &checked, &bad);
    fst_store_close(st);
    fflush(stdout);
    if (s == FST_ECORRUPT || bad) {
        fprintf(stderr, "featstore verify: %s: %" PRIu64 " of %" PRIu64 " records bad\n",
                path, bad, checked);
        return 1;
    }
    if (s)
        return failed(cmd, s);
    if (!quiet)
        printf("%s: %" PRIu64 " records checked, all good\n", path, checked);
    return 0;
}

/* ---- synth ---- */

static const char synth_usage[] =
    "usage: featstore synth OUT.h5 [--pairs P.txt] [--truth T.txt] [--images N]\n"
    "                       [--keypoints K] [--dim D] [--dtype float16|float32]\n"
    "                       [--planted F] [--noise S] [--seed S] [--npairs P]\n"
    "                       [--prefix NAME] [--scales-oris] [--quiet]\n";

static const char synth_help[] =
    "Write a synthetic features.h5 in hloc's layout with planted\n"
    "correspondences: image i shares F x K keypoints with image i+1 (the\n"
    "descriptor plus gaussian noise, re-normalised). Deterministic in the seed.\n"
    "\n"
    "  --pairs P.txt    also write the pairs file (`name0 name1` per line):\n"
    "                   consecutive images, then images 2 apart, 3 apart...\n"
    "  --npairs P       number of pairs (default: every consecutive pair)\n"
    "  --truth T.txt    also write the planted correspondences, `name0 name1 i j`\n"
    "  --images N       images (default 24)\n"
    "  --keypoints K    keypoints per image (default 1024)\n"
    "  --dim D          descriptor dimension (default 128)\n"
    "  --dtype T        float16 (default; like hloc's as_half, keypoints and\n"
    "                   scores too) or float32\n"
    "  --planted F      share of keypoints planted in the next image, 0..0.5\n"
    "                   (default 0.5)\n"
    "  --noise S        expected norm of the noise added to a planted unit\n"
    "                   descriptor (default 0.05)\n"
    "  --seed S         random seed (default 1)\n"
    "  --prefix NAME    image names NAME0000.jpg... (default synth/img)\n"
    "  --scales-oris    also write DoG-style `scales` and `oris` (N,) per image\n"
    "  -q, --quiet      no progress bar, no summary\n"
    "  -h, --help       this text\n"
    "\n"
    "Refuses to replace existing files.\n";

int fst_cmd_synth(int argc, char **argv)
{
    enum { O_PAIRS = 256, O_TRUTH, O_IMAGES, O_KP, O_DIM, O_DTYPE, O_PLANTED, O_NOISE,
           O_SEED, O_NPAIRS, O_PREFIX, O_SCALES_ORIS };
    static const struct option longopts[] = {
        {"pairs", required_argument, NULL, O_PAIRS},
        {"truth", required_argument, NULL, O_TRUTH},
        {"images", required_argument, NULL, O_IMAGES},
        {"keypoints", required_argument, NULL, O_KP},
        {"dim", required_argument, NULL, O_DIM},
        {"dtype", required_argument, NULL, O_DTYPE},
        {"planted", required_argument, NULL, O_PLANTED},
        {"noise", required_argument, NULL, O_NOISE},
        {"seed", required_argument, NULL, O_SEED},
        {"npairs", required_argument, NULL, O_NPAIRS},
        {"prefix", required_argument, NULL, O_PREFIX},
        {"scales-oris", no_argument, NULL, O_SCALES_ORIS},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "synth";
    fst_synth_opts o = fst_synth_opts_default();
    const char *pairs = NULL, *truth = NULL;
    bool quiet = false;
    int c, bad = 0;
    getopt_reset();
    while ((c = getopt_long(argc, argv, ":qh", longopts, NULL)) != -1) {
        switch (c) {
        case O_PAIRS:   pairs = optarg; break;
        case O_TRUTH:   truth = optarg; break;
        case O_IMAGES:  bad = fst__cli_u32(cmd, "--images", optarg, 1, 10000000, &o.n_images); break;
        case O_KP:      bad = fst__cli_u32(cmd, "--keypoints", optarg, 0, 1u << 24, &o.n_keypoints); break;
        case O_DIM:     bad = fst__cli_u32(cmd, "--dim", optarg, 1, 65536, &o.d); break;
        case O_DTYPE:   bad = fst__cli_dtype(cmd, "--dtype", optarg, &o.dtype); break;
        case O_PLANTED: bad = fst__cli_float(cmd, "--planted", optarg, 0, 0.5, &o.planted_fraction); break;
        case O_NOISE:   bad = fst__cli_float(cmd, "--noise", optarg, 0, 1e6, &o.noise); break;
        case O_SEED:    bad = fst__cli_u64(cmd, "--seed", optarg, 0, UINT64_MAX, &o.seed); break;
        case O_NPAIRS:  bad = fst__cli_u32(cmd, "--npairs", optarg, 0, UINT32_MAX, &o.n_pairs); break;
        case O_PREFIX:  o.prefix = optarg; break;
        case O_SCALES_ORIS: o.scales_oris = true; break;
        case 'q': quiet = true; break;
        case 'h': fputs(synth_usage, stdout); fputs("\n", stdout);
                  fputs(synth_help, stdout); return 0;
        default: return fst__cli_getopt_error(cmd, synth_usage, c, argv);
        }
        if (bad)
            return fst__cli_usage(cmd, synth_usage, NULL);
    }
    if (argc - optind != 1)
        return fst__cli_usage(cmd, synth_usage, argc - optind < 1 ? "needs OUT.h5"
                              : "too many arguments");
    const char *out = argv[optind];

    fst__bar bar;
    fst__bar_init(&bar, "images", quiet);
    fst__cli_catch_signals();
    fst_status s = fst_synth_h5(out, pairs, truth, &o, fst__bar_cb, &bar);
    fst__bar_clear(&bar);
    if (s == FST_EINVAL)
        return fst_cmd_error(cmd, s), 2;
    if (s)
        return failed(cmd, s);
    if (!quiet) {
        char h[FST__HUMAN_LEN];
        printf("wrote %s: %u images x %u keypoints x %u-D %s (%s) in %.2f s\n", out,
               o.n_images, o.n_keypoints, o.d, fst_dtype_name(o.dtype),
               fst__human_bytes(bar.bytes, h), fst__bar_elapsed(&bar));
        if (pairs)
            printf("wrote %s\n", pairs);
        if (truth)
            printf("wrote %s\n", truth);
    }
    return 0;
}
