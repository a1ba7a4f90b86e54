/*
 * test_ops_grad.c - every backward in ops.h against central finite differences, in double.
 *
 * For each op the scalar loss is L = sum(out * R) with a fixed random R, so dL/dout = R is what
 * the backward receives. Inputs are random and never zero. The gradient buffers start filled with
 * random values (not zeros), and the test compares (after - before) with the finite difference:
 * that checks the "+=" convention at the same time. A second backward call must then add the same
 * amount again (the gradient doubles). Last, NULL gradient pointers must leave the other
 * gradients exactly as they are with all pointers given.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ops/ops.h"
#include "test_util.h"

#ifndef PAFT_REAL_DOUBLE
#error "the finite-difference checks need the fp64 build (paft_unit_test ... F64)"
#endif

#define FD_STEP 1e-6
#define FD_RTOL 1e-7  /* relative to the largest gradient element of the array */

/* ---- helpers ------------------------------------------------------------------------------- */

typedef struct {
    uint64_t state;
} Rng;

/* xorshift64*: a fixed sequence on every platform */
static double rng_uniform(Rng *rng) {
    rng->state ^= rng->state >> 12;
    rng->state ^= rng->state << 25;
    rng->state ^= rng->state >> 27;
    return (double)((rng->state * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0;
}

/* Uniform in +-[0.1, 1]: random signs, never zero (zeros hide missing terms). */
static real *random_array(Rng *rng, size_t n) {
    real *a = malloc(n * sizeof(real));
    for (size_t i = 0; i < n; i++) {
        double magnitude = 0.1 + 0.9 * rng_uniform(rng);
        a[i] = rng_uniform(rng) < 0.5 ? -magnitude : magnitude;
    }
    return a;
}

static real *copy_array(const real *a, size_t n) {
    real *c = malloc(n * sizeof(real));
    memcpy(c, a, n * sizeof(real));
    return c;
}

static double weighted_sum(const real *out, const real *R, size_t n) {
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += out[i] * R[i];
    return sum;
}

/* A gradient buffer that starts random: `before` keeps the start, `grad` is what ops add into. */
typedef struct {
    real *before;
    real *grad;
    size_t n;
} Grad;

static Grad grad_new(Rng *rng, size_t n) {
    Grad g = {random_array(rng, n), NULL, n};
    g.grad = copy_array(g.before, n);
    return g;
}

static real *grad_added(const Grad *g) {
    real *added = malloc(g->n * sizeof(real));
    for (size_t i = 0; i < g->n; i++) added[i] = g->grad[i] - g->before[i];
    return added;
}

static void grad_free(Grad *g) {
    free(g->before);
    free(g->grad);
}

typedef double (*LossFn)(void *ctx);

/* Compare `analytic` (dL/dx) with central differences of loss(ctx) over every element of x. */
static void check_gradient(const char *what, LossFn loss, void *ctx, real *x, const real *analytic,
                           size_t n) {
    real *numeric = malloc(n * sizeof(real));
    double max_ref = 0, max_err = 0;
    for (size_t i = 0; i < n; i++) {
        real saved = x[i];
        x[i] = saved + FD_STEP;
        double plus = loss(ctx);
        x[i] = saved - FD_STEP;
        double minus = loss(ctx);
        x[i] = saved;
        numeric[i] = (plus - minus) / (2 * FD_STEP);
        if (fabs(numeric[i]) > max_ref) max_ref = fabs(numeric[i]);
    }
    CHECK(max_ref > 1e-3, "%s: the gradient is (near) zero everywhere, the check would be empty",
          what);
    for (size_t i = 0; i < n; i++) {
        double err = fabs(analytic[i] - numeric[i]);
        if (err > max_err) max_err = err;
        CHECK(err <= FD_RTOL * max_ref, "%s[%zu]: analytic %.12g, finite difference %.12g", what,
              i, analytic[i], numeric[i]);
    }
    printf("  %-40s max |analytic - numeric| / max |grad| = %.2e\n", what, max_err / max_ref);
    free(numeric);
}

/* After a second backward call the gradient must have grown by the same amount again. */
static void check_doubled(const char *what, const Grad *g, const real *added_once) {
    for (size_t i = 0; i < g->n; i++) {
        double added_twice = g->grad[i] - g->before[i];
        CHECK_CLOSE(added_twice, 2 * added_once[i], 1e-12, 1e-12, what);
    }
}

static void check_identical(const char *what, const real *a, const real *b, size_t n) {
    int same = memcmp(a, b, n * sizeof(real)) == 0;
    CHECK(same, "%s differs", what);
}

/* ---- embedding ----------------------------------------------------------------------------- */

typedef struct {
    int N, C, vocab_start, vocab_rows;
    const int32_t *tokens;
    real *table, *out, *R;
} EmbeddingCase;

static double embedding_loss(void *p) {
    EmbeddingCase *e = p;
    embedding_forward(e->out, e->tokens, e->table, e->N, e->C, e->vocab_start, e->vocab_rows);
    return weighted_sum(e->out, e->R, (size_t)e->N * e->C);
}

static void test_embedding(Rng *rng) {
    /* shard rows [4, 9): tokens 0, 3 and 9, 12 are another shard's; 5 appears twice */
    static const int32_t tokens[] = {5, 0, 8, 3, 5, 9, 4, 12, 6};
    EmbeddingCase e = {9, 7, 4, 5, tokens, NULL, NULL, NULL};
    e.table = random_array(rng, (size_t)e.vocab_rows * e.C);
    e.out = malloc((size_t)e.N * e.C * sizeof(real));
    e.R = random_array(rng, (size_t)e.N * e.C);
    Grad dtable = grad_new(rng, (size_t)e.vocab_rows * e.C);

    embedding_backward(dtable.grad, e.R, tokens, e.N, e.C, e.vocab_start, e.vocab_rows);
    real *once = grad_added(&dtable);
    check_gradient("embedding dtable (shard, repeats)", embedding_loss, &e, e.table, once,
                   dtable.n);
    embedding_backward(dtable.grad, e.R, tokens, e.N, e.C, e.vocab_start, e.vocab_rows);
    check_doubled("embedding dtable twice", &dtable, once);

    free(once);
    grad_free(&dtable);
    free(e.table);
    free(e.out);
    free(e.R);
}

/* ---- RMSNorm ------------------------------------------------------------------------------- */

typedef struct {
    int N, C;
    float eps;
    real *inp, *weight, *out, *rstd, *R;
} RmsnormCase;

static double rmsnorm_loss(void *p) {
    RmsnormCase *r = p;
    rmsnorm_forward(r->out, r->rstd, r->inp, r->weight, r->N, r->C, r->eps);
    return weighted_sum(r->out, r->R, (size_t)r->N * r->C);
}

static void test_rmsnorm(Rng *rng) {
    RmsnormCase r = {3, 7, 1e-5f, NULL, NULL, NULL, NULL, NULL};
    size_t nc = (size_t)r.N * r.C;
    r.inp = random_array(rng, nc);
    r.weight = random_array(rng, r.C);
    r.out = malloc(nc * sizeof(real));
    r.rstd = malloc(r.N * sizeof(real));
    r.R = random_array(rng, nc);
    Grad dinp = grad_new(rng, nc), dweight = grad_new(rng, r.C);

    rmsnorm_loss(&r);  /* the forward the backward reads rstd from */
    rmsnorm_backward(dinp.grad, dweight.grad, r.R, r.inp, r.weight, r.rstd, r.N, r.C);
    real *dinp_once = grad_added(&dinp), *dweight_once = grad_added(&dweight);
    check_gradient("rmsnorm dinp", rmsnorm_loss, &r, r.inp, dinp_once, nc);
    check_gradient("rmsnorm dweight", rmsnorm_loss, &r, r.weight, dweight_once, r.C);

    rmsnorm_loss(&r);
    rmsnorm_backward(dinp.grad, dweight.grad, r.R, r.inp, r.weight, r.rstd, r.N, r.C);
    check_doubled("rmsnorm dinp twice", &dinp, dinp_once);
    check_doubled("rmsnorm dweight twice", &dweight, dweight_once);

    /* dweight NULL (frozen norm): dinp as before */
    real *dinp_only = copy_array(dinp.before, nc);
    rmsnorm_backward(dinp_only, NULL, r.R, r.inp, r.weight, r.rstd, r.N, r.C);
    for (size_t i = 0; i < nc; i++) dinp_only[i] -= dinp.before[i];
    check_identical("rmsnorm dinp with dweight NULL", dinp_only, dinp_once, nc);

    free(dinp_only);
    free(dinp_once);
    free(dweight_once);
    grad_free(&dinp);
    grad_free(&dweight);
    free(r.inp);
    free(r.weight);
    free(r.out);
    free(r.rstd);
    free(r.R);
}

/* ---- matmul -------------------------------------------------------------------------------- */

typedef struct {
    int N, C, OC, accumulate;
    real alpha;
    real *inp, *weight, *bias, *out_start, *out, *R;
} MatmulCase;

static double matmul_loss(void *p) {
    MatmulCase *m = p;
    size_t n_out = (size_t)m->N * m->OC;
    memcpy(m->out, m->out_start, n_out * sizeof(real));
    matmul_forward(m->out, m->inp, m->weight, m->bias, m->N, m->C, m->OC, m->alpha, m->accumulate);
    return weighted_sum(m->out, m->R, n_out);
}

static void test_matmul(Rng *rng, int N, int C, int OC, int with_bias, real alpha, int accumulate) {
    char label[128];
    snprintf(label, sizeof label, "matmul N=%d C=%d OC=%d bias=%d alpha=%g acc=%d", N, C, OC,
             with_bias, alpha, accumulate);
    printf(" %s\n", label);
    MatmulCase m = {N, C, OC, accumulate, alpha, NULL, NULL, NULL, NULL, NULL, NULL};
    size_t n_in = (size_t)N * C, n_w = (size_t)OC * C, n_out = (size_t)N * OC;
    m.inp = random_array(rng, n_in);
    m.weight = random_array(rng, n_w);
    m.bias = with_bias ? random_array(rng, OC) : NULL;
    m.out_start = random_array(rng, n_out);
    m.out = malloc(n_out * sizeof(real));
    m.R = random_array(rng, n_out);
    Grad dinp = grad_new(rng, n_in), dweight = grad_new(rng, n_w), dbias = grad_new(rng, OC);
    real *dbias_ptr = with_bias ? dbias.grad : NULL;

    matmul_backward(dinp.grad, dweight.grad, dbias_ptr, m.R, m.inp, m.weight, N, C, OC, alpha);
    real *dinp_once = grad_added(&dinp), *dweight_once = grad_added(&dweight);
    real *dbias_once = grad_added(&dbias);
    check_gradient("  matmul dinp", matmul_loss, &m, m.inp, dinp_once, n_in);
    check_gradient("  matmul dweight", matmul_loss, &m, m.weight, dweight_once, n_w);
    if (with_bias) check_gradient("  matmul dbias", matmul_loss, &m, m.bias, dbias_once, OC);

    matmul_backward(dinp.grad, dweight.grad, dbias_ptr, m.R, m.inp, m.weight, N, C, OC, alpha);
    check_doubled("matmul dinp twice", &dinp, dinp_once);
    check_doubled("matmul dweight twice", &dweight, dweight_once);
    if (with_bias) check_doubled("matmul dbias twice", &dbias, dbias_once);

    /* frozen weight: only dinp wanted, and it must not change */
    real *dinp_only = copy_array(dinp.before, n_in);
    matmul_backward(dinp_only, NULL, NULL, m.R, m.inp, m.weight, N, C, OC, alpha);
    for (size_t i = 0; i < n_in; i++) dinp_only[i] -= dinp.before[i];
    check_identical("matmul dinp with dweight/dbias NULL", dinp_only, dinp_once, n_in);
    /* first LoRA factor: only dweight wanted */
    real *dweight_only = copy_array(dweight.before, n_w);
    matmul_backward(NULL, dweight_only, NULL, m.R, m.inp, m.weight, N, C, OC, alpha);
    for (size_t i = 0; i < n_w; i++) dweight_only[i] -= dweight.before[i];
    check_identical("matmul dweight with dinp NULL", dweight_only, dweight_once, n_w);

    free(dinp_only);
    free(dweight_only);
    free(dinp_once);
    free(dweight_once);
    free(dbias_once);
    grad_free(&dinp);
    grad_free(&dweight);
    grad_free(&dbias);
    free(m.inp);
    free(m.weight);
    free(m.bias);
    free(m.out_start);
    free(m.out);
    free(m.R);
}

/* ---- rope ---------------------------------------------------------------------------------- */

typedef struct {
    int N, H, D;
    const int32_t *positions;
    const real *cos_table, *sin_table;
    real *x, *rotated, *R;
} RopeCase;

static double rope_loss(void *p) {
    RopeCase *r = p;
    size_t n = (size_t)r->N * r->H * r->D;
    memcpy(r->rotated, r->x, n * sizeof(real));
    rope_forward(r->rotated, r->cos_table, r->sin_table, r->positions, r->N, r->H, r->D);
    return weighted_sum(r->rotated, r->R, n);
}

static void test_rope(Rng *rng) {
    enum { MAX_POS = 9, N = 4, H = 3, D = 6 };
    static const int32_t positions[N] = {0, 7, 3, 8};
    real cos_table[MAX_POS * D / 2], sin_table[MAX_POS * D / 2];
    for (int pos = 0; pos < MAX_POS; pos++) {
        for (int i = 0; i < D / 2; i++) {
            double angle = pos * pow(10000.0, -2.0 * i / D);
            cos_table[pos * D / 2 + i] = cos(angle);
            sin_table[pos * D / 2 + i] = sin(angle);
        }
    }
    size_t n = (size_t)N * H * D;
    RopeCase r = {N, H, D, positions, cos_table, sin_table, random_array(rng, n),
                  malloc(n * sizeof(real)), random_array(rng, n)};
    /* The backward works in place (no accumulation): dx = R on entry, d L / d x on exit. */
    real *dx = copy_array(r.R, n);
    rope_backward(dx, cos_table, sin_table, positions, N, H, D);
    check_gradient("rope dx (H=3, D=6)", rope_loss, &r, r.x, dx, n);
    free(dx);
    free(r.x);
    free(r.rotated);
    free(r.R);
}

/* ---- attention ----------------------------------------------------------------------------- */

/* fused = 1: attention_forward_fused / _backward_fused, state = lse [B][Hq][T]; else the simple
 * pair, state = probs [B][Hq][T][T] */
typedef struct {
    int B, T, Hq, Hkv, D;
    real *q, *k, *v, *out, *probs, *R;
    int fused;
} AttentionCase;

static double attention_loss(void *p) {
    AttentionCase *a = p;
    if (a->fused)
        attention_forward_fused(a->out, a->probs, a->q, a->k, a->v, a->B, a->T, a->Hq, a->Hkv, a->D);
    else
        attention_forward(a->out, a->probs, a->q, a->k, a->v, a->B, a->T, a->Hq, a->Hkv, a->D);
    return weighted_sum(a->out, a->R, (size_t)a->B * a->T * a->Hq * a->D);
}

static void attention_grads(const AttentionCase *a, real *dq, real *dk, real *dv) {
    if (a->fused)
        attention_backward_fused(dq, dk, dv, a->R, a->out, a->probs, a->q, a->k, a->v, a->B, a->T,
                                 a->Hq, a->Hkv, a->D);
    else
        attention_backward(dq, dk, dv, a->R, a->probs, a->q, a->k, a->v, a->B, a->T, a->Hq,
                           a->Hkv, a->D);
}

static void test_attention(Rng *rng, int B, int T, int Hq, int Hkv, int D, int fused) {
    printf(" attention%s B=%d T=%d Hq=%d Hkv=%d D=%d\n", fused ? " (fused)" : "", B, T, Hq, Hkv, D);
    size_t n_q = (size_t)B * T * Hq * D, n_kv = (size_t)B * T * Hkv * D;
    AttentionCase a = {B, T, Hq, Hkv, D, random_array(rng, n_q), random_array(rng, n_kv),
                       random_array(rng, n_kv), malloc(n_q * sizeof(real)),
                       malloc((size_t)B * Hq * T * T * sizeof(real)), random_array(rng, n_q),
                       fused};
    /* scale the inputs up so the softmax is far from uniform (its curvature matters) */
    for (size_t i = 0; i < n_q; i++) a.q[i] *= 2;
    for (size_t i = 0; i < n_kv; i++) a.k[i] *= 2;
    Grad dq = grad_new(rng, n_q), dk = grad_new(rng, n_kv), dv = grad_new(rng, n_kv);

    attention_loss(&a);
    attention_grads(&a, dq.grad, dk.grad, dv.grad);
    real *dq_once = grad_added(&dq), *dk_once = grad_added(&dk), *dv_once = grad_added(&dv);
    check_gradient("  attention dq", attention_loss, &a, a.q, dq_once, n_q);
    check_gradient("  attention dk", attention_loss, &a, a.k, dk_once, n_kv);
    check_gradient("  attention dv", attention_loss, &a, a.v, dv_once, n_kv);

    attention_loss(&a);
    attention_grads(&a, dq.grad, dk.grad, dv.grad);
    check_doubled("attention dq twice", &dq, dq_once);
    check_doubled("attention dk twice", &dk, dk_once);
    check_doubled("attention dv twice", &dv, dv_once);

    /* each gradient alone (the others NULL) is the same as with all three */
    real *only = malloc(n_q * sizeof(real));
    memcpy(only, dq.before, n_q * sizeof(real));
    attention_grads(&a, only, NULL, NULL);
    for (size_t i = 0; i < n_q; i++) only[i] -= dq.before[i];
    check_identical("attention dq alone", only, dq_once, n_q);
    memcpy(only, dk.before, n_kv * sizeof(real));
    attention_grads(&a, NULL, only, NULL);
    for (size_t i = 0; i < n_kv; i++) only[i] -= dk.before[i];
    check_identical("attention dk alone", only, dk_once, n_kv);
    memcpy(only, dv.before, n_kv * sizeof(real));
    attention_grads(&a, NULL, NULL, only);
    for (size_t i = 0; i < n_kv; i++) only[i] -= dv.before[i];
    check_identical("attention dv alone", only, dv_once, n_kv);

    free(only);
    free(dq_once);
    free(dk_once);
    free(dv_once);
    grad_free(&dq);
    grad_free(&dk);
    grad_free(&dv);
    free(a.q);
    free(a.k);
    free(a.v);
    free(a.out);
    free(a.probs);
    free(a.R);
}

/* ---- SwiGLU -------------------------------------------------------------------------------- */

typedef struct {
    size_t n;
    real *gate, *up, *out, *R;
} SwigluCase;

static double swiglu_loss(void *p) {
    SwigluCase *s = p;
    swiglu_forward(s->out, s->gate, s->up, s->n);
    return weighted_sum(s->out, s->R, s->n);
}

static void test_swiglu(Rng *rng) {
    size_t n = 13;
    SwigluCase s = {n, random_array(rng, n), random_array(rng, n), malloc(n * sizeof(real)),
                    random_array(rng, n)};
    for (size_t i = 0; i < n; i++) s.gate[i] *= 4;  /* cover the curved part of silu */
    Grad dgate = grad_new(rng, n), dup = grad_new(rng, n);

    swiglu_backward(dgate.grad, dup.grad, s.R, s.gate, s.up, n);
    real *dgate_once = grad_added(&dgate), *dup_once = grad_added(&dup);
    check_gradient("swiglu dgate", swiglu_loss, &s, s.gate, dgate_once, n);
    check_gradient("swiglu dup", swiglu_loss, &s, s.up, dup_once, n);
    swiglu_backward(dgate.grad, dup.grad, s.R, s.gate, s.up, n);
    check_doubled("swiglu dgate twice", &dgate, dgate_once);
    check_doubled("swiglu dup twice", &dup, dup_once);

    free(dgate_once);
    free(dup_once);
    grad_free(&dgate);
    grad_free(&dup);
    free(s.gate);
    free(s.up);
    free(s.out);
    free(s.R);
}

/* ---- logprob ------------------------------------------------------------------------------- */

typedef struct {
    int N, V;
    const int32_t *targets;
    real *logits, *logp, *lse, *R;
} LogprobCase;

static double logprob_loss(void *p) {
    LogprobCase *l = p;
    logprob_forward(l->logp, l->lse, l->logits, l->targets, l->N, l->V);
    return weighted_sum(l->logp, l->R, l->N);
}

static void test_logprob(Rng *rng) {
    enum { N = 5, V = 11 };
    static const int32_t targets[N] = {3, -1, 0, 10, 7};  /* row 1 has no target */
    LogprobCase l = {N, V, targets, random_array(rng, (size_t)N * V), malloc(N * sizeof(real)),
                     malloc(N * sizeof(real)), random_array(rng, N)};
    for (int i = 0; i < N * V; i++) l.logits[i] *= 3;
    Grad dlogits = grad_new(rng, (size_t)N * V);

    logprob_loss(&l);
    logprob_backward(dlogits.grad, l.R, l.logits, l.lse, targets, N, V);
    real *once = grad_added(&dlogits);
    check_gradient("logprob dlogits (a row without target)", logprob_loss, &l, l.logits, once,
                   (size_t)N * V);
    for (int j = 0; j < V; j++) CHECK(once[1 * V + j] == 0, "row without target got gradient");
    logprob_loss(&l);
    logprob_backward(dlogits.grad, l.R, l.logits, l.lse, targets, N, V);
    check_doubled("logprob dlogits twice", &dlogits, once);

    free(once);
    grad_free(&dlogits);
    free(l.logits);
    free(l.logp);
    free(l.lse);
    free(l.R);
}

int main(void) {
    Rng rng = {0x243F6A8885A308D3ull};
    test_embedding(&rng);
    test_rmsnorm(&rng);
    test_matmul(&rng, 5, 7, 3, 1, 0.7, 1);   /* bias, alpha != 1, accumulate */
    test_matmul(&rng, 19, 6, 5, 0, 1.0, 0);  /* no bias; N crosses a row tile */
    test_matmul(&rng, 3, 4, 18, 1, -2.5, 0); /* OC crosses a row tile in dweight */
    test_rope(&rng);
    for (int fused = 0; fused <= 1; fused++) {
        test_attention(&rng, 2, 5, 4, 2, 6, fused);  /* GQA, 2 query heads per KV head */
        test_attention(&rng, 1, 6, 3, 1, 6, fused);  /* GQA, all query heads share one KV head */
        test_attention(&rng, 2, 3, 2, 2, 5, fused);  /* plain multi-head, odd head dim */
        test_attention(&rng, 1, 131, 2, 1, 3, fused); /* the fused form's 64-row blocks: 3 */
    }
    /* the fused backward's two ways of splitting the work (ops_cpu.c, attention_backward_passes),
     * each on its own; with two passes the 131 positions make three key blocks too */
    for (int passes = 1; passes <= 2; passes++) {
        printf(" fused backward in %d pass(es):\n", passes);
        setenv("PAFT_CPU_ATTENTION_PASSES", passes == 1 ? "1" : "2", 1);
        test_attention(&rng, 2, 5, 4, 2, 6, 1);
        test_attention(&rng, 1, 131, 2, 1, 3, 1);
    }
    unsetenv("PAFT_CPU_ATTENTION_PASSES");
    test_swiglu(&rng);
    test_logprob(&rng);
    return test_finish("test_ops_grad");
}
