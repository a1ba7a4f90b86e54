/*
 * test_pref_loss.c - DPO / IPO / hinge / ORPO on one pair, the SFT token-mean NLL, and their
 * gradients. Built against the fp64 core (F64) for tight finite-difference checks.
 *
 * With an argument it instead runs one invalid call that must end in a clear fatal error
 * (registered with paft_expect_error in CMakeLists.txt).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loss/pref_loss.h"
#include "loss/sft_loss.h"
#include "test_util.h"

static PrefLossResult run(PrefLossKind kind, double beta, double eps, PrefPair pair) {
    PrefLossParams params = {.kind = kind, .beta = beta, .label_smoothing = eps};
    PrefLossResult r;
    pref_loss_pair(&r, &params, &pair);
    return r;
}

/* DESIGN.md: pi_c=-10, pi_r=-12, ref -11/-11, beta 0.1 -> loss 0.598139, rewards +0.1/-0.1. */
static void test_dpo_vector(void) {
    PrefPair pair = {-10, -12, -11, -11, 5, 6};
    PrefLossResult r = run(PREF_LOSS_DPO, 0.1, 0, pair);
    CHECK_CLOSE(r.loss, 0.598139, 0, 5e-7, "dpo loss");
    CHECK_CLOSE(r.loss, log1p(exp(-0.2)), 1e-15, 0, "dpo loss = log(1 + e^-beta h)");
    CHECK_CLOSE(r.reward_chosen, 0.1, 1e-14, 0, "rewards/chosen");
    CHECK_CLOSE(r.reward_rejected, -0.1, 1e-14, 0, "rewards/rejected");
    CHECK_CLOSE(r.reward_margin, 0.2, 1e-14, 0, "rewards/margins");
    CHECK(r.reward_accuracy == 1.0, "rewards/accuracies");
    // d/dh = -beta sigma(-beta h), by hand
    double g = -0.1 / (1 + exp(0.2));
    CHECK_CLOSE(r.dpolicy_chosen, g, 1e-14, 0, "dpo d/dpi_c");
    CHECK_CLOSE(r.dpolicy_rejected, -g, 1e-14, 0, "dpo d/dpi_r");
    CHECK(r.nll_loss == 0 && r.log_odds_chosen == 0, "orpo fields stay 0 for dpo");

    // label smoothing eps = 0.1: 0.9 log(1+e^-0.2) + 0.1 log(1+e^0.2)
    r = run(PREF_LOSS_DPO, 0.1, 0.1, pair);
    CHECK_CLOSE(r.loss, 0.9 * log1p(exp(-0.2)) + 0.1 * log1p(exp(0.2)), 1e-15, 0, "dpo eps");

    // ties are not accurate (strict >)
    PrefPair tie = {-10, -10, -11, -11, 5, 5};
    r = run(PREF_LOSS_DPO, 0.1, 0, tie);
    CHECK(r.reward_accuracy == 0.0, "a tie is not a correct preference");
    CHECK_CLOSE(r.loss, log(2.0), 1e-15, 0, "dpo loss at h = 0");
}

/* DESIGN.md: ORPO l_c=-0.5, l_r=-1.0 -> log_odds 0.974077, loss = NLL + 0.0320300. */
static void test_orpo_vector(void) {
    // summed log-probs over 4 and 10 tokens give the mean log-probs -0.5 and -1.0
    PrefPair pair = {-2.0, -10.0, 0, 0, 4, 10};
    PrefLossResult r = run(PREF_LOSS_ORPO, 0.1, 0, pair);
    CHECK_CLOSE(r.log_odds_chosen, 0.974077, 0, 5e-7, "orpo log_odds");
    CHECK_CLOSE(r.nll_loss, 0.5, 1e-15, 0, "orpo nll = -l_c");
    CHECK_CLOSE(r.loss - r.nll_loss, 0.0320300, 0, 5e-8, "orpo odds-ratio term");
    CHECK_CLOSE(r.log_odds_ratio, -0.320300, 0, 5e-7, "log_odds_ratio = log sigma(log_odds)");
    CHECK_CLOSE(r.reward_chosen, -0.05, 1e-14, 0, "orpo rewards/chosen = beta l_c");
    CHECK_CLOSE(r.reward_rejected, -0.1, 1e-14, 0, "orpo rewards/rejected = beta l_r");
    CHECK(r.reward_accuracy == 1.0, "orpo accuracy");
    CHECK_CLOSE(r.dpolicy_chosen_nll, -0.25, 1e-15, 0, "nll share of the gradient: -1/n_c");
    // the log-odds by an independent formula: log(p/(1-p)) with p = e^l
    double pc = exp(-0.5), pr = exp(-1.0);
    CHECK_CLOSE(r.log_odds_chosen, log(pc / (1 - pc)) - log(pr / (1 - pr)), 1e-14, 0,
                "log odds of the mean probabilities");
}

static void test_ipo_hinge_values(void) {
    // IPO uses mean log-probs: h = (-10/5 - -12/6) - (-11/5 - -11/6) = 0 - (-2.2 + 1.8333) = 0.3667
    PrefPair pair = {-10, -12, -11, -11, 5, 6};
    double h = (-10.0 / 5 + 12.0 / 6) - (-11.0 / 5 + 11.0 / 6);
    PrefLossResult r = run(PREF_LOSS_IPO, 0.5, 0, pair);
    CHECK_CLOSE(r.loss, (h - 1.0) * (h - 1.0), 1e-14, 0, "ipo loss");
    CHECK_CLOSE(r.reward_chosen, 0.5 * (-10.0 / 5 + 11.0 / 5), 1e-14, 0, "ipo rewards on means");
    CHECK_CLOSE(r.dpolicy_chosen, 2 * (h - 1.0) / 5, 1e-14, 0, "ipo d/dpi_c includes 1/n_c");
    CHECK_CLOSE(r.dpolicy_rejected, -2 * (h - 1.0) / 6, 1e-14, 0, "ipo d/dpi_r includes 1/n_r");

    // hinge: h = 2, beta = 0.1 -> 1 - 0.2 = 0.8; beta = 1 -> 0 (and gradient 0)
    r = run(PREF_LOSS_HINGE, 0.1, 0, pair);
    CHECK_CLOSE(r.loss, 0.8, 1e-14, 0, "hinge loss");
    CHECK_CLOSE(r.dpolicy_chosen, -0.1, 1e-15, 0, "hinge d/dpi_c");
    r = run(PREF_LOSS_HINGE, 1.0, 0, pair);
    CHECK(r.loss == 0 && r.dpolicy_chosen == 0 && r.dpolicy_rejected == 0, "hinge satisfied");
}

/* Central differences of every loss with respect to the summed policy log-probs. */
typedef struct {
    PrefLossKind kind;
    double beta, eps;
    PrefPair pair;
    const char *what;
} FdCase;

static void test_finite_differences(void) {
    const FdCase cases[] = {
        {PREF_LOSS_DPO, 0.1, 0.0, {-10, -12, -11, -11, 5, 6}, "dpo"},
        {PREF_LOSS_DPO, 0.1, 0.2, {-10, -12, -11, -11, 5, 6}, "dpo eps 0.2"},
        {PREF_LOSS_DPO, 0.5, 0.1, {-80, -30, -60, -45, 40, 20}, "dpo eps 0.1, wrong way"},
        {PREF_LOSS_DPO, 2.0, 0.05, {-10, -200, -11, -15, 5, 60}, "dpo saturated"},
        {PREF_LOSS_IPO, 0.1, 0, {-10, -12, -11, -11, 5, 6}, "ipo"},
        {PREF_LOSS_IPO, 0.5, 0, {-45, -90, -40, -85, 30, 41}, "ipo 2"},
        {PREF_LOSS_HINGE, 0.1, 0, {-10, -12, -11, -11, 5, 6}, "hinge active"},
        {PREF_LOSS_HINGE, 0.1, 0, {-10, -40, -11, -11, 5, 6}, "hinge inactive"},
        {PREF_LOSS_ORPO, 0.1, 0, {-2, -10, 0, 0, 4, 10}, "orpo"},
        {PREF_LOSS_ORPO, 0.25, 0, {-30, -12, 0, 0, 17, 9}, "orpo wrong way"},
        {PREF_LOSS_ORPO, 0.1, 0, {-0.0004, -0.3, 0, 0, 4, 3}, "orpo near l=0"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const FdCase *fc = &cases[c];
        PrefLossResult r = run(fc->kind, fc->beta, fc->eps, fc->pair);
        // step small against the scale of the smallest mean log-prob in the "near 0" case
        const double h = fc->pair.policy_chosen > -0.01 ? 1e-8 : 1e-5;
        for (int which = 0; which < 2; which++) {
            PrefPair plus = fc->pair, minus = fc->pair;
            if (which == 0) plus.policy_chosen += h, minus.policy_chosen -= h;
            else plus.policy_rejected += h, minus.policy_rejected -= h;
            double fd = (run(fc->kind, fc->beta, fc->eps, plus).loss -
                         run(fc->kind, fc->beta, fc->eps, minus).loss) /
                        (2 * h);
            double analytic = which == 0 ? r.dpolicy_chosen : r.dpolicy_rejected;
            CHECK(fabs(analytic - fd) <= 1e-6 * fabs(fd) + 1e-9,
                  "%s d/dpi_%s: analytic %.12g, finite difference %.12g", fc->what,
                  which == 0 ? "c" : "r", analytic, fd);
        }
    }
}

/* Token level: the loss as a function of per-token log-probs (only completion tokens count),
 * with pref_spread_dlogp spreading the pair's gradient back; checked by finite differences. */
static double token_loss(PrefLossKind kind, const real *logp_c, const int32_t *tgt_c, int n_c,
                         const real *logp_r, const int32_t *tgt_r, int n_r) {
    PrefPair pair = {0, 0, -20, -25, 0, 0};
    for (int i = 0; i < n_c; i++)
        if (tgt_c[i] >= 0) pair.policy_chosen += logp_c[i], pair.n_chosen++;
    for (int i = 0; i < n_r; i++)
        if (tgt_r[i] >= 0) pair.policy_rejected += logp_r[i], pair.n_rejected++;
    return run(kind, 0.3, 0.1, pair).loss;
}

static void test_token_level(void) {
    real logp_c[6] = {-3.0, -2.0, -0.7, -1.2, -0.4, 0};
    real logp_r[5] = {-3.0, -1.9, -2.5, -0.8, -1.1};
    const int32_t tgt_c[6] = {-1, -1, 7, 8, 9, -1};  // prompt, completion, padding
    const int32_t tgt_r[5] = {-1, -1, 4, 5, 6};
    const PrefLossKind kinds[] = {PREF_LOSS_DPO, PREF_LOSS_IPO, PREF_LOSS_ORPO};
    for (int k = 0; k < 3; k++) {
        PrefPair pair = {-0.7 - 1.2 - 0.4, -2.5 - 0.8 - 1.1, -20, -25, 3, 3};
        PrefLossResult r = run(kinds[k], 0.3, 0.1, pair);
        real dc[6] = {0}, dr[5] = {0};
        pref_spread_dlogp(dc, tgt_c, 6, r.dpolicy_chosen);
        pref_spread_dlogp(dr, tgt_r, 5, r.dpolicy_rejected);
        CHECK(dc[0] == 0 && dc[1] == 0 && dc[5] == 0 && dr[1] == 0, "no gradient off-completion");
        for (int i = 0; i < 6; i++) {
            const double h = 1e-6;
            real saved = logp_c[i];
            logp_c[i] = saved + h;
            double plus = token_loss(kinds[k], logp_c, tgt_c, 6, logp_r, tgt_r, 5);
            logp_c[i] = saved - h;
            double minus = token_loss(kinds[k], logp_c, tgt_c, 6, logp_r, tgt_r, 5);
            logp_c[i] = saved;
            CHECK_CLOSE(dc[i], (plus - minus) / (2 * h), 1e-6, 1e-10, "token-level dlogp");
        }
        for (int i = 0; i < 5; i++) {
            const double h = 1e-6;
            real saved = logp_r[i];
            logp_r[i] = saved + h;
            double plus = token_loss(kinds[k], logp_c, tgt_c, 6, logp_r, tgt_r, 5);
            logp_r[i] = saved - h;
            double minus = token_loss(kinds[k], logp_c, tgt_c, 6, logp_r, tgt_r, 5);
            logp_r[i] = saved;
            CHECK_CLOSE(dr[i], (plus - minus) / (2 * h), 1e-6, 1e-10, "token-level dlogp rej.");
        }
    }
}

static void test_stable_functions(void) {
    CHECK(log_sigmoid(-1000) == -1000, "log sigma(-1000) = -1000, not -inf");
    CHECK(log_sigmoid(1000) == 0 && log_sigmoid(40) < 0, "log sigma near 0 for large x");
    CHECK_CLOSE(log_sigmoid(40), -exp(-40), 1e-12, 0, "log sigma(40) = -e^-40 to first order");
    CHECK_CLOSE(log_sigmoid(0.3), -log1p(exp(-0.3)), 1e-15, 0, "log sigma moderate");
    CHECK_CLOSE(log_sigmoid(-0.3), -log1p(exp(0.3)), 1e-15, 0, "log sigma moderate negative");

    // log(1 - e^x): small |x| where 1 - e^x cancels, the crossover, large |x| where e^x underflows
    CHECK_CLOSE(log1mexp(-1e-10), log(1e-10) - 0.5e-10, 1e-14, 0, "log1mexp(-1e-10)");
    CHECK_CLOSE(log1mexp(-M_LN2), log(0.5), 1e-15, 0, "log1mexp(-ln 2)");
    CHECK_CLOSE(log1mexp(-1.0), log(1 - exp(-1.0)), 1e-15, 0, "log1mexp(-1)");
    CHECK_CLOSE(log1mexp(-50), -exp(-50), 1e-12, 0, "log1mexp(-50) = -e^-50 to first order");
    CHECK(log1mexp(-800) == 0 || fabs(log1mexp(-800)) < 1e-300, "log1mexp(-800) ~ 0");

    // ORPO at a mean log-prob of exactly 0 stays finite (clamped), and prefers the chosen side
    PrefPair pair = {0.0, -3.0, 0, 0, 2, 3};
    PrefLossResult r = run(PREF_LOSS_ORPO, 0.1, 0, pair);
    CHECK(isfinite(r.loss) && isfinite(r.dpolicy_chosen) && isfinite(r.dpolicy_rejected),
          "orpo finite at l_c = 0: loss %g", r.loss);
    PrefPair rej0 = {-3.0, 0.0, 0, 0, 2, 3};
    r = run(PREF_LOSS_ORPO, 0.1, 0, rej0);
    CHECK(isfinite(r.loss) && r.dpolicy_rejected > 0, "orpo finite at l_r = 0, pushes it down");

    // DPO far in the saturated regions: no NaN, gradient -> 0 on the right side
    PrefPair far = {0, -1e5, 0, 0, 1, 1};
    r = run(PREF_LOSS_DPO, 0.1, 0, far);
    CHECK(r.loss == 0 && r.dpolicy_chosen == 0 && r.dpolicy_rejected == 0,
          "dpo saturated right: loss %g, gradient %g", r.loss, r.dpolicy_chosen);
    PrefPair wrong = {-1e5, 0, 0, 0, 1, 1};
    r = run(PREF_LOSS_DPO, 0.1, 0, wrong);
    CHECK_CLOSE(r.loss, 1e4, 1e-12, 0, "dpo saturated wrong: loss = -beta h");
    CHECK_CLOSE(r.dpolicy_chosen, -0.1, 1e-12, 0, "dpo saturated wrong: gradient -beta");
}

static void test_names(void) {
    CHECK(pref_loss_kind_from_name("dpo") == PREF_LOSS_DPO, "dpo");
    CHECK(pref_loss_kind_from_name("sigmoid") == PREF_LOSS_DPO, "sigmoid = dpo");
    CHECK(pref_loss_kind_from_name("ipo") == PREF_LOSS_IPO, "ipo");
    CHECK(pref_loss_kind_from_name("hinge") == PREF_LOSS_HINGE, "hinge");
    CHECK(pref_loss_kind_from_name("orpo") == PREF_LOSS_ORPO, "orpo");
    CHECK(pref_loss_kind_from_name("DPO") == PREF_LOSS_INVALID, "names are lower case");
    CHECK(pref_loss_kind_from_name("") == PREF_LOSS_INVALID, "empty");
    CHECK(pref_loss_kind_from_name(NULL) == PREF_LOSS_INVALID, "NULL");
    CHECK(strcmp(pref_loss_kind_name(PREF_LOSS_ORPO), "orpo") == 0, "orpo name");
    CHECK(strcmp(pref_loss_kind_name(PREF_LOSS_INVALID), "invalid") == 0, "invalid name");
    CHECK(pref_loss_needs_reference(PREF_LOSS_DPO) && pref_loss_needs_reference(PREF_LOSS_IPO) &&
              pref_loss_needs_reference(PREF_LOSS_HINGE) &&
              !pref_loss_needs_reference(PREF_LOSS_ORPO),
          "only orpo has no reference model");
}

static void test_sft(void) {
    const real logp[7] = {-1.0, -2.0, -0.5, -4.0, 0, -3.0, -0.25};
    const int32_t targets[7] = {-1, 11, 12, -1, -1, 13, 14};  // 4 counted: 2 + 0.5 + 3 + 0.25
    int64_t count = -1;
    CHECK_CLOSE(sft_token_nll_sum(logp, targets, 7, &count), 5.75, 1e-15, 0, "nll sum");
    CHECK(count == 4, "count %lld", (long long)count);
    count = -1;
    CHECK_CLOSE(sft_token_mean_nll(logp, targets, 7, &count), 5.75 / 4, 1e-15, 0, "nll mean");
    CHECK(count == 4, "count");
    const int32_t none[3] = {-1, -1, -1};
    CHECK(sft_token_mean_nll(logp, none, 3, &count) == 0 && count == 0, "nothing counted");
    CHECK(sft_token_mean_nll(logp, targets, 7, NULL) == 5.75 / 4, "count may be NULL");

    // gradient: global count 10 (other micro-batches / ranks hold 6 more tokens); ADDS
    real dlogp[7] = {1, 1, 1, 1, 1, 1, 1};
    sft_dlogp(dlogp, targets, 7, 10.0);
    const real expected[7] = {1, 0.9, 0.9, 1, 1, 0.9, 0.9};
    for (int i = 0; i < 7; i++) CHECK_CLOSE(dlogp[i], expected[i], 1e-15, 0, "sft dlogp");
    // finite difference of the global mean over this shard = -(sum over shard)/10
    real lp[7];
    memcpy(lp, logp, sizeof lp);
    real d[7] = {0};
    sft_dlogp(d, targets, 7, 4.0);
    for (int i = 0; i < 7; i++) {
        const double h = 1e-6;
        lp[i] = logp[i] + h;
        double plus = sft_token_mean_nll(lp, targets, 7, NULL);
        lp[i] = logp[i] - h;
        double minus = sft_token_mean_nll(lp, targets, 7, NULL);
        lp[i] = logp[i];
        CHECK_CLOSE(d[i], (plus - minus) / (2 * h), 1e-8, 1e-12, "sft dlogp finite difference");
    }
    real untouched[3] = {5, 5, 5};
    sft_dlogp(untouched, none, 3, 0.0);  // nothing counted here: a zero global count is fine
    CHECK(untouched[0] == 5 && untouched[2] == 5, "nothing counted, nothing added");
}

/* Invalid calls that must stop with a clear message (see CMakeLists.txt). */
static int run_bad_input(const char *which) {
    if (strcmp(which, "bad-beta") == 0) run(PREF_LOSS_DPO, 0.0, 0, (PrefPair){-1, -2, -1, -2, 1, 1});
    if (strcmp(which, "no-tokens") == 0) run(PREF_LOSS_ORPO, 0.1, 0, (PrefPair){-1, -2, 0, 0, 0, 3});
    if (strcmp(which, "bad-kind") == 0) run((PrefLossKind)17, 0.1, 0, (PrefPair){-1, -2, 0, 0, 1, 1});
    if (strcmp(which, "sft-count") == 0) {
        real d[2] = {0};
        const int32_t t[2] = {3, 4};
        sft_dlogp(d, t, 2, 0.0);
    }
    fprintf(stderr, "unknown or non-failing case %s\n", which);
    return 0;  // reaching here means no fatal error: the expect_error test fails
}

int main(int argc, char **argv) {
    if (argc > 1) return run_bad_input(argv[1]);
    test_dpo_vector();
    test_orpo_vector();
    test_ipo_hinge_values();
    test_finite_differences();
    test_token_level();
    test_stable_functions();
    test_names();
    test_sft();
    return test_finish("test_pref_loss");
}
