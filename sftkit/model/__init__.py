"""The model stage: the shared floor of train, merge, chat and evaluate.

Modules: `precision` (which dtype on which device), `loading` (the base causal LM), `adapter` (the PEFT
LoRA adapter, parameter counts), `generation` (prompts, stop tokens, sampling, batched decoding) and
`inference` (a run, merged or base model loaded with its template).
"""

from sftkit.model.adapter import ParamReport, add_adapter, count_parameters, linear_layer_names
from sftkit.model.generation import GenerationSettings, encode_prompts, generate, generate_replies, set_stop_tokens
from sftkit.model.inference import (
    Loaded,
    load_adapter_run,
    load_complete_tokenizer,
    load_for_inference,
    to_device,
    trained_default_system,
)
from sftkit.model.loading import (
    ATTENTION,
    attention_implementation,
    causal_lm_of,
    check_context_length,
    grow_embeddings,
    load_model,
    stored_dtype,
)
from sftkit.model.precision import Precision, inference_precision, resolve_precision

__all__ = [
    "ATTENTION",
    "GenerationSettings",
    "Loaded",
    "ParamReport",
    "Precision",
    "add_adapter",
    "attention_implementation",
    "causal_lm_of",
    "check_context_length",
    "count_parameters",
    "encode_prompts",
    "generate",
    "generate_replies",
    "grow_embeddings",
    "inference_precision",
    "linear_layer_names",
    "load_adapter_run",
    "load_complete_tokenizer",
    "load_for_inference",
    "load_model",
    "resolve_precision",
    "set_stop_tokens",
    "stored_dtype",
    "to_device",
    "trained_default_system",
]
