#!/usr/bin/env bash
# paft eval gives the same metrics for an adapter (applied to the base) and for the merged file
# theta_pre + delta_sft written by the merge stage (task_arithmetic, weights 1,0, fp32), and for
# the sequential baseline's DPO adapter (trained on base + SFT) and the merge of the two deltas
# (task_arithmetic 1,1): the merged-file loader, the folding and the evaluation agree.
#   usage: test_eval.sh PAFT MAKE_TASK WORKDIR
set -euo pipefail
paft=$1 make_task=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
"$make_task" "$work/task" > /dev/null
cfg="$work/task/task.ini"
"$paft" train "$cfg" stage=sft sft.steps=20 output.dir="$work/run" > /dev/null
"$paft" train "$cfg" stage=dpo pref.steps=20 output.dir="$work/run" > /dev/null
"$paft" merge "$cfg" output.dir="$work/run" merge.method=task_arithmetic merge.weights=1,0 \
  merge.dtype=fp32 merge.out="$work/run/sft_only.h5" > /dev/null
# the sequential baseline: DPO on base + SFT; merged back as base + delta_sft + delta_dpo
"$paft" train "$cfg" stage=dpo pref.steps=20 model.adapter="$work/run/sft/adapter.h5" \
  output.dir="$work/seq" > /dev/null
"$paft" merge "$cfg" merge.method=task_arithmetic merge.weights=1,1 merge.dtype=fp32 \
  merge.sft_adapter="$work/run/sft/adapter.h5" merge.pref_adapter="$work/seq/pref/adapter.h5" \
  merge.out="$work/seq/sequential.h5" > /dev/null
ev() { "$paft" eval "$cfg" model="$1" eval.sft_data="$work/task/sft_train.bin" \
         eval.pref_data="$work/task/pref_train.bin" | sed -n 's/^eval: //p'; }
# an adapter trained with other LoRA settings is evaluated with its own (r, alpha, targets from
# the file), not the configuration's [lora]: the same metrics with or without the overrides
lora="lora.r=2 lora.alpha=3 lora.rslora=true lora.targets=q_proj,down_proj"
# shellcheck disable=SC2086
"$paft" train "$cfg" stage=sft sft.steps=5 $lora output.dir="$work/other_lora" > /dev/null
own=$(ev "$work/other_lora/sft/adapter.h5")
# shellcheck disable=SC2086
given=$("$paft" eval "$cfg" model="$work/other_lora/sft/adapter.h5" $lora \
          eval.sft_data="$work/task/sft_train.bin" eval.pref_data="$work/task/pref_train.bin" |
        sed -n 's/^eval: //p')
echo "adapter with other LoRA settings: $own"
[ -n "$own" ] && [ "$own" = "$given" ] ||
  { echo "FAIL: its own settings give $own, the overrides $given"; exit 1; }
a=$(ev "$work/run/sft/adapter.h5")
b=$(ev "$work/run/sft_only.h5")
base=$(ev "$work/task/model")
c=$(ev "$work/seq/pref/adapter.h5")
d=$(ev "$work/seq/sequential.h5")
echo "sequential adapter (on base + SFT): $c"; echo "sequential merged: $d"
echo "adapter: $a"; echo "merged:  $b"; echo "base:    $base"
python3 - "$a" "$b" "$base" "$c" "$d" <<'PY'
import json, sys
a, b, base, c, d = (json.loads(x) for x in sys.argv[1:6])
fails = []
for x, y, what in ((a, b, "SFT adapter vs merged"), (c, d, "sequential adapter vs merged")):
    for key in ("sft_nll", "pref_margin", "reward_chosen", "reward_rejected"):
        if abs(x[key] - y[key]) > 1e-5 * max(1.0, abs(x[key])):
            fails.append(f"{what}: {key}: {x[key]} vs {y[key]}")
    if x["pref_accuracy"] != y["pref_accuracy"]:
        fails.append(f"{what}: pref_accuracy differs")
if not a["sft_nll"] < base["sft_nll"]:
    fails.append("training did not lower the NLL")
if base["pref_accuracy"] != 0 or base["pref_margin"] != 0:
    fails.append("the base against itself must have zero rewards")
print("\n".join(fails) if fails else "adapters and merged files agree (plain and sequential)")
print(f"{0 if fails else 1} passed, {1 if fails else 0} failed")
sys.exit(1 if fails else 0)
PY
