"""The schema: the `SftConfig` model, its constants and the named cross-field checks."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from sftkit.config.methods import METHOD_CHECKS, MethodsConfig, split_commas
from sftkit.templates.registry import TEMPLATE_HINTS, TEMPLATES


# LLaMA-Factory keys that sftkit deliberately does not implement: named so a ported YAML fails with
# "remove it" instead of a misleading "did you mean" suggestion.
UNSUPPORTED_LLAMAFACTORY_KEYS = {
    "lora_layer_replication",
    "neat_packing", "tokenized_path", "streaming", "buffer_size", "use_unsloth", "use_unsloth_gc",
    "pref_beta", "pref_loss", "image_max_pixels",
    "video_max_pixels", "media_dir", "export_dir", "export_size", "export_quantization_bit",
    "infer_backend", "predict_with_generate", "do_predict", "shift_attn",
    "print_param_status", "ray_run_name", "use_ray",
    "compute_accuracy", "do_eval", "ddp_timeout", "upcast_layernorm", "moe_aux_loss_coef",
}

# transformers' logging integrations (report_to), plus "none" and "all"; tests compare with transformers' list.
REPORTERS = ("azure_ml", "clearml", "codecarbon", "comet_ml", "dagshub", "dvclive", "flyte", "kubeflow", "mlflow",
             "neptune", "swanlab", "tensorboard", "trackio", "wandb")
# The arguments each learning-rate schedule takes from lr_scheduler_kwargs (transformers.optimization), and
# those it cannot run without (one of each tuple).
SCHEDULER_KWARGS = {
    "linear": (), "constant": (), "constant_with_warmup": (), "cosine": ("num_cycles",),
    "cosine_with_restarts": ("num_cycles",), "polynomial": ("lr_end", "power"), "inverse_sqrt": ("timescale",),
    "cosine_with_min_lr": ("min_lr", "min_lr_rate", "num_cycles"),
    "warmup_stable_decay": ("num_decay_steps", "num_stable_steps", "warmup_type", "decay_type", "min_lr_ratio",
                            "num_cycles"),
}
SCHEDULER_REQUIRES = {"cosine_with_min_lr": ("min_lr", "min_lr_rate"), "warmup_stable_decay": ("num_decay_steps",)}
LOSS_CHUNK_SIZE = 256  # trained tokens per output-head call, unless the config sets loss_chunk_size
GROUPS = ("model", "data", "finetuning", "training", "evaluation", "output", "distributed")


def _field(default: Any, doc: str, group: str, **kw: Any) -> Any:
    """A documented field; `group` orders the reference."""
    return Field(default, description=doc, json_schema_extra={"group": group}, **kw)


class SftConfig(MethodsConfig):
    """Everything one fine-tuning run needs. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_default=True)

    # ---------------------------------------------------------------- model
    model_name_or_path: str = _field(
        ..., "Base model: a local directory or a Hugging Face hub id (e.g. baidu/ERNIE-4.5-0.3B-Base-PT).",
        "model")
    trust_remote_code: bool = _field(
        False, "Run Python code shipped with the model repo. Off unless you trust its author.", "model")
    flash_attn: Literal["auto", "sdpa", "fa2", "disabled"] = _field(
        "auto", "Attention kernel: auto (sdpa), sdpa, fa2 (flash-attention 2, GPU only) or disabled (eager).",
        "model")
    enable_liger_kernel: bool = _field(
        False, "Use Liger's fused linear cross-entropy on a GPU where liger-kernel is installed.", "model")
    loss_chunk_size: int = _field(
        LOSS_CHUNK_SIZE, "Tokens per chunk of the chunked cross-entropy: full-sequence fp32 logits are never "
        "materialised. 0 turns chunking off (the model's own loss).", "model", ge=0)

    # ---------------------------------------------------------------- data
    dataset: list[str] = _field(
        ..., "Training datasets: names in dataset_dir/dataset_info.json, comma-separated or a YAML list.",
        "data", min_length=1)
    eval_dataset: list[str] | None = _field(
        None, "Evaluation datasets (registry names). When unset, val_size splits them off the training data.",
        "data")
    dataset_dir: str = _field(
        "data", "Folder holding dataset_info.json; relative paths resolve from the working directory.",
        "data")
    template: str | None = _field(
        None, "Chat template used for training and written into the saved tokenizer. Unset: the model's own "
        "(its tokenizer's chat_template). Or a built-in name (LLaMA-Factory's): chatml, qwen, qwen3, "
        "qwen3_nothink, llama2, llama3, mistral, gemma, gemma3, phi4, deepseek3, glm4, ernie, ernie_nothink, "
        "default, empty, alpaca, vicuna.", "data")
    chat_template: str | None = _field(
        None, "A Jinja chat template to train with instead of the model's own: a .jinja file, or the template "
        "text itself.", "data")
    enable_thinking: bool = _field(
        True, "Reasoning templates (qwen3, or a model's own that reads enable_thinking): false trains replies "
        "without their reasoning and puts an empty think block in the prompt, as LLaMA-Factory does.", "data")
    default_system: str | None = _field(
        None, "System prompt for rows that carry none.", "data")
    cutoff_len: int = _field(
        2048, "Maximum tokens per example (and per packed sequence); longer conversations are cut.",
        "data", gt=0)
    max_samples: int | None = _field(
        None, "Keep at most this many rows of each dataset (the first ones).", "data", gt=0)
    val_size: float = _field(
        0.0, "Evaluation split: a fraction in [0, 1) or a whole number of rows, drawn with `seed`.",
        "data", ge=0)
    mix_strategy: Literal["concat", "interleave_under", "interleave_over"] = _field(
        "concat", "How several datasets mix: concatenated, or interleaved until the first "
        "(interleave_under) or last (interleave_over) runs out.", "data")
    interleave_probs: list[float] | None = _field(
        None, "Sampling probabilities per dataset for the interleave strategies (comma-separated).", "data")
    train_on_prompt: bool = _field(
        False, "Train on every token, prompts included, instead of only the assistant replies.", "data")
    mask_history: bool = _field(
        False, "Train only the last assistant reply of each conversation.", "data")
    packing: bool = _field(
        False, "Pack several examples into each sequence of cutoff_len; examples never attend to each "
        "other.", "data")
    preprocessing_num_workers: int | None = _field(
        None, "Processes used to tokenize the data (datasets.map num_proc); unset or 1 tokenizes in the main "
        "process, where the fast tokenizer already spreads each batch over every core.", "data", gt=0)
    preprocessing_batch_size: int = _field(
        1000, "Rows per batch when tokenizing.", "data", gt=0)
    overwrite_cache: bool = _field(
        False, "Tokenize again even when a cached result for the same data and settings exists.", "data")
    skip_bad_rows: bool = _field(
        False, "Skip malformed rows (counted and reported) instead of stopping at the first one.", "data")

    # ---------------------------------------------------------------- training
    per_device_train_batch_size: int = _field(1, "Sequences per device per step.", "training", gt=0)
    gradient_accumulation_steps: int = _field(1, "Steps whose gradients add up before one update.",
                                              "training", gt=0)
    learning_rate: float = _field(5e-5, "Peak learning rate.", "training", gt=0)
    num_train_epochs: float = _field(3.0, "Passes over the training data.", "training", gt=0)
    max_steps: int = _field(-1, "Stop after this many updates; -1 uses num_train_epochs.", "training",
                            ge=-1)
    lr_scheduler_type: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
        "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay"] = _field(
        "cosine", "Learning-rate schedule after warmup.", "training")
    lr_scheduler_kwargs: dict[str, Any] | None = _field(
        None, "Arguments of the schedule: min_lr or min_lr_rate (cosine_with_min_lr, required), num_decay_steps "
        "(warmup_stable_decay, required), num_cycles, power, lr_end, timescale.", "training")
    warmup_steps: int = _field(0, "Linear warmup updates (takes precedence over warmup_ratio).", "training",
                               ge=0)
    warmup_ratio: float = _field(0.0, "Warmup as a fraction of all updates.", "training", ge=0, le=1)
    weight_decay: float = _field(0.0, "AdamW weight decay.", "training", ge=0)
    max_grad_norm: float = _field(1.0, "Gradient clipping norm; 0 disables clipping.", "training", ge=0)
    optim: Literal["adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "paged_adamw_8bit", "adafactor",
                   "sgd"] = _field("adamw_torch", "Optimizer (adamw_bnb_8bit: 8-bit AdamW from bitsandbytes).",
                                   "training")
    bf16: bool = _field(
        False, "Train in bfloat16 where the hardware supports it (else fp32, with a logged note).",
        "training")
    fp16: bool = _field(False, "Train in float16 mixed precision (GPU only).", "training")
    gradient_checkpointing: bool = _field(False, "Recompute activations in backward to save memory.",
                                          "training")
    seed: int = _field(42, "Seed for data order, splits, initialisation and dropout.", "training")
    logging_steps: int = _field(10, "Log the training loss every this many updates.", "training", gt=0)
    dataloader_num_workers: int = _field(0, "Worker processes feeding batches.", "training", ge=0)

    # ---------------------------------------------------------------- evaluation
    per_device_eval_batch_size: int = _field(1, "Sequences per device per evaluation step.", "evaluation",
                                             gt=0)
    eval_strategy: Literal["no", "steps", "epoch"] = _field(
        "no", "When to evaluate: no, every eval_steps updates, or every epoch.", "evaluation")
    eval_steps: int | None = _field(None, "Evaluate every this many updates (eval_strategy: steps).",
                                    "evaluation", gt=0)
    early_stopping_steps: int | None = _field(
        None, "Stop when eval loss has not improved for this many evaluations; the best checkpoint is "
        "loaded at the end.", "evaluation", gt=0)
    load_best_model_at_end: bool = _field(
        False, "Load the checkpoint with the lowest eval loss when training ends.", "evaluation")
    eval_generation_samples: int = _field(
        2, "Eval prompts answered (greedy) at each evaluation and logged to TensorBoard as text.",
        "evaluation", ge=0)
    generation_max_new_tokens: int = _field(
        64, "Token budget of the answers generated at evaluation.", "evaluation", gt=0)

    # ---------------------------------------------------------------- output
    output_dir: str = _field(..., "Where the adapter, checkpoints, logs and metrics are written.", "output")
    overwrite_output_dir: bool = _field(
        False, "Allow training into a non-empty output_dir (same as --overwrite).", "output")
    save_strategy: Literal["no", "steps", "epoch"] = _field(
        "steps", "When to save checkpoints.", "output")
    save_steps: int = _field(500, "Save a checkpoint every this many updates.", "output", gt=0)
    save_total_limit: int | None = _field(None, "Keep at most this many checkpoints (the best is kept).",
                                          "output", gt=0)
    report_to: list[str] = _field(["tensorboard"], "Loggers: tensorboard, wandb, none, ...", "output")
    plot_loss: bool = _field(True, "Write training_loss.png (train and eval loss against step).", "output")

    # ---------------------------------------------------------------- distributed
    deepspeed: str | None = _field(None, "DeepSpeed JSON config (see configs/deepspeed/).", "distributed")
    fsdp: bool | str | None = _field(
        None, "Shard with FSDP: true (settings in fsdp_config), or the trainer's older option words such as "
        "'full_shard auto_wrap'.", "distributed")
    fsdp_config: dict[str, Any] | str | None = _field(None, "FSDP config dict or JSON file.", "distributed")

    # ---------------------------------------------------------------- parsing
    _comma_lists = field_validator(
        "dataset", "eval_dataset", "interleave_probs", "report_to", mode="before")(
        classmethod(lambda cls, v: split_commas(v)))

    @field_validator("eval_strategy", "save_strategy", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `no` as false; the user meant the strategy "no".
        return "no" if value is False else value

    @field_validator("learning_rate", "num_train_epochs", "val_size", "weight_decay", "max_grad_norm",
                     "warmup_ratio")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("report_to")
    @classmethod
    def _known_reporters(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in (*REPORTERS, "none", "all")]
        if unknown:
            raise ValueError(f"unknown logger {unknown[0]!r}; use none or any of {', '.join(REPORTERS)}")
        return value

    @field_validator("dataset", "eval_dataset")
    @classmethod
    def _each_once(cls, value: list[str] | None) -> list[str] | None:
        twice = [name for i, name in enumerate(value or []) if name in value[:i]]
        if twice:
            raise ValueError(f"{twice[0]!r} is listed twice, so each of its rows would count twice; list it once "
                             "(to weight datasets, use mix_strategy: interleave_under with interleave_probs)")
        return value

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str | None) -> str | None:
        if value is not None and value not in TEMPLATES:
            hint = f" ({TEMPLATE_HINTS[value]})" if value in TEMPLATE_HINTS else ""
            raise ValueError(f"unknown template {value!r}{hint}; choose one of {', '.join(TEMPLATES)}")
        return value

    # ---------------------------------------------------------------- cross-field rules
    @model_validator(mode="after")
    def _cross_field_rules(self) -> SftConfig:
        """Runs every named check and reports all failures together."""
        problems = [msg for check in _CHECKS if (msg := check(self))]
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def resolved_lora_alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_rank

    @property
    def does_eval(self) -> bool:
        """The trainer evaluates during training."""
        return self.eval_strategy != "no"

    @property
    def has_eval_data(self) -> bool:
        """An eval set exists: named eval datasets, or a split drawn off the training data."""
        return bool(self.eval_dataset or self.val_size)

    @property
    def wants_best_model(self) -> bool:
        """The run ends on its best checkpoint (asked for directly, or implied by early stopping)."""
        return self.load_best_model_at_end or self.early_stopping_steps is not None


# Each check returns None when satisfied, else one line naming the keys and the fix.

def check_val_size(c: SftConfig) -> str | None:
    if c.val_size >= 1 and c.val_size != int(c.val_size):
        return "val_size: use a fraction below 1 or a whole number of rows"
    return None


def check_eval_has_data(c: SftConfig) -> str | None:
    if c.does_eval and not c.has_eval_data:
        return "eval_strategy: evaluation needs data; set val_size or eval_dataset (or eval_strategy: no)"
    return None


def check_eval_steps(c: SftConfig) -> str | None:
    if c.eval_strategy == "steps" and c.eval_steps is None:
        return "eval_steps: required when eval_strategy is steps"
    return None


def check_early_stopping(c: SftConfig) -> str | None:
    if c.early_stopping_steps is not None and not c.does_eval:
        return "early_stopping_steps: needs evaluation; set eval_strategy: steps (or epoch)"
    return None


def check_best_model(c: SftConfig) -> str | None:
    if not c.wants_best_model:
        return None
    if not c.does_eval:
        return "load_best_model_at_end: needs evaluation; set eval_strategy"
    if c.save_strategy != c.eval_strategy:
        return (f"save_strategy ({c.save_strategy}) must match eval_strategy ({c.eval_strategy}) so the best "
                "checkpoint exists")
    if c.eval_strategy == "steps" and c.eval_steps and c.save_steps % c.eval_steps:
        return f"save_steps ({c.save_steps}) must be a multiple of eval_steps ({c.eval_steps})"
    return None


def check_precision(c: SftConfig) -> str | None:
    if c.bf16 and c.fp16:
        return "bf16 and fp16: choose one"
    return None


def check_interleave(c: SftConfig) -> str | None:
    if c.interleave_probs is None:
        return None
    if c.mix_strategy == "concat":
        return "interleave_probs: set mix_strategy to interleave_under or interleave_over"
    if len(c.interleave_probs) != len(c.dataset):
        return f"interleave_probs: {len(c.interleave_probs)} values for {len(c.dataset)} datasets"
    if abs(sum(c.interleave_probs) - 1) > 1e-6 or min(c.interleave_probs) < 0:
        return "interleave_probs: must be non-negative and sum to 1"
    never = [name for name, prob in zip(c.dataset, c.interleave_probs) if prob == 0]
    if never and c.mix_strategy == "interleave_over":
        return (f"interleave_probs: {never[0]!r} has probability 0, so interleave_over (which runs until every "
                "dataset is used up) would never finish; give it a probability above 0 or remove it")
    return None


def check_distributed(c: SftConfig) -> str | None:
    if c.deepspeed and c.fsdp:
        return "deepspeed and fsdp: choose one"
    return None


def check_one_template(c: SftConfig) -> str | None:
    if c.template is not None and c.chat_template is not None:
        return "template and chat_template: choose one (a built-in name, or a Jinja template)"
    return None


def check_history_flags(c: SftConfig) -> str | None:
    if c.train_on_prompt and c.mask_history:
        return "train_on_prompt and mask_history contradict each other: choose one"
    return None


def check_scheduler_kwargs(c: SftConfig) -> str | None:
    given = c.lr_scheduler_kwargs or {}
    allowed = SCHEDULER_KWARGS[c.lr_scheduler_type]
    unknown = [key for key in given if key not in allowed]
    if unknown:
        takes = f"takes only {', '.join(allowed)}" if allowed else "takes none"
        return f"lr_scheduler_kwargs: {unknown[0]!r} is not an argument of {c.lr_scheduler_type} ({takes})"
    needed = SCHEDULER_REQUIRES.get(c.lr_scheduler_type, ())
    if needed and sum(key in given for key in needed) != 1:
        return (f"lr_scheduler_type: {c.lr_scheduler_type} needs {' or '.join(needed)} in lr_scheduler_kwargs"
                f"{' (one of them, not both)' if len(needed) > 1 else ''}, e.g. lr_scheduler_kwargs: {{{needed[0]}: "
                f"{'1.0e-6' if needed[0] == 'min_lr' else 100}}}")
    return None


_CHECKS = (check_val_size, check_eval_has_data, check_eval_steps, check_early_stopping, check_best_model,
           check_precision, check_interleave, check_distributed, check_one_template, check_history_flags,
           check_scheduler_kwargs, *METHOD_CHECKS)
