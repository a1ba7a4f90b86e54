#!/usr/bin/env bash
# merge.sft_adapter / merge.pref_adapter take PEFT adapter directories as they take adapter.h5
# files: paft's <stage>/peft/ copies merge to the very file their adapter.h5 files give (every
# dataset of /weights and /stats, on 1 and 2 ranks), and a sequential run's preference adapter
# composes with its SFT adapter in either format (the factors are compared), but not with another.
# (PEFT directories written by PEFT itself: tests/merge/test_merge_stage.py, against numpy.)
#   usage: test_merge_peft.sh PAFT RUN (the cli_make_run fixture: RUN/t/task.ini, RUN/out/{sft,pref})
set -euo pipefail
source "$(dirname "$0")/../mpi_env.sh"
paft=$1 run=$2
cfg="$run/t/task.ini" out="$run/out" work="$run/merge_peft"
rm -rf "$work"
mkdir -p "$work"
merge() { "$paft" merge "$cfg" output.dir="$out" "$@" > /dev/null; }
# same_file A B: /weights and /stats of two merged files hold the same values, dataset by dataset
same_file() {
  h5diff -q "$1" "$2" /weights /weights && h5diff -q "$1" "$2" /stats /stats ||
    { echo "FAIL: $2 differs from $1"; exit 1; }
}

for method in ties dare_ties slerp; do
  merge merge.method=$method merge.out="$work/h5_$method.h5"
  merge merge.method=$method merge.sft_adapter="$out/sft/peft" merge.pref_adapter="$out/pref/peft" \
    merge.out="$work/peft_$method.h5"
  same_file "$work/h5_$method.h5" "$work/peft_$method.h5"
done
merge merge.method=ties merge.pref_adapter="$out/pref/peft" merge.out="$work/mixed.h5"
same_file "$work/h5_ties.h5" "$work/mixed.h5"
mpirun -np 2 --oversubscribe "$paft" merge "$cfg" output.dir="$out" merge.method=ties \
  merge.sft_adapter="$out/sft/peft" merge.pref_adapter="$out/pref/peft" \
  merge.out="$work/peft_ranks.h5" > /dev/null
same_file "$work/h5_ties.h5" "$work/peft_ranks.h5"
echo "peft/ copies merge to the adapter.h5 files' merged model (ties, dare_ties, slerp; 1 and 2 ranks)"

# a sequential run: DPO trained on the base with the SFT stage's peft/ folded in
"$paft" train "$cfg" stage=dpo pref.steps=1 model.adapter="$out/sft/peft" \
  output.dir="$work/seq" > /dev/null
for sft in "$out/sft/adapter.h5" "$out/sft/peft"; do
  for pref in "$work/seq/pref/adapter.h5" "$work/seq/pref/peft"; do
    log=$("$paft" merge "$cfg" merge.method=task_arithmetic merge.sft_adapter="$sft" \
            merge.pref_adapter="$pref" merge.out="$work/seq_$(basename "$sft")_$(basename "$pref").h5")
    grep -q "was trained on top of .* (sequential): the deltas compose" <<< "$log" ||
      { echo "FAIL: $sft + $pref: $log"; exit 1; }
  done
done
same_file "$work/seq_adapter.h5_adapter.h5.h5" "$work/seq_peft_peft.h5"
echo "a sequential preference adapter composes with its SFT adapter, adapter.h5 or peft/"

# ... and with no other SFT adapter (one more step gives other factors), in either format
"$paft" train "$cfg" stage=sft sft.steps=4 output.dir="$work/other" > /dev/null
for sft in "$work/other/sft/adapter.h5" "$work/other/sft/peft"; do
  if log=$("$paft" merge "$cfg" merge.method=task_arithmetic merge.sft_adapter="$sft" \
             merge.pref_adapter="$work/seq/pref/peft" merge.out="$work/wrong.h5" 2>&1); then
    echo "FAIL: merged a sequential adapter with another SFT adapter $sft"; exit 1
  fi
  grep -q "seq/pref/peft: adapter was trained on the base with [^ ]*/out/sft/peft folded in" <<< "$log" ||
    { echo "FAIL: unexpected message: $log"; exit 1; }
  [ ! -e "$work/wrong.h5" ] || { echo "FAIL: $work/wrong.h5 was left"; exit 1; }
done
echo "... and is refused with another SFT adapter"

# ... and when the run directory was moved, the SFT adapter recorded is gone: said so, with the way
# on (a link at the old path), not that the adapter given is another one
cp -r "$out/sft" "$work/sft_moved"
"$paft" train "$cfg" stage=dpo pref.steps=1 model.adapter="$work/sft_moved/adapter.h5" \
  output.dir="$work/seq_moved2" > /dev/null
rm -rf "$work/sft_moved"
if log=$("$paft" merge "$cfg" merge.method=task_arithmetic merge.sft_adapter="$out/sft/adapter.h5" \
           merge.pref_adapter="$work/seq_moved2/pref/adapter.h5" merge.out="$work/moved.h5" 2>&1); then
  echo "FAIL: merged a sequential adapter whose SFT adapter is gone"; exit 1
fi
grep -q "folded in (a sequential run), and that file no longer exists (moved or deleted?)" <<< "$log" ||
  { echo "FAIL: unexpected message: $log"; exit 1; }
echo "... and says so when the SFT adapter it was trained on is gone"
