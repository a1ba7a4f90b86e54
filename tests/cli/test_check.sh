#!/usr/bin/env bash
# paft check: a job's checks and plan, made on one process for N ranks, creating nothing.
#   usage: test_check.sh PAFT RUN (the cli_make_run fixture: RUN/t/task.ini, RUN/out/{sft,pref})
set -euo pipefail
paft=$1 run=$2
cfg="$run/t/task.ini" dir="$run/check_out"
rm -rf "$dir"
fail() { echo "FAIL: $*"; exit 1; }
# expect OUTPUT REGEX: the output holds a line matching the extended regex
expect() { grep -Eq -- "$2" <<< "$1" || fail "no line matching '$2' in:"$'\n'"$1"; }

# paft run on 4 ranks (the task's 256 records, batch 8, micro-batch 4: dp 2, one micro-batch)
out=$("$paft" check "$cfg" ranks=4 output.dir="$dir")
echo "$out"
expect "$out" "paft check: .*task.ini for paft run on 4 ranks: no problem found"
expect "$out" "^  sft +ranks 0-1: tp 1 x dp 2; 32 steps of 8 sequences \(micro-batch 4 x dp 2 x 1 accumulated\), seq_len 24$"
expect "$out" "^ +1.00 epochs of 256 records in .*sft_train.bin; lr 0.01 \(cosine, 4 warm-up steps\), L1 on the delta$"
expect "$out" "^  dpo +ranks 2-3: tp 1 x dp 2; 32 steps of 8 pairs"
expect "$out" "^  merge +ties, weights 1,1, density 1,1 -> .*check_out/merged.h5 \(bf16\)$"
expect "$out" "^  LoRA +r=4 alpha=8 on .*: 4096 trainable parameters per replica$"
[ ! -e "$dir" ] || fail "paft check created $dir"

# the split and the accumulation follow the rank count and the settings; SLURM_NTASKS is N
out=$(SLURM_NTASKS=6 "$paft" check "$cfg" parallel.sft_ranks=2 sft.steps=10 sft.micro_batch=2 \
        pref.micro_batch=2 \
        output.dir="$dir")
expect "$out" "for paft run on 6 ranks"
expect "$out" "^  sft +ranks 0-1: tp 1 x dp 2; 10 steps of 8 sequences \(micro-batch 2 x dp 2 x 2 accumulated\)"
expect "$out" "^ +0.31 epochs of 256 records"
expect "$out" "^  dpo +ranks 2-5: tp 1 x dp 4; 32 steps of 8 pairs \(micro-batch 2 x dp 4 x 1 accumulated\)"

# an epoch is whole batches (the last 256 mod 24 = 16 records of each are left out): 20 steps of
# 24 are 2 epochs, as the checkpoint's epoch counter says, and steps = 0 is one epoch
out=$("$paft" check "$cfg" stage=sft ranks=1 sft.batch=24 sft.steps=20 output.dir="$dir")
expect "$out" "^ +2.00 epochs of 256 records"
out=$("$paft" check "$cfg" stage=sft ranks=1 sft.batch=24 output.dir="$dir")
expect "$out" "^  sft +rank 0: tp 1 x dp 1; 10 steps of 24 sequences"
expect "$out" "^ +1.00 epochs of 256 records"

# paft train stage=...: that stage only; a one-step stage at warm-up's learning rate 0 is named
out=$("$paft" check "$cfg" stage=orpo ranks=1 pref.steps=1 output.dir="$dir")
expect "$out" "for paft train on 1 rank: no problem found"
expect "$out" "^  orpo +rank 0: tp 1 x dp 1; 1 step of 8 pairs"
expect "$out" "note: pref trains 1 step and it is the warm-up's first, at learning rate 0"
if grep -q "^  sft " <<< "$out"; then fail "stage=orpo printed the sft stage"; fi

# what the stage directories hold: RUN/out's stages were trained for 3 steps
out=$("$paft" check "$cfg" ranks=2 output.dir="$run/out")
expect "$out" "found .*out/sft/adapter.h5 \(step 3 of 32\): trained again if it comes from this configuration"
out=$("$paft" check "$cfg" ranks=2 output.dir="$run/out" sft.steps=3)
expect "$out" "found .*out/sft/adapter.h5 \(step 3 of 3\): the stage is complete if it comes from this configuration"

# stage=merge: all that paft merge validates, the adapters included; then what it would merge
out=$("$paft" check "$cfg" stage=merge output.dir="$run/out" merge.sft_adapter="$run/out/sft/peft" \
        merge.out="$dir.h5")
expect "$out" "for paft merge: no problem found"
expect "$out" "^  sft +.*out/sft/peft \(PEFT, stage sft, r=4 alpha=8 on q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj\)$"
expect "$out" "^  pref +.*out/pref/adapter.h5 \(adapter.h5, stage dpo, r=4 alpha=8"
expect "$out" "^  merge +ties of 14 of the 21 tensors -> .*check_out.h5 \(bf16\)$"
[ ! -e "$dir.h5" ] || fail "paft check stage=merge wrote $dir.h5"
if out=$("$paft" check "$cfg" stage=merge output.dir="$run/out" \
           merge.pref_adapter="$run/out/sft/adapter.h5" 2>&1); then
  fail "stage=merge accepted the same adapter twice"
fi
expect "$out" "name the same adapter; the merge combines two different ones"

# a GPU configuration on a host without one: a note, not an error (the job runs elsewhere);
# a build without CUDA says so instead
if out=$("$paft" check "$cfg" ranks=2 model.device=cuda output.dir="$dir" 2>&1); then
  expect "$out" "note: model.device = cuda, and no device is visible here|no problem found"
else
  expect "$out" "built without the CUDA backend"
fi
[ ! -e "$dir" ] || fail "paft check created $dir"
echo "paft check: plans and notes as expected, nothing created"
