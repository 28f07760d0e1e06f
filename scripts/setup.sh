#!/usr/bin/env bash
# Creates .venv and installs sftkit with its test tools. Safe to run again (it only adds what is missing).
#
# torch is installed FIRST and pinned: on a CPU machine like the CI's, `pip install torch==2.13.0` takes the CPU
# build from local disk, while an unpinned torch (or one pulled in by another package) would fetch a multi-GB CUDA
# build. On a GPU machine install the torch build for your CUDA first, then run this script: it keeps yours.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# pip's own output is kept (not -q): a first install takes a minute or two, and it should show what it is doing.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing torch ${SFTKIT_TORCH_VERSION:-2.13.0} into .venv (the largest download, once)"
  .venv/bin/pip install --disable-pip-version-check "torch==${SFTKIT_TORCH_VERSION:-2.13.0}"
fi
echo "setup: installing sftkit and its dependencies into .venv (quick when already there)"
.venv/bin/pip install --disable-pip-version-check -e ".[dev,methods]"
echo "setup: done"
