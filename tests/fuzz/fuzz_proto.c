/* fuzz_proto.c : the coordinator <-> worker protocol reader (workers/
 * proto.c) on arbitrary byte streams: what a coordinator reads from a
 * worker that died mid-message or went wrong, and what a worker reads as
 * its configuration.
 *
 * Input: byte 0 sets the size of the chunks the stream arrives in (1..64
 * bytes, as reads from a socket may cut it anywhere); the rest is the
 * stream. Each chunk is appended to a fst__buf, complete messages are taken
 * with fst__msg_next() and decoded field by field as worker_impl.h lays them
 * out (CONFIG with fst__wconfig_decode()), and the buffer is compacted.
 *
 * Invariants: a payload cursor never reads outside its message (ASan; the
 * buffer is reallocated to its exact length before each message is
 * taken), a malformed header is FST_EFORMAT and ends the stream, and a
 * message is taken only when all of it has arrived. */
#include "fuzz_util.h"

#include "worker_impl.h"

static void decode(uint32_t type, fst__rd *r)
{
    uint32_t n;
    switch (type) {
    case FST__MSG_CONFIG: {
        fst__wconfig c;
        char *strings[5];
        if (fst__wconfig_decode(r, &c, strings) == FST_OK) {
            FUZZ_CHECK(c.index_size == 2 || c.index_size == 4);
            for (int i = 0; i < 5; i++)
                free(strings[i]);
        }
        break;
    }
    case FST__MSG_BATCH: {
        (void)fst__rd_u32(r);
        uint32_t k = fst__rd_u32(r);
        for (uint32_t i = 0; i < k && !r->bad; i++) {
            (void)fst__rd_u32(r);
            (void)fst__rd_str(r, &n);
            (void)fst__rd_str(r, &n);
        }
        break;
    }
    case FST__MSG_RESULT: {
        (void)fst__rd_u32(r);
        (void)fst__rd_u32(r);
        int32_t st = fst__rd_i32(r);
        uint32_t n0 = fst__rd_u32(r);
        (void)fst__rd_u32(r);
        const char *d = fst__rd_str(r, &n);
        FUZZ_CHECK(d != NULL);
        if (st == 0) {
            const uint8_t *m = fst__rd_bytes(r, (size_t)n0 * 2);
            const uint8_t *s = fst__rd_bytes(r, (size_t)n0 * 2);
            volatile uint8_t sink = 0;
            for (size_t i = 0; m && s && i < (size_t)n0 * 2; i++)
                sink ^= m[i] ^ s[i];
            (void)sink;
        }
        break;
    }
    default: {
        (void)fst__rd_i32(r);
        (void)fst__rd_str(r, &n);
        (void)fst__rd_str(r, &n);
        (void)fst__rd_f64(r);
        break;
    }
    }
    FUZZ_CHECK(r->off <= r->n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t chunk = 1 + data[0] % 64;
    data++;
    size--;
    fst__buf b = {0};
    size_t fed = 0;
    int ended = 0;
    while (fed < size && !ended) {
        size_t k = size - fed < chunk ? size - fed : chunk;
        FUZZ_CHECK(fst__buf_reserve(&b, k) == FST_OK);
        memcpy(b.p + b.len, data + fed, k);
        b.len += k;
        fed += k;
        for (;;) {
            /* exact-size copy: a read past the stream's end is an ASan error */
            uint8_t *exact = malloc(b.len ? b.len : 1);
            FUZZ_CHECK(exact != NULL);
            memcpy(exact, b.p, b.len);
            fst__buf view = {.p = exact, .len = b.len, .cap = b.len, .off = b.off};
            uint32_t type = 0;
            fst__rd r;
            int got = fst__msg_next(&view, &type, &r);
            if (got == 1) {
                FUZZ_CHECK(view.off <= view.len);
                FUZZ_CHECK(r.p >= exact && r.p + r.n <= exact + view.len);
                decode(type, &r);
                b.off = view.off;
            }
            free(exact);
            if (got < 0) {
                FUZZ_CHECK(got == FST_EFORMAT);
                ended = 1;
            }
            if (got != 1)
                break;
        }
        fst__buf_compact(&b);
    }
    fst__buf_free(&b);
    return 0;
}
