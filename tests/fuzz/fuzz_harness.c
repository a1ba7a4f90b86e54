/* fuzz_harness.c - the shared part of the fuzz harnesses (see fuzz_harness.h). */
#include "fuzz_harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

jmp_buf fuzz_on_fatal;

#define MAX_BASE_FDS 256
#define MAX_MAPPINGS 64

/* The harness's bookkeeping for one process (a test harness, not paft: the one place where state
 * outlives a call). */
static struct {
    int armed;           /* an input is running: a fatal error jumps back */
    const char *subject; /* what a fatal message must name */
    int check_message;
    int print_messages; /* PAFT_FUZZ_PRINT=1: every fatal message to stderr (what a corpus reaches) */
    int base_fds[MAX_BASE_FDS]; /* descriptors open after initialisation, kept across inputs */
    int n_base_fds;
    struct {
        void *addr;
        size_t len;
    } maps[MAX_MAPPINGS]; /* mmaps made by the running input and not yet unmapped */
    int n_maps;
    void (*cleanup)(void);
    char dir[256];
} fz;

static int list_fds(int *out, int max) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) {
        perror("fuzz: /proc/self/fd");
        abort();
    }
    int n = 0, self = dirfd(d);
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.') continue;
        int fd = atoi(e->d_name);
        if (fd != self && n < max) out[n++] = fd;
    }
    closedir(d);
    return n;
}

static void close_new_fds(void) {
    int now[1024];
    int n = list_fds(now, 1024);
    for (int i = 0; i < n; i++) {
        int known = 0;
        for (int j = 0; j < fz.n_base_fds && !known; j++) known = now[i] == fz.base_fds[j];
        if (!known) close(now[i]);
    }
}

const char *fuzz_init(void) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized && MPI_Init(NULL, NULL) != MPI_SUCCESS) {
        fprintf(stderr, "fuzz: MPI_Init failed\n");
        abort();
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(fz.dir, sizeof fz.dir, "%s/paft-fuzz-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(fz.dir)) {
        perror("fuzz: mkdtemp");
        abort();
    }
    const char *any = getenv("PAFT_FUZZ_ANY_MESSAGE");
    fz.check_message = !(any && strcmp(any, "1") == 0);
    const char *print = getenv("PAFT_FUZZ_PRINT");
    fz.print_messages = print && strcmp(print, "1") == 0;
    fz.n_base_fds = list_fds(fz.base_fds, MAX_BASE_FDS);
    return fz.dir;
}

void fuzz_set_cleanup(void (*cleanup)(void)) { fz.cleanup = cleanup; }

void fuzz_begin(const char *subject) {
    fz.subject = subject;
    fz.n_maps = 0;
    fz.armed = 1;
}

void fuzz_end(void) { fz.armed = 0; }

/* What a longjmp out of a reader leaves behind, released before the next input. */
static void release_abandoned(void) {
    fz.armed = 0;
    if (fz.cleanup) fz.cleanup();
    for (int i = 0; i < fz.n_maps; i++) munmap(fz.maps[i].addr, fz.maps[i].len);
    fz.n_maps = 0;
    close_new_fds();
}

/* ---- the wrapped symbols ------------------------------------------------------------------- */

void __wrap_paft_fatal(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void __wrap_paft_fatal_shared(int reporter, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void __real_exit(int status);
void *__real_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
int __real_munmap(void *addr, size_t len);

/* What both fatal entry points do with their message: outside an input, what paft does; inside
 * one, check that it names the input, release what the reader held and jump back. */
static void fatal_error(const char *message, const char *file, int line) {
    if (!fz.armed) { /* outside an input (start-up): the real thing */
        fprintf(stderr, "paft: error: %s (%s:%d)\n", message, file, line);
        __real_exit(1);
    }
    if (fz.print_messages) fprintf(stderr, "fuzz: paft: error: %s (%s:%d)\n", message, file, line);
    if (fz.check_message && fz.subject && !strstr(message, fz.subject)) {
        fprintf(stderr,
                "fuzz: a fatal error that does not name the input '%s':\n  paft: error: %s "
                "(%s:%d)\n",
                fz.subject, message, file, line);
        abort();
    }
    release_abandoned();
    longjmp(fuzz_on_fatal, 1);
}

void __wrap_paft_fatal(const char *file, int line, const char *fmt, ...) {
    char message[2048];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    fatal_error(message, file, line);
}

/* PAFT_FATAL_SHARED (config parsing, argument errors): common.c forwards it to paft_fatal inside
 * its own file, where --wrap does not reach, so without this wrapper its message would end in
 * __wrap_exit unchecked. One process, so every rank is the reporter: no wait. */
void __wrap_paft_fatal_shared(int reporter, const char *file, int line, const char *fmt, ...) {
    (void)reporter;
    char message[2048];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    fatal_error(message, file, line);
}

/* paft_fatal's own exit (common.c calls paft_fatal inside its own file, where --wrap does not
 * reach: paft_malloc's out-of-memory path, paft_read_text_file) ends here. */
void __wrap_exit(int status) {
    if (!fz.armed) __real_exit(status);
    release_abandoned();
    longjmp(fuzz_on_fatal, 1);
}

void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    void *p = __real_mmap(addr, len, prot, flags, fd, off);
    if (fz.armed && p != MAP_FAILED && fz.n_maps < MAX_MAPPINGS) {
        fz.maps[fz.n_maps].addr = p;
        fz.maps[fz.n_maps].len = len;
        fz.n_maps++;
    }
    return p;
}

int __wrap_munmap(void *addr, size_t len) {
    for (int i = 0; i < fz.n_maps; i++)
        if (fz.maps[i].addr == addr) fz.maps[i] = fz.maps[--fz.n_maps];
    return __real_munmap(addr, len);
}

/* ---- helpers --------------------------------------------------------------------------------- */

void fuzz_write_file(char *out, const char *dir, const char *name, const void *data, size_t size) {
    snprintf(out, 4096, "%s/%s", dir, name);
    int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        perror(out);
        abort();
    }
    const uint8_t *p = data;
    while (size > 0) {
        ssize_t put = write(fd, p, size);
        if (put < 0 && errno == EINTR) continue;
        if (put <= 0) {
            perror(out);
            abort();
        }
        p += put;
        size -= (size_t)put;
    }
    if (close(fd) != 0) {
        perror(out);
        abort();
    }
}

uint8_t fuzz_u8(FuzzBytes *b) { return b->pos < b->size ? b->data[b->pos++] : 0; }

uint32_t fuzz_u32(FuzzBytes *b) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)fuzz_u8(b) << (8 * i);
    return v;
}

uint64_t fuzz_u64(FuzzBytes *b) { return fuzz_u32(b) | (uint64_t)fuzz_u32(b) << 32; }
