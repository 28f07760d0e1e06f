"""The chunked cross-entropy equals the model's own loss, in value and in every gradient."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sftkit.training.loss import LossSettings, add_chunked_loss, chunked_cross_entropy, chunked_loss

VOCAB_IN_USE = 500  # the tiny tokenizer's ids all lie below this


def _model(model_dir: Path, lora: bool = False, trainable_tokens: list[int] | None = None) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if lora or trainable_tokens:
        config = LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules="all-linear",
            init_lora_weights=False,
            trainable_token_indices=trainable_tokens,
        )
        model = get_peft_model(model, config)
    add_chunked_loss(model)
    return model


def _packed_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Two rows, the first packing three sequences (TRL's padding-free layout), prompts masked with -100."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB_IN_USE, (2, 24), generator=gen)
    position_ids = torch.cat([torch.arange(10), torch.arange(8), torch.arange(6)]).repeat(2, 1)
    position_ids[1] = torch.arange(24)
    labels = input_ids.clone()
    labels[:, :3] = -100
    labels[0, 10:13] = -100
    labels[position_ids == 0] = -100  # as TRL's collator: no position predicts across a boundary
    # Without a cache the model derives the block-diagonal packing mask from position_ids (as TRL calls it).
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "use_cache": False}


def chunked(model: torch.nn.Module, batch: dict, loss_chunk_size: int, loss_variant=None, **kwargs) -> Any:
    """The model's forward with the chunked loss on, as SftkitTrainer.compute_loss calls it."""
    with chunked_loss(model, LossSettings(loss_chunk_size, variant=loss_variant)):
        return model(**batch, **kwargs)


def _loss_and_grads(
    model: torch.nn.Module, batch: dict, loss_chunk_size: int = 0, **kwargs
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = (chunked(model, batch, loss_chunk_size, **kwargs) if loss_chunk_size else model(**batch, **kwargs)).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def _assert_same(reference: tuple, chunked: tuple) -> None:
    (ref_loss, ref_grads), (loss, grads) = reference, chunked
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_loss_and_gradients_equal_the_models_own(tiny_model_dir: Path, chunk_size: int) -> None:
    model = _model(tiny_model_dir)
    batch = _packed_batch()
    reference = _loss_and_grads(model, batch)
    assert any(g.abs().sum() > 0 for g in reference[1].values())
    _assert_same(reference, _loss_and_grads(model, batch, loss_chunk_size=chunk_size))


def test_equal_with_lora(tiny_model_dir: Path) -> None:
    model = _model(tiny_model_dir, lora=True)
    batch = _packed_batch(seed=1)
    reference = _loss_and_grads(model, batch)
    assert any("lora_" in name for name in reference[1])
    _assert_same(reference, _loss_and_grads(model, batch, loss_chunk_size=5))


def test_trainable_token_rows_get_gradients_through_the_tied_head(tiny_model_dir: Path) -> None:
    # The input ids avoid the trainable rows, so their only gradient comes through the output head.
    model = _model(tiny_model_dir, trainable_tokens=[VOCAB_IN_USE + 1, VOCAB_IN_USE + 2])
    batch = _packed_batch(seed=2)
    reference = _loss_and_grads(model, batch)
    token_grads = {n: g for n, g in reference[1].items() if "trainable_tokens" in n}
    assert token_grads and all(g.abs().sum() > 0 for g in token_grads.values())
    _assert_same(reference, _loss_and_grads(model, batch, loss_chunk_size=6))


def test_num_items_in_batch_divides_the_summed_loss(tiny_model_dir: Path) -> None:
    # Gradient accumulation: each micro-batch's sum over the whole accumulated batch's trained tokens.
    model = _model(tiny_model_dir)
    batch = _packed_batch(seed=3)
    reference = _loss_and_grads(model, batch, num_items_in_batch=100)
    _assert_same(reference, _loss_and_grads(model, batch, loss_chunk_size=8, num_items_in_batch=100))
    trained = int((batch["labels"][:, 1:] != -100).sum())
    mean = chunked(model, batch, loss_chunk_size=8).loss
    torch.testing.assert_close(reference[0], mean.detach() * trained / 100)


def test_counts_trained_tokens_and_correct_predictions(tiny_model_dir: Path) -> None:
    model = _model(tiny_model_dir)
    batch = _packed_batch(seed=4)
    # Teach the labels to be the argmax at a few positions: the count must see them.
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    labels = batch["labels"].clone()
    labels[0, 5:9] = logits[0, 4:8].argmax(-1)
    out = chunked(model, batch | {"labels": labels}, loss_chunk_size=3)
    mask = labels[:, 1:] != -100
    expected = (logits[:, :-1].argmax(-1) == labels[:, 1:])[mask].sum()
    assert out.num_trained == int(mask.sum())
    assert int(out.num_correct) == int(expected) >= 4


def test_batch_without_trained_tokens_gives_a_zero_that_backpropagates(tiny_model_dir: Path) -> None:
    model = _model(tiny_model_dir, lora=True)
    batch = _packed_batch() | {"labels": torch.full((2, 24), -100)}
    out = chunked(model, batch, loss_chunk_size=4)
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.num_trained == 0


def test_forward_is_unchanged_without_the_flag(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    batch = _packed_batch()
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    patched = _model(tiny_model_dir)
    add_chunked_loss(patched)  # twice is harmless
    torch.testing.assert_close(patched(**batch).logits, plain(**batch).logits)
    assert chunked(patched, batch, loss_chunk_size=4).num_trained > 0
    torch.testing.assert_close(patched(**batch).logits, plain(**batch).logits)  # the block's settings end with it
    generated = patched.generate(batch["input_ids"][:1, :5], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 8)


def test_shifted_labels_are_not_shifted_again() -> None:
    head = torch.nn.Linear(8, 11, bias=False)
    hidden = torch.randn(1, 6, 8)
    labels = torch.tensor([[-100, 3, 4, 5, 6, 7]])
    shifted = torch.tensor([[3, 4, 5, 6, 7, -100]])
    a = chunked_cross_entropy(head, hidden, labels, chunk_size=2).loss
    b = chunked_cross_entropy(head, hidden, shifted, chunk_size=2, shifted=True).loss
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------- LLaMA-Factory's loss variants
# References written from LLaMA-Factory's definitions (train/trainer_utils.py: dft_loss_func, eaft_loss_func,
# asft_loss_func), on full fp32 logits of the shifted sequence; the chunked versions must match them.


def _shifted(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
    labels = batch["labels"]
    mask = labels[:, 1:] != -100
    return logits[:, :-1][mask], labels[:, 1:][mask]


def _reference_loss(
    kind: str,
    alpha: float,
    logits: torch.Tensor,
    targets: torch.Tensor,
    ref_logits: torch.Tensor | None = None,
    num_items: int | None = None,
) -> torch.Tensor:
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, targets, reduction="none")
    if kind in ("dft", "asft"):
        weight = torch.exp(-ce).detach()
    else:
        top = logits.detach().topk(20, dim=-1).values
        log_p = top - torch.logsumexp(top, dim=-1, keepdim=True)
        weight = torch.pow(-(log_p.exp() * log_p).sum(-1) / 3.0, alpha)
    loss = (ce * weight).sum()
    if kind == "asft":
        kl = F.kl_div(F.log_softmax(logits, -1), F.softmax(ref_logits, -1), reduction="none").sum(-1)
        loss = loss + alpha * kl.sum()
    return loss / (num_items or targets.numel())


def _variant_grads(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize(
    "kind,alpha,num_items", [("dft", 1.0, None), ("eaft", 1.0, None), ("eaft", 0.5, 90), ("dft", 1.0, 90)]
)
def test_dft_and_eaft_equal_their_definitions(
    tiny_model_dir: Path, kind: str, alpha: float, num_items: int | None
) -> None:
    from sftkit.training.loss import LossVariant

    model = _model(tiny_model_dir, lora=True)
    batch = _packed_batch(seed=5)
    logits, targets = _shifted(model, batch)
    reference = _reference_loss(kind, alpha, logits, targets, num_items=num_items)
    ref_grads = _variant_grads(model, reference)
    out = chunked(model, batch, loss_chunk_size=5, loss_variant=LossVariant(kind, alpha), num_items_in_batch=num_items)
    grads = _variant_grads(model, out.loss)
    torch.testing.assert_close(out.loss.detach(), reference.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out.loss.detach(), chunked(model, batch, loss_chunk_size=5).loss.detach())  # not plain CE
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_asft_equals_dft_plus_kl_to_the_model_without_its_adapter(tiny_model_dir: Path) -> None:
    from sftkit.training.loss import loss_variant_for

    model = _model(tiny_model_dir, lora=True)  # init_lora_weights=False: the adapter already moves the model
    batch = _packed_batch(seed=6)
    with torch.no_grad(), model.disable_adapter():
        ref_logits, _ = _shifted(model, batch)
    logits, targets = _shifted(model, batch)
    reference = _reference_loss("asft", 0.3, logits, targets, ref_logits)
    ref_grads = _variant_grads(model, reference)
    variant = loss_variant_for("asft", 0.3, model)
    out = chunked(model, batch, loss_chunk_size=7, loss_variant=variant)
    grads = _variant_grads(model, out.loss)
    torch.testing.assert_close(out.loss.detach(), reference.detach(), rtol=1e-5, atol=1e-6)
    dft = chunked(model, batch, loss_chunk_size=7, loss_variant=loss_variant_for("dft", 1.0, model)).loss
    assert out.loss.item() > dft.item()  # the KL term is there, and positive
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_asft_reference_of_a_full_model_is_frozen_at_the_start(tiny_model_dir: Path) -> None:
    from sftkit.training.loss import FrozenCopy, loss_variant_for

    model = _model(tiny_model_dir)
    variant = loss_variant_for("asft", 1.0, model)
    assert isinstance(variant.reference, FrozenCopy)
    batch = _packed_batch(seed=7)
    dft = chunked(model, batch, loss_chunk_size=4, loss_variant=loss_variant_for("dft", 1.0, model)).loss
    same = chunked(model, batch, loss_chunk_size=4, loss_variant=variant).loss
    torch.testing.assert_close(same, dft)  # KL(model || itself) = 0 before any update
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(1.5)
    moved = chunked(model, batch, loss_chunk_size=4, loss_variant=variant).loss
    assert (
        moved.item()
        > chunked(model, batch, loss_chunk_size=4, loss_variant=loss_variant_for("dft", 1.0, model)).loss.item()
    )
