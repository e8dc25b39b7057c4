/* journal_fixtures.h : journal records for tests (test_journal.c,
 * test_workers.c). Include after fst_test.h. */
#ifndef FST_JOURNAL_FIXTURES_H
#define FST_JOURNAL_FIXTURES_H

#include "fst_journal.h"

/* A record of pair (a, b) with n0 keypoints: every third unmatched, the
 * others matched to 2i with score 0.5 + i/1000; m and s hold n0 each. */
static inline fst_journal_rec rec_of(const char *a, const char *b, uint32_t n0, int16_t *m, uint16_t *s)
{
    uint32_t nm = 0;
    for (uint32_t i = 0; i < n0; i++) {
        m[i] = (int16_t)(i % 3 == 0 ? -1 : (int)(i * 2));
        s[i] = fst_f32_to_f16(m[i] < 0 ? 0.0f : 0.5f + (float)i / 1000.0f);
        nm += m[i] >= 0;
    }
    fst_journal_rec r = {.name0 = a, .name1 = b, .n0 = n0, .nmatches = nm, .index_size = 2,
                         .matches0 = m, .scores0 = s};
    return r;
}

#endif
