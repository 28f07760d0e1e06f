"""Precision: which dtype training and inference compute in on this machine's device."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from sftkit.config import SftConfig

logger = logging.getLogger(__name__)

# CPU features (torch.cpu.get_capabilities keys) that run bf16 matmuls natively; elsewhere bf16 is emulated.
_CPU_BF16_FEATURES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


@dataclass(frozen=True)
class Precision:
    """The dtype training computes in, on which device, and a note for the user."""

    dtype_name: str  # "bfloat16", "float16" or "float32"
    device: str  # "cuda", "mps", "xpu" or "cpu"
    note: str

    @property
    def bf16(self) -> bool:
        return self.dtype_name == "bfloat16"

    @property
    def fp16(self) -> bool:
        return self.dtype_name == "float16"

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype_name)


def resolve_precision(cfg: SftConfig) -> Precision:
    """Picks the training dtype: what the config asks for where the hardware has it, else fp32.

    The same config runs on a GPU and on a CPU without edits: a missing capability is a logged note,
    not an error.
    """
    device = _device_type()
    if cfg.bf16 and _bf16_supported(device):
        return Precision("bfloat16", device, f"bf16 mixed precision on {device}")
    if cfg.fp16 and device == "cuda":
        return Precision("float16", device, "fp16 mixed precision on cuda")
    if cfg.bf16 or cfg.fp16:
        wanted = "bf16" if cfg.bf16 else "fp16"
        note = f"{wanted} requested but this {device} does not support it: training in fp32"
        logger.warning(note)
        return Precision("float32", device, note)
    return Precision("float32", device, f"fp32 on {device}")


def _device_type() -> str:
    """The accelerator the trainer will pick, as a device type name."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "xpu"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _bf16_supported(device: str) -> bool:
    import torch

    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    if device == "xpu":
        return torch.xpu.is_bf16_supported()
    if device == "mps":
        return False  # autocast bf16 on MPS is incomplete; fp32 is the safe choice
    capabilities = torch.cpu.get_capabilities()
    return any(capabilities.get(feature, False) for feature in _CPU_BF16_FEATURES)


def inference_precision() -> Precision:
    """bf16 on a GPU that has it, else fp32 (CPU half precision is slow and less exact)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return Precision("bfloat16", "cuda", "bf16 on cuda")
    return Precision("float32", "cuda" if torch.cuda.is_available() else "cpu", "fp32")
