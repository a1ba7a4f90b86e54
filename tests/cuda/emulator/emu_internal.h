/*
 * emu_internal.h - what emu_runtime.cpp offers the rest of the emulator (emu_cublaslt.cpp) and
 * the emulator's own check programs: the emulated device memory, its access switch, messages.
 */
#ifndef EMU_INTERNAL_H
#define EMU_INTERNAL_H

#include <cstddef>
#include <cstdint>

/* What an address is, seen from the emulated GPU. */
enum EmuMemoryKind {
    EMU_HOST,          /* ordinary host memory */
    EMU_PINNED,        /* page-locked host memory (cudaHostRegister, cudaMallocHost) */
    EMU_DEVICE,        /* inside a live cudaMalloc allocation */
    EMU_DEVICE_FREED,  /* inside an allocation cudaFree has released */
    EMU_DEVICE_OUTSIDE /* in the emulated device's address range, but in no allocation */
};
EmuMemoryKind emu_memory_kind(const void *p);

/* 1 when [p, p + bytes) lies inside one live device allocation; else 0, and `why` (when not
 * NULL, 256 bytes) says what is wrong with it. */
int emu_device_range(const void *p, size_t bytes, char *why);

/* Device memory is inaccessible to host code (PROT_NONE) except between open and close, which
 * the emulated kernels, copies and cuBLASLt calls are wrapped in. Nestable. */
void emu_device_open();
void emu_device_close();

/* A stream-ordered operation begins (cuBLASLt's matmul): earlier asynchronous copies finish. */
void emu_stream_point();

/* "EMU: ..." on stderr (with the running kernel, block and thread when inside one) */
void emu_message(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* the same, then abort: a bug in the code under test that a GPU would not report cleanly */
[[noreturn]] void emu_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The thread and block order (tests/cuda/emulator/README.md): 0 forward, 1 reverse, 2 shuffled.
 * The environment's EMU_ORDER (forward, reverse, shuffle) and EMU_SEED set the initial values. */
extern "C" void emu_set_order(int order);
extern "C" int emu_get_order(void);

#endif
