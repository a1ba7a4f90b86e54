/*
 * test_config_doc.c - docs/CONFIG.md lists the key table of src/config/config.c exactly: every key
 * once per section, no other, each with the table's default and its accepted values (range,
 * choices, length) in the words this file generates from the table.
 *
 *   test_config_doc docs/CONFIG.md           compare (the test)
 *   test_config_doc --print                  the default and "accepted" cells the page should have
 *
 * The table is static in config.c, so this file includes config.c itself (the test's own copy of
 * config_set & co.; the linker then takes nothing from config.o in paft_core). CONFIG.md's tables
 * are `| key | default | accepted | meaning |` under a heading naming their sections: `## [lora]`,
 * or `## [sft] and [pref]` for rows that hold for both; a row whose meaning says `**[sft] only**`
 * belongs to that section alone, and a cell `A (sft), B (pref)` gives each section its value.
 * Defaults are compared as values: both texts are parsed by config_set.
 */
#include "config/config.c"

#include "test_util.h"

/* The shortest text that reads back as v: 1e-12, 0.5, 65536, 1e9, 2147483647. */
static void format_number(char *out, size_t size, double v) {
    if (v == floor(v) && fabs(v) < 1e6) {
        snprintf(out, size, "%.0f", v);
        return;
    }
    for (int precision = 1; precision <= 17; precision++) {
        snprintf(out, size, "%.*g", precision, v);
        if (strtod(out, NULL) == v) break;
    }
    char *e = strchr(out, 'e'); /* 1e-09 -> 1e-9, 1e+09 -> 1e9 */
    if (!e) return;
    char *digits = e + 1, *from = e + 1;
    if (*from == '+') from++;
    else if (*from == '-') from++, digits++;
    while (*from == '0' && from[1]) from++;
    memmove(digits, from, strlen(from) + 1);
}

/* BIG stands for "no bound": every finite number a user writes. */
static void format_range(char *out, size_t size, const ConfigKey *k, const char *what) {
    char lo[64], hi[64];
    format_number(lo, sizeof lo, k->min);
    format_number(hi, sizeof hi, k->max);
    if (k->min == -BIG && k->max == BIG) snprintf(out, size, "any %s", what);
    else if (k->max == BIG) snprintf(out, size, "%s ≥ %s", what, lo);
    else if (k->min == -BIG) snprintf(out, size, "%s ≤ %s", what, hi);
    else snprintf(out, size, "%s in [%s, %s]", what, lo, hi);
}

/* The "accepted" cell of key k. */
static void accepted_text(char *out, size_t size, const ConfigKey *k) {
    switch (k->type) {
    case KEY_INT: format_range(out, size, k, "integer"); break;
    case KEY_DOUBLE: format_range(out, size, k, "number"); break;
    case KEY_BOOL: snprintf(out, size, "boolean"); break;
    case KEY_STRING: snprintf(out, size, "text, up to %zu characters", k->size - 1); break;
    case KEY_CHOICE: {
        size_t n = 0;
        out[0] = '\0';
        for (const char *p = k->choices; *p;) {
            const size_t len = strcspn(p, "|");
            n += (size_t)snprintf(out + n, size - n, "%s`%.*s`", n ? ", " : "", (int)len, p);
            p += len + (p[len] == '|');
        }
        break;
    }
    case KEY_PAIR: {
        char range[128];
        format_range(range, sizeof range, k, "each");
        if (k->min == -BIG && k->max == BIG) snprintf(out, size, "two numbers (sft,pref)");
        else snprintf(out, size, "two numbers (sft,pref), %s", range);
        break;
    }
    }
}

static char *trim(char *s) {
    while (*s == ' ') s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\n' || s[n - 1] == '\r')) s[--n] = '\0';
    return s;
}

/* Splits a table row at its unescaped bars; returns the number of cells. */
static int split_row(char *line, char **cells, int max) {
    int n = 0;
    char *p = strchr(line, '|');
    if (!p) return 0;
    for (p++; *p && n < max;) {
        char *q = p;
        while (*q && !(*q == '|' && q[-1] != '\\')) q++;
        if (!*q) break; /* the text after the last bar */
        *q = '\0';
        cells[n++] = trim(p);
        p = q + 1;
    }
    return n;
}

/* The part of a cell that applies to `section`: "A (sft), B (pref)" gives A to sft, B to pref. */
static void cell_for(char *out, size_t size, const char *cell, const char *section) {
    const char *mid = strstr(cell, " (sft), ");
    const size_t n = strlen(cell);
    if (mid && n > 7 && strcmp(cell + n - 7, " (pref)") == 0) {
        if (strcmp(section, "sft") == 0) snprintf(out, size, "%.*s", (int)(mid - cell), cell);
        else {
            const char *b = mid + strlen(" (sft), ");
            snprintf(out, size, "%.*s", (int)(cell + n - 7 - b), b);
        }
    } else {
        snprintf(out, size, "%s", cell);
    }
}

/* A default cell as the configuration text it stands for: `x` -> x. */
static void unquote(char *s) {
    const size_t n = strlen(s);
    if (n >= 2 && s[0] == '`' && s[n - 1] == '`') {
        memmove(s, s + 1, n - 2);
        s[n - 2] = '\0';
    }
}

static void check_row(const char *section, char **cells, int line_number, int *seen) {
    const ConfigKey *k = find_key(section, cells[0]);
    CHECK(k != NULL, "CONFIG.md line %d: [%s] %s is not a key of the table", line_number, section,
          cells[0]);
    if (!k) return;
    seen[k - config_keys]++;

    char doc_default[1200], expected[512], doc_accepted[512];
    cell_for(doc_default, sizeof doc_default, cells[1], section);
    unquote(doc_default);
    Config from_table, from_doc;
    memset(&from_table, 0, sizeof from_table);
    memset(&from_doc, 0, sizeof from_doc);
    config_set(&from_table, section, k->key, k->fallback, "the key table");
    config_set(&from_doc, section, k->key, doc_default, "docs/CONFIG.md's default");
    CHECK(memcmp((char *)&from_table + k->offset, (char *)&from_doc + k->offset, k->size) == 0,
          "CONFIG.md line %d: [%s] %s: default '%s', the table's is '%s'", line_number, section,
          k->key, doc_default, k->fallback);

    accepted_text(expected, sizeof expected, k);
    cell_for(doc_accepted, sizeof doc_accepted, cells[2], section);
    CHECK(strcmp(doc_accepted, expected) == 0,
          "CONFIG.md line %d: [%s] %s: accepted '%s', from the table: '%s'", line_number, section,
          k->key, doc_accepted, expected);
}

static void print_table(void) {
    for (int i = 0; i < N_CONFIG_KEYS; i++) {
        char accepted[512];
        accepted_text(accepted, sizeof accepted, &config_keys[i]);
        printf("[%s] %s | %s | %s\n", config_keys[i].section, config_keys[i].key,
               config_keys[i].fallback[0] ? config_keys[i].fallback : "`\"\"`", accepted);
    }
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--print") == 0) {
        print_table();
        return 0;
    }
    CHECK(argc == 2, "usage: test_config_doc docs/CONFIG.md | --print");
    if (argc != 2) return test_finish("test_config_doc");
    FILE *f = fopen(argv[1], "r");
    CHECK(f != NULL, "%s: cannot open", argv[1]);
    if (!f) return test_finish("test_config_doc");

    int seen[N_CONFIG_KEYS];
    memset(seen, 0, sizeof seen);
    char sections[4][CONFIG_WORD_MAX];
    int n_sections = 0, in_table = 0, line_number = 0, rows = 0;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        line_number++;
        if (strncmp(line, "## ", 3) == 0) { /* the sections this heading names: [a] and [b] */
            n_sections = 0;
            in_table = 0;
            for (const char *p = strchr(line, '['); p && n_sections < 4; p = strchr(p + 1, '[')) {
                const size_t len = strcspn(p + 1, "]");
                snprintf(sections[n_sections++], CONFIG_WORD_MAX, "%.*s", (int)len, p + 1);
            }
            continue;
        }
        if (line[0] != '|') {
            in_table = 0;
            continue;
        }
        char *cells[8] = {0};
        const int n = split_row(line, cells, 8);
        if (!in_table) { /* the header row */
            CHECK(n == 4 && strcmp(cells[0], "key") == 0 && strcmp(cells[1], "default") == 0 &&
                      strcmp(cells[2], "accepted") == 0 && strcmp(cells[3], "meaning") == 0,
                  "CONFIG.md line %d: a table's header is not "
                  "| key | default | accepted | meaning |", line_number);
            CHECK(n_sections > 0, "CONFIG.md line %d: a table under a heading without [section]",
                  line_number);
            in_table = 1;
            continue;
        }
        if (strncmp(cells[0], "---", 3) == 0) continue;
        CHECK(n == 4, "CONFIG.md line %d: %d cells, expected 4", line_number, n);
        if (n != 4) continue;
        rows++;
        for (int s = 0; s < n_sections; s++) {
            char only[CONFIG_WORD_MAX + 16];
            int for_one_section = 0, this_one = 0;
            for (int t = 0; t < n_sections; t++) {
                snprintf(only, sizeof only, "**[%s] only**", sections[t]);
                if (strstr(cells[3], only)) for_one_section = 1, this_one |= t == s;
            }
            if (!for_one_section || this_one) check_row(sections[s], cells, line_number, seen);
        }
    }
    fclose(f);
    CHECK(rows > 40, "CONFIG.md: only %d key rows read", rows);
    for (int i = 0; i < N_CONFIG_KEYS; i++)
        CHECK(seen[i] == 1, "CONFIG.md lists [%s] %s %d times (expected once)",
              config_keys[i].section, config_keys[i].key, seen[i]);
    return test_finish("test_config_doc");
}
