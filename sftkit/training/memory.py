"""`gradient_checkpointing: auto`: checkpoint only when one micro-batch's activations would not fit the device.

Checkpointing recomputes every decoder layer's forward in backward: about a third more compute per step.
A 0.3B model's activations at a few thousand tokens fit any modern GPU, so paying for it there is waste;
at 32 x 4,096 tokens they do not. The decision needs no weights: it reads the model's config.

The estimate (documented here once, unit-tested against the bytes autograd really saves on the tiny model):

    activations = tokens x layers x bytes_per_value x (7 hidden + 3 q + 5 kv + 3 intermediate)

per decoder layer and token, the values autograd keeps for backward with a fused attention kernel
(sdpa, flash, flex; no seq x seq scores): each RMSNorm's input, float32 copy and output (2 x ~3 hidden),
the residual branch output (hidden); q, k, v projections, their rotated copies and the rotation's
inputs (3 q + 5 kv: k and v are kv wide, q is heads x head_dim); the attention output is the o_proj
input (counted in q); SwiGLU's gate, up and their product (3 intermediate). LoRA's low-rank
activations (r per adapted input) are negligible beside them. Then

    needed = activations + weights (training dtype) + trainable state (fp32 weight, gradient, two
             AdamW moments: 16 bytes per trainable parameter; full fine-tuning's weights are fp32)

and checkpointing goes off when `needed <= 0.75 x device memory` (GPU: its total memory; CPU: physical
RAM): the quarter kept free covers the loss's chunk logits, kernel workspaces and the allocator's
fragmentation.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sftkit.data.model_source import resolve_model

if TYPE_CHECKING:
    from sftkit.config import SftConfig
    from sftkit.model import Precision

logger = logging.getLogger(__name__)

HEADROOM = 0.75  # the share of device memory a run may plan to use; the rest is the margin above
LORA_TRAINABLE_SHARE = 0.01  # LoRA r16 on every linear layer trains ~1% of a small model's weights (bounded above)


@dataclass(frozen=True)
class Shape:
    """The sizes of a decoder-only transformer that set its activation memory."""

    hidden: int
    intermediate: int
    layers: int
    q_width: int
    kv_width: int
    vocab: int

    @classmethod
    def of(cls, config: Any) -> Shape:
        """From a transformers model config (head_dim may be unset: hidden / heads)."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return cls(
            config.hidden_size,
            config.intermediate_size,
            config.num_hidden_layers,
            heads * head_dim,
            kv_heads * head_dim,
            config.vocab_size,
        )

    @property
    def parameters(self) -> int:
        """Weights: embedding (tied head) + per layer the four attention and three MLP projections."""
        per_layer = self.hidden * (2 * self.q_width + 2 * self.kv_width) + 3 * self.hidden * self.intermediate
        return self.vocab * self.hidden + self.layers * per_layer


def activation_bytes(shape: Shape, tokens: int, bytes_per_value: int) -> int:
    """What autograd keeps for backward in one micro-batch of `tokens` tokens, without checkpointing."""
    per_token_layer = 7 * shape.hidden + 3 * shape.q_width + 5 * shape.kv_width + 3 * shape.intermediate
    return tokens * shape.layers * per_token_layer * bytes_per_value


def training_bytes(shape: Shape, tokens: int, bytes_per_value: int, full: bool) -> int:
    """Activations + weights + trainable state of one micro-batch (see the module's docstring)."""
    params = shape.parameters
    if full:
        weights, trainable = 0, params  # fp32 master weights are part of the 16 bytes of state each
    else:
        weights, trainable = params * bytes_per_value, int(params * LORA_TRAINABLE_SHARE)
    return activation_bytes(shape, tokens, bytes_per_value) + weights + 16 * trainable


def micro_batch_tokens(cfg: SftConfig) -> int:
    """Tokens in one micro-batch at most: the token budget, or rows x cutoff_len."""
    return cfg.batch_tokens or cfg.rows_per_micro_batch * cfg.cutoff_len


def device_memory(device: str) -> int:
    """Bytes of memory on the training device: the GPU's total (MPS: its recommended maximum), or physical RAM."""
    if device == "mps":
        import torch

        return torch.mps.recommended_max_memory()
    if device != "cpu":
        import torch

        accelerator = getattr(torch, device)  # torch.cuda, torch.xpu: the same memory query
        return accelerator.get_device_properties(accelerator.current_device()).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def use_gradient_checkpointing(cfg: SftConfig, precision: Precision) -> bool:
    """The config's explicit true/false, or for auto whether the estimate exceeds the device's budget.

    A model config that cannot be read leaves checkpointing on: the cautious choice.
    """
    if cfg.gradient_checkpointing != "auto":
        return bool(cfg.gradient_checkpointing)
    shape = model_shape(cfg)
    if shape is None:
        return True
    bytes_per_value = 4 if precision.dtype_name == "float32" else 2
    needed = training_bytes(shape, micro_batch_tokens(cfg), bytes_per_value, cfg.finetuning_type == "full")
    budget = HEADROOM * device_memory(precision.device)
    logger.info(
        "gradient_checkpointing auto: %.1f GiB estimated for a micro-batch of %d tokens, %.1f GiB budget on %s: %s",
        needed / 2**30,
        micro_batch_tokens(cfg),
        budget / 2**30,
        precision.device,
        "on" if needed > budget else "off",
    )
    return needed > budget


def model_shape(cfg: SftConfig) -> Shape | None:
    """The model's shape from its config alone (no weights), or None where it cannot be read."""
    from transformers import AutoConfig

    try:
        return Shape.of(
            AutoConfig.from_pretrained(resolve_model(cfg.model_name_or_path), trust_remote_code=cfg.trust_remote_code)
        )
    except Exception:  # noqa: BLE001 - an unreadable config is reported, better worded, by the model loading
        return None
