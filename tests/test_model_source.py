"""sftkit.data.model_source: a model name is a folder or a reachable hub id, decided at once, and `validate`
looks at the model without loading its weights."""

from __future__ import annotations

import json
import shutil
import struct
import time
from pathlib import Path

import pytest
import yaml

from helpers import run_cli
from sftkit.data.model_source import hub_unreachable, looks_like_path, model_problems, resolve_model
from sftkit.errors import SftkitError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Network allowed, but the hub endpoint is a local port nothing listens on: refused at once, nothing sent."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    hub_unreachable.cache_clear()
    yield
    hub_unreachable.cache_clear()


def write_config(tmp_path: Path, **keys: object) -> Path:
    config = {
        "model_name_or_path": "models/tiny-ernie",
        "dataset": "demo_alpaca",
        "dataset_dir": str(REPO / "data"),
        "output_dir": str(tmp_path / "out"),
        "report_to": "none",
        **keys,
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "name",
    [
        "models/tiny-ernie",
        "./tiny",
        "../tiny",
        "/no/such/model",
        "~/no-such-model",
        "a/b/c",
        "tiny-ernie/",
        "not a hub id!",
    ],
)
def test_a_path_or_non_id_that_is_no_folder_fails_at_once(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SftkitError) as caught:
        resolve_model(name)
    assert str(caught.value).startswith(f"folder {name} does not exist (looked in {tmp_path})")


def test_a_hub_id_is_not_a_path_and_an_existing_folder_is_used(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert not looks_like_path("baidu/ERNIE-4.5-0.3B-Base-PT")
    assert looks_like_path("models/x") and looks_like_path("./x") and looks_like_path("~/x")
    (tmp_path / "org").mkdir()
    monkeypatch.chdir(tmp_path)
    assert looks_like_path("org/name")  # its first part is a folder here: a path was meant
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)


def test_offline_hub_id_not_in_the_cache_is_one_line() -> None:
    with pytest.raises(SftkitError) as caught:
        resolve_model("sftkit-test-org/no-such-model")  # conftest sets HF_HUB_OFFLINE=1
    assert len(caught.value.problems) == 1 and "HF_HUB_OFFLINE is set" in str(caught.value)


def test_unreachable_hub_is_one_line_in_under_a_second(
    unreachable_hub: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, model_name_or_path="sftkit-test-org/no-such-model")
    run_cli(["train", str(config)], monkeypatch, capsys)  # imports warm; the timed call below is the user's wait
    hub_unreachable.cache_clear()
    started = time.perf_counter()
    code, _, err = run_cli(["train", str(config)], monkeypatch, capsys)
    elapsed = time.perf_counter() - started
    assert code == 2 and elapsed < 1.0, (elapsed, err)
    assert err.count("error:") == 1 and "the hub cannot be reached (127.0.0.1:9" in err


@pytest.mark.parametrize(
    "args",
    [
        ["chat", "models/no-such-model", "--prompt", "hi"],
        ["eval", "models/no-such-model", "--config", "CONFIG"],
        ["predict", "models/no-such-model", "--config", "CONFIG", "--out", "OUT/p.jsonl"],
        ["merge", "RUN", "--base", "models/no-such-model"],
    ],
)
def test_every_command_names_the_missing_folder(
    args: list[str],
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path, val_size=2)
    run = tmp_path / "run"  # a LoRA run folder as far as merge looks before it loads the base
    run.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, run / name)
    (run / "adapter_config.json").write_text("{}", encoding="utf-8")
    (run / "adapter_model.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")  # a valid, empty safetensors
    shutil.copy(config, run / "sftkit_config.yaml")
    args = [a.replace("CONFIG", str(config)).replace("OUT", str(tmp_path)).replace("RUN", str(run)) for a in args]
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert (
        code == 2
        and err
        == f"error: folder models/no-such-model does not exist (looked in {tmp_path}); give "
        "an existing model folder, or a hub id such as baidu/ERNIE-4.5-0.3B-Base-PT\n"
    )


# ---------------------------------------------------------------------------- sftkit validate


def test_validate_describes_a_good_model(tiny_model_dir: Path) -> None:
    problems, line = model_problems(str(tiny_model_dir), False, ("<|im_start|>", "<|im_end|>"))
    assert problems == []
    assert "Ernie4_5ForCausalLM" in line and "the template adds 2 control tokens" in line


def test_validate_finds_what_is_wrong_with_a_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    problems, _ = model_problems(str(empty), False, ())
    assert [p.split(": ", 1)[1] for p in problems] == [
        f"{empty} has no config.json, so it is not a transformers model folder",
        f"{empty} has no tokenizer files (tokenizer.json, tokenizer.model, vocab.json...)",
    ]

    remote = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, remote)
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(
        json.dumps({**config, "model_type": "my_llm", "auto_map": {"AutoModelForCausalLM": "m.MyLLM"}})
    )
    problems, _ = model_problems(str(remote), False, ())
    assert problems == [
        f"model_name_or_path: {remote} ships its own model code (auto_map); set trust_remote_code: "
        "true if you trust its author"
    ]
    (remote / "config.json").write_text(json.dumps({**config, "model_type": "no_such_type"}))
    assert (
        "model_type 'no_such_type' is not a causal LM transformers knows"
        in model_problems(str(remote), False, ())[0][0]
    )


def test_validate_reports_model_and_data_problems_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, dataset_dir=str(tmp_path / "no-data"))
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["validate", str(config)], monkeypatch, capsys)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 2 and "dataset_info.json: not found" in err
    assert f"model_name_or_path: folder models/tiny-ernie does not exist (looked in {tmp_path})" in err


def test_train_reports_model_and_data_problems_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, dataset_dir=str(tmp_path / "no-data"))
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", str(config)], monkeypatch, capsys)
    assert code == 2 and err.count("error:") == 2
    assert "folder models/tiny-ernie does not exist" in err and "dataset_info.json: not found" in err
