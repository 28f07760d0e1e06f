"""Helpers shared by the test modules (tests/ is on sys.path under pytest's default import mode)."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any


def make_config(**keys: Any) -> Any:
    """The test-suite's one config factory: a valid SftConfig from `keys` (paths may be Path objects).

    The required keys get harmless stand-ins and the template is chatml, so a test names only what it is about.
    """
    from sftkit.config import validate_config

    base = {"model_name_or_path": "unused", "dataset": "demo_alpaca", "output_dir": "unused", "template": "chatml"}
    return validate_config(
        base | {key: str(value) if isinstance(value, Path) else value for key, value in keys.items()}
    )


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


def prompt_tail(tokenizer: Any, template: Any) -> str:
    """The end of the generation prompt's text that the ids chat sends (`encode_prompt`) leave out: the header's
    space ERNIE and Mistral end on, which most replies' first token swallows ("Assistant: " + "the" -> " the")."""
    from sftkit.data.masking import encode_prompt

    probe = [{"role": "user", "content": "Hi"}]
    text = "".join(s.text for s in template.segments(probe, None, add_generation_prompt=True))
    sent = len(encode_prompt(tokenizer, template, probe))
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True).offset_mapping
    return text[offsets[sent - 1][1] :] if sent < len(offsets) else ""
