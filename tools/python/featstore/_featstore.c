/* _featstore.c : the CPython extension behind `import featstore`.
 *
 * A Store wraps one fst_store handle. A lookup borrows a read transaction
 * (a Snapshot object holding an fst_reader) and returns numpy arrays that
 * point into the store's map, each with the Snapshot as its base object:
 * the snapshot, and through it the store handle and the map, live as long
 * as any array from it. So:
 *
 *  - no array ever reads unmapped memory: the reader pins its pages, and
 *    the fst_store is closed (and the map dropped) only when the Store was
 *    closed or collected *and* its last snapshot is gone (deferred unmap);
 *  - lookups share the current snapshot while it is younger than
 *    `snapshot_s` (1 s by default) and still referenced; an older or
 *    unreferenced one is replaced by a fresh snapshot, which sees appends.
 *    A process thus holds few reader slots even with many live arrays.
 *  - fork: LMDB forbids a transaction (and an environment) to cross
 *    fork(). Every object remembers its pid; in a child, the parent's
 *    handle and readers are abandoned untouched (closing them would clear
 *    the parent's reader slots) and the store is reopened on first use.
 *
 * Errors are featstore.Error subclasses carrying the CLI's message
 * ("<strerror>: <fst_errdetail()>"); a missing image is NotFoundError,
 * which is also a KeyError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fst_store.h"
#include "store_impl.h"   /* fst__store_map_range(): tests prove zero-copy */

static PyObject *Error, *NotFoundError, *CorruptError, *FormatError,
                *VersionError;

/* Raise the exception for status s with the CLI's message. */
static PyObject *raise_status(fst_status s)
{
    const char *d = fst_errdetail();
    PyObject *type = Error;
    switch (s) {
    case FST_ENOTFOUND: type = NotFoundError; break;
    case FST_ECORRUPT:  type = CorruptError; break;
    case FST_EFORMAT:   type = FormatError; break;
    case FST_EVERSION:  type = VersionError; break;
    case FST_ENOMEM:    return PyErr_NoMemory();
    default: break;
    }
    PyObject *msg = PyUnicode_FromFormat("%s%s%s", fst_strerror(s),
                                         d[0] ? ": " : "", d);
    if (!msg)
        return NULL;
    PyObject *exc = PyObject_CallOneArg(type, msg);
    Py_DECREF(msg);
    if (!exc)
        return NULL;
    PyObject *code = PyUnicode_FromString(fst_status_name(s));
    if (code) {
        PyObject_SetAttrString(exc, "status", code);
        Py_DECREF(code);
    }
    PyErr_SetObject(type, exc);
    Py_DECREF(exc);
    return NULL;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- Store and Snapshot ---- */

typedef struct Snapshot Snapshot;

typedef struct {
    PyObject_HEAD
    fst_store *st;          /* NULL: not open in this process (yet) */
    PyObject  *path;        /* str */
    pid_t      pid;         /* process that owns st and the snapshots */
    Snapshot  *cur;         /* borrowed: the snapshot lookups share */
    unsigned   nsnap;       /* live snapshots (and begins in flight) of st */
    int        closed;
    int        checksums;
    double     snapshot_s;
    size_t     maplen;      /* this process's map of st, as last seen */
    PyObject  *weaklist;
} Store;

struct Snapshot {
    PyObject_HEAD
    Store      *store;      /* strong: keeps the handle open */
    fst_reader *rd;
    pid_t       pid;
    double      born;
};

static PyTypeObject SnapshotType, StoreType;

/* In a forked child: abandon the parent's handle and readers (never touch
 * them: LMDB state belongs to the parent) and reopen on next use. */
static void store_after_fork(Store *self)
{
    if (self->pid == getpid())
        return;
    self->st = NULL;
    self->cur = NULL;
    self->nsnap = 0;
    self->maplen = 0;
    self->pid = getpid();
}

static void store_release_handle(Store *self)
{
    if (self->st && self->nsnap == 0 && self->pid == getpid()) {
        fst_store_close(self->st);
        self->st = NULL;
    }
}

static int store_ensure_open(Store *self)
{
    store_after_fork(self);
    if (self->closed) {
        PyErr_Format(PyExc_ValueError, "featstore: store %S is closed",
                     self->path);
        return -1;
    }
    if (self->st)
        return 0;
    PyObject *b = PyUnicode_EncodeFSDefault(self->path);
    if (!b)
        return -1;
    fst_store *st = NULL;
    fst_status s;
    const char *p = PyBytes_AS_STRING(b);
    unsigned flags = self->checksums ? FST_OPEN_CHECKSUMS : 0;
    Py_BEGIN_ALLOW_THREADS
    s = fst_store_open(p, flags, &st);
    Py_END_ALLOW_THREADS
    Py_DECREF(b);
    if (s) {
        raise_status(s);
        return -1;
    }
    self->st = st;
    return 0;
}

static void snapshot_dealloc(Snapshot *snap)
{
    Store *store = snap->store;
    if (snap->pid == getpid() && store) {
        fst_reader_end(snap->rd);
        if (store->cur == snap)
            store->cur = NULL;
        if (store->pid == snap->pid) {
            store->nsnap--;
            if (store->closed)
                store_release_handle(store);
        }
    }
    Py_XDECREF(store);
    Py_TYPE(snap)->tp_free((PyObject *)snap);
}

static PyTypeObject SnapshotType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "featstore._featstore.Snapshot",
    .tp_basicsize = sizeof(Snapshot),
    .tp_dealloc = (destructor)snapshot_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A read transaction that arrays from the store point into.",
};

/* Whether an append grew the store file past this process's map: a new
 * read transaction must then remap, which waits for every live one of the
 * process to end (fst_reader_begin(), up to 30 s). A stat per call; the
 * map's length is looked up again only when the file outgrew the last. */
static int store_outgrown(Store *self)
{
    struct stat sb;
    if (stat(fst_store_path(self->st), &sb) != 0 ||
        (uint64_t)sb.st_size <= (uint64_t)self->maplen)
        return 0;
    const void *base = NULL;
    size_t len = 0;
    if (fst__store_map_range(self->st, &base, &len) != FST_OK)
        return 0;
    self->maplen = len;
    return (uint64_t)sb.st_size > (uint64_t)len;
}

/* A new reference to the snapshot a lookup should use: the current one if
 * young and referenced, else a fresh one. */
static Snapshot *store_snapshot(Store *self)
{
    if (store_ensure_open(self))
        return NULL;
    Snapshot *cur = self->cur;
    if (cur && now_s() - cur->born < self->snapshot_s) {
        Py_INCREF(cur);
        return cur;
    }
    /* This store's own arrays would hold the remap back: waiting for them
     * in the thread that holds them is futile, so say so at once. */
    if (self->nsnap > 0 && store_outgrown(self)) {
        PyErr_Format(Error, "%s: %S: the store grew (an append) past this "
                     "process's map while %u snapshot(s) of it are held by "
                     "live arrays or records; release them (del) and look "
                     "up again", fst_strerror(FST_EIO), self->path,
                     self->nsnap);
        return NULL;
    }
    fst_reader *rd = NULL;
    fst_status s;
    fst_store *st = self->st;
    self->nsnap++;                  /* close() waits for this begin */
    Py_BEGIN_ALLOW_THREADS
    s = fst_reader_begin(st, &rd);
    Py_END_ALLOW_THREADS
    Snapshot *snap = NULL;
    if (!s && !self->closed && self->pid == getpid())
        snap = PyObject_New(Snapshot, &SnapshotType);
    if (!snap) {
        if (self->pid == getpid()) {
            fst_reader_end(rd);
            self->nsnap--;
            if (self->closed)
                store_release_handle(self);
        }
        if (s)
            raise_status(s);
        else if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "featstore: store %S is closed",
                         self->path);
        return NULL;
    }
    Py_INCREF(self);
    snap->store = self;
    snap->rd = rd;
    snap->pid = self->pid;
    snap->born = now_s();
    self->cur = snap;
    return snap;
}

/* Store(path, checksums=False) */
static int store_init(Store *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"path", "checksums", NULL};
    PyObject *path = NULL;
    int checksums = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|p", kwlist,
                                     PyUnicode_FSDecoder, &path, &checksums))
        return -1;
    if (self->st || self->path) {
        Py_DECREF(path);
        PyErr_SetString(PyExc_TypeError, "featstore: Store already initialised");
        return -1;
    }
    self->path = path;
    self->pid = getpid();
    self->checksums = checksums;
    self->snapshot_s = 1.0;
    return store_ensure_open(self);
}

static void store_dealloc(Store *self)
{
    if (self->weaklist)
        PyObject_ClearWeakRefs((PyObject *)self);
    /* Snapshots hold a reference: none is alive here. */
    store_after_fork(self);
    store_release_handle(self);
    Py_XDECREF(self->path);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *store_close(Store *self, PyObject *unused)
{
    (void)unused;
    store_after_fork(self);
    self->closed = 1;
    self->cur = NULL;
    store_release_handle(self);     /* now, or when the last array goes */
    Py_RETURN_NONE;
}

/* Encode a str (UTF-8, surrogateescape for undecodable keys) or bytes. */
static PyObject *name_bytes(PyObject *name)
{
    if (PyBytes_Check(name)) {
        Py_INCREF(name);
        return name;
    }
    if (PyUnicode_Check(name))
        return PyUnicode_AsEncodedString(name, "utf-8", "surrogateescape");
    PyErr_Format(PyExc_TypeError, "featstore: image names are str, not %s",
                 Py_TYPE(name)->tp_name);
    return NULL;
}

static PyObject *name_str(const char *name)
{
    return PyUnicode_DecodeUTF8(name, (Py_ssize_t)strlen(name),
                                "surrogateescape");
}

/* A read-only array over data, whose base is snap. */
static PyObject *view_array(Snapshot *snap, const void *data, int nd,
                            npy_intp *dims, int typenum)
{
    static const double empty[8] __attribute__((aligned(64)));
    if (!data)
        data = empty;              /* n = 0: numpy would allocate its own */
    PyObject *a = PyArray_New(&PyArray_Type, nd, dims, typenum, NULL,
                              (void *)data, 0,
                              NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED, NULL);
    if (!a)
        return NULL;
    Py_INCREF(snap);
    if (PyArray_SetBaseObject((PyArrayObject *)a, (PyObject *)snap) < 0) {
        Py_DECREF(a);
        return NULL;
    }
    return a;
}

/* _get(name) -> (name, keypoints, descriptors, scores|None,
 *                (w, h)|None, uncertainty|None, flags,
 *                scales|None, oris|None) */
static PyObject *store_get(Store *self, PyObject *name)
{
    PyObject *b = name_bytes(name);
    if (!b)
        return NULL;
    if (memchr(PyBytes_AS_STRING(b), 0, (size_t)PyBytes_GET_SIZE(b))) {
        Py_DECREF(b);
        PyErr_Format(NotFoundError, "%s: %S: no image %R (a name cannot "
                     "hold NUL)", fst_strerror(FST_ENOTFOUND), self->path,
                     name);
        return NULL;
    }
    Snapshot *snap = store_snapshot(self);
    if (!snap) {
        Py_DECREF(b);
        return NULL;
    }
    fst_view v;
    fst_status s = fst_reader_get(snap->rd, PyBytes_AS_STRING(b), &v);
    Py_DECREF(b);
    PyObject *kp = NULL, *desc = NULL, *sc = NULL, *size = NULL, *unc = NULL,
             *res = NULL, *nm = NULL, *scl = NULL, *ori = NULL;
    if (s) {
        raise_status(s);
        goto out;
    }
    npy_intp kd[2] = {v.n, 2}, dd[2] = {v.n, v.d}, sd[1] = {v.n};
    kp = view_array(snap, v.keypoints, 2, kd, NPY_FLOAT32);
    desc = view_array(snap, v.desc, 2, dd,
                      v.dtype == FST_DTYPE_F16 ? NPY_FLOAT16 : NPY_FLOAT32);
    if (v.scores)
        sc = view_array(snap, v.scores, 1, sd, NPY_FLOAT32);
    else
        sc = Py_NewRef(Py_None);
    if (v.flags & FST_VIEW_HAS_IMAGE_SIZE)
        size = Py_BuildValue("(LL)", (long long)v.image_size[0],
                             (long long)v.image_size[1]);
    else
        size = Py_NewRef(Py_None);
    unc = isnan(v.uncertainty) ? Py_NewRef(Py_None)
                               : PyFloat_FromDouble(v.uncertainty);
    scl = v.scales ? view_array(snap, v.scales, 1, sd, NPY_FLOAT32)
                   : Py_NewRef(Py_None);
    ori = v.oris ? view_array(snap, v.oris, 1, sd, NPY_FLOAT32)
                 : Py_NewRef(Py_None);
    nm = name_str(v.name);
    if (kp && desc && sc && size && unc && nm && scl && ori)
        res = Py_BuildValue("(OOOOOOkOO)", nm, kp, desc, sc, size, unc,
                            (unsigned long)v.flags, scl, ori);
out:
    Py_XDECREF(scl);
    Py_XDECREF(ori);
    Py_XDECREF(kp);
    Py_XDECREF(desc);
    Py_XDECREF(sc);
    Py_XDECREF(size);
    Py_XDECREF(unc);
    Py_XDECREF(nm);
    Py_DECREF(snap);
    return res;
}

/* Iterate a private reader over every record; fn gets each view. */
typedef int (*each_fn)(const fst_view *v, void *ctx);

static int store_each(Store *self, each_fn fn, void *ctx)
{
    if (store_ensure_open(self))
        return -1;
    fst_reader *rd = NULL;
    fst_status s = fst_reader_begin(self->st, &rd);
    if (s) {
        raise_status(s);
        return -1;
    }
    int rc = 0;
    for (;;) {
        fst_view v;
        s = fst_reader_next(rd, &v);
        if (s == FST_DONE)
            break;
        if (s) {
            raise_status(s);
            rc = -1;
            break;
        }
        if (fn(&v, ctx)) {
            rc = -1;
            break;
        }
    }
    fst_reader_end(rd);
    return rc;
}

static int add_name(const fst_view *v, void *ctx)
{
    PyObject *n = name_str(v->name);
    if (!n)
        return -1;
    int rc = PyList_Append((PyObject *)ctx, n);
    Py_DECREF(n);
    return rc;
}

/* names() -> list of every image name, in key order */
static PyObject *store_names(Store *self, PyObject *unused)
{
    (void)unused;
    PyObject *list = PyList_New(0);
    if (list && store_each(self, add_name, list)) {
        Py_DECREF(list);
        return NULL;
    }
    return list;
}

static int add_count(const fst_view *v, void *ctx)
{
    PyObject *n = Py_BuildValue("(kOO)", (unsigned long)v->n,
                                v->scales ? Py_True : Py_False,
                                v->oris ? Py_True : Py_False);
    if (!n)
        return -1;
    int rc = PyList_Append((PyObject *)ctx, n);
    Py_DECREF(n);
    return rc;
}

/* _counts() -> (keypoints, has scales, has oris) per image, in key order */
static PyObject *store_counts(Store *self, PyObject *unused)
{
    (void)unused;
    PyObject *list = PyList_New(0);
    if (list && store_each(self, add_count, list)) {
        Py_DECREF(list);
        return NULL;
    }
    return list;
}

/* _meta() -> dict of the store's metadata (fst_store_meta) */
static PyObject *store_meta(Store *self, PyObject *unused)
{
    (void)unused;
    if (store_ensure_open(self))
        return NULL;
    fst_store_meta m;
    fst_status s = fst_store_meta_get(self->st, &m);
    if (s)
        return raise_status(s);
    char id[FST_STORE_IDENTITY_LEN];
    fst_store_identity(&m, id);
    return Py_BuildValue(
        "{s:N,s:s,s:I,s:s,s:K,s:K,s:K,s:N,s:K,s:L,s:L,s:L,s:N,s:K,s:s,s:N}",
        "format_version", PyUnicode_FromFormat("%u.%u", m.format_major,
                                               m.format_minor),
        "featstore_version", m.featstore_version,
        "d", m.d,
        "dtype", m.d ? fst_dtype_name(m.dtype) : "none",
        "images", (unsigned long long)m.n_images,
        "keypoints", (unsigned long long)m.n_keypoints,
        "payload_bytes", (unsigned long long)m.payload_bytes,
        "source_name", name_str(m.source_name),
        "source_size", (unsigned long long)m.source_size,
        "source_mtime", (long long)m.source_mtime,
        "created", (long long)m.created,
        "modified", (long long)m.modified,
        "store_id", m.has_id ? PyUnicode_FromString(id + 3) : Py_NewRef(Py_None),
        "generation", (unsigned long long)m.generation,
        "identity", id,
        "lock_file", PyBool_FromLong(!fst_store_nolock(self->st)));
}

/* _map_range() -> (address, length) of this process's map of the store */
static PyObject *store_map_range(Store *self, PyObject *unused)
{
    (void)unused;
    if (store_ensure_open(self))
        return NULL;
    const void *base = NULL;
    size_t len = 0;
    fst_status s = fst__store_map_range(self->st, &base, &len);
    if (s)
        return raise_status(s);
    return Py_BuildValue("(Kn)", (unsigned long long)(uintptr_t)base,
                         (Py_ssize_t)len);
}

static PyObject *store_enter(Store *self, PyObject *unused)
{
    (void)unused;
    return Py_NewRef(self);
}

static PyObject *store_exit(Store *self, PyObject *args)
{
    (void)args;
    return store_close(self, NULL);
}

static PyObject *get_path(Store *self, void *c)
{
    (void)c;
    return Py_NewRef(self->path ? self->path : Py_None);
}

static PyObject *get_closed(Store *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->closed);
}

static PyObject *get_checksums(Store *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->checksums);
}

/* live snapshots of this process (tests: lifetimes, fork) */
static PyObject *get_nsnap(Store *self, void *c)
{
    (void)c;
    store_after_fork(self);
    return PyLong_FromUnsignedLong(self->nsnap);
}

/* whether this process holds the store open (tests: deferred unmap) */
static PyObject *get_mapped(Store *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->st && self->pid == getpid());
}

static PyObject *get_snapshot_s(Store *self, void *c)
{
    (void)c;
    return PyFloat_FromDouble(self->snapshot_s);
}

static int set_snapshot_s(Store *self, PyObject *v, void *c)
{
    (void)c;
    double x = v ? PyFloat_AsDouble(v) : -1;
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (!(x >= 0)) {
        PyErr_SetString(PyExc_ValueError, "snapshot_s: seconds >= 0");
        return -1;
    }
    self->snapshot_s = x;
    return 0;
}

static PyMethodDef store_methods[] = {
    {"close", (PyCFunction)store_close, METH_NOARGS,
     "close() : no lookups after this. Arrays already returned stay valid:\n"
     "the map is released when the last of them is gone."},
    {"names", (PyCFunction)store_names, METH_NOARGS,
     "names() -> list of image names, in key order (bytes order)."},
    {"_get", (PyCFunction)store_get, METH_O, NULL},
    {"_counts", (PyCFunction)store_counts, METH_NOARGS, NULL},
    {"_meta", (PyCFunction)store_meta, METH_NOARGS, NULL},
    {"_map_range", (PyCFunction)store_map_range, METH_NOARGS, NULL},
    {"__enter__", (PyCFunction)store_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)store_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef store_getset[] = {
    {"path", (getter)get_path, NULL, "the path the store was opened with", NULL},
    {"closed", (getter)get_closed, NULL, "whether close() was called", NULL},
    {"checksums", (getter)get_checksums, NULL,
     "whether every lookup verifies the record's XXH3 checksum", NULL},
    {"snapshot_s", (getter)get_snapshot_s, (setter)set_snapshot_s,
     "lookups share one read snapshot for at most this many seconds", NULL},
    {"_nsnapshots", (getter)get_nsnap, NULL, NULL, NULL},
    {"_mapped", (getter)get_mapped, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject StoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "featstore._featstore.Store",
    .tp_basicsize = sizeof(Store),
    .tp_dealloc = (destructor)store_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Store(path, checksums=False): a featstore store, read-only.",
    .tp_methods = store_methods,
    .tp_getset = store_getset,
    .tp_init = (initproc)store_init,
    .tp_new = PyType_GenericNew,
    .tp_weaklistoffset = offsetof(Store, weaklist),
};

/* ---- the module ---- */

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "featstore._featstore",
    .m_doc = "featstore's C extension; use the featstore package.",
    .m_size = -1,
};

static PyObject *new_exc(PyObject *m, const char *name, PyObject *bases,
                         const char *doc)
{
    char full[64];
    snprintf(full, sizeof full, "featstore.%s", name);
    PyObject *e = PyErr_NewExceptionWithDoc(full, doc, bases, NULL);
    if (e && PyModule_AddObjectRef(m, name, e) < 0)
        Py_CLEAR(e);
    return e;
}

PyMODINIT_FUNC PyInit__featstore(void)
{
    import_array();
    if (PyType_Ready(&SnapshotType) < 0 || PyType_Ready(&StoreType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Store", (PyObject *)&StoreType) < 0)
        goto fail;
    Error = new_exc(m, "Error", NULL,
                    "A featstore failure; the message is the CLI's. "
                    "`status` is the code's name (e.g. 'EIO').");
    if (!Error)
        goto fail;
    PyObject *nb = PyTuple_Pack(2, Error, PyExc_KeyError);
    if (!nb)
        goto fail;
    NotFoundError = new_exc(m, "NotFoundError", nb,
                            "No such image in the store (also a KeyError).");
    Py_DECREF(nb);
    CorruptError = new_exc(m, "CorruptError", Error,
                           "A record or the store file is damaged or truncated.");
    FormatError = new_exc(m, "FormatError", Error,
                          "Not a featstore store, or an incomplete import.");
    VersionError = new_exc(m, "VersionError", Error,
                           "The store was written by a newer featstore.");
    if (!NotFoundError || !CorruptError || !FormatError || !VersionError)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
