"""Loading the base causal LM: safetensors only, the attention kernel asked for, embeddings grown to the tokenizer.

Heavy libraries are imported inside the functions so the CLI stays instant.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.data.model_source import resolve_model
from sftkit.data.tokenizer import unloadable
from sftkit.errors import SftkitError
from sftkit.model.quantization import quantization_kwargs
from sftkit.quiet import quiet_loading_bars
from sftkit.run_dir import check_weights

if TYPE_CHECKING:
    from torch import nn

    from sftkit.config import SftConfig
    from sftkit.model.precision import Precision

logger = logging.getLogger(__name__)

# flash_attn values and transformers' attn_implementation names; auto is resolved per device (attention_implementation)
ATTENTION = {
    "sdpa": "sdpa",
    "fa2": "flash_attention_2",
    "fa3": "flash_attention_3",
    "flex": "flex_attention",
    "disabled": "eager",
}
DAMAGED_MODEL_FIX = "the copy is incomplete (an interrupted download or copy?): download or copy the model again"


def load_model(cfg: SftConfig, tokenizer: Any, precision: Precision) -> Any:
    """Loads the base causal LM (safetensors only) and grows its embeddings to fit the tokenizer.

    LoRA and OFT keep the frozen base weights in the training dtype (quantized with quantization_bit);
    full and freeze fine-tuning keep fp32 master weights and let autocast compute in bf16/fp16, as mixed
    precision needs, unless pure_bf16 keeps everything in bf16. rope_scaling stretches the positions.

    Raises:
        SftkitError: the model cannot be loaded (or its weights files are damaged), or the attention kernel
            is unavailable.
    """
    source = resolve_model(cfg.model_name_or_path)
    quiet_loading_bars()
    import torch

    dtype = torch.bfloat16 if cfg.pure_bf16 else precision.dtype if cfg.uses_adapter else torch.float32
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "use_safetensors": True,
        "attn_implementation": attention_implementation(cfg.flash_attn, precision.device),
        **quantization_kwargs(cfg, precision),
    }
    if cfg.trust_remote_code:
        kwargs["trust_remote_code"] = True
    if cfg.rope_scaling:
        kwargs["config"] = scaled_rope_config(cfg, source)
    check_weights(Path(source), DAMAGED_MODEL_FIX)
    try:
        model = _from_pretrained(cfg, source, kwargs)
    except ImportError as exc:
        if cfg.flash_attn in ("fa2", "fa3", "flex"):
            raise SftkitError(
                f"flash_attn: {cfg.flash_attn} is unavailable here ({exc}); use flash_attn: auto or sdpa"
            ) from None
        # e.g. a pre-quantized (GPTQ, AWQ) checkpoint whose kernels are not installed
        raise SftkitError(unloadable(cfg.model_name_or_path, "model", exc)) from None
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


def _from_pretrained(cfg: SftConfig, source: str, kwargs: dict[str, Any]) -> Any:
    """transformers' loader, or the MoD package's for mixture_of_depths (as LLaMA-Factory calls it)."""
    from transformers import AutoModelForCausalLM

    if cfg.mixture_of_depths == "load":
        from MoD import AutoMoDModelForCausalLM  # cannot_run_here has stopped train where MoD is missing

        return AutoMoDModelForCausalLM.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if cfg.mixture_of_depths == "convert":
        from MoD import apply_mod_to_hf

        model = apply_mod_to_hf(model).to(kwargs["dtype"])
    return model


def scaled_rope_config(cfg: SftConfig, source: str) -> Any:
    """The model's config with RoPE stretched by ceil(cutoff_len / context), as LLaMA-Factory's configure_rope.

    Nothing changes when cutoff_len fits the context (a logged note says so) or the model has no RoPE.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    rope = dict(getattr(config, "rope_parameters", None) or {})
    context = rope.get("original_max_position_embeddings") or getattr(config, "max_position_embeddings", None)
    if not rope or not context:
        logger.warning("rope_scaling: %s has no RoPE settings to scale; ignored", type(config).__name__)
        return config
    if cfg.cutoff_len <= context:
        logger.warning(
            "rope_scaling: cutoff_len %d fits the context (%d positions); RoPE is left unscaled",
            cfg.cutoff_len,
            context,
        )
        return config
    factor = float(math.ceil(cfg.cutoff_len / context))
    rope.update(rope_type=cfg.rope_scaling, factor=factor)
    if cfg.rope_scaling in ("dynamic", "yarn", "llama3"):
        rope["original_max_position_embeddings"] = context
    if cfg.rope_scaling == "llama3":
        rope.update(low_freq_factor=1.0, high_freq_factor=4.0)
    config.rope_parameters = rope
    config.max_position_embeddings = int(context * factor)
    logger.info(
        "rope_scaling: %s x%g, context %d -> %d positions",
        cfg.rope_scaling,
        factor,
        context,
        config.max_position_embeddings,
    )
    return config


def check_context_length(cfg: SftConfig) -> None:
    """Refuses packing into sequences longer than the model's context, read from its config alone.

    Packed sequences fill cutoff_len, so positions past max_position_embeddings would be trained (and the
    packer sizes its tables by cutoff_len). A config that cannot be read is left to the model loading.

    Raises:
        SftkitError: cutoff_len beyond max_position_embeddings with packing on.
    """
    if not cfg.packing or cfg.rope_scaling:  # rope_scaling stretches the context to cover cutoff_len
        return
    from transformers import AutoConfig

    try:
        context = getattr(
            AutoConfig.from_pretrained(resolve_model(cfg.model_name_or_path), trust_remote_code=cfg.trust_remote_code),
            "max_position_embeddings",
            None,
        )
    except Exception:  # noqa: BLE001 - any failure here is reported, better worded, by the model loading
        return
    if isinstance(context, int) and cfg.cutoff_len > context:
        raise SftkitError(
            f"cutoff_len {cfg.cutoff_len}: beyond the model's context ({context} positions, "
            "max_position_embeddings); packed sequences fill cutoff_len, so set cutoff_len to at most "
            f"{context} (or packing: false)"
        )


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
