/*
 * common.h - what every paft module needs: the scalar type, fatal errors that end the whole MPI
 * job with the failing rank's message, checked allocation and the return-code check macros.
 *
 * Error policy (see docs/ARCHITECTURE.md): a reader or a parallel step that finds something wrong
 * calls PAFT_FATAL with a message naming the file and what was expected. paft_fatal prints one line
 * "paft: error: [rank R] message (src/file.c:123)" and ends the job: MPI_Abort when MPI is running
 * with more than one rank (so no other rank waits forever in a collective), exit(1) otherwise.
 */
#ifndef PAFT_COMMON_H
#define PAFT_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* The CPU backend computes in `real`: float in the program, double in the gradient-check build of
 * the tests (compiled with -DPAFT_REAL_DOUBLE), so finite differences can be checked tightly. */
#ifdef PAFT_REAL_DOUBLE
typedef double real;
#define PAFT_REAL_NAME "fp64"
#else
typedef float real;
#define PAFT_REAL_NAME "fp32"
#endif

#ifdef __cplusplus /* the CUDA backend (kernels/, .cu files) is compiled as C++ */
extern "C" {
#endif

#if defined(__GNUC__)
#define PAFT_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define PAFT_NORETURN __attribute__((noreturn))
#else
#define PAFT_PRINTF(a, b)
#define PAFT_NORETURN
#endif

/* Print "paft: error: [rank R] <message> (file:line)" and end the job (MPI_Abort or exit(1)). */
PAFT_NORETURN void paft_fatal(const char *file, int line, const char *fmt, ...) PAFT_PRINTF(3, 4);
#define PAFT_FATAL(...) paft_fatal(__FILE__, __LINE__, __VA_ARGS__)
/* A fatal error that a set of ranks all reach alike, because it follows from what they share (the
 * configuration, the rank counts): only the rank passing reporter = 1 (rank 0 of that set) prints
 * it, so a 64-rank job shows one line, not 64; its MPI_Abort ends the others, which wait for it.
 * Should it not come within 30 s (PAFT_SHARED_ERROR_WAIT; the verdict was not shared after all:
 * an MPMD launch with other arguments), they report it too. */
PAFT_NORETURN void paft_fatal_shared(int reporter, const char *file, int line, const char *fmt, ...)
    PAFT_PRINTF(4, 5);
#define PAFT_FATAL_SHARED(reporter, ...) paft_fatal_shared(reporter, __FILE__, __LINE__, __VA_ARGS__)

/* Informational output: printed by rank 0 of MPI_COMM_WORLD only (or always without MPI). */
void paft_log(const char *fmt, ...) PAFT_PRINTF(1, 2);

/* text as a whole decimal number (surrounding blanks allowed; no hexadecimal, which strtod would
 * take: "0x10" as 16), finite and in range: 1 and *out, or 0. For settings and arguments. */
int paft_parse_number(const char *text, double *out);

/* A number as JSON spells it, to print with %s: %.8g, or null where it is NaN or infinite (printf
 * would write nan or inf, which no JSON reader accepts: a skipped step in metrics.jsonl broke
 * every line-by-line reader of the file). */
typedef struct {
    char text[32];
} JsonNumber;
JsonNumber json_number(double value);
/* This process's rank in MPI_COMM_WORLD, or 0 when MPI is not (or no longer) running. */
int paft_world_rank(void);

/* Allocation that cannot return NULL: out of memory is a fatal error naming the size and site. */
void *paft_malloc_at(size_t size, const char *file, int line);
void *paft_calloc_at(size_t count, size_t size, const char *file, int line);
void *paft_realloc_at(void *ptr, size_t size, const char *file, int line);
char *paft_strdup_at(const char *s, const char *file, int line);
#define paft_malloc(size) paft_malloc_at((size), __FILE__, __LINE__)
#define paft_calloc(count, size) paft_calloc_at((count), (size), __FILE__, __LINE__)
#define paft_realloc(ptr, size) paft_realloc_at((ptr), (size), __FILE__, __LINE__)
#define paft_strdup(s) paft_strdup_at((s), __FILE__, __LINE__)

/* One check macro per library. Each names the failing call, the file, the line and the rank. */
#define CHECK_MPI(call)                                                                            \
    do {                                                                                           \
        int check_mpi_rc_ = (call);                                                                \
        if (check_mpi_rc_ != 0) paft_check_mpi_failed(check_mpi_rc_, #call, __FILE__, __LINE__);   \
    } while (0)
PAFT_NORETURN void paft_check_mpi_failed(int rc, const char *call, const char *file, int line);

/* HDF5 calls return a negative herr_t/hid_t on failure. */
#define CHECK_H5(call)                                                                             \
    do {                                                                                           \
        if ((long long)(call) < 0) paft_fatal(__FILE__, __LINE__, "HDF5 call failed: %s", #call);  \
    } while (0)

/* Every one of the n values is finite, else a fatal error "PATH: WHAT holds a non-finite value (x
 * at element k)WHY": a NaN in an adapter's factor would only give NaN losses later, far from the
 * cause. */
void paft_require_finite(const real *x, int64_t n, const char *path, const char *what,
                         const char *why);

/* Do these first bytes of a file look like JSON (blanks, then '{' or '[')? For naming a JSON file
 * given where a binary one is expected. */
int paft_starts_like_json(const unsigned char *bytes, size_t n);

/* Read a whole (small) file into a NUL-terminated buffer; fatal error naming the file on failure
 * (and when it holds more than max_bytes). */
char *paft_read_file(const char *path, size_t max_bytes, size_t *out_len);
/* The same for a text file (JSON): a NUL byte inside it is an error naming the file. */
char *paft_read_text_file(const char *path, size_t max_bytes, size_t *out_len);
/* Does the path exist, and is it a directory? */
int paft_path_exists(const char *path);
int paft_is_directory(const char *path);
/* Do both paths exist and name the same file or directory (device and inode: links and other
 * spellings of a path count)? */
int paft_same_file(const char *a, const char *b);
/* The absolute form of an existing path (realpath) into out[n]; the path itself if that fails. */
void paft_absolute_path(const char *path, char *out, size_t n);
/* mkdir -p: create PATH and its missing parents (fatal error naming the path on failure). */
void paft_make_dirs(const char *path);
/* Join a directory and a file name into a new string. */
char *paft_path_join(const char *dir, const char *name);
/* Wall-clock seconds from a monotonic clock. */
double paft_seconds(void);

#define PAFT_MIN(a, b) ((a) < (b) ? (a) : (b))
#define PAFT_MAX(a, b) ((a) > (b) ? (a) : (b))

#ifdef __cplusplus
}
#endif

#endif /* PAFT_COMMON_H */
