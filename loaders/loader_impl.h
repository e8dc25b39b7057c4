/* loader_impl.h : HDF5 helpers shared by the .c files of loaders/; not public.
 *
 * Everything here turns HDF5's errors into featstore's: a failing call
 * becomes a status plus a detail message that names the file, the object and
 * what is wrong, with HDF5's innermost error message appended. Written to be
 * reused by every reader of an hloc file (features.h5, matches.h5, query
 * features): open a file, walk its groups, open a dataset and check its
 * rank, shape and element type, read it, write outputs through a temporary
 * file that is renamed into place.
 *
 * Messages look like
 *   "features.h5: /db/img_0042/descriptors: expected 256 rows, found 128"
 * where the "features.h5: /db/img_0042/descriptors" part is the `where`
 * argument the caller passes in.
 */
#ifndef FST_LOADER_IMPL_H
#define FST_LOADER_IMPL_H

#include <hdf5.h>
#include <stdio.h>

#include "base_impl.h"
#include "fst_loader.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- HDF5's error printing ---- */

/* HDF5 prints its whole error stack to stderr unless told not to. Library
 * code never prints: every entry point brackets its HDF5 work with
 * quiet_begin/quiet_end, which turn the printing off and restore whatever
 * the host program had set. Not thread-safe (neither is this HDF5 build). */
typedef struct fst__h5_quiet {
    H5E_auto2_t func;
    void       *data;
} fst__h5_quiet;

void fst__h5_quiet_begin(fst__h5_quiet *q);
void fst__h5_quiet_end(const fst__h5_quiet *q);

/* fst__h5_fail() :
 * Like fst__fail(), then append ": <message>" with the innermost message of
 * HDF5's current error stack (the most specific one) if there is one, and
 * clear the stack. Returns `s`. */
fst_status fst__h5_fail(fst_status s, const char *fmt, ...) FST_PRINTF(2, 3);

/* fst__h5_clear() : drop HDF5's current error stack (after an expected
 * failure, e.g. a probe). */
void fst__h5_clear(void);

/* ---- element types ---- */

/* What a dataset or attribute holds, as far as featstore cares. */
typedef enum fst__h5_kind {
    FST__H5_OTHER = 0,   /* strings, compounds, odd floats... */
    FST__H5_F16,         /* IEEE binary16 (h5py's float16) */
    FST__H5_F32,
    FST__H5_F64,
    FST__H5_INT,         /* signed integer, any size */
    FST__H5_UINT,        /* unsigned integer, any size */
} fst__h5_kind;

/* Bit masks of kinds, for fst__h5_dset_expect(). */
#define FST__H5_K(kind) (1u << (kind))
#define FST__H5_KFLOAT  (FST__H5_K(FST__H5_F16) | FST__H5_K(FST__H5_F32))
#define FST__H5_KINT    (FST__H5_K(FST__H5_INT) | FST__H5_K(FST__H5_UINT))

/* fst__h5_kind_of() : classify an HDF5 datatype; *elsize gets its size. */
fst__h5_kind fst__h5_kind_of(hid_t type, size_t *elsize);

/* fst__h5_type_name() : "float16", "int64", "uint8", "float64", or a
 * description of an unsupported type ("string", "compound", "2-byte float
 * that is not IEEE float16"...). Static storage. */
const char *fst__h5_type_name(fst__h5_kind kind, size_t elsize, hid_t type);

/* fst__h5_f16_create() :
 * A new little-endian IEEE binary16 datatype, laid out as h5py writes
 * numpy's float16 (HDF5 1.10 has no predefined one). Reading a float16
 * dataset into it copies bytes without conversion. H5Tclose() it.
 * @return the type id, or H5I_INVALID_HID (detail set). */
hid_t fst__h5_f16_create(void);

/* ---- files ---- */

/* fst__h5_open_read() :
 * Open `path` read-only. A missing or unreadable file is FST_EIO with
 * strerror; a file that is not HDF5, or is truncated or damaged, is
 * FST_EFORMAT with HDF5's reason. *out is closed with H5Fclose().
 * *size_out and *mtime_out (either may be NULL) get the file's size and
 * modification time (seconds since the epoch). */
fst_status fst__h5_open_read(const char *path, hid_t *out,
                             uint64_t *size_out, int64_t *mtime_out);

/* An output file written under a temporary name `<path>.tmp-<pid>` and put
 * in place by fst__out_commit() only when complete, so that a crash or an
 * error never leaves a partial file at `path`. */
typedef struct fst__out {
    char *path;          /* final name */
    char *tmp;           /* temporary name */
    hid_t h5;            /* the HDF5 file (h5 outputs), or H5I_INVALID_HID */
    FILE *fp;            /* the stdio stream (text outputs), or NULL */
} fst__out;

/* fst__out_h5() :
 * Create an HDF5 output (latest file format, like hloc's files). Refuses an
 * existing `path` with FST_EEXIST.
 * @return FST_OK; FST_EEXIST; FST_EIO; FST_ENOMEM. */
fst_status fst__out_h5(const char *path, fst__out *o);

/* fst__out_text() : the same for a text file written with stdio. */
fst_status fst__out_text(const char *path, fst__out *o);

/* fst__out_commit() :
 * Close, fsync, rename to the final name (refusing to replace a file that
 * appeared meanwhile), fsync the directory. On failure the temporary file is
 * removed. Frees what `o` holds whatever the result.
 * @return FST_OK; FST_EEXIST; FST_EIO; FST_EFULL. */
fst_status fst__out_commit(fst__out *o);

/* fst__out_discard() : close and remove the temporary file; free. Safe on a
 * zeroed or already committed/discarded fst__out. */
void fst__out_discard(fst__out *o);

/* ---- datasets ---- */

#define FST__H5_MAXRANK 8

/* An open dataset with its shape and element type. */
typedef struct fst__h5_dset {
    hid_t        id;                     /* H5I_INVALID_HID when closed */
    hid_t        type;                   /* its file datatype */
    int          rank;
    hsize_t      dims[FST__H5_MAXRANK];
    fst__h5_kind kind;
    size_t       elsize;
} fst__h5_dset;

/* fst__h5_dset_open() :
 * Open dataset `name` under `loc` and describe it. `where` names it in
 * messages ("features.h5: /img/descriptors").
 * @return FST_OK; FST_EFORMAT (not there, not a dataset, rank above
 *         FST__H5_MAXRANK, unreadable). On error *out is closed. */
fst_status fst__h5_dset_open(hid_t loc, const char *name, const char *where,
                             fst__h5_dset *out);

/* fst__h5_dset_expect() :
 * Check rank, dimensions (dims[i] < 0: any) and element kind (a mask of
 * FST__H5_K()); on a mismatch FST_EFORMAT with a detail like
 * "<where>: expected 256 rows, found 128",
 * "<where>: expected 2 dimensions, found 3 (shape (2, 5, 1))" or
 * "<where>: unsupported dtype int32 (expected float16 or float32)". */
fst_status fst__h5_dset_expect(const fst__h5_dset *d, const char *where,
                               int rank, const int64_t *dims, unsigned kinds);

/* fst__h5_dset_nelem() : number of elements (product of dims). */
uint64_t fst__h5_dset_nelem(const fst__h5_dset *d);

/* fst__h5_dset_read() :
 * Read the whole dataset into `buf` as `memtype` (HDF5 converts if the file
 * type differs). Reading zero elements does nothing.
 * @return FST_OK; FST_EFORMAT (HDF5 failed: damaged file, missing filter),
 *         detail "<where>: cannot read: <HDF5's reason>". */
fst_status fst__h5_dset_read(const fst__h5_dset *d, const char *where,
                             hid_t memtype, void *buf);

/* fst__h5_dset_close() : close; fine on a closed or zeroed one. */
void fst__h5_dset_close(fst__h5_dset *d);

/* fst__h5_write() :
 * Create dataset `name` under `loc` with `filetype`, shape `dims` (rank),
 * contiguous like h5py's default, and write `buf` given as `memtype`
 * (nothing written for zero elements). *out_id (may be NULL) receives the
 * open dataset, to add attributes; close it with H5Dclose.
 * @return FST_OK; FST_EIO (detail names `where`). */
fst_status fst__h5_write(hid_t loc, const char *name, hid_t filetype,
                         hid_t memtype, int rank, const hsize_t *dims,
                         const void *buf, const char *where, hid_t *out_id);

/* ---- attributes ---- */

/* fst__h5_attr_read_double() :
 * If `obj` has attribute `name`: check that it is a numeric scalar (or an
 * array of one element), read it as double into *value, set *present = 1,
 * and its kind and size into *kind and *elsize (either may be NULL). Otherwise
 * *present = 0.
 * @return FST_OK; FST_EFORMAT ("<where>: attribute uncertainty: ..."). */
fst_status fst__h5_attr_read_double(hid_t obj, const char *name,
                                    const char *where, int *present,
                                    double *value, fst__h5_kind *kind,
                                    size_t *elsize);

/* fst__h5_attr_write_scalar() : write scalar attribute `name` of `filetype`
 * from `value` given as `memtype`. @return FST_OK; FST_EIO. */
fst_status fst__h5_attr_write_scalar(hid_t obj, const char *name,
                                     hid_t filetype, hid_t memtype,
                                     const void *value, const char *where);

/* ---- walking groups ---- */

/* Called for every group reached from the root by hard links, the root
 * included, each group once, depth first in name order. `path` is absolute
 * ("/" for the root, "/db/seq1"...). Returning anything but FST_OK stops
 * the walk with that status. */
typedef fst_status fst__h5_group_cb(hid_t group, const char *path, void *ctx);

/* fst__h5_walk() :
 * Walk every group of `file` (soft and external links are not followed; a
 * group reachable through several hard links, or a cycle, is visited
 * once). `fname` names the file in messages.
 * @return FST_OK; the callback's status; FST_EFORMAT (unreadable group,
 *         nesting deeper than 1000 levels); FST_ENOMEM. */
fst_status fst__h5_walk(hid_t file, const char *fname, fst__h5_group_cb *cb,
                        void *ctx);

/* Soft and external links a walk met and did not follow. */
typedef struct fst__h5_skipped {
    uint64_t n;
    char     example[256];   /* the first, "/alias.jpg -> /img.jpg" */
} fst__h5_skipped;

/* fst__h5_walk_ex() : fst__h5_walk(), counting in *skipped (zeroed first)
 * the soft and external links it does not follow. */
fst_status fst__h5_walk_ex(hid_t file, const char *fname, fst__h5_group_cb *cb,
                           void *ctx, fst__h5_skipped *skipped);

/* fst__h5_has_link() : 1 if `loc` has a link `name` (one level, no '/'),
 * 0 if not; errors count as not (and are cleared). */
int fst__h5_has_link(hid_t loc, const char *name);

/* ---- test hooks ---- */

/* fst__import_threads : 1 (default) reads the source on a second thread
 * while the calling thread writes the store; 0 does both in turn on the
 * calling thread. Tests run both. */
extern int fst__import_threads;

/* ---- small helpers ---- */

/* fst__grow() : make *buf hold at least `bytes`, keeping a buffer once
 * grown (callers reuse one buffer for every record rather than allocating
 * per record). @return FST_OK; FST_ENOMEM (detail names `what`). */
fst_status fst__grow(void **buf, size_t *cap, size_t bytes, const char *what);

#ifdef __cplusplus
}
#endif
#endif
