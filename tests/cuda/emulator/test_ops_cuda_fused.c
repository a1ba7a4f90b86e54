/*
 * test_ops_cuda_fused.c - the fused-attention and fill_normal test functions of
 * tests/cuda/test_ops_cuda.c, run as they are on the emulated kernels (kernels_on_host.cpp): it
 * checks the test code itself (buffer sizes, tolerances, frees) before a GPU runs it. The file's
 * own main, and every other op it calls, are left out (the other ops become aborting stubs).
 */
#define main test_ops_cuda_main
#include "cuda/test_ops_cuda.c"
#undef main
int main(void) {
    Rng rng;
    rng_seed(&rng, 7);
    test_attention_fused(&rng);
    test_fill_normal();
    return test_finish("test_ops_cuda (fused attention and fill_normal, emulated)");
}
