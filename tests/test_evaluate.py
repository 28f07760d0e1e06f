"""Evaluation: loss/perplexity equal to the trainer's, scored predictions, samples in TensorBoard, overfitting.

One tiny LoRA run (module-scoped) overfits a few rows with evaluation on; the tests compare it with its
base model on the same rows.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from sftkit.config import SftConfig, validate_config
from sftkit.data.prompts import Prompt, to_prompt
from sftkit.errors import SftkitError
from sftkit.evaluate import evaluate, metrics_path, predict, score
from sftkit.evaluate.perplexity import default_eval_path
from sftkit.model import encode_prompts
from sftkit.templates import get_template
from sftkit.training import train
from sftkit.training.callbacks import SAMPLES_RUN, SAMPLES_TAG
from sftkit.training.overfitting import OVERFIT_GAP, overfitting_signs

# ---------------------------------------------------------------------------- overfitting_signs


def history(train: list[tuple[int, float]], evals: list[tuple[int, float]]) -> list[dict]:
    """A trainer log_history: train and eval entries by step, then the end-of-training summary."""
    entries = [{"step": s, "loss": v, "learning_rate": 1e-4} for s, v in train]
    entries += [{"step": s, "eval_loss": v, "eval_runtime": 0.1} for s, v in evals]
    entries.sort(key=lambda e: (e["step"], "eval_loss" in e))
    return entries + [{"step": max(s for s, _ in train), "train_loss": 1.0, "train_runtime": 3.0}]


def test_healthy_run_shows_no_sign() -> None:
    log = history([(10, 2.0), (20, 1.6), (30, 1.4)], [(10, 2.05), (20, 1.7), (30, 1.5)])
    assert overfitting_signs(log) == []


def test_eval_loss_rising_while_train_loss_falls_is_flagged() -> None:
    log = history([(10, 2.0), (20, 1.5), (30, 1.0), (40, 0.6)], [(10, 2.0), (20, 1.55), (30, 1.7), (40, 1.9)])
    signs = overfitting_signs(log)
    assert len(signs) == 1
    assert "rose from 1.5500 (step 20) to 1.9000 (step 40)" in signs[0]
    assert "train loss fell from 1.5000 to 0.6000" in signs[0]


def test_eval_loss_far_above_train_loss_at_best_step_is_flagged() -> None:
    gap = 1 + 2 * OVERFIT_GAP
    log = history([(10, 1.0), (20, 0.5)], [(10, 1.0 * gap + 0.1), (20, 0.5 * gap)])
    signs = overfitting_signs(log)
    assert len(signs) == 1
    assert "step (20)" in signs[0] and f"{100 * (gap - 1):.0f}% above train loss" in signs[0]


def test_small_gap_or_rise_within_noise_is_not_flagged() -> None:
    near = 1 + OVERFIT_GAP / 2
    log = history([(10, 1.0), (20, 0.8)], [(10, 1.0 * near), (20, 0.8 * near * 1.005)])
    assert overfitting_signs(log) == []


def test_eval_rising_together_with_train_loss_is_not_overfitting() -> None:
    log = history([(10, 1.0), (20, 1.2)], [(10, 1.0), (20, 1.1)])
    assert overfitting_signs(log) == []


def test_both_signs_together() -> None:
    log = history([(10, 1.0), (20, 0.5), (30, 0.2)], [(10, 1.3), (20, 1.2), (30, 1.6)])
    assert len(overfitting_signs(log)) == 2


def test_no_evaluation_no_signs() -> None:
    assert overfitting_signs(history([(10, 2.0), (20, 0.1)], [])) == []
    assert overfitting_signs([]) == []


# ---------------------------------------------------------------------------- scores


def test_identical_replies_score_100_and_unrelated_ones_near_0() -> None:
    refs = ["27 minus 6 is 21.", 'The word "apple" has 5 letters.']
    rows, corpus = score(refs, refs)
    assert all(value == pytest.approx(100) for row in rows for value in row.values())
    assert corpus == pytest.approx({"bleu_4": 100, "rouge_1": 100, "rouge_2": 100, "rouge_l": 100})
    rows, corpus = score(["banana yellow tree", "ocean"], refs)
    assert corpus["bleu_4"] < 5 and corpus["rouge_1"] == 0
    assert set(rows[0]) == {"bleu_4", "rouge_1", "rouge_2", "rouge_l"}


def test_partial_overlap_is_between() -> None:
    _, corpus = score(["27 minus 6 is 20."], ["27 minus 6 is 21."])
    assert 0 < corpus["bleu_4"] < 100 and 0 < corpus["rouge_l"] < 100


def test_chinese_text_is_scored_by_character() -> None:
    # rouge-score's own tokenizer keeps only [a-z0-9]: Chinese would score 0 even when identical
    rows, corpus = score(["你好，世界", "今天天气很好"], ["你好，世界", "今天天气不错"])
    assert rows[0]["rouge_1"] == pytest.approx(100)
    assert 0 < rows[1]["rouge_1"] < 100 and corpus["bleu_4"] > 0


def test_prompt_is_the_conversation_before_the_last_reply() -> None:
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "function_call", "content": '{"name": "f"}'},
    ]
    prompt = to_prompt({"messages": messages, "tools": None, "dataset": "d", "index": 3}, get_template("chatml"))
    assert prompt.messages == messages[:4]
    assert prompt.reference == '<tool_call>\n{"name": "f"}\n</tool_call>'
    assert (prompt.dataset, prompt.index) == ("d", 3)


@pytest.mark.parametrize(("template", "tail"), [("chatml", ""), ("ernie_nothink", " "), ("llama3", "")])
def test_header_text_left_to_the_model_is_known(tiny_tokenizer: Any, template: str, tail: str) -> None:
    """ERNIE's "Assistant: " space merges with the reply's first token: generated, then removed from replies."""
    from sftkit.templates import prepare_tokenizer

    prepare_tokenizer(tiny_tokenizer, get_template(template))
    prompt = Prompt("d", 0, [{"role": "user", "content": "What colour is a banana?"}], None, "Yellow.")
    ids, tails = encode_prompts(tiny_tokenizer, get_template(template), [prompt])
    assert tails == [tail]
    assert tiny_tokenizer.decode(ids[0]) + tail == get_template(template).generation_prompt(prompt.messages)


# ---------------------------------------------------------------------------- real runs on the tiny model


def run_config(tiny_model_dir: Path, data_dir: Path, out: Path, **overrides: Any) -> SftConfig:
    """Six training rows and two eval rows of the bundled alpaca demo, evaluated in one batch."""
    return validate_config(
        {
            "model_name_or_path": str(tiny_model_dir),
            "dataset": "demo_alpaca",
            "dataset_dir": str(data_dir),
            "output_dir": str(out),
            "template": "chatml",
            "max_samples": 8,
            "val_size": 2,
            "cutoff_len": 128,
            "per_device_train_batch_size": 4,
            "per_device_eval_batch_size": 8,
            "eval_strategy": "steps",
            "save_strategy": "no",
            "logging_steps": 5,
            "plot_loss": False,
            **overrides,
        }
    )


@dataclass
class Run:
    """A finished training run: its directory, config and what it printed."""

    path: Path
    cfg: SftConfig
    printed: str

    def trainer_eval_loss(self) -> float:
        """The eval loss the trainer logged last (at the final step: the saved weights)."""
        history = json.loads((self.path / "trainer_state.json").read_text())["log_history"]
        return [entry["eval_loss"] for entry in history if "eval_loss" in entry][-1]


@pytest.fixture(scope="module")
def overfit(tiny_model_dir: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Full fine-tuning memorises the six training rows (packed); eval loss rises meanwhile.

    Evaluates at steps 30 and 60 with TensorBoard on, so samples are generated twice.
    """
    out = tmp_path_factory.mktemp("evaluate") / "overfit"
    cfg = run_config(
        tiny_model_dir,
        bundled_data,
        out,
        finetuning_type="full",
        packing=True,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        max_steps=60,
        eval_steps=30,
        report_to="tensorboard",
        eval_generation_samples=2,
        generation_max_new_tokens=8,
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train(cfg)
    return Run(out, cfg, printed.getvalue())


@pytest.fixture(scope="module")
def lora(tiny_model_dir: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A few LoRA updates, unpacked rows, no TensorBoard; the two eval rows (of different lengths) in two
    batches, so the trainer's eval loss must weigh batches by their trained tokens to equal `sftkit eval`."""
    out = tmp_path_factory.mktemp("evaluate") / "lora"
    cfg = run_config(
        tiny_model_dir,
        bundled_data,
        out,
        learning_rate=1e-3,
        max_steps=4,
        eval_steps=2,
        per_device_eval_batch_size=1,
        seed=1,
        report_to="none",
    )  # seed 1: 7 and 21 trained tokens
    train(cfg)
    return Run(out, cfg, "")


@pytest.mark.parametrize("name", ["overfit", "lora"])
def test_eval_loss_matches_the_trainers(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    run: Run = request.getfixturevalue(name)
    out = tmp_path / "eval.json"
    results = evaluate(str(run.path), run.cfg, split="eval", out=out)
    # inference runs in bf16 on a GPU, the tiny runs train in fp32
    tolerance = 1e-2 if torch.cuda.is_available() else 1e-5
    assert results["loss"] == pytest.approx(run.trainer_eval_loss(), rel=tolerance)
    assert results["loss"] == pytest.approx(
        json.loads((run.path / "metrics.json").read_text())["eval_loss"], rel=tolerance
    )
    assert results["perplexity"] == pytest.approx(math.exp(results["loss"]), rel=1e-12)
    assert results["rows"] == 2 and results["tokens"] > 0
    assert results["datasets"]["demo_alpaca"]["loss"] == pytest.approx(results["loss"])
    assert json.loads(out.read_text()) == results


def test_eval_json_defaults_to_the_working_directory_never_the_model_folder(
    lora: Run, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in lora.path.iterdir())
    results = evaluate(str(lora.path), lora.cfg, split="train")
    written = tmp_path / default_eval_path(str(lora.path), "train")
    assert written.parent == tmp_path and json.loads(written.read_text()) == results
    assert sorted(p.name for p in lora.path.iterdir()) == before  # nothing written into the run
    assert results["rows"] == 6
    table = capsys.readouterr().out
    assert "perplexity" in table and f"{results['loss']:.4f}" in table
    with pytest.raises(SftkitError, match="already exists; pass --overwrite"):
        evaluate(str(lora.path), lora.cfg, split="train")
    assert evaluate(str(lora.path), lora.cfg, split="train", overwrite=True) == results


def test_overfit_model_beats_its_base_on_the_rows_it_saw(overfit: Run, tiny_model_dir: Path, tmp_path: Path) -> None:
    tuned = evaluate(str(overfit.path), overfit.cfg, split="train", out=tmp_path / "tuned.json")
    base = evaluate(str(tiny_model_dir), overfit.cfg, split="train", out=tmp_path / "base.json")
    assert (tuned["rows"], tuned["tokens"]) == (base["rows"], base["tokens"])  # the same rows and masks
    assert tuned["loss"] < base["loss"] / 4

    out = tmp_path / "preds.jsonl"
    metrics = predict(
        str(overfit.path), overfit.cfg, out=out, n=4, split="train", compare=str(tiny_model_dir), max_new_tokens=24
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and metrics["n"] == 4
    for row in rows:
        assert set(row) >= {
            "dataset",
            "index",
            "prompt",
            "reference",
            "generation",
            "scores",
            "generation_compare",
            "scores_compare",
        }
        assert row["prompt"].endswith("<|im_start|>assistant\n") and row["reference"]
    assert json.loads(metrics_path(out).read_text()) == metrics
    for name in ("bleu_4", "rouge_1", "rouge_2", "rouge_l"):
        assert metrics["generation"][name] > metrics["generation_compare"][name] + 30, name


def test_batched_generation_equals_one_at_a_time(overfit: Run, tmp_path: Path) -> None:
    """Left padding must not change what a prompt gets: greedy answers alone and in a batch agree."""
    rows = {}
    for size in (1, 4):
        out = tmp_path / f"batch{size}.jsonl"
        predict(str(overfit.path), overfit.cfg, out=out, n=4, split="train", max_new_tokens=12, batch_size=size)
        rows[size] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["generation"] for row in rows[1]] == [row["generation"] for row in rows[4]]
    assert len({len(row["prompt"]) for row in rows[4]}) > 1  # prompts of different lengths were padded


def test_sampling_is_seeded(lora: Run, tmp_path: Path) -> None:
    def sample(seed: int) -> list[str]:
        out = tmp_path / f"seed{seed}.jsonl"
        predict(
            str(lora.path),
            lora.cfg,
            out=out,
            n=2,
            split="train",
            max_new_tokens=8,
            temperature=1.5,
            seed=seed,
            overwrite=True,
        )
        return [json.loads(line)["generation"] for line in out.read_text().splitlines()]

    assert sample(0) == sample(0)
    assert sample(0) != sample(1)


def test_samples_are_logged_to_tensorboard_at_each_evaluation(overfit: Run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(overfit.path / "runs" / SAMPLES_RUN))
    events.Reload()
    tags = [tag for tag in events.Tags()["tensors"] if tag.startswith(SAMPLES_TAG)]
    assert len(tags) == 2
    for tag in tags:
        entries = events.Tensors(tag)
        assert [entry.step for entry in entries] == [30, 60]
        text = entries[-1].tensor_proto.string_val[0].decode()
        assert "**reference**" in text and "**answer at step 60**" in text


def test_no_samples_without_tensorboard(lora: Run) -> None:
    assert not (lora.path / "runs" / SAMPLES_RUN).exists()


def test_end_summary_flags_the_overfitting(overfit: Run) -> None:
    history = json.loads((overfit.path / "trainer_state.json").read_text())["log_history"]
    signs = overfitting_signs(history)
    assert signs and any("eval loss rose" in sign for sign in signs)
    assert signs[0] in overfit.printed


def test_a_whole_dataset_can_be_evaluated(overfit: Run, tiny_model_dir: Path, tmp_path: Path) -> None:
    results = evaluate(str(tiny_model_dir), overfit.cfg, dataset="demo_alpaca", out=tmp_path / "all.json")
    assert results["split"] == "demo_alpaca" and results["rows"] == 8


def test_bad_requests_are_user_errors(lora: Run, tmp_path: Path) -> None:
    with pytest.raises(SftkitError, match="--split 'test'"):
        evaluate(str(lora.path), lora.cfg, split="test")
    no_eval = lora.cfg.model_copy(update={"val_size": 0.0})
    with pytest.raises(SftkitError, match="no eval set"):
        evaluate(str(lora.path), no_eval, split="eval")
    with pytest.raises(SftkitError) as info:
        predict(str(lora.path), lora.cfg, out=tmp_path / "p.jsonl", n=0, temperature=-1)
    assert [p.split(":")[0] for p in info.value.problems] == ["-n", "--temperature"]
    assert not (tmp_path / "p.jsonl").exists()


def test_cli_eval_and_predict(lora: Run, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sftkit.cli import app

    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(lora.cfg.model_dump()), encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(app, ["eval", str(lora.path), "--config", str(config), "--out", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e.json").read_text())["rows"] == 2
    result = runner.invoke(
        app,
        [
            "predict",
            str(lora.path),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "p.jsonl"),
            "-n",
            "2",
            "--max-new-tokens",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 2
    # one output rule: an existing --out is refused without --overwrite, for predict as for merge
    refused = runner.invoke(app, ["predict", str(lora.path), "--out", str(tmp_path / "p.jsonl"), "-n", "1"])
    assert refused.exit_code != 0 and "already exists; pass --overwrite" in str(refused.exception)
    # a run folder's own sftkit_config.yaml is the default --config
    result = runner.invoke(app, ["eval", str(lora.path), "--out", str(tmp_path / "own.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "own.json").read_text())["rows"] == 2
    result = runner.invoke(
        app,
        [
            "predict",
            str(lora.path),
            "--out",
            str(tmp_path / "p.jsonl"),
            "-n",
            "1",
            "--max-new-tokens",
            "4",
            "--overwrite",
        ],
    )
    assert result.exit_code == 0, result.output


@pytest.mark.integration
def test_pairwise_sheet_and_judge_then_ratings_read_back(
    lora: Run, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """predict --compare --sheet --judge-url: the same prompts answered by the run and its base, a blind sheet,
    the judge's verdicts (a fake OpenAI-compatible endpoint on loopback); eval --ratings reads a filled copy."""
    import csv

    from test_judge import fake_judge_app, serve

    from helpers import run_cli

    calls: list[str] = []
    endpoint = serve(fake_judge_app(calls))
    url = next(endpoint)
    try:
        sheet, out = tmp_path / "sheet.csv", tmp_path / "p.jsonl"
        code, printed, err = run_cli(
            [
                "predict",
                str(lora.path),
                "--out",
                str(out),
                "-n",
                "2",
                "--max-new-tokens",
                "4",
                "--compare",
                str(tiny_model_dir),
                "--sheet",
                str(sheet),
                "--judge-url",
                url,
                "--judge-model",
                "fake",
                "--judge-cache",
                str(tmp_path / "cache.jsonl"),
            ],
            monkeypatch,
            capsys,
        )
    finally:
        next(endpoint, None)
    assert code == 0, err
    # two grades and both orders of the pair per prompt, each asked once (identical answers share a verdict)
    assert 0 < len(calls) <= 2 * 2 + 2 * 2
    assert len(calls) == len((tmp_path / "cache.jsonl").read_text().splitlines())
    assert not any("<|im_start|>" in call for call in calls)  # the judge reads the conversation, not the template
    verdicts = json.loads((tmp_path / "p.judge.json").read_text())
    assert set(verdicts["grades"]) == {str(lora.path), str(tiny_model_dir)}
    assert sum(verdicts["preference"].values()) == 2
    key = json.loads((tmp_path / "sheet.key.json").read_text())
    rows = list(csv.DictReader(sheet.open(encoding="utf-8")))
    replies = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(replies) == 2
    for row, reply in zip(rows, replies):  # the conversation as a rater reads it, without control tokens
        assert "<|im_" not in row["prompt"] and row["prompt"].splitlines()[-1] in reply["prompt"]
    for row, reply in zip(rows, replies):  # the key maps each blind answer back to the model that wrote it
        side = "a" if key["rows"][row["id"]]["a"] == str(lora.path) else "b"
        assert row[f"response_{side}"] == reply["generation"]
        for dim in ("helpfulness", "accuracy", "clarity", "safety"):
            row[f"{dim}_{side}"], row[f"{dim}_{'b' if side == 'a' else 'a'}"] = "5", "3"
        row["preferred"] = side
    with sheet.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    code, printed, err = run_cli(["eval", "--ratings", str(sheet)], monkeypatch, capsys)
    assert code == 0, err
    human = json.loads((lora.path / "human_eval.json").read_text())
    assert human["overall"] == 5.0 and human["win_rate"] == 1.0 and human["opponent"] == str(tiny_model_dir)
    assert "### Human evaluation" in (lora.path / "README.md").read_text()
    assert "agreement: no row was rated by more than one rater" in printed
    # the output rule: the summary (and the sheet) are replaced only with --overwrite
    code, printed, err = run_cli(["eval", "--ratings", str(sheet)], monkeypatch, capsys)
    assert code == 2 and "sheet.summary.json: already exists; pass --overwrite" in err
