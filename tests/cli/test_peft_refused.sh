#!/usr/bin/env bash
# PEFT adapter directories that paft must not fold as a plain s B A on every token and module:
# copies of the SFT stage's peft/ with one adapter_config.json key changed. Each must be refused
# by name (model.adapter of a training run), and the unchanged copy must be accepted.
#   usage: test_peft_refused.sh PAFT RUN (the cli_make_run fixture: RUN/t/task.ini, RUN/out/sft/peft)
set -uo pipefail
paft=$1 run=$2
work="$run/peft_refused"
rm -rf "$work" && mkdir -p "$work"
status=0
variant() { # NAME PYTHON-EDIT-OF-cfg EXPECTED-REGEX ("" = must succeed)
  local name=$1 edit=$2 expect=$3 dir="$work/$1"
  cp -r "$run/out/sft/peft" "$dir"
  python3 - "$dir/adapter_config.json" "$edit" <<'PY'
import json, sys
path, edit = sys.argv[1], sys.argv[2]
cfg = json.load(open(path))
exec(edit)
json.dump(cfg, open(path, "w"))
PY
  out=$("$paft" train "$run/t/task.ini" stage=dpo pref.steps=1 model.adapter="$dir" \
          output.dir="$work/out_$name" 2>&1); rc=$?
  if [ -z "$expect" ]; then
    if [ $rc -ne 0 ]; then echo "FAIL $name: refused: $out"; status=1; else echo "ok   $name: folded"; fi
  elif [ $rc -eq 0 ]; then
    echo "FAIL $name: accepted"; status=1
  elif ! grep -Eq "$expect" <<< "$out"; then
    echo "FAIL $name: unexpected message: $out"; status=1
  else
    echo "ok   $name: $(grep -o 'error:.*' <<< "$out" | head -c 150)"
  fi
}
variant unchanged "pass" ""
variant alora "cfg['alora_invocation_tokens'] = [1, 2]" "alora_invocation_tokens is set: an activated LoRA"
variant layer_replication "cfg['layer_replication'] = [[0, 1], [0, 1]]" "layer_replication is set"
variant fewer_targets "cfg['target_modules'] = ['q_proj']" \
  "lora_A.weight' adapts a module that target_modules .q_proj. does not name"
variant suffix_targets "cfg['target_modules'] = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'mlp.gate_proj', 'up_proj', 'mlp.down_proj']" ""
variant one_layer_target "cfg['target_modules'] = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'layers.0.mlp.down_proj']" \
  "layers.1.mlp.down_proj.lora_A.weight' adapts a module that target_modules"
exit $status
