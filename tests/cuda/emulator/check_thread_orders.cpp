/*
 * check_thread_orders.cpp - every kernel with threads that cooperate (shared memory, barriers,
 * warp shuffles) run three times on the emulator, with the threads between barriers and the
 * blocks of a grid in forward, reverse and shuffled order: a race-free kernel gives bitwise the
 * same result each time, a missing __syncthreads or a dependence between blocks does not. (The
 * tests in the other orders compare with the CPU only to bf16 tolerances; this is exact.)
 * rmsnorm's dweight is left out: its fp32 atomicAdd over the rows is order-dependent by design.
 *   check_thread_orders [big]     big: the fused attention at D = 256 and T = 130 too
 */
#include <cstdio>
#include <cstring>
#include <functional>
#include <vector>

#include "cuda_runtime.h"
#include "emu_internal.h"
#include "ops_cuda.h"
#include "thin_gemm.h"
extern "C" {
#include "test_util.h"
#include "util/rng.h"
}

namespace {

std::vector<float> random_values(size_t n, double scale, uint64_t seed) {
    Rng rng;
    rng_seed(&rng, seed);
    std::vector<float> x(n);
    for (auto &v : x) v = (float)(scale * rng_normal(&rng));
    return x;
}

/* device buffers that free themselves */
struct Device {
    std::vector<void *> owned;
    ~Device() {
        for (void *p : owned) cuda_free(p);
    }
    floatX *bf16(const std::vector<float> &x) { return keep(cuda_upload_bf16(x.data(), x.size())); }
    float *f32(const std::vector<float> &x) { return keep(cuda_upload_f32(x.data(), x.size())); }
    template <class T> T *zeros(size_t n) { return keep((T *)cuda_calloc(n * sizeof(T))); }
    template <class T> T *keep(T *p) {
        owned.push_back((void *)p);
        return p;
    }
};

/* the bytes of device buffers, to compare between orders */
struct Outputs {
    std::vector<std::vector<char>> bytes;
    void add(const void *device, size_t n) {
        bytes.emplace_back(n);
        cudaMemcpy(bytes.back().data(), device, n, cudaMemcpyDeviceToHost);
    }
};

/* run(op) in every order; op uploads its inputs, runs, and returns its outputs */
void check(const char *name, const std::function<Outputs()> &op) {
    Outputs first;
    for (int order = 0; order < 3; order++) {
        emu_set_order(order);
        Outputs out = op();
        if (order == 0) {
            first = out;
            continue;
        }
        for (size_t i = 0; i < out.bytes.size(); i++)
            CHECK(out.bytes[i] == first.bytes[i], "%s: output %zu differs in order %d", name, i,
                  order);
    }
    printf("  %-44s same in 3 orders\n", name);
}

void attention_shape(CudaContext *ctx, int B, int T, int Hq, int Hkv, int D) {
    (void)ctx;
    const size_t nq = (size_t)B * T * Hq * D, nkv = (size_t)B * T * Hkv * D;
    const size_t rows = (size_t)B * Hq * T;
    const auto q = random_values(nq, 1.0, 1), k = random_values(nkv, 1.0, 2),
               v = random_values(nkv, 1.0, 3), g = random_values(nq, 1.0, 4),
               dq = random_values(nq, 0.1, 5), dkv = random_values(nkv, 0.1, 6);
    char name[96];
    snprintf(name, sizeof name, "fused attention B %d T %d Hq %d Hkv %d D %d", B, T, Hq, Hkv, D);
    check(name, [&] {
        Device d;
        floatX *dq_ = d.bf16(q), *dk_ = d.bf16(k), *dv_ = d.bf16(v), *dg = d.bf16(g);
        floatX *out = d.zeros<floatX>(nq), *gq = d.bf16(dq), *gk = d.bf16(dkv), *gv = d.bf16(dkv);
        float *lse = d.zeros<float>(rows);
        const size_t scratch_bytes = attention_backward_fused_scratch_bytes(B, T, Hq, Hkv, D);
        void *scratch = d.zeros<char>(scratch_bytes);
        attention_forward_fused_cuda(out, lse, dq_, dk_, dv_, B, T, Hq, Hkv, D);
        attention_backward_fused_cuda(gq, gk, gv, dg, out, lse, dq_, dk_, dv_, B, T, Hq, Hkv, D,
                                      scratch, scratch_bytes);
        Outputs o;
        o.add(out, nq * 2);
        o.add(lse, rows * 4);
        o.add(gq, nq * 2);
        o.add(gk, nkv * 2);
        o.add(gv, nkv * 2);
        return o;
    });
    snprintf(name, sizeof name, "simple attention B %d T %d Hq %d Hkv %d D %d", B, T, Hq, Hkv, D);
    check(name, [&] {
        Device d;
        floatX *dq_ = d.bf16(q), *dk_ = d.bf16(k), *dv_ = d.bf16(v), *dg = d.bf16(g);
        floatX *out = d.zeros<floatX>(nq), *gq = d.bf16(dq), *gk = d.bf16(dkv), *gv = d.bf16(dkv);
        float *probs = d.zeros<float>(rows * T);
        attention_forward_cuda(out, probs, dq_, dk_, dv_, B, T, Hq, Hkv, D);
        attention_backward_cuda(gq, gk, gv, dg, probs, dq_, dk_, dv_, B, T, Hq, Hkv, D);
        Outputs o;
        o.add(out, nq * 2);
        o.add(probs, rows * T * 4);
        o.add(gq, nq * 2);
        o.add(gk, nkv * 2);
        o.add(gv, nkv * 2);
        return o;
    });
}

} // namespace

int main(int argc, char **argv) {
    (void)argv;
    CudaContext *ctx = cuda_context_create();
    const int N = 19, C = 320, V = 700;
    const auto x = random_values((size_t)N * C, 1.0, 10), w = random_values(C, 0.2, 11);
    const auto dy = random_values((size_t)N * C, 1.0, 12), logits = random_values((size_t)N * V, 3.0, 13);
    std::vector<int32_t> targets(N);
    for (int n = 0; n < N; n++) targets[n] = n % 4 == 0 ? -1 : (n * 37) % (V + 100);

    check("rmsnorm forward and backward (dinp)", [&] {
        Device d;
        floatX *in = d.bf16(x), *wt = d.bf16(w), *g = d.bf16(dy), *out = d.zeros<floatX>(x.size());
        floatX *dinp = d.bf16(dy);
        float *rstd = d.zeros<float>(N);
        rmsnorm_forward_cuda(out, rstd, in, wt, N, C, 1e-5f);
        rmsnorm_backward_cuda(dinp, nullptr, g, in, wt, rstd, N, C);
        Outputs o;
        o.add(out, x.size() * 2);
        o.add(rstd, N * 4);
        o.add(dinp, x.size() * 2);
        return o;
    });
    check("log-probability pieces and backward", [&] {
        Device d;
        floatX *l = d.bf16(logits), *dl = d.bf16(random_values(logits.size(), 0.1, 14));
        int32_t *t = d.keep(cuda_upload_i32(targets.data(), N));
        float *row_max = d.zeros<float>(N), *lse = d.f32(random_values(N, 1.0, 15));
        float *dlogp = d.f32(random_values(N, 1.0, 16));
        double *sumexp = d.zeros<double>(N), *target = d.zeros<double>(N);
        logits_row_max_cuda(row_max, l, N, V);
        logits_row_sumexp_cuda(sumexp, l, row_max, N, V);
        logits_target_cuda(target, l, t, 50, N, V);
        logprob_backward_shard_cuda(dl, dlogp, l, lse, t, 50, N, V);
        Outputs o;
        o.add(row_max, N * 4);
        o.add(sumexp, N * 8);
        o.add(target, N * 8);
        o.add(dl, logits.size() * 2);
        return o;
    });
    check("sum of squares, L1 term", [&] {
        Device d;
        const int out_f = 200, in_f = 300, r = 33; /* the fused kernel: strips, several tiles */
        float *g = d.f32(random_values(200001, 1.0, 17));
        float *A = d.f32(random_values((size_t)r * in_f, 1.0, 18));
        float *Bf = d.f32(random_values((size_t)out_f * r, 1.0, 19));
        float *dA = d.zeros<float>((size_t)r * in_f), *dB = d.zeros<float>((size_t)out_f * r);
        float *scratch = d.zeros<float>((size_t)out_f * in_f);
        double sums[2] = {sum_squares_cuda(ctx, g, 200001),
                          l1_penalty_cuda(ctx, dA, dB, A, Bf, out_f, in_f, r, 2.0f, 0.01f, scratch)};
        double *d_sums = d.zeros<double>(2);
        cudaMemcpy(d_sums, sums, sizeof sums, cudaMemcpyHostToDevice);
        Outputs o;
        o.add(d_sums, sizeof sums);
        o.add(dA, (size_t)r * in_f * 4);
        o.add(dB, (size_t)out_f * r * 4);
        return o;
    });
    check("thin weight grad, both orientations", [&] {
        Device d;
        const int tokens = 200, F = 136, J = 40;
        floatX *X = d.bf16(random_values((size_t)tokens * F, 1.0, 20));
        floatX *Y = d.bf16(random_values((size_t)tokens * J, 1.0, 21));
        float *out = d.zeros<float>((size_t)F * J), *out_t = d.zeros<float>((size_t)F * J);
        const size_t ws_bytes = (size_t)4 * F * J * sizeof(float); /* four chunks */
        float *ws = d.zeros<float>(ws_bytes / sizeof(float));
        thin_weight_grad_cuda(out, 0, X, F, Y, J, tokens, F, J, 0.5f, ws, ws_bytes, 132);
        thin_weight_grad_cuda(out_t, 1, X, F, Y, J, tokens, F, J, 0.5f, ws, ws_bytes, 132);
        Outputs o;
        o.add(out, (size_t)F * J * 4);
        o.add(out_t, (size_t)F * J * 4);
        return o;
    });
    check("fill_normal", [&] {
        Device d;
        floatX *p = d.zeros<floatX>(100000);
        fill_normal_cuda(p, 100000, 42, 0.0f, 1.0f);
        Outputs o;
        o.add(p, 100000 * 2);
        return o;
    });
    /* the fused kernels' tiles: 64 (D <= 64), 32 (D <= 128), 16 (D <= 256) rows, with T not a
     * multiple of them, T = 1, groups of 1, 2 and 4 heads, D padded (80) and tiny (2) */
    attention_shape(ctx, 2, 70, 4, 4, 64);
    attention_shape(ctx, 2, 1, 4, 1, 128);
    attention_shape(ctx, 1, 100, 4, 2, 64); /* MMA kernels, GQA: per-head shares over two tiles */
    attention_shape(ctx, 1, 45, 4, 2, 80);
    attention_shape(ctx, 1, 17, 2, 1, 2);
    if (argc > 1) {
        attention_shape(ctx, 1, 40, 2, 1, 256);
        attention_shape(ctx, 1, 130, 2, 2, 96);
    }
    cuda_context_destroy(ctx);
    return test_finish("check_thread_orders");
}
