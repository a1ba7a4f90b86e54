#!/usr/bin/env python3
"""A stand-in for lm-eval-harness's `lm_eval` command in the evaluation job's test: it checks the
arguments the job passes (a Hugging Face directory with config.json, bf16, one task, a few-shot
count), appends the call to $FAKE_LM_EVAL_LOG, and writes a result file where lm_eval 0.4 writes
it (OUTPUT_PATH/<model>/results_<time>.json) with fixed scores and the few-shot count it was given.
"""
import argparse
import json
import os
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "analysis"))
from leaderboard_table import MMLU_SUBJECTS  # noqa: E402

SCORES = {  # task: (metric key, score)
    "arc_challenge": ("acc_norm,none", 0.61),
    "hellaswag": ("acc_norm,none", 0.83),
    "truthfulqa_mc2": ("acc,none", 0.45),
    "winogrande": ("acc,none", 0.77),
    "gsm8k": ("exact_match,strict-match", 0.37),
}

p = argparse.ArgumentParser()
for option in ("--model", "--model_args", "--tasks", "--batch_size", "--output_path"):
    p.add_argument(option, required=True)
p.add_argument("--num_fewshot", type=int, required=True)
a = p.parse_args()
model_args = dict(kv.split("=", 1) for kv in a.model_args.split(","))
if a.model != "hf" or model_args.get("dtype") != "bfloat16":
    sys.exit(f"fake lm_eval: unexpected --model {a.model} --model_args {a.model_args}")
if not os.path.isfile(os.path.join(model_args["pretrained"], "config.json")):
    sys.exit(f"fake lm_eval: {model_args['pretrained']} is not a Hugging Face model directory")

if a.tasks == "mmlu":
    results = {f"mmlu_{s}": {"acc,none": 0.60, "alias": s} for s in MMLU_SUBJECTS}
    results["mmlu"] = {"acc,none": 0.99, "alias": "mmlu"}  # the weighted group score: unused
elif a.tasks in SCORES:
    key, score = SCORES[a.tasks]
    results = {a.tasks: {key: score}}
else:
    sys.exit(f"fake lm_eval: unknown task {a.tasks}")
n_shot = {task: a.num_fewshot for task in results}

with open(os.environ["FAKE_LM_EVAL_LOG"], "a") as log:
    log.write(f"{a.tasks} {a.num_fewshot}\n")
out = os.path.join(a.output_path, "model")
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, f"results_{time.time():.6f}.json"), "w") as f:
    json.dump({"results": results, "n-shot": n_shot, "date": time.time()}, f)
