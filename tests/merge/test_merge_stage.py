#!/usr/bin/env python3
"""test_merge_stage.py - `paft merge` end to end against an independent numpy implementation.

usage: test_merge_stage.py --paft PATH/paft --inputs DIR (make_merge_inputs' output) --workdir DIR

For every merge method (on the llama set: bf16 base, adapters with different r/alpha/targets) and
a few on the qwen set (fp32 base, biases, tied embeddings, a module adapted by one adapter only),
paft merges with dtype=fp32 and dtype=bf16, and this script recomputes the whole merge from the
files alone: the base from the safetensors file (a pure-python reader), delta = s B A from the
adapters (h5py), then merge_reference.py's numpy semantics per tensor (tensor_id = index in the
sorted names). Checks:
  - fp32: every merged tensor within 1e-6 of the largest |reference| (the error is 0 in practice:
    delta is formed in paft's accumulation order); every other tensor equal to the base exactly;
  - /stats: numel, the sparsity counts of delta_sft, delta_pref and the merged delta, the kept
    counts, equal to numpy's exactly (sparsities = counts / numel);
  - bf16: the stored bits equal numpy's round-to-nearest-even of the fp32 output, bit for bit;
    h5py's ds.astype('f4') and h5dump -m %.9g read the same values exactly;
  - the root attributes (format, config = the base's config.json text, method, parameters,
    sources, base_fingerprint, dtype) and `paft inspect` of the merged file.
Needs numpy and h5py; h5dump is used when found.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import merge_reference  # noqa: E402  (the per-tensor numpy semantics, shared with the unit test)
import stage_files  # noqa: E402

F32 = np.float32
PROJ = {"self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj",
        "self_attn.o_proj": "o_proj", "mlp.gate_proj": "gate_proj", "mlp.up_proj": "up_proj",
        "mlp.down_proj": "down_proj"}
DEFAULT_NORMALIZE = {"linear": True, "ties": True}

failures = []


def check(ok, message):
    if not ok:
        failures.append(message)
        print("FAIL", message)


def attr(f, name):
    """A root attribute as str (paft writes fixed-length UTF-8 strings; h5py returns bytes)."""
    value = f.attrs[name]
    return value.decode("utf-8") if isinstance(value, bytes) else value


def read_adapter(path):
    """(scale, {module: (A, B)}) of an adapter.h5 or a PEFT adapter directory."""
    if os.path.isdir(path):
        with open(os.path.join(path, "adapter_config.json")) as f:
            config = json.load(f)
        r, alpha = config["r"], config["lora_alpha"]
        scale = alpha / np.sqrt(r) if config.get("use_rslora") else alpha / r
        _, values, _ = stage_files.read_safetensors(os.path.join(path, "adapter_model.safetensors"))
        modules = {}
        for name, value in values.items():
            m = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])\.weight", name)
            modules.setdefault(m.group(1), {})[m.group(2)] = value.astype(F32)
        return F32(scale), {k: (v["A"], v["B"]) for k, v in modules.items()}
    with h5py.File(path, "r") as f:
        r = int(f.attrs["r"])
        alpha = float(f.attrs["alpha"])
        rslora = int(f.attrs["rslora"])
        scale = alpha / np.sqrt(r) if rslora else alpha / r
        modules = {name: (f["lora"][name]["A"][()], f["lora"][name]["B"][()]) for name in f["lora"]}
    return F32(scale), modules


def lora_delta(A, B, scale):
    """delta = scale * B A in float32, accumulated over k in order as paft's lora_delta does."""
    acc = np.zeros((B.shape[0], A.shape[1]), dtype=F32)
    for k in range(A.shape[0]):
        acc += B[:, k:k + 1] * A[k:k + 1, :]
    return acc * scale


def write_foreign_peft(adapter_h5, out_dir, layers, bf16):
    """A PEFT adapter directory as PEFT itself writes one, from an adapter.h5: no paft metadata
    (so no fingerprint), only the decoder layers in `layers` (PEFT's layers_to_transform), the
    factors in BF16 (rounded to nearest even) or F32."""
    os.makedirs(out_dir, exist_ok=True)
    with h5py.File(adapter_h5, "r") as f:
        r, alpha, rslora = int(f.attrs["r"]), float(f.attrs["alpha"]), bool(f.attrs["rslora"])
        targets = attr(f, "targets").split(",")
        modules = {name: (f["lora"][name]["A"][()], f["lora"][name]["B"][()]) for name in f["lora"]}
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha,
              "use_rslora": rslora, "target_modules": targets, "layers_to_transform": layers,
              "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_dora": False}
    with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    header, blobs, offset = {}, [], 0
    for module in sorted(modules):
        if int(module.split(".")[2]) not in layers:
            continue
        for part, value in zip("AB", modules[module]):
            raw = (stage_files.f32_to_bf16(value) if bf16 else value.astype("<f4")).tobytes()
            header[f"base_model.model.{module}.lora_{part}.weight"] = {
                "dtype": "BF16" if bf16 else "F32", "shape": list(value.shape),
                "data_offsets": [offset, offset + len(raw)]}
            blobs.append(raw)
            offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(os.path.join(out_dir, "adapter_model.safetensors"), "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + b"".join(blobs))
    return out_dir


def module_of(name):
    m = re.fullmatch(r"(model\.layers\.\d+\.(?:self_attn|mlp)\.\w+_proj)\.weight", name)
    return m.group(1) if m else None


def run_paft(paft, args):
    res = subprocess.run([paft] + args, capture_output=True, text=True)
    if res.returncode != 0:
        print(res.stdout, res.stderr)
        raise SystemExit(f"paft {' '.join(args)} failed")
    return res.stdout


def case_of(params, tensor_id):
    method = params["method"]
    normalize = params["normalize"]
    return {"method": method, "weight": params["weights"], "density": params["density"],
            "normalize": normalize, "lambda": params["lambda"],
            "sign_by_count": params["sign"] == "count", "seed": params["seed"],
            "tensor_id": tensor_id, "dare_rescale_l1": params["rescale"] == "l1"}


def check_merge(paft, inputs, model_set, label, overrides, workdir, also_bf16, h5dump,
                adapters=None):
    """adapters: {"sft": path, "pref": path} in place of the set's sft.h5 / pref.h5."""
    ini = os.path.join(inputs, model_set, "merge.ini")
    paths = {k: os.path.join(inputs, model_set, f"{k}.h5") for k in ("sft", "pref")}
    paths.update(adapters or {})
    overrides = overrides + [f"merge.{k}_adapter={v}" for k, v in (adapters or {}).items()]
    model_dir = os.path.join(inputs, model_set, "model")
    out32 = os.path.join(workdir, f"{model_set}-{label}-fp32.h5")
    out16 = os.path.join(workdir, f"{model_set}-{label}-bf16.h5")
    run_paft(paft, ["merge", ini, f"merge.out={out32}", "merge.dtype=fp32"] + overrides)
    if also_bf16:
        run_paft(paft, ["merge", ini, f"merge.out={out16}", "merge.dtype=bf16"] + overrides)
    else:
        out16 = None

    base, _, _ = stage_files.read_model_dir(model_dir)
    sft = read_adapter(paths["sft"])
    pref = read_adapter(paths["pref"])
    names = sorted(base)
    worst = 0.0
    n_merged = 0
    with h5py.File(out32, "r") as f32, h5py.File(out16 or out32, "r") as f16:
        params = json.loads(attr(f32, "parameters"))
        check(params["method"] == attr(f32, "method"), f"{label}: method attribute")
        check(attr(f32, "format") == "paft-merged-1", f"{label}: format attribute")
        with open(os.path.join(model_dir, "config.json")) as cf:
            check(attr(f32, "config") == cf.read(), f"{label}: config attribute is not config.json")
        sources = json.loads(attr(f32, "sources"))
        check(sources["base"] == os.path.realpath(model_dir), f"{label}: sources.base")
        for k in ("sft", "pref"):
            source = sources[f"{k}_adapter"]
            check(source["path"] == os.path.realpath(paths[k]), f"{label}: sources.{k}_adapter")
            check(source["format"] == ("peft" if os.path.isdir(paths[k]) else "paft-adapter-1"),
                  f"{label}: sources.{k}_adapter.format {source['format']}")
        check(attr(f32, "base_fingerprint") == sources["base_fingerprint"], f"{label}: fingerprint")
        check(attr(f32, "dtype") == "fp32" and (not out16 or attr(f16, "dtype") == "bf16"),
              f"{label}: dtype attrs")
        check(attr(f32, "base_model") == sources["base"], f"{label}: base_model attribute")
        check(sorted(f32["weights"]) == names, f"{label}: /weights holds other tensors than the base")
        for tensor_id, name in enumerate(names):
            w = base[name]
            got = f32["weights"][name][()]
            check(got.shape == w.shape and got.dtype == np.float32, f"{label}: {name} shape/dtype")
            module = module_of(name)
            deltas, adapted = [], []
            for scale, modules in (sft, pref):
                if module in modules:
                    A, B = modules[module]
                    deltas.append(lora_delta(A, B, scale))
                    adapted.append(1)
                else:
                    deltas.append(np.zeros_like(w))
                    adapted.append(0)
            if not any(adapted):
                check(np.array_equal(got, w), f"{label}: untouched {name} is not the base")
                check(name not in f32["stats"], f"{label}: /stats/{name} for an untouched tensor")
            else:
                n_merged += 1
                case = case_of(params, tensor_id)
                ref = merge_reference.reference(case, w, deltas).astype(F32)
                scale_ = float(np.max(np.abs(ref))) or 1.0
                err = float(np.max(np.abs(got.astype(np.float64) - ref))) / scale_
                worst = max(worst, err)
                check(err <= 1e-6, f"{label}: {name} differs from numpy by {err:.2e} (relative)")
                st = f32["stats"][name][()]
                small = [int(np.sum(np.abs(d) < F32(1e-5))) for d in deltas]
                small.append(int(np.sum(np.abs(got - w) < F32(1e-5))))
                kept = merge_reference.kept_counts(case, deltas)
                check([int(st["numel"]), int(st["small_sft"]), int(st["small_pref"]),
                       int(st["small_merged"])] == [w.size] + small,
                      f"{label}: {name} sparsity counts {st} != numpy {small}")
                check([int(st["kept_sft"]), int(st["kept_pref"])] == kept,
                      f"{label}: {name} kept {st['kept_sft']},{st['kept_pref']} != {kept}")
                check(st["sparsity_sft"] == small[0] / w.size and
                      st["sparsity_merged"] == small[2] / w.size, f"{label}: {name} fractions")
                check([int(st["in_sft"]), int(st["in_pref"])] == adapted, f"{label}: {name} in_*")
                check(f16["stats"][name][()] == st, f"{label}: {name} stats differ bf16/fp32")
            if not out16:
                continue
            # bf16: round-to-nearest-even of the fp32 result, read three ways
            ds = f16["weights"][name]
            check(stage_files.is_paft_bf16(ds), f"{label}: {name} is not paft's bf16 type")
            bits = stage_files.bf16_bits(ds)
            check(np.array_equal(bits, stage_files.f32_to_bf16(got)),
                  f"{label}: {name} bf16 is not RNE of the fp32 result")
            widened = ds.astype("f4")[()]
            check(np.array_equal(widened, stage_files.bf16_to_f32(bits)),
                  f"{label}: {name} h5py astype('f4') differs from the stored bits")
        if h5dump and out16:
            # h5dump converts the user-defined float itself: its values must be the exact ones
            # (a copied norm and a merged projection: h5dump is slow on big tensors)
            for name in ("model.norm.weight", next(n for n in names if module_of(n))):
                res = subprocess.run([h5dump, "-m", "%.9g", "-y", "-w", "0", "-d",
                                      f"/weights/{name}", out16], capture_output=True, text=True)
                check(res.returncode == 0, f"h5dump failed: {res.stderr}")
                body = res.stdout[res.stdout.index("DATA {") + 6:]
                body = body[:body.index("}")]
                values = np.array([float(v) for v in body.replace(",", " ").split()], dtype=F32)
                want = stage_files.bf16_to_f32(stage_files.bf16_bits(f16["weights"][name])).ravel()
                check(np.array_equal(values, want), f"{label}: h5dump's values of {name} differ")
    print(f"ok   {model_set:<6} {label:<22} {n_merged:2d} merged tensors, largest relative "
          f"error {worst:.1e}")
    return out16


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--paft", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--set", choices=["llama", "qwen"], help="only this model set")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    h5dump = shutil.which("h5dump")
    if not h5dump:
        print("note: h5dump not found, its check is skipped")
    # (set, label, overrides, also check a bf16 output)
    cases = [
        ("llama", "ties", ["merge.method=ties", "merge.density=0.5,0.7"], True),
        ("llama", "ties-count-w", ["merge.method=ties", "merge.sign=count", "merge.weights=0.7,0.3"],
         False),
        ("llama", "task_arithmetic", ["merge.method=task_arithmetic", "merge.weights=1,0.5",
                                      "merge.lambda=0.8"], False),
        ("llama", "linear", ["merge.method=linear", "merge.weights=0.3,0.7"], False),
        ("llama", "dare_ties", ["merge.method=dare_ties", "merge.density=0.6,0.4", "merge.seed=7"],
         True),
        ("llama", "dare_linear-l1", ["merge.method=dare_linear", "merge.density=0.5,0.8",
                                     "merge.rescale=l1", "merge.seed=3"], False),
        ("llama", "magnitude", ["merge.method=magnitude", "merge.density=0.4,0.4"], False),
        ("llama", "slerp", ["merge.method=slerp", "merge.weights=0.4,0.6"], True),
        ("qwen", "ties", ["merge.method=ties", "merge.density=0.3,0.5"], True),
        ("qwen", "dare_linear", ["merge.method=dare_linear", "merge.density=0.5,0.5",
                                 "merge.normalize=true"], False),
        ("qwen", "slerp", ["merge.method=slerp"], False),
    ]
    cases = [c for c in cases if args.set in (None, c[0])]
    merged = None
    for model_set, label, overrides, also_bf16 in cases:
        out = check_merge(args.paft, args.inputs, model_set, label, overrides, args.workdir,
                          also_bf16, h5dump)
        merged = merged or out
    # PEFT adapter directories in either slot: paft's own copies (written by make_merge_inputs),
    # and ones as PEFT writes them (BF16 factors, some layers only, no fingerprint), whose
    # skipped layers are untouched where the other adapter does not adapt them
    if args.set in (None, "llama"):
        llama = os.path.join(args.inputs, "llama")
        foreign_sft = write_foreign_peft(os.path.join(llama, "sft.h5"),
                                         os.path.join(args.workdir, "foreign_sft"), [1], True)
        foreign_pref = write_foreign_peft(os.path.join(llama, "pref.h5"),
                                          os.path.join(args.workdir, "foreign_pref"), [0], False)
        peft_cases = [
            ("ties-peft", ["merge.method=ties", "merge.density=0.5,0.7"],
             {"sft": os.path.join(llama, "sft_peft"), "pref": os.path.join(llama, "pref_peft")}),
            ("dare_ties-foreign", ["merge.method=dare_ties", "merge.density=0.6,0.4",
                                   "merge.seed=7"], {"sft": foreign_sft, "pref": foreign_pref}),
            ("task_arith-mixed", ["merge.method=task_arithmetic", "merge.weights=1,0.5"],
             {"sft": foreign_sft}),
        ]
        for label, overrides, adapters in peft_cases:
            check_merge(args.paft, args.inputs, "llama", label, overrides, args.workdir, False,
                        None, adapters)
        cases += peft_cases
    # paft inspect of a merged file: the three tables and the summary
    text = run_paft(args.paft, ["inspect", merged])
    for want in ("paft merged model (paft-merged-1)", "delta_sft (before sparsification):",
                 "delta_pref (before sparsification):", "merged delta", "summary: 14 merged tensors"):
        check(want in text, f"inspect output lacks '{want}':\n{text}")
    with h5py.File(merged, "r") as f:  # the table's cells are /stats' sparsities
        st = f["stats"]["model.layers.1.self_attn.o_proj.weight"][()]
    row = next(line for line in text.split("merged delta")[1].splitlines() if line.split()[:1] == ["1"])
    check(row.split()[4] == f"{st['sparsity_merged']:.4f}", f"inspect's layer 1 o_proj: {row}")
    print(f"test_merge_stage: {len(cases)} merges, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
