"""The trainable part of the model: a PEFT adapter (LoRA and its variants, OFT), or which weights train in
full and freeze fine-tuning; and the parameter counts a run reports.

Our schema meets PEFT in exactly one function, `add_adapter`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sftkit.errors import SftkitError
from sftkit.model.freeze import expanded_block_modules, freeze_layers

if TYPE_CHECKING:
    from sftkit.config import SftConfig

logger = logging.getLogger(__name__)


def add_adapter(model: Any, cfg: SftConfig, new_token_ids: Sequence[int] = ()) -> Any:
    """Makes the model trainable as `finetuning_type` says: a PEFT adapter (lora, oft), some layers (freeze) or
    every weight (full).

    `new_token_ids` are embedding rows that train as PEFT trainable tokens (only those rows, tied output
    rows included) and are saved with the adapter: the template's control tokens and new_special_tokens, so a
    base model learns to emit its end token. `adapter_name_or_path` adapters are merged (all but the last)
    and the last one continues training, as in LLaMA-Factory.

    Raises:
        SftkitError: a target name matches no module of the model.
    """
    if cfg.finetuning_type == "full":
        model.requires_grad_(True)
        return model
    if cfg.finetuning_type == "freeze":
        freeze_layers(model, cfg)
        if new_token_ids and not model.get_input_embeddings().weight.requires_grad:  # as LLaMA-Factory leaves them
            logger.warning(
                "freeze: the %d new token rows (the template's control tokens) stay untrained; add "
                "embed_tokens to freeze_extra_modules to train them",
                len(new_token_ids),
            )
        return model
    from peft import PeftModel, get_peft_model

    model = merge_prior_adapters(model, cfg)
    if cfg.adapter_name_or_path and not cfg.create_new_adapter:
        return PeftModel.from_pretrained(model, cfg.adapter_name_or_path[-1], is_trainable=True)
    # PEFT upcasts new adapter weights to fp32 unless pure_bf16 asks to keep everything in bf16
    return get_peft_model(model, _peft_config(model, cfg, new_token_ids), autocast_adapter_dtype=not cfg.pure_bf16)


def merge_prior_adapters(model: Any, cfg: SftConfig) -> Any:
    """The base with the adapters of adapter_name_or_path folded in: all but the last one (which training
    continues), or all of them with create_new_adapter. Inference repeats this under the run's adapter."""
    from peft import PeftModel

    adapters = cfg.adapter_name_or_path or []
    for adapter in adapters if cfg.create_new_adapter else adapters[:-1]:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model


def _peft_config(model: Any, cfg: SftConfig, new_token_ids: Sequence[int]) -> Any:
    """PEFT's LoraConfig or OFTConfig for the config."""
    from peft import LoraConfig, OFTConfig

    targets = _target_modules(
        model,
        cfg.oft_target if cfg.finetuning_type == "oft" else cfg.lora_target,
        "oft_target" if cfg.finetuning_type == "oft" else "lora_target",
    )
    if cfg.use_llama_pro:
        targets = expanded_block_modules(model, targets, cfg.freeze_trainable_layers)
    modules_to_save = list(cfg.additional_target or []) or (_embedding_names(model) if cfg.resize_vocab else None)
    # Rows of a fully trained embedding need no separate trainable-token deltas.
    embedding_saved = bool(modules_to_save) and bool(set(modules_to_save) & set(_embedding_names(model)))
    tokens = None if embedding_saved else sorted(set(new_token_ids)) or None
    if cfg.finetuning_type == "oft":
        if tokens:  # PEFT's OFT has no trainable tokens; LLaMA-Factory leaves the rows untrained too
            logger.warning(
                "oft: the %d new token rows (the template's control tokens) stay untrained; resize_vocab: "
                "true trains the whole embeddings with the adapter",
                len(tokens),
            )
        return OFTConfig(
            r=cfg.oft_rank,
            oft_block_size=cfg.oft_block_size,
            target_modules=targets,
            module_dropout=cfg.module_dropout,
            modules_to_save=modules_to_save,
            task_type="CAUSAL_LM",
        )
    if cfg.pissa_init:
        init: Any = "pissa" if cfg.pissa_iter == -1 else f"pissa_niter_{cfg.pissa_iter}"
    else:
        init = True
    return LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.resolved_lora_alpha,
        lora_dropout=cfg.lora_dropout,
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
        init_lora_weights=init,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=targets,
        modules_to_save=modules_to_save,
        trainable_token_indices=tokens,
    )


def _embedding_names(model: Any) -> list[str]:
    """Short names of the input and output embedding modules (embed_tokens, lm_head)."""
    wanted = {id(model.get_input_embeddings()), id(model.get_output_embeddings())}
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if id(module) in wanted})


def linear_layer_names(model: Any) -> list[str]:
    """Short names of the model's linear layers (q_proj, ...; quantized ones too), the output head excluded."""
    head = model.get_output_embeddings()
    names = {
        name.rsplit(".", 1)[-1] for name, module in model.named_modules() if _is_linear(module) and module is not head
    }
    return sorted(names)


def _is_linear(module: Any) -> bool:
    import torch

    # bitsandbytes' Linear4bit/Linear8bitLt subclass nn.Linear; other quantized layers keep the name.
    return isinstance(module, torch.nn.Linear) or "Linear" in type(module).__name__


def _target_modules(model: Any, targets: list[str], key: str) -> list[str] | str:
    """PEFT target_modules for `lora_target`/`oft_target`: "all-linear" (never the head) or validated names."""
    if targets == ["all"]:
        return "all-linear"
    available = linear_layer_names(model)
    unknown = [name for name in targets if name not in available]
    if unknown:
        raise SftkitError(
            f"{key}: {', '.join(unknown)} matches no linear layer of {type(model).__name__}; its linear "
            f"layers are: {', '.join(available)} (or use {key}: all)"
        )
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
        return (
            f"{self.total:,} parameters, {self.trainable:,} trainable ({self.trainable_percent:.3f}%), "
            f"{self.lora:,} in LoRA matrices"
        )


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
