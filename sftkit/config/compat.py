"""LLaMA-Factory's and older transformers' keys that YAMLs brought across commonly carry, taken with their meaning.

`CompatConfig` is a mixin that `SftConfig` inherits; `COMPAT_CHECKS` are its cross-field rules, run with the
schema's own. Keys that only restate a default (`use_v1_kernels: false`) are accepted as that value; where
sftkit cannot honour the other value the field refuses it with one line (`FALSE_ONLY`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ValidationInfo, field_validator

from sftkit.config.fields import documented

if TYPE_CHECKING:
    from sftkit.config.schema import SftConfig

# Keys accepted only at the value LLaMA-Factory (or transformers) defaults to, and why the other is refused.
FALSE_ONLY = {
    "use_v1_kernels": "true is refused: LLaMA-Factory's v1 fused kernels have no sftkit equivalent; remove it (or "
    "set enable_liger_kernel: true for fused kernels on a GPU)",
}
# LLaMA-Factory's tool_format names -> the tool formats sftkit's named templates write (sftkit.templates).
TOOL_FORMAT_NAMES = {"qwen": "hermes", "llama3": "llama3", "mistral": "mistral"}
TRUE_ONLY = {
    "save_safetensors": "false is refused: sftkit saves safetensors only (transformers 5 dropped the .bin format); "
    "remove it",
}


class CompatConfig(BaseModel):
    """LLaMA-Factory's and transformers' keys that change nothing sftkit does not already do, or map onto it."""

    use_v1_kernels: bool = documented(
        False,
        "LLaMA-Factory's v1 fused kernels; accepted as false only (enable_liger_kernel gives fused kernels on a GPU).",
        "model",
    )
    disable_gradient_checkpointing: bool = documented(
        False,
        "LLaMA-Factory's switch: true turns gradient checkpointing off (gradient_checkpointing: false); "
        "false leaves gradient_checkpointing as it is.",
        "training",
    )
    group_by_length: bool = documented(
        False,
        "transformers' older key: draw batches of similar length (train_sampling_strategy "
        "group_by_length), so less padding; not with a curriculum, which keeps the data's order.",
        "training",
    )
    do_eval: bool = documented(
        False,
        "LLaMA-Factory's end-of-training evaluation: true evaluates the eval data (val_size or "
        "eval_dataset) once more after the last update, whatever eval_strategy says.",
        "evaluation",
    )
    compute_accuracy: bool = documented(
        False,
        "LLaMA-Factory's token accuracy at evaluation: true also logs it as eval_accuracy (sftkit always "
        "logs it as eval_mean_token_accuracy: the share of trained tokens whose top prediction is right).",
        "evaluation",
    )
    include_num_input_tokens_seen: bool | Literal["all", "non_padding", "no"] = documented(
        "no",
        "transformers' token counter; sftkit always counts the tokens trained on (num_tokens in the logs, "
        "tokens_seen in metrics.json), so any value is accepted and changes nothing.",
        "training",
    )
    tool_format: str | None = documented(
        None,
        "LLaMA-Factory's tool-call format for a named template, replacing the template's own: qwen (Hermes "
        "<tool_call> JSON), llama3 (Llama 3.1 JSON calls) or mistral ([TOOL_CALLS]). Unset: the template's "
        "own; the model's own chat template always writes tools its way.",
        "data",
    )
    save_safetensors: bool = documented(
        True, "transformers' older key; sftkit always saves safetensors, so accepted as true only.", "output"
    )

    @field_validator("use_v1_kernels")
    @classmethod
    def _compat_false_only(cls, value: bool, info: ValidationInfo) -> bool:
        if value:
            raise ValueError(FALSE_ONLY[info.field_name])
        return value

    @field_validator("tool_format")
    @classmethod
    def _known_tool_format(cls, value: str | None) -> str | None:
        if value is not None and value not in TOOL_FORMAT_NAMES:
            raise ValueError(
                f"{value!r} is a LLaMA-Factory tool format sftkit cannot write; use one of "
                f"{', '.join(TOOL_FORMAT_NAMES)}, or remove it and leave template unset to train with "
                "the model's own chat template, which writes tools its way"
            )
        return value

    @field_validator("save_safetensors")
    @classmethod
    def _compat_true_only(cls, value: bool, info: ValidationInfo) -> bool:
        if not value:
            raise ValueError(TRUE_ONLY[info.field_name])
        return value


def apply_compat(c: SftConfig) -> None:
    """LLaMA-Factory's disable_gradient_checkpointing: true is gradient_checkpointing: false (checked first)."""
    if c.disable_gradient_checkpointing and c.gradient_checkpointing == "auto":
        c.gradient_checkpointing = False


def check_gradient_checkpointing(c: SftConfig) -> str | None:
    if c.disable_gradient_checkpointing and c.gradient_checkpointing is True:
        return "disable_gradient_checkpointing: true contradicts gradient_checkpointing: true; keep one of the two"
    return None


def check_do_eval(c: SftConfig) -> str | None:
    if c.do_eval and not c.has_eval_data:
        return "do_eval: true needs eval data; set val_size (e.g. 0.1) or eval_dataset, or remove do_eval"
    return None


def check_group_by_length(c: SftConfig) -> str | None:
    if c.group_by_length and c.curriculum != "none":
        return (
            f"group_by_length: true reorders the batches, which undoes curriculum: {c.curriculum}; keep one of the two"
        )
    return None


def check_tool_format(c: SftConfig) -> str | None:
    if c.tool_format and c.template is None:
        return (
            "tool_format: applies to a named template only (the model's own chat template writes tools its "
            "way); set template, or remove tool_format"
        )
    return None


COMPAT_CHECKS = (check_gradient_checkpointing, check_do_eval, check_group_by_length, check_tool_format)
