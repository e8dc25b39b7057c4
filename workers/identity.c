/* identity.c : what a match journal records about the data its pairs were
 * computed from, and whether a later run may reuse them.
 *
 * A journal's pairs are valid for a run that reads the same store content
 * with the same matcher settings, whatever its pairs file. The content is
 * named by the store's id (drawn at creation, kept by appends; see
 * fst_store_meta), its generation and that generation's write id. An
 * append advances the generation but never changes or removes a record,
 * so pairs journaled at an earlier generation stay valid, provided today's
 * store descends from the journaled one: its history holds the journaled
 * generation with the journaled write id. A byte copy of the store that
 * was appended to separately has the id but not that history. A query
 * given as an hloc features.h5 is imported afresh by every run (a new id
 * each time), so it is named by a hash of the file's bytes instead.
 */
#include "worker_impl.h"
#include "fst_store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

static void hex16(const uint8_t *b, char *out)
{
    for (int i = 0; i < 16; i++)
        sprintf(out + 2 * i, "%02x", b[i]);
}

void fst__identity_of_store(const fst_store_meta *m, char *buf, size_t len)
{
    char id[FST_STORE_IDENTITY_LEN], wid[33];
    fst_store_identity(m, id);
    if (!m->has_id) {
        snprintf(buf, len, "%s generation=%" PRIu64, id, m->generation);
        return;
    }
    hex16(m->write_id, wid);
    snprintf(buf, len, "%s generation=%" PRIu64 " write=%s", id, m->generation, wid);
}

fst_status fst__identity_of_file(const char *path, char *buf, size_t len)
{
    fst_status s = FST_OK;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fst__fail(FST_EIO, "%s: %s", path, strerror(errno));
    XXH3_state_t *h = XXH3_createState();
    char *b = malloc(1 << 20);
    uint64_t size = 0;
    if (!h || !b || XXH3_128bits_reset(h) != XXH_OK) {
        s = fst__fail(FST_ENOMEM, "hashing %s", path);
        goto out;
    }
    for (;;) {
        ssize_t n = read(fd, b, 1 << 20);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            s = fst__fail(FST_EIO, "%s: %s", path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        XXH3_128bits_update(h, b, (size_t)n);
        size += (uint64_t)n;
    }
    XXH128_hash_t d = XXH3_128bits_digest(h);
    snprintf(buf, len, "h5=%016llx%016llx,%" PRIu64, (unsigned long long)d.high64,
             (unsigned long long)d.low64, size);
out:
    free(b);
    XXH3_freeState(h);
    close(fd);
    return s;
}

/* The part of an identity before " generation=" (all of it if none). */
static size_t content_len(const char *id)
{
    const char *g = strstr(id, " generation=");
    return g ? (size_t)(g - id) : strlen(id);
}

bool fst__identity_same(const char *a, const char *b)
{
    size_t la = content_len(a), lb = content_len(b);
    return la == lb && memcmp(a, b, la) == 0;
}

/* "id=... generation=G write=W": G and W (false if not of that shape). */
static bool parse_gen(const char *id, uint64_t *g, char w[33])
{
    const char *p = strstr(id, " generation=");
    if (strncmp(id, "id=", 3) || !p) return false;
    char *end;
    errno = 0;
    *g = strtoull(p + 12, &end, 10);
    if (errno || strncmp(end, " write=", 7) || strlen(end + 7) != 32) return false;
    memcpy(w, end + 7, 33);
    return true;
}

fst_status fst__identity_check(const char *path, const char *old, const char *now,
                               fst__identity_verdict *out)
{
    fst_status s = FST_OK;
    uint64_t go, gn;
    char wo[33], wn[33];
    *out = FST__ID_OTHER;
    if (!fst__identity_same(old, now))
        return FST_OK;
    if (!parse_gen(old, &go, wo) || !parse_gen(now, &gn, wn)) {
        /* a file hash, or a format 1.0 store's counts and times */
        *out = strcmp(old, now) ? FST__ID_OTHER : FST__ID_SAME;
        return FST_OK;
    }
    if (go == gn) {
        *out = strcmp(wo, wn) ? FST__ID_COPY : FST__ID_SAME;
        return FST_OK;
    }
    if (go > gn) {                    /* an older copy of the store */
        *out = FST__ID_COPY;
        return FST_OK;
    }
    fst_store *st = NULL;
    uint8_t w[16];
    char wh[33];
    s = fst_store_open(path, 0, &st);
    if (s == FST_OK) s = fst_store_write_id(st, go, w);
    fst_store_close(st);
    if (s == FST_ENOTFOUND) {         /* not in its history: not its past */
        *out = FST__ID_COPY;
        return FST_OK;
    }
    if (s) return s;
    hex16(w, wh);
    *out = strcmp(wh, wo) ? FST__ID_COPY : FST__ID_APPENDED;
    return FST_OK;
}
