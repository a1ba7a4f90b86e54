/*
 * check_fused_attention.cpp - runs kernels/attention_cuda.cu and kernels/init_cuda.cu on the CPU
 * emulator (emulator.h) and checks them: the fused forward's out against the CPU op
 * (src/ops/ops_cpu.c), its lse against a double-precision logsumexp, the fused backward (onto
 * non-zero gradients) against the CPU backward, and every result bitwise the same whatever order
 * the threads of a block run in between barriers (ascending, descending, shuffled): a race or a
 * missing __syncthreads shows up as a difference. fill_normal_cuda: moments, determinism, prefix.
 * Built and run by run.sh (gen_*.cu are the kernel files with their launches rewritten).
 */
#include "cuda_runtime.h"
#include "emulator.h"
#include "gen_attention.cu"
#include "gen_init.cu"
extern "C" {
#include "ops/ops.h"
}
#include "test_util.h"
#include "util/rng.h"
#include <vector>

static float bf16_round(float x) { return __bfloat162float(__float2bfloat16(x)); }
static std::vector<float> rnd(size_t n, double scale, Rng *rng) {
    std::vector<float> x(n);
    for (auto &v : x) v = bf16_round((float)(scale * rng_normal(rng)));
    return x;
}
static std::vector<floatX> to_bf(const std::vector<float> &x) {
    std::vector<floatX> y(x.size());
    for (size_t i = 0; i < x.size(); i++) y[i] = __float2bfloat16(x[i]);
    return y;
}
static std::vector<float> from_bf(const std::vector<floatX> &x) {
    std::vector<float> y(x.size());
    for (size_t i = 0; i < x.size(); i++) y[i] = __bfloat162float(x[i]);
    return y;
}
static void compare(const char *what, const std::vector<float> &got, const std::vector<float> &want, double tol) {
    double err = max_rel_error(got.data(), want.data(), got.size());
    CHECK(err <= tol, "%s: max rel err %.3g > %.3g", what, err, tol);
    printf("    %-14s max rel err %.2e\n", what, err);
}

struct Result { std::vector<float> out, lse, dq, dk, dv; };

static void test_shape(int B, int T, int Hq, int Hkv, int D, double qscale) {
    printf("B %d T %d Hq %d Hkv %d D %d (q scale %.1f)\n", B, T, Hq, Hkv, D, qscale);
    Rng rng;
    rng_seed(&rng, 1000 + T * 7 + D + Hq);
    const size_t nq = (size_t)B * T * Hq * D, nkv = (size_t)B * T * Hkv * D, np = (size_t)B * Hq * T * T;
    auto q = rnd(nq, qscale, &rng), k = rnd(nkv, 1.0, &rng), v = rnd(nkv, 1.0, &rng), dout = rnd(nq, 1.0, &rng);
    auto dq0 = rnd(nq, 0.1, &rng), dk0 = rnd(nkv, 0.1, &rng), dv0 = rnd(nkv, 0.1, &rng);
    /* CPU reference */
    std::vector<float> out(nq), probs(np), dq = dq0, dk = dk0, dv = dv0;
    attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), B, T, Hq, Hkv, D);
    /* lse in double from q, k */
    std::vector<float> lse_ref((size_t)B * Hq * T);
    const int group = Hq / Hkv;
    for (int b = 0; b < B; b++) for (int h = 0; h < Hq; h++) for (int t = 0; t < T; t++) {
        std::vector<double> s(t + 1);
        double m = -INFINITY;
        for (int j = 0; j <= t; j++) {
            double dot = 0;
            for (int d = 0; d < D; d++) dot += (double)q[(((size_t)b * T + t) * Hq + h) * D + d] * k[(((size_t)b * T + j) * Hkv + h / group) * D + d];
            s[j] = dot / sqrt((double)D);
            m = fmax(m, s[j]);
        }
        double sum = 0;
        for (int j = 0; j <= t; j++) sum += exp(s[j] - m);
        lse_ref[((size_t)b * Hq + h) * T + t] = (float)(m + log(sum));
    }

    Result res[3];
    auto qb = to_bf(q), kb = to_bf(k), vb = to_bf(v), dob = to_bf(dout);
    for (int mode = 0; mode < 3; mode++) {
        emu_mode = mode;
        std::vector<floatX> outb(nq, __float2bfloat16(NAN));
        std::vector<float> lse((size_t)B * Hq * T, NAN);
        attention_forward_fused_cuda(outb.data(), lse.data(), qb.data(), kb.data(), vb.data(), B, T, Hq, Hkv, D);
        auto dqb = to_bf(dq0), dkb = to_bf(dk0), dvb = to_bf(dv0);
        std::vector<char> scratch(attention_backward_fused_scratch_bytes(B, T, Hq, Hkv, D));
        attention_backward_fused_cuda(dqb.data(), dkb.data(), dvb.data(), dob.data(), outb.data(), lse.data(), qb.data(), kb.data(), vb.data(), B, T, Hq, Hkv, D, scratch.data());
        res[mode] = {from_bf(outb), lse, from_bf(dqb), from_bf(dkb), from_bf(dvb)};
    }
    for (int mode = 1; mode < 3; mode++) {
        CHECK(memcmp(res[mode].out.data(), res[0].out.data(), nq * 4) == 0, "out differs between thread orders (mode %d)", mode);
        CHECK(memcmp(res[mode].lse.data(), res[0].lse.data(), res[0].lse.size() * 4) == 0, "lse differs (mode %d)", mode);
        CHECK(memcmp(res[mode].dq.data(), res[0].dq.data(), nq * 4) == 0, "dq differs (mode %d)", mode);
        CHECK(memcmp(res[mode].dk.data(), res[0].dk.data(), nkv * 4) == 0, "dk differs (mode %d)", mode);
        CHECK(memcmp(res[mode].dv.data(), res[0].dv.data(), nkv * 4) == 0, "dv differs (mode %d)", mode);
    }
    compare("out", res[0].out, out, 1e-2);
    compare("lse", res[0].lse, lse_ref, 1e-5);
    /* the backward on the CPU from its own probs */
    attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), probs.data(), q.data(), k.data(), v.data(), B, T, Hq, Hkv, D);
    compare("dq", res[0].dq, dq, 1e-2);
    compare("dk", res[0].dk, dk, 1e-2);
    compare("dv", res[0].dv, dv, 1e-2);
}

static void test_fill() {
    const size_t n = 200000;
    emu_sequential = true;
    std::vector<floatX> a(n), b(n), c(n), shortv(1000);
    fill_normal_cuda(a.data(), n, 42, 1.0f, 2.0f);
    fill_normal_cuda(b.data(), n, 42, 1.0f, 2.0f);
    fill_normal_cuda(c.data(), n, 43, 1.0f, 2.0f);
    fill_normal_cuda(shortv.data(), 1000, 42, 1.0f, 2.0f);
    emu_sequential = false;
    CHECK(memcmp(a.data(), b.data(), n * 2) == 0, "same seed, same values");
    CHECK(memcmp(a.data(), shortv.data(), 1000 * 2) == 0, "shorter fill is a prefix");
    size_t same = 0;
    for (size_t i = 0; i < n; i++) same += a[i].x == c[i].x;
    CHECK(same < n / 50, "different seeds: %zu equal", same);
    double s = 0, s2 = 0; size_t within = 0;
    for (size_t i = 0; i < n; i++) { double x = __bfloat162float(a[i]); s += x; s2 += x * x; within += fabs(x - 1.0) < 2.0; }
    double mean = s / n, sd = sqrt(s2 / n - mean * mean);
    printf("fill_normal: mean %.5f std %.5f within 1 sd %.5f (equal with other seed %zu)\n", mean, sd, (double)within / n, same);
    CHECK(fabs(mean - 1.0) < 0.01 * 2.0, "mean %g", mean);
    CHECK(fabs(sd / 2.0 - 1) < 0.01, "std %g", sd);
    CHECK(fabs((double)within / n - 0.682689) < 0.01, "within 1 sd %g", (double)within / n);
}

/* any argument: two larger shapes as well (D = 256, tiles 32 and 16; T = 130) */
int main(int argc, char **argv) {
    (void)argv;
    test_fill();
    test_shape(2, 70, 4, 4, 64, 1.0);
    test_shape(2, 1, 8, 1, 128, 1.0);
    test_shape(1, 100, 8, 2, 128, 1.0);
    test_shape(2, 33, 4, 1, 64, 3.0); /* peaky softmax */
    test_shape(1, 20, 2, 2, 80, 1.0); /* D not a multiple of 64: padding */
    test_shape(1, 17, 2, 1, 2, 1.0);  /* D = 2 */
    if (argc > 1) {
        test_shape(1, 40, 2, 1, 256, 1.0);
        test_shape(1, 130, 2, 2, 96, 1.0);
    }
    CHECK(emu_errors == 0, "%ld emulator errors", emu_errors);
    return test_finish("emulated fused attention");
}
