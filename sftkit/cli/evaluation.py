"""`sftkit eval`, `predict` and `report`: measuring a trained model (loss, benchmarks, ratings, a judge, the release
checklist)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sftkit.cli.app import ModelConfigOpt, OverwriteOpt, SetOpt, command, model_config
from sftkit.errors import SftkitError

JudgeUrlOpt = Annotated[
    str | None,
    typer.Option(
        help="An OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1) whose model judges the answers; off unless "
        "given."
    ),
]
JudgeModelOpt = Annotated[str | None, typer.Option(help="The judge's model name at --judge-url.")]
JudgeKeyOpt = Annotated[str, typer.Option(help="Environment variable holding the judge endpoint's API key.")]
JudgeCacheOpt = Annotated[
    Path | None,
    typer.Option(help="JSONL cache of the judge's verdicts (default: judge_cache.jsonl in the working directory)."),
]
JudgeTimeoutOpt = Annotated[
    float, typer.Option(help="Seconds one judge request may take (tried twice); a line says when the endpoint is slow.")
]


def _judge(
    url: str | None, model: str | None, key_env: str, cache: Path | None, timeout: float = 60.0
):  # -> Judge | None
    if url is None and model is None:
        return None
    if url is None or model is None:
        raise SftkitError("--judge-url and --judge-model: give both to use a judge (or neither)")
    from sftkit.evaluate import Judge

    if not timeout > 0:
        raise SftkitError(f"--judge-timeout {timeout}: must be more than 0 seconds")
    return Judge(url, model, cache or Path("judge_cache.jsonl"), key_env, timeout)


@command("eval")
def eval_(
    model: Annotated[str | None, typer.Argument(help="Run directory, merged model, or base model.")] = None,
    config: ModelConfigOpt = None,
    split: Annotated[str, typer.Option(help="eval or train.")] = "eval",
    dataset: Annotated[
        str | None, typer.Option(help="Evaluate every row of this registered dataset instead of a split.")
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(
            help="lm-eval tasks instead of the loss, comma-separated (offline: sftkit_mc, sftkit_gen, or your own)."
        ),
    ] = None,
    compare: Annotated[
        str | None, typer.Option(help="With --tasks: also score this model and print the deltas.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="With --tasks: score the first N documents of each task.")] = None,
    include_path: Annotated[
        Path | None, typer.Option(help="With --tasks: a folder of your own lm-eval task YAMLs.")
    ] = None,
    chat_template: Annotated[
        str, typer.Option(help="With --tasks: auto (generation tasks and tasks marked chat: true), always or never.")
    ] = "auto",
    ratings: Annotated[
        list[Path] | None,
        typer.Option(help="Read filled rating sheets back (repeatable, one per rater) instead of evaluating a model."),
    ] = None,
    key: Annotated[
        Path | None, typer.Option(help="With --ratings: the sheet's key (default: beside the first sheet).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="JSON file for the results (default: eval_<model>_<split>.json in the working directory; with --tasks "
            "benchmarks.json in a run folder)."
        ),
    ] = None,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Loss and perplexity on the masked tokens of a dataset (compare base and fine-tuned); benchmarks with --tasks;
    filled rating sheets with --ratings."""
    only = {"--compare": compare, "--limit": limit, "--include-path": include_path} if tasks is None else {}
    misplaced = [f"{name}: goes with --tasks" for name, value in only.items() if value is not None] + (
        ["--key: goes with --ratings"] if key is not None and not ratings else []
    )
    if misplaced:
        raise SftkitError(*misplaced)
    if ratings:
        from sftkit.evaluate import read_ratings

        read_ratings(list(ratings), key=key, out=out, overwrite=overwrite)
        return
    if model is None:
        raise SftkitError("MODEL: name the model to evaluate (or read rating sheets with --ratings FILE)")
    cfg = model_config(model, config, set_)
    if tasks is not None:
        from sftkit.evaluate import benchmark

        benchmark(
            model,
            cfg,
            [t.strip() for t in tasks.split(",") if t.strip()],
            compare=compare,
            limit=limit,
            include_path=include_path,
            chat=chat_template,
            out=out,
            overwrite=overwrite,
        )
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
    compare: Annotated[str | None, typer.Option(help="A second model answering the same prompts.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 for greedy decoding.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Prompts generated together (left padded).")] = 16,
    sheet: Annotated[
        Path | None,
        typer.Option(help="With --compare: a blind rating sheet (CSV, an HTML page beside it, and its key file)."),
    ] = None,
    judge_url: JudgeUrlOpt = None,
    judge_model: JudgeModelOpt = None,
    judge_key_env: JudgeKeyOpt = "OPENAI_API_KEY",
    judge_cache: JudgeCacheOpt = None,
    judge_timeout: JudgeTimeoutOpt = 60.0,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Generate answers for a dataset's prompts and score them (BLEU-4, ROUGE-1/2/L); a rating sheet and an LLM
    judge on request."""
    from sftkit.evaluate import predict as run

    judge = _judge(judge_url, judge_model, judge_key_env, judge_cache, judge_timeout)
    run(
        model,
        model_config(model, config, set_),
        out=out,
        n=n,
        split=split,
        compare=compare,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        batch_size=batch_size,
        overwrite=overwrite,
        sheet=sheet,
        judge=judge,
    )


@command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Training output_dir (or a merged model folder).")],
    config: ModelConfigOpt = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per sampled answer.")] = 64,
    judge_url: JudgeUrlOpt = None,
    judge_model: JudgeModelOpt = None,
    judge_key_env: JudgeKeyOpt = "OPENAI_API_KEY",
    judge_cache: JudgeCacheOpt = None,
    judge_timeout: JudgeTimeoutOpt = 60.0,
    set_: SetOpt = None,
) -> None:
    """The release checklist: pass / fail / not measured per line, with the numbers; written into the run."""
    from sftkit.evaluate import release_report
    from sftkit.run_dir import check_writable_into, not_a_run

    if not run_dir.is_dir():
        raise SftkitError(f"RUN_DIR {run_dir}: no such directory; point at the output_dir of an `sftkit train` run")
    check_writable_into(run_dir, "the release checklist", not_a_run)  # a base model's folder and card stay its own
    judge = _judge(judge_url, judge_model, judge_key_env, judge_cache, judge_timeout)
    release_report(run_dir, model_config(str(run_dir), config, set_), judge=judge, max_new_tokens=max_new_tokens)
