"""What a run reports: start notes, the end screen, metrics that agree with themselves, the model card, the
progress lines, and printed commands that work pasted anywhere."""

from __future__ import annotations

import io
import json
import shlex
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sftkit.config import dump_resolved, validate_config
from sftkit.data import plural
from sftkit.run_dir import model_card, resume_command, shell_command
from sftkit.training.callbacks import ProgressReport
from sftkit.training.report import _metrics, print_end, print_start, start_notes

BASE = {
    "model_name_or_path": "models/tiny-ernie",
    "dataset": "demo_alpaca,demo_sharegpt",
    "output_dir": "runs/x",
    "template": "chatml",
    "report_to": "none",
}
HISTORY = [
    {"step": 10, "loss": 3.0},
    {"step": 10, "eval_loss": 2.0},
    {"step": 20, "loss": 2.0},
    {"step": 20, "eval_loss": 1.5},
    {"step": 30, "loss": 1.0},
    {"step": 30, "eval_loss": 1.7},
]


def fake_trainer(load_best: bool = False, **state: Any) -> Any:
    state = {
        "best_metric": None,
        "best_global_step": None,
        "best_model_checkpoint": None,
        "global_step": 30,
        "max_steps": 30,
        "epoch": 3.0,
        "log_history": HISTORY,
        **state,
    }
    args = SimpleNamespace(
        load_best_model_at_end=load_best,
        world_size=1,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        max_steps=120,
        num_train_epochs=1,
    )
    return SimpleNamespace(state=SimpleNamespace(**state), args=args, train_dataset=[0] * 120)


def metrics_of(trainer: Any, tokens: int = 3000, before: int = 0) -> dict[str, Any]:
    result = SimpleNamespace(metrics={"train_runtime": 10.0}, training_loss=2.0)
    evals = [(e["step"], e["eval_loss"]) for e in HISTORY if "eval_loss" in e]
    trains = [(e["step"], e["loss"]) for e in HISTORY if "loss" in e]
    return _metrics(trainer, result, trains, evals, 0.0, 12, tokens, before)


def test_best_eval_loss_comes_from_the_history_when_the_best_is_not_loaded() -> None:
    metrics = metrics_of(fake_trainer())
    assert (metrics["best_eval_loss"], metrics["best_step"], metrics["best_checkpoint"]) == (1.5, 20, None)
    assert metrics["eval_loss"] == 1.7 and metrics["eval_perplexity"] == pytest.approx(2.718281828**1.7)


def test_tokens_per_second_after_a_resume_counts_this_session_only() -> None:
    metrics = metrics_of(fake_trainer(), tokens=18_310, before=10_000)
    assert metrics["tokens_seen"] == 18_310 and metrics["tokens_this_session"] == 8_310
    assert metrics["tokens_per_second"] == pytest.approx(831.0)


def test_end_screen_agrees_with_itself_and_prints_commands_that_work_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    start = tmp_path / "my work"
    (start / "runs" / "x").mkdir(parents=True)
    monkeypatch.chdir(start)
    cfg = validate_config(BASE)
    trainer = fake_trainer()
    print_end(cfg, trainer, metrics_of(trainer), Path("runs/x"))
    out = capsys.readouterr().out
    assert "eval loss: final 1.7000, best 1.5000 at step 20" in out
    assert "runs/ (TensorBoard)" not in out and "checkpoint-*/" not in out and "best checkpoint:" not in out
    assert "chat will ramble" in out  # end-token accuracy 0%
    assert "12 reply ends" in out
    commands = [line.strip() for line in out.splitlines()[out.splitlines().index("next (from any directory):") + 1 :]]
    words = shlex.split(commands[0])
    assert words[:3] == ["cd", str(start), "&&"] and words[-2:] == ["merge", "runs/x"]
    assert shlex.split(commands[1])[-2:] == ["chat", "runs/x"]


def test_resume_command_is_quoted_and_runs_from_the_start_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = tmp_path / "a dir"
    start.mkdir()
    monkeypatch.chdir(start)
    words = shlex.split(resume_command(Path("runs/my run")))
    assert words[:3] == ["cd", str(start), "&&"]
    assert words[-4:] == ["train", "runs/my run/sftkit_config.yaml", "--resume", "latest"]
    assert shlex.split(shell_command("chat", "x"))[3:] == [*shlex.split(shell_command())[3:], "chat", "x"]


def test_settings_beyond_the_machine_or_the_run_are_noted_once_each() -> None:
    cfg = validate_config(
        {
            **BASE,
            "preprocessing_num_workers": 16,
            "val_size": 0.1,
            "eval_strategy": "steps",
            "eval_steps": 500,
            "save_steps": 500,
        }
    )
    notes = start_notes(cfg, planned=120, cpus=2)
    assert len(notes) == 3
    assert notes[0].startswith("preprocessing_num_workers 16 is more than this machine's 2 CPUs")
    assert notes[1].startswith("eval_steps 500 is more than this run's 120 updates: it never evaluates")
    assert notes[2].startswith("save_steps 500 is more than this run's 120 updates: no checkpoint is saved")
    assert start_notes(validate_config({**BASE, "save_steps": 50}), planned=120, cpus=2) == []


def test_a_resumed_run_says_where_it_resumes(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = validate_config({**BASE, "max_steps": 120})
    stats = SimpleNamespace(summary_lines=lambda: [])
    params = SimpleNamespace(line=lambda: "1 of 2")
    print_start(
        cfg,
        fake_trainer(),
        params,
        stats,
        SimpleNamespace(note="fp32 on cpu"),
        Path("runs/x/checkpoint-21"),
        {"global_step": 21},
    )
    assert "  resuming from checkpoint-21 (step 21 of 120)" in capsys.readouterr().out.splitlines()


def test_plural() -> None:
    assert (plural(1, "dataset"), plural(3, "dataset"), plural(1200, "row")) == ("1 dataset", "3 datasets", "1200 rows")


# ---------------------------------------------------------------------------- the model card


def test_model_card_says_what_the_run_is_and_how_to_use_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    dump_resolved(validate_config({**BASE, "learning_rate": 1e-3, "lora_rank": 8}), run / "sftkit_config.yaml")
    metrics = {
        "first_train_loss": 3.0,
        "train_loss": 1.0,
        "eval_loss": 1.7,
        "best_eval_loss": 1.5,
        "best_step": 20,
        "eval_perplexity": 5.47,
        "end_token_accuracy": 0.95,
        "global_step": 30,
        "epochs": 3.0,
        "tokens_seen": 3000,
        "train_rows": {"demo_alpaca": 90, "demo_sharegpt": 40},
        "eval_rows": {"demo_alpaca": 10},
    }
    (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    card = model_card(run)
    for fact in (
        "base_model: models/tiny-ernie",
        "| demo_alpaca | 90 | 10 |",
        "| demo_sharegpt | 40 | - |",
        "Chat template `chatml`",
        "LoRA r=8, alpha=16",
        "| learning rate | 0.001 (linear",
        "| train loss, first -> last logged | 3.0000 -> 1.0000 |",
        "| eval loss, best | 1.5000 at step 20 |",
        "| end-token accuracy | 95.0% |",
        "AutoPeftModelForCausalLM.from_pretrained",
        "apply_chat_template",
    ):
        assert fact in card, fact
    assert "More Information Needed" not in card and "chat" in card.split("With sftkit")[1]
    merged = model_card(run, merged_to=run / "merged")
    assert "AutoModelForCausalLM.from_pretrained" in merged and "AutoPeft" not in merged
    assert "merged into the base weights" in merged and "# merged" in merged


# ---------------------------------------------------------------------------- progress


def test_progress_to_a_file_is_one_plain_line_per_logging_step() -> None:
    out = io.StringIO()  # not a terminal
    report = ProgressReport(out)
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, max_steps=20, num_input_tokens_seen=0)
    report.on_train_begin(None, state, None)
    state.global_step, state.num_input_tokens_seen = 5, 5000
    report.on_log(None, state, None, logs={"loss": 1.23456, "learning_rate": 1e-3, "grad_norm": 0.5})
    report.on_log(None, state, None, logs={"eval_loss": 1.5})
    report.on_log(None, state, None, logs={"train_runtime": 3.0, "train_loss": 1.0})
    report.on_train_end(None, state, None)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert lines[0].startswith("step 5/20  loss 1.2346  lr 1.00e-03  ") and " tok/s  eta " in lines[0]
    assert lines[1] == "eval at step 5: loss 1.5000"


def test_progress_on_a_terminal_is_one_bar_with_the_numbers_beside_it() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    report = ProgressReport(out)
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, max_steps=20, num_input_tokens_seen=0)
    report.on_train_begin(None, state, None)
    state.global_step, state.num_input_tokens_seen = 5, 5000
    report.on_step_end(None, state, None)
    report.on_log(None, state, None, logs={"loss": 1.23456, "learning_rate": 1e-3})
    report.on_log(None, state, None, logs={"eval_loss": 1.5})
    report.on_train_end(None, state, None)
    text = out.getvalue()
    assert "5/20" in text and "loss 1.2346" in text and "tok/s" in text and "eval at step 5: loss 1.5000" in text
    assert "{'loss'" not in text


def test_progress_is_also_one_json_line_per_log_in_the_run_directory(tmp_path: Path) -> None:
    report = ProgressReport(io.StringIO())
    args = SimpleNamespace(output_dir=str(tmp_path / "run"))
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, max_steps=20, num_input_tokens_seen=0)
    report.on_train_begin(args, state, None)
    state.global_step, state.num_input_tokens_seen = 5, 5000
    report.on_log(args, state, None, logs={"loss": 1.5, "learning_rate": 1e-3})
    report.on_log(args, state, None, logs={"eval_loss": 1.25})
    report.on_log(args, state, None, logs={"train_runtime": 3.0, "train_loss": 1.0})  # the summary: not a point
    lines = [json.loads(line) for line in (tmp_path / "run" / "progress.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("loss"), r.get("eval_loss")) for r in lines] == [(5, 1.5, None), (5, None, 1.25)]
    assert lines[0]["learning_rate"] == 1e-3 and lines[0]["max_steps"] == 20 and lines[0]["tokens_per_second"] > 0
    assert lines[0]["eta_seconds"] is not None
