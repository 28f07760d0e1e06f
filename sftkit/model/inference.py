"""Loading a trained, merged or base model for inference, with the chat template it was trained on.

Shared by merge, chat, eval and predict. A LoRA run directory loads its base (from the run's config)
with the adapter on top, after every adapter tensor was checked against the base; anything else loads
with `from_pretrained`. Notes on stderr say which template is in force and why.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.data.model_source import resolve_model
from sftkit.data.tokenizer import run_template
from sftkit.errors import DataError, SftkitError
from sftkit.model.adapter import merge_prior_adapters
from sftkit.model.loading import DAMAGED_MODEL_FIX, grow_embeddings, load_model
from sftkit.model.precision import Precision, inference_precision
from sftkit.quiet import quiet_loading_bars
from sftkit.run_dir import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    CONFIG_FILE,
    check_lora_run,
    check_weights,
    has_adapter,
    read_run_config,
)
from sftkit.templates import TEMPLATES, JinjaTemplate, Template, get_template, prepare_tokenizer

if TYPE_CHECKING:
    from sftkit.config import SftConfig

# A conversation used only to recognise which template a tokenizer's chat_template renders.
_RECOGNITION_PROBE = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U"},
    {"role": "assistant", "content": "A"},
    {"role": "user", "content": "V"},
]


@dataclass
class Loaded:
    """A model ready for inference, its tokenizer (prepared for the template) and the template it speaks.

    `cfg` is the run's config when the model came from a LoRA run directory (`load_adapter_run`: then
    `model` is the base model wrapped with the adapter, unmerged).
    """

    model: Any
    tokenizer: Any
    template: Template
    cfg: SftConfig | None = None


def load_for_inference(model: str) -> Loaded:
    """Loads a model for generation, with its tokenizer and chat template, on the best device.

    The template is the run's (sftkit_config.yaml: its named template, or the chat_template it saved),
    else the named one whose rendering the tokenizer's chat_template reproduces, else that chat_template
    itself, else chatml; a note on stderr says which and why.

    Args:
        model: run directory, merged model directory, or base model path / hub id.

    Raises:
        SftkitError: nothing loadable at `model`.
    """
    path = Path(model)
    if has_adapter(path):
        run = load_adapter_run(path, precision=inference_precision())
        _note(
            f"template {run.template.name} (from {path / CONFIG_FILE}); base {run.cfg.model_name_or_path} "
            f"+ adapter {path}"
        )
        return Loaded(to_device(run.model), run.tokenizer, run.template, run.cfg)
    model, tokenizer, template = load_complete_tokenizer(model)
    lm = _load_plain_model(model, tokenizer, template, inference_precision())
    return Loaded(to_device(lm), tokenizer, template)


def load_complete_tokenizer(model: str) -> tuple[str, Any, Template]:
    """A complete (merged or base) model's resolved path, tokenizer and template, no weights loaded.

    For engines that load the weights themselves (vLLM); `load_for_inference` says how the template was chosen.

    Raises:
        SftkitError: no folder or reachable hub id at `model`, or no tokenizer there.
    """
    model = resolve_model(model)  # a missing folder or an unreachable hub fails here, at once
    tokenizer = _load_tokenizer(model)
    template, reason = _template_for(Path(model), tokenizer)
    _note(f"template {template.name} ({reason})")
    return model, tokenizer, template


def trained_default_system(model: str) -> str | None:
    """The default_system of the run `model` comes from: training gave it to every row without a system prompt."""
    path = Path(model)
    return read_run_config(path).default_system if (path / CONFIG_FILE).is_file() else None


def load_adapter_run(run_dir: str | Path, base: str | None = None, precision: Precision | None = None) -> Loaded:
    """Loads a LoRA run directory: its tokenizer and config, the base model and the adapter on top.

    Args:
        run_dir: training output_dir with the adapter, tokenizer and sftkit_config.yaml.
        base: base model path or hub id, instead of the config's model_name_or_path.
        precision: dtype of the base weights (default fp32, as merging needs); the model stays on the CPU.

    Raises:
        SftkitError: missing files, or an adapter whose tensors do not fit the base model.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    run_dir = Path(run_dir)
    check_lora_run(run_dir)
    check_weights(
        run_dir, "the adapter was not saved completely; train again, or copy the run from where it is complete"
    )
    # The attention kernel does not change the weights; sdpa runs everywhere, fa2 only on some GPUs.
    # The base loads unquantized and in the given precision (merging needs fp32), whatever training used.
    cfg = read_run_config(run_dir, base).model_copy(update={"flash_attn": "auto"})
    tokenizer = AutoTokenizer.from_pretrained(run_dir, trust_remote_code=cfg.trust_remote_code)
    unquantized = cfg.model_copy(update={"quantization_bit": None, "pure_bf16": False})
    model = load_model(unquantized, tokenizer, precision or Precision("float32", "cpu", "fp32 for merging"))
    model = merge_prior_adapters(model, cfg)  # the adapters training merged before its own
    _check_adapter_fits(model, run_dir, cfg.model_name_or_path)
    model = PeftModel.from_pretrained(model, run_dir, is_trainable=False)
    model.eval()
    return Loaded(model, tokenizer, run_template(cfg, tokenizer), cfg)


def to_device(model: Any) -> Any:
    """The model in eval mode on the GPU where there is one."""
    import torch

    model.eval()
    return model.to("cuda") if torch.cuda.is_available() else model


# ---------------------------------------------------------------------------- complete models


def _load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise SftkitError(
            f"{model}: cannot load a tokenizer ({_first_line(exc)}); pass a run directory, a "
            "merged model directory, or a model path / hub id with network access"
        ) from None


def _template_for(path: Path, tokenizer: Any) -> tuple[Template, str]:
    """The run config's template, else the one the tokenizer's chat_template renders, else that chat_template,
    else chatml."""
    if (path / CONFIG_FILE).is_file():
        return run_template(read_run_config(path), tokenizer), f"from {path / CONFIG_FILE}"
    for name in TEMPLATES:
        try:
            template = get_template(name).bind(tokenizer)
        except DataError:
            continue
        if _renders_like(tokenizer, template):
            return template, "recognised from the tokenizer's chat_template"
    if isinstance(tokenizer.chat_template, str) and tokenizer.chat_template.strip():
        try:
            own = JinjaTemplate.from_tokenizer(
                tokenizer, tokenizer.chat_template, "model's own", "the tokenizer's chat_template"
            )
            return own, "the tokenizer's own chat_template"
        except DataError as exc:
            return get_template("chatml"), f"default: the chat_template cannot be used ({exc})"
    return get_template("chatml"), "default: no chat_template"


def _renders_like(tokenizer: Any, template: Template) -> bool:
    """Whether the tokenizer's chat_template gives the template's generation prompt."""
    from jinja2 import TemplateError

    if not tokenizer.chat_template:
        return False
    try:
        rendered = tokenizer.apply_chat_template(_RECOGNITION_PROBE, tokenize=False, add_generation_prompt=True)
    except (TemplateError, ValueError, TypeError):
        return False
    return rendered == template.generation_prompt(_RECOGNITION_PROBE)


def _load_plain_model(model: str, tokenizer: Any, template: Template, precision: Precision) -> Any:
    """A complete model; a base model lacking the template's control tokens gets them (new rows)."""
    from transformers import AutoModelForCausalLM

    check_weights(Path(model), DAMAGED_MODEL_FIX)
    quiet_loading_bars()
    try:
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=precision.dtype, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise SftkitError(f"{model}: cannot load a causal LM ({_first_line(exc)})") from None
    if prepare_tokenizer(tokenizer, template):
        # As training starts: untrained rows for the new tokens, so a base model can be compared.
        _note(f"added {template.name}'s control tokens to the tokenizer (untrained embedding rows)")
    grow_embeddings(lm, len(tokenizer))
    return lm


# ---------------------------------------------------------------------------- adapter checks


def _check_adapter_fits(model: Any, run_dir: Path, base: str) -> None:
    """Compares every adapter tensor with the base module it attaches to, before PEFT loads them.

    PEFT reports a wrong base as a state-dict size mismatch, an IndexError or a missing module deep in
    its loader; this names the first misfit tensor and the fix instead.
    """
    adapter_config = json.loads((run_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    trained_on = adapter_config.get("base_model_name_or_path")
    if trained_on and trained_on not in (base, resolve_model(base)):  # a GGUF base trains from its cache folder
        print(f"note: {run_dir / ADAPTER_CONFIG} names base {trained_on!r}; using {base!r}", file=sys.stderr)
    modules = dict(model.named_modules())
    problems = _token_index_problems(adapter_config, model)
    for key, shape in _tensor_shapes(run_dir / ADAPTER_WEIGHTS).items():
        expected = _expected_shape(modules, key, shape)
        if expected is None:
            problems.append(f"{key} belongs to a module the base does not have")
        elif expected != shape:
            problems.append(f"{key} has shape {list(shape)} but the base expects {list(expected)}")
    if problems:
        raise SftkitError(
            f"{run_dir}: the adapter was not trained on {base!r} ({problems[0]}); pass the "
            "base it was trained on with --base"
        )


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors in a safetensors file, read from its header alone."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as weights:
        return {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}


def _expected_shape(modules: dict[str, Any], key: str, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The shape the base model implies for one saved adapter tensor; None when its module is missing."""
    name = key.removeprefix("base_model.model.")
    # lora_A is (r, in), lora_B is (out, r); trainable-token deltas are (n, hidden); the rest (saved
    # embeddings, modules_to_save) is a copy of the base weight.
    rules = (
        (".lora_A.", lambda w: (shape[0], w.shape[1])),
        (".lora_B.", lambda w: (w.shape[0], shape[1])),
        # DoRA's magnitude is one value per output row; OFT's blocks are checked by PEFT (module present)
        (".lora_magnitude_vector", lambda w: (w.shape[0],)),
        (".oft_", lambda w: shape),
        (".token_adapter.trainable_tokens_delta", lambda w: (shape[0], w.shape[1])),
        (".token_adapter.base_layer.", lambda w: tuple(w.shape)),
    )
    for marker, rule in rules:
        if marker in name:
            module = modules.get(name.split(marker)[0])
            return tuple(rule(module.weight)) if hasattr(module, "weight") else None
    module = modules.get(name.rsplit(".", 1)[0])
    return tuple(module.weight.shape) if hasattr(module, "weight") else None


def _token_index_problems(adapter_config: dict[str, Any], model: Any) -> list[str]:
    """Trainable token ids that the base embedding has no row for (sftkit trains input-embedding rows)."""
    indices = adapter_config.get("trainable_token_indices") or []
    ids = indices if isinstance(indices, list) else [i for layer_ids in indices.values() for i in layer_ids]
    rows = model.get_input_embeddings().weight.shape[0]
    if ids and max(ids) >= rows:
        return [f"trainable token id {max(ids)} is beyond the {rows} embedding rows"]
    return []


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
