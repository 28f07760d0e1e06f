"""axolotl: `axolotl train X.yml`, the workload's YAML translated by workloads.to_axolotl, the rows as messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import workloads
from bench.contestant import Launch, venv_python, write_jsonl, write_yaml

NAME = "axolotl"


def available() -> str | None:
    return None if venv_python("axolotl").is_file() else "not set up: python scripts/bench.py setup"


def launch(config: dict[str, Any], run_dir: Path) -> Launch:
    rows = workloads.rows(Path(config["dataset_dir"]), config["dataset"])
    data = write_jsonl(run_dir / "data" / "train.jsonl", workloads.to_messages_rows(rows))
    translated, dropped = workloads.to_axolotl(config, data)
    cfg = write_yaml(run_dir / "config.yml", translated)
    # --launcher python: in this process (its default, accelerate launch, trains in a child the probe cannot see)
    return Launch(
        python=str(venv_python("axolotl")),
        entry="axolotl.cli.main:main",
        args=["train", str(cfg), "--launcher", "python"],
        adapter_dir=Path(config["output_dir"]),
        config_file=cfg,
        dropped_keys=dropped,
        env={"AXOLOTL_DO_NOT_TRACK": "1"},
    )
