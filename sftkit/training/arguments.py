"""The trainer's arguments: `build_sft_config` is THE one place our schema meets TRL's `SFTConfig`."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from sftkit.config.methods import GALORE_OPTIM
from sftkit.training.distributed import deepspeed_file
from sftkit.training.loss import liger_available
from sftkit.training.memory import use_gradient_checkpointing

if TYPE_CHECKING:
    from trl import SFTConfig

    from sftkit.config import SftConfig
    from sftkit.model import Precision

logger = logging.getLogger(__name__)

FP8_BACKENDS = {"auto": "AO", "torchao": "AO", "te": "TE", "msamp": "MSAMP"}  # fp8_backend -> accelerate's name


def build_sft_config(cfg: SftConfig, precision: Precision) -> SFTConfig:
    """Translates our config into TRL's SFTConfig: THE one place the two schemas meet.

    Our rows arrive tokenized with their own `labels` (-100 where untrained), so TRL neither re-tokenizes
    nor re-masks them: it only packs them (best-fit decreasing, padding-free with per-example
    position_ids, so packed examples never attend to each other) and collates.
    """
    from trl import SFTConfig

    if cfg.logging_dir:  # transformers 5 takes the TensorBoard folder from the environment only
        os.environ["TENSORBOARD_LOGGING_DIR"] = cfg.logging_dir
    wants_best = cfg.wants_best_model
    checkpointing = use_gradient_checkpointing(cfg, precision)  # auto: from the activation-memory estimate
    config = SFTConfig(
        output_dir=cfg.output_dir,
        # data: rows are already tokenized, masked and cut to cutoff_len
        # with a token budget, TRL's packer fills rows of batch_tokens (examples are already cut to cutoff_len)
        max_length=cfg.batch_tokens or cfg.cutoff_len,
        packing=cfg.packing,
        packing_strategy="bfd",
        padding_free=cfg.packing,
        # never more packing workers than CPUs (the start summary notes a larger setting)
        dataset_num_proc=min(cfg.preprocessing_num_workers, os.cpu_count() or 1)
        if cfg.preprocessing_num_workers
        else None,
        # optimisation
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=_warmup(cfg),
        lr_scheduler_kwargs=cfg.lr_scheduler_kwargs or {},
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        **optimizer_arguments(cfg),
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        adam_epsilon=cfg.adam_epsilon,
        neftune_noise_alpha=cfg.neftune_noise_alpha,
        per_device_train_batch_size=cfg.rows_per_micro_batch,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        # transformers' new name for gradient checkpointing (the old one still mirrors it for TRL)
        activation_checkpointing=checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        # precision and device: the resolved precision, never the raw flags (a CPU may lack bf16)
        bf16=precision.bf16,
        fp16=precision.fp16,
        use_cpu=precision.device == "cpu",
        # evaluation and checkpoints
        eval_strategy=cfg.eval_strategy,
        eval_steps=cfg.eval_steps,
        # the loss alone: kept logits of a 100k vocabulary are an out-of-memory trap
        prediction_loss_only=True,
        save_strategy=cfg.save_strategy,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        save_only_model=cfg.save_only_model,
        # the loss is the only metric an evaluation computes ("loss" names the same one)
        load_best_model_at_end=wants_best,
        metric_for_best_model="eval_loss" if wants_best else None,
        greater_is_better=False if wants_best else None,
        # a curriculum's order is the data's own order (sftkit.data.quality): no shuffling
        train_sampling_strategy="sequential"
        if cfg.curriculum != "none"
        else "group_by_length"
        if cfg.group_by_length
        else "random",
        # logging and reproducibility
        logging_steps=cfg.logging_steps,
        report_to=_report_to(cfg.report_to),
        run_name=cfg.run_name,
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=cfg.dataloader_num_workers,
        trust_remote_code=cfg.trust_remote_code,
        # distributed passthrough
        deepspeed=deepspeed_file(cfg.deepspeed) if cfg.deepspeed else None,
        fsdp=cfg.fsdp or None,
        fsdp_config=_fsdp_config(cfg),
        ddp_timeout=cfg.ddp_timeout,
        # every trainable parameter is used (LoRA or full), so DDP can skip its per-step unused-parameter search
        ddp_find_unused_parameters=False,
        log_level_replica="error",
        # Liger is sftkit's to apply, once: its RMSNorm/SwiGLU at load (kernels.py, matched by structure, ERNIE
        # included) and its fused cross-entropy in SftkitTrainer. transformers' own switch would patch a model
        # type Liger knows a second time, and TRL deprecates it.
        use_liger_kernel=False,
    )
    if cfg.fp8:  # accelerate's fp8 autocast, on the backend asked for (environment.cannot_run_here checked the GPU)
        config.mixed_precision = "fp8"
        os.environ["ACCELERATE_FP8_BACKEND"] = FP8_BACKENDS[cfg.fp8_backend]
    return config


def optimizer_arguments(cfg: SftConfig) -> dict[str, Any]:
    """`optim` and its settings: GaLore and APOLLO as transformers' own optimizers (optim_target_modules picks
    the projected layers, optim_args carries their settings); every other method keeps `optim` (LoRA+, BAdam,
    Adam-mini and Muon replace the optimizer in SftkitTrainer.create_optimizer)."""
    if cfg.use_galore:
        settings = {
            "rank": cfg.galore_rank,
            "update_proj_gap": cfg.galore_update_interval,
            "scale": cfg.galore_scale,
            "proj_type": cfg.galore_proj_type,
        }
        return {
            "optim": GALORE_OPTIM[cfg.optim] + ("_layerwise" if cfg.galore_layerwise else ""),
            "optim_target_modules": _low_rank_targets(cfg.galore_target),
            "optim_args": _optim_args(settings),
        }
    if cfg.use_apollo:
        settings = {
            "rank": cfg.apollo_rank,
            "proj": cfg.apollo_proj,
            "scale_type": cfg.apollo_scale_type,
            "update_proj_gap": cfg.apollo_update_interval,
            "scale": cfg.apollo_scale,
            "proj_type": cfg.apollo_proj_type,
        }
        return {
            "optim": "apollo_adamw" + ("_layerwise" if cfg.apollo_layerwise else ""),
            "optim_target_modules": _low_rank_targets(cfg.apollo_target),
            "optim_args": _optim_args(settings),
        }
    return {"optim": cfg.optim}


def _low_rank_targets(targets: list[str]) -> str | list[str]:
    return "all-linear" if targets == ["all"] else targets


def _optim_args(settings: dict[str, Any]) -> str:
    return ",".join(f"{key}={value}" for key, value in settings.items())


def use_liger_kernel(cfg: SftConfig, precision: Precision) -> bool:
    """enable_liger_kernel where it can work (SftkitTrainer's loss); otherwise a logged note and the chunked
    cross-entropy."""
    if not cfg.enable_liger_kernel:
        return False
    if precision.device == "cuda" and liger_available():
        return True
    logger.warning(
        "enable_liger_kernel: needs a CUDA GPU and `pip install liger-kernel` (here: %s, liger-kernel "
        "%s); training uses the chunked cross-entropy instead",
        precision.device,
        "installed" if liger_available() else "not installed",
    )
    return False


def _warmup(cfg: SftConfig) -> float:
    """transformers reads warmup_steps below 1 as a ratio of all updates; warmup_steps wins over the ratio."""
    if cfg.warmup_steps > 0:
        return cfg.warmup_steps
    return min(cfg.warmup_ratio, 1 - 1e-9)  # a ratio of exactly 1 would read as "1 step"


def _fsdp_config(cfg: SftConfig) -> dict[str, Any] | str | None:
    """fsdp_config, with the older top-level fsdp_transformer_layer_cls_to_wrap moved in (transformers 5 reads it
    there only)."""
    if not cfg.fsdp_transformer_layer_cls_to_wrap or isinstance(cfg.fsdp_config, str):
        return cfg.fsdp_config
    return {**(cfg.fsdp_config or {}), "transformer_layer_cls_to_wrap": cfg.fsdp_transformer_layer_cls_to_wrap}


def _report_to(loggers: list[str]) -> str | list[str]:
    return "none" if not loggers or "none" in loggers else loggers
