"""Atomic writes: a file or folder appears complete under its final name, or not at all.

Every output sftkit writes (metrics, predictions, exports, merged models, checkpoints) goes through here,
so a killed process never leaves a half-written file that looks finished. Files are written to a
temporary name beside the target and renamed; folders are built under a staging name and renamed
into place, the old folder moved aside first and deleted only afterwards. Standard library only.
"""

from __future__ import annotations

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


def write_text(path: str | Path, text: str) -> None:
    """Writes `text` to `path`, replacing it only once the new content is complete."""
    write_lines(path, [text])


def write_lines(path: str | Path, lines: Iterable[str]) -> None:
    """Writes each string of `lines` (streamed, not joined in memory) to `path`, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for line in lines:
                handle.write(line)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        replace_dir(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
