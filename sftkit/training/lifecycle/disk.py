"""The disk check: estimating what a run will write and refusing to start one that would not fit.

Part of `sftkit.training.lifecycle` (the package docstring tells the whole story). Model libraries (peft) are
imported inside the functions that need them.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.errors import SftkitError
from sftkit.training.lifecycle.checkpoints import complete_checkpoints

if TYPE_CHECKING:
    from sftkit.config import SftConfig

# Optimizer state saved per trainable parameter, in bytes per byte of the parameter (Adam: two moments
# of the parameter's dtype) or, for 8-bit optimizers, in bytes per parameter.
_STATE_PER_PARAM_BYTE = {"adamw_torch": 2.0, "adamw_torch_fused": 2.0, "adafactor": 1.0, "sgd": 0.0}
_STATE_BYTES_PER_PARAM = {"adamw_bnb_8bit": 2.0, "paged_adamw_8bit": 2.0}
# Tokenizer, configs, trainer/scheduler/RNG state and logs written beside the weights of each save.
_EXTRA_BYTES = 32 * 2**20
_MARGIN = 1.1  # filesystem overhead and estimate error


# ---------------------------------------------------------------------------- disk space


@dataclass(frozen=True)
class DiskEstimate:
    """What a run will write: `checkpoints` checkpoints of `checkpoint_bytes` at its peak, then the final weights."""

    weight_bytes: int  # saved weights: the adapter (LoRA) or the whole model (full)
    optimizer_bytes: int  # optimizer state saved in each checkpoint
    checkpoints: int  # most checkpoints on disk at once, the one being written included

    @property
    def checkpoint_bytes(self) -> int:
        return self.weight_bytes + self.optimizer_bytes + _EXTRA_BYTES

    @property
    def final_bytes(self) -> int:
        return self.weight_bytes + _EXTRA_BYTES

    @property
    def total_bytes(self) -> int:
        return int(_MARGIN * (self.checkpoints * self.checkpoint_bytes + self.final_bytes))


def estimate_disk(model: Any, cfg: SftConfig, planned_updates: int) -> DiskEstimate:
    """Estimates the disk a run needs from its parameter counts, dtypes, optimizer and save settings."""
    trainable = [param for param in model.parameters() if param.requires_grad]
    param_bytes = sum(param.numel() * param.element_size() for param in trainable)
    optimizer_bytes = _STATE_PER_PARAM_BYTE.get(cfg.optim, 0.0) * param_bytes + _STATE_BYTES_PER_PARAM.get(
        cfg.optim, 0.0
    ) * sum(param.numel() for param in trainable)
    return DiskEstimate(
        weight_bytes=saved_weight_bytes(model, cfg),
        optimizer_bytes=int(optimizer_bytes),
        checkpoints=checkpoints_at_peak(cfg, planned_updates),
    )


def saved_weight_bytes(model: Any, cfg: SftConfig) -> int:
    """Bytes of the weights a save writes: PEFT's adapter state dict, or every (untied) model weight."""
    if cfg.uses_adapter:
        import warnings

        from peft import get_peft_model_state_dict

        with warnings.catch_warnings():  # "save_embedding_layers set to True": the save will say so itself
            warnings.simplefilter("ignore")
            tensors = get_peft_model_state_dict(model).values()
    else:
        tensors = model.parameters()  # tied weights counted once, as safetensors stores them
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def checkpoints_at_peak(cfg: SftConfig, planned_updates: int) -> int:
    """Most checkpoints on disk at once: the kept ones (the best too) plus the one being written."""
    if cfg.save_strategy == "no":
        return 0
    saves = (
        math.ceil(cfg.num_train_epochs) if cfg.save_strategy == "epoch" else math.ceil(planned_updates / cfg.save_steps)
    )
    if cfg.save_total_limit is None:
        return saves
    kept = max(cfg.save_total_limit, 2 if cfg.wants_best_model else 1)
    return min(saves, kept + 1)


def check_disk_space(out: Path, estimate: DiskEstimate, resuming: bool = False) -> None:
    """Refuses to start a run whose checkpoints and final weights would not fit on `out`'s filesystem.

    When resuming, the checkpoints already in `out` count as written (rotation replaces them).

    Raises:
        SftkitError: with the estimate, its parts and the free space.
    """
    existing = sum(_folder_bytes(path) for path in complete_checkpoints(out)) if resuming else 0
    needed = max(estimate.total_bytes - existing, 0)
    free = shutil.disk_usage(_existing_ancestor(out)).free
    if needed <= free:
        return
    parts = (
        f"{estimate.checkpoints} checkpoints x {_size(estimate.checkpoint_bytes)} (weights "
        f"{_size(estimate.weight_bytes)} + optimizer state {_size(estimate.optimizer_bytes)}) + final weights "
        f"{_size(estimate.final_bytes)}"
    )
    already = f", {_size(existing)} of it already written" if existing else ""
    raise SftkitError(
        f"output_dir: not enough disk space in {out}: the run needs about {_size(needed)} ({parts}, "
        f"+10% margin{already}) but only {_size(free)} is free; free some space, lower "
        "save_total_limit, or choose an output_dir on another disk"
    )


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"
