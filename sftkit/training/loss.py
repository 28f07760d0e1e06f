"""Chunked causal-LM cross-entropy: the loss without full-sequence float32 logits.

A model's own loss builds `(tokens, vocab)` logits and upcasts them to float32: at ERNIE-4.5's 103,424-token
vocabulary that is 1.7 GB per 4,096 tokens, several times over once softmax and its gradient exist. Here the
decoder runs once, only the positions that are trained are kept, and the output head runs on chunks of them
under activation checkpointing, so at most one chunk's logits are alive and backward recomputes them.

`add_chunked_loss(model)` patches a causal LM so that, inside `with chunked_loss(model, LossSettings(n))`,
`model(**batch)` returns this loss; the call itself carries no argument a model signature lacks.
LLaMA-Factory's SFT loss variants are computed in the same chunks (`LossSettings(n, variant=...)`):
DFT weights each token's cross-entropy by the model's detached probability of it, EAFT by (entropy of the
top-20 logits / 3) ^ alpha, and ASFT adds alpha x KL(reference || model) to DFT, the reference being the
model as training began (`AdapterOff`, `FrozenCopy`). Their sums are divided like the plain loss, by the
accumulated batch's trained tokens. The
patch and its settings sit on the model itself, so the call goes through PEFT, DDP, FSDP or DeepSpeed wrappers
unchanged; outside `chunked_loss` the model's forward is the original one.

Why not TRL's fused LM head (trl 1.16 installs one in every SFTTrainer): measured side by side on the
ERNIE-4.5-0.3B shape (CPU, bf16, LoRA, `scripts/bench.py --methods sftkit,trl_loss`), this loss is the
faster one, because it runs the head on trained positions only and computes no per-token entropy, while
TRL's scores every position off Triton devices. Both never build full fp32 logits. Only one of the two is
ever installed: this patch replaces any forward installed on the instance before it (TRL's included)
instead of wrapping it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from sftkit.data import IGNORE_INDEX
from sftkit.model import causal_lm_of

if TYPE_CHECKING:
    import torch
    from torch import nn

# Keys of a model call that feed the loss, not the decoder.
_LOSS_KEYS = ("labels", "shift_labels", "num_items_in_batch", "logits_to_keep", "return_dict")
EAFT_TOP_K = 20  # EAFT's entropy is that of the renormalised top-k logits (LLaMA-Factory's k)
EAFT_ENTROPY_SCALE = 3.0  # and is divided by 3 before the power
# The attribute of the causal LM that holds the active LossSettings (set only inside `chunked_loss`).
_SETTINGS_ATTR = "_sftkit_loss_settings"


class Reference(Protocol):
    """ASFT's reference model: its final hidden states for a batch, and its output head on some of them."""

    def hidden_states(self, lm: nn.Module, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor: ...

    def logits(self, lm: nn.Module, hidden: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class LossVariant:
    """Which training loss the chunks compute: ce (plain), dft, eaft or asft, with its alpha.

    Attributes:
        kind: the loss.
        alpha: EAFT's exponent, or ASFT's weight of the KL term.
        reference: ASFT's reference model.
    """

    kind: Literal["ce", "dft", "eaft", "asft"] = "ce"
    alpha: float = 1.0
    reference: Reference | None = None


class AdapterOff:
    """The reference of a LoRA/OFT run: the same model with its adapter (and trainable tokens) switched off."""

    def __init__(self, peft_model: nn.Module) -> None:
        self.peft_model = peft_model

    def hidden_states(self, lm: nn.Module, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
        import torch

        with torch.no_grad(), self.peft_model.disable_adapter():
            return lm.get_decoder()(*args, **kwargs).last_hidden_state

    def logits(self, lm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.no_grad(), self.peft_model.disable_adapter():
            return lm.get_output_embeddings()(hidden)


class FrozenCopy:
    """The reference of a full/freeze run: a frozen copy of the model as training began."""

    def __init__(self, lm: nn.Module) -> None:
        self.model = copy.deepcopy(lm).eval().requires_grad_(False)

    def hidden_states(self, lm: nn.Module, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
        import torch

        device = next(lm.parameters()).device
        if next(self.model.parameters()).device != device:  # the copy was made before the trainer moved the model
            self.model.to(device)
        with torch.no_grad():
            return self.model.get_decoder()(*args, **kwargs).last_hidden_state

    def logits(self, lm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.no_grad():
            return self.model.get_output_embeddings()(hidden)


def loss_variant_for(kind: str, alpha: float, model: nn.Module) -> LossVariant | None:
    """The variant a run trains with (None for plain cross-entropy); ASFT's reference is built here, from the
    model before any update."""
    if kind == "ce":
        return None
    if kind != "asft":
        return LossVariant(kind, alpha)  # type: ignore[arg-type]
    reference = AdapterOff(model) if hasattr(model, "disable_adapter") else FrozenCopy(causal_lm_of(model))
    return LossVariant("asft", alpha, reference)


@dataclass
class ChunkedLossOutput:
    """What the chunked loss returns: the loss and, without gradient, the counts the trainer logs.

    Attributes:
        loss: summed token cross-entropy divided by `num_items_in_batch` (or by `num_trained`).
        num_correct: trained positions whose label is the argmax of the logits (token accuracy); None
            where the kernel does not count them.
        num_trained: positions with a label other than -100 in this micro-batch.
        loss_sum: the summed token cross-entropy, detached (evaluation weighs batches by their tokens).
    """

    loss: torch.Tensor
    num_correct: torch.Tensor | None
    num_trained: int
    loss_sum: torch.Tensor | None = None


def chunked_cross_entropy(
    head: nn.Module,
    hidden_states: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int,
    num_items_in_batch: int | torch.Tensor | None = None,
    shifted: bool = False,
    variant: LossVariant | None = None,
    reference: tuple[nn.Module, torch.Tensor] | None = None,
) -> ChunkedLossOutput:
    """Next-token cross-entropy of `head(hidden_states)` (or a variant of it), computed chunk by chunk.

    Args:
        head: the output-head module (called on chunks, so PEFT trainable-token rows get gradients).
        hidden_states: `(batch, seq, hidden)` final decoder states.
        labels: `(batch, seq)` token ids, -100 where not trained. Packed rows need -100 at each sequence's
            first token (TRL's collator sets it), so no position predicts across a boundary.
        chunk_size: trained positions per output-head call.
        num_items_in_batch: trained tokens across the whole accumulated batch; the summed loss is divided by it
            so gradient accumulation averages over tokens, not micro-batches. None: this batch's count.
        shifted: `labels` are already next-token labels (context parallelism passes `shift_labels`).
        variant: DFT, EAFT or ASFT instead of plain cross-entropy.
        reference: ASFT: (the causal LM, the reference's hidden states for the same batch).

    Returns:
        The loss with the counts for token accuracy.
    """
    hidden, targets = _trained_positions(hidden_states, labels, shifted)
    ref_hidden = _trained_positions(reference[1], labels, shifted)[0] if reference is not None else None
    loss_sum, num_correct = _sum_over_chunks(
        head, hidden, targets, chunk_size, variant, (reference[0], ref_hidden) if reference is not None else None
    )
    return ChunkedLossOutput(
        _divide(loss_sum, num_items_in_batch, targets.numel()), num_correct, targets.numel(), loss_sum.detach()
    )


def _divide(loss_sum: torch.Tensor, num_items_in_batch: int | torch.Tensor | None, num_trained: int) -> torch.Tensor:
    """The summed loss over the accumulated batch's trained tokens (this batch's when not given)."""
    import torch

    if num_items_in_batch is None:
        return loss_sum / max(num_trained, 1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss_sum.device)
    return loss_sum / num_items_in_batch


def _trained_positions(
    hidden_states: torch.Tensor, labels: torch.Tensor, shifted: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(trained hidden rows, their next-token targets): untrained positions never reach the head."""
    if not shifted:
        hidden_states, labels = hidden_states[:, :-1], labels[:, 1:]
    labels = labels.to(hidden_states.device)
    mask = labels != IGNORE_INDEX
    return hidden_states[mask], labels[mask]


def _sum_over_chunks(
    head: nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int,
    variant: LossVariant | None = None,
    reference: tuple[nn.Module, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and correct-prediction count over chunks of `chunk_size` rows."""
    import torch
    from torch.utils.checkpoint import checkpoint

    # A zero that stays connected to the graph, so a micro-batch without trained tokens backpropagates.
    loss_sum = hidden.sum() * 0.0
    num_correct = torch.zeros((), dtype=torch.long, device=hidden.device)
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    for start in range(0, targets.numel(), chunk_size):
        h, y = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        ref = (reference[0], reference[1][start : start + chunk_size]) if reference is not None else None
        counted: list[torch.Tensor] = []
        if recompute:
            chunk_loss = checkpoint(_chunk_loss, head, h, y, counted, variant, ref, use_reentrant=False)
        else:
            chunk_loss = _chunk_loss(head, h, y, counted, variant, ref)
        loss_sum = loss_sum + chunk_loss
        num_correct += counted[0]
    return loss_sum, num_correct


def _chunk_loss(
    head: nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    counted: list[torch.Tensor],
    variant: LossVariant | None = None,
    reference: tuple[nn.Module, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Summed float32 loss of one chunk; appends its correct count on the first run only."""
    import torch
    import torch.nn.functional as F

    logits = head(hidden).float()
    # The checkpoint re-runs this function in backward; the count is taken once, in the forward.
    if not counted:
        with torch.no_grad():
            counted.append((logits.argmax(dim=-1) == targets).sum())
    if variant is None or variant.kind == "ce":
        return F.cross_entropy(logits, targets, reduction="sum")
    token_loss = F.cross_entropy(logits, targets, reduction="none")
    loss = (token_loss * _token_weights(logits, token_loss, variant)).sum()
    if variant.kind == "asft" and reference is not None:
        lm, ref_hidden = reference
        ref_logits = variant.reference.logits(lm, ref_hidden).float()
        # KL(reference || model) per token, as F.kl_div(log p, q) sums q (log q - log p)
        kl = F.kl_div(F.log_softmax(logits, dim=-1), F.softmax(ref_logits, dim=-1), reduction="none").sum(-1)
        loss = loss + variant.alpha * kl.sum()
    return loss


def _token_weights(logits: torch.Tensor, token_loss: torch.Tensor, variant: LossVariant) -> torch.Tensor:
    """The detached per-token weights: p(target) for DFT and ASFT, EAFT's entropy term for EAFT."""
    import torch

    with torch.no_grad():
        if variant.kind in ("dft", "asft"):
            return torch.exp(-token_loss)
        top = logits.topk(min(EAFT_TOP_K, logits.shape[-1]), dim=-1).values
        log_probs = top - top.logsumexp(dim=-1, keepdim=True)
        entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
        return torch.pow(entropy / EAFT_ENTROPY_SCALE, variant.alpha)


# ---------------------------------------------------------------------------- the model patch


def liger_available() -> bool:
    """Whether Liger's fused linear cross-entropy can be imported (it needs Triton and a GPU to run)."""
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


@dataclass(frozen=True)
class LossSettings:
    """The loss the patched forward computes inside `chunked_loss`.

    Attributes:
        chunk_size: trained positions per output-head call.
        liger: Liger's fused linear cross-entropy instead of the chunks (GPU, plain Linear head).
        variant: DFT, EAFT or ASFT instead of plain cross-entropy (training only).
    """

    chunk_size: int
    liger: bool = False
    variant: LossVariant | None = None


@contextlib.contextmanager
def chunked_loss(model: nn.Module, settings: LossSettings) -> Iterator[None]:
    """Within the block, `model(**batch)` (patched by `add_chunked_loss`) returns a `ChunkedLossOutput`."""
    lm = causal_lm_of(model)
    if not has_chunked_loss(lm):
        raise RuntimeError("chunked_loss needs a model patched by add_chunked_loss")
    previous = lm.__dict__.get(_SETTINGS_ATTR)
    lm.__dict__[_SETTINGS_ATTR] = settings
    try:
        yield
    finally:
        lm.__dict__[_SETTINGS_ATTR] = previous


def add_chunked_loss(model: nn.Module) -> None:
    """Patches `model` so `model(**batch)` inside `chunked_loss` returns a `ChunkedLossOutput`.

    Outside it the forward is the model class's own, so generation and evaluation are unchanged. The patch
    is the only wrapper: it replaces a forward set on the instance before (TRL's fused head), and patching
    again is a no-op. For a PEFT model the inner causal LM is patched.

    Args:
        model: a transformers causal LM, or a PEFT model around one.
    """
    lm = causal_lm_of(model)
    if has_chunked_loss(lm):
        return
    class_forward = type(lm).forward

    # The original signature is kept, and no argument is added to it: `generate` validates its keyword
    # arguments against it, and the settings come from `chunked_loss` instead.
    @functools.wraps(class_forward)
    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        settings: LossSettings | None = self.__dict__.get(_SETTINGS_ATTR)
        if settings is None or not (settings.chunk_size or settings.liger):
            return class_forward(self, *args, **kwargs)
        return _chunked_forward(self, args, kwargs, settings.chunk_size, settings.liger, settings.variant)

    forward.sftkit_chunked_loss = True  # type: ignore[attr-defined]
    lm.forward = types.MethodType(forward, lm)


def has_chunked_loss(model: nn.Module) -> bool:
    """Whether the model's forward is this module's patch, or accelerate's mixed-precision wrapper around it.

    Full and freeze fine-tuning keep fp32 weights under autocast: `Accelerator.prepare` then wraps the instance's
    forward (keeping the one it wrapped as `_original_forward`), and the wrapper calls the patch.
    """
    lm = causal_lm_of(model)
    forwards = (lm.forward, lm.__dict__.get("_original_forward"))
    return any(getattr(forward, "sftkit_chunked_loss", False) for forward in forwards if forward is not None)


def _chunked_forward(
    lm: nn.Module, args: tuple, kwargs: dict[str, Any], chunk_size: int, liger: bool, variant: LossVariant | None = None
) -> ChunkedLossOutput:
    """The decoder on the batch, then the chunked (or Liger) loss on its final hidden states."""
    shifted = kwargs.get("shift_labels") is not None
    labels = kwargs["shift_labels"] if shifted else kwargs["labels"]
    decoder_kwargs = {key: value for key, value in kwargs.items() if key not in _LOSS_KEYS}
    decoder_kwargs["use_cache"] = False
    hidden_states = lm.get_decoder()(*args, **decoder_kwargs).last_hidden_state
    if liger:
        return liger_cross_entropy(
            lm.get_output_embeddings(),
            hidden_states,
            labels,
            num_items_in_batch=kwargs.get("num_items_in_batch"),
            shifted=shifted,
        )
    reference = None
    if variant is not None and variant.reference is not None:
        reference = (lm, variant.reference.hidden_states(lm, args, decoder_kwargs))
    return chunked_cross_entropy(
        lm.get_output_embeddings(),
        hidden_states,
        labels,
        chunk_size,
        num_items_in_batch=kwargs.get("num_items_in_batch"),
        shifted=shifted,
        variant=variant,
        reference=reference,
    )


def liger_cross_entropy(
    head: nn.Module,
    hidden_states: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    shifted: bool = False,
) -> ChunkedLossOutput:
    """`chunked_cross_entropy` computed by Liger's fused linear cross-entropy kernel (no accuracy count).

    Liger takes the raw head weight, so the head must be a plain `nn.Linear` (the trainer checks).
    """
    import torch
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    hidden, targets = _trained_positions(hidden_states, labels, shifted)
    out = LigerFusedLinearCrossEntropyLoss(reduction="sum")(head.weight, hidden, targets, head.bias)
    # Its return type changed across releases: a tensor, a tuple, or an output object with `.loss`.
    loss_sum = getattr(out, "loss", out if torch.is_tensor(out) else out[0])
    return ChunkedLossOutput(
        _divide(loss_sum, num_items_in_batch, targets.numel()), None, targets.numel(), loss_sum.detach()
    )


def perplexity(loss: float | None) -> float | None:
    """exp(loss), infinity where that overflows; None without a loss."""
    if loss is None:
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
