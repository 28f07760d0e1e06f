"""The config schema: every problem reported at once, one line each, exit code 2 from the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sftkit.config import SftConfig, commented_yaml, load_config, reference_markdown, validate_config
from sftkit.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
BASE = {"model_name_or_path": "m", "dataset": "a", "output_dir": "out"}


def problems(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_config(raw, source="cfg.yaml")
    return info.value.problems


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_config_fills_defaults() -> None:
    cfg = validate_config(dict(BASE))
    assert cfg.dataset == ["a"] and cfg.template is None and cfg.lora_target == ["all"]  # None: the model's own
    assert cfg.resolved_lora_alpha == 2 * cfg.lora_rank


def test_comma_strings_and_yaml_lists_are_the_same() -> None:
    a = validate_config({**BASE, "dataset": "x, y,z", "lora_target": "q_proj,v_proj"})
    b = validate_config({**BASE, "dataset": ["x", "y", "z"], "lora_target": ["q_proj", "v_proj"]})
    assert a.dataset == b.dataset == ["x", "y", "z"] and a.lora_target == b.lora_target


def test_unknown_key_suggests_the_close_one() -> None:
    assert problems({**BASE, "lora_rnak": 8}) == ["cfg.yaml: lora_rnak: unknown key; did you mean lora_rank?"]


def test_unsupported_llamafactory_key_says_remove_it() -> None:
    (line,) = problems({**BASE, "quantization_bit": 4})
    assert "quantization_bit" in line and "does not support" in line and "remove it" in line


def test_all_problems_reported_at_once() -> None:
    found = problems({**BASE, "lora_rnak": 8, "cutoff_len": -5, "learning_rate": "fast", "template": "qwen9"})
    keys = sorted(line.split(": ")[1] for line in found)
    assert keys == ["cutoff_len", "learning_rate", "lora_rnak", "template"]
    assert all(line.startswith("cfg.yaml: ") and "\n" not in line for line in found)


@pytest.mark.parametrize("key,value", [("learning_rate", float("nan")), ("num_train_epochs", float("inf")),
                                       ("max_steps", -3), ("lora_dropout", 1.5), ("val_size", -0.1)])
def test_non_finite_or_out_of_range_numbers(key: str, value: float) -> None:
    (line,) = problems({**BASE, key: value})
    assert f": {key}: " in line


def test_cross_field_rules_are_named_and_collected() -> None:
    found = problems({**BASE, "eval_strategy": "steps", "bf16": True, "fp16": True})
    assert any("eval_steps" in line for line in found)
    assert any("val_size or eval_dataset" in line for line in found)
    assert any("bf16 and fp16" in line for line in found)


def test_best_model_needs_matching_save_and_eval_steps() -> None:
    (line,) = problems({**BASE, "val_size": 0.1, "eval_strategy": "steps", "eval_steps": 7, "save_steps": 10,
                        "early_stopping_steps": 2})
    assert "save_steps (10) must be a multiple of eval_steps (7)" in line


def test_overrides_parse_yaml_values_and_are_validated(tmp_path: Path) -> None:
    path = write(tmp_path, yaml.safe_dump(BASE))
    cfg = load_config(path, ["learning_rate=1e-4", "packing=true", "dataset=a,b"])
    assert cfg.learning_rate == 1e-4 and cfg.packing is True and cfg.dataset == ["a", "b"]
    with pytest.raises(ConfigError, match="lora_rank"):
        load_config(path, ["lora_rank=zero"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(path, ["lora_rank"])


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "model_name_or_path: m\ndataset: [a, b\noutput_dir: o\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (line,) = info.value.problems
    assert line.startswith(f"{path}:") and "invalid YAML" in line and line.split(":")[1].isdigit()


@pytest.mark.parametrize("text,expected", [("", "empty"), ("- a\n- b\n", "mapping")])
def test_empty_or_non_mapping_yaml(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, text))


def test_non_utf8_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"model_name_or_path: \xff\xfe\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_cli_reports_config_errors_with_exit_2_and_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, yaml.safe_dump({**BASE, "lora_rnak": 8, "cutoff_len": 0}))
    for command in (["validate", str(path)], ["train", str(path)]):
        run = subprocess.run([sys.executable, "-m", "sftkit", *command], capture_output=True, text=True)
        assert run.returncode == 2, run.stderr
        assert "Traceback" not in run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)


def test_help_imports_no_heavy_library() -> None:
    code = "import sys, sftkit.cli; print(sorted(m for m in ('torch', 'transformers', 'trl', 'datasets', 'peft') if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
    assert subprocess.run([sys.executable, "-m", "sftkit", "--help"], capture_output=True).returncode == 0


def test_every_field_is_documented() -> None:
    assert all(info.description for info in SftConfig.model_fields.values())


def test_readme_config_reference_is_in_sync() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    assert start in readme and end in readme, "README lacks the config reference markers"
    embedded = readme.split(start, 1)[1].split(end, 1)[0].strip()
    assert embedded == reference_markdown(), "regenerate with: python scripts/sync_readme.py"


def test_commented_yaml_round_trips() -> None:
    values = {**BASE, "dataset": ["a", "b"], "lora_rank": 16, "default_system": "Be: helpful"}
    text = commented_yaml(values)
    assert yaml.safe_load(text) == values
    assert "# LoRA rank r." in text


def test_a_llamafactory_template_name_we_cover_says_which_to_use() -> None:
    with pytest.raises(ConfigError, match=r"unknown template 'qwen2_vl' \(text-only training of Qwen2-VL uses qwen\); "
                                          r"choose one of chatml, ernie_nothink, llama3, qwen, "):
        validate_config({"model_name_or_path": "m", "dataset": "d", "output_dir": "o", "template": "qwen2_vl"})


@pytest.mark.parametrize("name", ["qwen3_nothink", "qwen3", "gemma3", "phi4", "deepseek3", "mistral", "llama2", "glm4",
                                  "ernie", "default", "empty", "alpaca", "vicuna", "qwen", "gemma"])
def test_llamafactory_template_names_are_accepted(name: str) -> None:
    assert validate_config({"model_name_or_path": "m", "dataset": "d", "output_dir": "o", "template": name}).template == name


def test_template_and_chat_template_are_one_choice() -> None:
    with pytest.raises(ConfigError, match="template and chat_template: choose one"):
        validate_config({"model_name_or_path": "m", "dataset": "d", "output_dir": "o", "template": "qwen",
                         "chat_template": "x.jinja"})
