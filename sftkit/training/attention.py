"""Per-example attention for packed rows on a CPU: the masked-out work of a packed row is never done.

A packed row of 4,096 tokens holding a dozen examples needs attention only inside each example, but sdpa
with the block-diagonal mask transformers builds from `position_ids` still computes every one of the
4,096 x 4,096 pairs. On a CPU that quadratic term is most of a training step at cutoff_len 4096 (about two
thirds on the ERNIE-4.5-0.3B shape). `packed_sdpa` cuts each row where its position_ids restart and runs
causal sdpa on each example alone; the result is the same attention. Anything else (no restart, a KV
cache, a single query) goes to transformers' own sdpa with its mask, unchanged.

GPUs keep sdpa, or better flash-attention 2 (`flash_attn: fa2`), whose variable-length kernel already
skips the masked pairs; a Python loop over examples would only add launch overhead there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sftkit.model import causal_lm_of

if TYPE_CHECKING:
    import torch

PACKED_SDPA = "sftkit_packed_sdpa"


def use_packed_attention(model: Any) -> bool:
    """Switches a CPU model that uses sdpa to `packed_sdpa`; True when it did.

    Args:
        model: a transformers causal LM, or a PEFT model around one.
    """
    lm = causal_lm_of(model)
    if lm.config._attn_implementation not in ("sdpa", PACKED_SDPA) or lm.device.type != "cpu":
        return False
    _register()
    lm.set_attn_implementation(PACKED_SDPA)
    return True


def _register() -> None:
    """Registers the attention function, with sdpa's own mask for the calls it hands back to sdpa."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_SDPA, packed_sdpa)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)


def packed_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
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
        parts = [sdpa_attention_forward(module, query[row:row + 1, :, start:end], key[row:row + 1, :, start:end],
                                        value[row:row + 1, :, start:end], None, is_causal=True, **kwargs)[0]
                 for start, end in row_spans]
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows, dim=0), None


def example_spans(position_ids: torch.Tensor | None, query: torch.Tensor,
                  key: torch.Tensor) -> list[list[tuple[int, int]]] | None:
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
