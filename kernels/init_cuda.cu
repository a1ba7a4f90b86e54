/*
 * init_cuda.cu - random initialisation on the device (ops_cuda.h): normal samples from a
 * counter-based generator, so each element depends on (seed, index) only, not on the launch
 * shape or on which thread computes it, and no host copy of the weights is needed.
 */
#include <math.h>

#include "cuda_check.h"
#include "ops_cuda.h"

static const int init_block = 256;

/* splitmix64's output function (the finaliser of src/util/rng.h): a bijection of 64-bit words
 * whose outputs for consecutive inputs look independent. */
__device__ static inline unsigned long long init_mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Element i draws two words from its own counters 2i and 2i + 1 in the stream of key (the mixed
 * seed): word(c) = mix(key + (c + 1) * golden), splitmix64's c-th output started at key. The top
 * 24 bits of each become a uniform: u1 in (0, 1] (never 0, log(u1) is finite), u2 in [0, 1).
 * Box-Muller: sqrt(-2 ln u1) cos(2 pi u2) is N(0, 1) (its sine twin is not used). */
__global__ static void fill_normal_kernel(floatX *p, size_t n, unsigned long long key, float mean,
                                          float std) {
    const size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= n) return;
    const unsigned long long golden = 0x9E3779B97F4A7C15ULL;
    const unsigned long long w1 = init_mix64(key + (2 * (unsigned long long)i + 1) * golden);
    const unsigned long long w2 = init_mix64(key + (2 * (unsigned long long)i + 2) * golden);
    const float scale24 = 1.0f / 16777216.0f; /* 2^-24: 24-bit integers are exact in fp32 */
    const float u1 = (float)((w1 >> 40) + 1) * scale24;
    const float u2 = (float)(w2 >> 40) * scale24;
    const float z = sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
    p[i] = __float2bfloat16(mean + std * z);
}

extern "C" void fill_normal_cuda(floatX *p, size_t n, unsigned long long seed, float mean,
                                 float std) {
    if (n == 0) return;
    /* the key: the seed mixed once, so that nearby seeds give unrelated streams */
    const unsigned long long z = seed + 0x9E3779B97F4A7C15ULL;
    unsigned long long key = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    key = (key ^ (key >> 27)) * 0x94D049BB133111EBULL;
    key ^= key >> 31;
    const size_t blocks = (n + init_block - 1) / init_block;
    if (blocks > 0x7FFFFFFFu)
        paft_fatal(__FILE__, __LINE__, "fill_normal_cuda: %zu elements are too many for one launch",
                   n);
    fill_normal_kernel<<<(unsigned)blocks, init_block>>>(p, n, key, mean, std);
    CHECK_LAUNCH();
}
