/* readers.c : N processes reading one store at once (tests/trust/).
 *
 *   readers STORE N
 *
 * Forks N children. Each opens STORE with checksums on, begins a read
 * transaction, reads every record (fst_reader_next), hashes every
 * descriptor, keypoint and score byte it was given, reports "ready" with
 * its count and hash through a pipe, and then waits, transaction still
 * open, until the parent releases everyone at once. When all N are ready
 * the parent opens the store and counts the reader slots in use (>= N: all
 * hold a transaction at the same moment), then releases them and reaps
 * them. Passes (exit 0) when every child read every record, all agree on
 * the hash, and every child exited 0. Prints the figures. */
#include "fst_store.h"
#include "store_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

typedef struct report {
    int32_t  status;
    uint32_t pid;
    uint64_t records;
    uint64_t hash;
} report;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void child(const char *path, int ready, int go)
{
    report r = {.status = 0, .pid = (uint32_t)getpid()};
    fst_store *st = NULL;
    fst_reader *rd = NULL;
    fst_status s = fst_store_open(path, FST_OPEN_CHECKSUMS, &st);
    if (s == FST_OK)
        s = fst_reader_begin(st, &rd);
    XXH3_state_t *h = XXH3_createState();
    XXH3_64bits_reset(h);
    fst_view v;
    while (s == FST_OK && (s = fst_reader_next(rd, &v)) == FST_OK) {
        r.records++;
        XXH3_64bits_update(h, v.name, strlen(v.name));
        XXH3_64bits_update(h, v.keypoints, (size_t)v.n * 8);
        if (v.scores)
            XXH3_64bits_update(h, v.scores, (size_t)v.n * 4);
        XXH3_64bits_update(h, v.desc,
                           (size_t)v.n * v.d * fst_dtype_size(v.dtype));
    }
    if (s == FST_DONE)
        s = FST_OK;
    else
        fprintf(stderr, "reader %d: %s: %s\n", (int)getpid(), fst_strerror(s),
                fst_errdetail());
    r.status = s;
    r.hash = XXH3_64bits_digest(h);
    XXH3_freeState(h);
    if (write(ready, &r, sizeof r) != (ssize_t)sizeof r)
        _exit(3);
    char c;
    while (read(go, &c, 1) < 0 && errno == EINTR)     /* EOF: released */
        ;
    fst_reader_end(rd);
    fst_store_close(st);
    _exit(s == FST_OK ? 0 : 1);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: readers STORE N\n");
        return 2;
    }
    const char *path = argv[1];
    int n = atoi(argv[2]);
    int rp[2], gp[2];
    if (n <= 0 || pipe(rp) || pipe(gp)) {
        perror("readers");
        return 2;
    }
    pid_t *pids = calloc((size_t)n, sizeof *pids);
    double t0 = now();
    for (int i = 0; i < n; i++) {
        fflush(NULL);
        pid_t p = fork();
        if (p < 0) {
            perror("fork");
            for (int k = 0; k < i; k++)
                kill(pids[k], SIGKILL);
            return 1;
        }
        if (p == 0) {
            close(rp[0]);
            close(gp[1]);
            child(path, rp[1], gp[0]);
        }
        pids[i] = p;
    }
    close(rp[1]);
    close(gp[0]);
    int bad = 0, got = 0;
    report first = {0};
    while (got < n) {
        struct pollfd pf = {.fd = rp[0], .events = POLLIN};
        if (poll(&pf, 1, 300000) <= 0) {
            fprintf(stderr, "readers: only %d of %d ready after 300 s\n",
                    got, n);
            bad = 1;
            break;
        }
        report r;
        ssize_t k = read(rp[0], &r, sizeof r);
        if (k == 0) {
            fprintf(stderr, "readers: children gone, %d of %d ready\n", got, n);
            bad = 1;
            break;
        }
        if (k != (ssize_t)sizeof r) {
            fprintf(stderr, "readers: short report\n");
            bad = 1;
            break;
        }
        if (got == 0)
            first = r;
        if (r.status != 0 || r.records != first.records ||
            r.hash != first.hash) {
            fprintf(stderr, "readers: pid %u: status %d, %" PRIu64
                    " records, hash %016" PRIx64 " (first: %" PRIu64
                    ", %016" PRIx64 ")\n", r.pid, r.status, r.records, r.hash,
                    first.records, first.hash);
            bad = 1;
        }
        got++;
    }
    double t_ready = now() - t0;
    unsigned slots = 0;
    if (!bad) {
        fst_store *st = NULL;
        fst_status s = fst_store_open(path, 0, &st);
        if (s == FST_OK)
            s = fst__store_reader_slots(st, &slots);
        if (s) {
            fprintf(stderr, "readers: counting slots: %s: %s\n",
                    fst_strerror(s), fst_errdetail());
            bad = 1;
        }
        fst_store_close(st);
        if (slots < (unsigned)n) {
            fprintf(stderr, "readers: %u reader slots in use, expected >= %d\n",
                    slots, n);
            bad = 1;
        }
    }
    close(gp[1]);                   /* release everyone */
    int exited_ok = 0;
    for (int i = 0; i < n; i++) {
        int ws;
        while (waitpid(pids[i], &ws, 0) < 0 && errno == EINTR)
            ;
        if (WIFEXITED(ws) && WEXITSTATUS(ws) == 0)
            exited_ok++;
        else {
            if (!bad)
                fprintf(stderr, "readers: pid %d: %s %d\n", (int)pids[i],
                        WIFEXITED(ws) ? "exit" : "signal",
                        WIFEXITED(ws) ? WEXITSTATUS(ws) : WTERMSIG(ws));
            bad = 1;
        }
    }
    printf("readers: %d processes, %" PRIu64 " records each, hash %016" PRIx64
           ", all holding a read transaction at once after %.1f s, %u reader "
           "slots in use, %d exited 0\n", n, first.records, first.hash,
           t_ready, slots, exited_ok);
    free(pids);
    return bad;
}
