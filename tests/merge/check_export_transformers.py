#!/usr/bin/env python3
"""check_export_transformers.py - does transformers load what `paft export` writes? (Not part of
ctest: it needs torch and transformers, e.g. /opt/refvenv/bin/python.)

usage: check_export_transformers.py MERGED.h5 EXPORT_DIR

1. AutoModelForCausalLM.from_pretrained(EXPORT_DIR): no missing or unexpected keys, and every
   parameter equal to the merged file's values (bf16, widened exactly);
2. the same architecture built from config.json with the merged file's weights loaded by hand
   (h5py) gives bit-identical logits on random tokens: nothing was left at an initial value or
   tied differently;
3. AutoTokenizer loads the copied tokenizer files when the base had any.
"""
import json
import os
import sys

import h5py
import numpy as np
import torch
import transformers


def main():
    merged, export = sys.argv[1], sys.argv[2]
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        export, torch_dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with h5py.File(merged, "r") as f:
        weights = {name: torch.from_numpy(ds.astype("f4")[()]) for name, ds in f["weights"].items()}
        config_text = f.attrs["config"]
    config_text = config_text.decode() if isinstance(config_text, bytes) else config_text
    state = model.state_dict()
    compared = 0
    for name, value in weights.items():
        # the export is bf16: an fp32 merged file is compared after rounding
        want = value.to(torch.bfloat16).to(torch.float32)
        assert torch.equal(state[name], want), name
        compared += 1
    config = transformers.AutoConfig.from_pretrained(export)
    reference = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    missing, unexpected = reference.load_state_dict(
        {k: v.to(torch.bfloat16).to(torch.float32) for k, v in weights.items()}, strict=False)
    assert not unexpected, unexpected
    assert all(k == "lm_head.weight" for k in missing) and (not missing or config.tie_word_embeddings), missing
    if config.tie_word_embeddings:
        reference.tie_weights()
    tokens = torch.randint(0, config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = model(tokens).logits
        b = reference(tokens).logits
    assert torch.equal(a, b), float((a - b).abs().max())
    tok = "no tokenizer files"
    if os.path.exists(os.path.join(export, "tokenizer.json")) or os.path.exists(
            os.path.join(export, "tokenizer.model")):
        tok = type(transformers.AutoTokenizer.from_pretrained(export)).__name__
    print(f"transformers {transformers.__version__}: loaded {export} "
          f"({type(model).__name__}, {compared} tensors equal to the merged file, logits "
          f"{tuple(a.shape)} identical to a model built from the merged weights, tokenizer: {tok})")
    json.loads(config_text)  # the recorded config is valid JSON


if __name__ == "__main__":
    main()
