"""`sftkit eval MODEL --tasks`: benchmark scores through EleutherAI's lm-evaluation-harness.

The model is loaded as `sftkit eval` loads it (run directory, merged or base model, with its template) and
handed to the harness's own `HFLM` as an object; only the chat formatting and the end token come from
sftkit (`templated_lm`), so chat tasks are prompted exactly as the model was trained. Scores of a run or
merged folder are written into it (`benchmarks.json`, merged task by task with earlier ones) and its model
card; `--compare BASE` scores a second model on the same tasks and prints the deltas (forgetting shows as
negative deltas on general tasks).
"""

from __future__ import annotations

import difflib
import gc
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.atomic import write_json
from sftkit.errors import SftkitError
from sftkit.evaluate.perplexity import load_model
from sftkit.run_dir import BENCHMARKS_FILE, check_new_output, has_run_config, read_json, update_card_evaluation

if TYPE_CHECKING:
    from sftkit.config import SftConfig
    from sftkit.model import Loaded

TASKS_DIR = Path(__file__).parent / "tasks"
CHAT_MODES = ("auto", "always", "never")


def benchmark(
    model: str,
    cfg: SftConfig,
    tasks: list[str],
    compare: str | None = None,
    limit: int | None = None,
    include_path: Path | None = None,
    chat: str = "auto",
    batch_size: int = 8,
    out: Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Scores `model` (and `compare`) on lm-eval tasks; writes and prints the scores.

    Args:
        model: a run directory, a merged model directory, or a base model path or hub id.
        cfg: the config whose template a base model is prompted with.
        tasks: lm-eval task, group or tag names (sftkit's own: sftkit_mc, sftkit_gen).
        compare: a second model scored on the same tasks; the deltas are model minus compare.
        limit: score only the first this many documents of each task.
        include_path: a folder of your own lm-eval task YAMLs.
        chat: auto (generation tasks and tasks whose metadata says `chat: true` get the chat template),
            always or never.
        batch_size: requests the harness runs together.
        out: the JSON file; default `benchmarks.json` inside a run or merged folder, else
            `benchmarks_<model>.json` in the working directory.
        overwrite: replace `out` when it is not a run's own benchmarks.json.

    Returns:
        The record written: per task its metrics, and with `compare` the other model's and the deltas.

    Raises:
        SftkitError: an unknown task, a hub task while offline, or a model problem.
    """
    path = out or default_benchmarks_path(model)
    into_run = out is None and has_run_config(Path(model))
    if not into_run:
        check_new_output(path, overwrite)
    if chat not in CHAT_MODES:
        raise SftkitError(f"--chat-template {chat!r}: use {', '.join(CHAT_MODES)}")
    manager, chat_tasks = task_plan(tasks, include_path, chat)
    scores = {"model": model, "limit": limit, **score_model(model, cfg, manager, tasks, chat_tasks, limit, batch_size)}
    if compare is not None:
        scores["compare"] = {
            "model": compare,
            **score_model(compare, cfg, manager, tasks, chat_tasks, limit, batch_size),
        }
        scores["deltas"] = deltas(scores["tasks"], scores["compare"]["tasks"])
    record = merged_record(read_json(path), scores) if into_run else scores
    write_json(path, record)
    if into_run:
        update_card_evaluation(Path(model))
    print(scores_table(scores))
    print(f"wrote {path}")
    return scores


def default_benchmarks_path(model: str) -> Path:
    """Inside a run or merged folder (beside its metrics), else in the working directory."""
    if has_run_config(Path(model)):
        return Path(model) / BENCHMARKS_FILE
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/")).strip("_.") or "model"
    return Path(f"benchmarks_{slug}.json")


# ---------------------------------------------------------------------------- the tasks


def task_plan(tasks: list[str], include_path: Path | None, chat: str) -> tuple[Any, set[str]]:
    """lm-eval's TaskManager for these names, and which of them get the chat template.

    sftkit's folder (and `include_path`) is indexed first; lm-eval's own few thousand tasks, whose data lives
    on the Hugging Face hub, are indexed (about ten seconds) only when a name is not found there.

    Raises:
        SftkitError: a name no index knows, or a hub task while HF_HUB_OFFLINE is set.
    """
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise SftkitError(
            "--tasks: needs EleutherAI's lm-evaluation-harness; pip install 'sftkit[eval]' (or lm_eval)"
        ) from None
    if not tasks:
        raise SftkitError("--tasks: name at least one lm-eval task, e.g. --tasks sftkit_mc,sftkit_gen")
    paths = [TASKS_DIR, *([include_path] if include_path else [])]
    if include_path is not None and not include_path.is_dir():
        raise SftkitError(f"--include-path {include_path}: no such folder; point at a folder of lm-eval task YAMLs")
    manager = TaskManager(include_path=[str(p) for p in paths], include_defaults=False)
    missing = [name for name in tasks if name not in manager.all_tasks]
    if missing and include_path is not None:
        _check_task_yamls(include_path, missing[0])
    if missing and _offline():
        raise SftkitError(
            f"--tasks {missing[0]}: not a local task, and lm-eval's own tasks download their data from "
            "the Hugging Face hub, which HF_HUB_OFFLINE=1 turns off; run with the hub reachable, or use "
            f"a local task ({', '.join(local_tasks(manager))}, or your own YAML with --include-path DIR)"
        )
    if missing:
        manager = TaskManager(include_path=[str(p) for p in paths])
        unknown = [name for name in tasks if name not in manager.all_tasks]
        if unknown:
            close = difflib.get_close_matches(unknown[0], manager.all_tasks, n=1)
            hint = f"did you mean {close[0]}?" if close else "`lm-eval ls tasks` lists them"
            raise SftkitError(f"--tasks {unknown[0]}: no such lm-eval task, group or tag; {hint}")
    return manager, {name for name in tasks if _is_chat_task(manager.task_index[name].cfg or {}, chat)}


def _check_task_yamls(include_path: Path, name: str) -> None:
    """Names a task YAML of `include_path` that lm-eval cannot read: its index skips such a file without a word,
    and the task it defines would be reported as unknown.

    Raises:
        SftkitError: naming the file, the problem and the task looked for.
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    for path in sorted(include_path.rglob("*.yaml")):
        try:
            load_yaml(path, resolve_func=False, recursive=False)
        except Exception as exc:  # noqa: BLE001 - whatever the harness's loader raises, the file is unreadable
            problem = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise SftkitError(
                f"--include-path {path}: lm-eval cannot read this task YAML ({problem}), so "
                f"--tasks {name} may be the task it defines; fix the file"
            ) from None


def local_tasks(manager: Any) -> list[str]:
    """The task names indexed from sftkit's folder and --include-path."""
    return sorted(name for name in manager.all_subtasks)


def _is_chat_task(task_cfg: dict[str, Any], chat: str) -> bool:
    if chat != "auto":
        return chat == "always"
    metadata = task_cfg.get("metadata") if isinstance(task_cfg.get("metadata"), dict) else {}
    return task_cfg.get("output_type") == "generate_until" or bool(metadata.get("chat"))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


# ---------------------------------------------------------------------------- scoring


def score_model(
    model: str, cfg: SftConfig, manager: Any, tasks: list[str], chat_tasks: set[str], limit: int | None, batch_size: int
) -> dict[str, Any]:
    """Loads `model`, runs the harness on the chat tasks (templated) and on the others (plain), frees it."""
    import logging

    from lm_eval import simple_evaluate

    # the harness warns about every model passed as an object and every custom_dataset task: both are by design
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    loaded = load_model(model, cfg)
    scores: dict[str, Any] = {"template": loaded.template.name, "tasks": {}, "chat_template": {}}
    for templated in (True, False):
        names = [name for name in tasks if (name in chat_tasks) == templated]
        if not names:
            continue
        harness_model = harness_lm(model, loaded, batch_size, templated)
        try:
            results = simple_evaluate(
                model=harness_model,
                tasks=names,
                task_manager=manager,
                limit=limit,
                apply_chat_template=templated,
                log_samples=False,
                bootstrap_iters=0,
                verbosity=None,
            )
        except ConnectionError as exc:  # a hub dataset that cannot be fetched (offline, or not in the cache)
            raise SftkitError(
                f"--tasks {','.join(names)}: its data cannot be downloaded ({exc}); run with the hub "
                "reachable, or use a local task"
            ) from None
        for task, metrics in task_metrics(results).items():
            scores["tasks"][task] = metrics
            scores["chat_template"][task] = templated
    del loaded
    gc.collect()
    return scores


def task_metrics(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """lm-eval's results as {task: {metric: value, ..., "n": documents}}; "acc,none" becomes "acc",
    "exact_match,first-line" becomes "exact_match[first-line]"; stderr entries are left out."""
    samples = results.get("n-samples") or {}
    tasks: dict[str, dict[str, Any]] = {}
    for task, values in results["results"].items():
        metrics: dict[str, Any] = {}
        for key, value in values.items():
            name, _, filt = key.partition(",")
            if not filt or "_stderr" in name or not isinstance(value, (int, float)):
                continue
            metrics[name if filt == "none" else f"{name}[{filt}]"] = float(value)
        if task in samples:
            metrics["n"] = int(samples[task].get("effective", 0))
        tasks[task] = metrics
    return tasks


def deltas(tuned: dict[str, dict[str, Any]], base: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per task and metric: model minus compare."""
    return {
        task: {
            key: value - base[task][key] for key, value in metrics.items() if key != "n" and key in base.get(task, {})
        }
        for task, metrics in tuned.items()
    }


def merged_record(earlier: dict[str, Any] | None, scores: dict[str, Any]) -> dict[str, Any]:
    """A run's benchmarks.json: the newest scores of each task, earlier tasks kept."""
    record = dict(earlier or {})
    for key in ("tasks", "chat_template", "deltas"):
        record[key] = {**(record.get(key) or {}), **(scores.get(key) or {})}
    if "compare" in scores:
        other = record.get("compare") or {}
        record["compare"] = {
            "model": scores["compare"]["model"],
            "tasks": {**(other.get("tasks") or {}), **scores["compare"]["tasks"]},
        }
    record.update(model=scores["model"], template=scores["template"], limit=scores["limit"])
    return record


def scores_table(scores: dict[str, Any]) -> str:
    """One line per task and metric: the score, and with --compare the other model's and the delta."""
    compare = scores.get("compare")
    head = f"{'task':<22} {'metric':<28} {'n':>5} {'score':>8}"
    lines = [
        f"{scores['model']} (template {scores['template']})" + (f" vs {compare['model']}" if compare else ""),
        head + (f" {'compare':>8} {'delta':>8}" if compare else ""),
    ]
    for task, metrics in scores["tasks"].items():
        for metric, value in metrics.items():
            if metric == "n":
                continue
            line = f"{task:<22} {metric:<28} {metrics.get('n', ''):>5} {value:>8.4f}"
            if compare:
                other = compare["tasks"].get(task, {}).get(metric)
                line += f" {other:>8.4f} {value - other:>+8.4f}" if other is not None else ""
            lines.append(line)
    return "\n".join(lines)


def harness_lm(model: str, loaded: Loaded, batch_size: int, templated: bool) -> Any:
    """`templated_lm`, its refusal of a model it cannot wrap (a LoRA run's PEFT model: its tied weights are not
    found) as one line.

    Raises:
        SftkitError: naming the model and the way round it.
    """
    try:
        return templated_lm(loaded, batch_size, templated)
    except (AttributeError, TypeError, ValueError) as exc:
        raise SftkitError(
            f"--tasks: lm-eval cannot wrap {model} ({(str(exc).splitlines() or [''])[0][:200]}); "
            f"merge it first (sftkit merge {model} --out DIR) and score DIR"
        ) from None


def templated_lm(loaded: Loaded, batch_size: int, templated: bool) -> Any:
    """The harness's own HF model over an already loaded model; chat tasks are prompted with sftkit's template.

    Templated prompts already hold every control token the template writes (its bos included), and training
    tokenized them without the tokenizer's own special tokens; so does the harness here.
    """
    from lm_eval.models.huggingface import HFLM

    class TemplatedLM(HFLM):  # type: ignore[misc, valid-type]
        @property
        def eot_token_id(self) -> int:
            # generation ends where training taught the model to end: the template's end-of-turn token
            return loaded.template.stop_token_ids(loaded.tokenizer)[0]

        def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
            if add_generation_prompt:
                return loaded.template.generation_prompt(chat_history)
            *history, last = chat_history  # the harness continues a started assistant turn (a gen_prefix)
            return loaded.template.generation_prompt(history) + last["content"]

        def chat_template(self, chat_template: bool | str = False) -> str:
            return loaded.template.name

    return TemplatedLM(
        pretrained=loaded.model,
        tokenizer=loaded.tokenizer,
        batch_size=batch_size,
        add_bos_token=False if templated else None,
    )
