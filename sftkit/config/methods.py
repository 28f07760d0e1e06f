"""The "finetuning" group of the schema: how the model trains (LoRA, OFT, freeze, full), quantization, the
loss variants and the optimizers, with LLaMA-Factory's key names and defaults.

`MethodsConfig` is a mixin that `SftConfig` inherits; `METHOD_CHECKS` are its cross-field rules, run with
the schema's own. Each rule returns None or one line naming the keys and the fix. Rules about this
machine (a package that is not installed, fp8 without a suitable GPU) are not here: they are
`sftkit.config.environment.cannot_run_here`, so a config stays valid everywhere.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, field_validator

from sftkit.config.fields import documented, split_commas

if TYPE_CHECKING:
    from sftkit.config.schema import SftConfig

GROUP = "finetuning"
ADAPTER_TYPES = ("lora", "oft")  # methods that save a PEFT adapter (merge folds it into the base)
# quantization_method values LLaMA-Factory knows; only these three quantize on the fly (quantization_bit).
QUANTIZATION_METHODS = ("bnb", "gptq", "awq", "aqlm", "quanto", "eetq", "hqq", "mxfp4", "fp8")
ON_THE_FLY_BITS = {"bnb": (4, 8), "hqq": (1, 2, 3, 4, 5, 6, 8), "eetq": (8,)}
LOSS_VARIANTS = ("use_dft_loss", "use_asft_loss", "use_eaft_loss")
OPTIMIZER_METHODS = ("use_galore", "use_apollo", "use_badam", "use_adam_mini", "use_muon", "loraplus_lr_ratio")
# Our optim -> the GaLore optimizer transformers builds from it (as LLaMA-Factory maps them).
GALORE_OPTIM = {
    "adamw_torch": "galore_adamw",
    "adamw_bnb_8bit": "galore_adamw_8bit",
    "paged_adamw_8bit": "galore_adamw_8bit",
    "adafactor": "galore_adafactor",
}
FREEZE_KEYS = ("freeze_trainable_modules", "freeze_extra_modules")


def _f(default: Any, doc: str, **kw: Any) -> Any:
    return documented(default, doc, GROUP, **kw)


class MethodsConfig(BaseModel):
    """The fine-tuning method, its adapter, quantization, loss and optimizer settings."""

    # ---------------------------------------------------------------- the method
    stage: Literal["sft"] = _f("sft", "Training stage; sftkit does supervised fine-tuning only.")
    do_train: bool = _f(True, "Accepted for LLaMA-Factory compatibility; `sftkit train` trains.")
    finetuning_type: Literal["lora", "oft", "freeze", "full"] = _f(
        "lora",
        "lora trains low-rank adapters (PEFT); oft trains orthogonal adapters (PEFT's OFT); freeze trains "
        "some decoder layers and freezes the rest; full trains every weight.",
    )
    freeze_trainable_layers: int = _f(
        2,
        "freeze: how many decoder layers train; positive counts from the last layer, negative from the first. "
        "With use_llama_pro: the number of expanded blocks (spread evenly).",
    )
    freeze_trainable_modules: list[str] = _f(
        ["all"], "freeze: the modules of those layers that train (e.g. mlp,self_attn), or all.", min_length=1
    )
    freeze_extra_modules: list[str] | None = _f(
        None, "freeze: modules outside the decoder layers that train too (e.g. embed_tokens,norm)."
    )
    use_llama_pro: bool = _f(
        False,
        "LLaMA Pro: train only the expanded blocks (every n-th layer, n = layers / freeze_trainable_layers) "
        "of a model expanded with LLaMA-Factory's scripts/llama_pro.py; with freeze or lora.",
    )

    # ---------------------------------------------------------------- LoRA
    lora_rank: int = _f(8, "LoRA rank r.", gt=0)
    lora_alpha: int | None = _f(
        None,
        "LoRA alpha; the update is scaled by alpha / r (alpha / sqrt(r) with rsLoRA). Default: 2 x lora_rank.",
        gt=0,
    )
    lora_dropout: float = _f(0.0, "Dropout on the LoRA input.", ge=0, lt=1)
    lora_target: list[str] = _f(
        ["all"],
        "Modules that get adapters: all (every linear layer but the output head) or "
        "comma-separated module names such as q_proj,v_proj.",
        min_length=1,
    )
    use_rslora: bool = _f(False, "Rank-stabilised LoRA scaling (alpha / sqrt(r)).")
    use_dora: bool = _f(False, "DoRA: weight-decomposed LoRA (a trained magnitude per output row; PEFT).")
    pissa_init: bool = _f(False, "Initialise LoRA from the principal singular vectors of each weight (PiSSA; PEFT).")
    pissa_iter: int = _f(16, "PiSSA: fast-SVD iterations; -1 runs a full SVD (exact, slow on large weights).", ge=-1)
    pissa_convert: bool = _f(
        False,
        "PiSSA: save the adapter converted to a plain LoRA (rank 2r) of the original base weights, as "
        "LLaMA-Factory's pissa_converted. sftkit converts the final adapter either way, because merge, chat and "
        "eval load the original base (checkpoints keep the unconverted one for resuming; pissa_init/ holds the "
        "initial adapter).",
    )
    loraplus_lr_ratio: float | None = _f(
        None,
        "LoRA+: the learning rate of the B matrices is this many times learning_rate (PEFT's "
        "create_loraplus_optimizer).",
        gt=0,
    )
    loraplus_lr_embedding: float = _f(1e-6, "LoRA+: learning rate of LoRA embedding layers.", gt=0)
    additional_target: list[str] | None = _f(
        None, "lora/oft: modules trained in full and saved with the adapter (PEFT modules_to_save), e.g. embed_tokens."
    )
    adapter_name_or_path: list[str] | None = _f(
        None,
        "lora: adapters to start from (sftkit run directories or PEFT adapter folders, comma-separated): "
        "all but the last are merged into the base, training continues the last.",
    )
    create_new_adapter: bool = _f(
        False, "With adapter_name_or_path: merge every listed adapter into the base and train a new one."
    )

    # ---------------------------------------------------------------- OFT
    oft_rank: int = _f(0, "OFT: number of orthogonal blocks per layer (0: derived from oft_block_size).", ge=0)
    oft_block_size: int = _f(32, "OFT: size of each orthogonal block (0: derived from oft_rank).", ge=0)
    oft_target: list[str] = _f(["all"], "OFT: modules that get adapters: all linear layers, or names.", min_length=1)
    module_dropout: float = _f(0.0, "OFT: probability of dropping a whole block in training.", ge=0, lt=1)

    # ---------------------------------------------------------------- quantization (QLoRA)
    quantization_bit: int | None = _f(
        None, "Quantize the frozen base weights while loading (QLoRA): 4 or 8 with bitsandbytes. lora or oft only."
    )
    quantization_method: Literal["bnb", "gptq", "awq", "aqlm", "quanto", "eetq", "hqq", "mxfp4", "fp8"] = _f(
        "bnb",
        "How quantization_bit quantizes: bnb (bitsandbytes), or hqq / eetq where installed. GPTQ, AWQ and "
        "AQLM models come quantized already (their config says so).",
    )
    quantization_type: Literal["nf4", "fp4"] = _f("nf4", "4-bit bitsandbytes data type.")
    double_quantization: bool = _f(True, "4-bit bitsandbytes: quantize the quantization constants too.")

    # ---------------------------------------------------------------- model changes
    rope_scaling: Literal["linear", "dynamic", "yarn", "llama3"] | None = _f(
        None,
        "Stretch RoPE positions when cutoff_len exceeds the model's context: factor ceil(cutoff_len / "
        "context), as LLaMA-Factory does.",
    )
    new_special_tokens: list[str] | None = _f(
        None,
        "Special tokens added to the tokenizer (comma-separated); their embedding rows train like the "
        "template's control tokens.",
    )
    resize_vocab: bool = _f(
        False,
        "lora/oft: train the whole input and output embeddings (saved with the adapter), as LLaMA-Factory "
        "does after resizing the vocabulary (full trains them anyway). sftkit always grows the embeddings to "
        "the tokenizer.",
    )
    neftune_noise_alpha: float | None = _f(
        None, "NEFTune: uniform noise of this scale on the input embeddings in training.", gt=0
    )
    mixture_of_depths: Literal["convert", "load"] | None = _f(
        None, "Mixture-of-depths (the MoD package): convert the model, or load a MoD model."
    )
    pure_bf16: bool = _f(
        False, "Keep the weights and the trainable parameters in bfloat16 (no fp32 master weights, no autocast)."
    )

    # ---------------------------------------------------------------- loss variants
    use_dft_loss: bool = _f(
        False, "DFT loss: each trained token's cross-entropy weighted by the model's (detached) probability of it."
    )
    use_asft_loss: bool = _f(
        False,
        "ASFT loss: the DFT loss plus asft_alpha x KL(reference || model), the reference being the model "
        "as training began (the base without the adapter for lora/oft).",
    )
    asft_alpha: float = _f(0.1, "ASFT: weight of the KL term.", ge=0)
    use_eaft_loss: bool = _f(
        False, "EAFT loss: each token's cross-entropy weighted by (top-20 entropy / 3) ^ eaft_alpha."
    )
    eaft_alpha: float = _f(1.0, "EAFT: exponent of the entropy weight.", ge=0)

    # ---------------------------------------------------------------- optimizers
    use_galore: bool = _f(False, "GaLore: low-rank gradient projection (galore-torch through transformers).")
    galore_target: list[str] = _f(["all"], "GaLore: modules projected: all linear layers, or names.", min_length=1)
    galore_rank: int = _f(16, "GaLore: projection rank.", gt=0)
    galore_update_interval: int = _f(200, "GaLore: steps between projection updates.", gt=0)
    galore_scale: float = _f(2.0, "GaLore: scale of the projected update.", gt=0)
    galore_proj_type: Literal["std", "reverse_std", "right", "left", "full"] = _f("std", "GaLore: projection type.")
    galore_layerwise: bool = _f(
        False, "GaLore: update each layer during backward (less memory; no gradient accumulation or DDP)."
    )
    use_apollo: bool = _f(False, "APOLLO optimizer (apollo-torch through transformers).")
    apollo_target: list[str] = _f(["all"], "APOLLO: modules projected: all linear layers, or names.", min_length=1)
    apollo_rank: int = _f(16, "APOLLO: projection rank.", gt=0)
    apollo_update_interval: int = _f(200, "APOLLO: steps between projection updates.", gt=0)
    apollo_scale: float = _f(32.0, "APOLLO: gradient scaling factor.", gt=0)
    apollo_proj: Literal["svd", "random"] = _f("random", "APOLLO: low-rank projection algorithm.")
    apollo_proj_type: Literal["std", "right", "left"] = _f("std", "APOLLO: projection type.")
    apollo_scale_type: Literal["channel", "tensor"] = _f("channel", "APOLLO: scaling granularity.")
    apollo_layerwise: bool = _f(
        False, "APOLLO: update each layer during backward (less memory; no gradient accumulation or DDP)."
    )
    apollo_scale_front: bool = _f(
        False, "APOLLO: norm-growth limiter before the gradient scaling (not in transformers' APOLLO: must stay false)."
    )
    use_badam: bool = _f(False, "BAdam: block-coordinate Adam, one block of parameters at a time (badam).")
    badam_mode: Literal["layer", "ratio"] = _f("layer", "BAdam: switch whole layers, or a ratio of each weight.")
    badam_start_block: int | None = _f(None, "BAdam (layer): the block to start with.", ge=0)
    badam_switch_mode: Literal["ascending", "descending", "random", "fixed"] = _f(
        "ascending", "BAdam (layer): order in which blocks are picked."
    )
    badam_switch_interval: int = _f(50, "BAdam (layer): steps per block; -1 never switches.", ge=-1)
    badam_update_ratio: float = _f(0.05, "BAdam (ratio): fraction of each weight updated.", gt=0, le=1)
    badam_mask_mode: Literal["adjacent", "scatter"] = _f("adjacent", "BAdam (ratio): which entries are updated.")
    badam_verbose: int = _f(0, "BAdam: 0 quiet, 1 prints the block, 2 also the trainable parameters.", ge=0, le=2)
    use_adam_mini: bool = _f(False, "Adam-mini: one second-moment value per parameter block (adam-mini).")
    use_muon: bool = _f(
        False, "Muon (torch.optim.Muon) for the 2-D hidden weights, AdamW for embeddings, head, norms and biases."
    )
    fp8: bool = _f(False, "FP8 mixed precision through accelerate (a GPU with compute capability 8.9+).")
    fp8_backend: Literal["auto", "torchao", "te", "msamp"] = _f(
        "auto", "fp8 backend: torchao, te (Transformer Engine), msamp, or auto (torchao)."
    )
    fp8_enable_fsdp_float8_all_gather: bool = _f(False, "fp8 with FSDP2: all-gather weights in float8 (torchao).")

    # (named apart from the schema's own _comma_lists: a subclass validator of the same name would replace it)
    _method_comma_lists = field_validator(
        "lora_target",
        "freeze_trainable_modules",
        "freeze_extra_modules",
        "additional_target",
        "oft_target",
        "adapter_name_or_path",
        "new_special_tokens",
        "galore_target",
        "apollo_target",
        mode="before",
    )(classmethod(lambda cls, v: split_commas(v)))

    @field_validator("asft_alpha", "eaft_alpha", "galore_scale", "apollo_scale", "lora_dropout", "module_dropout")
    @classmethod
    def _finite_method_value(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @property
    def uses_adapter(self) -> bool:
        """The run saves a PEFT adapter (lora, oft) rather than complete weights (full, freeze)."""
        return self.finetuning_type in ADAPTER_TYPES

    @property
    def loss_variant(self) -> str:
        """ce, dft, asft or eaft: the training loss the chunked cross-entropy computes."""
        return next((key[4:-5] for key in LOSS_VARIANTS if getattr(self, key)), "ce")


# ---------------------------------------------------------------------------- cross-field rules


def check_freeze_keys(c: SftConfig) -> str | None:
    # Compared with the defaults, not "was it written": a run's saved config spells out every default.
    given = [key for key in FREEZE_KEYS if getattr(c, key) != MethodsConfig.model_fields[key].default]
    if (
        c.freeze_trainable_layers != MethodsConfig.model_fields["freeze_trainable_layers"].default
        and not c.use_llama_pro
    ):
        given.insert(0, "freeze_trainable_layers")
    if given and c.finetuning_type != "freeze":
        return f"{given[0]}: only used by finetuning_type: freeze (this config trains {c.finetuning_type}); remove it"
    if c.freeze_trainable_layers == 0 and (c.finetuning_type == "freeze" or c.use_llama_pro):
        return "freeze_trainable_layers: 0 trains no layer; use a positive (last n) or negative (first n) count"
    return None


def check_llama_pro(c: SftConfig) -> str | None:
    if c.use_llama_pro and c.finetuning_type not in ("freeze", "lora"):
        return f"use_llama_pro: works with finetuning_type freeze or lora, not {c.finetuning_type}"
    if c.use_llama_pro and c.freeze_trainable_layers < 0:
        return "freeze_trainable_layers: use_llama_pro needs the (positive) number of expanded blocks"
    return None


def check_lora_only(c: SftConfig) -> str | None:
    lora_only = [key for key in ("use_dora", "pissa_init", "use_rslora") if getattr(c, key)]
    lora_only += [key for key in ("loraplus_lr_ratio", "adapter_name_or_path") if getattr(c, key) is not None]
    if lora_only and c.finetuning_type != "lora":
        return f"{lora_only[0]}: only valid with finetuning_type: lora (this config trains {c.finetuning_type})"
    if c.create_new_adapter and not c.adapter_name_or_path:
        return "create_new_adapter: needs adapter_name_or_path (the adapters to merge first)"
    return None


def check_adapter_keys(c: SftConfig) -> str | None:
    if c.additional_target and not c.uses_adapter:
        return (
            f"additional_target: only for lora or oft (finetuning_type {c.finetuning_type} trains "
            "whole modules already; freeze_extra_modules names extra ones)"
        )
    if c.finetuning_type == "oft" and (c.oft_rank == 0) == (c.oft_block_size == 0):
        return "oft_rank and oft_block_size: set exactly one of them (the other 0); PEFT derives the other"
    return None


def check_quantization(c: SftConfig) -> str | None:
    if c.quantization_bit is None:
        return None
    bits = ON_THE_FLY_BITS.get(c.quantization_method)
    if bits is None:
        return (
            f"quantization_method: {c.quantization_method} does not quantize on the fly (its models come "
            "quantized: point model_name_or_path at one and drop quantization_bit); use bnb, hqq or eetq"
        )
    if c.quantization_bit not in bits:
        return (
            f"quantization_bit: {c.quantization_method} takes {' or '.join(map(str, bits))}, not {c.quantization_bit}"
        )
    if not c.uses_adapter:
        return (
            f"quantization_bit: a quantized model trains only with finetuning_type lora or oft, not {c.finetuning_type}"
        )
    for key, why in (
        ("pissa_init", "PiSSA needs the full-precision weights"),
        ("resize_vocab", "the embeddings of a quantized model cannot be resized"),
        ("fp8", "fp8 and quantization do not combine"),
    ):
        if getattr(c, key):
            return f"{key}: cannot be combined with quantization_bit ({why}); remove one"
    if c.use_dora and c.quantization_method != "bnb":
        return "use_dora: DoRA works on bitsandbytes-quantized models only (quantization_method: bnb)"
    if c.adapter_name_or_path and (len(c.adapter_name_or_path) > 1 or c.create_new_adapter):
        return (
            "adapter_name_or_path: a quantized model takes exactly one adapter to continue (adapters cannot "
            "be merged into quantized weights); merge them first with `sftkit merge`"
        )
    return None


def check_loss_variant(c: SftConfig) -> str | None:
    chosen = [key for key in LOSS_VARIANTS if getattr(c, key)]
    if len(chosen) > 1:
        return f"{chosen[0]} and {chosen[1]}: choose one loss"
    if chosen and c.loss_chunk_size == 0:
        return f"{chosen[0]}: is computed by the chunked loss; remove loss_chunk_size: 0"
    if chosen and c.enable_liger_kernel:
        return f"{chosen[0]}: Liger's fused cross-entropy computes plain cross-entropy only; remove enable_liger_kernel"
    return None


def check_optimizer_method(c: SftConfig) -> str | None:
    chosen = [key for key in OPTIMIZER_METHODS if getattr(c, key) not in (False, None)]
    if len(chosen) > 1:
        return f"{chosen[0]} and {chosen[1]}: choose one optimizer"
    if not chosen:
        return None
    method = chosen[0]
    if method in ("use_galore", "use_apollo", "use_badam") and c.uses_adapter:
        return f"{method}: trains full weights; use finetuning_type full or freeze (not {c.finetuning_type})"
    if method == "use_galore" and c.optim not in GALORE_OPTIM:
        return f"optim: GaLore comes as {', '.join(GALORE_OPTIM)}; not {c.optim}"
    if method in ("use_apollo", "use_adam_mini", "use_muon", "use_badam") and c.optim != "adamw_torch":
        return f"optim: {method} replaces the optimizer; leave optim at adamw_torch (got {c.optim})"
    layerwise = (method == "use_galore" and c.galore_layerwise) or (method == "use_apollo" and c.apollo_layerwise)
    if layerwise and c.gradient_accumulation_steps != 1:
        return f"{method[4:]}_layerwise: updates during backward, so gradient_accumulation_steps must be 1"
    if method in ("use_galore", "use_apollo") and c.deepspeed:
        return f"{method}: does not work with DeepSpeed; remove deepspeed"
    if method == "use_apollo" and c.apollo_scale_front:
        return "apollo_scale_front: transformers' APOLLO has no norm-growth limiter option; remove it"
    return None


def check_precision_methods(c: SftConfig) -> str | None:
    if c.pure_bf16 and c.fp16:
        return "pure_bf16 and fp16: choose one"
    return None


METHOD_CHECKS = (
    check_freeze_keys,
    check_llama_pro,
    check_lora_only,
    check_adapter_keys,
    check_quantization,
    check_loss_variant,
    check_optimizer_method,
    check_precision_methods,
)
