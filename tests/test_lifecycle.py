"""Run lifecycle on the tiny model: kill -9 and resume, SIGINT/SIGTERM, NaN stop, atomic checkpoints, disk check.

The real runs are `sftkit train` subprocesses started together once per module (most of their cost is
starting Python); each test then reads what its run left behind.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import types
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest
import yaml

from sftkit.atomic import replace_dir
from sftkit.errors import SftkitError
from sftkit.training.lifecycle import (
    DiskEstimate,
    check_disk_space,
    checkpoints_at_peak,
    complete_checkpoints,
    discard_partial_checkpoints,
    is_complete_checkpoint,
    latest_checkpoint,
    resolve_resume,
)

# 100 short updates, a checkpoint every 10: a run killed at its first checkpoint has 90 updates to go.
# Dropout and several epochs make the RNG state and the shuffled data order matter on resume.
RUN = {
    "dataset": "demo_alpaca,demo_sharegpt,demo_messages",
    "template": "chatml",
    "report_to": "none",
    "plot_loss": False,
    "max_samples": 4,
    "cutoff_len": 128,
    "lora_dropout": 0.1,
    "per_device_train_batch_size": 2,
    "learning_rate": 5e-3,
    "lr_scheduler_type": "cosine",
    "max_steps": 100,
    "save_steps": 10,
    "save_total_limit": 2,
    "logging_steps": 1,
}
TRIGGER = "checkpoint-10"  # signals and kill -9 wait for this checkpoint to be complete
TIMEOUT = 600


def sftkit_command() -> list[str]:
    venv = Path(sys.executable).parent / "sftkit"
    return [str(venv)] if venv.exists() else [sys.executable, "-m", "sftkit"]


class Run:
    """One `sftkit train` subprocess; stdout and stderr go to files (a full pipe would block it)."""

    def __init__(self, root: Path, name: str, model: Path, data: Path, *extra: str, **keys: Any) -> None:
        self.root, self.name, self.out = root, name, root / name
        self.config = root / f"{name}.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {**RUN, "model_name_or_path": str(model), "dataset_dir": str(data), "output_dir": str(self.out), **keys}
            )
        )
        self.extra = extra
        self.listing_at_exit: list[str] = []  # output_dir's entries when the process ended
        self.code: int | None = None  # return code of the (first) process
        self.code_at_kill: int | None = None
        self.start()

    def start(self, *extra: str) -> None:
        # one thread each: several runs share the machine, and oversubscribed threads spin
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
            "HF_DATASETS_CACHE": str(self.root / "hf-cache"),
            "OMP_NUM_THREADS": "1",
        }
        self.log = self.root / f"{self.name}{'-'.join(('', *extra))}.log"
        with open(self.log.with_suffix(".out"), "w") as stdout, open(self.log, "w") as stderr:
            self.process = subprocess.Popen(
                [*sftkit_command(), "train", str(self.config), *self.extra, *extra],
                stdout=stdout,
                stderr=stderr,
                env=env,
            )

    def wait(self) -> int:
        code = self.process.wait(timeout=TIMEOUT)
        self.listing_at_exit = sorted(os.listdir(self.out)) if self.out.is_dir() else []
        return code

    @property
    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def state(self) -> dict[str, Any]:
        return json.loads((self.out / "trainer_state.json").read_text())


def signal_when_checkpointed(runs: dict[str, Run], signals: dict[str, int]) -> None:
    """Sends each run its signal once its first checkpoint is complete (it fails if it ended before)."""
    deadline = time.monotonic() + TIMEOUT
    pending = dict(signals)
    while pending and time.monotonic() < deadline:
        for name, number in list(pending.items()):
            run = runs[name]
            if is_complete_checkpoint(run.out / TRIGGER):
                os.kill(run.process.pid, number)
                del pending[name]
            elif run.process.poll() is not None:
                del pending[name]  # ended early: the test reads its return code
        time.sleep(0.02)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, bundled_data: Path) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("lifecycle")
    specs: dict[str, dict[str, Any]] = {
        "base": {},
        "twin": {},
        "killed": {},
        "sigint": {},
        # the checkpoint a signal saves outlives save_total_limit 1 with the best model kept (not the newest)
        "sigterm": {
            "seed": 7,
            "eval_dataset": "demo_messages",
            "eval_steps": 10,
            "eval_strategy": "steps",
            "save_total_limit": 1,
            "load_best_model_at_end": True,
        },
        "nan": {"learning_rate": 1e30, "save_steps": 1, "max_steps": 10},
    }
    runs = {name: Run(root, name, tiny_model_dir, bundled_data, **keys) for name, keys in specs.items()}
    signal_when_checkpointed(runs, {"killed": signal.SIGKILL, "sigint": signal.SIGINT, "sigterm": signal.SIGTERM})
    for run in runs.values():
        run.code = run.wait()
    killed = runs["killed"]
    killed.code_at_kill = killed.code
    killed.start("--resume", "latest")
    killed.code = killed.wait()
    return runs


def losses(run: Run, state_file: Path | None = None) -> list[tuple[int, float, int]]:
    """(step, loss, tokens seen) of every logged training step."""
    state = json.loads((state_file or run.out / "trainer_state.json").read_text())
    return [(e["step"], e["loss"], e.get("num_tokens")) for e in state["log_history"] if "loss" in e]


def metrics(run: Run) -> dict[str, Any]:
    return json.loads((run.out / "metrics.json").read_text())


def losses_until_stopped(run: Run) -> list[tuple[int, float, int]]:
    """The losses of an interrupted run, from the checkpoint it saved when it stopped."""
    return losses(run, latest_checkpoint(run.out) / "trainer_state.json")


# ---------------------------------------------------------------------------- determinism


@pytest.mark.integration  # the module's six 100-step training runs
def test_same_config_and_seed_give_the_same_data_order_and_losses(runs: dict[str, Run]) -> None:
    base, twin = losses(runs["base"]), losses(runs["twin"])
    assert runs["base"].code == runs["twin"].code == 0
    assert len(base) == RUN["max_steps"]
    assert [(step, tokens) for step, _, tokens in base] == [(step, tokens) for step, _, tokens in twin]
    assert [loss for _, loss, _ in base] == pytest.approx([loss for _, loss, _ in twin], abs=1e-6)
    same_seed = losses_until_stopped(runs["sigint"])  # a third run of the same config, stopped early
    start = base[: len(same_seed)]
    assert [step for step, _, _ in same_seed] == [step for step, _, _ in start]
    assert [loss for _, loss, _ in same_seed] == pytest.approx([loss for _, loss, _ in start], abs=1e-6)
    other_seed = [loss for _, loss, _ in losses_until_stopped(runs["sigterm"])]
    assert len(other_seed) >= 10  # it ran as base did, with seed 7, until SIGTERM stopped it
    assert any(abs(a - b[1]) > 1e-3 for a, b in zip(other_seed, base))  # the comparison tells seeds apart


# ---------------------------------------------------------------------------- kill -9 and resume


@pytest.mark.integration  # the module's six 100-step training runs
def test_killed_run_resumes_to_the_same_step_loss_and_weights(runs: dict[str, Run]) -> None:
    from safetensors.torch import load_file

    killed, base = runs["killed"], runs["base"]
    assert killed.code_at_kill == -signal.SIGKILL, "the run ended before it could be killed"
    assert killed.code == 0 and "Traceback" not in killed.stderr, killed.stderr[-3000:]
    assert killed.state()["global_step"] == base.state()["global_step"] == RUN["max_steps"]
    resumed, uninterrupted = losses(killed), losses(base)
    assert [step for step, _, _ in resumed] == [step for step, _, _ in uninterrupted]
    assert [loss for _, loss, _ in resumed] == pytest.approx([loss for _, loss, _ in uninterrupted], abs=1e-6)
    # the token count goes on from the checkpoint, not from zero
    assert [tokens for *_, tokens in resumed] == [tokens for *_, tokens in uninterrupted]
    assert metrics(killed)["tokens_seen"] == metrics(base)["tokens_seen"] == uninterrupted[-1][2] > 0
    final = load_file(killed.out / "adapter_model.safetensors")
    reference = load_file(base.out / "adapter_model.safetensors")
    assert final.keys() == reference.keys()
    assert all((final[key] - reference[key]).abs().max() <= 1e-6 for key in final)


@pytest.mark.integration  # the module's six 100-step training runs
def test_a_clean_run_prints_no_known_library_noise(runs: dict[str, Run]) -> None:
    # expected library messages are silenced (sftkit.quiet): what is left on stderr is worth reading
    stderr = runs["base"].stderr
    assert runs["base"].code == 0
    for text in (
        "save_embedding_layers",
        "gemm_4bit",
        "is_gradient_checkpointing",
        "multivariate normal",
        "mtime may not",
    ):
        assert text not in stderr, stderr[-2000:]


@pytest.mark.integration  # the module's six 100-step training runs
def test_weights_are_written_as_safetensors_only(runs: dict[str, Run]) -> None:
    pickles = {path.name for path in runs["base"].out.rglob("*") if path.suffix in (".bin", ".pt", ".pth", ".pkl")}
    # the trainer's own state files are pickles of tensors and settings, loaded with weights_only=True
    assert pickles <= {"training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"}
    assert (runs["base"].out / "adapter_model.safetensors").is_file()
    assert all(
        (checkpoint / "adapter_model.safetensors").is_file() for checkpoint in complete_checkpoints(runs["base"].out)
    )


# ---------------------------------------------------------------------------- SIGINT / SIGTERM


@pytest.mark.integration  # the module's six 100-step training runs
@pytest.mark.parametrize("name", ["sigint", "sigterm"])
def test_first_signal_saves_a_checkpoint_and_stops(runs: dict[str, Run], name: str) -> None:
    run = runs[name]
    number = signal.SIGINT if name == "sigint" else signal.SIGTERM
    signame = signal.Signals(number).name
    assert run.code == 128 + number, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert f"{signame}: saving a checkpoint at the end of this step, then stopping" in run.stderr
    stopped = re.search(rf"stopped by {signame} at step (\d+) of 100: saved (\S+)", run.stderr)
    assert stopped, run.stderr[-3000:]
    step, checkpoint = int(stopped.group(1)), Path(stopped.group(2))
    assert checkpoint == run.out / f"checkpoint-{step}" and is_complete_checkpoint(checkpoint)
    assert latest_checkpoint(run.out) == checkpoint and 10 <= step < RUN["max_steps"]
    resume = shlex.split(run.stderr.split("resume with: ", 1)[1].splitlines()[0])  # quoted for the shell
    assert resume[0] == "cd" and resume[2] == "&&"  # from the directory the run started in: paths stay valid
    assert resume[-4:] == ["train", str(run.out / "sftkit_config.yaml"), "--resume", "latest"]
    assert "adapter_model.safetensors" not in run.listing_at_exit  # not a finished run
    assert not [entry for entry in run.listing_at_exit if entry.startswith(".")]


SECOND_SIGNAL = """
import os, signal, sys, time, types
from sftkit.training.lifecycle import RunGuard

trainer = types.SimpleNamespace(is_world_process_zero=lambda: True, args=types.SimpleNamespace(output_dir=sys.argv[1]))
guard = RunGuard(trainer)
with guard.handling_signals():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)
    print("first signal noted:", guard.signal_number, flush=True)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(10)
    print("still running", flush=True)
"""


def test_second_signal_aborts_at_once(tmp_path: Path) -> None:
    """The guard's handlers on their own (no trainer needed): the second signal kills the process."""
    result = subprocess.run(
        [sys.executable, "-c", SECOND_SIGNAL, str(tmp_path / "run")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == -signal.SIGINT
    assert "first signal noted: 2" in result.stdout and "still running" not in result.stdout
    assert "SIGINT again: aborting now" in result.stderr
    assert f"sftkit train {tmp_path / 'run' / 'sftkit_config.yaml'} --resume latest" in result.stderr


# ---------------------------------------------------------------------------- non-finite loss


@pytest.mark.integration  # the module's six 100-step training runs
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(runs: dict[str, Run]) -> None:
    run = runs["nan"]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert run.code == 2 and len(errors) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    stopped = re.search(
        r"training stopped at step (\d+): the loss became (nan|inf|-inf) \(not finite\); the last "
        r"good checkpoint, (\S+), is kept",
        errors[0],
    )
    assert stopped, errors[0]
    step, good = int(stopped.group(1)), Path(stopped.group(3))
    assert is_complete_checkpoint(good) and good == latest_checkpoint(run.out)
    assert all(int(name.split("-")[1]) < step for name in run.listing_at_exit if name.startswith("checkpoint-"))
    assert "adapter_model.safetensors" not in run.listing_at_exit


def test_infinite_gradient_with_a_finite_loss_stops_before_any_save(tmp_path: Path) -> None:
    """The guard on its own: the step's gradient norm (which the trainer hands over from `_get_grad_norm`)
    is checked with the losses, so the step that ruined the weights is never saved."""
    import torch
    import transformers
    from transformers import TrainerControl, TrainerState

    from sftkit.training.lifecycle import LifecycleTrainerMixin, RunGuard

    assert "_get_grad_norm" in vars(transformers.Trainer) and "_get_grad_norm" in vars(LifecycleTrainerMixin)
    args = types.SimpleNamespace(output_dir=str(tmp_path), device=torch.device("cpu"), learning_rate=1e-3)
    trainer = types.SimpleNamespace(
        args=args,
        accelerator=types.SimpleNamespace(num_processes=1),
        is_world_process_zero=lambda: True,
        state=TrainerState(global_step=7),
    )
    guard = RunGuard(trainer)
    for norm, stops in ((torch.tensor(3.0), False), (torch.tensor(float("inf")), True)):
        guard.record_loss(torch.tensor(1.25))
        guard.record_grad_norm(norm)
        control = TrainerControl(should_save=True, should_evaluate=True)
        guard.on_step_end(trainer.state, control)
        assert (control.should_training_stop, control.should_save, control.should_evaluate) == (
            (True, False, False) if stops else (False, True, True)
        )
    expected = r"step 7: the gradient norm became inf \(with a finite loss\) \(not finite\); no checkpoint was saved"
    with pytest.raises(SftkitError, match=expected):
        guard.raise_if_stopped()


# ---------------------------------------------------------------------------- resume: finding checkpoints


def make_checkpoint(path: Path, state: str | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"weights")
    if state is not None:
        (path / "trainer_state.json").write_text(state)
    return path


def test_resume_picks_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    good = make_checkpoint(tmp_path / "checkpoint-5", '{"global_step": 5}')
    make_checkpoint(tmp_path / "checkpoint-2", '{"global_step": 2}')
    make_checkpoint(tmp_path / "checkpoint-9")  # killed before the trainer state was written
    make_checkpoint(tmp_path / "checkpoint-8", '{"global_st')  # killed while writing it
    make_checkpoint(tmp_path / ".partial-checkpoint-12" / "checkpoint-12", '{"global_step": 12}')
    make_checkpoint(tmp_path / "checkpoint-7-copy", '{"global_step": 7}')
    assert resolve_resume(tmp_path, "latest") == good
    assert resolve_resume(tmp_path, str(tmp_path / "checkpoint-2")) == tmp_path / "checkpoint-2"
    assert resolve_resume(tmp_path, None) is None
    with pytest.raises(SftkitError, match="not a complete checkpoint"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoint-9"))
    with pytest.raises(SftkitError, match="no such checkpoint folder"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoint-99"))
    assert {path.name for path in discard_partial_checkpoints(tmp_path)} == {".partial-checkpoint-12"}
    assert not (tmp_path / ".partial-checkpoint-12").exists()


def test_resume_without_a_complete_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SftkitError, match="does not exist, so there is nothing to resume"):
        resolve_resume(tmp_path / "never", "latest")
    make_checkpoint(tmp_path / "checkpoint-3")
    with pytest.raises(SftkitError, match=r"--resume latest: no complete checkpoint in .* \(incomplete saves"):
        resolve_resume(tmp_path, "latest")


def test_cli_resume_without_checkpoint_exits_2_before_loading_anything(
    tmp_path: Path, tiny_model_dir: Path, bundled_data: Path
) -> None:
    out = tmp_path / "run"
    make_checkpoint(out / "checkpoint-4")  # incomplete
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {**RUN, "model_name_or_path": str(tiny_model_dir), "dataset_dir": str(bundled_data), "output_dir": str(out)}
        )
    )
    result = subprocess.run(
        [*sftkit_command(), "train", str(config), "--resume", "latest"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: --resume latest: no complete checkpoint in {out} (incomplete saves are ignored); train without "
        "--resume, or with --overwrite to start again"
    ]
    assert sorted(os.listdir(out)) == ["checkpoint-4"]


# ---------------------------------------------------------------------------- atomic checkpoints


def test_replace_dir_swaps_in_a_complete_folder(tmp_path: Path) -> None:
    staged, final = tmp_path / ".partial-x" / "x", tmp_path / "x"
    staged.mkdir(parents=True)
    (staged / "new.txt").write_text("new")
    final.mkdir()
    (final / "old.txt").write_text("old")
    replace_dir(staged, final)
    assert sorted(os.listdir(final)) == ["new.txt"] and not staged.exists()
    assert sorted(os.listdir(tmp_path)) == [".partial-x", "x"]  # the emptied staging parent is the caller's


def test_a_save_that_fails_midway_leaves_no_checkpoint_that_looks_complete(
    tmp_path: Path, tiny_model_dir: Path, bundled_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real trainer whose second checkpoint save dies after the weights, before the RNG state."""
    import datasets

    from sftkit.config import validate_config
    from sftkit.data import load_tokenizer, prepare_data
    from sftkit.model import resolve_precision
    from sftkit.templates import get_template
    from sftkit.training.recipe import load_model_for_training
    from sftkit.training.trainer import build_trainer

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    out = tmp_path / "run"
    cfg = validate_config(
        {
            **RUN,
            "model_name_or_path": str(tiny_model_dir),
            "dataset_dir": str(bundled_data),
            "output_dir": str(out),
            "max_steps": 6,
            "save_steps": 2,
        }
    )
    precision = resolve_precision(cfg)
    tokenizer, template = load_tokenizer(cfg), get_template(cfg.template)
    model = load_model_for_training(cfg, tokenizer, template, precision)
    trainer = build_trainer(cfg, precision, model, tokenizer, template, prepare_data(cfg, tokenizer).train, None)
    save_rng_state = trainer._save_rng_state
    calls = []

    def dies_on_the_second_save(output_dir: str) -> None:
        calls.append(output_dir)
        if len(calls) == 2:
            raise OSError("No space left on device")
        save_rng_state(output_dir)

    monkeypatch.setattr(trainer, "_save_rng_state", dies_on_the_second_save)
    with pytest.raises(OSError, match="No space left"):
        trainer.train()
    assert sorted(os.listdir(out)) == [".partial-checkpoint-4", "checkpoint-2", "progress.jsonl"]
    assert latest_checkpoint(out) == out / "checkpoint-2" and resolve_resume(out, "latest") == out / "checkpoint-2"
    discard_partial_checkpoints(out)
    assert sorted(os.listdir(out)) == ["checkpoint-2", "progress.jsonl"]


# ---------------------------------------------------------------------------- disk space

Usage = namedtuple("Usage", "total used free")


def test_disk_check_refuses_with_the_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    estimate = DiskEstimate(weight_bytes=2_000_000_000, optimizer_bytes=4_000_000_000, checkpoints=3)
    monkeypatch.setattr(
        "sftkit.training.lifecycle.disk.shutil.disk_usage", lambda path: Usage(10**12, 0, 5_000_000_000)
    )
    with pytest.raises(SftkitError) as info:
        check_disk_space(tmp_path / "new" / "run", estimate)
    message = str(info.value)
    assert message.startswith(f"output_dir: not enough disk space in {tmp_path / 'new' / 'run'}: the run needs about")
    assert "3 checkpoints x 6.0 GB (weights 2.0 GB + optimizer state 4.0 GB)" in message
    assert "only 5.0 GB is free" in message and "lower save_total_limit" in message
    monkeypatch.setattr("sftkit.training.lifecycle.disk.shutil.disk_usage", lambda path: Usage(10**13, 0, 10**13))
    check_disk_space(tmp_path / "new" / "run", estimate)


def test_disk_check_counts_checkpoints_already_written_when_resuming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    estimate = DiskEstimate(weight_bytes=400_000, optimizer_bytes=800_000, checkpoints=2)
    checkpoint = make_checkpoint(tmp_path / "checkpoint-5", '{"global_step": 5}')
    (checkpoint / "optimizer.pt").write_bytes(b"\0" * 60_000_000)
    free = estimate.total_bytes - 50_000_000
    monkeypatch.setattr("sftkit.training.lifecycle.disk.shutil.disk_usage", lambda path: Usage(10**12, 0, free))
    with pytest.raises(SftkitError, match="not enough disk space"):
        check_disk_space(tmp_path, estimate, resuming=False)
    check_disk_space(tmp_path, estimate, resuming=True)


def test_checkpoints_at_peak() -> None:
    from sftkit.config import validate_config

    def peak(planned: int, **keys: Any) -> int:
        return checkpoints_at_peak(
            validate_config({"model_name_or_path": "m", "dataset": "d", "output_dir": "o", **keys}), planned
        )

    assert peak(100, save_steps=10) == 10
    assert peak(100, save_steps=10, save_total_limit=2) == 3  # two kept + the one being written
    assert (
        peak(
            100,
            save_steps=10,
            save_total_limit=1,
            eval_strategy="steps",
            eval_steps=10,
            val_size=0.1,
            load_best_model_at_end=True,
        )
        == 3
    )  # the best is kept beside the newest
    assert peak(100, save_strategy="epoch", num_train_epochs=2.5) == 3
    assert peak(100, save_strategy="no") == 0


@pytest.mark.integration  # the module's six 100-step training runs
def test_disk_estimate_covers_a_real_checkpoint(runs: dict[str, Run], tiny_model_dir: Path, bundled_data: Path) -> None:
    from sftkit.config import validate_config
    from sftkit.data import load_tokenizer
    from sftkit.model import add_adapter, load_model, resolve_precision
    from sftkit.templates import get_template
    from sftkit.training.lifecycle import estimate_disk

    cfg = validate_config(
        {**RUN, "model_name_or_path": str(tiny_model_dir), "dataset_dir": str(bundled_data), "output_dir": "unused"}
    )
    tokenizer = load_tokenizer(cfg)
    model = add_adapter(
        load_model(cfg, tokenizer, resolve_precision(cfg)), cfg, get_template(cfg.template).token_ids(tokenizer)
    )
    estimate = estimate_disk(model, cfg, planned_updates=RUN["max_steps"])
    checkpoint = latest_checkpoint(runs["base"].out)
    assert estimate.checkpoints == 3
    weights = (checkpoint / "adapter_model.safetensors").stat().st_size
    optimizer = (checkpoint / "optimizer.pt").stat().st_size
    assert 0.9 * weights <= estimate.weight_bytes <= weights
    assert 0.7 * optimizer <= estimate.optimizer_bytes <= optimizer  # pickle overhead per tensor
    folder = sum(path.stat().st_size for path in checkpoint.rglob("*") if path.is_file())
    assert folder <= estimate.checkpoint_bytes


# ---------------------------------------------------------------------------- one run per output_dir

HOLD_LOCK = """
import sys, time
from pathlib import Path
from sftkit.training.lifecycle import run_lock
with run_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_run_on_one_output_dir_is_refused_naming_the_first(
    tmp_path: Path, tiny_model_dir: Path, bundled_data: Path
) -> None:
    from sftkit.config import validate_config
    from sftkit.run_dir import lock_path
    from sftkit.training import train
    from sftkit.training.lifecycle import run_lock

    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "locked"
        cfg = validate_config(
            {**RUN, "model_name_or_path": str(tiny_model_dir), "dataset_dir": str(bundled_data), "output_dir": str(out)}
        )
        with pytest.raises(
            SftkitError,
            match=rf"output_dir: {re.escape(str(out))} is in use by another `sftkit "
            rf"train` \(pid {first.pid}\); wait for it to finish",
        ):
            train(cfg)
        assert not out.exists()
    finally:
        first.kill()
        first.wait()
    assert lock_path(out).exists()  # killed: its lock file stays, but the kernel released the lock
    with run_lock(out):  # so the next run takes it
        assert lock_path(out).read_text().strip() == str(os.getpid())
        with pytest.raises(SftkitError, match=rf"\(pid {os.getpid()}\)"), run_lock(out):
            pass
    assert not lock_path(out).exists()


# ---------------------------------------------------------------------------- what resume refuses


def test_resume_refuses_a_checkpoint_without_optimizer_or_with_damaged_files(tmp_path: Path) -> None:
    import struct
    import zipfile

    from sftkit.training.lifecycle import check_checkpoint_files

    checkpoint = make_checkpoint(tmp_path / "checkpoint-4", '{"global_step": 4}')
    with pytest.raises(
        SftkitError,
        match="checkpoint-4 has no optimizer.pt, so the run would continue with a fresh "
        "optimizer and not equal an uninterrupted one",
    ):
        check_checkpoint_files(checkpoint, "latest")
    for name in ("optimizer.pt", "scheduler.pt"):
        with zipfile.ZipFile(checkpoint / name, "w") as archive:
            archive.writestr("data.pkl", b"state")
    with pytest.raises(SftkitError, match=r"adapter_model.safetensors: damaged weights file \(7 bytes, too short"):
        check_checkpoint_files(checkpoint, "latest")
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (checkpoint / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    check_checkpoint_files(checkpoint, "latest")
    data = (checkpoint / "optimizer.pt").read_bytes()
    (checkpoint / "optimizer.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(SftkitError, match="optimizer.pt: not a complete torch.save archive"):
        check_checkpoint_files(checkpoint, "latest")


def test_resume_with_a_changed_config_names_the_keys_and_writes_nothing(tmp_path: Path) -> None:
    from sftkit.config import dump_resolved, validate_config
    from sftkit.training.lifecycle import check_resume_config

    out = tmp_path / "run"
    out.mkdir()
    keys = {**RUN, "model_name_or_path": "m", "output_dir": str(out)}
    dump_resolved(validate_config(keys), out / "sftkit_config.yaml")
    before = (out / "sftkit_config.yaml").read_bytes()
    check_resume_config(validate_config({**keys, "logging_steps": 5, "report_to": "tensorboard"}), out)
    with pytest.raises(
        SftkitError,
        match=r"--resume: the config differs from the run's .*sftkit_config.yaml in "
        r"lora_rank \(8 -> 16\), learning_rate \(0.005 -> 0.001\); a resumed run",
    ):
        check_resume_config(validate_config({**keys, "lora_rank": 16, "learning_rate": 1e-3}), out)
    assert (out / "sftkit_config.yaml").read_bytes() == before


def test_train_refuses_a_changed_config_before_touching_the_run(tmp_path: Path) -> None:
    import struct
    import zipfile

    from sftkit.config import dump_resolved, validate_config
    from sftkit.training import train

    out = tmp_path / "run"
    checkpoint = make_checkpoint(out / "checkpoint-2", '{"global_step": 2}')
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (checkpoint / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    for name in ("optimizer.pt", "scheduler.pt"):
        with zipfile.ZipFile(checkpoint / name, "w") as archive:
            archive.writestr("data.pkl", b"state")
    keys = {**RUN, "model_name_or_path": "m", "output_dir": str(out)}
    dump_resolved(validate_config(keys), out / "sftkit_config.yaml")
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    with pytest.raises(SftkitError, match=r"in lora_rank \(8 -> 4\)"):
        train(validate_config({**keys, "lora_rank": 4}), resume="latest")
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
