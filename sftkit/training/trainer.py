"""`SftkitTrainer`: TRL's SFTTrainer with the chunked loss and no per-step work the user does not see.

TRL's own `compute_loss` scores every position (trained or not) and, every step, computes the entropy and
top-1 accuracy over the full vocabulary and syncs three scalars to the host (`.item()`). Here the loss is
`sftkit.training.loss`'s chunked cross-entropy over trained positions only; token accuracy falls out of the
same chunks, and the counts stay on the device until a logging step. Users still see loss, grad norm,
learning rate, tokens seen and token accuracy. The run lifecycle (atomic checkpoints, signals, non-finite
stops) is mixed in from `sftkit.training.lifecycle`. `build_trainer` assembles it for a run.
"""

from __future__ import annotations

import logging
import os
from types import MethodType
from typing import TYPE_CHECKING, Any

import torch
from transformers import EarlyStoppingCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from trl import SFTTrainer

from sftkit.model import causal_lm_of
from sftkit.quiet import no_dataset_bars
from sftkit.run_dir import ADAPTER_WEIGHTS
from sftkit.training.arguments import build_sft_config, use_liger_kernel
from sftkit.training.attention import varlen_attention
from sftkit.training.callbacks import PISSA_INIT, PissaInitCallback, ProgressReport, generation_samples_callback
from sftkit.training.collator import REAL_TOKENS_KEY, PackedRowsCollator
from sftkit.training.lifecycle import LifecycleTrainerMixin
from sftkit.training.loss import (
    LossSettings,
    LossVariant,
    add_chunked_loss,
    chunked_loss,
    liger_available,
    loss_variant_for,
)
from sftkit.training.optimizers import build_optimizer

if TYPE_CHECKING:
    from sftkit.config import SftConfig
    from sftkit.model import Precision
    from sftkit.templates import Template

logger = logging.getLogger(__name__)


class SftkitTrainer(LifecycleTrainerMixin, SFTTrainer):
    """SFTTrainer whose training loss is the chunked cross-entropy (`loss_chunk_size` tokens per chunk).

    The chunked loss is installed here, once (`add_chunked_loss`), not when the model is loaded:
    SFTTrainer.__init__ (trl 1.16) always wraps the forward with TRL's fused LM head, which this trainer never
    asks for, so the patch replaces it: one wrapper, never two stacked.

    Args:
        *args: passed to `trl.SFTTrainer`.
        loss_chunk_size: trained tokens per output-head call; 0 uses the model's own loss instead.
        liger_loss: Liger's fused linear cross-entropy instead of the chunks, where the model allows it.
        **kwargs: passed to `trl.SFTTrainer`.
    """

    accuracy_alias = False  # also log the eval token accuracy as eval_accuracy (LLaMA-Factory's compute_accuracy)

    def __init__(
        self,
        *args: Any,
        loss_chunk_size: int,
        loss_variant: LossVariant | None = None,
        method_config: SftConfig | None = None,
        liger_loss: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.loss_chunk_size = loss_chunk_size
        self.loss_variant = loss_variant  # DFT/EAFT/ASFT in training; evaluation stays plain cross-entropy
        self.method_config = method_config  # for the optimizers `optim` cannot name (LoRA+, BAdam, ...)
        self.liger_loss = liger_loss and _liger_loss_usable(self.model)
        add_chunked_loss(self.model)
        # Per mode, since the last flush: [correct predictions, trained tokens counted, tokens seen] and the
        # summed loss of those trained tokens (evaluation's loss is their mean, not a mean of batch means).
        self._counts: dict[str, torch.Tensor] = {}
        self._eval_loss_totals: torch.Tensor | None = None  # [summed loss, trained tokens] of this evaluation

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        """The chunked loss; the model's own loss only where logits must be returned (`return_outputs`)."""
        real_tokens = inputs.pop(REAL_TOKENS_KEY, None)  # the collator's count; never a model input
        if return_outputs:  # logits wanted: the model's own forward and loss, as transformers computes them
            from transformers import Trainer

            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        if not self.loss_chunk_size and not self.liger_loss:
            return self._model_loss(model, inputs, real_tokens, num_items_in_batch)
        settings = LossSettings(self.loss_chunk_size, self.liger_loss, self.loss_variant if model.training else None)
        with chunked_loss(self.model, settings):  # self.model: the instance inside any DDP/DeepSpeed wrapper
            out = model(**inputs, num_items_in_batch=num_items_in_batch)
        self._count(inputs, real_tokens, out.num_correct, out.num_trained, out.loss_sum)
        return self._across_devices(out.loss, num_items_in_batch)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The trainer's save; a PiSSA run's final adapter is then rewritten as a plain LoRA of the original base.

        Checkpoints (`_internal_call`) keep the unconverted adapter, which resuming needs.
        """
        super().save_model(output_dir, _internal_call)
        init = os.path.join(self.args.output_dir, PISSA_INIT)
        if _internal_call or not os.path.isdir(init) or not self.args.should_save:
            return
        from safetensors.torch import load_file, save_file

        folder = output_dir or self.args.output_dir
        weights = os.path.join(folder, ADAPTER_WEIGHTS)
        trained = load_file(weights)
        self.accelerator.unwrap_model(self.model).save_pretrained(folder, path_initial_model_for_weight_conversion=init)
        # PEFT's conversion writes the LoRA matrices only; the trainable-token rows and modules_to_save copies
        # are the same either way, so they are put back.
        converted = load_file(weights)
        save_file(
            converted | {key: value for key, value in trained.items() if "lora_" not in key},
            weights,
            metadata={"format": "pt"},
        )

    def create_optimizer(self, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        """The method's own optimizer (LoRA+, BAdam, Adam-mini, Muon) where the config asks for one."""
        if self.optimizer is None and self.method_config is not None:
            self.optimizer = build_optimizer(self.method_config, self.model, self.args)
        return super().create_optimizer(*args, **kwargs)

    def _model_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        real_tokens: torch.Tensor | None,
        num_items_in_batch: torch.Tensor | int | None,
    ) -> torch.Tensor:
        """`loss_chunk_size: 0`: the model's own loss from full logits, as `transformers.Trainer` computes it."""
        from transformers import Trainer

        self._count(inputs, real_tokens, None, 0)
        return Trainer.compute_loss(self, model, inputs, num_items_in_batch=num_items_in_batch)

    def _across_devices(self, loss: torch.Tensor, num_items_in_batch: torch.Tensor | int | None) -> torch.Tensor:
        # `num_items_in_batch` counts every rank's tokens while DDP averages gradients (as in Trainer.compute_loss).
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            return loss * self.accelerator.num_processes
        return loss

    def _count(
        self,
        inputs: dict[str, Any],
        real_tokens: torch.Tensor | None,
        num_correct: torch.Tensor | None,
        num_trained: int,
        loss_sum: torch.Tensor | None = None,
    ) -> None:
        """Adds this micro-batch to the logged counts, on the device: no host sync per step.

        `real_tokens`: the batch's tokens when padded rows carry no attention mask (PackedRowsCollator).
        """
        mode = "train" if self.model.training else "eval"
        input_ids = inputs["input_ids"]
        counts = self._counts.setdefault(mode, torch.zeros(3, dtype=torch.long, device=input_ids.device))
        if num_correct is not None:
            counts[0] += num_correct
            counts[1] += num_trained
        mask = inputs.get("attention_mask")
        if real_tokens is None:
            real_tokens = mask.sum() if mask is not None else input_ids.numel()
        counts[2] += real_tokens
        if loss_sum is not None and mode == "eval":
            if self._eval_loss_totals is None:
                self._eval_loss_totals = torch.zeros(2, dtype=torch.float64, device=input_ids.device)
            self._eval_loss_totals[0] += loss_sum.double()
            self._eval_loss_totals[1] += num_trained

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> Any:
        """The trainer's loop, with `<prefix>_loss` recomputed as the mean over every trained token.

        transformers averages per-batch mean losses, which weighs a batch of few trained tokens like one
        of many; `sftkit eval` and perplexity need the token mean. Early stopping and the best checkpoint
        read the metrics returned here.
        """
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        totals, self._eval_loss_totals = self._eval_loss_totals, None
        if totals is None:  # every rank takes the same path: the chunked loss is on for all or none
            return output
        loss_sum, trained = self.accelerator.gather(totals).view(-1, 2).sum(0).tolist()
        if trained and f"{metric_key_prefix}_loss" in output.metrics:
            output.metrics[f"{metric_key_prefix}_loss"] = loss_sum / trained
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Turns the counts gathered since the last log into `mean_token_accuracy` and `num_tokens`.

        They go into `logs` itself, under the names SFTTrainer logs them by (`eval_` first in evaluation);
        TRL's own metric store stays untouched, and empty, since its compute_loss never runs.
        """
        mode = "train" if self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        correct, trained = self._flush(mode)
        if trained:
            logs[f"{prefix}mean_token_accuracy"] = correct / trained
            if mode == "eval" and self.accuracy_alias:  # LLaMA-Factory's compute_accuracy logs it as eval_accuracy
                logs["eval_accuracy"] = correct / trained
        if mode == "train":
            logs["num_tokens"] = self.state.num_input_tokens_seen
        super().log(logs, start_time)

    def tokens_seen(self) -> int:
        """Tokens fed to the model in training so far, on every rank, this run and the runs it resumed.

        A collective: every rank must call it.
        """
        self._flush("train")
        return int(self.state.num_input_tokens_seen)

    def before_checkpoint(self) -> None:
        # the count is saved with the checkpoint (trainer_state.json), so a resumed run goes on from it
        self._flush("train")

    def _flush(self, mode: str) -> tuple[int, int]:
        """Sums the counts since the last flush over the ranks (one host sync); returns (correct, trained).

        Training tokens go to `state.num_input_tokens_seen`, the field transformers fills (with a host
        sync every step) under `include_num_input_tokens_seen`, and saves in every checkpoint.
        """
        if mode not in self._counts:
            return 0, 0
        counts = self._counts.pop(mode)
        correct, trained, tokens = self.accelerator.gather(counts).view(-1, 3).sum(0).tolist()
        if mode == "train":
            self.state.num_input_tokens_seen += tokens
        return correct, trained


def _liger_loss_usable(model: torch.nn.Module) -> bool:
    """Whether Liger's fused linear cross-entropy can replace the chunked loss; logs why not."""
    reason = liger_loss_blocker(model)
    if reason:
        logger.warning("enable_liger_kernel: %s; using the chunked cross-entropy instead.", reason)
    return reason is None


def liger_loss_blocker(model: torch.nn.Module) -> str | None:
    """Why Liger's fused linear cross-entropy cannot train `model` here, or None when it can.

    It needs the package, a GPU, and a plain Linear output head (it reads the raw weight, so PEFT's
    trainable new-token rows on a tied head would get no gradient).
    """
    head = causal_lm_of(model).get_output_embeddings()
    device = next(model.parameters()).device
    if not liger_available():
        return "liger-kernel is not installed (pip install liger-kernel)"
    if device.type != "cuda":
        return f"the model is on {device.type}, and Liger's kernels need a GPU"
    if type(head) is not torch.nn.Linear:
        return f"the output head is a {type(head).__name__} (trainable new-token rows), not a plain Linear"
    return None


def _variant_alpha(cfg: SftConfig) -> float:
    return cfg.eaft_alpha if cfg.use_eaft_loss else cfg.asft_alpha


def build_trainer(
    cfg: SftConfig,
    precision: Precision,
    model: Any,
    tokenizer: Any,
    template: Template,
    train_rows: Any,
    eval_rows: Any | None,
) -> SftkitTrainer:
    """SftkitTrainer (TRL's SFTTrainer with the chunked loss) over our rows, with early stopping when asked."""
    callbacks: list[Any] = []
    if cfg.early_stopping_steps is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_steps))
    if cfg.pissa_init:
        callbacks.append(PissaInitCallback())
    samples = generation_samples_callback(cfg, tokenizer, template)  # None without eval, samples or TensorBoard
    if samples is not None:
        callbacks.append(samples)
    args = build_sft_config(cfg, precision)
    with no_dataset_bars():  # TRL packs the rows here: a pass the user did not ask to watch
        trainer = SftkitTrainer(
            model=model,
            args=args,
            train_dataset=train_rows,
            # do_eval (LLaMA-Factory's): evaluated once after training, whatever eval_strategy says
            eval_dataset=eval_rows if cfg.does_eval or cfg.do_eval else None,
            processing_class=tokenizer,
            callbacks=callbacks,
            loss_chunk_size=cfg.loss_chunk_size,
            method_config=cfg,
            loss_variant=loss_variant_for(cfg.loss_variant, _variant_alpha(cfg), model),
            liger_loss=use_liger_kernel(cfg, precision),
        )
    if cfg.use_badam:  # as badam's README: its callback, and clipping that handles its sparse gradients
        from badam import BAdamCallback, clip_grad_norm_old_version

        trainer.accelerator.clip_grad_norm_ = MethodType(clip_grad_norm_old_version, trainer.accelerator)
        trainer.add_callback(BAdamCallback)
    # one progress display instead of transformers' bar (or its printed dicts, to a file)
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ProgressReport())
    if cfg.packing and not varlen_attention(model):  # flash varlen takes TRL's one flattened row
        trainer.data_collator = PackedRowsCollator(tokenizer.pad_token_id)
    if cfg.curriculum == "loss":
        trainer.train_dataset = order_by_loss(trainer, cfg.curriculum_stages, cfg.seed)
    trainer.accuracy_alias = cfg.compute_accuracy
    return trainer


def order_by_loss(trainer: SftkitTrainer, stages: int, seed: int) -> Any:
    """The trainer's rows sorted by the untrained model's loss on each (easy first): `curriculum: loss`.

    Measured on the model as it starts training (a fresh LoRA adapter changes nothing yet); the sequential
    sampler (`train_sampling_strategy`) then keeps this order.
    """
    from sftkit.data.quality.curriculum import curriculum_line, curriculum_order

    model, rows = trainer.model, trainer.train_dataset
    was_training = model.training
    model.eval()
    losses = []
    with torch.no_grad(), trainer.accelerator.autocast():
        for row in rows:
            input_ids = torch.tensor([row["input_ids"]], device=trainer.args.device)
            labels = torch.tensor([row["labels"]], device=trainer.args.device)
            losses.append(float(model(input_ids=input_ids, labels=labels, use_cache=False).loss))
    model.train(was_training)
    logger.info(curriculum_line("loss", losses, stages))
    return rows.select(curriculum_order(losses, stages, seed))
