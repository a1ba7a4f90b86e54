#!/usr/bin/env python3
"""Communication volume of one training step, per rank, as paft's CPU/MPI code path does it.

Counts the bytes each rank hands to all-reduce on its tensor-parallel (TP) and data-parallel
(DP) communicators in one optimizer step; tests/parallel/test_comm_volume.sh checks these formulas
against a measurement (an MPI profiling library counting MPI_Allreduce) byte for byte.

Per micro-batch of N = rows x T tokens (rows = micro_batch, or 2 x micro_batch for pairs), with
hidden d, L layers, LoRA rank r, real = 4 bytes:
  TP forward   N d (embedding) + L (2 N d + 2 N r) (o and down: output, and x A^T before B)
               + N x (4 + 8 + 8) bytes (vocab-parallel log-prob: max, sum of exp, target logit)
  TP backward  N d (LM head input) + L 2 N d (one per attention block, one per MLP block)
  DPO family   one more forward without adapters (no x A^T reduce) for records not cached yet,
               each record alone (2 rows of its own length; records of the micro-batch's length
               give the bytes of one forward of the micro-batch, which the formula counts)
Per step: TP sums the replicated LoRA factors' gradients (7 L r d with all seven targets) plus
two doubles (L1 value, gradient-norm shards); DP sums every local LoRA gradient and the metric
sums (2 doubles for SFT, 11 for preference stages).

    python3 analysis/comm_volume.py                       # table for the paper's model sizes
    python3 analysis/comm_volume.py --hidden 32 --layers 2 ...   (see --help)

With --hidden, the model and layout must be one paft runs (it refuses the others at startup):
--layers, --ffn, --heads and --kv-heads given and positive, --tp dividing the heads, KV heads, ffn
and vocab, --batch a multiple of --dp x --micro-batch; anything else is an error (a --tp that does
not divide the heads used to round the shard sizes down and print a wrong answer).
"""
import argparse

PRESETS = {  # name: hidden, layers, ffn, heads, kv_heads, vocab
    "llama-1b": (2048, 16, 8192, 32, 8, 128256),
    "mistral-7b": (4096, 32, 14336, 32, 8, 32000),
    "llama-3-8b": (4096, 32, 14336, 32, 8, 128256),
    "llama-70b": (8192, 80, 28672, 64, 8, 128256),
}


def step_volume(hidden, layers, ffn, heads, kv_heads, vocab, r, tp, dp, batch, micro_batch, seq,
                stage="sft", l1=True, new_records=True, real_bytes=4):
    """Bytes per rank per optimizer step: (tp_bytes, dp_bytes)."""
    head_dim = hidden // heads
    rows = micro_batch if stage == "sft" else 2 * micro_batch
    n = rows * seq
    micro_batches = batch // (dp * micro_batch)
    logprob = n * (real_bytes + 8 + 8)
    fwd = (n * hidden + layers * (2 * n * hidden + 2 * n * r)) * real_bytes + logprob
    bwd = (n * hidden + layers * 2 * n * hidden) * real_bytes
    ref = (n * hidden + layers * 2 * n * hidden) * real_bytes + logprob
    per_micro = fwd + bwd + (ref if stage != "sft" and stage != "orpo" and new_records else 0)
    tp_bytes = 0
    if tp > 1:
        replicated = layers * 7 * r * hidden
        tp_bytes = micro_batches * per_micro + replicated * real_bytes + 8  # + grad-norm shards
        if stage == "sft" and l1:
            tp_bytes += 8  # the L1 value
    sharded = layers * r * (2 * heads * head_dim // tp + 2 * kv_heads * head_dim // tp
                            + 3 * ffn // tp)
    n_lora = layers * 7 * r * hidden + sharded
    dp_bytes = 0
    if dp > 1:
        dp_bytes = n_lora * real_bytes + (2 if stage == "sft" else 11) * 8
    return tp_bytes, dp_bytes


def check_layout(p, a):
    """A model and layout paft can run (src/parallel/ checks the same at startup), so that a
    formula is never applied to one it does not describe (a --tp that does not divide the heads
    would silently round the shard sizes down)."""
    for name in ("hidden", "layers", "ffn", "heads", "kv_heads", "r", "tp", "dp", "batch",
                 "micro_batch", "seq"):
        if getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, not {getattr(a, name)} "
                    "(with --hidden, give --layers, --ffn, --heads and --kv-heads too)")
    if a.hidden % a.heads:
        p.error(f"--hidden {a.hidden} is not a multiple of --heads {a.heads}")
    if a.heads % a.kv_heads:
        p.error(f"--heads {a.heads} is not a multiple of --kv-heads {a.kv_heads}")
    for name in ("heads", "kv_heads", "ffn"):
        if getattr(a, name) % a.tp:
            p.error(f"--tp {a.tp} does not divide --{name.replace('_', '-')} {getattr(a, name)} "
                    "(tensor parallelism splits them evenly)")
    if a.vocab < 0 or (a.vocab and a.vocab % a.tp):
        p.error(f"--tp {a.tp} does not divide --vocab {a.vocab} (the vocab-parallel LM head)")
    if a.batch % (a.dp * a.micro_batch):
        p.error(f"--batch {a.batch} is not a multiple of --dp {a.dp} x --micro-batch "
                f"{a.micro_batch}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in [("hidden", 0), ("layers", 0), ("ffn", 0), ("heads", 0), ("kv-heads", 0),
                          ("vocab", 0), ("r", 16), ("tp", 1), ("dp", 1), ("batch", 64),
                          ("micro-batch", 4), ("seq", 2048)]:
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--stage", default="sft", choices=["sft", "dpo", "ipo", "hinge", "orpo"])
    p.add_argument("--no-l1", action="store_true")
    a = p.parse_args()
    given = [n for n in ("layers", "ffn", "heads", "kv_heads", "vocab") if getattr(a, n)]
    if given and not a.hidden:
        p.error(f"--{given[0].replace('_', '-')} describes a model: give --hidden and the rest too")
    if a.hidden:
        check_layout(p, a)
        tp_b, dp_b = step_volume(a.hidden, a.layers, a.ffn, a.heads, a.kv_heads, a.vocab, a.r, a.tp,
                                 a.dp, a.batch, a.micro_batch, a.seq, a.stage, not a.no_l1)
        print(f"{tp_b} {dp_b}")
        return
    print("LoRA r = 16 on all seven projections, global batch 64 sequences of 2048 tokens,")
    print("micro-batch 4 sequences (SFT) or 2 pairs (DPO), fp32 activations (CPU backend; bf16 halves TP).\n")
    print("| model | stage | tp x dp | TP bytes per micro-batch | TP bytes per step | DP bytes per step |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for name, (h, l, f, nh, kv, v) in PRESETS.items():
        for stage in ("sft", "dpo"):
            tp = 8 if name == "llama-70b" else 4
            for tp_, dp_ in ((tp, 1), (tp, 2), (1, 4)):
                mb = 4 if stage == "sft" else 2
                tp_b, dp_b = step_volume(h, l, f, nh, kv, v, 16, tp_, dp_, 64, mb, 2048, stage)
                one, _ = step_volume(h, l, f, nh, kv, v, 16, tp_, dp_, dp_ * mb, mb, 2048, stage)
                print(f"| {name} | {stage} | {tp_} x {dp_} | {one / 1e9:.2f} GB | "
                      f"{tp_b / 1e9:.1f} GB | {dp_b / 1e6:.1f} MB |")


if __name__ == "__main__":
    main()
