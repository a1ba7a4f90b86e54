#!/usr/bin/env python3
"""Check that a PEFT adapter written by `paft train` (<stage>/peft/) loads in peft + transformers
with every LoRA weight equal to paft's adapter.h5, and that it changes the model's output.
Needs torch, transformers, peft, h5py (not part of CI; run by hand, see tests/reference/README.md):

    python tests/reference/check_peft_load.py BASE_MODEL_DIR RUN_DIR/sft
"""
import sys

import h5py
import numpy as np
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

base_dir, stage_dir = sys.argv[1], sys.argv[2]
base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
tokens = torch.randint(0, base.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    base_logits = base(tokens).logits.clone()
model = PeftModel.from_pretrained(base, f"{stage_dir}/peft")
state = {k: v for k, v in model.state_dict().items() if "lora_" in k}
checked = 0
with h5py.File(f"{stage_dir}/adapter.h5", "r") as f:
    def visit(name, obj):
        global checked
        if isinstance(obj, h5py.Dataset):
            module, part = name.rsplit("/", 1)
            key = f"base_model.model.{module}.lora_{part}.default.weight"
            assert key in state, f"{key} missing in the PEFT model"
            assert np.array_equal(state[key].numpy(), obj[()]), f"{key} differs"
            checked += 1
    f["lora"].visititems(visit)
assert checked == len(state), f"{checked} tensors checked, PEFT has {len(state)}"
with torch.no_grad():
    adapted = model(tokens).logits
change = (adapted - base_logits).abs().max().item()
assert change > 1e-4, "the adapter does not change the output"
print(f"peft loaded {checked} LoRA tensors equal to adapter.h5; max logit change {change:.4f}")
