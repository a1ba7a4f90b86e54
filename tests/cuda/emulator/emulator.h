/*
 * emulator.h - a CPU emulator for simple CUDA kernels: 1-D blocks, __syncthreads, one dynamic
 * shared-memory array of floats named fa_smem, no warp intrinsics, no atomics. The threads of a
 * block are real threads, but only one runs at a time: between two barriers they run one after
 * the other in an order chosen per phase (emu_mode: ascending, descending or shuffled). A kernel
 * without races gives bitwise the same result in every order; a missing __syncthreads shows up as
 * a difference. Blocks run one after the other (so races between blocks are NOT modelled). Shared
 * memory starts as NaNs before every block (reading what nobody wrote poisons the result), and
 * writes past the launch's dynamic shared-memory size are reported. Launches: run.sh rewrites
 * `kernel<<<grid, block, smem>>>(args)` into `emu_launch(kernel, grid, block, smem)(args)`.
 * Numerics are the host's (expf, logf, no forced FMA): it checks logic, not the GPU's last bits.
 */
#pragma once
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <semaphore>
#include <thread>
#include <vector>

thread_local dim3 threadIdx;
dim3 blockIdx, blockDim, gridDim;
int emu_smem_optin = 232448; /* H100 */
size_t emu_smem_allowed = 48 * 1024;
int emu_mode = 0;            /* 0 ascending, 1 descending, 2 shuffled */
bool emu_sequential = false; /* kernels without barriers: run the threads in this thread */
long emu_errors = 0;

static const size_t EMU_SMEM_FLOATS = 1 << 16; /* 256 KB */
float fa_smem[EMU_SMEM_FLOATS];
static const uint32_t EMU_SENTINEL = 0x7FC0DEADu; /* a NaN */

struct EmuBlock {
    int n = 0;
    std::vector<std::unique_ptr<std::binary_semaphore>> sem;
    std::vector<int> order, arrived;
    size_t pos = 0;
    int exited_in_phase = 0;
    long phases = 0;
    std::mt19937 rng{12345};
    std::binary_semaphore done{0};
};
static EmuBlock *emu_block;
thread_local int emu_tid;

static void emu_reorder(std::vector<int> &order) {
    std::sort(order.begin(), order.end());
    if (emu_mode == 1) std::reverse(order.begin(), order.end());
    if (emu_mode == 2) std::shuffle(order.begin(), order.end(), emu_block->rng);
}

/* the running thread gives the turn away (at a barrier or at its end) */
static void emu_pass_turn(bool at_barrier) {
    EmuBlock *B = emu_block;
    if (at_barrier) B->arrived.push_back(emu_tid);
    else B->exited_in_phase++;
    B->pos++;
    if (B->pos == B->order.size()) { /* the phase is over */
        if (!B->arrived.empty() && B->exited_in_phase > 0) {
            std::fprintf(stderr, "EMU: barrier divergence: %d threads exited while %zu wait\n",
                         B->exited_in_phase, B->arrived.size());
            emu_errors++;
        }
        B->order = B->arrived;
        B->arrived.clear();
        B->exited_in_phase = 0;
        B->pos = 0;
        B->phases++;
        emu_reorder(B->order);
        if (B->order.empty()) {
            B->done.release();
            return;
        }
    }
    B->sem[B->order[B->pos]]->release();
}

void __syncthreads() {
    if (emu_sequential) {
        std::fprintf(stderr, "EMU: __syncthreads in a sequential launch\n");
        std::abort();
    }
    emu_pass_turn(true);
    emu_block->sem[emu_tid]->acquire();
}

static void emu_run_block(int n, const std::function<void()> &body) {
    if (emu_sequential) {
        for (int t = 0; t < n; t++) {
            threadIdx = dim3(t, 0, 0);
            body();
        }
        return;
    }
    EmuBlock B;
    B.n = n;
    for (int t = 0; t < n; t++) B.sem.emplace_back(new std::binary_semaphore(0));
    emu_block = &B;
    for (int t = 0; t < n; t++) B.order.push_back(t);
    emu_reorder(B.order);
    std::vector<std::thread> threads;
    for (int t = 0; t < n; t++)
        threads.emplace_back([&B, &body, t] {
            B.sem[t]->acquire();
            emu_tid = t;
            threadIdx = dim3(t, 0, 0);
            body();
            emu_pass_turn(false);
        });
    B.sem[B.order[0]]->release();
    B.done.acquire();
    for (auto &th : threads) th.join();
    emu_block = nullptr;
}

template <class... P> struct EmuLauncher {
    void (*kernel)(P...);
    dim3 grid, block;
    size_t smem;
    template <class... A> void operator()(A... args) {
        if (block.y != 1 || block.z != 1) { std::fprintf(stderr, "EMU: 1-D blocks only\n"); std::abort(); }
        if (smem > 48 * 1024 && smem > emu_smem_allowed) {
            std::fprintf(stderr, "EMU: launch with %zu bytes of shared memory, %zu allowed\n", smem, emu_smem_allowed);
            emu_errors++;
        }
        if (smem > (size_t)emu_smem_optin || smem > EMU_SMEM_FLOATS * 4) {
            std::fprintf(stderr, "EMU: %zu bytes of shared memory: more than the device has\n", smem);
            emu_errors++;
            return;
        }
        gridDim = grid;
        blockDim = block;
        for (unsigned z = 0; z < grid.z; z++)
            for (unsigned y = 0; y < grid.y; y++)
                for (unsigned x = 0; x < grid.x; x++) {
                    blockIdx = dim3(x, y, z);
                    for (size_t i = 0; i < EMU_SMEM_FLOATS; i++) std::memcpy(&fa_smem[i], &EMU_SENTINEL, 4);
                    emu_run_block((int)block.x, [&] { kernel(args...); });
                    for (size_t i = (smem + 3) / 4; i < EMU_SMEM_FLOATS; i++) {
                        uint32_t w;
                        std::memcpy(&w, &fa_smem[i], 4);
                        if (w != EMU_SENTINEL) {
                            std::fprintf(stderr, "EMU: shared memory written past the %zu bytes launched (float %zu)\n", smem, i);
                            emu_errors++;
                            break;
                        }
                    }
                }
    }
};
template <class... P>
EmuLauncher<P...> emu_launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem = 0) {
    return EmuLauncher<P...>{kernel, grid, block, smem};
}
