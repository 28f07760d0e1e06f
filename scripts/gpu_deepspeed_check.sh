#!/usr/bin/env bash
# GPU check for multi-process training: configs/ernie_lora.yaml at ERNIE-4.5-0.3B's exact shape (random
# weights, the tiny tokenizer, bundled data: nothing downloaded) under torchrun with DeepSpeed ZeRO-2.
# cutoff 4096, packing, bf16, LoRA r16 on all linear layers, 10 updates with an eval and a checkpoint.
#
#   bash scripts/gpu_deepspeed_check.sh [OUT_DIR]     # needs a CUDA GPU and `pip install -e .[deepspeed]`
#
# NPROC=N uses N GPUs; OPTIM=adamw_torch trains without bitsandbytes; DS_CONFIG=configs/deepspeed/ds_z3_config.json tries another ZeRO stage; PYTHON picks
# the interpreter. Prints the run's summary, DeepSpeed's sharded optimizer files and the peak GPU memory.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu-deepspeed-check}
PY=${PYTHON:-python}
NPROC=${NPROC:-1}
DS_CONFIG=${DS_CONFIG:-configs/deepspeed/ds_z2_config.json}
OPTIM=${OPTIM:-adamw_bnb_8bit}  # the config's; OPTIM=adamw_torch where bitsandbytes is absent (scripts/gpu_check.sh)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"

"$PY" -c "import sys; from sftkit.tiny import build_ernie_shape_model; build_ernie_shape_model(sys.argv[1])" \
    "$OUT/model"
echo "ERNIE-shape model (random weights, tiny tokenizer) -> $OUT/model"

nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/gpu_memory.csv" &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null || true' EXIT

"$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m sftkit train configs/ernie_lora.yaml \
  --overwrite \
  --set model_name_or_path="$OUT/model" \
  --set dataset=demo_alpaca,demo_sharegpt,demo_messages --set dataset_dir=data \
  --set deepspeed="$DS_CONFIG" --set optim="$OPTIM" \
  --set cutoff_len=4096 --set packing=true --set bf16=true \
  --set per_device_train_batch_size=2 --set gradient_accumulation_steps=2 \
  --set max_steps=10 --set warmup_steps=2 --set logging_steps=1 \
  --set eval_steps=5 --set save_steps=5 --set early_stopping_steps=null --set load_best_model_at_end=false \
  --set report_to=none --set output_dir="$OUT/run" 2>&1 | tee "$OUT/train.log"

kill $SAMPLER 2>/dev/null || true
echo "--- DeepSpeed checkpoint files (ZeRO shards: one optimizer file per rank)"
ls "$OUT"/run/checkpoint-*/global_step*/ 2>/dev/null || echo "none: DeepSpeed did not save this run's checkpoints"
echo "--- metrics.json"
cat "$OUT/run/metrics.json"
echo "--- peak GPU memory used (MiB, busiest GPU, whole device): $(sort -n "$OUT/gpu_memory.csv" | tail -1)"
