/* commands.c - the table of subcommands with their help texts. */
#include "cli/commands.h"

#include <stdio.h>
#include <string.h>

#include "util/common.h"

int cli_wants_help(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) return 1;
    return 0;
}

StageKind cli_stage_kind(Config *cfg, const char *stage) {
    if (strcmp(stage, "sft") == 0) return STAGE_SFT;
    if (strcmp(stage, "dpo") == 0 || strcmp(stage, "ipo") == 0 || strcmp(stage, "hinge") == 0 ||
        strcmp(stage, "orpo") == 0) {
        /* the stage names the preference loss; pref.loss=... on the command line agrees or loses */
        snprintf(cfg->pref.loss, sizeof cfg->pref.loss, "%s", stage);
        return STAGE_PREF;
    }
    if (strcmp(stage, "pref") != 0)
        ARGUMENT_FATAL("command line: stage=%s is not one of sft, dpo, ipo, hinge, orpo, pref",
                       stage);
    return STAGE_PREF;
}

int cmd_not_yet(int argc, char **argv) {
    PAFT_FATAL("'paft %s' is not available in this version yet (see README.md, 'Status')", argv[0]);
}

static const Command commands[] = {
    {"run", cmd_run, "the whole PAFT job: SFT || preference training, then the merge",
     "usage: paft run CONFIG [section.key=value ...]\n\n"
     "Splits the ranks into an SFT group (parallel.sft_ranks, default half) and a preference group,\n"
     "trains both at once from the same base model, then merges the two LoRA deltas on all ranks\n"
     "into <output.dir>/merged.h5. Configuration keys: docs/CONFIG.md.\n"},
    {"train", cmd_train, "one training stage on all ranks (sft | dpo | ipo | hinge | orpo | pref)",
     "usage: paft train CONFIG stage=sft|dpo|ipo|hinge|orpo|pref [section.key=value ...]\n\n"
     "Trains one stage on every rank (individual or sequential baselines): parallel.tp ranks\n"
     "per model replica, the replicas data-parallel.\n"
     "  stage=sft     token-mean cross-entropy on [sft] data + sft.l1 * sum |delta| (PAFT's L1)\n"
     "  stage=dpo     DPO on [pref] data (ipo, hinge: the other reference-based losses)\n"
     "  stage=orpo    ORPO (no reference model)\n"
     "  stage=pref    the preference loss the configuration names (pref.loss)\n"
     "Writes <output.dir>/sft or <output.dir>/pref: adapter.h5, peft/ (PEFT format),\n"
     "metrics.jsonl, and checkpoint.h5 every output.checkpoint_every steps. A run with a\n"
     "checkpoint resumes from it; SIGTERM or SIGUSR1 writes a checkpoint and stops cleanly.\n"
     "Sequential baseline: train stage=sft, then train stage=dpo\n"
     "model.adapter=<output.dir>/sft/adapter.h5 (DPO from base + SFT delta, which is also\n"
     "DPO's reference model).\n"},
    {"check", cmd_check, "check a configuration for a job of N ranks before submitting it",
     "usage: paft check CONFIG [ranks=N] [stage=STAGE] [section.key=value ...]\n\n"
     "Makes, on this one process, the checks a job of N ranks makes before it loads a model, and\n"
     "prints its plan: without stage=, those of paft run (the SFT / preference split, both stages'\n"
     "data, batch split and tensor-parallel layout, the merge's settings); with stage=sft|dpo|...,\n"
     "those of paft train; with stage=merge, all that paft merge validates (both adapters too).\n"
     "Each stage's plan: ranks, tp x dp, steps, micro-batches accumulated,\n"
     "epochs of its data, and what its directory already holds (a checkpoint to resume from).\n"
     "N: ranks=, else SLURM_NTASKS, else this process's MPI world. model.device and merge.device\n"
     "are checked by name and build only (a login node has no GPU: a note). Creates nothing;\n"
     "exits non-zero with the first problem's message.\n"},
    {"merge", cmd_merge, "merge saved SFT and preference adapters into the base model",
     "usage: paft merge CONFIG [merge.method=ties merge.density=0.5,0.5 ...]\n\n"
     "Every rank merges delta_sft and delta_pref (the LoRA adapters merge.sft_adapter and\n"
     "merge.pref_adapter, default <output.dir>/sft/adapter.h5 and <output.dir>/pref/adapter.h5)\n"
     "into the base model model.path and writes its rows of every tensor into one parallel-HDF5\n"
     "file, merge.out (default <output.dir>/merged.h5), in merge.dtype (bf16 or fp32), with the\n"
     "sparsity of both deltas and of the merged delta per tensor. The file is the same, bit for\n"
     "bit, for any number of ranks, and on GPUs as on CPUs (merge.device = auto | cpu | cuda;\n"
     "auto: each rank's GPU when model.device = cuda and it sees one). Everything is validated\n"
     "before anything is written.\n\n"
     "  merge.method     linear | task_arithmetic | ties | dare_ties | dare_linear | magnitude |\n"
     "                   slerp (mergekit's semantics: docs/MERGE.md)\n"
     "  merge.weights    w_sft,w_pref           merge.density  d_sft,d_pref, each in [1e-12, 1]\n"
     "  merge.normalize  auto | true | false    merge.lambda   scale of the mixed delta\n"
     "  merge.sign       sum | count (TIES)     merge.rescale  density | l1 (DARE)\n"
     "  merge.seed       DARE's random stream   merge.dtype    bf16 | fp32\n\n"
     "Then: paft inspect MERGED.h5 (sparsity tables), paft export MERGED.h5 OUTDIR.\n"},
    {"eval", cmd_eval, "held-out SFT loss and preference accuracy of a model",
     "usage: paft eval CONFIG model=PATH [eval.sft_data=... eval.pref_data=...]\n\n"
     "PATH: a Hugging Face model, a merged file (merged.h5) or an adapter on model.path\n"
     "(adapter.h5, or a PEFT adapter directory such as <stage>/peft/), applied with its own\n"
     "r, alpha and targets. Prints the mean NLL over the loss-mask tokens of eval.sft_data and\n"
     "the implicit-reward accuracy and margin on eval.pref_data against the base model.path\n"
     "(beta = pref.beta), then the same as one JSON line ('eval: {...}').\n"},
    {"export", cmd_export, "merged HDF5 file -> Hugging Face safetensors directory",
     "usage: paft export MERGED.h5 OUTDIR [max_shard_size=5GB]\n\n"
     "Writes a Hugging Face model directory that transformers loads: config.json (the base's),\n"
     "the weights in BF16 as model.safetensors, or as model-0000i-of-0000N.safetensors shards of\n"
     "at most max_shard_size bytes (decimal KB/MB/GB or bytes) with model.safetensors.index.json,\n"
     "and the tokenizer files and generation_config.json of the base model directory recorded\n"
     "in MERGED.h5. OUTDIR must be new or empty. Under mpirun the ranks share the shards\n"
     "(shard i on rank i mod N).\n"},
    {"inspect", cmd_inspect, "what a model, adapter, merged or data file holds",
     "usage: paft inspect PATH\n\n"
     "PATH is a Hugging Face model directory (config.json + *.safetensors [+ index]), a single\n"
     ".safetensors file, token data (.bin), a paft adapter or checkpoint (.h5: the sparsity of\n"
     "its delta per layer and module) or a merged model (.h5: the sparsity of delta_sft,\n"
     "delta_pref and the merged delta per layer and module, and a summary). For a model: the\n"
     "architecture, the exact parameter count and every tensor with its shape and dtype.\n"
     "Every byte it relies on is validated first: a corrupt file is an error, never a partial\n"
     "listing.\n"},
    {"bench", cmd_bench, "training-step throughput on random weights of a preset shape",
     "usage: paft bench [model=tiny|smollm2-135m|llama-1b|mistral-7b batch=B seq=T stage=sft|dpo\n"
     "                   steps=N r=R device=cpu|cuda|emulate recompute=0|1\n"
     "                   attention=fused|simple l1=LAMBDA peak=TFLOPS profile=0|1\n"
     "                   logits_chunk=ROWS]\n"
     "       defaults: model=tiny batch=2 seq=64 stage=sft steps=3 r=16 device=cpu l1=0\n\n"
     "Times LoRA training steps as training runs them (forward, backward, the L1 term when\n"
     "l1 > 0, the gradient norm, AdamW; r=16 on all seven projections by default) on random\n"
     "weights of the preset shape, on the chosen backend: median step time, tokens/s, model\n"
     "TFLOP/s (FLOPs/token = 4 N_matmul + 6 L T d), MFU against `peak` on a GPU (default 989.4,\n"
     "the H100 SXM's dense bf16), host and device memory, then one JSON line ('bench: {...}').\n"
     "On a device backend (cuda, emulate), profile=1 adds the step's device time by phase and\n"
     "logits_chunk sets model.logits_chunk (docs/CONFIG.md; 0: automatic).\n"},
    {"demo", cmd_demo, "embedded demo: a generated tiny model through the pipeline",
     "usage: paft demo [OUTDIR]     (default OUTDIR: paft-demo)\n\n"
     "Runs the whole PAFT pipeline on a generated task, with no download: a tiny random Llama\n"
     "written as a Hugging Face directory, SFT and preference data with a known rule, SFT with\n"
     "the L1 penalty and DPO side by side (the ranks split in two groups), every merge method,\n"
     "the baselines, and a table of held-out losses and accuracies. Each step is an ordinary\n"
     "paft command on the files it writes (OUTDIR/demo.ini), printed as it goes. Run it on 4\n"
     "ranks: mpirun -np 4 paft demo (docs/DEMO.md).\n"},
    {NULL, NULL, NULL, NULL},
};

const Command *paft_commands(void) { return commands; }
