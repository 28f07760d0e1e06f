"""LLaMA-Factory's keys that sftkit does not take, each with one line: what it does there, what to use here.

A YAML brought across from LLaMA-Factory fails on such a key with that line instead of a "did you mean"
guess (`apollo_rank` is not a typo of `lora_rank`). The keys sftkit takes with LLaMA-Factory's meaning are
schema fields (`sftkit keys`); docs/llamafactory.md tabulates both.
Keys of transformers' TrainingArguments that LLaMA-Factory passes through get one shared line unless
they are named here (tests compare that list with transformers').
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sftkit.config.schema import SftConfig

# LLaMA-Factory's other training stages (`stage:`), refused by the schema's `stage` check.
OTHER_STAGES = {
    "pt": "pretraining on raw text",
    "rm": "reward-model training",
    "ppo": "PPO reinforcement learning",
    "dpo": "DPO preference training",
    "kto": "KTO preference training",
}

# Keys accepted only as false, and why true is refused.
REFUSED_TRUE = {
    "use_unsloth": "true is refused: sftkit has no unsloth path; remove it (enable_liger_kernel gives fused kernels "
    "on a GPU)",
    "streaming": "true is refused: sftkit reads and checks every row before training; remove it and bound a large "
    "dataset with max_samples",
}

_NO_SFT = "sftkit trains supervised fine-tuning only; no equivalent, remove it"
_TEXT_ONLY = "sftkit trains text only; no equivalent, remove it"
_INFERENCE = "sftkit chat and predict run on transformers; no equivalent, remove it"
_NO_RAY = "sftkit does not launch through Ray: start the processes with torchrun; remove it"
_PROFILER = "no equivalent in sftkit (run under torch.profiler or nsys yourself); remove it"


def _same(message: str, *keys: str) -> dict[str, str]:
    return dict.fromkeys(keys, message)


# ---------------------------------------------------------------------------- methods
# LLaMA-Factory's method keys sftkit does not take (the rest are fields of sftkit.config.methods).
METHOD_KEYS: dict[str, str] = {
    "quantization_device_map": "LLaMA-Factory's device map of a 4-bit model at inference; sftkit places the model "
    "itself (device_map auto on GPUs); remove it",
    "add_tokens": "LLaMA-Factory adds these ordinary tokens to the tokenizer; sftkit has no equivalent yet: use "
    "new_special_tokens for tokens the model must learn, or remove it",
    "add_special_tokens": "LLaMA-Factory's newer name for new_special_tokens; use new_special_tokens",
    "new_special_tokens_config": "LLaMA-Factory's descriptions that initialise new tokens' embeddings; sftkit "
    "initialises new rows from the mean of the others; remove it",
    "init_special_tokens": "LLaMA-Factory's initialisation of new tokens' embeddings; sftkit initialises new rows "
    "from the mean of the others; remove it",
}

# ---------------------------------------------------------------------------- everything else
OTHER_KEYS: dict[str, str] = {
    # model
    "adapter_folder": "LLaMA-Factory's folder of adapter weights to load; no equivalent, remove it",
    "cache_dir": "LLaMA-Factory's download cache; sftkit uses the Hugging Face cache: set HF_HOME instead",
    "use_fast_tokenizer": "LLaMA-Factory can load a slow tokenizer; sftkit always uses the fast one, remove it",
    "split_special_tokens": "LLaMA-Factory can tokenize special-token text as plain text; sftkit already does so for "
    "message content, remove it",
    "model_revision": "LLaMA-Factory loads this branch, tag or commit; sftkit loads the hub id's default revision or "
    "a local folder: download the revision and use its folder as model_name_or_path",
    "low_cpu_mem_usage": "LLaMA-Factory's memory-saving model load; sftkit always loads so, remove it",
    "shift_attn": "LLaMA-Factory's LongLoRA shift short attention (S^2-Attn); no equivalent, remove it",
    "use_unsloth_gc": "LLaMA-Factory's unsloth gradient checkpointing; use gradient_checkpointing: true",
    "moe_aux_loss_coef": "LLaMA-Factory weights mixture-of-experts router loss; no equivalent, remove it",
    "use_reentrant_gc": "LLaMA-Factory's reentrant gradient checkpointing; sftkit always uses the non-reentrant one, "
    "remove it",
    "upcast_layernorm": "LLaMA-Factory keeps layer norms in float32; no equivalent, remove it",
    "upcast_lmhead_output": "LLaMA-Factory upcasts the output head's logits to float32; sftkit's chunked loss already "
    "computes the cross-entropy in float32, remove it",
    "train_from_scratch": "LLaMA-Factory trains randomly initialised weights; no equivalent, remove it",
    "offload_folder": "LLaMA-Factory's folder for offloaded weights; no equivalent, remove it (DeepSpeed offload: "
    "configs/deepspeed/ds_z3_offload_config.json)",
    "use_kt": "LLaMA-Factory's KTransformers MoE backend; no equivalent, remove it",
    "hf_hub_token": "LLaMA-Factory's hub token; sftkit reads it from HF_TOKEN (or huggingface-cli login), remove it",
    "ms_hub_token": "LLaMA-Factory's ModelScope token; sftkit does not use ModelScope, remove it",
    "om_hub_token": "LLaMA-Factory's Modelers token; sftkit does not use Modelers, remove it",
    "print_param_status": "LLaMA-Factory prints every parameter's status; sftkit train prints the trainable count, "
    "remove it",
    "compute_dtype": "LLaMA-Factory derives it from bf16/fp16 (its docs: do not set it); remove it",
    "device_map": "LLaMA-Factory derives it (its docs: do not set it); remove it",
    "model_max_length": "LLaMA-Factory derives it from cutoff_len (its docs: do not set it); remove it",
    "block_diag_attn": "LLaMA-Factory derives it from neat_packing (its docs: do not set it); use neat_packing or "
    "packing",
    **_same(
        "LLaMA-Factory's KTransformers MoE backend; no equivalent, remove it",
        "kt_cpu_activation",
        "kt_weight_path",
        "kt_non_expert_weight_path",
        "kt_expert_checkpoint_path",
        "kt_use_lora_experts",
        "kt_lora_expert_num",
        "kt_lora_expert_intermediate_size",
        "kt_config",
    ),
    # inference and export
    "infer_backend": "LLaMA-Factory's inference engine (huggingface, vllm, sglang); " + _INFERENCE,
    "infer_dtype": "LLaMA-Factory's dtype at inference; sftkit chat uses the weights' dtype, remove it",
    "use_kv_cache": "LLaMA-Factory's KV cache switch at inference; sftkit always uses it, remove it",
    **_same(
        "LLaMA-Factory's vLLM engine setting; " + _INFERENCE,
        "vllm_maxlen",
        "vllm_gpu_util",
        "vllm_enforce_eager",
        "vllm_max_lora_rank",
        "vllm_config",
    ),
    **_same(
        "LLaMA-Factory's SGLang engine setting; " + _INFERENCE,
        "sglang_maxlen",
        "sglang_mem_fraction",
        "sglang_tp_size",
        "sglang_config",
        "sglang_lora_backend",
    ),
    "export_dir": "LLaMA-Factory's export (merge) folder; use sftkit merge RUN_DIR --out DIR",
    "export_size": "LLaMA-Factory's shard size (GB) of an export; use sftkit merge --max-shard-size",
    "export_device": "LLaMA-Factory's device for an export; sftkit merge runs on the CPU, remove it",
    "export_legacy_format": "LLaMA-Factory can export .bin files; sftkit merge writes safetensors only, remove it",
    "export_hub_model_id": "LLaMA-Factory pushes an export to the hub; upload sftkit merge's folder yourself "
    "(huggingface-cli upload), remove it",
    **_same(
        "LLaMA-Factory quantizes an export (GPTQ); no equivalent in sftkit merge, remove it",
        "export_quantization_bit",
        "export_quantization_dataset",
        "export_quantization_nsamples",
        "export_quantization_maxlen",
    ),
    # generation (LLaMA-Factory's predict and chat)
    "do_sample": "LLaMA-Factory's sampling switch for predict and chat; sftkit chat/predict sample when "
    "--temperature is above 0, remove it",
    "temperature": "LLaMA-Factory's sampling temperature for predict and chat; use sftkit chat/predict --temperature",
    "top_p": "LLaMA-Factory's nucleus sampling for predict and chat; use sftkit chat --top-p",
    "max_new_tokens": "LLaMA-Factory's answer length for predict and chat; use sftkit chat/predict --max-new-tokens "
    "(generation_max_new_tokens for the samples at evaluation)",
    "max_length": "LLaMA-Factory's total generation length for predict and chat; use sftkit chat/predict "
    "--max-new-tokens",
    **_same(
        "LLaMA-Factory's decoding setting for predict and chat; sftkit chat/predict have no equivalent, remove it",
        "top_k",
        "num_beams",
        "repetition_penalty",
        "length_penalty",
        "skip_special_tokens",
        "eval_num_beams",
        "generation_max_length",
        "generation_num_beams",
        "generation_config",
    ),
    "do_predict": "LLaMA-Factory generates answers for eval_dataset; use sftkit predict RUN_DIR --out FILE",
    "predict_with_generate": "LLaMA-Factory generates answers at prediction; use sftkit predict RUN_DIR --out FILE",
    # data
    "media_dir": "LLaMA-Factory's folder of images, videos and audio; " + _TEXT_ONLY,
    "buffer_size": "LLaMA-Factory's shuffle buffer when streaming; sftkit does not stream, remove it",
    "ignore_pad_token_for_loss": "LLaMA-Factory's padding mask in the loss; sftkit never trains on padding, remove it",
    "eval_on_each_dataset": "LLaMA-Factory evaluates each eval dataset apart; no equivalent in training (sftkit eval "
    "RUN_DIR --dataset NAME scores one afterwards), remove it",
    "preserve_thinking": "LLaMA-Factory keeps reasoning in earlier turns; sftkit renders what the template renders, "
    "remove it",
    "tokenized_path": "LLaMA-Factory saves (or loads) the tokenized dataset there; sftkit caches tokenized data "
    "itself (sftkit data export writes the rows), remove it",
    "data_shared_file_system": "LLaMA-Factory tokenizes once for all nodes on a shared disk; sftkit tokenizes once "
    "per node, remove it",
    "disable_shuffling": "LLaMA-Factory can keep the data in file order; sftkit always shuffles with seed, remove it",
    "include_effective_tokens_per_second": "LLaMA-Factory's tokens-per-second metric; sftkit train prints tokens/s "
    "at the end, remove it",
    # other stages, multimodal
    **_same(
        "LLaMA-Factory's preference or RL training setting; " + _NO_SFT,
        "pref_beta",
        "pref_ftx",
        "pref_bco_weight",
        "pref_loss",
        "dpo_label_smoothing",
        "kto_chosen_weight",
        "kto_rejected_weight",
        "simpo_gamma",
        "ppo_buffer_size",
        "ppo_epochs",
        "ppo_score_norm",
        "ppo_target",
        "ppo_whiten_rewards",
        "ref_model",
        "ref_model_adapters",
        "ref_model_quantization_bit",
        "reward_model",
        "reward_model_adapters",
        "reward_model_quantization_bit",
        "reward_model_type",
        "ld_alpha",
    ),
    **_same(
        "LLaMA-Factory's image, video or audio setting; " + _TEXT_ONLY,
        "image_max_pixels",
        "image_min_pixels",
        "image_do_pan_and_scan",
        "crop_to_patches",
        "video_max_pixels",
        "video_min_pixels",
        "video_fps",
        "video_maxlen",
        "use_audio_in_video",
        "audio_sampling_rate",
        "freeze_vision_tower",
        "freeze_multi_modal_projector",
        "freeze_language_model",
    ),
    # logging, launching, profiling
    "use_swanlab": "LLaMA-Factory logs to SwanLab; use report_to: swanlab",
    **_same(
        "LLaMA-Factory's SwanLab setting; use report_to: swanlab with the SWANLAB_* environment variables "
        "swanlab reads, and remove it",
        "swanlab_project",
        "swanlab_workspace",
        "swanlab_run_name",
        "swanlab_mode",
        "swanlab_api_key",
        "swanlab_logdir",
        "swanlab_lark_webhook_url",
        "swanlab_lark_secret",
    ),
    **_same(
        "LLaMA-Factory's Ray launcher setting; " + _NO_RAY,
        "ray_run_name",
        "ray_storage_path",
        "ray_storage_filesystem",
        "ray_init_kwargs",
        "resources_per_worker",
        "placement_strategy",
        "use_ray",
    ),
    "master_addr": "LLaMA-Factory's address of the main node under Ray; use torchrun --master_addr, remove it",
    "master_port": "LLaMA-Factory's port of the main node under Ray; use torchrun --master_port, remove it",
    **_same(
        "LLaMA-Factory's torch profiler setting; " + _PROFILER,
        "enable_torch_profiler",
        "profiler_output_dir",
        "profiler_wait_steps",
        "profiler_warmup_steps",
        "profiler_active_steps",
        "profiler_repeat",
        "profiler_record_shapes",
        "profiler_profile_memory",
        "profiler_with_stack",
        "profile_modules",
    ),
    **_same(
        "LLaMA-Factory's Megatron / HyperParallel backend; no equivalent (sftkit shards with deepspeed or fsdp), "
        "remove it",
        "use_mca",
        "use_megatron_bridge",
        "megatron_bridge_args",
        "use_hyper_parallel",
        "hyper_parallel_args",
        "hyper_parallel_cp_size",
    ),
    # LLaMA-Factory's `llamafactory-cli eval` (MMLU-style benchmarks)
    **_same(
        "LLaMA-Factory's benchmark evaluation (llamafactory-cli eval); sftkit eval measures loss and perplexity "
        "on a dataset (lm_eval runs benchmarks), remove it",
        "task",
        "task_dir",
        "batch_size",
        "lang",
        "n_shot",
        "save_dir",
        "download_mode",
    ),
    # transformers' TrainingArguments that LLaMA-Factory YAMLs set and sftkit decides otherwise
    "local_rank": "set by the launcher (torchrun), never in a config; remove it",
    "data_seed": "transformers' separate seed for data order; sftkit orders the data with seed, remove it",
    "gradient_checkpointing_kwargs": "sftkit always checkpoints non-reentrantly; remove it",
    "use_liger_kernel": "transformers' name for Liger kernels; use enable_liger_kernel: true",
    "use_cpu": "sftkit trains on the GPU when there is one, else the CPU (CUDA_VISIBLE_DEVICES= forces the CPU); "
    "remove it",
    "evaluation_strategy": "transformers' old name of eval_strategy; use eval_strategy",
    "logging_strategy": "sftkit logs every logging_steps updates; remove it",
    "greater_is_better": "sftkit's best checkpoint is the lowest eval loss; remove it",
    "ddp_find_unused_parameters": "sftkit sets it itself (every trained parameter is used); remove it",
    "remove_unused_columns": "sftkit's rows carry only the columns the trainer needs; remove it",
    "prediction_loss_only": "sftkit evaluates the loss only; remove it",
}

# LLaMA-Factory's Megatron settings (its MegatronBridge arguments; USE_MCA reads the same names through
# mcore_adapter): parallelism and fusions of Megatron-Core, which sftkit does not run.
MEGATRON_KEYS: dict[str, str] = _same(
    "LLaMA-Factory's Megatron (USE_MCA / MegatronBridge) setting; sftkit trains with transformers, sharded by "
    "deepspeed or fsdp (no tensor, pipeline or expert parallelism): remove it",
    "tensor_model_parallel_size",
    "pipeline_model_parallel_size",
    "expert_model_parallel_size",
    "context_parallel_size",
    "virtual_pipeline_model_parallel_size",
    "sequence_parallel",
    "recompute_granularity",
    "recompute_method",
    "recompute_num_layers",
    "account_for_embedding_in_pipeline_split",
    "account_for_loss_in_pipeline_split",
    "bias_activation_fusion",
    "apply_rope_fusion",
    "masked_softmax_fusion",
    "cross_entropy_loss_fusion",
    "moe_grouped_gemm",
    "moe_token_dispatcher_type",
    "calculate_per_token_loss",
    "use_distributed_optimizer",
    "overlap_param_gather",
    "overlap_grad_reduce",
    "use_packed_sequences",
    "mixed_precision",
    "megatron_pretrained_checkpoint",
    "export_hf_on_finish",
    "extra_config",
)

UNSUPPORTED_LLAMAFACTORY_KEYS: dict[str, str] = {**METHOD_KEYS, **OTHER_KEYS, **MEGATRON_KEYS}

# Top-level keys of LLaMA-Factory's v1 configs (USE_V1=1: nested model / peft / dataset sections) that the v0
# schema sftkit reads never has; a file with any of them is named as v1 in one line.
V1_KEYS = (
    "model",
    "model_class",
    "peft_config",
    "kernel_config",
    "dist_config",
    "quant_config",
    "init_config",
    "optim_config",
    "train_dataset",
    "micro_batch_size",
    "batching_strategy",
    "sample_backend",
    "cp_size",
    "cp_mode",
)
V1_MESSAGE = (
    "this is LLaMA-Factory's v1 schema (USE_V1=1: model:, peft_config:, train_dataset: ...), which sftkit "
    "does not read; write it in LLaMA-Factory's v0 form, as in its examples/train_lora/qwen3_lora_sft.yaml "
    "(model_name_or_path, finetuning_type: lora, lora_rank, dataset, per_device_train_batch_size, ...)"
)


def v1_keys(raw: dict[str, object]) -> list[str]:
    """The keys of `raw` that only LLaMA-Factory's v1 schema has (empty for a v0 or sftkit config)."""
    return [key for key in V1_KEYS if key in raw]


# transformers' TrainingArguments (the rest of LLaMA-Factory's training arguments) that sftkit neither takes nor
# names above; tests compare this list with transformers'.
TRAINING_ARGUMENTS = (
    "accelerator_config",
    "activation_checkpointing",
    "activation_checkpointing_kwargs",
    "auto_find_batch_size",
    "average_tokens_across_devices",
    "batch_eval_metrics",
    "bf16_full_eval",
    "dataloader_drop_last",
    "dataloader_in_order",
    "dataloader_multiprocessing_context",
    "dataloader_persistent_workers",
    "dataloader_pin_memory",
    "dataloader_prefetch_factor",
    "ddp_backend",
    "ddp_broadcast_buffers",
    "ddp_bucket_cap_mb",
    "ddp_static_graph",
    "debug",
    "disable_tqdm",
    "enable_jit_checkpoint",
    "eval_accumulation_steps",
    "eval_delay",
    "eval_do_concat_batches",
    "eval_on_start",
    "eval_use_gather_object",
    "fp16_full_eval",
    "full_determinism",
    "hub_always_push",
    "hub_model_id",
    "hub_private_repo",
    "hub_revision",
    "hub_strategy",
    "hub_token",
    "ignore_data_skip",
    "include_for_metrics",
    "label_names",
    "label_smoothing_factor",
    "length_column_name",
    "liger_kernel_config",
    "log_level",
    "log_level_replica",
    "log_on_each_node",
    "logging_first_step",
    "logging_nan_inf_filter",
    "optim_args",
    "optim_target_modules",
    "parallelism_config",
    "project",
    "push_to_hub",
    "restore_callback_states_from_checkpoint",
    "save_on_each_node",
    "skip_memory_metrics",
    "sortish_sampler",
    "tf32",
    "torch_compile_backend",
    "torch_compile_mode",
    "torch_empty_cache_steps",
    "trackio_bucket_id",
    "trackio_space_id",
    "trackio_static_space_id",
    "train_sampling_strategy",
    "use_cache",
)
TRAINING_ARGUMENT_MESSAGE = (
    "a transformers TrainingArguments option that sftkit sets itself or does not offer; "
    "remove it (`sftkit keys` lists what sftkit takes)"
)

# Shared keys whose sftkit default differs from LLaMA-Factory's (which are transformers' for training arguments),
# kept because they change no weights: `sftkit validate` names those a file leaves unset. The keys whose default
# changes the training (batch sizes, the schedule) take LLaMA-Factory's default instead.
DEFAULT_DIFFERENCES = {
    "logging_steps": (10, 500),
    "report_to": (["tensorboard"], "none"),
    "plot_loss": (True, False),
    "optim": ("adamw_torch", "adamw_torch_fused"),
    # LLaMA-Factory checkpoints activations unless disable_gradient_checkpointing: true; sftkit only when
    # one micro-batch would not fit the device without it (gradient_checkpointing: auto)
    "gradient_checkpointing": ("auto", True),
}


def unsupported_message(key: str) -> str | None:
    """The one line for a LLaMA-Factory (or transformers) key sftkit does not take, or None for other keys."""
    if key in UNSUPPORTED_LLAMAFACTORY_KEYS:
        return UNSUPPORTED_LLAMAFACTORY_KEYS[key]
    if key in TRAINING_ARGUMENTS:
        return TRAINING_ARGUMENT_MESSAGE
    return None


def default_differences(given: set[str]) -> str | None:
    """One line naming the keys a file leaves unset whose sftkit default is not LLaMA-Factory's, or None."""
    unset = [
        f"{key} {_show(ours)} (LLaMA-Factory: {_show(theirs)})"
        for key, (ours, theirs) in DEFAULT_DIFFERENCES.items()
        if key not in given
    ]
    if not unset:
        return None
    return "defaults that differ from LLaMA-Factory's, for the keys this file leaves unset: " + ", ".join(unset)


def config_notes(cfg: SftConfig) -> list[str]:
    """What `sftkit validate` notes about a valid config: defaults unlike LLaMA-Factory's, keys it ignores."""
    notes = [line for line in [default_differences(cfg.model_fields_set)] if line]
    if cfg.ray_num_workers > 1:
        notes.append(
            f"ray_num_workers {cfg.ray_num_workers} is ignored: sftkit trains on the processes its launcher "
            f"starts (torchrun --nproc_per_node {cfg.ray_num_workers} -m sftkit train CONFIG)"
        )
    return notes


def _show(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)
