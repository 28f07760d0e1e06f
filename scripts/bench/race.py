"""`python scripts/bench.py race`: de-quantize the models, write the split and the YAMLs, run every contestant
on every workload interleaved, score every adapter with the one evaluator, time the data stages, and write the
JSON (docs/bench/<date>-race/race.json), the markdown beside it and the Race section of docs/benchmarks.md."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import harness, models, report, workloads

REPO = Path(__file__).resolve().parents[2]
RACE_ROOT = models.PEERS / "race"
STAGE_REPEAT = 10  # the train rows repeated for the data-stage timing (a measurable size on 2 cores)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.py race", description=__doc__)
    parser.add_argument("--workloads", default=",".join(workloads.WORKLOADS))
    parser.add_argument("--contestants", default=",".join(harness.CONTESTANTS))
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repeats of the whole set")
    parser.add_argument("--steps", type=int, default=None, help="override every workload's max_steps")
    parser.add_argument("--skip-data-stage", action="store_true")
    parser.add_argument("--out", default=None, help="JSON path (default docs/bench/<date>-race/race.json)")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md as it is")
    parser.add_argument(
        "--report",
        default=None,
        metavar="JSON",
        help="only render a race's JSON again (table, targets, docs/benchmarks.md)",
    )
    return parser.parse_args(argv)


def log(started: float, text: str) -> None:
    print(f"[{time.time() - started:6.0f}s] {text}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.report:
        return render(Path(args.report), doc=not args.no_doc)
    started = time.time()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    out = Path(args.out) if args.out else REPO / "docs" / "bench" / f"{stamp}-race" / "race.json"
    work = RACE_ROOT / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    data_dir = workloads.write_data(work / "data")
    names = args.workloads.split(",")
    contestants = args.contestants.split(",")
    model_dirs = {}
    for name in names:
        model = workloads.WORKLOADS[name]["model"]
        if model not in model_dirs:
            log(started, f"model {model}: de-quantizing once (or reusing) under {models.PEERS / 'models'}")
            model_dirs[model] = models.dequantize(model)
    configs = {}
    for name in names:
        config = workloads.workload_yaml(name, model_dirs[workloads.WORKLOADS[name]["model"]], data_dir, Path("OUT"))
        if args.steps:
            config["max_steps"] = args.steps
        configs[name] = config
    result: dict[str, Any] = {
        "meta": meta(args, argv),
        "workloads": names,
        "contestants": contestants,
        "configs": configs,
        "runs": [],
        "eval": {},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    turn = 0
    for round_ in range(args.rounds):
        for name in names:
            for contestant in harness.rotation(contestants, turn):
                run_dir = work / f"r{round_}" / name / contestant
                config = dict(configs[name], output_dir=str(run_dir / "out"))
                log(started, f"round {round_} {name} {contestant} ...")
                run = harness.run_contestant(contestant, config, run_dir) | {"workload": name, "round": round_}
                result["runs"].append(run)
                log(started, f"  {one_line(run)}")
                save(out, result)
            turn += 1
            if round_ == args.rounds - 1:  # scored as soon as its last round ends: a cut-short race keeps it
                adapters = {
                    r["contestant"]: r["adapter"]
                    for r in report.best_runs(result).values()
                    if r["workload"] == name and r.get("adapter")
                }
                log(started, f"eval {name}: {', '.join(adapters)}")
                result["eval"][name] = evaluate(configs[name], adapters, work / f"eval-{name}")
                result["targets"] = report.check_targets(result)
                save(out, result)
    if not args.skip_data_stage and "llamafactory" in contestants:
        result["data_stage"] = data_stage(configs[names[0]], work / "datastage", started)
    result["meta"]["load_average_end"] = os.getloadavg()
    result["meta"]["wall_s"] = round(time.time() - started, 1)
    result["targets"] = report.check_targets(result)
    save(out, result)
    text = report.markdown(result)
    out.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    if not args.no_doc:
        report.write_section(REPO / "docs" / "benchmarks.md", text)
    print(text)
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


def render(path: Path, doc: bool = True) -> int:
    """The table and targets of a race's JSON (a cut-short race included), beside it and in the doc."""
    result = json.loads(path.read_text(encoding="utf-8"))
    result["meta"].setdefault("wall_s", sum(r.get("wall_s", 0) for r in result["runs"]))
    result["targets"] = report.check_targets(result)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    text = report.markdown(result)
    path.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    if doc:
        report.write_section(REPO / "docs" / "benchmarks.md", text)
    print(text)
    return 0


def one_line(run: dict[str, Any]) -> str:
    if "error" in run and not run.get("steps"):
        return f"{run['contestant']}: FAILED {run['error']}"
    return (
        f"{run['contestant']}: wall {run.get('wall_s')} s, {run.get('steps')} steps, "
        f"{run.get('trained_tokens_per_s')} trained tok/s, RSS {run.get('peak_rss_gb')} GB, "
        f"loss {run.get('final_train_loss')}" + (f", ERROR {run['error']}" if "error" in run else "")
    )


def save(out: Path, result: dict[str, Any]) -> None:
    out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")


def meta(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    versions = {}
    for venv, packages in (
        ("", ("torch", "transformers", "trl", "peft")),
        ("lf", ("llamafactory", "transformers", "peft", "trl")),
        ("trl", ("trl", "transformers", "peft")),
        ("axolotl", ("axolotl", "transformers", "peft")),
    ):
        python = sys.executable if not venv else str(models.PEERS / venv / "bin" / "python")
        if not Path(python).is_file():
            continue
        code = (
            "import importlib.metadata as m, json\nout={}\nfor p in "
            f"{packages!r}:\n try: out[p]=m.version(p)\n except Exception: out[p]=None\nprint(json.dumps(out))"
        )
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
        versions[venv or "sftkit-env"] = json.loads(proc.stdout) if proc.returncode == 0 else None
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{cpu} x{os.cpu_count()}, shared with other users",
        "rounds": args.rounds,
        "versions": versions,
        "load_average_start": os.getloadavg(),
        "command": "python scripts/bench.py race " + " ".join(argv),
        "device": "cpu",
        "warmup_steps_left_out": harness.WARMUP_STEPS,
    }


def evaluate(config: dict[str, Any], adapters: dict[str, str], work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    spec = {
        "model_dir": config["model_name_or_path"],
        "data_dir": config["dataset_dir"],
        "dataset": config["dataset"],
        "template": config["template"],
        "cutoff_len": config["cutoff_len"],
        "adapters": adapters,
    }
    (work / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO / "scripts"),
        HF_HUB_OFFLINE="1",
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS=harness.THREADS,
        MKL_NUM_THREADS=harness.THREADS,
        TRANSFORMERS_VERBOSITY="error",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "bench.evaluator", str(work / "spec.json"), str(work / "eval.json")],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO / "scripts",
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads((work / "eval.json").read_text())


def data_stage(config: dict[str, Any], work: Path, started: float) -> dict[str, Any]:
    """sftkit's and LLaMA-Factory's data stage on the same rows (the first workload's train sets, repeated),
    1 and 2 workers, interleaved, each in a fresh process with a fresh cache."""
    work.mkdir(parents=True, exist_ok=True)
    rows = workloads.rows(Path(config["dataset_dir"]), config["dataset"]) * STAGE_REPEAT
    data = work / "data"
    data.mkdir(exist_ok=True)
    (data / "stage.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    (data / "dataset_info.json").write_text(json.dumps({"stage": {"file_name": "stage.json"}}), encoding="utf-8")
    runs = []
    for workers in (1, 2):
        for tool in ("sftkit", "llamafactory"):
            cfg = dict(
                config,
                dataset="stage",
                dataset_dir=str(data),
                preprocessing_num_workers=workers,
                output_dir=str(work / f"{tool}-{workers}"),
                packing=False,
            )
            cfg.pop("max_steps", None)
            if tool == "sftkit":
                cfg.pop("stage"), cfg.pop("do_train")
            else:  # as in the race: its transformers refuses bf16 on a CPU without use_cpu
                cfg |= workloads.CPU_KEYS
            path = work / f"{tool}-{workers}.json"
            path.write_text(json.dumps(cfg), encoding="utf-8")
            python = sys.executable if tool == "sftkit" else str(models.PEERS / "lf" / "bin" / "python")
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
                "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_CACHE": str(work / f"cache-{tool}-{workers}"),
                "DISABLE_VERSION_CHECK": "1",
                "CUDA_VISIBLE_DEVICES": "",
                "TOKENIZERS_PARALLELISM": "false",
                "OMP_NUM_THREADS": harness.THREADS,
            }
            if tool == "sftkit":
                env["PYTHONPATH"] = str(REPO)
            proc = subprocess.run(
                [python, str(Path(__file__).parent / "datastage.py"), tool, str(path)],
                env=env,
                capture_output=True,
                text=True,
            )
            line = next((out for out in proc.stdout.splitlines() if out.startswith("DATASTAGE ")), None)
            entry: dict[str, Any] = {"tool": tool, "workers": workers}
            if line:
                entry |= json.loads(line[len("DATASTAGE ") :])
                entry["rows_per_s"] = round(entry["rows"] / entry["seconds"], 1)
            else:
                entry["error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            runs.append(entry)
            log(started, f"data stage {entry}")
    return {"rows": len(rows), "runs": runs}
