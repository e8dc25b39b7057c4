/* test_base.c : status table, error detail, float16 conversion, and the
 * file helpers of base.c (stale siblings, fork-and-report, a full disk
 * behind an EIO, finding a file's mapping). */
#include "fst_test.h"
#include "base_impl.h"

#include <math.h>

FST_TEST(strerror_covers_every_code)
{
#define CHECK_(name, value, msg)                               \
    ASSERT_STREQ(fst_strerror(FST_##name), msg);               \
    ASSERT_STREQ(fst_status_name(FST_##name), #name);          \
    ASSERT_LE(-(value), 127);
    FST_STATUS_MAP(CHECK_)
#undef CHECK_
    ASSERT_STREQ(fst_strerror((fst_status)-99), "unknown status");
}

FST_TEST(fail_sets_detail_and_prefix)
{
    fst_errclear();
    ASSERT_STREQ(fst_errdetail(), "");
    ASSERT_EQ(fst__fail(FST_EIO, "%s: %d", "x.h5", 7), FST_EIO);
    ASSERT_STREQ(fst_errdetail(), "x.h5: 7");
    ASSERT_EQ(fst__failpre(FST_EIO, "%s: ", "db.fst"), FST_EIO);
    ASSERT_STREQ(fst_errdetail(), "db.fst: x.h5: 7");
}

FST_TEST(long_detail_is_marked_truncated)
{
    char big[3000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    fst__fail(FST_EINVAL, "%s", big);
    size_t n = strlen(fst_errdetail());
    ASSERT_EQ(n, 1023);
    ASSERT_STREQ(fst_errdetail() + n - 3, "...");
}

FST_TEST(f16_every_half_round_trips)
{
    /* Every finite half widens exactly and narrows back to itself. */
    for (uint32_t h = 0; h < 0x10000u; h++) {
        float f = fst_f16_to_f32((uint16_t)h);
        if (isnan(f)) {
            ASSERT_TRUE(isnan(fst_f16_to_f32(fst_f32_to_f16(f))));
            continue;
        }
        ASSERT_EQ(fst_f32_to_f16(f), h);
    }
}

FST_TEST(f16_known_values_and_rounding)
{
    ASSERT_EQ(fst_f32_to_f16(1.0f), 0x3c00);
    ASSERT_EQ(fst_f32_to_f16(-2.0f), 0xc000);
    ASSERT_EQ(fst_f32_to_f16(65504.0f), 0x7bff);
    ASSERT_EQ(fst_f32_to_f16(65520.0f), 0x7c00);          /* rounds to Inf */
    ASSERT_EQ(fst_f32_to_f16(0x1p-24f), 0x0001);          /* smallest subnormal */
    ASSERT_EQ(fst_f32_to_f16(0x1p-26f), 0x0000);          /* rounds to 0 */
    ASSERT_EQ(fst_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);   /* tie -> even */
    ASSERT_EQ(fst_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);/* tie -> even */
    ASSERT_EQ(fst_f32_to_f16(INFINITY), 0x7c00);
    ASSERT_TRUE(isnan(fst_f16_to_f32(fst_f32_to_f16(NAN))));
    ASSERT_NEAR(fst_f16_to_f32(0x3555), 0.333251953125, 0);
}

FST_TEST(f16_matches_hardware_conversion)
{
    /* Compare with the compiler's _Float16 where it has one (x86-64 gcc 12
     * does), over many floats across the whole range. */
#if defined(__FLT16_MAX__)
    uint32_t x = 12345;
    for (int i = 0; i < 1000000; i++) {
        x = x * 1664525u + 1013904223u;
        float f;
        memcpy(&f, &x, sizeof f);
        if (isnan(f)) continue;
        _Float16 h = (_Float16)f;
        uint16_t hb;
        memcpy(&hb, &h, sizeof hb);
        ASSERT_EQ(fst_f32_to_f16(f), hb);
    }
#else
    FST_SKIP("compiler has no _Float16");
#endif
}

FST_TEST(dtype_sizes)
{
    ASSERT_EQ(fst_dtype_size(FST_DTYPE_F16), 2);
    ASSERT_EQ(fst_dtype_size(FST_DTYPE_F32), 4);
    ASSERT_EQ(fst_dtype_size((fst_dtype)9), 0);
    ASSERT_STREQ(fst_dtype_name(FST_DTYPE_F16), "float16");
}

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

static pid_t dead_pid(void)
{
    pid_t p = fork();
    if (p == 0)
        _exit(0);
    waitpid(p, NULL, 0);
    return p;
}

static void touch(const char *dir, const char *name)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    if (f) fclose(f);
}

static bool present(const char *dir, const char *name)
{
    char p[512];
    struct stat sb;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &sb) == 0;
}

FST_TEST(remove_stale_takes_only_dead_owners_exact_names)
{
    char dir[] = "/tmp/fst_base_XXXXXX";
    ASSERT_TRUE(mkdtemp(dir) != NULL);
    char dead[64], live[64], own[64], junk[64], q[64], qlock[64], other[64];
    pid_t d = dead_pid();
    snprintf(dead, sizeof dead, "out.h5.tmp-%d", (int)d);
    snprintf(live, sizeof live, "out.h5.tmp-%d", (int)getppid());
    snprintf(own, sizeof own, "out.h5.tmp-%d", (int)getpid());
    snprintf(junk, sizeof junk, "out.h5.tmp-%dx", (int)d);
    snprintf(q, sizeof q, "out.h5.query-%d.fst", (int)d);
    snprintf(qlock, sizeof qlock, "out.h5.query-%d.fst-lock", (int)d);
    snprintf(other, sizeof other, "zout.h5.tmp-%d", (int)d);
    const char *all[] = { dead, live, own, junk, q, qlock, other, "out.h5" };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        touch(dir, all[i]);

    char path[256];
    snprintf(path, sizeof path, "%s/out.h5", dir);
    fst__remove_stale(path, ".tmp-", (const char *const[]){"", NULL}, false);
    ASSERT_TRUE(!present(dir, dead));
    ASSERT_TRUE(present(dir, live));     /* its owner runs */
    ASSERT_TRUE(present(dir, own));      /* own_is_stale was false */
    ASSERT_TRUE(present(dir, junk));     /* not <pid><rest> */
    ASSERT_TRUE(present(dir, other));    /* another file's sibling */
    ASSERT_TRUE(present(dir, "out.h5"));
    fst__remove_stale(path, ".tmp-", (const char *const[]){"", NULL}, true);
    ASSERT_TRUE(!present(dir, own));
    ASSERT_TRUE(present(dir, q));
    fst__remove_stale(path, ".query-", (const char *const[]){".fst*", NULL}, false);
    ASSERT_TRUE(!present(dir, q));
    ASSERT_TRUE(!present(dir, qlock));

    ASSERT_OK(fst__fsync_parent(path));
    ASSERT_OK(fst__fsync_path(path, false));
    ASSERT_STATUS(fst__fsync_path("/nonexistent/x", false), FST_EIO);
    ASSERT_CONTAINS(fst_errdetail(), "/nonexistent/x");

    const char *left[] = { live, junk, other, "out.h5" };
    for (size_t i = 0; i < sizeof left / sizeof left[0]; i++) {
        char p[512];
        snprintf(p, sizeof p, "%s/%s", dir, left[i]);
        unlink(p);
    }
    ASSERT_EQ(rmdir(dir), 0);
}

static fst_status child_fills(void *ctx, void *result)
{
    memcpy(result, ctx, 6);
    return FST_OK;
}

static fst_status child_fails(void *ctx, void *result)
{
    (void)ctx;
    memcpy(result, "late!", 6);
    return fst__fail(FST_EFULL, "disk full in the child");
}

static fst_status child_ok(void *ctx, void *result)
{
    (void)ctx;
    return result == NULL ? FST_OK : FST_EINVAL;
}

static fst_status child_dies(void *ctx, void *result)
{
    (void)ctx;
    memcpy(result, "never", 6);
    _exit(9);
}

FST_TEST(in_child_returns_status_detail_and_result)
{
    char buf[6] = "-----";
    ASSERT_OK(fst__in_child(child_fills, "hello", buf, sizeof buf, "job"));
    ASSERT_STREQ(buf, "hello");
    /* fn's own error: status, detail and result all come back */
    ASSERT_STATUS(fst__in_child(child_fails, NULL, buf, sizeof buf, "job"), FST_EFULL);
    ASSERT_STREQ(fst_errdetail(), "disk full in the child");
    ASSERT_STREQ(buf, "late!");
    /* a child that dies without reporting: ECHILD, result untouched */
    ASSERT_STATUS(fst__in_child(child_dies, NULL, buf, sizeof buf, "the job"), FST_ECHILD);
    ASSERT_CONTAINS(fst_errdetail(), "the job: the process doing it exited 9");
    ASSERT_STREQ(buf, "late!");
    ASSERT_OK(fst__in_child(child_ok, NULL, NULL, 0, "job"));   /* no result */
}

FST_TEST(disk_full_tells_a_full_disk_behind_eio)
{
    char dir[] = "/tmp/fst_base_XXXXXX";
    ASSERT_TRUE(mkdtemp(dir) != NULL);
    char path[256];
    snprintf(path, sizeof path, "%s/db.fst", dir);     /* need not exist */
    struct statvfs vf;
    ASSERT_EQ(statvfs(dir, &vf), 0);
    uint64_t avail = 0, free_now = (uint64_t)vf.f_bavail * vf.f_frsize;
    /* a write larger than the space left: full, whatever is left */
    ASSERT_TRUE(fst__disk_full(path, free_now + (1ull << 40), &avail));
    ASSERT_GT(avail, 0);
    /* what the file system has left, asked for by the write: EFULL */
    ASSERT_STATUS(fst__fail_io(EIO, path, free_now + (1ull << 40), "%s: committing",
                               path), FST_EFULL);
    ASSERT_CONTAINS(fst_errdetail(), "committing: disk full (Input/output error; ");
    ASSERT_CONTAINS(fst_errdetail(), "kB left on its file system)");
    ASSERT_CONTAINS(fst_errdetail(), path);
    /* ENOSPC and EDQUOT are always a full disk; other errors never */
    ASSERT_STATUS(fst__fail_io(ENOSPC, path, 0, "%s: fsync", path), FST_EFULL);
    ASSERT_CONTAINS(fst_errdetail(), "No space left on device (disk full)");
    ASSERT_STATUS(fst__fail_io(EDQUOT, path, 0, "x"), FST_EFULL);
    ASSERT_STATUS(fst__fail_io(EACCES, path, free_now + (1ull << 40), "x"), FST_EIO);
    if (free_now > 2 * FST__DISK_SLACK) {
        /* room left: an EIO is an I/O error */
        ASSERT_TRUE(!fst__disk_full(path, 0, NULL));
        ASSERT_STATUS(fst__fail_io(EIO, path, 0, "%s: committing", path), FST_EIO);
        ASSERT_STREQ(fst_errdetail() + strlen(path), ": committing: Input/output error");
    }
    /* no such directory: statvfs fails, nothing is claimed */
    ASSERT_TRUE(!fst__disk_full("/nonexistent/dir/x", 1ull << 62, NULL));
    ASSERT_STATUS(fst__fail_io(EIO, "/nonexistent/dir/x", 1ull << 62, "x"), FST_EIO);
    ASSERT_EQ(rmdir(dir), 0);
}

FST_TEST(file_map_finds_a_mapping_of_the_file)
{
    char path[] = "/tmp/fst_base_map_XXXXXX";
    int fd = mkstemp(path);
    ASSERT_TRUE(fd >= 0);
    ASSERT_EQ(ftruncate(fd, 1 << 20), 0);
    size_t size = 8u << 20;                    /* larger than the file, as LMDB maps */
    void *a = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    ASSERT_TRUE(a != MAP_FAILED);
    ASSERT_TRUE(fst__file_map(fd, size, NULL) == a);
    ASSERT_TRUE(fst__file_map(fd, size, (char *)a + 4096) == a);
    ASSERT_TRUE(fst__file_map(fd, size / 2, NULL) == NULL);     /* not that size */
    int other = open("/proc/self/exe", O_RDONLY);
    ASSERT_TRUE(other >= 0);
    ASSERT_TRUE(fst__file_map(other, size, NULL) == NULL);      /* not that file */
    close(other);
    /* the same file mapped twice at that size: `inside` tells which */
    void *b = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    ASSERT_TRUE(b != MAP_FAILED);
    ASSERT_TRUE(fst__file_map(fd, size, (char *)b + size - 1) == b);
    ASSERT_TRUE(fst__file_map(fd, size, a) == a);
    ASSERT_TRUE(fst__file_map(fd, size, (char *)b + size) != b);
    ASSERT_EQ(munmap(a, size), 0);
    ASSERT_EQ(munmap(b, size), 0);
    ASSERT_TRUE(fst__file_map(fd, size, NULL) == NULL);
    close(fd);
    unlink(path);
}
