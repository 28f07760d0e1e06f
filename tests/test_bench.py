"""scripts/bench.py runs end to end on the tiny model and writes every field (no timing is asserted); the race's
harness (scripts/bench/: the YAML mappings, the one trained-token counter, the phase arithmetic, the targets and
the report) on made-up records, fast and without any peer installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from bench import harness, probe, report, workloads  # noqa: E402

TRAIN_FIELDS = {
    "method",
    "model",
    "cutoff",
    "steps",
    "seconds",
    "tokens",
    "trained_tokens",
    "seconds_per_step",
    "tokens_per_s",
    "trained_tokens_per_s",
    "peak_rss_gb",
    "peak_cuda_gb",
    "linear_params",
    "attn_width",
    "attn_pairs",
    "model_tflops",
    "mfu",
    "setup_s",
    "step_phases_s",
}
PREPROCESS_FIELDS = {"rows", "tokens", "seconds", "rows_per_s", "tokens_per_s", "packing_efficiency"}


@pytest.mark.integration  # the bench runs every method in a subprocess
def test_bench_on_the_tiny_model_writes_every_field(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench.py"),
            "--device",
            "cpu",
            "--models",
            "tiny",
            "--cutoff",
            "256",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--preprocess-rows",
            "200",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"date", "machine", "versions", "command", "load_average_start", "load_average_end"} <= report["meta"].keys()
    assert {"torch", "transformers", "trl", "peft"} <= report["meta"]["versions"].keys()
    assert report["matmul_peak_tflops"] > 0
    assert [run["method"] for run in report["train"]] == ["sftkit", "trl_loss", "loop", "trl"]
    for run in report["train"]:
        assert "error" not in run, run
        assert TRAIN_FIELDS <= run.keys()
        assert run["steps"] == 2 and run["tokens"] > 0 and 0 < run["trained_tokens"] <= run["tokens"]
    pre = report["preprocess"]
    for name in ("raw_tokenizer", "workers_1", "workers_2"):
        assert "error" not in pre[name], pre[name]
        assert PREPROCESS_FIELDS <= pre[name].keys() and pre[name]["tokens"] > 0
    assert pre["workers_1"]["tokens"] == pre["workers_2"]["tokens"]  # same data either way
    assert 0 < pre["workers_1"]["packing_efficiency"] <= 1
    assert "| tiny | 256 | sftkit |" in proc.stdout
    sftkit = report["train"][0]
    assert {"data", "model", "trainer"} <= sftkit["setup_s"].keys()
    assert {"forward_backward", "optimizer", "rest"} <= sftkit["step_phases_s"].keys()
    assert sum(sftkit["step_phases_s"].values()) <= sftkit["seconds_per_step"] * 1.01


@pytest.mark.integration
def test_bench_runs_the_gpu_sets_options_on_a_cpu(tmp_path: Path) -> None:
    """The sftkit variants the GPU set measures, each through its own config keys, at tiny size on a CPU
    (sftkit_liger and trl_fa2 need a GPU: the first falls back with a note, the second reports why it cannot run)."""
    out = tmp_path / "results.json"
    methods = "sftkit_nogc,sftkit_sdpa,sftkit_tokens,sftkit_compile,sftkit_liger,trl_fa2"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench.py"),
            "--device",
            "cpu",
            "--models",
            "tiny",
            "--cutoff",
            "128",
            "--batch-size",
            "2",
            "--methods",
            methods,
            "--steps",
            "2",
            "--warmup",
            "1",
            "--skip-preprocess",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {run["method"]: run for run in json.loads(out.read_text())["train"]}
    for method in methods.split(",")[:-1]:
        assert "error" not in runs[method] and runs[method]["steps"] == 2, runs[method]
    assert runs["sftkit_tokens"]["batch_size"] == 2 and runs["sftkit_tokens"]["tokens"] > 0
    assert "flash-attn is not installed" in runs["trl_fa2"]["error"]


# ---------------------------------------------------------------------------- the race (scripts/bench/), fast


def _workload(tmp_path: Path, name: str = "smollm2_identity_alpaca") -> dict:
    data = workloads.write_data(tmp_path / "data")
    return workloads.workload_yaml(name, tmp_path / "model", data, tmp_path / "out")


def test_the_held_out_split_is_disjoint_and_keeps_the_llamafactory_names(tmp_path: Path) -> None:
    data = workloads.write_data(tmp_path / "data")
    info = json.loads((data / "dataset_info.json").read_text())
    assert {"identity", "alpaca_en_demo", "identity_heldout", "alpaca_en_demo_heldout"} == info.keys()
    for name, count in workloads.HELD_OUT.items():
        train, held = workloads.rows(data, name), workloads.rows(data, name, "_heldout")
        shared = json.loads((workloads.SHARED / f"{name}.json").read_text())
        assert len(held) == count and len(train) + len(held) == len(shared)
        assert not {json.dumps(r) for r in train} & {json.dumps(r) for r in held}
    assert not any("{{name}}" in row["output"] for row in workloads.rows(data, "identity"))
    assert any(workloads.IDENTITY["name"] in row["output"] for row in workloads.rows(data, "identity"))


def test_the_trl_mapping_translates_every_training_key_and_names_the_rest(tmp_path: Path) -> None:
    config = _workload(tmp_path) | {"packing": True}
    trl, dropped = workloads.to_trl(config, tmp_path / "trl-data")
    assert trl["max_length"] == 1024 and trl["lora_r"] == 16 and trl["lora_alpha"] == 64
    assert trl["use_peft"] is True and trl["lora_target_modules"] == "all-linear" and trl["packing"] is True
    assert trl["lora_dropout"] == 0.0 and trl["learning_rate"] == config["learning_rate"]
    assert trl["max_steps"] == config["max_steps"] and trl["seed"] == config["seed"]
    assert Path(trl["chat_template_path"]).read_text() == workloads.CHATML
    assert set(dropped) == {"stage", "do_train", "overwrite_cache", "overwrite_output_dir"}
    assert trl["use_cpu"] is True  # transformers refuses bf16 on a CPU without it
    assert not {"cutoff_len", "lora_rank", "template", "dataset"} & trl.keys()


def test_the_trl_rows_train_on_the_answer_only() -> None:
    rows = workloads.to_trl_rows([{"instruction": "Add", "input": "1 and 2", "output": "3"}])
    assert rows == [
        {"prompt": [{"role": "user", "content": "Add\n1 and 2"}], "completion": [{"role": "assistant", "content": "3"}]}
    ]


def test_the_axolotl_mapping(tmp_path: Path) -> None:
    config = _workload(tmp_path, "gemma_alpaca")
    axolotl, dropped = workloads.to_axolotl(config, tmp_path / "train.jsonl")
    assert axolotl["sequence_len"] == 1024 and axolotl["sample_packing"] is False
    assert axolotl["lora_r"] == 16 and axolotl["lora_alpha"] == 64 and axolotl["lora_target_linear"] is True
    assert axolotl["micro_batch_size"] == config["per_device_train_batch_size"]
    assert axolotl["chat_template"] == "gemma3" and axolotl["datasets"][0]["type"] == "chat_template"
    assert "stage" in dropped and "lora_rank" not in dropped


def test_the_one_counter_counts_labels_after_the_shift() -> None:
    import torch

    labels = torch.tensor([[-100, -100, 5, 6, -100], [7, -100, 8, 9, 10]])
    assert probe.trained_tokens(labels) == 2 + 3  # the first position is never predicted


def _record(start: float = 100.0) -> dict:
    steps = [
        {
            "begin": start + 10 + 3 * i,
            "end": start + 12 + 3 * i,
            "trained": 100 * (i + 1),
            "tokens": 200,
            "loss": 2.0 - 0.25 * i,
        }
        for i in range(4)
    ]
    return {
        "start": start + 1,
        "end": steps[-1]["end"] + 5,
        "loads": [{"begin": start + 2, "end": start + 4}],
        "steps": steps,
    }


def test_summarize_leaves_the_warm_up_step_out_of_the_rates() -> None:
    out = harness.summarize(_record(), started=100.0)
    assert out["steps"] == 4 and out["interpreter_s"] == 1.0 and out["load_s"] == 2.0
    assert out["setup_s"] == 9.0 and out["setup_other_s"] == 7.0
    assert out["train_s"] == 11.0 and out["after_train_s"] == 5.0
    assert out["trained_tokens"] == 200 + 300 + 400 and out["trained_tokens_per_s"] == 900 / 6
    assert out["tokens_per_s"] == 600 / 6 and out["seconds_per_step"] == 2.0
    assert out["loss_first"] == 2.0 and out["final_train_loss"] == 1.25


def test_rotation_moves_every_contestant_through_every_place() -> None:
    names = ["a", "b", "c"]
    orders = [harness.rotation(names, turn) for turn in range(3)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]


def test_failure_line_keeps_the_last_error() -> None:
    err = "loading\nTraceback\nValueError: first\nRuntimeError: bitsandbytes needs CUDA\n"
    assert harness.failure_line(err, 1, True) == "exit 1: RuntimeError: bitsandbytes needs CUDA"


def _report(eval_sftkit: float = 1.0) -> dict:
    run = {"workload": "smollm2_identity_alpaca", "round": 0, "wall_s": 60.0, "steps": 4}
    runs = [
        run | {"contestant": "sftkit", "trained_tokens_per_s": 300.0, "peak_rss_gb": 1.0},
        run | {"contestant": "llamafactory", "trained_tokens_per_s": 100.0, "peak_rss_gb": 2.0},
        run | {"contestant": "llamafactory", "round": 1, "trained_tokens_per_s": 150.0, "peak_rss_gb": 2.0},
        run | {"contestant": "trl", "trained_tokens_per_s": 250.0, "peak_rss_gb": 1.2},
        {
            "workload": "smollm2_identity_alpaca",
            "round": 0,
            "contestant": "axolotl",
            "error": "exit 1: ImportError: no CUDA",
        },
    ]
    scores = {
        "base": {"eval_loss": 2.0},
        "sftkit": {"eval_loss": eval_sftkit},
        "llamafactory": {"eval_loss": 1.0},
        "trl": {"eval_loss": 1.0},
    }
    config = {
        "model_name_or_path": "/m/SmolLM2",
        "dataset": "identity,alpaca_en_demo",
        "template": "chatml",
        "per_device_train_batch_size": 2,
        "max_steps": 4,
        "learning_rate": 2e-4,
        "seed": 42,
    }
    return {
        "meta": {
            "date": "d",
            "machine": "m",
            "rounds": 2,
            "load_average_start": [1.0],
            "load_average_end": [2.0],
            "wall_s": 10.0,
            "command": "c",
        },
        "workloads": ["smollm2_identity_alpaca"],
        "contestants": ["sftkit", "llamafactory", "trl", "axolotl"],
        "configs": {"smollm2_identity_alpaca": config},
        "runs": runs,
        "eval": {"smollm2_identity_alpaca": {"scores": scores, "questions": []}},
    }


def test_targets_take_each_contestants_best_round_and_the_eval_loss_margin() -> None:
    checks = {c["check"].split(" (")[0]: c for c in report.check_targets(_report())}
    speed = checks["smollm2_identity_alpaca: sftkit / llamafactory trained_tokens_per_s"]
    assert speed["ratio"] == 2.0 and speed["met"] is True  # against LLaMA-Factory's faster round
    assert checks["smollm2_identity_alpaca: sftkit / trl trained_tokens_per_s"]["met"] is False  # 1.2 < 1.5
    assert checks["smollm2_identity_alpaca: sftkit / llamafactory peak_rss_gb"]["ratio"] == 0.5
    worse = {c["check"].split(" (")[0]: c for c in report.check_targets(_report(eval_sftkit=1.03))}
    assert worse["smollm2_identity_alpaca: sftkit / llamafactory trained_tokens_per_s"]["met"] is False


def test_the_markdown_has_every_contestant_and_the_failure_reason(tmp_path: Path) -> None:
    rep = _report()
    rep["targets"] = report.check_targets(rep)
    text = report.markdown(rep)
    assert "| sftkit | 60.0 |" in text and "| llamafactory |" in text and "| trl |" in text
    assert "| axolotl |" in text and "ImportError: no CUDA" in text
    assert "| (base, no adapter) |" in text and "| NO |" in text
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nkept\n")
    report.write_section(doc, "first")
    report.write_section(doc, "second")
    written = doc.read_text()
    assert "kept" in written and "second" in written and "first" not in written
    assert written.count(report.BEGIN) == 1


@pytest.mark.integration  # a fresh interpreter importing transformers
def test_the_probe_runs_a_module_as_a_script_and_records_its_exit(tmp_path: Path) -> None:
    """`-m:module` (how `trl sft`'s script runs inside the probe): sys.argv as the script sees it, exit kept."""
    (tmp_path / "fake_tool.py").write_text("import sys\nprint('ARGS', sys.argv[1:])\nraise SystemExit(3)\n")
    out = tmp_path / "probe.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench" / "probe.py"), str(out), "-m:fake_tool", "--config", "x.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 3 and "ARGS ['--config', 'x.yaml']" in proc.stdout, proc.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["exit"] == 3 and record["steps"] == [] and record["end"] >= record["start"]
