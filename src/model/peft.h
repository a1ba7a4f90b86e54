/*
 * peft.h - LoRA adapters in Hugging Face PEFT's format: a directory with adapter_config.json and
 * adapter_model.safetensors, tensors named
 *   base_model.model.<HF module path>.lora_A.weight  [r][in]
 *   base_model.model.<HF module path>.lora_B.weight  [out][r]
 * paft reads them (model.adapter folds one into the base, as it does an adapter.h5; `paft
 * inspect` describes one; the reference tests load PEFT's own) and writes them (so
 * peft.PeftModel.from_pretrained loads what paft trained).
 */
#ifndef PAFT_PEFT_H
#define PAFT_PEFT_H

#include <stdio.h>

#include "io/safetensors.h"
#include "model/model.h"

/* The adapter_model.safetensors "__metadata__" key where paft's copies record the base model's
 * fingerprint (an adapter.h5's base_fingerprint); PEFT ignores it. */
#define PEFT_FINGERPRINT_KEY "paft_base_fingerprint"
/* ... and, for a stage trained with model.adapter = X, X: the copy is a delta on base + X. */
#define PEFT_FOLDED_KEY "paft_folded_adapter"
/* ... and the stage that trained it (sft, dpo, ...): the merge checks its slots with it. */
#define PEFT_STAGE_KEY "paft_stage"

/* What paft takes from adapter_config.json. */
typedef struct {
    int r;
    double alpha, scale;
    int rslora;
    char targets[512];  /* target_modules: the names joined by commas, or PEFT's one string */
    int targets_listed; /* target_modules was a list: PEFT adapts only the modules it names */
    char base[1024];    /* base_model_name_or_path, "" when absent */
} PeftSettings;

/* A PEFT adapter directory open for reading: its settings and, per decoder layer and projection,
 * the two factors in adapter_model.safetensors. */
typedef struct {
    PeftSettings settings;
    char *weights_path; /* <dir>/adapter_model.safetensors */
    Checkpoint ckpt;
    int n_layers;               /* 1 + the highest adapted layer */
    const TensorInfo **factors; /* [n_layers][N_PROJ][2] A, B; NULL: not adapted */
    int n_modules;
} PeftAdapter;

/* Is PATH a PEFT adapter directory: adapter_config.json and no model weights (model.safetensors
 * or its index)? Used to name one where a model or a paft adapter file is expected. */
int peft_is_adapter_dir(const char *path);

/* LoRA settings of a PEFT adapter directory (r, lora_alpha, use_rslora, target_modules). LoRA
 * variants paft cannot apply as s B A (DoRA, rank_pattern / alpha_pattern, fan_in_fan_out, another
 * peft_type) are refused naming the key. */
void peft_read_config(LoraConfig *lora, const char *adapter_dir);
/* Open a PEFT adapter directory: adapter_config.json (as peft_read_config) and the safetensors
 * header. Every tensor must be a lora_A [r, in] or lora_B [out, r] factor of a decoder-layer
 * projection that target_modules names, both factors present (fatal error naming the file). Reads
 * no values. */
void peft_adapter_open(PeftAdapter *adapter, const char *adapter_dir);
/* Factor `part` (0: A, 1: B) of a layer's projection; NULL when the adapter does not adapt it. */
const TensorInfo *peft_adapter_factor(const PeftAdapter *adapter, int layer, Proj p, int part);
/* Is the adapter one of the base model BASE (config, fingerprint)? A fingerprint in the metadata
 * (paft's copies) must be the base's; every factor must adapt a layer the base has, at its
 * projection's shape. Fatal error naming the file otherwise. */
void peft_adapter_check_base(const PeftAdapter *adapter, const ModelConfig *config,
                             const char *fingerprint, const char *base);
void peft_adapter_close(PeftAdapter *adapter);

/* Load the adapter's A and B into the model, whose LoRA configuration must match. */
void peft_load_adapter(Model *model, const char *adapter_dir);
/* Fold a PEFT adapter (any r/alpha/targets) into the base weights, W += s B A, each rank its own
 * block of W: what adapter_fold_into_base does with a directory. Every tensor of the file must be
 * a lora_A/lora_B factor of a decoder-layer projection of this model at its shape, both factors
 * present and finite; a fingerprint in the metadata (paft's copies) must be the model's. `folded`
 * receives the adapter it was trained on top of (PEFT_FOLDED_KEY; "" when none): the caller folds
 * that too (adapter_fold_into_base). */
void peft_fold_into_base(const char *adapter_dir, Model *model, char *folded, size_t folded_size);
/* What `paft inspect <peft dir>` prints: the LoRA settings, the base model it names, the tensors,
 * and the sparsity of every module's delta s B A (as for an adapter.h5). Validates first. */
void peft_describe(const char *adapter_dir, FILE *out);

/* Convert a paft adapter file (adapter.h5, global shapes) into a PEFT adapter directory (created if
 * needed): adapter_config.json and adapter_model.safetensors (F32, the base fingerprint in its
 * metadata). Call on one rank. */
void peft_write_adapter(const char *adapter_h5, const char *adapter_dir);

#endif
