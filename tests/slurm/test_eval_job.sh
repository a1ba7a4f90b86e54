#!/usr/bin/env bash
# jobs/eval-leaderboard.sbatch, run with plain bash (no Slurm, no GPU) and a stand-in for lm_eval
# (fake_lm_eval.py): for each of two models, each of the six tasks runs once with the Open LLM Leaderboard's few-shot
# count, the results table has the scores with the leaderboard's metrics, and a second run of the
# job redoes nothing.
#   usage: test_eval_job.sh PAFT MAKE_TASK WORKDIR
set -euo pipefail
paft=$1 make_task=$2 work=$3
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
fail() { echo "FAIL: $*"; exit 1; }

rm -rf "$work" && mkdir -p "$work"
"$make_task" "$work/task" > /dev/null
# Not a Slurm job, even when the tests run inside an allocation.
unset SLURM_JOB_ID SLURM_ARRAY_TASK_ID SLURM_CPUS_PER_TASK SLURM_NTASKS
export PAFT=$paft LM_EVAL=$here/fake_lm_eval.py FAKE_LM_EVAL_LOG=$work/calls.txt
# Two entries, on two lines: NAME=PATH, and a bare path (named after its last two components).
export MODELS="tiny=$work/task/model
$work/task/model" EVAL_DIR=$work/eval
bash "$root/jobs/eval-leaderboard.sbatch" > "$work/run1.log" 2>&1 || { cat "$work/run1.log"; fail "the job failed"; }

expected_calls="arc_challenge 25
hellaswag 10
mmlu 5
truthfulqa_mc2 0
winogrande 5
gsm8k 5"
[ "$(cat "$work/calls.txt")" = "$expected_calls
$expected_calls" ] ||
  fail "lm_eval calls (task, few-shot) were:$(printf '\n%s' "$(cat "$work/calls.txt")")"
row="| tiny | 0.6100 | 0.8300 | 0.6000 | 0.4500 | 0.7700 | 0.3700 | 0.6050 |"
grep -qF "$row" "$EVAL_DIR/results.md" || { cat "$EVAL_DIR/results.md"; fail "no row '$row'"; }
grep -qF "| task/model | 0.6100 |" "$EVAL_DIR/results.md" || { cat "$EVAL_DIR/results.md"; fail "no row for task/model"; }
[ -f "$EVAL_DIR/results.json" ] || fail "no results.json"
[ -z "$(find "$EVAL_DIR" -name '*.tmp')" ] || fail "temporary folders left: $(find "$EVAL_DIR" -name '*.tmp')"

bash "$root/jobs/eval-leaderboard.sbatch" > "$work/run2.log" 2>&1 || { cat "$work/run2.log"; fail "the second run failed"; }
[ "$(wc -l < "$work/calls.txt")" = 12 ] || fail "the second run called lm_eval again"
[ "$(grep -c "done, skipped" "$work/run2.log")" = 12 ] || fail "the second run did not skip the 2 x 6 tasks"
grep -qF "$row" "$work/run2.log" || fail "the second run did not print the table"
# refused before any work: two models of one name, a name outside EVAL_DIR, an unknown task
refused() { # EXPECTED-MESSAGE, with MODELS/TASKS set by the caller
  local log=$work/refused.log
  if bash "$root/jobs/eval-leaderboard.sbatch" > "$log" 2>&1; then cat "$log"; fail "accepted: $1"; fi
  grep -qF "$1" "$log" || { cat "$log"; fail "expected '$1'"; }
  [ "$(wc -l < "$work/calls.txt")" = 12 ] || fail "lm_eval ran before the refusal ($1)"
}
MODELS="$work/x/run1/m.h5 $work/y/run1/m.h5" refused "are both named 'run1/m'; write NAME=PATH"
MODELS="../x.h5" refused "gives the name '../x', not a folder under EVAL_DIR"
# a folder with and without its trailing slash is one model (both wrote to one folder)
MODELS="runs/a/m runs/a/m/" refused "are both named 'a/m'; write NAME=PATH"
# a model whose export fails leaves no lm_eval/ folder behind (the table showed it as a row of -)
if MODELS="broken=$work/none.h5" bash "$root/jobs/eval-leaderboard.sbatch" > "$work/broken.log" 2>&1; then
  fail "a model without a file was evaluated"
fi
[ ! -e "$EVAL_DIR/broken/lm_eval" ] || fail "the failed export left $EVAL_DIR/broken/lm_eval"
TASKS="arc mmlux" refused "unknown task 'mmlux'"
echo "1 passed, 0 failed"
