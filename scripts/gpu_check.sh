#!/usr/bin/env bash
# The one prepared GPU check of the speed options, for an H100/H200 machine with 16 cores and no internet, in about 8 minutes:
#   1. installs what the machine's image lacks from wheels carried in the working tree (.whl/, gitignored);
#   2. the GPU tests of the attention kernels, Liger's patch and the memory estimate (pytest, CUDA only);
#   3. scripts/bench.py --device cuda: ERNIE-4.5-0.3B shape (random weights), packing, bf16, cutoff 4096,
#      8 rows per step, LoRA r16/a64 on all linear layers; sftkit with each option on/off, plain TRL, the loop;
#   4. scripts/gpu_deepspeed_check.sh: ZeRO-2 under torchrun, 10 updates.
# Everything lands in $OUT (bench.json, pytest.log, bench.log, deepspeed.log, versions.json).
#
# Prepare once, on a machine with a package registry (the wheels travel with the working tree, < 64 MiB):
#   bash scripts/gpu_check.sh --prepare
# Then on the GPU machine, from the repository root:
#   OUT=/tmp/out bash scripts/gpu_check.sh
#
# The image there has python3 3.12 with torch (CUDA), triton, accelerate, tokenizers, safetensors, pyyaml, typer,
# matplotlib and tensorboard; it lacks (or has too old) the packages below. PY_VERSION / PLATFORM select the wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl
PY=${PYTHON:-python3}
PACKAGES=(transformers==5.24.0 trl==1.16.0 peft==0.21.2 datasets==5.2.0 huggingface_hub==2.4.0
          pydantic==2.14.4 pydantic_core==2.50.5 typing-inspection==0.4.5 annotated-types==0.8.0
          dill==0.4.1 multiprocess==0.70.19 liger-kernel==0.8.5 hjson==3.1.0)
SDISTS=(deepspeed==0.19.8)  # DeepSpeed publishes no wheel: built there without its C++ ops (DS_BUILD_OPS=0)

if [ "${1:-}" = "--prepare" ]; then
  mkdir -p "$WHEELS"
  grep -qx '/.whl/' .gitignore || echo '/.whl/' >> .gitignore
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" "${PACKAGES[@]}"
  "$PY" -m pip download --no-deps --no-binary=:all: --no-build-isolation -d "$WHEELS" "${SDISTS[@]}"
  du -sh "$WHEELS"
  exit 0
fi

: "${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
SITE=${SITE:-/tmp/site}
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
DS_BUILD_OPS=0 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$SITE" \
  "$WHEELS"/deepspeed-*.tar.gz || echo "deepspeed did not install: the ZeRO-2 check will report it"
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - > "$OUT/versions.json" <<'EOF'
import importlib.metadata as md, json, torch
names = ("torch", "triton", "transformers", "trl", "peft", "datasets", "accelerate", "liger-kernel", "flash-attn",
         "deepspeed")
versions = {}
for name in names:
    try:
        versions[name] = md.version(name)
    except md.PackageNotFoundError:
        versions[name] = None
print(json.dumps({"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda, "versions": versions}, indent=2))
EOF
cat "$OUT/versions.json"

# 2. GPU tests (about a minute): flex / flash-attention gradients, Liger's kernels, compiled layers
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_attention.py tests/test_kernels.py \
  tests/test_memory.py -k "gpu or liger or compiled or estimate" 2>&1 | tee "$OUT/pytest.log" || true

# 3. the cuda bench (about 4-5 minutes: nine methods, 3 warm-up + 8 measured steps of 8 x 4,096 tokens each;
#    bench.json is rewritten after every method, so a run stopped by the timeout keeps the finished ones)
timeout 420 "$PY" scripts/bench.py --device cuda --skip-preprocess --preprocess-rows 0 --out "$OUT/bench.json" 2>&1 \
  | tee "$OUT/bench.log" || true

# 4. DeepSpeed ZeRO-2 (about a minute; AdamW from torch: a bitsandbytes wheel, 43 MB, would not fit the 64 MiB carried)
timeout 180 env PYTHON="$PY" OPTIM=adamw_torch bash scripts/gpu_deepspeed_check.sh /tmp/gpu-deepspeed-check > "$OUT/deepspeed.log" 2>&1 \
  || echo "deepspeed check failed: see deepspeed.log"
tail -5 "$OUT/deepspeed.log"
