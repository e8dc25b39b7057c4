/* fst_format.h : the on-disk record of a featstore store, format 1.2.
 *
 * One LMDB value per image in the `images` table, keyed by the image name
 * (its bytes exactly as in the source HDF5 file, no NUL). store/FORMAT.md
 * has the same layout with the reasons behind it. All integers are
 * little-endian, fixed width; floats are IEEE binary32 / binary16.
 *
 *   value = header (FST_REC_HEADER_SIZE bytes)
 *         | payload (payload_len bytes: name, keypoints, scores, descriptors,
 *                    and zero padding between the blocks)
 *         | zero padding up to at least FST_REC_MIN_SIZE bytes
 *
 * Header, byte offsets from the start of the value:
 *
 *   off size type    field
 *     0   4  u8[4]   magic "FSTR"
 *     4   2  u16     format major (FST_FORMAT_MAJOR)
 *     6   2  u16     format minor (FST_REC_FORMAT_MINOR)
 *     8   8  u64     checksum: XXH3-64 (seed 0) of bytes
 *                    [16, header_size + payload_len) of the value
 *    16   4  u32     header_size (128 in 1.0; payload starts here)
 *    20   4  u32     dtype (fst_dtype: 1 float16, 2 float32)
 *    24   4  u32     flags (FST_VIEW_*)
 *    28   4  u32     n: keypoints
 *    32   4  u32     d: descriptor dimension
 *    36   4  f32     uncertainty (NaN if the source had none)
 *    40   8  i64     image_size[0] (width)
 *    48   8  i64     image_size[1] (height)
 *    56   8  u64     generation: the write that added the record (see below)
 *    64   8  u64     payload_len
 *    72   4  u32     name_off     76   4  u32  name_len (with its NUL)
 *    80   8  u64     kp_off       88   8  u64  kp_len     (n * 2 * 4)
 *    96   8  u64     scores_off  104   8  u64  scores_len (n * 4, or 0 and
 *                                                 offset 0 without scores)
 *   112   8  u64     desc_off    120   8  u64  desc_len   (n * d * size)
 *
 * Extended header (1.2), only in a record with scales or oris (header_size
 * FST_REC_HEADER_SIZE_SO = 160, record minor FST_REC_FORMAT_MINOR_SO = 2;
 * a record with neither keeps the 1.0 header of 128 bytes and minor 0):
 *
 *   128   8  u64     scales_off  136   8  u64  scales_len (n * 4, or 0 and
 *                                                 offset 0 without scales)
 *   144   8  u64     oris_off    152   8  u64  oris_len   (n * 4, or 0 and
 *                                                 offset 0 without oris)
 *
 * Blocks: name (NUL-terminated, equal to the key), keypoints f32 n x 2 (x, y),
 * scores f32 n (only if flags has FST_VIEW_HAS_SCORES), scales f32 n (only
 * with FST_VIEW_HAS_SCALES), oris f32 n (only with FST_VIEW_HAS_ORIS),
 * descriptors n x d row-major in dtype. Every block lies inside the payload.
 *
 * Alignment: LMDB stores a value larger than about half a page on overflow
 * pages, and the value then starts FST_REC_MAP_SKEW (16) bytes past a page
 * boundary (LMDB's page header). Records are padded to FST_REC_MIN_SIZE so
 * every record is an overflow value, and the writer places the keypoint,
 * score and descriptor blocks at value offsets = FST_REC_BLOCK_PHASE (48)
 * mod 64, so that they start on a 64-byte boundary in the map. Readers
 * check the real pointers and never rely on it (they refuse a block that is
 * not even 16-byte aligned).
 *
 * Generation: meta `generation` is the last completed write. A record whose
 * generation is larger belongs to an append that has not finished (or died);
 * readers do not see it.
 *
 * Versioning: a reader refuses a newer major version (FST_EVERSION) and
 * accepts any minor version of its major: a newer minor may only add header
 * fields after byte 128 (header_size grows) or flags, and keeps every field
 * above where it is. 1.2 did so for scales and oris: a 1.0/1.1 reader reads
 * such a record without them (store/FORMAT.md, Versioning).
 */
#ifndef FST_FORMAT_H
#define FST_FORMAT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FST_FORMAT_MAJOR      1
#define FST_FORMAT_MINOR      1   /* the store's (meta): 1.1 added store_id */
#define FST_FORMAT_MINOR_SO   2   /* the store's (meta) once it holds a record
                                     with scales or oris (1.2) */
#define FST_REC_FORMAT_MINOR  0   /* a record without scales or oris: its
                                     header is unchanged since 1.0 */
#define FST_REC_FORMAT_MINOR_SO 2 /* a record with scales or oris (1.2) */

#define FST_REC_MAGIC         "FSTR"        /* 4 bytes, no NUL in the record */
#define FST_REC_HEADER_SIZE   128u
#define FST_REC_HEADER_SIZE_SO 160u         /* with scales or oris (1.2) */
#define FST_REC_MIN_SIZE      2048u         /* every record: an overflow value */
#define FST_REC_ALIGN         64u           /* blocks' alignment in the map */
#define FST_REC_MAP_SKEW      16u           /* value start mod 64 in the map */
#define FST_REC_BLOCK_PHASE   ((FST_REC_ALIGN - FST_REC_MAP_SKEW) % FST_REC_ALIGN)

/* Header field offsets (bytes from the start of the value). */
#define FST_REC_OFF_MAGIC        0
#define FST_REC_OFF_MAJOR        4
#define FST_REC_OFF_MINOR        6
#define FST_REC_OFF_CHECKSUM     8
#define FST_REC_OFF_HEADER_SIZE 16
#define FST_REC_OFF_DTYPE       20
#define FST_REC_OFF_FLAGS       24
#define FST_REC_OFF_N           28
#define FST_REC_OFF_D           32
#define FST_REC_OFF_UNCERTAINTY 36
#define FST_REC_OFF_IMAGE_SIZE  40   /* two i64 */
#define FST_REC_OFF_GENERATION  56
#define FST_REC_OFF_PAYLOAD_LEN 64
#define FST_REC_OFF_NAME        72   /* u32 off, u32 len */
#define FST_REC_OFF_KP          80   /* u64 off, u64 len */
#define FST_REC_OFF_SCORES      96   /* u64 off, u64 len */
#define FST_REC_OFF_DESC       112   /* u64 off, u64 len */
#define FST_REC_OFF_SCALES     128   /* u64 off, u64 len (1.2, header 160) */
#define FST_REC_OFF_ORIS       144   /* u64 off, u64 len (1.2, header 160) */
#define FST_REC_CHECKSUM_FROM   16   /* checksum covers [16, payload end) */

/* Keys of the `meta` table. Integer values are 8-byte little-endian (u64,
 * or i64 for times); strings are their bytes without a NUL. */
#define FST_META_FORMAT_MAJOR   "format_major"
#define FST_META_FORMAT_MINOR   "format_minor"
#define FST_META_VERSION        "featstore_version"
#define FST_META_D              "d"
#define FST_META_DTYPE          "dtype"
#define FST_META_N_IMAGES       "n_images"
#define FST_META_N_KEYPOINTS    "n_keypoints"
#define FST_META_PAYLOAD_BYTES  "payload_bytes"
#define FST_META_SOURCE_NAME    "source_name"
#define FST_META_SOURCE_SIZE    "source_size"
#define FST_META_SOURCE_MTIME   "source_mtime"
#define FST_META_CREATED        "created"
#define FST_META_MODIFIED       "modified"
#define FST_META_GENERATION     "generation"
#define FST_META_STORE_ID       "store_id"      /* 16 random bytes (1.1) */
#define FST_META_HISTORY        "history"       /* per finished write since the
                                                   id (1.1): u64 generation,
                                                   16 random bytes */
#define FST_HISTORY_ENTRY       24u
#define FST_META_COMPLETE       "complete"      /* u64 1, written last */

/* Names of the LMDB tables. `pending` lists the records of an append that
 * has not finished (key: image name; value: u64 generation). */
#define FST_DB_IMAGES   "images"
#define FST_DB_META     "meta"
#define FST_DB_PENDING  "pending"

#ifdef __cplusplus
}
#endif
#endif /* FST_FORMAT_H */
