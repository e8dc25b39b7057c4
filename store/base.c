/* base.c : status messages, per-thread error detail, float16. */
#include "base_impl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

static _Thread_local char detail[1024];

const char *fst_strerror(fst_status s)
{
    switch (s) {
#define FST_STATUS_MSG_(name, value, msg) case FST_##name: return msg;
    FST_STATUS_MAP(FST_STATUS_MSG_)
#undef FST_STATUS_MSG_
    }
    return "unknown status";
}

const char *fst_status_name(fst_status s)
{
    switch (s) {
#define FST_STATUS_NAME_(name, value, msg) case FST_##name: return #name;
    FST_STATUS_MAP(FST_STATUS_NAME_)
#undef FST_STATUS_NAME_
    }
    return "UNKNOWN";
}

const char *fst_errdetail(void) { return detail; }
void fst_errclear(void) { detail[0] = '\0'; }

static void mark_truncated(int n)
{
    /* Never truncate silently: an over-long message ends in "...". */
    if (n >= (int)sizeof detail)
        memcpy(detail + sizeof detail - 4, "...", 4);
}

fst_status fst__fail(fst_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    mark_truncated(n);
    return s;
}

fst_status fst__failpre(fst_status s, const char *fmt, ...)
{
    char old[sizeof detail];
    memcpy(old, detail, sizeof old);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    if (n >= 0 && n < (int)sizeof detail)
        n += snprintf(detail + n, sizeof detail - (size_t)n, "%s", old);
    mark_truncated(n);
    return s;
}

_Noreturn void fst__assert_fail(const char *what, const char *file, int line)
{
    fprintf(stderr, "featstore: internal error: %s:%d: assertion failed: %s\n",
            file, line, what);
    abort();
}

size_t fst_dtype_size(fst_dtype t)
{
    switch (t) {
    case FST_DTYPE_F16: return 2;
    case FST_DTYPE_F32: return 4;
    }
    return 0;
}

const char *fst_dtype_name(fst_dtype t)
{
    switch (t) {
    case FST_DTYPE_F16: return "float16";
    case FST_DTYPE_F32: return "float32";
    }
    return "unknown";
}

float fst_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp  = (h >> 10) & 0x1fu;
    uint32_t man  = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {                       /* Inf or NaN */
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {                   /* normal */
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {                   /* zero */
        bits = sign;
    } else {                                 /* subnormal: value = man * 2^-24 */
        float f = (float)man * 0x1p-24f;
        memcpy(&bits, &f, sizeof bits);
        bits |= sign;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t fst_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u)                   /* Inf or NaN (keep it a NaN) */
        return sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0);
    if (ax >= 0x477ff000u)                   /* rounds to >= 65520: Inf */
        return sign | 0x7c00u;
    if (ax < 0x38800000u) {                  /* below half's smallest normal */
        /* value / 2^-24, rounded to nearest even by the FPU's default mode */
        float a;
        memcpy(&a, &ax, sizeof a);
        float scaled = a * 0x1p24f;
        uint32_t m = (uint32_t)nearbyintf(scaled);
        return sign | (uint16_t)m;           /* m == 0x400 becomes the
                                                smallest normal, correctly */
    }
    /* normal: rebias exponent, round mantissa to nearest even */
    uint32_t r = ax - 0x38000000u;           /* exponent 127 -> 15 */
    uint32_t lsb = (r >> 13) & 1u;
    r += 0xfffu + lsb;
    return sign | (uint16_t)(r >> 13);
}

fst_status fst__fsync_path(const char *path, bool dir)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | (dir ? O_DIRECTORY : 0));
    if (fd < 0)
        return fst__fail(FST_EIO, "%s: cannot open to fsync: %s", path,
                         strerror(errno));
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc == 0 || (dir && e == EINVAL))
        return FST_OK;
    return fst__fail_io(e, path, 0, "%s: fsync", path);
}

/* The directory part of `path` into dir ("." or "/" where it has none),
 * and where its last component starts. */
static bool split_dir(const char *path, char *dir, size_t cap,
                      const char **base)
{
    const char *slash = strrchr(path, '/');
    *base = slash ? slash + 1 : path;
    int n = !slash ? snprintf(dir, cap, ".")
          : slash == path ? snprintf(dir, cap, "/")
          : snprintf(dir, cap, "%.*s", (int)(slash - path), path);
    return n >= 0 && (size_t)n < cap;
}

fst_status fst__fsync_parent(const char *path)
{
    char dir[PATH_MAX];
    const char *base;
    if (!split_dir(path, dir, sizeof dir, &base))
        return fst__fail(FST_EINVAL, "%s: path too long", path);
    return fst__fsync_path(dir, true);
}

bool fst__disk_full(const char *path, uint64_t need, uint64_t *avail)
{
    char dir[PATH_MAX];
    const char *base;
    struct statvfs vf;
    if (!split_dir(path, dir, sizeof dir, &base) || statvfs(dir, &vf) != 0)
        return false;
    uint64_t free_bytes = (uint64_t)vf.f_bavail * vf.f_frsize;
    if (avail)
        *avail = free_bytes;
    return free_bytes < (need > FST__DISK_SLACK ? need : FST__DISK_SLACK);
}

fst_status fst__errno_status(int err)
{
    switch (err) {
    case ENOSPC:
    case EDQUOT: return FST_EFULL;
    case ENOMEM: return FST_ENOMEM;
    default:     return FST_EIO;
    }
}

fst_status fst__fail_io(int err, const char *path, uint64_t need,
                        const char *fmt, ...)
{
    char what[768];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (n < 0)
        what[0] = '\0';
    uint64_t avail = 0;
    fst_status s = fst__errno_status(err);
    if (s == FST_EFULL)
        return fst__fail(FST_EFULL, "%s: %s (disk full)", what, strerror(err));
    if (err == EIO && path && fst__disk_full(path, need, &avail))
        return fst__fail(FST_EFULL, "%s: disk full (%s; %llu kB left on "
                         "its file system)", what, strerror(err),
                         (unsigned long long)(avail >> 10));
    return fst__fail(s, "%s: %s", what, strerror(err));
}

void *fst__file_map(int fd, size_t size, const void *inside)
{
    struct stat sb;
    if (fd < 0 || size == 0 || fstat(fd, &sb) != 0)
        return NULL;
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f)
        return NULL;
    void *found = NULL;
    char line[4096];
    while (!found && fgets(line, sizeof line, f)) {
        unsigned long lo, hi, off, ino;
        unsigned maj, min;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s %lx %x:%x %lu", &lo, &hi, perms, &off,
                   &maj, &min, &ino) == 7 &&
            ino == (unsigned long)sb.st_ino && makedev(maj, min) == sb.st_dev &&
            off == 0 && hi - lo == size &&
            (!inside || ((uintptr_t)inside >= lo && (uintptr_t)inside < hi)))
            found = (void *)lo;
        /* a line longer than the buffer (a very long path): skip its rest */
        while (!strchr(line, '\n') && fgets(line, sizeof line, f)) {}
    }
    fclose(f);
    return found;
}

void fst__remove_stale(const char *path, const char *infix,
                       const char *const *rests, bool own_is_stale)
{
    char dir[PATH_MAX];
    const char *base;
    if (!split_dir(path, dir, sizeof dir, &base))
        return;
    size_t bl = strlen(base), il = strlen(infix);
    DIR *dp = opendir(dir);
    if (!dp)
        return;
    struct dirent *e;
    while ((e = readdir(dp)) != NULL) {
        const char *nm = e->d_name;
        if (strncmp(nm, base, bl) != 0 || strncmp(nm + bl, infix, il) != 0)
            continue;
        const char *digits = nm + bl + il;
        char *end;
        errno = 0;
        long pid = strtol(digits, &end, 10);
        if (errno || end == digits || *digits < '0' || *digits > '9' ||
            pid <= 0 || pid > INT_MAX)
            continue;
        bool rest_ok = false;
        for (const char *const *r = rests; *r && !rest_ok; r++) {
            size_t rl = strlen(*r);
            rest_ok = rl && (*r)[rl - 1] == '*' ? strncmp(end, *r, rl - 1) == 0
                                                : strcmp(end, *r) == 0;
        }
        if (!rest_ok)
            continue;
        bool dead = (own_is_stale && (pid_t)pid == getpid()) ||
                    (kill((pid_t)pid, 0) != 0 && errno == ESRCH);
        if (!dead)
            continue;
        char full[PATH_MAX + 256];
        if (snprintf(full, sizeof full, "%s/%s", dir, nm) < (int)sizeof full)
            unlink(full);
    }
    closedir(dp);
}

fst_status fst__in_child(fst_status (*fn)(void *ctx, void *result), void *ctx,
                         void *result, size_t result_len, const char *what)
{
    return fst__in_child_watched(fn, ctx, result, result_len, what, NULL, NULL);
}

fst_status fst__in_child_watched(fst_status (*fn)(void *ctx, void *result),
                                 void *ctx, void *result, size_t result_len,
                                 const char *what,
                                 bool (*watch)(void *wctx, pid_t pid),
                                 void *wctx)
{
    struct { int32_t status; char detail[sizeof detail]; } res;
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0)
        return fst__fail(FST_EIO, "%s: pipe: %s", what, strerror(errno));
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(pfd[0]);
        close(pfd[1]);
        return fst__fail(FST_ENOMEM, "%s: fork: %s", what, strerror(e));
    }
    if (pid == 0) {
        close(pfd[0]);
        /* A crash here is the parent's to report (below): the child dies of
         * the signal quietly, without running handlers it inherited (a
         * host program's crash reporter, libFuzzer's, the sanitizers'),
         * which would report the contained crash as the program's own. */
        static const int fatal[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL};
        for (size_t i = 0; i < sizeof fatal / sizeof fatal[0]; i++)
            signal(fatal[i], SIG_DFL);
        memset(&res, 0, sizeof res);
        res.status = fn(ctx, result);
        if (res.status != FST_OK)
            snprintf(res.detail, sizeof res.detail, "%s", detail);
        fflush(stdout);
        fflush(stderr);
        bool sent = write(pfd[1], &res, sizeof res) == (ssize_t)sizeof res &&
                    (!result_len ||
                     write(pfd[1], result, result_len) == (ssize_t)result_len);
        _exit(sent ? 0 : 3);
    }
    close(pfd[1]);
    /* Until the child reports (or its end of the pipe closes), ask the
     * watcher a few times a second whether to give up on it. */
    for (bool killed = false; watch;) {
        struct pollfd pf = { pfd[0], POLLIN, 0 };
        int pr = poll(&pf, 1, 200);
        if (pr > 0 || (pr < 0 && errno != EINTR))
            break;
        if (!killed && watch(wctx, pid)) {
            kill(pid, SIGKILL);
            killed = true;
        }
    }
    ssize_t n, m = 0;
    while ((n = read(pfd[0], &res, sizeof res)) < 0 && errno == EINTR) {}
    /* the payload goes to a scratch copy first: `result` stays untouched
     * unless all of it arrived */
    void *tmp = result_len ? malloc(result_len) : NULL;
    if (n == (ssize_t)sizeof res && result_len) {
        while (tmp && m < (ssize_t)result_len) {
            ssize_t r = read(pfd[0], (char *)tmp + m, result_len - (size_t)m);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;
            m += r;
        }
    }
    close(pfd[0]);
    int ws = 0;
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {}
    if (n != (ssize_t)sizeof res || m != (ssize_t)result_len) {
        free(tmp);
        if (result_len && !tmp && n == (ssize_t)sizeof res)
            return fst__fail(FST_ENOMEM, "%s: result of %zu bytes", what,
                             result_len);
        if (WIFSIGNALED(ws))
            return fst__fail(FST_ECHILD, "%s: the process doing it died of "
                             "signal %d (%s)", what, WTERMSIG(ws),
                             strsignal(WTERMSIG(ws)));
        return fst__fail(FST_ECHILD, "%s: the process doing it exited %d "
                         "without a result", what, WEXITSTATUS(ws));
    }
    if (result_len)
        memcpy(result, tmp, result_len);
    free(tmp);
    if (res.status != FST_OK)
        return fst__fail((fst_status)res.status, "%s", res.detail);
    return FST_OK;
}

void fst__pair_key_part(const char *name, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = name[i] == '/' ? '-' : name[i];
}
