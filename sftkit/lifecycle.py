"""Run lifecycle: resuming, interruption, atomic checkpoints, the disk check and the non-finite-loss stop.

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
  position in the data order.
- The first SIGINT/SIGTERM makes the trainer save a checkpoint at the end of the current step and
  stop; a second one aborts at once. A non-finite loss stops the run without saving anything past the
  last good checkpoint.

Only the standard library is imported at module level: `resolve_resume` runs among the instant
checks, before torch or transformers load.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.errors import SftkitError

if TYPE_CHECKING:
    import torch
    from transformers import TrainerCallback, TrainerControl, TrainerState

    from sftkit.config import SftConfig

TRAINER_STATE = "trainer_state.json"
STAGING_PREFIX = ".partial-"  # never matches HF's "checkpoint-*" glob, so rotation and loaders skip it
_OLD_PREFIX = ".old-"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Optimizer state saved per trainable parameter, in bytes per byte of the parameter (Adam: two moments
# of the parameter's dtype) or, for 8-bit optimizers, in bytes per parameter.
_STATE_PER_PARAM_BYTE = {"adamw_torch": 2.0, "adamw_torch_fused": 2.0, "adafactor": 1.0, "sgd": 0.0}
_STATE_BYTES_PER_PARAM = {"adamw_bnb_8bit": 2.0, "paged_adamw_8bit": 2.0}
# Tokenizer, configs, trainer/scheduler/RNG state and logs written beside the weights of each save.
_EXTRA_BYTES = 32 * 2**20
_MARGIN = 1.1  # filesystem overhead and estimate error


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
            raise SftkitError(f"--resume latest: output_dir {out} does not exist, so there is nothing to resume; "
                              "train without --resume")
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            raise SftkitError(f"--resume latest: no complete checkpoint in {out} (incomplete saves are ignored); "
                              "train without --resume, or with --overwrite to start again")
        return checkpoint
    path = Path(resume)
    if not path.is_dir():
        raise SftkitError(f"--resume {resume}: no such checkpoint folder; use --resume latest or a checkpoint-N "
                          f"folder of {out}")
    if not is_complete_checkpoint(path):
        raise SftkitError(f"--resume {resume}: not a complete checkpoint (no readable {TRAINER_STATE}; an "
                          "interrupted save?); use --resume latest or another checkpoint-N folder")
    return path


def latest_checkpoint(out: Path) -> Path | None:
    """The complete `checkpoint-N` folder in `out` with the highest N, or None."""
    return max(complete_checkpoints(out), key=checkpoint_step, default=None)


def complete_checkpoints(out: Path) -> list[Path]:
    """Every complete `checkpoint-N` folder in `out` (partial saves and foreign folders left out)."""
    if not out.is_dir():
        return []
    return sorted((path for path in out.iterdir() if _CHECKPOINT.match(path.name) and is_complete_checkpoint(path)),
                  key=checkpoint_step)


def is_complete_checkpoint(path: Path) -> bool:
    """A folder whose trainer state, the last file the trainer writes, is there and parses."""
    try:
        state = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "global_step" in state


def checkpoint_step(path: Path) -> int:
    match = _CHECKPOINT.match(path.name)
    return int(match.group(1)) if match else -1


def discard_partial_checkpoints(out: Path) -> list[Path]:
    """Deletes what interrupted saves left in `out` (`.partial-*`, `.old-*`); returns what was deleted."""
    if not out.is_dir():
        return []
    leftovers = [path for path in out.iterdir() if path.name.startswith((STAGING_PREFIX, _OLD_PREFIX))]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


# ---------------------------------------------------------------------------- atomic folders

def replace_dir(staged: Path, final: Path) -> None:
    """Moves a completely written folder to its final name, replacing any folder there.

    The files are synced to disk first, so after a power loss `final` is either the old folder or the
    complete new one. A folder already at `final` is renamed aside and deleted only afterwards.
    """
    fsync_tree(staged)
    old = final.with_name(f"{_OLD_PREFIX}{final.name}")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    staged.rename(final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


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
        _fsync_dir(out)
        shutil.rmtree(staged)
    trainer.accelerator.wait_for_everyone()


def _weights_last(path: Path) -> tuple[bool, bool]:
    """Other files, then weight shards, then the shard index (a loader starts from the index)."""
    return path.name.endswith(".index.json"), path.suffix == ".safetensors"


def fsync_tree(root: Path) -> None:
    """Flushes every file under `root` (and the folders themselves) to disk."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            descriptor = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        _fsync_dir(Path(folder))


def _fsync_dir(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic there
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# ---------------------------------------------------------------------------- the trainer side

class LifecycleTrainerMixin:
    """Mixed into the trainer class before TRL's SFTTrainer: atomic checkpoints and the run guard.

    `trainer.run_guard` (a `RunGuard`) is registered as a callback and sees every micro-batch loss.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run_guard = RunGuard(self)
        self.add_callback(self.run_guard.callback())

    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = super().training_step(*args, **kwargs)
        self.run_guard.record_loss(loss)
        return loss

    def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
        # a finite loss can still give an infinite gradient, and one optimizer step then ruins every weight
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self.run_guard.record_grad_norm(grad_norm)
        return grad_norm

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """The trainer's own save, made into a staging folder, then renamed into place and rotated.

        The trainer writes `<output_dir>/checkpoint-N`; pointing its output_dir at the staging folder for
        the duration of the save keeps everything it writes (weights, optimizer, scheduler, RNG state of
        every process, trainer state) in one place until it is complete.
        """
        run_dir = self.args.output_dir
        final = Path(run_dir) / f"checkpoint-{self.state.global_step}"
        staged = Path(run_dir) / f"{STAGING_PREFIX}{final.name}" / final.name
        self.args.output_dir = str(staged.parent)  # (its rotation there finds one checkpoint: a no-op)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = run_dir
        self._point_best_at(staged, final)
        self.accelerator.wait_for_everyone()  # every process has written its part
        if self.args.should_save:
            replace_dir(staged, final)
            shutil.rmtree(staged.parent, ignore_errors=True)
            _rotate(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()  # nobody reads the checkpoint before it has its name
        if self.run_guard.signal_number is not None:
            # the run stops after this save; under save_total_limit 1 the trainer's end-of-training cleanup
            # would delete every checkpoint but the best one, this one, the one to resume from, included
            self.args.save_total_limit = None

    def _point_best_at(self, staged: Path, final: Path) -> None:
        """The trainer recorded the staging path as the best checkpoint when this save is the best one."""
        best = self.state.best_model_checkpoint
        if best is None or Path(best) != staged:
            return
        self.state.best_model_checkpoint = str(final)
        if self.args.should_save:
            self.state.save_to_json(str(staged / TRAINER_STATE))


def _rotate(run_dir: str, limit: int | None, best: str | None) -> None:
    """HF's rotation (keeps the newest and the best), run once the new checkpoint is in place."""
    from transformers.trainer_utils import rotate_checkpoints

    rotate_checkpoints(output_dir=run_dir, save_total_limit=limit, best_model_checkpoint=best, use_mtime=True)


class RunGuard:
    """Stops a run cleanly on SIGINT/SIGTERM (after saving a checkpoint) and on a non-finite loss (without).

    Signals only set a flag; the trainer acts on it at the end of the optimizer step, where its
    callback asks for a save and a stop. With several processes the flags are shared each step, so
    all of them save and stop at the same step.
    """

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.signal_number: int | None = None
        self.bad_loss: tuple[int, float] | None = None  # (step, loss) of the first non-finite loss
        self.bad_grad_norm: tuple[int, float] | None = None  # (step, norm) of a non-finite gradient norm
        self._losses: list[torch.Tensor] = []
        self._grad_norm: torch.Tensor | float | None = None
        self._previous_handlers: dict[int, Any] = {}

    # ------------------------------------------------------------ signals

    @contextmanager
    def handling_signals(self) -> Iterator[RunGuard]:
        """SIGINT and SIGTERM handled by the guard inside the block (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._previous_handlers = {number: signal.signal(number, self._on_signal) for number in _SIGNALS}
        try:
            yield self
        finally:
            for number, handler in self._previous_handlers.items():
                signal.signal(number, handler)

    def _on_signal(self, number: int, _frame: Any) -> None:
        name = signal.Signals(number).name
        say = _say if self.trainer.is_world_process_zero() else (lambda text: None)
        if self.signal_number is not None:
            say(f"\n{name} again: aborting now. Resume from the last complete checkpoint with: "
                 f"{resume_command(self._out)}\n")
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)  # die of the signal, as the user asked
            return
        self.signal_number = number
        say(f"\n{name}: saving a checkpoint at the end of this step, then stopping "
             f"({name} again aborts at once)\n")

    # ------------------------------------------------------------ the loss

    def record_loss(self, loss: torch.Tensor) -> None:
        """Keeps a micro-batch loss (on its device: no host sync) until the optimizer step ends."""
        self._losses.append(loss.detach())

    def record_grad_norm(self, norm: torch.Tensor | float | None) -> None:
        """Keeps the step's gradient norm (before clipping) until the optimizer step ends."""
        import torch

        self._grad_norm = norm.detach() if isinstance(norm, torch.Tensor) else norm

    def on_step_end(self, state: TrainerState, control: TrainerControl) -> None:
        """After each optimizer step: stop without saving on a bad loss or gradient, save and stop after a signal."""
        interrupted, bad_loss, bad_norm = self._step_flags()
        if bad_loss is not None or bad_norm is not None:
            self.bad_loss = (state.global_step, bad_loss) if bad_loss is not None else None
            self.bad_grad_norm = (state.global_step, bad_norm) if bad_norm is not None else None
            control.should_save = control.should_evaluate = False
            control.should_training_stop = True
        elif interrupted:
            self.signal_number = self.signal_number or signal.SIGINT  # another process was signalled
            control.should_save = control.should_training_stop = True

    def _step_flags(self) -> tuple[bool, float | None, float | None]:
        """(a signal arrived, the first non-finite loss of this step, a non-finite gradient norm), agreed by
        all processes; None where finite.

        One host sync per optimizer step (HF's default nan/inf logging filter makes one per micro-batch).
        """
        import torch

        device = self.trainer.args.device
        losses = torch.stack(self._losses).float().to(device) if self._losses else torch.zeros(1, device=device)
        norm = torch.as_tensor(0.0 if self._grad_norm is None else self._grad_norm, device=device).float()
        self._losses, self._grad_norm = [], None
        bad = ~torch.isfinite(losses)
        signalled = torch.tensor(float(self.signal_number is not None), device=device)
        flags = torch.stack([signalled, bad.any().float(), losses[bad.int().argmax()],  # argmax: first bad one
                             (~torch.isfinite(norm)).float(), norm])
        if self.trainer.accelerator.num_processes > 1:
            every = self.trainer.accelerator.gather(flags).view(-1, 5)
            flags = torch.stack([every[:, 0].max(), every[:, 1].max(), every[every[:, 1].argmax(), 2],
                                 every[:, 3].max(), every[every[:, 3].argmax(), 4]])
        signalled_anywhere, any_bad, value, bad_norm, norm_value = flags.tolist()
        return bool(signalled_anywhere), (value if any_bad else None), (norm_value if bad_norm else None)

    def callback(self) -> TrainerCallback:
        """The guard as a TrainerCallback (added after HF's flow callback, so it has the last word)."""
        from transformers import TrainerCallback

        guard = self

        class RunGuardCallback(TrainerCallback):
            def on_step_end(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
                guard.on_step_end(state, control)

        return RunGuardCallback()

    # ------------------------------------------------------------ after trainer.train()

    def raise_if_stopped(self) -> None:
        """Ends the run when the guard stopped it; returns when training ran to its end.

        Raises:
            SftkitError: the loss became non-finite (exit code 2), naming the last good checkpoint.
            SystemExit: a signal stopped training (exit code 128 + the signal number), after saying
                where the checkpoint is and how to resume.
        """
        state = self.trainer.state
        if self.bad_loss is not None or self.bad_grad_norm is not None:
            step, what = (self.bad_loss[0], f"the loss became {self.bad_loss[1]}") if self.bad_loss is not None else (
                self.bad_grad_norm[0], f"the gradient norm became {self.bad_grad_norm[1]} (with a finite loss)")
            good = latest_checkpoint(self._out)
            kept = f"the last good checkpoint, {good}, is kept" if good else "no checkpoint was saved before it"
            raise SftkitError(f"training stopped at step {step}: {what} (not finite); {kept} and "
                              f"nothing after it was saved; lower learning_rate (now {self.trainer.args.learning_rate}"
                              "), raise warmup_steps or check the data, then train again")
        if self.signal_number is None or state.global_step >= state.max_steps:
            return
        name = signal.Signals(self.signal_number).name
        if self.trainer.is_world_process_zero():
            print(f"stopped by {name} at step {state.global_step} of {state.max_steps}: saved "
                  f"{latest_checkpoint(self._out)}\nresume with: {resume_command(self._out)}", file=sys.stderr,
                  flush=True)
        raise SystemExit(128 + self.signal_number)

    @property
    def _out(self) -> Path:
        return Path(self.trainer.args.output_dir)


def resume_command(out: Path) -> str:
    """The command that continues the run in `out` (its resolved config is written there at the start)."""
    from sftkit.train import CONFIG_FILE

    return f"sftkit train {out / CONFIG_FILE} --resume latest"


def _say(text: str) -> None:
    """Writes straight to stderr's descriptor: safe inside a signal handler, even mid-print."""
    os.write(2, text.encode("utf-8", "replace"))


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
    optimizer_bytes = (_STATE_PER_PARAM_BYTE.get(cfg.optim, 0.0) * param_bytes
                       + _STATE_BYTES_PER_PARAM.get(cfg.optim, 0.0) * sum(param.numel() for param in trainable))
    return DiskEstimate(weight_bytes=saved_weight_bytes(model, cfg), optimizer_bytes=int(optimizer_bytes),
                        checkpoints=checkpoints_at_peak(cfg, planned_updates))


def saved_weight_bytes(model: Any, cfg: SftConfig) -> int:
    """Bytes of the weights a save writes: PEFT's adapter state dict, or every (untied) model weight."""
    if cfg.finetuning_type == "lora":
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
    saves = math.ceil(cfg.num_train_epochs) if cfg.save_strategy == "epoch" else math.ceil(
        planned_updates / cfg.save_steps)
    if cfg.save_total_limit is None:
        return saves
    wants_best = cfg.load_best_model_at_end or cfg.early_stopping_steps is not None
    kept = max(cfg.save_total_limit, 2 if wants_best else 1)
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
    parts = f"{estimate.checkpoints} checkpoints x {_size(estimate.checkpoint_bytes)} (weights " \
            f"{_size(estimate.weight_bytes)} + optimizer state {_size(estimate.optimizer_bytes)}) + final weights " \
            f"{_size(estimate.final_bytes)}"
    already = f", {_size(existing)} of it already written" if existing else ""
    raise SftkitError(f"output_dir: not enough disk space in {out}: the run needs about {_size(needed)} ({parts}, "
                      f"+10% margin{already}) but only {_size(free)} is free; free some space, lower "
                      "save_total_limit, or choose an output_dir on another disk")


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


def lifecycle_trainer(base: type) -> type:
    """`base` (TRL's SFTTrainer or a subclass) with atomic checkpoints and the run guard mixed in."""
    return type(base.__name__, (LifecycleTrainerMixin, base), {})
