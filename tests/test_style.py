"""Formatting and lint are machines' work: ruff's lint rules and its formatter, as pyproject.toml sets them.

ruff is in the dev extra (and pre-commit runs the same two hooks); on an environment without it these skip,
saying so, rather than pass.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def ruff() -> list[str]:
    """The ruff of this environment (beside its python, or on PATH)."""
    beside = Path(sys.executable).with_name("ruff")
    found = str(beside) if beside.is_file() else shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    return [found]


def test_ruff_check_passes() -> None:
    run = subprocess.run([*ruff(), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, f"fix with: ruff check --fix .\n{run.stdout[-4000:]}{run.stderr[-1000:]}"


def test_ruff_format_leaves_the_tree_as_it_is() -> None:
    run = subprocess.run([*ruff(), "format", "--check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, f"format with: ruff format .\n{run.stdout[-4000:]}{run.stderr[-1000:]}"
