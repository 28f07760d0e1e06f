"""The run-directory lock: one `sftkit train` at a time per output_dir.

Two runs in one folder would both report success into it, or one would delete the other's checkpoint in
progress. The lock is an `fcntl.flock` on `.NAME.sftkit-lock` beside output_dir (beside it, so a refused or
failed run leaves output_dir untouched), holding the owner's pid for the message. The kernel releases a
flock when its process dies, however it dies, so a lock file a killed run left behind is stale by
construction and the next run simply takes it. Platforms without fcntl run unlocked.

Part of `sftkit.training.lifecycle`; standard library only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sftkit.errors import SftkitError
from sftkit.run_dir import lock_path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Holds the lock of the run in `out` for the block.

    Raises:
        SftkitError: another live process holds it (its pid is named).
    """
    if fcntl is None:
        yield
        return
    descriptor = _acquire(lock_path(out), out)
    try:
        yield
    finally:
        lock_path(out).unlink(missing_ok=True)
        os.close(descriptor)  # closing releases the flock


def _acquire(path: Path, out: Path) -> int:
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SftkitError(
                f"output_dir: cannot create the run lock {path} ({exc.strerror}); choose an output_dir in "
                "a folder you can write to"
            ) from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(descriptor)
            raise SftkitError(
                f"output_dir: {out} is in use by another `sftkit train` (pid {owner}); wait for it to "
                "finish, stop it, or choose another output_dir"
            ) from None
        # the previous owner may have deleted the file between our open and our flock: lock the file in place
        if _same_file(path, descriptor):
            break
        os.close(descriptor)
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode("ascii"), 0)
    return descriptor


def _same_file(path: Path, descriptor: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(descriptor).st_ino
    except FileNotFoundError:
        return False
