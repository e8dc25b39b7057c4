/* vgmatch.c : `featstore match` with a chosen worker executable, so that
 * valgrind can check the coordinator and its workers in one run
 * (tests/trust/valgrind.sh).
 *
 *   valgrind --trace-children=yes vgmatch STORE PAIRS OUT WORKER_EXE
 *
 * `featstore match` starts its workers as /proc/self/exe, which under
 * valgrind is valgrind's own tool binary, not featstore; this runs the
 * same coordinator (fst_match_run()) with one CPU worker started as
 * WORKER_EXE (a featstore binary: valgrind traces it as a child). Exit 0
 * when every pair was matched without a worker restart, else 1 with the
 * message. */
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
