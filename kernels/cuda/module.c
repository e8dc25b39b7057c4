/* kernels/cuda/module.c : the entry point of libfst_cuda.so, and the
 * featstore functions the backend calls, forwarded to the host's table
 * (module_abi.h). Built into the module only: a program that links the
 * backend in (its tests, the GPU benchmark) has the real functions.
 *
 * The module links none of featstore's libraries, so these are the only
 * definitions of these names in it; its export map (module.map) exports
 * FST_MODULE_ENTRY alone, so they never clash with the host's own.
 */
#include "module_abi.h"

#include <stdlib.h>

static const fst_module_host *host;

fst_status fst__fail(fst_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s = host->vfail(s, false, fmt, ap);
    va_end(ap);
    return s;
}

fst_status fst__failpre(fst_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s = host->vfail(s, true, fmt, ap);
    va_end(ap);
    return s;
}

const char *fst_errdetail(void)
{
    return host->errdetail();
}

_Noreturn void fst__assert_fail(const char *what, const char *file, int line)
{
    host->assert_fail(what, file, line);
    abort();
}

size_t fst_dtype_size(fst_dtype t)
{
    return host->dtype_size(t);
}

fst_status fst__param_next(const char **p, char *key, size_t key_len,
                           char *val, size_t val_len)
{
    return host->param_next(p, key, key_len, val, val_len);
}

fst_status fst__match_check(const fst_view *a, const fst_view *b,
                            fst_matches *out)
{
    return host->match_check(a, b, out);
}

const char *fst_backend_name(const fst_backend *be)
{
    return host->backend_name(be);
}

fst_status fst_match_reference(const fst_view *a, const fst_view *b,
                               const fst_match_opts *opts, fst_matches *out)
{
    return host->match_reference(a, b, opts, out);
}

/* The one exported symbol (see fst_module_entry_fn). */
__attribute__((visibility("default")))
uint32_t fst_module_entry(uint32_t host_abi, const fst_module_host *h,
                          const fst_backend_ops **ops);

uint32_t fst_module_entry(uint32_t host_abi, const fst_module_host *h,
                          const fst_backend_ops **ops)
{
    if (host_abi == FST_MODULE_ABI && h && ops && h->size >= sizeof *h) {
        host = h;
        *ops = fst__cuda_backend();
    }
    return FST_MODULE_ABI;
}
