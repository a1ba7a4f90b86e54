/*
 * merge_driver.c - writes random merge problems and paft's answers for
 * tests/merge/merge_reference.py, which recomputes every case with its own numpy implementation
 * of mergekit's semantics and compares.
 *
 * usage: merge_driver OUTDIR
 * Writes OUTDIR/cases.json (one object per case: method, parameters, shape, file names, paft's
 * statistics) and per case base/delta_sft/delta_pref/out as raw little-endian float32, row-major.
 * Also a few draws of DARE's generator, compared exactly by the script.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "merge/merge.h"
#include "util/common.h"

/* Test inputs come from a SplitMix64 stream (any generator would do; the files carry the data). */
static uint64_t rng_state = 12345;
static double uniform(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53;
}

typedef enum { DELTA_SMOOTH, DELTA_QUANTIZED } DeltaKind;

/* A delta like a LoRA's: small values, some exact zeros; QUANTIZED rounds to multiples of 1/256
 * of the scale so that many magnitudes tie (the top-k threshold falls inside a tie). */
static void fill_delta(float *d, int64_t n, double scale, DeltaKind kind) {
    for (int64_t i = 0; i < n; i++) {
        double u = uniform();
        double v = (2 * uniform() - 1) * scale;
        if (kind == DELTA_QUANTIZED) v = round(v / scale * 16) * scale / 16;
        d[i] = u < 0.1 ? 0.0f : (float)v;
    }
}

static void write_floats(const char *dir, const char *name, const float *x, int64_t n) {
    char *path = paft_path_join(dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(x, sizeof(float), (size_t)n, f) != (size_t)n || fclose(f) != 0)
        PAFT_FATAL("%s: cannot write", path);
    free(path);
}

typedef struct {
    const char *label;
    MergeParams params;
    int64_t rows, cols;
    double base_scale;   /* 0: base = 0, so the output is the mixed delta alone */
    double delta_scale[2];
    DeltaKind kind;
    int slerp_shape;     /* 0 random; 1 theta_pref ~ 2 theta_sft (lerp); 2 theta_sft = 0 */
} Case;

static MergeParams P(MergeMethod m, double w0, double w1, double dens0, double dens1) {
    MergeParams p = merge_params_default(m);
    p.weight[0] = w0;
    p.weight[1] = w1;
    p.density[0] = dens0;
    p.density[1] = dens1;
    return p;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    if (argc != 2) PAFT_FATAL("usage: merge_driver OUTDIR");
    const char *dir = argv[1];
    enum { MAX_CASES = 64 };
    Case cases[MAX_CASES];
    int n_cases = 0;
#define ADD(lbl, par, r, c, bs, ds0, ds1, knd, sl)                                                 \
    cases[n_cases++] = (Case){lbl, par, r, c, bs, {ds0, ds1}, knd, sl}

    MergeParams p;
    for (int zero_base = 0; zero_base < 2; zero_base++) {
        double bs = zero_base ? 0.0 : 1.0;
        ADD("linear", P(MERGE_LINEAR, 1, 1, 1, 1), 37, 53, bs, 0.02, 0.01, DELTA_SMOOTH, 0);
        ADD("linear w", P(MERGE_LINEAR, 0.7, 0.3, 1, 1), 37, 53, bs, 0.02, 0.01, DELTA_SMOOTH, 0);
        p = P(MERGE_LINEAR, 2, 0.5, 1, 1);
        p.normalize = 0;
        ADD("linear raw", p, 1, 129, bs, 0.02, 0.01, DELTA_SMOOTH, 0);
        ADD("task_arithmetic", P(MERGE_TASK_ARITHMETIC, 1, 1, 1, 1), 37, 53, bs, 0.02, 0.01,
            DELTA_SMOOTH, 0);
        p = P(MERGE_TASK_ARITHMETIC, 0.7, 0.3, 1, 1);
        p.lambda = 0.8;
        ADD("task_arithmetic lambda", p, 37, 53, bs, 0.02, 0.01, DELTA_SMOOTH, 0);
        p = P(MERGE_TASK_ARITHMETIC, 1, -0.5, 1, 1);
        p.normalize = 1;
        ADD("task_arithmetic normalize", p, 64, 16, bs, 0.02, 0.01, DELTA_SMOOTH, 0);
        ADD("ties", P(MERGE_TIES, 1, 1, 1, 1), 37, 53, bs, 0.02, 0.01, DELTA_SMOOTH, 0);
        ADD("ties sparse", P(MERGE_TIES, 0.7, 0.3, 0.5, 0.3), 37, 53, bs, 0.02, 0.01,
            DELTA_QUANTIZED, 0);
        p = P(MERGE_TIES, 1, 2, 0.2, 0.9);
        p.normalize = 0;
        p.lambda = 1.5;
        ADD("ties raw lambda", p, 64, 16, bs, 0.01, 0.02, DELTA_QUANTIZED, 0);
        p = P(MERGE_TIES, 1, 1, 0.4, 0.4);
        p.sign_by_count = 1;
        ADD("ties count", p, 37, 53, bs, 0.02, 0.02, DELTA_SMOOTH, 0);
        p = P(MERGE_DARE_TIES, 1, 1, 0.5, 0.3);
        p.seed = 3;
        ADD("dare_ties", p, 37, 53, bs, 0.02, 0.01, DELTA_SMOOTH, 0);
        p.dare_rescale_l1 = 1;
        ADD("dare_ties l1", p, 37, 53, bs, 0.02, 0.01, DELTA_SMOOTH, 0);
        p = P(MERGE_DARE_TIES, 0.6, 0.4, 0.9, 0.1);
        p.sign_by_count = 1;
        p.normalize = 1;
        p.seed = 99;
        ADD("dare_ties count normalize", p, 64, 16, bs, 0.02, 0.01, DELTA_QUANTIZED, 0);
        p = P(MERGE_DARE_LINEAR, 1, 1, 0.7, 0.2);
        p.seed = 11;
        ADD("dare_linear", p, 37, 53, bs, 0.02, 0.01, DELTA_SMOOTH, 0);
        p.normalize = 1;
        p.dare_rescale_l1 = 1;
        ADD("dare_linear l1 normalize", p, 1, 129, bs, 0.02, 0.01, DELTA_SMOOTH, 0);
        ADD("magnitude", P(MERGE_MAGNITUDE, 1, 1, 0.3, 0.6), 37, 53, bs, 0.02, 0.01,
            DELTA_QUANTIZED, 0);
        ADD("magnitude lone", P(MERGE_MAGNITUDE, 0.5, 1.5, 0.05, 1), 64, 16, bs, 0.02, 0.01,
            DELTA_QUANTIZED, 0);
    }
    ADD("slerp", P(MERGE_SLERP, 1, 1, 1, 1), 37, 53, 1.0, 0.5, 0.5, DELTA_SMOOTH, 0);
    ADD("slerp t=0.8", P(MERGE_SLERP, 0.2, 0.8, 1, 1), 37, 53, 1.0, 0.5, 0.3, DELTA_SMOOTH, 0);
    ADD("slerp far apart", P(MERGE_SLERP, 0.3, 0.7, 1, 1), 64, 16, 0.0, 1.0, 1.0, DELTA_SMOOTH, 0);
    ADD("slerp colinear", P(MERGE_SLERP, 1, 3, 1, 1), 37, 53, 0.0, 1.0, 1.0, DELTA_SMOOTH, 1);
    ADD("slerp zero sft", P(MERGE_SLERP, 1, 1, 1, 1), 1, 129, 0.0, 1.0, 1.0, DELTA_SMOOTH, 2);
#undef ADD

    char *json_path = paft_path_join(dir, "cases.json");
    FILE *json = fopen(json_path, "w");
    if (!json) PAFT_FATAL("%s: cannot write", json_path);
    fprintf(json, "{\n\"cases\": [\n");
    for (int c = 0; c < n_cases; c++) {
        Case *cs = &cases[c];
        merge_params_resolve(&cs->params);
        const MergeParams *q = &cs->params;
        int64_t n = cs->rows * cs->cols;
        float *base = paft_malloc((size_t)n * sizeof(float));
        float *d[2] = {paft_malloc((size_t)n * sizeof(float)), paft_malloc((size_t)n * sizeof(float))};
        float *out = paft_malloc((size_t)n * sizeof(float));
        for (int64_t i = 0; i < n; i++) base[i] = (float)((2 * uniform() - 1) * cs->base_scale);
        fill_delta(d[0], n, cs->delta_scale[0], cs->kind);
        fill_delta(d[1], n, cs->delta_scale[1], cs->kind);
        if (cs->slerp_shape == 1) /* theta_pref = 2 theta_sft + tiny noise: |cos| > 0.9995 */
            for (int64_t i = 0; i < n; i++) d[1][i] = 2 * d[0][i] + 1e-4f * (float)uniform();
        if (cs->slerp_shape == 2)
            for (int64_t i = 0; i < n; i++) d[0][i] = -base[i];
        MergeStats st;
        uint64_t tensor_id = (uint64_t)(100 + c);
        merge_tensor_rows(q, MPI_COMM_SELF, tensor_id, cs->rows, cs->cols, 0, cs->rows, base, d[0],
                          d[1], out, &st);
        char name[4][64];
        const char *kinds[4] = {"base", "sft", "pref", "out"};
        const float *bufs[4] = {base, d[0], d[1], out};
        for (int k = 0; k < 4; k++) {
            snprintf(name[k], sizeof name[k], "case%02d_%s.f32", c, kinds[k]);
            write_floats(dir, name[k], bufs[k], n);
        }
        fprintf(json,
                "{\"label\": \"%s\", \"method\": \"%s\", \"rows\": %lld, \"cols\": %lld, "
                "\"tensor_id\": %llu, \"weight\": [%.17g, %.17g], \"density\": [%.17g, %.17g], "
                "\"normalize\": %d, \"lambda\": %.17g, \"sign_by_count\": %d, \"seed\": %llu, "
                "\"dare_rescale_l1\": %d, \"files\": [\"%s\", \"%s\", \"%s\", \"%s\"], "
                "\"kept\": [%lld, %lld], \"small\": [%lld, %lld, %lld]}%s\n",
                cs->label, merge_method_name(q->method), (long long)cs->rows, (long long)cs->cols,
                (unsigned long long)tensor_id, q->weight[0], q->weight[1], q->density[0],
                q->density[1], q->normalize, q->lambda, q->sign_by_count,
                (unsigned long long)q->seed, q->dare_rescale_l1, name[0], name[1], name[2],
                name[3], (long long)st.kept[0], (long long)st.kept[1], (long long)st.small_sft,
                (long long)st.small_pref, (long long)st.small_merged,
                c + 1 < n_cases ? "," : "");
        free(base);
        free(d[0]);
        free(d[1]);
        free(out);
    }
    /* Draws of the generator at awkward arguments (large ids and indices, seed 2^64 - 1). */
    const uint64_t draws[][4] = {{0, 0, 0, 0},         {0, 0, 1, 0},
                                 {1234, 56, 1, 7890123}, {UINT64_MAX, UINT64_MAX, 0, 1ULL << 40},
                                 {7, 3, 0, 123456789012ULL}};
    fprintf(json, "],\n\"draws\": [\n");
    int n_draws = (int)(sizeof draws / sizeof draws[0]);
    for (int i = 0; i < n_draws; i++)
        fprintf(json, "[%llu, %llu, %llu, %llu, %.17g]%s\n", (unsigned long long)draws[i][0],
                (unsigned long long)draws[i][1], (unsigned long long)draws[i][2],
                (unsigned long long)draws[i][3],
                merge_dare_uniform(draws[i][0], draws[i][1], (int)draws[i][2], draws[i][3]),
                i + 1 < n_draws ? "," : "");
    fprintf(json, "]\n}\n");
    if (fclose(json) != 0) PAFT_FATAL("%s: cannot write", json_path);
    free(json_path);
    printf("merge_driver: %d cases written to %s\n", n_cases, dir);
    MPI_Finalize();
    return 0;
}
