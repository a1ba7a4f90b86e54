#!/usr/bin/env python3
"""PyTorch + transformers + peft reference for paft's model tests.

For each tiny model variant this writes tests/fixtures/<name>/ with
  - the Hugging Face model (config.json + safetensors, in the variant's dtype,
    sharded with an index where the variant says so),
  - adapter/ : the PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors),
  - reference.safetensors : inputs, targets, logits (adapter on and off), the
    token-mean SFT loss, per-token log-probs, LoRA factors and the gradients of the
    loss w.r.t. every LoRA factor and every base parameter.
The exact format is documented in tests/reference/README.md.

The reference is computed from the weights *as saved* (bf16/fp16 rounding included):
we save first, reload from disk in fp32, then compute in fp32 everywhere, so the C
code that loads the same files should reproduce it up to fp32 summation order.

Run (CPU only, a few seconds):
    /opt/refvenv/bin/python tests/reference/make_fixtures.py [--out tests/fixtures]
It verifies its own output (reload everything from disk, recompute, compare bitwise)
and prints a summary.  torch is NOT needed to run the C tests, only to regenerate.
"""

import argparse
import json
import math
import os
import shutil
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BATCH, SEQ = 2, 8
# Loss mask: the first PROMPT_LEN[b] positions of row b are "prompt" and carry no loss
# (target -1), like an SFT record whose loss mask covers assistant tokens only.
PROMPT_LEN = [2, 3]


@dataclass
class Variant:
    name: str
    model_cls: type
    config_cls: type
    config: dict
    save_dtype: torch.dtype
    lora_r: int
    lora_alpha: float
    lora_targets: list
    use_rslora: bool = False
    max_shard_size: str = None        # None: single model.safetensors
    legacy_rope_config: bool = False  # rewrite config.json in the transformers-4 style
    seed: int = 0


VARIANTS = [
    Variant(
        name="llama-gqa", model_cls=LlamaForCausalLM, config_cls=LlamaConfig,
        config=dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=96, num_hidden_layers=2, vocab_size=101,
                    tie_word_embeddings=False, max_position_embeddings=64, rms_norm_eps=1e-5,
                    # original_max_position_embeddings=32 (not 16) so that, with head_dim 16,
                    # the three llama3 branches all occur: wavelength 6.3 < 8 is kept, 19.9 in
                    # [8, 32] is smoothed, the rest (> 32) is divided by the factor.
                    rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 32}),
        save_dtype=torch.float32, lora_r=4, lora_alpha=8, lora_targets=ALL_TARGETS,
        legacy_rope_config=True, seed=1),
    Variant(
        name="smollm-tied", model_cls=LlamaForCausalLM, config_cls=LlamaConfig,
        config=dict(hidden_size=48, num_attention_heads=3, num_key_value_heads=3,
                    intermediate_size=80, num_hidden_layers=2, vocab_size=97,
                    tie_word_embeddings=True, max_position_embeddings=64, rms_norm_eps=1e-5,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        save_dtype=torch.bfloat16, lora_r=8, lora_alpha=16,
        lora_targets=["q_proj", "v_proj", "down_proj"], max_shard_size="40KB", seed=2),
    Variant(
        name="mistral-odd", model_cls=MistralForCausalLM, config_cls=MistralConfig,
        config=dict(hidden_size=40, num_attention_heads=3, head_dim=12, num_key_value_heads=1,
                    intermediate_size=52, num_hidden_layers=3, vocab_size=113,
                    tie_word_embeddings=False, max_position_embeddings=64, rms_norm_eps=1e-5,
                    sliding_window=4096,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
        save_dtype=torch.float16, lora_r=2, lora_alpha=3, lora_targets=ALL_TARGETS,
        use_rslora=True, legacy_rope_config=True, seed=3),
    Variant(
        name="qwen2-bias", model_cls=Qwen2ForCausalLM, config_cls=Qwen2Config,
        config=dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=64, num_hidden_layers=2, vocab_size=89,
                    tie_word_embeddings=False, max_position_embeddings=64, rms_norm_eps=1e-6,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        save_dtype=torch.float32, lora_r=4, lora_alpha=4,
        lora_targets=["q_proj", "k_proj", "o_proj", "up_proj"], seed=4),
]


def lora_scale(v):
    return v.lora_alpha / (math.sqrt(v.lora_r) if v.use_rslora else v.lora_r)


def randomize_base(model, gen):
    """Give every base parameter well-scaled random values.

    HF's init (std 0.02, norms 1, biases 0) would make attention almost uniform, logits
    almost flat and leave norm weights and q/k/v biases untested; these values make every
    parameter matter for the logits."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("embed_tokens.weight"):
                # 1/sqrt(hidden) keeps tied-head logits O(1) (std 1 gave a loss of 27)
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
            elif p.dim() == 2:  # nn.Linear weight [out, in]
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
            else:
                raise RuntimeError(f"unexpected parameter {name}")


def randomize_lora(peft_model, gen):
    """Non-zero A and B (PEFT's B = 0 would make dL/dA = 0 and hide bugs)."""
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if ".lora_A." in name:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
            elif ".lora_B." in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def make_batch(vocab, gen):
    input_ids = torch.randint(0, vocab, (BATCH, SEQ), generator=gen)
    targets = torch.full((BATCH, SEQ), -1, dtype=torch.long)
    targets[:, :-1] = input_ids[:, 1:]
    for b, n in enumerate(PROMPT_LEN):
        targets[b, :n] = -1
    return input_ids, targets


def hf_module_path(peft_name):
    """'base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight'
    -> ('model.layers.0.self_attn.q_proj', 'A')."""
    name = peft_name.removeprefix("base_model.model.")
    module, rest = name.split(".lora_", 1)
    return module, rest[0]


def hf_base_name(peft_name):
    """'base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight'
    -> 'model.layers.0.self_attn.q_proj.weight'."""
    return peft_name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def compute_reference(peft_model, input_ids, targets):
    """Everything the C tests compare against, from one forward/backward in fp32."""
    peft_model.eval()  # no dropout (lora_dropout is 0 anyway)
    for p in peft_model.parameters():
        p.requires_grad_(True)
        p.grad = None
    logits = peft_model(input_ids=input_ids).logits.float()
    mask = targets >= 0
    logp = F.log_softmax(logits, dim=-1)
    token_logp = torch.where(mask, logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0],
                             torch.zeros((), dtype=logp.dtype))
    loss = -token_logp.sum() / mask.sum()
    loss.backward()

    out = {"input_ids": input_ids.to(torch.int32), "targets": targets.to(torch.int32),
           "logits": logits.detach().clone(), "loss": loss.detach().reshape(1).clone(),
           "token_logp": token_logp.detach().clone()}
    with torch.no_grad(), peft_model.disable_adapter():
        out["base_logits"] = peft_model(input_ids=input_ids).logits.float().clone()

    # named_parameters() de-duplicates shared tensors: with tied embeddings only
    # model.embed_tokens.weight appears and its .grad holds both uses.
    for name, p in peft_model.named_parameters():
        if p.grad is None:
            raise RuntimeError(f"no gradient for {name}")
        if ".lora_" in name:
            module, which = hf_module_path(name)
            out[f"lora.{module}.{which}"] = p.detach().clone()
            out[f"grad.{module}.{which}"] = p.grad.detach().clone()
        else:
            out[f"grad_base.{hf_base_name(name)}"] = p.grad.detach().clone()
    return out


def load_peft(v, model_dir, adapter_dir=None):
    base = v.model_cls.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    if adapter_dir is not None:
        return PeftModel.from_pretrained(base, adapter_dir, is_trainable=True)
    cfg = LoraConfig(r=v.lora_r, lora_alpha=v.lora_alpha, target_modules=list(v.lora_targets),
                     lora_dropout=0.0, bias="none", use_rslora=v.use_rslora, task_type="CAUSAL_LM")
    return get_peft_model(base, cfg)


def write_legacy_rope_config(path):
    """transformers 5 writes rope settings as "rope_parameters" {rope_theta, rope_type, ...};
    the checkpoints on the Hub (Llama 3.x, Mistral, ...) use the transformers-4 keys
    "rope_theta" (top level) and "rope_scaling" (null or {rope_type, factor, ...}).
    Two variants are rewritten to that older form so the C config reader sees both."""
    with open(path) as f:
        cfg = json.load(f)
    rp = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rp.pop("rope_theta")
    cfg["rope_scaling"] = None if rp.get("rope_type", "default") == "default" else rp
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def default_inv_freq(theta, head_dim):
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def check_rope(v, model):
    rotary = model.model.rotary_emb
    # Qwen2Config has no head_dim (and config.json none): it is hidden_size / heads
    head_dim = getattr(model.config, "head_dim", None) or \
        model.config.hidden_size // model.config.num_attention_heads
    plain = default_inv_freq(model.config.rope_parameters["rope_theta"], head_dim)
    changed = int((~torch.isclose(rotary.inv_freq, plain, rtol=1e-6, atol=0)).sum())
    lines = [f"rope_type={model.config.rope_parameters['rope_type']} "
             f"theta={model.config.rope_parameters['rope_theta']} head_dim={head_dim} "
             f"attention_scaling={rotary.attention_scaling}: {changed}/{plain.numel()} "
             f"inverse frequencies differ from the plain ones"]
    if model.config.rope_parameters["rope_type"] == "llama3":
        ratio = (plain / rotary.inv_freq).tolist()
        lines.append("  plain/llama3 ratio per frequency: " + " ".join(f"{r:.4g}" for r in ratio))
        kept = sum(abs(r - 1) < 1e-6 for r in ratio)
        scaled = sum(abs(r - 8) < 1e-4 for r in ratio)
        smoothed = len(ratio) - kept - scaled
        assert kept >= 1 and scaled >= 1 and smoothed >= 1, "llama3 branches not all exercised"
        lines.append(f"  kept {kept}, smoothed {smoothed}, divided by factor {scaled}")
    else:
        assert changed == 0
    return lines


def saved_tensor_names(model_dir):
    files = sorted(f for f in os.listdir(model_dir)
                   if f.startswith("model") and f.endswith(".safetensors"))
    names = {}
    for f in files:
        with safe_open(os.path.join(model_dir, f), "pt") as sf:
            names[f] = sorted(sf.keys())
    return names


def build_variant(v, out_root):
    d = os.path.join(out_root, v.name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    torch.manual_seed(v.seed)
    gen = torch.Generator().manual_seed(v.seed)

    # 1. a random model, saved in the variant's dtype
    config = v.config_cls(**v.config)
    config._attn_implementation = "eager"
    model = v.model_cls(config).to(torch.float32)
    randomize_base(model, gen)
    model = model.to(v.save_dtype)
    kwargs = {} if v.max_shard_size is None else {"max_shard_size": v.max_shard_size}
    model.save_pretrained(d, **kwargs)
    del model
    for extra in ("generation_config.json",):  # not needed by paft, keep fixtures small
        if os.path.exists(os.path.join(d, extra)):
            os.remove(os.path.join(d, extra))
    if v.legacy_rope_config:
        write_legacy_rope_config(os.path.join(d, "config.json"))

    # 2. reload from disk in fp32 (so the reference sees the rounded weights), add LoRA
    peft_model = load_peft(v, d)
    randomize_lora(peft_model, gen)
    adapter_dir = os.path.join(d, "adapter")
    peft_model.save_pretrained(adapter_dir)
    os.remove(os.path.join(adapter_dir, "README.md"))  # PEFT's model-card template
    acfg_path = os.path.join(adapter_dir, "adapter_config.json")
    with open(acfg_path) as f:
        acfg = json.load(f)
    acfg["base_model_name_or_path"] = f"tests/fixtures/{v.name}"  # not this machine's path
    acfg["target_modules"] = sorted(acfg["target_modules"])  # PEFT writes a set: random order
    with open(acfg_path, "w") as f:
        json.dump(acfg, f, indent=2, sort_keys=True)
        f.write("\n")

    # 3. the reference
    input_ids, targets = make_batch(config.vocab_size, gen)
    ref = compute_reference(peft_model, input_ids, targets)
    meta = {"lora_r": str(v.lora_r), "lora_alpha": f"{v.lora_alpha:g}",
            "use_rslora": "true" if v.use_rslora else "false",
            "lora_targets": ",".join(v.lora_targets), "batch": str(BATCH), "seq": str(SEQ),
            "lora_scale": repr(lora_scale(v)), "model_dtype": str(v.save_dtype).split(".")[1],
            "generator": "tests/reference/make_fixtures.py"}
    ref = {k: t.contiguous() for k, t in ref.items()}
    save_file(ref, os.path.join(d, "reference.safetensors"), metadata=meta)
    return d


def read_config_like_paft(model_dir):
    """config.json as a C reader must see it: both rope spellings, optional head_dim."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    if "rope_parameters" in cfg:  # transformers >= 5
        rope = dict(cfg["rope_parameters"])
    else:                         # transformers 4 / the Hub
        rope = dict(cfg.get("rope_scaling") or {})
        rope["rope_theta"] = cfg.get("rope_theta", 10000.0)
    rope.setdefault("rope_type", rope.pop("type", "default"))
    cfg["rope"] = rope
    cfg.setdefault("head_dim", None)
    if cfg["head_dim"] is None:
        cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    return cfg


def manual_inv_freq(rope, head_dim):
    """RoPE inverse frequencies written out from the formulas (llama3 branch included)."""
    inv = 1.0 / rope["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    if rope["rope_type"] == "llama3":
        orig, factor = rope["original_max_position_embeddings"], rope["factor"]
        lo, hi = rope["low_freq_factor"], rope["high_freq_factor"]
        out = []
        for f in inv.tolist():
            wavelen = 2 * math.pi / f
            if wavelen < orig / hi:
                out.append(f)
            elif wavelen > orig / lo:
                out.append(f / factor)
            else:
                smooth = (orig / wavelen - lo) / (hi - lo)
                out.append((1 - smooth) * f / factor + smooth * f)
        inv = torch.tensor(out, dtype=torch.float64)
    else:
        assert rope["rope_type"] == "default", rope
    return inv


def manual_logits(model_dir, input_ids, use_lora=True):
    """An independent fp64 forward from the files on disk (no transformers, no peft):
    the computation the C model implements, so a mismatch here means the fixtures
    do not mean what README.md says they mean."""
    cfg = read_config_like_paft(model_dir)
    W = {}
    for f in os.listdir(model_dir):
        if f.startswith("model") and f.endswith(".safetensors"):
            with safe_open(os.path.join(model_dir, f), "pt") as sf:
                W.update({k: sf.get_tensor(k).double().requires_grad_() for k in sf.keys()})
    with open(os.path.join(model_dir, "adapter", "adapter_config.json")) as f:
        acfg = json.load(f)
    scale = acfg["lora_alpha"] / (math.sqrt(acfg["r"]) if acfg["use_rslora"] else acfg["r"])
    L = {}
    with safe_open(os.path.join(model_dir, "adapter", "adapter_model.safetensors"), "pt") as sf:
        for k in sf.keys():
            module, which = hf_module_path(k)
            L[(module, which)] = sf.get_tensor(k).double().requires_grad_()

    def linear(x, module):
        y = x @ W[module + ".weight"].T
        if module + ".bias" in W:
            y = y + W[module + ".bias"]
        if use_lora and (module, "A") in L:
            y = y + scale * (x @ L[(module, "A")].T) @ L[(module, "B")].T
        return y

    def rmsnorm(x, w):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + cfg["rms_norm_eps"]) * w

    B, T = input_ids.shape
    H, KV, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    freqs = torch.arange(T, dtype=torch.float64)[:, None] * manual_inv_freq(cfg["rope"], D)[None]
    cos, sin = freqs.cos().repeat(1, 2), freqs.sin().repeat(1, 2)  # [T, D], halves repeated

    def rope(x):  # x [B, heads, T, D]; HF rotate-half: pairs (i, i + D/2)
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    causal = torch.ones(T, T, dtype=torch.bool).tril()
    x = W["model.embed_tokens.weight"][input_ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rmsnorm(x, W[p + "input_layernorm.weight"])
        q = linear(h, p + "self_attn.q_proj").view(B, T, H, D).transpose(1, 2)
        k = linear(h, p + "self_attn.k_proj").view(B, T, KV, D).transpose(1, 2)
        v = linear(h, p + "self_attn.v_proj").view(B, T, KV, D).transpose(1, 2)
        q, k = rope(q), rope(k)
        k = k.repeat_interleave(H // KV, dim=1)  # query head j uses kv head j // (H/KV)
        v = v.repeat_interleave(H // KV, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        attn = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        x = x + linear(attn.transpose(1, 2).reshape(B, T, H * D), p + "self_attn.o_proj")
        h = rmsnorm(x, W[p + "post_attention_layernorm.weight"])
        act = F.silu(linear(h, p + "mlp.gate_proj")) * linear(h, p + "mlp.up_proj")
        x = x + linear(act, p + "mlp.down_proj")
    x = rmsnorm(x, W["model.norm.weight"])
    head = W["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else W["lm_head.weight"]
    return x @ head.T, W, L


def verify_variant(v, d):
    """Reload everything from disk with fresh objects, recompute, compare bitwise."""
    report = []
    ref = {}
    with safe_open(os.path.join(d, "reference.safetensors"), "pt") as sf:
        meta = sf.metadata()
        for k in sf.keys():
            ref[k] = sf.get_tensor(k)
    peft_model = load_peft(v, d, os.path.join(d, "adapter"))
    # peft's own scaling must match alpha/r (alpha/sqrt(r) with rslora)
    for m in peft_model.modules():
        if isinstance(m, LoraLayer):
            assert abs(m.scaling["default"] - lora_scale(v)) < 1e-12, m.scaling

    input_ids = ref["input_ids"].long()
    targets = ref["targets"].long()
    again = compute_reference(peft_model, input_ids, targets)
    assert set(again) == set(ref), set(again) ^ set(ref)
    for k in ref:
        assert again[k].dtype == ref[k].dtype and torch.equal(again[k], ref[k]), k
    for k, t in ref.items():
        if t.is_floating_point():
            assert t.dtype == torch.float32, k
            assert torch.isfinite(t).all(), k
            if k.startswith("grad.") or k.startswith("lora."):
                assert t.abs().max() > 0, f"{k} is all zero"
        else:
            assert t.dtype == torch.int32, k
    # an independent fp64 forward from the files agrees with transformers + peft
    manual_err = []
    for key, use_lora in (("logits", True), ("base_logits", False)):
        m, W, L = manual_logits(d, input_ids, use_lora)
        err = (m - ref[key].double()).abs().max().item()
        assert err < 1e-4, (key, err)
        manual_err.append(f"{key} {err:.2e}")
        if use_lora:  # fp64 autograd through the independent forward: the same gradients?
            F.cross_entropy(m.reshape(-1, m.shape[-1]), targets.reshape(-1),
                            ignore_index=-1).backward()
            grads = {f"grad_base.{n}": t.grad for n, t in W.items()}
            grads.update({f"grad.{mod}.{w}": t.grad for (mod, w), t in L.items()})
            assert set(grads) == {k for k in ref if k.startswith("grad")}
            gerr = max(((g - ref[k].double()).abs().max() / g.abs().max()).item()
                       for k, g in grads.items())
            assert gerr < 1e-4, gerr
            manual_err.append(f"gradients (relative to each tensor's max) {gerr:.2e}")
    # independent checks of the derived quantities
    lp = F.log_softmax(ref["logits"], -1)
    mask = targets >= 0
    tl = torch.where(mask, lp.gather(-1, targets.clamp(min=0)[..., None])[..., 0], 0.0)
    assert torch.allclose(tl, ref["token_logp"], atol=1e-6)
    ce = F.cross_entropy(ref["logits"].reshape(-1, ref["logits"].shape[-1]),
                         targets.reshape(-1), ignore_index=-1, reduction="mean")
    assert torch.allclose(ce, ref["loss"][0], rtol=1e-6), (ce, ref["loss"])
    assert (targets[:, -1] == -1).all()
    assert torch.equal(targets[:, :-1][mask[:, :-1]], input_ids[:, 1:][mask[:, :-1]])
    assert not torch.allclose(ref["logits"], ref["base_logits"]), "adapter has no effect"
    # the adapter file holds the same factors as the reference
    with safe_open(os.path.join(d, "adapter", "adapter_model.safetensors"), "pt") as sf:
        adapter_names = sorted(sf.keys())
        for k in adapter_names:
            module, which = hf_module_path(k)
            assert torch.equal(sf.get_tensor(k).float(), ref[f"lora.{module}.{which}"]), k
    # every base parameter has a gradient; saved weights equal what the reference used
    saved = saved_tensor_names(d)
    all_saved = sorted(n for names in saved.values() for n in names)
    grad_base = sorted(k.removeprefix("grad_base.") for k in ref if k.startswith("grad_base."))
    assert grad_base == all_saved, (set(grad_base) ^ set(all_saved))
    # a plain (non-PEFT) load: PEFT renames wrapped weights to ...base_layer.weight
    plain = v.model_cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    sd = plain.state_dict()
    cfg = read_config_like_paft(d)
    rope_err = (manual_inv_freq(cfg["rope"], cfg["head_dim"]) -
                plain.model.rotary_emb.inv_freq.double()).abs().max().item()
    assert rope_err < 1e-6, rope_err
    for f, names in saved.items():
        with safe_open(os.path.join(d, f), "pt") as sf:
            for n in names:
                w = sf.get_tensor(n)
                assert w.dtype == v.save_dtype, (n, w.dtype)
                assert torch.equal(w.float(), sd[n]), n
    n_lora = sum(k.startswith("lora.") for k in ref) // 2
    index = os.path.join(d, "model.safetensors.index.json")
    if v.max_shard_size is not None:
        assert os.path.exists(index) and len(saved) >= 2, saved.keys()
        with open(index) as f:
            wm = json.load(f)["weight_map"]
        assert sorted(wm) == all_saved and set(wm.values()) == set(saved)
    else:
        assert list(saved) == ["model.safetensors"] and not os.path.exists(index)

    with_index = " + model.safetensors.index.json" if v.max_shard_size else ""
    report.append(f"== {v.name}: {type(plain).__name__}, saved {str(v.save_dtype)[6:]}, "
                  f"files {list(saved)}{with_index}")
    report.append(f"  metadata {dict(sorted(meta.items()))}")
    report.append(f"  loss {ref['loss'][0].item():.6f} "
                  f"(ln V = {math.log(plain.config.vocab_size):.4f}); "
                  f"{int(mask.sum())} loss tokens; max |logits - base_logits| "
                  f"{(ref['logits'] - ref['base_logits']).abs().max().item():.4f}")
    report.append("  independent fp64 forward, max |diff|: " + ", ".join(manual_err) +
                  f"; inv_freq {rope_err:.1e}")
    report.append(f"  {n_lora} LoRA modules; {len(grad_base)} base tensors; "
                  f"{len(ref)} tensors in reference.safetensors")
    report += ["  " + line for line in check_rope(v, plain)]
    report.append(f"  saved model tensors: {all_saved}")
    report.append(f"  adapter tensors (first 2 of {len(adapter_names)}): {adapter_names[:2]}")
    return report


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(here, "..", "fixtures"))
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # fixed reduction order
    out_root = os.path.normpath(args.out)
    report = []
    for v in VARIANTS:
        d = build_variant(v, out_root)
        report += verify_variant(v, d)
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out_root) for f in fs)
    report.append(f"total size of {out_root}: {total} bytes")
    print("\n".join(report))


if __name__ == "__main__":
    main()
