"""The run directory: what `sftkit train` writes into output_dir, and how every other stage recognises it.

Train writes it; merge, chat, eval, predict and the lifecycle read it. This module is their contract:
the file names, "is this a run (and of which kind)", reading the run's resolved config, and the command
that resumes it. Nothing heavy at import: the instant checks before training use it.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import shutil
import struct
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.atomic import place_problem, write_text
from sftkit.config import load_config
from sftkit.errors import SftkitError

if TYPE_CHECKING:
    from sftkit.config import SftConfig

CONFIG_FILE = "sftkit_config.yaml"  # the resolved config, every default filled in
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_CONFIG = "config.json"  # a complete transformers model (full fine-tuning, merged)
TRAINER_STATE = "trainer_state.json"
METRICS_FILE = "metrics.json"
PROGRESS_FILE = "progress.jsonl"  # one JSON line per logged training step or evaluation, written as the run goes
OPTIMIZER_FILE = "optimizer.pt"  # in a checkpoint: the optimizer state a resumed run continues from
SCHEDULER_FILE = "scheduler.pt"
MODEL_CARD = "README.md"  # the model card: what the folder holds and how to use it
# What the evaluation stage measured, kept beside metrics.json and summed up in the model card.
BENCHMARKS_FILE = "benchmarks.json"  # `sftkit eval --tasks`: lm-eval scores per task
HUMAN_EVAL_FILE = "human_eval.json"  # `sftkit eval --ratings`: this model's side of a filled rating sheet
RELEASE_REPORT_FILE = "release_report.json"  # `sftkit report`: the release checklist
# Files that mark a directory as an earlier training run, which --overwrite may replace.
RUN_MARKERS = (CONFIG_FILE, TRAINER_STATE, ADAPTER_CONFIG, PROGRESS_FILE)
# What `sftkit merge` writes: weights, configs, tokenizer files. A folder holding anything else is not a
# merged model, and `merge --overwrite` leaves it alone.
MERGED_FILES = (
    "*.safetensors",
    "*.json",
    "*.jinja",
    "*.model",
    "*.tiktoken",
    "merges.txt",
    "vocab.txt",
    CONFIG_FILE,
    MODEL_CARD,
)
# Held by a running `sftkit train` (beside output_dir, so a refused run leaves output_dir untouched).
LOCK_SUFFIX = ".sftkit-lock"


def is_run(path: Path) -> bool:
    """A folder an `sftkit train` run (or an earlier trainer) wrote into."""
    return any((path / marker).exists() for marker in RUN_MARKERS) or any(path.glob("checkpoint-*"))


def has_run_config(path: Path) -> bool:
    """A run or merged-model folder that records the config it was made with."""
    return (path / CONFIG_FILE).is_file()


def has_adapter(path: Path) -> bool:
    """A LoRA run: adapter config and weights."""
    return (path / ADAPTER_CONFIG).is_file() and (path / ADAPTER_WEIGHTS).is_file()


def check_lora_run(run_dir: Path) -> None:
    """Refuses anything but a LoRA run directory, naming what it is instead.

    Raises:
        SftkitError: no such folder, a complete model (nothing to merge), or not a run.
    """
    if not run_dir.is_dir():
        raise SftkitError(f"{run_dir}: no such directory; point at the output_dir of an `sftkit train` run")
    if has_adapter(run_dir):
        return
    if (run_dir / MODEL_CONFIG).is_file():
        raise SftkitError(
            f"{run_dir}: holds complete model weights (finetuning_type: full, or already "
            "merged), not a LoRA adapter: nothing to merge; use it as it is with `sftkit chat` or "
            "from_pretrained"
        )
    raise SftkitError(
        f"{run_dir}: no LoRA adapter ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}) and no full model; "
        "point at the output_dir of an `sftkit train` run"
    )


def is_merged_model(path: Path) -> str | None:
    """None when `path` holds only what `sftkit merge` writes; else why it is not a merged model."""
    for entry in sorted(path.iterdir()):
        if (
            entry.name in (TRAINER_STATE, ADAPTER_CONFIG)
            or entry.is_dir()
            or not any(fnmatch.fnmatch(entry.name, pattern) for pattern in MERGED_FILES)
        ):
            return f"it holds {entry.name}, which `sftkit merge` does not write"
    if not (path / MODEL_CONFIG).is_file() or not (path / CONFIG_FILE).is_file():
        return f"it lacks the {MODEL_CONFIG} and {CONFIG_FILE} of a merged model"
    return None


def lock_path(out: Path) -> Path:
    """The lock file of the run in `out`: `.NAME.sftkit-lock` beside it."""
    return out.parent / f".{out.name}{LOCK_SUFFIX}"


# ---------------------------------------------------------------------------- damaged files


def check_weights(folder: Path, fix: str) -> None:
    """Refuses a folder whose safetensors files are damaged (truncated, or not safetensors at all).

    Reads only each file's header and size: a download or copy cut short is found before a model loads.

    Raises:
        SftkitError: naming the first damaged file, what is wrong with it, and `fix`.
    """
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        problem = safetensors_problem(path)
        if problem:
            raise SftkitError(f"{path}: damaged weights file ({problem}); {fix}")


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file (from its header and size), or None."""
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            header_size = struct.unpack("<Q", handle.read(8))[0] if size >= 8 else None
            if header_size is None or header_size > size - 8:
                return f"{size:,} bytes, too short for its header: truncated"
            header = json.loads(handle.read(header_size))
    except (OSError, ValueError, UnicodeDecodeError):
        return "its header is not readable: not a safetensors file, or corrupted"
    if not isinstance(header, dict):
        return "its header is not readable: not a safetensors file, or corrupted"
    ends = [
        entry["data_offsets"][1]
        for key, entry in header.items()
        if key != "__metadata__" and isinstance(entry, dict) and len(entry.get("data_offsets") or ()) == 2
    ]
    needed = 8 + header_size + max(ends, default=0)
    if size < needed:
        return f"{size:,} of {needed:,} bytes: truncated"
    return None


def torch_file_problem(path: Path) -> str | None:
    """What is wrong with a file torch.save wrote (a zip archive), or None; a truncated one has no directory."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (OSError, zipfile.BadZipFile):
        return "not a complete torch.save archive: truncated or corrupted"
    return None


# ---------------------------------------------------------------------------- what sftkit writes
# The one rule for every file and folder a command writes or replaces, checked before any slow work: the place
# must be writable (no file in the way, no read-only folder), it must not be one of the command's inputs, and
# something already there is replaced only with --overwrite and only when it is what sftkit wrote (`wrote_it`
# recognises its marker: a run config, a Modelfile header, its own rows). Files are written atomically and keep
# the permissions the umask gives (atomic.py).

Recognizer = Callable[[Path], "str | None"]  # None: sftkit wrote it; else why it is not sftkit's


def check_new_output(
    path: Path,
    overwrite: bool,
    option: str = "--out",
    inputs: tuple[Path, ...] = (),
    wrote_it: Recognizer | None = None,
    kind: str = "an output sftkit wrote",
) -> None:
    """The rule (above) for a file: an existing one is replaced only with --overwrite (and, given `wrote_it`,
    only when it recognises the file), a folder never. Defaults go to the working directory, never into a model
    or run folder.

    Raises:
        SftkitError: `path` is a folder, cannot be written, is one of `inputs`, or exists and may not be replaced.
    """
    problem = place_problem(path, "file") or _input_problem(path, inputs, "file")
    if problem:
        raise SftkitError(f"{option} {problem}")
    if path.exists():
        _check_replaceable(path, overwrite, option, wrote_it, kind)


def check_new_folder(
    out: Path,
    source: Path | None,
    source_name: str,
    overwrite: bool,
    foreign: Recognizer,
    kind: str,
    option: str = "--out",
) -> None:
    """The rule (above) for a folder (merge, export, data clean/stats): never the source or a folder holding it;
    an existing non-empty one only with --overwrite, and only when it holds nothing but a `kind` (`foreign` says
    why not), since --overwrite deletes it.

    Raises:
        SftkitError: any of these, naming `option`.
    """
    if source is not None and source.is_dir() and _inside(out, source):
        raise SftkitError(f"{option} {out}: would replace {source_name}; choose another folder")
    problem = place_problem(out, "dir")
    if problem:
        raise SftkitError(f"{option} {out}: {problem}")
    if out.is_dir() and any(out.iterdir()):
        _check_replaceable(out, overwrite, option, foreign, kind)


def check_writable_into(folder: Path, what: str, wrote_it: Recognizer) -> None:
    """Refuses writing `what` into a folder sftkit did not make (`wrote_it` says why not): a base model's
    folder keeps its own README card and files.

    Raises:
        SftkitError: naming the folder and why.
    """
    why = wrote_it(folder)
    if why:
        raise SftkitError(
            f"{folder}: {why}, so sftkit does not write {what} into it; point at a run or merged "
            "folder `sftkit train` or `sftkit merge` wrote"
        )
    problem = place_problem(folder, "dir")
    if problem:
        raise SftkitError(f"{folder}: {problem}")


def not_a_run(folder: Path) -> str | None:
    """None for a folder sftkit wrote (a run, a merged model: its config is recorded there); else why not."""
    return None if has_run_config(folder) else f"it holds no {CONFIG_FILE} (not a folder sftkit wrote)"


def _check_replaceable(path: Path, overwrite: bool, option: str, wrote_it: Recognizer | None, kind: str) -> None:
    if not overwrite:
        raise SftkitError(f"{option} {path}: already exists; pass --overwrite to replace it or choose another {option}")
    why = wrote_it(path) if wrote_it is not None else None
    if why:
        raise SftkitError(
            f"{option} {path}: not {kind} ({why}), so --overwrite will not "
            f"{'delete' if path.is_dir() else 'replace'} it; choose another {option}"
        )


def _input_problem(path: Path, inputs: tuple[Path, ...], kind: str) -> str | None:
    for source in inputs:
        clash = _inside(path, source) if kind == "dir" else _same(path, source)
        if source.exists() and clash:
            return f"{path} is also an input of this command ({source}); write to another path"
    return None


def _same(path: Path, other: Path) -> bool:
    try:
        return path.exists() and other.exists() and path.samefile(other)
    except OSError:
        return path.resolve() == other.resolve()


def _inside(path: Path, folder: Path) -> bool:
    """`path` is `folder` or a folder holding it (replacing `path` would delete `folder`)."""
    resolved, held = path.resolve(), folder.resolve()
    return resolved == held or resolved in held.parents


def read_run_config(run_dir: Path, base: str | None = None) -> SftConfig:
    """The run's resolved config (sftkit_config.yaml; a checkpoint-N folder: its run's), with `base` replacing
    model_name_or_path.

    Raises:
        SftkitError: the folder records no config.
    """
    path = run_dir / CONFIG_FILE
    if not path.is_file() and run_dir.name.startswith("checkpoint-"):
        path = run_dir.parent / CONFIG_FILE  # a checkpoint was made with its run's config
    if not path.is_file():
        raise SftkitError(f"{run_dir}: no {CONFIG_FILE}; point at the output_dir of an `sftkit train` run")
    cfg = load_config(path)
    return cfg.model_copy(update={"model_name_or_path": base}) if base else cfg


def resume_command(out: Path) -> str:
    """The command that continues the run in `out` (its resolved config is written there at the start)."""
    return shell_command("train", out / CONFIG_FILE, "--resume", "latest")


def shell_command(*args: str | Path) -> str:
    """An sftkit command line that works pasted into a shell in any directory: quoted, run from this one.

    The run's config holds paths relative to the directory training started in (model, data, output_dir),
    so the command changes into it first; sftkit is named as it was started (a venv's script, `python -m`).
    """
    words = [*sftkit_program(), *(str(arg) for arg in args)]
    return f"cd {shlex.quote(str(Path.cwd()))} && {shlex.join(words)}"


def sftkit_program() -> list[str]:
    """The words that start this sftkit again: `sftkit` when that is what PATH finds, else its full path."""
    started = sys.argv[0] if sys.argv else ""
    if Path(started).name == "sftkit":
        if "/" not in started and shutil.which("sftkit"):
            return ["sftkit"]
        if "/" in started:
            return [str(Path(started).resolve())]
    return [sys.executable, "-m", "sftkit"]


# ---------------------------------------------------------------------------- the model card


def model_card(run_dir: Path, merged_to: Path | None = None) -> str:
    """README.md of a run (or of the model merged from it into `merged_to`): base, data, template, settings,
    losses and how to use it.

    Read from the run's own record (sftkit_config.yaml, metrics.json), so train and merge write the same facts.
    """
    merged = merged_to is not None
    folder = merged_to or run_dir
    cfg = read_run_config(run_dir)
    metrics = _read_metrics(run_dir)
    adapter = cfg.uses_adapter and not merged
    method = (
        f"LoRA r={cfg.lora_rank}, alpha={cfg.resolved_lora_alpha}{' (rsLoRA)' if cfg.use_rslora else ''} on "
        f"{', '.join(cfg.lora_target)}"
        if cfg.finetuning_type == "lora"
        else f"{cfg.finetuning_type} fine-tuning"
    )
    if merged:
        method += ", merged into the base weights"
    lines = [
        "---",
        f"base_model: {cfg.model_name_or_path}",
        f"library_name: {'peft' if adapter else 'transformers'}",
        "tags: [sftkit, sft" + (f", {cfg.finetuning_type}]" if cfg.uses_adapter else "]"),
        "---",
        "",
        f"# {folder.resolve().name}",
        "",
        f"Supervised fine-tune of `{cfg.model_name_or_path}` made with sftkit ({method}).",
        "",
        "## Data",
        "",
        *_data_lines(cfg, metrics),
        "",
        "## Training",
        "",
        *_setting_lines(cfg, method),
        "",
        "## Results",
        "",
        *_result_lines(metrics),
        "",
        *evaluation_section(folder),
        "## Use it",
        "",
        *_usage_lines(folder, cfg, adapter),
    ]
    return "\n".join(lines) + "\n"


# The model card's evaluation section sits between these markers, so that later evaluations replace it in place.
_EVAL_START, _EVAL_END = "<!-- sftkit:evaluation:start -->", "<!-- sftkit:evaluation:end -->"


def progress_numbers(record: dict[str, Any]) -> str:
    """How a training record of progress.jsonl reads, in the run's log and on the web page: "loss 2.3456  lr
    9.52e-03  1,234 tok/s" (the numbers it has)."""
    parts = [f"loss {record['loss']:.4f}"]
    if record.get("learning_rate") is not None:
        parts.append(f"lr {record['learning_rate']:.2e}")
    if record.get("tokens_per_second") is not None:
        parts.append(f"{record['tokens_per_second']:,.0f} tok/s")
    return "  ".join(parts)


def clock(seconds: float | None) -> str:
    """An ETA as the progress line shows it: 1m20s, 45s, or ? before it can be estimated."""
    if seconds is None:
        return "?"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object sftkit wrote, or None when the file is missing or not one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def evaluation_section(folder: Path) -> list[str]:
    """The model card's lines on what the evaluation stage measured in `folder` (none when nothing was)."""
    lines: list[str] = []
    benchmarks = read_json(folder / BENCHMARKS_FILE) or {}
    if benchmarks.get("tasks"):
        lines += ["### Benchmarks (lm-evaluation-harness)", "", "| task | metric | score | docs |", "|---|---|---|---|"]
        for task, metrics in benchmarks["tasks"].items():
            lines += [
                f"| {task} | {name} | {value:.4f} | {metrics.get('n', '-')} |"
                for name, value in metrics.items()
                if name != "n"
            ]
        lines.append("")
    human = read_json(folder / HUMAN_EVAL_FILE) or {}
    if human.get("means"):
        means = ", ".join(f"{name} {value:.2f}" for name, value in human["means"].items())
        lines += [
            "### Human evaluation",
            "",
            f"Mean ratings (1-5) over {human.get('rows', '?')} prompts: {means}; "
            f"overall {human.get('overall', 0):.2f}; preferred in {human.get('win_rate', 0):.0%} of comparisons "
            f"with {human.get('opponent', 'the other model')}.",
            "",
        ]
    report = read_json(folder / RELEASE_REPORT_FILE) or {}
    if report.get("checks"):
        lines += [
            "### Release checklist (`sftkit report`)",
            "",
            "| check | status | measured |",
            "|---|---|---|",
            *(f"| {c['check']} | {c['status']} | {_cell(c['detail'])} |" for c in report["checks"]),
            "",
        ]
    return [_EVAL_START, "## Evaluation", "", *lines, _EVAL_END, ""] if lines else []


def _cell(text: str) -> str:
    """Text inside a Markdown table cell: a bar would end the cell."""
    return text.replace("|", "\\|")


def update_card_evaluation(folder: Path) -> None:
    """Rewrites the evaluation section of `folder`'s model card (appending it when the card has none); only in a
    folder sftkit wrote, never a base model's own card."""
    check_writable_into(folder, "an evaluation section of the model card", not_a_run)
    card = folder / MODEL_CARD
    text = card.read_text(encoding="utf-8") if card.is_file() else f"# {folder.resolve().name}\n"
    section = "\n".join(evaluation_section(folder))
    if _EVAL_START in text and _EVAL_END in text:
        head, rest = text.split(_EVAL_START, 1)
        text = head + section.rstrip("\n") + rest.split(_EVAL_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    write_text(card, text)


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    try:
        metrics = json.loads((run_dir / METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def _data_lines(cfg: SftConfig, metrics: dict[str, Any]) -> list[str]:
    train, eval_ = metrics.get("train_rows") or {}, metrics.get("eval_rows") or {}
    lines = ["| dataset | train rows | eval rows |", "|---|---|---|"]
    for name in dict.fromkeys([*cfg.dataset, *(cfg.eval_dataset or []), *train, *eval_]):
        lines.append(f"| {name} | {train.get(name, '-')} | {eval_.get(name, '-')} |")
    trained = (
        "every token"
        if cfg.train_on_prompt
        else ("the last assistant reply" if cfg.mask_history else "the assistant replies")
    )
    return [
        *lines,
        "",
        f"Registry: `{cfg.dataset_dir}/dataset_info.json`. Chat template `{template_name(cfg)}` (also the "
        f"tokenizer's `chat_template`); loss on {trained} and their end token; cutoff_len {cfg.cutoff_len}"
        f"{', packed' if cfg.packing else ''}.",
    ]


def _setting_lines(cfg: SftConfig, method: str) -> list[str]:
    steps = f"max_steps {cfg.max_steps}" if cfg.max_steps > 0 else f"{cfg.num_train_epochs:g} epochs"
    settings = [
        ("method", method),
        (
            "learning rate",
            f"{cfg.learning_rate:g} ({cfg.lr_scheduler_type}, warmup {cfg.warmup_steps or cfg.warmup_ratio})",
        ),
        ("length", steps),
        ("batch", f"{cfg.per_device_train_batch_size} per device x {cfg.gradient_accumulation_steps} accumulation"),
        ("optimizer", f"{cfg.optim}, weight decay {cfg.weight_decay:g}"),
        ("precision", "bf16" if cfg.bf16 else "fp16" if cfg.fp16 else "fp32"),
        ("seed", str(cfg.seed)),
    ]
    return [
        "| setting | value |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in settings),
        "",
        f"The complete resolved config is `{CONFIG_FILE}`; `sftkit train` on it repeats the run.",
    ]


def _result_lines(metrics: dict[str, Any]) -> list[str]:
    if not metrics:
        return ["(no metrics.json: the run did not finish)"]

    def value(key: str, spec: str = ".4f") -> str:
        return "n/a" if metrics.get(key) is None else format(metrics[key], spec)

    rows = [
        ("train loss, first -> last logged", f"{value('first_train_loss')} -> {value('train_loss')}"),
        ("eval loss, final", value("eval_loss")),
        ("eval loss, best", f"{value('best_eval_loss')} at step {metrics.get('best_step') or 'n/a'}"),
        ("eval perplexity", value("eval_perplexity", ".3f")),
        ("end-token accuracy", value("end_token_accuracy", ".1%")),
        ("updates / epochs", f"{metrics.get('global_step')} / {value('epochs', '.2f')}"),
        ("tokens seen", f"{metrics.get('tokens_seen') or 0:,}"),
    ]
    return ["| metric | value |", "|---|---|", *(f"| {key} | {val} |" for key, val in rows)]


def _usage_lines(run_dir: Path, cfg: SftConfig, adapter: bool) -> list[str]:
    folder = str(run_dir.resolve())
    auto = "AutoPeftModelForCausalLM" if adapter else "AutoModelForCausalLM"
    package = "peft" if adapter else "transformers"
    code = [
        "```python",
        f"from {package} import {auto}",
        "from transformers import AutoTokenizer",
        "",
        f"model = {auto}.from_pretrained({folder!r})",
        f"tokenizer = AutoTokenizer.from_pretrained({folder!r})",
        'messages = [{"role": "user", "content": "What colour is snow?"}]',
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", '
        "return_dict=True)",
        "output = model.generate(**inputs, max_new_tokens=64)",
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```",
    ]
    chat = ["```bash", shell_command("chat", run_dir), *([shell_command("merge", run_dir)] if adapter else []), "```"]
    note = (
        (
            f"The adapter needs its base model, `{cfg.model_name_or_path}`"
            + (
                " (a local folder: give its full path if you load this from elsewhere)."
                if not Path(cfg.model_name_or_path).is_absolute()
                else "."
            )
        )
        if adapter
        else ""
    )
    return [
        "With transformers:",
        "",
        *code,
        "",
        *([note, ""] if note else []),
        "With sftkit (talk to it with the template it was trained on"
        + ("; merge the adapter into a standalone model)" if adapter else ")")
        + ":",
        "",
        *chat,
    ]


def template_name(cfg: SftConfig) -> str:
    """The template a config trains with, as a person reads it: its name, or where its Jinja comes from."""
    return cfg.template or ("the chat_template given in the config" if cfg.chat_template else "the model's own")
