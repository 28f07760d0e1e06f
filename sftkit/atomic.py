"""Atomic writes: a file or folder appears complete under its final name, or not at all.

Every output sftkit writes (metrics, predictions, exports, merged models, checkpoints) goes through here,
so a killed process never leaves a half-written file that looks finished. Files are written to a
temporary name beside the target and renamed; folders are built under a staging name and renamed
into place, the old folder moved aside first and deleted only afterwards. Standard library only.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

OLD_PREFIX = ".old-"
_PARTIAL = ".partial-"  # staging folders: `.NAME.partial-PID`


def place_problem(path: str | Path, kind: str = "file") -> str | None:
    """Why `path` cannot be written as a `kind` ("file" or "dir"), or None; checked before any slow work.

    A folder where a file should go (or the reverse), a file where a parent folder should be, or a
    folder this user may not write into.
    """
    path = Path(path)
    if kind == "file" and path.is_dir():
        return f"{path} is a directory; give a file path"
    if kind == "dir" and path.exists() and not path.is_dir():
        return f"{path} is a file; choose a directory path"
    target = path if kind == "dir" and path.is_dir() else path.parent
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, so {path} cannot be created under it; choose another path"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable by this user, so {path} cannot be written; choose another path"
    return None


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    return True


def write_text(path: str | Path, text: str) -> None:
    """Writes `text` to `path`, replacing it only once the new content is complete."""
    write_lines(path, [text])


def write_lines(path: str | Path, lines: Iterable[str]) -> None:
    """Writes each string of `lines` (streamed, not joined in memory) to `path`, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would survive the rename
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for line in lines:
                handle.write(line)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask: read from /proc where Linux has it (setting it to read it races other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str | Path, data: Any) -> None:
    """Writes `data` as indented JSON (NaN and infinity as null, which JSON lacks), atomically."""
    write_text(path, json.dumps(finite(data), indent=2, ensure_ascii=False) + "\n")


def finite(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


@contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """Yields an empty staging folder beside `out`; on success it replaces `out`, on failure it is deleted."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    discard_stale_staging(out)
    staging = out.with_name(f".{out.name}{_PARTIAL}{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        replace_dir(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def staged_file(out: str | Path) -> Iterator[Path]:
    """Yields a staging path beside `out` for a large file written by a library (a GGUF model); on success
    it is synced and renamed to `out`, on failure deleted. Named like staging folders, so a killed
    process's file is found by `discard_stale_staging`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    discard_stale_staging(out)
    staging = out.with_name(f".{out.name}{_PARTIAL}{os.getpid()}")
    staging.unlink(missing_ok=True)
    try:
        yield staging
        descriptor = os.open(staging, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(staging, out)
        fsync_dir(out.parent)
    finally:
        staging.unlink(missing_ok=True)


def discard_stale_staging(out: Path) -> list[Path]:
    """Deletes the staging folders (and files) of `out` that killed processes left (their pid no longer runs)."""
    stale = []
    for path in out.parent.glob(f".{glob.escape(out.name)}{_PARTIAL}*"):
        pid = path.name.rsplit(_PARTIAL, 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            stale.append(path)
    return stale


def replace_dir(staged: Path, final: Path) -> None:
    """Moves a completely written folder to its final name, replacing any folder there.

    The files are synced to disk first, so after a power loss `final` is either the old folder or the
    complete new one. A folder already at `final` is renamed aside and deleted only afterwards.
    """
    fsync_tree(staged)
    old = final.with_name(f"{OLD_PREFIX}{final.name}")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    staged.rename(final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def fsync_tree(root: Path) -> None:
    """Flushes every file under `root` (and the folders themselves) to disk."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            descriptor = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        fsync_dir(Path(folder))


def fsync_dir(folder: Path) -> None:
    """Flushes a folder's entries (renames into it) to disk, where the platform allows opening folders."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic there
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
