/*
 * cmd_bench.c - `paft bench [model=PRESET batch=B seq=T stage=sft|dpo steps=N r=R
 * device=cpu|cuda|emulate recompute=0|1 attention=fused|simple l1=LAMBDA peak=TFLOPS profile=0|1
 * logits_chunk=ROWS]`: the
 * throughput of one LoRA training step on random weights of a preset model shape, on the chosen
 * backend. The step is what a training step does: forward, backward, (SFT with l1 > 0: PAFT's L1
 * term), the gradient norm and AdamW; on a device the LoRA state stays there as in training
 * (model_train_on_device) and the weights are made there (no host copy of a 7B model). MFU is
 * against `peak` (default 989.4 TFLOP/s, the H100 SXM's dense bf16 figure; ../shared/gpu/README.md
 * measured 805 for a bf16 GEMM).
 *
 * FLOPs per token follow ../shared/gpu/README.md's convention for LoRA on a frozen base:
 * 4 N_matmul (forward + input gradient of every weight matrix, LM head included, embeddings not)
 * + 6 L T d (causal attention: q k^T and p v, forward and backward, halved by the mask). The step
 * time is the median of the timed steps after one warm-up step; tokens are B x T per step (DPO:
 * chosen + rejected, 2 x B x T). Peak memory is the process's maximum resident set. profile=1
 * (device backends) prints where the device's time went, phase by phase (model_device.c).
 */
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "cli/commands.h"
#include "model/model.h"
#include "model/model_flops.h"
#include "ops/ops.h"
#include "optim/adamw.h"
#include "train/step.h"
#include "util/common.h"
#include "util/rng.h"

typedef struct {
    const char *name;
    const char *config_json;
} BenchPreset;

static const BenchPreset presets[] = {
    {"tiny", "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":256,\"hidden_size\":64,"
             "\"intermediate_size\":128,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
             "\"num_key_value_heads\":2,\"rms_norm_eps\":1e-5}"},
    {"smollm2-135m", "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":49152,"
                     "\"hidden_size\":576,\"intermediate_size\":1536,\"num_hidden_layers\":30,"
                     "\"num_attention_heads\":9,\"num_key_value_heads\":3,\"rms_norm_eps\":1e-5,"
                     "\"tie_word_embeddings\":true,\"rope_theta\":100000}"},
    {"llama-1b", "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":32000,"
                 "\"hidden_size\":2048,\"intermediate_size\":5632,\"num_hidden_layers\":22,"
                 "\"num_attention_heads\":32,\"num_key_value_heads\":4,\"rms_norm_eps\":1e-5}"},
    {"mistral-7b", "{\"architectures\":[\"MistralForCausalLM\"],\"vocab_size\":32000,"
                   "\"hidden_size\":4096,\"intermediate_size\":14336,\"num_hidden_layers\":32,"
                   "\"num_attention_heads\":32,\"num_key_value_heads\":8,\"rms_norm_eps\":1e-5,"
                   "\"sliding_window\":null}"},
};
enum { N_PRESETS = sizeof presets / sizeof presets[0] };

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The integer after "key=" in argument a, whole and within [lo, hi]: atoi would take "abc" as 0
 * and "4x" as 4. */
static int int_argument(const char *a, size_t key_len, long lo, long hi) {
    double v;
    if (!paft_parse_number(a + key_len, &v) || v != floor(v) || v < (double)lo || v > (double)hi)
        PAFT_FATAL("command line: %s: expected an integer from %ld to %ld", a, lo, hi);
    return (int)v;
}

/* The number after "key=" in argument a, whole, finite and within [lo, hi]. */
static double number_argument(const char *a, size_t key_len, double lo, double hi) {
    double v;
    if (!paft_parse_number(a + key_len, &v) || v < lo || v > hi)
        PAFT_FATAL("command line: %s: expected a number from %g to %g", a, lo, hi);
    return v;
}

int cmd_bench(int argc, char **argv) {
    const char *preset = "tiny", *stage = "sft", *device = "cpu";
    int batch = 2, seq = 64, steps = 3, r = 16, recompute = 0, simple_attention = 0, profile = 0;
    int logits_chunk = 0;
    double l1 = 0;
    double peak = 989.4;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "model=", 6) == 0) preset = a + 6;
        else if (strncmp(a, "stage=", 6) == 0) stage = a + 6;
        else if (strncmp(a, "batch=", 6) == 0) batch = int_argument(a, 6, 1, 1 << 20);
        else if (strncmp(a, "seq=", 4) == 0) seq = int_argument(a, 4, 2, 1 << 24);
        else if (strncmp(a, "steps=", 6) == 0) steps = int_argument(a, 6, 1, 1 << 20);
        else if (strncmp(a, "r=", 2) == 0) r = int_argument(a, 2, 1, 4096);
        else if (strncmp(a, "device=", 7) == 0) device = a + 7;
        else if (strncmp(a, "recompute=", 10) == 0) {
            if (strcmp(a + 10, "0") != 0 && strcmp(a + 10, "1") != 0)
                PAFT_FATAL("command line: %s: recompute is 0 or 1", a);
            recompute = a[10] == '1';
        } else if (strncmp(a, "attention=", 10) == 0) {
            if (strcmp(a + 10, "fused") != 0 && strcmp(a + 10, "simple") != 0)
                PAFT_FATAL("command line: %s: attention is fused or simple", a);
            simple_attention = strcmp(a + 10, "simple") == 0;
        }
        else if (strncmp(a, "profile=", 8) == 0) {
            if (strcmp(a + 8, "0") != 0 && strcmp(a + 8, "1") != 0)
                PAFT_FATAL("command line: %s: profile is 0 or 1", a);
            profile = a[8] == '1';
        }
        else if (strncmp(a, "logits_chunk=", 13) == 0)
            logits_chunk = int_argument(a, 13, 0, 1000000000); /* rows; 0: automatic */
        else if (strncmp(a, "peak=", 5) == 0) peak = number_argument(a, 5, 1e-3, 1e6);
        else if (strncmp(a, "l1=", 3) == 0) l1 = number_argument(a, 3, 0, 1e6);
        else PAFT_FATAL("command line: unknown argument '%s' for 'paft bench' (model= batch= seq= stage= steps= r= device= recompute= attention= l1= peak= profile= logits_chunk=)", a);
    }
    if (batch < 1 || seq < 2 || steps < 1 || r < 1 || !(peak > 0))
        PAFT_FATAL("command line: batch, steps and r must be >= 1, seq >= 2 and peak > 0");
    const DeviceBackend *backend = device_backend_by_name(device, "command line: device");
    if (strcmp(stage, "sft") != 0 && strcmp(stage, "dpo") != 0)
        PAFT_FATAL("command line: stage=%s is not sft or dpo", stage);
    if (l1 < 0 || (l1 > 0 && strcmp(stage, "sft") != 0))
        PAFT_FATAL("command line: l1=%g: the L1 term is SFT's, and not negative", l1);
    const BenchPreset *bp = NULL;
    for (int i = 0; i < N_PRESETS; i++)
        if (strcmp(presets[i].name, preset) == 0) bp = &presets[i];
    if (!bp) PAFT_FATAL("command line: model=%s is not a preset (tiny, smollm2-135m, llama-1b, mistral-7b)", preset);

    ModelConfig config;
    model_config_parse(&config, bp->config_json, bp->name);
    LoraConfig lora;
    lora_config_init(&lora, r, r, 0, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "bench");
    Model m;
    if (backend) { /* the device makes its own random weights: no host copy of a 7B model */
        model_init_shape(&m, &config, &lora, 1);
        DeviceOptions opt = {.recompute = recompute, .random_init_std = 0.02,
                             .simple_attention = simple_attention, .profile = profile,
                             .logits_chunk = logits_chunk};
        model_use_device(&m, device, &opt, "command line: device");
    } else {
        model_init_random(&m, &config, &lora, 1, 0.02);
        m.simple_attention = simple_attention;
    }
    model_config_free(&config);
    const int rows = strcmp(stage, "dpo") == 0 ? 2 * batch : batch; /* chosen + rejected */
    model_alloc_activations(&m, rows, seq);
    for (size_t i = 0; i < m.n_lora; i++) /* non-zero B: every LoRA path does real work */
        if (m.lora_memory[i] == 0) m.lora_memory[i] = (real)1e-3;
    /* as training runs it: on a device the LoRA state stays there (values set above go up now) */
    model_train_on_device(&m, MPI_COMM_SELF, 0);
    real *delta_scratch = NULL;
    if (l1 > 0 && !m.lora_on_device) {
        size_t most = 0;
        for (int p = 0; p < N_PROJ; p++)
            most = PAFT_MAX(most, (size_t)proj_in(&m.config, p) * proj_out(&m.config, p));
        delta_scratch = paft_malloc(most * sizeof(real));
    }

    const int N = rows * seq;
    int32_t *tokens = paft_malloc((size_t)N * sizeof(int32_t));
    int32_t *targets = paft_malloc((size_t)N * sizeof(int32_t));
    real *dlogp = paft_malloc((size_t)N * sizeof(real));
    Rng rng;
    rng_seed(&rng, 3);
    for (int i = 0; i < N; i++) tokens[i] = (int32_t)(rng_u64(&rng) % (uint64_t)m.config.vocab_size);
    for (int i = 0; i < N; i++) {
        targets[i] = (i + 1) % seq ? tokens[i + 1] : -1;
        /* SFT: the token-mean loss; DPO: +-1/pairs on chosen/rejected rows (the shape of its
         * gradient; the reference log-probs are cached, so no extra forward) */
        dlogp[i] = strcmp(stage, "sft") == 0 ? (real)(-1.0 / N) : (real)((i / seq < batch ? -1.0 : 1.0) / batch);
    }
    AdamW opt;
    adamw_init(&opt, m.n_lora, adamw_default_hyper());
    double *times = paft_malloc((size_t)steps * sizeof(double));
    for (int s = -1; s < steps; s++) { /* step -1 warms up */
        double t0 = paft_seconds();
        model_zero_grads(&m);
        model_forward(&m, tokens, targets, rows, seq);
        model_backward(&m, dlogp);
        /* what a training step does after the micro-batches: the L1 term (SFT), the norm, AdamW */
        if (l1 > 0) step_l1_penalty(&m, l1, delta_scratch);
        double norm = sqrt(m.lora_on_device
                               ? m.backend->grads_sum_squares(m.device, 0, m.n_lora)
                               : grad_sum_squares(m.lora_grads_memory, m.n_lora));
        step_apply_adamw(&m, &opt, 1e-4, (real)clip_coefficient(norm, 1.0));
        if (m.device) m.backend->synchronize(m.device);
        if (s >= 0) times[s] = paft_seconds() - t0;
    }
    qsort(times, (size_t)steps, sizeof(double), compare_doubles);
    const double median = times[steps / 2];
    const double tokens_per_step = (double)N;
    const ModelConfig *c = &m.config;
    const double flops_per_token = model_sequence_train_flops(c, seq) / seq;
    const double tok_s = tokens_per_step / median, tflops = flops_per_token * tok_s / 1e12;
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    const double peak_gib = (double)usage.ru_maxrss / (1024.0 * 1024.0);
    const double device_gib =
        m.device ? (double)m.backend->memory_bytes(m.device) / (1024.0 * 1024.0 * 1024.0) : 0;
    const double mfu = m.backend && strcmp(m.backend->name, "cuda") == 0 ? tflops / peak : 0;
    paft_log("paft bench: %s, %s, batch %d x seq %d, LoRA r=%d on 7 projections, %s backend (%s)%s, "
             "%d timed steps\n", bp->name, stage, batch, seq, r, device,
             m.backend && strcmp(m.backend->name, "cuda") == 0 ? "bf16" : PAFT_REAL_NAME,
             recompute ? ", recomputation" : "", steps);
    paft_log("  %.4g matmul parameters, %.4g FLOPs/token (4 N_matmul + 6 L T d)\n",
             model_matmul_parameters(c), flops_per_token);
    if (!m.backend) {
        char blas[256];
        cpu_blas_describe(blas, sizeof blas);
        paft_log("  CPU GEMMs: %s\n", blas);
    }
    paft_log("  step %.4f s (median; min %.4f, max %.4f)  %.1f tokens/s  %.4f TFLOP/s  ", median,
             times[0], times[steps - 1], tok_s, tflops);
    if (mfu > 0)
        paft_log("MFU %.1f%% of %.1f TFLOP/s  ", 100 * mfu, peak);
    else
        paft_log("MFU: n/a on a CPU  ");
    paft_log("host peak memory %.2f GiB  device memory %.2f GiB\n", peak_gib, device_gib);
    paft_log("bench: {\"model\": \"%s\", \"stage\": \"%s\", \"batch\": %d, \"seq\": %d, \"backend\": "
             "\"%s\", \"recompute\": %d, \"step_s\": %.6g, \"tokens_per_s\": %.6g, \"tflops\": %.6g, "
             "\"mfu\": %.4g, \"peak_gib\": %.4g, \"device_gib\": %.4g}\n",
             bp->name, stage, batch, seq, device, recompute, median, tok_s, tflops, mfu, peak_gib,
             device_gib);
    adamw_free(&opt);
    free(delta_scratch);
    free(times);
    free(tokens);
    free(targets);
    free(dlogp);
    model_free(&m);
    return 0;
}
