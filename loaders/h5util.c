/* h5util.c : HDF5 helpers shared by the loaders (loader_impl.h). */
#include "loader_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- errors ---- */

void fst__h5_quiet_begin(fst__h5_quiet *q)
{
    q->func = NULL;
    q->data = NULL;
    H5Eget_auto2(H5E_DEFAULT, &q->func, &q->data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

void fst__h5_quiet_end(const fst__h5_quiet *q)
{
    H5Eset_auto2(H5E_DEFAULT, q->func, q->data);
}

void fst__h5_clear(void)
{
    H5Eclear2(H5E_DEFAULT);
}

typedef struct innermost {
    char msg[256];
    int  err_no;        /* the errno a file driver reported, or 0 */
} innermost;

static herr_t take_innermost(unsigned n, const H5E_error2_t *err, void *data)
{
    innermost *im = data;
    if (n != 0)
        return 0;
    /* The description says what failed where ("unable to open file: name =
     * ..."); the minor message why ("file signature not found"). Keep both
     * when they differ; they are what a user can act on. */
    char minor[128] = "";
    if (H5Eget_msg(err->min_num, NULL, minor, sizeof minor) < 0)
        minor[0] = '\0';
    const char *desc = err->desc ? err->desc : "";
    /* The POSIX driver's own message is a dump over several lines ("file
     * write failed: time = ..., filename = '...', file descriptor = 8,
     * errno = 28, error message = 'No space left on device', buf = ...");
     * what a user can act on is its first words and the errno. */
    const char *en = strstr(desc, "errno = ");
    if (en) {
        im->err_no = atoi(en + 8);
        const char *colon = strchr(desc, ':');
        int head = colon && colon < en ? (int)(colon - desc) : 0;
        snprintf(im->msg, sizeof im->msg, "%.*s%s%s", head, desc, head ? ": " : "",
                 strerror(im->err_no));
        return 1;
    }
    if (desc[0] && minor[0] && !strstr(desc, minor))
        snprintf(im->msg, sizeof im->msg, "%s (%s)", desc, minor);
    else
        snprintf(im->msg, sizeof im->msg, "%s", desc[0] ? desc : minor);
    /* HDF5 messages carry no final period; make sure they end cleanly. */
    size_t len = strlen(im->msg);
    while (len && (im->msg[len - 1] == '\n' || im->msg[len - 1] == ' '))
        im->msg[--len] = '\0';
    return 1;   /* stop: one is enough */
}

fst_status fst__h5_fail(fst_status s, const char *fmt, ...)
{
    innermost im = {{0}, 0};
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, take_innermost, &im);
    H5Eclear2(H5E_DEFAULT);

    char head[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    if (im.err_no && fst__errno_status(im.err_no) == FST_EFULL)
        return fst__fail(FST_EFULL, "%s: %s (disk full)", head, im.msg);
    if (im.msg[0])
        return fst__fail(s, "%s: %s", head, im.msg);
    return fst__fail(s, "%s", head);
}

/* ---- types ---- */

/* IEEE binary16: sign bit 15, exponent bits 10..14 (bias 15), mantissa
 * bits 0..9; little-endian; normalization implied. */
static int is_ieee_f16(hid_t type)
{
    size_t spos, epos, esize, mpos, msize;
    if (H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize) < 0)
        return 0;
    return spos == 15 && epos == 10 && esize == 5 && mpos == 0 &&
           msize == 10 && H5Tget_ebias(type) == 15 &&
           H5Tget_norm(type) == H5T_NORM_IMPLIED && H5Tget_precision(type) == 16;
}

fst__h5_kind fst__h5_kind_of(hid_t type, size_t *elsize)
{
    size_t size = H5Tget_size(type);
    if (elsize)
        *elsize = size;
    switch (H5Tget_class(type)) {
    case H5T_FLOAT:
        if (size == 2 && is_ieee_f16(type)) return FST__H5_F16;
        if (size == 4 && H5Tget_precision(type) == 32) return FST__H5_F32;
        if (size == 8 && H5Tget_precision(type) == 64) return FST__H5_F64;
        return FST__H5_OTHER;
    case H5T_INTEGER:
        return H5Tget_sign(type) == H5T_SGN_NONE ? FST__H5_UINT : FST__H5_INT;
    default:
        return FST__H5_OTHER;
    }
}

const char *fst__h5_type_name(fst__h5_kind kind, size_t elsize, hid_t type)
{
    static const char *ints[] = {"int8", "int16", "int32", "int64"};
    static const char *uints[] = {"uint8", "uint16", "uint32", "uint64"};
    int lg = elsize == 1 ? 0 : elsize == 2 ? 1 : elsize == 4 ? 2 : elsize == 8 ? 3 : -1;
    switch (kind) {
    case FST__H5_F16: return "float16";
    case FST__H5_F32: return "float32";
    case FST__H5_F64: return "float64";
    case FST__H5_INT:  return lg >= 0 ? ints[lg] : "integer of odd size";
    case FST__H5_UINT: return lg >= 0 ? uints[lg] : "unsigned integer of odd size";
    case FST__H5_OTHER: break;
    }
    switch (type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS) {
    case H5T_FLOAT:     return elsize == 2 ? "2-byte float that is not IEEE float16 (bfloat16?)"
                                           : "float of unusual layout";
    case H5T_STRING:    return "string";
    case H5T_COMPOUND:  return "compound";
    case H5T_ENUM:      return "enum (bool?)";
    case H5T_BITFIELD:  return "bitfield";
    case H5T_OPAQUE:    return "opaque";
    case H5T_REFERENCE: return "reference";
    case H5T_ARRAY:     return "array";
    case H5T_VLEN:      return "variable-length";
    case H5T_TIME:      return "time";
    default:            return "unknown type";
    }
}

hid_t fst__h5_f16_create(void)
{
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    if (t < 0)
        goto fail;
    /* Order matters: shrink the fields before the precision and size. */
    if (H5Tset_fields(t, 15, 10, 5, 0, 10) < 0 || H5Tset_precision(t, 16) < 0 ||
        H5Tset_size(t, 2) < 0 || H5Tset_ebias(t, 15) < 0)
        goto fail;
    return t;
fail:
    if (t >= 0)
        H5Tclose(t);
    fst__h5_fail(FST_ENOMEM, "cannot build the float16 HDF5 type");
    return H5I_INVALID_HID;
}

/* ---- files ---- */

static fst_status from_errno(int e, const char *path, const char *what)
{
    return fst__fail_io(e, path, 0, "%s%s%s", path, what[0] ? ": " : "", what);
}

/* Does another process hold `path` locked the way HDF5 1.10+ does (an
 * exclusive flock() by a writer; readers take a shared one)? Asked only
 * after H5Fopen failed, to tell "locked" from "damaged". */
static bool file_locked(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    bool locked = flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
    close(fd);                          /* drops a lock we got */
    return locked;
}

fst_status fst__h5_open_read(const char *path, hid_t *out, uint64_t *size_out,
                             int64_t *mtime_out)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return from_errno(errno, path, "");
    if (!S_ISREG(sb.st_mode))
        return fst__fail(FST_EIO, "%s: not a regular file", path);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return from_errno(errno, path, "");
    close(fd);

    /* H5Fis_hdf5 looks for the signature at 0, 512, 1024...: a file of
     * random bytes stops here with a message users understand. */
    htri_t is = H5Fis_hdf5(path);
    if (is <= 0) {
        fst__h5_clear();
        return fst__fail(FST_EFORMAT, "%s: not an HDF5 file%s", path,
                         sb.st_size == 0 ? " (empty)" : "");
    }
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0 && file_locked(path)) {
        fst__h5_clear();
        return fst__fail(FST_EIO, "%s: locked: another program has it open for writing "
                         "(HDF5 file locking refuses readers while a writer holds the file); "
                         "close it there first, or set HDF5_USE_FILE_LOCKING=FALSE to read "
                         "it anyway (safe only once nothing writes to it)", path);
    }
    if (f < 0)
        return fst__h5_fail(FST_EFORMAT,
                            "%s: cannot open as HDF5 (truncated or damaged?)", path);
    if (size_out)
        *size_out = (uint64_t)sb.st_size;
    if (mtime_out)
        *mtime_out = (int64_t)sb.st_mtime;
    *out = f;
    return FST_OK;
}

static fst_status out_begin(const char *path, fst__out *o)
{
    memset(o, 0, sizeof *o);
    o->h5 = H5I_INVALID_HID;
    struct stat sb;
    if (lstat(path, &sb) == 0)
        return fst__fail(FST_EEXIST, "%s: already exists (remove it first)", path);
    if (errno != ENOENT)
        return from_errno(errno, path, "");
    size_t n = strlen(path) + 32;
    o->path = strdup(path);
    o->tmp = malloc(n);
    if (!o->path || !o->tmp) {
        free(o->path);
        free(o->tmp);
        o->path = o->tmp = NULL;
        return fst__fail(FST_ENOMEM, "%s", path);
    }
    snprintf(o->tmp, n, "%s.tmp-%ld", path, (long)getpid());
    fst__remove_stale(path, ".tmp-", (const char *const[]){"", NULL}, false);
    unlink(o->tmp);   /* ours from an earlier failed attempt in this process */
    return FST_OK;
}

fst_status fst__out_h5(const char *path, fst__out *o)
{
    fst_status s = out_begin(path, o);
    if (s)
        return s;
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0 || H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST) < 0) {
        s = fst__h5_fail(FST_EIO, "%s: cannot set up HDF5 file access", path);
        goto out;
    }
    o->h5 = H5Fcreate(o->tmp, H5F_ACC_EXCL, H5P_DEFAULT, fapl);
    if (o->h5 < 0) {
        s = fst__h5_fail(FST_EIO, "%s: cannot create", o->tmp);
        goto out;
    }
    s = FST_OK;
out:
    if (fapl >= 0)
        H5Pclose(fapl);
    if (s)
        fst__out_discard(o);
    return s;
}

fst_status fst__out_text(const char *path, fst__out *o)
{
    fst_status s = out_begin(path, o);
    if (s)
        return s;
    int fd = open(o->tmp, O_WRONLY | O_CREAT | O_EXCL, 0666);
    if (fd >= 0)
        o->fp = fdopen(fd, "w");
    if (!o->fp) {
        s = from_errno(errno, o->tmp, "cannot create");
        if (fd >= 0)
            close(fd);
        fst__out_discard(o);
        return s;
    }
    /* Lines are short and many: a large buffer keeps the syscalls few. */
    setvbuf(o->fp, NULL, _IOFBF, 1 << 20);
    return FST_OK;
}

static fst_status rename_noreplace(const char *from, const char *to)
{
    if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
        return FST_OK;
    if (errno == EEXIST)
        return fst__fail(FST_EEXIST, "%s: already exists (appeared while writing)", to);
    if (errno != EINVAL && errno != ENOSYS)
        return from_errno(errno, to, "cannot rename into place");
    /* A filesystem without RENAME_NOREPLACE: link() refuses to replace too. */
    if (link(from, to) != 0) {
        if (errno == EEXIST)
            return fst__fail(FST_EEXIST, "%s: already exists (appeared while writing)", to);
        return from_errno(errno, to, "cannot rename into place");
    }
    unlink(from);
    return FST_OK;
}

fst_status fst__out_commit(fst__out *o)
{
    fst_status s = FST_OK;
    if (o->h5 >= 0) {
        herr_t rc = H5Fclose(o->h5);
        o->h5 = H5I_INVALID_HID;
        if (rc < 0)
            FST_TRY(fst__h5_fail(FST_EIO, "%s: cannot close", o->tmp));
    }
    if (o->fp) {
        int bad = ferror(o->fp);
        int e = errno;
        if (fclose(o->fp) != 0 && !bad) {
            bad = 1;
            e = errno;
        }
        o->fp = NULL;
        if (bad)
            FST_TRY(from_errno(e, o->tmp, "write"));
    }
    FST_TRY(fst__fsync_path(o->tmp, false));
    FST_TRY(rename_noreplace(o->tmp, o->path));
    free(o->tmp);
    o->tmp = NULL;          /* in place now: never remove it */
    FST_TRY(fst__fsync_parent(o->path));
out:
    fst__out_discard(o);
    return s;
}

void fst__out_discard(fst__out *o)
{
    if (o->h5 >= 0) {
        H5Fclose(o->h5);
        fst__h5_clear();
    }
    if (o->fp)
        fclose(o->fp);
    if (o->tmp)
        unlink(o->tmp);
    free(o->tmp);
    free(o->path);
    memset(o, 0, sizeof *o);
    o->h5 = H5I_INVALID_HID;
}

/* ---- datasets ---- */

void fst__h5_dset_close(fst__h5_dset *d)
{
    /* A zeroed struct has id 0, which is no valid HDF5 id. */
    if (d->type > 0)
        H5Tclose(d->type);
    if (d->id > 0)
        H5Dclose(d->id);
    d->id = d->type = H5I_INVALID_HID;
}

fst_status fst__h5_dset_open(hid_t loc, const char *name, const char *where,
                             fst__h5_dset *out)
{
    fst_status s;
    hid_t space = H5I_INVALID_HID;
    memset(out, 0, sizeof *out);
    out->id = out->type = H5I_INVALID_HID;

    out->id = H5Dopen2(loc, name, H5P_DEFAULT);
    if (out->id < 0) {
        s = fst__h5_fail(FST_EFORMAT, "%s: cannot open as a dataset", where);
        goto out;
    }
    out->type = H5Dget_type(out->id);
    space = H5Dget_space(out->id);
    if (out->type < 0 || space < 0) {
        s = fst__h5_fail(FST_EFORMAT, "%s: cannot read its type or shape", where);
        goto out;
    }
    H5S_class_t cls = H5Sget_simple_extent_type(space);
    if (cls == H5S_NULL) {
        s = fst__fail(FST_EFORMAT, "%s: empty dataspace (no shape)", where);
        goto out;
    }
    int rank = H5Sget_simple_extent_ndims(space);
    if (rank < 0 || rank > FST__H5_MAXRANK) {
        s = fst__h5_fail(FST_EFORMAT, "%s: unsupported rank %d", where, rank);
        goto out;
    }
    out->rank = rank;
    if (rank > 0 && H5Sget_simple_extent_dims(space, out->dims, NULL) < 0) {
        s = fst__h5_fail(FST_EFORMAT, "%s: cannot read its shape", where);
        goto out;
    }
    out->kind = fst__h5_kind_of(out->type, &out->elsize);
    s = FST_OK;
out:
    if (space >= 0)
        H5Sclose(space);
    if (s)
        fst__h5_dset_close(out);
    return s;
}

static void shape_str(const fst__h5_dset *d, char *buf, size_t cap)
{
    size_t n = (size_t)snprintf(buf, cap, "(");
    for (int i = 0; i < d->rank && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%llu", i ? ", " : "",
                              (unsigned long long)d->dims[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, "%s)", d->rank == 1 ? "," : "");
}

fst_status fst__h5_dset_expect(const fst__h5_dset *d, const char *where,
                               int rank, const int64_t *dims, unsigned kinds)
{
    char shape[160];
    shape_str(d, shape, sizeof shape);
    if (d->rank != rank)
        return fst__fail(FST_EFORMAT, "%s: expected %d dimension%s, found %d (shape %s)",
                         where, rank, rank == 1 ? "" : "s", d->rank, shape);
    static const char *dimname2[] = {"rows", "columns"};
    for (int i = 0; i < rank; i++) {
        if (dims[i] < 0 || d->dims[i] == (hsize_t)dims[i])
            continue;
        if (rank == 1)
            return fst__fail(FST_EFORMAT, "%s: expected length %lld, found %llu",
                             where, (long long)dims[i], (unsigned long long)d->dims[i]);
        if (rank == 2)
            return fst__fail(FST_EFORMAT, "%s: expected %lld %s, found %llu (shape %s)",
                             where, (long long)dims[i], dimname2[i],
                             (unsigned long long)d->dims[i], shape);
        return fst__fail(FST_EFORMAT, "%s: expected %lld in dimension %d, found %llu (shape %s)",
                         where, (long long)dims[i], i, (unsigned long long)d->dims[i], shape);
    }
    if (!(kinds & FST__H5_K(d->kind))) {
        char want[96] = "";
        static const char *kname[] = {"", "float16", "float32", "float64", "integer",
                                      "unsigned integer"};
        int first = 1;
        for (int k = FST__H5_F16; k <= FST__H5_UINT; k++) {
            if (!(kinds & FST__H5_K(k)))
                continue;
            size_t n = strlen(want);
            snprintf(want + n, sizeof want - n, "%s%s", first ? "" : " or ", kname[k]);
            first = 0;
        }
        return fst__fail(FST_EFORMAT, "%s: unsupported dtype %s (expected %s)", where,
                         fst__h5_type_name(d->kind, d->elsize, d->type), want);
    }
    return FST_OK;
}

uint64_t fst__h5_dset_nelem(const fst__h5_dset *d)
{
    uint64_t n = 1;
    for (int i = 0; i < d->rank; i++)
        n *= d->dims[i];
    return n;
}

fst_status fst__h5_dset_read(const fst__h5_dset *d, const char *where,
                             hid_t memtype, void *buf)
{
    if (fst__h5_dset_nelem(d) == 0)
        return FST_OK;
    if (H5Dread(d->id, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
        return fst__h5_fail(FST_EFORMAT, "%s: cannot read", where);
    return FST_OK;
}

fst_status fst__h5_write(hid_t loc, const char *name, hid_t filetype,
                         hid_t memtype, int rank, const hsize_t *dims,
                         const void *buf, const char *where, hid_t *out_id)
{
    fst_status s = FST_OK;
    hid_t space = H5Screate_simple(rank, dims, NULL);
    hid_t ds = H5I_INVALID_HID;
    if (space < 0) {
        s = fst__h5_fail(FST_EIO, "%s: cannot create its dataspace", where);
        goto out;
    }
    ds = H5Dcreate2(loc, name, filetype, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (ds < 0) {
        s = fst__h5_fail(FST_EIO, "%s: cannot create", where);
        goto out;
    }
    uint64_t n = 1;
    for (int i = 0; i < rank; i++)
        n *= dims[i];
    if (n && H5Dwrite(ds, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
        s = fst__h5_fail(FST_EIO, "%s: cannot write", where);
        goto out;
    }
out:
    if (space >= 0)
        H5Sclose(space);
    if (ds >= 0) {
        if (s == FST_OK && out_id)
            *out_id = ds;
        else
            H5Dclose(ds);
    }
    return s;
}

/* ---- attributes ---- */

fst_status fst__h5_attr_read_double(hid_t obj, const char *name,
                                    const char *where, int *present,
                                    double *value, fst__h5_kind *kind,
                                    size_t *elsize)
{
    fst_status s = FST_OK;
    hid_t a = H5I_INVALID_HID, t = H5I_INVALID_HID, sp = H5I_INVALID_HID;
    *present = 0;
    htri_t ex = H5Aexists(obj, name);
    if (ex < 0)
        return fst__h5_fail(FST_EFORMAT, "%s: cannot list attributes", where);
    if (ex == 0)
        return FST_OK;
    a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a >= 0) {
        t = H5Aget_type(a);
        sp = H5Aget_space(a);
    }
    if (a < 0 || t < 0 || sp < 0) {
        s = fst__h5_fail(FST_EFORMAT, "%s: attribute %s: cannot open", where, name);
        goto out;
    }
    size_t es;
    fst__h5_kind k = fst__h5_kind_of(t, &es);
    hssize_t np = H5Sget_simple_extent_npoints(sp);
    if (k == FST__H5_OTHER) {
        s = fst__fail(FST_EFORMAT, "%s: attribute %s: unsupported dtype %s (expected a number)",
                      where, name, fst__h5_type_name(k, es, t));
        goto out;
    }
    if (H5Sget_simple_extent_type(sp) == H5S_NULL || np != 1) {
        s = fst__fail(FST_EFORMAT, "%s: attribute %s: expected one number, found %lld",
                      where, name, (long long)(np < 0 ? 0 : np));
        goto out;
    }
    if (H5Aread(a, H5T_NATIVE_DOUBLE, value) < 0) {
        s = fst__h5_fail(FST_EFORMAT, "%s: attribute %s: cannot read", where, name);
        goto out;
    }
    *present = 1;
    if (kind)
        *kind = k;
    if (elsize)
        *elsize = es;
out:
    if (sp >= 0) H5Sclose(sp);
    if (t >= 0) H5Tclose(t);
    if (a >= 0) H5Aclose(a);
    return s;
}

fst_status fst__h5_attr_write_scalar(hid_t obj, const char *name,
                                     hid_t filetype, hid_t memtype,
                                     const void *value, const char *where)
{
    fst_status s = FST_OK;
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = sp >= 0 ? H5Acreate2(obj, name, filetype, sp, H5P_DEFAULT, H5P_DEFAULT)
                      : H5I_INVALID_HID;
    if (a < 0 || H5Awrite(a, memtype, value) < 0)
        s = fst__h5_fail(FST_EIO, "%s: attribute %s: cannot write", where, name);
    if (a >= 0) H5Aclose(a);
    if (sp >= 0) H5Sclose(sp);
    return s;
}

/* ---- walking groups ---- */

/* An object's identity in the file: its address (1.10) or token (1.12+). */
typedef struct objid {
    unsigned char b[16];
} objid;

typedef struct walker {
    const char       *fname;
    fst__h5_group_cb *cb;
    void             *ctx;
    char             *path;       /* current absolute path, grown as needed */
    size_t            len, cap;
    objid            *seen;       /* groups with several hard links */
    size_t            nseen, capseen;
    int               depth;
    fst_status        status;     /* why the iteration stopped */
    fst__h5_skipped  *skipped;    /* may be NULL */
} walker;

#define WALK_MAX_DEPTH 1000

static fst_status walk_group(walker *w, hid_t g);

static int get_objinfo(hid_t loc, const char *name, H5O_type_t *type,
                       unsigned *rc, objid *id)
{
    memset(id, 0, sizeof *id);
#if H5_VERSION_GE(1, 12, 0)
    H5O_info2_t oi;
    if (H5Oget_info_by_name3(loc, name, &oi, H5O_INFO_BASIC, H5P_DEFAULT) < 0)
        return -1;
    memcpy(id->b, &oi.token, sizeof oi.token < sizeof id->b ? sizeof oi.token : sizeof id->b);
#else
    H5O_info_t oi;
    if (H5Oget_info_by_name2(loc, name, &oi, H5O_INFO_BASIC, H5P_DEFAULT) < 0)
        return -1;
    memcpy(id->b, &oi.addr, sizeof oi.addr);
#endif
    *type = oi.type;
    *rc = oi.rc;
    return 0;
}

static herr_t walk_link(hid_t g, const char *name, const H5L_info_t *info, void *data)
{
    walker *w = data;
    if (info->type != H5L_TYPE_HARD) {
        /* soft and external links: not followed, but counted and one named
         * (an image reached only through one would vanish silently) */
        if (w->skipped && !w->skipped->n++) {
            char target[200] = "";
            if (info->type == H5L_TYPE_SOFT &&
                H5Lget_val(g, name, target, sizeof target, H5P_DEFAULT) < 0)
                target[0] = '\0';
            target[sizeof target - 1] = '\0';
            fst__h5_clear();
            snprintf(w->skipped->example, sizeof w->skipped->example, "%s%s%s -> %s",
                     w->path, w->len > 1 ? "/" : "", name,
                     info->type == H5L_TYPE_SOFT ? target : "(external link)");
        }
        return 0;
    }
    H5O_type_t type;
    unsigned rc;
    objid id;
    if (get_objinfo(g, name, &type, &rc, &id) < 0) {
        w->status = fst__h5_fail(FST_EFORMAT, "%s: %s%s%s: cannot read object header",
                                 w->fname, w->path, w->len > 1 ? "/" : "", name);
        return -1;
    }
    if (type != H5O_TYPE_GROUP)
        return 0;
    if (rc > 1) {
        /* Only a group with several hard links can be met twice. */
        for (size_t i = 0; i < w->nseen; i++)
            if (!memcmp(&w->seen[i], &id, sizeof id))
                return 0;
        if (w->nseen == w->capseen) {
            size_t nc = w->capseen ? 2 * w->capseen : 16;
            objid *ns = realloc(w->seen, nc * sizeof *ns);
            if (!ns) {
                w->status = fst__fail(FST_ENOMEM, "%s: walking groups", w->fname);
                return -1;
            }
            w->seen = ns;
            w->capseen = nc;
        }
        w->seen[w->nseen++] = id;
    }

    size_t nlen = strlen(name), old = w->len;
    size_t need = old + 1 + nlen + 1;
    if (need > w->cap) {
        size_t nc = need * 2;
        char *np = realloc(w->path, nc);
        if (!np) {
            w->status = fst__fail(FST_ENOMEM, "%s: walking groups", w->fname);
            return -1;
        }
        w->path = np;
        w->cap = nc;
    }
    if (old > 1)
        w->path[w->len++] = '/';
    memcpy(w->path + w->len, name, nlen + 1);
    w->len += nlen;

    hid_t child = H5Gopen2(g, name, H5P_DEFAULT);
    fst_status s;
    if (child < 0)
        s = fst__h5_fail(FST_EFORMAT, "%s: %s: cannot open group", w->fname, w->path);
    else {
        s = walk_group(w, child);
        H5Gclose(child);
    }
    w->len = old;
    w->path[old] = '\0';
    if (s) {
        w->status = s;
        return -1;
    }
    return 0;
}

static fst_status walk_group(walker *w, hid_t g)
{
    if (++w->depth > WALK_MAX_DEPTH) {
        w->depth--;
        return fst__fail(FST_EFORMAT, "%s: %s: groups nested deeper than %d levels",
                         w->fname, w->path, WALK_MAX_DEPTH);
    }
    fst_status s = w->cb(g, w->path, w->ctx);
    if (s == FST_OK) {
        w->status = FST_OK;
        herr_t rc = H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, NULL, walk_link, w);
        if (rc < 0) {
            s = w->status ? w->status
                          : fst__h5_fail(FST_EFORMAT, "%s: %s: cannot list group",
                                         w->fname, w->path);
        }
    }
    w->depth--;
    return s;
}

fst_status fst__h5_walk(hid_t file, const char *fname, fst__h5_group_cb *cb,
                        void *ctx)
{
    return fst__h5_walk_ex(file, fname, cb, ctx, NULL);
}

fst_status fst__h5_walk_ex(hid_t file, const char *fname, fst__h5_group_cb *cb,
                           void *ctx, fst__h5_skipped *skipped)
{
    walker w = {.fname = fname, .cb = cb, .ctx = ctx, .skipped = skipped};
    if (skipped) memset(skipped, 0, sizeof *skipped);
    w.cap = 256;
    w.path = malloc(w.cap);
    if (!w.path)
        return fst__fail(FST_ENOMEM, "%s: walking groups", fname);
    strcpy(w.path, "/");
    w.len = 1;
    fst_status s;
    hid_t root = H5Gopen2(file, "/", H5P_DEFAULT);
    if (root < 0) {
        s = fst__h5_fail(FST_EFORMAT, "%s: cannot open the root group", fname);
    } else {
        s = walk_group(&w, root);
        H5Gclose(root);
    }
    free(w.path);
    free(w.seen);
    return s;
}

int fst__h5_has_link(hid_t loc, const char *name)
{
    htri_t r = H5Lexists(loc, name, H5P_DEFAULT);
    if (r < 0) {
        fst__h5_clear();
        return 0;
    }
    return r > 0;
}

/* ---- small helpers ---- */

fst_status fst__grow(void **buf, size_t *cap, size_t bytes, const char *what)
{
    if (bytes <= *cap)
        return FST_OK;
    size_t nc = *cap ? *cap : 4096;
    while (nc < bytes)
        nc = nc > SIZE_MAX / 2 ? bytes : nc * 2;
    /* Aligned for SIMD: 64 bytes, the descriptor alignment of the store. */
    void *p = NULL;
    if (posix_memalign(&p, 64, nc) != 0)
        return fst__fail(FST_ENOMEM, "%s: %zu bytes", what, bytes);
    free(*buf);
    *buf = p;
    *cap = nc;
    return FST_OK;
}

