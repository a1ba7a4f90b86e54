/* test_config.c - the configuration: defaults, INI files, overrides and their validation. */
#include <stdio.h>
#include <string.h>

#include "config/config.h"
#include "test_util.h"

int main(int argc, char **argv) {
    Config cfg;
    config_defaults(&cfg);
    CHECK(cfg.lora.r == 16, "r %d", cfg.lora.r);
    CHECK_CLOSE(cfg.sft.lr, 2e-4, 0, 0, "sft.lr default");
    CHECK_CLOSE(cfg.pref.lr, 5e-6, 0, 0, "pref.lr default");
    CHECK_CLOSE(cfg.sft.l1, 1e-4, 0, 0, "sft.l1 default");
    CHECK(strcmp(cfg.merge.method, "ties") == 0, "method %s", cfg.merge.method);
    CHECK(strcmp(cfg.pref.loss, "dpo") == 0, "loss %s", cfg.pref.loss);
    CHECK(cfg.merge.weights[0] == 1.0 && cfg.merge.weights[1] == 1.0, "weights");

    /* an INI file over the defaults, with comments, quotes and a pair */
    const char *path = "test_config.ini";
    FILE *f = fopen(path, "w");
    fprintf(f, "; a comment\n[model]\npath = some/dir ; inline comment\nadapter = \"\"\n"
               "[lora]\nr = 8\nalpha = 32\nrslora = true\n"
               "[merge]\nmethod = dare_ties\ndensity = 0.5, 0.25\n[pref]\nloss = orpo\n");
    fclose(f);
    config_load_file(&cfg, path);
    CHECK(strcmp(cfg.model.path, "some/dir") == 0, "path '%s'", cfg.model.path);
    CHECK(cfg.model.adapter[0] == '\0', "adapter '%s'", cfg.model.adapter);
    CHECK(cfg.lora.r == 8 && cfg.lora.rslora == 1, "r %d rslora %d", cfg.lora.r, cfg.lora.rslora);
    CHECK_CLOSE(cfg.lora.alpha, 32, 0, 0, "alpha");
    CHECK(strcmp(cfg.merge.method, "dare_ties") == 0, "method %s", cfg.merge.method);
    CHECK(cfg.merge.density[0] == 0.5 && cfg.merge.density[1] == 0.25, "density %g %g",
          cfg.merge.density[0], cfg.merge.density[1]);
    CHECK(strcmp(cfg.pref.loss, "orpo") == 0, "loss %s", cfg.pref.loss);

    /* overrides and command arguments */
    char *args[] = {"train", (char *)path, "lora.r=4", "stage=dpo", "merge.weights=0.7,0.3"};
    char *extra[4];
    int n_extra = config_from_args(&cfg, 5, args, extra, 4);
    CHECK(cfg.lora.r == 4, "override r %d", cfg.lora.r);
    CHECK(n_extra == 1 && strcmp(extra[0], "stage=dpo") == 0, "extra %d", n_extra);
    CHECK(cfg.merge.weights[0] == 0.7 && cfg.merge.weights[1] == 0.3, "weights");
    CHECK(cfg.lora.alpha == 32, "file value kept under overrides");

    /* the written configuration reads back to the same values */
    f = fopen("test_config_out.ini", "w");
    config_write(&cfg, f);
    fclose(f);
    Config again;
    config_defaults(&again);
    config_load_file(&again, "test_config_out.ini");
    CHECK(memcmp(&cfg, &again, sizeof cfg) == 0, "config_write round trip");

    /* config_save: the same through its file (comment header included), and no .tmp left */
    config_save(&cfg, "test_config_saved.ini", "test_config");
    Config saved;
    config_defaults(&saved);
    config_load_file(&saved, "test_config_saved.ini");
    CHECK(memcmp(&cfg, &saved, sizeof cfg) == 0, "config_save round trip");
    CHECK(fopen("test_config_saved.ini.tmp", "r") == NULL, "config_save left its .tmp");
    /* lines longer than inih's buffer: a value of a path of 1000 characters (a deep scratch
     * directory) reads whole, cut as inih cuts a value (blanks, an inline comment); a long comment
     * ending in what looks like a setting sets nothing; paft's own config.ini of such paths reads
     * back the same */
    char long_dir[1001];
    for (int i = 0; i < 1000; i++) long_dir[i] = i % 50 == 0 ? '/' : 'd';
    long_dir[1000] = '\0';
    f = fopen("test_config_long.ini", "w");
    fprintf(f, "[lora]\nr = 4\n;");
    for (int i = 0; i < 300; i++) fputc('x', f);
    fprintf(f, " r = 64\n[output]\ndir =   %s ; where it goes   \n[model]\npath = \"%s/m\"\n",
            long_dir, long_dir);
    fclose(f);
    Config long_cfg;
    config_defaults(&long_cfg);
    config_load_file(&long_cfg, "test_config_long.ini");
    CHECK(long_cfg.lora.r == 4, "the long comment's tail set r = %d", long_cfg.lora.r);
    CHECK(strcmp(long_cfg.output.dir, long_dir) == 0, "long output.dir read as '%.60s...' (%zu)",
          long_cfg.output.dir, strlen(long_cfg.output.dir));
    CHECK(strlen(long_cfg.model.path) == 1002 && strncmp(long_cfg.model.path, long_dir, 1000) == 0,
          "long quoted model.path (%zu)", strlen(long_cfg.model.path));
    config_save(&long_cfg, "test_config_long_saved.ini", "test_config");
    Config long_again;
    config_defaults(&long_again);
    config_load_file(&long_again, "test_config_long_saved.ini");
    CHECK(memcmp(&long_cfg, &long_again, sizeof long_cfg) == 0, "config_save of long paths");
    /* cut as inih cuts, in its order: "key = ; note" is an empty value (the blank after '=' makes
     * ';' a comment), white space is isspace's (a trailing form feed goes); a long first line after
     * a byte order mark is a comment like any other */
    f = fopen("test_config_long_cut.ini", "w");
    fprintf(f, "\xEF\xBB\xBF; a comment without an equals sign");
    for (int i = 0; i < 300; i++) fputc('x', f);
    fprintf(f, "\n[output]\ndir = ; to be set: the scratch directory");
    for (int i = 0; i < 300; i++) fputc('y', f);
    fprintf(f, "\n[model]\npath = %s\f\n", long_dir);
    fclose(f);
    Config cut_cfg;
    config_defaults(&cut_cfg);
    config_load_file(&cut_cfg, "test_config_long_cut.ini");
    CHECK(cut_cfg.output.dir[0] == '\0', "long 'dir = ; note' read as '%.60s...'",
          cut_cfg.output.dir);
    CHECK(strcmp(cut_cfg.model.path, long_dir) == 0, "long path with a trailing form feed (%zu)",
          strlen(cut_cfg.model.path));
    (void)argc;
    (void)argv;
    return test_finish("test_config");
}
