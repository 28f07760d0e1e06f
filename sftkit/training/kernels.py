"""Fused kernels for training, applied as the model is loaded: Liger's RMSNorm and SwiGLU, torch.compile.

Liger ships per-architecture patches (`apply_liger_kernel_to_llama`, ...) but none for ERNIE-4.5, so
`enable_liger_kernel` alone (transformers' Trainer hook) changes nothing in an ERNIE model but the loss.
ERNIE's RMSNorm is Llama's (float32 statistics, cast back to the input dtype, then the weight: Liger's
"llama" casting mode) and its MLP is SwiGLU with gate/up/down projections, so Liger's RMSNorm and
SiLU-multiply kernels apply to them as they are. Its RoPE is interleaved (even/odd pairs), not Llama's
half-split rotation, so Liger's Llama RoPE kernel would rotate the wrong pairs and is not used. The
fused linear cross-entropy is the loss's business (`sftkit.training.loss`, chosen in the trainer).

Modules are matched by what they compute, not by class name, so any Llama-like model gets the same:
an RMSNorm (`weight` + `variance_epsilon`, no bias) and an MLP with `gate_proj`/`up_proj`/`down_proj`
and a SiLU activation. The MLP keeps its Linear layers (LoRA wraps them); only the activation and the
product run fused. Liger needs Triton and a GPU: elsewhere the model is left unchanged (the trainer's
arguments already log why).

`torch_compile` compiles each decoder layer in place (`nn.Module.compile`): the layers are the repeated
hot path, while the loss and the embedding stay eager, so a graph break in either costs nothing and
the compile time is one layer's (every layer shares the compiled code).
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

from sftkit.model import causal_lm_of
from sftkit.training.loss import liger_available

if TYPE_CHECKING:
    from torch import nn


def liger_usable(device: str) -> bool:
    """Whether Liger's Triton kernels can run here: the package installed and a CUDA device."""
    return device == "cuda" and liger_available()


def apply_liger_kernels(model: nn.Module) -> dict[str, int]:
    """Swaps every RMSNorm for Liger's and fuses every SwiGLU MLP's activation; returns the counts.

    The RMSNorm weights are shared, not copied, so state-dict keys and checkpoints are unchanged.
    """
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction
    from liger_kernel.transformers.rms_norm import LigerRMSNorm

    counts = {"rms_norm": 0, "swiglu": 0}
    for parent in list(causal_lm_of(model).modules()):
        for name, child in list(parent.named_children()):
            if is_rms_norm(child):
                fused = LigerRMSNorm(
                    child.weight.shape[0], eps=child.variance_epsilon, casting_mode="llama", in_place=False
                )
                fused.weight = child.weight
                setattr(parent, name, fused)
                counts["rms_norm"] += 1
            elif is_swiglu_mlp(child):
                child.forward = types.MethodType(_fused_swiglu_forward(LigerSiLUMulFunction), child)
                counts["swiglu"] += 1
    return counts


def is_rms_norm(module: nn.Module) -> bool:
    """A Llama-style RMSNorm: a weight, an epsilon, no bias, no offset (Gemma's 1 + weight is another kernel)."""
    return (
        type(module).__name__.endswith("RMSNorm")
        and hasattr(module, "variance_epsilon")
        and getattr(module, "bias", None) is None
        and not hasattr(module, "offset")
    )


def is_swiglu_mlp(module: nn.Module) -> bool:
    """An MLP computing down(silu(gate(x)) * up(x)) (transformers' SiLUActivation, or torch's SiLU)."""
    import torch
    from transformers.activations import SiLUActivation

    return all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj")) and isinstance(
        getattr(module, "act_fn", None), (SiLUActivation, torch.nn.SiLU)
    )


def _fused_swiglu_forward(silu_mul: Any) -> Any:
    def forward(self: nn.Module, x: Any) -> Any:
        return self.down_proj(silu_mul.apply(self.gate_proj(x), self.up_proj(x)))

    return forward


def compile_decoder_layers(model: nn.Module, backend: str = "inductor") -> int:
    """Compiles each decoder layer in place (`nn.Module.compile`); returns how many.

    `dynamic=None` lets torch.compile specialise on the first shape and mark lengths dynamic when a
    second one comes (packed rows vary in length), instead of recompiling for every length.
    """
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(backend=backend, dynamic=None)
    return len(layers)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated decoder blocks of a causal LM (`model.model.layers` in transformers' decoder models)."""
    decoder = causal_lm_of(model).get_decoder()
    layers = getattr(decoder, "layers", None)
    return list(layers) if layers is not None else []


def apply_kernels(model: nn.Module, enable_liger_kernel: bool, torch_compile: bool, device: str) -> list[str]:
    """The load-time kernel changes the config asks for; returns one note per change made (for the log).

    Liger is skipped where it cannot run (no GPU or no liger-kernel: the trainer's arguments say so).
    Compiling comes last, so it traces the modules as they will train (LoRA layers injected or not).
    """
    notes = []
    if enable_liger_kernel and liger_usable(device):
        counts = apply_liger_kernels(model)
        notes.append(f"Liger kernels: {counts['rms_norm']} RMSNorm, {counts['swiglu']} SwiGLU")
    if torch_compile:
        notes.append(f"torch.compile: {compile_decoder_layers(model)} decoder layers")
    return notes
