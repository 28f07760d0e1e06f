"""Every `sftkit` command the README and the docs/ pages show in a fenced block parses as the CLI parses it.

Each command line is taken from the page (continuation lines joined, `# comments` and `VAR=value` prefixes
dropped, `torchrun ... -m sftkit` / `.venv/bin/sftkit` reduced to sftkit's own arguments) and handed to the
click command behind `sftkit`: an unknown command or option, a missing argument or a bad choice fails here.
A command naming one of the shipped configs also validates that config with its `--set` overrides, and the
cheap ones (`keys`, `validate`, `data preview`) run for real on the tiny model, from a folder laid out as the
repository is after `scripts/demo.sh`.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from helpers import run_cli
from sftkit.cli import app

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUN_FOR_REAL = {("keys",), ("validate",), ("data", "preview")}


def fenced_lines(text: str) -> list[str]:
    """The lines inside ``` fences, a trailing backslash joining a line to the next."""
    lines, fence, pending = [], False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            fence, pending = not fence, ""
            continue
        if not fence:
            continue
        line = f"{pending} {line.strip()}" if pending else line
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1]
            continue
        lines.append(line)
    return lines


def sftkit_argv(line: str) -> list[str] | None:
    """sftkit's own arguments in a shell line (`sftkit ...`, `.venv/bin/sftkit ...`, `torchrun ... -m sftkit ...`)."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    if words and words[-1] == "&":  # started in the background: the shell's word, not sftkit's
        words = words[:-1]
    for i, word in enumerate(words):
        if word == "sftkit" and i > 0 and words[i - 1] == "-m":
            return words[i + 1 :]
        if word.split("/")[-1] == "sftkit" and all("=" in w for w in words[:i]):  # `VAR=x sftkit ...`
            return words[i + 1 :]
    return None


def doc_commands() -> list[tuple[str, list[str]]]:
    found = []
    for page in PAGES:
        for line in fenced_lines(page.read_text(encoding="utf-8")):
            argv = sftkit_argv(line)
            if argv is not None:
                found.append((f"{page.relative_to(REPO)}: {' '.join(argv)}", argv))
    return found


COMMANDS = doc_commands()


def parse(argv: list[str]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Parses `argv` as `sftkit` would, down to the leaf command: (its path of names, its parameters).

    Typer ships its own copy of click, so groups are told apart by what they do (`resolve_command`), and a usage
    error by its exit code (2), not by click's classes.
    """
    command: Any = typer.main.get_command(app)
    ctx = command.make_context("sftkit", list(argv))
    names: tuple[str, ...] = ()
    while hasattr(command, "resolve_command"):
        rest = [*ctx._protected_args, *ctx.args]
        assert rest, f"`sftkit {' '.join(names)}` needs a command"
        name, command, rest = command.resolve_command(ctx, rest)
        names += (name,)
        ctx = command.make_context(name, rest, parent=ctx)
    return names, ctx.params


def test_the_pages_show_commands() -> None:
    pages = {label.split(":")[0] for label, _ in COMMANDS}
    assert {"README.md", "docs/deploy.md", "docs/operations.md", "docs/training.md", "docs/webui.md"} <= pages


@pytest.mark.parametrize("argv", [argv for _, argv in COMMANDS], ids=[label for label, _ in COMMANDS])
def test_a_documented_command_parses(argv: list[str]) -> None:
    names, params = parse(argv)
    config = params.get("config")
    if names in {("train",), ("validate",)} and config and (REPO / config).is_file():
        from sftkit.config import load_config

        load_config(REPO / config, list(params.get("set_") or []))


@pytest.mark.parametrize("bad", [["trian", "x.yaml"], ["merge"], ["serve", "m", "--prot", "1"], ["data", "peek", "x"]])
def test_a_mistyped_command_does_not_parse(bad: list[str]) -> None:
    with pytest.raises(Exception) as info:  # typer's private click copy: no public UsageError to name
        parse(bad)
    assert getattr(info.value, "exit_code", None) == 2 and "Traceback" not in info.value.format_message()


@pytest.fixture()
def demo_layout(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory laid out as the repository after `scripts/demo.sh`: configs/, data/, models/tiny-ernie."""
    for name in ("configs", "data"):
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny-ernie").symlink_to(tiny_model_dir)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cheap(argv: list[str]) -> bool:
    """`keys`, or `validate` / `data preview` of a config the repository ships (a page's `your.yaml` only parses)."""
    if argv == ["keys"]:
        return True
    configs = [word for word in argv if word.endswith(".yaml")]
    command = tuple(argv[:2]) if argv[:1] == ["data"] else tuple(argv[:1])
    return (
        command in RUN_FOR_REAL
        and bool(configs)
        and all((REPO / word).is_file() for word in configs)
        and not any(real_model_config(REPO / word) for word in configs)
    )


def real_model_config(path: Path) -> bool:
    """A config of a real model (a .gguf from `sftkit models fetch`, LLaMA-Factory's data in ../shared): validated
    against the installed files by tests/test_real_models.py, not in the tiny model's demo layout."""
    return ".gguf" in path.read_text(encoding="utf-8")


CHEAP = [(label, argv) for label, argv in COMMANDS if cheap(argv)]


def test_some_documented_commands_are_cheap_enough_to_run() -> None:
    assert {tuple(argv[:1]) for _, argv in CHEAP} >= {("keys",), ("validate",)}


@pytest.mark.parametrize("argv", [argv for _, argv in CHEAP], ids=[label for label, _ in CHEAP])
def test_a_cheap_documented_command_runs(argv: list[str], demo_layout: Path, monkeypatch, capsys) -> None:
    code, out, err = run_cli(argv, monkeypatch, capsys)
    assert code == 0, err
    assert out.strip()


def table_commands(text: str) -> set[tuple[str, ...]]:
    """The command names of a markdown table's `sftkit ...` cells: the lowercase words before the first argument."""
    found = set()
    rows = [line for line in text.splitlines() if line.startswith("| `sftkit ")]
    for cell in (re.split(r"(?<!\\)\|", row)[1].strip() for row in rows):  # `\|` inside a cell is no column
        names = []
        for word in cell.strip("`").replace("\\|", "|").split()[1:]:
            if not word.replace("|", "").isalpha() or not word.islower():
                break
            names.append(word.split("|"))
        found.update(tuple(combo) for combo in _combinations(names))
    return found


def _combinations(names: list[list[str]]) -> list[tuple[str, ...]]:
    combos: list[tuple[str, ...]] = [()]
    for choices in names:
        combos = [(*combo, choice) for combo in combos for choice in choices]
    return combos


def cli_commands() -> set[tuple[str, ...]]:
    """Every leaf command of `sftkit`, as its path of names."""

    def walk(command: Any, path: tuple[str, ...]) -> set[tuple[str, ...]]:
        if not hasattr(command, "resolve_command"):
            return {path}
        return {leaf for name, sub in command.commands.items() for leaf in walk(sub, (*path, name))}

    return walk(typer.main.get_command(app), ())


def test_the_readme_command_table_is_the_command_line() -> None:
    table = table_commands((REPO / "README.md").read_text(encoding="utf-8"))
    assert table == cli_commands()
