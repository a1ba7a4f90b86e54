#!/usr/bin/env python3
"""metrics.jsonl's model FLOPs, re-derived step by step from the data (tests/train/CMakeLists.txt).

usage: test_metrics_flops.py STAGE_DIR GROUP_SIZE

STAGE_DIR is a finished stage directory (<output.dir>/sft or /pref) with its config.ini and
metrics.jsonl. For every logged step this script finds the step's records the way training does
(the shuffled order of inputs/paft_data.py's `permutation`, `batch` records a step, a new epoch when
the next batch would run past the end), and checks

  tokens                          = sum of the records' lengths (a pair: prompt + the longer reply)
  tflops_per_rank * size * 1e12 * tokens / tokens_per_s
                                  = sum over the step's sequences of len * (4 N_matmul + 6 L len d)

with N_matmul from the model's config.json (src/model/model_flops.h; the convention of paft bench
and ../shared/gpu/README.md). A pair counts both of its sequences. There is no mfu on a CPU.
"""
import configparser
import json
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "inputs"))
from paft_data import permutation, read_token_data  # noqa: E402


def matmul_parameters(c):
    d, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    heads, kv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    hd = c.get("head_dim") or d // heads
    per_layer = d * heads * hd * 2 + d * kv * hd * 2 + 3 * d * inter  # q, o; k, v; gate, up, down
    return per_layer * layers + c["vocab_size"] * d


def main():
    stage_dir, size = sys.argv[1], int(sys.argv[2])
    ini = configparser.ConfigParser(inline_comment_prefixes=(";",))
    ini.read(os.path.join(stage_dir, "config.ini"))
    unquote = lambda v: v.strip().strip('"')  # noqa: E731
    section = "sft" if os.path.basename(os.path.normpath(stage_dir)) == "sft" else "pref"
    data = read_token_data(unquote(ini[section]["data"]))
    batch, seed = int(ini[section]["batch"]), int(ini[section]["seed"])
    with open(os.path.join(unquote(ini["model"]["path"]), "config.json")) as f:
        config = json.load(f)
    n_matmul = matmul_parameters(config)
    layers, d = config["num_hidden_layers"], config["hidden_size"]
    flops = lambda n: n * (4 * n_matmul + 6 * layers * n * d)  # noqa: E731

    epoch, cursor = 0, 0
    order = permutation(data.num_records, seed, epoch)
    failures, steps = [], 0
    with open(os.path.join(stage_dir, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            records = order[cursor:cursor + batch]
            tokens = want = 0
            for r in records:
                if data.kind == "sft":
                    n = len(data.sft(r)[0])
                    tokens += n
                    want += flops(n)
                else:
                    p, c, rj = (len(s) for s in data.pref(r))
                    tokens += p + max(c, rj)
                    want += flops(p + c) + flops(p + rj)
            seconds = m["tokens"] / m["tokens_per_s"]
            got = m["tflops_per_rank"] * size * 1e12 * seconds
            if m["tokens"] != tokens:
                failures.append(f"step {m['step']}: tokens {m['tokens']}, expected {tokens}")
            if not math.isclose(got, want, rel_tol=1e-6):
                failures.append(f"step {m['step']}: {got:.6g} FLOPs, expected {want}")
            if "mfu" in m:
                failures.append(f"step {m['step']}: an mfu on a CPU run")
            steps += 1
            cursor += batch
            if cursor + batch > data.num_records:
                epoch, cursor = epoch + 1, 0
                order = permutation(data.num_records, seed, epoch)
    if steps == 0:
        failures.append("metrics.jsonl has no steps")
    for f in failures:
        print("FAIL:", f)
    if failures:
        sys.exit(1)
    print(f"{stage_dir}: {steps} steps, FLOPs and tokens as derived from the data")


if __name__ == "__main__":
    main()
