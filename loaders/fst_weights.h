/* fst_weights.h : neural-network weight files, read in C, safely.
 *
 * Reads the files matchers' authors publish, as they publish them:
 *   "torch-zip"     torch.save() since PyTorch 1.6: a zip archive (stored
 *                   entries, zip64 records) of <name>/data.pkl, a pickle of
 *                   the state_dict, and <name>/data/<key>, one raw storage
 *                   per key;
 *   "torch-legacy"  torch.save(..., _use_new_zipfile_serialization=False)
 *                   and PyTorch < 1.6: pickles of the magic number, the
 *                   protocol version, sys_info and the state_dict, the list
 *                   of storage keys, then each storage as an 8-byte element
 *                   count followed by its bytes;
 *   "safetensors"   an 8-byte header length, a JSON header, the data.
 * The pickles are read by an interpreter that knows only what a state_dict
 * of tensors needs (dict, collections.OrderedDict, torch's tensor and
 * parameter rebuild functions, torch's storage types, tuples, lists, ints,
 * floats, strings, bools, None, persistent ids). It never calls anything the
 * file names: any other global, a REDUCE of anything else, BUILD on anything
 * but a dict, INST, OBJ, NEWOBJ... are refused, naming what was met
 * ("superglue.pth: data.pkl: refusing global posix.system").
 *
 * Nothing here depends on HDF5; the library is fst_weights (loaders/).
 *
 *   fst_weights *w = NULL;
 *   FST_TRY(fst_weights_open("superpoint_lightglue.pth", &w));
 *   FST_TRY(fst_weights_rename_lightglue(w, 0));
 *   const fst_weights_tensor *t;
 *   FST_TRY(fst_weights_expect(w, "final_proj.weight", FST_WEIGHTS_F32, 2,
 *                              (const int64_t[]){256, 256}, &t));
 *   ... t->data: 256 x 256 floats, row-major ...
 * out:
 *   fst_weights_close(w);
 */
#ifndef FST_WEIGHTS_H
#define FST_WEIGHTS_H

#include "fst_base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fst_weights fst_weights;   /* opaque; loaders/weights_impl.h */

/* Element types of tensors. The values are featstore's own (not torch's). */
typedef enum fst_weights_dtype {
    FST_WEIGHTS_F32  = 1,
    FST_WEIGHTS_F16  = 2,
    FST_WEIGHTS_BF16 = 3,
    FST_WEIGHTS_F64  = 4,
    FST_WEIGHTS_I64  = 5,
    FST_WEIGHTS_I32  = 6,
    FST_WEIGHTS_I16  = 7,
    FST_WEIGHTS_I8   = 8,
    FST_WEIGHTS_U8   = 9,
    FST_WEIGHTS_BOOL = 10,
} fst_weights_dtype;

/* The most dimensions a tensor may have; files with more are refused. */
#define FST_WEIGHTS_MAX_DIMS 8

/* One named tensor. Everything it points to belongs to the fst_weights
 * that returned it: read-only, valid until fst_weights_close(). */
typedef struct fst_weights_tensor {
    const char       *name;    /* NUL-terminated, as in the file (or as
                                  renamed by fst_weights_rename_lightglue) */
    fst_weights_dtype dtype;
    int               ndim;    /* 0 (a scalar) .. FST_WEIGHTS_MAX_DIMS */
    int64_t           shape[FST_WEIGHTS_MAX_DIMS];  /* unused dims are 0 */
    int64_t           numel;   /* product of shape (1 for a scalar) */
    size_t            nbytes;  /* numel x element size */
    /* numel elements, contiguous, row-major, little-endian, 64-byte
     * aligned, never NULL (also for numel 0). Points into the file's map
     * where the bytes are already so (torch-zip storages, which torch
     * aligns; safetensors tensors at 64-byte offsets), else into a copy
     * (a view with strides or an offset; legacy storages, which follow an
     * 8-byte count). */
    const void       *data;
} fst_weights_tensor;

/* fst_weights_open() :
 * Map the file at `path` (read-only, shared), find its format, interpret its
 * pickles or header and check every tensor against the bytes that hold it.
 * Every length and offset is bounds-checked; the CRC-32s of the zip
 * entries read are verified. *out owns the map and everything fst_weights_at() returns;
 * close it with fst_weights_close(). One fst_weights may be read by any
 * number of threads at once; fst_weights_rename_lightglue() must not run
 * concurrently with readers. The file must not be truncated while open
 * (as for any map: SIGBUS).
 * @return FST_OK;
 *         FST_EFORMAT: not a weight file, an unsupported variant (a
 *           compressed or encrypted zip entry, the tar format of PyTorch <
 *           0.4, a big-endian file, an unknown dtype), a pickle that does
 *           anything but build a dict of tensors (refused before anything
 *           it names could matter: nothing is ever called), a top-level
 *           object that is not a dict of tensors, a duplicate name,
 *           anything out of bounds or truncated;
 *         FST_ECORRUPT: a zip entry fails its CRC-32;
 *         FST_EIO: cannot open, stat or map `path`; FST_ENOMEM.
 *         The detail names the file and what is wrong, e.g.
 *         "w.pth: archive/data.pkl: refusing global posix.system (at
 *         byte 2)" or "w.pth: archive/data.pkl: tensor 'kenc.0.weight':
 *         needs elements 0..95 of storage 'archive/data/3', which has 64".
 *         Views that repeat their storage's elements (expand()) are
 *         copied, at most 2 x the file size + 64 MB in all; more is
 *         refused (FST_EFORMAT). */
fst_status fst_weights_open(const char *path, fst_weights **out);

/* fst_weights_open_mem() :
 * The same on `size` bytes at `data`, which the caller keeps unchanged and
 * alive until fst_weights_close() (tensors may point into it). `name`
 * (copied) is the file name the messages use. Same returns, less FST_EIO. */
fst_status fst_weights_open_mem(const void *data, size_t size,
                                const char *name, fst_weights **out);

/* fst_weights_close() : unmap and free everything. NULL is fine. */
void fst_weights_close(fst_weights *w);

/* fst_weights_format() : "torch-zip", "torch-legacy" or "safetensors".
 * Static storage. */
const char *fst_weights_format(const fst_weights *w);

/* fst_weights_name() : the file name given to open (for messages). */
const char *fst_weights_name(const fst_weights *w);

/* fst_weights_count() : number of tensors. */
size_t fst_weights_count(const fst_weights *w);

/* fst_weights_at() :
 * Tensor i (0 <= i < count), in the file's order (the state_dict's order;
 * a safetensors header's order), or NULL if i is out of range. */
const fst_weights_tensor *fst_weights_at(const fst_weights *w, size_t i);

/* fst_weights_find() : the tensor named `name`, or NULL. O(log n). */
const fst_weights_tensor *fst_weights_find(const fst_weights *w,
                                           const char *name);

/* fst_weights_rename_lightglue() :
 * Rename old LightGlue keys as LightGlue's loader does: for each layer
 * i = 0 .. n_layers - 1 in turn, every name has its substrings
 * "self_attn.<i>" replaced by "transformers.<i>.self_attn", then
 * "cross_attn.<i>" by "transformers.<i>.cross_attn" (Python's
 * str.replace, the same order). n_layers <= 0: 1 + the largest <i> that
 * follows "self_attn." or "cross_attn." in any name (0 if none), i.e. the
 * layers the file holds. Names already new are unchanged; files of other
 * networks (SuperGlue) have no such substrings. Not concurrently with
 * readers of `w`; tensors returned before keep their data, their names
 * change.
 * @return FST_OK; FST_EFORMAT if two tensors would end with the same name
 *         (a file with both old and new names; LightGlue's loader would
 *         silently keep the later one); FST_ENOMEM. */
fst_status fst_weights_rename_lightglue(fst_weights *w, int n_layers);

/* fst_weights_expect() :
 * Find tensor `name` and check it: `dtype` (0: any), `ndim` and `shape`
 * (ndim entries; an entry < 0 accepts any size; shape may be NULL when
 * ndim is 0). *out (may be NULL) gets the tensor when it passes.
 * @return FST_OK; FST_ENOTFOUND "<file>: no tensor 'name'";
 *         FST_EFORMAT "<file>: tensor 'name': expected float32 [256, 256],
 *         found float32 [256, 128]". */
fst_status fst_weights_expect(const fst_weights *w, const char *name,
                              fst_weights_dtype dtype, int ndim,
                              const int64_t *shape,
                              const fst_weights_tensor **out);

/* fst_weights_dtype_name() : "float32", "float16", "bfloat16", "float64",
 * "int64", "int32", "int16", "int8", "uint8", "bool"; "unknown" otherwise.
 * Static storage. */
const char *fst_weights_dtype_name(fst_weights_dtype t);

/* fst_weights_dtype_size() : bytes per element; 0 for an unknown dtype. */
size_t fst_weights_dtype_size(fst_weights_dtype t);

/* fst_weights_shape_str() :
 * Write "[256, 128]" ("[]" for a scalar) into buf (len bytes, truncated
 * with "..." if short) and return buf. */
char *fst_weights_shape_str(int ndim, const int64_t *shape, char *buf,
                            size_t len);

#ifdef __cplusplus
}
#endif
#endif /* FST_WEIGHTS_H */
