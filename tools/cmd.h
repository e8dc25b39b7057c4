/* tools/cmd.h : the featstore subcommands. Each returns the process exit
 * status: 0 success, 1 failure (message printed), 2 usage error. */
#ifndef FST_TOOLS_CMD_H
#define FST_TOOLS_CMD_H

#include "fst_base.h"

/* cmd_store.c */
int fst_cmd_import(int argc, char **argv);
int fst_cmd_export(int argc, char **argv);
int fst_cmd_info(int argc, char **argv);
int fst_cmd_verify(int argc, char **argv);
int fst_cmd_synth(int argc, char **argv);
/* cmd_match.c */
int fst_cmd_match(int argc, char **argv);
int fst_cmd_worker(int argc, char **argv);   /* internal: a worker process */
/* cmd_weights.c */
int fst_cmd_weights(int argc, char **argv);

/* Print "featstore CMD: <strerror>: <detail>" to stderr for status s. */
void fst_cmd_error(const char *cmd, fst_status s);

#endif
