/* matchfile.c : hloc's matches.h5, read (which pairs are there) and written
 * (from a match run's journal).
 *
 * Layout, as hloc's match_features writes it: a group per pair at
 * names_to_pair(name0, name1) = name0.replace('/', '-') + '/' +
 * name1.replace('/', '-'), i.e. a group per first image holding a group per
 * second image, each with `matches0` (int16, N0, -1 = none) and
 * `matching_scores0` (float16, N0). hloc's older files used '_' instead of
 * '/', one level. Files are written like hloc's (latest format) through
 * `<dest>.tmp-<pid>`, fsynced, and renamed over `dest`.
 */
#include "loader_impl.h"
#include "fst_journal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- listing the pairs of a file ---- */

typedef struct lister {
    const char           *fname;
    hid_t                 file;
    fst_matchfile_key_cb *cb;
    void                 *ctx;
    const char           *parent;    /* first-level name while in it */
    char                 *key;
    size_t                keycap;
    fst_status            status;
} lister;

/* The type of object loc/name, or H5O_TYPE_UNKNOWN (error cleared). */
static H5O_type_t obj_type(hid_t loc, const char *name)
{
#if H5_VERSION_GE(1, 12, 0)
    H5O_info2_t oi;
    herr_t rc = H5Oget_info_by_name3(loc, name, &oi, H5O_INFO_BASIC, H5P_DEFAULT);
#else
    H5O_info_t oi;
    herr_t rc = H5Oget_info_by_name2(loc, name, &oi, H5O_INFO_BASIC, H5P_DEFAULT);
#endif
    if (rc < 0) {
        fst__h5_clear();
        return H5O_TYPE_UNKNOWN;
    }
    return oi.type;
}

/* Does group loc/name hold a `matches0`? 1 yes, 0 no, -1 not a group. */
static int has_matches(hid_t loc, const char *name)
{
    if (obj_type(loc, name) != H5O_TYPE_GROUP)
        return -1;
    hid_t g = H5Gopen2(loc, name, H5P_DEFAULT);
    if (g < 0) {
        fst__h5_clear();
        return -1;
    }
    int r = fst__h5_has_link(g, "matches0");
    H5Gclose(g);
    return r;
}

static fst_status emit(lister *l, const char *a, const char *b)
{
    size_t need = strlen(a) + (b ? strlen(b) + 1 : 0) + 1;
    if (need > l->keycap) {
        char *k = realloc(l->key, need * 2);
        if (!k) return fst__fail(FST_ENOMEM, "%s: listing pairs", l->fname);
        l->key = k;
        l->keycap = need * 2;
    }
    strcpy(l->key, a);
    if (b) {
        strcat(l->key, "/");
        strcat(l->key, b);
    }
    return l->cb(l->key, l->ctx);
}

static herr_t list_second(hid_t g, const char *name, const H5L_info_t *info, void *data)
{
    lister *l = data;
    if (info->type != H5L_TYPE_HARD) return 0;
    if (has_matches(g, name) != 1) return 0;
    l->status = emit(l, l->parent, name);
    return l->status ? -1 : 0;
}

static herr_t list_first(hid_t root, const char *name, const H5L_info_t *info, void *data)
{
    lister *l = data;
    if (info->type != H5L_TYPE_HARD) return 0;
    int r = has_matches(root, name);
    if (r < 0) return 0;                     /* not a group */
    if (r == 1) {                            /* hloc's old one-level key */
        l->status = emit(l, name, NULL);
        if (l->status) return -1;
    }
    hid_t g = H5Gopen2(root, name, H5P_DEFAULT);
    if (g < 0) {
        l->status = fst__h5_fail(FST_EFORMAT, "%s: /%s: cannot open group", l->fname, name);
        return -1;
    }
    l->parent = name;
    herr_t rc = H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, NULL, list_second, l);
    H5Gclose(g);
    if (rc < 0 && !l->status)
        l->status = fst__h5_fail(FST_EFORMAT, "%s: /%s: cannot list group", l->fname, name);
    return l->status ? -1 : 0;
}

fst_status fst_matchfile_keys(const char *path, fst_matchfile_key_cb *cb, void *ctx)
{
    fst__h5_quiet q;
    fst__h5_quiet_begin(&q);
    lister l = {.fname = path, .cb = cb, .ctx = ctx};
    hid_t f = H5I_INVALID_HID, root = H5I_INVALID_HID;
    fst_status s = fst__h5_open_read(path, &f, NULL, NULL);
    if (s) goto out;
    root = H5Gopen2(f, "/", H5P_DEFAULT);
    if (root < 0) {
        s = fst__h5_fail(FST_EFORMAT, "%s: cannot open the root group", path);
        goto out;
    }
    l.file = f;
    if (H5Literate(root, H5_INDEX_NAME, H5_ITER_INC, NULL, list_first, &l) < 0)
        s = l.status ? l.status : fst__h5_fail(FST_EFORMAT, "%s: cannot list the root group", path);
out:
    if (root >= 0) H5Gclose(root);
    if (f >= 0) H5Fclose(f);
    free(l.key);
    fst__h5_quiet_end(&q);
    return s;
}

/* ---- refusing a features file as the output ---- */

typedef struct feat_finder {
    char found[512];      /* "/img.jpg/descriptors" once found */
    char first[256];      /* the group's first child group, to go down into */
} feat_finder;

static herr_t scan_children(hid_t g, const char *name, const H5L_info_t *info, void *data)
{
    feat_finder *ff = data;
    if (info->type != H5L_TYPE_HARD) return 0;
    bool feat = !strcmp(name, "descriptors") || !strcmp(name, "keypoints");
    if (!feat && ff->first[0]) return 0;     /* names only: no object header read */
    H5O_type_t t = obj_type(g, name);
    if (feat && t == H5O_TYPE_DATASET) {
        snprintf(ff->found, sizeof ff->found, "%s", name);
        return 1;
    }
    if (t == H5O_TYPE_GROUP && !ff->first[0] && strlen(name) < sizeof ff->first)
        snprintf(ff->first, sizeof ff->first, "%s", name);
    return 0;
}

fst_status fst_matchfile_check_output(const char *path)
{
    fst__h5_quiet q;
    fst__h5_quiet_begin(&q);
    hid_t f = H5I_INVALID_HID, g = H5I_INVALID_HID;
    char where[1024] = "";
    fst_status s = fst__h5_open_read(path, &f, NULL, NULL);
    if (s) goto out;
    g = H5Gopen2(f, "/", H5P_DEFAULT);
    /* Down the first child group of each level (root, image or first-name
     * group, nested name parts...): a features file shows an image group
     * within a few levels, a matches file only pair groups; the cost is a
     * few object headers, whatever the file's size. */
    for (int depth = 0; g >= 0 && depth < 64; depth++) {
        feat_finder ff = {{0}, {0}};
        if (H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, NULL, scan_children, &ff) < 0) {
            s = fst__h5_fail(FST_EFORMAT, "%s: %s: cannot list group", path,
                             where[0] ? where : "/");
            goto out;
        }
        if (ff.found[0]) {
            s = fst__fail(FST_EEXIST, "output %s holds hloc features (%s/%s), not matches: "
                          "refusing to write match groups into it; name another output file",
                          path, where, ff.found);
            goto out;
        }
        if (!ff.first[0]) break;
        size_t l = strlen(where);
        snprintf(where + l, sizeof where - l, "/%s", ff.first);
        hid_t c = H5Gopen2(g, ff.first, H5P_DEFAULT);
        H5Gclose(g);
        g = c;
    }
    fst__h5_clear();
out:
    if (g >= 0) H5Gclose(g);
    if (f >= 0) H5Fclose(f);
    fst__h5_quiet_end(&q);
    return s;
}

/* ---- writing ---- */

/* Datasets up to this size are stored in their object header (HDF5's
 * compact layout: one write for header and data; readers see no
 * difference). Larger ones are contiguous, like h5py's default. */
#define COMPACT_MAX 16384

/* hloc's key part: the name with '/' replaced by '-'. */
static fst_status key_part(const char *name, char **buf, size_t *cap)
{
    size_t n = strlen(name) + 1;
    if (n > *cap) {
        char *b = realloc(*buf, n * 2);
        if (!b) return fst__fail(FST_ENOMEM, "pair key");
        *buf = b;
        *cap = n * 2;
    }
    fst__pair_key_part(name, n, *buf);       /* with the terminator */
    return FST_OK;
}

typedef struct writer {
    const char      *dest;
    hid_t            file;
    hid_t            gcpl, dcpl, dcpl_compact, f16, idx16, idx32;
    bool             existing;     /* started from dest's content */
    hid_t            parent;       /* open first-level group */
    char            *pname, *a, *b, *tmpk;
    size_t           pcap, acap, bcap, tcap;
    void            *buf;          /* aligned copy of a record's arrays */
    size_t           bufcap;
    uint64_t         done, total;
    fst_progress_cb *progress;
    void            *progress_ctx;
} writer;

/* Delete loc/name if it is a pair group (holds matches0). */
static fst_status drop_pair(writer *w, hid_t loc, const char *name, const char *where)
{
    if (!fst__h5_has_link(loc, name) || has_matches(loc, name) != 1)
        return FST_OK;
    if (H5Ldelete(loc, name, H5P_DEFAULT) < 0)
        return fst__h5_fail(FST_EIO, "%s: cannot delete %s", w->dest, where);
    return FST_OK;
}

/* Remove what hloc's find_pair would find for this pair instead of the
 * group about to be written: the reversed key and both old keys. */
static fst_status drop_variants(writer *w, const char *a, const char *b)
{
    fst_status s;
    size_t la = strlen(a), lb = strlen(b);
    if (la + lb + 2 > w->tcap) {
        char *t = realloc(w->tmpk, (la + lb + 2) * 2);
        if (!t) return fst__fail(FST_ENOMEM, "pair key");
        w->tmpk = t;
        w->tcap = (la + lb + 2) * 2;
    }
    if (strcmp(a, b) != 0 && fst__h5_has_link(w->file, b) && has_matches(w->file, b) >= 0) {
        hid_t g = H5Gopen2(w->file, b, H5P_DEFAULT);
        if (g >= 0) {
            snprintf(w->tmpk, w->tcap, "/%s/%s", b, a);
            s = drop_pair(w, g, a, w->tmpk);
            H5Gclose(g);
            if (s) return s;
        } else {
            fst__h5_clear();
        }
    }
    for (int r = 0; r < 2; r++) {
        snprintf(w->tmpk, w->tcap, "%s_%s", r ? b : a, r ? a : b);
        if ((s = drop_pair(w, w->file, w->tmpk, w->tmpk)))
            return s;
    }
    return FST_OK;
}

static fst_status open_parent(writer *w, const char *a)
{
    if (w->parent >= 0 && !strcmp(w->pname, a))
        return FST_OK;
    if (w->parent >= 0) H5Gclose(w->parent);
    w->parent = H5I_INVALID_HID;
    size_t n = strlen(a) + 1;
    if (n > w->pcap) {
        char *p = realloc(w->pname, n * 2);
        if (!p) return fst__fail(FST_ENOMEM, "pair key");
        w->pname = p;
        w->pcap = n * 2;
    }
    memcpy(w->pname, a, n);
    if (fst__h5_has_link(w->file, a)) {
        if (obj_type(w->file, a) != H5O_TYPE_GROUP)
            return fst__fail(FST_EFORMAT, "%s: /%s exists and is not a group; cannot "
                             "write pairs of %s under it", w->dest, a, a);
        w->parent = H5Gopen2(w->file, a, H5P_DEFAULT);
    } else {
        w->parent = H5Gcreate2(w->file, a, H5P_DEFAULT, w->gcpl, H5P_DEFAULT);
    }
    if (w->parent < 0)
        return fst__h5_fail(FST_EIO, "%s: cannot create or open group /%s", w->dest, a);
    return FST_OK;
}

static fst_status write_dset(writer *w, hid_t g, const char *name, hid_t type,
                             uint32_t n, const void *data, size_t elsize, const char *where)
{
    hsize_t dims[1] = {n};
    hid_t sp = H5Screate_simple(1, dims, NULL);
    if (sp < 0) return fst__h5_fail(FST_EIO, "%s: %s/%s: dataspace", w->dest, where, name);
    hid_t d = H5Dcreate2(g, name, type, sp, H5P_DEFAULT,
                         (size_t)n * elsize <= COMPACT_MAX ? w->dcpl_compact : w->dcpl,
                         H5P_DEFAULT);
    fst_status s = FST_OK;
    if (d < 0) {
        s = fst__h5_fail(FST_EIO, "%s: %s/%s: cannot create", w->dest, where, name);
    } else if (n) {
        size_t bytes = (size_t)n * elsize;
        s = fst__grow(&w->buf, &w->bufcap, bytes, "matches.h5 record");
        if (!s) {
            memcpy(w->buf, data, bytes);   /* journal data has no alignment */
            if (H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, w->buf) < 0)
                s = fst__h5_fail(FST_EIO, "%s: %s/%s: cannot write", w->dest, where, name);
        }
    }
    if (d >= 0) H5Dclose(d);
    H5Sclose(sp);
    return s;
}

static fst_status write_pair(const char *jkey, const fst_journal_rec *r, void *ctx)
{
    (void)jkey;
    writer *w = ctx;
    fst_status s;
    if ((s = key_part(r->name0, &w->a, &w->acap)) || (s = key_part(r->name1, &w->b, &w->bcap)))
        return s;
    if (w->existing && (s = drop_variants(w, w->a, w->b)))
        return s;
    if ((s = open_parent(w, w->a)))
        return s;
    size_t wl = strlen(w->a) + strlen(w->b) + 3;
    char *where = malloc(wl);
    if (!where) return fst__fail(FST_ENOMEM, "pair key");
    snprintf(where, wl, "/%s/%s", w->a, w->b);
    hid_t g = H5I_INVALID_HID;
    if (fst__h5_has_link(w->parent, w->b) && H5Ldelete(w->parent, w->b, H5P_DEFAULT) < 0) {
        s = fst__h5_fail(FST_EIO, "%s: cannot replace %s", w->dest, where);
        goto out;
    }
    g = H5Gcreate2(w->parent, w->b, H5P_DEFAULT, w->gcpl, H5P_DEFAULT);
    if (g < 0) {
        s = fst__h5_fail(FST_EIO, "%s: cannot create group %s", w->dest, where);
        goto out;
    }
    s = write_dset(w, g, "matches0", r->index_size == 2 ? w->idx16 : w->idx32, r->n0,
                   r->matches0, r->index_size, where);
    if (!s)
        s = write_dset(w, g, "matching_scores0", w->f16, r->n0, r->scores0, 2, where);
    if (!s)
        w->done++;
    if (!s && w->progress && (w->done % 1024 == 0 || w->done == w->total) &&
        w->progress(w->done, w->total, 0, w->progress_ctx))
        s = fst__fail(FST_EINTR, "%s: writing interrupted", w->dest);
out:
    if (g >= 0) H5Gclose(g);
    free(where);
    return s;
}

/* ---- a part's root attributes (featstore match --shard) ---- */

typedef struct attr_names {
    char **v;
    size_t n, cap;
    bool   oom;
} attr_names;

static herr_t collect_featstore(hid_t loc, const char *name, const H5A_info_t *info, void *data)
{
    (void)loc;
    (void)info;
    attr_names *a = data;
    if (strncmp(name, "featstore_", 10) != 0) return 0;
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 16;
        char **v = realloc(a->v, cap * sizeof *v);
        if (!v) { a->oom = true; return -1; }
        a->v = v;
        a->cap = cap;
    }
    if (!(a->v[a->n] = strdup(name))) { a->oom = true; return -1; }
    a->n++;
    return 0;
}

/* Remove the featstore_* attributes of the root (an earlier part's record
 * in a file this run rewrites), then write kv (name, value, ..., NULL) as
 * variable-length UTF-8 strings, as h5py writes a str. */
static fst_status write_attrs(writer *w, const char *const *kv)
{
    fst_status s = FST_OK;
    attr_names an = {0};
    hid_t root = H5Gopen2(w->file, "/", H5P_DEFAULT), st = H5I_INVALID_HID,
          sp = H5I_INVALID_HID;
    if (root < 0) return fst__h5_fail(FST_EIO, "%s: cannot open the root group", w->dest);
    if (H5Aiterate2(root, H5_INDEX_NAME, H5_ITER_INC, NULL, collect_featstore, &an) < 0) {
        s = an.oom ? fst__fail(FST_ENOMEM, "%s: attributes", w->dest)
                   : fst__h5_fail(FST_EFORMAT, "%s: cannot list the root's attributes", w->dest);
        goto out;
    }
    for (size_t i = 0; i < an.n; i++)
        if (H5Adelete(root, an.v[i]) < 0) {
            s = fst__h5_fail(FST_EIO, "%s: cannot delete attribute %s", w->dest, an.v[i]);
            goto out;
        }
    st = H5Tcopy(H5T_C_S1);
    sp = H5Screate(H5S_SCALAR);
    if (st < 0 || sp < 0 || H5Tset_size(st, H5T_VARIABLE) < 0 ||
        H5Tset_cset(st, H5T_CSET_UTF8) < 0) {
        s = fst__h5_fail(FST_ENOMEM, "%s: string type", w->dest);
        goto out;
    }
    for (size_t i = 0; kv && kv[i]; i += 2) {
        hid_t a = H5Acreate2(root, kv[i], st, sp, H5P_DEFAULT, H5P_DEFAULT);
        const char *v = kv[i + 1] ? kv[i + 1] : "";
        herr_t rc = a < 0 ? -1 : H5Awrite(a, st, &v);
        if (a >= 0) H5Aclose(a);
        if (rc < 0) {
            s = fst__h5_fail(FST_EIO, "%s: cannot write attribute %s", w->dest, kv[i]);
            goto out;
        }
    }
out:
    for (size_t i = 0; i < an.n; i++) free(an.v[i]);
    free(an.v);
    if (st >= 0) H5Tclose(st);
    if (sp >= 0) H5Sclose(sp);
    H5Gclose(root);
    return s;
}

static fst_status copy_file(const char *from, const char *to)
{
    fst_status s = FST_OK;
    int in = open(from, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return fst__fail(FST_EIO, "%s: %s", from, strerror(errno));
    struct stat sb;
    mode_t mode = fstat(in, &sb) == 0 ? (sb.st_mode & 07777) : 0644;
    int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out >= 0) fchmod(out, mode);    /* the new file keeps the old one's mode */
    if (out < 0) {
        s = fst__fail_io(errno, to, 0, "%s", to);
        close(in);
        return s;
    }
    char *buf = malloc(1 << 20);
    if (!buf) {
        s = fst__fail(FST_ENOMEM, "copying %s", from);
        goto out;
    }
    for (;;) {
        ssize_t r = read(in, buf, 1 << 20);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            s = fst__fail(FST_EIO, "%s: %s", from, strerror(errno));
            break;
        }
        if (r == 0) break;
        for (ssize_t off = 0; off < r;) {
            ssize_t w = write(out, buf + off, (size_t)(r - off));
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) {
                s = fst__fail_io(errno, to, 0, "%s", to);
                goto out;
            }
            off += w;
        }
    }
out:
    free(buf);
    close(in);
    close(out);
    return s;
}

fst_status fst_matchfile_write(const char *dest, fst_journal *j,
                               const fst_matchfile_opts *opts, uint64_t *n_written)
{
    fst_status s;
    fst__h5_quiet q;
    fst__h5_quiet_begin(&q);
    writer w = {.dest = dest, .file = H5I_INVALID_HID, .gcpl = H5I_INVALID_HID,
                .dcpl = H5I_INVALID_HID, .dcpl_compact = H5I_INVALID_HID,
                .f16 = H5I_INVALID_HID,
                .idx16 = H5T_STD_I16LE, .idx32 = H5T_STD_I32LE,
                .parent = H5I_INVALID_HID};
    hid_t fapl = H5I_INVALID_HID;
    size_t tl = strlen(dest) + 32;
    char *tmp = malloc(tl);
    if (!tmp) {
        s = fst__fail(FST_ENOMEM, "%s", dest);
        goto out;
    }
    snprintf(tmp, tl, "%s.tmp-%ld", dest, (long)getpid());
    fst__remove_stale(dest, ".tmp-", (const char *const[]){"", NULL}, false);
    unlink(tmp);
    if (opts) {
        w.progress = opts->progress;
        w.progress_ctx = opts->progress_ctx;
    }
    if (j) FST_TRY(fst_journal_count(j, &w.total));

    /* Like hloc's files: latest format; no object times, so that the same
     * pairs always give the same bytes. */
    fapl = H5Pcreate(H5P_FILE_ACCESS);
    w.gcpl = H5Pcreate(H5P_GROUP_CREATE);
    w.dcpl = H5Pcreate(H5P_DATASET_CREATE);
    w.dcpl_compact = H5Pcreate(H5P_DATASET_CREATE);
    w.f16 = fst__h5_f16_create();
    if (fapl < 0 || w.gcpl < 0 || w.dcpl < 0 || w.f16 < 0 ||
        H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST) < 0 ||
        H5Pset_obj_track_times(w.gcpl, 0) < 0 || H5Pset_obj_track_times(w.dcpl, 0) < 0 ||
        H5Pset_obj_track_times(w.dcpl_compact, 0) < 0 ||
        H5Pset_layout(w.dcpl_compact, H5D_COMPACT) < 0) {
        s = fst__h5_fail(FST_ENOMEM, "%s: HDF5 property lists", dest);
        goto out;
    }
    struct stat sb;
    w.existing = opts && opts->copy_existing && stat(dest, &sb) == 0;
    if (w.existing) {
        hid_t probe;
        FST_TRY(fst__h5_open_read(dest, &probe, NULL, NULL));   /* a clear message if not HDF5 */
        H5Fclose(probe);
        FST_TRY(copy_file(dest, tmp));
        w.file = H5Fopen(tmp, H5F_ACC_RDWR, fapl);
    } else {
        /* A file creation list is a group creation list: the root group
         * gets no times either. */
        hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
        if (fcpl >= 0 && H5Pset_obj_track_times(fcpl, 0) >= 0)
            w.file = H5Fcreate(tmp, H5F_ACC_EXCL, fcpl, fapl);
        if (fcpl >= 0) H5Pclose(fcpl);
    }
    if (w.file < 0) {
        s = fst__h5_fail(FST_EIO, "%s: cannot create %s", dest, tmp);
        goto out;
    }
    if (j) FST_TRY(fst_journal_foreach(j, FST_JOURNAL_VERIFY, write_pair, &w));
    if (w.parent >= 0) H5Gclose(w.parent);
    w.parent = H5I_INVALID_HID;
    if (w.existing || (opts && opts->attrs)) FST_TRY(write_attrs(&w, opts ? opts->attrs : NULL));
    if (H5Fflush(w.file, H5F_SCOPE_GLOBAL) < 0) {
        s = fst__h5_fail(FST_EIO, "%s: flushing %s", dest, tmp);
        goto out;
    }
    herr_t rc = H5Fclose(w.file);
    w.file = H5I_INVALID_HID;
    if (rc < 0) {
        s = fst__h5_fail(FST_EIO, "%s: closing %s", dest, tmp);
        goto out;
    }
    FST_TRY(fst__fsync_path(tmp, false));
    if (rename(tmp, dest) != 0) {
        s = fst__fail(FST_EIO, "renaming %s to %s: %s", tmp, dest, strerror(errno));
        goto out;
    }
    free(tmp);
    tmp = NULL;
    FST_TRY(fst__fsync_parent(dest));
    if (w.progress && w.total == 0)
        w.progress(0, 0, 0, w.progress_ctx);
    if (n_written) *n_written = w.done;
out:
    if (w.parent >= 0) H5Gclose(w.parent);
    if (w.file >= 0) H5Fclose(w.file);
    if (tmp) unlink(tmp);
    if (fapl >= 0) H5Pclose(fapl);
    if (w.gcpl >= 0) H5Pclose(w.gcpl);
    if (w.dcpl >= 0) H5Pclose(w.dcpl);
    if (w.dcpl_compact >= 0) H5Pclose(w.dcpl_compact);
    if (w.f16 >= 0) H5Tclose(w.f16);
    free(w.pname); free(w.a); free(w.b); free(w.tmpk); free(w.buf);
    free(tmp);
    fst__h5_quiet_end(&q);
    return s;
}

/* ---- reading one pair, as hloc's find_pair + get_matches ---- */

static fst_status read_1d(hid_t g, const char *name, const char *where, hid_t memtype,
                          size_t elsize, void **out, uint32_t *n)
{
    fst__h5_dset d;
    fst_status s = fst__h5_dset_open(g, name, where, &d);
    if (s) return s;
    int64_t any[1] = {-1};
    unsigned kinds = memtype == H5T_NATIVE_FLOAT ? FST__H5_KFLOAT : FST__H5_KINT;
    s = fst__h5_dset_expect(&d, where, 1, any, kinds);
    if (!s) {
        uint64_t ne = fst__h5_dset_nelem(&d);
        void *buf = malloc(ne ? ne * elsize : 1);
        if (!buf) s = fst__fail(FST_ENOMEM, "%s", where);
        else if ((s = fst__h5_dset_read(&d, where, memtype, buf))) free(buf);
        else {
            *out = buf;
            *n = (uint32_t)ne;
        }
    }
    fst__h5_dset_close(&d);
    return s;
}

fst_status fst_matchfile_get(const char *path, const char *name0, const char *name1,
                             int32_t **matches0, float **scores0, uint32_t *n0,
                             int *reversed)
{
    fst__h5_quiet q;
    fst__h5_quiet_begin(&q);
    hid_t f = H5I_INVALID_HID, g = H5I_INVALID_HID;
    char *a = NULL, *b = NULL, *key = NULL;
    size_t ac = 0, bc = 0;
    void *m = NULL, *sc = NULL;
    uint32_t nm = 0, ns = 0;
    fst_status s = fst__h5_open_read(path, &f, NULL, NULL);
    if (s) goto out;
    FST_TRY(key_part(name0, &a, &ac));
    FST_TRY(key_part(name1, &b, &bc));
    key = malloc(strlen(a) + strlen(b) + 2);
    if (!key) { s = fst__fail(FST_ENOMEM, "pair key"); goto out; }
    int rev = -1;
    for (int k = 0; k < 4 && rev < 0; k++) {          /* hloc's find_pair order */
        bool r = k & 1;
        sprintf(key, "%s%c%s", r ? b : a, k < 2 ? '/' : '_', r ? a : b);
        const char *slash = strchr(key, '/');
        bool there;
        if (slash) {
            char *first = strndup(key, (size_t)(slash - key));
            if (!first) { s = fst__fail(FST_ENOMEM, "pair key"); goto out; }
            there = fst__h5_has_link(f, first) && obj_type(f, first) == H5O_TYPE_GROUP &&
                    fst__h5_has_link(f, key);
            free(first);
        } else {
            there = fst__h5_has_link(f, key);
        }
        if (there) rev = r;
    }
    if (rev < 0) {
        s = fst__fail(FST_ENOTFOUND, "%s: no pair (%s, %s) in either orientation", path,
                      name0, name1);
        goto out;
    }
    g = H5Gopen2(f, key, H5P_DEFAULT);
    if (g < 0) {
        s = fst__h5_fail(FST_EFORMAT, "%s: /%s: cannot open group", path, key);
        goto out;
    }
    FST_TRY(read_1d(g, "matches0", path, H5T_NATIVE_INT32, 4, &m, &nm));
    FST_TRY(read_1d(g, "matching_scores0", path, H5T_NATIVE_FLOAT, 4, &sc, &ns));
    if (nm != ns) {
        s = fst__fail(FST_EFORMAT, "%s: /%s: %u matches0 but %u matching_scores0", path, key,
                      nm, ns);
        goto out;
    }
    *matches0 = m;
    *scores0 = sc;
    m = sc = NULL;
    *n0 = nm;
    *reversed = rev;
out:
    free(m);
    free(sc);
    free(a);
    free(b);
    free(key);
    if (g >= 0) H5Gclose(g);
    if (f >= 0) H5Fclose(f);
    fst__h5_quiet_end(&q);
    return s;
}
