/*
 * fuzz_harness.h - what every libFuzzer harness of paft's readers shares (tests/fuzz/README.md).
 *
 * A reader that finds something wrong calls PAFT_FATAL (or PAFT_FATAL_SHARED), which prints and
 * exit()s. A harness runs thousands of inputs per second in one process, so the harnesses are
 * linked with
 *   -Wl,--wrap=paft_fatal,--wrap=paft_fatal_shared,--wrap=exit,--wrap=mmap,--wrap=munmap
 * and, while an input runs (between fuzz_begin's setjmp and fuzz_end), a fatal error jumps back to
 * the harness instead of ending the process. What the abandoned reader held is then released as
 * far as it can be: descriptors opened since start-up are closed, mappings made during the input
 * are unmapped, and (fuzz_hdf5) open HDF5 objects are closed. Heap memory it held leaks; the
 * harnesses run with -detect_leaks=0 and a generous -rss_limit_mb (run.sh).
 *
 * The oracle beyond crashes and sanitizer reports: every fatal message must name the input (the
 * `subject` given to fuzz_begin, a path or the word "command line"), since the project's rule is a
 * clear error that names the file. A message that does not is reported as a crash (abort) with
 * the message printed; PAFT_FUZZ_ANY_MESSAGE=1 turns that check off.
 */
#ifndef PAFT_FUZZ_HARNESS_H
#define PAFT_FUZZ_HARNESS_H

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>

/* The one piece of mutable state the harness needs: where a fatal error returns to. */
extern jmp_buf fuzz_on_fatal;

/* One input, in the form C allows setjmp in (the whole controlling expression of an if):
 *
 *     fuzz_begin(path);                        path: what every fatal message must name
 *     if (setjmp(fuzz_on_fatal) == 0) run(path);   a PAFT_FATAL inside run() lands here
 *     fuzz_end();
 *
 * run() is a function of its own, so no local of the caller changes between setjmp and longjmp. */
void fuzz_begin(const char *subject);
void fuzz_end(void);

/* Called once (LLVMFuzzerInitialize): MPI, a private scratch directory, the descriptor baseline.
 * The directory's path is returned (it lives until the process ends). */
const char *fuzz_init(void);
/* An optional hook run after a fatal error, before the descriptors are closed (HDF5 objects). */
void fuzz_set_cleanup(void (*cleanup)(void));

/* Write bytes to dir/name (replacing it) and return the path (static storage per call site is
 * the caller's: out must hold 4096 bytes). */
void fuzz_write_file(char *out, const char *dir, const char *name, const void *data, size_t size);

/* A byte reader over the input, for structure-aware harnesses: past the end every read is 0. */
typedef struct {
    const uint8_t *data;
    size_t size, pos;
} FuzzBytes;
uint8_t fuzz_u8(FuzzBytes *b);
uint32_t fuzz_u32(FuzzBytes *b);
uint64_t fuzz_u64(FuzzBytes *b);

#endif
