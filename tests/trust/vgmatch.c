/* vgmatch.c : `featstore match` with a chosen worker executable, so that
 * valgrind can check the workers (tests/trust/valgrind.sh).
 *
 *   vgmatch STORE PAIRS OUT WORKER_EXE
 *
 * The coordinator cannot itself run under valgrind: its journal maps 1 TiB
 * of address space (store/journal.c), more than valgrind manages. So this
 * runs the coordinator natively with one CPU worker started as WORKER_EXE
 * (a script that execs `valgrind featstore worker ...`). Exit 0 when every
 * pair was matched, else 1 with the message. */
#include "fst_worker.h"

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: vgmatch STORE PAIRS OUT WORKER_EXE\n");
        return 2;
    }
    fst_run_opts o = fst_run_opts_default();
    o.store = argv[1];
    o.pairs = argv[2];
    o.output = argv[3];
    o.worker_exe = argv[4];
    o.device = "cpu";
    o.workers = 1;
    fst_run_stats st;
    fst_status s = fst_match_run(&o, &st);
    printf("vgmatch: %s: %llu pairs matched, %llu written, %u worker restarts\n",
           fst_status_name(s), (unsigned long long)st.pairs_matched,
           (unsigned long long)st.pairs_written, st.worker_restarts);
    if (s)
        fprintf(stderr, "vgmatch: %s: %s\n", fst_strerror(s), fst_errdetail());
    int bad = s != FST_OK || st.pairs_matched != st.pairs_todo || st.worker_restarts;
    fst_run_stats_free(&st);
    return bad;
}
