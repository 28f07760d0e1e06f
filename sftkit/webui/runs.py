"""The Runs tab: past runs of an output folder side by side (config diff, losses, best step, metrics).

Read from what each run wrote (sftkit_config.yaml, trainer_state.json, metrics.json, progress.jsonl); a folder
that is not a run is left out, and a damaged file shows as missing rather than stopping the table.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from sftkit.run_dir import CONFIG_FILE, METRICS_FILE, is_run, read_json
from sftkit.webui.jobs import progress, trainer_state

COLUMNS = [
    "run",
    "steps",
    "first loss",
    "last loss",
    "best eval loss",
    "best step",
    "tokens/s",
    "runtime (s)",
    "checkpoints",
]


def run_folders(root: Path) -> list[Path]:
    """The runs directly under `root` (newest first)."""
    if not root.is_dir():
        return []
    runs = [child for child in root.iterdir() if child.is_dir() and is_run(child)]
    return sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)


def table(root: Path) -> list[list[Any]]:
    """One row per run: COLUMNS."""
    return [_row(run) for run in run_folders(root)]


def _row(run: Path) -> list[Any]:
    """A finished run's metrics.json says it all; a running or stopped one is read from what it logged so far."""
    records = progress(run)
    train = [r["loss"] for r in records if "loss" in r]
    evals = [(r["eval_loss"], r["step"]) for r in records if "eval_loss" in r]
    state = trainer_state(run)
    metrics = read_json(run / METRICS_FILE) or {}
    best = min(evals) if evals else (state.get("best_metric"), state.get("best_global_step"))
    steps = metrics.get("global_step") or state.get("global_step") or (records[-1]["step"] if records else None)
    return [
        run.name,
        steps,
        _round(metrics.get("first_train_loss", train[0] if train else None)),
        _round(train[-1] if train else metrics.get("train_loss")),
        _round(metrics.get("best_eval_loss", best[0])),
        metrics.get("best_step", best[1]),
        _round(metrics.get("tokens_per_second")),
        _round(metrics.get("train_runtime_s")),
        len(list(run.glob("checkpoint-*"))),
    ]


def config_diff(first: Path, second: Path) -> str:
    """A unified diff of the two runs' resolved configs (every default filled in, so only real differences show)."""
    a, b = first / CONFIG_FILE, second / CONFIG_FILE
    missing = [str(path) for path in (a, b) if not path.is_file()]
    if missing:
        return f"no {CONFIG_FILE} in {', '.join(missing)}"
    lines = difflib.unified_diff(
        a.read_text(encoding="utf-8").splitlines(),
        b.read_text(encoding="utf-8").splitlines(),
        fromfile=str(a),
        tofile=str(b),
        lineterm="",
        n=0,
    )
    return "\n".join(lines) or "the two configs are the same"


def loss_points(runs: list[Path]) -> list[dict[str, Any]]:
    """(run, step, loss, kind) rows of several runs, for one plot."""
    rows = []
    for run in runs:
        for record in progress(run):
            for kind in ("loss", "eval_loss"):
                if kind in record:
                    rows.append(
                        {
                            "run": run.name,
                            "step": record["step"],
                            "loss": record[kind],
                            "kind": "train" if kind == "loss" else "eval",
                        }
                    )
    return rows


def _round(value: Any) -> Any:
    return round(value, 4 if abs(value) < 100 else 1) if isinstance(value, float) else value
