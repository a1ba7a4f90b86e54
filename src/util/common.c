/* common.c - fatal errors, logging, checked allocation and small file helpers. */
#include "util/common.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

int paft_world_rank(void) {
    int initialized = 0, finalized = 0, rank = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    return rank;
}

static int world_size_if_running(void) {
    int initialized = 0, finalized = 0, size = 1;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized) MPI_Comm_size(MPI_COMM_WORLD, &size);
    return size;
}

void paft_fatal(const char *file, int line, const char *fmt, ...) {
    char message[2048];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    fflush(stdout);
    fprintf(stderr, "paft: error: [rank %d] %s (%s:%d)\n", paft_world_rank(), message, file, line);
    fflush(stderr);
    /* With several ranks, exiting alone would leave the others blocked in their next collective:
     * MPI_Abort ends the whole job and the launcher reports this rank's non-zero status. */
    if (world_size_if_running() > 1) MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
}

void paft_fatal_shared(int reporter, const char *file, int line, const char *fmt, ...) {
    char message[2048];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    if (!reporter && world_size_if_running() > 1) {
        fflush(stdout);
        /* the reporter's MPI_Abort ends this process during the wait (PAFT_SHARED_ERROR_WAIT
         * seconds, 30 by default: the tests shorten it) */
        const char *wait_text = getenv("PAFT_SHARED_ERROR_WAIT");
        double wait = 30;
        if (wait_text && (!paft_parse_number(wait_text, &wait) || wait < 0)) wait = 30;
        for (int second = 0; second < (int)wait; second++) {
            struct timespec one = {1, 0};
            nanosleep(&one, NULL);
        }
    }
    paft_fatal(file, line, "%s", message);
}

void paft_check_mpi_failed(int rc, const char *call, const char *file, int line) {
    char text[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(rc, text, &len);
    paft_fatal(file, line, "MPI call failed: %s: %s", call, text);
}

void paft_log(const char *fmt, ...) {
    if (paft_world_rank() != 0) return;
    va_list args;
    va_start(args, fmt);
    vprintf(fmt, args);
    va_end(args);
    fflush(stdout);
}

void *paft_malloc_at(size_t size, const char *file, int line) {
    void *p = malloc(size ? size : 1);
    if (!p) paft_fatal(file, line, "out of memory allocating %zu bytes", size);
    return p;
}

void *paft_calloc_at(size_t count, size_t size, const char *file, int line) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) paft_fatal(file, line, "out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void *paft_realloc_at(void *ptr, size_t size, const char *file, int line) {
    void *p = realloc(ptr, size ? size : 1);
    if (!p) paft_fatal(file, line, "out of memory reallocating to %zu bytes", size);
    return p;
}

char *paft_strdup_at(const char *s, const char *file, int line) {
    size_t n = strlen(s) + 1;
    char *p = paft_malloc_at(n, file, line);
    memcpy(p, s, n);
    return p;
}

void paft_require_finite(const real *x, int64_t n, const char *path, const char *what,
                         const char *why) {
    for (int64_t k = 0; k < n; k++)
        if (!isfinite(x[k]))
            PAFT_FATAL("%s: %s holds a non-finite value (%g at element %lld)%s", path, what,
                       (double)x[k], (long long)k, why);
}

int paft_starts_like_json(const unsigned char *bytes, size_t n) {
    size_t i = 0;
    while (i < n && (bytes[i] == ' ' || bytes[i] == '\t' || bytes[i] == '\n' || bytes[i] == '\r'))
        i++;
    return i < n && (bytes[i] == '{' || bytes[i] == '[');
}

char *paft_read_file(const char *path, size_t max_bytes, size_t *out_len) {
    FILE *f = fopen(path, "rb");
    if (!f) PAFT_FATAL("%s: cannot open: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) PAFT_FATAL("%s: cannot seek: %s", path, strerror(errno));
    long size = ftell(f);
    if (size < 0) PAFT_FATAL("%s: cannot tell size: %s", path, strerror(errno));
    if ((size_t)size > max_bytes)
        PAFT_FATAL("%s: file is %ld bytes, more than the %zu expected for this kind of file", path,
                   size, max_bytes);
    rewind(f);
    char *text = paft_malloc((size_t)size + 1);
    if (size > 0 && fread(text, 1, (size_t)size, f) != (size_t)size)
        PAFT_FATAL("%s: short read", path);
    text[size] = '\0';
    fclose(f);
    if (out_len) *out_len = (size_t)size;
    return text;
}

char *paft_read_text_file(const char *path, size_t max_bytes, size_t *out_len) {
    size_t len = 0;
    char *text = paft_read_file(path, max_bytes, &len);
    /* the JSON parser reads up to the first NUL: whatever follows it would go unread */
    const char *nul = memchr(text, '\0', len);
    if (nul)
        PAFT_FATAL("%s: byte %zu is a NUL byte: not a text file", path, (size_t)(nul - text));
    if (out_len) *out_len = len;
    return text;
}

int paft_path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

int paft_is_directory(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int paft_same_file(const char *a, const char *b) {
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

void paft_absolute_path(const char *path, char *out, size_t n) {
    char buf[PATH_MAX];
    if (realpath(path, buf)) snprintf(out, n, "%s", buf);
    else snprintf(out, n, "%s", path);
}

void paft_make_dirs(const char *path) {
    char *p = paft_strdup(path);
    for (char *c = p + 1;; c++) {
        if (*c == '/' || *c == '\0') {
            char saved = *c;
            *c = '\0';
            if (mkdir(p, 0777) != 0 && errno != EEXIST)
                PAFT_FATAL("%s: cannot create directory: %s", p, strerror(errno));
            *c = saved;
            if (!saved) break;
        }
    }
    if (!paft_is_directory(path)) PAFT_FATAL("%s: exists and is not a directory", path);
    free(p);
}

char *paft_path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    int need_slash = a > 0 && dir[a - 1] != '/';
    char *out = paft_malloc(a + b + 2);
    memcpy(out, dir, a);
    if (need_slash) out[a++] = '/';
    memcpy(out + a, name, b + 1);
    return out;
}

int paft_parse_number(const char *text, double *out) {
    if (strpbrk(text, "xX")) return 0;
    char *end = NULL;
    errno = 0;
    const double v = strtod(text, &end);
    while (end && (*end == ' ' || *end == '\t')) end++;
    if (end == text || !end || *end != '\0' || errno == ERANGE || !isfinite(v)) return 0;
    *out = v;
    return 1;
}

JsonNumber json_number(double value) {
    JsonNumber n;
    if (isfinite(value)) snprintf(n.text, sizeof n.text, "%.8g", value);
    else snprintf(n.text, sizeof n.text, "null");
    return n;
}

double paft_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
