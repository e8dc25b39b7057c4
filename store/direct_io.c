/* direct_io.c : CREATE's O_DIRECT record writes through Linux AIO (see
 * direct_io.h for what goes where).
 *
 * No page-cache copy to make, and nothing left for the final fsync to
 * write back, which a large import otherwise waits for at the disk's
 * buffered write-back rate (here about a third of its direct rate). In a
 * slot's buffer the record starts at the same offset in a page as in the
 * file, so that its second page is page-aligned in memory too, as O_DIRECT
 * requires.
 */
#include "direct_io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int fst__direct_fail_errno;

void fst__dio_init(fst__dio *d)
{
    memset(d, 0, sizeof *d);
    d->fd = -1;
    d->dfd = -1;
}

bool fst__dio_on(const fst__dio *d)
{
    return d->aio != 0 && !d->refused;
}

bool fst__dio_fits(const fst__dio *d, off_t off, size_t size, size_t ps)
{
    size_t skew = (size_t)off % ps;
    return d->aio && !d->refused && skew + size > ps && ps % 4096 == 0;
}

int fst__pwrite_all(int fd, const char *p, size_t size, off_t off)
{
    while (size) {
        ssize_t n = pwrite(fd, p, size, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? errno : EIO;
        p += n;
        off += n;
        size -= (size_t)n;
    }
    return 0;
}

static fst_status write_failed(const fst__dio *d, const char *image, int e)
{
    return fst__fail_io(e, d->path, 0, "%s: writing image '%s'", d->path, image);
}

/* Linux native AIO, by system call (glibc has no wrappers; no libaio). */
static long aio_setup(unsigned n, aio_context_t *ctx)
{
    return syscall(SYS_io_setup, n, ctx);
}

static long aio_submit(aio_context_t ctx, long n, struct iocb **cbs)
{
    return syscall(SYS_io_submit, ctx, n, cbs);
}

static long aio_getevents(aio_context_t ctx, long min, long max, struct io_event *ev)
{
    return syscall(SYS_io_getevents, ctx, min, max, ev, NULL);
}

/* The O_DIRECT write of slot `sl` ended with `res` (bytes, or -errno). A
 * file system that refuses O_DIRECT (EINVAL) or a short write gets the
 * rest written through the page cache; direct writing stops after EINVAL. */
static fst_status slot_done(fst__dio *d, fst__dio_slot *sl, long res)
{
    sl->busy = false;
    d->inflight--;
    size_t tail = (size_t)sl->cb.aio_nbytes;
    if (res >= 0 && (size_t)res >= tail)
        return FST_OK;
    if (res < 0 && res != -EINVAL)
        return write_failed(d, sl->name, (int)-res);
    if (res < 0)
        d->refused = true;
    size_t done = res > 0 ? (size_t)res : 0;
    size_t rest = sl->size - sl->head;
    if (done >= rest)
        return FST_OK;                  /* only padding missing */
    int e = fst__pwrite_all(d->fd, sl->buf + sl->skew + sl->head + done, rest - done,
                            sl->off + (off_t)(sl->head + done));
    return e ? write_failed(d, sl->name, e) : FST_OK;
}

/* Wait for at least one write in flight to end, and handle what ended. */
static fst_status reap(fst__dio *d)
{
    fst_status s = FST_OK;
    for (unsigned i = 0; i < FST__DIO_SLOTS && !s; i++) {    /* test hook */
        fst__dio_slot *sl = &d->slots[(d->next_slot + i) % FST__DIO_SLOTS];  /* oldest first */
        if (sl->busy && sl->fake_res)
            s = slot_done(d, sl, sl->fake_res);
    }
    if (s || d->inflight == 0)
        return s;
    struct io_event ev[FST__DIO_SLOTS];
    long n;
    while ((n = aio_getevents(d->aio, 1, FST__DIO_SLOTS, ev)) < 0 && errno == EINTR) {}
    if (n < 0)
        return fst__fail(FST_EIO, "%s: waiting for writes: %s", d->path,
                         strerror(errno));
    for (long i = 0; i < n; i++) {
        fst__dio_slot *sl = &d->slots[ev[i].data];
        if (s) {                /* the first failure's message stands */
            sl->busy = false;
            d->inflight--;
        } else {
            s = slot_done(d, sl, (long)ev[i].res);
        }
    }
    return s;
}

fst_status fst__dio_drain(fst__dio *d)
{
    fst_status s = FST_OK;
    while (d->inflight) {
        unsigned before = d->inflight;
        fst_status t = reap(d);
        s = s ? s : t;
        if (d->inflight == before)      /* io_getevents itself failed */
            break;
    }
    return s;
}

void fst__dio_stop(fst__dio *d)
{
    if (d->aio)
        syscall(SYS_io_destroy, d->aio);
    d->aio = 0;
    d->inflight = 0;
    for (unsigned i = 0; i < FST__DIO_SLOTS; i++) {
        free(d->slots[i].buf);
        memset(&d->slots[i], 0, sizeof d->slots[i]);
    }
    if (d->dfd >= 0)
        close(d->dfd);
    d->dfd = -1;
}

void fst__dio_start(fst__dio *d, const char *path, int fd)
{
    d->path = path;
    d->fd = fd;
    d->dfd = open(d->path, O_WRONLY | O_DIRECT | O_CLOEXEC);
    if (d->dfd >= 0 && aio_setup(FST__DIO_SLOTS, &d->aio) != 0) {
        d->aio = 0;
        close(d->dfd);
        d->dfd = -1;
    }
}

fst_status fst__dio_put(fst__dio *d, const fst_image *img, uint64_t gen,
                        off_t off, size_t size, size_t ps)
{
    fst_status s;
    size_t skew = (size_t)off % ps;
    size_t need = (skew + size + ps - 1) / ps * ps;
    fst__dio_slot *sl = &d->slots[d->next_slot];
    while (sl->busy)
        FST_TRY(reap(d));
    if (need > sl->cap) {
        void *p = NULL;
        if (posix_memalign(&p, ps, need) != 0)
            return fst__fail(FST_ENOMEM, "%s: image '%s'", d->path, img->name);
        free(sl->buf);
        sl->buf = p;
        sl->cap = need;
    }
    char *rec = sl->buf + skew;
    FST_TRY(fst__record_encode_checked(img, gen, rec, size));
    size_t head = ps - skew;
    int e = fst__pwrite_all(d->fd, rec, head, off);
    if (e)
        return write_failed(d, img->name, e);
    memset(rec + size, 0, need - skew - size);
    sl->skew = skew;
    sl->head = head;
    sl->size = size;
    sl->off = off;
    fst__name_for_msg(sl->name, img->name, strlen(img->name));
    memset(&sl->cb, 0, sizeof sl->cb);
    sl->cb.aio_data = d->next_slot;
    sl->cb.aio_lio_opcode = IOCB_CMD_PWRITE;
    sl->cb.aio_fildes = (uint32_t)d->dfd;
    sl->cb.aio_buf = (uint64_t)(uintptr_t)(sl->buf + ps);
    sl->cb.aio_nbytes = need - ps;
    sl->cb.aio_offset = off + (off_t)head;
    sl->fake_res = fst__direct_fail_errno ? -fst__direct_fail_errno : 0;
    sl->busy = true;
    d->inflight++;
    d->next_slot = (d->next_slot + 1) % FST__DIO_SLOTS;
    if (sl->fake_res)
        return FST_OK;
    struct iocb *cbp = &sl->cb;
    long r;
    while ((r = aio_submit(d->aio, 1, &cbp)) != 1) {
        int err = r < 0 ? errno : EAGAIN;
        if (err == EINTR)
            continue;
        if (err == EAGAIN && d->inflight > 1) {   /* kernel queue full */
            sl->busy = false;           /* (not in flight: reap skips it) */
            d->inflight--;
            FST_TRY(reap(d));
            sl->busy = true;
            d->inflight++;
            continue;
        }
        /* Not submitted: through the page cache, this record (EAGAIN) or
         * from now on (no AIO for this file: as if O_DIRECT were refused). */
        FST_TRY(slot_done(d, sl, err == EAGAIN ? 0 : -EINVAL));
        break;
    }
out:
    return s;
}
