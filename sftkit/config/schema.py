"""The schema: the `SftConfig` model, its constants and the named cross-field checks."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import ConfigDict, ValidationInfo, field_validator, model_validator

from sftkit.config.compat import COMPAT_CHECKS, CompatConfig, apply_compat
from sftkit.config.fields import documented, split_commas
from sftkit.config.llamafactory import OTHER_STAGES, REFUSED_TRUE
from sftkit.config.methods import METHOD_CHECKS, MethodsConfig
from sftkit.config.quality import QUALITY_CHECKS, DataQualityConfig
from sftkit.templates.registry import TEMPLATE_HINTS, TEMPLATES, UNSET_HINT

# transformers' logging integrations (report_to), plus "none" and "all"; tests compare with transformers' list.
REPORTERS = (
    "azure_ml",
    "clearml",
    "codecarbon",
    "comet_ml",
    "dagshub",
    "dvclive",
    "flyte",
    "kubeflow",
    "mlflow",
    "neptune",
    "swanlab",
    "tensorboard",
    "trackio",
    "wandb",
)
# The arguments each learning-rate schedule takes from lr_scheduler_kwargs (transformers.optimization), and
# those it cannot run without (one of each tuple).
SCHEDULER_KWARGS = {
    "linear": (),
    "constant": (),
    "constant_with_warmup": (),
    "cosine": ("num_cycles",),
    "cosine_with_restarts": ("num_cycles",),
    "polynomial": ("lr_end", "power"),
    "inverse_sqrt": ("timescale",),
    "cosine_with_min_lr": ("min_lr", "min_lr_rate", "num_cycles"),
    "warmup_stable_decay": (
        "num_decay_steps",
        "num_stable_steps",
        "warmup_type",
        "decay_type",
        "min_lr_ratio",
        "num_cycles",
    ),
}
SCHEDULER_REQUIRES = {"cosine_with_min_lr": ("min_lr", "min_lr_rate"), "warmup_stable_decay": ("num_decay_steps",)}
LOSS_CHUNK_SIZE = 256  # trained tokens per output-head call, unless the config sets loss_chunk_size
GROUPS = ("model", "data", "finetuning", "training", "evaluation", "output", "distributed")


_field = documented


class SftConfig(MethodsConfig, DataQualityConfig, CompatConfig):
    """Everything one fine-tuning run needs. Unknown keys are errors. The fine-tuning methods' and the data-quality
    keys come from the mixins (sftkit.config.methods, sftkit.config.quality), LLaMA-Factory's and transformers'
    keys taken for compatibility from sftkit.config.compat."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_default=True)

    # ---------------------------------------------------------------- model
    model_name_or_path: str = _field(
        ..., "Base model: a local directory or a Hugging Face hub id (e.g. baidu/ERNIE-4.5-0.3B-Base-PT).", "model"
    )
    trust_remote_code: bool = _field(
        False, "Run Python code shipped with the model repo. Off unless you trust its author.", "model"
    )
    flash_attn: Literal["auto", "sdpa", "fa2", "fa3", "flex", "disabled"] = _field(
        "auto",
        "Attention kernel. auto: flash-attention 2 on a GPU where flash-attn is installed, else sdpa; "
        "packed rows then never build a dense mask (flash's variable-length kernel; on a GPU without it, "
        "flex_attention with a block mask of the packed examples; on a CPU, sdpa per packed example). sdpa, "
        "fa2 / fa3 (flash-attention 2 / 3, GPU only), flex (PyTorch's flex_attention) or disabled (eager).",
        "model",
    )
    enable_liger_kernel: bool = _field(
        False,
        "Liger's fused kernels on a GPU where liger-kernel is installed: RMSNorm, SwiGLU and the fused "
        "linear cross-entropy (on a CPU a note, and the model's own modules).",
        "model",
    )
    torch_compile: bool = _field(
        False,
        "Compile each decoder layer with torch.compile (fused elementwise kernels; the first steps "
        "are slower while it compiles).",
        "model",
    )
    loss_chunk_size: int = _field(
        LOSS_CHUNK_SIZE,
        "Tokens per chunk of the chunked cross-entropy: full-sequence fp32 logits are never "
        "materialised. 0 turns chunking off (the model's own loss).",
        "model",
        ge=0,
    )
    use_unsloth: bool = _field(
        False,
        "LLaMA-Factory's unsloth kernels; accepted as false only (sftkit has no unsloth path: "
        "enable_liger_kernel gives fused kernels on a GPU).",
        "model",
    )

    # ---------------------------------------------------------------- data
    dataset: list[str] = _field(
        ...,
        "Training datasets: names in dataset_dir/dataset_info.json, comma-separated or a YAML list.",
        "data",
        min_length=1,
    )
    eval_dataset: list[str] | None = _field(
        None, "Evaluation datasets (registry names). When unset, val_size splits them off the training data.", "data"
    )
    dataset_dir: str = _field(
        "data", "Folder holding dataset_info.json; relative paths resolve from the working directory.", "data"
    )
    template: str | None = _field(
        None,
        "Chat template used for training and written into the saved tokenizer. Unset: the model's own "
        "(its tokenizer's chat_template). Or a built-in name (LLaMA-Factory's): chatml, qwen, qwen3, "
        "qwen3_nothink, qwen3_5, qwen3_5_nothink, llama2, llama3, mistral, gemma, gemma2, gemma3, phi, phi4, "
        "deepseek, deepseekr1, deepseek3, glm4, ernie, ernie_nothink, yi, smollm2, intern2, lfm2, cohere, granite3, "
        "hunyuan, olmo, default, empty, alpaca, vicuna. A LLaMA-Factory name not built in: leave it unset.",
        "data",
    )
    chat_template: str | None = _field(
        None,
        "A Jinja chat template to train with instead of the model's own: a .jinja file, or the template text itself.",
        "data",
    )
    enable_thinking: bool = _field(
        True,
        "Reasoning templates (qwen3, or a model's own that reads enable_thinking): false trains replies "
        "without their reasoning and puts an empty think block in the prompt, as LLaMA-Factory does.",
        "data",
    )
    default_system: str | None = _field(None, "System prompt for rows that carry none.", "data")
    cutoff_len: int = _field(
        2048, "Maximum tokens per example (and per packed sequence); longer conversations are cut.", "data", gt=0
    )
    max_samples: int | None = _field(
        None, "Keep at most this many rows of each dataset (the first ones).", "data", gt=0
    )
    val_size: float = _field(
        0.0, "Evaluation split: a fraction in [0, 1) or a whole number of rows, drawn with `seed`.", "data", ge=0
    )
    mix_strategy: Literal["concat", "interleave_under", "interleave_over"] = _field(
        "concat",
        "How several datasets mix: concatenated, or interleaved until the first "
        "(interleave_under) or last (interleave_over) runs out.",
        "data",
    )
    interleave_probs: list[float] | None = _field(
        None, "Sampling probabilities per dataset for the interleave strategies (comma-separated).", "data"
    )
    train_on_prompt: bool = _field(
        False, "Train on every token, prompts included, instead of only the assistant replies.", "data"
    )
    mask_history: bool = _field(False, "Train only the last assistant reply of each conversation.", "data")
    packing: bool = _field(
        False, "Pack several examples into each sequence of cutoff_len; examples never attend to each other.", "data"
    )
    neat_packing: bool = _field(
        False,
        "LLaMA-Factory's packing without attention between packed examples; sftkit's packing already keeps "
        "them apart, so true turns packing on.",
        "data",
    )
    streaming: bool = _field(
        False,
        "LLaMA-Factory's dataset streaming; accepted as false only (sftkit reads and checks every row "
        "before training: bound a large dataset with max_samples).",
        "data",
    )
    preprocessing_num_workers: int | None = _field(
        None,
        "Processes used to tokenize the data (datasets.map num_proc); unset or 1 tokenizes in the main "
        "process, where the fast tokenizer already spreads each batch over every core.",
        "data",
        gt=0,
    )
    preprocessing_batch_size: int = _field(1000, "Rows per batch when tokenizing.", "data", gt=0)
    overwrite_cache: bool = _field(
        False, "Tokenize again even when a cached result for the same data and settings exists.", "data"
    )
    skip_bad_rows: bool = _field(
        False, "Skip malformed rows (counted and reported) instead of stopping at the first one.", "data"
    )

    # ---------------------------------------------------------------- training
    per_device_train_batch_size: int = _field(8, "Sequences per device per step.", "training", gt=0)
    gradient_accumulation_steps: int = _field(1, "Steps whose gradients add up before one update.", "training", gt=0)
    learning_rate: float = _field(5e-5, "Peak learning rate.", "training", gt=0)
    num_train_epochs: float = _field(3.0, "Passes over the training data.", "training", gt=0)
    max_steps: int = _field(-1, "Stop after this many updates; -1 uses num_train_epochs.", "training", ge=-1)
    lr_scheduler_type: Literal[
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
        "inverse_sqrt",
        "cosine_with_min_lr",
        "warmup_stable_decay",
    ] = _field("linear", "Learning-rate schedule after warmup.", "training")
    lr_scheduler_kwargs: dict[str, Any] | None = _field(
        None,
        "Arguments of the schedule: min_lr or min_lr_rate (cosine_with_min_lr, required), num_decay_steps "
        "(warmup_stable_decay, required), num_cycles, power, lr_end, timescale.",
        "training",
    )
    warmup_steps: int = _field(0, "Linear warmup updates (takes precedence over warmup_ratio).", "training", ge=0)
    warmup_ratio: float = _field(0.0, "Warmup as a fraction of all updates.", "training", ge=0, le=1)
    weight_decay: float = _field(0.0, "AdamW weight decay.", "training", ge=0)
    adam_beta1: float = _field(0.9, "AdamW beta1 (first-moment decay).", "training", ge=0, lt=1)
    adam_beta2: float = _field(0.999, "AdamW beta2 (second-moment decay).", "training", ge=0, lt=1)
    adam_epsilon: float = _field(1e-8, "AdamW epsilon (added to the denominator).", "training", gt=0)
    max_grad_norm: float = _field(1.0, "Gradient clipping norm; 0 disables clipping.", "training", ge=0)
    optim: Literal["adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "paged_adamw_8bit", "adafactor", "sgd"] = (
        _field("adamw_torch", "Optimizer (adamw_bnb_8bit: 8-bit AdamW from bitsandbytes).", "training")
    )
    bf16: bool = _field(
        False, "Train in bfloat16 where the hardware supports it (else fp32, with a logged note).", "training"
    )
    fp16: bool = _field(False, "Train in float16 mixed precision (GPU only).", "training")
    gradient_checkpointing: bool | Literal["auto"] = _field(
        "auto",
        "Recompute activations in backward to save memory. auto: on only when one micro-batch's "
        "estimated activations, with the weights and optimizer state, would not fit the device with a "
        "quarter to spare (sftkit.training.memory).",
        "training",
    )
    batch_tokens: int | None = _field(
        None,
        "With packing: a micro-batch is a token budget instead of rows. Whole examples (each at most "
        "cutoff_len) are packed into one row of at most this many tokens, never attending to each other; "
        "per_device_train_batch_size stays 1.",
        "training",
        gt=0,
    )
    seed: int = _field(42, "Seed for data order, splits, initialisation and dropout.", "training")
    logging_steps: int = _field(10, "Log the training loss every this many updates.", "training", gt=0)
    dataloader_num_workers: int = _field(0, "Worker processes feeding batches.", "training", ge=0)

    # ---------------------------------------------------------------- evaluation
    per_device_eval_batch_size: int = _field(8, "Sequences per device per evaluation step.", "evaluation", gt=0)
    eval_strategy: Literal["no", "steps", "epoch"] = _field(
        "no", "When to evaluate: no, every eval_steps updates, or every epoch.", "evaluation"
    )
    eval_steps: int | None = _field(
        None, "Evaluate every this many updates (eval_strategy: steps).", "evaluation", gt=0
    )
    early_stopping_steps: int | None = _field(
        None,
        "Stop when eval loss has not improved for this many evaluations; the best checkpoint is loaded at the end.",
        "evaluation",
        gt=0,
    )
    load_best_model_at_end: bool = _field(
        False, "Load the checkpoint with the lowest eval loss when training ends.", "evaluation"
    )
    metric_for_best_model: str | None = _field(
        None,
        "What picks the best checkpoint; sftkit evaluates the loss only, so eval_loss (loss is the same). "
        "Unset: eval_loss whenever a best checkpoint is kept.",
        "evaluation",
    )
    eval_generation_samples: int = _field(
        2, "Eval prompts answered (greedy) at each evaluation and logged to TensorBoard as text.", "evaluation", ge=0
    )
    generation_max_new_tokens: int = _field(
        64, "Token budget of the answers generated at evaluation.", "evaluation", gt=0
    )
    benchmark_thresholds: dict[str, float] | None = _field(
        None,
        "Least score `sftkit report` requires per lm-eval task metric, as TASK/METRIC: SCORE (e.g. "
        "{sftkit_mc/acc: 0.5}); the scores come from `sftkit eval RUN --tasks`.",
        "evaluation",
    )
    release_blocklist: list[str] | None = _field(
        None,
        "Words or phrases (case-insensitive, whole words) that `sftkit report` looks for in the model's "
        "sampled answers; any hit fails the harmful-outputs line. Comma-separated or a YAML list.",
        "evaluation",
    )
    release_samples: int = _field(
        16,
        "Eval prompts `sftkit report` answers (greedy) to screen the outputs and time generation.",
        "evaluation",
        gt=0,
    )
    release_max_loss_gap: float = _field(
        0.10,
        "Largest relative gap (eval loss - train loss) / train loss that `sftkit report` passes.",
        "evaluation",
        ge=0,
    )
    release_min_human_score: float = _field(
        4.0,
        "Least mean human rating (1-5, over helpfulness, accuracy, clarity, safety) `sftkit report` "
        "passes; the ratings come from `sftkit eval --ratings`.",
        "evaluation",
        ge=1,
        le=5,
    )
    release_min_tokens_per_second: float | None = _field(
        None,
        "Least generation speed (new tokens/s on the machine running `sftkit report`) it passes; unset: "
        "the speed is shown, not judged.",
        "evaluation",
        gt=0,
    )
    release_max_model_gb: float | None = _field(
        None,
        "Largest model (GB, on disk and in memory) `sftkit report` passes; unset: the sizes are shown, not judged.",
        "evaluation",
        gt=0,
    )

    # ---------------------------------------------------------------- output
    output_dir: str = _field(..., "Where the adapter, checkpoints, logs and metrics are written.", "output")
    overwrite_output_dir: bool = _field(
        False, "Allow training into a non-empty output_dir (same as --overwrite).", "output"
    )
    save_strategy: Literal["no", "steps", "epoch"] = _field("steps", "When to save checkpoints.", "output")
    save_steps: int = _field(500, "Save a checkpoint every this many updates.", "output", gt=0)
    save_total_limit: int | None = _field(
        None, "Keep at most this many checkpoints (the best is kept).", "output", gt=0
    )
    report_to: list[str] = _field(["tensorboard"], "Loggers: tensorboard, wandb, none, ...", "output")
    plot_loss: bool = _field(True, "Write training_loss.png (train and eval loss against step).", "output")
    save_only_model: bool = _field(
        False,
        "Checkpoints hold the weights only, no optimizer, scheduler or RNG state: smaller, but a run "
        "cannot resume from them.",
        "output",
    )
    resume_from_checkpoint: bool | str | None = _field(
        None,
        "Continue from a checkpoint, as --resume: true (the newest complete one in output_dir) or a "
        "checkpoint path; --resume on the command line wins.",
        "output",
    )
    run_name: str | None = _field(None, "Name of the run in the loggers (wandb, mlflow, ...).", "output")
    logging_dir: str | None = _field(
        None, "Folder of the TensorBoard scalars (default: output_dir/runs/<date>).", "output"
    )

    # ---------------------------------------------------------------- distributed
    deepspeed: str | None = _field(None, "DeepSpeed JSON config (see configs/deepspeed/).", "distributed")
    fsdp: bool | str | None = _field(
        None,
        "Shard with FSDP: true (settings in fsdp_config), or the trainer's older option words such as "
        "'full_shard auto_wrap' (a string or a YAML list).",
        "distributed",
    )
    fsdp_config: dict[str, Any] | str | None = _field(None, "FSDP config dict or JSON file.", "distributed")
    fsdp_transformer_layer_cls_to_wrap: list[str] | None = _field(
        None,
        "Decoder-layer classes FSDP wraps (comma-separated), the trainer's older spelling of fsdp_config's "
        "transformer_layer_cls_to_wrap.",
        "distributed",
    )
    ddp_timeout: int = _field(
        1800, "Seconds a process waits for the others (NCCL/gloo timeout) before the run fails.", "distributed", gt=0
    )
    ray_num_workers: int = _field(
        1,
        "LLaMA-Factory's Ray workers, used there only with USE_RAY=1; sftkit does not launch through Ray, so "
        "it is ignored (start N processes with torchrun --nproc_per_node N).",
        "distributed",
        gt=0,
    )

    # ---------------------------------------------------------------- parsing
    _comma_lists = field_validator(
        "dataset",
        "eval_dataset",
        "interleave_probs",
        "report_to",
        "fsdp_transformer_layer_cls_to_wrap",
        "release_blocklist",
        mode="before",
    )(classmethod(lambda cls, v: split_commas(v)))

    @field_validator("fsdp", mode="before")
    @classmethod
    def _fsdp_words(cls, value: Any) -> Any:
        # LLaMA-Factory's YAMLs list the option words; the trainer reads them as one string too
        return " ".join(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else value

    @field_validator("stage", mode="before")
    @classmethod
    def _sft_only(cls, value: Any) -> Any:
        if isinstance(value, str) and value in OTHER_STAGES:
            raise ValueError(
                f"{value} is LLaMA-Factory's {OTHER_STAGES[value]}, not supervised fine-tuning; sftkit "
                "trains stage: sft only and has no equivalent"
            )
        return value

    @field_validator("resume_from_checkpoint", mode="before")
    @classmethod
    def _no_empty_path(cls, value: Any) -> Any:
        return None if value == "" or value is False else value

    @field_validator("use_unsloth", "streaming")
    @classmethod
    def _false_only(cls, value: bool, info: ValidationInfo) -> bool:
        if value:
            raise ValueError(REFUSED_TRUE[info.field_name])
        return value

    @field_validator("metric_for_best_model")
    @classmethod
    def _loss_is_the_metric(cls, value: str | None) -> str | None:
        if value not in (None, "eval_loss", "loss"):
            raise ValueError(
                "sftkit's evaluation computes the loss only, so the best checkpoint is the lowest "
                "eval_loss; use metric_for_best_model: eval_loss (or remove it)"
            )
        return value

    @field_validator("eval_strategy", "save_strategy", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `no` as false; the user meant the strategy "no".
        return "no" if value is False else value

    @field_validator(
        "learning_rate",
        "num_train_epochs",
        "val_size",
        "weight_decay",
        "max_grad_norm",
        "warmup_ratio",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
    )
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
            raise ValueError(
                f"{twice[0]!r} is listed twice, so each of its rows would count twice; list it once "
                "(to weight datasets, use mix_strategy: interleave_under with interleave_probs)"
            )
        return value

    @field_validator("benchmark_thresholds")
    @classmethod
    def _task_slash_metric(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        bad = [name for name in value or {} if not all(part.strip() for part in name.partition("/")[::2])]
        if bad:
            raise ValueError(
                f"{bad[0]!r} names no metric; write TASK/METRIC, e.g. sftkit_mc/acc (the names "
                "`sftkit eval --tasks` prints)"
            )
        return value

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str | None) -> str | None:
        if value is not None and value not in TEMPLATES:
            hint = f" ({TEMPLATE_HINTS[value]})" if value in TEMPLATE_HINTS else ""
            raise ValueError(f"unknown template {value!r}{hint}; {UNSET_HINT}, or choose one of {', '.join(TEMPLATES)}")
        return value

    # ---------------------------------------------------------------- cross-field rules
    @model_validator(mode="after")
    def _cross_field_rules(self) -> SftConfig:
        """Runs every named check and reports all failures together."""
        if self.neat_packing:  # LLaMA-Factory turns packing on for neat_packing too
            self.packing = True
        apply_compat(self)
        problems = [msg for check in _CHECKS if (msg := check(self))]
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def resolved_lora_alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_rank

    @property
    def rows_per_micro_batch(self) -> int:
        # a token budget makes each micro-batch one packed row (the batch size left at its default is ignored)
        return 1 if self.batch_tokens else self.per_device_train_batch_size

    @property
    def does_eval(self) -> bool:
        """The trainer evaluates during training."""
        return self.eval_strategy != "no"

    @property
    def has_eval_data(self) -> bool:
        """An eval set exists: named eval datasets, or a split drawn off the training data."""
        return bool(self.eval_dataset or self.val_size)

    @property
    def resume(self) -> str | None:
        """The config's resume_from_checkpoint in --resume's words: "latest", a path, or None."""
        if self.resume_from_checkpoint is True:
            return "latest"
        return self.resume_from_checkpoint or None

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
        return (
            f"save_strategy ({c.save_strategy}) must match eval_strategy ({c.eval_strategy}) so the best "
            "checkpoint exists"
        )
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
        return (
            f"interleave_probs: {never[0]!r} has probability 0, so interleave_over (which runs until every "
            "dataset is used up) would never finish; give it a probability above 0 or remove it"
        )
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


def check_fsdp_layers(c: SftConfig) -> str | None:
    if c.fsdp_transformer_layer_cls_to_wrap and isinstance(c.fsdp_config, str):
        return (
            "fsdp_transformer_layer_cls_to_wrap: with fsdp_config in a JSON file, put "
            "transformer_layer_cls_to_wrap into that file instead"
        )
    if c.fsdp_transformer_layer_cls_to_wrap and not c.fsdp:
        return "fsdp_transformer_layer_cls_to_wrap: set fsdp too (e.g. fsdp: full_shard auto_wrap), or remove it"
    return None


def check_save_only_model(c: SftConfig) -> str | None:
    # The trainer reloads the best checkpoint through the sharded engine's own state, which these lack.
    if c.save_only_model and c.wants_best_model and (c.deepspeed or c.fsdp):
        return (
            "save_only_model: a weights-only checkpoint cannot be reloaded as the best model under DeepSpeed or "
            "FSDP; set save_only_model: false, or drop load_best_model_at_end and early_stopping_steps"
        )
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
        return (
            f"lr_scheduler_type: {c.lr_scheduler_type} needs {' or '.join(needed)} in lr_scheduler_kwargs"
            f"{' (one of them, not both)' if len(needed) > 1 else ''}, e.g. lr_scheduler_kwargs: {{{needed[0]}: "
            f"{'1.0e-6' if needed[0] == 'min_lr' else 100}}}"
        )
    return None


def check_batch_tokens(c: SftConfig) -> str | None:
    if c.batch_tokens is None:
        return None
    if not c.packing:
        return "batch_tokens: a token budget packs examples together; set packing: true (or remove batch_tokens)"
    if c.batch_tokens < c.cutoff_len:
        return (
            f"batch_tokens ({c.batch_tokens}) is below cutoff_len ({c.cutoff_len}), so a full-length example "
            f"would not fit; set batch_tokens to at least {c.cutoff_len}"
        )
    if "per_device_train_batch_size" in c.model_fields_set and c.per_device_train_batch_size != 1:
        return (
            "per_device_train_batch_size: with batch_tokens a micro-batch is one row of batch_tokens tokens; "
            "set per_device_train_batch_size: 1 (or remove batch_tokens)"
        )
    return None


_CHECKS = (
    check_val_size,
    check_eval_has_data,
    check_eval_steps,
    check_early_stopping,
    check_best_model,
    check_precision,
    check_interleave,
    check_distributed,
    check_one_template,
    check_history_flags,
    check_scheduler_kwargs,
    check_fsdp_layers,
    check_save_only_model,
    check_batch_tokens,
    *QUALITY_CHECKS,
    *METHOD_CHECKS,
    *COMPAT_CHECKS,
)
