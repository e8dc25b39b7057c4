/* export.c : a store back into hloc's features.h5 layout (fst_export_h5).
 *
 * Each record becomes a group named by the image (nested at '/'), with the
 * datasets under the names and dtypes the source had (the record's flags
 * say which): keypoints (N, 2) with its `uncertainty` attribute,
 * descriptors (D, N), scores or keypoint_scores (N,), scales and oris (N,)
 * (DoG, format 1.2), image_size (2,).
 * One record in memory at a time; written to `<dest>.tmp-<pid>` and renamed.
 */
#include "loader_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct exporter {
    const char *dest;
    hid_t       f16;             /* float16 type (file and memory) */
    hid_t       lcpl;            /* creates intermediate groups */
    void       *desc;  size_t desccap;   /* D x N */
    uint16_t   *h16;   size_t h16cap;    /* keypoints/scores as float16 */
} exporter;


/* Write float32 data as float32, or back as the float16 it came from
 * (float16 -> float32 -> float16 is exact). */
static fst_status write_floats(exporter *ex, hid_t g, const char *name, int as_f16,
                               int rank, const hsize_t *dims, const float *v,
                               size_t n, const char *where, hid_t *out_id)
{
    fst_status s;
    if (!as_f16)
        return fst__h5_write(g, name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, rank, dims, v,
                             where, out_id);
    FST_TRY(fst__grow((void **)&ex->h16, &ex->h16cap, n * sizeof(uint16_t), where));
    for (size_t i = 0; i < n; i++)
        ex->h16[i] = fst_f32_to_f16(v[i]);
    FST_TRY(fst__h5_write(g, name, ex->f16, ex->f16, rank, dims, ex->h16, where, out_id));
out:
    return s;
}

static hid_t open_or_create_group(exporter *ex, hid_t file, const char *name)
{
    /* Records come in key order, so "a" may come after "a/b" created "a"
     * as an intermediate group: then open it. */
    hid_t g = H5Gcreate2(file, name, ex->lcpl, H5P_DEFAULT, H5P_DEFAULT);
    if (g >= 0)
        return g;
    fst__h5_clear();
    return H5Gopen2(file, name, H5P_DEFAULT);
}

static fst_status write_image(exporter *ex, hid_t file, const fst_view *v)
{
    fst_status s = FST_OK;
    char where[1200];
    hid_t kp = H5I_INVALID_HID;
    hid_t g = open_or_create_group(ex, file, v->name);
    if (g < 0)
        return fst__h5_fail(FST_EIO, "%s: /%s: cannot create group", ex->dest, v->name);

    /* keypoints (N, 2) and their uncertainty */
    hsize_t kdims[2] = {v->n, 2};
    snprintf(where, sizeof where, "%s: /%s/keypoints", ex->dest, v->name);
    FST_TRY(write_floats(ex, g, "keypoints", (v->flags & FST_VIEW_KEYPOINTS_F16) != 0, 2,
                         kdims, v->keypoints, (size_t)v->n * 2, where, &kp));
    if (v->flags & FST_VIEW_HAS_UNCERTAINTY) {
        if (v->flags & FST_VIEW_UNCERTAINTY_F64) {
            double u = v->uncertainty;
            FST_TRY(fst__h5_attr_write_scalar(kp, "uncertainty", H5T_IEEE_F64LE,
                                              H5T_NATIVE_DOUBLE, &u, where));
        } else {
            float u = v->uncertainty;
            FST_TRY(fst__h5_attr_write_scalar(kp, "uncertainty", H5T_IEEE_F32LE,
                                              H5T_NATIVE_FLOAT, &u, where));
        }
    }

    /* descriptors (D, N) */
    snprintf(where, sizeof where, "%s: /%s/descriptors", ex->dest, v->name);
    size_t es = fst_dtype_size(v->dtype);
    size_t nel = (size_t)v->n * v->d;
    FST_TRY(fst__grow(&ex->desc, &ex->desccap, nel * es, where));
    if (v->dtype == FST_DTYPE_F16)
        fst__transpose16(v->desc, ex->desc, v->n, v->d);
    else
        fst__transpose32(v->desc, ex->desc, v->n, v->d);
    hsize_t ddims[2] = {v->d, v->n};
    hid_t dt = v->dtype == FST_DTYPE_F16 ? ex->f16 : H5T_IEEE_F32LE;
    hid_t mt = v->dtype == FST_DTYPE_F16 ? ex->f16 : H5T_NATIVE_FLOAT;
    FST_TRY(fst__h5_write(g, "descriptors", dt, mt, 2, ddims, ex->desc, where, NULL));

    /* scores or keypoint_scores (N,) */
    if ((v->flags & FST_VIEW_HAS_SCORES) && v->scores) {
        const char *sn = (v->flags & FST_VIEW_SCORES_KEYPOINT) ? "keypoint_scores" : "scores";
        hsize_t sdims[1] = {v->n};
        snprintf(where, sizeof where, "%s: /%s/%s", ex->dest, v->name, sn);
        FST_TRY(write_floats(ex, g, sn, (v->flags & FST_VIEW_SCORES_F16) != 0, 1, sdims,
                             v->scores, v->n, where, NULL));
    }

    /* scales and oris (N,), in the dtype the source had */
    if (v->scales) {
        hsize_t sdims[1] = {v->n};
        snprintf(where, sizeof where, "%s: /%s/scales", ex->dest, v->name);
        FST_TRY(write_floats(ex, g, "scales", (v->flags & FST_VIEW_SCALES_F16) != 0, 1,
                             sdims, v->scales, v->n, where, NULL));
    }
    if (v->oris) {
        hsize_t odims[1] = {v->n};
        snprintf(where, sizeof where, "%s: /%s/oris", ex->dest, v->name);
        FST_TRY(write_floats(ex, g, "oris", (v->flags & FST_VIEW_ORIS_F16) != 0, 1,
                             odims, v->oris, v->n, where, NULL));
    }

    /* image_size (2,) int64 */
    if (v->flags & FST_VIEW_HAS_IMAGE_SIZE) {
        hsize_t idims[1] = {2};
        snprintf(where, sizeof where, "%s: /%s/image_size", ex->dest, v->name);
        FST_TRY(fst__h5_write(g, "image_size", H5T_STD_I64LE, H5T_NATIVE_INT64, 1, idims,
                              v->image_size, where, NULL));
    }
out:
    if (kp >= 0)
        H5Dclose(kp);
    H5Gclose(g);
    return s;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static fst_status export_direct(fst_store *st, const char *dest,
                               fst_progress_cb *progress, void *progress_ctx)
{
    fst__h5_quiet q;
    fst__h5_quiet_begin(&q);
    fst_status s;
    exporter ex = {.dest = dest, .f16 = H5I_INVALID_HID, .lcpl = H5I_INVALID_HID};
    fst__out out = {.h5 = H5I_INVALID_HID};
    fst_reader *rd = NULL;
    fst_store_meta meta;

    FST_TRY(fst_store_meta_get(st, &meta));
    FST_TRY(fst__out_h5(dest, &out));
    ex.f16 = fst__h5_f16_create();
    ex.lcpl = H5Pcreate(H5P_LINK_CREATE);
    if (ex.f16 < 0 || ex.lcpl < 0 || H5Pset_create_intermediate_group(ex.lcpl, 1) < 0) {
        s = fst__h5_fail(FST_ENOMEM, "%s: setting up HDF5 types", dest);
        goto out;
    }
    FST_TRY(fst_reader_begin(st, &rd));
    uint64_t done = 0, bytes = 0;
    double last = now_s();
    for (;;) {
        fst_view v;
        s = fst_reader_next(rd, &v);
        if (s == FST_DONE)
            break;
        if (s)
            goto out;
        FST_TRY(write_image(&ex, out.h5, &v));
        done++;
        bytes += (uint64_t)v.n * (8 + (v.scores ? 4 : 0) + (v.scales ? 4 : 0) +
                                  (v.oris ? 4 : 0) + v.d * fst_dtype_size(v.dtype));
        double t = now_s();
        if (progress && t - last >= 0.2) {
            last = t;
            if (progress(done, meta.n_images, bytes, progress_ctx)) {
                s = fst__fail(FST_EINTR, "%s: export interrupted", dest);
                goto out;
            }
        }
    }
    fst_reader_end(rd);
    rd = NULL;
    FST_TRY(fst__out_commit(&out));
    if (progress)
        progress(done, done, bytes, progress_ctx);
out:
    fst_reader_end(rd);
    fst__out_discard(&out);
    if (ex.f16 >= 0)
        H5Tclose(ex.f16);
    if (ex.lcpl >= 0)
        H5Pclose(ex.lcpl);
    fst__h5_clear();
    fst__h5_quiet_end(&q);
    free(ex.desc);
    free(ex.h16);
    return s;
}

typedef struct export_job {
    const char      *store_path, *dest;
    unsigned         flags;          /* FST_OPEN_NOLOCK as the parent's */
    fst_progress_cb *progress;
    void            *progress_ctx;
} export_job;

/* In the child: its own store handle (LMDB's does not survive fork). */
static fst_status export_child(void *ctx, void *result)
{
    (void)result;
    const export_job *j = ctx;
    fst_store *st = NULL;
    /* checksums on: an export must not pass corruption on silently */
    fst_status s = fst_store_open(j->store_path, FST_OPEN_CHECKSUMS | j->flags, &st);
    if (s == FST_OK)
        s = export_direct(st, j->dest, j->progress, j->progress_ctx);
    fst_store_close(st);
    return s;
}

fst_status fst_export_h5(fst_store *st, const char *dest,
                         fst_progress_cb *progress, void *progress_ctx)
{
    if (!st || !dest)
        return fst__fail(FST_EINVAL, "fst_export_h5: NULL argument");
    /* HDF5 1.10 crashes in its exit handler after a failed H5Fclose (a
     * full disk at close): write in a child process that ends with _exit,
     * so a failed export is a clean error in this one. */
    export_job j = {fst_store_path(st), dest,
                    fst_store_nolock(st) ? FST_OPEN_NOLOCK : 0u, progress,
                    progress_ctx};
    char what[64 + 4096];
    snprintf(what, sizeof what, "exporting to %s", dest);
    fst_status s = fst__in_child(export_child, &j, NULL, 0, what);
    /* the temporary file of a child that died before removing it */
    fst__remove_stale(dest, ".tmp-", (const char *const[]){"", NULL}, false);
    return s;
}
