"""scripts/sft_from_scratch.py: the plain-PyTorch SFT computes the loss `sftkit train` computes, on the same rows."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sftkit.config import validate_config
from sftkit.data.masking import encode_conversation
from sftkit.templates import get_template, prepare_tokenizer
from sftkit.training import train

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import sft_from_scratch as scratch  # noqa: E402

ROWS = 8


@pytest.fixture(scope="module", autouse=True)
def _private_datasets_cache(tmp_path_factory: pytest.TempPathFactory):
    import datasets

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf-cache")))
        yield


def test_its_labels_are_sftkits(tiny_model_dir: Path) -> None:
    _, tokenizer = scratch.load(tiny_model_dir)
    template = get_template("chatml")
    prepare_tokenizer(tokenizer, template)
    for messages in scratch.alpaca_conversations(REPO / "data" / "demo_alpaca.json", ROWS):
        row = encode_conversation(tokenizer, template, messages, None, cutoff_len=4096)
        assert scratch.tokenize(tokenizer, messages) == (row.input_ids, row.labels)


def test_first_step_loss_equals_sftkit_trains(tiny_model_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = scratch.load(tiny_model_dir, seed=42)
    rows = [
        scratch.tokenize(tokenizer, m) for m in scratch.alpaca_conversations(REPO / "data" / "demo_alpaca.json", ROWS)
    ]
    (batch,) = scratch.pack(rows, max_tokens=4096)
    ours = float(scratch.loss_of(model, batch))

    cfg = validate_config(
        {
            "model_name_or_path": str(tiny_model_dir),
            "dataset": "demo_alpaca",
            "dataset_dir": str(REPO / "data"),
            "max_samples": ROWS,
            "template": "chatml",
            "cutoff_len": 4096,
            "packing": True,
            "finetuning_type": "full",
            "seed": 42,
            "per_device_train_batch_size": ROWS,
            "max_steps": 1,
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": "none",
            "plot_loss": False,
            "output_dir": str(tmp_path / "run"),
        }
    )
    out = train(cfg)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert ours == pytest.approx(history[0]["loss"], rel=1e-3, abs=1e-3)


@pytest.mark.integration  # a subprocess that trains for its whole length
def test_the_script_runs_in_under_a_minute(tiny_model_dir: Path) -> None:
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "sft_from_scratch.py"), str(tiny_model_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert time.perf_counter() - started < 60
    losses = [float(line.split("loss ")[1].split()[0]) for line in run.stdout.splitlines() if "loss" in line]
    assert losses[-1] < losses[0] / 2 and "What colour is snow?" in run.stdout
