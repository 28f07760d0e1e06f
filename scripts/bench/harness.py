"""The interleaved race: every contestant on every workload, in a fresh process each, rotated per round.

For one run it measures, from outside: wall time from the command's start to its exit with the adapter saved,
the peak RSS of the whole process tree (psutil, polled every POLL_S), and whether the adapter is there; from
inside (bench.probe, the same counter in every tool): model load, the rest of the set-up (imports,
preprocessing, building the trainer), the training steps, and what follows the last step (the save and exit).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import axolotl_run, llamafactory_run, sftkit_run, trl_run

CONTESTANTS: dict[str, Any] = {m.NAME: m for m in (sftkit_run, llamafactory_run, trl_run, axolotl_run)}
DIAGNOSTICS: dict[str, Any] = {sftkit_run.Checkpointed.NAME: sftkit_run.Checkpointed}  # named on request only
PROBE = Path(__file__).resolve().parent / "probe.py"
POLL_S = 0.2
RUN_LIMIT_S = 1200
# torch's threads per contestant, the same for all: on a 2-core machine that others load to 8x its cores,
# OpenMP's spinning threads cost more than they give (a 256-token SmolLM2 step took 248 s with 2 threads)
THREADS = os.environ.get("RACE_THREADS", "1")
WARMUP_STEPS = 1  # steps left out of tokens/s (first-call kernel choice, lazy allocations): the same for all


def tree_rss(process: Any) -> int:
    """Resident bytes of a process and all its descendants (psutil)."""
    import psutil

    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_contestant(name: str, config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Runs one contestant on one workload's config and returns its measurements (or why it could not run)."""
    import psutil

    module = CONTESTANTS.get(name) or DIAGNOSTICS[name]
    result: dict[str, Any] = {"contestant": name}
    reason = module.available()
    if reason:
        return result | {"error": reason}
    run_dir.mkdir(parents=True, exist_ok=True)
    launch = module.launch(config, run_dir)
    probe_out = run_dir / "probe.json"
    probe_out.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HOME": str(run_dir / "hf-home"),
        "HF_DATASETS_CACHE": str(run_dir / "hf-datasets"),
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": THREADS,
        "MKL_NUM_THREADS": THREADS,
        "WANDB_DISABLED": "true",
        "PYTHONWARNINGS": "ignore",
        "PATH": f"{Path(launch.python).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **launch.env,
    }
    command = [launch.python, str(PROBE), str(probe_out), launch.entry, *launch.args]
    result |= {
        "command": " ".join(
            [Path(launch.python).parent.parent.name + "/bin/python", "probe.py", "OUT", launch.entry, *launch.args]
        ),
        "config_file": str(launch.config_file),
        "dropped_keys": launch.dropped_keys,
        "added_keys": launch.added_keys,
    }
    with open(run_dir / "stdout.log", "w") as out, open(run_dir / "stderr.log", "w") as err:
        start = time.time()
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=run_dir)
        watched, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            peak = max(peak, tree_rss(watched))
            if time.time() - start > RUN_LIMIT_S:
                proc.kill()
            time.sleep(POLL_S)
        wall = time.time() - start
    result |= {
        "exit": proc.returncode,
        "wall_s": round(wall, 1),
        "peak_rss_gb": round(peak / 2**30, 3),
        "started": start,
    }
    adapter = find_adapter(launch.adapter_dir)
    result["adapter"] = str(adapter) if adapter else None
    if probe_out.is_file():
        result |= summarize(json.loads(probe_out.read_text()), start)
    if proc.returncode != 0 or adapter is None:
        result["error"] = failure_line(
            (run_dir / "stderr.log").read_text(errors="replace"), proc.returncode, adapter is None
        )
    return result


def find_adapter(output_dir: Path) -> Path | None:
    """The folder holding the final adapter (adapter_config.json + weights), checkpoints left aside."""
    if (output_dir / "adapter_config.json").is_file():
        return output_dir
    found = [p.parent for p in output_dir.rglob("adapter_config.json") if "checkpoint-" not in str(p)]
    return found[0] if found else None


def failure_line(stderr: str, code: int, no_adapter: bool) -> str:
    """The line a run failed with: the last exception-looking line of its stderr."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    marked = [line for line in lines if "Error" in line or "error:" in line.lower() or "Exception" in line]
    line = (marked or lines or ["no output"])[-1]
    return f"exit {code}: {line[:400]}" if code else f"no adapter saved: {line[:400]}" if no_adapter else line


def summarize(record: dict[str, Any], started: float) -> dict[str, Any]:
    """Phases and rates from a probe record: the same arithmetic for every contestant."""
    steps = record.get("steps", [])
    loads = record.get("loads", [])
    out: dict[str, Any] = {
        "interpreter_s": round(record["start"] - started, 2),
        "load_s": round(sum(load["end"] - load["begin"] for load in loads), 2),
        "steps": len(steps),
    }
    if not steps:
        return out
    first, last = steps[0]["begin"], steps[-1]["end"]
    out |= {
        "setup_s": round(first - record["start"], 2),
        "train_s": round(last - first, 2),
        "after_train_s": round(record["end"] - last, 2),
    }
    out["setup_other_s"] = round(out["setup_s"] - out["load_s"], 2)  # imports, preprocessing, trainer
    measured = steps[WARMUP_STEPS:] if len(steps) > WARMUP_STEPS else steps
    seconds = sum(s["end"] - s["begin"] for s in measured)
    trained = [s["trained"] for s in measured]
    if None not in trained:
        out |= {"trained_tokens": sum(trained), "trained_tokens_per_s": round(sum(trained) / seconds, 2)}
    tokens = [s["tokens"] for s in measured]
    if None not in tokens:
        out |= {"tokens": sum(tokens), "tokens_per_s": round(sum(tokens) / seconds, 2)}
    out["seconds_per_step"] = round(seconds / len(measured), 3)
    losses = [s["loss"] for s in steps if s.get("loss") is not None]
    out["loss_first"] = round(losses[0], 4) if losses else None
    # the last quarter's mean: one step's loss depends on which rows it drew
    tail = losses[-max(1, len(losses) // 4) :]
    out["final_train_loss"] = round(sum(tail) / len(tail), 4) if tail else None
    out["all_trained_tokens"] = sum(s["trained"] or 0 for s in steps)
    return out


def rotation(names: list[str], turn: int) -> list[str]:
    """The order of one round: shifted by one each turn so that no contestant always runs first or last."""
    k = turn % len(names) if names else 0
    return names[k:] + names[:k]
