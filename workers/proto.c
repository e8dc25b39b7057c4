/* proto.c : the coordinator <-> worker messages (worker_impl.h). */
#include "worker_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int64_t fst__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

fst_status fst__buf_reserve(fst__buf *b, size_t more)
{
    if (b->cap - b->len >= more)
        return FST_OK;
    size_t need = b->len + more;
    if (need < b->len)
        return fst__fail(FST_ENOMEM, "message buffer overflow");
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    unsigned char *p = realloc(b->p, cap);
    if (!p)
        return fst__fail(FST_ENOMEM, "message buffer of %zu bytes", cap);
    b->p = p;
    b->cap = cap;
    return FST_OK;
}

void fst__buf_free(fst__buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

void fst__buf_compact(fst__buf *b)
{
    if (b->off == 0) return;
    if (b->off < b->len)
        memmove(b->p, b->p + b->off, b->len - b->off);
    b->len -= b->off;
    b->off = 0;
}

static void put32(unsigned char *p, uint32_t x) { memcpy(p, &x, 4); }

fst_status fst__msg_begin(fst__buf *b, uint32_t type, size_t *start)
{
    fst_status s = fst__buf_reserve(b, FST__MSG_HDR);
    if (s) return s;
    *start = b->len;
    put32(b->p + b->len, type);
    put32(b->p + b->len + 4, 0);
    b->len += FST__MSG_HDR;
    return FST_OK;
}

void fst__msg_end(fst__buf *b, size_t start)
{
    put32(b->p + start + 4, (uint32_t)(b->len - start - FST__MSG_HDR));
}

void *fst__msg_space(fst__buf *b, size_t n)
{
    if (fst__buf_reserve(b, n)) return NULL;
    void *p = b->p + b->len;
    b->len += n;
    return p;
}

fst_status fst__msg_bytes(fst__buf *b, const void *p, size_t n)
{
    void *d = fst__msg_space(b, n);
    if (!d) return FST_ENOMEM;
    if (n) memcpy(d, p, n);
    return FST_OK;
}

fst_status fst__msg_u32(fst__buf *b, uint32_t x) { return fst__msg_bytes(b, &x, 4); }
fst_status fst__msg_i32(fst__buf *b, int32_t x) { return fst__msg_bytes(b, &x, 4); }
fst_status fst__msg_f64(fst__buf *b, double x)  { return fst__msg_bytes(b, &x, 8); }

fst_status fst__msg_str(fst__buf *b, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n > FST__MSG_MAX)
        return fst__fail(FST_EINVAL, "string of %zu bytes in a message", n);
    fst_status st = fst__msg_u32(b, (uint32_t)n);
    return st ? st : fst__msg_bytes(b, s, n);
}

const void *fst__rd_bytes(fst__rd *r, size_t n)
{
    if (r->bad || r->n - r->off < n) {
        r->bad = true;
        return NULL;
    }
    const void *p = r->p + r->off;
    r->off += n;
    return p;
}

uint32_t fst__rd_u32(fst__rd *r)
{
    uint32_t x = 0;
    const void *p = fst__rd_bytes(r, 4);
    if (p) memcpy(&x, p, 4);
    return x;
}

int32_t fst__rd_i32(fst__rd *r)
{
    int32_t x = 0;
    const void *p = fst__rd_bytes(r, 4);
    if (p) memcpy(&x, p, 4);
    return x;
}

double fst__rd_f64(fst__rd *r)
{
    double x = 0;
    const void *p = fst__rd_bytes(r, 8);
    if (p) memcpy(&x, p, 8);
    return x;
}

const char *fst__rd_str(fst__rd *r, uint32_t *len)
{
    uint32_t n = fst__rd_u32(r);
    const char *p = fst__rd_bytes(r, n);
    *len = p ? n : 0;
    return p ? p : "";
}

int fst__msg_next(fst__buf *b, uint32_t *type, fst__rd *payload)
{
    size_t avail = b->len - b->off;
    if (avail < FST__MSG_HDR) return 0;
    uint32_t t, n;
    memcpy(&t, b->p + b->off, 4);
    memcpy(&n, b->p + b->off + 4, 4);
    if (n > FST__MSG_MAX || t < FST__MSG_CONFIG || t > FST__MSG_WORKING)
        return (int)fst__fail(FST_EFORMAT, "malformed message (type %u, %u bytes)", t, n);
    if (avail - FST__MSG_HDR < n) return 0;
    *type = t;
    payload->p = b->p + b->off + FST__MSG_HDR;
    payload->n = n;
    payload->off = 0;
    payload->bad = false;
    b->off += FST__MSG_HDR + n;
    return 1;
}

fst_status fst__write_all(int fd, const void *p, size_t n)
{
    const unsigned char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return fst__fail(FST_EIO, "writing to the coordinator: %s", strerror(errno));
        }
        c += w;
        n -= (size_t)w;
    }
    return FST_OK;
}

static fst_status read_exact(int fd, unsigned char *p, size_t n, bool *eof_at_start)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == ECONNRESET && got == 0 && eof_at_start) {
                *eof_at_start = true;       /* closed with our last words unread */
                return FST_DONE;
            }
            return fst__fail(FST_EIO, "reading from the coordinator: %s", strerror(errno));
        }
        if (r == 0) {
            if (got == 0 && eof_at_start) {
                *eof_at_start = true;
                return FST_DONE;
            }
            return fst__fail(FST_EIO, "reading from the coordinator: unexpected end");
        }
        got += (size_t)r;
    }
    return FST_OK;
}

fst_status fst__read_msg(int fd, fst__buf *b, uint32_t *type, fst__rd *payload)
{
    fst_status s;
    b->len = b->off = 0;
    if ((s = fst__buf_reserve(b, FST__MSG_HDR))) return s;
    bool eof = false;
    if ((s = read_exact(fd, b->p, FST__MSG_HDR, &eof))) return s;
    uint32_t n;
    memcpy(&n, b->p + 4, 4);
    if (n > FST__MSG_MAX)
        return fst__fail(FST_EFORMAT, "malformed message (%u bytes)", n);
    b->len = FST__MSG_HDR;
    if ((s = fst__buf_reserve(b, n))) return s;
    if ((s = read_exact(fd, b->p + FST__MSG_HDR, n, NULL))) return s;
    b->len += n;
    int r = fst__msg_next(b, type, payload);
    return r == 1 ? FST_OK : r == 0 ? FST_EIO : (fst_status)r;
}

fst_status fst__wconfig_encode(fst__buf *b, const fst__wconfig *c)
{
    size_t start;
    fst_status s;
    if ((s = fst__msg_begin(b, FST__MSG_CONFIG, &start))) return s;
    if ((s = fst__msg_str(b, c->store)) || (s = fst__msg_str(b, c->query)) ||
        (s = fst__msg_str(b, c->backend)) || (s = fst__msg_str(b, c->params)) ||
        (s = fst__msg_u32(b, c->mutual)) || (s = fst__msg_f64(b, c->ratio)) ||
        (s = fst__msg_f64(b, c->distance)) || (s = fst__msg_u32(b, c->index_size)) ||
        (s = fst__msg_u32(b, c->chunk)) || (s = fst__msg_u32(b, c->slot)) ||
        (s = fst__msg_u32(b, c->verify)) || (s = fst__msg_str(b, c->matcher)))
        return s;
    fst__msg_end(b, start);
    return FST_OK;
}

fst_status fst__wconfig_decode(fst__rd *r, fst__wconfig *c, char **strings)
{
    for (int i = 0; i < 4; i++) {
        uint32_t n;
        const char *p = fst__rd_str(r, &n);
        strings[i] = malloc((size_t)n + 1);
        if (!strings[i]) {
            for (int k = 0; k < i; k++) {   /* NULL: the caller frees them too */
                free(strings[k]);
                strings[k] = NULL;
            }
            return fst__fail(FST_ENOMEM, "worker configuration");
        }
        memcpy(strings[i], p, n);
        strings[i][n] = '\0';
    }
    c->store = strings[0];
    c->query = strings[1];
    c->backend = strings[2];
    c->params = strings[3];
    c->mutual = fst__rd_u32(r);
    c->ratio = fst__rd_f64(r);
    c->distance = fst__rd_f64(r);
    c->index_size = fst__rd_u32(r);
    c->chunk = fst__rd_u32(r);
    c->slot = fst__rd_u32(r);
    c->verify = fst__rd_u32(r);
    uint32_t ml;
    const char *mp = fst__rd_str(r, &ml);
    strings[4] = r->bad ? NULL : malloc((size_t)ml + 1);
    if (strings[4]) {
        memcpy(strings[4], mp, ml);
        strings[4][ml] = '\0';
    }
    c->matcher = strings[4];
    if (r->bad || !strings[4] || (c->index_size != 2 && c->index_size != 4)) {
        bool nomem = !r->bad && !strings[4];
        for (int k = 0; k < 5; k++) {
            free(strings[k]);
            strings[k] = NULL;
        }
        return nomem ? fst__fail(FST_ENOMEM, "worker configuration")
                     : fst__fail(FST_EFORMAT, "malformed worker configuration");
    }
    return FST_OK;
}
