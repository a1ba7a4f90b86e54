#!/usr/bin/env python3
"""PyTorch reference for paft's preference losses (TRL semantics: dpo, ipo, hinge, orpo).

For the models llama-gqa and qwen2-bias, this writes tests/fixtures/<name>/pref_reference.safetensors.
The file holds a batch of P = 3 (prompt, chosen, rejected) triples of different lengths, the summed
completion log-probs under the policy (LoRA adapter on) and under the reference (adapter off), and,
for every loss kind, the batch loss, the per-pair rewards and d loss / d every LoRA factor.

It uses the models and adapters that make_fixtures.py already wrote. Run that script first. This
script reads the model from disk in fp32 and the PEFT adapter from <name>/adapter/, so the LoRA
factors are exactly those files. It changes nothing else in tests/fixtures/.

Run (CPU only, a few seconds):
    /opt/refvenv/bin/python tests/reference/make_pref_fixtures.py [--fixtures tests/fixtures]
The script then checks its own output:
  - it reloads everything, recomputes and compares bitwise;
  - it recomputes the losses and rewards from the stored log-probs in numpy (float64);
  - it recomputes every gradient through the independent fp64 forward of make_fixtures.py
    (written from the formulas; no transformers, no peft);
  - it checks one finite difference per kind in float64.
The format is documented in tests/reference/README.md ("Preference-loss reference").
"""

import argparse
import math
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (the variants, load_peft, the independent forward)

MODELS = {"llama-gqa": 101, "qwen2-bias": 104}  # name -> seed of the token generator
KINDS = ["dpo", "ipo", "hinge", "orpo"]
BETA = 0.1
LABEL_SMOOTHING = 0.1  # used by the dpo kind only
PROMPT_LEN = [3, 5, 2]
CHOSEN_LEN = [4, 2, 10]
REJECTED_LEN = [3, 4, 1]
P = len(PROMPT_LEN)
# The hinge loss relu(1 - beta h) is flat (zero loss, zero gradient) once beta h > 1, i.e. h > 10.
# For random tokens, |h| is only a few nats, so every pair would land on the sloped side. In pair
# WIDE_PAIR the completions are therefore chosen on purpose: each chosen token greedily maximises
# log pi - log ref at its position, and each rejected token minimises it. The pair uses the best of
# WIDE_PROMPT_TRIES seeded random prompts. qwen2-bias's adapter moves log-probs by only about
# 1 nat per token, which is why that pair's chosen completion has 10 tokens.
WIDE_PAIR = 2
WIDE_PROMPT_TRIES = 8
KINK_MARGIN = 0.05  # every pair must have |1 - beta h| above this (a kink would be ambiguous)


# ----------------------------------------------------------------------------------------------
# Log-probs of completions


def completion_logp(logits, prompt_len, completion):
    """Sum over completion tokens c_j of log softmax(logits at the position before c_j)[c_j].

    logits: [T, V] for the sequence prompt ++ completion. Position prompt_len - 1 (the last prompt
    token) predicts the first completion token."""
    n = completion.numel()
    logp = F.log_softmax(logits[prompt_len - 1: prompt_len - 1 + n], dim=-1)
    return logp.gather(-1, completion[:, None])[:, 0].sum()


def sequence_logps(model, pairs, grad):
    """Summed completion log-probs of every pair: (chosen [P], rejected [P]).

    Each sequence runs through the model on its own (batch 1), so there is no padding and no
    attention mask to get wrong."""
    chosen, rejected = [], []
    with torch.set_grad_enabled(grad):
        for prompt, c, r in pairs:
            for completion, out in ((c, chosen), (r, rejected)):
                ids = torch.cat([prompt, completion])[None]
                logits = model(input_ids=ids).logits[0]
                out.append(completion_logp(logits, prompt.numel(), completion))
    return torch.stack(chosen), torch.stack(rejected)


def reference_logps(peft_model, pairs):
    """The reference model is the same model with the adapter disabled, without gradients."""
    with torch.no_grad(), peft_model.disable_adapter():
        return sequence_logps(peft_model, pairs, grad=False)


# ----------------------------------------------------------------------------------------------
# The losses (TRL's DPOTrainer / ORPOTrainer, written out)


def preference_loss(kind, pi_c, pi_r, ref_c, ref_r, n_c, n_r):
    """Batch loss (a scalar) and metrics of one kind. pi_* and ref_* are SUMMED log-probs [P];
    n_* are completion lengths [P] (same dtype). Differentiable in pi_*."""
    out = {}
    if kind == "dpo":
        h = (pi_c - pi_r) - (ref_c - ref_r)
        pair = (-(1 - LABEL_SMOOTHING) * F.logsigmoid(BETA * h)
                - LABEL_SMOOTHING * F.logsigmoid(-BETA * h))
        out["rewards_chosen"], out["rewards_rejected"] = BETA * (pi_c - ref_c), BETA * (pi_r - ref_r)
    elif kind == "ipo":
        h = (pi_c / n_c - pi_r / n_r) - (ref_c / n_c - ref_r / n_r)
        pair = (h - 1 / (2 * BETA)) ** 2
        out["rewards_chosen"] = BETA * (pi_c / n_c - ref_c / n_c)
        out["rewards_rejected"] = BETA * (pi_r / n_r - ref_r / n_r)
    elif kind == "hinge":
        h = (pi_c - pi_r) - (ref_c - ref_r)
        pair = torch.relu(1 - BETA * h)
        out["rewards_chosen"], out["rewards_rejected"] = BETA * (pi_c - ref_c), BETA * (pi_r - ref_r)
    elif kind == "orpo":
        l_c, l_r = pi_c / n_c, pi_r / n_r
        log_odds = (l_c - l_r) - (torch.log1p(-torch.exp(l_c)) - torch.log1p(-torch.exp(l_r)))
        ratio = F.logsigmoid(log_odds)
        # TRL's policy_nll_loss: one cross-entropy averaged over ALL chosen completion tokens of
        # the batch (not a mean of per-pair means)
        nll = -pi_c.sum() / n_c.sum()
        out["nll"] = nll.reshape(1)
        out["log_odds_ratio"], out["log_odds_chosen"] = ratio, log_odds
        out["rewards_chosen"], out["rewards_rejected"] = BETA * l_c, BETA * l_r
        out["loss"] = (nll - BETA * ratio.mean()).reshape(1)
        return out
    else:
        raise ValueError(kind)
    out["pair_loss"] = pair
    out["loss"] = pair.mean().reshape(1)
    return out


def lora_params(peft_model):
    """{(module, 'A'|'B'): parameter} in named_parameters() order."""
    return {mf.hf_module_path(n): p for n, p in peft_model.named_parameters() if ".lora_" in n}


def compute_reference(peft_model, pairs):
    peft_model.eval()
    for name, p in peft_model.named_parameters():
        p.requires_grad_(".lora_" in name)  # only the LoRA factors are trained
        p.grad = None
    lora = lora_params(peft_model)
    n_c = torch.tensor([float(c.numel()) for _, c, _ in pairs])
    n_r = torch.tensor([float(r.numel()) for _, _, r in pairs])
    ref_c, ref_r = reference_logps(peft_model, pairs)

    out = pack_pairs(pairs)
    for kind in KINDS:
        # a fresh policy forward per kind, so that each backward sees only its own loss
        pi_c, pi_r = sequence_logps(peft_model, pairs, grad=True)
        res = preference_loss(kind, pi_c, pi_r, ref_c, ref_r, n_c, n_r)
        grads = torch.autograd.grad(res["loss"][0], list(lora.values()))
        for key, value in res.items():
            out[f"{kind}.{key}"] = value.detach().clone()
        for (module, which), g in zip(lora, grads):
            out[f"{kind}.grad.{module}.{which}"] = g.detach().clone()
    out["policy_chosen"], out["policy_rejected"] = pi_c.detach().clone(), pi_r.detach().clone()
    out["reference_chosen"], out["reference_rejected"] = ref_c.clone(), ref_r.clone()
    return {k: t.contiguous() for k, t in out.items()}


# ----------------------------------------------------------------------------------------------
# The batch


def pack_pairs(pairs):
    """prompt / chosen / rejected as I32 [P, max len] padded with -1, plus their lengths."""
    out = {}
    for i, key in enumerate(("prompt", "chosen", "rejected")):
        seqs = [pair[i] for pair in pairs]
        width = max(s.numel() for s in seqs)
        t = torch.full((len(seqs), width), -1, dtype=torch.int32)
        for row, s in enumerate(seqs):
            t[row, : s.numel()] = s.to(torch.int32)
        out[key] = t
        out[f"{key}_len"] = torch.tensor([s.numel() for s in seqs], dtype=torch.int32)
    return out


def unpack_pairs(ref):
    return [tuple(ref[key][p, : int(ref[f"{key}_len"][p])].long()
                  for key in ("prompt", "chosen", "rejected")) for p in range(P)]


def greedy_completion(peft_model, prompt, n, sign):
    """n tokens, each the argmax of sign * (log pi - log ref) at its position given the prefix."""
    ids = prompt.clone()
    for _ in range(n):
        with torch.no_grad():
            lp = F.log_softmax(peft_model(input_ids=ids[None]).logits[0, -1], -1)
            with peft_model.disable_adapter():
                lr = F.log_softmax(peft_model(input_ids=ids[None]).logits[0, -1], -1)
        ids = torch.cat([ids, (sign * (lp - lr)).argmax().reshape(1)])
    return ids[prompt.numel():]


def make_pairs(peft_model, vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    pairs = []
    for p in range(P):
        pairs.append(tuple(torch.randint(0, vocab, (n,), generator=gen)
                           for n in (PROMPT_LEN[p], CHOSEN_LEN[p], REJECTED_LEN[p])))
    best = None
    for _ in range(WIDE_PROMPT_TRIES):
        prompt = torch.randint(0, vocab, (PROMPT_LEN[WIDE_PAIR],), generator=gen)
        wide = (prompt, greedy_completion(peft_model, prompt, CHOSEN_LEN[WIDE_PAIR], +1),
                greedy_completion(peft_model, prompt, REJECTED_LEN[WIDE_PAIR], -1))
        pi_c, pi_r = sequence_logps(peft_model, [wide], grad=False)
        ref_c, ref_r = reference_logps(peft_model, [wide])
        h = float((pi_c - pi_r) - (ref_c - ref_r))
        if best is None or h > best[0]:
            best = (h, wide)
    pairs[WIDE_PAIR] = best[1]
    return pairs


# ----------------------------------------------------------------------------------------------
# Independent checks


def log_sigmoid_np(x):
    return -np.logaddexp(0.0, -x)


def numpy_losses(ref):
    """The losses and rewards from the stored summed log-probs, in float64 numpy."""
    pc, pr = ref["policy_chosen"].double().numpy(), ref["policy_rejected"].double().numpy()
    rc, rr = ref["reference_chosen"].double().numpy(), ref["reference_rejected"].double().numpy()
    nc, nr = ref["chosen_len"].double().numpy(), ref["rejected_len"].double().numpy()
    b, eps = BETA, LABEL_SMOOTHING
    h = (pc - pr) - (rc - rr)
    hm = (pc / nc - pr / nr) - (rc / nc - rr / nr)
    lc, lr = pc / nc, pr / nr
    log_odds = (lc - lr) - (np.log(-np.expm1(lc)) - np.log(-np.expm1(lr)))
    nll = -pc.sum() / nc.sum()
    return {
        "dpo": (np.mean(-(1 - eps) * log_sigmoid_np(b * h) - eps * log_sigmoid_np(-b * h)),
                b * (pc - rc), b * (pr - rr)),
        "ipo": (np.mean((hm - 1 / (2 * b)) ** 2), b * (pc - rc) / nc, b * (pr - rr) / nr),
        "hinge": (np.mean(np.maximum(0.0, 1 - b * h)), b * (pc - rc), b * (pr - rr)),
        "orpo": (nll - b * np.mean(log_sigmoid_np(log_odds)), b * lc, b * lr),
    }, h, nll


def check_numpy(ref):
    expected, h, nll = numpy_losses(ref)
    worst = 0.0
    for kind, (loss, rew_c, rew_r) in expected.items():
        for got, want in ((ref[f"{kind}.loss"], np.array([loss])),
                          (ref[f"{kind}.rewards_chosen"], rew_c),
                          (ref[f"{kind}.rewards_rejected"], rew_r)):
            err = np.max(np.abs(got.double().numpy() - want) / np.maximum(1.0, np.abs(want)))
            assert err < 1e-6, (kind, got, want)
            worst = max(worst, err)
    assert abs(ref["orpo.nll"][0].item() - nll) < 1e-6 * max(1.0, abs(nll))
    # the hand example of DESIGN.md section 5 goes through the same numpy formulas
    b = BETA
    hand = -log_sigmoid_np(b * ((-10 + 12) - (-11 + 11)))
    assert abs(hand - 0.598139) < 1e-6, hand
    return worst, h


def manual_logps(model_dir, pairs, use_lora):
    """Summed completion log-probs [P] (chosen, rejected) from the independent fp64 forward of
    make_fixtures.py (files on disk, formulas written out; no transformers, no peft), plus the
    LoRA leaves of each sequence's forward.

    manual_logits reads the files afresh on each call, so each sequence gets its own copy of the
    LoRA leaves: the gradient w.r.t. a shared factor is the sum over the copies."""
    chosen, rejected, leaves = [], [], []
    with torch.set_grad_enabled(use_lora):
        for prompt, c, r in pairs:
            for completion, out in ((c, chosen), (r, rejected)):
                ids = torch.cat([prompt, completion])[None]
                logits, _, L = mf.manual_logits(model_dir, ids, use_lora=use_lora)
                out.append(completion_logp(logits[0], prompt.numel(), completion))
                leaves.append(L)
    return torch.stack(chosen), torch.stack(rejected), leaves


def check_fp64_gradients(model_dir, ref):
    """Every stored gradient, recomputed by fp64 autograd through the independent forward."""
    pairs = unpack_pairs(ref)
    pi_c, pi_r, leaves = manual_logps(model_dir, pairs, use_lora=True)
    ref_c, ref_r, _ = manual_logps(model_dir, pairs, use_lora=False)
    logp_err = max((pi_c - ref["policy_chosen"].double()).abs().max().item(),
                   (pi_r - ref["policy_rejected"].double()).abs().max().item(),
                   (ref_c - ref["reference_chosen"].double()).abs().max().item(),
                   (ref_r - ref["reference_rejected"].double()).abs().max().item())
    assert logp_err < 1e-4, logp_err
    n_c, n_r = ref["chosen_len"].double(), ref["rejected_len"].double()
    keys = list(leaves[0])
    worst = 0.0
    for kind in KINDS:
        res = preference_loss(kind, pi_c, pi_r, ref_c, ref_r, n_c, n_r)
        assert abs(res["loss"][0].item() - ref[f"{kind}.loss"][0].item()) < 1e-5, kind
        flat = [L[k] for L in leaves for k in keys]
        grads = torch.autograd.grad(res["loss"][0], flat, retain_graph=True)
        for i, (module, which) in enumerate(keys):
            g = sum(grads[j * len(keys) + i] for j in range(len(leaves)))
            stored = ref[f"{kind}.grad.{module}.{which}"].double()
            err = ((g - stored).abs().max() / g.abs().max()).item()
            assert err < 1e-4, (kind, module, which, err)
            worst = max(worst, err)
    return logp_err, worst


def check_finite_difference(model_dir, ref):
    """d loss / d one LoRA element by central differences, everything in float64.

    transformers' "fp64" model is not fp64 throughout (its RMSNorm and eager softmax upcast to
    fp32 and back, which makes finite differences noisy at the 1e-3 level), so the differences run
    through the independent fp64 forward instead: a scratch copy of the fixture folder whose
    adapter file holds the perturbed factors as F64. The element is the largest |gradient| entry
    of the first module's A (dpo, hinge) or B (ipo, orpo), so both factors are covered."""
    pairs = unpack_pairs(ref)
    n_c, n_r = ref["chosen_len"].double(), ref["rejected_len"].double()
    ref_c, ref_r, _ = manual_logps(model_dir, pairs, use_lora=False)
    adapter_file = os.path.join(model_dir, "adapter", "adapter_model.safetensors")
    with safe_open(adapter_file, "pt") as sf:
        factors = {k: sf.get_tensor(k).double() for k in sf.keys()}
    step, lines = 1e-4, []
    with tempfile.TemporaryDirectory() as scratch:
        for f in os.listdir(model_dir):
            if f == "config.json" or (f.startswith("model") and ".safetensors" in f):
                os.symlink(os.path.abspath(os.path.join(model_dir, f)), os.path.join(scratch, f))
        os.makedirs(os.path.join(scratch, "adapter"))
        shutil.copy(os.path.join(model_dir, "adapter", "adapter_config.json"),
                    os.path.join(scratch, "adapter"))
        first = sorted(factors)[0]  # sorted names: ...lora_A before ...lora_B of the same module
        module, _ = mf.hf_module_path(first)
        for kind in KINDS:
            which = "A" if kind in ("dpo", "hinge") else "B"
            name = next(k for k in factors if mf.hf_module_path(k) == (module, which))
            stored = ref[f"{kind}.grad.{module}.{which}"]
            idx = tuple(int(i) for i in np.unravel_index(int(stored.abs().argmax()),
                                                          tuple(stored.shape)))
            vals = []
            for delta in (+step, -step):
                perturbed = dict(factors)
                perturbed[name] = factors[name].clone()
                perturbed[name][idx] += delta
                save_file(perturbed, os.path.join(scratch, "adapter", "adapter_model.safetensors"))
                pi_c, pi_r, _ = manual_logps(scratch, pairs, use_lora=True)
                vals.append(preference_loss(kind, pi_c, pi_r, ref_c, ref_r, n_c, n_r)["loss"][0])
            fd = ((vals[0] - vals[1]) / (2 * step)).item()
            err = abs(fd - stored[idx].item()) / abs(fd)
            assert err < 1e-4, (kind, fd, stored[idx].item())
            lines.append(f"{kind} {which}{list(idx)} {fd:.7g} vs {stored[idx].item():.7g}")
    return f"finite differences (fp64, {module}): " + "; ".join(lines)


def load_reference(path):
    with safe_open(path, "pt") as sf:
        return sf.metadata(), {k: sf.get_tensor(k) for k in sf.keys()}


def verify(v, model_dir):
    path = os.path.join(model_dir, "pref_reference.safetensors")
    meta, ref = load_reference(path)
    report = [f"== {v.name}: {path} ({os.path.getsize(path)} bytes, {len(ref)} tensors)"]
    # 1. a fresh load recomputes the same tensors bitwise
    peft_model = mf.load_peft(v, model_dir, os.path.join(model_dir, "adapter"))
    again = compute_reference(peft_model, unpack_pairs(ref))
    assert set(again) == set(ref), set(again) ^ set(ref)
    for k in ref:
        assert again[k].dtype == ref[k].dtype and torch.equal(again[k], ref[k]), k
    # 2. the batch is what it says
    vocab = peft_model.config.vocab_size
    for key, lens in (("prompt", PROMPT_LEN), ("chosen", CHOSEN_LEN), ("rejected", REJECTED_LEN)):
        t = ref[key]
        assert t.dtype == torch.int32 and ref[f"{key}_len"].tolist() == lens
        for p, n in enumerate(lens):
            assert ((t[p, :n] >= 0) & (t[p, :n] < vocab)).all() and (t[p, n:] == -1).all()
    # 3. dtypes, finiteness, non-zero gradients
    lora = lora_params(peft_model)
    for k, t in ref.items():
        if t.is_floating_point():
            assert t.dtype == torch.float32 and torch.isfinite(t).all(), k
    for kind in KINDS:
        for module, which in lora:
            g = ref[f"{kind}.grad.{module}.{which}"]
            assert g.shape == lora[(module, which)].shape and g.abs().max() > 0, (kind, module)
    assert (ref["policy_chosen"] != ref["reference_chosen"]).all()
    # 4. the formulas, in numpy, from the stored log-probs
    np_err, h = check_numpy(ref)
    # 5. both sides of the hinge kink
    beta_h = BETA * h
    assert np.all(np.abs(1 - beta_h) > KINK_MARGIN), beta_h
    assert (beta_h > 1).any() and (beta_h < 1).any(), beta_h
    hinge_pair = ref["hinge.pair_loss"].numpy()
    assert np.all((hinge_pair == 0) == (beta_h > 1))
    # 6. the independent fp64 forward and its autograd gradients
    logp_err, grad_err = check_fp64_gradients(model_dir, ref)
    # 7. finite differences
    fd_line = check_finite_difference(model_dir, ref)

    report.append(f"  metadata {dict(sorted(meta.items()))}")
    report.append(f"  lengths prompt {PROMPT_LEN} chosen {CHOSEN_LEN} rejected {REJECTED_LEN}")
    for key in ("policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected"):
        report.append(f"  {key:18s} " + " ".join(f"{x:10.5f}" for x in ref[key].tolist()))
    report.append("  h (summed)         " + " ".join(f"{x:10.5f}" for x in h.tolist()) +
                  f"   (beta h {np.round(beta_h, 4).tolist()})")
    for kind in KINDS:
        extra = f" nll {ref['orpo.nll'][0].item():.6f}" if kind == "orpo" else ""
        report.append(f"  {kind:5s} loss {ref[kind + '.loss'][0].item():.6f}{extra}  rewards chosen "
                      f"{np.round(ref[kind + '.rewards_chosen'].double().numpy(), 5).tolist()} rejected "
                      f"{np.round(ref[kind + '.rewards_rejected'].double().numpy(), 5).tolist()}")
    report.append(f"  numpy losses/rewards rel err {np_err:.1e}; independent fp64 forward: "
                  f"log-probs {logp_err:.1e}, gradients (relative to each tensor's max) "
                  f"{grad_err:.1e}")
    report.append("  " + fd_line)
    return report


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixtures", default=os.path.join(here, "..", "fixtures"),
                    help="the folder make_fixtures.py wrote (default tests/fixtures)")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # fixed reduction order
    report = []
    for name, seed in MODELS.items():
        v = next(x for x in mf.VARIANTS if x.name == name)
        model_dir = os.path.join(os.path.normpath(args.fixtures), name)
        peft_model = mf.load_peft(v, model_dir, os.path.join(model_dir, "adapter"))
        peft_model.eval()
        pairs = make_pairs(peft_model, peft_model.config.vocab_size, seed)
        ref = compute_reference(peft_model, pairs)
        meta = {"beta": repr(BETA), "label_smoothing": repr(LABEL_SMOOTHING),
                "kinds": ",".join(KINDS), "pairs": str(P), "wide_pair": str(WIDE_PAIR),
                "generator": "tests/reference/make_pref_fixtures.py"}
        save_file(ref, os.path.join(model_dir, "pref_reference.safetensors"), metadata=meta)
        report += verify(v, model_dir)
    print("\n".join(report))


if __name__ == "__main__":
    main()
