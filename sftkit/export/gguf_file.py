"""One GGUF file for llama.cpp from a transformers model, through gguf (llama.cpp's own Python library).

The facts are llama.cpp's (convert_hf_to_gguf.py's Ernie4_5 class, src/models/ernie4-5.cpp): architecture
`ernie4_5`, the generic decoder hyper-parameters (blocks, widths, heads, key/value head size, RMS epsilon,
RoPE base), tensor names from gguf's `TensorNameMap`, no lm_head when embeddings are tied (llama.cpp reuses
token_embd), HF's interleaved rotary layout used as it is (llama.cpp's NORM rope, no q/k permutation).
Norms and other 1-D tensors stay f32 whatever --outtype says, as llama.cpp's converter keeps them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.errors import SftkitError
from sftkit.export.vocab import add_special_vocab, build_vocab, write_vocab

if TYPE_CHECKING:
    from sftkit.templates import Template

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
# transformers architecture -> gguf's MODEL_ARCH member: what this exporter has the facts for.
ARCHITECTURES = {"Ernie4_5ForCausalLM": "ERNIE4_5"}
MODEL_TYPES = {"ernie4_5": "Ernie4_5ForCausalLM"}


def architecture_of(config: Any) -> str:
    """The model's transformers architecture, refused unless this exporter maps it.

    Raises:
        SftkitError: naming the architecture and the ones GGUF export supports.
    """
    names = list(getattr(config, "architectures", None) or []) or [MODEL_TYPES.get(config.model_type, "")]
    name = names[0] or config.model_type
    if name not in ARCHITECTURES:
        raise SftkitError(f"architecture {name}: GGUF export maps only {', '.join(ARCHITECTURES)} (ERNIE-4.5); "
                          "convert other models with llama.cpp's convert_hf_to_gguf.py")
    return name


def write_gguf(path: Path, model: Any, tokenizer: Any, template: Template, outtype: str, name: str) -> None:
    """Writes `model` (fp32 weights) with its tokenizer and the trained chat template to `path`."""
    import gguf

    config = model.config
    arch = getattr(gguf.MODEL_ARCH, ARCHITECTURES[architecture_of(config)])
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        _add_hyperparameters(writer, config, outtype)
        vocab = build_vocab(tokenizer, model.get_input_embeddings().weight.shape[0])
        write_vocab(writer, vocab)
        stop_ids = template.stop_token_ids(tokenizer)
        add_special_vocab(writer, tokenizer, vocab, eot_id=stop_ids[0] if stop_ids else None)
        writer.add_chat_template(template.jinja())
        _add_tensors(writer, model, arch, outtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def _add_hyperparameters(writer: Any, config: Any, outtype: str) -> None:
    import gguf

    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise SftkitError(f"rope_type {rope['rope_type']!r}: GGUF export writes plain RoPE only")
    if getattr(config, "use_bias", False):
        raise SftkitError("use_bias: true: llama.cpp's ERNIE-4.5 graph has no q/k/v biases; GGUF export refuses it")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    writer.add_file_type(file_types[outtype])


def _add_tensors(writer: Any, model: Any, arch: Any, outtype: str) -> None:
    import gguf

    names = gguf.TensorNameMap(arch, model.config.num_hidden_layers)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp uses token_embd when output is absent
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise SftkitError(f"tensor {hf_name}: no llama.cpp name for it in the ERNIE-4.5 mapping")
        data = tensor.detach().float().cpu().numpy()
        qtype = _tensor_type(name, data.ndim, outtype)
        try:
            packed = gguf.quants.quantize(data, qtype)
        except gguf.QuantError:  # a row length q8_0 blocks do not divide: f16, as llama.cpp's converter does
            qtype = gguf.GGMLQuantizationType.F16
            packed = gguf.quants.quantize(data, qtype)
        writer.add_tensor(name, packed, raw_dtype=qtype)


def _tensor_type(name: str, ndim: int, outtype: str) -> Any:
    import gguf

    if ndim <= 1 or name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    return {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
            "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[outtype]
