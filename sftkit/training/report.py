"""What a training run reports: one screen at the start and at the end, metrics.json, training_loss.png.

Everything here reads a finished (or about to start) trainer; nothing changes the training.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.atomic import write_json
from sftkit.data import plural
from sftkit.data.gguf_source import weights_origin
from sftkit.run_dir import CONFIG_FILE, METRICS_FILE, MODEL_CARD, shell_command, template_name
from sftkit.training.loss import perplexity
from sftkit.training.overfitting import overfitting_signs

if TYPE_CHECKING:
    from trl import SFTTrainer

    from sftkit.config import SftConfig
    from sftkit.data import DataStats, PreparedData
    from sftkit.model import ParamReport, Precision
    from sftkit.templates import Template
    from sftkit.training.trainer import SftkitTrainer

# Below this end-token accuracy, generation mostly runs past the end of the answer.
LOW_END_TOKEN_ACCURACY = 0.9


def print_start(
    cfg: SftConfig,
    trainer: SFTTrainer,
    params: ParamReport,
    stats: DataStats,
    precision: Precision,
    checkpoint: Path | None = None,
    resumed: dict[str, Any] | None = None,
) -> None:
    """One screen before training: model, parameters, data, steps, batch, device and dtype, notes, the resume point."""
    args = trainer.args
    effective = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    sequences = len(trainer.train_dataset)
    planned = planned_updates(trainer, sequences)
    lines = [
        f"sftkit train: {cfg.model_name_or_path} ({_method(cfg)}), template {template_name(cfg)}",
        *([f"  weights: {origin}"] if (origin := weights_origin(cfg.model_name_or_path)) else []),
        f"  parameters: {params.line()}",
        *(f"  {line}" for line in stats.summary_lines()),
        f"  training sequences: {sequences:,}" + (f" (packed to {cfg.cutoff_len} tokens)" if cfg.packing else ""),
        f"  updates: {planned:,} ({_schedule(cfg)})",
        f"  effective batch: {effective} sequences = {args.per_device_train_batch_size} per device x "
        f"{args.gradient_accumulation_steps} accumulation x {args.world_size} processes",
        f"  device: {precision.note}",
        f"  output: {cfg.output_dir}",
        *(f"  note: {note}" for note in start_notes(cfg, planned, os.cpu_count() or 1)),
    ]
    if checkpoint is not None:
        step = (resumed or {}).get("global_step", "?")
        lines.append(f"  resuming from {checkpoint.name} (step {step} of {planned})")
    print("\n".join(lines), flush=True)


def start_notes(cfg: SftConfig, planned: int, cpus: int) -> list[str]:
    """Settings beyond this machine or this run: each one a note in the start summary."""
    notes = []
    workers = cfg.preprocessing_num_workers
    if workers is not None and workers > cpus:
        notes.append(
            f"preprocessing_num_workers {workers} is more than this machine's {cpus} CPUs: tokenizing uses "
            f"{cpus}; set it to {cpus} or fewer"
        )
    if cfg.eval_strategy == "steps" and cfg.eval_steps and cfg.eval_steps > planned:
        notes.append(
            f"eval_steps {cfg.eval_steps} is more than this run's {planned} updates: it never evaluates "
            f"during training; lower eval_steps"
        )
    if cfg.save_strategy == "steps" and cfg.save_steps > planned:
        notes.append(
            f"save_steps {cfg.save_steps} is more than this run's {planned} updates: no checkpoint is "
            "saved, so an interrupted run cannot resume; lower save_steps"
        )
    return notes


def print_end(cfg: SftConfig, trainer: SFTTrainer, metrics: dict[str, Any], out: Path) -> None:
    """One screen after training: losses, best checkpoint, where everything went, what to run next."""
    state = trainer.state
    stopped = " (stopped early: eval loss stopped improving)" if state.global_step < state.max_steps else ""
    lines = [
        f"training finished: {state.global_step} updates in {metrics['train_runtime_s']:.0f}s{stopped}",
        f"  train loss: {_fmt(metrics['first_train_loss'])} -> {_fmt(metrics['train_loss'])}",
    ]
    if metrics["best_eval_loss"] is not None or metrics["eval_loss"] is not None:
        lines.append(
            f"  eval loss: final {_fmt(metrics['eval_loss'])}, best {_fmt(metrics['best_eval_loss'])} "
            f"at step {metrics['best_step']} (perplexity {_fmt(metrics['eval_perplexity'])})"
        )
    accuracy = metrics["end_token_accuracy"]
    if accuracy is not None:
        lines.append(
            f"  end-token accuracy: {accuracy:.1%} of {plural(metrics['end_token_positions'], 'reply end')} "
            "in the eval set predict the end token"
        )
        if accuracy < LOW_END_TOKEN_ACCURACY:
            lines.append(
                "  note: the model has not learned to stop, so chat will ramble past its answer; train "
                "longer (num_train_epochs) or with a higher learning_rate"
            )
    if state.best_model_checkpoint and trainer.args.load_best_model_at_end:
        lines.append(f"  best checkpoint: {state.best_model_checkpoint} (its weights are the saved ones)")
    lines += [f"  overfitting: {sign}" for sign in overfitting_signs(state.log_history)]
    lines += [f"  written to {out}/: {', '.join(_written(cfg, out))}", "next (from any directory):"]
    if cfg.uses_adapter:
        lines.append(f"  {shell_command('merge', out)}")
    lines.append(f"  {shell_command('chat', out)}")
    print("\n".join(lines), flush=True)


def _written(cfg: SftConfig, out: Path) -> list[str]:
    """What the run folder holds, as it is."""
    files = [
        _saved_weights(cfg),
        "tokenizer with chat template",
        CONFIG_FILE,
        METRICS_FILE,
        f"{MODEL_CARD} (model card)",
    ]
    if cfg.plot_loss:
        files.append("training_loss.png")
    if any(out.glob("checkpoint-*")):
        files.append("checkpoint-*/")
    if (out / "runs").is_dir():
        files.append("runs/ (TensorBoard)")
    return files


def write_metrics(
    trainer: SftkitTrainer,
    result: Any,
    cfg: SftConfig,
    tokenizer: Any,
    template: Template,
    data: PreparedData,
    out: Path,
    main: bool,
    tokens_before: int = 0,
) -> dict[str, Any]:
    """Computes the run's metrics, writes metrics.json (and training_loss.png) on the main process.

    `tokens_before`: tokens the resumed checkpoint had seen; tokens/s is this session's tokens over its runtime.
    """
    history = trainer.state.log_history
    train_losses = [(e["step"], e["loss"]) for e in history if "loss" in e]
    eval_losses = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]
    end_id = template.stop_token_ids(tokenizer)[0]
    accuracy, positions = end_token_accuracy(trainer, data.eval, end_id) if data.eval is not None else (None, 0)
    tokens = trainer.tokens_seen()  # a collective: write_metrics runs on every rank
    metrics = _metrics(trainer, result, train_losses, eval_losses, accuracy, positions, tokens, tokens_before)
    metrics.update(train_rows=data.stats.train_rows, eval_rows=data.stats.eval_rows)
    if main:
        write_json(out / METRICS_FILE, metrics)
        if cfg.plot_loss:
            plot_loss(train_losses, eval_losses, out / "training_loss.png")
    return metrics


def _metrics(
    trainer: SFTTrainer,
    result: Any,
    train_losses: list[tuple[int, float]],
    eval_losses: list[tuple[int, float]],
    accuracy: float | None,
    positions: int,
    tokens: int,
    tokens_before: int = 0,
) -> dict[str, Any]:
    state = trainer.state
    runtime = float(result.metrics.get("train_runtime", 0.0))
    loaded_best = trainer.args.load_best_model_at_end and state.best_metric is not None
    # the trainer tracks the best only when it loads it at the end; the log history always has it
    best_step, best = (
        (state.best_global_step, state.best_metric)
        if loaded_best
        else min(eval_losses, key=lambda pair: pair[1], default=(None, None))
    )
    final_eval = eval_losses[-1][1] if eval_losses else None
    # the saved weights are the best checkpoint's when it was loaded at the end
    saved_eval = best if loaded_best else final_eval
    session_tokens = tokens - tokens_before
    return {
        "train_loss": train_losses[-1][1] if train_losses else None,
        "first_train_loss": train_losses[0][1] if train_losses else None,
        "mean_train_loss": result.training_loss,
        "eval_loss": final_eval,
        "best_eval_loss": best,
        "best_step": best_step,
        "best_checkpoint": state.best_model_checkpoint if loaded_best else None,
        "eval_perplexity": perplexity(saved_eval),
        "end_token_accuracy": accuracy,
        "end_token_positions": positions,
        "global_step": state.global_step,
        "epochs": state.epoch,
        "tokens_seen": tokens,
        "tokens_this_session": session_tokens,  # differs from tokens_seen after a resume
        "tokens_per_second": session_tokens / runtime if runtime else None,
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


def planned_updates(trainer: SFTTrainer, sequences: int) -> int:
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
    if cfg.finetuning_type == "freeze":
        return f"freeze fine-tuning ({cfg.freeze_trainable_layers} layers: {','.join(cfg.freeze_trainable_modules)})"
    if cfg.finetuning_type == "oft":
        return f"OFT block size {cfg.oft_block_size} rank {cfg.oft_rank} on {','.join(cfg.oft_target)}"
    scaling = (
        "DoRA"
        if cfg.use_dora
        else "PiSSA-initialised LoRA"
        if cfg.pissa_init
        else "rsLoRA"
        if cfg.use_rslora
        else "LoRA"
    )
    if cfg.quantization_bit is not None:
        scaling = f"{scaling} on a {cfg.quantization_bit}-bit {cfg.quantization_method} base"
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
    return "adapter_model.safetensors" if cfg.uses_adapter else "model safetensors"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
