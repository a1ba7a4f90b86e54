#!/usr/bin/env python3
"""merge_reference.py - an independent numpy implementation of mergekit's merge semantics, as
paft applies them to two models (sft, pref) over one base (docs/MERGE.md), to check src/merge.

usage:
  merge_reference.py --driver PATH/merge_driver [--workdir DIR]   run the C driver, compare all
  merge_reference.py --check DIR                                  compare a driver's output in DIR
  merge_reference.py --known-answers                              print DARE generator values

Every case of the driver is recomputed here from its inputs and compared: the largest |paft -
reference| must be <= 1e-6 * the largest |reference| (the merged delta alone is compared where
the base is 0, so a wrongly kept or dropped element cannot hide below the base's magnitude), the
kept counts must match exactly, and the generator draws must be equal to the last bit.

Needs only numpy. Exit status 0 = all cases agree.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

F32 = np.float32
U64 = np.uint64

# ---- DARE's counter-based generator: SplitMix64 ------------------------------------------------
GOLDEN = U64(0x9E3779B97F4A7C15)
MIX1 = U64(0xBF58476D1CE4E5B9)
MIX2 = U64(0x94D049BB133111EB)


def splitmix_mix(z):
    """SplitMix64's finalizer on a uint64 array (wrapping arithmetic)."""
    z = np.asarray(z, dtype=U64)
    z = (z ^ (z >> U64(30))) * MIX1
    z = (z ^ (z >> U64(27))) * MIX2
    return z ^ (z >> U64(31))


def stream_key(seed, tensor_id, which):
    h = splitmix_mix(np.array([seed], dtype=U64) + GOLDEN)
    h = splitmix_mix(h + U64(tensor_id) + GOLDEN)
    return splitmix_mix(h + U64(which) + GOLDEN)[0]


def dare_uniform(seed, tensor_id, which, index):
    """Uniform draw in [0, 1) of element `index` (array of global row-major indices)."""
    key = stream_key(seed, tensor_id, which)
    idx = np.asarray(index, dtype=U64)
    r = splitmix_mix(key + (idx + U64(1)) * GOLDEN)
    return (r >> U64(11)).astype(np.float64) * 2.0**-53


# ---- sparsification ------------------------------------------------------------------------------
def sparsify_magnitude(delta, density):
    """Keep the int(density * numel) largest |delta| of the whole tensor; equal magnitudes are
    taken in order of the flat index (a stable sort), which is paft's documented tie rule."""
    if density >= 1:
        return delta
    k = int(density * delta.size)
    assert k > 0
    mag = np.abs(delta.ravel())
    order = np.argsort(-mag, kind="stable")
    mask = np.zeros(delta.size, dtype=F32)
    mask[order[:k]] = 1
    return delta * mask.reshape(delta.shape)


def sparsify_dare(delta, density, seed, tensor_id, which, l1):
    if density >= 1:
        return delta
    u = dare_uniform(seed, tensor_id, which, np.arange(delta.size)).reshape(delta.shape)
    kept = delta * (u < density).astype(F32)
    if not l1:
        return kept / F32(density)  # mergekit before 2025: res /= density
    # mergekit since 2025 (rescaled_masked_tensor, norm l1, eps 1e-7); paft sums in float64.
    before = np.abs(delta.astype(np.float64)).sum()
    after = np.abs(kept.astype(np.float64)).sum()
    if before < 1e-7 or after < 1e-7:
        return kept
    return kept * F32(before / after)


# ---- the methods ---------------------------------------------------------------------------------
def task_arithmetic_family(case, base, deltas):
    method = case["method"]
    kept = []
    for which, delta in enumerate(deltas):
        density = case["density"][which]
        if method in ("ties", "magnitude"):
            delta = sparsify_magnitude(delta, density)
        elif method in ("dare_ties", "dare_linear"):
            delta = sparsify_dare(delta, density, case["seed"], case["tensor_id"], which,
                                  case["dare_rescale_l1"])
        kept.append(delta)
    w = np.array(case["weight"], dtype=F32).reshape(2, 1, 1)
    weighted = np.stack(kept) * w
    if method in ("ties", "dare_ties"):
        signs = np.sign(weighted)
        if case["sign_by_count"]:
            elected = np.where(signs.sum(axis=0) >= 0, F32(1), F32(-1))
        else:
            elected = np.where(weighted.sum(axis=0) >= 0, F32(1), F32(-1))
        agree = (signs == elected).astype(F32)
        mixed = (weighted * agree).sum(axis=0)
        divisor = (w * agree).sum(axis=0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(axis=0)
        divisor = w.sum(axis=0)
        if abs(float(divisor.ravel()[0])) < 1e-8:
            divisor = np.ones_like(divisor)
    if case["normalize"]:
        mixed = mixed / divisor
    if case["lambda"] != 1:
        mixed = mixed * F32(case["lambda"])
    return base + mixed


def linear(case, base, deltas):
    w = np.array(case["weight"], dtype=F32).reshape(2, 1, 1)
    thetas = np.stack([base + deltas[0], base + deltas[1]])
    res = (w * thetas).sum(axis=0)
    if case["normalize"]:
        res = res / w.sum(axis=0)
    return res


def slerp(case, base, deltas, accumulate=np.float64):
    """mergekit's slerp of the two whole tensors, v0 = theta_sft, v1 = theta_pref. With
    accumulate=float64 the dot product and norms are formed in double (paft's choice); with
    float32 this is mergekit's own arithmetic (numpy in float32)."""
    t = case["weight"][1] / (case["weight"][0] + case["weight"][1])
    v0 = (base + deltas[0]).ravel()
    v1 = (base + deltas[1]).ravel()
    eps = 1e-8

    def unit(v):
        norm = np.sqrt(np.sum(v.astype(accumulate) ** 2))
        return v.astype(accumulate) / norm if norm > eps else v.astype(accumulate)

    dot = np.sum(unit(v0) * unit(v1))
    if abs(dot) > 0.9995:
        res = F32(1 - t) * v0 + F32(t) * v1
    else:
        theta0 = np.arccos(dot)
        sin0 = np.sin(theta0)
        s0 = np.sin(theta0 - theta0 * t) / sin0
        s1 = np.sin(theta0 * t) / sin0
        res = F32(s0) * v0 + F32(s1) * v1
    return res.reshape(base.shape)


def reference(case, base, deltas):
    if case["method"] == "linear":
        return linear(case, base, deltas)
    if case["method"] == "slerp":
        return slerp(case, base, deltas)
    return task_arithmetic_family(case, base, deltas)


def kept_counts(case, deltas):
    method = case["method"]
    counts = []
    for which, delta in enumerate(deltas):
        density = case["density"][which]
        if density >= 1 or method not in ("ties", "magnitude", "dare_ties", "dare_linear"):
            counts.append(delta.size)
        elif method in ("ties", "magnitude"):
            counts.append(int(density * delta.size))
        else:
            u = dare_uniform(case["seed"], case["tensor_id"], which, np.arange(delta.size))
            counts.append(int((u < density).sum()))
    return counts


# ---- comparing -------------------------------------------------------------------------------
def check(directory):
    with open(os.path.join(directory, "cases.json")) as f:
        spec = json.load(f)
    failures = 0
    for case in spec["cases"]:
        shape = (case["rows"], case["cols"])
        base, sft, pref, out = (
            np.fromfile(os.path.join(directory, name), dtype="<f4").reshape(shape)
            for name in case["files"])
        ref = reference(case, base, [sft, pref])
        scale = float(np.max(np.abs(ref))) or 1.0
        err = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64)))) / scale
        ok = err <= 1e-6
        want_kept = kept_counts(case, [sft, pref])
        if list(case["kept"]) != want_kept:
            ok = False
            print(f"  kept {case['kept']} != reference {want_kept}")
        small_merged = int(np.sum(np.abs(out - base) < F32(1e-5)))
        small = [int(np.sum(np.abs(sft) < F32(1e-5))), int(np.sum(np.abs(pref) < F32(1e-5))),
                 small_merged]
        if list(case["small"]) != small:
            ok = False
            print(f"  sparsity counts {case['small']} != {small}")
        extra = ""
        if case["method"] == "slerp":
            literal = slerp(case, base, [sft, pref], accumulate=np.float32)
            lerr = float(np.max(np.abs(out.astype(np.float64) - literal))) / scale
            extra = f" (vs mergekit's float32 arithmetic: {lerr:.2e})"
            if lerr > 1e-4:
                ok = False
        print(f"{'ok  ' if ok else 'FAIL'} {case['label']:<28} {case['method']:<16} "
              f"{shape[0]}x{shape[1]} rel err {err:.2e}{extra}")
        failures += not ok
    for seed, tensor_id, which, index, value in spec["draws"]:
        want = float(dare_uniform(seed, tensor_id, which, [index])[0])
        if want != value:
            failures += 1
            print(f"FAIL draw {seed} {tensor_id} {which} {index}: paft {value!r} numpy {want!r}")
    print(f"merge_reference: {len(spec['cases'])} cases, {len(spec['draws'])} draws, "
          f"{failures} failed")
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--driver")
    ap.add_argument("--workdir")
    ap.add_argument("--check")
    ap.add_argument("--known-answers", action="store_true")
    args = ap.parse_args()
    if args.known_answers:
        for key in ((0, 0, 0, 0), (1234, 56, 1, 7890123)):
            print(key, repr(float(dare_uniform(*key[:3], [key[3]])[0])),
                  float(dare_uniform(*key[:3], [key[3]])[0]).hex())
        return 0
    if args.check:
        return check(args.check)
    if not args.driver:
        ap.error("give --driver, --check or --known-answers")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        subprocess.run([args.driver, tmp], check=True)
        return check(tmp)


if __name__ == "__main__":
    sys.exit(main())
