"""The run directory: what `sftkit train` writes into output_dir, and how every other stage recognises it.

Train writes it; merge, chat, eval, predict and the lifecycle read it. This module is their contract:
the file names, "is this a run (and of which kind)", reading the run's resolved config, and the command
that resumes it. Nothing heavy at import: the instant checks before training use it.
"""

from __future__ import annotations

import shlex
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
# Files that mark a directory as an earlier training run, which --overwrite may replace.
RUN_MARKERS = (CONFIG_FILE, TRAINER_STATE, ADAPTER_CONFIG)


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
