"""The race's workloads: one LLaMA-Factory YAML each, the held-out split, and the mappings to TRL and axolotl.

Every contestant trains on the same rows (the shared demo sets less a held-out split written here, in
LLaMA-Factory's dataset_dir layout) from the same YAML. sftkit and LLaMA-Factory read the YAML as it is;
`trl sft` and axolotl get it translated by `to_trl` / `to_axolotl`, whose key maps are printed in the doc.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

SHARED = Path("/work/shared/data")
IDENTITY = {"name": "Racer", "author": "the sftkit bench"}  # LLaMA-Factory's identity.json placeholders
HELD_OUT = {"identity": 8, "alpaca_en_demo": 40}
SPLIT_SEED = 7
# ChatML without a default system prompt: LLaMA-Factory's and sftkit's `chatml`, as a Jinja template for the
# tools that render with the tokenizer's template (TRL's chat_template_path, the evaluator)
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Settings every workload shares (LLaMA-Factory keys). The bound: max_steps, the same for every contestant.
COMMON: dict[str, Any] = {
    "stage": "sft",
    "do_train": True,
    "finetuning_type": "lora",
    "lora_rank": 16,
    "lora_alpha": 64,
    "lora_dropout": 0.0,
    "lora_target": "all",
    "cutoff_len": 1024,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "learning_rate": 2.0e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0,
    "bf16": True,
    "seed": 42,
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": "none",
    "overwrite_output_dir": True,
    "overwrite_cache": True,
    "preprocessing_num_workers": 1,
}
WORKLOADS: dict[str, dict[str, Any]] = {
    # packing left to each tool's default (all three default to no packing for SFT)
    "smollm2_identity_alpaca": {
        "model": "smollm2",
        "dataset": "identity,alpaca_en_demo",
        "template": "chatml",
        "max_steps": 20,
    },
    "smollm2_identity_alpaca_packed": {
        "model": "smollm2",
        "dataset": "identity,alpaca_en_demo",
        "template": "chatml",
        "packing": True,
        "per_device_train_batch_size": 1,
        "max_steps": 8,
    },
    "gemma_alpaca": {"model": "gemma", "dataset": "alpaca_en_demo", "template": "gemma", "max_steps": 12},
}


def fill_identity(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [
        {k: v.replace("{{name}}", IDENTITY["name"]).replace("{{author}}", IDENTITY["author"]) for k, v in row.items()}
        for row in rows
    ]


def write_data(out: Path, shared: Path = SHARED) -> Path:
    """train and held-out files of each dataset under `out` with a dataset_info.json: the train sets keep
    their LLaMA-Factory names (so the YAML reads `dataset: identity,alpaca_en_demo`), the held-out ones end
    in `_heldout`."""
    out.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {}
    for name, count in HELD_OUT.items():
        rows = json.loads((shared / f"{name}.json").read_text(encoding="utf-8"))
        rows = fill_identity(rows) if name == "identity" else rows
        order = list(range(len(rows)))
        random.Random(SPLIT_SEED).shuffle(order)
        held = sorted(order[:count])
        kept = [rows[i] for i in range(len(rows)) if i not in set(held)]
        (out / f"{name}.json").write_text(json.dumps(kept, ensure_ascii=False, indent=1), encoding="utf-8")
        (out / f"{name}_heldout.json").write_text(
            json.dumps([rows[i] for i in held], ensure_ascii=False, indent=1), encoding="utf-8"
        )
        info[name] = {"file_name": f"{name}.json"}
        info[f"{name}_heldout"] = {"file_name": f"{name}_heldout.json"}
    (out / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    (out / "chatml.jinja").write_text(CHATML, encoding="utf-8")
    return out


def rows(data_dir: Path, dataset: str, split: str = "") -> list[dict[str, str]]:
    """The alpaca rows of a comma-separated dataset list (split "" for train, "_heldout" for held out)."""
    out: list[dict[str, str]] = []
    for name in dataset.split(","):
        out += json.loads((data_dir / f"{name}{split}.json").read_text(encoding="utf-8"))
    return out


def messages(row: dict[str, str]) -> list[dict[str, str]]:
    """An alpaca row as chat turns, as LLaMA-Factory's alpaca converter builds them (instruction\\ninput)."""
    user = "\n".join(part for part in (row["instruction"], row.get("input", "")) if part)
    return [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]


def workload_yaml(name: str, model_dir: Path, data_dir: Path, output_dir: Path) -> dict[str, Any]:
    """The workload's one YAML (LLaMA-Factory keys)."""
    spec = {k: v for k, v in WORKLOADS[name].items() if k != "model"}
    return {
        "model_name_or_path": str(model_dir),
        **COMMON,
        "dataset_dir": str(data_dir),
        **spec,
        "output_dir": str(output_dir),
    }


# LLaMA-Factory key -> `trl sft` key (SFTConfig / ModelConfig / ScriptArguments); keys absent here and from
# SAME_KEYS have no TRL counterpart and are listed in the result's `dropped` (stage, do_train, ...).
TRL_KEYS = {
    "cutoff_len": "max_length",
    "lora_rank": "lora_r",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "packing": "packing",
}
SAME_KEYS = (
    "model_name_or_path",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "bf16",
    "seed",
    "logging_steps",
    "save_strategy",
    "report_to",
    "output_dir",
    "max_steps",
)
# the one key a CPU run adds for the tools whose transformers arguments refuse bf16 on a CPU without it
# (sftkit picks the device itself and refuses the key)
CPU_KEYS = {"use_cpu": True}


def to_trl(config: dict[str, Any], dataset_path: Path) -> tuple[dict[str, Any], list[str]]:
    """The YAML as a `trl sft --config` file: (config, LLaMA-Factory keys it has no use for)."""
    out: dict[str, Any] = {k: config[k] for k in SAME_KEYS if k in config}
    out |= {TRL_KEYS[k]: v for k, v in config.items() if k in TRL_KEYS}
    if config.get("finetuning_type") == "lora":
        out["use_peft"] = True
        out["lora_target_modules"] = (
            "all-linear" if config.get("lora_target") == "all" else config["lora_target"].split(",")
        )
    out |= CPU_KEYS
    out["dataset_name"] = str(dataset_path)  # the same train rows as prompt/completion turns (to_trl_rows)
    out["dataset_num_proc"] = config.get("preprocessing_num_workers")
    if config.get("template") == "chatml":  # the model's own template would add a default system prompt
        out["chat_template_path"] = str(Path(config["dataset_dir"]) / "chatml.jinja")
    used = (
        set(SAME_KEYS)
        | set(TRL_KEYS)
        | {"finetuning_type", "lora_target", "dataset", "dataset_dir", "template", "preprocessing_num_workers"}
    )
    return out, sorted(k for k in config if k not in used)


def to_trl_rows(rows_: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Conversational prompt/completion rows: TRL then trains on the answer only, as LLaMA-Factory does."""
    return [{"prompt": m[:1], "completion": m[1:]} for m in map(messages, rows_)]


def to_axolotl(config: dict[str, Any], dataset_path: Path) -> tuple[dict[str, Any], list[str]]:
    """The YAML as an axolotl config: (config, LLaMA-Factory keys it has no use for)."""
    out: dict[str, Any] = {
        "base_model": config["model_name_or_path"],
        "datasets": [
            {"path": str(dataset_path), "ds_type": "json", "type": "chat_template", "field_messages": "messages"}
        ],
        "chat_template": "chatml" if config.get("template") == "chatml" else "gemma3",
        "sequence_len": config["cutoff_len"],
        "sample_packing": bool(config.get("packing", False)),
        "adapter": "lora",
        "lora_r": config["lora_rank"],
        "lora_alpha": config["lora_alpha"],
        "lora_dropout": config["lora_dropout"],
        "lora_target_linear": config.get("lora_target") == "all",
        "micro_batch_size": config["per_device_train_batch_size"],
        "gradient_accumulation_steps": config["gradient_accumulation_steps"],
        "learning_rate": config["learning_rate"],
        "lr_scheduler": config["lr_scheduler_type"],
        "warmup_steps": config["warmup_steps"],
        "bf16": config["bf16"],
        "seed": config["seed"],
        "logging_steps": config["logging_steps"],
        "max_steps": config["max_steps"],
        "output_dir": config["output_dir"],
        "optimizer": "adamw_torch",
        "val_set_size": 0,
        "save_strategy": "no",
        "dataset_processes": config.get("preprocessing_num_workers"),
        "num_epochs": 1,
    }
    used = {
        "model_name_or_path",
        "dataset",
        "dataset_dir",
        "template",
        "cutoff_len",
        "packing",
        "lora_rank",
        "lora_alpha",
        "lora_dropout",
        "lora_target",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "lr_scheduler_type",
        "warmup_steps",
        "bf16",
        "seed",
        "logging_steps",
        "max_steps",
        "output_dir",
        "finetuning_type",
        "save_strategy",
        "preprocessing_num_workers",
    }
    return out, sorted(k for k in config if k not in used)


def to_messages_rows(rows_: list[dict[str, str]]) -> list[dict[str, Any]]:
    return [{"messages": messages(row)} for row in rows_]
