/* featstore : the command line. Parses the subcommand and hands over to the
 * cmd_*.c file that implements it. */
#include <stdio.h>
#include <string.h>

#include "cmd.h"
#include "fst_config.h"

/* A command whose file is not built yet resolves to NULL. */
#define WEAK __attribute__((weak))
WEAK int fst_cmd_import(int, char **);
WEAK int fst_cmd_export(int, char **);
WEAK int fst_cmd_info(int, char **);
WEAK int fst_cmd_verify(int, char **);
WEAK int fst_cmd_synth(int, char **);
WEAK int fst_cmd_match(int, char **);
WEAK int fst_cmd_worker(int, char **);
WEAK int fst_cmd_weights(int, char **);
WEAK int fst_cmd_merge(int, char **);

typedef struct command {
    const char *name;
    int (*fn)(int, char **);
    const char *summary;
} command;

static const command commands[] = {
    {"import", fst_cmd_import, "convert an hloc features.h5 into a store (once)"},
    {"info",   fst_cmd_info,   "print a store's metadata"},
    {"verify", fst_cmd_verify, "re-check every record's checksum and bounds"},
    {"export", fst_cmd_export, "write a store back as an hloc features.h5"},
    {"match",  fst_cmd_match,  "match a pairs file with N workers into matches.h5"},
    {"merge",  fst_cmd_merge,  "join the parts of a sharded match run (--shard) into one matches.h5"},
    {"synth",  fst_cmd_synth,  "generate a synthetic features.h5 and pairs file"},
    {"weights", fst_cmd_weights, "list the tensors of a weight file (.pth, .safetensors)"},
    {"worker", fst_cmd_worker, NULL},  /* internal, spawned by match */
};

void fst_cmd_error(const char *cmd, fst_status s)
{
    const char *d = fst_errdetail();
    if (d[0])
        fprintf(stderr, "featstore %s: %s: %s\n", cmd, fst_strerror(s), d);
    else
        fprintf(stderr, "featstore %s: %s\n", cmd, fst_strerror(s));
}

static void usage(FILE *f)
{
    fprintf(f, "usage: featstore COMMAND [ARGS...]\n\n"
               "commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (commands[i].summary && commands[i].fn)
            fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n'featstore COMMAND --help' describes one command.\n"
               "featstore %s (CUDA backend %s)\n", FST_VERSION_STRING,
            FST_HAVE_CUDA ? "built" : "not built");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *name = argv[1];
    if (!strcmp(name, "-h") || !strcmp(name, "--help") || !strcmp(name, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(name, "--version") || !strcmp(name, "version")) {
        printf("featstore %s\n", FST_VERSION_STRING);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(commands[i].name, name) != 0)
            continue;
        if (!commands[i].fn) {
            fprintf(stderr, "featstore: '%s' is not built into this binary\n", name);
            return 2;
        }
        return commands[i].fn(argc - 1, argv + 1);
    }
    fprintf(stderr, "featstore: unknown command '%s'\n\n", name);
    usage(stderr);
    return 2;
}
