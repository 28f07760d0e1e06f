"""Regenerates the config reference table in README.md from the schema (tests/test_config.py checks it)."""

from __future__ import annotations

from pathlib import Path

from sftkit.config import reference_markdown

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"

if __name__ == "__main__":
    text = README.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    README.write_text(f"{head}{START}{reference_markdown()}\n{END}{tail}", encoding="utf-8")
    print(f"updated {README}")
