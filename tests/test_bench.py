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
                "attn_width", "attn_pairs", "model_tflops", "mfu"}
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
