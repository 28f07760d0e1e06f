"""Per-example attention on packed rows gives the same outputs and gradients as sdpa with its mask."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sftkit.training.attention import PACKED_SDPA, example_spans, use_packed_attention


def _model(model_dir: Path, packed: bool) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    if packed:
        assert use_packed_attention(model)
        assert model.config._attn_implementation == PACKED_SDPA
    return model


def _batch() -> dict[str, torch.Tensor]:
    """Row 0 packs three examples; row 1 holds one example and three pads (position 0, label -100)."""
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 500, (2, 20), generator=gen)
    position_ids = torch.stack([torch.cat([torch.arange(8), torch.arange(7), torch.arange(5)]),
                                torch.cat([torch.arange(17), torch.zeros(3, dtype=torch.long)])])
    labels = input_ids.clone()
    labels[position_ids == 0] = -100
    labels[1, 17:] = -100
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels, "use_cache": False}


def _loss_grads_logits(model: torch.nn.Module, batch: dict) -> tuple:
    out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.loss.detach(), grads, out.logits.detach()


def test_same_loss_gradients_and_logits_as_masked_sdpa(tiny_model_dir: Path) -> None:
    batch = _batch()
    ref_loss, ref_grads, ref_logits = _loss_grads_logits(_model(tiny_model_dir, packed=False), batch)
    loss, grads, logits = _loss_grads_logits(_model(tiny_model_dir, packed=True), batch)
    torch.testing.assert_close(loss, ref_loss)
    real = batch["labels"] != -100  # pads are merged into one span: only their own outputs may differ
    torch.testing.assert_close(logits[real], ref_logits[real], rtol=1e-4, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-3, atol=1e-5, msg=name)


def test_packing_matters_to_the_reference(tiny_model_dir: Path) -> None:
    # Guards the test above: attending across examples would change the loss.
    model = _model(tiny_model_dir, packed=True)
    batch = _batch()
    across = model(**batch | {"position_ids": torch.arange(20).repeat(2, 1)}).loss
    assert not torch.allclose(across, model(**batch).loss)


def test_generation_is_unchanged(tiny_model_dir: Path) -> None:
    prompt = _batch()["input_ids"][:1, :6]
    kwargs = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    expected = _model(tiny_model_dir, packed=False).generate(prompt, **kwargs)
    torch.testing.assert_close(_model(tiny_model_dir, packed=True).generate(prompt, **kwargs), expected)


@pytest.mark.parametrize(("positions", "spans"), [
    ([0, 1, 2, 0, 1, 0, 1, 2], [(0, 3), (3, 5), (5, 8)]),
    ([0, 1, 2, 3, 0, 0, 0], [(0, 4), (4, 7)]),
])
def test_example_spans_cut_where_positions_restart(positions: list[int], spans: list[tuple[int, int]]) -> None:
    query = torch.zeros(1, 1, len(positions), 4)
    assert example_spans(torch.tensor([positions]), query, query) == [spans]


def test_unpacked_rows_and_decoding_fall_back_to_sdpa() -> None:
    query = torch.zeros(1, 1, 5, 4)
    assert example_spans(torch.arange(5)[None], query, query) is None
    assert example_spans(None, query, query) is None
    assert example_spans(torch.tensor([[0, 1, 0, 1, 2]]), query, torch.zeros(1, 1, 9, 4)) is None  # a KV cache
