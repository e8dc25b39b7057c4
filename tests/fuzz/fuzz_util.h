/* fuzz_util.h : shared by the fuzz targets (tests/fuzz/fuzz_*.c).
 *
 * Each target defines LLVMFuzzerTestOneInput(). Built with -Dfuzz=true
 * (clang) it links libFuzzer; otherwise replay_main.c gives it a main()
 * that feeds it every file of the corpus directories named on the command
 * line, so the corpora are a regression test of the normal (gcc, ASan +
 * UBSan) build.
 *
 * Targets that need files work in one private directory per process
 * (under $FST_FUZZ_TMPDIR, else /dev/shm, else /tmp), removed at exit.
 */
#ifndef FST_FUZZ_UTIL_H
#define FST_FUZZ_UTIL_H

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A violated invariant of the code under test: crash so that libFuzzer (or
 * the replay driver) reports the input. */
#define FUZZ_CHECK(cond) do {                                              \
    if (!(cond)) {                                                         \
        fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__,         \
                __LINE__, #cond);                                          \
        abort();                                                           \
    }                                                                      \
} while (0)

static char fuzz_dir_[256];
static pid_t fuzz_dir_pid_;

static int fuzz_rm_(const char *p, const struct stat *sb, int flag,
                    struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

static void fuzz_cleanup_(void)
{
    if (fuzz_dir_[0] && getpid() == fuzz_dir_pid_)
        nftw(fuzz_dir_, fuzz_rm_, 16, FTW_DEPTH | FTW_PHYS);
}

/* fuzz_dir() : this process's scratch directory (created on first use). */
__attribute__((unused)) static const char *fuzz_dir(void)
{
    if (fuzz_dir_[0] && fuzz_dir_pid_ == getpid())
        return fuzz_dir_;
    const char *base = getenv("FST_FUZZ_TMPDIR");
    struct stat sb;
    if (!base || !*base)
        base = stat("/dev/shm", &sb) == 0 && access("/dev/shm", W_OK) == 0
                   ? "/dev/shm" : "/tmp";
    snprintf(fuzz_dir_, sizeof fuzz_dir_, "%s/fst_fuzz.XXXXXX", base);
    if (!mkdtemp(fuzz_dir_)) {
        perror("fuzz: mkdtemp");
        abort();
    }
    if (!fuzz_dir_pid_)
        atexit(fuzz_cleanup_);
    fuzz_dir_pid_ = getpid();
    return fuzz_dir_;
}

/* fuzz_path() : `name` inside the scratch directory (static buffer per
 * slot 0..3). */
__attribute__((unused)) static const char *fuzz_path(int slot, const char *name)
{
    static char buf[4][512];
    snprintf(buf[slot & 3], sizeof buf[0], "%s/%s", fuzz_dir(), name);
    return buf[slot & 3];
}

/* fuzz_write_file() : write data[0..size) to path (replacing it). */
__attribute__((unused)) static void fuzz_write_file(const char *path, const uint8_t *data, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        perror(path);
        abort();
    }
    while (size > 0) {
        ssize_t w = write(fd, data, size);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            perror(path);
            abort();
        }
        data += w;
        size -= (size_t)w;
    }
    close(fd);
}

/* fuzz_rm_rf() : remove path and everything under it (missing is fine). */
__attribute__((unused)) static void fuzz_rm_rf(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0)
        return;
    if (S_ISDIR(sb.st_mode))
        nftw(path, fuzz_rm_, 16, FTW_DEPTH | FTW_PHYS);
    else
        remove(path);
}

/* fuzz_clear_dir() : empty the scratch directory (leftover temporaries of
 * a failed call: a `.tmp-<pid>` the code under test should have removed is
 * between inputs). */
__attribute__((unused)) static void fuzz_clear_dir(void)
{
    fuzz_rm_rf(fuzz_dir());
    mkdir(fuzz_dir_, 0700);
}

/* Open HDF5 objects of every file (datasets, groups, types, attributes,
 * files) in this process: 0 after every loader call, or the loader leaked
 * an ID. Declared here because hdf5.h belongs to loaders/; since HDF5 1.10
 * hid_t is int64_t, and H5F_OBJ_ALL is 0x1f both as "every file" and as
 * "every type". */
#ifdef FUZZ_WITH_HDF5
extern ssize_t H5Fget_obj_count(int64_t file_id, unsigned types);
#define fuzz_h5_open_objects() H5Fget_obj_count((int64_t)0x1f, 0x1fu)
#endif

#endif
