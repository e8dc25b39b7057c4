/* fuzz_pairs.c : hloc pairs-file parser, fst_pairs_parse_mem(), on
 * arbitrary bytes.
 *
 * Invariants on success: every pair's indices name existing names; names
 * are non-empty, NUL-terminated, without blanks; no pair appears twice in
 * either orientation; the counts add up (unique + duplicates + reversed =
 * lines); pair keys (hloc's names_to_pair) are consistent with
 * snprintf-style sizing. Like hloc (issue 10, item 4): every line of
 * exactly two blank-separated fields is a pair line, '#' or not; the only
 * lines skipped are blank ones and '#' lines of one or 3+ fields (counted
 * as comments); a UTF-8 BOM is dropped only at the very start. On failure:
 * FST_EFORMAT or FST_ENOMEM with a detail naming the line. */
#include "fuzz_util.h"

#include "fst_worker.h"

#include <inttypes.h>

static bool blank(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* Lines of the text as hloc splits them: (two-field lines, '#' lines of
 * other field counts). Counted here independently of the parser. */
static void count_lines(const uint8_t *d, size_t n, uint64_t *two, uint64_t *hash_other)
{
    *two = *hash_other = 0;
    if (n >= 3 && d[0] == 0xEF && d[1] == 0xBB && d[2] == 0xBF) {
        d += 3;
        n -= 3;
    }
    size_t i = 0;
    while (i < n) {
        int nf = 0;
        bool in = false, first = true, hash = false;
        for (; i < n && d[i] != '\n'; i++) {
            if (blank(d[i])) {
                in = false;
            } else {
                if (!in) nf++;
                if (first) hash = d[i] == '#';
                in = true;
                first = false;
            }
        }
        i++;                               /* past the '\n' */
        if (nf == 2) (*two)++;
        else if (nf && hash) (*hash_other)++;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fst_pairs *p = NULL;
    /* an exact-size copy: the parser must not read past `size` (no NUL) */
    char *text = malloc(size ? size : 1);
    FUZZ_CHECK(text != NULL);
    memcpy(text, data, size);
    fst_status s = fst_pairs_parse_mem(text, size, "fuzz.txt", &p);
    free(text);
    if (s != FST_OK) {
        FUZZ_CHECK(s == FST_EFORMAT || s == FST_ENOMEM || s == FST_EINVAL);
        FUZZ_CHECK(p == NULL);
        FUZZ_CHECK(strncmp(fst_errdetail(), "fuzz.txt", 8) == 0);
        return 0;
    }
    FUZZ_CHECK(p != NULL);
    size_t np = fst_pairs_count(p), nn = fst_pairs_nnames(p);
    const fst_pairs_info *info = fst_pairs_stats(p);
    FUZZ_CHECK(np + info->duplicates + info->reversed == info->lines);
    uint64_t two, hash_other;
    count_lines(data, size, &two, &hash_other);
    FUZZ_CHECK(info->lines == two);          /* no line hloc matches is skipped */
    FUZZ_CHECK(info->comments == hash_other);
    FUZZ_CHECK(info->bom == (size >= 3 && !memcmp(data, "\xEF\xBB\xBF", 3)));
    FUZZ_CHECK(nn <= 2 * np);
    for (size_t i = 0; i < nn; i++) {
        const char *n = fst_pairs_name(p, (uint32_t)i);
        FUZZ_CHECK(n && n[0]);
        FUZZ_CHECK(!strpbrk(n, " \t\n"));
    }
    /* no pair twice in either orientation: sort-free check with a small
     * open-addressing set of (i0, i1) */
    size_t cap = 16;
    while (cap < 4 * np + 16)
        cap *= 2;
    uint64_t *set = calloc(cap, sizeof *set);
    FUZZ_CHECK(set != NULL);
    uint64_t self = 0;
    for (size_t i = 0; i < np; i++) {
        fst_pair pr = fst_pairs_get(p, i);
        FUZZ_CHECK(pr.i0 < nn && pr.i1 < nn);
        self += pr.i0 == pr.i1;
        uint32_t lo = pr.i0 < pr.i1 ? pr.i0 : pr.i1;
        uint32_t hi = pr.i0 < pr.i1 ? pr.i1 : pr.i0;
        uint64_t k = ((uint64_t)lo << 32 | hi) + 1;
        size_t h = (size_t)((k * 0x9e3779b97f4a7c15u) >> 20) & (cap - 1);
        while (set[h]) {
            FUZZ_CHECK(set[h] != k);
            h = (h + 1) & (cap - 1);
        }
        set[h] = k;
        /* the pair key, sized as snprintf does */
        const char *a = fst_pairs_name(p, pr.i0), *b = fst_pairs_name(p, pr.i1);
        size_t need = fst_pair_key(a, b, '/', NULL, 0);
        FUZZ_CHECK(need == strlen(a) + strlen(b) + 1);
        char *key = malloc(need + 1);
        FUZZ_CHECK(key != NULL);
        FUZZ_CHECK(fst_pair_key(a, b, '/', key, need + 1) == need);
        FUZZ_CHECK(strlen(key) == need);
        FUZZ_CHECK(fst_pair_key(a, b, '_', key, need) == need);  /* cut */
        FUZZ_CHECK(strlen(key) == need - 1);
        free(key);
    }
    FUZZ_CHECK(self == info->self_pairs);
    free(set);
    fst_pairs_free(p);
    return 0;
}
