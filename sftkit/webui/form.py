"""The page's form: which config keys it shows, what it writes as YAML, and the facts it shows beside them.

The form is a view of the schema, not a second one: every field is a config key with the schema's
documentation as its help, and what the page runs is the YAML it writes here, validated by the same
loader as `sftkit train` (`load_config_text`), so the browser and the terminal accept exactly the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftkit.config import SftConfig, commented_yaml, field_docs, load_config_text
from sftkit.errors import SftkitError

OWN_TEMPLATE = "(the model's own)"  # the template dropdown's first choice: no `template` key
METHODS = ("lora", "qlora", "freeze", "full")  # qlora is LoRA on a 4-bit base (quantization_bit: 4)
PRECISIONS = ("bf16", "fp16", "fp32")

# The keys the form shows, in the order it shows them. Everything else is set in the YAML editor.
MODEL_KEYS = ("model_name_or_path", "template")
LORA_KEYS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target")
FREEZE_KEYS = ("freeze_trainable_layers",)
DATA_KEYS = ("dataset_dir", "dataset", "cutoff_len", "val_size", "packing")
TRAIN_KEYS = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
              "gradient_accumulation_steps", "lr_scheduler_type", "warmup_steps", "logging_steps", "eval_strategy",
              "eval_steps", "save_steps", "output_dir")
CHOICE_KEYS = ("lr_scheduler_type", "eval_strategy")  # shown as a list of the schema's allowed values
# Number fields whose schema default is "unset" (None): the form shows 0 for it, a value no such key takes.
UNSET_BY_ZERO = ("lora_alpha", "eval_steps")
FORM_KEYS = (*MODEL_KEYS, "finetuning_type", *LORA_KEYS, *FREEZE_KEYS, *DATA_KEYS, *TRAIN_KEYS)


def docs() -> dict[str, str]:
    """Each key's documentation (the `sftkit keys` text), shown as the field's help."""
    return {name: doc for _group, name, _default, _type, doc in field_docs()}


def defaults() -> dict[str, Any]:
    """The schema's default of each form key as the form shows it: lists as comma text, an unset number as 0
    (UNSET_BY_ZERO), and output_dir, which has no default, a folder under runs/."""
    fields = SftConfig.model_fields
    values = {key: fields[key].default for key in FORM_KEYS if not fields[key].is_required()}
    values = {key: ",".join(value) if isinstance(value, list) else value for key, value in values.items()}
    return {**values, **{key: 0 for key in UNSET_BY_ZERO}, "output_dir": "runs/webui", "dataset": []}


def to_config(values: dict[str, Any], method: str, precision: str) -> dict[str, Any]:
    """The config keys the form's values mean: only the chosen method's keys, and only what the user set.

    Args:
        values: form key -> value (empty text and None are left out, so the schema's default applies).
        method: lora, qlora, freeze or full.
        precision: bf16, fp16 or fp32.
    """
    drop = {"lora": FREEZE_KEYS, "qlora": FREEZE_KEYS, "freeze": LORA_KEYS, "full": LORA_KEYS + FREEZE_KEYS}[method]
    config = {key: _plain(value) for key, value in values.items()
              if key in FORM_KEYS and key not in drop and value not in (None, "", [])
              and not (key in UNSET_BY_ZERO and value == 0)}
    if config.get("template") == OWN_TEMPLATE:
        del config["template"]
    config["finetuning_type"] = "lora" if method == "qlora" else method
    if method == "qlora":
        config["quantization_bit"] = 4
    config["bf16"] = precision == "bf16"
    if precision == "fp16":
        config["fp16"] = True
    return config


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
    return (f"template: {folder} has no chat template of its own: pick a named one, or the run stops with the "
            "choices")


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
