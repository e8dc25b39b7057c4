/* fst_kernels.h : the one matching interface.
 *
 * A backend matches image a against image b (whole views: keypoints,
 * scores, image size and descriptors, so that neural matchers fit behind
 * the same calls later) and fills hloc's matches0 / matching_scores0.
 * Backends: "cpu" (always), "cuda" (when built with nvcc; needs a device at
 * open time). Semantics are hloc's `nearest_neighbor` matcher; see
 * fst_match_opts.
 */
#ifndef FST_KERNELS_H
#define FST_KERNELS_H

#include "fst_base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Matcher options, hloc's `nearest_neighbor` conf. A threshold of 0 means
 * off. Semantics (exactly hloc's):
 *  - sim = dot(d0_i, d1_j) in float32 (float16 widened); descriptors used
 *    as stored, never re-normalised;
 *  - per row the best and second-best j (exact tie: lowest index);
 *    dist = 2 (1 - sim);
 *  - ratio: keep row i iff dist_best <= (float)(r*r) * dist_second in
 *    float32, r*r in double; only
 *    when both images have >= 2 keypoints;
 *  - distance: keep row i iff dist_best <= (float)(t*t);
 *  - score = (sim_best + 1) / 2 where kept, else 0;
 *  - mutual: the same tests in the other direction; i keeps m0[i] iff the
 *    backward match of m0[i] is i. scores0 is NOT zeroed by the mutual
 *    check (hloc writes the forward score);
 *  - 0 keypoints on either side: n0 entries of -1 and scores 0. */
typedef struct fst_match_opts {
    bool   mutual;              /* default true */
    double ratio_threshold;     /* default 0 (off) */
    double distance_threshold;  /* default 0 (off) */
} fst_match_opts;
/* Thresholds are doubles, as in hloc's Python conf: r*r is formed in double
 * and only then rounded to float32 (0.8 -> 0.64f), as torch does. */

/* fst_match_opts_default() : mutual on, thresholds off (hloc's defaults). */
fst_match_opts fst_match_opts_default(void);

/* fst_match_preset() :
 * hloc's presets: "NN-mutual" (mutual), "NN-ratio" (mutual, ratio 0.8),
 * "NN-superpoint" (mutual, distance 0.7).
 * @return FST_OK; FST_EINVAL for an unknown name (*out untouched). */
fst_status fst_match_preset(const char *name, fst_match_opts *out);

/* fst_matches_bound() : elements matches0 and scores0 need for image a. */
static inline size_t fst_matches_bound(const fst_view *a) { return a->n; }

/* fst_match_reference() :
 * The plain, obviously correct implementation (each similarity a double
 * sum rounded once to float32, no tiling) every fast path is tested
 * against. Slow: O(n0 n1 d). opts NULL means fst_match_opts_default().
 * out->matches0 / scores0 hold fst_matches_bound(a) elements. When either
 * image has 0 keypoints no descriptor is read (d and dtype not checked).
 * Any thread.
 * @return FST_OK; FST_EINVAL (d or dtype differ: the detail names both
 *         images; unknown dtype; NULL arrays); FST_ENOMEM. */
fst_status fst_match_reference(const fst_view *a, const fst_view *b,
                               const fst_match_opts *opts, fst_matches *out);

typedef struct fst_backend fst_backend;

/* fst_backend_open() :
 * Open backend `name` ("cpu", "cuda") with matcher options `opts` (NULL:
 * fst_match_opts_default(); negative or non-finite thresholds are
 * FST_EINVAL) and a parameter string `params` ("key=value,key=value"; NULL
 * or "" for defaults; unknown keys are FST_EINVAL naming the key).
 * CPU keys: threads=N (1..64, default 1: threads inside one call, each
 *   taking a share of b's keypoints; the result does not depend on N),
 *   isa=auto|avx512|avx2|scalar (default auto, the best this CPU runs;
 *   one this CPU lacks is FST_ENODEVICE).
 * CUDA keys: device, cache_mb, headroom_mb, share, sim_mb, ring_mb,
 *   transfer, tf32, pad, timeout_s, profile (README.md's "Parameters"
 *   table gives each one's values, default and meaning), and fault, for
 *   tests only (kernels/cuda/plan.h).
 * *out is owned by the caller: fst_backend_close() it. One thread at a time
 * per backend. A backend keeps its working buffers between calls (they
 * only grow), so a worker matching millions of pairs allocates nothing
 * per pair once warm.
 * @return FST_OK; FST_EINVAL; FST_ENODEVICE (backend not built, no device,
 *         instruction set missing); FST_EDEVICE; FST_ENOMEM. */
fst_status fst_backend_open(const char *name, const fst_match_opts *opts,
                            const char *params, fst_backend **out);

/* fst_backend_check_params() :
 * Check a parameter string for backend `name` ("cpu", "cuda") without
 * opening it: its syntax (key=value items) and its keys (those
 * fst_backend_open() lists). Values are checked when the backend opens.
 * Loads no module and touches no device, so a process that never runs a
 * backend (the match coordinator) can refuse a typo before any work.
 * NULL or "" is fine. Any thread.
 * @return FST_OK; FST_EINVAL (the detail names the key and lists the
 *         known ones, or the malformed item, or an unknown backend). */
fst_status fst_backend_check_params(const char *name, const char *params);

/* fst_backend_name() : "cpu", "cuda", ... Static. */
const char *fst_backend_name(const fst_backend *be);

/* fst_backend_match() :
 * Match a against b into out (caller-owned arrays of fst_matches_bound(a)
 * elements; out->n0 and out->nmatches are set). Views are only read, and
 * may be released after the call returns.
 * @return FST_OK; FST_EINVAL (d or dtype differ; detail names both images);
 *         FST_ENOMEM; FST_EDEVICE (then only fst_backend_close()). */
fst_status fst_backend_match(fst_backend *be, const fst_view *a,
                             const fst_view *b, fst_matches *out);

/* One pair of a batch. */
typedef struct fst_match_job {
    const fst_view *a, *b;
    fst_matches    *out;        /* caller-owned, as for fst_backend_match */
    fst_status      status;     /* set per job */
} fst_match_job;

/* fst_backend_match_batch() :
 * Match many pairs in one call. A backend may reuse work across jobs that
 * share an image (same `desc` pointer, n, d and dtype): order jobs so that
 * consecutive ones do (the CPU backend keeps the last a and the last b
 * packed). Nothing is reused across calls, so a buffer may be rewritten
 * between calls. Every view must stay valid, unchanged, until the call
 * returns. Each job's status is set; a failing job does not stop the
 * others (except after FST_EDEVICE).
 * @return FST_OK if every job succeeded; else the first failing job's
 *         status (FST_EDEVICE: then only fst_backend_close()). */
fst_status fst_backend_match_batch(fst_backend *be, fst_match_job *jobs,
                                   size_t n_jobs);

/* fst_backend_sync() : wait for work in flight (no-op on the CPU). */
fst_status fst_backend_sync(fst_backend *be);

/* fst_backend_stats() : a one-line, human-readable summary of counters
 * into buf (always NUL-terminated), e.g. for the CPU
 * "cpu isa=avx512 threads=1 pairs=12 packs=13 pack_hits=11". */
void fst_backend_stats(fst_backend *be, char *buf, size_t len);

/* fst_backend_close() : free everything the backend holds. NULL is fine. */
void fst_backend_close(fst_backend *be);

/* fst_backend_available() :
 * Whether backend `name` was built into this binary ("cpu" always is). Says
 * nothing about devices being present. The "cuda" backend is a module
 * (libfst_cuda.so, found beside the build tree's programs, in
 * <libdir>/featstore, or at $FST_CUDA_MODULE) that only the process
 * opening it should load, so CPU processes never map CUDA or cuBLAS:
 * asking for "cpu" or "cuda" loads nothing ("cuda" is true when built,
 * whether or not its module would load); asking for any other name asks
 * every built backend its name, which loads the module (dlopen) in a
 * build with CUDA, as fst_backend_open() of an unknown name does. */
bool fst_backend_available(const char *name);

#ifdef __cplusplus
}
#endif
#endif
