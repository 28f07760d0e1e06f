"""`sftkit data ...`: preview, stats, clean, generate and export the training data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from sftkit.cli.app import ConfigArg, OverwriteOpt, SetOpt, data_command, load
from sftkit.errors import SftkitError


@data_command("preview")
def data_preview(
    config: ConfigArg,
    n: Annotated[int, typer.Option("-n", help="Examples to show.")] = 3,
    set_: SetOpt = None,
) -> None:
    """Show N rendered examples with the trained spans marked, then dataset statistics."""
    from sftkit.data import preview
    from sftkit.run_dir import shell_command

    preview(load(config, set_), n=n, color=sys.stdout.isatty(), stats_command=shell_command("data", "stats", config))


@data_command("stats")
def data_stats(
    config: ConfigArg,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for data_stats.json and the PNG plots (default: data_stats_<config name> here)."),
    ] = None,
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace the statistics an earlier run wrote to --out.")] = False,
) -> None:
    """Per dataset and overall: rows, turns, tokens, lengths, trained share, truncation, duplicates, languages;
    JSON, PNG plots and a summary."""
    from sftkit.data.quality.commands import stats

    stats(load(config, set_), out or Path(f"data_stats_{config.stem}"), overwrite)


@data_command("clean")
def data_clean(
    config: ConfigArg,
    out: Annotated[Path, typer.Option(help="New folder for the cleaned datasets, dataset_info.json and the report.")],
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier `data clean` output at --out.")] = False,
) -> None:
    """Drop duplicates, leaks and rows failing the clean_* filters; write the kept rows and why each other went."""
    from sftkit.data.quality.commands import clean

    clean(load(config, set_), out, overwrite)


@data_command("generate")
def data_generate(
    seeds: Annotated[
        Path, typer.Argument(help="Seed examples: Alpaca rows (instruction, input, output), .json/.jsonl.")
    ],
    out: Annotated[Path, typer.Option(help="JSONL file the rows are appended to (an existing one is resumed).")],
    base_url: Annotated[str, typer.Option(help="OpenAI-compatible API base URL, e.g. http://127.0.0.1:8000/v1.")],
    model: Annotated[str, typer.Option(help="Model name the endpoint serves.")],
    n: Annotated[int, typer.Option("-n", help="Rows the output file should hold.")] = 100,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the API key.")] = "OPENAI_API_KEY",
    name: Annotated[str | None, typer.Option(help="Registry name (default: the output file's stem).")] = None,
    temperature: Annotated[float, typer.Option(help="Sampling temperature of the requests.")] = 1.0,
    rouge_threshold: Annotated[
        float, typer.Option(help="Drop a new instruction whose ROUGE-L with any in the pool is above this.")
    ] = 0.7,
    attempts: Annotated[int, typer.Option(help="Answers asked for per row when one is malformed.")] = 3,
    backoff: Annotated[float, typer.Option(help="Seconds before asking again; doubles each time.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the example sampling.")] = 0,
    timeout: Annotated[
        float,
        typer.Option(
            help="Seconds one request may take before it is tried again; a line says when the endpoint is slow."
        ),
    ] = 60.0,
) -> None:
    """Self-instruct: new Alpaca rows from seed examples via an OpenAI-compatible endpoint, with its registry entry."""
    from sftkit.data.quality.commands import generate_rows
    from sftkit.data.quality.generate import GenerateSettings

    if n < 1 or attempts < 1 or backoff < 0 or not 0 < rouge_threshold <= 1 or not timeout > 0:
        raise SftkitError(
            "-n and --attempts must be at least 1, --backoff at least 0, --rouge-threshold in (0, 1], "
            "--timeout more than 0"
        )
    generate_rows(
        seeds,
        out,
        GenerateSettings(
            base_url=base_url,
            model=model,
            api_key_env=api_key_env,
            rows=n,
            temperature=temperature,
            rouge_threshold=rouge_threshold,
            attempts=attempts,
            backoff=backoff,
            seed=seed,
            timeout=timeout,
        ),
        name,
    )


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
    export(load(config, set_), out=out, split=split)
