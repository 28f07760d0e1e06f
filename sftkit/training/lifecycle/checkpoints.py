"""Finding checkpoints and writing folders atomically: `--resume`, complete vs partial saves, staged renames.

Part of `sftkit.training.lifecycle` (the package docstring tells the whole story). Only the standard library is
imported: `resolve_resume` runs among the instant checks, before torch or transformers load.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.atomic import OLD_PREFIX, fsync_dir, fsync_tree, replace_dir
from sftkit.errors import SftkitError
from sftkit.run_dir import (
    CONFIG_FILE,
    OPTIMIZER_FILE,
    SCHEDULER_FILE,
    TRAINER_STATE,
    check_weights,
    has_run_config,
    read_run_config,
    torch_file_problem,
)

if TYPE_CHECKING:
    from sftkit.config import SftConfig

STAGING_PREFIX = ".partial-"  # never matches HF's "checkpoint-*" glob, so rotation and loaders skip it
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# What `sftkit report` and `sftkit eval --tasks` judge a finished run by: never what it trains.
RELEASE_KEYS = (
    "benchmark_thresholds",
    "release_blocklist",
    "release_samples",
    "release_max_loss_gap",
    "release_min_human_score",
    "release_min_tokens_per_second",
    "release_max_model_gb",
)
# Keys a resumed run may change: they decide what is logged or how fast data loads, never the weights.
RESUMABLE_CHANGES = {
    "report_to",
    "plot_loss",
    "logging_steps",
    "dataloader_num_workers",
    "preprocessing_num_workers",
    "resume_from_checkpoint",
    "run_name",
    "logging_dir",
    "ddp_timeout",
    "ray_num_workers",
    "preprocessing_batch_size",
    "overwrite_cache",
    "overwrite_output_dir",
    "eval_generation_samples",
    "generation_max_new_tokens",
    *RELEASE_KEYS,
}


# ---------------------------------------------------------------------------- finding checkpoints


def resolve_resume(out: Path, resume: str | None) -> Path | None:
    """The checkpoint `--resume` names: "latest" (newest complete one in `out`) or a path.

    Raises:
        SftkitError: nothing to resume from, or the path is not a complete checkpoint.
    """
    if resume is None:
        return None
    if resume == "latest":
        if not out.is_dir():
            raise SftkitError(
                f"--resume latest: output_dir {out} does not exist, so there is nothing to resume; "
                "train without --resume"
            )
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            raise SftkitError(
                f"--resume latest: no complete checkpoint in {out} (incomplete saves are ignored); "
                "train without --resume, or with --overwrite to start again"
            )
        return checkpoint
    path = Path(resume)
    if not path.is_dir():
        raise SftkitError(
            f"--resume {resume}: no such checkpoint folder; use --resume latest or a checkpoint-N folder of {out}"
        )
    if not is_complete_checkpoint(path):
        raise SftkitError(
            f"--resume {resume}: not a complete checkpoint (no readable {TRAINER_STATE}; an "
            "interrupted save?); use --resume latest or another checkpoint-N folder"
        )
    return path


def check_checkpoint_files(checkpoint: Path, resume: str) -> None:
    """Refuses a checkpoint that cannot continue the run exactly: optimizer state gone, or damaged files.

    Without optimizer.pt the trainer would silently start a fresh optimizer and train to other weights.

    Raises:
        SftkitError: naming the checkpoint, the file and what to do.
    """
    where = f"--resume {resume}: {checkpoint}"
    for name in (OPTIMIZER_FILE, SCHEDULER_FILE):
        if not (checkpoint / name).is_file() and not _sharded_state(checkpoint):
            raise SftkitError(
                f"{where} has no {name}, so the run would continue with a fresh "
                f"{name.removesuffix('.pt')} and not equal an uninterrupted one; resume from another "
                "checkpoint, or train again without --resume"
            )
    check_weights(checkpoint, "resume from another checkpoint (--resume PATH), or train again without --resume")
    for path in sorted([*checkpoint.glob("*.pt"), *checkpoint.glob("*.pth")]):
        problem = torch_file_problem(path)
        if problem:
            raise SftkitError(
                f"{path}: {problem}; resume from another checkpoint (--resume PATH), or train again without --resume"
            )


def _sharded_state(checkpoint: Path) -> bool:
    """DeepSpeed (global_stepN/) and FSDP (optimizer_0/) keep the optimizer state in folders of their own."""
    return any(checkpoint.glob("global_step*")) or any(checkpoint.glob("optimizer_*"))


def check_resume_config(cfg: SftConfig, out: Path) -> None:
    """Refuses to resume with a config that differs from the run's own (sftkit_config.yaml) in a key that
    changes the training; runs before anything is written, so the run's record stays as it was.

    Raises:
        SftkitError: naming every key that differs, with both values.
    """
    if not has_run_config(out):
        return
    before = read_run_config(out).model_dump()
    now = cfg.model_dump()
    changed = [key for key in now if key not in RESUMABLE_CHANGES and before.get(key) != now[key]]
    if changed:
        diffs = ", ".join(f"{key} ({before.get(key)!r} -> {now[key]!r})" for key in changed[:5])
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        raise SftkitError(
            f"--resume: the config differs from the run's {out / CONFIG_FILE} in {diffs}{more}; a "
            "resumed run continues the same training: resume with that file, or train into a new "
            "output_dir"
        )


def latest_checkpoint(out: Path) -> Path | None:
    """The complete `checkpoint-N` folder in `out` with the highest N, or None."""
    return max(complete_checkpoints(out), key=checkpoint_step, default=None)


def complete_checkpoints(out: Path) -> list[Path]:
    """Every complete `checkpoint-N` folder in `out` (partial saves and foreign folders left out)."""
    if not out.is_dir():
        return []
    return sorted(
        (path for path in out.iterdir() if _CHECKPOINT.match(path.name) and is_complete_checkpoint(path)),
        key=checkpoint_step,
    )


def is_complete_checkpoint(path: Path) -> bool:
    """A folder whose trainer state, the last file the trainer writes, is there and parses."""
    return checkpoint_state(path) is not None


def checkpoint_state(path: Path) -> dict[str, Any] | None:
    """A checkpoint's trainer state (global_step, num_input_tokens_seen, ...), or None when unreadable."""
    try:
        state = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and "global_step" in state else None


def checkpoint_step(path: Path) -> int:
    match = _CHECKPOINT.match(path.name)
    return int(match.group(1)) if match else -1


def discard_partial_checkpoints(out: Path) -> list[Path]:
    """Deletes what interrupted saves left in `out` (`.partial-*`, `.old-*`); returns what was deleted."""
    if not out.is_dir():
        return []
    leftovers = [path for path in out.iterdir() if path.name.startswith((STAGING_PREFIX, OLD_PREFIX))]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


# ---------------------------------------------------------------------------- the final weights


def save_model_atomically(trainer: Any, out: Path) -> None:
    """`trainer.save_model(out)` made in a staging folder, whose files then move into `out`, weights last.

    `out` holds no final weights until they are complete, so an interrupted final save never looks
    like a finished run to `sftkit merge`, `sftkit chat` or `from_pretrained`, which look for them.
    """
    staged = out / f"{STAGING_PREFIX}final"
    trainer.save_model(str(staged))
    trainer.accelerator.wait_for_everyone()
    if trainer.args.should_save:
        fsync_tree(staged)
        for path in sorted(staged.iterdir(), key=_weights_last):
            if path.is_dir():
                replace_dir(path, out / path.name)
            else:
                os.replace(path, out / path.name)
        fsync_dir(out)
        shutil.rmtree(staged)
    trainer.accelerator.wait_for_everyone()


def _weights_last(path: Path) -> tuple[bool, bool]:
    """Other files, then weight shards, then the shard index (a loader starts from the index)."""
    return path.name.endswith(".index.json"), path.suffix == ".safetensors"
