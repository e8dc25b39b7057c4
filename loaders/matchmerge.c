/* matchmerge.c : `featstore merge`, the parts of a sharded match run
 * (`featstore match --shard K/N`) joined into the one matches.h5 a single
 * run over the whole pairs file writes.
 *
 * Every part records what produced it in its root attributes
 * (workers/coordinator.c, part_attrs_make): the shard K/N, the store's and
 * the query's identity, a hash of the whole pair list, the matcher
 * settings, how many pairs its shard holds and how many failed. All parts
 * are read and checked before anything is written; then their pairs go
 * into a temporary journal (`<dest>.merge-<pid>.journal`) and from there
 * through the same writer a match run uses (fst_matchfile_write: pairs in
 * journal key order, temporary file, fsync, rename). So the merged file is
 * the single run's file, group for group and byte for byte.
 */
#include "loader_impl.h"
#include "fst_journal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Attributes two parts of one run share; the message's name for each. */
static const char *const same_attr[][2] = {
    {"featstore_store", "store"},
    {"featstore_query", "query"},
    {"featstore_pairs", "pair list"},
    {"featstore_params", "matcher settings"},
};
#define NSAME (sizeof same_attr / sizeof same_attr[0])

typedef struct part {
    const char *path;
    char       *same[NSAME];
    uint32_t    k, n;
    uint64_t    npairs, failed;
    char      **keys;
    size_t      nkeys, capkeys;
} part;

static void part_free(part *p)
{
    for (size_t i = 0; i < NSAME; i++) free(p->same[i]);
    for (size_t i = 0; i < p->nkeys; i++) free(p->keys[i]);
    free(p->keys);
}

/* String attribute `name` of the root into *out (malloc'd), or NULL if
 * absent. */
static fst_status read_attr(hid_t root, const char *path, const char *name, char **out)
{
    *out = NULL;
    htri_t ex = H5Aexists(root, name);
    if (ex < 0) return fst__h5_fail(FST_EFORMAT, "%s: attribute %s", path, name);
    if (!ex) return FST_OK;
    fst_status s = FST_OK;
    hid_t a = H5Aopen(root, name, H5P_DEFAULT), t = H5I_INVALID_HID, mt = H5I_INVALID_HID;
    if (a < 0) return fst__h5_fail(FST_EFORMAT, "%s: attribute %s", path, name);
    t = H5Aget_type(a);
    if (t < 0 || H5Tget_class(t) != H5T_STRING || H5Tis_variable_str(t) <= 0) {
        s = fst__h5_fail(FST_EFORMAT, "%s: attribute %s is not a string", path, name);
        goto out;
    }
    mt = H5Tcopy(H5T_C_S1);
    char *v = NULL;
    if (mt < 0 || H5Tset_size(mt, H5T_VARIABLE) < 0 || H5Tset_cset(mt, H5Tget_cset(t)) < 0 ||
        H5Aread(a, mt, &v) < 0) {
        s = fst__h5_fail(FST_EFORMAT, "%s: cannot read attribute %s", path, name);
        goto out;
    }
    *out = strdup(v ? v : "");
    H5free_memory(v);
    if (!*out) s = fst__fail(FST_ENOMEM, "%s: attribute %s", path, name);
out:
    if (mt >= 0) H5Tclose(mt);
    if (t >= 0) H5Tclose(t);
    H5Aclose(a);
    return s;
}

fst_status fst_matchfile_attr(const char *path, const char *name, char **value)
{
    fst__h5_quiet q;
    fst__h5_quiet_begin(&q);
    hid_t f = H5I_INVALID_HID, root = H5I_INVALID_HID;
    *value = NULL;
    fst_status s = fst__h5_open_read(path, &f, NULL, NULL);
    if (s) goto out;
    root = H5Gopen2(f, "/", H5P_DEFAULT);
    if (root < 0) {
        s = fst__h5_fail(FST_EFORMAT, "%s: cannot open the root group", path);
        goto out;
    }
    s = read_attr(root, path, name, value);
out:
    if (root >= 0) H5Gclose(root);
    if (f >= 0) H5Fclose(f);
    fst__h5_quiet_end(&q);
    return s;
}

static fst_status add_key(const char *key, void *ctx)
{
    part *p = ctx;
    if (p->nkeys == p->capkeys) {
        size_t cap = p->capkeys ? p->capkeys * 2 : 1024;
        char **k = realloc(p->keys, cap * sizeof *k);
        if (!k) return fst__fail(FST_ENOMEM, "%s: pair keys", p->path);
        p->keys = k;
        p->capkeys = cap;
    }
    if (!(p->keys[p->nkeys] = strdup(key))) return fst__fail(FST_ENOMEM, "%s: pair keys", p->path);
    p->nkeys++;
    return FST_OK;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    if (!s || !*s) return false;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return false;
    *out = v;
    return true;
}

/* Read what part `path` records, and its pair keys. */
static fst_status read_part(part *p)
{
    fst_status s;
    hid_t f = H5I_INVALID_HID, root = H5I_INVALID_HID;
    char *shard = NULL, *npairs = NULL, *failed = NULL;
    FST_TRY(fst__h5_open_read(p->path, &f, NULL, NULL));
    root = H5Gopen2(f, "/", H5P_DEFAULT);
    if (root < 0) {
        s = fst__h5_fail(FST_EFORMAT, "%s: cannot open the root group", p->path);
        goto out;
    }
    FST_TRY(read_attr(root, p->path, "featstore_shard", &shard));
    if (!shard) {
        s = fst__fail(FST_EINVAL, "%s is not a part of a sharded run (no featstore_shard "
                      "attribute): parts are written by `featstore match --shard K/N`",
                      p->path);
        goto out;
    }
    unsigned k, n;
    char c;
    if (sscanf(shard, "%u/%u%c", &k, &n, &c) != 2 || n == 0 || k >= n) {
        s = fst__fail(FST_EFORMAT, "%s: featstore_shard '%s' is not K/N", p->path, shard);
        goto out;
    }
    p->k = k;
    p->n = n;
    for (size_t i = 0; i < NSAME; i++) {
        FST_TRY(read_attr(root, p->path, same_attr[i][0], &p->same[i]));
        if (!p->same[i]) {
            s = fst__fail(FST_EFORMAT, "%s: shard %s without attribute %s", p->path, shard,
                          same_attr[i][0]);
            goto out;
        }
    }
    FST_TRY(read_attr(root, p->path, "featstore_shard_pairs", &npairs));
    FST_TRY(read_attr(root, p->path, "featstore_failed", &failed));
    if (!parse_u64(npairs, &p->npairs) || !parse_u64(failed, &p->failed)) {
        s = fst__fail(FST_EFORMAT, "%s: shard %s without a pair count (featstore_shard_pairs, "
                      "featstore_failed)", p->path, shard);
        goto out;
    }
    H5Gclose(root);
    root = H5I_INVALID_HID;
    H5Fclose(f);
    f = H5I_INVALID_HID;
    s = fst_matchfile_keys(p->path, add_key, p);
out:
    if (root >= 0) H5Gclose(root);
    if (f >= 0) H5Fclose(f);
    free(shard);
    free(npairs);
    free(failed);
    return s;
}

/* The matcher settings without `overwrite=`: whether a part's run
 * recomputed pairs of an existing file does not change a result. */
static bool same_params(const char *a, const char *b)
{
    for (;;) {
        while (!strncmp(a, "overwrite=", 10)) a += strcspn(a, "\n") + (a[strcspn(a, "\n")] != 0);
        while (!strncmp(b, "overwrite=", 10)) b += strcspn(b, "\n") + (b[strcspn(b, "\n")] != 0);
        size_t la = strcspn(a, "\n"), lb = strcspn(b, "\n");
        if (la != lb || memcmp(a, b, la)) return false;
        if (!a[la] || !b[lb]) return !a[la] && !b[lb];
        a += la + 1;
        b += lb + 1;
    }
}

/* The first line where two settings texts differ, as "x" vs "y". */
static void first_diff(const char *a, const char *b, char *buf, size_t len)
{
    while (*a && *b) {
        size_t la = strcspn(a, "\n"), lb = strcspn(b, "\n");
        if (la != lb || memcmp(a, b, la)) {
            snprintf(buf, len, "'%.*s' vs '%.*s'", (int)la, a, (int)lb, b);
            return;
        }
        a += la + (a[la] != 0);
        b += lb + (b[lb] != 0);
    }
    snprintf(buf, len, "'%.200s' vs '%.200s'", a, b);
}

/* Append to a message buffer, "; " between items. */
static void say(char *buf, size_t len, const char *fmt, ...) FST_PRINTF(3, 4);
static void say(char *buf, size_t len, const char *fmt, ...)
{
    size_t l = strlen(buf);
    if (l + 3 >= len) return;
    if (l) {
        memcpy(buf + l, "; ", 3);
        l += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + l, len - l, fmt, ap);
    va_end(ap);
}

/* Every check before a byte is written. */
static fst_status check_parts(part *ps, size_t np)
{
    for (size_t i = 1; i < np; i++) {
        if (ps[i].n != ps[0].n)
            return fst__fail(FST_EINVAL, "%s and %s are parts of different splits: shard "
                             "%u/%u and %u/%u", ps[0].path, ps[i].path, ps[0].k, ps[0].n,
                             ps[i].k, ps[i].n);
        for (size_t a = 0; a < NSAME; a++) {
            bool same = a == NSAME - 1 ? same_params(ps[0].same[a], ps[i].same[a])
                                       : !strcmp(ps[0].same[a], ps[i].same[a]);
            if (same) continue;
            char d[600];
            if (a == NSAME - 1) first_diff(ps[0].same[a], ps[i].same[a], d, sizeof d);
            else snprintf(d, sizeof d, "'%.250s' vs '%.250s'", ps[0].same[a], ps[i].same[a]);
            return fst__fail(FST_EINVAL, "%s and %s are parts of different runs: their %s "
                             "differ (%s); run every shard with the same store, query, pairs "
                             "file and settings", ps[0].path, ps[i].path, same_attr[a][1], d);
        }
    }
    uint32_t n = ps[0].n;
    size_t *who = malloc(n * sizeof *who);
    if (!who) return fst__fail(FST_ENOMEM, "%u shards", n);
    for (uint32_t k = 0; k < n; k++) who[k] = SIZE_MAX;
    char msg[2048] = "";
    for (size_t i = 0; i < np; i++) {
        if (who[ps[i].k] != SIZE_MAX)
            say(msg, sizeof msg, "%s and %s are both shard %u/%u", ps[who[ps[i].k]].path,
                ps[i].path, ps[i].k, n);
        else
            who[ps[i].k] = i;
    }
    char miss[512] = "";
    uint32_t nmiss = 0;
    for (uint32_t k = 0; k < n; k++) {
        if (who[k] != SIZE_MAX) continue;
        size_t l = strlen(miss);
        if (nmiss++ < 32 && l + 16 < sizeof miss)
            snprintf(miss + l, sizeof miss - l, "%s%u", nmiss > 1 ? ", " : "", k);
    }
    if (nmiss)
        say(msg, sizeof msg, "missing shard%s %s%s of %u (no part given)", nmiss > 1 ? "s" : "",
            miss, nmiss > 32 ? ", ..." : "", n);
    for (size_t i = 0; i < np; i++) {
        if (ps[i].failed)
            say(msg, sizeof msg, "%s (shard %u/%u) is incomplete: %" PRIu64 " pair%s failed in "
                "its run; run that shard again", ps[i].path, ps[i].k, n, ps[i].failed,
                ps[i].failed > 1 ? "s" : "");
        else if (ps[i].nkeys != ps[i].npairs)
            say(msg, sizeof msg, "%s (shard %u/%u) holds %zu pairs, its shard %" PRIu64
                ": run that shard again with --overwrite", ps[i].path, ps[i].k, n,
                ps[i].nkeys, ps[i].npairs);
    }
    free(who);
    if (msg[0]) return fst__fail(FST_EINVAL, "%s", msg);
    return FST_OK;
}

/* One part's pairs into the journal. */
typedef struct copier {
    fst_journal *j;
    hid_t        f16;
    void        *m, *sc;
    size_t       mcap, sccap;
} copier;

static fst_status copy_pair(copier *c, hid_t f, const part *p, const char *key)
{
    fst_status s;
    char where[1024];
    snprintf(where, sizeof where, "%s: /%s", p->path, key);
    const char *slash = strchr(key, '/');
    if (!slash)
        return fst__fail(FST_EFORMAT, "%s: an old-style pair key (one level): not written "
                         "by `featstore match --shard`", where);
    fst__h5_dset dm = {.id = H5I_INVALID_HID}, ds = {.id = H5I_INVALID_HID};
    hid_t g = H5Gopen2(f, key, H5P_DEFAULT);
    if (g < 0) return fst__h5_fail(FST_EFORMAT, "%s: cannot open group", where);
    FST_TRY(fst__h5_dset_open(g, "matches0", where, &dm));
    FST_TRY(fst__h5_dset_open(g, "matching_scores0", where, &ds));
    int64_t any[1] = {-1};
    FST_TRY(fst__h5_dset_expect(&dm, where, 1, any, FST__H5_K(FST__H5_INT)));
    FST_TRY(fst__h5_dset_expect(&ds, where, 1, any, FST__H5_K(FST__H5_F16)));
    uint64_t n0 = fst__h5_dset_nelem(&dm);
    if (fst__h5_dset_nelem(&ds) != n0 || (dm.elsize != 2 && dm.elsize != 4) || n0 > UINT32_MAX) {
        s = fst__fail(FST_EFORMAT, "%s: %" PRIu64 " matches0 (%zu bytes each) but %" PRIu64
                      " matching_scores0", where, n0, dm.elsize, fst__h5_dset_nelem(&ds));
        goto out;
    }
    FST_TRY(fst__grow(&c->m, &c->mcap, n0 * dm.elsize + 1, "matches0"));
    FST_TRY(fst__grow(&c->sc, &c->sccap, n0 * 2 + 1, "matching_scores0"));
    FST_TRY(fst__h5_dset_read(&dm, where, dm.elsize == 2 ? H5T_STD_I16LE : H5T_STD_I32LE, c->m));
    FST_TRY(fst__h5_dset_read(&ds, where, c->f16, c->sc));
    uint32_t nm = 0;
    for (uint64_t i = 0; i < n0; i++) {
        int32_t v;
        if (dm.elsize == 2) { int16_t x; memcpy(&x, (char *)c->m + 2 * i, 2); v = x; }
        else memcpy(&v, (char *)c->m + 4 * i, 4);
        nm += v != -1;
    }
    /* The key's two parts stand for the names: a part's keys are hloc's
     * (no '/' inside a part), and the journal key, the writer's order and
     * its groups depend on the key only. */
    size_t l0 = (size_t)(slash - key);
    char *name0 = strndup(key, l0);
    if (!name0) { s = fst__fail(FST_ENOMEM, "%s", where); goto out; }
    fst_journal_rec rec = {.name0 = name0, .name1 = slash + 1, .n0 = (uint32_t)n0,
                           .nmatches = nm, .index_size = (uint32_t)dm.elsize,
                           .matches0 = c->m, .scores0 = c->sc};
    fst_journal_rec old;
    s = fst_journal_get(c->j, key, &old);
    if (s == FST_OK)
        s = fst__fail(FST_EEXIST, "%s: pair %s is in two parts", p->path, key);
    else if (s == FST_ENOTFOUND)
        s = fst_journal_put(c->j, key, &rec);
    free(name0);
out:
    fst__h5_dset_close(&dm);
    fst__h5_dset_close(&ds);
    H5Gclose(g);
    return s;
}

static fst_status copy_part(copier *c, const part *p)
{
    fst_status s;
    hid_t f = H5I_INVALID_HID;
    FST_TRY(fst__h5_open_read(p->path, &f, NULL, NULL));
    for (size_t i = 0; i < p->nkeys; i++) {
        FST_TRY(copy_pair(c, f, p, p->keys[i]));
        if (fst_journal_pending(c->j) >= 4096) FST_TRY(fst_journal_commit(c->j));
    }
out:
    if (f >= 0) H5Fclose(f);
    return s;
}

fst_status fst_matchfile_merge(const char *dest, const char *const *paths, size_t np,
                               const fst_matchfile_opts *opts, uint64_t *n_written)
{
    fst_status s = FST_OK;
    fst__h5_quiet q;
    fst__h5_quiet_begin(&q);
    copier c = {.f16 = H5I_INVALID_HID};
    char *jpath = NULL;
    part *ps = calloc(np ? np : 1, sizeof *ps);
    if (!ps) { s = fst__fail(FST_ENOMEM, "%zu parts", np); goto out; }
    if (!np) { s = fst__fail(FST_EINVAL, "no parts to merge"); goto out; }
    struct stat db;
    bool dest_there = stat(dest, &db) == 0;
    for (size_t i = 0; i < np; i++) {
        ps[i].path = paths[i];
        struct stat sb;
        if (dest_there && stat(paths[i], &sb) == 0 && sb.st_dev == db.st_dev &&
            sb.st_ino == db.st_ino) {
            s = fst__fail(FST_EINVAL, "the output %s is the part %s: name another output",
                          dest, paths[i]);
            goto out;
        }
        FST_TRY(read_part(&ps[i]));
    }
    FST_TRY(check_parts(ps, np));
    if (dest_there) FST_TRY(fst_matchfile_check_output(dest));

    size_t jl = strlen(dest) + 48;
    if (!(jpath = malloc(jl))) { s = fst__fail(FST_ENOMEM, "%s", dest); goto out; }
    snprintf(jpath, jl, "%s.merge-%ld.journal", dest, (long)getpid());
    fst__remove_stale(dest, ".merge-", (const char *const[]){".journal*", NULL}, true);
    c.f16 = fst__h5_f16_create();
    if (c.f16 < 0) { s = FST_ENOMEM; goto out; }
    FST_TRY(fst_journal_open(jpath, FST_JOURNAL_CREATE, &c.j));
    for (size_t i = 0; i < np; i++) FST_TRY(copy_part(&c, &ps[i]));
    FST_TRY(fst_journal_commit(c.j));   /* one sync for the small parts together */
    fst_matchfile_opts mo = {.copy_existing = false};
    if (opts) {
        mo.progress = opts->progress;
        mo.progress_ctx = opts->progress_ctx;
    }
    s = fst_matchfile_write(dest, c.j, &mo, n_written);
out:
    fst_journal_close(c.j);
    if (s) {
        /* said once, whatever failed: dest is as it was */
        char detail[2048];
        snprintf(detail, sizeof detail, "%s", fst_errdetail());
        if (jpath) fst_journal_remove(jpath);
        fst__fail(s, "%s; nothing written", detail);
    } else if (jpath) {
        fst_journal_remove(jpath);
    }
    free(jpath);
    if (c.f16 >= 0) H5Tclose(c.f16);
    free(c.m);
    free(c.sc);
    for (size_t i = 0; ps && i < np; i++) part_free(&ps[i]);
    free(ps);
    fst__h5_quiet_end(&q);
    return s;
}
