#!/usr/bin/env python3
"""Compare what paft computes with what transformers + peft compute for the same adapters, by the
SFT NLL of a token data file (paft eval's sft_nll: the mean over the loss-mask tokens, each record
run on its own). Needs torch, transformers, peft, h5py, safetensors (not part of CI; run by hand,
see tests/reference/README.md). PAFT is the paft binary, CONFIG a paft configuration (only its
micro-batch settings matter; model.path, eval.sft_data and, for an adapter.h5, the [lora] settings
recorded in the file are given on the command line), DATA an SFT *.bin.

  peft-to-paft PAFT CONFIG BASE DATA WORK
      Adapters written by real peft (get_peft_model + save_pretrained, lora_A and lora_B random
      so the delta is not zero): plain, rslora, a subset of the targets, "all-linear". For
      each, four NLLs: torch with the PeftModel; torch with peft's merge_and_unload() saved as
      safetensors and loaded again; `paft eval model=<adapter dir>` (paft folds it into BASE);
      `paft eval model=<that merged dir>`.
  paft-to-peft PAFT CONFIG BASE DATA STAGE_DIR...
      A stage paft trained: torch with PeftModel.from_pretrained(base, STAGE/peft), the base first
      given the adapters its metadata's paft_folded_adapter names (a chain, resolved down to the
      base: PEFT directories merged with peft, adapter.h5 files as W += s B A), against
      `paft eval model=STAGE/adapter.h5` and `model=STAGE/peft`.
  export PAFT CONFIG BASE DATA MERGED.h5 EXPORT_DIR
      `paft eval model=MERGED.h5` against torch's NLL of the `paft export` directory.

Each comparison must agree to 1e-5 relative (fp32, different summation orders); the script
prints every NLL and the largest difference, and exits 1 if any comparison fails.
"""
import json
import math
import os
import struct
import subprocess
import sys

import h5py
import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "inputs"))
from paft_data import read_token_data  # noqa: E402

TOL = 1e-5
failures = []


def paft_eval(paft, config, base, data, model):
    lora = []
    if model.endswith(".h5") and h5py.is_hdf5(model):
        with h5py.File(model, "r") as f:
            if attr_text(f.attrs.get("format", "")) == "paft-adapter-1":
                # paft eval applies an adapter.h5 with the run's [lora], which must be the file's
                lora = [f"lora.r={int(f.attrs['r'])}", f"lora.alpha={float(f.attrs['alpha'])!r}",
                        f"lora.rslora={'true' if int(f.attrs['rslora']) else 'false'}",
                        f"lora.targets={attr_text(f.attrs['targets'])}"]
    out = subprocess.run([paft, "eval", config, f"model.path={base}", f"model={model}",
                          f"eval.sft_data={data}", *lora], capture_output=True, text=True)
    if out.returncode != 0:
        failures.append(f"paft eval model={model}: exit {out.returncode}: {out.stderr.strip()}")
        return float("nan")
    line = [x for x in out.stdout.splitlines() if x.startswith("eval: ")][-1]
    return json.loads(line[len("eval: "):])["sft_nll"]


def torch_nll(model, data):
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for tokens, mask in data.records():
            ids = torch.from_numpy(tokens)[None]
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
            picked = logp.gather(1, ids[0, 1:, None])[:, 0]
            keep = torch.from_numpy(mask[1:]).bool()
            total -= float(picked[keep].sum())
            count += int(keep.sum())
    return total / count


def load_base(base):
    return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)


def compare(what, reference, *others):
    worst = max(abs(x - reference) / max(1.0, abs(reference)) for _, x in others)
    ok = worst <= TOL and all(math.isfinite(x) for _, x in others)
    print(f"{'ok  ' if ok else 'FAIL'} {what}: torch {reference:.8f}, "
          + ", ".join(f"{name} {x:.8f}" for name, x in others) + f"; max rel diff {worst:.2e}")
    if not ok:
        failures.append(what)


def peft_to_paft(paft, config, base, data_path, work):
    data = read_token_data(data_path, "sft")
    os.makedirs(work, exist_ok=True)
    base_nll = torch_nll(load_base(base), data)
    compare("base", base_nll, ("paft", paft_eval(paft, config, base, data_path, base)))
    variants = [
        ("plain", dict(r=4, lora_alpha=8,
                       target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                       "up_proj", "down_proj"])),
        ("rslora", dict(r=3, lora_alpha=5, use_rslora=True,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                        "up_proj", "down_proj"])),
        ("subset", dict(r=2, lora_alpha=7, target_modules=["q_proj", "v_proj", "down_proj"])),
        ("all-linear", dict(r=4, lora_alpha=4, target_modules="all-linear")),
    ]
    for name, kwargs in variants:
        torch.manual_seed(1234)
        model = get_peft_model(load_base(base), LoraConfig(lora_dropout=0.0, **kwargs))
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "lora_A" in pname or "lora_B" in pname:
                    p.normal_(0.0, 0.5 / math.sqrt(p.shape[1]))
        adapter_dir = os.path.join(work, f"peft-{name}")
        model.save_pretrained(adapter_dir)
        nll = torch_nll(model, data)
        merged = model.merge_and_unload()
        merged_dir = os.path.join(work, f"merged-{name}")
        merged.save_pretrained(merged_dir, safe_serialization=True)
        merged_nll = torch_nll(load_base(merged_dir), data)
        compare(f"peft adapter '{name}' ({kwargs}); base NLL {base_nll:.6f}", nll,
                ("torch merged", merged_nll),
                ("paft eval adapter dir", paft_eval(paft, config, base, data_path, adapter_dir)),
                ("paft eval merged dir", paft_eval(paft, config, base, data_path, merged_dir)))


def safetensors_metadata(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)).get("__metadata__", {})


def attr_text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def fold(model, adapter):
    """model with ADAPTER (a paft adapter.h5 or a PEFT directory) and its chain folded in."""
    if os.path.isdir(adapter):
        below = safetensors_metadata(os.path.join(adapter, "adapter_model.safetensors")).get(
            "paft_folded_adapter", "")
        if below:
            model = fold(model, below)
        return PeftModel.from_pretrained(model, adapter).merge_and_unload()
    with h5py.File(adapter, "r") as f:
        below = attr_text(f.attrs["folded_adapter"])
        if below:
            model = fold(model, below)
        r, alpha = int(f.attrs["r"]), float(f.attrs["alpha"])
        scale = alpha / math.sqrt(r) if int(f.attrs["rslora"]) else alpha / r
        params = dict(model.named_parameters())
        with torch.no_grad():
            for module, group in f["lora"].items():
                a = torch.from_numpy(group["A"][()]).double()
                b = torch.from_numpy(group["B"][()]).double()
                w = params[f"{module}.weight"]
                w.copy_((w.double() + scale * (b @ a)).float())
    return model


def paft_to_peft(paft, config, base, data_path, stages):
    data = read_token_data(data_path, "sft")
    for stage in stages:
        peft_dir = os.path.join(stage, "peft")
        meta = safetensors_metadata(os.path.join(peft_dir, "adapter_model.safetensors"))
        model = load_base(base)
        below = meta.get("paft_folded_adapter", "")
        if below:
            model = fold(model, below)
        model = PeftModel.from_pretrained(model, peft_dir)
        compare(f"{stage} (metadata {meta})", torch_nll(model, data),
                ("paft eval adapter.h5",
                 paft_eval(paft, config, base, data_path, os.path.join(stage, "adapter.h5"))),
                ("paft eval peft/", paft_eval(paft, config, base, data_path, peft_dir)))


def export(paft, config, base, data_path, merged, export_dir):
    data = read_token_data(data_path, "sft")
    compare(f"{merged} exported to {export_dir}", torch_nll(load_base(export_dir), data),
            ("paft eval merged.h5", paft_eval(paft, config, base, data_path, merged)))


def main():
    torch.set_num_threads(1)
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "peft-to-paft" and len(rest) == 5:
        peft_to_paft(*rest)
    elif mode == "paft-to-peft" and len(rest) >= 5:
        paft_to_peft(rest[0], rest[1], rest[2], rest[3], rest[4:])
    elif mode == "export" and len(rest) == 6:
        export(*rest)
    else:
        sys.exit(__doc__)
    if failures:
        print("failed: " + "; ".join(failures))
        sys.exit(1)
    print("all comparisons agree")


if __name__ == "__main__":
    main()
