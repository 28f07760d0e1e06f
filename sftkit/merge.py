"""Merge stage: fold a run's LoRA adapter into its base model and export a plain transformers model.

The merged directory loads with `AutoModelForCausalLM.from_pretrained` alone: safetensors shards, the
run's tokenizer (added control tokens and the template's `chat_template`), a `generation_config.json`
that stops at the template's end token, and the run's sftkit_config.yaml as the record of how it was
made (`sftkit chat` reads its template and default_system). Nothing is written at `--out` until the
merged model's logits have been checked against base+adapter on a probe conversation.

A `finetuning_type: full` run directory (or an already merged one) is refused with exit code 2: it
already is a complete model (load it with `sftkit chat DIR` or `from_pretrained`); nothing to merge.

`load_adapter_run` (run directory -> base model + adapter, tokenizer, config, template) is shared with
`sftkit chat` and `sftkit eval`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.errors import SftkitError

if TYPE_CHECKING:
    import torch

    from sftkit.config import SftConfig
    from sftkit.data.template import Template
    from sftkit.model import Precision

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
RUN_CONFIG = "sftkit_config.yaml"
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # --dtype -> torch dtype name

# Max |merged - (base+adapter)| logit difference allowed, as a fraction of the largest reference logit.
# fp32: merging only reorders float operations (W x + B A x vs (W + B A) x): measured 1-3e-6 of the scale
# on the tiny models and on an ERNIE-0.3B-shaped one, so 1e-5 flags any real merge error.
# bf16/fp16 are checked after the fp32 check passed, so they only guard the cast: rounding every weight
# (8 significant bits in bf16, 11 in fp16) moved logits by up to 2.2% (bf16) and 0.6% (fp16) of the
# scale on the tiny models; 10% and 5% leave room for deeper models and still catch overflow to
# inf/NaN or lost tensors.
RELATIVE_TOLERANCE = {"fp32": 1e-5, "bf16": 0.1, "fp16": 0.05}

PROBE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France? Answer in one word."},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
]


@dataclass
class AdapterRun:
    """A LoRA run directory loaded for use: `model` is the base model wrapped with the adapter (unmerged)."""

    model: Any
    tokenizer: Any
    cfg: SftConfig
    template: Template


def merge(run_dir: str | Path, out: str | Path | None = None, dtype: str = "bf16",
          max_shard_size: str = "2GB", base: str | None = None, overwrite: bool = False) -> Path:
    """Merges a LoRA run into its base model and saves a standalone, verified model.

    Args:
        run_dir: training output_dir holding adapter_model.safetensors, adapter_config.json, the tokenizer
            and sftkit_config.yaml.
        out: directory to create (default RUN_DIR/merged).
        dtype: bf16, fp16 or fp32: the dtype of the saved weights (the merge itself runs in fp32).
        max_shard_size: largest safetensors shard, e.g. "2GB".
        base: base model path or hub id, instead of the run config's model_name_or_path.
        overwrite: replace an existing `out`.

    Returns:
        The merged model directory.

    Raises:
        SftkitError: not a LoRA run directory, a full fine-tuning run, an adapter that does not fit the
            base, an unknown dtype, an existing `out` without `overwrite`, or merged logits that differ
            from base+adapter beyond the dtype's tolerance.
    """
    import torch

    from sftkit.train import set_stop_tokens

    run_dir = Path(run_dir)
    _check_dtype(dtype)
    _check_is_lora_run(run_dir)
    out = _resolve_out(run_dir, out, overwrite)
    run = load_adapter_run(run_dir, base=base)
    probe = probe_ids(run.tokenizer, run.template)
    reference = _logits(run.model, probe)
    merged = run.model.merge_and_unload()
    _verify(merged, probe, reference, "fp32")
    merged = merged.to(getattr(torch, DTYPES[dtype]))
    if dtype != "fp32":
        _verify(merged, probe, reference, dtype)
    set_stop_tokens(merged, run.tokenizer, run.cfg.template)
    _save_atomically(out, lambda tmp: _save(merged, run.tokenizer, run_dir, tmp, max_shard_size))
    print(f"merged {run_dir} into {out} ({dtype}, base {run.cfg.model_name_or_path})")
    return out


# ---------------------------------------------------------------------------- the run directory

def load_adapter_run(run_dir: str | Path, base: str | None = None,
                     precision: Precision | None = None) -> AdapterRun:
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

    from sftkit.data.template import get_template
    from sftkit.model import Precision, load_model

    run_dir = Path(run_dir)
    _check_is_lora_run(run_dir)
    # The attention kernel does not change the weights; sdpa runs everywhere, fa2 only on some GPUs.
    cfg = read_run_config(run_dir, base).model_copy(update={"flash_attn": "auto"})
    tokenizer = AutoTokenizer.from_pretrained(run_dir, trust_remote_code=cfg.trust_remote_code)
    model = load_model(cfg, tokenizer, precision or Precision("float32", "cpu", "fp32 for merging"))
    _check_adapter_fits(model, run_dir, cfg.model_name_or_path)
    model = PeftModel.from_pretrained(model, run_dir, is_trainable=False)
    model.eval()
    return AdapterRun(model, tokenizer, cfg, get_template(cfg.template))


def read_run_config(run_dir: Path, base: str | None = None) -> SftConfig:
    """The run's resolved config (sftkit_config.yaml), with `base` replacing model_name_or_path."""
    from sftkit.config import load_config

    path = run_dir / RUN_CONFIG
    if not path.is_file():
        raise SftkitError(f"{run_dir}: no {RUN_CONFIG}; point at the output_dir of an `sftkit train` run")
    cfg = load_config(path)
    return cfg.model_copy(update={"model_name_or_path": base}) if base else cfg


def _check_is_lora_run(run_dir: Path) -> None:
    """Refuses anything but a LoRA run directory, naming what it is instead."""
    if not run_dir.is_dir():
        raise SftkitError(f"{run_dir}: no such directory; point at the output_dir of an `sftkit train` run")
    if (run_dir / ADAPTER_CONFIG).is_file() and (run_dir / ADAPTER_WEIGHTS).is_file():
        return
    if (run_dir / "config.json").is_file():
        raise SftkitError(f"{run_dir}: holds complete model weights (finetuning_type: full, or already "
                          "merged), not a LoRA adapter: nothing to merge; use it as it is with `sftkit chat` or "
                          "from_pretrained")
    raise SftkitError(f"{run_dir}: no LoRA adapter ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}) and no full model; "
                      "point at the output_dir of an `sftkit train` run")


def _check_adapter_fits(model: Any, run_dir: Path, base: str) -> None:
    """Compares every adapter tensor with the base module it attaches to, before PEFT loads them.

    PEFT reports a wrong base as a state-dict size mismatch, an IndexError or a missing module deep in
    its loader; this names the first misfit tensor and the fix instead.
    """
    adapter_config = json.loads((run_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    trained_on = adapter_config.get("base_model_name_or_path")
    if trained_on and trained_on != base:
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
        raise SftkitError(f"{run_dir}: the adapter was not trained on {base!r} ({problems[0]}); pass the "
                          "base it was trained on with --base")


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
    rules = ((".lora_A.", lambda w: (shape[0], w.shape[1])), (".lora_B.", lambda w: (w.shape[0], shape[1])),
             (".token_adapter.trainable_tokens_delta", lambda w: (shape[0], w.shape[1])),
             (".token_adapter.base_layer.", lambda w: tuple(w.shape)))
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


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise SftkitError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")


def _resolve_out(run_dir: Path, out: str | Path | None, overwrite: bool) -> Path:
    """The output directory: RUN_DIR/merged by default; never the run itself or a folder holding it."""
    out = Path(out) if out is not None else run_dir / "merged"
    resolved, run = out.resolve(), run_dir.resolve()
    if resolved == run or resolved in run.parents:
        raise SftkitError(f"--out {out}: would replace the run directory {run_dir}; choose another folder")
    if out.exists() and not out.is_dir():
        raise SftkitError(f"--out {out}: is a file; choose a directory path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SftkitError(f"--out {out}: already exists; pass --overwrite to replace it or choose another --out")
    return out


# ---------------------------------------------------------------------------- verification

def probe_ids(tokenizer: Any, template: Template) -> list[int]:
    """Token ids of a short two-turn conversation rendered with the template (control tokens included)."""
    from sftkit.data.masking import encode_conversation

    row = encode_conversation(tokenizer, template, PROBE, None, cutoff_len=512, train_on_prompt=True,
                              mask_history=False)
    return row.input_ids


def _logits(model: Any, ids: list[int]) -> torch.Tensor:
    """fp32 logits of one sequence on the model's device."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids], device=device)).logits.float()


def _verify(model: Any, ids: list[int], reference: torch.Tensor, dtype: str) -> None:
    """Fails the merge when the merged logits drift from base+adapter beyond the dtype's tolerance."""
    import torch

    logits = _logits(model, ids)
    diff = (logits - reference).abs().max().item() if torch.isfinite(logits).all() else float("inf")
    tolerance = RELATIVE_TOLERANCE[dtype] * max(1.0, reference.abs().max().item())
    print(f"verify ({dtype}): max |merged - base+adapter| logit difference {diff:.3g} "
          f"(tolerance {tolerance:.3g})", file=sys.stderr)
    if not diff <= tolerance:  # also true for NaN
        hint = "try --dtype fp32" if dtype != "fp32" else "check that --base is the model the adapter was trained on"
        raise SftkitError(f"merge check failed: merged {dtype} logits differ from base+adapter by {diff:.3g} "
                          f"(> {tolerance:.3g}); nothing was written; {hint}")


# ---------------------------------------------------------------------------- saving

def _save(model: Any, tokenizer: Any, run_dir: Path, directory: Path, max_shard_size: str) -> None:
    """Weights, tokenizer and generation config, plus the run's config as the record of how it was made."""
    model.save_pretrained(directory, max_shard_size=max_shard_size, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    shutil.copy2(run_dir / RUN_CONFIG, directory / RUN_CONFIG)


def _save_atomically(out: Path, write: Callable[[Path], None]) -> None:
    """Writes into a temporary folder beside `out`, then renames it: `out` is never half-written."""
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        write(tmp)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
