"""Model stage: tokenizer, precision, base model and the LoRA adapter.

Our schema meets PEFT in exactly one function, `add_adapter`. Heavy libraries are imported inside the
functions so the CLI stays instant.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sftkit.errors import SftkitError

if TYPE_CHECKING:
    import torch

    from sftkit.config import SftConfig

logger = logging.getLogger(__name__)

ATTENTION = {"auto": "sdpa", "sdpa": "sdpa", "fa2": "flash_attention_2", "disabled": "eager"}

# CPU features (torch.cpu.get_capabilities keys) that run bf16 matmuls natively; elsewhere bf16 is emulated.
_CPU_BF16_FEATURES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


# ---------------------------------------------------------------------------- tokenizer

def load_tokenizer(cfg: SftConfig) -> Any:
    """Loads the base tokenizer and prepares it for the config's chat template.

    Control tokens the template needs are added as special tokens, its Jinja chat template is set and a
    pad token is provided if missing (`sftkit.data.template.prepare_tokenizer`).

    Raises:
        SftkitError: the model directory or hub id cannot be loaded (missing, offline, not a tokenizer).
    """
    from transformers import AutoTokenizer

    from sftkit.data.template import get_template, prepare_tokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise SftkitError(_unloadable(cfg.model_name_or_path, "tokenizer", exc)) from None
    prepare_tokenizer(tokenizer, get_template(cfg.template))
    return tokenizer


def template_token_ids(tokenizer: Any, template_name: str) -> list[int]:
    """Ids of the template's control tokens: the embedding rows that must train.

    A base model has never seen them in use, whether `prepare_tokenizer` just added them or the
    vocabulary already reserved them, so all of them train (as PEFT trainable tokens).
    """
    from sftkit.data.template import get_template

    tokens = get_template(template_name).special_tokens
    return sorted({tokenizer.convert_tokens_to_ids(token) for token in tokens})


def _unloadable(name: str, what: str, exc: Exception) -> str:
    """One line saying why `name` could not be loaded and what to do about it."""
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    return (f"model_name_or_path: cannot load the {what} from {name!r} ({reason}); use an existing local "
            "model directory, or a Hugging Face hub id with network access")


# ---------------------------------------------------------------------------- precision

@dataclass(frozen=True)
class Precision:
    """The dtype training computes in, on which device, and a note for the user."""

    dtype_name: str  # "bfloat16", "float16" or "float32"
    device: str  # "cuda", "mps", "xpu" or "cpu"
    note: str

    @property
    def bf16(self) -> bool:
        return self.dtype_name == "bfloat16"

    @property
    def fp16(self) -> bool:
        return self.dtype_name == "float16"

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype_name)


def resolve_precision(cfg: SftConfig) -> Precision:
    """Picks the training dtype: what the config asks for where the hardware has it, else fp32.

    The same config runs on a GPU and on a CPU without edits: a missing capability is a logged note,
    not an error.
    """
    device = _device_type()
    if cfg.bf16 and _bf16_supported(device):
        return Precision("bfloat16", device, f"bf16 mixed precision on {device}")
    if cfg.fp16 and device == "cuda":
        return Precision("float16", device, "fp16 mixed precision on cuda")
    if cfg.bf16 or cfg.fp16:
        wanted = "bf16" if cfg.bf16 else "fp16"
        note = f"{wanted} requested but this {device} does not support it: training in fp32"
        logger.warning(note)
        return Precision("float32", device, note)
    return Precision("float32", device, f"fp32 on {device}")


def _device_type() -> str:
    """The accelerator the trainer will pick, as a device type name."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "xpu"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _bf16_supported(device: str) -> bool:
    import torch

    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    if device == "xpu":
        return torch.xpu.is_bf16_supported()
    if device == "mps":
        return False  # autocast bf16 on MPS is incomplete; fp32 is the safe choice
    capabilities = torch.cpu.get_capabilities()
    return any(capabilities.get(feature, False) for feature in _CPU_BF16_FEATURES)


# ---------------------------------------------------------------------------- model

def load_model(cfg: SftConfig, tokenizer: Any, precision: Precision) -> Any:
    """Loads the base causal LM (safetensors only) and grows its embeddings to fit the tokenizer.

    LoRA keeps the frozen base weights in the training dtype; full fine-tuning keeps fp32 master weights
    and lets autocast compute in bf16/fp16, as mixed precision needs.

    Raises:
        SftkitError: the model cannot be loaded, or the attention kernel is unavailable.
    """
    import torch
    from transformers import AutoModelForCausalLM

    dtype = precision.dtype if cfg.finetuning_type == "lora" else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": ATTENTION[cfg.flash_attn],
                              "use_safetensors": True}
    if cfg.trust_remote_code:
        kwargs["trust_remote_code"] = True
    try:
        model = AutoModelForCausalLM.from_pretrained(cfg.model_name_or_path, **kwargs)
    except ImportError as exc:
        raise SftkitError(f"flash_attn: {cfg.flash_attn} is unavailable here ({exc}); use flash_attn: sdpa") from None
    except (OSError, ValueError) as exc:
        raise SftkitError(_unloadable(cfg.model_name_or_path, "model", exc)) from None
    grow_embeddings(model, len(tokenizer))
    return model


def grow_embeddings(model: Any, vocab_size: int) -> None:
    """Resizes the embeddings to `vocab_size` only when they are smaller: never shrinks.

    Rows past the tokenizer are unused padding (ERNIE reserves some); removing them would change the
    model for nothing. `resize_token_embeddings` re-ties tied output embeddings.
    """
    rows = model.get_input_embeddings().weight.shape[0]
    if vocab_size > rows:
        model.resize_token_embeddings(vocab_size)
        logger.info("embeddings grown from %d to %d rows for the template's tokens", rows, vocab_size)


# ---------------------------------------------------------------------------- adapter

def add_adapter(model: Any, cfg: SftConfig, new_token_ids: Sequence[int] = ()) -> Any:
    """Wraps the model with a PEFT LoRA adapter (or leaves every weight trainable for full fine-tuning).

    `new_token_ids` are embedding rows that train as PEFT trainable tokens (only those rows, tied output
    rows included) and are saved with the adapter: the template's control tokens, so a base model learns
    to emit its end token.

    Raises:
        SftkitError: a `lora_target` name matches no linear layer of the model.
    """
    if cfg.finetuning_type == "full":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.resolved_lora_alpha, lora_dropout=cfg.lora_dropout,
        use_rslora=cfg.use_rslora, bias="none", task_type="CAUSAL_LM",
        target_modules=_target_modules(model, cfg.lora_target),
        trainable_token_indices=sorted(set(new_token_ids)) or None,
    )
    model = get_peft_model(model, lora)
    _expose_head_bias(model)
    return model


def _expose_head_bias(model: Any) -> None:
    """Lets TRL's fused LM head read `lm_head.bias` through PEFT's trainable-tokens wrapper.

    The wrapper (put on a tied output head) proxies only `.weight` (the trained rows merged in), while
    TRL projects with `lm_head.weight` and `lm_head.bias` directly; the base layer's bias (None for
    causal LMs) is exposed as a plain attribute so no parameter is registered twice.
    """
    head = model.get_output_embeddings()
    adapter = getattr(head, "token_adapter", None)
    if adapter is not None and "bias" not in vars(head):
        object.__setattr__(head, "bias", getattr(adapter.base_layer, "bias", None))


def linear_layer_names(model: Any) -> list[str]:
    """Short names of the model's nn.Linear layers (q_proj, ...), the output head excluded."""
    import torch

    head = model.get_output_embeddings()
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and module is not head}
    return sorted(names)


def _target_modules(model: Any, targets: list[str]) -> list[str] | str:
    """PEFT target_modules for `lora_target`: "all-linear" (never the head) or validated names."""
    if targets == ["all"]:
        return "all-linear"
    available = linear_layer_names(model)
    unknown = [name for name in targets if name not in available]
    if unknown:
        raise SftkitError(
            f"lora_target: {', '.join(unknown)} matches no linear layer of {type(model).__name__}; its linear "
            f"layers are: {', '.join(available)} (or use lora_target: all)")
    return list(targets)


# ---------------------------------------------------------------------------- report

@dataclass(frozen=True)
class ParamReport:
    """Parameter counts for the start-of-run summary."""

    total: int
    trainable: int
    lora: int

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def line(self) -> str:
        return (f"{self.total:,} parameters, {self.trainable:,} trainable ({self.trainable_percent:.3f}%), "
                f"{self.lora:,} in LoRA matrices")


def count_parameters(model: Any) -> ParamReport:
    """Counts total, trainable and LoRA parameters (shared tied weights once)."""
    total = trainable = lora = 0
    for name, param in model.named_parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
        if "lora_" in name:
            lora += param.numel()
    return ParamReport(total=total, trainable=trainable, lora=lora)
