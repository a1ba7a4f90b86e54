/*
 * fuzz_config.c - the INI configuration and the command line's section.key=value overrides.
 *
 * The input is the INI file's text up to the first NUL byte; what follows is a list of command
 * line arguments separated by NUL bytes. The file is loaded as `paft CMD FILE` loads it (every
 * error must name the file), then the arguments are applied (every error must say "command
 * line"), then the configuration is written out as `paft run` records it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "fuzz_harness.h"

static const char *dir;
static FILE *sink;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    dir = fuzz_init();
    sink = fopen("/dev/null", "w");
    if (!sink) abort();
    return 0;
}

static void load_file(Config *cfg, const char *path) {
    config_defaults(cfg);
    config_load_file(cfg, path);
}

static void apply_arguments(Config *cfg, char **args, int n) {
    char *argv[18] = {"train"};
    for (int i = 0; i < n; i++) argv[i + 1] = args[i];
    char *extra[4];
    config_from_args(cfg, n + 1, argv, extra, 4); /* no file: the defaults, then the arguments */
    for (int i = 0; i < n; i++) config_apply_override(cfg, args[i]);
    config_write(cfg, sink);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[4096];
    static Config cfg; /* large (paths of 1 KB each): not on the stack */
    const uint8_t *nul = memchr(data, 0, size);
    size_t ini_len = nul ? (size_t)(nul - data) : size;
    fuzz_write_file(path, dir, "paft.ini", data, ini_len);

    fuzz_begin(path);
    if (setjmp(fuzz_on_fatal) == 0) load_file(&cfg, path);
    fuzz_end();

    if (!nul) return 0;
    /* the arguments: NUL-terminated strings after the file (the last one may be unterminated),
     * none of them starting like the file name so that config_from_args treats all as overrides */
    size_t rest = size - ini_len - 1;
    char *copy = malloc(rest + 1);
    memcpy(copy, nul + 1, rest);
    copy[rest] = '\0';
    char *args[16];
    int n = 0;
    for (char *p = copy; p < copy + rest + 1 && n < 16; p += strlen(p) + 1)
        if (strchr(p, '=')) args[n++] = p;
    fuzz_begin("command line");
    if (setjmp(fuzz_on_fatal) == 0) apply_arguments(&cfg, args, n);
    fuzz_end();
    free(copy);
    return 0;
}
