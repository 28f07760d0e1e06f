"""The page's processes: every action that trains, merges, exports or serves is an `sftkit` command run as a child.

The page never trains in its own process: a run started from the browser is the same `sftkit train CONFIG` a
terminal would start (its lock, its checkpoints, its exit codes), in a session of its own, so neither a closed
browser nor a stopped page ends it. Commands are argument lists built from validated fields (no shell), and
each is shown on the page as the line a user could paste instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftkit.run_dir import (
    PROGRESS_FILE,
    TRAINER_STATE,
    clock,
    progress_numbers,
    read_json,
    sftkit_program,
    shell_command,
)
from sftkit.training.lifecycle import checkpoint_state, latest_checkpoint

_LOG_TAIL = 12_000  # characters of a process's log shown on the page


@dataclass
class Job:
    """One `sftkit` child process, its command line and the log its output goes to."""

    args: list[str]
    log: Path
    process: subprocess.Popen[bytes]
    stopping: bool = False
    started: float = field(default_factory=time.monotonic)
    output_dir: Path | None = None  # a training job's run directory, whose progress the page draws
    config: Path | None = None  # and the YAML file it runs
    launcher: list[str] | None = None  # torchrun's words before `sftkit`, for a multi-GPU run

    @property
    def command(self) -> str:
        """The line a user pastes into a shell to do the same."""
        if self.launcher:  # python -m torch.distributed.run ARGS -m sftkit: torchrun's own line
            import shlex

            return f"cd {shlex.quote(str(Path.cwd()))} && " + shlex.join(
                ["torchrun", *self.launcher[3:-2], "-m", "sftkit", *self.args]
            )
        return shell_command(*self.args)

    def running(self) -> bool:
        return self.process.poll() is None

    def state(self) -> str:
        """running, stopping, finished, stopped (by the page) or failed (exit code N)."""
        code = self.process.poll()
        if code is None:
            return "stopping" if self.stopping else "running"
        if self.stopping:
            return f"stopped (exit code {code})"  # a stopped run exits 130 after saving its checkpoint
        return "finished" if code == 0 else f"failed (exit code {code})"

    def stop(self, sig: int = signal.SIGINT) -> None:
        """SIGINT for a training run (it saves a checkpoint and exits 130); SIGTERM for a server."""
        if self.running():
            self.stopping = True
            os.killpg(self.process.pid, sig)

    def log_tail(self, lines: int = 12) -> str:
        """The newest `lines` lines of the log (a box of that height shows the newest, not the oldest); a
        progress bar's carriage-return updates count as lines of their own."""
        if not self.log.is_file():
            return ""
        with self.log.open("rb") as handle:
            handle.seek(max(0, self.log.stat().st_size - _LOG_TAIL))
            text = handle.read().decode("utf-8", errors="replace")
        return "\n".join(text.replace("\r", "\n").rstrip("\n").splitlines()[-lines:])


@dataclass
class Jobs:
    """The processes the page started, one per purpose (train, merge, export, serve): a second of a kind waits
    for the first to end, so no two page actions fight over one folder."""

    log_dir: Path
    program: list[str] = field(default_factory=sftkit_program)  # the words that start sftkit (a test's stand-in)
    jobs: dict[str, Job] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, kind: str, *args: str, program: list[str] | None = None) -> Job:
        """Starts `sftkit ARGS` as the page's `kind` job, its output to LOG_DIR/KIND.log.

        Args:
            kind: train, validate, export, serve or eval (one of each at a time).
            args: the sftkit command's words.
            program: the words that start sftkit instead of the page's own (a torchrun launch).

        Raises:
            RuntimeError: the page's job of this kind is still running (the page shows the message).
        """
        with self._lock:
            current = self.jobs.get(kind)
            if current is not None and current.running():
                raise RuntimeError(f"the {kind} job is still running ({current.command}); stop it or wait")
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = self.log_dir / f"{kind}.log"
            with log.open("wb") as out:
                # a session of its own: the page's Ctrl-C and a closed browser do not reach the run
                process = subprocess.Popen(
                    [*(program or self.program), *args],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            job = self.jobs[kind] = Job(list(args), log, process, launcher=program)
            return job

    def get(self, kind: str) -> Job | None:
        return self.jobs.get(kind)

    def newest(self, *kinds: str) -> Job | None:
        """The most recently started job of these kinds (whose log the page shows)."""
        started = [job for kind in kinds if (job := self.jobs.get(kind)) is not None]
        return max(started, key=lambda job: job.started, default=None)

    def stop_all(self) -> None:
        """On the page's own shutdown: servers end; training runs go on (they are the user's)."""
        for kind, job in self.jobs.items():
            if kind == "serve":
                job.stop(signal.SIGTERM)


# ---------------------------------------------------------------------------- what a run has written so far


def progress(output_dir: Path) -> list[dict[str, Any]]:
    """The run's logged steps and evaluations: progress.jsonl as the run writes it, else (a run made before
    it existed, or by plain transformers) the log_history of its trainer_state.json."""
    path = output_dir / PROGRESS_FILE
    if path.is_file():
        records = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the line being written as we read
        return records
    return _trainer_log(output_dir)


def trainer_state(run: Path) -> dict[str, Any]:
    """The run's trainer_state.json, else that of its newest complete checkpoint (a run still going); {} if none."""
    newest = latest_checkpoint(run)
    return read_json(run / TRAINER_STATE) or (checkpoint_state(newest) if newest else None) or {}


def _trainer_log(output_dir: Path) -> list[dict[str, Any]]:
    history = trainer_state(output_dir).get("log_history", [])
    return [entry for entry in history if "loss" in entry or "eval_loss" in entry]


def summary(records: list[dict[str, Any]]) -> str:
    """One line: step, loss, learning rate, tokens/s and ETA of the newest records (as the run's log prints them),
    the last eval loss, and how many points the curves hold."""
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    if not train and not evals:
        return "no step logged yet"
    parts = []
    if train:
        last = train[-1]
        parts.append(
            f"step {last['step']}/{last.get('max_steps', '?')}  {progress_numbers(last)}  "
            f"eta {clock(last.get('eta_seconds'))}"
        )
    if evals:
        parts.append(f"eval loss {evals[-1]['eval_loss']:.4f} (step {evals[-1]['step']})")
    return f"{'  '.join(parts)}  ({len(train)} loss points, {len(evals)} eval points)"
