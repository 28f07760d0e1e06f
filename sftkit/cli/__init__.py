"""The `sftkit` command line: parse, validate, call one library function.

Heavy libraries (torch, transformers, trl, datasets) are imported inside the commands so that
`sftkit --help` answers instantly. Any `SftkitError` becomes one line per problem on stderr and exit
code 2; nothing else is caught, so a bug still shows its traceback.

Modules: `app` (the Typer apps, help formatting, shared options, config loading), `data` (`sftkit data ...`),
`models` (`sftkit models fetch|path`),
`evaluation` (eval, predict, report); the rest of the commands are here.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from sftkit.cli import data as _data  # noqa: F401  (registers `sftkit data ...`)
from sftkit.cli import models as _models  # noqa: F401  (registers `sftkit models ...`)
from sftkit.cli.app import LLAMAFACTORY_ARGS, LooseConfigArg, SetOpt, app, command, load, split_command_line
from sftkit.errors import SftkitError, gather


@command(context_settings=LLAMAFACTORY_ARGS)
def train(
    ctx: typer.Context,
    config: LooseConfigArg = None,
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Train into a non-empty output_dir, replacing it.")] = False,
    resume: Annotated[
        str | None,
        typer.Option(help="Continue from a checkpoint: 'latest' (the newest complete one in output_dir) or a path."),
    ] = None,
) -> None:
    """Fine-tune a model as the config says: data -> model -> adapter -> TRL SFTTrainer -> save.

    LLaMA-Factory's forms work too: `sftkit train X.yaml learning_rate=1e-5`, `sftkit train --model_name_or_path M
    --dataset D --output_dir O`. With several GPUs (or FORCE_TORCHRUN=1) it starts torchrun itself: NNODES,
    NODE_RANK, NPROC_PER_NODE, MASTER_ADDR, MASTER_PORT as LLaMA-Factory reads them.
    """
    path, overrides = split_command_line(config, ctx.args)
    cfg = load(path, [*overrides, *(set_ or [])])  # every problem before any process starts
    from sftkit.training.launch import run_torchrun, torchrun_command

    command_line = torchrun_command(sys.argv[2:] if sys.argv[1:2] == ["train"] else [*sys.argv[1:]])
    if command_line is not None:
        typer.echo(f"starting torchrun: {shlex.join(command_line[1:])}", err=True)
        raise SystemExit(run_torchrun(command_line))
    from sftkit.training import train as run

    run(cfg, overwrite=overwrite, resume=resume if resume is not None else cfg.resume)


@command(context_settings=LLAMAFACTORY_ARGS)
def validate(ctx: typer.Context, config: LooseConfigArg = None, set_: SetOpt = None) -> None:
    """Check the config, every dataset, the model's files (no weights loaded) and that the template can train on
    every row. Overrides as for train: key=value after the file, or --key value without one."""
    path, overrides = split_command_line(config, ctx.args)
    cfg = load(path, [*overrides, *(set_ or [])])
    config = str(path) if path is not None else "the command line"
    from sftkit.config import check_prequantized, config_notes, environment_notes, machine_problems
    from sftkit.data import validate_setup

    _, report = gather(lambda: check_prequantized(cfg), lambda: validate_setup(cfg))
    for line in machine_problems(cfg):  # the file is right, this machine cannot run it: `train` stops on these
        typer.echo(f"warning: {line}", err=True)
    from sftkit.training.distributed import deepspeed_note

    for line in [*config_notes(cfg), *filter(None, [deepspeed_note(cfg)])]:
        typer.echo(f"note: {line}", err=True)
    for note in environment_notes(cfg):  # settings this machine will not honour, that need not stop a run
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"{config}: OK ({report})")


@command()
def merge(
    run_dir: Annotated[Path, typer.Argument(help="Training output_dir holding the adapter.")],
    out: Annotated[Path | None, typer.Option(help="Where to write the merged model (default RUN_DIR/merged).")] = None,
    dtype: Annotated[
        str | None, typer.Option(help="bf16, fp16 or fp32 (default: the dtype the base model is stored in).")
    ] = None,
    max_shard_size: Annotated[str, typer.Option(help="Largest safetensors shard, e.g. 2GB.")] = "2GB",
    base: Annotated[
        str | None, typer.Option(help="Base model path or hub id (default: from the run's config).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
) -> None:
    """Fold the LoRA adapter into the base model and export it, verified against base+adapter."""
    from sftkit.merge import merge as run

    run(run_dir, out=out, dtype=dtype, max_shard_size=max_shard_size, base=base, overwrite=overwrite)


@command()
def export(
    model: Annotated[
        str, typer.Argument(help="Run directory (its adapter is merged in memory), merged model, or base model.")
    ],
    format_: Annotated[
        str,
        typer.Option(
            "--format",
            help="gguf (one file for llama.cpp) or ollama (a folder: the GGUF "
            "file and a Modelfile for `ollama create`).",
        ),
    ] = "gguf",
    out: Annotated[
        Path | None,
        typer.Option(help="The .gguf file (gguf) or the folder (ollama); default beside MODEL, named after it."),
    ] = None,
    outtype: Annotated[
        str,
        typer.Option(
            help="Weight type: f32, f16, bf16 (llama.cpp's converter) or q8_0, q6_k, q5_k_m, "
            "q4_k_m (llama.cpp's quantizer)."
        ),
    ] = "f16",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
    verify: Annotated[
        bool,
        typer.Option(
            help="Load the file with llama.cpp (llama-cpp-python, f16 KV cache) and compare logits and greedy "
            "tokens with transformers on four prompts; --no-verify skips it."
        ),
    ] = True,
) -> None:
    """Export to GGUF (llama.cpp) or Ollama, checked by llama.cpp against transformers before it is kept."""
    from sftkit.export import export as run

    run(model, fmt=format_, out=out, outtype=outtype, overwrite=overwrite, check=verify)


@command()
def chat(
    model: Annotated[str, typer.Argument(help="Run directory, merged model directory, or base model path/hub id.")],
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    prompt: Annotated[str | None, typer.Option(help="Answer this one prompt and exit.")] = None,
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

    run(
        model,
        system=system,
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        repl=repl,
    )


@command()
def serve(
    model: Annotated[str, typer.Argument(help="Run directory, merged model directory, or base model path/hub id.")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="SFTKIT_API_KEY", show_envvar=True, help="Require 'Authorization: Bearer KEY' on every /v1 route."
        ),
    ] = None,
    max_queue: Annotated[int, typer.Option(help="Requests that may wait for the model; more get 503.")] = 32,
    backend: Annotated[str, typer.Option(help="transformers, or vllm (needs vllm and a CUDA GPU).")] = "transformers",
    max_batch: Annotated[
        int | None,
        typer.Option(
            help="Requests answered together in one batched generation (default: 8 on a CUDA GPU, 1 on the CPU)."
        ),
    ] = None,
) -> None:
    """Serve a model with OpenAI's API: /v1/chat/completions (trained template), /v1/completions, /v1/models."""
    from sftkit.serve import serve as run

    run(model, host=host, port=port, api_key=api_key, max_queue=max_queue, backend=backend, max_batch=max_batch)


@command()
def webui(
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 7860,
    share: Annotated[
        bool,
        typer.Option(
            help="Also a public Gradio share link, which needs the same per-launch token (never on by default)."
        ),
    ] = False,
    config_dir: Annotated[
        Path, typer.Option(help="Folder for the YAML configs the page runs, its logs and data statistics.")
    ] = Path("sftkit_webui"),
    model: Annotated[str, typer.Option(help="Model path or hub id the form starts with.")] = "",
    dataset_dir: Annotated[str, typer.Option(help="Folder whose dataset_info.json the form lists.")] = "data",
    output_dir: Annotated[
        str,
        typer.Option(
            help="The first run's output_dir (default: runs/train_<date-time>; each "
            "Start gets a fresh folder beside it); its parent is the Runs "
            "tab's folder."
        ),
    ] = "",
) -> None:
    """A web page (Gradio) to configure, start, watch, compare, chat with and export runs; each action shows its
    sftkit command."""
    from sftkit.webui import webui as run

    run(
        host=host,
        port=port,
        share=share,
        config_dir=config_dir,
        model=model,
        dataset_dir=dataset_dir,
        output_dir=output_dir,
    )


from sftkit.cli import evaluation as _evaluation  # noqa: E402,F401  (registers eval, predict, report after serve)


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
