"""The `sftkit` command line: parse, validate, call one library function.

Heavy libraries (torch, transformers, trl, datasets) are imported inside the commands so that
`sftkit --help` answers instantly. Any `SftkitError` becomes one line per problem on stderr and exit
code 2; nothing else is caught, so a bug still shows its traceback.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperOption

from sftkit.errors import SftkitError

app = typer.Typer(
    help="Config-driven supervised fine-tuning: `sftkit train CONFIG`, then `sftkit merge` and `sftkit chat`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Look at the training data: rendered examples, masks and statistics.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")



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

ConfigArg = Annotated[Path, typer.Argument(help="YAML config file (see `sftkit keys`).")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override a config key, e.g. --set learning_rate=1e-4 (repeatable).")]


OverwriteOpt = Annotated[bool, typer.Option(help="Replace the output file if it exists.")]
ModelConfigOpt = Annotated[Optional[Path], typer.Option(
    help="Config whose datasets, template and masks are used (default: the run's own sftkit_config.yaml).")]


def _load(config: Path, overrides: Optional[list[str]]):  # -> SftConfig, kept light for --help
    from sftkit.config import load_config

    return load_config(config, overrides or [])


def _model_config(model: str, config: Optional[Path], overrides: Optional[list[str]]):  # -> SftConfig
    """--config, else the config a run or merged folder records (sftkit_config.yaml)."""
    from sftkit.run_dir import CONFIG_FILE, has_run_config

    if config is None:
        if not has_run_config(Path(model)):
            raise SftkitError(f"--config: {model} holds no {CONFIG_FILE}, so name the config whose data to use")
        config = Path(model) / CONFIG_FILE
    return _load(config, overrides)


@command()
def train(
    config: ConfigArg,
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Train into a non-empty output_dir, replacing it.")] = False,
    resume: Annotated[Optional[str], typer.Option(
        help="Continue from a checkpoint: 'latest' (the newest complete one in output_dir) or a path.")] = None,
) -> None:
    """Fine-tune a model as the config says: data -> model -> adapter -> TRL SFTTrainer -> save."""
    cfg = _load(config, set_)
    from sftkit.training import train as run

    run(cfg, overwrite=overwrite, resume=resume)


@command()
def validate(config: ConfigArg, set_: SetOpt = None) -> None:
    """Check the config, every dataset, the model's files (no weights loaded) and that the template can train on
    every row."""
    cfg = _load(config, set_)
    from sftkit.config import check_environment
    from sftkit.data import validate_setup
    from sftkit.errors import gather

    from sftkit.config.environment import cannot_run_here

    _, report = gather(lambda: check_environment(cfg), lambda: validate_setup(cfg))
    for line in cannot_run_here(cfg):  # valid, but `train` stops on it here
        typer.echo(f"warning: {config}: {line}", err=True)
    typer.echo(f"{config}: OK ({report})")


@data_command("preview")
def data_preview(
    config: ConfigArg,
    n: Annotated[int, typer.Option("-n", help="Examples to show.")] = 3,
    set_: SetOpt = None,
) -> None:
    """Show N rendered examples with the trained spans marked, then dataset statistics."""
    from sftkit.data import preview

    preview(_load(config, set_), n=n, color=sys.stdout.isatty())


@data_command("export")
def data_export(
    config: ConfigArg,
    out: Annotated[Path, typer.Option(help="JSONL file to write (one row per example, before packing).")],
    split: Annotated[str, typer.Option(help="train or eval.")] = "train",
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write input_ids, labels, dataset and source row index of every example as JSONL."""
    from sftkit.data import export
    from sftkit.run_dir import check_new_output

    if split not in ("train", "eval"):
        raise SftkitError(f"--split {split!r}: use train or eval")
    check_new_output(out, overwrite)
    export(_load(config, set_), out=out, split=split)


@command()
def merge(
    run_dir: Annotated[Path, typer.Argument(help="Training output_dir holding the adapter.")],
    out: Annotated[Optional[Path], typer.Option(help="Where to write the merged model (default RUN_DIR/merged).")] = None,
    dtype: Annotated[Optional[str], typer.Option(
        help="bf16, fp16 or fp32 (default: the dtype the base model is stored in).")] = None,
    max_shard_size: Annotated[str, typer.Option(help="Largest safetensors shard, e.g. 2GB.")] = "2GB",
    base: Annotated[Optional[str], typer.Option(help="Base model path or hub id (default: from the run's config).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
) -> None:
    """Fold the LoRA adapter into the base model and export it, verified against base+adapter."""
    from sftkit.merge import merge as run

    run(run_dir, out=out, dtype=dtype, max_shard_size=max_shard_size, base=base, overwrite=overwrite)


@command()
def chat(
    model: Annotated[str, typer.Argument(help="Run directory, merged model directory, or base model path/hub id.")],
    system: Annotated[Optional[str], typer.Option(help="System prompt.")] = None,
    prompt: Annotated[Optional[str], typer.Option(help="Answer this one prompt and exit.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 for greedy decoding.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    repl: Annotated[bool, typer.Option(help="Interactive conversation even when stdin is not a terminal.")] = False,
) -> None:
    """Talk to a model with the template it was trained on.

    On a terminal: a conversation (/reset, /system TEXT, /exit; Ctrl-C stops an answer, Ctrl-D leaves).
    Otherwise each stdin line is a prompt answered on its own, one answer per prompt.
    """
    from sftkit.chat import chat as run

    run(model, system=system, prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature,
        top_p=top_p, seed=seed, repl=repl)


@command("eval")
def eval_(
    model: Annotated[str, typer.Argument(help="Run directory, merged model, or base model.")],
    config: ModelConfigOpt = None,
    split: Annotated[str, typer.Option(help="eval or train.")] = "eval",
    dataset: Annotated[Optional[str], typer.Option(
        help="Evaluate every row of this registered dataset instead of a split.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="JSON file for the results (default: eval_<model>_<split>.json in the working directory).")] = None,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Loss and perplexity on the masked tokens of a dataset (compare base and fine-tuned)."""
    from sftkit.evaluate import evaluate

    evaluate(model, _model_config(model, config, set_), split=split, dataset=dataset, out=out, overwrite=overwrite)


@command()
def predict(
    model: Annotated[str, typer.Argument(help="Run directory, merged model, or base model.")],
    out: Annotated[Path, typer.Option(help="JSONL file of prompt, reference and generation.")],
    config: ModelConfigOpt = None,
    n: Annotated[int, typer.Option("-n", help="Prompts to answer.")] = 20,
    split: Annotated[str, typer.Option(help="eval or train.")] = "eval",
    compare: Annotated[Optional[str], typer.Option(help="A second model answering the same prompts.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 for greedy decoding.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Prompts generated together (left padded).")] = 16,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Generate answers for a dataset's prompts and score them (BLEU-4, ROUGE-1/2/L)."""
    from sftkit.evaluate import predict as run

    run(model, _model_config(model, config, set_), out=out, n=n, split=split, compare=compare,
        max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, batch_size=batch_size, overwrite=overwrite)


@command()
def keys() -> None:
    """List every config key with its default and meaning."""
    from sftkit.config import field_docs

    current = None
    for group, name, default, type_name, doc in field_docs():
        if group != current:
            current = group
            typer.echo(f"\n[{group}]")
        typer.echo(f"  {name} ({type_name}, default {default!r})\n      {doc}")


def main() -> None:
    """Console entry point: user errors become exit code 2 with one line per problem."""
    from sftkit.quiet import quiet_known_noise

    quiet_known_noise()
    try:
        app()
    except SftkitError as exc:
        for line in exc.problems or [str(exc)]:
            typer.echo(f"error: {line}", err=True)
        raise SystemExit(2) from None
