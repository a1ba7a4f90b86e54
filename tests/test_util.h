/*
 * test_util.h - the few assertion helpers the C tests share. Every check prints a line when it
 * fails; test_finish() prints "N passed, N failed" and returns the exit status for main().
 */
#ifndef PAFT_TEST_UTIL_H
#define PAFT_TEST_UTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct {
    int passed;
    int failed;
} TestCounts;

static TestCounts test_counts_;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (cond) {                                                                                \
            test_counts_.passed++;                                                                 \
        } else {                                                                                   \
            test_counts_.failed++;                                                                 \
            printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                                 \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
        }                                                                                          \
    } while (0)

/* |a - b| <= atol + rtol * |b| */
#define CHECK_CLOSE(a, b, rtol, atol, what)                                                        \
    do {                                                                                           \
        double ca_ = (double)(a), cb_ = (double)(b);                                               \
        CHECK(fabs(ca_ - cb_) <= (atol) + (rtol)*fabs(cb_), "%s: got %.9g expected %.9g", (what),  \
              ca_, cb_);                                                                           \
    } while (0)

/* Largest |a-b| over the arrays divided by the largest |b| (a scale-aware relative error). */
static inline double max_rel_error(const float *a, const float *b, size_t n) {
    double max_diff = 0, max_ref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > max_diff || isnan(d)) max_diff = isnan(d) ? INFINITY : d;
        if (fabs((double)b[i]) > max_ref) max_ref = fabs((double)b[i]);
    }
    return max_ref > 0 ? max_diff / max_ref : max_diff;
}

static inline int test_finish(const char *name) {
    printf("%s: %d passed, %d failed\n", name, test_counts_.passed, test_counts_.failed);
    return test_counts_.failed == 0 && test_counts_.passed > 0 ? 0 : 1;
}

#endif
