/* kernels/backend.c : the backend registry, presets, argument checks and
 * the fst_backend_* calls that dispatch to a backend's ops. */
#include "backend_impl.h"
#include "fst_config.h"
#include "module_abi.h"

#include <dlfcn.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if FST_HAVE_CUDA
/* The CUDA backend lives in a module (libfst_cuda.so) loaded on first use,
 * so that a process that never opens it (the coordinator, CPU workers)
 * never maps cuBLAS: ~105 MB of relocated data per process. A program that
 * links the backend in (tests, the GPU benchmark) defines the symbol. */
__attribute__((weak)) const fst_backend_ops *fst__cuda_backend(void);

static char cuda_module_error[512];

/* What the module calls featstore for, in this program (module_abi.h). */
static fst_status host_vfail(fst_status s, bool prefix, const char *fmt,
                             va_list ap)
{
    /* longer than the detail slot, so that fst__fail marks an over-long
     * message as cut */
    char msg[2048];
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    if (n >= (int)sizeof msg)
        memcpy(msg + sizeof msg - 4, "...", 4);
    return prefix ? fst__failpre(s, "%s", msg) : fst__fail(s, "%s", msg);
}

static void host_assert_fail(const char *what, const char *file, int line)
{
    fst__assert_fail(what, file, line);
}

static const fst_module_host module_host = {
    .abi = FST_MODULE_ABI,
    .size = sizeof(fst_module_host),
    .vfail = host_vfail,
    .errdetail = fst_errdetail,
    .assert_fail = host_assert_fail,
    .dtype_size = fst_dtype_size,
    .param_next = fst__param_next,
    .match_check = fst__match_check,
    .backend_name = fst_backend_name,
    .match_reference = fst_match_reference,
};

/* Load `path` and get its ops through its entry point; NULL with
 * cuda_module_error set if it is no module of this featstore build. */
static const fst_backend_ops *load_module(const char *path)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(cuda_module_error, sizeof cuda_module_error, "%.500s", dlerror());
        return NULL;
    }
    fst_module_entry_fn entry;
    *(void **)&entry = dlsym(h, FST_MODULE_ENTRY);
    if (!entry) {
        snprintf(cuda_module_error, sizeof cuda_module_error,
                 "%.400s: no %s (not a backend module of this featstore)", path,
                 FST_MODULE_ENTRY);
        dlclose(h);
        return NULL;
    }
    const fst_backend_ops *ops = NULL;
    uint32_t abi = entry(FST_MODULE_ABI, &module_host, &ops);
    if (abi != FST_MODULE_ABI || !ops) {
        snprintf(cuda_module_error, sizeof cuda_module_error,
                 "%.400s: module ABI %u, this program's is %u (built from "
                 "another featstore)", path, abi, FST_MODULE_ABI);
        dlclose(h);
        return NULL;
    }
    return ops;   /* the module stays loaded for the process's life */
}

static const fst_backend_ops *cuda_from_module(void)
{
    static const fst_backend_ops *ops;
    static bool tried;
    if (tried)
        return ops;
    tried = true;
    char exe[PATH_MAX], cand[3][PATH_MAX + 64];
    int nc = 0;
    const char *env = getenv("FST_CUDA_MODULE");
    if (env && *env)
        snprintf(cand[nc++], sizeof cand[0], "%s", env);
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            /* build tree: <build>/{tools,tests,benchmarks}/prog */
            snprintf(cand[nc++], sizeof cand[0], "%s/../kernels/cuda/libfst_cuda.so", exe);
        }
    }
    snprintf(cand[nc++], sizeof cand[0], "%s", FST_CUDA_MODULE_INSTALLED);
    cuda_module_error[0] = '\0';
    for (int i = 0; i < nc && !ops; i++)
        if (access(cand[i], F_OK) == 0)
            ops = load_module(cand[i]);
    if (!ops && !cuda_module_error[0])
        snprintf(cuda_module_error, sizeof cuda_module_error,
                 "libfst_cuda.so not found (looked in %.200s%s%.200s; set "
                 "FST_CUDA_MODULE)", nc > 1 ? cand[nc - 2] : "",
                 nc > 1 ? " and " : "", cand[nc - 1]);
    return ops;
}

static const fst_backend_ops *cuda_entry(void)
{
    return fst__cuda_backend ? fst__cuda_backend() : cuda_from_module();
}
#endif

static const fst_backend_ops *(*const registry[])(void) = {
    fst__cpu_backend,
#if FST_HAVE_CUDA
    cuda_entry,
#endif
};
#define N_REGISTRY (sizeof registry / sizeof registry[0])

/* Backends that exist somewhere, built here or not: asking for one of these
 * that this binary lacks is FST_ENODEVICE, anything else FST_EINVAL. */
static const char *const known_backends[] = { "cpu", "cuda" };

static const fst_backend_ops *find_ops(const char *name)
{
    for (size_t i = 0; i < N_REGISTRY; i++) {
        const fst_backend_ops *ops = registry[i]();
        if (ops && strcmp(ops->name, name) == 0)
            return ops;
    }
    return NULL;
}

fst_match_opts fst_match_opts_default(void)
{
    fst_match_opts o;
    o.mutual = true;
    o.ratio_threshold = 0.0;
    o.distance_threshold = 0.0;
    return o;
}

fst_status fst_match_preset(const char *name, fst_match_opts *out)
{
    if (!name || !out)
        return fst__fail(FST_EINVAL, "fst_match_preset: NULL argument");
    fst_match_opts o = fst_match_opts_default();
    if (strcmp(name, "NN-mutual") == 0) {
        /* defaults */
    } else if (strcmp(name, "NN-ratio") == 0) {
        o.ratio_threshold = 0.8;
    } else if (strcmp(name, "NN-superpoint") == 0) {
        o.distance_threshold = 0.7;
    } else {
        return fst__fail(FST_EINVAL, "unknown matcher preset '%s' (known: "
                         "NN-mutual, NN-ratio, NN-superpoint)", name);
    }
    *out = o;
    return FST_OK;
}

static fst_status check_opts(const fst_match_opts *o)
{
    if (!(o->ratio_threshold >= 0.0) || !isfinite(o->ratio_threshold))
        return fst__fail(FST_EINVAL, "ratio_threshold %g: must be >= 0 "
                         "(0 = off)", o->ratio_threshold);
    if (!(o->distance_threshold >= 0.0) || !isfinite(o->distance_threshold))
        return fst__fail(FST_EINVAL, "distance_threshold %g: must be >= 0 "
                         "(0 = off)", o->distance_threshold);
    return FST_OK;
}

static const char *nm(const fst_view *v)
{
    return v->name ? v->name : "(unnamed)";
}

fst_status fst__match_check(const fst_view *a, const fst_view *b,
                            fst_matches *out)
{
    if (!a || !b || !out)
        return fst__fail(FST_EINVAL, "match: NULL view or output");
    if (a->n > 0 && (!out->matches0 || !out->scores0))
        return fst__fail(FST_EINVAL, "match %s - %s: NULL output arrays",
                         nm(a), nm(b));
    if (a->n == 0 || b->n == 0) {
        out->n0 = a->n;
        out->nmatches = 0;
        /* hloc's empty case; no descriptor is read, so d and dtype of an
         * image without keypoints (often 0 / unknown) do not matter. */
        for (uint32_t i = 0; i < a->n; i++) {
            out->matches0[i] = -1;
            out->scores0[i] = 0.0f;
        }
        return FST_DONE;
    }
    if (fst_dtype_size(a->dtype) == 0 || fst_dtype_size(b->dtype) == 0)
        return fst__fail(FST_EINVAL, "match %s - %s: unknown descriptor "
                         "dtype (%d, %d)", nm(a), nm(b), (int)a->dtype,
                         (int)b->dtype);
    if (a->dtype != b->dtype)
        return fst__fail(FST_EINVAL, "match %s - %s: descriptor dtypes "
                         "differ (%s vs %s)", nm(a), nm(b),
                         fst_dtype_name(a->dtype), fst_dtype_name(b->dtype));
    if (a->d != b->d)
        return fst__fail(FST_EINVAL, "match %s - %s: descriptor dimensions "
                         "differ (%u vs %u)", nm(a), nm(b), a->d, b->d);
    if (a->d > 0 && (!a->desc || !b->desc))
        return fst__fail(FST_EINVAL, "match %s - %s: NULL descriptors",
                         nm(a), nm(b));
    out->n0 = a->n;
    out->nmatches = 0;
    return FST_OK;
}

fst_status fst_backend_open(const char *name, const fst_match_opts *opts,
                            const char *params, fst_backend **out)
{
    if (!name || !out)
        return fst__fail(FST_EINVAL, "fst_backend_open: NULL argument");
    fst_match_opts o = opts ? *opts : fst_match_opts_default();
    fst_status s = check_opts(&o);
    if (s != FST_OK)
        return s;
    const fst_backend_ops *ops = find_ops(name);
    if (!ops) {
        for (size_t i = 0; i < sizeof known_backends / sizeof *known_backends; i++)
            if (strcmp(name, known_backends[i]) == 0) {
#if FST_HAVE_CUDA
                if (strcmp(name, "cuda") == 0 && cuda_module_error[0])
                    return fst__fail(FST_ENODEVICE, "backend 'cuda': cannot "
                                     "load its module: %s", cuda_module_error);
#endif
                return fst__fail(FST_ENODEVICE, "backend '%s' is not built "
                                 "into this binary", name);
            }
        return fst__fail(FST_EINVAL, "unknown backend '%s'", name);
    }
    fst_backend *be = calloc(1, sizeof *be);
    if (!be)
        return fst__fail(FST_ENOMEM, "opening backend %s", name);
    be->ops = ops;
    be->opts = o;
    s = ops->open(be, params);
    if (s != FST_OK) {
        free(be);   /* open() failing leaves nothing in be->impl */
        return s;
    }
    *out = be;
    return FST_OK;
}

const char *fst_backend_name(const fst_backend *be)
{
    return be ? be->ops->name : "(none)";
}

static fst_status check_usable(fst_backend *be)
{
    if (!be)
        return fst__fail(FST_EINVAL, "NULL backend");
    if (be->failed)
        return fst__fail(FST_EDEVICE, "backend %s failed earlier; only "
                         "fst_backend_close() is allowed", be->ops->name);
    return FST_OK;
}

static fst_status note_failure(fst_backend *be, fst_status s)
{
    if (s == FST_EDEVICE)
        be->failed = true;
    return s;
}

fst_status fst_backend_match(fst_backend *be, const fst_view *a,
                             const fst_view *b, fst_matches *out)
{
    fst_status s = check_usable(be);
    if (s != FST_OK)
        return s;
    s = fst__match_check(a, b, out);
    if (s == FST_DONE)
        return FST_OK;
    if (s != FST_OK)
        return s;
    return note_failure(be, be->ops->match(be, a, b, out));
}

fst_status fst_backend_match_batch(fst_backend *be, fst_match_job *jobs,
                                   size_t n_jobs)
{
    fst_status s = check_usable(be);
    if (s != FST_OK)
        return s;
    if (n_jobs > 0 && !jobs)
        return fst__fail(FST_EINVAL, "fst_backend_match_batch: NULL jobs");
    if (be->ops->match_batch)
        return note_failure(be, be->ops->match_batch(be, jobs, n_jobs));
    fst_status first = FST_OK;
    for (size_t i = 0; i < n_jobs; i++) {
        fst_match_job *j = &jobs[i];
        s = fst__match_check(j->a, j->b, j->out);
        if (s == FST_OK)
            s = note_failure(be, be->ops->match(be, j->a, j->b, j->out));
        else if (s == FST_DONE)
            s = FST_OK;
        j->status = s;
        if (s != FST_OK && first == FST_OK)
            first = s;
        if (s == FST_EDEVICE) {   /* the rest cannot run */
            for (size_t k = i + 1; k < n_jobs; k++)
                jobs[k].status = FST_EDEVICE;
            break;
        }
    }
    return first;
}

fst_status fst_backend_sync(fst_backend *be)
{
    fst_status s = check_usable(be);
    if (s != FST_OK)
        return s;
    return be->ops->sync ? note_failure(be, be->ops->sync(be)) : FST_OK;
}

void fst_backend_stats(fst_backend *be, char *buf, size_t len)
{
    if (!buf || len == 0)
        return;
    buf[0] = '\0';
    if (!be)
        return;
    if (be->ops->stats)
        be->ops->stats(be, buf, len);
    else
        snprintf(buf, len, "%s", be->ops->name);
    buf[len - 1] = '\0';
}

void fst_backend_close(fst_backend *be)
{
    if (!be)
        return;
    be->ops->close(be);
    free(be);
}

bool fst_backend_available(const char *name)
{
#if FST_HAVE_CUDA
    /* Built: its module is loaded by the process that opens it, not by
     * one (a coordinator) that only asks. */
    if (name && strcmp(name, "cuda") == 0)
        return true;
#endif
    return name && find_ops(name) != NULL;
}

/* The keys each backend's open() takes (cpu_backend.c's cpu_open,
 * cuda/plan.c's fst__cu_params_parse): checked here, where no module needs
 * loading. */
static const char *const cpu_keys[] = {"threads", "isa", NULL};
static const char *const cuda_keys[] = {"device", "cache_mb", "headroom_mb", "share",
                                        "sim_mb", "ring_mb", "transfer", "tf32", "pad",
                                        "timeout_s", "profile", "fault", NULL};

fst_status fst_backend_check_params(const char *name, const char *params)
{
    const char *const *keys = !name ? NULL : !strcmp(name, "cpu") ? cpu_keys
                            : !strcmp(name, "cuda") ? cuda_keys : NULL;
    if (!keys)
        return fst__fail(FST_EINVAL, "unknown backend '%s'", name ? name : "(null)");
    const char *p = params;
    char key[64], val[256];
    fst_status s;
    while ((s = fst__param_next(&p, key, sizeof key, val, sizeof val)) == FST_OK) {
        size_t k = 0;
        while (keys[k] && strcmp(keys[k], key)) k++;
        if (keys[k]) continue;
        char known[256];
        size_t l = 0;
        known[0] = '\0';
        for (k = 0; keys[k] && l < sizeof known; k++)
            l += (size_t)snprintf(known + l, sizeof known - l, "%s%s", k ? ", " : "", keys[k]);
        return fst__fail(FST_EINVAL, "%s backend: unknown parameter '%s' (known: %s)", name,
                         key, known);
    }
    return s == FST_DONE ? FST_OK : s;
}

fst_status fst__param_next(const char **p, char *key, size_t key_len,
                           char *val, size_t val_len)
{
    const char *s = *p;
    if (!s)
        return FST_DONE;
    while (*s == ',' || *s == ' ')
        s++;
    if (*s == '\0') {
        *p = s;
        return FST_DONE;
    }
    const char *end = strchr(s, ',');
    if (!end)
        end = s + strlen(s);
    const char *eq = memchr(s, '=', (size_t)(end - s));
    int item_len = (int)(end - s);
    if (!eq || eq == s)
        return fst__fail(FST_EINVAL, "malformed parameter '%.*s' (expected "
                         "key=value)", item_len, s);
    size_t klen = (size_t)(eq - s), vlen = (size_t)(end - eq - 1);
    while (klen > 0 && s[klen - 1] == ' ')
        klen--;
    while (vlen > 0 && eq[vlen] == ' ')
        vlen--;
    if (klen + 1 > key_len || vlen + 1 > val_len)
        return fst__fail(FST_EINVAL, "parameter '%.*s' too long",
                         item_len, s);
    memcpy(key, s, klen);
    key[klen] = '\0';
    const char *v = eq + 1;
    while (*v == ' ' && vlen > 0) {
        v++;
        vlen--;
    }
    memcpy(val, v, vlen);
    val[vlen] = '\0';
    *p = end;
    return FST_OK;
}
