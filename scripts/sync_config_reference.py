"""Regenerates the config reference table in docs/config.md from the schema (tests/test_config.py checks it)."""

from __future__ import annotations

from pathlib import Path

from sftkit.config import reference_markdown

PAGE = Path(__file__).resolve().parent.parent / "docs" / "config.md"
START, END = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"

if __name__ == "__main__":
    text = PAGE.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    PAGE.write_text(f"{head}{START}{reference_markdown()}\n{END}{tail}", encoding="utf-8")
    print(f"updated {PAGE}")
