/*
 * config.c - the key table and the INI/override parsing (INI syntax by inih).
 *
 * One table row per key: where it lives in Config, its type, its default (as text, parsed by the
 * same code as user input, so defaults are validated too) and its allowed range or choices.
 */
#include "config/config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <math.h>
#include <mpi.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "parallel/collectives.h"
#include "util/common.h"

/* A wrong setting is wrong on every rank alike (they read the same file and arguments): rank 0
 * says so once, instead of a copy of the line per rank. */
#define CONFIG_FATAL(...) PAFT_FATAL_SHARED(paft_world_rank() == 0, __VA_ARGS__)

typedef enum { KEY_INT, KEY_DOUBLE, KEY_BOOL, KEY_STRING, KEY_CHOICE, KEY_PAIR } KeyType;

typedef struct {
    const char *section;
    const char *key;
    KeyType type;
    size_t offset;       /* into Config */
    size_t size;         /* for strings: the buffer size */
    const char *fallback; /* default value, as text */
    double min, max;     /* numeric range (inclusive) */
    const char *choices; /* KEY_CHOICE: "a|b|c" */
} ConfigKey;

#define AT(field) offsetof(Config, field), sizeof(((Config *)0)->field)
#define NUM(sec, key, type, field, def, lo, hi) {sec, key, type, AT(field), def, lo, hi, NULL}
#define STR(sec, key, field, def) {sec, key, KEY_STRING, AT(field), def, 0, 0, NULL}
#define ONE_OF(sec, key, field, def, choices) {sec, key, KEY_CHOICE, AT(field), def, 0, 0, choices}
#define BIG 1e300

/* The keys of both training stages; `s` is "sft" or "pref", `f` the StageConfig member. */
#define STAGE_KEYS(s, f, lr_default, micro_batch_max)                                              \
    STR(s, "data", f.data, ""), NUM(s, "lr", KEY_DOUBLE, f.lr, lr_default, 0, 10),                 \
        NUM(s, "steps", KEY_INT, f.steps, "0", 0, 1e9),                                            \
        NUM(s, "batch", KEY_INT, f.batch, "64", 1, 1e7),                                           \
        NUM(s, "micro_batch", KEY_INT, f.micro_batch, "4", 1, micro_batch_max),                    \
        NUM(s, "seq_len", KEY_INT, f.seq_len, "2048", 2, 1e7),                                     \
        NUM(s, "warmup", KEY_DOUBLE, f.warmup, "0.1", 0, 1),                                       \
        ONE_OF(s, "schedule", f.schedule, "cosine", "cosine|linear|constant"),                     \
        NUM(s, "weight_decay", KEY_DOUBLE, f.weight_decay, "0", 0, 10),                            \
        NUM(s, "max_grad_norm", KEY_DOUBLE, f.max_grad_norm, "1.0", 0, BIG),                       \
        NUM(s, "seed", KEY_INT, f.seed, "42", 0, 2147483647.0)

static const ConfigKey config_keys[] = {
    STR("model", "path", model.path, ""),
    STR("model", "adapter", model.adapter, ""),
    ONE_OF("model", "dtype", model.dtype, "bf16", "bf16|fp32"),
    ONE_OF("model", "device", model.device, "cpu", "cpu|cuda|emulate"),
    NUM("model", "recompute", KEY_BOOL, model.recompute, "false", 0, 1),
    NUM("model", "logits_chunk", KEY_INT, model.logits_chunk, "0", 0, 1e9),
    ONE_OF("model", "attention", model.attention, "fused", "fused|simple"),

    NUM("lora", "r", KEY_INT, lora.r, "16", 1, 65536),
    NUM("lora", "alpha", KEY_DOUBLE, lora.alpha, "16", 1e-9, BIG),
    NUM("lora", "rslora", KEY_BOOL, lora.rslora, "false", 0, 1),
    STR("lora", "targets", lora.targets, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"),

    /* micro_batch: step.c gathers a micro-batch's record ids in a fixed array (1024; [pref] 512) */
    STAGE_KEYS("sft", sft, "2e-4", 1024),
    NUM("sft", "l1", KEY_DOUBLE, sft.l1, "1e-4", 0, BIG),

    STAGE_KEYS("pref", pref, "5e-6", 512),
    ONE_OF("pref", "loss", pref.loss, "dpo", "dpo|ipo|hinge|orpo"),
    NUM("pref", "beta", KEY_DOUBLE, pref.beta, "0.1", 1e-12, BIG),
    NUM("pref", "label_smoothing", KEY_DOUBLE, pref.label_smoothing, "0", 0, 0.5),

    NUM("parallel", "sft_ranks", KEY_INT, parallel.sft_ranks, "0", 0, 1e7),
    NUM("parallel", "tp", KEY_INT, parallel.tp, "1", 1, 1024),
    ONE_OF("parallel", "collectives", parallel.collectives, "auto", "auto|nccl|mpi"),

    STR("merge", "sft_adapter", merge.sft_adapter, ""),
    STR("merge", "pref_adapter", merge.pref_adapter, ""),
    STR("merge", "out", merge.out, ""),
    ONE_OF("merge", "method", merge.method, "ties",
           "linear|task_arithmetic|ties|dare_ties|dare_linear|magnitude|slerp"),
    NUM("merge", "weights", KEY_PAIR, merge.weights, "1.0,1.0", -BIG, BIG),
    /* density > 0 (merge.c refuses 0 for every method: after training, in paft run) */
    NUM("merge", "density", KEY_PAIR, merge.density, "1.0,1.0", 1e-12, 1),
    ONE_OF("merge", "normalize", merge.normalize, "auto", "auto|true|false"),
    NUM("merge", "lambda", KEY_DOUBLE, merge.lambda, "1.0", -BIG, BIG),
    ONE_OF("merge", "sign", merge.sign, "sum", "sum|count"),
    ONE_OF("merge", "rescale", merge.rescale, "density", "density|l1"),
    NUM("merge", "seed", KEY_INT, merge.seed, "0", 0, 2147483647.0),
    ONE_OF("merge", "dtype", merge.dtype, "bf16", "bf16|fp32"),
    ONE_OF("merge", "device", merge.device, "auto", "auto|cpu|cuda"),

    STR("eval", "sft_data", eval.sft_data, ""),
    STR("eval", "pref_data", eval.pref_data, ""),

    STR("output", "dir", output.dir, "runs/paft"),
    NUM("output", "checkpoint_every", KEY_INT, output.checkpoint_every, "500", 0, 1e9),
    NUM("output", "log_every", KEY_INT, output.log_every, "1", 1, 1e9),
    NUM("output", "stop_after", KEY_INT, output.stop_after, "0", 0, 1e9),
};
#define N_CONFIG_KEYS ((int)(sizeof config_keys / sizeof config_keys[0]))

static const ConfigKey *find_key(const char *section, const char *key) {
    for (int i = 0; i < N_CONFIG_KEYS; i++)
        if (strcmp(config_keys[i].section, section) == 0 && strcmp(config_keys[i].key, key) == 0)
            return &config_keys[i];
    return NULL;
}

static int section_exists(const char *section) {
    for (int i = 0; i < N_CONFIG_KEYS; i++)
        if (strcmp(config_keys[i].section, section) == 0) return 1;
    return 0;
}


static int choice_allowed(const char *choices, const char *value) {
    size_t n = strlen(value);
    for (const char *p = choices; *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, value, n) == 0) return 1;
        p += len + (bar ? 1 : 0);
    }
    return 0;
}

static void check_range(const ConfigKey *k, double v, const char *value, const char *origin) {
    if (v < k->min || v > k->max)
        CONFIG_FATAL("%s: %s.%s = %s is out of range [%g, %g]", origin, k->section, k->key, value,
                   k->min, k->max);
}

void config_set(Config *cfg, const char *section, const char *key, const char *value,
                const char *origin) {
    const ConfigKey *k = find_key(section, key);
    if (!k) {
        if (!section_exists(section))
            CONFIG_FATAL("%s: unknown section [%s] (see docs/CONFIG.md for the keys)", origin,
                       section);
        CONFIG_FATAL("%s: unknown key '%s' in section [%s] (see docs/CONFIG.md)", origin, key,
                   section);
    }
    char *slot = (char *)cfg + k->offset;
    double v = 0;
    switch (k->type) {
    case KEY_INT:
        if (!paft_parse_number(value, &v) || v != floor(v))
            CONFIG_FATAL("%s: %s.%s = '%s' is not an integer", origin, section, key, value);
        check_range(k, v, value, origin);
        *(int *)slot = (int)v;
        break;
    case KEY_DOUBLE:
        if (!paft_parse_number(value, &v))
            CONFIG_FATAL("%s: %s.%s = '%s' is not a number", origin, section, key, value);
        check_range(k, v, value, origin);
        *(double *)slot = v;
        break;
    case KEY_BOOL:
        if (strcmp(value, "true") == 0 || strcmp(value, "1") == 0 || strcmp(value, "yes") == 0)
            *(int *)slot = 1;
        else if (strcmp(value, "false") == 0 || strcmp(value, "0") == 0 ||
                 strcmp(value, "no") == 0)
            *(int *)slot = 0;
        else
            CONFIG_FATAL("%s: %s.%s = '%s' is not a boolean (true or false)", origin, section, key,
                       value);
        break;
    case KEY_CHOICE: /* checked below, stored like a string */
    case KEY_STRING: {
        size_t n = strlen(value);
        /* inih keeps quotes; accept "..." so that empty paths can be written as "" */
        if (n >= 2 && value[0] == '"' && value[n - 1] == '"') {
            value++;
            n -= 2;
        } else if (n >= 1 && value[0] == '"') {
            /* inih cuts a value at " ;" (an inline comment) even inside quotes: config.ini's
             * dir = "/x ;y" came back as "/x, and the job wrote into a directory named '"' */
            CONFIG_FATAL("%s: %s.%s = '%s' opens a quote that is not closed (in an INI file ' ;' "
                         "starts a comment, even inside quotes: give a value holding ' ;' on the "
                         "command line)",
                         origin, section, key, value);
        }
        if (n >= k->size)
            CONFIG_FATAL("%s: %s.%s is %zu characters long, at most %zu are supported", origin,
                       section, key, n, k->size - 1);
        memcpy(slot, value, n);
        slot[n] = '\0';
        if (k->type == KEY_CHOICE && !choice_allowed(k->choices, slot))
            CONFIG_FATAL("%s: %s.%s = '%s' is not one of %s", origin, section, key, slot,
                       k->choices);
        break;
    }
    case KEY_PAIR: {
        const char *comma = strchr(value, ',');
        char first[128];
        double a = 0, b = 0;
        if (!comma || (size_t)(comma - value) >= sizeof first)
            CONFIG_FATAL("%s: %s.%s = '%s' must be two numbers 'sft,pref'", origin, section, key,
                       value);
        memcpy(first, value, (size_t)(comma - value));
        first[comma - value] = '\0';
        if (!paft_parse_number(first, &a) || !paft_parse_number(comma + 1, &b))
            CONFIG_FATAL("%s: %s.%s = '%s' must be two numbers 'sft,pref'", origin, section, key,
                       value);
        check_range(k, a, value, origin);
        check_range(k, b, value, origin);
        ((double *)slot)[0] = a;
        ((double *)slot)[1] = b;
        break;
    }
    }
}

void config_defaults(Config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    for (int i = 0; i < N_CONFIG_KEYS; i++)
        config_set(cfg, config_keys[i].section, config_keys[i].key, config_keys[i].fallback,
                   "built-in default");
}

/* Lines longer than inih's buffer. inih reads a line into a buffer of INI_MAX_LINE bytes (200 in
 * the distributions' builds, fixed when the library was compiled) and takes the rest of a longer
 * line for a line of its own: a long comment could end in "r = 64" and set it, and a path of 200
 * characters (a deep scratch directory; paft's own config.ini repeats what the command line gave)
 * could not be read at all. So such lines never reach inih whole: a long comment is passed on as an
 * empty one, and a long "key = value" line as "key = <LONG_VALUE_MARK><i>", the value kept here
 * and put back in on_ini_entry, cut as inih cuts a value. */
static const int ini_longest_line = INI_MAX_LINE - 3; /* room for "\r\n" and the terminator */
#define LONG_VALUE_MARK '\x01' /* refused anywhere else in the file */

typedef struct {
    char **values; /* the raw text after '=' of each long line */
    int n;
} LongValues;

/* inih's reading of a value, in its order: cut at an inline comment (';' after white space, the
 * blank after '=' included, so "key = ; note" is empty), then white space (isspace, as inih)
 * stripped from both ends. */
static char *ini_value_of(const char *raw) {
    size_t end = 0;
    int after_space = 0;
    while (raw[end] && !(after_space && raw[end] == ';')) {
        after_space = isspace((unsigned char)raw[end]);
        end++;
    }
    while (end > 0 && isspace((unsigned char)raw[end - 1])) end--;
    while (end > 0 && isspace((unsigned char)*raw)) raw++, end--;
    char *value = paft_malloc(end + 1);
    memcpy(value, raw, end);
    value[end] = '\0';
    return value;
}

/* One line longer than inih's buffer (without its line ending), as it goes on to inih. */
static void pass_long_line(FILE *out, const char *line, ssize_t n, const char *path, int number,
                           LongValues *longs) {
    ssize_t start = 0;
    if (number == 1 && n >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0) start = 3; /* inih skips a BOM */
    while (start < n && isspace((unsigned char)line[start])) start++;
    if (start == n || line[start] == ';' || line[start] == '#') { /* a comment: all of it */
        fputs(";\n", out);
        return;
    }
    const char *eq = memchr(line, '=', (size_t)n);
    const char *colon = memchr(line, ':', (size_t)n); /* inih splits at the first of '=' ':' */
    if (!eq || (colon && colon < eq)) eq = colon;
    if (line[start] == '[' || !eq || eq - line > ini_longest_line - 16)
        CONFIG_FATAL("%s: line %d is %zd characters long; the INI reader takes at most %d for "
                     "anything but a value: shorten it",
                     path, number, n, ini_longest_line);
    longs->values = paft_realloc(longs->values, (size_t)(longs->n + 1) * sizeof(char *));
    char *raw = paft_malloc((size_t)(n - (eq + 1 - line)) + 1);
    memcpy(raw, eq + 1, (size_t)(n - (eq + 1 - line)));
    raw[n - (eq + 1 - line)] = '\0';
    longs->values[longs->n] = raw;
    fprintf(out, "%.*s= %c%d\n", (int)(eq - line), line, LONG_VALUE_MARK, longs->n);
    longs->n++;
}

/* The file's text as inih gets it: every line fits its buffer (long ones above). */
static char *read_config_text(const char *path, LongValues *longs) {
    FILE *f = fopen(path, "rb");
    if (!f) CONFIG_FATAL("%s: cannot open the configuration file", path);
    char *text = NULL, *line = NULL;
    size_t text_len = 0, capacity = 0;
    FILE *out = open_memstream(&text, &text_len);
    if (!out) PAFT_FATAL("%s: out of memory reading the configuration file", path);
    ssize_t n;
    for (int number = 1; (n = getline(&line, &capacity, f)) >= 0; number++) {
        /* inih reads a string: text past a NUL byte would be dropped without a word */
        if (memchr(line, '\0', (size_t)n))
            CONFIG_FATAL("%s: line %d holds a NUL byte: not a text file", path, number);
        if (memchr(line, LONG_VALUE_MARK, (size_t)n))
            CONFIG_FATAL("%s: line %d holds a control character (0x01): not a text file", path,
                         number);
        ssize_t len = n;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) len--;
        if (len > ini_longest_line)
            pass_long_line(out, line, len, path, number, longs);
        else
            fwrite(line, 1, (size_t)n, out);
    }
    free(line);
    fclose(f);
    fclose(out);
    return text;
}

typedef struct {
    Config *cfg;
    const char *path;
    unsigned char set[N_CONFIG_KEYS]; /* keys the file has set, to refuse a second setting */
    const LongValues *longs;
} IniContext;

static int on_ini_entry(void *user, const char *section, const char *name, const char *value) {
    IniContext *ctx = user;
    if (!name) return 1; /* a section header alone */
    char *long_value = NULL;
    const char *mark = strchr(value, LONG_VALUE_MARK);
    if (mark) { /* read_config_text kept it */
        const int i = atoi(mark + 1);
        if (i < 0 || i >= ctx->longs->n) PAFT_FATAL("%s: internal: long value %d", ctx->path, i);
        const char *raw = ctx->longs->values[i];
        if (mark == value) { /* "key = <long value>": inih cuts it the same way */
            value = long_value = ini_value_of(raw);
        } else {
            /* an indented long line, which inih takes whole as the continuation of the previous
             * value: "<text>= <mark>i" back to "<text>=<raw>", so that a message shows the line */
            const size_t head = (size_t)(mark - 1 - value), n = strlen(raw);
            long_value = paft_malloc(head + n + 1);
            memcpy(long_value, value, head);
            memcpy(long_value + head, raw, n + 1);
            for (size_t end = head + n; end > 0 && isspace((unsigned char)long_value[end - 1]);)
                long_value[--end] = '\0';
            value = long_value;
        }
    }
    config_set(ctx->cfg, section, name, value, ctx->path); /* an unknown key ends the job here */
    free(long_value);
    /* inih hands over a repeated key, or an indented line that continues a value, as a second
     * setting; the last would silently win. (On the command line the last one does win, so that
     * a job script can override its own defaults.) */
    const int i = (int)(find_key(section, name) - config_keys);
    if (ctx->set[i])
        CONFIG_FATAL("%s: %s.%s is set more than once (a repeated key, or an indented line read as "
                   "the continuation of its value)", ctx->path, section, name);
    ctx->set[i] = 1;
    return 1;
}

void config_load_file(Config *cfg, const char *path) {
    if (paft_is_directory(path)) CONFIG_FATAL("%s: is a directory, expected an INI file", path);
    LongValues longs = {NULL, 0};
    char *text = read_config_text(path, &longs);
    IniContext ctx = {cfg, path, {0}, &longs};
    int rc = ini_parse_string(text, on_ini_entry, &ctx);
    free(text);
    for (int i = 0; i < longs.n; i++) free(longs.values[i]);
    free(longs.values);
    if (rc == -2) PAFT_FATAL("%s: out of memory while parsing", path);
    if (rc > 0) CONFIG_FATAL("%s: line %d: not an INI line ([section] or key = value)", path, rc);
}

int config_apply_override(Config *cfg, const char *arg) {
    const char *eq = strchr(arg, '=');
    const char *dot = strchr(arg, '.');
    if (!eq || !dot || dot > eq) return 0;
    char section[64], key[64];
    size_t slen = (size_t)(dot - arg), klen = (size_t)(eq - dot - 1);
    if (slen == 0 || klen == 0 || slen >= sizeof section || klen >= sizeof key)
        CONFIG_FATAL("command line: '%s' is not of the form section.key=value", arg);
    memcpy(section, arg, slen);
    section[slen] = '\0';
    memcpy(key, dot + 1, klen);
    key[klen] = '\0';
    config_set(cfg, section, key, eq + 1, "command line");
    return 1;
}

/* Every rank of a job must run with the same settings: an MPMD launch with other arguments on some
 * ranks, or another file at the same path on another node, would otherwise train and merge with
 * mixed settings, or wait forever in a collective that some ranks skip. Rank 0's settings (as
 * config_write prints them) go to every rank; a rank whose own differ ends the job, naming the
 * first setting that differs. */
static void require_same_on_every_rank(const Config *cfg) {
    int initialized = 0, size = 1, rank = 0;
    CHECK_MPI(MPI_Initialized(&initialized));
    if (!initialized) return; /* a unit test without MPI */
    CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size));
    CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    if (size == 1) return;
    char *mine = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&mine, &len);
    if (!f) PAFT_FATAL("out of memory writing the configuration");
    config_write(cfg, f);
    fclose(f);
    char *root = broadcast_string(mine, MPI_COMM_WORLD);
    if (strcmp(root, mine) != 0) {
        const char *a = mine, *b = root;
        char section[64] = "";
        for (;;) { /* the first line that differs, and the section it is in */
            const size_t la = strcspn(a, "\n"), lb = strcspn(b, "\n");
            if (la != lb || strncmp(a, b, la) != 0)
                PAFT_FATAL("the configuration differs between ranks (another file or other "
                           "arguments on some ranks?): %s '%.*s' here, '%.*s' on rank 0", section,
                           (int)la, a, (int)lb, b);
            if (*a == '[') snprintf(section, sizeof section, "%.*s", (int)la, a);
            a += la + (a[la] != '\0');
            b += lb + (b[lb] != '\0');
        }
    }
    if (rank != 0) free(root);
    free(mine);
}

int config_from_args(Config *cfg, int argc, char **argv, char **extra, int max_extra) {
    config_defaults(cfg);
    int i = 1, n_extra = 0;
    if (argc > 1 && !strchr(argv[1], '=')) {
        config_load_file(cfg, argv[1]);
        i = 2;
    }
    for (; i < argc; i++) {
        if (config_apply_override(cfg, argv[i])) continue;
        if (!strchr(argv[i], '='))
            CONFIG_FATAL("command line: unexpected argument '%s' (the configuration file comes "
                       "first, then section.key=value or name=value)",
                       argv[i]);
        if (n_extra >= max_extra)
            CONFIG_FATAL("command line: unexpected argument '%s' for 'paft %s'", argv[i], argv[0]);
        extra[n_extra++] = argv[i];
    }
    require_same_on_every_rank(cfg);
    return n_extra;
}

void config_write(const Config *cfg, FILE *out) {
    const char *section = "";
    for (int i = 0; i < N_CONFIG_KEYS; i++) {
        const ConfigKey *k = &config_keys[i];
        const char *slot = (const char *)cfg + k->offset;
        if (strcmp(section, k->section) != 0) {
            fprintf(out, "%s[%s]\n", i ? "\n" : "", k->section);
            section = k->section;
        }
        fprintf(out, "%s = ", k->key);
        switch (k->type) {
        case KEY_INT: fprintf(out, "%d\n", *(const int *)slot); break;
        case KEY_DOUBLE: fprintf(out, "%.17g\n", *(const double *)slot); break;
        case KEY_BOOL: fprintf(out, "%s\n", *(const int *)slot ? "true" : "false"); break;
        case KEY_PAIR:
            fprintf(out, "%.17g,%.17g\n", ((const double *)slot)[0], ((const double *)slot)[1]);
            break;
        case KEY_STRING:
        case KEY_CHOICE: fprintf(out, "\"%s\"\n", slot); break;
        }
    }
}

void config_save(const Config *cfg, const char *path, const char *what) {
    /* PATH.tmp.<pid>, as every writer names its temporary: two jobs writing the same stage
     * directory must not rename each other's file away */
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        PAFT_FATAL("%s: path too long", path);
    FILE *f = fopen(tmp, "w");
    if (!f) PAFT_FATAL("%s: cannot write: %s", tmp, strerror(errno));
    fprintf(f, "; %s: the effective configuration (the file, then the command line's overrides),\n"
               "; written by paft %s; paths are as given, relative to where the job started\n\n",
            what, PAFT_VERSION);
    config_write(cfg, f);
    if (ferror(f) | fclose(f)) PAFT_FATAL("%s: cannot write: %s", tmp, strerror(errno));
    if (rename(tmp, path) != 0) PAFT_FATAL("%s: cannot rename to %s: %s", tmp, path, strerror(errno));
}
