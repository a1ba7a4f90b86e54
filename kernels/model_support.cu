/*
 * model_support.cu - the small kernels the device model (src/model/model_device.c) needs beyond
 * the ops of ops_cuda.cu: the cast that makes the bf16 copy of the LoRA factors and of the
 * uploaded weights, the bias of the projections that have one (Qwen2's q/k/v), and the LoRA
 * factor folded into a frozen weight's padding columns.
 */
#include "cuda_check.h"
#include "ops_cuda.h"

static const int support_block = 256;

__global__ static void cast_f32_to_bf16_kernel(floatX *dst, const float *src, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = __float2bfloat16_rn(src[i]);
}

extern "C" void cast_f32_to_bf16_cuda(floatX *dst, const float *src, size_t n) {
    if (n == 0) return;
    unsigned blocks = (unsigned)((n + support_block - 1) / support_block);
    cast_f32_to_bf16_kernel<<<blocks, support_block>>>(dst, src, n);
    CHECK_LAUNCH();
}

/* out[n][o] += bias[o], summed in fp32 and rounded once */
__global__ static void add_bias_kernel(floatX *out, const floatX *bias, size_t total, int OC) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total)
        out[i] = __float2bfloat16_rn(__bfloat162float(out[i]) + __bfloat162float(bias[i % OC]));
}

extern "C" void add_bias_cuda(floatX *out, const floatX *bias, int N, int OC) {
    size_t total = (size_t)N * OC;
    if (total == 0) return;
    unsigned blocks = (unsigned)((total + support_block - 1) / support_block);
    add_bias_kernel<<<blocks, support_block>>>(out, bias, total, OC);
    CHECK_LAUNCH();
}

/* The LoRA of a projection folded into its frozen weight (model_device.c, "folded LoRA"): row o of
 * the wide weight W' [OC][ld] holds W's C values, then `pad` = G r columns, one slot of r per
 * projection of the group. This projection's slot gets s B[o][:] (from the fp32 factor, rounded
 * once), the other slots zeros, so that [x | h] W'^T = x W^T + s h_slot B^T. */
__global__ static void lora_fold_kernel(floatX *wide, int ld, int C, int pad, int slot,
                                        const float *B, int r, float scale, size_t total) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const size_t o = i / (size_t)pad;
    const int j = (int)(i % (size_t)pad);
    const float v = j / r == slot ? scale * B[o * (size_t)r + (size_t)(j % r)] : 0.0f;
    wide[o * (size_t)ld + (size_t)C + (size_t)j] = __float2bfloat16_rn(v);
}

extern "C" void lora_fold_cuda(floatX *wide, int ld, int C, int pad, int slot, const float *B,
                               int r, float scale, int OC) {
    const size_t total = (size_t)OC * (size_t)pad;
    if (total == 0) return;
    unsigned blocks = (unsigned)((total + support_block - 1) / support_block);
    lora_fold_kernel<<<blocks, support_block>>>(wide, ld, C, pad, slot, B, r, scale, total);
    CHECK_LAUNCH();
}
