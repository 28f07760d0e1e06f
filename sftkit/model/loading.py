"""Loading the base causal LM: safetensors only, the attention kernel asked for, embeddings grown to the tokenizer.

Heavy libraries are imported inside the functions so the CLI stays instant.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.data.model_source import resolve_model
from sftkit.data.tokenizer import unloadable
from sftkit.errors import SftkitError
from sftkit.quiet import quiet_loading_bars
from sftkit.run_dir import check_weights

if TYPE_CHECKING:
    from torch import nn

    from sftkit.config import SftConfig
    from sftkit.model.precision import Precision

logger = logging.getLogger(__name__)

# flash_attn values and transformers' attn_implementation names; auto is resolved per device (attention_implementation)
ATTENTION = {"sdpa": "sdpa", "fa2": "flash_attention_2", "fa3": "flash_attention_3", "flex": "flex_attention",
             "disabled": "eager"}
DAMAGED_MODEL_FIX = "the copy is incomplete (an interrupted download or copy?): download or copy the model again"


def load_model(cfg: SftConfig, tokenizer: Any, precision: Precision) -> Any:
    """Loads the base causal LM (safetensors only) and grows its embeddings to fit the tokenizer.

    LoRA keeps the frozen base weights in the training dtype; full fine-tuning keeps fp32 master weights
    and lets autocast compute in bf16/fp16, as mixed precision needs.

    Raises:
        SftkitError: the model cannot be loaded (or its weights files are damaged), or the attention kernel
            is unavailable.
    """
    source = resolve_model(cfg.model_name_or_path)
    quiet_loading_bars()
    import torch
    from transformers import AutoModelForCausalLM

    dtype = precision.dtype if cfg.finetuning_type == "lora" else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True,
                              "attn_implementation": attention_implementation(cfg.flash_attn, precision.device)}
    if cfg.trust_remote_code:
        kwargs["trust_remote_code"] = True
    check_weights(Path(cfg.model_name_or_path), DAMAGED_MODEL_FIX)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except ImportError as exc:
        raise SftkitError(f"flash_attn: {cfg.flash_attn} is unavailable here ({exc}); use flash_attn: auto or sdpa") \
            from None
    except (OSError, ValueError) as exc:
        raise SftkitError(unloadable(cfg.model_name_or_path, "model", exc)) from None
    grow_embeddings(model, len(tokenizer))
    return model


def attention_implementation(flash_attn: str, device: str) -> str:
    """transformers' attn_implementation for a flash_attn value; auto takes flash-attention 2 where it can run.

    flash-attention 2 needs a CUDA GPU and the flash-attn package (transformers' own availability check);
    elsewhere auto is sdpa, which training then swaps for a document-masked kernel on packed rows
    (sftkit.training.attention).
    """
    if flash_attn != "auto":
        return ATTENTION[flash_attn]
    from transformers.utils import is_flash_attn_2_available

    return "flash_attention_2" if device == "cuda" and is_flash_attn_2_available() else "sdpa"


def check_context_length(cfg: SftConfig) -> None:
    """Refuses packing into sequences longer than the model's context, read from its config alone.

    Packed sequences fill cutoff_len, so positions past max_position_embeddings would be trained (and the
    packer sizes its tables by cutoff_len). A config that cannot be read is left to the model loading.

    Raises:
        SftkitError: cutoff_len beyond max_position_embeddings with packing on.
    """
    if not cfg.packing:
        return
    from transformers import AutoConfig

    try:
        context = getattr(AutoConfig.from_pretrained(cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code),
                          "max_position_embeddings", None)
    except Exception:  # noqa: BLE001 - any failure here is reported, better worded, by the model loading
        return
    if isinstance(context, int) and cfg.cutoff_len > context:
        raise SftkitError(f"cutoff_len {cfg.cutoff_len}: beyond the model's context ({context} positions, "
                          "max_position_embeddings); packed sequences fill cutoff_len, so set cutoff_len to at most "
                          f"{context} (or packing: false)")


def grow_embeddings(model: Any, vocab_size: int) -> None:
    """Resizes the embeddings to `vocab_size` only when they are smaller: never shrinks.

    Rows past the tokenizer are unused padding (ERNIE reserves some); removing them would change the
    model for nothing. `resize_token_embeddings` re-ties tied output embeddings.
    """
    rows = model.get_input_embeddings().weight.shape[0]
    if vocab_size > rows:
        model.resize_token_embeddings(vocab_size)
        logger.info("embeddings grown from %d to %d rows for the template's tokens", rows, vocab_size)


def causal_lm_of(model: nn.Module) -> nn.Module:
    """The transformers causal LM inside a PEFT wrapper (LoRA layers are injected in place), or `model`."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def stored_dtype(name: str, trust_remote_code: bool = False) -> str | None:
    """The dtype a model's weights are stored in, as its config records it ("float32", "bfloat16", ...), or None."""
    source = resolve_model(name)
    config_file = Path(source) / "config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        dtype = config.get("dtype") or config.get("torch_dtype") if isinstance(config, dict) else None
    else:
        from transformers import AutoConfig

        dtype = getattr(AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code), "dtype", None)
    return str(dtype).removeprefix("torch.") if dtype else None
