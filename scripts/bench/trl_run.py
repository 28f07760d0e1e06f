"""TRL 1.16's own `trl sft --config X.yaml` (its script, trl/scripts/sft.py): the workload's YAML translated by workloads.to_trl, the train rows
as conversational prompt/completion JSON lines (TRL then trains on the answers only, as LLaMA-Factory does)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import workloads
from bench.contestant import Launch, venv_python, write_jsonl, write_yaml

NAME = "trl"


def available() -> str | None:
    return None if venv_python("trl").is_file() else "not set up: python scripts/bench.py setup"


def launch(config: dict[str, Any], run_dir: Path) -> Launch:
    data = run_dir / "data"
    rows = workloads.rows(Path(config["dataset_dir"]), config["dataset"])
    write_jsonl(data / "train.jsonl", workloads.to_trl_rows(rows))
    translated, dropped = workloads.to_trl(config, data)
    cfg = write_yaml(run_dir / "config.yaml", translated)
    # `trl sft` is `accelerate launch trl/scripts/sft.py`: in a child process the probe cannot see, so the
    # script is run as it is in the probe's own process (one process, as accelerate starts on one CPU)
    return Launch(
        python=str(venv_python("trl")),
        entry="-m:trl.scripts.sft",
        args=["--config", str(cfg)],
        adapter_dir=Path(config["output_dir"]),
        config_file=cfg,
        dropped_keys=dropped,
    )
