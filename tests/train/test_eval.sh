#!/usr/bin/env bash
# paft eval gives the same metrics for an adapter (applied to the base) and for the merged file
# theta_pre + delta_sft written by the merge stage (task_arithmetic, weights 1,0, fp32): the
# merged-file loader and the evaluation agree with the adapter path.
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
ev() { "$paft" eval "$cfg" model="$1" eval.sft_data="$work/task/sft_train.bin" \
         eval.pref_data="$work/task/pref_train.bin" | sed -n 's/^eval: //p'; }
a=$(ev "$work/run/sft/adapter.h5")
b=$(ev "$work/run/sft_only.h5")
base=$(ev "$work/task/model")
echo "adapter: $a"; echo "merged:  $b"; echo "base:    $base"
python3 - "$a" "$b" "$base" <<'PY'
import json, sys
a, b, base = (json.loads(x) for x in sys.argv[1:4])
fails = []
for key in ("sft_nll", "pref_margin", "reward_chosen", "reward_rejected"):
    if abs(a[key] - b[key]) > 1e-5 * max(1.0, abs(a[key])):
        fails.append(f"{key}: adapter {a[key]} merged {b[key]}")
if a["pref_accuracy"] != b["pref_accuracy"]:
    fails.append("pref_accuracy differs")
if not a["sft_nll"] < base["sft_nll"]:
    fails.append("training did not lower the NLL")
if base["pref_accuracy"] != 0 or base["pref_margin"] != 0:
    fails.append("the base against itself must have zero rewards")
print("\n".join(fails) if fails else "adapter and merged file agree")
print(f"{0 if fails else 1} passed, {1 if fails else 0} failed")
sys.exit(1 if fails else 0)
PY
