/*
 * test_optim.c - AdamW and the LR schedules on hand-derived values (the torch comparison is in
 * test_optim_reference.c). With an argument, runs one invalid call that must fail clearly.
 */
#include <math.h>
#include <string.h>

#include "optim/adamw.h"
#include "optim/lr_schedule.h"
#include "test_util.h"

/* After the first step m_hat = g and v_hat = g^2, so each parameter moves by
 * lr * g / (|g| + eps): about lr against the sign of its gradient, whatever the gradient's size. */
static void test_adamw_first_step(void) {
    real p[4] = {1, -2, 0.5, 3};
    const real g[4] = {0.001f, -100, 4, 0};
    const real p0[4] = {1, -2, 0.5, 3};
    AdamW opt;
    adamw_init(&opt, 4, adamw_default_hyper());
    adamw_step(&opt, p, g, 0.01, 1);
    for (int i = 0; i < 4; i++) {
        double expected = p0[i] - 0.01 * g[i] / (fabs(g[i]) + 1e-8);
        CHECK_CLOSE(p[i], expected, 1e-6, 0, "first AdamW step");
    }
    CHECK(p[3] == 3, "zero gradient, no decay: parameter unchanged");
    CHECK(opt.step == 1, "step counted");
    // second step with the same gradient: m_hat = g, v_hat = g^2 again, same move
    adamw_step(&opt, p, g, 0.01, 1);
    for (int i = 0; i < 3; i++)
        CHECK_CLOSE(p[i], p0[i] - 2 * 0.01 * g[i] / (fabs(g[i]) + 1e-8), 1e-6, 0,
                    "constant gradient: equal moves");
    adamw_free(&opt);
}

/* Decoupled weight decay acts on the parameter, not through the moments: with a zero gradient
 * the update is exactly p * (1 - lr * wd). */
static void test_weight_decay(void) {
    AdamWHyper hyper = adamw_default_hyper();
    hyper.weight_decay = 0.1;
    real p[2] = {2, -4};
    const real g[2] = {0, 0};
    real m[2] = {0, 0}, v[2] = {0, 0};
    adamw_update(p, g, m, v, 2, 1, 0.5, &hyper, 1);
    CHECK_CLOSE(p[0], 2 * 0.95, 1e-7, 0, "decay");
    CHECK_CLOSE(p[1], -4 * 0.95, 1e-7, 0, "decay negative");
    CHECK(m[0] == 0 && v[0] == 0, "moments untouched by the decay");
}

/* grad_scale multiplies the gradient before it enters the moments (clipping), and a scale
 * applied to every gradient of a first step changes nothing (Adam is scale invariant then). */
static void test_grad_scale(void) {
    real p1[3] = {1, 2, 3}, p2[3] = {1, 2, 3};
    const real g[3] = {0.5f, -0.25f, 2};
    real m1[3] = {0}, v1[3] = {0}, m2[3] = {0}, v2[3] = {0};
    AdamWHyper hyper = adamw_default_hyper();
    adamw_update(p1, g, m1, v1, 3, 1, 1e-3, &hyper, 0.5f);
    const real half[3] = {0.25f, -0.125f, 1};
    adamw_update(p2, half, m2, v2, 3, 1, 1e-3, &hyper, 1);
    CHECK(memcmp(p1, p2, sizeof p1) == 0 && memcmp(m1, m2, sizeof m1) == 0 &&
              memcmp(v1, v2, sizeof v1) == 0,
          "grad_scale 0.5 equals halved gradients");
    CHECK_CLOSE(m1[0], 0.1 * 0.25, 1e-7, 0, "m = (1 - beta1) g");
    CHECK_CLOSE(v1[0], 0.001 * 0.0625, 1e-7, 0, "v = (1 - beta2) g^2");
}

static void test_norms(void) {
    const real g[2] = {3, 4};
    CHECK(grad_sum_squares(g, 2) == 25, "3^2 + 4^2");
    CHECK(grad_global_norm(g, 2) == 5, "norm");
    CHECK_CLOSE(clip_coefficient(4, 1), 1 / (4 + 1e-6), 1e-15, 0, "clip coefficient");
    CHECK(clip_coefficient(0.5, 1) == 1, "below max_norm: no clipping");
    CHECK(clip_coefficient(1e9, -1) == 1, "max_norm < 0: clipping off");
}

static void test_schedules(void) {
    CHECK(lr_schedule_from_name("cosine") == LR_SCHEDULE_COSINE, "cosine");
    CHECK(lr_schedule_from_name("linear") == LR_SCHEDULE_LINEAR, "linear");
    CHECK(lr_schedule_from_name("constant") == LR_SCHEDULE_CONSTANT, "constant");
    CHECK(lr_schedule_from_name("cos") == LR_SCHEDULE_INVALID, "unknown name");
    CHECK(strcmp(lr_schedule_name(LR_SCHEDULE_LINEAR), "linear") == 0, "name");
    // warmup 2, total 10: 0, 1/2, then decay over 8 steps
    CHECK(lr_multiplier(LR_SCHEDULE_COSINE, 0, 2, 10) == 0, "first step of a warmup has lr 0");
    CHECK(lr_multiplier(LR_SCHEDULE_COSINE, 1, 2, 10) == 0.5, "warmup half way");
    CHECK(lr_multiplier(LR_SCHEDULE_COSINE, 2, 2, 10) == 1, "peak");
    CHECK_CLOSE(lr_multiplier(LR_SCHEDULE_COSINE, 6, 2, 10), 0.5, 1e-15, 1e-15, "cosine mid");
    CHECK_CLOSE(lr_multiplier(LR_SCHEDULE_COSINE, 4, 2, 10), 0.5 * (1 + cos(M_PI / 4)), 1e-15, 0,
                "cosine quarter");
    CHECK(lr_multiplier(LR_SCHEDULE_COSINE, 10, 2, 10) < 1e-15, "cosine end ~ 0");
    CHECK(lr_multiplier(LR_SCHEDULE_LINEAR, 6, 2, 10) == 0.5, "linear mid");
    CHECK(lr_multiplier(LR_SCHEDULE_LINEAR, 12, 2, 10) == 0, "linear past the end clamps at 0");
    CHECK(lr_multiplier(LR_SCHEDULE_CONSTANT, 1, 3, 10) == 1.0 / 3.0, "constant warmup");
    CHECK(lr_multiplier(LR_SCHEDULE_CONSTANT, 0, 0, 10) == 1, "constant without warmup");
    CHECK(lr_multiplier(LR_SCHEDULE_COSINE, 0, 0, 10) == 1, "no warmup: full lr at step 0");

    CHECK(warmup_steps_from_fraction(0.1, 100) == 10, "10%% of 100");
    CHECK(warmup_steps_from_fraction(0.1, 7) == 1, "ceil(0.7)");
    CHECK(warmup_steps_from_fraction(0.07, 100) == 8, "0.07*100 = 7.000000000000001 -> 8");
    CHECK(warmup_steps_from_fraction(0, 100) == 0, "no warmup");
}

int main(int argc, char **argv) {
    if (argc > 1) {
        if (strcmp(argv[1], "bad-warmup") == 0) warmup_steps_from_fraction(1.5, 100);
        fprintf(stderr, "unknown or non-failing case %s\n", argv[1]);
        return 0;
    }
    test_adamw_first_step();
    test_weight_decay();
    test_grad_scale();
    test_norms();
    test_schedules();
    return test_finish("test_optim");
}
