"""Helpers shared by the test modules (tests/ is on sys.path under pytest's default import mode)."""

from __future__ import annotations

import io
import sys


def run_cli(args: list[str], monkeypatch, capsys, stdin: str = "") -> tuple[int, str, str]:
    """Runs the console entry point in-process with `stdin` (not a terminal): (exit code, stdout, stderr)."""
    from sftkit.cli import main

    monkeypatch.setattr(sys, "argv", ["sftkit", *args])
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err
