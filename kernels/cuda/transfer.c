/* kernels/cuda/transfer.c : host-to-device uploads of descriptors.
 *
 * Two paths, chosen by the transfer= parameter and to be settled by
 * measurement on a GPU (benchmarks/RESULTS.md):
 *   ring      copy the view's bytes into a pinned staging ring, then DMA;
 *             works for any host memory; costs one CPU memcpy per byte.
 *   register  register the store's file mapping with the device once
 *             (cudaHostRegisterReadOnly where the device supports it) and
 *             DMA straight from the map: no CPU copy, but it pins the whole
 *             mapped file in RAM, so it is used only for file mappings of at
 *             most half the physical memory; anything else, or a failed
 *             registration, falls back to the ring.
 */
#include "cuda_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- the ring ---------------------------------------------------------- */

static fst_status wait_oldest(fst_backend *be)
{
    fst_cuda *cu = be->impl;
    fst_status s = fst__cu_wait(be, cu->seg[cu->seg_first].ev, "ring upload");
    if (s != FST_OK)
        return s;
    cu->seg_first = (cu->seg_first + 1) % FST_CU_RING_SEGS;
    cu->nseg--;
    return FST_OK;
}

fst_status fst__cu_ring_idle(fst_backend *be)
{
    fst_cuda *cu = be->impl;
    while (cu->nseg > 0) {
        fst_status s = wait_oldest(be);
        if (s != FST_OK)
            return s;
    }
    return FST_OK;
}

/* Room for len (<= ring size) contiguous bytes: *off. Segments are freed in
 * the order they were taken, so the free space is [head, tail) or
 * [head, end) + [0, tail). */
static fst_status ring_reserve(fst_backend *be, size_t len, size_t *off)
{
    fst_cuda *cu = be->impl;
    for (;;) {
        if (cu->nseg == 0) {
            cu->ring_head = 0;
            *off = 0;
            return FST_OK;
        }
        if (cu->nseg < FST_CU_RING_SEGS) {
            size_t tail = cu->seg[cu->seg_first].off, head = cu->ring_head;
            if (head > tail) {
                if (cu->ring_bytes - head >= len) { *off = head; return FST_OK; }
                if (tail >= len) { *off = 0; return FST_OK; }
            } else if (head < tail && tail - head >= len) {
                *off = head;
                return FST_OK;
            }
            /* head == tail with segments in flight: the ring is full */
        }
        fst_status s = wait_oldest(be);
        if (s != FST_OK)
            return s;
    }
}

static fst_status ring_upload(fst_backend *be, unsigned char *dst,
                              const unsigned char *src, size_t bytes)
{
    fst_cuda *cu = be->impl;
    fst_status s = FST_OK;
    /* pieces of a quarter ring: the CPU fills one while the DMA drains
     * another */
    size_t piece = cu->ring_bytes / 4 ? cu->ring_bytes / 4 : cu->ring_bytes;
    for (size_t done = 0; done < bytes;) {
        size_t len = bytes - done < piece ? bytes - done : piece, off;
        FST_TRY(ring_reserve(be, len, &off));
        memcpy(cu->ring + off, src + done, len);
        unsigned k = (cu->seg_first + cu->nseg) % FST_CU_RING_SEGS;
        FST_CUDA_TRY(be, cudaMemcpyAsync(dst + done, cu->ring + off, len,
                                         cudaMemcpyHostToDevice, cu->copy));
        FST_CUDA_TRY(be, cudaEventRecord(cu->seg[k].ev, cu->copy));
        cu->seg[k].off = off;
        cu->seg[k].len = len;
        cu->nseg++;
        cu->ring_head = off + len;
        done += len;
    }
    cu->up_ring += bytes;
out:
    return s;
}

/* ---- registered maps --------------------------------------------------- */

/* The mapping of /proc/self/maps holding p: [*lo, *hi); *file says whether
 * it is a readable mapping of a regular file, and then *hi is clipped to
 * the file's end (registering pages beyond EOF would fault). false if p is
 * in no mapping at all. */
static bool find_mapping(uintptr_t p, uintptr_t *lo, uintptr_t *hi,
                         bool *file)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f)
        return false;
    char line[4096];
    bool found = false;
    while (fgets(line, sizeof line, f)) {
        unsigned long long a, b, offset;
        char perms[8];
        int pathpos = 0;
        if (sscanf(line, "%llx-%llx %7s %llx %*s %*s %n", &a, &b, perms,
                   &offset, &pathpos) < 4 || pathpos == 0)
            continue;
        if (p < a || p >= b)
            continue;
        char *path = line + pathpos;
        path[strcspn(path, "\n")] = '\0';
        struct stat st;
        found = true;
        *lo = a;
        *hi = b;
        *file = false;
        if (perms[0] == 'r' && path[0] == '/' && stat(path, &st) == 0 &&
            S_ISREG(st.st_mode) && (unsigned long long)st.st_size > offset) {
            long pg = sysconf(_SC_PAGESIZE);
            unsigned long long end = a + (st.st_size - offset);
            end = (end + pg - 1) / pg * pg;
            if (end < b)
                *hi = end;
            *file = true;
        }
        break;
    }
    fclose(f);
    return found;
}

static fst_cu_region *region_of(fst_cuda *cu, uintptr_t p, size_t len)
{
    for (size_t i = 0; i < cu->nregions; i++)
        if (p >= cu->regions[i].lo && p + len <= cu->regions[i].hi)
            return &cu->regions[i];
    return NULL;
}

static fst_cu_region *add_region(fst_cuda *cu, uintptr_t lo, uintptr_t hi,
                                 bool ok)
{
    if (cu->nregions == cu->cap_regions) {
        size_t n = cu->cap_regions ? 2 * cu->cap_regions : 8;
        fst_cu_region *r = realloc(cu->regions, n * sizeof *r);
        if (!r)
            return NULL;
        cu->regions = r;
        cu->cap_regions = n;
    }
    cu->regions[cu->nregions] = (fst_cu_region){ lo, hi, ok };
    return &cu->regions[cu->nregions++];
}

/* The registered region holding [p, p + len), registering its mapping on
 * first use; NULL: use the ring. */
static const fst_cu_region *registered(fst_cuda *cu, const void *src,
                                       size_t len)
{
    uintptr_t p = (uintptr_t)src, lo, hi;
    fst_cu_region *r = region_of(cu, p, len);
    if (r)
        return r->ok ? r : NULL;
    bool file = false;
    if (!find_mapping(p, &lo, &hi, &file))
        return NULL;                          /* not mapped?: ring */
    if (!file || p + len > hi) {
        /* heap or anonymous memory (hand-built views), or a view across
         * mappings: the ring; remember the mapping so as not to ask again */
        add_region(cu, lo, hi, false);
        cu->reg_fail++;
        return NULL;
    }
    long pages = sysconf(_SC_PHYS_PAGES), pg = sysconf(_SC_PAGESIZE);
    bool ok = false;
    if (pages > 0 && (hi - lo) / (uintptr_t)pg <= (uintptr_t)pages / 2) {
        unsigned flags = cudaHostRegisterPortable;
        if (cu->ro_register)
            flags |= cudaHostRegisterReadOnly;
        cudaError_t e = cudaHostRegister((void *)lo, hi - lo, flags);
        ok = e == cudaSuccess;
        if (!ok)
            (void)cudaGetLastError();     /* not sticky: clear it, use ring */
    }
    if (!ok)
        cu->reg_fail++;
    r = add_region(cu, lo, hi, ok);
    if (!r && ok) {
        (void)cudaHostUnregister((void *)lo);
        return NULL;
    }
    return r && r->ok ? r : NULL;
}

void fst__cu_unregister_all(fst_cuda *cu)
{
    for (size_t i = 0; i < cu->nregions; i++)
        if (cu->regions[i].ok)
            (void)cudaHostUnregister((void *)cu->regions[i].lo);
    free(cu->regions);
    cu->regions = NULL;
    cu->nregions = cu->cap_regions = 0;
}

fst_status fst__cu_upload(fst_backend *be, void *dst, const void *src,
                          size_t bytes)
{
    fst_cuda *cu = be->impl;
    fst_status s = FST_OK;
    if (bytes == 0)
        return FST_OK;
    if (cu->prm.transfer == FST_CU_XFER_REGISTER && registered(cu, src, bytes)) {
        FST_CUDA_TRY(be, cudaMemcpyAsync(dst, src, bytes,
                                         cudaMemcpyHostToDevice, cu->copy));
        cu->up_reg += bytes;
        return FST_OK;
    }
    return ring_upload(be, dst, src, bytes);
out:
    return s;
}
