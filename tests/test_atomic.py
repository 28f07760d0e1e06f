"""Atomic outputs: places checked before slow work, and staging folders that killed processes left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sftkit.atomic import discard_stale_staging, pid_alive, place_problem, staged_dir


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_places_that_cannot_be_written_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    assert place_problem(tmp_path / "new" / "deeper" / "out.json") is None
    assert place_problem(tmp_path / "folder") == f"{tmp_path / 'folder'} is a directory; give a file path"
    assert place_problem(tmp_path / "file", "dir") == f"{tmp_path / 'file'} is a file; choose a directory path"
    assert place_problem(tmp_path / "file" / "run" / "x", "dir") == (
        f"{tmp_path / 'file'} is a file, so {tmp_path / 'file' / 'run' / 'x'} cannot be created under it; choose "
        "another path"
    )
    # root may write anywhere, so a read-only folder is simulated
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "folder")
    assert "folder is not writable by this user" in place_problem(tmp_path / "folder" / "run", "dir")
    assert "folder is not writable by this user" in place_problem(tmp_path / "folder", "dir")


def test_staging_folders_of_dead_processes_are_deleted(tmp_path: Path) -> None:
    out = tmp_path / "merged"
    stale = tmp_path / f".merged.partial-{dead_pid()}"
    live = tmp_path / f".merged.partial-{os.getppid()}"  # a running process: its merge may be in progress
    other = tmp_path / ".other.partial-1"
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 100)
    assert not pid_alive(int(stale.name.rsplit("-", 1)[1])) and pid_alive(os.getppid())
    assert discard_stale_staging(out) == [stale]
    assert live.exists() and other.exists() and not stale.exists()
    stale.mkdir()
    with staged_dir(out) as staging:  # a new merge cleans up first
        assert not stale.exists()
        (staging / "done").write_text("yes")
    assert (out / "done").read_text() == "yes" and live.exists()
