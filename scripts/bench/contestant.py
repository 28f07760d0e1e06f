"""What every contestant module gives the harness: how to start its own command on a workload's YAML."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PEERS = Path("/work/peers")


@dataclass
class Launch:
    """One contestant's run: the interpreter of its own venv, the console entry the probe calls, its
    arguments, extra environment, the folder its adapter lands in, and the config file it was handed."""

    python: str
    entry: str
    args: list[str]
    adapter_dir: Path
    config_file: Path
    env: dict[str, str] = field(default_factory=dict)
    dropped_keys: list[str] = field(default_factory=list)
    added_keys: list[str] = field(default_factory=list)


def write_yaml(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def venv_python(name: str) -> Path:
    return PEERS / name / "bin" / "python"
