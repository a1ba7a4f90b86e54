#!/usr/bin/env bash
# What the resume and stage-complete checks still accept (the inputs of resume_errors_setup.sh):
# a checkpoint written before checkpoints recorded the data identity resumes; so does one at the
# end of an epoch with a larger batch; a finished stage re-run with its own configuration is
# skipped as complete, its PEFT copy written if it is missing.
#   usage: test_resume_checks.sh PAFT WORK
set -euo pipefail
paft=$1 work=$2
cfg="$work/t/task.ini"
rm -rf "$work/old_run" && mkdir -p "$work/old_run/sft"
cp "$work/old/sft/checkpoint.h5" "$work/old_run/sft/"
"$paft" train "$cfg" stage=sft sft.steps=20 output.dir="$work/old_run" > "$work/old_run.log"
grep -q "resuming from .* at step 5" "$work/old_run.log" || {
  echo "FAIL: a checkpoint without data_records/data_crc32 did not resume"; cat "$work/old_run.log"; exit 1; }
[ -f "$work/old_run/sft/adapter.h5" ] || { echo "FAIL: no adapter after resuming"; exit 1; }
# a batch raised on resume that no longer fits in the rest of the epoch (cursor 248 of 256 records,
# batch 16): the run goes on with the next epoch (it was refused as a corrupt cursor)
rm -rf "$work/late_run" && cp -r "$work/late" "$work/late_run"
"$paft" train "$cfg" stage=sft sft.steps=20 sft.batch=16 output.dir="$work/late_run" > "$work/late_run.log" 2>&1 || {
  echo "FAIL: resuming with a larger batch at the end of an epoch failed"; cat "$work/late_run.log"; exit 1; }
grep -q "resuming from .* at step 5" "$work/late_run.log" || {
  echo "FAIL: the run with a larger batch did not resume"; cat "$work/late_run.log"; exit 1; }
[ -f "$work/late_run/sft/adapter.h5" ] || { echo "FAIL: no adapter after resuming with a larger batch"; exit 1; }
# a finished stage whose PEFT copy is missing (the job ended between adapter.h5 and peft/):
# the re-run that finds the stage complete writes it
rm -rf "$work/fin/pref/peft"
for stage in sft dpo; do
  sub=$([ "$stage" = sft ] && echo sft || echo pref)
  "$paft" train "$cfg" stage=$stage $sub.steps=2 output.dir="$work/fin" > "$work/fin_again.log"
  grep -q "stage complete" "$work/fin_again.log" || {
    echo "FAIL: the finished $stage stage was not recognised"; cat "$work/fin_again.log"; exit 1; }
  [ -f "$work/fin/$sub/peft/adapter_model.safetensors" ] || {
    echo "FAIL: the finished $stage stage has no PEFT copy after the re-run"; exit 1; }
done
echo "old checkpoint resumed; larger batch resumed at the end of an epoch; finished sft and dpo stages skipped, a missing PEFT copy rewritten"
echo "1 passed, 0 failed"
