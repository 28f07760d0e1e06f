"""The trainer side of the run lifecycle: atomic checkpoint saves, rotation, and the run guard.

Part of `sftkit.training.lifecycle` (the package docstring tells the whole story). torch and transformers are
imported inside the functions that need them.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.atomic import replace_dir
from sftkit.errors import SftkitError
from sftkit.run_dir import TRAINER_STATE, resume_command
from sftkit.training.lifecycle.checkpoints import STAGING_PREFIX, latest_checkpoint

if TYPE_CHECKING:
    import torch
    from transformers import TrainerCallback, TrainerControl, TrainerState

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


# ---------------------------------------------------------------------------- the trainer side


class LifecycleTrainerMixin:
    """Mixed into the trainer class before TRL's SFTTrainer: atomic checkpoints and the run guard.

    `trainer.run_guard` (a `RunGuard`) is registered as a callback and sees every micro-batch loss.
    The two private Trainer methods overridden here have no public hook: `_get_grad_norm` is the only
    place the pre-clipping norm is seen, `_save_checkpoint` the only place a checkpoint is written
    (tests/test_lifecycle.py fails when transformers renames either).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run_guard = RunGuard(self)
        self.add_callback(self.run_guard.callback())

    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = super().training_step(*args, **kwargs)
        self.run_guard.record_loss(loss)
        return loss

    def before_checkpoint(self) -> None:
        """Runs on every process before a checkpoint is written (the trainer's state is saved in it)."""

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
        self.before_checkpoint()
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
            say(
                f"\n{name} again: aborting now. Resume from the last complete checkpoint with: "
                f"{resume_command(self._out)}\n"
            )
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)  # die of the signal, as the user asked
            return
        self.signal_number = number
        say(f"\n{name}: saving a checkpoint at the end of this step, then stopping ({name} again aborts at once)\n")

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
        flags = torch.stack(
            [
                signalled,
                bad.any().float(),
                losses[bad.int().argmax()],  # argmax: first bad one
                (~torch.isfinite(norm)).float(),
                norm,
            ]
        )
        if self.trainer.accelerator.num_processes > 1:
            every = self.trainer.accelerator.gather(flags).view(-1, 5)
            flags = torch.stack(
                [
                    every[:, 0].max(),
                    every[:, 1].max(),
                    every[every[:, 1].argmax(), 2],
                    every[:, 3].max(),
                    every[every[:, 3].argmax(), 4],
                ]
            )
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
            step, what = (
                (self.bad_loss[0], f"the loss became {self.bad_loss[1]}")
                if self.bad_loss is not None
                else (self.bad_grad_norm[0], f"the gradient norm became {self.bad_grad_norm[1]} (with a finite loss)")
            )
            good = latest_checkpoint(self._out)
            kept = f"the last good checkpoint, {good}, is kept" if good else "no checkpoint was saved before it"
            raise SftkitError(
                f"training stopped at step {step}: {what} (not finite); {kept} and "
                f"nothing after it was saved; lower learning_rate (now {self.trainer.args.learning_rate}"
                "), raise warmup_steps or check the data, then train again"
            )
        if self.signal_number is None or state.global_step >= state.max_steps:
            return
        name = signal.Signals(self.signal_number).name
        if self.trainer.is_world_process_zero():
            print(
                f"stopped by {name} at step {state.global_step} of {state.max_steps}: saved "
                f"{latest_checkpoint(self._out)}\nresume with: {resume_command(self._out)}",
                file=sys.stderr,
                flush=True,
            )
        raise SystemExit(128 + self.signal_number)

    @property
    def _out(self) -> Path:
        return Path(self.trainer.args.output_dir)


def _say(text: str) -> None:
    """Writes straight to stderr's descriptor: safe inside a signal handler, even mid-print."""
    os.write(2, text.encode("utf-8", "replace"))
