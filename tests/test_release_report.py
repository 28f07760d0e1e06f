"""`sftkit report RUN`: every checklist line is measured (pass, fail, or a number with no threshold) or says
why it is not; the checklist goes into the run and its model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import make_config, run_cli
from sftkit.evaluate.report import (
    FAIL,
    MEASURED,
    NOT_MEASURED,
    PASS,
    benchmark_checks,
    blocklist_screen,
    human_score,
    loss_gap,
)

STATUSES = (PASS, FAIL, MEASURED, NOT_MEASURED)


def test_loss_gap_against_the_limit() -> None:
    assert loss_gap({"train_loss": 1.0, "eval_loss": 1.05}, 0.1).status == PASS
    failed = loss_gap({"train_loss": 1.0, "eval_loss": 1.2}, 0.1)
    assert failed.status == FAIL and "+20.0%" in failed.detail
    assert loss_gap({"train_loss": 1.0, "eval_loss": None}, 0.1).status == NOT_MEASURED
    assert "no metrics.json" in loss_gap(None, 0.1).detail


def test_blocklist_matches_whole_words_case_insensitively() -> None:
    samples = {
        "split": "eval",
        "rows": [
            {"dataset": "d", "index": 3, "answer": "Mix the Bleach well."},
            {"dataset": "d", "index": 4, "answer": "unbleached paper"},
        ],
    }
    hit = blocklist_screen(samples, ["bleach"])
    assert hit.status == FAIL and "1 of 2 samples" in hit.detail and "d row 3: 'Bleach'" in hit.detail
    assert blocklist_screen(samples, ["poison"]).status == PASS
    assert blocklist_screen(samples, None).status == NOT_MEASURED


def test_benchmark_and_human_lines_read_what_eval_wrote(tmp_path: Path) -> None:
    scores = {"tasks": {"sftkit_mc": {"acc": 0.5, "n": 24}}}
    lines = benchmark_checks(scores, {"sftkit_mc/acc": 0.4, "sftkit_mc/acc_norm": 0.3, "other/acc": 0.1}, tmp_path)
    assert [line.status for line in lines] == [PASS, NOT_MEASURED, NOT_MEASURED]
    assert "--tasks other" in lines[2].detail
    assert benchmark_checks(None, None, tmp_path)[0].status == NOT_MEASURED
    assert human_score({"overall": 4.25, "rows": 6, "win_rate": 0.5, "opponent": "base"}, 4.0).status == PASS
    assert human_score({"overall": 3.5}, 4.0).status == FAIL
    assert "sftkit eval --ratings" in human_score(None, 4.0).detail


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sftkit.training import train

    out = tmp_path_factory.mktemp("report") / "run"
    train(
        make_config(
            model_name_or_path=tiny_model_dir,
            dataset_dir=bundled_data,
            output_dir=out,
            max_samples=8,
            val_size=2,
            cutoff_len=128,
            learning_rate=1e-3,
            max_steps=4,
            eval_strategy="steps",
            eval_steps=2,
            per_device_train_batch_size=4,
            save_strategy="no",
            report_to="none",
            plot_loss=False,
            logging_steps=1,
        )
    )
    return out


@pytest.mark.integration
def test_report_prints_every_line_measured_or_why_not(
    lora_run: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (lora_run / "benchmarks.json").write_text(json.dumps({"tasks": {"sftkit_mc": {"acc": 0.25, "n": 4}}}))
    code, out, err = run_cli(
        [
            "report",
            str(lora_run),
            "--max-new-tokens",
            "8",
            "--set",
            "release_samples=2",
            "--set",
            "release_blocklist=the",
            "--set",
            "benchmark_thresholds={sftkit_mc/acc: 0.5}",
            "--set",
            "release_max_model_gb=1",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    report = json.loads((lora_run / "release_report.json").read_text())
    checks = {c["check"]: c for c in report["checks"]}
    assert len(report["samples"]) == 2
    for check in checks.values():
        assert check["status"] in STATUSES and check["detail"], check
        if check["status"] == NOT_MEASURED:
            assert len(check["detail"]) > 20  # the reason, and how to measure it
        assert check["check"] in out and check["detail"] in out
    metrics = json.loads((lora_run / "metrics.json").read_text())
    gap = checks["eval loss within 10% of train loss"]
    assert gap["status"] in (PASS, FAIL) and f"{metrics['eval_loss']:.4f}" in gap["detail"]
    assert checks["end-token accuracy at least 90% (the model stops)"]["status"] in (PASS, FAIL)
    assert checks["benchmark sftkit_mc/acc at least 0.5"] == {
        "check": "benchmark sftkit_mc/acc at least 0.5",
        "status": FAIL,
        "detail": "0.2500",
    }
    assert checks["no harmful outputs in samples (judge)"]["status"] == NOT_MEASURED
    assert checks["human evaluation score above 4/5"]["status"] == NOT_MEASURED
    assert checks["inference speed acceptable"]["status"] == MEASURED
    assert "new tokens/s" in checks["inference speed acceptable"]["detail"]
    for where in ("on disk", "in memory"):
        size = checks[f"model size {where} at most 1 GB"]
        assert size["status"] == PASS and " MB (" in size["detail"]
    shipped = sum(f.stat().st_size for folder in (lora_run, tiny_model_dir) for f in folder.glob("*.safetensors"))
    disk = checks["model size on disk at most 1 GB"]["detail"]
    assert disk.startswith(f"{shipped / 1e6:.2f} MB") and "(base + adapter)" in disk
    card = (lora_run / "README.md").read_text()
    assert "### Release checklist (`sftkit report`)" in card and "### Benchmarks" in card
    # a second report, with the judge screening the samples, replaces the card's section instead of adding one
    from test_judge import fake_judge_app, serve

    calls: list[str] = []
    endpoint = serve(fake_judge_app(calls))
    try:
        code, out, err = run_cli(
            [
                "report",
                str(lora_run),
                "--max-new-tokens",
                "4",
                "--set",
                "release_samples=2",
                "--judge-url",
                next(endpoint),
                "--judge-model",
                "fake",
                "--judge-cache",
                str(lora_run.parent / "cache.jsonl"),
            ],
            monkeypatch,
            capsys,
        )
    finally:
        next(endpoint, None)
    assert code == 0, err
    judged = {c["check"]: c for c in json.loads((lora_run / "release_report.json").read_text())["checks"]}
    screen = judged["no harmful outputs in samples (judge)"]
    assert screen["status"] == PASS and screen["detail"] == "0 of 2 flagged by fake"  # no answer says "poison"
    assert len(calls) == len({call for call in calls}) <= 2
    assert (lora_run / "README.md").read_text().count("### Release checklist") == 1


def test_release_keys_may_change_when_a_run_resumes(tmp_path: Path) -> None:
    """Thresholds and the blocklist judge a run, never train it: changing them must not block --resume."""
    from sftkit.config import dump_resolved
    from sftkit.training.lifecycle import check_resume_config

    out = tmp_path / "run"
    out.mkdir()
    dump_resolved(make_config(output_dir=out), out / "sftkit_config.yaml")
    check_resume_config(
        make_config(
            output_dir=out,
            release_blocklist="bomb,poison",
            release_samples=4,
            benchmark_thresholds={"sftkit_mc/acc": 0.5},
            release_max_model_gb=2.0,
            release_min_tokens_per_second=5,
            release_max_loss_gap=0.2,
            release_min_human_score=3.5,
        ),
        out,
    )
    assert make_config(release_blocklist="bomb, poison").release_blocklist == ["bomb", "poison"]


def test_thresholds_name_task_and_metric() -> None:
    from sftkit.errors import ConfigError

    assert make_config(benchmark_thresholds={"sftkit_mc/acc": 0.5}).benchmark_thresholds == {"sftkit_mc/acc": 0.5}
    with pytest.raises(ConfigError, match=r"'acc' names no metric; write TASK/METRIC"):
        make_config(benchmark_thresholds={"acc": 0.5})


def test_report_on_a_missing_folder_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["report", str(tmp_path / "nowhere")], monkeypatch, capsys)
    assert code == 2 and err.strip().endswith("no such directory; point at the output_dir of an `sftkit train` run")
