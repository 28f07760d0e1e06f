"""`sftkit eval --tasks`: lm-evaluation-harness on the loaded model, prompted with the trained template.

A tiny model memorises eight demo rows; a multiple-choice task of our own over those rows (given with
--include-path, in the chat template) must then score the fine-tune far above its base, and sftkit's shipped
offline tasks must score both. Hub tasks while offline are one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import make_config
from sftkit.data.prompts import load_prompts
from sftkit.errors import SftkitError
from sftkit.evaluate.benchmarks import benchmark, task_metrics, task_plan
from sftkit.templates import get_template


def test_a_hub_task_while_offline_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        SftkitError,
        match=r"--tasks mmlu: not a local task, .* HF_HUB_OFFLINE=1 .*sftkit_gen, "
        r"sftkit_mc",
    ):
        task_plan(["sftkit_mc", "mmlu"], None, "auto")


def test_shipped_tasks_are_indexed_and_chat_is_decided_per_task(tmp_path: Path) -> None:
    manager, chat = task_plan(["sftkit_mc", "sftkit_gen"], None, "auto")
    assert chat == {"sftkit_gen"}  # a generation task is a chat task; the MMLU-style one scores plain text
    assert task_plan(["sftkit_mc"], None, "always")[1] == {"sftkit_mc"}
    with pytest.raises(SftkitError, match="--include-path .*: no such folder"):
        task_plan(["sftkit_mc"], tmp_path / "nowhere", "auto")


def test_harness_results_are_flattened() -> None:
    results = {
        "results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": "N/A", "exact_match,first-line": 1.0}},
        "n-samples": {"t": {"original": 9, "effective": 4}},
    }
    assert task_metrics(results) == {"t": {"acc": 0.5, "exact_match[first-line]": 1.0, "n": 4}}


@pytest.fixture(scope="module")
def memorised(
    tiny_model_dir: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, object]:
    """Full fine-tuning on eight demo rows until it knows them by heart."""
    from sftkit.training import train

    out = tmp_path_factory.mktemp("benchmarks") / "run"
    cfg = make_config(
        model_name_or_path=tiny_model_dir,
        dataset_dir=bundled_data,
        output_dir=out,
        max_samples=8,
        cutoff_len=128,
        finetuning_type="full",
        packing=True,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        max_steps=60,
        per_device_train_batch_size=4,
        save_strategy="no",
        logging_steps=20,
        report_to="none",
        plot_loss=False,
    )
    train(cfg)
    return out, cfg


def rows_task(folder: Path, cfg: object) -> Path:
    """A multiple-choice lm-eval task over the trained single-turn rows: pick the trained reply among all."""
    prompts = [p for p in load_prompts(cfg, "train", 8, get_template("chatml")) if len(p.messages) == 1]
    choices = [p.reference for p in prompts]
    folder.mkdir()
    with (folder / "trained_rows.jsonl").open("w", encoding="utf-8") as handle:
        for i, p in enumerate(prompts):
            handle.write(json.dumps({"question": p.messages[0]["content"], "choices": choices, "answer": i}) + "\n")
    (folder / "trained_rows.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "trained_rows",
                "custom_dataset": "SFTKIT_FUNCTION",
                "dataset_kwargs": {"data_file": "trained_rows.jsonl"},
                "test_split": "test",
                "output_type": "multiple_choice",
                "doc_to_text": "{{question}}",
                "doc_to_choice": "{{choices}}",
                "doc_to_target": "answer",
                "target_delimiter": "",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
                "metadata": {"version": 1.0, "chat": True},
            }
        ).replace("SFTKIT_FUNCTION", "!function sftkit.evaluate.tasks.local_data.jsonl_test_set"),
        encoding="utf-8",
    )
    return folder


@pytest.mark.integration
def test_local_tasks_score_the_fine_tune_and_its_base(
    memorised: tuple[Path, object], tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, cfg = memorised
    tasks = rows_task(tmp_path / "tasks", cfg)
    scores = benchmark(
        str(run),
        cfg,
        ["trained_rows", "sftkit_mc", "sftkit_gen"],
        compare=str(tiny_model_dir),
        limit=4,
        include_path=tasks,
    )
    tuned, base = scores["tasks"], scores["compare"]["tasks"]
    assert tuned["trained_rows"]["n"] == 4 and base["trained_rows"]["n"] == 4
    assert tuned["trained_rows"]["acc"] == 1.0  # it knows its replies, in its template
    assert base["trained_rows"]["acc"] < tuned["trained_rows"]["acc"]
    assert scores["deltas"]["trained_rows"]["acc"] == pytest.approx(1.0 - base["trained_rows"]["acc"])
    for part in (tuned, base):
        assert 0.0 <= part["sftkit_mc"]["acc"] <= 1.0 and part["sftkit_mc"]["n"] == 4
        assert 0.0 <= part["sftkit_gen"]["exact_match[first-line]"] <= 1.0
    assert scores["chat_template"] == {"trained_rows": True, "sftkit_gen": True, "sftkit_mc": False}
    # written beside the run's metrics and into its model card
    written = json.loads((run / "benchmarks.json").read_text())
    assert written["tasks"] == tuned and written["compare"]["tasks"] == base
    card = (run / "README.md").read_text()
    assert "### Benchmarks (lm-evaluation-harness)" in card and "| trained_rows | acc | 1.0000 | 4 |" in card
    assert "## Use it" in card  # the rest of the card is kept
    printed = capsys.readouterr().out
    assert "delta" in printed and "trained_rows" in printed


@pytest.mark.integration
def test_readme_benchmark_command_on_the_demo_lora_run(
    tiny_model_dir: Path,
    bundled_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The README's `sftkit eval RUN --tasks sftkit_mc,sftkit_gen --compare models/base` on a LoRA run trained by
    configs/tiny_smoke.yaml as it is (its chatml tokens added to the tokenizer, tied embeddings), only shorter:
    lm-eval's tie_weights() met PEFT's wrapped embeddings here and the command died with a traceback."""
    from helpers import run_cli
    from sftkit.config import validate_config
    from sftkit.training import train

    keys = yaml.safe_load((Path(__file__).parents[1] / "configs" / "tiny_smoke.yaml").read_text(encoding="utf-8"))
    run = tmp_path / "tiny-smoke"
    train(
        validate_config(
            keys
            | {
                "model_name_or_path": str(tiny_model_dir),
                "dataset_dir": str(bundled_data),
                "output_dir": str(run),
                "max_steps": 2,
                "eval_strategy": "no",
                "early_stopping_steps": None,
                "load_best_model_at_end": False,
                "save_strategy": "no",
                "report_to": "none",
                "plot_loss": False,
            }
        )
    )
    assert (run / "adapter_config.json").is_file() and json.loads((run / "adapter_config.json").read_text())[
        "peft_type"
    ] == "LORA"
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(
        ["eval", str(run), "--tasks", "sftkit_mc,sftkit_gen", "--compare", str(tiny_model_dir), "--limit", "4"],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    scores = json.loads((run / "benchmarks.json").read_text(encoding="utf-8"))
    assert set(scores["tasks"]) == {"sftkit_mc", "sftkit_gen"} and scores["tasks"]["sftkit_mc"]["n"] == 4
    assert set(scores["deltas"]) == {"sftkit_mc", "sftkit_gen"} and "Traceback" not in err
