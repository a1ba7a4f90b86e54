#!/usr/bin/env python3
"""Compare `paft merge` of two PEFT adapter directories written by real peft with the same merge
done by transformers + peft. Needs torch, transformers, peft, h5py, safetensors (not part of CI;
run by hand, see tests/reference/README.md "By-hand checks").

  check_peft_merge.py PAFT CONFIG BASE DATA WORK

PAFT is the paft binary, CONFIG a paft configuration (only its micro-batch settings matter;
model.path and eval.sft_data are given on the command line), BASE a Hugging Face model directory,
DATA an SFT *.bin, WORK a scratch folder.

Two pairs of adapters are written with get_peft_model(...).save_pretrained, lora_A and lora_B
random so the deltas are not zero, with different r / alpha / targets:
  pair 1: "plain" (r=4, alpha=8, all seven projections, fp32) and "rs-l0-bf16" (r=3, alpha=5,
          use_rslora, q/v/down, layers_to_transform=[0], saved in bf16);
  pair 2: "rs-last-fp16" (r=2, alpha=3, use_rslora, q/k/v/o, the last layer only, saved in fp16)
          and "mlp-bf16" (r=5, alpha=6, gate/up/down, saved in bf16).
For each pair, two formulas:
  task_arithmetic, weights 1,1, lambda 1 (normalize off by default): theta = base + d1 + d2;
      torch: PeftModel.from_pretrained(base, DIR1).merge_and_unload(), then the same with DIR2;
  linear, weights 0.3,0.7, normalize=false: theta = 0.3 (base + d1) + 0.7 (base + d2)
      = base + 0.3 d1 + 0.7 d2 on the adapted tensors (paft copies the others from the base);
      torch: each adapter's LoRA scaling multiplied by its weight before merge_and_unload().
`paft merge ... merge.dtype=fp32`; its fp32 /weights are compared with torch's merged state dict
tensor by tensor (max |paft - torch| over max |torch - base| of the tensor, the delta's own scale;
the tensors no adapter touches must be equal to the bit), `paft export` of it (always bf16) must
be its tensors rounded to bf16 by torch, and `paft eval
model=MERGED.h5` with torch's NLL of the merged model (relative). Limits: 1e-5 for both
(fp32 arithmetic in different orders). Exits 1 if any comparison fails.
"""
import json
import math
import os
import subprocess
import sys

import h5py
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors import safe_open

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_peft_eval as ce  # noqa: E402  (paft_eval, torch_nll, load_base, read_token_data)

TOL = 1e-5
failures = []
SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def write_adapter(base, work, name, dtype, seed, **kwargs):
    torch.manual_seed(seed)
    model = get_peft_model(ce.load_base(base), LoraConfig(lora_dropout=0.0, **kwargs))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_A" in pname or "lora_B" in pname:
                p.normal_(0.0, 0.5 / math.sqrt(p.shape[1]))
    if dtype is not torch.float32:
        model.to(dtype)
    path = os.path.join(work, f"peft-{name}")
    model.save_pretrained(path)
    with safe_open(os.path.join(path, "adapter_model.safetensors"), "pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
        count = len(list(f.keys()))
    print(f"  wrote {path}: {count} tensors, dtypes {sorted(dtypes)}, {kwargs}")
    return path


def torch_merge(base, adapters):
    """base + sum of weight_i * delta_i, merged by peft one adapter after the other."""
    model = ce.load_base(base)
    for path, weight in adapters:
        model = PeftModel.from_pretrained(model, path)
        if weight != 1.0:
            for module in model.modules():
                if isinstance(module, LoraLayer):
                    for key in module.scaling:
                        module.scaling[key] *= weight
        model = model.merge_and_unload()
    return model


def paft(*args):
    out = subprocess.run(list(args), capture_output=True, text=True)
    if out.returncode != 0:
        failures.append(f"{' '.join(args)}: exit {out.returncode}: {out.stderr.strip()}")
        print(out.stdout, out.stderr)
    return out


def compare_weights(what, base_sd, torch_sd, merged_h5, export_dir):
    with h5py.File(merged_h5, "r") as f:
        paft_sd = {k: torch.from_numpy(v[()]) for k, v in f["weights"].items()}
    if "lm_head.weight" in torch_sd and "lm_head.weight" not in paft_sd:  # tied: no copy stored
        paft_sd["lm_head.weight"] = paft_sd["model.embed_tokens.weight"]
    # paft export writes bf16: each tensor must be the fp32 merged file's, rounded to nearest even
    exported = ce.load_base(export_dir).state_dict()
    export_bad = [k for k, v in paft_sd.items()
                  if not torch.equal(exported[k], v.to(torch.bfloat16).float())]
    worst, merged, untouched, bad = 0.0, 0, 0, []
    for key, ref in torch_sd.items():
        got = paft_sd[key]
        delta = (ref.double() - base_sd[key].double()).abs().max().item()
        diff = (got.double() - ref.double()).abs().max().item()
        if delta == 0.0:
            untouched += 1
            if diff != 0.0:
                bad.append(f"{key} (untouched) differs by {diff:.3e}")
        else:
            merged += 1
            worst = max(worst, diff / delta)
    ok = worst <= TOL and not bad and not export_bad and set(paft_sd) == set(torch_sd)
    print(f"{'ok  ' if ok else 'FAIL'} {what} weights: {merged} merged tensors, max |paft - torch| / "
          f"max |delta| {worst:.2e}; {untouched} untouched tensors equal to the bit; export = "
          f"bf16 of merged.h5 for {len(paft_sd) - len(export_bad)}/{len(paft_sd)} tensors"
          + ("" if not bad else "; " + "; ".join(bad)))
    if not ok:
        failures.append(f"{what} weights")


def main():
    torch.set_num_threads(1)
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    paft_bin, config, base, data_path, work = sys.argv[1:]
    os.makedirs(work, exist_ok=True)
    data = ce.read_token_data(data_path, "sft")
    with open(os.path.join(base, "config.json")) as f:
        last = json.load(f)["num_hidden_layers"] - 1
    base_model = ce.load_base(base)
    base_sd = {k: v.clone() for k, v in base_model.state_dict().items()}
    base_nll = ce.torch_nll(base_model, data)
    print(f"base {base}: torch NLL {base_nll:.8f}")
    pairs = [
        ("pair1",
         write_adapter(base, work, "plain", torch.float32, 11, r=4, lora_alpha=8,
                       target_modules=SEVEN),
         write_adapter(base, work, "rs-l0-bf16", torch.bfloat16, 12, r=3, lora_alpha=5,
                       use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"],
                       layers_to_transform=[0])),
        ("pair2",
         write_adapter(base, work, "rs-last-fp16", torch.float16, 13, r=2, lora_alpha=3,
                       use_rslora=True, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                       layers_to_transform=[last]),
         write_adapter(base, work, "mlp-bf16", torch.bfloat16, 14, r=5, lora_alpha=6,
                       target_modules=["gate_proj", "up_proj", "down_proj"])),
    ]
    formulas = [
        ("task_arithmetic", (1.0, 1.0),
         ["merge.method=task_arithmetic", "merge.weights=1,1", "merge.lambda=1"]),
        ("linear", (0.3, 0.7),
         ["merge.method=linear", "merge.weights=0.3,0.7", "merge.normalize=false"]),
    ]
    for pair, dir1, dir2 in pairs:
        for method, (w1, w2), settings in formulas:
            what = f"{os.path.basename(base)} {pair} {method} {w1},{w2}"
            out_h5 = os.path.join(work, f"{pair}-{method}.h5")
            export_dir = os.path.join(work, f"{pair}-{method}-hf")
            if paft(paft_bin, "merge", config, f"model.path={base}", *settings, "merge.dtype=fp32",
                    f"merge.sft_adapter={dir1}", f"merge.pref_adapter={dir2}",
                    f"merge.out={out_h5}").returncode != 0:
                continue
            if paft(paft_bin, "export", out_h5, export_dir).returncode != 0:
                continue
            reference = torch_merge(base, [(dir1, w1), (dir2, w2)])
            compare_weights(what, base_sd, reference.state_dict(), out_h5, export_dir)
            nll = ce.torch_nll(reference, data)
            got = ce.paft_eval(paft_bin, config, base, data_path, out_h5)
            rel = abs(got - nll) / max(1.0, abs(nll))
            ok = rel <= TOL
            print(f"{'ok  ' if ok else 'FAIL'} {what} NLL: torch {nll:.8f}, paft eval merged "
                  f"{got:.8f}; rel diff {rel:.2e} (base {base_nll:.6f})")
            if not ok:
                failures.append(f"{what} NLL")
    failures.extend(ce.failures)
    if failures:
        print("failed: " + "; ".join(failures))
        sys.exit(1)
    print("all comparisons agree")


if __name__ == "__main__":
    main()
