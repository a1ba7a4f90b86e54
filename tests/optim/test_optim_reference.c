/*
 * test_optim_reference.c - AdamW, gradient clipping and the LR schedules against what torch and
 * transformers compute, read from tests/fixtures/optim/optim_reference.json (written by
 * tests/reference/optim_reference.py; torch is needed only to regenerate it).
 *
 * Built twice: against the fp32 core (checks the fp32 AdamW cases) and the fp64 core (checks the
 * fp64 ones); clipping, schedules and warmup are checked in both.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "optim/adamw.h"
#include "optim/lr_schedule.h"
#include "test_util.h"

#ifdef PAFT_REAL_DOUBLE
#define REAL_RTOL 1e-12  // torch fp64 vs C double: a few ulp apart at most
#else
#define REAL_RTOL 1e-6  // torch fp32 vs C float: the order of a few operations differs
#endif

static cJSON *child(const cJSON *obj, const char *key) {
    cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!item) PAFT_FATAL("optim_reference.json: missing key \"%s\"", key);
    return item;
}

static double number(const cJSON *obj, const char *key) {
    cJSON *item = child(obj, key);
    if (!cJSON_IsNumber(item)) PAFT_FATAL("optim_reference.json: \"%s\" is not a number", key);
    return item->valuedouble;
}

/* Copy a JSON array of numbers into a new buffer of `real`; its length in *n. */
static real *real_array(const cJSON *arr, size_t *n) {
    if (!cJSON_IsArray(arr)) PAFT_FATAL("optim_reference.json: expected an array of numbers");
    size_t len = (size_t)cJSON_GetArraySize(arr);
    real *out = paft_malloc((len ? len : 1) * sizeof(real));
    size_t i = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, arr) out[i++] = (real)item->valuedouble;
    *n = len;
    return out;
}

/* |a - b| <= rtol * max|b| per element (scale-aware: an element near 0 is judged against the
 * size of its neighbours, as a learned-parameter buffer would be). */
static void check_array(const real *got, const cJSON *expected, double rtol, const char *what) {
    size_t n;
    real *want = real_array(expected, &n);
    double scale = 0, worst = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs((double)want[i]));
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)got[i] - (double)want[i]));
    CHECK(worst <= rtol * scale, "%s: max |C - torch| = %g, scale %g", what, worst, scale);
    free(want);
}

static void test_adamw(const cJSON *cases) {
    const cJSON *c;
    int checked = 0;
    cJSON_ArrayForEach(c, cases) {
        const char *dtype = child(c, "dtype")->valuestring;
        if (strcmp(dtype, PAFT_REAL_NAME) != 0) continue;  // the other build checks this case
        checked++;
        const char *name = child(c, "name")->valuestring;
        AdamWHyper hyper = {.beta1 = number(c, "beta1"), .beta2 = number(c, "beta2"),
                            .eps = number(c, "eps"), .weight_decay = number(c, "weight_decay")};
        const double max_norm = number(c, "max_norm");
        size_t n, n_lr;
        real *params = real_array(child(c, "params0"), &n);
        real *lrs = real_array(child(c, "lr"), &n_lr);
        const cJSON *grads = child(c, "grads"), *after = child(c, "params_after");
        const cJSON *norms = child(c, "grad_norms");
        // the same run twice: through AdamW (fused clip scale) and through the bare kernel on
        // explicitly clipped gradients, which must agree
        AdamW opt;
        adamw_init(&opt, n, hyper);
        real *params2 = paft_malloc(n * sizeof(real));
        memcpy(params2, params, n * sizeof(real));
        real *m2 = paft_calloc(n, sizeof(real)), *v2 = paft_calloc(n, sizeof(real));
        for (int s = 0; s < cJSON_GetArraySize(grads); s++) {
            size_t ng;
            real *g = real_array(cJSON_GetArrayItem(grads, s), &ng);
            real scale = 1;
            if (max_norm > 0) {
                double norm = grad_global_norm(g, ng);
                CHECK_CLOSE(norm, cJSON_GetArrayItem(norms, s)->valuedouble, REAL_RTOL, 0,
                            "grad norm before clipping");
                scale = (real)clip_coefficient(norm, max_norm);
            }
            adamw_step(&opt, params, g, (double)lrs[s], scale);
            char what[128];
            snprintf(what, sizeof what, "%s: params after step %d", name, s + 1);
            check_array(params, cJSON_GetArrayItem(after, s), REAL_RTOL, what);

            grad_scale_inplace(g, ng, scale);
            adamw_update(params2, g, m2, v2, n, s + 1, (double)lrs[s], &hyper, 1);
            int same = memcmp(params, params2, n * sizeof(real)) == 0;
            CHECK(same, "%s: fused clip scale and explicit clipping agree bitwise", name);
            free(g);
        }
        CHECK(opt.step == (int64_t)number(c, "step"), "%s: step count", name);
        check_array(opt.m, child(c, "exp_avg"), REAL_RTOL, "exp_avg");
        check_array(opt.v, child(c, "exp_avg_sq"), REAL_RTOL, "exp_avg_sq");
        adamw_free(&opt);
        free(params), free(params2), free(lrs), free(m2), free(v2);
    }
    CHECK(checked >= 1, "the fixture has AdamW cases for %s", PAFT_REAL_NAME);
}

static void test_clip(const cJSON *cases) {
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        size_t n;
        real *g = real_array(child(c, "grads"), &n);
        double norm = grad_global_norm(g, n);
        CHECK_CLOSE(norm, number(c, "norm"), REAL_RTOL, 0, "clip_grad_norm_ total norm");
        // the norm of a split buffer from partial sums, as ranks would all-reduce them
        double partial = grad_sum_squares(g, n / 3) + grad_sum_squares(g + n / 3, n - n / 3);
        CHECK_CLOSE(sqrt(partial), norm, 1e-14, 0, "sum of partial square sums");
        double coef = clip_coefficient(norm, number(c, "max_norm"));
        CHECK_CLOSE(coef, number(c, "coef"), REAL_RTOL, 0, "clip coefficient");
        grad_scale_inplace(g, n, (real)coef);
        check_array(g, child(c, "clipped"), REAL_RTOL, "clipped gradients");
        free(g);
    }
    CHECK(clip_coefficient(10.0, 0.0) == 1.0, "max_norm 0 turns clipping off");
    CHECK(clip_coefficient(0.0, 1.0) == 1.0, "zero gradient: coefficient clamped to 1");
}

static void test_schedules(const cJSON *cases) {
    const cJSON *c;
    int n_cases = 0;
    cJSON_ArrayForEach(c, cases) {
        const char *kind_name = child(c, "kind")->valuestring;
        LrScheduleKind kind = lr_schedule_from_name(kind_name);
        CHECK(kind != LR_SCHEDULE_INVALID, "schedule kind %s", kind_name);
        long warmup = (long)number(c, "warmup"), total = (long)number(c, "total");
        const cJSON *mult = child(c, "multipliers");
        double worst = 0;
        for (int s = 0; s < cJSON_GetArraySize(mult); s++)
            worst = fmax(worst, fabs(lr_multiplier(kind, s, warmup, total) -
                                     cJSON_GetArrayItem(mult, s)->valuedouble));
        CHECK(worst <= 1e-15, "%s warmup %ld total %ld: max |C - transformers| = %g", kind_name,
              warmup, total, worst);
        n_cases++;
    }
    CHECK(n_cases >= 9, "schedule cases: %d", n_cases);
}

static void test_warmup(const cJSON *cases) {
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        double frac = number(c, "fraction");
        int total = (int)number(c, "total"), want = (int)number(c, "steps");
        int got = warmup_steps_from_fraction(frac, total);
        CHECK(got == want, "warmup %g of %d: got %d, transformers %d", frac, total, got, want);
    }
}

int main(void) {
    const char *dir = getenv("PAFT_FIXTURES");
    if (!dir) PAFT_FATAL("PAFT_FIXTURES is not set (run the test through ctest)");
    char path[4096];
    snprintf(path, sizeof path, "%s/optim/optim_reference.json", dir);
    size_t len;
    char *text = paft_read_text_file(path, 1 << 20, &len);
    cJSON *root = cJSON_Parse(text);
    if (!root) PAFT_FATAL("%s: not valid JSON", path);
    test_adamw(child(root, "adamw"));
    test_clip(child(root, "clip"));
    test_schedules(child(root, "schedules"));
    test_warmup(child(root, "warmup"));
    cJSON_Delete(root);
    free(text);
    return test_finish("test_optim_reference (" PAFT_REAL_NAME ")");
}
