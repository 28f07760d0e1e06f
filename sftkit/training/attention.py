"""Attention over packed rows that never builds a dense mask: each packed example attends only to itself.

A packed row of 4,096 tokens holding a dozen examples needs attention only inside each example, but sdpa
with the block-diagonal mask transformers builds from `position_ids` computes every one of the 4,096 x
4,096 pairs (and a batch x seq x seq mask): its flash kernel cannot take a mask. At load, packed training
swaps that for a kernel that skips the masked pairs, picked by `use_document_attention`:

- flash-attention 2/3 (`flash_attn: fa2`/`fa3`, or auto where flash-attn is installed on a GPU): its
  variable-length kernel, fed `position_ids` (cu_seqlens) by TRL's padding-free collator, which flattens
  the batch into one row (`varlen_attention`), as TRL's padding-free training does;
- on a GPU without flash-attn (auto): PyTorch's `flex_attention`, whose block mask transformers builds
  once per forward from the document ids that `position_ids` restarts give (`masking_utils`): fully
  masked blocks are skipped, not computed;
- on a CPU, and for an explicit `flash_attn: sdpa`: `packed_sdpa`, causal sdpa on each example alone
  (cut where position_ids restart). A CPU has no flex backward (torch 2.13 raises on it), and there the
  quadratic term was about two thirds of an ERNIE-4.5-0.3B step at cutoff_len 4096.

Anything that is not a packed row (no restart, a KV cache, a single query) goes to transformers' own
kernel with its mask, unchanged: generation is untouched. `flash_attn: disabled` (eager) is left as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sftkit.errors import SftkitError
from sftkit.model import causal_lm_of

if TYPE_CHECKING:
    import torch

PACKED_SDPA = "sftkit_packed_sdpa"
FLEX = "flex_attention"
VARLEN = ("flash_attention_2", "flash_attention_3")  # transformers' names of the flash-attention kernels


def use_document_attention(model: Any, flash_attn: str, device: str) -> str | None:
    """Makes a model that trains on packed rows attend per document; returns the kernel set, or None.

    Args:
        model: a transformers causal LM, or a PEFT model around one (loaded, not yet on `device`).
        flash_attn: the config's value (auto picks flex_attention on a GPU).
        device: the training device ("cuda", "cpu", ...).

    Raises:
        SftkitError: flash_attn: flex on a CPU, where flex_attention has no backward.
    """
    lm = causal_lm_of(model)
    kernel = lm.config._attn_implementation
    if kernel == FLEX and device == "cpu":
        raise SftkitError(
            "flash_attn: flex cannot train on a CPU (PyTorch's flex_attention has no CPU backward); "
            "use flash_attn: auto or sdpa"
        )
    if kernel not in ("sdpa", PACKED_SDPA):  # flash varlen and flex mask per document already; eager as asked
        return None
    chosen = FLEX if flash_attn == "auto" and device == "cuda" else PACKED_SDPA
    if chosen == PACKED_SDPA:
        _register()
    lm.set_attn_implementation(chosen)
    return chosen


def varlen_attention(model: Any) -> bool:
    """Whether the model runs flash-attention, whose varlen kernel wants the batch flattened into one row."""
    return causal_lm_of(model).config._attn_implementation in VARLEN


def _register() -> None:
    """Registers the attention function and its mask function (transformers' two hooks)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED_SDPA, packed_sdpa)
    AttentionMaskInterface.register(PACKED_SDPA, document_mask)


def document_mask(
    *,
    attention_mask: torch.Tensor | None = None,
    local_size: int | None = None,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    **kwargs: Any,
) -> torch.Tensor | None:
    """sdpa's mask, but none for a full-causal forward without a padding mask and without a cache.

    That is every packed training row: `packed_sdpa` cuts it into examples by position_ids, and a row of
    one example is plain causal (sdpa's is_causal), so the batch x seq x seq block-diagonal mask sdpa_mask
    would build is never needed. A padding mask, a KV cache or a sliding window gets sdpa's own mask.
    """
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and local_size is None and q_offset == 0 and q_length == kv_length:
        return None
    return sdpa_mask(
        attention_mask=attention_mask,
        local_size=local_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        **kwargs,
    )


def packed_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function interface: causal sdpa per packed example, else plain sdpa.

    Shapes: query `(batch, heads, seq, dim)`, key/value `(batch, kv_heads, seq, dim)`; returns
    `(batch, seq, heads, dim)` as every transformers attention function does.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    spans = example_spans(kwargs.get("position_ids"), query, key)
    if spans is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    rows = []
    for row, row_spans in enumerate(spans):
        parts = [
            sdpa_attention_forward(
                module,
                query[row : row + 1, :, start:end],
                key[row : row + 1, :, start:end],
                value[row : row + 1, :, start:end],
                None,
                is_causal=True,
                **kwargs,
            )[0]
            for start, end in row_spans
        ]
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows, dim=0), None


def example_spans(
    position_ids: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor
) -> list[list[tuple[int, int]]] | None:
    """(start, end) of each packed example per row, or None when no row is packed.

    An example starts where position_ids fall back to 0. A run of zeros is padding (each pad its own
    "example"): it joins the run's first token, which only changes outputs at untrained positions.
    """
    seq = query.shape[2]
    if position_ids is None or seq == 1 or key.shape[2] != seq:
        return None
    positions = position_ids.expand(query.shape[0], -1).tolist()
    spans = [_row_spans(row) for row in positions]
    return spans if any(len(row) > 1 for row in spans) else None


def _row_spans(positions: list[int]) -> list[tuple[int, int]]:
    starts = [i for i, p in enumerate(positions) if p == 0 and (i == 0 or positions[i - 1] != 0)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    return list(zip(starts, starts[1:] + [len(positions)]))
