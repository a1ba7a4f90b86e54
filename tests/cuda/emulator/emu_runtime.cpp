/*
 * emu_runtime.cpp - the CUDA runtime on the CPU: device memory, copies, the launch and the thread
 * scheduler behind emu_device.h, for checking paft's CUDA backend where there is no GPU.
 *
 * Device memory. One large reservation of address space; each cudaMalloc gets its own pages,
 * placed so that the allocation ends (rounded up to 256 bytes, cudaMalloc's alignment) where a
 * guard page begins, so an overrun faults at once (under AddressSanitizer the rounding and the
 * space before the allocation are poisoned too), and is filled with 0xFF bytes (NaN in bf16, fp32
 * and fp64: memory nobody wrote poisons what reads it, as a GPU's garbage would; not above
 * 16 MiB). Outside emulated kernels, copies and cuBLASLt calls the pages are PROT_NONE: host code
 * that dereferences a device pointer faults, as on a machine with a real GPU, and a SIGSEGV
 * handler names the allocation before the usual crash report. cudaFree returns the pages and
 * keeps them inaccessible (a later use faults). Copies, memsets and kernel pointer arguments are
 * checked against the live allocations; cudaMemcpyAsync with page-locked memory is done at the
 * next operation of the stream or synchronisation.
 *
 * Threads. Each CUDA thread of a block is a fiber (its own stack; a small context switch in
 * assembly, x86-64) and exactly one runs at a time on the calling host thread, until it reaches
 * __syncthreads, a warp intrinsic or its end; it then runs the scheduler's bookkeeping itself and
 * switches straight to the next ready thread in the configured order. A barrier opens when every
 * live thread of the block waits at one (a thread that exited while others wait is reported as
 * barrier divergence), a warp intrinsic completes when the 32 lanes of the warp have all arrived. Blocks run one after the other, also in the
 * configured order; shared memory (static and dynamic) is filled with NaNs before each block and
 * the dynamic part ends at a guard page, so a read or write past the launched size faults.
 *
 * Everything here runs on one host thread (the first that calls CUDA); a second one is refused.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "cuda_runtime.h"
#include "emu_internal.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#define EMU_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define EMU_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define EMU_POISON(p, n) ((void)(p), (void)(n))
#define EMU_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#if !defined(__x86_64__)
#error "the CUDA emulator's fibers switch stacks in x86-64 assembly"
#endif

dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace {

/* ---- configuration ---------------------------------------------------------------------------*/

struct Config {
    int order = 0;        /* 0 forward, 1 reverse, 2 shuffled */
    uint64_t seed = 1;    /* of the shuffles */
    int devices = 1;      /* what cudaGetDeviceCount reports */
    int smem_optin = 232448; /* H100: 227 KB of dynamic shared memory per block when opted in */
    int sm_count = 8; /* few, so that grids sized by it stay quick to emulate */
    bool protect = true;  /* device memory inaccessible to host code */
};

Config config;
bool initialised = false;
struct Stats {
    unsigned long long launches, blocks, threads, switches;
} stats;
pthread_t owner;
std::mt19937_64 rng;
int current_device = 0;
cudaError_t last_error = cudaSuccess;
const size_t smem_default = 48 * 1024;
size_t smem_allowed = smem_default; /* by the latest cudaFuncSetAttribute, until a launch uses it */
size_t page_bytes = 4096;

/* ---- device memory ---------------------------------------------------------------------------*/

struct Allocation {
    char *region;       /* its pages: [region, region + region_bytes), then a guard page */
    size_t region_bytes;
    char *base;         /* what cudaMalloc returned: the end of the pages less the bytes */
    size_t bytes;
    bool live;
};

const size_t heap_reserve = (size_t)64 << 30;
const size_t poison_limit = (size_t)16 << 20;
char *heap_lo = nullptr, *heap_hi = nullptr, *heap_cursor = nullptr;
std::map<uintptr_t, Allocation> allocations; /* by region start */
std::vector<Allocation *> live_allocations;
int open_depth = 0;

/* cudaMemcpyAsync between device and page-locked host memory: done at the next operation of the
 * stream or synchronisation (the latest a GPU may do it), so a missing cudaStreamSynchronize
 * leaves the host with stale data here too. */
struct PendingCopy {
    void *dst;
    const void *src;
    size_t bytes;
};
std::vector<PendingCopy> pending_copies;
void flush_pending_copies();

std::map<uintptr_t, size_t> pinned;       /* page-locked host ranges by start */
std::map<uintptr_t, size_t> malloc_host;  /* the cudaMallocHost ones among them */

/* the allocation whose pages, or the guard page after them, hold p */
Allocation *allocation_near(const void *p) {
    const uintptr_t a = (uintptr_t)p;
    auto it = allocations.upper_bound(a);
    if (it == allocations.begin()) return nullptr;
    --it;
    Allocation &al = it->second;
    return a < (uintptr_t)al.region + al.region_bytes + page_bytes ? &al : nullptr;
}

bool in_heap(const void *p) { return (const char *)p >= heap_lo && (const char *)p < heap_hi; }

const std::pair<const uintptr_t, size_t> *pinned_range(const void *p) {
    const uintptr_t a = (uintptr_t)p;
    auto it = pinned.upper_bound(a);
    if (it == pinned.begin()) return nullptr;
    --it;
    return a < it->first + it->second ? &*it : nullptr;
}

/* ---- shared memory ---------------------------------------------------------------------------*/

const size_t dynamic_capacity = 256 * 1024;
char *dynamic_end = nullptr;  /* a guard page follows */
char *dynamic_base = nullptr; /* the current launch's array: dynamic_end - its size */
std::vector<std::pair<void *, size_t>> static_shared;

/* ---- fibers ----------------------------------------------------------------------------------*/

/* a kernel's frames are small; paft_fatal's printf and AddressSanitizer's reports need more */
#ifdef EMU_ASAN
const size_t stack_bytes = 256 * 1024;
#else
const size_t stack_bytes = 64 * 1024;
#endif

struct Stack {
    char *lo;  /* a guard page below */
    char *top; /* usable [lo, top): at least stack_bytes */
};
/* The stacks' tops are staggered by multiples of 64 bytes up to 64 KiB: at equal offsets they
 * would all fall into the same cache sets, and a switch would wait for memory. */
const size_t stack_colours = 64 * 1024;
std::vector<Stack> stacks;

enum State { READY, AT_BARRIER, AT_WARP, DONE };

struct Thread {
    void *sp; /* saved stack pointer while suspended */
    Stack *stack;
    dim3 idx;
    unsigned linear;
    State state;
    EmuShuffle kind; /* the warp intrinsic it waits in, its source lane and values */
    int src;
    uint64_t value, result;
    void *fake_stack; /* AddressSanitizer's, across a switch */
};

struct Block {
    std::vector<Thread> threads;
    unsigned n = 0, live = 0, at_barrier = 0;
    std::vector<unsigned> warp_live, warp_waiting;
    std::deque<unsigned> ready;
};

Block block;
Thread *running = nullptr;
void *host_sp = nullptr;
const EmuLaunchConfig *launch = nullptr;
void (*thread_main)(void *) = nullptr;
void *thread_arg = nullptr;
const void *host_stack_bottom = nullptr;
size_t host_stack_size = 0;
void *dead_sp; /* where a finished fiber's last switch saves its (unused) stack pointer */

} // namespace

/* emu_switch(save, to): save the callee-saved registers on the current stack, store the stack
 * pointer in *save, continue on the stack `to` (saved the same way). MXCSR and the x87 control
 * word, callee-saved too, are left alone: nothing here changes them, and loading them stalls the
 * pipeline (it was most of a switch's time). emu_fiber_start: where a new fiber's first switch
 * returns to; it calls r13(r12). */
extern "C" void emu_switch(void **save_sp, void *to_sp);
extern "C" void emu_fiber_start(void);
asm(R"(
    .text
    .globl emu_switch
    .hidden emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch

    .globl emu_fiber_start
    .hidden emu_fiber_start
    .type emu_fiber_start, @function
emu_fiber_start:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size emu_fiber_start, .-emu_fiber_start
)");

namespace {

/* AddressSanitizer must be told when the stack changes (its fake stacks, its stack bounds). */
inline void switch_start(void **fake, const void *bottom, size_t size) {
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(fake, bottom, size);
#else
    (void)fake, (void)bottom, (void)size;
#endif
}
inline void switch_finish(void *fake, const void **old_bottom, size_t *old_size) {
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, old_bottom, old_size);
#else
    (void)fake, (void)old_bottom, (void)old_size;
#endif
}

/* the fibers' entry (defined with the scheduler below) */
extern "C" void emu_fiber_main(void *p);

void init_fiber(Thread *t) {
    /* what emu_switch pops: r15, r14, r13, r12, rbx, rbp, then the return address; after that
     * `ret` the stack pointer is 16-byte aligned, as the call in emu_fiber_start needs */
    uint64_t *sp = (uint64_t *)(t->stack->top - 72);
    sp[0] = 0;                                     /* r15 */
    sp[1] = 0;                                     /* r14 */
    sp[2] = (uint64_t)(uintptr_t)&emu_fiber_main;  /* r13 */
    sp[3] = (uint64_t)(uintptr_t)t;                /* r12 */
    sp[4] = 0;                                     /* rbx */
    sp[5] = 0;                                     /* rbp */
    sp[6] = (uint64_t)(uintptr_t)&emu_fiber_start; /* the return address of the first switch */
    t->sp = sp;
}

/* ---- messages --------------------------------------------------------------------------------*/

void where(char *buf, size_t cap) {
    buf[0] = 0;
    if (launch && running)
        snprintf(buf, cap, " [kernel %s, block (%u,%u,%u), thread (%u,%u,%u)]", launch->name,
                 blockIdx.x, blockIdx.y, blockIdx.z, running->idx.x, running->idx.y,
                 running->idx.z);
    else if (launch)
        snprintf(buf, cap, " [kernel %s, block (%u,%u,%u)]", launch->name, blockIdx.x, blockIdx.y,
                 blockIdx.z);
}

void vmessage(const char *fmt, va_list ap) {
    char text[1024], context[256];
    vsnprintf(text, sizeof text, fmt, ap);
    where(context, sizeof context);
    fprintf(stderr, "EMU: %s%s\n", text, context);
    fflush(stderr);
}

/* ---- the fault handler -----------------------------------------------------------------------*/

struct sigaction previous_segv, previous_bus;

void describe_fault(char *msg, size_t cap, const char *addr) {
    char context[256];
    where(context, sizeof context);
    const char *who = launch ? "a kernel" : open_depth > 0 ? "the emulated runtime" : "host code";
    if (in_heap(addr)) {
        const Allocation *a = allocation_near(addr);
        if (!a) {
            snprintf(msg, cap, "EMU: %s touched emulated device memory at %p, in no allocation%s\n",
                     who, (const void *)addr, context);
        } else if (addr >= a->region + a->region_bytes) {
            snprintf(msg, cap,
                     "EMU: %s accessed %p, %zu bytes past the end of the %zu-byte device allocation "
                     "at %p%s\n",
                     who, (const void *)addr, (size_t)(addr - (a->base + a->bytes)), a->bytes,
                     (const void *)a->base, context);
        } else if (!a->live) {
            snprintf(msg, cap,
                     "EMU: %s accessed %p in the %zu-byte device allocation at %p, which cudaFree "
                     "has released%s\n",
                     who, (const void *)addr, a->bytes, (const void *)a->base, context);
        } else if (addr < a->base) {
            snprintf(msg, cap,
                     "EMU: %s accessed %p, %zu bytes before the %zu-byte device allocation at %p%s\n",
                     who, (const void *)addr, (size_t)(a->base - addr), a->bytes,
                     (const void *)a->base, context);
        } else {
            snprintf(msg, cap,
                     "EMU: host code dereferenced device memory: %p is byte %zu of the %zu-byte "
                     "device allocation at %p (copy it with cudaMemcpy)%s\n",
                     (const void *)addr, (size_t)(addr - a->base), a->bytes, (const void *)a->base,
                     context);
        }
        return;
    }
    if (dynamic_end && addr >= dynamic_end && addr < dynamic_end + page_bytes) {
        snprintf(msg, cap,
                 "EMU: a kernel used dynamic shared memory %zu bytes past the %zu bytes its launch "
                 "gave it%s\n",
                 (size_t)(addr - dynamic_end), launch ? launch->smem : (size_t)0, context);
        return;
    }
    for (const Stack &s : stacks)
        if (addr >= s.lo - page_bytes && addr < s.lo) {
            snprintf(msg, cap, "EMU: a CUDA thread overflowed its %zu-byte emulated stack%s\n",
                     stack_bytes, context);
            return;
        }
    msg[0] = 0;
}

void on_fault(int sig, siginfo_t *info, void *ucontext) {
    (void)ucontext;
    char msg[768];
    describe_fault(msg, sizeof msg, (const char *)info->si_addr);
    if (msg[0]) {
        ssize_t ignored = write(2, msg, strlen(msg));
        (void)ignored;
    }
    /* whatever handled the signal before (AddressSanitizer's report, MPI's backtrace, a core
     * dump) handles the fault when the instruction runs again */
    sigaction(sig, sig == SIGSEGV ? &previous_segv : &previous_bus, nullptr);
}

/* ---- initialisation --------------------------------------------------------------------------*/

void *map_pages(size_t bytes, int prot) {
    void *p = mmap(nullptr, bytes, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        fprintf(stderr, "EMU: mmap of %zu bytes failed: %s\n", bytes, strerror(errno));
        abort();
    }
    return p;
}

void print_stats() {
    fprintf(stderr, "EMU: %llu launches, %llu blocks, %llu threads, %llu thread switches\n",
            stats.launches, stats.blocks, stats.threads, stats.switches);
}

void initialise() {
    if (initialised) {
        if (!pthread_equal(owner, pthread_self()))
            emu_fail("CUDA called from a second host thread: the emulator runs one");
        return;
    }
    initialised = true;
    owner = pthread_self();
    page_bytes = (size_t)sysconf(_SC_PAGESIZE);
    if (const char *v = getenv("EMU_ORDER")) {
        if (strcmp(v, "forward") == 0) config.order = 0;
        else if (strcmp(v, "reverse") == 0) config.order = 1;
        else if (strcmp(v, "shuffle") == 0) config.order = 2;
        else {
            fprintf(stderr, "EMU: EMU_ORDER=%s is not forward, reverse or shuffle\n", v);
            abort();
        }
    }
    if (const char *v = getenv("EMU_SEED")) config.seed = strtoull(v, nullptr, 10);
    if (const char *v = getenv("EMU_DEVICES")) config.devices = atoi(v);
    if (const char *v = getenv("EMU_SMEM_OPTIN")) config.smem_optin = atoi(v);
    if (const char *v = getenv("EMU_PROTECT")) config.protect = atoi(v) != 0;
    if (getenv("EMU_STATS")) atexit(print_stats);
    rng.seed(config.seed);

    heap_lo = heap_cursor = (char *)map_pages(heap_reserve, PROT_NONE);
    heap_hi = heap_lo + heap_reserve;
    char *dyn = (char *)map_pages(dynamic_capacity + page_bytes, PROT_READ | PROT_WRITE);
    dynamic_end = dyn + dynamic_capacity;
    mprotect(dynamic_end, page_bytes, PROT_NONE);

    /* the fault handler runs on an alternate stack: a CUDA thread's stack overflow must be
     * reported too (kept if one is set already, e.g. by AddressSanitizer) */
    stack_t current;
    if (sigaltstack(nullptr, &current) == 0 && (current.ss_flags & SS_DISABLE)) {
        stack_t alt;
        alt.ss_size = 256 * 1024;
        alt.ss_sp = map_pages(alt.ss_size, PROT_READ | PROT_WRITE);
        alt.ss_flags = 0;
        sigaltstack(&alt, nullptr);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &previous_segv);
    sigaction(SIGBUS, &sa, &previous_bus);
}

void protect(Allocation *a, bool accessible) {
    if (mprotect(a->region, a->region_bytes, accessible ? PROT_READ | PROT_WRITE : PROT_NONE) != 0)
        emu_fail("mprotect failed: %s", strerror(errno));
}

const char *memory_kind_name(EmuMemoryKind k) {
    switch (k) {
    case EMU_HOST: return "host memory";
    case EMU_PINNED: return "page-locked host memory";
    case EMU_DEVICE: return "device memory";
    case EMU_DEVICE_FREED: return "device memory already freed by cudaFree";
    case EMU_DEVICE_OUTSIDE: return "in the device's address range but in no allocation";
    }
    return "?";
}

void arrange(std::vector<unsigned> &v) {
    if (config.order == 1) std::reverse(v.begin(), v.end());
    else if (config.order == 2) std::shuffle(v.begin(), v.end(), rng);
}

cudaError_t fail_call(cudaError_t rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
cudaError_t fail_call(cudaError_t rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vmessage(fmt, ap);
    va_end(ap);
    return rc;
}

/* ---- the scheduler ---------------------------------------------------------------------------*/

const char *shuffle_name(EmuShuffle k) {
    switch (k) {
    case EMU_SHFL_IDX: return "__shfl_sync";
    case EMU_SHFL_UP: return "__shfl_up_sync";
    case EMU_SHFL_DOWN: return "__shfl_down_sync";
    case EMU_SHFL_XOR: return "__shfl_xor_sync";
    case EMU_SYNCWARP: return "__syncwarp";
    }
    return "?";
}

/* ids (ascending) become ready, in the configured order: after the threads already ready, or
 * (ahead) before them */
void release(std::vector<unsigned> &ids, bool ahead = false) {
    arrange(ids);
    if (ahead)
        for (auto i = ids.rbegin(); i != ids.rend(); ++i) {
            block.threads[*i].state = READY;
            block.ready.push_front(*i);
        }
    else
        for (unsigned i : ids) {
            block.threads[i].state = READY;
            block.ready.push_back(i);
        }
}

/* every live lane of warp w has arrived: hand each its source lane's value */
void complete_warp(unsigned w) {
    const unsigned first = w * 32, last = std::min(block.n, first + 32);
    if (last - first != 32)
        emu_fail("%s in a block of %u threads: warp %u has %u lanes, the full mask names 32",
                 shuffle_name(block.threads[first].kind), block.n, w, last - first);
    if (block.warp_live[w] != 32)
        emu_fail("%u lanes of warp %u exited while the others wait in %s", 32 - block.warp_live[w],
                 w, shuffle_name(block.threads[first].kind));
    std::vector<unsigned> lanes;
    for (unsigned i = first; i < last; i++) {
        Thread &t = block.threads[i];
        if (t.kind != block.threads[first].kind)
            emu_fail("the lanes of warp %u meet in different warp intrinsics (%s and %s)", w,
                     shuffle_name(block.threads[first].kind), shuffle_name(t.kind));
        t.result = block.threads[first + t.src].value;
        lanes.push_back(i);
    }
    block.warp_waiting[w] = 0;
    /* The warp goes on first, before the other warps' ready threads: a warp that meets its lanes
     * at a shuffle (or an MMA, ldmatrix, WMMA call built on one) runs ahead as a fast warp on a
     * GPU may, up to its next __syncthreads. Released at the back, the other warps would first
     * run up to their own warp intrinsics, filling shared memory before this warp reads it, and
     * a missing __syncthreads() before the read would go unnoticed. */
    release(lanes, true);
}

/* Bookkeeping after thread t stopped running: its state says why. */
void stopped(Thread &t) {
    const unsigned w = t.linear / 32;
    switch (t.state) {
    case DONE:
        block.live--;
        block.warp_live[w]--;
        if (block.warp_waiting[w] > 0 && block.warp_waiting[w] == block.warp_live[w])
            complete_warp(w); /* reports the exited lane */
        break;
    case AT_BARRIER:
        block.at_barrier++;
        break;
    case AT_WARP:
        if (++block.warp_waiting[w] == block.warp_live[w]) complete_warp(w);
        break;
    case READY:
        emu_fail("internal: a thread stopped while ready");
    }
}

/* The thread to run next: the first ready one; when none is, the barrier opens if every live
 * thread waits at it; nullptr when the block has finished. */
Thread *next_thread() {
    for (;;) {
        if (!block.ready.empty()) {
            const unsigned i = block.ready.front();
            block.ready.pop_front();
            return &block.threads[i];
        }
        if (block.live == 0) return nullptr;
        if (block.at_barrier != block.live) {
            unsigned at_warp = 0;
            for (unsigned i = 0; i < block.n; i++) at_warp += block.threads[i].state == AT_WARP;
            emu_fail("deadlock: %u threads wait at __syncthreads and %u in warp intrinsics whose "
                     "other lanes wait elsewhere",
                     block.at_barrier, at_warp);
        }
        if (block.live < block.n)
            emu_fail("barrier divergence: %u of the block's %u threads exited while the others "
                     "wait at __syncthreads",
                     block.n - block.live, block.n);
        std::vector<unsigned> waiting;
        for (unsigned i = 0; i < block.n; i++)
            if (block.threads[i].state == AT_BARRIER) waiting.push_back(i);
        block.at_barrier = 0;
        release(waiting);
    }
}

size_t stack_size(const Thread *t) { return (size_t)(t->stack->top - t->stack->lo); }

/* Thread t (running) stops at a barrier or a warp intrinsic (its state says which) and hands the
 * turn straight to the next thread; it continues here when some thread hands the turn back. */
void hand_over(Thread *t) {
    stopped(*t);
    Thread *next = next_thread(); /* never nullptr: t itself still waits */
    if (next == t) return;        /* released at once, and first in line */
    stats.switches++;
    running = next;
    threadIdx = next->idx;
    switch_start(&t->fake_stack, next->stack->lo, stack_size(next));
    emu_switch(&t->sp, next->sp);
    switch_finish(t->fake_stack, nullptr, nullptr);
}

bool started_by_host = false; /* the next fiber to start learns the host's stack from its switch */

} // namespace

/* A thread's fiber: runs the kernel body once, then hands the turn on for good (to the next
 * thread, or to the host when the block has finished). Not instrumented, so that its frame
 * leaves no poisoned stack behind for the next fiber on this stack. */
extern "C" __attribute__((no_sanitize_address)) void emu_fiber_main(void *p) {
    const void *old_bottom;
    size_t old_size;
    switch_finish(nullptr, &old_bottom, &old_size);
    if (started_by_host) {
        host_stack_bottom = old_bottom;
        host_stack_size = old_size;
        started_by_host = false;
    }
    Thread *t = (Thread *)p;
    thread_main(thread_arg);
    t->state = DONE;
    stopped(*t);
    Thread *next = next_thread();
    running = next;
    if (next) {
        stats.switches++;
        threadIdx = next->idx;
        switch_start(nullptr, next->stack->lo, stack_size(next)); /* nullptr: this fiber ends */
        emu_switch(&dead_sp, next->sp);
    } else {
        switch_start(nullptr, host_stack_bottom, host_stack_size);
        emu_switch(&dead_sp, host_sp);
    }
    __builtin_trap();
}

namespace {

void run_block() {
    const unsigned n = blockDim.x * blockDim.y * blockDim.z;
    stats.blocks++;
    stats.threads += n;
    block.n = n;
    block.live = n;
    block.at_barrier = 0;
    block.threads.resize(n);
    const unsigned warps = (n + 31) / 32;
    block.warp_live.assign(warps, 0);
    block.warp_waiting.assign(warps, 0);
    while (stacks.size() < n) {
        const size_t bytes = stack_bytes + stack_colours;
        char *m = (char *)map_pages(bytes + page_bytes, PROT_READ | PROT_WRITE);
        mprotect(m, page_bytes, PROT_NONE);
        const size_t colour = stacks.size() * 17 % (stack_colours / 64) * 64;
        stacks.push_back(Stack{m + page_bytes, m + page_bytes + bytes - colour});
    }
    std::vector<unsigned> all(n);
    for (unsigned i = 0; i < n; i++) {
        Thread &t = block.threads[i];
        t.linear = i;
        t.idx = dim3(i % blockDim.x, (i / blockDim.x) % blockDim.y, i / (blockDim.x * blockDim.y));
        t.state = READY;
        t.stack = &stacks[i];
        t.fake_stack = nullptr;
        init_fiber(&t);
        block.warp_live[i / 32]++;
        all[i] = i;
    }
    block.ready.clear();
    release(all);
    /* the threads hand the turn to each other; the last one hands it back here */
    Thread *first = next_thread();
    stats.switches++;
    running = first;
    threadIdx = first->idx;
    started_by_host = true;
    void *fake = nullptr;
    switch_start(&fake, first->stack->lo, stack_size(first));
    emu_switch(&host_sp, first->sp);
    switch_finish(fake, nullptr, nullptr);
    running = nullptr;
}

} // namespace

/* ---- the device side (emu_device.h) ----------------------------------------------------------*/

void __syncthreads() {
    Thread *t = running;
    if (!t) emu_fail("__syncthreads outside a kernel");
    t->state = AT_BARRIER;
    hand_over(t);
}

uint64_t emu_warp_exchange(unsigned mask, uint64_t bits, EmuShuffle kind, int arg, int width) {
    Thread *t = running;
    if (!t) emu_fail("%s outside a kernel", shuffle_name(kind));
    if (mask != 0xffffffffu)
        emu_fail("%s with mask %#x: only full-warp masks are emulated", shuffle_name(kind), mask);
    if (width <= 0 || width > 32 || (width & (width - 1)) != 0)
        emu_fail("%s with width %d (expected a power of two up to 32)", shuffle_name(kind), width);
    const int lane = (int)(t->linear % 32), base = lane & ~(width - 1);
    int src = lane;
    switch (kind) {
    case EMU_SHFL_IDX: src = base + (arg & (width - 1)); break;
    case EMU_SHFL_UP: src = lane - arg >= base ? lane - arg : lane; break;
    case EMU_SHFL_DOWN: src = lane + arg < base + width ? lane + arg : lane; break;
    case EMU_SHFL_XOR: src = (lane ^ arg) >= 0 && (lane ^ arg) < base + width ? lane ^ arg : lane; break;
    case EMU_SYNCWARP: break;
    }
    t->kind = kind;
    t->src = src;
    t->value = bits;
    t->state = AT_WARP;
    hand_over(t);
    return t->result;
}

void *emu_dynamic_shared() {
    if (!running) emu_fail("dynamic shared memory outside a kernel");
    return dynamic_base;
}

void emu_static_shared(void *variable, size_t bytes) {
    if (!running) emu_fail("a __shared__ variable outside a kernel");
    for (const auto &r : static_shared)
        if (r.first == variable) return;
    static_shared.emplace_back(variable, bytes);
    memset(variable, 0xFF, bytes); /* before its first use, as before every later block */
}

void emu_check_kernel_pointer(const char *kernel, int index, const void *p) {
    initialise();
    if (!p) return;
    const EmuMemoryKind k = emu_memory_kind(p);
    if (k == EMU_DEVICE || k == EMU_PINNED) return;
    if (k == EMU_DEVICE_OUTSIDE) { /* one past the end of an allocation is a valid pointer */
        const Allocation *a = allocation_near(p);
        if (a && a->live && (const char *)p == a->base + a->bytes) return;
    }
    emu_fail("kernel %s: argument %d (%p) is %s, not device memory", kernel, index, p,
             memory_kind_name(k));
}

void emu_run_grid(const EmuLaunchConfig &c, void (*fn)(void *), void *arg) {
    initialise();
    if (running || launch) emu_fail("kernel %s launched from inside a kernel", c.name);
    const dim3 g = c.grid, b = c.block;
    const unsigned long long threads = (unsigned long long)b.x * b.y * b.z;
    if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 0x7FFFFFFFu || g.y > 65535 || g.z > 65535 ||
        threads == 0 || threads > 1024 || b.x > 1024 || b.y > 1024 || b.z > 64) {
        last_error = fail_call(cudaErrorInvalidConfiguration,
                               "kernel %s launched with grid (%u,%u,%u), block (%u,%u,%u): invalid "
                               "configuration",
                               c.name, g.x, g.y, g.z, b.x, b.y, b.z);
        return;
    }
    if (c.smem > (size_t)config.smem_optin ||
        (c.smem > smem_default && c.smem > smem_allowed)) {
        last_error = fail_call(cudaErrorInvalidValue,
                               "kernel %s launched with %zu bytes of dynamic shared memory: more "
                               "than %zu (allowed by cudaFuncSetAttribute; the device opts in up "
                               "to %d)",
                               c.name, c.smem, std::max(smem_allowed, smem_default),
                               config.smem_optin);
        return;
    }
    if (c.smem > dynamic_capacity) emu_fail("internal: shared memory capacity");
    flush_pending_copies(); /* the stream's earlier copies come first */
    if (c.smem > smem_default) smem_allowed = smem_default; /* used: the next one must ask again */

    stats.launches++;
    launch = &c;
    thread_main = fn;
    thread_arg = arg;
    gridDim = g;
    blockDim = b;
    dynamic_base = dynamic_end - (c.smem + 15) / 16 * 16;
    /* AddressSanitizer: nothing below the array, nor the rounding to 16 bytes above it */
    EMU_POISON(dynamic_end - dynamic_capacity, dynamic_capacity);
    EMU_UNPOISON(dynamic_base, c.smem);
    const unsigned long long blocks = (unsigned long long)g.x * g.y * g.z;
    std::vector<unsigned> order(blocks);
    std::iota(order.begin(), order.end(), 0u);
    arrange(order);
    emu_device_open();
    for (unsigned id : order) {
        blockIdx = dim3(id % g.x, (id / g.x) % g.y, (unsigned)(id / ((unsigned long long)g.x * g.y)));
        for (const auto &r : static_shared) memset(r.first, 0xFF, r.second);
        memset(dynamic_base, 0xFF, c.smem);
        run_block();
    }
    emu_device_close();
    launch = nullptr;
}

/* ---- emu_internal.h --------------------------------------------------------------------------*/

EmuMemoryKind emu_memory_kind(const void *p) {
    if (in_heap(p)) {
        const Allocation *a = allocation_near(p);
        if (!a || (const char *)p < a->base || (const char *)p >= a->base + a->bytes)
            return EMU_DEVICE_OUTSIDE;
        return a->live ? EMU_DEVICE : EMU_DEVICE_FREED;
    }
    return pinned_range(p) ? EMU_PINNED : EMU_HOST;
}

int emu_device_range(const void *p, size_t bytes, char *why) {
    if (bytes == 0) return 1;
    const EmuMemoryKind k = emu_memory_kind(p);
    if (k != EMU_DEVICE) {
        if (why) snprintf(why, 256, "%p is %s", p, memory_kind_name(k));
        return 0;
    }
    const Allocation *a = allocation_near(p);
    if ((const char *)p + bytes > a->base + a->bytes) {
        if (why)
            snprintf(why, 256, "%zu bytes from byte %zu of a %zu-byte device allocation overrun it",
                     bytes, (size_t)((const char *)p - a->base), a->bytes);
        return 0;
    }
    return 1;
}

void emu_device_open() {
    initialise();
    if (open_depth++ == 0 && config.protect)
        for (Allocation *a : live_allocations) protect(a, true);
}

void emu_device_close() {
    if (--open_depth == 0 && config.protect)
        for (Allocation *a : live_allocations) protect(a, false);
}

void emu_stream_point() { flush_pending_copies(); }

namespace {
void flush_pending_copies() {
    if (pending_copies.empty()) return;
    emu_device_open();
    for (const PendingCopy &c : pending_copies) memmove(c.dst, c.src, c.bytes);
    emu_device_close();
    pending_copies.clear();
}
} // namespace

void emu_message(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vmessage(fmt, ap);
    va_end(ap);
}

void emu_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vmessage(fmt, ap);
    va_end(ap);
    abort();
}

extern "C" void emu_set_order(int order) {
    initialise();
    config.order = order;
}
extern "C" int emu_get_order(void) {
    initialise();
    return config.order;
}

/* ---- the runtime API (shim/cuda_runtime.h) ---------------------------------------------------*/

extern "C" {

cudaError_t cudaGetDeviceCount(int *count) {
    initialise();
    *count = config.devices;
    return config.devices > 0 ? cudaSuccess : cudaErrorNoDevice;
}

cudaError_t cudaSetDevice(int device) {
    initialise();
    if (device < 0 || device >= config.devices)
        return fail_call(cudaErrorInvalidDevice, "cudaSetDevice(%d) with %d device(s)", device,
                         config.devices);
    current_device = device;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device) {
    initialise();
    *device = current_device;
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
    initialise();
    flush_pending_copies();
    return cudaSuccess; /* everything ran when it was called */
}

/* Events: the wall-clock time of the record (every kernel has finished when its launch returns;
 * a pending copy is flushed first, as the event would wait for it). */
struct CUevent_st {
    double seconds;
    int recorded;
};

cudaError_t cudaEventCreate(cudaEvent_t *event) {
    initialise();
    if (!event) return cudaErrorInvalidValue;
    *event = new CUevent_st{0, 0};
    return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
    delete event;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    (void)stream;
    if (!event) return cudaErrorInvalidValue;
    flush_pending_copies();
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    event->seconds = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
    event->recorded = 1;
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    return event ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
    if (!ms || !start || !end || !start->recorded || !end->recorded) return cudaErrorInvalidValue;
    *ms = (float)(1e3 * (end->seconds - start->seconds));
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    (void)stream;
    initialise();
    flush_pending_copies();
    return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
    const cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) { return last_error; }

const char *cudaGetErrorName(cudaError_t error) {
    switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorHostMemoryAlreadyRegistered: return "cudaErrorHostMemoryAlreadyRegistered";
    case cudaErrorHostMemoryNotRegistered: return "cudaErrorHostMemoryNotRegistered";
    }
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t error) {
    switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorHostMemoryAlreadyRegistered:
        return "part or all of the requested memory range is already mapped";
    case cudaErrorHostMemoryNotRegistered:
        return "pointer does not correspond to a registered memory region";
    }
    return "unknown error";
}

cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device) {
    initialise();
    if (device < 0 || device >= config.devices)
        return fail_call(cudaErrorInvalidDevice, "cudaDeviceGetAttribute of device %d", device);
    if (attr == cudaDevAttrMaxSharedMemoryPerBlockOptin) *value = config.smem_optin;
    else if (attr == cudaDevAttrMultiProcessorCount) *value = config.sm_count;
    else
        return fail_call(cudaErrorInvalidValue, "cudaDeviceGetAttribute %d is not emulated",
                         (int)attr);
    return cudaSuccess;
}

cudaError_t cudaDeviceGetPCIBusId(char *pci_bus_id, int len, int device) {
    initialise();
    if (device < 0 || device >= config.devices || len <= 0)
        return fail_call(cudaErrorInvalidValue, "cudaDeviceGetPCIBusId(device %d, len %d)", device,
                         len);
    snprintf(pci_bus_id, (size_t)len, "0000:%02x:00.0", device + 1);
    return cudaSuccess;
}

cudaError_t emu_func_set_attribute(const void *func, enum cudaFuncAttribute attr, int value) {
    initialise();
    if (!func || attr != cudaFuncAttributeMaxDynamicSharedMemorySize)
        return fail_call(cudaErrorInvalidValue, "cudaFuncSetAttribute(%p, %d): not emulated", func,
                         (int)attr);
    if (value < 0 || value > config.smem_optin)
        return fail_call(cudaErrorInvalidValue,
                         "cudaFuncSetAttribute: %d bytes of dynamic shared memory, the device "
                         "allows %d",
                         value, config.smem_optin);
    smem_allowed = (size_t)value;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **device_ptr, size_t bytes) {
    initialise();
    if (!device_ptr) return fail_call(cudaErrorInvalidValue, "cudaMalloc with a NULL pointer");
    *device_ptr = nullptr;
    if (bytes == 0) return cudaSuccess;
    const size_t rounded = (bytes + 255) / 256 * 256; /* cudaMalloc aligns to 256 bytes */
    const size_t region_bytes = (rounded + page_bytes - 1) / page_bytes * page_bytes;
    char *region = heap_cursor + page_bytes; /* after a guard page */
    if (region + region_bytes + page_bytes > heap_hi)
        return fail_call(cudaErrorMemoryAllocation, "cudaMalloc of %zu bytes: the emulated "
                         "device's %zu GiB of address space are used up", bytes, heap_reserve >> 30);
    heap_cursor = region + region_bytes;
    Allocation a{region, region_bytes, region + region_bytes - rounded, bytes, true};
    Allocation *stored = &(allocations[(uintptr_t)region] = a);
    live_allocations.push_back(stored);
    /* uninitialised: NaN as bf16, fp32 and fp64. Not above 16 MiB (cuBLASLt's workspace): those
     * pages stay untouched, so that switching their access at every launch costs nothing */
    if (bytes <= poison_limit) {
        protect(stored, true);
        memset(stored->base, 0xFF, bytes);
    }
    protect(stored, open_depth > 0 || !config.protect);
    /* the pages' bytes outside the allocation (before it, and the rounding up to 256 bytes that
     * the guard page does not catch): AddressSanitizer reports any use */
    EMU_POISON(region, (size_t)(stored->base - region));
    EMU_POISON(stored->base + bytes, rounded - bytes);
    *device_ptr = stored->base;
    return cudaSuccess;
}

cudaError_t cudaFree(void *device_ptr) {
    initialise();
    flush_pending_copies(); /* cudaFree synchronises */
    if (!device_ptr) return cudaSuccess;
    Allocation *a = in_heap(device_ptr) ? allocation_near(device_ptr) : nullptr;
    if (!a || !a->live || a->base != device_ptr)
        return fail_call(cudaErrorInvalidValue, "cudaFree(%p): %s", device_ptr,
                         !a || a->base != device_ptr ? "not the start of a device allocation"
                                                     : "freed twice");
    a->live = false;
    live_allocations.erase(std::find(live_allocations.begin(), live_allocations.end(), a));
    mprotect(a->region, a->region_bytes, PROT_NONE);
    madvise(a->region, a->region_bytes, MADV_DONTNEED);
    return cudaSuccess;
}

static cudaError_t copy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                        const char *call, bool async) {
    initialise();
    if (bytes == 0) return cudaSuccess;
    static const char *const kind_names[] = {"cudaMemcpyHostToHost", "cudaMemcpyHostToDevice",
                                             "cudaMemcpyDeviceToHost", "cudaMemcpyDeviceToDevice",
                                             "cudaMemcpyDefault"};
    if ((int)kind < 0 || (int)kind > 4)
        return fail_call(cudaErrorInvalidMemcpyDirection, "%s with kind %d", call, (int)kind);
    const EmuMemoryKind dk = emu_memory_kind(dst), sk = emu_memory_kind(src);
    const bool dst_device = in_heap(dst), src_device = in_heap(src);
    const bool want_dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool want_src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (kind != cudaMemcpyDefault && (dst_device != want_dst_device || src_device != want_src_device))
        return fail_call(cudaErrorInvalidValue, "%s(%s): the destination is %s and the source %s",
                         call, kind_names[kind], memory_kind_name(dk), memory_kind_name(sk));
    char why[256];
    if (dst_device && !emu_device_range(dst, bytes, why))
        return fail_call(cudaErrorInvalidValue, "%s of %zu bytes: destination: %s", call, bytes, why);
    if (src_device && !emu_device_range(src, bytes, why))
        return fail_call(cudaErrorInvalidValue, "%s of %zu bytes: source: %s", call, bytes, why);
    /* asynchronous for real only with page-locked host memory (pageable memory is staged at once) */
    const bool later = async && ((dst_device && sk == EMU_PINNED) || (src_device && dk == EMU_PINNED));
    if (later) {
        pending_copies.push_back(PendingCopy{dst, src, bytes});
        return cudaSuccess;
    }
    flush_pending_copies();
    emu_device_open();
    memmove(dst, src, bytes);
    emu_device_close();
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind) {
    return copy(dst, src, bytes, kind, "cudaMemcpy", false);
}

cudaError_t cudaMemcpy2D(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                         size_t height, enum cudaMemcpyKind kind) {
    if (width > dpitch || width > spitch)
        return fail_call(cudaErrorInvalidValue, "cudaMemcpy2D: width %zu bytes exceeds a pitch "
                         "(dpitch %zu, spitch %zu)", width, dpitch, spitch);
    for (size_t row = 0; row < height; row++) {
        cudaError_t rc = copy((char *)dst + row * dpitch, (const char *)src + row * spitch, width,
                              kind, "cudaMemcpy2D", false);
        if (rc != cudaSuccess) return rc;
    }
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                            cudaStream_t stream) {
    (void)stream; /* one stream: the default one */
    return copy(dst, src, bytes, kind, "cudaMemcpyAsync", true);
}

cudaError_t cudaMemset(void *device_ptr, int value, size_t bytes) {
    initialise();
    flush_pending_copies();
    char why[256];
    if (!emu_device_range(device_ptr, bytes, why))
        return fail_call(cudaErrorInvalidValue, "cudaMemset of %zu bytes: %s", bytes, why);
    emu_device_open();
    memset(device_ptr, value, bytes);
    emu_device_close();
    return cudaSuccess;
}

cudaError_t cudaHostRegister(void *host_ptr, size_t bytes, unsigned int flags) {
    initialise();
    if (!host_ptr || bytes == 0 || (flags & ~0x0Fu) != 0)
        return fail_call(cudaErrorInvalidValue, "cudaHostRegister(%p, %zu bytes, flags %#x)",
                         host_ptr, bytes, flags);
    if (in_heap(host_ptr))
        return fail_call(cudaErrorInvalidValue, "cudaHostRegister of device memory (%p)", host_ptr);
    const uintptr_t lo = (uintptr_t)host_ptr, hi = lo + bytes;
    for (const auto &r : pinned)
        if (lo < r.first + r.second && r.first < hi)
            return fail_call(cudaErrorHostMemoryAlreadyRegistered,
                             "cudaHostRegister(%p, %zu bytes) overlaps the page-locked range "
                             "[%#lx, +%zu)",
                             host_ptr, bytes, (unsigned long)r.first, r.second);
    pinned[lo] = bytes;
    return cudaSuccess;
}

cudaError_t cudaHostUnregister(void *host_ptr) {
    initialise();
    flush_pending_copies();
    auto it = pinned.find((uintptr_t)host_ptr);
    if (it == pinned.end() || malloc_host.count((uintptr_t)host_ptr))
        return fail_call(cudaErrorHostMemoryNotRegistered,
                         "cudaHostUnregister(%p): not the start of a cudaHostRegister range",
                         host_ptr);
    pinned.erase(it);
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **host_ptr, size_t bytes) {
    initialise();
    if (!host_ptr) return fail_call(cudaErrorInvalidValue, "cudaMallocHost with a NULL pointer");
    void *p = malloc(bytes ? bytes : 1);
    if (!p) return cudaErrorMemoryAllocation;
    pinned[(uintptr_t)p] = bytes ? bytes : 1;
    malloc_host[(uintptr_t)p] = bytes;
    *host_ptr = p;
    return cudaSuccess;
}

cudaError_t cudaFreeHost(void *host_ptr) {
    initialise();
    flush_pending_copies();
    if (!host_ptr) return cudaSuccess;
    if (!malloc_host.erase((uintptr_t)host_ptr))
        return fail_call(cudaErrorInvalidValue, "cudaFreeHost(%p): not from cudaMallocHost",
                         host_ptr);
    pinned.erase((uintptr_t)host_ptr);
    free(host_ptr);
    return cudaSuccess;
}

} /* extern "C" */
