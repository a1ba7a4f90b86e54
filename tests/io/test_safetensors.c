/*
 * test_safetensors.c - the safetensors reader and writer: 16-bit float conversions against
 * hand-derived bit patterns and independent references, write -> read round trips (single file,
 * directory, sharded directory with index), the on-disk layout, block reads, and the fatal errors
 * of the API calls that `paft inspect` cannot reach (run in a forked child).
 *
 * Built twice: real = float and real = double (F64), which exercise different conversion paths.
 */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "test_util.h"

/* ---- conversions ----------------------------------------------------------------------------- */

/* bf16 reference by exhaustive comparison: the two bf16 neighbours of x, the nearer one, ties to
 * the even bit pattern. Uses double arithmetic, not bit tricks, so it is independent. */
static uint16_t reference_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
    double dlo = (double)bf16_to_fp32(lo), dhi = (double)bf16_to_fp32(hi);
    /* above the largest finite bf16 the upper neighbour is 2^128 (rounding there gives inf) */
    if ((uint16_t)(hi & 0x7fff) == 0x7f80) dhi = copysign(ldexp(1.0, 128), x);
    double xd = (double)x;
    double elo = fabs(xd - dlo), ehi = fabs(xd - dhi);
    if (elo < ehi) return lo;
    if (ehi < elo) return hi;
    return (lo & 1) ? hi : lo;
}

static uint32_t rng_state = 12345;
static uint32_t next_random(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

static float float_from_bits(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

static void test_bf16(void) {
    /* Hand-derived: 1 + 2^-8 is exactly halfway between bf16 1.0 (0x3f80) and 1.0078125 (0x3f81):
     * ties to even -> 0x3f80; 1 + 3*2^-8 halfway between 0x3f81 and 0x3f82 -> 0x3f82. */
    CHECK(fp32_to_bf16(1.0f) == 0x3f80, "1.0");
    CHECK(fp32_to_bf16(1.00390625f) == 0x3f80, "tie down to even");
    CHECK(fp32_to_bf16(1.01171875f) == 0x3f82, "tie up to even");
    CHECK(fp32_to_bf16(1.00390625f + 1.0f / (1 << 20)) == 0x3f81, "just above the tie");
    CHECK(fp32_to_bf16(-2.0f) == 0xc000, "-2");
    CHECK(fp32_to_bf16(3.14159265f) == 0x4049, "pi -> 3.140625");
    CHECK(fp32_to_bf16(INFINITY) == 0x7f80, "inf");
    CHECK(fp32_to_bf16(-INFINITY) == 0xff80, "-inf");
    CHECK(fp32_to_bf16(FLT_MAX) == 0x7f80, "FLT_MAX rounds to inf");
    CHECK(fp32_to_bf16(-0.0f) == 0x8000, "-0");
    CHECK(isnan(bf16_to_fp32(fp32_to_bf16(NAN))), "NaN stays NaN");
    CHECK(isnan(bf16_to_fp32(fp32_to_bf16(float_from_bits(0x7f800001u)))),
          "NaN with only a low payload bit stays NaN");
    CHECK(bf16_to_fp32(0x3f81) == 1.0078125f, "0x3f81");
    CHECK(bf16_to_fp32(0x0001) == ldexpf(1.0f, -133), "smallest bf16 subnormal");

    int mismatches = 0, roundtrip_failures = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7fff) > 0x7f80) continue; /* NaNs */
        if (fp32_to_bf16(bf16_to_fp32((uint16_t)h)) != h) roundtrip_failures++;
    }
    for (int i = 0; i < 200000; i++) {
        float x = float_from_bits(next_random());
        if (isnan(x) || isinf(x)) continue;
        if (fp32_to_bf16(x) != reference_bf16(x)) mismatches++;
    }
    CHECK(roundtrip_failures == 0, "%d bf16 values do not round-trip", roundtrip_failures);
    CHECK(mismatches == 0, "%d random floats round differently from the reference", mismatches);
}

static void test_fp16(void) {
    CHECK(fp32_to_fp16(1.0f) == 0x3c00, "1.0");
    CHECK(fp32_to_fp16(-2.0f) == 0xc000, "-2");
    CHECK(fp32_to_fp16(0.1f) == 0x2e66, "0.1");
    CHECK(fp32_to_fp16(1.0f / 3.0f) == 0x3555, "1/3");
    CHECK(fp32_to_fp16(65504.0f) == 0x7bff, "largest finite");
    CHECK(fp32_to_fp16(65519.0f) == 0x7bff, "below the overflow tie");
    CHECK(fp32_to_fp16(65520.0f) == 0x7c00, "the tie above 65504 rounds to even = inf");
    CHECK(fp32_to_fp16(1e9f) == 0x7c00, "overflow -> inf");
    CHECK(fp32_to_fp16(-INFINITY) == 0xfc00, "-inf");
    CHECK(fp32_to_fp16(-0.0f) == 0x8000, "-0");
    CHECK((fp32_to_fp16(NAN) & 0x7c00) == 0x7c00 && (fp32_to_fp16(NAN) & 0x3ff) != 0, "NaN");
    /* Subnormals: units of 2^-24. */
    CHECK(fp32_to_fp16(ldexpf(1.0f, -24)) == 0x0001, "smallest subnormal");
    CHECK(fp32_to_fp16(ldexpf(1.0f, -25)) == 0x0000, "half the smallest: tie to even = 0");
    CHECK(fp32_to_fp16(ldexpf(1.5f, -25)) == 0x0001, "0.75 units -> 1");
    CHECK(fp32_to_fp16(ldexpf(3.0f, -25)) == 0x0002, "1.5 units: tie to even = 2");
    CHECK(fp32_to_fp16(ldexpf(5.0f, -25)) == 0x0002, "2.5 units: tie to even = 2");
    CHECK(fp32_to_fp16(ldexpf(1.0f, -30)) == 0x0000, "far below: 0");
    CHECK(fp32_to_fp16(-ldexpf(1.0f, -24)) == 0x8001, "negative subnormal");
    CHECK(fp32_to_fp16(ldexpf(1023.0f, -24)) == 0x03ff, "largest subnormal");
    CHECK(fp32_to_fp16(ldexpf(1023.5f, -24)) == 0x0400, "tie between subnormal and normal");
    CHECK(fp32_to_fp16(ldexpf(1.0f, -14)) == 0x0400, "smallest normal");
    CHECK(fp16_to_fp32(0x0001) == ldexpf(1.0f, -24), "decode smallest subnormal");
    CHECK(fp16_to_fp32(0x03ff) == ldexpf(1023.0f, -24), "decode largest subnormal");
    CHECK(fp16_to_fp32(0x8001) == -ldexpf(1.0f, -24), "decode negative subnormal");
    CHECK(fp16_to_fp32(0x3555) == 0.333251953125f, "decode 0x3555");
    CHECK(fp16_to_fp32(0x7bff) == 65504.0f, "decode largest");
    CHECK(isinf(fp16_to_fp32(0x7c00)) && fp16_to_fp32(0x7c00) > 0, "decode inf");
    CHECK(isinf(fp16_to_fp32(0xfc00)) && fp16_to_fp32(0xfc00) < 0, "decode -inf");
    CHECK(isnan(fp16_to_fp32(0x7e00)), "decode NaN");
    CHECK(signbit(fp16_to_fp32(0x8000)) && fp16_to_fp32(0x8000) == 0, "decode -0");

    int roundtrip_failures = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue; /* NaNs */
        if (fp32_to_fp16(fp16_to_fp32((uint16_t)h)) != h) roundtrip_failures++;
    }
    CHECK(roundtrip_failures == 0, "%d fp16 values do not round-trip", roundtrip_failures);
#ifdef __FLT16_MAX__
    /* The compiler's own conversion is an independent reference (IEEE round to nearest even). */
    int mismatches = 0;
    for (int i = 0; i < 200000; i++) {
        /* Exponents around fp16's range, so subnormals, normals and overflow all occur. */
        uint32_t bits = (next_random() & 0x807fffffu) | ((uint32_t)(90 + next_random() % 60) << 23);
        float x = float_from_bits(bits);
        _Float16 h = (_Float16)x;
        uint16_t expected;
        memcpy(&expected, &h, 2);
        if (fp32_to_fp16(x) != expected) mismatches++;
    }
    CHECK(mismatches == 0, "%d random floats convert differently from _Float16", mismatches);
#endif
}

/* ---- helpers --------------------------------------------------------------------------------- */

static char scratch[1024];

static char *scratch_path(const char *name) {
    char *p = malloc(strlen(scratch) + strlen(name) + 2);
    sprintf(p, "%s/%s", scratch, name);
    return p;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

/* Run fn(arg) in a child; it must exit with status 1 and print `expect` on stderr. */
static void expect_fatal(void (*fn)(void *), void *arg, const char *expect, const char *what) {
    int pipefd[2];
    if (pipe(pipefd) != 0) return;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pipefd[1], 2);
        close(pipefd[0]);
        fn(arg);
        _exit(0); /* reaching here means no fatal error */
    }
    close(pipefd[1]);
    char output[4096] = "";
    size_t len = 0;
    ssize_t got;
    while ((got = read(pipefd[0], output + len, sizeof output - 1 - len)) > 0) len += (size_t)got;
    output[len] = '\0';
    close(pipefd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1, "%s: child status %d", what, status);
    CHECK(strstr(output, expect) != NULL, "%s: expected '%s' in '%s'", what, expect, output);
}

/* ---- write -> read --------------------------------------------------------------------------- */

#define A_ROWS 3
#define A_COLS 4

static real a_data[A_ROWS * A_COLS];
static real b_data[6];
static real c_data[6];
static real d_data[1] = {42.5};
static real f_data[4] = {1.0 / 3.0, -1e-30, 1e30, 0.25};
static real g_data[2 * 3 * 4];

static void fill_data(void) {
    for (int i = 0; i < A_ROWS * A_COLS; i++) a_data[i] = (real)(0.5 * i - 2.0);
    /* BF16: 1 + 2^-8 rounds to 1.0, 1 + 3*2^-8 to 1.015625, 3.14159265 to 3.140625. */
    real b[6] = {1.0, (real)1.00390625, (real)1.01171875, (real)3.14159265, -0.0, 256.0};
    memcpy(b_data, b, sizeof b);
    /* F16: 3*2^-25 rounds to 2*2^-24, 0.1 to 0x2e66, 70000 to inf. */
    real c[6] = {(real)ldexp(3.0, -25), (real)0.1, 70000.0, -1.5, (real)ldexp(1023.0, -24), 2.0};
    memcpy(c_data, c, sizeof c);
    for (int i = 0; i < 24; i++) g_data[i] = (real)i;
}

static void build_tensors(TensorToWrite *t) {
    t[0] = (TensorToWrite){"layer.a", DTYPE_F32, 2, {A_ROWS, A_COLS}, a_data};
    t[1] = (TensorToWrite){"layer.b", DTYPE_BF16, 1, {6}, b_data};
    t[2] = (TensorToWrite){"layer.c", DTYPE_F16, 2, {2, 3}, c_data};
    t[3] = (TensorToWrite){"scalar", DTYPE_F32, 0, {0}, d_data};
    t[4] = (TensorToWrite){"empty", DTYPE_F32, 2, {0, 4}, NULL};
    t[5] = (TensorToWrite){"wide", DTYPE_F64, 2, {2, 2}, f_data};
    t[6] = (TensorToWrite){"cube", DTYPE_F32, 3, {2, 3, 4}, g_data};
}
#define N_TENSORS 7

/* The file as bytes, checked independently of our reader: header length, padding, layout. */
static void check_layout_on_disk(const char *path) {
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    rewind(f);
    unsigned char *bytes = malloc((size_t)size);
    CHECK(fread(bytes, 1, (size_t)size, f) == (size_t)size, "read back");
    fclose(f);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = (header_len << 8) | bytes[i];
    CHECK(header_len % 8 == 0, "header length %llu is a multiple of 8",
          (unsigned long long)header_len);
    CHECK(bytes[8] == '{', "header starts with {");
    cJSON *root = cJSON_ParseWithLength((const char *)bytes + 8, (size_t)header_len);
    CHECK(root != NULL, "header parses");
    if (!root) {
        free(bytes);
        return;
    }
    const cJSON *meta = cJSON_GetObjectItem(root, "__metadata__");
    CHECK(meta && cJSON_IsString(cJSON_GetObjectItem(meta, "format")) &&
              strcmp(cJSON_GetObjectItem(meta, "format")->valuestring, "pt") == 0,
          "metadata format=pt");
    /* Tensors tile the data section, each aligned to its element size. */
    uint64_t data_size = (uint64_t)size - 8 - header_len, covered = 0;
    int aligned = 1;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) continue;
        const cJSON *off = cJSON_GetObjectItem(e, "data_offsets");
        uint64_t begin = (uint64_t)cJSON_GetArrayItem(off, 0)->valuedouble;
        uint64_t end = (uint64_t)cJSON_GetArrayItem(off, 1)->valuedouble;
        const char *dt = cJSON_GetObjectItem(e, "dtype")->valuestring;
        int size_of = strcmp(dt, "F64") == 0 ? 8 : strcmp(dt, "F32") == 0 ? 4 : 2;
        if ((8 + header_len + begin) % (uint64_t)size_of != 0) aligned = 0;
        covered += end - begin;
    }
    CHECK(aligned, "every tensor aligned to its element size");
    CHECK(covered == data_size, "tensors cover the data: %llu of %llu", (unsigned long long)covered,
          (unsigned long long)data_size);
    /* the bf16 bytes of layer.b as stored: 1.00390625 -> 0x3f80 */
    const cJSON *b = cJSON_GetObjectItem(root, "layer.b");
    const cJSON *b_offsets = cJSON_GetObjectItem(b, "data_offsets");
    uint64_t b_begin = (uint64_t)cJSON_GetArrayItem(b_offsets, 0)->valuedouble;
    const unsigned char *pb = bytes + 8 + header_len + b_begin;
    CHECK(pb[2] == 0x80 && pb[3] == 0x3f, "stored bf16 little-endian 0x3f80");
    cJSON_Delete(root);
    free(bytes);
}

static int directory_has_temp_files(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    int found = 0;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".tmp.")) found = 1;
    closedir(d);
    return found;
}

static void check_checkpoint_contents(const Checkpoint *ckpt, const char *what) {
    CHECK(ckpt->n_tensors == N_TENSORS, "%s: %d tensors", what, ckpt->n_tensors);
    for (int i = 1; i < ckpt->n_tensors; i++)
        CHECK(strcmp(ckpt->tensors[i - 1].name, ckpt->tensors[i].name) < 0, "%s: sorted", what);
    /* 12 + 6 + 6 + 1 + 0 + 4 + 24 */
    CHECK(checkpoint_parameter_count(ckpt) == 53, "%s: parameter count %lld", what,
          (long long)checkpoint_parameter_count(ckpt));
    CHECK(checkpoint_find(ckpt, "nope") == NULL, "%s: find of a missing name", what);

    const TensorInfo *a = checkpoint_find(ckpt, "layer.a");
    CHECK(a && a->dtype == DTYPE_F32 && a->ndim == 2 && a->shape[0] == 3 && a->shape[1] == 4 &&
              a->numel == 12 && a->nbytes == 48,
          "%s: layer.a info", what);
    if (!a) return;
    real whole[12];
    checkpoint_read(ckpt, a, whole);
    int same = 1;
    for (int i = 0; i < 12; i++) same &= whole[i] == a_data[i];
    CHECK(same, "%s: F32 values", what);
    /* contiguous rows */
    real rows[8];
    checkpoint_read_block(ckpt, a, 1, 2, 0, 4, rows);
    same = 1;
    for (int i = 0; i < 8; i++) same &= rows[i] == a_data[4 + i];
    CHECK(same, "%s: row block", what);
    /* a column block, row by row */
    real block[6];
    checkpoint_read_block(ckpt, a, 0, 3, 1, 2, block);
    same = 1;
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 2; c++) same &= block[r * 2 + c] == a_data[r * 4 + 1 + c];
    CHECK(same, "%s: column block", what);

    const TensorInfo *b = checkpoint_find(ckpt, "layer.b");
    real bv[6];
    checkpoint_read(ckpt, b, bv);
    CHECK(bv[0] == 1.0 && bv[1] == 1.0 && bv[2] == (real)1.015625 && bv[3] == (real)3.140625 &&
              bv[4] == 0 && signbit(bv[4]) && bv[5] == 256.0,
          "%s: BF16 values rounded to nearest even", what);
    real b_mid[3];
    checkpoint_read_block(ckpt, b, 2, 3, 0, 1, b_mid); /* 1-D: rows of one column */
    CHECK(b_mid[0] == (real)1.015625 && b_mid[1] == (real)3.140625 && b_mid[2] == 0,
          "%s: 1-D block", what);

    const TensorInfo *c = checkpoint_find(ckpt, "layer.c");
    real cv[6];
    checkpoint_read(ckpt, c, cv);
    CHECK(cv[0] == (real)ldexp(2.0, -24), "%s: F16 subnormal tie: %g", what, (double)cv[0]);
    CHECK(cv[1] == (real)fp16_to_fp32(0x2e66), "%s: F16 0.1", what);
    CHECK(isinf(cv[2]) && cv[2] > 0, "%s: F16 overflow to inf", what);
    CHECK(cv[3] == -1.5 && cv[4] == (real)ldexp(1023.0, -24) && cv[5] == 2.0, "%s: F16 rest",
          what);
    real c_col[2];
    checkpoint_read_block(ckpt, c, 0, 2, 2, 1, c_col);
    CHECK(c_col[0] == cv[2] && c_col[1] == cv[5], "%s: F16 column block", what);

    const TensorInfo *d = checkpoint_find(ckpt, "scalar");
    real dv = 0;
    checkpoint_read(ckpt, d, &dv);
    CHECK(d->ndim == 0 && d->numel == 1 && dv == 42.5, "%s: scalar", what);

    const TensorInfo *e = checkpoint_find(ckpt, "empty");
    CHECK(e && e->numel == 0 && e->nbytes == 0, "%s: empty tensor", what);
    real dummy = 7;
    checkpoint_read(ckpt, e, &dummy);
    CHECK(dummy == 7, "%s: reading an empty tensor writes nothing", what);

    const TensorInfo *w = checkpoint_find(ckpt, "wide");
    real wv[4];
    checkpoint_read(ckpt, w, wv);
    CHECK(wv[0] == (real)(1.0 / 3.0) && wv[1] == (real)-1e-30 && wv[2] == (real)1e30 &&
              wv[3] == 0.25,
          "%s: F64 values converted to real", what);

    const TensorInfo *g = checkpoint_find(ckpt, "cube");
    int64_t g_rows, g_cols;
    tensor_as_2d(g, &g_rows, &g_cols);
    CHECK(g_rows == 2 && g_cols == 12, "%s: 3-D viewed as 2 x 12", what);
    real gv[4 * 1];
    checkpoint_read_block(ckpt, g, 1, 1, 5, 4, gv);
    CHECK(gv[0] == 17 && gv[1] == 18 && gv[2] == 19 && gv[3] == 20, "%s: 3-D block", what);

    int64_t shape[2] = {3, 4};
    CHECK(checkpoint_require(ckpt, "layer.a", 2, shape) == a, "%s: require", what);
    CHECK(checkpoint_require(ckpt, "layer.b", 0, NULL) == b, "%s: require without shape", what);
}

static void test_single_file(void) {
    TensorToWrite tensors[N_TENSORS];
    build_tensors(tensors);
    char *path = scratch_path("single.safetensors");
    safetensors_write(path, tensors, N_TENSORS, "{\"format\":\"pt\"}");
    /* writing again replaces the file atomically */
    safetensors_write(path, tensors, N_TENSORS, "{\"format\":\"pt\"}");
    CHECK(!directory_has_temp_files(scratch), "no temporary file left behind");
    check_layout_on_disk(path);
    Checkpoint ckpt;
    checkpoint_open(&ckpt, path);
    CHECK(ckpt.n_shards == 1 && strcmp(ckpt.shard_paths[0], path) == 0, "one shard");
    check_checkpoint_contents(&ckpt, "single file");
    checkpoint_close(&ckpt);
    free(path);
}

static void test_directory(void) {
    char *dir = scratch_path("model_dir");
    mkdir(dir, 0755);
    char *path = scratch_path("model_dir/model.safetensors");
    TensorToWrite tensors[N_TENSORS];
    build_tensors(tensors);
    safetensors_write(path, tensors, N_TENSORS, NULL);
    Checkpoint ckpt;
    checkpoint_open(&ckpt, dir);
    check_checkpoint_contents(&ckpt, "directory");
    checkpoint_close(&ckpt);
    free(path);
    free(dir);
}

static void test_sharded(void) {
    char *dir = scratch_path("sharded");
    mkdir(dir, 0755);
    TensorToWrite tensors[N_TENSORS];
    build_tensors(tensors);
    char *shard1 = scratch_path("sharded/model-00001-of-00002.safetensors");
    char *shard2 = scratch_path("sharded/model-00002-of-00002.safetensors");
    safetensors_write(shard1, tensors, 3, "{\"format\":\"pt\"}");          /* a, b, c */
    safetensors_write(shard2, tensors + 3, N_TENSORS - 3, "{\"format\":\"pt\"}"); /* the rest */
    char *index = scratch_path("sharded/model.safetensors.index.json");
    write_text(index, "{\"metadata\": {\"total_size\": 200}, \"weight_map\": {\n"
                      "\"layer.a\": \"model-00001-of-00002.safetensors\",\n"
                      "\"layer.b\": \"model-00001-of-00002.safetensors\",\n"
                      "\"layer.c\": \"model-00001-of-00002.safetensors\",\n"
                      "\"scalar\": \"model-00002-of-00002.safetensors\",\n"
                      "\"empty\": \"model-00002-of-00002.safetensors\",\n"
                      "\"wide\": \"model-00002-of-00002.safetensors\",\n"
                      "\"cube\": \"model-00002-of-00002.safetensors\"}}\n");
    Checkpoint ckpt;
    checkpoint_open(&ckpt, dir);
    CHECK(ckpt.n_shards == 2, "two shards, got %d", ckpt.n_shards);
    const TensorInfo *c = checkpoint_find(&ckpt, "layer.c"), *g = checkpoint_find(&ckpt, "cube");
    CHECK(c && strcmp(ckpt.shard_paths[c->shard], shard1) == 0, "layer.c in shard 1");
    CHECK(g && strcmp(ckpt.shard_paths[g->shard], shard2) == 0, "cube in shard 2");
    check_checkpoint_contents(&ckpt, "sharded");
    checkpoint_close(&ckpt);
    free(shard1);
    free(shard2);
    free(index);
    free(dir);
}

/* ---- fatal errors of API calls --------------------------------------------------------------- */

static Checkpoint *shared_ckpt;

static void require_missing(void *arg) {
    (void)arg;
    checkpoint_require(shared_ckpt, "model.norm.weight", 0, NULL);
}

static void require_wrong_shape(void *arg) {
    (void)arg;
    int64_t shape[2] = {4, 3};
    checkpoint_require(shared_ckpt, "layer.a", 2, shape);
}

static void read_outside(void *arg) {
    (void)arg;
    real out[8];
    checkpoint_read_block(shared_ckpt, checkpoint_find(shared_ckpt, "layer.a"), 2, 2, 0, 4, out);
}

static void read_columns_outside(void *arg) {
    (void)arg;
    real out[8];
    checkpoint_read_block(shared_ckpt, checkpoint_find(shared_ckpt, "layer.a"), 0, 1, 3, 2, out);
}

static void write_duplicate(void *arg) {
    real x[1] = {1};
    TensorToWrite t[2] = {{"x", DTYPE_F32, 1, {1}, x}, {"x", DTYPE_F32, 1, {1}, x}};
    safetensors_write((const char *)arg, t, 2, NULL);
}

static void write_integer_dtype(void *arg) {
    real x[1] = {1};
    TensorToWrite t[1] = {{"x", DTYPE_I64, 1, {1}, x}};
    safetensors_write((const char *)arg, t, 1, NULL);
}

static void write_bad_metadata(void *arg) {
    real x[1] = {1};
    TensorToWrite t[1] = {{"x", DTYPE_F32, 1, {1}, x}};
    safetensors_write((const char *)arg, t, 1, "{\"step\": 3}");
}

static void test_errors(void) {
    TensorToWrite tensors[N_TENSORS];
    build_tensors(tensors);
    char *path = scratch_path("errors.safetensors");
    safetensors_write(path, tensors, N_TENSORS, NULL);
    Checkpoint ckpt;
    checkpoint_open(&ckpt, path);
    shared_ckpt = &ckpt;
    expect_fatal(require_missing, NULL, "missing tensor model.norm.weight", "require missing");
    expect_fatal(require_wrong_shape, NULL, "has shape [3, 4], expected [4, 3]", "require shape");
    expect_fatal(read_outside, NULL, "is outside its 3 x 4 extent", "rows outside");
    expect_fatal(read_columns_outside, NULL, "is outside its 3 x 4 extent", "columns outside");
    checkpoint_close(&ckpt);
    char *out = scratch_path("never.safetensors");
    expect_fatal(write_duplicate, out, "tensor 'x' given twice", "duplicate write");
    expect_fatal(write_integer_dtype, out, "cannot write dtype I64", "integer write");
    expect_fatal(write_bad_metadata, out, "is not a string", "metadata values");
    CHECK(access(out, F_OK) != 0, "a refused write leaves no file");
    free(out);
    free(path);
}

int main(int argc, char **argv) {
    snprintf(scratch, sizeof scratch, "%s", argc > 1 ? argv[1] : "test_safetensors_files");
    mkdir(scratch, 0755);
    fill_data();
    test_bf16();
    test_fp16();
    test_single_file();
    test_directory();
    test_sharded();
    test_errors();
    return test_finish("test_safetensors");
}
