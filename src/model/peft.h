/*
 * peft.h - LoRA adapters in Hugging Face PEFT's format: a directory with adapter_config.json and
 * adapter_model.safetensors, tensors named
 *   base_model.model.<HF module path>.lora_A.weight  [r][in]
 *   base_model.model.<HF module path>.lora_B.weight  [out][r]
 * paft reads them (to start from, or to compare with, adapters trained by PEFT) and writes them
 * (so peft.PeftModel.from_pretrained loads what paft trained).
 */
#ifndef PAFT_PEFT_H
#define PAFT_PEFT_H

#include "model/model.h"

/* LoRA settings of a PEFT adapter directory (r, lora_alpha, use_rslora, target_modules). */
void peft_read_config(LoraConfig *lora, const char *adapter_dir);
/* Load the adapter's A and B into the model, whose LoRA configuration must match. */
void peft_load_adapter(Model *model, const char *adapter_dir);

/* Convert a paft adapter file (adapter.h5, global shapes) into a PEFT adapter directory (created if
 * needed): adapter_config.json and adapter_model.safetensors (F32). Call on one rank. */
void peft_write_adapter(const char *adapter_h5, const char *adapter_dir);

#endif
