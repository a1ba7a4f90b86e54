#!/usr/bin/env bash
# model.adapter takes a PEFT adapter directory as it takes an adapter.h5: a DPO stage trained on
# the base with the SFT stage's PEFT copy (<stage>/peft/) folded in is the one trained with its
# adapter.h5 folded in, to the bit (same eval metrics; paft eval folds the PEFT directory again,
# from the adapter's folded_adapter attribute).
#   usage: test_peft_fold.sh PAFT RUN (the cli_make_run fixture: RUN/t/task.ini, RUN/out/sft/)
set -euo pipefail
paft=$1 run=$2
cfg="$run/t/task.ini"
rm -rf "$run/fold_h5" "$run/fold_peft" "$run/fold_chain" "$run/fold_relative"
"$paft" train "$cfg" stage=dpo pref.steps=2 model.adapter="$run/out/sft/adapter.h5" \
  output.dir="$run/fold_h5" > /dev/null
"$paft" train "$cfg" stage=dpo pref.steps=2 model.adapter="$run/out/sft/peft" \
  output.dir="$run/fold_peft" > /dev/null
ev() { "$paft" eval "$cfg" model="$1" eval.sft_data="$run/t/sft_train.bin" \
         eval.pref_data="$run/t/pref_train.bin" | sed -n 's/^eval: {"model": "[^"]*", //p'; }
a=$(ev "$run/fold_h5/pref/adapter.h5")
b=$(ev "$run/fold_peft/pref/adapter.h5")
base=$(ev "$run/t/model")
echo "folded adapter.h5: $a"; echo "folded peft/:      $b"; echo "base:              $base"
[ -n "$a" ] && [ "$a" = "$b" ] || { echo "the two folds give different models"; exit 1; }
[ "$a" != "$base" ] || { echo "the fold did not change the model"; exit 1; }
echo "model.adapter = <stage>/peft gives the same model as <stage>/adapter.h5"

# paft eval takes a PEFT directory too (folded into model.path, the base as the reference): the
# SFT stage's peft/ evaluates as its adapter.h5 does, to rounding (the fold adds s B A into the
# weights; adapter.h5 is applied as LoRA)
# same_eval STAGE_DIR: paft eval of its peft/ and of its adapter.h5 agree to rounding
same_eval() {
  local h5 peft
  h5=$(ev "$1/adapter.h5")
  peft=$(ev "$1/peft")
  echo "$1 adapter.h5: $h5"; echo "$1 peft/:      $peft"
  python3 - "$h5" "$peft" "$1" <<'PY'
import json, math, sys
a, b = (json.loads("{" + s) for s in sys.argv[1:3])
bad = [k for k in a if not math.isclose(a[k], b[k], rel_tol=1e-4, abs_tol=1e-6)]
if bad or a.keys() != b.keys():
    sys.exit(f"{sys.argv[3]}: paft eval of peft/ differs from adapter.h5's in {bad or 'the keys'}")
PY
}
same_eval "$run/out/sft"
echo "paft eval model=<stage>/peft matches model=<stage>/adapter.h5"

# A stage trained on top of another adapter is a delta on base + that adapter: its PEFT copy
# records it (paft_folded_adapter) and folding follows the chain, as deep as it goes. Two levels:
# DPO on top of sft/peft (above), then SFT on top of that DPO adapter.h5; each stage's peft/
# evaluates as its adapter.h5 does (folding only the top delta gave another model).
"$paft" train "$cfg" stage=sft sft.steps=2 model.adapter="$run/fold_peft/pref/adapter.h5" \
  output.dir="$run/fold_chain" > /dev/null
same_eval "$run/fold_peft/pref"
same_eval "$run/fold_chain/sft"
echo "chains of adapters fold whole, from adapter.h5 and from peft/ alike"

# a relative model.adapter is recorded as an absolute path: the chain folds from another working
# directory too (it was looked up relative to wherever paft eval ran)
(cd "$run" && "$paft" train "$cfg" stage=dpo pref.steps=2 model.adapter=out/sft/peft \
   output.dir="$run/fold_relative" > /dev/null)
rel=$(cd / && ev "$run/fold_relative/pref/adapter.h5")
[ "$rel" = "$b" ] || { echo "FAIL: trained with a relative model.adapter, evaluated from /: $rel"; exit 1; }
echo "a relative model.adapter folds from any working directory"

# ... and a chain whose lower adapter is gone is refused naming both, not folded halfway
cp "$run/out/sft/adapter.h5" "$run/fold_chain/gone.h5"
"$paft" train "$cfg" stage=dpo pref.steps=1 model.adapter="$run/fold_chain/gone.h5" \
  output.dir="$run/fold_chain/on_gone" > /dev/null
rm "$run/fold_chain/gone.h5"
if out=$(ev "$run/fold_chain/on_gone/pref/peft" 2>&1); then
  echo "FAIL: a PEFT copy whose lower adapter is gone was evaluated: $out"; exit 1
fi
out=$("$paft" eval "$cfg" model="$run/fold_chain/on_gone/pref/peft" \
        eval.sft_data="$run/t/sft_train.bin" 2>&1 || true)
grep -q "on_gone/pref/peft: trained on top of [^ ]*gone.h5 (the model.adapter of its run), which is not there" <<< "$out" ||
  { echo "FAIL: the missing lower adapter is not named: $out"; exit 1; }
echo "a chain with a missing lower adapter is refused, naming both"
