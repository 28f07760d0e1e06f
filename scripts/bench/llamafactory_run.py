"""LLaMA-Factory 0.9.5: `llamafactory-cli train X.yaml` on the workload's YAML as it is, from its own venv."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.contestant import Launch, venv_python, write_yaml
from bench.workloads import CPU_KEYS

NAME = "llamafactory"


def available() -> str | None:
    return None if venv_python("lf").is_file() else "not set up: python scripts/bench.py setup"


def launch(config: dict[str, Any], run_dir: Path) -> Launch:
    # the YAML as it is, plus use_cpu: transformers refuses bf16 on a CPU without it ("Your setup doesn't support
    # bf16/gpu. You need to assign use_cpu ...")
    cfg = write_yaml(run_dir / "config.yaml", config | CPU_KEYS)
    # DISABLE_VERSION_CHECK: the venv holds the versions pip chose for llamafactory==0.9.5 with torch 2.13
    return Launch(
        python=str(venv_python("lf")),
        entry="llamafactory.cli:main",
        args=["train", str(cfg)],
        adapter_dir=Path(config["output_dir"]),
        config_file=cfg,
        env={"DISABLE_VERSION_CHECK": "1", "USE_MODELSCOPE_HUB": "0"},
        added_keys=list(CPU_KEYS),
    )
