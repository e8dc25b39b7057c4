/* tools/cmd_weights.c : featstore weights, what a weight file holds. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cmd.h"
#include "cmdutil.h"
#include "fst_weights.h"

static const char weights_usage[] =
    "usage: featstore weights FILE [--json] [--lightglue-names]\n";

static const char weights_help[] =
    "Print what a weight file holds: its format (torch-zip, torch-legacy,\n"
    "safetensors), the number of tensors and of parameters (elements), and\n"
    "each tensor's name, dtype and shape, in the file's order. Reads\n"
    "torch.save files (zip and legacy) and safetensors; the pickles of a\n"
    "torch file are interpreted without running anything they name: a file\n"
    "that asks for anything else than a dict of tensors is refused.\n"
    "\n"
    "  --json             one JSON object instead of text\n"
    "  --lightglue-names  rename old LightGlue keys (self_attn.N ->\n"
    "                     transformers.N.self_attn, cross_attn.N -> ...\n"
    "                     .cross_attn) as LightGlue's loader does\n"
    "  -h, --help         this text\n";

/* A tensor name on one text line: control characters become '?' (the JSON
 * output escapes them instead). */
static void print_name(const char *name, int width)
{
    int n = 0;
    for (const char *p = name; *p; p++, n++)
        putchar((unsigned char)*p < 0x20 || *p == 0x7f ? '?' : *p);
    for (; n < width; n++)
        putchar(' ');
}

int fst_cmd_weights(int argc, char **argv)
{
    enum { O_JSON = 256, O_LG };
    static const struct option longopts[] = {
        {"json", no_argument, NULL, O_JSON},
        {"lightglue-names", no_argument, NULL, O_LG},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "weights";
    bool json = false, lg = false;
    int c;
    extern int optind, opterr;
    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case O_JSON: json = true; break;
        case O_LG: lg = true; break;
        case 'h': fputs(weights_usage, stdout); fputs("\n", stdout);
                  fputs(weights_help, stdout); return 0;
        default: return fst__cli_getopt_error(cmd, weights_usage, c, argv);
        }
    }
    if (argc - optind != 1)
        return fst__cli_usage(cmd, weights_usage, argc - optind < 1 ? "needs FILE"
                              : "too many arguments");
    const char *path = argv[optind];

    fst_weights *w = NULL;
    fst_status s = fst_weights_open(path, &w);
    if (!s && lg)
        s = fst_weights_rename_lightglue(w, 0);
    if (s) {
        fst_cmd_error(cmd, s);
        fst_weights_close(w);
        return 1;
    }
    size_t n = fst_weights_count(w);
    int64_t params = 0;
    uint64_t bytes = 0;
    for (size_t i = 0; i < n; i++) {
        params += fst_weights_at(w, i)->numel;
        bytes += fst_weights_at(w, i)->nbytes;
    }
    if (json) {
        printf("{\"file\": ");
        fst__json_str(stdout, path);
        printf(", \"format\": \"%s\", \"tensors\": %zu, \"parameters\": %" PRId64
               ", \"bytes\": %" PRIu64 ", \"entries\": [", fst_weights_format(w), n, params,
               bytes);
        for (size_t i = 0; i < n; i++) {
            const fst_weights_tensor *t = fst_weights_at(w, i);
            printf("%s{\"name\": ", i ? ", " : "");
            fst__json_str(stdout, t->name);
            printf(", \"dtype\": \"%s\", \"shape\": [", fst_weights_dtype_name(t->dtype));
            for (int d = 0; d < t->ndim; d++)
                printf("%s%" PRId64, d ? ", " : "", t->shape[d]);
            printf("]}");
        }
        printf("]}\n");
    } else {
        char h[FST__HUMAN_LEN], shape[160];
        size_t width = 0;
        for (size_t i = 0; i < n; i++) {
            size_t l = strlen(fst_weights_at(w, i)->name);
            width = l > width ? l : width;
        }
        width = width > 60 ? 60 : width;
        printf("file        %s\n", path);
        printf("format      %s\n", fst_weights_format(w));
        printf("tensors     %zu\n", n);
        printf("parameters  %" PRId64 " (%s)\n", params, fst__human_bytes(bytes, h));
        for (size_t i = 0; i < n; i++) {
            const fst_weights_tensor *t = fst_weights_at(w, i);
            printf("  ");
            print_name(t->name, (int)width);
            printf("  %-8s  %s\n", fst_weights_dtype_name(t->dtype),
                   fst_weights_shape_str(t->ndim, t->shape, shape, sizeof shape));
        }
    }
    fst_weights_close(w);
    return ferror(stdout) ? 1 : 0;
}
