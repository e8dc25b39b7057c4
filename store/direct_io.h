/* direct_io.h : CREATE's O_DIRECT record writes through Linux AIO
 * (direct_io.c); private to store/writer.c and direct_io.c.
 *
 * A record's first page also holds LMDB's overflow page header: that part
 * is written through the page cache (fd). The pages after it belong to the
 * record alone and go straight to the disk: O_DIRECT (dfd), asynchronously
 * (Linux AIO, FST__DIO_SLOTS records in flight), so that the disk works
 * while the next records are read and encoded. The writer owns the file;
 * this owns the O_DIRECT descriptor, the AIO context and the buffers.
 */
#ifndef FST_DIRECT_IO_H
#define FST_DIRECT_IO_H

#include "store_impl.h"

#include <sys/types.h>
#include <linux/aio_abi.h>

#define FST__DIO_SLOTS 4                /* direct writes in flight */

/* One record's O_DIRECT write in flight. */
typedef struct fst__dio_slot {
    char       *buf;                /* page-aligned; the record at buf + skew */
    size_t      cap;
    size_t      skew, head, size;   /* where the record lies in buf */
    off_t       off;                /* file offset of the record */
    struct iocb cb;
    bool        busy;
    long        fake_res;           /* test hook: completed with this */
    char        name[FST__NAME_MSG];    /* the image, for messages */
} fst__dio_slot;

typedef struct fst__dio {
    const char *path;               /* the file, for messages (not owned) */
    int         fd;                 /* the file, through the page cache */
    int         dfd;                /* the same, O_DIRECT; or -1 */
    aio_context_t aio;              /* for dfd's writes; 0 if none */
    fst__dio_slot slots[FST__DIO_SLOTS];
    unsigned    next_slot, inflight;
    bool        refused;            /* a direct write got EINVAL: stop */
} fst__dio;

/* fst__dio_init() : d off (no descriptor, nothing in flight): what
 * fst__dio_stop() leaves; fst__dio_stop() of it does nothing. */
void fst__dio_init(fst__dio *d);

/* fst__dio_start() :
 * Start direct writing to the file at `path` (open as `fd`, which stays
 * the caller's; `path` must outlive d) where the file system takes
 * O_DIRECT (not tmpfs of old kernels, some network file systems) and the
 * kernel has AIO contexts left; else d stays off and fst__dio_fits() says
 * no to everything. */
void fst__dio_start(fst__dio *d, const char *path, int fd);

/* fst__dio_stop() :
 * End direct writing, releasing it all. Writes still in flight are waited
 * for by io_destroy(2), their results dropped: only for the way out or a
 * test hook (fst__dio_drain() reports them). */
void fst__dio_stop(fst__dio *d);

/* fst__dio_on() : whether direct writing is on (started, not refused). */
bool fst__dio_on(const fst__dio *d);

/* fst__dio_fits() : whether a record of `size` bytes at file offset `off`
 * (pages of `ps` bytes) goes through fst__dio_put(): direct writing is on
 * and the record reaches past its first page. */
bool fst__dio_fits(const fst__dio *d, off_t off, size_t size, size_t ps);

/* fst__dio_put() :
 * Encode `img` as a record of generation `gen` (fst__record_encode_checked())
 * and write it at file offset `off` (size bytes, fst__dio_fits() true):
 * its first page now, the rest submitted. A failure of a write in flight
 * surfaces at a later put or at fst__dio_drain(), naming its image. A write
 * the file system refuses (EINVAL) or cuts short is completed through the
 * page cache; after EINVAL d stops writing directly.
 * @return FST_OK; FST_EINVAL (NaN or Inf); FST_ENOMEM; FST_EFULL; FST_EIO. */
fst_status fst__dio_put(fst__dio *d, const fst_image *img, uint64_t gen,
                        off_t off, size_t size, size_t ps);

/* fst__dio_drain() : wait for every write in flight.
 * @return FST_OK; the first failure (FST_EFULL, FST_EIO). */
fst_status fst__dio_drain(fst__dio *d);

/* fst__pwrite_all() :
 * pwrite all of [p, p + size) at `off`, EINTR and short writes retried.
 * @return 0, or the errno (EIO for a write of 0 bytes). */
int fst__pwrite_all(int fd, const char *p, size_t size, off_t off);

#endif
