#!/usr/bin/env bash
# paft demo OUTDIR writes only into a new or empty directory or an earlier demo's: a directory of
# the user's is refused with its files untouched. Rerun into its own directory, the demo reuses
# the trained stages but merges again: a merged file planted from other adapters (as a retrained
# adapter or an older paft would leave) must not show up in the results.
#   usage: test_demo_rerun.sh PAFT WORKDIR
set -euo pipefail
paft=$1 work=$2
rm -rf "$work" && mkdir -p "$work/mine" "$work/demo"
echo "my settings" > "$work/mine/demo.ini"
if "$paft" demo "$work/mine" > "$work/mine.log" 2>&1; then
  echo "the demo ran in a directory of the user's"; exit 1
fi
grep -q "mine: not empty and not a paft demo directory (no .paft-demo in it)" "$work/mine.log" ||
  { cat "$work/mine.log"; echo "unexpected message"; exit 1; }
[ "$(cat "$work/mine/demo.ini")" = "my settings" ] || { echo "demo.ini was overwritten"; exit 1; }
[ "$(ls -A "$work/mine")" = "demo.ini" ] || { echo "the demo wrote into the user's directory"; exit 1; }

# an empty existing directory is taken; results of a first run
"$paft" demo "$work/demo" > /dev/null
cp "$work/demo/results.json" "$work/first.json"
# a stale merged file: another merge's output under PAFT ties' name
cp "$work/demo/merged/paft-no-l1-ties.h5" "$work/demo/merged/paft-ties.h5"
"$paft" demo "$work/demo" > /dev/null
if ! cmp -s "$work/first.json" "$work/demo/results.json"; then
  diff "$work/first.json" "$work/demo/results.json" || true
  echo "the rerun reported other results (a stale merged file reused?)"; exit 1
fi
echo "demo: a user's directory refused; a rerun merges again and reports the same results"
