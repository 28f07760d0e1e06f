"""Training and preprocessing throughput of sftkit against the floor and against plain TRL, in one run.

For every model x cutoff_len, three ways of training the same LoRA model (r16/alpha64 on every linear layer,
bf16, gradient checkpointing, packed rows of cutoff_len, batch 1) on the same data:

  sftkit  sftkit's own path: prepare_data rows -> load_model_for_training -> build_trainer (SftkitTrainer)
  trl_loss  the same rows, model, arguments and collator, but TRL 1.16's default loss (its fused LM head, plain
          SFTTrainer.compute_loss) instead of sftkit's chunked loss: the two losses side by side
  loop    scripts/sft_from_scratch.py's plain-PyTorch `train_step` over the same model and packed rows
          (forward, cross-entropy on the trained tokens, backward, clip, AdamW step), with the attention
          kernel sftkit's trainer picks: the floor of framework overhead, in a file a reader can check
  trl     plain TRL SFTTrainer with its defaults, as a user would write it: a messages dataset that TRL
          tokenizes (training on every token), TRL's default loss, `peft_config`, packing on

Each is measured in a fresh subprocess (clean peak RSS): tokens/s (all and trained), seconds per step
after warm-up, peak RSS (and peak CUDA memory) and MFU against the bf16 matmul peak timed in this run.
Preprocessing: `prepare_data` rows/s and tokens/s on alpaca_en_demo repeated to 100k rows, with
preprocessing_num_workers 1 and 2, against the raw fast tokenizer on the same rendered texts.

Models: `tiny` (sftkit.tiny) and `ernie`, the exact ERNIE-4.5-0.3B shape with random weights. Text is
tokenized by the tiny BPE tokenizer (no ERNIE tokenizer can be downloaded here); the ERNIE-shape model
keeps its 103,424-row vocabulary, so the embedding, output head and loss run at their real size.

    .venv/bin/python scripts/bench.py --device cpu --out bench_results.json

On a GPU (`--device cuda`) the defaults are the GPU set: the ERNIE shape only, cutoff_len 4096, 8 packed
rows per step, and sftkit with each speed option on and off beside plain TRL (its defaults, and with
flash-attention 2 where flash-attn is installed) and the bare loop (GPU_METHODS). Each run also reports
the time of its setup phases (data, model, trainer) and, per optimizer step, forward+backward, optimizer
and the rest, measured between the trainer's callbacks with the device synchronised.

    python scripts/bench.py --device cuda --out bench_results_gpu.json

The race (issue 26, the `bench/` package beside this file): sftkit against LLaMA-Factory 0.9.5, `trl sft` and
axolotl, each from its own virtual environment under /work/peers, on the same YAML and the same real models:

    python scripts/bench.py setup      # the peers' venvs, from the package index (scripts/bench_setup.sh)
    python scripts/bench.py race       # the interleaved run: docs/bench/<date>-race/ and docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED_ALPACA = REPO.parent / "shared" / "data" / "alpaca_en_demo.json"
BUNDLED_ALPACA = REPO / "data" / "demo_alpaca.json"
METHODS = ("sftkit", "trl_loss", "loop", "trl")
# sftkit with one speed option changed from its defaults (the config keys each sets; gradient_checkpointing
# and flash_attn stay auto otherwise), run on a GPU beside plain TRL and the loop.
SFTKIT_VARIANTS = {
    "sftkit_gc": {"gradient_checkpointing": True},
    "sftkit_nogc": {"gradient_checkpointing": False},
    "sftkit_sdpa": {"flash_attn": "sdpa"},
    "sftkit_liger": {"enable_liger_kernel": True},
    "sftkit_compile": {"torch_compile": True},
    "sftkit_tokens": {"batch_tokens": "rows"},
}
# sftkit_nogc is left out: at 8 x 4,096 tokens auto already turns checkpointing off on an 80 GB+ GPU
GPU_METHODS = ("sftkit", *(v for v in SFTKIT_VARIANTS if v != "sftkit_nogc"), "trl", "trl_fa2", "loop")
GPU_DEFAULTS = {"models": "ernie", "cutoff": "4096", "batch_size": 8}
RESULT_TAG = "BENCH_RESULT "
LORA = {"lora_rank": 16, "lora_alpha": 64, "lora_target": ["all"]}
LEARNING_RATE = 1e-4
# (warm-up steps, measured steps) per model and cutoff when --steps/--warmup are not given: the default
# set must finish within 10 minutes on a 2-core CPU, where one ERNIE-shape step at 4,096 tokens takes
# about two minutes (the attention's quadratic term dominates).
DEFAULT_STEPS = {
    "cpu": {("tiny", 512): (2, 6), ("tiny", 4096): (1, 3), ("ernie", 512): (1, 2), ("ernie", 4096): (0, 1)},
    "cuda": {("ernie", 4096): (3, 8)},
}
FALLBACK_STEPS = (3, 10)


# ============================================================================ main process


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark set, prints the markdown table and writes the JSON file."""
    argv = sys.argv[1:] if argv is None else argv
    if "--serve" in argv:  # serving has its own benchmark and options (scripts/bench_serve.py --help)
        import bench_serve

        return bench_serve.main([arg for arg in argv if arg != "--serve"])
    if argv[:1] == ["race"]:  # issue 26: sftkit against LLaMA-Factory, `trl sft` and axolotl (scripts/bench/)
        from bench import race

        return race.main(argv[1:])
    if argv[:1] == ["setup"]:  # the race's peer virtual environments under /work/peers
        return subprocess.call(["bash", str(REPO / "scripts" / "bench_setup.sh"), *argv[1:]])
    args = parse_args(argv)
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    if args.worker:
        return run_worker(json.loads(args.worker))
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="sftkit-bench-") as tmp:
        space = build_workspace(Path(tmp), args)
        report = {"meta": machine_info(args), "matmul_peak_tflops": None, "train": [], "preprocess": None}
        report["matmul_peak_tflops"] = matmul_peak(args.device)
        _progress(started, f"bf16 matmul peak: {report['matmul_peak_tflops']:.2f} TFLOP/s")
        for spec in training_specs(args, space):
            result = _in_subprocess(spec, space)
            result.update(mfu(result, report["matmul_peak_tflops"]))
            report["train"].append(result)
            _progress(started, _one_line(result))
            # each run as it ends: a bench stopped at a time limit still leaves every finished one
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if not args.skip_preprocess:
            report["preprocess"] = preprocess_bench(args, space, started)
    report["meta"]["load_average_end"] = os.getloadavg()
    report["meta"]["wall_seconds"] = round(time.time() - started, 1)
    report["targets"] = check_targets(report)
    print(markdown(report))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out} ({report['meta']['wall_seconds']} s)")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--models", default=None, help="comma-separated: tiny, ernie (cuda default: ernie)")
    parser.add_argument("--cutoff", default=None, help="comma-separated cutoff_len values (cuda default: 4096)")
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated: sftkit, trl_loss, loop, trl, trl_fa2, "
        f"{', '.join(SFTKIT_VARIANTS)} (cuda default: {','.join(GPU_METHODS)})",
    )
    parser.add_argument("--steps", type=int, default=None, help="measured steps per run (default: per model)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: per model)")
    parser.add_argument("--batch-size", type=int, default=None, help="packed rows per step (cpu 1, cuda 8)")
    parser.add_argument("--preprocess-rows", type=int, default=100_000)
    parser.add_argument("--skip-preprocess", action="store_true")
    parser.add_argument("--out", default="bench_results.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--serve",
        action="store_true",
        help="benchmark `sftkit serve` instead (scripts/bench_serve.py, with its own options)",
    )
    return with_device_defaults(parser.parse_args(argv))


def with_device_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fills the options left unset with the device's set: the CPU's, or the GPU set."""
    gpu = args.device == "cuda"
    args.models = args.models or (GPU_DEFAULTS["models"] if gpu else "tiny,ernie")
    args.cutoff = args.cutoff or (GPU_DEFAULTS["cutoff"] if gpu else "512,4096")
    args.methods = args.methods or ",".join(GPU_METHODS if gpu else METHODS)
    args.batch_size = args.batch_size or (GPU_DEFAULTS["batch_size"] if gpu else 1)
    return args


def _progress(started: float, text: str) -> None:
    print(f"[{time.time() - started:6.0f}s] {text}", file=sys.stderr, flush=True)


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    """Date, machine, library versions and the command: what a result needs to be compared with another."""
    import importlib.metadata as md

    versions = {
        name: md.version(name)
        for name in ("torch", "transformers", "trl", "peft", "datasets", "tokenizers", "accelerate")
    }
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {_cpu_name()} x{os.cpu_count()}",
        "gpu": _gpu_name() if args.device == "cuda" else None,
        "python": platform.python_version(),
        "versions": versions,
        "device": args.device,
        "load_average_start": os.getloadavg(),
        "command": "python scripts/bench.py " + " ".join(sys.argv[1:]),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _gpu_name() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------------------- workspace


def build_workspace(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Model directories, the training data registry and the 100k-row preprocessing file under `tmp`."""
    models = args.models.split(",")
    source = SHARED_ALPACA if SHARED_ALPACA.is_file() else BUNDLED_ALPACA
    rows = json.loads(source.read_text(encoding="utf-8"))
    data_dir = tmp / "data"
    data_dir.mkdir()
    (data_dir / "bench_alpaca.json").write_text(json.dumps(rows), encoding="utf-8")
    big = [rows[i % len(rows)] for i in range(args.preprocess_rows)]
    (data_dir / "bench_alpaca_big.json").write_text(json.dumps(big), encoding="utf-8")
    registry = {
        "bench_alpaca": {"file_name": "bench_alpaca.json"},
        "bench_alpaca_big": {"file_name": "bench_alpaca_big.json"},
    }
    (data_dir / "dataset_info.json").write_text(json.dumps(registry), encoding="utf-8")
    space = {
        "tmp": str(tmp),
        "data_dir": str(data_dir),
        "source": str(source),
        "models": {},
        "hf_cache": str(tmp / "hf-cache"),
        "device": args.device,
    }
    space["models"] = {name: build_model(name, tmp / name) for name in models}
    return space


def training_specs(args: argparse.Namespace, space: dict[str, Any]) -> list[dict[str, Any]]:
    """One spec per model x cutoff x method, in the order they run."""
    specs = []
    for model in args.models.split(","):
        for cutoff in (int(c) for c in args.cutoff.split(",")):
            warmup, steps = DEFAULT_STEPS[args.device].get((model, cutoff), FALLBACK_STEPS)
            for method in args.methods.split(","):
                specs.append(
                    {
                        "kind": "train",
                        "method": method,
                        "model": model,
                        "cutoff": cutoff,
                        "warmup": warmup if args.warmup is None else args.warmup,
                        "steps": steps if args.steps is None else args.steps,
                        "batch_size": args.batch_size,
                        "model_dir": space["models"][model],
                        "data_dir": space["data_dir"],
                        "device": args.device,
                        "out": space["tmp"],
                    }
                )
    return specs


def _in_subprocess(spec: dict[str, Any], space: dict[str, Any]) -> dict[str, Any]:
    """Runs one worker in a fresh interpreter and returns its result (or the error it ended with)."""
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        HF_DATASETS_CACHE=spec.get("hf_cache", space["hf_cache"]),
        TOKENIZERS_PARALLELISM="true",
        PYTHONWARNINGS="ignore",
    )
    if space.get("device", "cpu") == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env, cwd=REPO
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    result = {key: spec[key] for key in ("kind", "method", "model", "cutoff") if key in spec}
    return result | {"error": f"exit {proc.returncode}: {tail}"}


# ---------------------------------------------------------------------------- preprocessing


def preprocess_bench(args: argparse.Namespace, space: dict[str, Any], started: float) -> dict[str, Any]:
    """Raw tokenizer floor, then prepare_data with 1 and 2 workers, each in a fresh process and cache."""
    out: dict[str, Any] = {"rows": args.preprocess_rows, "source": space["source"]}
    if not SHARED_ALPACA.is_file():
        out["note"] = f"{SHARED_ALPACA} is absent: bundled {BUNDLED_ALPACA.name} repeated instead"
    for name, spec in [
        ("raw_tokenizer", {"mode": "raw"}),
        ("workers_1", {"mode": "sftkit", "workers": 1}),
        ("workers_2", {"mode": "sftkit", "workers": 2}),
    ]:
        spec |= {
            "kind": "preprocess",
            "model_dir": next(iter(space["models"].values())),
            "data_dir": space["data_dir"],
            "hf_cache": str(Path(space["tmp"]) / f"cache-{name}"),
        }
        out[name] = _in_subprocess(spec, space)
        _progress(started, f"preprocess {name}: {out[name]}")
    return out


# ---------------------------------------------------------------------------- derived numbers


def mfu(result: dict[str, Any], peak_tflops: float) -> dict[str, Any]:
    """Model FLOPs utilisation: useful training FLOPs per second over the measured bf16 matmul peak.

    Training FLOPs = 4 x linear-layer parameters per token (LoRA: forward and input gradients; frozen
    weights get no gradient) + 12 x layers x attention width per causal (query, key) pair inside each
    packed example. Recomputation (gradient checkpointing, chunked loss) is not useful work and is not
    counted, so MFU compares methods by the same yardstick as tokens/s.
    """
    if "error" in result or not result.get("seconds"):
        return {}
    flops = 4 * result["linear_params"] * result["tokens"] + 12 * result["attn_width"] * result["attn_pairs"]
    achieved = flops / result["seconds"] / 1e12
    return {"model_tflops": round(achieved, 4), "mfu": round(achieved / peak_tflops, 4) if peak_tflops else None}


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Ratios of the targets on the ERNIE shape (speed at every cutoff, memory at 4,096) and preprocessing."""
    runs = {(r.get("model"), r.get("cutoff"), r.get("method")): r for r in report["train"] if "error" not in r}
    if report["meta"].get("device") == "cuda":
        return gpu_targets(runs)
    checks = []
    for (model, cutoff, method), run in sorted(runs.items()):
        if method != "sftkit" or model != "ernie":
            continue
        loop, trl = runs.get((model, cutoff, "loop")), runs.get((model, cutoff, "trl"))
        trl_loss = runs.get((model, cutoff, "trl_loss"))
        if trl_loss:  # the loss sftkit keeps must be the faster of the two (issue: TRL's loss or ours, not both)
            checks.append(
                _check(
                    f"{model} {cutoff}: sftkit / trl_loss tokens/s",
                    run["tokens_per_s"],
                    trl_loss["tokens_per_s"],
                    ">=",
                    1.0,
                )
            )
        if loop:
            checks.append(
                _check(
                    f"{model} {cutoff}: sftkit / loop tokens/s", run["tokens_per_s"], loop["tokens_per_s"], ">=", 0.9
                )
            )
        if trl:
            checks.append(
                _check(f"{model} {cutoff}: sftkit / trl tokens/s", run["tokens_per_s"], trl["tokens_per_s"], ">=", 1.2)
            )
            if cutoff >= 4096:
                key = "peak_cuda_gb" if run.get("peak_cuda_gb") else "peak_rss_gb"
                checks.append(_check(f"{model} {cutoff}: sftkit / trl {key}", run[key], trl[key], "<=", 0.6))
    pre = report.get("preprocess") or {}
    raw = pre.get("raw_tokenizer", {}).get("tokens_per_s")
    one, two = (pre.get(w, {}).get("tokens_per_s") for w in ("workers_1", "workers_2"))
    for name, ours in (("workers_1", one), ("workers_2", two)):
        if raw and ours:
            checks.append(_check(f"preprocess {name} / raw tokenizer tokens/s", ours, raw, ">=", 0.5))
    if one and two:
        checks.append(_check("preprocess workers_2 / workers_1 tokens/s (scaling)", two, one, ">=", 1.0))
    return checks


def gpu_targets(runs: dict[tuple, dict[str, Any]]) -> list[dict[str, Any]]:
    """The GPU targets: >= 2x plain TRL's tokens/s and <= 0.5x its peak memory at 4,096, MFU >= 40%,
    and sftkit's default path within 10% of the bare loop."""
    checks = []
    for (model, cutoff, method), run in sorted(runs.items()):
        if method != "sftkit":
            continue
        trl, loop = runs.get((model, cutoff, "trl")), runs.get((model, cutoff, "loop"))
        if trl:
            checks.append(
                _check(f"{model} {cutoff}: sftkit / trl tokens/s", run["tokens_per_s"], trl["tokens_per_s"], ">=", 2.0)
            )
            if cutoff >= 4096 and run.get("peak_cuda_gb") and trl.get("peak_cuda_gb"):
                checks.append(
                    _check(
                        f"{model} {cutoff}: sftkit / trl peak_cuda_gb",
                        run["peak_cuda_gb"],
                        trl["peak_cuda_gb"],
                        "<=",
                        0.5,
                    )
                )
        if loop:
            checks.append(
                _check(
                    f"{model} {cutoff}: sftkit / loop tokens/s", run["tokens_per_s"], loop["tokens_per_s"], ">=", 0.9
                )
            )
        if run.get("mfu") is not None:
            checks.append(_check(f"{model} {cutoff}: sftkit MFU", run["mfu"], 1.0, ">=", 0.4))
    return checks


def _check(name: str, ours: float, theirs: float, op: str, target: float) -> dict[str, Any]:
    ratio = ours / theirs if theirs else float("nan")
    met = ratio >= target if op == ">=" else ratio <= target
    return {"check": name, "ratio": round(ratio, 3), "target": f"{op} {target}", "met": bool(met)}


def _one_line(result: dict[str, Any]) -> str:
    head = f"{result.get('model')} {result.get('cutoff')} {result.get('method')}"
    if "error" in result:
        return f"{head}: FAILED {result['error']}"
    return (
        f"{head}: {result['tokens_per_s']:.1f} tok/s, {result['seconds_per_step']:.2f} s/step, "
        f"peak RSS {result['peak_rss_gb']:.2f} GB, MFU {result.get('mfu')}"
    )


def markdown(report: dict[str, Any]) -> str:
    """The results as markdown tables: training runs, target checks, preprocessing."""
    meta = report["meta"]
    lines = [
        f"sftkit bench, {meta['date']}, {meta['machine']}" + (f", {meta['gpu']}" if meta["gpu"] else ""),
        f"bf16 matmul peak: {report['matmul_peak_tflops']:.2f} TFLOP/s; load average "
        f"{meta['load_average_start'][0]:.1f} -> {meta['load_average_end'][0]:.1f}",
        "",
        "| model | cutoff | method | tokens/s | trained tokens/s | s/step | steps | peak RSS GB | peak CUDA GB | MFU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["train"]:
        if "error" in r:
            lines.append(
                f"| {r.get('model')} | {r.get('cutoff')} | {r.get('method')} | failed: {r['error']} | | | | | | |"
            )
            continue
        cuda = f"{r['peak_cuda_gb']:.2f}" if r.get("peak_cuda_gb") else "-"
        lines.append(
            f"| {r['model']} | {r['cutoff']} | {r['method']} | {r['tokens_per_s']:.1f} | "
            f"{r['trained_tokens_per_s']:.1f} | {r['seconds_per_step']:.3f} | {r['steps']} | "
            f"{r['peak_rss_gb']:.2f} | {cuda} | {_pct(r.get('mfu'))} |"
        )
    if report["targets"]:
        lines += ["", "| target | ratio | wanted | met |", "|---|---|---|---|"]
        lines += [
            f"| {c['check']} | {c['ratio']:.2f} | {c['target']} | {'yes' if c['met'] else 'NO'} |"
            for c in report["targets"]
        ]
    lines += _preprocess_lines(report.get("preprocess"))
    return "\n".join(lines)


def _preprocess_lines(pre: dict[str, Any] | None) -> list[str]:
    if not pre:
        return []
    lines = [
        "",
        f"preprocessing: {pre['rows']:,} rows of {Path(pre['source']).name}"
        + (f" ({pre['note']})" if pre.get("note") else ""),
        "",
        "| preprocessing | rows/s | tokens/s | seconds | packing efficiency |",
        "|---|---|---|---|---|",
    ]
    for name in ("raw_tokenizer", "workers_1", "workers_2"):
        r = pre.get(name, {})
        if "error" in r or not r:
            lines.append(f"| {name} | failed: {r.get('error')} | | | |")
            continue
        packing = f"{r['packing_efficiency']:.1%}" if r.get("packing_efficiency") is not None else "-"
        lines.append(f"| {name} | {r['rows_per_s']:,.0f} | {r['tokens_per_s']:,.0f} | {r['seconds']:.1f} | {packing} |")
    return lines


def _pct(value: float | None) -> str:
    return f"{value:.1%}" if value is not None else "-"


# ============================================================================ worker processes


def run_worker(spec: dict[str, Any]) -> int:
    """One measurement in this fresh process; prints its result as one tagged JSON line."""
    result = preprocess_worker(spec) if spec["kind"] == "preprocess" else train_worker(spec)
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


def build_model(name: str, out: Path) -> str:
    """The tiny model, or the ERNIE-4.5-0.3B shape (random bf16 weights) beside the tiny tokenizer."""
    from sftkit.tiny import build_ernie_shape_model, build_tiny_model

    return str(build_tiny_model(out) if name == "tiny" else build_ernie_shape_model(out))


def matmul_peak(device: str) -> float:
    """bf16 matmul TFLOP/s on this machine now: the best of several large square products after a warm-up."""
    import torch

    size, repeats, rounds = (8192, 10, 8) if device == "cuda" else (4096, 1, 8)
    a = torch.randn(size, size, dtype=torch.bfloat16, device=device)
    b = torch.randn(size, size, dtype=torch.bfloat16, device=device)
    a @ b  # first-call kernel selection is not throughput
    best = float("inf")
    for _ in range(rounds):
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - start) / repeats)
    return round(2 * size**3 / best / 1e12, 4)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------- training workers


def bench_config(spec: dict[str, Any]):
    """The sftkit config every method's settings come from."""
    from sftkit.config import validate_config

    options = dict(SFTKIT_VARIANTS.get(spec["method"], {}))
    rows = spec["batch_size"]
    if options.get("batch_tokens") == "rows":  # the same tokens per step as the rows, as one budgeted row
        options["batch_tokens"], rows = rows * spec["cutoff"], 1
    # CPU: checkpointing on for every method (the comparisons recorded so far); GPU: sftkit decides (auto)
    checkpointing = True if spec["device"] == "cpu" else "auto"
    return validate_config(
        {
            "model_name_or_path": spec["model_dir"],
            "dataset": ["bench_alpaca"],
            "dataset_dir": spec["data_dir"],
            "template": "chatml",
            "cutoff_len": spec["cutoff"],
            "packing": True,
            "bf16": True,
            **LORA,
            "gradient_checkpointing": checkpointing,
            **options,
            "per_device_train_batch_size": rows,
            "learning_rate": LEARNING_RATE,
            "max_steps": spec["warmup"] + spec["steps"],
            "save_strategy": "no",
            "report_to": ["none"],
            "plot_loss": False,
            "output_dir": str(Path(spec["out"]) / spec["method"]),
            "overwrite_output_dir": True,
            "preprocessing_num_workers": None,
        }
    )


def train_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs one method and summarises its measured steps."""
    import torch

    cfg = bench_config(spec)
    runner = {"sftkit": run_sftkit, "trl_loss": run_trl_loss, "loop": run_loop, "trl": run_trl, "trl_fa2": run_trl}.get(
        spec["method"], run_sftkit
    )  # the sftkit_* variants: sftkit's path
    steps, model = runner(cfg, spec)
    measured = steps[spec["warmup"] :]
    seconds = sum(s["seconds"] for s in measured)
    tokens = sum(s["tokens"] for s in measured)
    result = {key: spec[key] for key in ("kind", "method", "model", "cutoff", "warmup", "batch_size")}
    result |= {
        "steps": len(measured),
        "seconds": round(seconds, 4),
        "tokens": tokens,
        "trained_tokens": sum(s["trained"] for s in measured),
        "attn_pairs": sum(s["pairs"] for s in measured),
        "seconds_per_step": round(seconds / max(len(measured), 1), 4),
        "tokens_per_s": round(tokens / seconds, 2) if seconds else 0.0,
        "trained_tokens_per_s": round(sum(s["trained"] for s in measured) / seconds, 2) if seconds else 0.0,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "peak_cuda_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None,
    }
    return result | model_shape(model) | phase_times(measured, spec.get("setup", {}))


def phase_times(measured: list[dict[str, Any]], setup: dict[str, float]) -> dict[str, Any]:
    """Seconds of each setup phase, and per measured step the mean of each step phase the timer recorded."""
    phases: dict[str, Any] = {"setup_s": {name: round(seconds, 3) for name, seconds in setup.items()}}
    names = sorted({name for step in measured for name in step.get("phases", {})})
    phases["step_phases_s"] = (
        {name: round(sum(s["phases"].get(name, 0.0) for s in measured) / len(measured), 4) for name in names}
        if measured
        else {}
    )
    return phases


def model_shape(model: Any) -> dict[str, int]:
    """Linear-layer parameters and attention width, the inputs of the FLOPs count."""
    import torch

    config = model.config
    heads, head_dim = config.num_attention_heads, getattr(config, "head_dim", None)
    head_dim = head_dim or config.hidden_size // heads
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return {"linear_params": linear, "attn_width": config.num_hidden_layers * heads * head_dim}


def batch_counts(batch: dict[str, Any]) -> dict[str, int]:
    """Tokens, trained tokens and causal attention pairs of one collated batch."""
    input_ids, labels = batch["input_ids"], batch["labels"]
    mask = batch.get("attention_mask")
    tokens = int(mask.sum()) if mask is not None else input_ids.numel()
    trained = int((labels[:, 1:] != -100).sum())
    return {"tokens": tokens, "trained": trained, "pairs": _attention_pairs(batch)}


def _attention_pairs(batch: dict[str, Any]) -> int:
    """Sum over packed examples of n(n+1)/2: the causal (query, key) pairs attention really needs."""
    positions = batch.get("position_ids")
    if positions is None:
        lengths = batch["attention_mask"].sum(-1).tolist()
    else:
        flat = positions.reshape(-1).tolist()
        starts = [i for i, p in enumerate(flat) if p == 0] + [len(flat)]
        lengths = [b - a for a, b in zip(starts, starts[1:])]
    return sum(n * (n + 1) // 2 for n in lengths)


class CountingCollator:
    """Wraps a trainer's collator to record each batch's counts, in the order batches are drawn."""

    def __init__(self, collate: Any) -> None:
        self.collate, self.counts = collate, []

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(examples)
        self.counts.append(batch_counts(batch))
        return batch


def _step_timer(device: str):
    """A TrainerCallback timing each optimizer step from the end of the previous one."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Step time from the end of the previous step; phases: forward+backward (to the optimizer hook,
        data loading and clipping included), the optimizer step, and the rest (scheduler, zero_grad, logging)."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.phases: list[dict[str, float]] = []
            self.last = self.mark = 0.0
            self.current: dict[str, float] = {}

        def _lap(self, name: str) -> None:
            _sync(device)
            now = time.perf_counter()
            self.current[name] = self.current.get(name, 0.0) + now - self.mark
            self.mark = now

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            if not self.times:
                _sync(device)
                self.last = time.perf_counter()
            self.mark, self.current = self.last, {}

        def on_pre_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            self._lap("forward_backward")

        def on_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            self._lap("optimizer")

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            self._lap("rest")
            self.times.append(self.mark - self.last)
            self.phases.append(self.current)
            self.last = self.mark

    return StepTimer()


def _trainer_steps(trainer: Any, device: str) -> list[dict[str, Any]]:
    """Trains with the step timer and counting collator in place; per-step seconds and counts."""
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    timer = _step_timer(device)
    trainer.add_callback(timer)
    trainer.train()
    return [{"seconds": t, "phases": p, **c} for t, p, c in zip(timer.times, timer.phases, counter.counts)]


def run_sftkit(cfg: Any, spec: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    """sftkit's own path, exactly as `sftkit train` builds it."""
    from sftkit.data import load_tokenizer, prepare_data
    from sftkit.model import resolve_precision
    from sftkit.templates import get_template
    from sftkit.training.recipe import load_model_for_training
    from sftkit.training.trainer import build_trainer

    setup = spec.setdefault("setup", {})
    start = time.perf_counter()
    template, precision = get_template(cfg.template), resolve_precision(cfg)
    tokenizer = load_tokenizer(cfg, template)
    data = prepare_data(cfg, tokenizer, template)
    setup["data"], start = time.perf_counter() - start, time.perf_counter()
    model = load_model_for_training(cfg, tokenizer, template, precision)
    setup["model"], start = time.perf_counter() - start, time.perf_counter()
    trainer = build_trainer(cfg, precision, model, tokenizer, template, data.train, None)
    setup["trainer"] = time.perf_counter() - start
    return _trainer_steps(trainer, spec["device"]), model


def run_trl_loss(cfg: Any, spec: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    """sftkit's rows, model (attention, adapter), TRL arguments and collator, trained by plain SFTTrainer: TRL's loss."""
    from trl import SFTTrainer

    from sftkit.data import load_tokenizer, prepare_data
    from sftkit.model import add_adapter, load_model, resolve_precision
    from sftkit.templates import get_template
    from sftkit.training.arguments import build_sft_config
    from sftkit.training.attention import use_document_attention
    from sftkit.training.collator import REAL_TOKENS_KEY, PackedRowsCollator

    template, precision = get_template(cfg.template), resolve_precision(cfg)
    tokenizer = load_tokenizer(cfg, template)
    data = prepare_data(cfg, tokenizer, template)
    model = load_model(cfg, tokenizer, precision)
    use_document_attention(model, cfg.flash_attn, precision.device)
    model = add_adapter(model, cfg, template.token_ids(tokenizer))
    _expose_head_bias(model)
    trainer = SFTTrainer(
        model=model, args=build_sft_config(cfg, precision), train_dataset=data.train, processing_class=tokenizer
    )
    collate = PackedRowsCollator(tokenizer.pad_token_id)
    trainer.data_collator = lambda rows: {k: v for k, v in collate(rows).items() if k != REAL_TOKENS_KEY}
    return _trainer_steps(trainer, spec["device"]), model


def _expose_head_bias(model: Any) -> None:
    """TRL's fused head projects with `lm_head.weight` and `lm_head.bias`; PEFT's trainable-tokens wrapper on the
    tied head proxies only `.weight`, so the base layer's bias (None) is exposed as a plain attribute."""
    head = model.get_output_embeddings()
    adapter = getattr(head, "token_adapter", None)
    if adapter is not None and "bias" not in vars(head):
        object.__setattr__(head, "bias", getattr(adapter.base_layer, "bias", None))


def run_trl(cfg: Any, spec: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    """Plain TRL: a messages dataset TRL tokenizes, TRL's default loss, LoRA through `peft_config`."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from sftkit.data import load_tokenizer

    tokenizer = load_tokenizer(cfg)  # the same tokenizer and chat template as sftkit's
    kernel = {}
    if spec["method"] == "trl_fa2":  # TRL's padding-free packing on flash-attention's varlen kernel
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise SystemExit("trl_fa2: flash-attn is not installed here")
        kernel = {"attn_implementation": "flash_attention_2"}
    model = AutoModelForCausalLM.from_pretrained(cfg.model_name_or_path, dtype=torch.bfloat16, **kernel)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    rows = json.loads((Path(cfg.dataset_dir) / "bench_alpaca.json").read_text(encoding="utf-8"))
    dataset = Dataset.from_list([{"messages": _messages(row)} for row in rows])
    args = SFTConfig(
        output_dir=cfg.output_dir,
        max_length=cfg.cutoff_len,
        packing=True,
        bf16=True,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        learning_rate=LEARNING_RATE,
        max_steps=cfg.max_steps,
        save_strategy="no",
        report_to="none",
        use_cpu=spec["device"] == "cpu",
    )
    lora = LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.resolved_lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    return _trainer_steps(trainer, spec["device"]), trainer.model


def _messages(row: dict[str, str]) -> list[dict[str, str]]:
    """An alpaca row as chat messages, as sftkit's formats.alpaca_to_messages builds them."""
    user = "\n".join(part for part in (row["instruction"], row.get("input", "")) if part)
    return [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]


def run_loop(cfg: Any, spec: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    """The floor: sftkit's model and packed rows, trained by scripts/sft_from_scratch.py's `train_step`
    (forward, cross-entropy on the trained tokens, backward, clip, AdamW step) and nothing else."""
    import torch
    from sft_from_scratch import train_step

    from sftkit.data import load_tokenizer, prepare_data
    from sftkit.model import add_adapter, load_model, resolve_precision
    from sftkit.templates import get_template
    from sftkit.training.attention import use_document_attention, varlen_attention
    from sftkit.training.memory import use_gradient_checkpointing

    template, precision = get_template(cfg.template), resolve_precision(cfg)
    tokenizer = load_tokenizer(cfg, template)
    batches = packed_batches(prepare_data(cfg, tokenizer, template).train, cfg, cfg.max_steps)
    model = load_model(cfg, tokenizer, precision)
    if use_gradient_checkpointing(cfg, precision):  # sftkit's decision, so only framework overhead differs
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = add_adapter(model, cfg, template.token_ids(tokenizer))
    model.to(precision.device).train()
    use_document_attention(model, cfg.flash_attn, precision.device)  # sftkit's kernel: only overhead differs
    # flash varlen reads one flattened row, as TRL's padding-free collator gives it
    batches = [
        flattened(batch) if varlen_attention(model) else {k: v for k, v in batch.items() if k != "lengths"}
        for batch in batches
    ]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LEARNING_RATE)
    steps = []
    for batch in batches:
        inputs = {k: v.to(precision.device) for k, v in batch.items()}
        _sync(precision.device)
        start = time.perf_counter()
        train_step(model, optimizer, inputs, cfg.max_grad_norm, autocast=precision.dtype)
        _sync(precision.device)
        steps.append({"seconds": time.perf_counter() - start, **batch_counts(batch)})
    return steps, model


def flattened(batch: dict[str, Any]) -> dict[str, Any]:
    """A packed batch's rows as one row without padding (what flash-attention's varlen kernel takes)."""
    import torch

    return {
        key: torch.cat([value[i, :n] for i, n in enumerate(batch["lengths"])])[None]
        for key, value in batch.items()
        if key != "lengths"
    }


def packed_batches(rows: Any, cfg: Any, count: int) -> list[dict[str, Any]]:
    """`count` batches of rows packed as TRL packs them (bfd to cutoff_len), with restarting position_ids."""
    import torch
    from trl.data_utils import pack_dataset

    packed = pack_dataset(rows.select_columns(["input_ids", "labels"]), cfg.cutoff_len, strategy="bfd")
    packed = packed.shuffle(seed=cfg.seed)
    size = cfg.per_device_train_batch_size
    batches = []
    for start in range(0, size * count, size):
        picked = [packed[i % len(packed)] for i in range(start, start + size)]
        width = max(len(row["input_ids"]) for row in picked)
        batch = {
            "input_ids": torch.zeros(size, width, dtype=torch.long),
            "labels": torch.full((size, width), -100),
            "position_ids": torch.zeros(size, width, dtype=torch.long),
            "lengths": [],
        }
        for i, row in enumerate(picked):
            n = len(row["input_ids"])
            batch["input_ids"][i, :n] = torch.tensor(row["input_ids"])
            batch["labels"][i, :n] = torch.tensor(row["labels"])
            batch["position_ids"][i, :n] = torch.cat([torch.arange(k) for k in row["seq_lengths"]])
            batch["lengths"].append(n)
        batch["labels"][batch["position_ids"] == 0] = -100  # no example predicts the next one's first token
        batches.append(batch)
    return batches


# ---------------------------------------------------------------------------- preprocessing workers


def preprocess_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The raw tokenizer on the rendered texts, or prepare_data end to end, on the big file."""
    from sftkit.config import validate_config

    cfg = validate_config(
        {
            "model_name_or_path": spec["model_dir"],
            "dataset": ["bench_alpaca_big"],
            "dataset_dir": spec["data_dir"],
            "template": "chatml",
            "cutoff_len": 4096,
            "packing": True,
            "overwrite_cache": True,
            "preprocessing_num_workers": spec.get("workers"),
            "output_dir": str(Path(spec["hf_cache"]) / "out"),
        }
    )
    return raw_tokenizer_rate(cfg) if spec["mode"] == "raw" else prepare_data_rate(cfg)


def raw_tokenizer_rate(cfg: Any) -> dict[str, Any]:
    """The floor: the fast tokenizer alone, batched, on the same rendered conversation texts."""
    from sftkit.data import load_tokenizer
    from sftkit.templates import get_template

    tokenizer = load_tokenizer(cfg)
    template = get_template(cfg.template)
    rows = json.loads((Path(cfg.dataset_dir) / "bench_alpaca_big.json").read_text(encoding="utf-8"))
    texts = ["".join(text for text, _ in template.render(_messages(row))) for row in rows]
    start = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), cfg.preprocessing_batch_size):
        encoded = tokenizer(texts[i : i + cfg.preprocessing_batch_size], add_special_tokens=False)
        tokens += sum(len(ids) for ids in encoded["input_ids"])
    seconds = time.perf_counter() - start
    return _rates(len(texts), tokens, seconds) | {"packing_efficiency": None}


def prepare_data_rate(cfg: Any) -> dict[str, Any]:
    """sftkit's whole preprocessing: load, normalize, render, tokenize, mask, statistics."""
    from sftkit.data import load_tokenizer, prepare_data

    tokenizer = load_tokenizer(cfg)
    start = time.perf_counter()
    data = prepare_data(cfg, tokenizer)
    seconds = time.perf_counter() - start
    return _rates(len(data.train), data.stats.total_tokens, seconds) | {
        "workers": cfg.preprocessing_num_workers,
        "packing_efficiency": data.stats.packing_efficiency,
    }


def _rates(rows: int, tokens: int, seconds: float) -> dict[str, Any]:
    return {
        "rows": rows,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds, 1),
        "tokens_per_s": round(tokens / seconds, 1),
    }


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "scripts"))  # sft_from_scratch, the bare loop
    raise SystemExit(main())
