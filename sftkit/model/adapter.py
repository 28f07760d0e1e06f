"""The LoRA adapter (PEFT), and the parameter counts a run reports.

Our schema meets PEFT in exactly one function, `add_adapter`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sftkit.errors import SftkitError

if TYPE_CHECKING:
    from sftkit.config import SftConfig


def add_adapter(model: Any, cfg: SftConfig, new_token_ids: Sequence[int] = ()) -> Any:
    """Wraps the model with a PEFT LoRA adapter (or leaves every weight trainable for full fine-tuning).

    `new_token_ids` are embedding rows that train as PEFT trainable tokens (only those rows, tied output
    rows included) and are saved with the adapter: the template's control tokens, so a base model learns
    to emit its end token.

    Raises:
        SftkitError: a `lora_target` name matches no linear layer of the model.
    """
    if cfg.finetuning_type == "full":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.resolved_lora_alpha, lora_dropout=cfg.lora_dropout,
        use_rslora=cfg.use_rslora, bias="none", task_type="CAUSAL_LM",
        target_modules=_target_modules(model, cfg.lora_target),
        trainable_token_indices=sorted(set(new_token_ids)) or None,
    )
    return get_peft_model(model, lora)


def linear_layer_names(model: Any) -> list[str]:
    """Short names of the model's nn.Linear layers (q_proj, ...), the output head excluded."""
    import torch

    head = model.get_output_embeddings()
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and module is not head}
    return sorted(names)


def _target_modules(model: Any, targets: list[str]) -> list[str] | str:
    """PEFT target_modules for `lora_target`: "all-linear" (never the head) or validated names."""
    if targets == ["all"]:
        return "all-linear"
    available = linear_layer_names(model)
    unknown = [name for name in targets if name not in available]
    if unknown:
        raise SftkitError(
            f"lora_target: {', '.join(unknown)} matches no linear layer of {type(model).__name__}; its linear "
            f"layers are: {', '.join(available)} (or use lora_target: all)")
    return list(targets)


@dataclass(frozen=True)
class ParamReport:
    """Parameter counts for the start-of-run summary."""

    total: int
    trainable: int
    lora: int

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def line(self) -> str:
        return (f"{self.total:,} parameters, {self.trainable:,} trainable ({self.trainable_percent:.3f}%), "
                f"{self.lora:,} in LoRA matrices")


def count_parameters(model: Any) -> ParamReport:
    """Counts total, trainable and LoRA parameters (shared tied weights once)."""
    total = trainable = lora = 0
    for name, param in model.named_parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
        if "lora_" in name:
            lora += param.numel()
    return ParamReport(total=total, trainable=trainable, lora=lora)
