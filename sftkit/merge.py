"""Merge stage: fold a run's LoRA adapter into its base model and export a plain transformers model.

The merged directory loads with `AutoModelForCausalLM.from_pretrained` alone: safetensors shards, the
run's tokenizer (added control tokens and the template's `chat_template`), a `generation_config.json`
that stops at the template's end token, and the run's sftkit_config.yaml as the record of how it was
made (`sftkit chat` reads its template and default_system). Nothing is written at `--out` until the
merged model's logits have been checked against base+adapter on a probe conversation.

A `finetuning_type: full` run directory (or an already merged one) is refused with exit code 2: it
already is a complete model (load it with `sftkit chat DIR` or `from_pretrained`); nothing to merge.

Loading the run (`sftkit.model.load_adapter_run`) and the run-directory rules (`sftkit.run_dir`) are
shared with chat and evaluate.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.atomic import discard_stale_staging, staged_dir, write_text
from sftkit.data.masking import encode_conversation
from sftkit.errors import SftkitError
from sftkit.model import Loaded, load_adapter_run, set_stop_tokens, stored_dtype
from sftkit.run_dir import CONFIG_FILE, MODEL_CARD, check_lora_run, check_new_folder, is_merged_model, model_card

if TYPE_CHECKING:
    import torch

    from sftkit.templates import Template

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


def merge(
    run_dir: str | Path,
    out: str | Path | None = None,
    dtype: str | None = None,
    max_shard_size: str = "2GB",
    base: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Merges a LoRA run into its base model and saves a standalone, verified model.

    Args:
        run_dir: training output_dir holding adapter_model.safetensors, adapter_config.json, the tokenizer
            and sftkit_config.yaml.
        out: directory to create (default RUN_DIR/merged).
        dtype: bf16, fp16 or fp32: the dtype of the saved weights (the merge itself runs in fp32). Default: the
            dtype the base model's weights are stored in (its config.json), fp32 when it records none.
        max_shard_size: largest safetensors shard, e.g. "2GB".
        base: base model path or hub id, instead of the run config's model_name_or_path.
        overwrite: replace an existing `out`.

    Returns:
        The merged model directory.

    Raises:
        SftkitError: not a LoRA run directory, a full fine-tuning run, an adapter that does not fit the
            base, an unknown dtype or shard size, an existing `out` without `overwrite` (or one that is not a
            merged model, even with it), or merged logits that differ from base+adapter beyond the dtype's
            tolerance.
    """
    import torch

    run_dir = Path(run_dir)
    if dtype is not None:
        _check_dtype(dtype)
    _check_shard_size(max_shard_size)
    check_lora_run(run_dir)
    out = _resolve_out(run_dir, out, overwrite)
    discard_stale_staging(out)  # what killed merges left (a model's size each) goes before this one needs the space
    run, probe, reference = merge_in_memory(run_dir, base=base)
    dtype = dtype or base_dtype(run.cfg.model_name_or_path, run.cfg.trust_remote_code)
    merged = run.model.to(getattr(torch, DTYPES[dtype]))
    if dtype != "fp32":
        _verify(merged, probe, reference, dtype)
    set_stop_tokens(merged, run.tokenizer, run.template)
    with staged_dir(out) as staging:  # `out` is never half-written
        _save(merged, run.tokenizer, run_dir, staging, max_shard_size)
        write_text(staging / MODEL_CARD, model_card(run_dir, merged_to=out))
    print(f"merged {run_dir} into {out} ({dtype}, base {run.cfg.model_name_or_path})")
    return out


def merge_in_memory(run_dir: str | Path, base: str | None = None) -> tuple[Loaded, list[int], torch.Tensor]:
    """Loads a LoRA run and folds the adapter into the base (fp32, on the CPU), checked against base+adapter.

    Shared by `merge` (which saves the result) and `export` (which converts it). Returns the run with the
    merged model in place of the adapter-wrapped one, the probe ids and base+adapter's logits on them.

    Raises:
        SftkitError: as `load_adapter_run`, or merged logits that differ from base+adapter.
    """
    run = load_adapter_run(run_dir, base=base)
    probe = probe_ids(run.tokenizer, run.template)
    reference = _logits(run.model, probe)
    run.model = run.model.merge_and_unload()
    _verify(run.model, probe, reference, "fp32")
    return run, probe, reference


def base_dtype(base: str, trust_remote_code: bool = False) -> str:
    """--dtype's default: the dtype the base model is stored in (fp32 when its config records none)."""
    stored = stored_dtype(base, trust_remote_code)
    names = {torch_name: flag for flag, torch_name in DTYPES.items()}
    return names.get(stored or "float32", "fp32")


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise SftkitError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")


def _check_shard_size(size: str) -> None:
    """The shard size is checked before the merge: save_pretrained would refuse it only at the very end."""
    from transformers.utils.hub import convert_file_size_to_int

    try:
        valid = convert_file_size_to_int(size) > 0
    except ValueError:
        valid = False
    if not valid:
        raise SftkitError(f"--max-shard-size {size!r}: use a whole number and a unit, e.g. 2GB, 500MB or 4GiB")


def _resolve_out(run_dir: Path, out: str | Path | None, overwrite: bool) -> Path:
    """The output directory: RUN_DIR/merged by default; never the run itself or a folder holding it."""
    out = Path(out) if out is not None else run_dir / "merged"
    check_new_folder(out, run_dir, f"the run directory {run_dir}", overwrite, is_merged_model, "a merged model")
    return out


# ---------------------------------------------------------------------------- verification


def probe_ids(tokenizer: Any, template: Template) -> list[int]:
    """Token ids of a short two-turn conversation rendered with the template (control tokens included)."""
    row = encode_conversation(
        tokenizer, template, PROBE, None, cutoff_len=512, train_on_prompt=True, mask_history=False
    )
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
    print(
        f"verify ({dtype}): max |merged - base+adapter| logit difference {diff:.3g} (tolerance {tolerance:.3g})",
        file=sys.stderr,
    )
    if not diff <= tolerance:  # also true for NaN
        hint = "try --dtype fp32" if dtype != "fp32" else "check that --base is the model the adapter was trained on"
        raise SftkitError(
            f"merge check failed: merged {dtype} logits differ from base+adapter by {diff:.3g} "
            f"(> {tolerance:.3g}); nothing was written; {hint}"
        )


# ---------------------------------------------------------------------------- saving


def _save(model: Any, tokenizer: Any, run_dir: Path, directory: Path, max_shard_size: str) -> None:
    """Weights, tokenizer and generation config, plus the run's config as the record of how it was made."""
    model.save_pretrained(directory, max_shard_size=max_shard_size, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    shutil.copy2(run_dir / CONFIG_FILE, directory / CONFIG_FILE)
