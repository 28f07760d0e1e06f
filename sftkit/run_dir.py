"""The run directory: what `sftkit train` writes into output_dir, and how every other stage recognises it.

Train writes it; merge, chat, eval, predict and the lifecycle read it. This module is their contract:
the file names, "is this a run (and of which kind)", reading the run's resolved config, and the command
that resumes it. Nothing heavy at import: the instant checks before training use it.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import struct
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from sftkit.config import load_config
from sftkit.errors import SftkitError

if TYPE_CHECKING:
    from sftkit.config import SftConfig

CONFIG_FILE = "sftkit_config.yaml"  # the resolved config, every default filled in
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_CONFIG = "config.json"  # a complete transformers model (full fine-tuning, merged)
TRAINER_STATE = "trainer_state.json"
METRICS_FILE = "metrics.json"
OPTIMIZER_FILE = "optimizer.pt"  # in a checkpoint: the optimizer state a resumed run continues from
SCHEDULER_FILE = "scheduler.pt"
# Files that mark a directory as an earlier training run, which --overwrite may replace.
RUN_MARKERS = (CONFIG_FILE, TRAINER_STATE, ADAPTER_CONFIG)
# What `sftkit merge` writes: weights, configs, tokenizer files. A folder holding anything else is not a
# merged model, and `merge --overwrite` leaves it alone.
MERGED_FILES = ("*.safetensors", "*.json", "*.jinja", "*.model", "*.tiktoken", "merges.txt", "vocab.txt", CONFIG_FILE)
# Held by a running `sftkit train` (beside output_dir, so a refused run leaves output_dir untouched).
LOCK_SUFFIX = ".sftkit-lock"


def is_run(path: Path) -> bool:
    """A folder an `sftkit train` run (or an earlier trainer) wrote into."""
    return any((path / marker).exists() for marker in RUN_MARKERS) or any(path.glob("checkpoint-*"))


def has_run_config(path: Path) -> bool:
    """A run or merged-model folder that records the config it was made with."""
    return (path / CONFIG_FILE).is_file()


def has_adapter(path: Path) -> bool:
    """A LoRA run: adapter config and weights."""
    return (path / ADAPTER_CONFIG).is_file() and (path / ADAPTER_WEIGHTS).is_file()


def check_lora_run(run_dir: Path) -> None:
    """Refuses anything but a LoRA run directory, naming what it is instead.

    Raises:
        SftkitError: no such folder, a complete model (nothing to merge), or not a run.
    """
    if not run_dir.is_dir():
        raise SftkitError(f"{run_dir}: no such directory; point at the output_dir of an `sftkit train` run")
    if has_adapter(run_dir):
        return
    if (run_dir / MODEL_CONFIG).is_file():
        raise SftkitError(f"{run_dir}: holds complete model weights (finetuning_type: full, or already "
                          "merged), not a LoRA adapter: nothing to merge; use it as it is with `sftkit chat` or "
                          "from_pretrained")
    raise SftkitError(f"{run_dir}: no LoRA adapter ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}) and no full model; "
                      "point at the output_dir of an `sftkit train` run")


def is_merged_model(path: Path) -> str | None:
    """None when `path` holds only what `sftkit merge` writes; else why it is not a merged model."""
    for entry in sorted(path.iterdir()):
        if entry.name in (TRAINER_STATE, ADAPTER_CONFIG) or entry.is_dir() or not any(
                fnmatch.fnmatch(entry.name, pattern) for pattern in MERGED_FILES):
            return f"it holds {entry.name}, which `sftkit merge` does not write"
    if not (path / MODEL_CONFIG).is_file() or not (path / CONFIG_FILE).is_file():
        return f"it lacks the {MODEL_CONFIG} and {CONFIG_FILE} of a merged model"
    return None


def lock_path(out: Path) -> Path:
    """The lock file of the run in `out`: `.NAME.sftkit-lock` beside it."""
    return out.parent / f".{out.name}{LOCK_SUFFIX}"


# ---------------------------------------------------------------------------- damaged files

def check_weights(folder: Path, fix: str) -> None:
    """Refuses a folder whose safetensors files are damaged (truncated, or not safetensors at all).

    Reads only each file's header and size: a download or copy cut short is found before a model loads.

    Raises:
        SftkitError: naming the first damaged file, what is wrong with it, and `fix`.
    """
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        problem = safetensors_problem(path)
        if problem:
            raise SftkitError(f"{path}: damaged weights file ({problem}); {fix}")


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file (from its header and size), or None."""
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            header_size = struct.unpack("<Q", handle.read(8))[0] if size >= 8 else None
            if header_size is None or header_size > size - 8:
                return f"{size:,} bytes, too short for its header: truncated"
            header = json.loads(handle.read(header_size))
    except (OSError, ValueError, UnicodeDecodeError):
        return "its header is not readable: not a safetensors file, or corrupted"
    if not isinstance(header, dict):
        return "its header is not readable: not a safetensors file, or corrupted"
    ends = [entry["data_offsets"][1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and len(entry.get("data_offsets") or ()) == 2]
    needed = 8 + header_size + max(ends, default=0)
    if size < needed:
        return f"{size:,} of {needed:,} bytes: truncated"
    return None


def torch_file_problem(path: Path) -> str | None:
    """What is wrong with a file torch.save wrote (a zip archive), or None; a truncated one has no directory."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (OSError, zipfile.BadZipFile):
        return "not a complete torch.save archive: truncated or corrupted"
    return None


def read_run_config(run_dir: Path, base: str | None = None) -> SftConfig:
    """The run's resolved config (sftkit_config.yaml), with `base` replacing model_name_or_path.

    Raises:
        SftkitError: the folder records no config.
    """
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise SftkitError(f"{run_dir}: no {CONFIG_FILE}; point at the output_dir of an `sftkit train` run")
    cfg = load_config(path)
    return cfg.model_copy(update={"model_name_or_path": base}) if base else cfg


def resume_command(out: Path) -> str:
    """The command that continues the run in `out` (its resolved config is written there at the start)."""
    return f"sftkit train {shlex.quote(str(out / CONFIG_FILE))} --resume latest"
