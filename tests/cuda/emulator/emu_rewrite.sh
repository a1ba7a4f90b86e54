#!/usr/bin/env bash
# emu_rewrite.sh IN.cu OUT.cpp [NAME] - a CUDA C++ file as plain C++ for the emulator (emu_device.h
# says what each rule becomes); NAME (default IN.cu) is the file name __FILE__ and the compiler's
# messages give. Line-based: a launch's <<<...>>>( must be on one line, as it is in
# kernels/. Fails when a launch or a __shared__ declaration is left unrewritten.
set -euo pipefail
in=$1 out=$2 name=${3:-$1}
ident='[A-Za-z_][A-Za-z_0-9]*'
type='[A-Za-z_][A-Za-z_0-9 ]*'
{
  echo "#line 1 \"$name\""
  sed -E \
    -e "s/(${ident}(<[^<>]*>)?)<<<(.*)>>>\\(/emu_launch(\"\\1\", [](auto... emu_arg) { \\1(emu_arg...); }, \\3)(/" \
    -e "s/extern __shared__ (${type}) +(${ident})\\[\\];/\\1 *const \\2 = (\\1 *)emu_dynamic_shared();/" \
    -e "s/__shared__ (${type}) +(${ident})((\\[[^]]*\\])*);/static \\1 \\2\\3; emu_static_shared(\\&\\2, sizeof \\2);/" \
    "$in"
} > "$out.tmp"
if grep -n '<<<\|__shared__' "$out.tmp" | grep -v '^[0-9]*: *\(/\*\|\*\|//\)' >&2; then
  echo "emu_rewrite.sh: $in: a launch or a __shared__ declaration above was not rewritten" >&2
  rm -f "$out.tmp"
  exit 1
fi
mv "$out.tmp" "$out"
