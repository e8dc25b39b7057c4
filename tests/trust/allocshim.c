/* allocshim.c : an LD_PRELOAD library that makes one of featstore's own
 * memory allocations fail, to test that every allocation failure is a
 * clean error (tests/trust/allocfail.py sweeps k over all of them).
 *
 *   LD_PRELOAD=allocshim.so FST_ALLOC_FAIL=17 featstore import a.h5 db.fst
 *
 * Counted: malloc, calloc, realloc, strdup, strndup, posix_memalign and
 * aligned_alloc called from the featstore executable itself (the caller's
 * return address lies in its executable segment). Allocations made inside
 * libraries (libc, HDF5, LMDB) are neither counted nor failed: their
 * handling of a failed malloc is theirs to test. The counter lives in a
 * shared mapping, so a process fork()ed by featstore (fst__in_child) counts
 * on from its parent: "the k-th allocation" is the k-th of the command.
 *
 * Environment (read once, at load):
 *   FST_ALLOC_FAIL   k >= 1: the k-th counted allocation returns NULL
 *                    (ENOMEM); 0 or unset: nothing fails (count only).
 *   FST_ALLOC_PERSIST  1: the k-th and every later one fail (memory is
 *                    exhausted); default: only the k-th (a transient failure).
 *   FST_ALLOC_ARGV1  count only in processes whose argv[1] is this
 *                    ("match": a match's coordinator; "worker": its
 *                    workers); default: every process that loads the shim.
 *   FST_ALLOC_LOG    append "pid k 0xOFFSET" to this file for each failed
 *                    allocation (OFFSET: its caller's return address in the
 *                    executable, for addr2line -e featstore).
 *   FST_ALLOC_STATS  at exit, append "pid allocs N" (the count so far).
 *
 * Built without sanitizers: it forwards to the next definition (ASan's
 * allocator in a sanitized featstore, glibc's otherwise), so ASan and
 * LeakSanitizer keep watching every block. Never used by featstore itself. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static char *(*real_strdup)(const char *);
static char *(*real_strndup)(const char *, size_t);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);

static struct {
    atomic_int state;               /* 0 unread, 1 reading, 2 ready */
    bool counting;                  /* this process counts */
    long long fail_at;              /* 0: never */
    bool persist;
    char log[512], stats[512];
    uintptr_t base;                 /* the executable's load address */
    uintptr_t lo[8], hi[8];         /* its code */
    int nranges;
    _Atomic long long *count;       /* shared with fork()ed children */
} cfg;

/* dlsym may allocate before the real functions are known: serve those
 * few bytes from here (never freed; there is no free() to intercept). */
static _Alignas(16) char boot[4096];
static atomic_size_t boot_used;

static void *boot_alloc(size_t n)
{
    n = (n + 15) & ~(size_t)15;
    size_t at = atomic_fetch_add(&boot_used, n);
    return at + n <= sizeof boot ? boot + at : NULL;
}

static int find_exe(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    (void)data;
    /* the first object is the executable */
    cfg.base = info->dlpi_addr;
    for (int i = 0; i < info->dlpi_phnum && cfg.nranges < 8; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X)) {
            cfg.lo[cfg.nranges] = info->dlpi_addr + ph->p_vaddr;
            cfg.hi[cfg.nranges] = info->dlpi_addr + ph->p_vaddr + ph->p_memsz;
            cfg.nranges++;
        }
    }
    return 1;
}

static bool argv1_is(const char *want)
{
    char buf[4096];
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    size_t l0 = strlen(buf);
    return (ssize_t)l0 + 1 < n && strcmp(buf + l0 + 1, want) == 0;
}

static void load(void)
{
    int expect = 0;
    if (!atomic_compare_exchange_strong(&cfg.state, &expect, 1)) {
        while (atomic_load(&cfg.state) != 2) { }
        return;
    }
    real_malloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
    real_calloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "calloc");
    real_realloc = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
    real_strdup = (char *(*)(const char *))dlsym(RTLD_NEXT, "strdup");
    real_strndup = (char *(*)(const char *, size_t))dlsym(RTLD_NEXT, "strndup");
    real_posix_memalign = (int (*)(void **, size_t, size_t))dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "aligned_alloc");
    /* the system call itself: ASan's mmap interceptor may not be ready
     * when the first allocation brings us here */
    void *m = (void *)syscall(SYS_mmap, NULL, 4096, PROT_READ | PROT_WRITE,
                              MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cfg.count = m == MAP_FAILED ? NULL : (_Atomic long long *)m;
    atomic_store(&cfg.state, 2);
}

/* The environment is read here, not in load(): an allocation may come
 * before libc has set it up (ASan's early initialization). Allocations
 * before this constructor are not counted. */
__attribute__((constructor)) static void shim_init(void)
{
    if (atomic_load(&cfg.state) != 2)
        load();
    const char *e;
    cfg.fail_at = (e = getenv("FST_ALLOC_FAIL")) ? atoll(e) : 0;
    cfg.persist = (e = getenv("FST_ALLOC_PERSIST")) && !strcmp(e, "1");
    if ((e = getenv("FST_ALLOC_LOG")))
        snprintf(cfg.log, sizeof cfg.log, "%s", e);
    if ((e = getenv("FST_ALLOC_STATS")))
        snprintf(cfg.stats, sizeof cfg.stats, "%s", e);
    dl_iterate_phdr(find_exe, NULL);
    cfg.counting = cfg.count && (!(e = getenv("FST_ALLOC_ARGV1")) || argv1_is(e));
}

static void append_line(const char *path, const char *line)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    ssize_t w = write(fd, line, strlen(line));
    (void)w;
    close(fd);
}

__attribute__((destructor)) static void shim_fini(void)
{
    if (!cfg.stats[0] || !cfg.counting)
        return;
    char line[96];
    snprintf(line, sizeof line, "%ld allocs %lld\n", (long)getpid(),
             (long long)atomic_load(cfg.count));
    append_line(cfg.stats, line);
}

/* Count this allocation if `ret` (its caller) is featstore's own code;
 * true if it must fail. */
static bool should_fail(uintptr_t ret)
{
    if (!cfg.counting)
        return false;
    bool ours = false;
    for (int i = 0; i < cfg.nranges; i++)
        if (ret >= cfg.lo[i] && ret < cfg.hi[i])
            ours = true;
    if (!ours)
        return false;
    long long k = atomic_fetch_add(cfg.count, 1) + 1;
    if (cfg.fail_at <= 0 || (cfg.persist ? k < cfg.fail_at : k != cfg.fail_at))
        return false;
    if (cfg.log[0]) {
        char line[96];
        snprintf(line, sizeof line, "%ld %lld 0x%lx\n", (long)getpid(), k,
                 (unsigned long)(ret - cfg.base));
        append_line(cfg.log, line);
    }
    return true;
}

#define RET() ((uintptr_t)__builtin_return_address(0))
#define READY() (atomic_load(&cfg.state) == 2 || (load(), 1))

void *malloc(size_t n)
{
    if (atomic_load(&cfg.state) == 1 && !real_malloc)
        return boot_alloc(n);                 /* inside load()'s dlsym */
    READY();
    if (should_fail(RET())) { errno = ENOMEM; return NULL; }
    return real_malloc(n);
}

void *calloc(size_t a, size_t b)
{
    if (atomic_load(&cfg.state) == 1 && !real_calloc)
        return boot_alloc(a * b);             /* zeroed: static storage */
    READY();
    if (should_fail(RET())) { errno = ENOMEM; return NULL; }
    return real_calloc(a, b);
}

void *realloc(void *p, size_t n)
{
    READY();
    if (should_fail(RET())) { errno = ENOMEM; return NULL; }
    return real_realloc(p, n);
}

char *strdup(const char *s)
{
    READY();
    if (should_fail(RET())) { errno = ENOMEM; return NULL; }
    return real_strdup(s);
}

char *strndup(const char *s, size_t n)
{
    READY();
    if (should_fail(RET())) { errno = ENOMEM; return NULL; }
    return real_strndup(s, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    READY();
    if (should_fail(RET())) return ENOMEM;
    return real_posix_memalign(out, align, n);
}

void *aligned_alloc(size_t align, size_t n)
{
    READY();
    if (should_fail(RET())) { errno = ENOMEM; return NULL; }
    return real_aligned_alloc(align, n);
}
