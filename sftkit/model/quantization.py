"""Quantizing the frozen base while it loads (QLoRA), and what a quantized base allows.

bitsandbytes quantizes every linear layer but the output head to 4-bit (nf4/fp4) or 8-bit; the LoRA/OFT
adapters on top train in the compute dtype. bitsandbytes 0.50 runs both on the CPU as well as on GPUs.
hqq and eetq quantize through transformers where their packages are installed. Pre-quantized checkpoints
(GPTQ, AWQ, ...) need no settings here: transformers reads their config, and `sftkit.config.environment`
has already refused the ones this machine cannot load.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sftkit.config import SftConfig
    from sftkit.model.precision import Precision


def quantization_kwargs(cfg: SftConfig, precision: Precision) -> dict[str, Any]:
    """`from_pretrained` keyword arguments that quantize the base as `quantization_bit` says ({} without it)."""
    if cfg.quantization_bit is None:
        return {}
    from transformers import BitsAndBytesConfig, EetqConfig, HqqConfig

    if cfg.quantization_method == "hqq":
        config: Any = HqqConfig(nbits=cfg.quantization_bit, axis=0)  # axis 0: the ATen kernel, as LLaMA-Factory
    elif cfg.quantization_method == "eetq":
        config = EetqConfig()
    elif cfg.quantization_bit == 8:
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        # Storage in the compute dtype lets FSDP shard the packed weights like any other tensor (FSDP+QLoRA).
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=precision.dtype,
            bnb_4bit_use_double_quant=cfg.double_quantization,
            bnb_4bit_quant_type=cfg.quantization_type,
            bnb_4bit_quant_storage=precision.dtype,
        )
    # Quantized weights are placed where they compute (each launcher process on its own GPU): the trainer
    # cannot move them afterwards.
    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if precision.device == "cuda" else precision.device
    return {"quantization_config": config, "device_map": {"": device}}


def is_quantized(model: Any) -> bool:
    """Whether the (base) model's weights are quantized: loaded with quantization_bit or pre-quantized."""
    return getattr(model, "quantization_method", None) is not None or bool(getattr(model, "is_quantized", False))
