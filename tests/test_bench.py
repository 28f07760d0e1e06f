"""scripts/bench.py runs end to end on the tiny model and writes every field (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # the bench runs every method in a subprocess

REPO = Path(__file__).resolve().parent.parent
TRAIN_FIELDS = {"method", "model", "cutoff", "steps", "seconds", "tokens", "trained_tokens", "seconds_per_step",
                "tokens_per_s", "trained_tokens_per_s", "peak_rss_gb", "peak_cuda_gb", "linear_params",
                "attn_width", "attn_pairs", "model_tflops", "mfu", "setup_s", "step_phases_s"}
PREPROCESS_FIELDS = {"rows", "tokens", "seconds", "rows_per_s", "tokens_per_s", "packing_efficiency"}


def test_bench_on_the_tiny_model_writes_every_field(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--device", "cpu", "--models", "tiny", "--cutoff", "256",
         "--steps", "2", "--warmup", "1", "--preprocess-rows", "200", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
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


def test_bench_runs_the_gpu_sets_options_on_a_cpu(tmp_path: Path) -> None:
    """The sftkit variants the GPU set measures, each through its own config keys, at tiny size on a CPU
    (sftkit_liger and trl_fa2 need a GPU: the first falls back with a note, the second reports why it cannot run)."""
    out = tmp_path / "results.json"
    methods = "sftkit_nogc,sftkit_sdpa,sftkit_tokens,sftkit_compile,sftkit_liger,trl_fa2"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--device", "cpu", "--models", "tiny", "--cutoff", "128",
         "--batch-size", "2", "--methods", methods, "--steps", "2", "--warmup", "1", "--skip-preprocess",
         "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {run["method"]: run for run in json.loads(out.read_text())["train"]}
    for method in methods.split(",")[:-1]:
        assert "error" not in runs[method] and runs[method]["steps"] == 2, runs[method]
    assert runs["sftkit_tokens"]["batch_size"] == 2 and runs["sftkit_tokens"]["tokens"] > 0
    assert "flash-attn is not installed" in runs["trl_fa2"]["error"]
