"""Training stage: the recipe from a validated config to a run directory.

`build_sft_config` is the one place our schema meets TRL. The run reports what it did on one screen
at the start and at the end, and in metrics.json and training_loss.png.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.distributed import check_distributed, quiet_other_ranks
from sftkit.errors import SftkitError
from sftkit.lifecycle import (check_disk_space, discard_partial_checkpoints, estimate_disk, lifecycle_trainer,
                              resolve_resume, save_model_atomically)

if TYPE_CHECKING:
    from trl import SFTConfig, SFTTrainer

    from sftkit.config import SftConfig
    from sftkit.data import PreparedData
    from sftkit.data.stats import DataStats
    from sftkit.model import ParamReport, Precision
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
    planned = _planned_updates(trainer, len(trainer.train_dataset))
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
        batch = self._collate(examples)
        # without an attention mask, transformers splits each row where position_ids restart
        del batch["attention_mask"]
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


# ---------------------------------------------------------------------------- what the run reports

def print_start(cfg: SftConfig, trainer: SFTTrainer, params: ParamReport, stats: DataStats,
                precision: Precision) -> None:
    """One screen before training: model, parameters, data, steps, batch, device and dtype."""
    args = trainer.args
    effective = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    sequences = len(trainer.train_dataset)
    lines = [
        f"sftkit train: {cfg.model_name_or_path} ({_method(cfg)}), template {cfg.template}",
        f"  parameters: {params.line()}",
        *(f"  {line}" for line in stats.summary_lines()),
        f"  training sequences: {sequences:,}" + (f" (packed to {cfg.cutoff_len} tokens)" if cfg.packing else ""),
        f"  updates: {_planned_updates(trainer, sequences):,} ({_schedule(cfg)})",
        f"  effective batch: {effective} sequences = {args.per_device_train_batch_size} per device x "
        f"{args.gradient_accumulation_steps} accumulation x {args.world_size} processes",
        f"  device: {precision.note}",
        f"  output: {cfg.output_dir}",
    ]
    print("\n".join(lines), flush=True)


def print_end(cfg: SftConfig, trainer: SFTTrainer, metrics: dict[str, Any], out: Path) -> None:
    """One screen after training: losses, best checkpoint, where everything went, what to run next."""
    from sftkit.evaluate import overfitting_signs

    state = trainer.state
    stopped = " (stopped early: eval loss stopped improving)" if state.global_step < state.max_steps else ""
    lines = [f"training finished: {state.global_step} updates in {metrics['train_runtime_s']:.0f}s{stopped}",
             f"  train loss: {_fmt(metrics['first_train_loss'])} -> {_fmt(metrics['train_loss'])}"]
    if metrics["best_eval_loss"] is not None or metrics["eval_loss"] is not None:
        lines.append(f"  eval loss: final {_fmt(metrics['eval_loss'])}, best {_fmt(metrics['best_eval_loss'])} "
                     f"at step {metrics['best_step']} (perplexity {_fmt(metrics['eval_perplexity'])})")
    if metrics["end_token_accuracy"] is not None:
        lines.append(f"  end-token accuracy: {metrics['end_token_accuracy']:.1%} of {metrics['end_token_positions']} "
                     "reply ends in the eval set predict the end token")
    if state.best_model_checkpoint:
        lines.append(f"  best checkpoint: {state.best_model_checkpoint} (its weights are the saved ones)")
    lines += [f"  overfitting: {sign}" for sign in overfitting_signs(state.log_history)]
    lines += [f"  written to {out}/: {_saved_weights(cfg)}, tokenizer with chat template, {CONFIG_FILE}, "
              f"metrics.json{', training_loss.png' if cfg.plot_loss else ''}, checkpoint-*/, runs/ (TensorBoard)",
              "next:"]
    if cfg.finetuning_type == "lora":
        lines.append(f"  sftkit merge {out}")
    lines.append(f"  sftkit chat {out}")
    print("\n".join(lines), flush=True)


def write_metrics(trainer: SftkitTrainer, result: Any, cfg: SftConfig, tokenizer: Any, data: PreparedData,
                  out: Path, main: bool) -> dict[str, Any]:
    """Computes the run's metrics, writes metrics.json (and training_loss.png) on the main process."""
    from sftkit.data.template import get_template

    history = trainer.state.log_history
    train_losses = [(e["step"], e["loss"]) for e in history if "loss" in e]
    eval_losses = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]
    end_id = tokenizer.convert_tokens_to_ids(get_template(cfg.template).end_token)
    accuracy, positions = end_token_accuracy(trainer, data.eval, end_id) if data.eval is not None else (None, 0)
    tokens = trainer.tokens_seen()  # a collective: write_metrics runs on every rank
    metrics = _metrics(trainer, result, train_losses, eval_losses, accuracy, positions, tokens)
    if main:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        if cfg.plot_loss:
            plot_loss(train_losses, eval_losses, out / "training_loss.png")
    return metrics


def _metrics(trainer: SFTTrainer, result: Any, train_losses: list[tuple[int, float]],
             eval_losses: list[tuple[int, float]], accuracy: float | None, positions: int, tokens: int
             ) -> dict[str, Any]:
    state = trainer.state
    runtime = float(result.metrics.get("train_runtime", 0.0))
    best = state.best_metric
    final_eval = eval_losses[-1][1] if eval_losses else None
    # the saved weights are the best checkpoint's when it was loaded at the end
    saved_eval = best if trainer.args.load_best_model_at_end and best is not None else final_eval
    return {
        "train_loss": train_losses[-1][1] if train_losses else None,
        "first_train_loss": train_losses[0][1] if train_losses else None,
        "mean_train_loss": result.training_loss,
        "eval_loss": final_eval,
        "best_eval_loss": best,
        "best_step": state.best_global_step,
        "best_checkpoint": state.best_model_checkpoint,
        "eval_perplexity": _perplexity(saved_eval),
        "end_token_accuracy": accuracy,
        "end_token_positions": positions,
        "global_step": state.global_step,
        "epochs": state.epoch,
        "tokens_trained": tokens,
        "tokens_per_second": tokens / runtime if runtime else None,
        "train_runtime_s": runtime,
        "world_size": trainer.args.world_size,
    }


def end_token_accuracy(trainer: SFTTrainer, rows: Any, end_id: int, max_rows: int = 256) -> tuple[float | None, int]:
    """How often the model, given the gold prefix, predicts `end_id` where a trained reply ends.

    Only the logits at those positions are computed (`logits_to_keep` with indices): full-vocabulary
    logits for whole sequences would not fit for long rows and a 100k vocabulary.

    Returns:
        (accuracy or None when no reply end was seen, number of reply ends scored).
    """
    import torch

    model = trainer.model
    model.eval()
    hits = total = 0
    with torch.no_grad(), trainer.accelerator.autocast():
        for row in rows.select(range(min(len(rows), max_rows))):
            labels = torch.tensor(row["labels"])
            ends = (labels == end_id).nonzero().flatten()
            ends = ends[ends > 0]
            if len(ends) == 0:
                continue
            input_ids = torch.tensor([row["input_ids"]], device=trainer.args.device)
            logits = model(input_ids=input_ids, logits_to_keep=(ends - 1).to(input_ids.device), use_cache=False).logits
            hits += int((logits[0].argmax(-1).cpu() == end_id).sum())
            total += len(ends)
    return (hits / total if total else None), total


def plot_loss(train_losses: list[tuple[int, float]], eval_losses: list[tuple[int, float]], path: Path) -> None:
    """training_loss.png: train and eval loss against the update step."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to the file
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    if train_losses:
        axes.plot(*zip(*train_losses), label="train loss")
    if eval_losses:
        axes.plot(*zip(*eval_losses), marker="o", label="eval loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _planned_updates(trainer: SFTTrainer, sequences: int) -> int:
    """Optimizer updates the run will make, as transformers.Trainer counts them."""
    args = trainer.args
    if args.max_steps > 0:
        return args.max_steps
    batches = math.ceil(sequences / (args.per_device_train_batch_size * args.world_size))
    per_epoch = max(math.ceil(batches / args.gradient_accumulation_steps), 1)
    return math.ceil(args.num_train_epochs * per_epoch)


def _method(cfg: SftConfig) -> str:
    if cfg.finetuning_type == "full":
        return "full fine-tuning"
    scaling = "rsLoRA" if cfg.use_rslora else "LoRA"
    return f"{scaling} r{cfg.lora_rank} alpha {cfg.resolved_lora_alpha} on {','.join(cfg.lora_target)}"


def _schedule(cfg: SftConfig) -> str:
    parts = [f"{cfg.num_train_epochs:g} epochs" if cfg.max_steps < 0 else f"max_steps {cfg.max_steps}"]
    if cfg.eval_strategy == "steps":
        parts.append(f"eval every {cfg.eval_steps}")
    elif cfg.eval_strategy == "epoch":
        parts.append("eval every epoch")
    if cfg.save_strategy == "steps":
        parts.append(f"save every {cfg.save_steps}")
    if cfg.early_stopping_steps:
        parts.append(f"early stopping after {cfg.early_stopping_steps} evals without improvement")
    return ", ".join(parts)


def _saved_weights(cfg: SftConfig) -> str:
    return "adapter_model.safetensors" if cfg.finetuning_type == "lora" else "model safetensors"


def _perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
