"""Run lifecycle (a package): resuming, interruption, atomic checkpoints, the disk check and the non-finite-loss stop.

`checkpoints` finds checkpoints (`--resume`, complete vs partial saves) and writes folders atomically;
`guard` is the trainer side (atomic checkpoint saves, rotation, the signal and non-finite-loss guard);
`disk` estimates what a run writes and checks the free space; `lock` keeps a second `sftkit train` out of a
running one's output_dir. Every public name is re-exported here.

Long runs die: pre-empted machines, Ctrl-C, full disks, NaNs. Nothing paid for may be lost and nothing
half-written may look complete:

- A checkpoint is written by the trainer into `output_dir/.partial-checkpoint-N/` and renamed to
  `checkpoint-N` once every process has finished writing it (files synced first). A crash mid-save
  leaves only a `.partial-*` folder, which no loader (ours, HF's `get_last_checkpoint`, checkpoint
  rotation) mistakes for a checkpoint, and which the next run deletes. Old checkpoints are rotated
  only after the new one is in place. A completion marker inside `checkpoint-N` was the alternative;
  it would leave folders that look complete to every tool that does not know the marker. The final
  weights are staged the same way and moved into `output_dir` last.
- `--resume latest` picks the newest complete checkpoint (a `checkpoint-N` folder with a readable
  `trainer_state.json`); HF's trainer then restores weights, optimizer, scheduler, RNG states and the
  position in the data order. Resuming is refused, before anything is written, when the config differs
  from the run's `sftkit_config.yaml` in a key that changes training, when the checkpoint lacks its
  optimizer or scheduler state, or when one of its files is truncated.
- One `sftkit train` per output_dir: a second one is refused while the first holds the run lock.
- The first SIGINT/SIGTERM makes the trainer save a checkpoint at the end of the current step and
  stop; a second one aborts at once. A non-finite loss stops the run without saving anything past the
  last good checkpoint.

Only the standard library is imported at module level: `resolve_resume` runs among the instant
checks, before torch or transformers load.
"""

from __future__ import annotations

from sftkit.training.lifecycle.checkpoints import (
    STAGING_PREFIX,
    check_checkpoint_files,
    check_resume_config,
    checkpoint_state,
    checkpoint_step,
    complete_checkpoints,
    discard_partial_checkpoints,
    is_complete_checkpoint,
    latest_checkpoint,
    resolve_resume,
    save_model_atomically,
)
from sftkit.training.lifecycle.disk import (
    DiskEstimate,
    check_disk_space,
    checkpoints_at_peak,
    estimate_disk,
    saved_weight_bytes,
)
from sftkit.training.lifecycle.guard import LifecycleTrainerMixin, RunGuard
from sftkit.training.lifecycle.lock import run_lock

__all__ = [
    "STAGING_PREFIX",
    "DiskEstimate",
    "LifecycleTrainerMixin",
    "RunGuard",
    "check_checkpoint_files",
    "check_disk_space",
    "check_resume_config",
    "checkpoint_state",
    "checkpoint_step",
    "checkpoints_at_peak",
    "complete_checkpoints",
    "discard_partial_checkpoints",
    "estimate_disk",
    "is_complete_checkpoint",
    "latest_checkpoint",
    "resolve_resume",
    "run_lock",
    "save_model_atomically",
    "saved_weight_bytes",
]
