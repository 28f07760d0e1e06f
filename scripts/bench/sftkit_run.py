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
    return Launch(
        python=sys.executable,
        entry="sftkit.cli:main",
        args=["train", str(cfg), "--overwrite"],
        adapter_dir=Path(config["output_dir"]),
        config_file=cfg,
        env={"PYTHONPATH": str(REPO)},
    )


class Checkpointed:
    """sftkit with `gradient_checkpointing: true` (LLaMA-Factory's and TRL's default) instead of its `auto`:
    a diagnostic row that tells the memory of recomputation from the rest (`--contestants ...,sftkit_gc`)."""

    NAME = "sftkit_gc"

    @staticmethod
    def available() -> str | None:
        return None

    @staticmethod
    def launch(config: dict[str, Any], run_dir: Path) -> Launch:
        return launch(config | {"gradient_checkpointing": True}, run_dir)
