"""batch_tokens: a micro-batch of packed data is one row of at most batch_tokens tokens, of whole examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import make_config
from sftkit.errors import ConfigError
from sftkit.model import Precision

FP32 = Precision("float32", "cpu", "fp32 on cpu")


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"batch_tokens": 4096}, "batch_tokens: a token budget packs examples together; set packing: true"),
        ({"batch_tokens": 100, "packing": True, "cutoff_len": 512}, "batch_tokens (100) is below cutoff_len (512)"),
        (
            {"batch_tokens": 4096, "packing": True, "per_device_train_batch_size": 4},
            "per_device_train_batch_size: with batch_tokens a micro-batch is one row",
        ),
    ],
)
def test_batch_tokens_rules(keys: dict, message: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=message.replace("(", r"\(").replace(")", r"\)")):
        make_config(**keys)


def test_a_micro_batch_is_one_row_within_the_budget(
    tiny_model_dir: Path, bundled_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    from sftkit.data import load_tokenizer_and_template, prepare_data
    from sftkit.training.recipe import load_model_for_training
    from sftkit.training.trainer import build_trainer

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    cutoff, budget = 128, 1000
    cfg = make_config(
        model_name_or_path=tiny_model_dir,
        dataset="demo_alpaca",
        dataset_dir=bundled_data,
        output_dir=tmp_path / "run",
        report_to="none",
        max_samples=60,
        cutoff_len=cutoff,
        packing=True,
        batch_tokens=budget,
        max_steps=1,
    )
    tokenizer, template = load_tokenizer_and_template(cfg)
    data = prepare_data(cfg, tokenizer, template)
    model = load_model_for_training(cfg, tokenizer, template, FP32)
    trainer = build_trainer(cfg, FP32, model, tokenizer, template, data.train, None)
    lengths = [len(row) for row in trainer.train_dataset["input_ids"]]
    assert max(lengths) <= budget and max(lengths) > 2 * cutoff  # several whole examples per row
    assert sum(lengths) == sum(len(row) for row in data.train["input_ids"])  # every token, none cut
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and batch["input_ids"].shape[1] <= budget
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
    assert len(starts) > 3 and max(b - a for a, b in zip(starts, starts[1:])) <= cutoff  # examples stay whole
    trainer.train()  # and it trains: one real step through per-example attention on the long row
    assert torch.isfinite(torch.tensor(trainer.state.log_history[-1]["train_loss"]))
