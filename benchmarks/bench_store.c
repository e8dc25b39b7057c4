/* bench_store.c : issue 2's figures for the store and the import.
 *
 *   bench_store [--sizes-gb 0.4,4] [--dir DIR] [--reps N] [--probes N] [--keep]
 *
 * For each size: synthesise an hloc features.h5 (2,048 keypoints x 256-D
 * float16 per image, as SuperPoint with hloc's as_half) whose store payload
 * is about that many GB, then
 *   (2) import it, against reading every dataset of the same file with the
 *       HDF5 C API, both twice: with the file in the page cache (read once
 *       before), and cold (its pages evicted first with posix_fadvise
 *       DONTNEED, so that it comes from the disk). Each run is a fresh child
 *       process (its peak RSS is reported). Two import times: until every
 *       record is written (the last progress call, before
 *       fst_writer_finish), and in all, with the final fsync and rename.
 *       Also two floors under any import: the same records (made in memory,
 *       no HDF5) written through fst_writer_* alone, and the disk itself:
 *       as many bytes as the store holds written in 8 MB O_DIRECT writes
 *       plus an fsync (buffered writes where O_DIRECT is refused);
 *   (3) the store's size on disk over its payload bytes;
 * and, both stores interleaved,
 *   (1) open the store and look up the first record, in a fresh process
 *       each time (fork + exec of this program; timed inside the child from
 *       before fst_store_open to after fst_reader_get), and in-process
 *       open/get/close cycles.
 * One line per case (bench.h): name, median, p90, unit, ratio, key=values; cpu= is the
 * child's user + system time (the kernel's background writeback is not in it).
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <hdf5.h>        /* the baseline reads the file with HDF5's C API */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "fst_loader.h"
#include "fst_store.h"

#define KEYPOINTS 2048u
#define DIM       256u
#define FIRST     "synth/img0000.jpg"

static void die(const char *what)
{
    fprintf(stderr, "bench_store: %s: %s (%s)\n", what, fst_errdetail(), strerror(errno));
    exit(1);
}

/* ---- child: one probe (open + first lookup), for a fresh process ---- */

static int probe(const char *path)
{
    double t0 = bench_now();
    fst_store *st = NULL;
    fst_reader *rd = NULL;
    fst_view v;
    if (fst_store_open(path, 0, &st) || fst_reader_begin(st, &rd) ||
        fst_reader_get(rd, FIRST, &v))
        die("probe");
    double t1 = bench_now();
    /* Touch the first and last descriptor bytes, the record's two ends. */
    volatile unsigned char sink = ((const unsigned char *)v.desc)[0] ^
        ((const unsigned char *)v.desc)[(size_t)v.n * v.d * 2 - 1];
    (void)sink;
    fst_reader_end(rd);
    fst_store_close(st);
    printf("%.9f\n", t1 - t0);
    return 0;
}

/* ---- the baseline: read every dataset with the HDF5 C API ---- */

typedef struct rawread {
    void    *buf;
    size_t   cap;
    uint64_t bytes, datasets;
    int      failed;
} rawread;

static herr_t read_one(hid_t root, const char *name, const H5O_info_t *info, void *data)
{
    rawread *r = data;
    if (info->type != H5O_TYPE_DATASET)
        return 0;
    hid_t d = H5Dopen2(root, name, H5P_DEFAULT);
    hid_t t = H5Dget_type(d);
    hid_t sp = H5Dget_space(d);
    size_t n = (size_t)H5Sget_simple_extent_npoints(sp) * H5Tget_size(t);
    if (n > r->cap) {
        free(r->buf);
        r->cap = n;
        r->buf = malloc(n);
    }
    /* Its own type in memory: no conversion, a plain read. */
    if (n && H5Dread(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, r->buf) < 0)
        r->failed = 1;
    r->bytes += n;
    r->datasets++;
    H5Sclose(sp);
    H5Tclose(t);
    H5Dclose(d);
    return r->failed ? -1 : 0;
}

static void raw_read_child(const char *h5, int fd)
{
    double t0 = bench_now();
    rawread r = {0};
    hid_t f = H5Fopen(h5, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0 || H5Ovisit2(f, H5_INDEX_NAME, H5_ITER_INC, read_one, &r, H5O_INFO_BASIC) < 0 ||
        r.failed)
        die("raw read");
    H5Fclose(f);
    double t = bench_now() - t0, out[3] = {t, t, (double)r.bytes};
    if (write(fd, out, sizeof out) != sizeof out)
        die("pipe");
}

/* Drop the file's pages from the page cache, so that the next read comes
 * from the disk (the file is clean: written and fsynced by synth). */
static void evict(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0 || fdatasync(fd) || posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED))
        die(path);
    close(fd);
}

/* ---- the disk's own write speed: `bytes` in 8 MB O_DIRECT writes ---- */

static void disk_write_child(const char *dest, uint64_t bytes, int fd)
{
    size_t blk = 8u << 20;
    void *buf = NULL;
    if (posix_memalign(&buf, 4096, blk))
        die("posix_memalign");
    memset(buf, 0x5a, blk);
    double t0 = bench_now();
    int o = open(dest, O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT, 0644);
    if (o < 0)
        o = open(dest, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (o < 0)
        die(dest);
    for (uint64_t done = 0; done < bytes; done += blk)
        if (write(o, buf, blk) != (ssize_t)blk)
            die("disk write");
    if (fsync(o))
        die("fsync");
    close(o);
    double t = bench_now() - t0, out[3] = {t, t, (double)bytes};
    unlink(dest);
    free(buf);
    if (write(fd, out, sizeof out) != sizeof out)
        die("pipe");
}

/* ---- import in a child ---- */

typedef struct import_ctx {
    double t0, t_written;
} import_ctx;

static int on_progress(uint64_t done, uint64_t total, uint64_t bytes, void *ctx)
{
    (void)bytes;
    import_ctx *c = ctx;
    if (done == total)
        c->t_written = bench_now();   /* every record written; finish next */
    return 0;
}

static void import_child(const char *h5, const char *dest, int fd)
{
    import_ctx c = {bench_now(), 0};
    fst_import_opts o = {.progress = on_progress, .progress_ctx = &c};
    fst_import_stats st;
    if (fst_import_h5(h5, dest, &o, &st))
        die("import");
    double out[3] = {c.t_written - c.t0, bench_now() - c.t0, (double)st.payload_bytes};
    if (write(fd, out, sizeof out) != sizeof out)
        die("pipe");
}

/* ---- the store's writer alone, same record sizes, no HDF5 ---- */

static void write_only_child(const char *dest, uint32_t images, int fd)
{
    size_t nk = KEYPOINTS, nd = (size_t)KEYPOINTS * DIM;
    float *kp = malloc(nk * 2 * sizeof *kp), *sc = malloc(nk * sizeof *sc);
    uint16_t *de = malloc(nd * sizeof *de);
    for (size_t i = 0; i < nk; i++) {
        kp[2 * i] = (float)(i % 640);
        kp[2 * i + 1] = (float)(i % 480);
        sc[i] = 0.5f;
    }
    for (size_t i = 0; i < nd; i++)
        de[i] = fst_f32_to_f16((float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f);
    double t0 = bench_now();
    fst_writer *w = NULL;
    uint64_t payload = 0;
    if (fst_writer_open(dest, FST_WRITE_CREATE, &w))
        die("writer open");
    for (uint32_t i = 0; i < images; i++) {
        char name[64];
        snprintf(name, sizeof name, "synth/img%04u.jpg", i);
        fst_image img = {.name = name, .n = KEYPOINTS, .d = DIM, .dtype = FST_DTYPE_F16,
                         .flags = FST_VIEW_HAS_SCORES | FST_VIEW_HAS_IMAGE_SIZE,
                         .image_size = {640, 480}, .uncertainty = 1.0f,
                         .keypoints = kp, .scores = sc, .desc = de};
        de[i % nd] ^= 1;        /* records differ, as they would */
        if (fst_writer_put(w, &img, NULL))
            die("writer put");
        payload += nk * 12 + nd * 2;
    }
    double t1 = bench_now();
    if (fst_writer_finish(w, NULL))
        die("writer finish");
    double out[3] = {t1 - t0, bench_now() - t0, (double)payload};
    if (write(fd, out, sizeof out) != sizeof out)
        die("pipe");
}

enum { RAW, IMPORT, WRITE_ONLY, RAW_COLD, IMPORT_COLD, DISK, NWHAT };
static const char *const what_name[NWHAT] = {"raw read", "import", "write only",
                                              "cold raw read", "cold import", "disk write"};

/* Run `what` in a fresh child; its three numbers
 * into out[], its peak RSS (bytes) into *rss, its CPU time (user + system, all threads,
 * seconds) into *cpu: on a shared machine the wall times depend on the load, the CPU
 * times much less. */
static void in_child(int what, const char *h5, const char *dest, double out[3], uint64_t *rss,
                     double *cpu)
{
    int p[2];
    if (pipe(p))
        die("pipe");
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        close(p[0]);
        if (what == RAW_COLD || what == IMPORT_COLD)
            evict(h5);
        if (what == RAW || what == RAW_COLD)
            raw_read_child(h5, p[1]);
        else if (what == IMPORT || what == IMPORT_COLD)
            import_child(h5, dest, p[1]);
        else if (what == WRITE_ONLY)
            write_only_child(dest, (uint32_t)atol(h5), p[1]);
        else
            disk_write_child(dest, (uint64_t)atoll(h5), p[1]);
        _exit(0);
    }
    close(p[1]);
    ssize_t n = read(p[0], out, 3 * sizeof(double));
    close(p[0]);
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) != pid || !WIFEXITED(status) || WEXITSTATUS(status) ||
        n != 3 * (ssize_t)sizeof(double)) {
        fprintf(stderr, "bench_store: child %s failed\n", what_name[what]);
        exit(1);
    }
    *rss = (uint64_t)ru.ru_maxrss * 1024;
    *cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

/* ---- helpers ---- */

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

static void remove_store(const char *path)
{
    char lock[1200];
    snprintf(lock, sizeof lock, "%s-lock", path);
    unlink(path);
    unlink(lock);
}

/* Read the whole file once so that later reads come from the page cache. */
static void warm(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        die(path);
    static char buf[1 << 20];
    while (read(fd, buf, sizeof buf) > 0) {}
    close(fd);
}

static void print_case(const char *name, double *v, size_t n, double scale, const char *unit,
                       const char *extra)
{
    double med = bench_median(v, n) * scale, p90 = bench_p90(v, n) * scale;
    printf("%-28s median=%.3f p90=%.3f %s%s%s\n", name, med, p90, unit, extra[0] ? " " : "",
           extra);
    fflush(stdout);
}

typedef struct size_case {
    double   gb;
    uint32_t images;
    char     h5[1024], store[1024], label[32];
} size_case;

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--probe"))
        return probe(argv[2]);

    const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    const char *sizes = "0.4,4";
    int reps = 3, probes = 200, keep = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dir") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--sizes-gb") && i + 1 < argc) sizes = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--probes") && i + 1 < argc) probes = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--keep")) keep = 1;
        else {
            fprintf(stderr, "usage: bench_store [--sizes-gb 0.4,4] [--dir DIR] [--reps N] "
                            "[--probes N] [--keep]\n");
            return 2;
        }
    }
    if (reps < 1) reps = 1;
    if (probes < 3) probes = 3;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);

    char root[512];
    snprintf(root, sizeof root, "%s/fst-bench-store-XXXXXX", dir);
    if (!mkdtemp(root))
        die("mkdtemp");

    size_case cases[4];
    int nc = 0;
    for (const char *p = sizes; *p && nc < 4;) {
        char *end;
        double gb = strtod(p, &end);
        if (end == p || gb <= 0) {
            fprintf(stderr, "bench_store: bad --sizes-gb '%s'\n", sizes);
            return 2;
        }
        size_case *c = &cases[nc++];
        c->gb = gb;
        /* payload per image: keypoints and scores as float32, descriptors */
        double per = KEYPOINTS * (2.0 * 4 + 4) + (double)KEYPOINTS * DIM * 2;
        c->images = (uint32_t)(gb * 1e9 / per + 0.5);
        if (c->images < 2) c->images = 2;
        snprintf(c->label, sizeof c->label, "%gGB", gb);
        snprintf(c->h5, sizeof c->h5, "%s/features-%s.h5", root, c->label);
        snprintf(c->store, sizeof c->store, "%s/store-%s.fst", root, c->label);
        p = *end == ',' ? end + 1 : end;
    }

    printf("# bench_store: %d sizes, %u keypoints x %u-D float16 per image, %d reps, "
           "%d probes; dir %s\n", nc, KEYPOINTS, DIM, reps, probes, root);
    for (int k = 0; k < nc; k++) {
        size_case *c = &cases[k];
        fst_synth_opts o = fst_synth_opts_default();
        o.n_images = c->images;
        o.n_keypoints = KEYPOINTS;
        o.d = DIM;
        double t0 = bench_now();
        if (fst_synth_h5(c->h5, NULL, NULL, &o, NULL, NULL))
            die("synth");
        struct stat sb;
        stat(c->h5, &sb);
        printf("# synth %s: %u images, features.h5 %.2f GB in %.1f s\n", c->label, c->images,
               (double)sb.st_size / 1e9, bench_now() - t0);
        warm(c->h5);

        /* t[what][rep]: wall time (until written, for imports); tt: in all;
         * cpu: the child's CPU time; rss: the largest peak RSS. */
        double *t[NWHAT], *tt[NWHAT], *cpu[NWHAT];
        uint64_t rss[NWHAT] = {0}, raw_bytes = 0, store_bytes = 0;
        for (int w = 0; w < NWHAT; w++) {
            t[w] = calloc((size_t)reps, sizeof(double));
            tt[w] = calloc((size_t)reps, sizeof(double));
            cpu[w] = calloc((size_t)reps, sizeof(double));
        }
        char nimg[32], nbytes[32], disk[1100];
        snprintf(nimg, sizeof nimg, "%u", c->images);
        snprintf(disk, sizeof disk, "%s.disk", c->store);
        /* The disk floor writes what the store holds: know its size first. */
        remove_store(c->store);
        {
            double out[3], cp;
            uint64_t r;
            in_child(IMPORT, c->h5, c->store, out, &r, &cp);
            struct stat ss;
            if (stat(c->store, &ss))
                die(c->store);
            store_bytes = (uint64_t)ss.st_size;
            snprintf(nbytes, sizeof nbytes, "%" PRIu64, store_bytes);
        }
        for (int r = 0; r < reps; r++) {
            /* rotate which goes first, so none always follows another */
            for (int j = 0; j < NWHAT; j++) {
                int what = (r + j) % NWHAT;
                double out[3];
                uint64_t rs;
                const char *arg = what == WRITE_ONLY ? nimg : what == DISK ? nbytes : c->h5;
                const char *dest = what == DISK ? disk : c->store;
                if (what != RAW && what != RAW_COLD)
                    remove_store(c->store);
                if (what == RAW || what == IMPORT)
                    warm(c->h5);
                in_child(what, arg, dest, out, &rs, &cpu[what][r]);
                t[what][r] = out[0];
                tt[what][r] = out[1];
                if (what == RAW)
                    raw_bytes = (uint64_t)out[2];
                rss[what] = rs > rss[what] ? rs : rss[what];
                if (what == WRITE_ONLY)
                    remove_store(c->store);
            }
        }
        /* leave an imported store for the size and open figures */
        if (access(c->store, F_OK) != 0) {
            double out[3], cp;
            uint64_t rs;
            warm(c->h5);
            in_child(IMPORT, c->h5, c->store, out, &rs, &cp);
        }
        size_t R = (size_t)reps;
        double mraw = bench_median(t[RAW], R), mcold = bench_median(t[RAW_COLD], R);
        double craw = bench_median(cpu[RAW], R);
        char extra[320], name[64];
        snprintf(extra, sizeof extra, "bytes=%" PRIu64 " peak_rss_MB=%.0f cpu=%.2fs", raw_bytes,
                 (double)rss[RAW] / 1e6, craw);
        snprintf(name, sizeof name, "h5_read_all/%s", c->label);
        print_case(name, t[RAW], R, 1, "s", extra);
        snprintf(extra, sizeof extra, "ratio=%.2f vs h5_read_all/%s (from the disk: "
                 "%.2f GB/s) cpu=%.2fs", mcold / mraw, c->label,
                 (double)raw_bytes / mcold / 1e9, bench_median(cpu[RAW_COLD], R));
        snprintf(name, sizeof name, "h5_read_cold/%s", c->label);
        print_case(name, t[RAW_COLD], R, 1, "s", extra);
        for (int cold = 0; cold < 2; cold++) {
            int w = cold ? IMPORT_COLD : IMPORT;
            double base = cold ? mcold : mraw;
            const char *bn = cold ? "h5_read_cold" : "h5_read_all";
            snprintf(extra, sizeof extra, "ratio=%.2f vs %s/%s peak_rss_MB=%.0f",
                     bench_median(t[w], R) / base, bn, c->label, (double)rss[w] / 1e6);
            snprintf(name, sizeof name, "%s_written/%s", cold ? "import_cold" : "import",
                     c->label);
            print_case(name, t[w], R, 1, "s", extra);
            snprintf(extra, sizeof extra, "ratio=%.2f vs %s/%s (with fsync + rename) "
                     "cpu=%.2fs cpu_ratio=%.2f", bench_median(tt[w], R) / base, bn, c->label,
                     bench_median(cpu[w], R), bench_median(cpu[w], R) /
                     bench_median(cpu[cold ? RAW_COLD : RAW], R));
            snprintf(name, sizeof name, "%s_total/%s", cold ? "import_cold" : "import",
                     c->label);
            print_case(name, tt[w], R, 1, "s", extra);
        }
        double mwo = bench_median(tt[WRITE_ONLY], R);
        snprintf(extra, sizeof extra, "ratio=%.2f vs h5_read_all/%s (with fsync + rename); "
                 "import_total is %.2fx this peak_rss_MB=%.0f cpu=%.2fs", mwo / mraw, c->label,
                 bench_median(tt[IMPORT], R) / mwo, (double)rss[WRITE_ONLY] / 1e6,
                 bench_median(cpu[WRITE_ONLY], R));
        snprintf(name, sizeof name, "store_write_only/%s", c->label);
        print_case(name, tt[WRITE_ONLY], R, 1, "s", extra);
        double mdisk = bench_median(t[DISK], R);
        snprintf(extra, sizeof extra, "ratio=%.2f vs h5_read_all/%s (%.2f GB/s, %" PRIu64
                 " bytes); import_total is %.2fx this, import_cold_total %.2fx", mdisk / mraw,
                 c->label, (double)store_bytes / mdisk / 1e9, store_bytes,
                 bench_median(tt[IMPORT], R) / mdisk, bench_median(tt[IMPORT_COLD], R) / mdisk);
        snprintf(name, sizeof name, "disk_write/%s", c->label);
        print_case(name, t[DISK], R, 1, "s", extra);
        for (int w = 0; w < NWHAT; w++) {
            free(t[w]);
            free(tt[w]);
            free(cpu[w]);
        }

        fst_store *st = NULL;
        fst_store_meta m;
        struct stat ss;
        if (fst_store_open(c->store, 0, &st) || fst_store_meta_get(st, &m) || stat(c->store, &ss))
            die("store meta");
        fst_store_close(st);
        printf("%-28s size=%" PRIu64 " allocated=%" PRIu64 " payload=%" PRIu64
               " ratio=%.4f (allocated %.4f)\n", strcat(strcpy(name, "store_size/"), c->label),
               (uint64_t)ss.st_size, (uint64_t)ss.st_blocks * 512, m.payload_bytes,
               (double)ss.st_size / (double)m.payload_bytes,
               (double)ss.st_blocks * 512 / (double)m.payload_bytes);
        fflush(stdout);
    }

    /* (1) open + first lookup: fresh processes, the stores interleaved. */
    double *pv[4], *iv[4];
    for (int k = 0; k < nc; k++) {
        pv[k] = calloc((size_t)probes, sizeof(double));
        iv[k] = calloc((size_t)probes * 5, sizeof(double));
    }
    char self[1024];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl <= 0)
        die("readlink /proc/self/exe");
    self[sl] = '\0';
    for (int i = 0; i < probes; i++)
        for (int k = 0; k < nc; k++) {
            int p[2];
            if (pipe(p))
                die("pipe");
            fflush(NULL);
            pid_t pid = fork();
            if (pid == 0) {
                dup2(p[1], 1);
                close(p[0]);
                execl(self, self, "--probe", cases[k].store, (char *)NULL);
                _exit(127);
            }
            close(p[1]);
            char buf[64] = "";
            ssize_t n = read(p[0], buf, sizeof buf - 1);
            close(p[0]);
            int status;
            waitpid(pid, &status, 0);
            if (n <= 0 || !WIFEXITED(status) || WEXITSTATUS(status))
                die("probe child");
            pv[k][i] = atof(buf);
        }
    for (int i = 0; i < probes * 5; i++)
        for (int k = 0; k < nc; k++) {
            double t0 = bench_now();
            fst_store *st = NULL;
            fst_reader *rd = NULL;
            fst_view v;
            if (fst_store_open(cases[k].store, 0, &st) || fst_reader_begin(st, &rd) ||
                fst_reader_get(rd, FIRST, &v))
                die("open");
            iv[k][i] = bench_now() - t0;
            fst_reader_end(rd);
            fst_store_close(st);
        }
    double base_p = bench_median(pv[0], (size_t)probes);
    double base_i = bench_median(iv[0], (size_t)probes * 5);
    for (int k = 0; k < nc; k++) {
        char name[64], extra[128];
        snprintf(name, sizeof name, "open_first/%s", cases[k].label);
        snprintf(extra, sizeof extra, "ratio=%.2f vs open_first/%s (fresh process each)",
                 bench_median(pv[k], (size_t)probes) / base_p, cases[0].label);
        print_case(name, pv[k], (size_t)probes, 1e3, "ms", extra);
        snprintf(name, sizeof name, "open_first_inproc/%s", cases[k].label);
        snprintf(extra, sizeof extra, "ratio=%.2f vs open_first_inproc/%s",
                 bench_median(iv[k], (size_t)probes * 5) / base_i, cases[0].label);
        print_case(name, iv[k], (size_t)probes * 5, 1e3, "ms", extra);
        free(pv[k]);
        free(iv[k]);
    }

    if (!keep)
        nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    else
        printf("# kept %s\n", root);
    return 0;
}
