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


def test_unsupported_llamafactory_key_says_what_to_use() -> None:
    (line,) = problems({**BASE, "pref_beta": 0.1})  # every such key's line: tests/test_llamafactory.py
    assert line == (
        "cfg.yaml: pref_beta: LLaMA-Factory's preference or RL training setting; sftkit trains supervised "
        "fine-tuning only; no equivalent, remove it"
    )


def test_all_problems_reported_at_once() -> None:
    found = problems({**BASE, "lora_rnak": 8, "cutoff_len": -5, "learning_rate": "fast", "template": "qwen9"})
    keys = sorted(line.split(": ")[1] for line in found)
    assert keys == ["cutoff_len", "learning_rate", "lora_rnak", "template"]
    assert all(line.startswith("cfg.yaml: ") and "\n" not in line for line in found)


@pytest.mark.parametrize(
    "key,value",
    [
        ("learning_rate", float("nan")),
        ("num_train_epochs", float("inf")),
        ("max_steps", -3),
        ("lora_dropout", 1.5),
        ("val_size", -0.1),
    ],
)
def test_non_finite_or_out_of_range_numbers(key: str, value: float) -> None:
    (line,) = problems({**BASE, key: value})
    assert f": {key}: " in line


def test_cross_field_rules_are_named_and_collected() -> None:
    found = problems({**BASE, "eval_strategy": "steps", "bf16": True, "fp16": True})
    assert any("eval_steps" in line for line in found)
    assert any("val_size or eval_dataset" in line for line in found)
    assert any("bf16 and fp16" in line for line in found)


def test_best_model_needs_matching_save_and_eval_steps() -> None:
    (line,) = problems(
        {
            **BASE,
            "val_size": 0.1,
            "eval_strategy": "steps",
            "eval_steps": 7,
            "save_steps": 10,
            "early_stopping_steps": 2,
        }
    )
    assert "save_steps (10) must be a multiple of eval_steps (7)" in line


def test_overrides_parse_yaml_values_and_are_validated(tmp_path: Path) -> None:
    path = write(tmp_path, yaml.safe_dump(BASE))
    cfg = load_config(path, ["learning_rate=1e-4", "packing=true", "dataset=a,b"])
    assert cfg.learning_rate == 1e-4 and cfg.packing is True and cfg.dataset == ["a", "b"]
    with pytest.raises(ConfigError, match="lora_rank"):
        load_config(path, ["lora_rank=zero"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(path, ["lora_rank"])


def test_every_bad_override_and_cross_field_problem_is_reported_in_one_go(tmp_path: Path) -> None:
    path = write(tmp_path, yaml.safe_dump(BASE))
    with pytest.raises(ConfigError) as info:
        load_config(
            path, ["learning_rate=fast", "lora_rnak=8", "lora_rank", "eval_strategy=steps", "bf16=true", "fp16=true"]
        )
    found = info.value.problems
    assert "--set 'lora_rank': expected key=value" in found
    assert any(": learning_rate: " in line for line in found) and any(": lora_rnak: " in line for line in found)
    # the cross-field rules among the valid keys, although two other keys were invalid
    assert any("eval_steps: required when eval_strategy is steps" in line for line in found)
    assert any("bf16 and fp16: choose one" in line for line in found)
    assert len(found) == len(set(found)) == 6, found


def test_help_reads_like_the_readme() -> None:
    from typer.testing import CliRunner

    from sftkit.cli import app

    for command in (["train"], ["chat"], ["data", "preview"], ["eval"]):
        text = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "120"}).output
        assert "<bool>" not in text and "{" not in text, text
    # the file is optional since LLaMA-Factory's flag form (`train --key value ...`), and key=value may follow it
    usage = "Usage: root train [OPTIONS] [CONFIG [KEY=VALUE ...]]"
    assert usage in CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "120"}).output


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


def test_config_reference_page_is_in_sync() -> None:
    page = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    assert start in page and end in page, "docs/config.md lacks the config reference markers"
    embedded = page.split(start, 1)[1].split(end, 1)[0].strip()
    assert embedded == reference_markdown(), "regenerate with: python scripts/sync_config_reference.py"


def test_commented_yaml_round_trips() -> None:
    values = {**BASE, "dataset": ["a", "b"], "lora_rank": 16, "default_system": "Be: helpful"}
    text = commented_yaml(values)
    assert yaml.safe_load(text) == values
    assert "# LoRA rank r." in text


def test_a_llamafactory_template_name_we_cover_says_which_to_use() -> None:
    with pytest.raises(
        ConfigError,
        match=r"unknown template 'qwen2_vl' \(text-only training of Qwen2-VL uses qwen\); "
        r"leave template unset to train in the model's own format \(its tokenizer's chat template\), or "
        r"choose one of chatml, ernie_nothink, llama3, qwen, ",
    ):
        validate_config({"model_name_or_path": "m", "dataset": "d", "output_dir": "o", "template": "qwen2_vl"})


@pytest.mark.parametrize(
    "name",
    [
        "qwen3_nothink",
        "qwen3",
        "gemma3",
        "phi4",
        "deepseek3",
        "mistral",
        "llama2",
        "glm4",
        "ernie",
        "default",
        "empty",
        "alpaca",
        "vicuna",
        "qwen",
        "gemma",
    ],
)
def test_llamafactory_template_names_are_accepted(name: str) -> None:
    assert (
        validate_config({"model_name_or_path": "m", "dataset": "d", "output_dir": "o", "template": name}).template
        == name
    )


def test_template_and_chat_template_are_one_choice() -> None:
    with pytest.raises(ConfigError, match="template and chat_template: choose one"):
        validate_config(
            {
                "model_name_or_path": "m",
                "dataset": "d",
                "output_dir": "o",
                "template": "qwen",
                "chat_template": "x.jinja",
            }
        )


# ---------------------------------------------------------------------------- files built to hurt


def load_problem(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    assert len(info.value.problems) == 1
    return info.value.problems[0]


def test_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    import time

    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for previous, name in zip("abcdefghi", "bcdefghij"):
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 10)}]")
    start = time.perf_counter()
    problem = load_problem(write(tmp_path, "\n".join(lines) + "\n"))
    assert "expands to more than 100,000 values" in problem
    assert time.perf_counter() - start < 2  # 10^10 values if expanded


def test_an_alias_inside_its_own_value_is_refused(tmp_path: Path) -> None:
    assert "an alias refers to the value that contains it" in load_problem(write(tmp_path, "fsdp_config: &a [*a]\n"))


def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    for depth in (40, 20_000):  # past the depth limit; past Python's recursion limit in the composer
        path = write(tmp_path, "fsdp_config: " + "[" * depth + "]" * depth + "\n")
        assert "nested too deeply (limit 32 levels)" in load_problem(path)


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path: Path) -> None:
    text = "model_name_or_path: m\ndataset: a\noutput_dir: o\nlora_rank: 8\nlora_rank: 16\n"
    assert (
        load_problem(write(tmp_path, text)) == f"{tmp_path / 'cfg.yaml'}:5: key 'lora_rank' is given twice "
        "(lines 4 and 5); keep one"
    )
    nested = "model_name_or_path: m\ndataset: a\noutput_dir: o\nfsdp_config:\n  a: 1\n  a: 2\n"
    assert "key 'a' is given twice (lines 5 and 6)" in load_problem(write(tmp_path, nested))


def test_a_huge_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("# " + "x" * 2_000_000 + "\nmodel_name_or_path: m\n", encoding="utf-8")
    assert "bytes is far too big for a config" in load_problem(path)


def test_not_utf8_names_line_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_bytes(b"model_name_or_path: m\n# caf\xe9\n")
    assert load_problem(path) == f"{path}:2: not UTF-8 text (byte 27, 0xe9); re-save the file as UTF-8"


def test_error_lines_never_echo_megabytes(tmp_path: Path) -> None:
    from sftkit.errors import MAX_PROBLEM_CHARS, SftkitError

    path = write(tmp_path, f"model_name_or_path: m\ndataset: a\noutput_dir: o\nlearning_rate: {'9' * 500_000}x\n")
    problem = load_problem(path)
    assert problem.startswith(f"{path}: learning_rate: Input should be a valid number") and len(problem) < 400
    line = SftkitError("start " + "y" * 100_000 + " the fix").problems[0]
    assert len(line) == MAX_PROBLEM_CHARS and line.startswith("start y") and line.endswith("y the fix")


def test_a_set_key_is_blamed_on_set(tmp_path: Path) -> None:
    path = write(tmp_path, "model_name_or_path: m\ndataset: a\noutput_dir: o\n")
    assert load_problem(path, ["lora_rnak=4"]) == "--set lora_rnak=4: lora_rnak: unknown key; did you mean lora_rank?"
    assert load_problem(path, ["lora_rank=-1"]).startswith("--set lora_rank=-1: lora_rank: Input should be greater")
    assert load_problem(write(tmp_path, "model_name_or_path: m\ndataset: a\noutput_dir: o\nlora_rnak: 4\n")).startswith(
        f"{path}: lora_rnak: unknown key"
    )


# ---------------------------------------------------------------------------- keys that used to fail only in training


def test_dataset_listed_twice_is_refused() -> None:
    assert problems({**BASE, "dataset": "a,b,a"})[0].startswith("cfg.yaml: dataset: 'a' is listed twice")
    assert problems({**BASE, "eval_dataset": ["e", "e"]})[0].startswith("cfg.yaml: eval_dataset: 'e' is listed twice")


def test_report_to_names_are_transformers_integrations() -> None:
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    from sftkit.config.environment import REPORTER_MODULES
    from sftkit.config.schema import REPORTERS

    assert set(REPORTERS) == set(INTEGRATION_TO_CALLBACK) == set(REPORTER_MODULES)
    assert "report_to: unknown logger 'tensorbord'" in problems({**BASE, "report_to": "tensorboard,tensorbord"})[0]
    validate_config({**BASE, "report_to": "none"})


def test_a_package_that_is_not_installed_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from sftkit.config import check_environment

    real = importlib.util.find_spec
    missing = {"wandb", "bitsandbytes"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a))
    with pytest.raises(ConfigError, match=r"report_to: wandb is not installed; run `pip install wandb`"):
        check_environment(validate_config({**BASE, "report_to": "wandb"}))
    with pytest.raises(ConfigError, match=r"optim: paged_adamw_8bit needs bitsandbytes, which is not installed"):
        check_environment(validate_config({**BASE, "optim": "paged_adamw_8bit"}))
    check_environment(validate_config({**BASE, "report_to": "none"}))


def test_scheduler_arguments_match_transformers() -> None:
    import inspect

    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType

    from sftkit.config.schema import SCHEDULER_KWARGS

    fixed = {"optimizer", "num_warmup_steps", "num_training_steps", "last_epoch"}
    for name, allowed in SCHEDULER_KWARGS.items():
        parameters = set(inspect.signature(TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)]).parameters) - fixed
        assert set(allowed) == parameters, name
    assert set(SCHEDULER_KWARGS) == set(SftConfig.model_fields["lr_scheduler_type"].annotation.__args__)


def test_schedulers_need_their_arguments() -> None:
    assert (
        "cosine_with_min_lr needs min_lr or min_lr_rate in lr_scheduler_kwargs (one of them, not both)"
        in problems({**BASE, "lr_scheduler_type": "cosine_with_min_lr"})[0]
    )
    assert (
        "warmup_stable_decay needs num_decay_steps" in problems({**BASE, "lr_scheduler_type": "warmup_stable_decay"})[0]
    )
    assert (
        "'power' is not an argument of cosine (takes only num_cycles)"
        in problems({**BASE, "lr_scheduler_type": "cosine", "lr_scheduler_kwargs": {"power": 2}})[0]
    )
    validate_config({**BASE, "lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": 0.1}})


def test_a_character_yaml_does_not_allow_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_bytes(b"model_name_or_path: m\n\x00dataset: a\n")
    assert load_problem(path).startswith(f"{path}:2: invalid YAML: unacceptable character #x0000")
