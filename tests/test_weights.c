/* test_weights.c : the weight-file reader (loaders/fst_weights.h) on the
 * files tests/weights/make_weights.py wrote with torch (committed in
 * tests/weights/data/, with manifest.txt saying what each holds), on
 * pickles that would run code, and on every truncation and byte
 * corruption of the small files. */
#include "fst_test.h"

#include <glob.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fst_weights.h"

/* ---- the data directory and its manifest ---- */

static const char *data_path(const char *name)
{
    static char buf[4][4096];
    static int k;
    const char *src = getenv("FST_SRCDIR");
    char *b = buf[k++ % 4];
    if (snprintf(b, sizeof buf[0], "%s/tests/weights/data/%s", src ? src : ".", name) >= (int)sizeof buf[0])
        abort();
    return b;
}

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    /* exact size: ASan sees a read one byte past the end */
    unsigned char *b = malloc(len > 0 ? (size_t)len : 1);
    if (b && fread(b, 1, (size_t)len, f) != (size_t)len) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *n = (size_t)len;
    return b;
}

typedef struct mtensor {
    char    *name;
    char     dtype[16];
    int      ndim;
    int64_t  shape[FST_WEIGHTS_MAX_DIMS];
    unsigned char *bytes;
    size_t   nbytes;
} mtensor;

typedef struct mfile {
    char    name[128], format[32];
    size_t  n;
    mtensor *t;
} mfile;

typedef struct mrefuse {
    char file[128], status[32], msg[256];
} mrefuse;

typedef struct mrename {
    char file[128], old_[256], new_[256];
} mrename;

static mfile files[32];
static int nfiles;
static mrefuse refusals[64];
static int nrefusals;
static mrename renames[64];
static int nrenames;

static void load_manifest(void)
{
    if (nfiles)
        return;
    FILE *f = fopen(data_path("manifest.txt"), "r");
    if (!f)
        FST_TEST_FAIL_("cannot open %s", data_path("manifest.txt"));
    static char line[1 << 16];
    mfile *cur = NULL;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *save = NULL, *kind = strtok_r(line, " ", &save);
        if (!kind || kind[0] == '#')
            continue;
        if (!strcmp(kind, "file")) {
            cur = &files[nfiles++];
            snprintf(cur->name, sizeof cur->name, "%s", strtok_r(NULL, " ", &save));
            snprintf(cur->format, sizeof cur->format, "%s", strtok_r(NULL, " ", &save));
            size_t n = strtoul(strtok_r(NULL, " ", &save), NULL, 10);
            cur->t = calloc(n, sizeof *cur->t);
        } else if (!strcmp(kind, "tensor")) {
            mtensor *t = &cur->t[cur->n++];
            t->name = strdup(strtok_r(NULL, " ", &save));
            snprintf(t->dtype, sizeof t->dtype, "%s", strtok_r(NULL, " ", &save));
            t->ndim = atoi(strtok_r(NULL, " ", &save));
            for (int d = 0; d < t->ndim; d++)
                t->shape[d] = strtoll(strtok_r(NULL, " ", &save), NULL, 10);
            const char *hex = strtok_r(NULL, " ", &save);
            size_t hl = strcmp(hex, "-") ? strlen(hex) : 0;
            t->nbytes = hl / 2;
            t->bytes = malloc(t->nbytes + 1);
            for (size_t i = 0; i < t->nbytes; i++) {
                unsigned v;
                sscanf(hex + 2 * i, "%2x", &v);
                t->bytes[i] = (unsigned char)v;
            }
        } else if (!strcmp(kind, "refuse")) {
            mrefuse *r = &refusals[nrefusals++];
            snprintf(r->file, sizeof r->file, "%s", strtok_r(NULL, " ", &save));
            snprintf(r->status, sizeof r->status, "%s", strtok_r(NULL, " ", &save));
            snprintf(r->msg, sizeof r->msg, "%s", save);   /* the rest of the line */
        } else if (!strcmp(kind, "rename")) {
            mrename *r = &renames[nrenames++];
            snprintf(r->file, sizeof r->file, "%s", strtok_r(NULL, " ", &save));
            snprintf(r->old_, sizeof r->old_, "%s", strtok_r(NULL, " ", &save));
            snprintf(r->new_, sizeof r->new_, "%s", strtok_r(NULL, " ", &save));
        }
    }
    fclose(f);
}

/* Every tensor of `w` as the manifest says, in its order. */
static void check_against(const fst_weights *w, const mfile *m)
{
    ASSERT_STREQ(fst_weights_format(w), m->format);
    ASSERT_EQ(fst_weights_count(w), m->n);
    for (size_t i = 0; i < m->n; i++) {
        const mtensor *e = &m->t[i];
        const fst_weights_tensor *t = fst_weights_at(w, i);
        ASSERT_TRUE(t != NULL);
        ASSERT_STREQ(t->name, e->name);
        ASSERT_TRUE(fst_weights_find(w, e->name) == t);
        ASSERT_STREQ(fst_weights_dtype_name(t->dtype), e->dtype);
        ASSERT_EQ(t->ndim, e->ndim);
        int64_t numel = 1;
        for (int d = 0; d < e->ndim; d++) {
            ASSERT_EQ(t->shape[d], e->shape[d]);
            numel *= e->shape[d];
        }
        ASSERT_EQ(t->numel, numel);
        ASSERT_EQ(t->nbytes, e->nbytes);
        ASSERT_EQ(t->nbytes, (size_t)numel * fst_weights_dtype_size(t->dtype));
        ASSERT_TRUE(t->data != NULL);
        ASSERT_EQ((uintptr_t)t->data % 64, 0);
        ASSERT_MEMEQ(t->data, e->bytes, e->nbytes);
    }
    ASSERT_TRUE(fst_weights_at(w, m->n) == NULL);
}

/* ---- the files torch wrote ---- */

FST_TEST(every_format_gives_the_manifests_tensors)
{
    load_manifest();
    ASSERT_GE(nfiles, 8);
    int formats[3] = {0};
    for (int i = 0; i < nfiles; i++) {
        fst_weights *w = NULL;
        ASSERT_OK(fst_weights_open(data_path(files[i].name), &w));
        check_against(w, &files[i]);
        formats[!strcmp(files[i].format, "torch-legacy") + 2 * !strcmp(files[i].format,
                                                                       "safetensors")]++;
        fst_weights_close(w);
        /* the same from memory */
        size_t n;
        unsigned char *b = slurp(data_path(files[i].name), &n);
        ASSERT_TRUE(b != NULL);
        ASSERT_OK(fst_weights_open_mem(b, n, files[i].name, &w));
        check_against(w, &files[i]);
        fst_weights_close(w);
        free(b);
    }
    ASSERT_GE(formats[0], 3);   /* zip: protocol 2, 4, zip64 */
    ASSERT_GE(formats[1], 2);   /* legacy: protocol 2, 4 */
    ASSERT_GE(formats[2], 1);
}

FST_TEST(views_copied_contiguous_and_storage_shared_zero_copy)
{
    fst_weights *w = NULL;
    ASSERT_OK(fst_weights_open(data_path("sd.pth"), &w));
    const fst_weights_tensor *base = fst_weights_find(w, "view.base");
    const fst_weights_tensor *sl = fst_weights_find(w, "view.slice");
    const fst_weights_tensor *t = fst_weights_find(w, "view.t");
    ASSERT_TRUE(base && sl && t);
    /* view.slice is base[5:17] (offset 5: not aligned, copied) */
    ASSERT_MEMEQ(sl->data, (const float *)base->data + 5, 12 * sizeof(float));
    ASSERT_TRUE(sl->data != (const void *)((const float *)base->data + 5));
    /* zip storages are 64-byte aligned in the file: the map itself */
    size_t n;
    unsigned char *b = slurp(data_path("sd.pth"), &n);
    fst_weights *wm = NULL;
    ASSERT_OK(fst_weights_open_mem(b, n, "sd.pth", &wm));
    const fst_weights_tensor *bm = fst_weights_find(wm, "view.base");
    if ((uintptr_t)b % 64 == 0) {   /* malloc gives 16; the map gives pages */
        ASSERT_TRUE((const unsigned char *)bm->data >= b &&
                    (const unsigned char *)bm->data < b + n);
    }
    ASSERT_MEMEQ(bm->data, base->data, base->nbytes);
    fst_weights_close(wm);
    free(b);
    fst_weights_close(w);
}

/* ---- files that would run code ---- */

static int pwned_files(void)
{
    glob_t g;
    int n = glob("/tmp/featstore-pwned-*", 0, NULL, &g) == 0 ? (int)g.gl_pathc : 0;
    globfree(&g);
    return n;
}

FST_TEST(malicious_and_unsupported_files_are_refused_naming_what)
{
    load_manifest();
    glob_t g;
    if (glob("/tmp/featstore-pwned-*", 0, NULL, &g) == 0)
        for (size_t i = 0; i < g.gl_pathc; i++)
            unlink(g.gl_pathv[i]);
    globfree(&g);
    ASSERT_EQ(pwned_files(), 0);
    ASSERT_GE(nrefusals, 12);
    for (int i = 0; i < nrefusals; i++) {
        const mrefuse *r = &refusals[i];
        fst_weights *w = NULL;
        fst_status s = fst_weights_open(data_path(r->file), &w);
        if (strcmp(fst_status_name(s), r->status) != 0)
            FST_TEST_FAIL_("%s: %s, expected %s (%s)", r->file, fst_status_name(s), r->status,
                           fst_errdetail());
        ASSERT_TRUE(w == NULL);
        ASSERT_CONTAINS(fst_errdetail(), r->file);
        ASSERT_CONTAINS(fst_errdetail(), r->msg);
    }
    ASSERT_EQ(pwned_files(), 0);
}

/* ---- LightGlue's renames, shapes ---- */

FST_TEST(lightglue_old_names_renamed_as_the_reference_does)
{
    load_manifest();
    ASSERT_GE(nrenames, 9);
    fst_weights *w = NULL;
    ASSERT_OK(fst_weights_open(data_path("lightglue_old.pth"), &w));
    size_t n = fst_weights_count(w);
    const void **data = calloc(n, sizeof *data);
    for (size_t i = 0; i < n; i++)
        data[i] = fst_weights_at(w, i)->data;
    ASSERT_OK(fst_weights_rename_lightglue(w, 0));
    ASSERT_EQ(fst_weights_count(w), n);
    int changed = 0;
    for (int i = 0; i < nrenames; i++) {
        const fst_weights_tensor *t = fst_weights_find(w, renames[i].new_);
        if (!t)
            FST_TEST_FAIL_("no tensor '%s' after renaming", renames[i].new_);
        ASSERT_TRUE(t->data == data[t - fst_weights_at(w, 0)]);
        if (strcmp(renames[i].old_, renames[i].new_)) {
            ASSERT_TRUE(fst_weights_find(w, renames[i].old_) == NULL);
            changed++;
        }
    }
    ASSERT_EQ(changed, 9);
    /* again: nothing left to rename */
    ASSERT_OK(fst_weights_rename_lightglue(w, 9));
    for (int i = 0; i < nrenames; i++)
        ASSERT_TRUE(fst_weights_find(w, renames[i].new_) != NULL);
    free(data);
    fst_weights_close(w);

    /* n_layers = 1: only layer 0, as LightGlue with n_layers=1 would */
    ASSERT_OK(fst_weights_open(data_path("lightglue_old.pth"), &w));
    ASSERT_OK(fst_weights_rename_lightglue(w, 1));
    ASSERT_TRUE(fst_weights_find(w, "transformers.0.self_attn.Wqkv.weight") != NULL);
    ASSERT_TRUE(fst_weights_find(w, "transformers.0.cross_attn.to_qk.weight") != NULL);
    ASSERT_TRUE(fst_weights_find(w, "self_attn.1.Wqkv.weight") != NULL);
    fst_weights_close(w);

    /* a SuperGlue-like file: nothing to rename */
    ASSERT_OK(fst_weights_open(data_path("sd.pth"), &w));
    ASSERT_OK(fst_weights_rename_lightglue(w, 0));
    ASSERT_TRUE(fst_weights_find(w, "kenc.encoder.0.weight") != NULL);
    fst_weights_close(w);
}

/* A safetensors file in memory: `header` JSON, then `data` bytes. */
static unsigned char *make_st(const char *header, size_t data_len, size_t *n)
{
    size_t h = strlen(header);
    unsigned char *b = malloc(8 + h + data_len + 1);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(b + 8, header, h);
    for (size_t i = 0; i < data_len; i++)
        b[8 + h + i] = (unsigned char)i;
    *n = 8 + h + data_len;
    return b;
}

/* Open a safetensors file made of `header` and data_len bytes; closes it
 * again (*w stays NULL on failure, as the API promises). */
static fst_status open_st(const char *header, size_t data_len, fst_weights **w)
{
    size_t n;
    unsigned char *b = make_st(header, data_len, &n);
    fst_status s = fst_weights_open_mem(b, n, "t.safetensors", w);
    fst_weights_close(*w);
    *w = NULL;
    free(b);
    return s;
}

FST_TEST(rename_refuses_a_file_with_old_and_new_names)
{
    size_t n;
    unsigned char *b = make_st("{\"self_attn.0.w\":{\"dtype\":\"U8\",\"shape\":[1],"
                               "\"data_offsets\":[0,1]},\"transformers.0.self_attn.w\":"
                               "{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2, &n);
    fst_weights *w = NULL;
    ASSERT_OK(fst_weights_open_mem(b, n, "both.safetensors", &w));
    ASSERT_STATUS(fst_weights_rename_lightglue(w, 0), FST_EFORMAT);
    ASSERT_CONTAINS(fst_errdetail(), "'transformers.0.self_attn.w' twice");
    /* unchanged */
    ASSERT_TRUE(fst_weights_find(w, "self_attn.0.w") != NULL);
    ASSERT_STREQ(fst_weights_at(w, 0)->name, "self_attn.0.w");
    fst_weights_close(w);
    free(b);
}

/* Odd names, renamed as Python's str.replace loop does (the expected names
 * were printed by that loop, range(13)). */
FST_TEST(rename_matches_pythons_replace_loop_on_odd_names)
{
    static const char *const names[][2] = {
        {"self_attn.12.x", "transformers.1.self_attn2.x"},
        {"self_attn.1.self_attn.2.y", "transformers.1.self_attn.transformers.2.self_attn.y"},
        {"cross_attn.0.cross_attn.0.z", "transformers.0.cross_attn.transformers.0.cross_attn.z"},
        {"a.self_attn.3b", "a.transformers.3.self_attnb"},
        {"self_attn.03.w", "transformers.0.self_attn3.w"},
        {"self_attn.13.q", "transformers.1.self_attn3.q"},
    };
    size_t k = sizeof names / sizeof names[0];
    for (int n_layers = 13; n_layers >= 0; n_layers -= 13) {
        char hdr[2048];
        size_t at = (size_t)snprintf(hdr, sizeof hdr, "{");
        for (size_t i = 0; i < k; i++)
            at += (size_t)snprintf(hdr + at, sizeof hdr - at,
                                   "%s\"%s\":{\"dtype\":\"U8\",\"shape\":[1],"
                                   "\"data_offsets\":[%zu,%zu]}", i ? "," : "", names[i][0], i,
                                   i + 1);
        snprintf(hdr + at, sizeof hdr - at, "}");
        size_t n;
        unsigned char *b = make_st(hdr, k, &n);
        fst_weights *w = NULL;
        ASSERT_OK(fst_weights_open_mem(b, n, "odd.safetensors", &w));
        ASSERT_OK(fst_weights_rename_lightglue(w, n_layers));
        for (size_t i = 0; i < k; i++) {
            ASSERT_STREQ(fst_weights_at(w, i)->name, names[i][1]);
            ASSERT_TRUE(fst_weights_find(w, names[i][1]) == fst_weights_at(w, i));
        }
        fst_weights_close(w);
        free(b);
    }
}

FST_TEST(expect_names_tensor_and_both_shapes)
{
    fst_weights *w = NULL;
    const fst_weights_tensor *t = NULL;
    ASSERT_OK(fst_weights_open(data_path("sd_legacy.pth"), &w));
    ASSERT_OK(fst_weights_expect(w, "kenc.encoder.0.weight", FST_WEIGHTS_F32, 3,
                                 (const int64_t[]){4, 3, 1}, &t));
    ASSERT_STREQ(t->name, "kenc.encoder.0.weight");
    ASSERT_OK(fst_weights_expect(w, "kenc.encoder.0.weight", 0, 3,
                                 (const int64_t[]){-1, 3, -1}, NULL));
    ASSERT_OK(fst_weights_expect(w, "kenc.encoder.1.num_batches_tracked", FST_WEIGHTS_I64, 0,
                                 NULL, NULL));
    t = NULL;
    ASSERT_STATUS(fst_weights_expect(w, "kenc.encoder.0.weight", FST_WEIGHTS_F32, 3,
                                     (const int64_t[]){4, 3, 2}, &t), FST_EFORMAT);
    ASSERT_TRUE(t == NULL);
    ASSERT_CONTAINS(fst_errdetail(), "sd_legacy.pth: tensor 'kenc.encoder.0.weight': "
                    "expected float32 [4, 3, 2], found float32 [4, 3, 1]");
    ASSERT_STATUS(fst_weights_expect(w, "half", FST_WEIGHTS_F32, 2,
                                     (const int64_t[]){2, 3}, NULL), FST_EFORMAT);
    ASSERT_CONTAINS(fst_errdetail(), "expected float32 [2, 3], found float16 [2, 3]");
    ASSERT_STATUS(fst_weights_expect(w, "final_proj.weight", FST_WEIGHTS_F32, 1,
                                     (const int64_t[]){18}, NULL), FST_EFORMAT);
    ASSERT_CONTAINS(fst_errdetail(), "expected float32 [18], found float32 [3, 6]");
    ASSERT_STATUS(fst_weights_expect(w, "gnn.layers.0.attn.merge.weight", 0, 0, NULL, NULL),
                  FST_ENOTFOUND);
    ASSERT_CONTAINS(fst_errdetail(), "sd_legacy.pth: no tensor 'gnn.layers.0.attn.merge.weight'");
    ASSERT_TRUE(fst_weights_find(w, "") == NULL);
    ASSERT_TRUE(fst_weights_find(w, "zzz") == NULL);
    fst_weights_close(w);
}

/* ---- safetensors headers ---- */

FST_TEST(safetensors_header_checks)
{
    fst_weights *w = NULL;
    /* good, with metadata, nested skip, unknown fields, escapes */
    size_t n;
    unsigned char *b = make_st("{\"__metadata__\":{\"a\":\"b\",\"x\":[1,{\"y\":null}]},"
                               "\"w\\u00e9\":{\"dtype\":\"F32\",\"shape\":[2],\"extra\":true,"
                               "\"data_offsets\":[0,8]}, \"s\":{\"dtype\":\"I64\",\"shape\":[],"
                               "\"data_offsets\":[8,16]}}   ", 16, &n);
    ASSERT_OK(fst_weights_open_mem(b, n, "ok.safetensors", &w));
    ASSERT_STREQ(fst_weights_format(w), "safetensors");
    ASSERT_EQ(fst_weights_count(w), 2);
    const fst_weights_tensor *t = fst_weights_find(w, "w\xc3\xa9");
    ASSERT_TRUE(t != NULL);
    ASSERT_EQ(t->numel, 2);
    ASSERT_MEMEQ(t->data, b + n - 16, 8);
    ASSERT_EQ((uintptr_t)t->data % 64, 0);
    ASSERT_EQ(fst_weights_find(w, "s")->ndim, 0);
    ASSERT_EQ(fst_weights_find(w, "s")->numel, 1);
    fst_weights_close(w);
    free(b);

    static const struct { const char *h; size_t data; const char *msg; } bad[] = {
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
         "needs elements 0..1 of its data_offsets, which has 1"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
         "float32 [1] needs 4 bytes, data_offsets give 8"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2,
         "starts at byte 1 of the data, expected 0"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
         "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[1,3]}}", 3,
         "overlap or leave a hole"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 2,
         "cover 1 bytes of data, the file has 2"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,9]}}", 2,
         "outside the 2 bytes of data"},
        {"{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
         "dtype F8_E4M3 is not supported"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, "lacks its dtype, shape or data_offsets"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
         "more than 8 dimensions"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,1]}}", 1,
         "expected an integer >= 0"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
         "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2,
         "tensor 'a' appears twice"},
        {"{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
         "holds a NUL byte"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}} x", 1,
         "bytes after the JSON object"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}", 1, "expected ',' or '}'"},
        {"{\"a\":[1,2]}", 0, "tensor 'a' is not an object"},
        {"{\"__metadata__\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
         "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}", 0,
         "nested too deeply"},
        {"{\"a\\ud800\":1}", 0, "lone surrogate"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[99999999999999999999],\"data_offsets\":[0,1]}}", 1,
         "integer too large"},
        {"{\"a\":{\"dtype\":\"I64\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,1]}}",
         1, "shape too large"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        w = NULL;
        fst_status s = open_st(bad[i].h, bad[i].data, &w);
        if (s != FST_EFORMAT || !strstr(fst_errdetail(), bad[i].msg))
            FST_TEST_FAIL_("case %zu: %s \"%s\", expected EFORMAT \"%s\"", i,
                           fst_status_name(s), fst_errdetail(), bad[i].msg);
        ASSERT_TRUE(w == NULL);
        ASSERT_CONTAINS(fst_errdetail(), "t.safetensors: ");
    }
    /* header longer than the file, and than safetensors allows */
    unsigned char hdr[9] = {0xff, 0xff, 0, 0, 0, 0, 0, 0, '{'};
    ASSERT_STATUS(fst_weights_open_mem(hdr, 9, "x.safetensors", &w), FST_EFORMAT);
    ASSERT_CONTAINS(fst_errdetail(), "header of 65535 bytes in a file of 9 (truncated?)");
    hdr[4] = 1;
    ASSERT_STATUS(fst_weights_open_mem(hdr, 9, "x.safetensors", &w), FST_EFORMAT);
    ASSERT_CONTAINS(fst_errdetail(), "(at most 104857600)");
}

/* ---- pickles: limits and malformed ---- */

/* Legacy-looking input: the first pickle is run as torch's magic number. */
static fst_status open_pickle(const char *bytes, size_t n)
{
    unsigned char *b = malloc(n);
    memcpy(b, bytes, n);
    fst_weights *w = NULL;
    fst_status s = fst_weights_open_mem(b, n, "p.pth", &w);
    fst_weights_close(w);
    free(b);
    return s;
}

FST_TEST(pickle_interpreter_limits_and_errors)
{
#define P(lit) lit, sizeof(lit) - 1   /* bytes and length (may hold NULs) */
    static const struct { const char *p; size_t n; const char *msg; } bad[] = {
        {P("\x80\x02"), "truncated pickle: no STOP"},
        {P("\x80\x06N."), "pickle protocol 6"},
        {P("\x80\x02r\xff\xff\xff\xff."), "stack"},                 /* put on empty stack */
        {P("\x80\x02Nr\xff\xff\xff\x7f."), "memo index too large"},
        {P("\x80\x02h\x05."), "memo get of an index never put"},
        {P("\x80\x02X\xff\xff\xff\xff"), "truncated string"},
        {P("\x80\x02\x8b\xff\xff\xff\xff"), "LONG4 of negative length"},
        {P("\x80\x02\x8a\x09\x01\x02"), "truncated long"},
        {P("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19" "."),
         "legacy pickle 2 (protocol version): truncated pickle"},   /* the magic alone */
        {P("\x80\x02t."), "no MARK"},
        {P("\x80\x02NN."), "STOP with a stack not holding exactly one value"},
        {P("\x80\x02" "0."), "stack underflow"},
        {P("\x80\x02(N(N}."), "STOP with a stack"},
        {P("\x80\x02\xff"), "unknown opcode 0xff"},
        {P("\x80\x02I1\n."), "refusing opcode INT"},
        {P("\x80\x02" "cos\nsystem"), "truncated GLOBAL"},
        {P("\x80\x02" "c\x01\x02\n\x7f\n."), "refusing global ??.?"},
        {P("\x80\x02" "ctorch._utils\n_rebuild_tensor_v2\n)R."),
         "_rebuild_tensor_v2 takes 6 or 7 arguments"},
        {P("\x80\x02" "N)R."), "refusing REDUCE of type None"},
        {P("\x80\x02" "ccollections\nOrderedDict\nK\x01\x85R."), "OrderedDict() with arguments"},
        {P("\x80\x02" "(X\x07\x00\x00\x00storageN)tQ."), "storage persistent id has not 5"},
        {P("\x80\x02" "X\x01\x00\x00\x00" "aQ."), "persistent id is not a tuple"},
        {P("\x80\x02" "}]u."), "no MARK"},
        {P("\x80\x02" "}(N."), "STOP with a stack"},
        {P("\x80\x02" "}(Nu."), "odd number"},
        {P("\x80\x02" "N\x93."), "stack underflow"},
        {P("\x80\x02" "NN\x93."), "STACK_GLOBAL of something else than strings"},
        {P("\x80\x02" "Na."), "stack underflow"},
        {P("\x80\x02" "NNa."), "APPEND to something else than a list"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        fst_status s = open_pickle(bad[i].p, bad[i].n);
        if (s != FST_EFORMAT || !strstr(fst_errdetail(), bad[i].msg))
            FST_TEST_FAIL_("case %zu: %s \"%s\", expected EFORMAT \"%s\"", i,
                           fst_status_name(s), fst_errdetail(), bad[i].msg);
        ASSERT_CONTAINS(fst_errdetail(), "p.pth: legacy pickle ");
    }
    /* a pickle that is fine but not torch's magic number */
    ASSERT_STATUS(open_pickle("\x80\x02K\x05.", 5), FST_EFORMAT);
    ASSERT_CONTAINS(fst_errdetail(), "not one torch.save wrote (no magic number)");

    /* deep nesting: a million MARKs is refused by the bound, not by memory */
    size_t n = 2 + (1u << 21) + 1;
    char *deep = malloc(n);
    deep[0] = '\x80';
    deep[1] = 2;
    memset(deep + 2, '(', n - 3);
    deep[n - 1] = '.';
    ASSERT_STATUS(open_pickle(deep, n), FST_EFORMAT);
    ASSERT_CONTAINS(fst_errdetail(), "too many MARKs");
    memset(deep + 2, 'N', n - 3);
    ASSERT_STATUS(open_pickle(deep, n), FST_EFORMAT);
    ASSERT_CONTAINS(fst_errdetail(), "stack too deep");
    free(deep);
}

/* ---- not weight files; I/O ---- */

FST_TEST(not_weight_files_and_io_errors)
{
    fst_weights *w = NULL;
    ASSERT_STATUS(fst_weights_open("/nonexistent/w.pth", &w), FST_EIO);
    ASSERT_CONTAINS(fst_errdetail(), "/nonexistent/w.pth: No such file or directory");
    ASSERT_STATUS(fst_weights_open("/", &w), FST_EIO);
    ASSERT_CONTAINS(fst_errdetail(), "not a regular file");
    ASSERT_STATUS(fst_weights_open_mem("", 0, "empty.pth", &w), FST_EFORMAT);
    ASSERT_CONTAINS(fst_errdetail(), "empty.pth: empty file");
    ASSERT_STATUS(fst_weights_open_mem("hello world\n", 12, "x.txt", &w), FST_EFORMAT);
    ASSERT_CONTAINS(fst_errdetail(), "x.txt: not a weight file");
    char tar[600] = {0};
    memcpy(tar + 257, "ustar", 5);
    ASSERT_STATUS(fst_weights_open_mem(tar, sizeof tar, "old.tar", &w), FST_EFORMAT);
    ASSERT_CONTAINS(fst_errdetail(), "tar format of PyTorch < 0.4");
    ASSERT_TRUE(w == NULL);
    fst_weights_close(NULL);
}

/* ---- zip: missing storage, CRC ---- */

static size_t find_bytes(const unsigned char *b, size_t n, const char *s, size_t from)
{
    size_t k = strlen(s);
    for (size_t i = from; i + k <= n; i++)
        if (!memcmp(b + i, s, k))
            return i;
    return SIZE_MAX;
}

FST_TEST(zip_missing_storage_and_crc_mismatch)
{
    size_t n;
    unsigned char *b = slurp(data_path("sd.pth"), &n);
    ASSERT_TRUE(b != NULL);
    fst_weights *w = NULL;
    /* rename entry sd/data/3 in its local header and the directory */
    size_t a = find_bytes(b, n, "sd/data/3", 0);
    ASSERT_NE(a, SIZE_MAX);
    size_t c = find_bytes(b, n, "sd/data/3", a + 1);
    ASSERT_NE(c, SIZE_MAX);
    b[a + 8] = b[c + 8] = 'X';
    ASSERT_STATUS(fst_weights_open_mem(b, n, "sd.pth", &w), FST_EFORMAT);
    ASSERT_CONTAINS(fst_errdetail(), "sd.pth: storage 'sd/data/3' is missing from the archive");
    b[a + 8] = b[c + 8] = '3';
    ASSERT_OK(fst_weights_open_mem(b, n, "sd.pth", &w));
    /* a byte of a storage: the CRC says so */
    const fst_weights_tensor *t = fst_weights_find(w, "final_proj.weight");
    size_t off = (size_t)((const unsigned char *)t->data - b);
    fst_weights_close(w);
    b[off] ^= 1;
    ASSERT_STATUS(fst_weights_open_mem(b, n, "sd.pth", &w), FST_ECORRUPT);
    ASSERT_CONTAINS(fst_errdetail(), "fails its CRC-32");
    b[off] ^= 1;
    /* a byte of data.pkl */
    size_t p = find_bytes(b, n, "final_proj.weight", 0);
    b[p] = 'F';
    ASSERT_STATUS(fst_weights_open_mem(b, n, "sd.pth", &w), FST_ECORRUPT);
    ASSERT_CONTAINS(fst_errdetail(), "sd.pth: sd/data.pkl fails its CRC-32");
    free(b);
}

FST_TEST(legacy_storage_size_mismatch)
{
    size_t n;
    unsigned char *b = slurp(data_path("params.pth"), &n);
    ASSERT_TRUE(b != NULL);
    fst_weights *w = NULL;
    ASSERT_OK(fst_weights_open_mem(b, n, "params.pth", &w));
    /* the first storage's count is the 8 bytes before its data */
    const fst_weights_tensor *t = fst_weights_at(w, 0);
    ASSERT_STREQ(t->name, "w");
    fst_weights_close(w);
    /* storages are copied (not 64-aligned in a legacy file): find the count
     * by value: 6 elements, little-endian, followed by the bytes */
    size_t at = SIZE_MAX;
    for (size_t i = 0; i + 8 <= n; i++)
        if (!memcmp(b + i, "\x06\0\0\0\0\0\0\0", 8)) {
            at = i;
            break;
        }
    ASSERT_NE(at, SIZE_MAX);
    b[at] = 7;
    ASSERT_STATUS(fst_weights_open_mem(b, n, "params.pth", &w), FST_EFORMAT);
    ASSERT_CONTAINS(fst_errdetail(), "holds 7 elements, the state_dict says 6");
    free(b);
}

/* ---- every truncation, every corrupt byte ---- */

static const char *const small_files[] = {
    "sd.pth", "sd_p4.pth", "sd_legacy.pth", "sd_legacy_p4.pth", "sd_zip64.pth",
    "sd.safetensors", "params.pth", "lightglue_old.pth",
};

/* Read every byte of every tensor (ASan checks each is inside memory). */
static unsigned touch_all(const fst_weights *w)
{
    unsigned sum = 0;
    for (size_t i = 0; i < fst_weights_count(w); i++) {
        const fst_weights_tensor *t = fst_weights_at(w, i);
        sum += (unsigned)strlen(t->name);
        for (size_t k = 0; k < t->nbytes; k++)
            sum += ((const unsigned char *)t->data)[k];
    }
    return sum;
}

FST_TEST(every_truncation_is_a_clean_error)
{
    for (size_t f = 0; f < sizeof small_files / sizeof small_files[0]; f++) {
        size_t n;
        unsigned char *full = slurp(data_path(small_files[f]), &n);
        ASSERT_TRUE(full != NULL);
        for (size_t len = 0; len < n; len++) {
            unsigned char *b = malloc(len ? len : 1);
            memcpy(b, full, len);
            fst_weights *w = NULL;
            fst_status s = fst_weights_open_mem(b, len, small_files[f], &w);
            if (s != FST_EFORMAT)
                FST_TEST_FAIL_("%s cut at %zu of %zu bytes: %s (%s)", small_files[f], len, n,
                               fst_status_name(s), fst_errdetail());
            ASSERT_TRUE(w == NULL);
            ASSERT_CONTAINS(fst_errdetail(), small_files[f]);
            free(b);
        }
        free(full);
    }
}

FST_TEST(every_corrupt_byte_is_an_error_or_a_valid_file)
{
    static const unsigned char with[] = {0x00, 0xff, 0x80, 0x7f};
    for (size_t f = 0; f < sizeof small_files / sizeof small_files[0]; f++) {
        size_t n;
        unsigned char *b = slurp(data_path(small_files[f]), &n);
        ASSERT_TRUE(b != NULL);
        int ok = 0, bad = 0;
        for (size_t i = 0; i < n; i++) {
            unsigned char keep = b[i];
            for (size_t k = 0; k < sizeof with; k++) {
                b[i] = keep ^ with[k] ? (unsigned char)(keep ^ with[k]) : (unsigned char)~keep;
                fst_weights *w = NULL;
                fst_status s = fst_weights_open_mem(b, n, small_files[f], &w);
                if (s == FST_OK) {
                    touch_all(w);
                    ok++;
                } else if (s == FST_EFORMAT || s == FST_ECORRUPT) {
                    ASSERT_TRUE(w == NULL);
                    bad++;
                } else {
                    FST_TEST_FAIL_("%s byte %zu: %s (%s)", small_files[f], i,
                                   fst_status_name(s), fst_errdetail());
                }
                fst_weights_close(w);
            }
            b[i] = keep;
        }
        printf("# %s: %zu bytes x %zu values: %d opened, %d refused\n", small_files[f], n,
               sizeof with, ok, bad);
        ASSERT_GT(bad, 0);
        free(b);
    }
}
