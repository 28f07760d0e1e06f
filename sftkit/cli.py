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

from sftkit.errors import SftkitError, gather

app = typer.Typer(
    help="Config-driven supervised fine-tuning: `sftkit train CONFIG`, then `sftkit merge` and `sftkit chat`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Look at, measure, clean and generate the training data.",
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

    run(cfg, overwrite=overwrite, resume=resume if resume is not None else cfg.resume)


@command()
def validate(config: ConfigArg, set_: SetOpt = None) -> None:
    """Check the config, every dataset, the model's files (no weights loaded) and that the template can train on
    every row."""
    cfg = _load(config, set_)
    from sftkit.config import check_prequantized, config_notes, environment_notes, machine_problems
    from sftkit.data import validate_setup

    _, report = gather(lambda: check_prequantized(cfg), lambda: validate_setup(cfg))
    for line in machine_problems(cfg):  # the file is right, this machine cannot run it: `train` stops on these
        typer.echo(f"warning: {line}", err=True)
    for line in config_notes(cfg):
        typer.echo(f"note: {line}", err=True)
    for note in environment_notes(cfg):  # settings this machine will not honour, that need not stop a run
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"{config}: OK ({report})")


@data_command("preview")
def data_preview(
    config: ConfigArg,
    n: Annotated[int, typer.Option("-n", help="Examples to show.")] = 3,
    set_: SetOpt = None,
) -> None:
    """Show N rendered examples with the trained spans marked, then dataset statistics."""
    from sftkit.data import preview
    from sftkit.run_dir import shell_command

    preview(_load(config, set_), n=n, color=sys.stdout.isatty(), stats_command=shell_command("data", "stats", config))


@data_command("stats")
def data_stats(
    config: ConfigArg,
    out: Annotated[Optional[Path], typer.Option(
        help="Folder for data_stats.json and the PNG plots (default: data_stats_<config name> here).")] = None,
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace the statistics an earlier run wrote to --out.")] = False,
) -> None:
    """Per dataset and overall: rows, turns, tokens, lengths, trained share, truncation, duplicates, languages;
    JSON, PNG plots and a summary."""
    from sftkit.data.quality.commands import stats

    stats(_load(config, set_), out or Path(f"data_stats_{config.stem}"), overwrite)


@data_command("clean")
def data_clean(
    config: ConfigArg,
    out: Annotated[Path, typer.Option(help="New folder for the cleaned datasets, dataset_info.json and the report.")],
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier `data clean` output at --out.")] = False,
) -> None:
    """Drop duplicates, leaks and rows failing the clean_* filters; write the kept rows and why each other went."""
    from sftkit.data.quality.commands import clean

    clean(_load(config, set_), out, overwrite)


@data_command("generate")
def data_generate(
    seeds: Annotated[Path, typer.Argument(help="Seed examples: Alpaca rows (instruction, input, output), .json/.jsonl.")],
    out: Annotated[Path, typer.Option(help="JSONL file the rows are appended to (an existing one is resumed).")],
    base_url: Annotated[str, typer.Option(help="OpenAI-compatible API base URL, e.g. http://127.0.0.1:8000/v1.")],
    model: Annotated[str, typer.Option(help="Model name the endpoint serves.")],
    n: Annotated[int, typer.Option("-n", help="Rows the output file should hold.")] = 100,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the API key.")] = "OPENAI_API_KEY",
    name: Annotated[Optional[str], typer.Option(help="Registry name (default: the output file's stem).")] = None,
    temperature: Annotated[float, typer.Option(help="Sampling temperature of the requests.")] = 1.0,
    rouge_threshold: Annotated[float, typer.Option(
        help="Drop a new instruction whose ROUGE-L with any in the pool is above this.")] = 0.7,
    attempts: Annotated[int, typer.Option(help="Answers asked for per row when one is malformed.")] = 3,
    backoff: Annotated[float, typer.Option(help="Seconds before asking again; doubles each time.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the example sampling.")] = 0,
) -> None:
    """Self-instruct: new Alpaca rows from seed examples via an OpenAI-compatible endpoint, with its registry entry."""
    from sftkit.data.quality.commands import generate_rows
    from sftkit.data.quality.generate import GenerateSettings

    if n < 1 or attempts < 1 or backoff < 0 or not 0 < rouge_threshold <= 1:
        raise SftkitError("-n and --attempts must be at least 1, --backoff at least 0, --rouge-threshold in (0, 1]")
    generate_rows(seeds, out, GenerateSettings(base_url=base_url, model=model, api_key_env=api_key_env, rows=n,
                                               temperature=temperature, rouge_threshold=rouge_threshold,
                                               attempts=attempts, backoff=backoff, seed=seed), name)


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
def export(
    model: Annotated[str, typer.Argument(help="Run directory (its adapter is merged in memory), merged model, or base model.")],
    format_: Annotated[str, typer.Option("--format", help="gguf (one file for llama.cpp) or ollama (a folder: the GGUF "
                                                          "file and a Modelfile for `ollama create`).")] = "gguf",
    out: Annotated[Optional[Path], typer.Option(
        help="The .gguf file (gguf) or the folder (ollama); default beside MODEL, named after it.")] = None,
    outtype: Annotated[str, typer.Option(help="Weight type: f32, f16, bf16 or q8_0 (norms stay f32).")] = "f16",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
    verify: Annotated[bool, typer.Option(
        help="Load the file with llama.cpp (llama-cpp-python) and compare logits and 32 greedy tokens with "
             "transformers; --no-verify skips it.")] = True,
) -> None:
    """Export to GGUF (llama.cpp) or Ollama, checked by llama.cpp against transformers before it is kept."""
    from sftkit.export import export as run

    run(model, fmt=format_, out=out, outtype=outtype, overwrite=overwrite, check=verify)


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


@command()
def serve(
    model: Annotated[str, typer.Argument(help="Run directory, merged model directory, or base model path/hub id.")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(
        envvar="SFTKIT_API_KEY", show_envvar=True,
        help="Require 'Authorization: Bearer KEY' on every /v1 route.")] = None,
    max_queue: Annotated[int, typer.Option(help="Requests that may wait for the model; more get 503.")] = 32,
    backend: Annotated[str, typer.Option(help="transformers, or vllm (needs vllm and a CUDA GPU).")] = "transformers",
) -> None:
    """Serve a model with OpenAI's API: /v1/chat/completions (trained template), /v1/completions, /v1/models."""
    from sftkit.serve import serve as run

    run(model, host=host, port=port, api_key=api_key, max_queue=max_queue, backend=backend)


JudgeUrlOpt = Annotated[Optional[str], typer.Option(
    help="An OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1) whose model judges the answers; off unless "
    "given.")]
JudgeModelOpt = Annotated[Optional[str], typer.Option(help="The judge's model name at --judge-url.")]
JudgeKeyOpt = Annotated[str, typer.Option(help="Environment variable holding the judge endpoint's API key.")]
JudgeCacheOpt = Annotated[Optional[Path], typer.Option(
    help="JSONL cache of the judge's verdicts (default: judge_cache.jsonl in the working directory).")]


def _judge(url: Optional[str], model: Optional[str], key_env: str, cache: Optional[Path]):  # -> Judge | None
    if url is None and model is None:
        return None
    if url is None or model is None:
        raise SftkitError("--judge-url and --judge-model: give both to use a judge (or neither)")
    from sftkit.evaluate import Judge

    return Judge(url, model, cache or Path("judge_cache.jsonl"), key_env)


@command("eval")
def eval_(
    model: Annotated[Optional[str], typer.Argument(help="Run directory, merged model, or base model.")] = None,
    config: ModelConfigOpt = None,
    split: Annotated[str, typer.Option(help="eval or train.")] = "eval",
    dataset: Annotated[Optional[str], typer.Option(
        help="Evaluate every row of this registered dataset instead of a split.")] = None,
    tasks: Annotated[Optional[str], typer.Option(
        help="lm-eval tasks instead of the loss, comma-separated (offline: sftkit_mc, sftkit_gen, or your own).")
    ] = None,
    compare: Annotated[Optional[str], typer.Option(help="With --tasks: also score this model and print the deltas.")]
    = None,
    limit: Annotated[Optional[int], typer.Option(help="With --tasks: score the first N documents of each task.")]
    = None,
    include_path: Annotated[Optional[Path], typer.Option(help="With --tasks: a folder of your own lm-eval task "
                                                                "YAMLs.")] = None,
    chat_template: Annotated[str, typer.Option(
        help="With --tasks: auto (generation tasks and tasks marked chat: true), always or never.")] = "auto",
    ratings: Annotated[Optional[list[Path]], typer.Option(
        help="Read filled rating sheets back (repeatable, one per rater) instead of evaluating a model.")] = None,
    key: Annotated[Optional[Path], typer.Option(help="With --ratings: the sheet's key (default: beside the first "
                                                     "sheet).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="JSON file for the results (default: eval_<model>_<split>.json in the working directory; with --tasks "
        "benchmarks.json in a run folder).")] = None,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Loss and perplexity on the masked tokens of a dataset (compare base and fine-tuned); benchmarks with --tasks;
    filled rating sheets with --ratings."""
    only = {"--compare": compare, "--limit": limit, "--include-path": include_path} if tasks is None else {}
    misplaced = [f"{name}: goes with --tasks" for name, value in only.items() if value is not None] + (
        ["--key: goes with --ratings"] if key is not None and not ratings else [])
    if misplaced:
        raise SftkitError(*misplaced)
    if ratings:
        from sftkit.evaluate import read_ratings

        read_ratings(list(ratings), key=key, out=out, overwrite=overwrite)
        return
    if model is None:
        raise SftkitError("MODEL: name the model to evaluate (or read rating sheets with --ratings FILE)")
    cfg = _model_config(model, config, set_)
    if tasks is not None:
        from sftkit.evaluate import benchmark

        benchmark(model, cfg, [t.strip() for t in tasks.split(",") if t.strip()], compare=compare, limit=limit,
                  include_path=include_path, chat=chat_template, out=out, overwrite=overwrite)
        return
    from sftkit.evaluate import evaluate

    evaluate(model, cfg, split=split, dataset=dataset, out=out, overwrite=overwrite)


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
    sheet: Annotated[Optional[Path], typer.Option(
        help="With --compare: a blind rating sheet (CSV, an HTML page beside it, and its key file).")] = None,
    judge_url: JudgeUrlOpt = None,
    judge_model: JudgeModelOpt = None,
    judge_key_env: JudgeKeyOpt = "OPENAI_API_KEY",
    judge_cache: JudgeCacheOpt = None,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Generate answers for a dataset's prompts and score them (BLEU-4, ROUGE-1/2/L); a rating sheet and an LLM
    judge on request."""
    from sftkit.evaluate import predict as run

    judge = _judge(judge_url, judge_model, judge_key_env, judge_cache)
    run(model, _model_config(model, config, set_), out=out, n=n, split=split, compare=compare,
        max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, batch_size=batch_size, overwrite=overwrite,
        sheet=sheet, judge=judge)


@command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Training output_dir (or a merged model folder).")],
    config: ModelConfigOpt = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per sampled answer.")] = 64,
    judge_url: JudgeUrlOpt = None,
    judge_model: JudgeModelOpt = None,
    judge_key_env: JudgeKeyOpt = "OPENAI_API_KEY",
    judge_cache: JudgeCacheOpt = None,
    set_: SetOpt = None,
) -> None:
    """The release checklist: pass / fail / not measured per line, with the numbers; written into the run."""
    from sftkit.evaluate import release_report

    if not run_dir.is_dir():
        raise SftkitError(f"RUN_DIR {run_dir}: no such directory; point at the output_dir of an `sftkit train` run")
    judge = _judge(judge_url, judge_model, judge_key_env, judge_cache)
    release_report(run_dir, _model_config(str(run_dir), config, set_), judge=judge, max_new_tokens=max_new_tokens)


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
