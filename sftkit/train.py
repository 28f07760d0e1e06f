"""Training stage: the recipe from a validated config to a run directory.

`build_sft_config` is the one place our schema meets TRL. What the run reports (one screen at the start
and at the end, metrics.json, training_loss.png) is `sftkit.report`.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.distributed import check_distributed, quiet_other_ranks
from sftkit.errors import SftkitError
from sftkit.lifecycle import (check_disk_space, discard_partial_checkpoints, estimate_disk, lifecycle_trainer,
                              resolve_resume, save_model_atomically)
from sftkit.report import planned_updates, print_end, print_start, write_metrics

if TYPE_CHECKING:
    from trl import SFTConfig, SFTTrainer

    from sftkit.config import SftConfig
    from sftkit.model import Precision
    from sftkit.trainer import SftkitTrainer

logger = logging.getLogger(__name__)

CONFIG_FILE = "sftkit_config.yaml"
# Files that mark a directory as an earlier training run, which --overwrite may replace.
_RUN_MARKERS = (CONFIG_FILE, "trainer_state.json", "adapter_config.json")


def train(cfg: SftConfig, overwrite: bool = False, resume: str | None = None) -> Path:
    """Fine-tunes the model as `cfg` says and writes everything to `cfg.output_dir`.

    Args:
        cfg: The validated config.
        overwrite: Replace an earlier run in a non-empty output_dir (also `cfg.overwrite_output_dir`).
        resume: Continue from a checkpoint: "latest" (newest in output_dir) or a checkpoint path.

    Returns:
        The run directory.

    Raises:
        SftkitError: output_dir is unusable, or the model, data or settings are invalid.
    """
    out = Path(cfg.output_dir)
    replace = check_output_dir(out, overwrite or cfg.overwrite_output_dir, resuming=bool(resume))
    checkpoint = resolve_resume(out, resume)
    check_distributed(cfg)
    quiet_other_ranks()  # under a launcher only rank 0 talks; before the heavy imports, which talk too
    from transformers import set_seed  # heavy imports after the instant checks

    from sftkit.config import dump_resolved
    from sftkit.distributed import prepare_data_once
    from sftkit.model import (add_adapter, count_parameters, load_model, load_tokenizer, resolve_precision,
                              template_token_ids)

    set_seed(cfg.seed)
    precision = resolve_precision(cfg)
    tokenizer = load_tokenizer(cfg)
    data = prepare_data_once(cfg, tokenizer)  # several processes: the first tokenizes, the rest read its cache
    model = load_model(cfg, tokenizer, precision)
    model = add_adapter(model, cfg, template_token_ids(tokenizer, cfg.template))
    params = count_parameters(model)
    set_stop_tokens(model, tokenizer, cfg.template)
    trainer = build_trainer(cfg, precision, model, tokenizer, data.train, data.eval)
    planned = planned_updates(trainer, len(trainer.train_dataset))
    check_disk_space(out, estimate_disk(model, cfg, planned), resuming=checkpoint is not None)
    main = trainer.is_world_process_zero()
    if main:
        reset_output_dir(out, replace)
        discard_partial_checkpoints(out)
        dump_resolved(cfg, out / CONFIG_FILE)
        print_start(cfg, trainer, params, data.stats, precision)
    with trainer.run_guard.handling_signals():  # Ctrl-C / SIGTERM: save a checkpoint, stop, say how to resume
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        trainer.run_guard.raise_if_stopped()  # interrupted, or the loss became NaN
        save_run(trainer, out)
        metrics = write_metrics(trainer, result, cfg, tokenizer, data, out, main)
    if main:
        print_end(cfg, trainer, metrics, out)
    return out


# ---------------------------------------------------------------------------- output directory

def check_output_dir(out: Path, overwrite: bool, resuming: bool = False) -> bool:
    """Refuses an unusable output_dir before anything slow runs; True when an earlier run will be replaced.

    Raises:
        SftkitError: `out` is a file, or non-empty without --overwrite, or holds something other than a run.
    """
    if out.exists() and not out.is_dir():
        raise SftkitError(f"output_dir: {out} is a file; choose a directory path")
    if resuming or not out.is_dir() or not any(out.iterdir()):
        return False
    if not overwrite:
        raise SftkitError(f"output_dir: {out} is not empty; pass --overwrite (or overwrite_output_dir: true) to "
                          "replace that run, or choose another output_dir")
    if not any((out / marker).exists() for marker in _RUN_MARKERS) and not any(out.glob("checkpoint-*")):
        raise SftkitError(f"output_dir: {out} is not empty and holds no sftkit run, so --overwrite will not "
                          "delete it; choose an empty or new output_dir")
    return True


def reset_output_dir(out: Path, replace: bool) -> None:
    """Deletes the replaced run (only once the new one is ready to train) and creates `out`."""
    if replace:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------- TRL

def build_sft_config(cfg: SftConfig, precision: Precision) -> SFTConfig:
    """Translates our config into TRL's SFTConfig: THE one place the two schemas meet.

    Our rows arrive tokenized with their own `labels` (-100 where untrained), so TRL neither re-tokenizes
    nor re-masks them: it only packs them (best-fit decreasing, padding-free with per-example
    position_ids, so packed examples never attend to each other) and collates.
    """
    from trl import SFTConfig

    wants_best = cfg.load_best_model_at_end or cfg.early_stopping_steps is not None
    return SFTConfig(
        output_dir=cfg.output_dir,
        # data: rows are already tokenized, masked and cut to cutoff_len
        max_length=cfg.cutoff_len, packing=cfg.packing, packing_strategy="bfd", padding_free=cfg.packing,
        dataset_num_proc=cfg.preprocessing_num_workers,
        # optimisation
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=_warmup(cfg),
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, optim=cfg.optim,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps,
        # transformers' new name for gradient checkpointing (the old one still mirrors it for TRL)
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        # precision and device: the resolved precision, never the raw flags (a CPU may lack bf16)
        bf16=precision.bf16, fp16=precision.fp16, use_cpu=precision.device == "cpu",
        # evaluation and checkpoints
        eval_strategy=cfg.eval_strategy, eval_steps=cfg.eval_steps,
        # the loss alone: kept logits of a 100k vocabulary are an out-of-memory trap
        prediction_loss_only=True,
        save_strategy=cfg.save_strategy, save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=wants_best, metric_for_best_model="eval_loss" if wants_best else None,
        greater_is_better=False if wants_best else None,
        # logging and reproducibility
        logging_steps=cfg.logging_steps, report_to=_report_to(cfg.report_to),
        seed=cfg.seed, data_seed=cfg.seed, dataloader_num_workers=cfg.dataloader_num_workers,
        trust_remote_code=cfg.trust_remote_code,
        # distributed passthrough
        deepspeed=cfg.deepspeed, fsdp=cfg.fsdp or None, fsdp_config=cfg.fsdp_config,
        # every trainable parameter is used (LoRA or full), so DDP can skip its per-step unused-parameter search
        ddp_find_unused_parameters=False, log_level_replica="error",
        # Liger's kernels (and its fused linear cross-entropy in SftkitTrainer) where a GPU and the package exist
        use_liger_kernel=use_liger_kernel(cfg, precision),
    )


def use_liger_kernel(cfg: SftConfig, precision: Precision) -> bool:
    """enable_liger_kernel where it can work; otherwise a logged note and the chunked cross-entropy."""
    from sftkit.loss import liger_available

    if not cfg.enable_liger_kernel:
        return False
    if precision.device == "cuda" and liger_available():
        return True
    logger.warning("enable_liger_kernel: needs a CUDA GPU and `pip install liger-kernel` (here: %s, liger-kernel "
                   "%s); training uses the chunked cross-entropy instead", precision.device,
                   "installed" if liger_available() else "not installed")
    return False


def build_trainer(cfg: SftConfig, precision: Precision, model: Any, tokenizer: Any, train_rows: Any,
                  eval_rows: Any | None) -> SftkitTrainer:
    """SftkitTrainer (TRL's SFTTrainer with the chunked loss) over our rows, with early stopping when asked."""
    from transformers import EarlyStoppingCallback

    from sftkit.callbacks import generation_samples_callback
    from sftkit.model import ATTENTION
    from sftkit.trainer import SftkitTrainer

    callbacks = []
    if cfg.early_stopping_steps is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_steps))
    samples = generation_samples_callback(cfg, tokenizer)  # None without eval, samples or TensorBoard
    if samples is not None:
        callbacks.append(samples)
    trainer_class = lifecycle_trainer(SftkitTrainer)  # atomic checkpoints, signal and NaN handling
    trainer = trainer_class(model=model, args=build_sft_config(cfg, precision), train_dataset=train_rows,
                            eval_dataset=eval_rows if cfg.does_eval else None, processing_class=tokenizer,
                            callbacks=callbacks, loss_chunk_size=cfg.loss_chunk_size)
    if cfg.packing and ATTENTION[cfg.flash_attn] != "flash_attention_2":
        trainer.data_collator = PackedRowsCollator(tokenizer.pad_token_id)
    return trainer


class PackedRowsCollator:
    """Collates packed sequences as the rows of a batch, their examples told apart by position_ids.

    TRL's padding-free collator flattens a whole batch into one row, which only variable-length kernels
    (flash-attention) handle cheaply: sdpa and eager would build one dense mask over batch x cutoff_len
    tokens (32 x 4096 tokens: a 16 GiB mask, and 32x the attention work). Row by row, the mask is
    batch x cutoff_len^2 and transformers still keeps packed examples from attending to each other.
    """

    def __init__(self, pad_token_id: int) -> None:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self._collate = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, return_position_ids=True)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        from sftkit.trainer import REAL_TOKENS_KEY

        batch = self._collate(examples)
        # without an attention mask, transformers splits each row where position_ids restart
        batch[REAL_TOKENS_KEY] = batch.pop("attention_mask").sum()  # for tokens_seen: rows are padded
        # an example's first token is never a target predicted from the previous example
        batch["labels"][batch["position_ids"] == 0] = -100
        return batch


def _warmup(cfg: SftConfig) -> float:
    """transformers reads warmup_steps below 1 as a ratio of all updates; warmup_steps wins over the ratio."""
    if cfg.warmup_steps > 0:
        return cfg.warmup_steps
    return min(cfg.warmup_ratio, 1 - 1e-9)  # a ratio of exactly 1 would read as "1 step"


def _report_to(loggers: list[str]) -> str | list[str]:
    return "none" if not loggers or "none" in loggers else loggers


# ---------------------------------------------------------------------------- stop tokens and saving

def set_stop_tokens(model: Any, tokenizer: Any, template_name: str) -> None:
    """Makes generation stop at the template's end token (and whatever else the template stops on)."""
    from sftkit.data.template import get_template

    stop_ids = get_template(template_name).stop_token_ids(tokenizer)
    generation = model.generation_config
    generation.eos_token_id = stop_ids if len(stop_ids) > 1 else stop_ids[0]
    generation.pad_token_id = tokenizer.pad_token_id


def save_run(trainer: SFTTrainer, out: Path) -> None:
    """Writes the final (best, when loaded at the end) weights, tokenizer, generation config and state."""
    save_model_atomically(trainer, out)  # weights land last: a killed save never looks finished
    trainer.save_state()
    if trainer.is_world_process_zero():
        trainer.model.generation_config.save_pretrained(out)
