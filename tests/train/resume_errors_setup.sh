#!/usr/bin/env bash
# Inputs of the resume and stage-complete error tests (tests/train/CMakeLists.txt):
#   WORK/t, WORK/c        two tasks of the same base model; c's SFT data differs (same record count)
#   WORK/small.bin        SFT data of 16 records
#   WORK/ck               a run stopped at step 5 of 20 (sft): ck/sft/checkpoint.h5
#   WORK/<case>/sft       a copy of that checkpoint with one attribute or value broken
#   WORK/late/sft         the same checkpoint at cursor 248, the epoch's last batch of 8
#   WORK/fin              finished sft and dpo stages (2 steps each)
#   WORK/layer_<L>.h5     fin's sft adapter with layer 0's q_proj renamed to layer L
#   WORK/lora_{nan,extra,int}.h5  fin's sft adapter with a NaN, a module of layer 7, an int dataset
#   WORK/wa/run, WORK/wb  a finished sft stage under wa, nothing under wb (the MPMD tests)
#   usage: resume_errors_setup.sh PAFT MAKE_TASK RESUME_FIXTURE WORK
set -euo pipefail
paft=$1 make_task=$2 fixture=$3 work=$4
rm -rf "$work" && mkdir -p "$work"
"$make_task" "$work/t" 5
"$make_task" "$work/c" 5 3
"$fixture" sft-data "$work/small.bin" 16
cfg="$work/t/task.ini"
"$paft" train "$cfg" stage=sft sft.steps=20 output.stop_after=5 output.dir="$work/ck" > "$work/ck.log"
ck="$work/ck/sft/checkpoint.h5"
[ -f "$ck" ] || { echo "no checkpoint written"; exit 1; }

broken() { # NAME FIXTURE-ARGS...: WORK/NAME/sft/checkpoint.h5, a copy edited by resume_fixture
  local name=$1; shift
  mkdir -p "$work/$name/sft"
  cp "$ck" "$work/$name/sft/checkpoint.h5"
  "$fixture" "$1" "$work/$name/sft/checkpoint.h5" "${@:2}"
}
broken cursor_neg attr-int cursor -1000000
broken cursor_huge attr-int cursor 1000000000000000
broken cursor_end attr-int cursor 257            # past the 256 records
broken late attr-int cursor 248                 # the last batch of 8 in the epoch (test_resume_checks.sh)
broken step_neg attr-int step -5
broken epoch_neg attr-int epoch -1
broken optim_ahead attr-int optim_step 6         # more AdamW steps than optimizer steps
broken stage_dpo attr-str stage dpo
broken v_neg poke /optim/v/model.layers.0.self_attn.q_proj/A -1
broken m_nan poke /optim/m/model.layers.1.mlp.down_proj/B nan
broken old attr-delete data_records             # as written before the data identity existed
"$fixture" attr-delete "$work/old/sft/checkpoint.h5" data_crc32

"$paft" train "$cfg" stage=sft sft.steps=2 output.dir="$work/fin" > "$work/fin_sft.log"
"$paft" train "$cfg" stage=dpo pref.steps=2 output.dir="$work/fin" > "$work/fin_dpo.log"
for layer in 2147483647 99999999999 -1 +1; do   # paft inspect: layer indices out of range
  cp "$work/fin/sft/adapter.h5" "$work/layer_$layer.h5"
  "$fixture" rename "$work/layer_$layer.h5" /lora/model.layers.0.self_attn.q_proj \
    "/lora/model.layers.$layer.self_attn.q_proj"
done
# adapters broken in their values, modules or types (paft eval and model.adapter must refuse them)
cp "$work/fin/sft/adapter.h5" "$work/lora_nan.h5"
"$fixture" poke "$work/lora_nan.h5" /lora/model.layers.1.mlp.down_proj/B nan
cp "$work/fin/sft/adapter.h5" "$work/lora_extra.h5"
"$fixture" rename "$work/lora_extra.h5" /lora/model.layers.0.self_attn.q_proj \
  /lora/model.layers.7.self_attn.q_proj
cp "$work/fin/sft/adapter.h5" "$work/lora_int.h5"
"$fixture" int-dataset "$work/lora_int.h5" /lora/model.layers.0.self_attn.k_proj/B
mkdir -p "$work/wa" "$work/wb"
(cd "$work/wa" && "$paft" train "$cfg" stage=sft sft.steps=2 output.dir=run > "$work/wa.log")
echo "resume error inputs ready in $work"
