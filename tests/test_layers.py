"""The layering contract (pyproject's [tool.importlinter]): imports point down the pipeline, never up."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter on the `sftkit` package found under `root`, with the project's contract."""
    command = [str(Path(sys.executable).parent / "lint-imports"), "--config", str(REPO / "pyproject.toml")]
    return subprocess.run(command, capture_output=True, text=True, cwd=root, env={"PYTHONPATH": str(root)}, timeout=120)


def test_the_package_keeps_its_layers() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    # even a function-local import counts: that is how the old cycle hid
    shutil.copytree(REPO / "sftkit", tmp_path / "sftkit")
    with (tmp_path / "sftkit" / "data" / "masking.py").open("a", encoding="utf-8") as handle:
        handle.write("\n\ndef _upward() -> None:\n    from sftkit.training import train  # noqa: F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "sftkit.data.masking -> sftkit.training" in result.stdout
