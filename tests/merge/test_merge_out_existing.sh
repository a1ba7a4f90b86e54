#!/usr/bin/env bash
# merge.out names an existing file: only an earlier merged model is replaced. A configuration, a
# PEFT adapter's weights (the adapter being merged) or any other HDF5 file given as merge.out is
# refused by name and left as it was (they used to be overwritten with the merged HDF5 file, as
# was a training data file).
#   usage: test_merge_out_existing.sh PAFT STAGE_INPUTS WORKDIR
set -euo pipefail
paft=$1 inputs=$2 work=$3
L=$inputs/llama
rm -rf "$work" && mkdir -p "$work"
cp "$L/merge.ini" "$work/config.ini"
cp -r "$L/sft_peft" "$work/sft_peft"
cp "$L/bad_format.h5" "$work/other.h5"
cp "$work/config.ini" "$work/config.orig"
cp "$work/sft_peft/adapter_model.safetensors" "$work/peft.orig"
cp "$work/other.h5" "$work/other.orig"
failed=0 passed=0
refused() {  # refused NAME ORIGINAL OUT [settings...]
  local name=$1 orig=$2 out=$3; shift 3
  local log="$work/$name.log"
  if "$paft" merge "$L/merge.ini" merge.out="$out" "$@" > "$log" 2>&1; then
    echo "FAIL: $name: the merge overwrote $out"; failed=$((failed + 1)); return
  fi
  if ! grep -q "merge.out exists and is not a paft merged model" "$log"; then
    echo "FAIL: $name: unexpected message:"; cat "$log"; failed=$((failed + 1)); return
  fi
  if ! cmp -s "$orig" "$out"; then
    echo "FAIL: $name: $out changed"; failed=$((failed + 1)); return
  fi
  echo "$name: refused, left as it was"; passed=$((passed + 1))
}
refused config "$work/config.orig" "$work/config.ini"
refused peft_weights "$work/peft.orig" "$work/sft_peft/adapter_model.safetensors" \
  merge.sft_adapter="$work/sft_peft"
refused other_hdf5 "$work/other.orig" "$work/other.h5"
# an earlier merge's output is still replaced
for i in 1 2; do
  if "$paft" merge "$L/merge.ini" merge.out="$work/merged.h5" merge.method=linear > "$work/m$i.log" 2>&1
  then passed=$((passed + 1)); echo "merge $i into merged.h5: ok"
  else failed=$((failed + 1)); echo "FAIL: merge $i into an earlier merged.h5"; cat "$work/m$i.log"
  fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
