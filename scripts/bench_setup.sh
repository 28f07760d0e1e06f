#!/usr/bin/env bash
# Creates the race's peer virtual environments under ${PEERS:-/work/peers}, from the package index only.
# Each peer has its own venv, never imported by sftkit. torch is pinned through a constraints file so that
# no peer pulls a CUDA build. Usage: bash scripts/bench_setup.sh [llamafactory|trl|axolotl ...]
set -uo pipefail
PEERS=${PEERS:-/work/peers}
PY=${PYTHON:-python3}
mkdir -p "$PEERS"
CONSTRAINTS="$PEERS/constraints.txt"
echo "torch==2.13.0" > "$CONSTRAINTS"
export PIP_CONSTRAINT="$CONSTRAINTS"

venv() {  # venv NAME: a fresh venv with CPU torch 2.13.0 first
  "$PY" -m venv "$PEERS/$1" && "$PEERS/$1/bin/pip" install -q --upgrade pip wheel \
    && "$PEERS/$1/bin/pip" install -q torch==2.13.0 psutil
}

setup_llamafactory() {
  venv lf || return 1
  # torchvision pinned with it: an unpinned one pulls a CUDA torch
  "$PEERS/lf/bin/pip" install -q llamafactory==0.9.5 torch==2.13.0 torchvision==0.28.0 || return 1
  # the index's torchvision is a CUDA build whose native part fails beside CPU torch; LLaMA-Factory's text
  # path does not need it
  "$PEERS/lf/bin/pip" uninstall -y -q torchvision
  # torchaudio (pulled in by llamafactory) is a CUDA build too: its native libraries need libc10_cuda.so.
  # Without them torchaudio's loader finds no library and imports as "extension not available", which is all
  # LLaMA-Factory's text path asks of it (an import).
  rm -f "$PEERS"/lf/lib/python3*/site-packages/torchaudio/lib/*.so
  "$PEERS/lf/bin/python" -c "import torchaudio, llamafactory.data.template; print('torchaudio', torchaudio.__version__, 'imports')" || return 1
  "$PEERS/lf/bin/llamafactory-cli" version
}

setup_trl() {
  venv trl || return 1
  "$PEERS/trl/bin/pip" install -q "trl==1.16.*" peft datasets || return 1
  "$PEERS/trl/bin/trl" --help | head -5
}

setup_axolotl() {
  venv axolotl || return 1
  "$PEERS/axolotl/bin/pip" install axolotl || return 1
  "$PEERS/axolotl/bin/axolotl" --help | head -5
}

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(llamafactory trl axolotl)
status=0
for t in "${targets[@]}"; do
  echo "== $t"
  if "setup_$t" > "$PEERS/setup-$t.log" 2>&1; then echo "ok $t"; else echo "FAILED $t (see $PEERS/setup-$t.log)"; status=1; fi
done
exit $status
