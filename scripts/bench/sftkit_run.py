"""sftkit: `sftkit train X.yaml` on the workload's YAML as it is, from the repository's own environment."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench.contestant import Launch, write_yaml

NAME = "sftkit"
REPO = Path(__file__).resolve().parents[2]


def available() -> str | None:
    return None


def launch(config: dict[str, Any], run_dir: Path) -> Launch:
    cfg = write_yaml(run_dir / "config.yaml", config)
    return Launch(python=sys.executable, entry="sftkit.cli:main", args=["train", str(cfg), "--overwrite"],
                  adapter_dir=Path(config["output_dir"]), config_file=cfg, env={"PYTHONPATH": str(REPO)})
