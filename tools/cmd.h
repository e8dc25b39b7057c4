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
/* cmd_merge.c */
int fst_cmd_merge(int argc, char **argv);

/* fst__shard_resolve() :
 * The shard a match runs: `arg` (--shard "K/N", 0 <= K < N; "all": the
 * whole list, whatever the environment) wins; without it, Slurm's
 * environment: an array task (SLURM_ARRAY_TASK_ID - _MIN, divided by
 * _STEP, of _COUNT or (_MAX - _MIN) / _STEP + 1 tasks; an array of one
 * task is refused: a resubmitted task cannot know N), else an srun step of
 * several tasks (SLURM_PROCID of SLURM_STEP_NUM_TASKS). *n = 0: no shard.
 * *source: "--shard", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID" or NULL.
 * @return 0; 2 (malformed --shard) or 1 (an environment that names no
 *         shard) with the message in err. */
int fst__shard_resolve(const char *arg, uint32_t *k, uint32_t *n, const char **source,
                       char *err, size_t errlen);

/* Print "featstore CMD: <strerror>: <detail>" to stderr for status s. */
void fst_cmd_error(const char *cmd, fst_status s);

#endif
