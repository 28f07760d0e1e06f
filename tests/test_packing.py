"""Packing: efficiency from TRL's own bfd packer, and packed examples never seeing each other."""

from __future__ import annotations

import pytest

from sftkit.data.masking import IGNORE_INDEX, encode_conversation
from sftkit.data.packing import packing_efficiency
from sftkit.templates import get_template, prepare_tokenizer

CONVERSATIONS = [
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "the answer is 4."},
    ],
    [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello there, how can I help?"},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ],
    [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "yes"}],
]


@pytest.mark.parametrize(
    "lengths, seq_length, expected",
    [
        ([5, 3, 2, 6, 4], 8, 20 / 24),  # best fit decreasing: [6, 2], [5, 3], [4]
        ([8, 8], 8, 1.0),
        ([3], 8, 3 / 8),
        ([12, 4], 8, 12 / 16),  # TRL cuts the 12 to 8 tokens: [8], [4]
        ([0, 2, 2], 4, 1.0),  # empty rows are skipped
        ([], 8, 0.0),
    ],
)
def test_packing_efficiency_by_hand(lengths: list[int], seq_length: int, expected: float) -> None:
    assert packing_efficiency(lengths, seq_length) == pytest.approx(expected)


@pytest.fixture(scope="module")
def packed_setup(tiny_model_dir):
    """The tiny model (fp32, sdpa, eval) and three encoded chatml rows."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    template = get_template("chatml")
    prepare_tokenizer(tokenizer, template)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    rows = [encode_conversation(tokenizer, template, messages, None, 256) for messages in CONVERSATIONS]
    return model.eval(), tokenizer, rows


def token_losses(logits, labels):
    """Cross-entropy of every trained token (labels[t] predicted from position t-1), in order."""
    import torch.nn.functional as F

    losses = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=IGNORE_INDEX, reduction="none")
    return losses[labels[0, 1:] != IGNORE_INDEX]


def pack_and_collate(rows, tokenizer):
    """Packs the rows with TRL's bfd packer into one sequence and collates it as SFTTrainer does."""
    from datasets import Dataset
    from trl.data_utils import pack_dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    dataset = Dataset.from_dict(
        {
            "input_ids": [row.input_ids for row in rows],
            "labels": [row.labels for row in rows],
            "row": [[i] * len(row.input_ids) for i, row in enumerate(rows)],
        }
    )
    packed = pack_dataset(dataset, seq_length=sum(len(row.input_ids) for row in rows), strategy="bfd")
    assert len(packed) == 1 and len(packed[0]["seq_lengths"]) == len(rows)
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
    return collator([packed[0]]), packed[0]["row"]


def per_row_losses(model, batch, row_of_token, n_rows: int, **overrides):
    """Each row's trained-token losses, read off one forward pass over the packed batch.

    The model gets the batch as SFTTrainer.compute_loss passes it: every collated key and
    use_cache=False (with a cache, transformers does not look for packed sequences in position_ids).
    """
    import torch

    inputs = {key: value for key, value in batch.items() if key != "labels"} | {"use_cache": False} | overrides
    with torch.no_grad():
        logits = model(**inputs).logits
    labels, owner = batch["labels"], torch.tensor(row_of_token)
    losses = []
    for i in range(n_rows):
        mine = labels.clone()
        mine[0, owner != i] = IGNORE_INDEX
        losses.append(token_losses(logits, mine))
    return losses


def alone_losses(model, row):
    import torch

    input_ids, labels = torch.tensor([row.input_ids]), torch.tensor([row.labels])
    with torch.no_grad():
        return token_losses(model(input_ids=input_ids).logits, labels)


def test_packed_rows_have_the_same_losses_as_alone(packed_setup) -> None:
    import torch

    model, tokenizer, rows = packed_setup
    batch, row_of_token = pack_and_collate(rows, tokenizer)
    assert "attention_mask" not in batch and batch["position_ids"][0].tolist().count(0) == len(rows)
    for i, packed in enumerate(per_row_losses(model, batch, row_of_token, len(rows))):
        alone = alone_losses(model, rows[i])
        assert len(packed) == sum(label != IGNORE_INDEX for label in rows[i].labels) > 0
        torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)


def test_naive_concatenation_leaks_between_rows(packed_setup) -> None:
    import torch

    model, tokenizer, rows = packed_setup
    batch, row_of_token = pack_and_collate(rows, tokenizer)
    positions = torch.arange(batch["input_ids"].shape[1])[None]  # one sequence: no restart, no boundaries
    naive = {key: value for key, value in batch.items() if key in ("input_ids", "labels")}
    losses = per_row_losses(model, naive, row_of_token, len(rows), position_ids=positions)
    first_row = row_of_token[0]
    later = [i for i in range(len(rows)) if i != first_row]
    assert all(not torch.allclose(losses[i], alone_losses(model, rows[i]), atol=1e-3) for i in later)
    # the row packed first sees nothing before it either way
    torch.testing.assert_close(losses[first_row], alone_losses(model, rows[first_row]), atol=1e-5, rtol=0)


def test_efficiency_of_encoded_rows_matches_trl(packed_setup) -> None:
    _, tokenizer, rows = packed_setup
    _, row_of_token = pack_and_collate(rows, tokenizer)
    total = len(row_of_token)
    assert packing_efficiency([len(row.input_ids) for row in rows], total) == 1.0
    assert packing_efficiency([len(row.input_ids) for row in rows], total + 10) == pytest.approx(total / (total + 10))


def test_efficiency_at_a_huge_cutoff_len_allocates_nothing_by_it() -> None:
    """TRL's packer sizes a table by its sequence length (17 GB at 10^9); the efficiency never asks it to."""
    import resource
    import time

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    assert packing_efficiency([3, 5, 2], 10**9) == pytest.approx(10 / 10**9)
    assert time.perf_counter() - start < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KB: far below 17 GB
    assert packing_efficiency([3, 5, 2, 9], 10) == pytest.approx(19 / 20)
