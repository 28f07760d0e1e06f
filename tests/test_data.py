"""The data API (prepare_data, preview, export) on the tiny tokenizer, and the data commands of the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import make_config as config_of
from sftkit.config import SftConfig
from sftkit.data import export, prepare_data, preview, render_example
from sftkit.data.loader import load_conversations
from sftkit.errors import DataError
from sftkit.templates import get_template, prepare_tokenizer

BUNDLED = "demo_alpaca,demo_sharegpt,demo_messages"
SHARED = "alpaca_en_demo,alpaca_zh_demo,identity,glaive_toolcall_en_demo"
IGNORE = -100


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tokenization caches go to a fresh folder per test, never the user's ~/.cache."""
    import datasets

    cache = tmp_path_factory.mktemp("hf-datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    return cache


def make_config(model_dir: Path, dataset_dir: Path, dataset: str = BUNDLED, **keys: Any) -> SftConfig:
    return config_of(
        **{"model_name_or_path": model_dir, "dataset": dataset, "dataset_dir": dataset_dir, "cutoff_len": 1024, **keys}
    )


def prepared_tokenizer(tokenizer: Any, template: str = "chatml") -> Any:
    prepare_tokenizer(tokenizer, get_template(template))
    return tokenizer


def trained_text(tokenizer: Any, input_ids: list[int], labels: list[int]) -> str:
    return tokenizer.decode([i for i, label in zip(input_ids, labels) if label != IGNORE], skip_special_tokens=False)


def expected_trained_text(cfg: SftConfig) -> dict[tuple[str, int], str]:
    """(dataset, index) -> the assistant-side text the template marks as trained."""
    template = get_template(cfg.template)
    conversations = load_conversations(cfg)
    rows = [*conversations.train, *(conversations.eval or [])]
    return {
        (row["dataset"], row["index"]): "".join(
            text for text, trained in template.render(row["messages"], row["tools"]) if trained
        )
        for row in rows
    }


# ---------------------------------------------------------------------------- prepare_data


def test_prepare_data_on_bundled_data(tiny_model_dir: Path, tiny_tokenizer: Any, bundled_data: Path) -> None:
    cfg = make_config(tiny_model_dir, bundled_data, val_size=0.1, packing=True)
    tokenizer = prepared_tokenizer(tiny_tokenizer)
    data = prepare_data(cfg, tokenizer)
    assert data.train.column_names == ["input_ids", "labels", "dataset", "index"]
    assert (len(data.train), len(data.eval)) == (360, 40)
    expected = expected_trained_text(cfg)
    for row in [*data.train, *data.eval]:
        assert all(label in (IGNORE, token) for token, label in zip(row["input_ids"], row["labels"]))
        # labels are -100 everywhere but the assistant replies and their end token
        assert trained_text(tokenizer, row["input_ids"], row["labels"]) == expected[row["dataset"], row["index"]]
    stats = data.stats
    assert stats.train_rows == {"demo_alpaca": 221, "demo_messages": 68, "demo_sharegpt": 71}
    assert sum(stats.eval_rows.values()) == 40
    assert (stats.truncated, stats.dropped, stats.skipped) == (0, 0, 0)
    assert stats.total_tokens == sum(len(ids) for ids in data.train["input_ids"])
    assert 0 < stats.trained_fraction < 1 and stats.length_p50 <= stats.length_p90 <= stats.length_max
    assert 0.5 < stats.packing_efficiency <= 1
    lines = "\n".join(stats.summary_lines())
    assert "train rows: 360 (demo_alpaca 221, demo_messages 68, demo_sharegpt 71)" in lines
    assert "packing efficiency at 1024 tokens" in lines


def test_masking_settings_reach_the_encoder(tiny_model_dir: Path, tiny_tokenizer: Any, bundled_data: Path) -> None:
    tokenizer = prepared_tokenizer(tiny_tokenizer)
    everything = prepare_data(
        make_config(tiny_model_dir, bundled_data, "demo_sharegpt", train_on_prompt=True), tokenizer
    ).train
    assert all(row["labels"] == row["input_ids"] for row in everything)
    last_only = prepare_data(
        make_config(tiny_model_dir, bundled_data, "demo_sharegpt", mask_history=True), tokenizer
    ).train
    default = prepare_data(make_config(tiny_model_dir, bundled_data, "demo_sharegpt"), tokenizer).train
    trained = [sum(label != IGNORE for labels in split["labels"] for label in labels) for split in (last_only, default)]
    assert 0 < trained[0] < trained[1]


class CountingEncoder:
    """Wraps masking.encode_conversations to count the conversations actually tokenized."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from sftkit.data import masking

        self.calls = 0
        self.original = masking.encode_conversations
        monkeypatch.setattr(masking, "encode_conversations", self)

    def __call__(self, tokenizer: Any, template: Any, conversations: list[Any], *args: Any, **kwargs: Any) -> Any:
        self.calls += len(conversations)
        return self.original(tokenizer, template, conversations, *args, **kwargs)

    def take(self) -> int:
        calls, self.calls = self.calls, 0
        return calls


def test_second_run_reads_the_tokenization_cache(
    tiny_model_dir: Path, tiny_tokenizer: Any, bundled_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer = prepared_tokenizer(tiny_tokenizer)
    counter = CountingEncoder(monkeypatch)
    cfg = make_config(tiny_model_dir, bundled_data, "demo_alpaca", val_size=20)
    first = prepare_data(cfg, tokenizer)
    assert counter.take() == 240
    second = prepare_data(cfg, tokenizer)
    assert counter.take() == 0
    assert second.train.cache_files == first.train.cache_files and second.train["input_ids"] == first.train["input_ids"]
    assert second.stats == first.stats
    prepare_data(cfg.model_copy(update={"overwrite_cache": True}), tokenizer)
    assert counter.take() == 240
    prepare_data(cfg.model_copy(update={"cutoff_len": 512}), tokenizer)  # a setting that changes the result
    assert counter.take() == 240
    prepare_data(make_config(tiny_model_dir, bundled_data, "demo_alpaca", val_size=20, seed=7), tokenizer)
    assert counter.take() == 240  # another split is other data
    prepare_data(cfg.model_copy(update={"logging_steps": 3, "learning_rate": 1.0}), tokenizer)
    assert counter.take() == 0  # training keys do not decide the tokens
    monkeypatch.setattr("sftkit.data.pipeline.ENCODING_VERSION", -1)  # what a change to the encoding bumps
    prepare_data(cfg, tokenizer)
    assert counter.take() == 240


def test_truncated_dropped_and_nothing_left(tiny_model_dir: Path, tiny_tokenizer: Any, tmp_path: Path) -> None:
    rows = [
        {"instruction": "short", "output": "fine"},
        {"instruction": "long question " * 40, "output": "dropped: the prompt fills cutoff_len"},
        {"instruction": "short", "output": "a long answer " * 40},
    ]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "long.json").write_text(json.dumps(rows[1:2]))
    (tmp_path / "dataset_info.json").write_text(
        json.dumps({"d": {"file_name": "d.json"}, "long": {"file_name": "long.json"}})
    )
    tokenizer = prepared_tokenizer(tiny_tokenizer)
    data = prepare_data(make_config(tiny_model_dir, tmp_path, "d", cutoff_len=40), tokenizer)
    assert data.train["index"] == [0, 2]
    assert (data.stats.truncated, data.stats.dropped) == (1, 1)
    assert max(len(ids) for ids in data.train["input_ids"]) == 40
    with pytest.raises(DataError, match="no training example keeps a trained token within cutoff_len 12"):
        prepare_data(make_config(tiny_model_dir, tmp_path, "long", cutoff_len=12), tokenizer)
    with pytest.raises(DataError, match="cutoff_len 4 leaves no room for text: the chatml template alone takes"):
        prepare_data(make_config(tiny_model_dir, tmp_path, "d", cutoff_len=4), tokenizer)


def test_render_example_marks_trained_runs(tiny_tokenizer: Any) -> None:
    ids = tiny_tokenizer("Question? Answer.", add_special_tokens=False)["input_ids"]
    split = len(tiny_tokenizer("Question?", add_special_tokens=False)["input_ids"])
    labels = [IGNORE] * split + ids[split:]
    assert render_example(tiny_tokenizer, ids, labels, color=False) == "Question?[[ Answer.]]"
    assert render_example(tiny_tokenizer, ids, labels, color=True) == "Question?\033[32m Answer.\033[0m"


# ---------------------------------------------------------------------------- preview / export in-process


def test_preview_prints_examples_then_stats(
    tiny_model_dir: Path, bundled_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preview(make_config(tiny_model_dir, bundled_data, "demo_messages"), n=2, color=False)
    out = capsys.readouterr().out
    assert out.startswith(
        "--- template chatml (built-in)\n(text between [[ and ]] is trained: the loss is taken on it;"
    )
    assert out.count("--- demo_messages row ") == 2 and "--- statistics" in out
    assert "[[My name is Tiny. I was fine-tuned with sftkit.<|im_end|>]]" in out
    assert "<|im_start|>user\nWhat is your name?<|im_end|>" in out


def test_export_writes_atomically(tiny_model_dir: Path, bundled_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "train.jsonl"
    assert export(make_config(tiny_model_dir, bundled_data, "demo_sharegpt"), out) == 80
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 80 and list(rows[0]) == ["input_ids", "labels", "dataset", "index"]
    assert [row["index"] for row in rows] == list(range(80))
    assert sorted(p.name for p in out.parent.iterdir()) == ["train.jsonl"]  # no temporary file left
    with pytest.raises(DataError, match="--split eval: the config has no eval set"):
        export(make_config(tiny_model_dir, bundled_data, "demo_sharegpt"), tmp_path / "eval.jsonl", split="eval")
    assert not (tmp_path / "eval.jsonl").exists()


# ---------------------------------------------------------------------------- the CLI


def sftkit(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    venv = Path(sys.executable).parent / "sftkit"
    command = [str(venv)] if venv.exists() else [sys.executable, "-m", "sftkit"]
    env = {
        **os.environ,
        "HF_DATASETS_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=300)


def write_config(path: Path, **keys: Any) -> Path:
    # the tiny model ships no chat template: these configs name one (sftkit would refuse, naming the choices)
    path.write_text(yaml.safe_dump({"output_dir": str(path.parent / "out"), "template": "chatml", **keys}))
    return path


def check_export(path: Path, cfg: SftConfig, tokenizer: Any, rows: int) -> None:
    exported = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(exported) == rows
    expected = expected_trained_text(cfg)
    for row in exported:
        assert set(row) == {"input_ids", "labels", "dataset", "index"}
        assert trained_text(tokenizer, row["input_ids"], row["labels"]) == expected[row["dataset"], row["index"]]


@pytest.mark.parametrize(
    ("which", "names", "counts", "split"),
    [
        ("bundled_data", BUNDLED, (360, 40), "train"),
        ("shared_data", SHARED, (2151, 239), "eval"),
    ],
)
def test_cli_validate_preview_export(
    which: str,
    names: str,
    counts: tuple[int, int],
    split: str,
    tiny_model_dir: Path,
    tiny_tokenizer: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    datasets_cache: Path,
) -> None:
    dataset_dir = request.getfixturevalue(which)
    # cutoff_len above the longest example: nothing is truncated, so every trained span is exact
    keys = {
        "model_name_or_path": str(tiny_model_dir),
        "dataset": names,
        "dataset_dir": str(dataset_dir),
        "cutoff_len": 16384,
        "val_size": 0.1,
        "template": "chatml",
    }
    config = write_config(tmp_path / "c.yaml", **keys)
    train, eval_ = counts
    n_sets = len(names.split(","))

    result = sftkit("validate", str(config), cache=datasets_cache)
    assert result.returncode == 0, result.stderr
    datasets = f"{n_sets} dataset{'s' if n_sets > 1 else ''}"
    assert result.stdout.startswith(
        f"{config}: OK ({datasets}, {train + eval_} rows: train {train}, eval {eval_}; model "
    )  # and what validate found in the model folder, weights unread
    assert "the template adds 2 control tokens" in result.stdout
    assert result.stdout.endswith("; template chatml (built-in))\n")

    result = sftkit("data", "preview", str(config), "-n", "2", cache=datasets_cache)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("--- template chatml (built-in)\n(text between [[ and ]] is trained")
    assert result.stdout.count("\n--- ") == 3
    assert "[[" in result.stdout and "\033[" not in result.stdout  # piped: plain markers
    assert f"train rows: {train} (" in result.stdout and f"eval rows: {eval_} (" in result.stdout
    assert "truncated to cutoff_len 16384: 0; dropped (no trained token left): 0" in result.stdout

    out = tmp_path / f"{split}.jsonl"
    result = sftkit("data", "export", str(config), "--out", str(out), "--split", split, cache=datasets_cache)
    assert result.returncode == 0, result.stderr
    cfg = make_config(tiny_model_dir, dataset_dir, names, cutoff_len=16384, val_size=0.1)
    check_export(out, cfg, prepared_tokenizer(tiny_tokenizer), train if split == "train" else eval_)


@pytest.mark.parametrize(
    ("command", "keys", "expected"),
    [
        ("validate", {"dataset": "demo_alpca"}, "error: dataset 'demo_alpca' is not in"),
        ("validate", {"dataset": "bad"}, "error: {dir}/bad.json: row 1: roles out of order"),
        # the data is checked before the (here missing) model is touched
        ("data preview", {"dataset": "bad", "model_name_or_path": "/nonexistent"}, "error: {dir}/bad.json: row 1"),
        ("data export", {"dataset": "demo_alpaca", "val_size": 0}, "error: --split eval: the config has no eval set"),
    ],
)
def test_cli_bad_data_exits_2_with_one_line(
    command: str,
    keys: dict[str, Any],
    expected: str,
    tmp_path: Path,
    tiny_model_dir: Path,
    bundled_data: Path,
    datasets_cache: Path,
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    registry = json.loads((bundled_data / "dataset_info.json").read_text())
    registry["bad"] = {"file_name": "bad.json", "formatting": "sharegpt"}
    (data_dir / "dataset_info.json").write_text(json.dumps(registry))
    (data_dir / "demo_alpaca.json").write_text((bundled_data / "demo_alpaca.json").read_text())
    bad = [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"conversations": [{"from": "gpt", "value": "Hello"}]},
    ]
    (data_dir / "bad.json").write_text(json.dumps(bad))
    config = write_config(
        tmp_path / "c.yaml", **{"model_name_or_path": str(tiny_model_dir), "dataset_dir": str(data_dir), **keys}
    )
    extra = ["--out", str(tmp_path / "x.jsonl"), "--split", "eval"] if command == "data export" else []
    result = sftkit(*command.split(), str(config), *extra, cache=datasets_cache)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected.format(dir=data_dir)), result.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_overwrite_cache_drops_per_worker_files_so_num_proc_is_honoured(
    tiny_model_dir: Path, tiny_tokenizer: Any, bundled_data: Path, datasets_cache: Path
) -> None:
    # datasets keeps the shard count of the cache files it finds, whatever num_proc says: 2 workers after a
    # 1-worker run would run as 1, and 1 after 2 would write two shards
    import gc

    tokenizer = prepared_tokenizer(tiny_tokenizer)
    cfg = make_config(tiny_model_dir, bundled_data, "demo_alpaca", preprocessing_num_workers=2)
    two = prepare_data(cfg, tokenizer)
    shards = sorted(p.name for p in datasets_cache.rglob("tokenized-*_of_00002.arrow"))
    assert len(shards) == 2 and gc.isenabled()  # the collector, paused while preparing, runs again
    one = prepare_data(cfg.model_copy(update={"preprocessing_num_workers": 1, "overwrite_cache": True}), tokenizer)
    assert not list(datasets_cache.rglob("tokenized-*_of_*.arrow"))  # one file, written by this process
    assert one.train["input_ids"] == two.train["input_ids"] and one.train["labels"] == two.train["labels"]
