#!/usr/bin/env python3
"""Write tests/fixtures/optim/optim_reference.json: what torch and transformers compute for the
optimizer pieces that src/optim reimplements, so tests/optim/test_optim_reference.c can compare
against them without torch.

  adamw      torch.optim.AdamW (foreach=False, the single-tensor CPU path) on a small flat
             parameter, a few steps with given gradients and learning rates, fp32 and fp64, with
             and without weight decay, optionally clip_grad_norm_ before each step
  clip       torch.nn.utils.clip_grad_norm_ on several gradient tensors: norm, coefficient, result
  schedules  transformers' get_{cosine,linear,constant}_schedule_with_warmup driven like a Trainer
             (lr read before each scheduler.step()), base lr 1 so lr = multiplier
  warmup     TrainingArguments(warmup_steps=<ratio>).get_warmup_steps(total)

Run with the reference venv (CPU torch + transformers):
    /opt/refvenv/bin/python tests/reference/optim_reference.py
"""
import json
import os
import tempfile

import torch
import transformers
from transformers import (TrainingArguments, get_constant_schedule_with_warmup,
                          get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "optim",
                   "optim_reference.json")


def floats(t):
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def adamw_case(name, dtype, n, steps, lrs, weight_decay, betas, eps, max_norm, seed):
    g = torch.Generator().manual_seed(seed)
    p0 = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
    # gradients of mixed scale, some of them large so clipping (when on) really clips
    grads = [(torch.randn(n, generator=g, dtype=torch.float64) * (0.05 + 3.0 * (s % 2)))
             .to(dtype) for s in range(steps)]
    param = torch.nn.Parameter(p0.clone())
    opt = torch.optim.AdamW([param], lr=lrs[0], betas=betas, eps=eps,
                            weight_decay=weight_decay, foreach=False)
    after, norms = [], []
    for s in range(steps):
        for group in opt.param_groups:
            group["lr"] = lrs[s]
        param.grad = grads[s].clone()
        if max_norm > 0:
            norms.append(float(torch.nn.utils.clip_grad_norm_([param], max_norm, foreach=False)))
        opt.step()
        after.append(floats(param))
    state = opt.state[param]
    return {
        "name": name, "dtype": "fp32" if dtype == torch.float32 else "fp64", "n": n,
        "lr": lrs, "beta1": betas[0], "beta2": betas[1], "eps": eps,
        "weight_decay": weight_decay, "max_norm": max_norm,
        "params0": floats(p0), "grads": [floats(x) for x in grads],
        "params_after": after, "grad_norms": norms,
        "exp_avg": floats(state["exp_avg"]), "exp_avg_sq": floats(state["exp_avg_sq"]),
        "step": int(state["step"]),
    }


def clip_case(name, sizes, scale, max_norm, seed):
    g = torch.Generator().manual_seed(seed)
    grads = [torch.randn(s, generator=g, dtype=torch.float64) * scale for s in sizes]
    params = [torch.nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in sizes]
    for p, gr in zip(params, grads):
        p.grad = gr.clone()
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=False))
    return {
        "name": name, "max_norm": max_norm,
        "grads": sum((floats(x) for x in grads), []),
        "norm": norm, "coef": min(1.0, max_norm / (norm + 1e-6)),
        "clipped": sum((floats(p.grad) for p in params), []),
    }


def schedule_case(kind, warmup, total):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    make = {"cosine": lambda: get_cosine_schedule_with_warmup(opt, warmup, total),
            "linear": lambda: get_linear_schedule_with_warmup(opt, warmup, total),
            "constant": lambda: get_constant_schedule_with_warmup(opt, warmup)}[kind]
    sched = make()
    mult = []
    for _ in range(total + 3):  # a few steps past the end: the multiplier stays at 0 / 1
        mult.append(float(sched.get_last_lr()[0]))
        opt.step()
        sched.step()
    return {"kind": kind, "warmup": warmup, "total": total, "multipliers": mult}


def warmup_case(frac, total):
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, warmup_steps=frac, report_to=[])
        return {"fraction": frac, "total": total, "steps": args.get_warmup_steps(total)}


def main():
    betas = (0.9, 0.999)
    fixture = {
        "generated_by": "tests/reference/optim_reference.py",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "adamw": [
            adamw_case("fp32_no_decay", torch.float32, 9, 6, [1e-3] * 6, 0.0, betas, 1e-8, 0.0, 1),
            adamw_case("fp32_decay_varying_lr", torch.float32, 9, 6,
                       [0.0, 2e-3, 5e-3, 4e-3, 1e-3, 1e-4], 0.01, betas, 1e-8, 0.0, 2),
            adamw_case("fp32_clip", torch.float32, 9, 6, [1e-2] * 6, 0.0, betas, 1e-8, 1.0, 3),
            adamw_case("fp64_decay_clip", torch.float64, 9, 6, [3e-3, 1e-2, 1e-2, 5e-3, 2e-3, 1e-3],
                       0.1, (0.8, 0.95), 1e-6, 0.5, 4),
        ],
        "clip": [
            clip_case("clips", [5, 3, 8], 2.0, 1.0, 5),
            clip_case("below_max", [4, 4], 0.01, 1.0, 6),
        ],
        "schedules": [schedule_case(k, w, t) for k in ("cosine", "linear", "constant")
                      for (w, t) in ((0, 8), (3, 10), (1, 1), (4, 4), (2, 7))],
        "warmup": [warmup_case(f, t) for (f, t) in
                   ((0.1, 100), (0.1, 7), (0.03, 1000), (0.05, 333), (0.0, 50), (0.5, 3),
                    (0.1, 30), (0.07, 100))],
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")
    print("wrote", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
