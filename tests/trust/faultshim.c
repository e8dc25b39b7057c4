/* faultshim.c : an LD_PRELOAD library that makes system calls fail, to test
 * that featstore survives a full disk, I/O errors and unreadable files.
 *
 *   LD_PRELOAD=faultshim.so FST_FAULT_PATH=db.fst FST_FAULT_AFTER_BYTES=1M \
 *       featstore import big.h5 db.fst
 *
 * Environment (read once, at the first intercepted call):
 *   FST_FAULT_OPS      comma list of calls to fail, of: write (write, writev),
 *                      pwrite (pwrite, pwritev), fsync, fdatasync, msync,
 *                      ftruncate, fallocate, mmap, open (open, openat,
 *                      creat). Default: write,pwrite,fsync,fdatasync,
 *                      ftruncate,fallocate (a full disk).
 *   FST_FAULT_PATH     only calls on files whose path contains this string
 *                      (checked through /proc/self/fd for fd calls; mmap of
 *                      anonymous memory is never failed). Default: any
 *                      regular file. stdin, stdout and stderr are never
 *                      failed, so the error messages get out.
 *   FST_FAULT_AFTER_BYTES  fail once this many bytes (suffix k, M, G) have
 *                      been written by matching write/pwrite calls: the call
 *                      that would cross the limit fails, and so does every
 *                      later one (fsync included: the disk is full).
 *   FST_FAULT_SHORT    1: the call that crosses the byte limit writes what
 *                      fits and returns a short count, as a real full disk
 *                      does, and the next one fails with the errno.
 *   FST_FAULT_AFTER_CALLS  fail from the N+1th matching call on (any op).
 *                      Without either limit every matching call fails.
 *   FST_FAULT_ERRNO    ENOSPC (default), EIO, EDQUOT, EACCES, ENOMEM, EPERM.
 *   FST_FAULT_ONCE     1: fail one call only, then work again (a transient
 *                      error); default: keep failing (the disk stays full).
 *   FST_FAULT_LOG      append one line per injected fault to this file
 *                      ("pid op errno path"), so a test can prove it hit.
 *   FST_FAULT_PIDS     "self": only the process that was exec'd with the
 *                      variables (not its children, which inherit them);
 *                      default: every process that loads the shim.
 *   FST_FAULT_STATS    at exit, append "pid calls N bytes B faults F" to
 *                      this file: the matching calls and bytes seen, to size
 *                      a sweep (set FST_FAULT_OPS and no limit... with
 *                      FST_FAULT_AFTER_CALLS=-1 nothing fails: count only).
 *
 * Counters are per process. Thread-safe (atomics); async-signal-safe in the
 * paths that matter (no malloc). Never used by featstore itself. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum {
    OP_WRITE = 1 << 0, OP_PWRITE = 1 << 1, OP_FSYNC = 1 << 2,
    OP_FDATASYNC = 1 << 3, OP_MSYNC = 1 << 4, OP_FTRUNCATE = 1 << 5,
    OP_FALLOCATE = 1 << 6, OP_MMAP = 1 << 7, OP_OPEN = 1 << 8,
};

static const struct { const char *name; unsigned bit; } op_names[] = {
    {"write", OP_WRITE}, {"pwrite", OP_PWRITE}, {"fsync", OP_FSYNC},
    {"fdatasync", OP_FDATASYNC}, {"msync", OP_MSYNC},
    {"ftruncate", OP_FTRUNCATE}, {"fallocate", OP_FALLOCATE},
    {"mmap", OP_MMAP}, {"open", OP_OPEN},
};

static struct {
    atomic_int   state;          /* 0 unread, 1 reading, 2 ready */
    bool         active;
    unsigned     ops;
    char         path[512];
    long long    after_bytes;    /* -1: none */
    long long    after_calls;    /* -1: none */
    int          err;
    bool         once;
    char         log[512];
    char         stats[512];
    bool         count_only;
    bool         short_write;
} cfg;

static atomic_llong bytes_written, calls_seen, faults;

static long long parse_size(const char *s)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    switch (*end) {
    case 'k': case 'K': v <<= 10; break;
    case 'm': case 'M': v <<= 20; break;
    case 'g': case 'G': v <<= 30; break;
    default: break;
    }
    return v;
}

static void load_cfg(void)
{
    int st = atomic_load(&cfg.state);
    if (st == 2)
        return;
    int zero = 0;
    if (!atomic_compare_exchange_strong(&cfg.state, &zero, 1)) {
        while (atomic_load(&cfg.state) != 2)
            ;
        return;
    }
    const char *e;
    cfg.ops = OP_WRITE | OP_PWRITE | OP_FSYNC | OP_FDATASYNC | OP_FTRUNCATE |
              OP_FALLOCATE;
    if ((e = getenv("FST_FAULT_OPS")) && *e) {
        cfg.ops = 0;
        for (size_t i = 0; i < sizeof op_names / sizeof op_names[0]; i++) {
            const char *p = e;
            size_t n = strlen(op_names[i].name);
            while ((p = strstr(p, op_names[i].name))) {
                if ((p == e || p[-1] == ',') && (p[n] == ',' || !p[n]))
                    cfg.ops |= op_names[i].bit;
                p += n;
            }
        }
    }
    if ((e = getenv("FST_FAULT_PATH")))
        snprintf(cfg.path, sizeof cfg.path, "%s", e);
    cfg.after_bytes = (e = getenv("FST_FAULT_AFTER_BYTES")) && *e
                          ? parse_size(e) : -1;
    cfg.after_calls = (e = getenv("FST_FAULT_AFTER_CALLS")) && *e
                          ? parse_size(e) : -1;
    cfg.count_only = e && !strcmp(e, "-1");
    cfg.err = ENOSPC;
    if ((e = getenv("FST_FAULT_ERRNO"))) {
        if (!strcmp(e, "EIO")) cfg.err = EIO;
        else if (!strcmp(e, "EDQUOT")) cfg.err = EDQUOT;
        else if (!strcmp(e, "EACCES")) cfg.err = EACCES;
        else if (!strcmp(e, "ENOMEM")) cfg.err = ENOMEM;
        else if (!strcmp(e, "EPERM")) cfg.err = EPERM;
    }
    cfg.once = (e = getenv("FST_FAULT_ONCE")) && !strcmp(e, "1");
    cfg.short_write = (e = getenv("FST_FAULT_SHORT")) && !strcmp(e, "1");
    if ((e = getenv("FST_FAULT_LOG")))
        snprintf(cfg.log, sizeof cfg.log, "%s", e);
    if ((e = getenv("FST_FAULT_STATS")))
        snprintf(cfg.stats, sizeof cfg.stats, "%s", e);
    cfg.active = cfg.ops != 0;
    if ((e = getenv("FST_FAULT_PIDS")) && !strcmp(e, "self")) {
        /* only the process started with the variables: hide them from
         * children by clearing LD_PRELOAD's effect on them */
        unsetenv("LD_PRELOAD");
    }
    atomic_store(&cfg.state, 2);
}

__attribute__((constructor)) static void shim_init(void)
{
    load_cfg();
}

__attribute__((destructor)) static void shim_fini(void)
{
    if (!cfg.stats[0])
        return;
    int (*real_open)(const char *, int, ...) =
        (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open");
    ssize_t (*real_write)(int, const void *, size_t) =
        (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    int fd = real_open(cfg.stats, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC,
                       0644);
    if (fd < 0)
        return;
    char line[256];
    int n = snprintf(line, sizeof line, "%d calls %lld bytes %lld faults %lld\n",
                     (int)getpid(), (long long)atomic_load(&calls_seen),
                     (long long)atomic_load(&bytes_written),
                     (long long)atomic_load(&faults));
    if (n > 0)
        real_write(fd, line, (size_t)n);
    close(fd);
}

static void *next(const char *name)
{
    return dlsym(RTLD_NEXT, name);
}

/* Does `fd` name a file the faults apply to? Into path[] for the log. */
static bool fd_matches(int fd, char *path, size_t len)
{
    if (fd <= 2)
        return false;
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, len - 1);
    if (n <= 0)
        return false;
    path[n] = 0;
    if (path[0] != '/')          /* pipe:[...], socket:[...], anon_inode */
        return false;
    return !cfg.path[0] || strstr(path, cfg.path) != NULL;
}

static void log_fault(const char *op, const char *path)
{
    atomic_fetch_add(&faults, 1);
    if (!cfg.log[0])
        return;
    int (*real_open)(const char *, int, ...) =
        (int (*)(const char *, int, ...))next("open");
    ssize_t (*real_write)(int, const void *, size_t) =
        (ssize_t (*)(int, const void *, size_t))next("write");
    int fd = real_open(cfg.log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC,
                       0644);
    if (fd < 0)
        return;
    char line[1024];
    int n = snprintf(line, sizeof line, "%d %s %s %s\n", (int)getpid(), op,
                     strerrorname_np(cfg.err) ? strerrorname_np(cfg.err)
                                              : "?", path);
    if (n > 0)
        real_write(fd, line, (size_t)n < sizeof line ? (size_t)n
                                                     : sizeof line - 1);
    close(fd);
}

/* Decide for one matching call of `op` writing `want` bytes (0 for
 * non-writes). Returns -1: fail it; else the bytes it may write
 * (<= want; 0 only when want is 0). */
static long long decide(unsigned op, size_t want, const char *opname,
                        const char *path)
{
    if (!(cfg.ops & op))
        return (long long)want;
    if (cfg.once && atomic_load(&faults) > 0)
        return (long long)want;
    long long c = atomic_fetch_add(&calls_seen, 1);
    bool fail = false;
    long long allow = (long long)want;
    if (cfg.after_calls >= 0 && c >= cfg.after_calls)
        fail = true;
    long long before = 0;
    if (op & (OP_WRITE | OP_PWRITE))
        before = atomic_fetch_add(&bytes_written, (long long)want);
    else
        before = atomic_load(&bytes_written);
    if (cfg.after_bytes >= 0) {
        if (before >= cfg.after_bytes) {
            fail = true;                   /* the disk is full */
        } else if ((op & (OP_WRITE | OP_PWRITE)) &&
                   before + (long long)want > cfg.after_bytes) {
            if (cfg.short_write) {
                allow = cfg.after_bytes - before;   /* what fits */
                log_fault("short-write", path);
            } else {
                fail = true;
            }
        }
    }
    if (cfg.after_calls < 0 && cfg.after_bytes < 0 && !cfg.count_only)
        fail = true;
    if (fail) {
        log_fault(opname, path);
        return -1;
    }
    return allow;
}

#define FD_CHECK(op, opname, fd, want, failret)                            \
    char path_[512];                                                       \
    long long allow_ = (long long)(want);                                  \
    load_cfg();                                                            \
    if (cfg.active && (cfg.ops & (op)) && fd_matches(fd, path_,            \
                                                     sizeof path_)) {      \
        allow_ = decide(op, want, opname, path_);                          \
        if (allow_ < 0) {                                                  \
            errno = cfg.err;                                               \
            return failret;                                                \
        }                                                                  \
    }

ssize_t write(int fd, const void *buf, size_t n)
{
    static ssize_t (*real)(int, const void *, size_t);
    if (!real) real = (ssize_t (*)(int, const void *, size_t))next("write");
    FD_CHECK(OP_WRITE, "write", fd, n, -1);
    return real(fd, buf, (size_t)allow_);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    static ssize_t (*real)(int, const void *, size_t, off_t);
    if (!real) real = (ssize_t (*)(int, const void *, size_t, off_t))next("pwrite");
    FD_CHECK(OP_PWRITE, "pwrite", fd, n, -1);
    return real(fd, buf, (size_t)allow_, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
    static ssize_t (*real)(int, const void *, size_t, off_t);
    if (!real) real = (ssize_t (*)(int, const void *, size_t, off_t))next("pwrite64");
    FD_CHECK(OP_PWRITE, "pwrite", fd, n, -1);
    return real(fd, buf, (size_t)allow_, off);
}

static size_t iov_total(const struct iovec *iov, int cnt)
{
    size_t t = 0;
    for (int i = 0; i < cnt; i++)
        t += iov[i].iov_len;
    return t;
}

/* A vector write that may only write `allow` bytes: cut the vector. */
static int iov_cut(const struct iovec *iov, int cnt, size_t allow,
                   struct iovec *out)
{
    int k = 0;
    for (int i = 0; i < cnt && allow > 0 && k < 64; i++) {
        out[k] = iov[i];
        if (out[k].iov_len > allow)
            out[k].iov_len = allow;
        allow -= out[k].iov_len;
        k++;
    }
    return k;
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    static ssize_t (*real)(int, const struct iovec *, int);
    if (!real) real = (ssize_t (*)(int, const struct iovec *, int))next("writev");
    size_t want = iov_total(iov, cnt);
    FD_CHECK(OP_WRITE, "writev", fd, want, -1);
    if ((size_t)allow_ == want)
        return real(fd, iov, cnt);
    struct iovec cut[64];
    return real(fd, cut, iov_cut(iov, cnt, (size_t)allow_, cut));
}

static ssize_t do_pwritev(const char *sym, int fd, const struct iovec *iov,
                          int cnt, off_t off)
{
    ssize_t (*real)(int, const struct iovec *, int, off_t) =
        (ssize_t (*)(int, const struct iovec *, int, off_t))next(sym);
    size_t want = iov_total(iov, cnt);
    FD_CHECK(OP_PWRITE, "pwritev", fd, want, -1);
    if ((size_t)allow_ == want)
        return real(fd, iov, cnt, off);
    struct iovec cut[64];
    return real(fd, cut, iov_cut(iov, cnt, (size_t)allow_, cut), off);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    return do_pwritev("pwritev", fd, iov, cnt, off);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off_t off)
{
    return do_pwritev("pwritev64", fd, iov, cnt, off);
}

int fsync(int fd)
{
    static int (*real)(int);
    if (!real) real = (int (*)(int))next("fsync");
    FD_CHECK(OP_FSYNC, "fsync", fd, 0, -1);
    return real(fd);
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (!real) real = (int (*)(int))next("fdatasync");
    FD_CHECK(OP_FDATASYNC, "fdatasync", fd, 0, -1);
    return real(fd);
}

int ftruncate(int fd, off_t len)
{
    static int (*real)(int, off_t);
    if (!real) real = (int (*)(int, off_t))next("ftruncate");
    FD_CHECK(OP_FTRUNCATE, "ftruncate", fd, 0, -1);
    return real(fd, len);
}

int ftruncate64(int fd, off_t len)
{
    static int (*real)(int, off_t);
    if (!real) real = (int (*)(int, off_t))next("ftruncate64");
    FD_CHECK(OP_FTRUNCATE, "ftruncate", fd, 0, -1);
    return real(fd, len);
}

int fallocate(int fd, int mode, off_t off, off_t len)
{
    static int (*real)(int, int, off_t, off_t);
    if (!real) real = (int (*)(int, int, off_t, off_t))next("fallocate");
    FD_CHECK(OP_FALLOCATE, "fallocate", fd, 0, -1);
    return real(fd, mode, off, len);
}

int posix_fallocate(int fd, off_t off, off_t len)
{
    static int (*real)(int, off_t, off_t);
    if (!real) real = (int (*)(int, off_t, off_t))next("posix_fallocate");
    char path_[512];
    load_cfg();
    if (cfg.active && (cfg.ops & OP_FALLOCATE) &&
        fd_matches(fd, path_, sizeof path_) &&
        decide(OP_FALLOCATE, 0, "posix_fallocate", path_) < 0)
        return cfg.err;               /* returns the error, not -1 */
    return real(fd, off, len);
}

static void *do_mmap(const char *sym, void *addr, size_t len, int prot,
                     int flags, int fd, off_t off)
{
    void *(*real)(void *, size_t, int, int, int, off_t) =
        (void *(*)(void *, size_t, int, int, int, off_t))next(sym);
    if (fd >= 0 && !(flags & MAP_ANONYMOUS)) {
        FD_CHECK(OP_MMAP, "mmap", fd, 0, MAP_FAILED);
    }
    return real(addr, len, prot, flags, fd, off);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    return do_mmap("mmap", addr, len, prot, flags, fd, off);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    return do_mmap("mmap64", addr, len, prot, flags, fd, off);
}

int msync(void *addr, size_t len, int flags)
{
    static int (*real)(void *, size_t, int);
    if (!real) real = (int (*)(void *, size_t, int))next("msync");
    load_cfg();
    if (cfg.active && (cfg.ops & OP_MSYNC) &&
        decide(OP_MSYNC, 0, "msync", "(map)") < 0) {
        errno = cfg.err;
        return -1;
    }
    return real(addr, len, flags);
}

/* open: the path is known before there is an fd. Only opens of existing
 * files or creations are failed when the path matches. */
static bool open_fails(const char *path)
{
    load_cfg();
    if (!cfg.active || !(cfg.ops & OP_OPEN) || !path)
        return false;
    if (cfg.path[0] && !strstr(path, cfg.path))
        return false;
    if (!cfg.path[0] && strncmp(path, "/proc/", 6) == 0)
        return false;
    return decide(OP_OPEN, 0, "open", path) < 0;
}

#define OPEN_BODY(sym, call)                                               \
    mode_t mode = 0;                                                       \
    if (flags & (O_CREAT | O_TMPFILE)) {                                   \
        va_list ap;                                                        \
        va_start(ap, flags);                                               \
        mode = va_arg(ap, mode_t);                                         \
        va_end(ap);                                                        \
    }                                                                      \
    if (open_fails(path)) {                                                \
        errno = cfg.err;                                                   \
        return -1;                                                         \
    }                                                                      \
    return call;

int open(const char *path, int flags, ...)
{
    static int (*real)(const char *, int, ...);
    if (!real) real = (int (*)(const char *, int, ...))next("open");
    OPEN_BODY("open", real(path, flags, mode))
}

int open64(const char *path, int flags, ...)
{
    static int (*real)(const char *, int, ...);
    if (!real) real = (int (*)(const char *, int, ...))next("open64");
    OPEN_BODY("open64", real(path, flags, mode))
}

int openat(int dirfd, const char *path, int flags, ...)
{
    static int (*real)(int, const char *, int, ...);
    if (!real) real = (int (*)(int, const char *, int, ...))next("openat");
    OPEN_BODY("openat", real(dirfd, path, flags, mode))
}

int openat64(int dirfd, const char *path, int flags, ...)
{
    static int (*real)(int, const char *, int, ...);
    if (!real) real = (int (*)(int, const char *, int, ...))next("openat64");
    OPEN_BODY("openat64", real(dirfd, path, flags, mode))
}

int creat(const char *path, mode_t mode)
{
    static int (*real)(const char *, mode_t);
    if (!real) real = (int (*)(const char *, mode_t))next("creat");
    if (open_fails(path)) {
        errno = cfg.err;
        return -1;
    }
    return real(path, mode);
}
