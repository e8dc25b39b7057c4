/* identity.c : what a match journal records about the data its pairs were
 * computed from, and whether a later run may reuse them.
 *
 * A journal's pairs are valid for a run that reads the same store content
 * with the same matcher settings, whatever its pairs file. The content is
 * named by the store's id (drawn at creation, kept by appends; see
 * fst_store_meta) and its generation. An append advances the generation
 * but never changes or removes a record, so pairs journaled at an earlier
 * generation of the same store stay valid: the identity compares ids and
 * reports the generations. A query given as an hloc features.h5 is
 * imported afresh by every run (a new id each time), so it is named by a
 * hash of the file's bytes instead.
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

void fst__identity_of_store(const fst_store_meta *m, char *buf, size_t len)
{
    char id[FST_STORE_IDENTITY_LEN];
    fst_store_identity(m, id);
    snprintf(buf, len, "%s generation=%" PRIu64, id, m->generation);
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
