"""LLaMA-Factory YAMLs brought across: its own SFT examples validate as they are, every key sftkit refuses says
why in one line, shared keys mean (and default to) what they do there, and non-SFT data is named as such."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import make_config, run_cli
from sftkit.config import SftConfig, load_config, machine_problems, validate_config
from sftkit.config.llamafactory import (
    DEFAULT_DIFFERENCES,
    METHOD_KEYS,
    OTHER_KEYS,
    TRAINING_ARGUMENT_MESSAGE,
    TRAINING_ARGUMENTS,
    UNSUPPORTED_LLAMAFACTORY_KEYS,
)
from sftkit.config.loading import near_typo
from sftkit.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parent / "llamafactory"
MANIFEST: dict[str, dict[str, Any]] = yaml.safe_load((EXAMPLES / "manifest.yaml").read_text(encoding="utf-8"))
BASE = {"model_name_or_path": "m", "dataset": "a", "output_dir": "out"}


def example(name: str, tiny_model_dir: Path, data_dir: Path) -> tuple[Path, list[str]]:
    """The recorded example, byte for byte as LLaMA-Factory has it, and the overrides that point it at this test's
    model and data, in LLaMA-Factory's own command-line form (`train X.yaml key=value`)."""
    return EXAMPLES / f"{name}.yaml", [f"model_name_or_path={tiny_model_dir}", f"dataset_dir={data_dir}"]


@pytest.fixture(scope="session")
def lf_data(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LLaMA-Factory's demo data plus this test's tiny stand-ins under the names its examples use and the demo data
    lacks or loads from the hub (asft's med and math, alpaca_zh): tests/llamafactory/data."""
    import json

    folder = tmp_path_factory.mktemp("lf-data")
    registry = {}
    for source in (shared_data, EXAMPLES / "data"):
        entries = json.loads((source / "dataset_info.json").read_text(encoding="utf-8"))
        for entry in entries.values():
            if "file_name" in entry and not (folder / entry["file_name"]).exists():
                (folder / entry["file_name"]).symlink_to(source / entry["file_name"])
        registry |= entries
    (folder / "dataset_info.json").write_text(json.dumps(registry), encoding="utf-8")
    return folder


def examples(kind: str) -> list[Any]:
    params = []
    for name, entry in MANIFEST.items():
        if ("refused" in entry) != (kind == "refused"):
            continue
        params.append(pytest.param(name, id=name))
    return params


# ---------------------------------------------------------------------------- LLaMA-Factory's examples


def test_every_recorded_example_is_in_the_manifest() -> None:
    assert {path.stem for path in EXAMPLES.glob("*.yaml")} - {"manifest"} == set(MANIFEST)
    assert len(MANIFEST) == 43  # 42 text-only SFT examples (12 refused, each with its lines) and the pretraining one


@pytest.mark.parametrize("name", examples("validates"))
def test_llamafactory_example_validates_as_it_is(name: str, tiny_model_dir: Path, lf_data: Path) -> None:
    path, overrides = example(name, tiny_model_dir, lf_data)
    cfg = load_config(path, overrides)
    assert cfg.stage == "sft" and cfg.model_name_or_path == str(tiny_model_dir)
    # what this machine lacks (deepspeed, wandb, a GPU) is a warning naming the key, not a reason to refuse the file
    assert all(line.split(": ")[0] in SftConfig.model_fields and "\n" not in line for line in machine_problems(cfg))


@pytest.mark.parametrize("name", examples("refused"))
def test_llamafactory_example_sftkit_cannot_train_says_why(name: str, tiny_model_dir: Path, lf_data: Path) -> None:
    path, overrides = example(name, tiny_model_dir, lf_data)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    expected = MANIFEST[name]["refused"]
    assert len(info.value.problems) == len(expected), info.value.problems
    for line, text in zip(info.value.problems, expected):
        assert line.startswith(f"{path}: ") and text in line


def test_validate_warns_about_a_missing_package_and_train_stops_on_it(
    tiny_model_dir: Path, lf_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import importlib.util

    from sftkit.training.distributed import SHIPPED_DEEPSPEED

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    monkeypatch.chdir(tmp_path)  # LLaMA-Factory's examples/deepspeed/ is not here: sftkit's copy is used, noted
    path, overrides = example("train_lora__qwen3_lora_sft_ds3", tiny_model_dir, lf_data)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["validate", str(path), *overrides, "max_samples=8"], monkeypatch, capsys)
    note = (
        "note: deepspeed: examples/deepspeed/ds_z3_config.json is not here (LLaMA-Factory's examples folder); "
        f"using sftkit's copy of that file, {SHIPPED_DEEPSPEED / 'ds_z3_config.json'}"
    )
    assert note in stderr.splitlines()
    warning = (
        "deepspeed: the deepspeed package is not installed; run `pip install -e .[deepspeed]` (or remove the "
        "deepspeed key)"
    )
    assert code == 0 and f"{path}: OK (" in stdout, stderr
    assert f"warning: {warning}" in stderr.splitlines()
    # the example sets logging_steps, report_to and plot_loss itself: only the other differences are noted
    assert (
        "note: defaults that differ from LLaMA-Factory's, for the keys this file leaves unset: optim adamw_torch "
        "(LLaMA-Factory: adamw_torch_fused), gradient_checkpointing auto (LLaMA-Factory: true)"
    ) in stderr
    code, _, stderr = run_cli(["train", str(path), *overrides, f"output_dir={out}"], monkeypatch, capsys)
    assert code == 2 and stderr.splitlines() == [note, f"error: {warning}"]
    assert not out.exists()  # stopped before anything loaded or was written


# ---------------------------------------------------------------------------- refused keys, one line each


@pytest.mark.parametrize("key", sorted(UNSUPPORTED_LLAMAFACTORY_KEYS))
def test_every_refused_llamafactory_key_says_what_it_does_and_what_to_use(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({**BASE, key: 1}, source="cfg.yaml")
    (line,) = info.value.problems
    assert line == f"cfg.yaml: {key}: {UNSUPPORTED_LLAMAFACTORY_KEYS[key]}"
    assert "did you mean" not in line
    message = UNSUPPORTED_LLAMAFACTORY_KEYS[key]
    # what it is (LLaMA-Factory's, or transformers' for a passed-through training argument) and what to do here
    assert any(word in message for word in ("LLaMA-Factory", "transformers", "launcher", "sftkit")), message
    assert any(word in message for word in ("remove it", "use ", "set ")), message


def test_refused_keys_are_not_keys_sftkit_takes() -> None:
    # a key leaves the table when it becomes a field
    taken = set(SftConfig.model_fields)
    assert not taken & set(UNSUPPORTED_LLAMAFACTORY_KEYS) and not taken & set(TRAINING_ARGUMENTS)
    assert not set(METHOD_KEYS) & set(OTHER_KEYS) and not set(TRAINING_ARGUMENTS) & set(OTHER_KEYS)


def test_every_transformers_training_argument_is_taken_or_answered() -> None:
    from transformers import Seq2SeqTrainingArguments

    theirs = {field.name for field in dataclasses.fields(Seq2SeqTrainingArguments) if field.init}
    answered = set(SftConfig.model_fields) | set(UNSUPPORTED_LLAMAFACTORY_KEYS) | set(TRAINING_ARGUMENTS)
    assert theirs - answered == set()
    assert set(TRAINING_ARGUMENTS) - theirs == set()  # no stale names
    (line,) = pytest.raises(ConfigError, validate_config, {**BASE, "torch_compile_mode": "max-autotune"}).value.problems
    assert line == f"<config>: torch_compile_mode: {TRAINING_ARGUMENT_MESSAGE}"


@pytest.mark.parametrize(
    "key", ["apollo_rank", "galore_target", "oft_block_size", "pure_bf16", "temperature", "local_rank", "data_seed"]
)
def test_no_did_you_mean_for_a_key_that_only_shares_a_word(key: str) -> None:
    # the rule itself, table or not (some of these are sftkit's own keys: against the others they must still
    # suggest nothing)
    others = [field for field in SftConfig.model_fields if field != key]
    assert near_typo(key, others) is None
    if key not in SftConfig.model_fields:
        (line,) = pytest.raises(ConfigError, validate_config, {**BASE, key: 1}).value.problems
        assert "did you mean" not in line and line.startswith(f"<config>: {key}: ")


@pytest.mark.parametrize(
    "typo,meant",
    [
        ("lora_rnak", "lora_rank"),
        ("learning_rat", "learning_rate"),
        ("gradient_acumulation_steps", "gradient_accumulation_steps"),
        ("cutof_len", "cutoff_len"),
        ("per_device_train_batchsize", "per_device_train_batch_size"),
    ],
)
def test_did_you_mean_for_a_slip_of_the_keyboard(typo: str, meant: str) -> None:
    (line,) = pytest.raises(ConfigError, validate_config, {**BASE, typo: 1}).value.problems
    assert line == f"<config>: {typo}: unknown key; did you mean {meant}?"


def test_a_refused_key_given_with_set_is_blamed_on_set(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(BASE), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["pref_beta=0.1", "eval_strategy=steps", "val_size=0.1"])
    assert info.value.problems == [
        f"--set pref_beta=0.1: pref_beta: {OTHER_KEYS['pref_beta']}",
        "--set eval_strategy=steps: eval_steps: required when eval_strategy is steps",
    ]


@pytest.mark.parametrize("stage", ["pt", "rm", "ppo", "dpo", "kto"])
def test_other_stages_are_named_not_just_refused(stage: str) -> None:
    (line,) = pytest.raises(ConfigError, validate_config, {**BASE, "stage": stage}).value.problems
    assert f"stage: {stage} is LLaMA-Factory's " in line and "sftkit trains stage: sft only" in line


@pytest.mark.parametrize("key", ["streaming", "use_unsloth"])
def test_false_only_keys_refuse_true(key: str) -> None:
    assert getattr(validate_config({**BASE, key: False}), key) is False
    (line,) = pytest.raises(ConfigError, validate_config, {**BASE, key: True}).value.problems
    assert line.startswith(f"<config>: {key}: true is refused: ")


# ---------------------------------------------------------------------------- shared keys: meaning and defaults

# LLaMA-Factory's own defaults (src/llamafactory/hparams at ff6d4d12eeb0) for the keys sftkit shares with it.
LLAMAFACTORY_DEFAULTS = {
    "model_name_or_path": None,
    "trust_remote_code": False,
    "flash_attn": "auto",
    "enable_liger_kernel": False,
    "use_unsloth": False,
    "template": None,
    "dataset_dir": "data",
    "cutoff_len": 2048,
    "train_on_prompt": False,
    "mask_history": False,
    "streaming": False,
    "mix_strategy": "concat",
    "interleave_probs": None,
    "overwrite_cache": False,
    "preprocessing_batch_size": 1000,
    "preprocessing_num_workers": None,
    "max_samples": None,
    "val_size": 0.0,
    "neat_packing": False,
    "default_system": None,
    "enable_thinking": True,
    "stage": "sft",
    "finetuning_type": "lora",
    "lora_rank": 8,
    "lora_alpha": None,
    "lora_dropout": 0.0,
    "lora_target": ["all"],
    "use_rslora": False,
    "early_stopping_steps": None,
    "plot_loss": False,
    "ray_num_workers": 1,
    # packing: None there means "on for stage pt only", so off for SFT
    "packing": False,
    # LLaMA-Factory turns gradient checkpointing on unless disable_gradient_checkpointing is set
    "gradient_checkpointing": True,
}
# transformers' defaults that LLaMA-Factory leaves as they are, but sftkit does not have them as a default.
NOT_DEFAULTS = {"model_name_or_path", "output_dir", "dataset", "do_train"}  # required keys; do_train: sftkit trains


def test_shared_keys_default_as_in_llamafactory_or_validate_says_so() -> None:
    from transformers import Seq2SeqTrainingArguments

    defaults = {
        field.name: field.default if field.default is not dataclasses.MISSING else field.default_factory()
        for field in dataclasses.fields(Seq2SeqTrainingArguments)
        if field.init
    }
    theirs = {key: value for key, value in defaults.items() if key in SftConfig.model_fields} | LLAMAFACTORY_DEFAULTS
    ours = {key: info.default for key, info in SftConfig.model_fields.items()}
    differ = {
        key: (ours[key], value)
        for key, value in theirs.items()
        if key not in NOT_DEFAULTS and ours[key] != value and not (key == "report_to" and value in ("none", []))
    }
    differ |= {"report_to": (ours["report_to"], defaults["report_to"])}
    assert differ == DEFAULT_DIFFERENCES
    # the ones that change the training take LLaMA-Factory's default
    cfg = validate_config(dict(BASE))
    assert (cfg.per_device_train_batch_size, cfg.per_device_eval_batch_size, cfg.lr_scheduler_type) == (8, 8, "linear")


def test_boilerplate_keys_reach_the_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sftkit.model import Precision
    from sftkit.training.arguments import build_sft_config

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    cfg = make_config(
        output_dir=tmp_path,
        adam_beta1=0.8,
        adam_beta2=0.95,
        adam_epsilon=1e-6,
        save_only_model=True,
        run_name="lf-run",
        ddp_timeout=180000000,
        logging_dir=tmp_path / "tb",
        val_size=2,
        eval_strategy="steps",
        eval_steps=5,
        save_steps=5,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
    )
    fp32 = Precision("float32", "cpu", "fp32 on cpu")
    args = build_sft_config(cfg, fp32)
    assert (args.adam_beta1, args.adam_beta2, args.adam_epsilon) == (0.8, 0.95, 1e-6)
    assert args.save_only_model and args.run_name == "lf-run" and args.ddp_timeout == 180000000
    assert args.metric_for_best_model == "eval_loss" and args.greater_is_better is False
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "tb")  # where transformers 5 reads it from
    # LLaMA-Factory's fp8_fsdp example: the option words as a list, the layer class at the top level
    fsdp = make_config(
        output_dir=tmp_path, fsdp=["full_shard", "auto_wrap"], fsdp_transformer_layer_cls_to_wrap="Ernie4_5DecoderLayer"
    )
    args = build_sft_config(fsdp, fp32)
    assert args.fsdp and args.fsdp_config["transformer_layer_cls_to_wrap"] == ["Ernie4_5DecoderLayer"]
    assert args.fsdp_plugin_args["transformer_cls_names_to_wrap"] == "Ernie4_5DecoderLayer"


def test_neat_packing_packs_and_resume_from_checkpoint_is_resume() -> None:
    assert validate_config({**BASE, "neat_packing": True}).packing is True
    assert validate_config({**BASE, "resume_from_checkpoint": True}).resume == "latest"
    assert validate_config({**BASE, "resume_from_checkpoint": "out/checkpoint-5"}).resume == "out/checkpoint-5"
    assert validate_config({**BASE, "resume_from_checkpoint": None}).resume is None
    (line,) = pytest.raises(
        ConfigError, validate_config, {**BASE, "metric_for_best_model": "eval_accuracy"}
    ).value.problems
    assert line.startswith("<config>: metric_for_best_model: sftkit's evaluation computes the loss only")
    problems = pytest.raises(
        ConfigError,
        validate_config,
        {
            **BASE,
            "save_only_model": True,
            "deepspeed": "ds.json",
            "val_size": 2,
            "eval_strategy": "epoch",
            "save_strategy": "epoch",
            "load_best_model_at_end": True,
        },
    ).value.problems
    assert problems == [
        "<config>: save_only_model: a weights-only checkpoint cannot be reloaded as the best model "
        "under DeepSpeed or FSDP; set save_only_model: false, or drop load_best_model_at_end and "
        "early_stopping_steps"
    ]


def test_resume_from_checkpoint_in_the_yaml_resumes_like_the_option(tmp_path: Path, monkeypatch, capsys) -> None:
    path = tmp_path / "cfg.yaml"
    out = tmp_path / "never-trained"
    path.write_text(yaml.safe_dump({**BASE, "output_dir": str(out), "resume_from_checkpoint": True}), encoding="utf-8")
    code, _, stderr = run_cli(["train", str(path)], monkeypatch, capsys)
    assert code == 2 and "--resume latest: output_dir" in stderr and "does not exist" in stderr


def test_flash_attention_3_is_a_choice_that_needs_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn_interface" else real(name, *a)
    )
    assert machine_problems(validate_config({**BASE, "flash_attn": "fa3", "report_to": "none"})) == [
        "flash_attn: fa3 needs the flash-attn-3 package (and a GPU it supports), which is not installed; install it "
        "or use flash_attn: sdpa"
    ]
    assert machine_problems(validate_config({**BASE, "flash_attn": "sdpa", "report_to": "none"})) == []


# ---------------------------------------------------------------------------- LLaMA-Factory's non-SFT data


@pytest.mark.parametrize("name", ["c4_demo", "wiki_demo"])
def test_pretraining_text_is_named_not_sft_data(name: str) -> None:
    from sftkit.data.registry import get_spec, load_registry
    from sftkit.errors import DataError

    folder = EXAMPLES / "pretraining_data"
    with pytest.raises(
        DataError,
        match=rf"dataset '{name}': pretraining text is not SFT data \(LLaMA-Factory trains "
        r"such an entry, raw text as columns.prompt, with stage: pt\)",
    ):
        get_spec(load_registry(folder), name, folder)


# ---------------------------------------------------------------------------- trained as they are

# What an example needs changed to run in one CPU process on the tiny model; every other key is the example's.
ONE_PROCESS = ["deepspeed="]  # DeepSpeed's launcher is a multi-process run (and the package an extra)
RUN_HERE = {
    "extras__asft__llama2_full_asft": ONE_PROCESS,
    "extras__asft__qwen2_full_asft": ONE_PROCESS,
    "train_full__qwen3_full_sft": ONE_PROCESS,
    "train_lora__qwen3_lora_sft_ds3": ONE_PROCESS,
    # LLaMA Pro trains the blocks scripts/llama_pro.py added (8 there); the tiny model has 2 layers, none added
    "extras__llama_pro__llama3_freeze_sft": ["freeze_trainable_layers=1"],
}


def trainable_examples() -> list[Any]:
    return [
        pytest.param(name, RUN_HERE.get(name, []), id=name)
        for name, entry in MANIFEST.items()
        if "refused" not in entry
    ]


@pytest.mark.integration
@pytest.mark.parametrize("name,overrides", trainable_examples())
def test_llamafactory_example_trains_as_it_is(
    name: str, overrides: list[str], tiny_model_dir: Path, lf_data: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Every example that validates trains 2 updates here, unless this machine cannot run it at all (an fp8 GPU, a
    package such as mixture-of-depth or wandb): then the test skips with the line `sftkit train` stops on."""
    import json

    path, here = example(name, tiny_model_dir, lf_data)
    cannot = machine_problems(load_config(path, [*here, *overrides]))
    if cannot:
        pytest.skip(f"this machine cannot run it: {'; '.join(cannot)}")
    out = tmp_path / "out"
    # the run is cut short (2 updates on 16 rows); every other key is the example's (LLaMA-Factory's key=value form)
    code, stdout, stderr = run_cli(
        ["train", str(path), *here, f"output_dir={out}", "max_steps=2", "max_samples=16", *overrides],
        monkeypatch,
        capsys,
    )
    assert code == 0, stderr
    assert json.loads((out / "trainer_state.json").read_text(encoding="utf-8"))["global_step"] == 2
    saved = load_config(out / "sftkit_config.yaml")
    source = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert saved.per_device_train_batch_size == source["per_device_train_batch_size"]
    assert saved.lr_scheduler_type == source["lr_scheduler_type"] and saved.template == source["template"]


# ---------------------------------------------------------------------------- LLaMA-Factory's command line


def test_key_value_after_the_yaml_overrides_it_and_dotted_keys_nest(tmp_path: Path) -> None:
    from sftkit.cli.app import split_command_line

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**BASE, "fsdp_config": {"offload_params": False}}), encoding="utf-8")
    found, overrides = split_command_line(
        str(path),
        [
            "learning_rate=1e-5",
            "fsdp_config.offload_params=true",
            "lr_scheduler_kwargs.min_lr=0",
            "--lora_rank=4",
            "lr_scheduler_type=cosine_with_min_lr",
        ],
    )
    assert found == path
    cfg = load_config(found, overrides)
    assert cfg.learning_rate == 1e-5 and cfg.lora_rank == 4
    assert cfg.fsdp_config == {"offload_params": True} and cfg.lr_scheduler_kwargs == {"min_lr": 0}


def test_flag_form_without_a_yaml_builds_the_config_from_the_flags() -> None:
    from sftkit.cli.app import split_command_line

    found, overrides = split_command_line(
        "--model_name_or_path", ["m", "--dataset", "a,b", "--do_train", "--output_dir", "out", "--lora_rank", "4"]
    )
    assert found is None
    cfg = load_config(None, overrides)
    assert (cfg.model_name_or_path, cfg.dataset, cfg.do_train, cfg.lora_rank) == ("m", ["a", "b"], True, 4)


def test_a_bad_override_is_blamed_as_it_was_written(tmp_path: Path, monkeypatch, capsys) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(BASE), encoding="utf-8")
    code, _, stderr = run_cli(["validate", str(path), "learning_rate=fast"], monkeypatch, capsys)
    assert code == 2 and stderr.startswith("error: learning_rate=fast: learning_rate: Input should be a valid number")
    code, _, stderr = run_cli(
        ["validate", "--model_name_or_path", "m", "--dataset", "a", "--output_dir", "o", "--cutoff_len", "0"],
        monkeypatch,
        capsys,
    )
    assert code == 2 and stderr.startswith("error: --cutoff_len 0: cutoff_len: Input should be greater than 0")
    code, _, stderr = run_cli(["train", str(path), "other.yaml"], monkeypatch, capsys)
    assert code == 2 and stderr == (
        "error: other.yaml: unexpected argument (one config file only); give settings as "
        "key=value after the config file, as --key value without one, or as --set "
        "key=value\n"
    )
    code, _, stderr = run_cli(
        ["train", str(path), "fsdp_config.x.y=1", "lora_rank=2", "lora_rank.x=1"], monkeypatch, capsys
    )
    assert code == 2 and "error: lora_rank.x=1: lora_rank is not a mapping, so lora_rank.x cannot be set" in stderr


def test_llamafactory_v1_schema_is_named_in_one_line(tmp_path: Path) -> None:
    from sftkit.config.llamafactory import V1_MESSAGE

    path = tmp_path / "train_lora_sft.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": "Qwen/Qwen3-4B",
                "model_class": "llm",
                "peft_config": {"name": "lora"},
                "train_dataset": "data/v1_sft_demo.yaml",
                "output_dir": "o",
                "micro_batch_size": 1,
            }
        ),
        encoding="utf-8",
    )
    (line,) = pytest.raises(ConfigError, load_config, path).value.problems
    assert line == f"{path}: model, model_class, peft_config, train_dataset, micro_batch_size: {V1_MESSAGE}"
    assert "v0 form" in line


# ---------------------------------------------------------------------------- keys taken for compatibility


def test_llamafactory_defaults_written_out_are_accepted() -> None:
    cfg = validate_config(
        {
            **BASE,
            "use_v1_kernels": False,
            "disable_gradient_checkpointing": False,
            "save_safetensors": True,
            "include_num_input_tokens_seen": True,
        }
    )
    assert cfg.gradient_checkpointing == "auto"
    (line,) = pytest.raises(ConfigError, validate_config, {**BASE, "use_v1_kernels": True}).value.problems
    assert line.startswith("<config>: use_v1_kernels: true is refused: ")
    (line,) = pytest.raises(ConfigError, validate_config, {**BASE, "save_safetensors": False}).value.problems
    assert line.startswith("<config>: save_safetensors: false is refused: sftkit saves safetensors only")


def test_disable_gradient_checkpointing_turns_it_off_as_in_llamafactory() -> None:
    assert validate_config({**BASE, "disable_gradient_checkpointing": True}).gradient_checkpointing is False
    (line,) = pytest.raises(
        ConfigError, validate_config, {**BASE, "disable_gradient_checkpointing": True, "gradient_checkpointing": True}
    ).value.problems
    assert "contradicts gradient_checkpointing: true" in line


def test_do_eval_needs_eval_data_and_group_by_length_reaches_the_sampler(tmp_path: Path) -> None:
    from sftkit.model import Precision
    from sftkit.training.arguments import build_sft_config

    (line,) = pytest.raises(ConfigError, validate_config, {**BASE, "do_eval": True}).value.problems
    assert line == "<config>: do_eval: true needs eval data; set val_size (e.g. 0.1) or eval_dataset, or remove do_eval"
    assert validate_config({**BASE, "do_eval": True, "val_size": 0.1}).do_eval
    fp32 = Precision("float32", "cpu", "fp32 on cpu")
    args = build_sft_config(make_config(output_dir=tmp_path, group_by_length=True), fp32)
    assert args.train_sampling_strategy == "group_by_length"
    assert build_sft_config(make_config(output_dir=tmp_path), fp32).train_sampling_strategy == "random"


def test_megatron_and_ktransformers_keys_have_a_reason() -> None:
    from sftkit.config.llamafactory import MEGATRON_KEYS

    for key in ("tensor_model_parallel_size", "export_hf_on_finish", "moe_grouped_gemm", "kt_weight_path", "use_kt"):
        (line,) = pytest.raises(ConfigError, validate_config, {**BASE, key: 1}).value.problems
        assert "unknown key" not in line and "remove it" in line, line
    assert len(MEGATRON_KEYS) == 26


# ---------------------------------------------------------------------------- LLaMA-Factory's remote data, offline


def test_remote_dataset_dir_and_hub_entries_say_how_to_get_them_offline(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """The ray example's `dataset_dir: REMOTE:llamafactory/demo_data`, and a hub entry such as LLaMA-Factory's
    alpaca_zh, each stop `sftkit validate` with one line saying what to do."""
    import json

    path, _ = example("train_lora__qwen3_lora_sft_ray", tiny_model_dir, tmp_path)
    code, _, stderr = run_cli(["validate", str(path), f"model_name_or_path={tiny_model_dir}"], monkeypatch, capsys)
    assert code == 2 and stderr.splitlines() == [
        "error: dataset_dir: REMOTE:llamafactory/demo_data is LLaMA-Factory's hub dataset folder (it downloads "
        "llamafactory/demo_data's dataset_info.json and data from the Hugging Face hub); sftkit reads a local folder: "
        "download it (huggingface-cli download --repo-type dataset llamafactory/demo_data --local-dir data) and set "
        "dataset_dir: data"
    ]
    (tmp_path / "dataset_info.json").write_text(json.dumps({"alpaca_zh": {"hf_hub_url": "llamafactory/alpaca_zh"}}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, stderr = run_cli(
        [
            "validate",
            "--model_name_or_path",
            str(tiny_model_dir),
            "--dataset",
            "alpaca_zh",
            "--dataset_dir",
            str(tmp_path),
            "--output_dir",
            str(tmp_path / "o"),
        ],
        monkeypatch,
        capsys,
    )
    assert code == 2 and stderr.splitlines() == [
        "error: dataset 'alpaca_zh': its registry entry loads it from the Hugging Face hub (llamafactory/alpaca_zh), "
        "and this machine is offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE); download it where there is a network, "
        "or give the entry a local file_name"
    ]


def test_llamafactory_deepspeed_paths_resolve_to_sftkits_copies(tmp_path: Path, monkeypatch) -> None:
    from sftkit.training.distributed import SHIPPED_DEEPSPEED, deepspeed_file, deepspeed_note

    monkeypatch.chdir(tmp_path)
    names = {
        str(yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text(encoding="utf-8")).get("deepspeed"))
        for name in MANIFEST
    } - {"None"}
    assert names and all(name.startswith("examples/deepspeed/") for name in names)
    for name in names:  # every one LLaMA-Factory's examples name is shipped
        assert deepspeed_file(name) == str(SHIPPED_DEEPSPEED / Path(name).name)
    assert deepspeed_file("examples/deepspeed/nope.json") == "examples/deepspeed/nope.json"  # then "not found"
    mine = tmp_path / "examples" / "deepspeed" / "ds_z3_config.json"
    mine.parent.mkdir(parents=True)
    mine.write_text("{}")
    assert deepspeed_file("examples/deepspeed/ds_z3_config.json") == "examples/deepspeed/ds_z3_config.json"
    assert deepspeed_note(validate_config({**BASE, "deepspeed": "examples/deepspeed/ds_z3_config.json"})) is None


def test_tool_format_replaces_a_named_templates_own(tiny_tokenizer) -> None:
    import json

    from sftkit.data.tokenizer import named_template

    cfg = validate_config({**BASE, "template": "qwen", "tool_format": "mistral"})
    call = json.dumps({"name": "f", "arguments": {"x": 1}})
    turns = [{"role": "user", "content": "q"}, {"role": "function_call", "content": call}]
    text = "".join(s.text for s in named_template(cfg).segments(turns, json.dumps([{"name": "f"}])))
    assert "[AVAILABLE_TOOLS]" in text and "[TOOL_CALLS] [" in text and "<tool_call>" not in text
    (line,) = pytest.raises(ConfigError, validate_config, {**BASE, "tool_format": "qwen"}).value.problems
    assert line.startswith("<config>: tool_format: applies to a named template only")
    (line,) = pytest.raises(
        ConfigError, validate_config, {**BASE, "template": "qwen", "tool_format": "glm4"}
    ).value.problems
    assert "'glm4' is a LLaMA-Factory tool format sftkit cannot write" in line


@pytest.mark.integration  # trains the tiny model 2 updates
def test_do_eval_evaluates_after_training(tiny_model_dir: Path, bundled_data: Path, tmp_path: Path) -> None:
    import json

    from sftkit.training import train

    cfg = validate_config(
        {
            "model_name_or_path": str(tiny_model_dir),
            "dataset": "demo_alpaca",
            "dataset_dir": str(bundled_data),
            "template": "chatml",
            "max_samples": 8,
            "val_size": 4,
            "cutoff_len": 64,
            "per_device_train_batch_size": 2,
            "max_steps": 2,
            "report_to": "none",
            "eval_strategy": "no",
            "do_eval": True,
            "output_dir": str(tmp_path / "run"),
        }
    )
    run = train(cfg)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_loss"] is not None  # eval_strategy: no, so only do_eval's final evaluation gave it
    (tmp_path / "again").mkdir()
    off = train(cfg.model_copy(update={"do_eval": False, "output_dir": str(tmp_path / "again" / "run")}))
    assert json.loads((off / "metrics.json").read_text())["eval_loss"] is None
