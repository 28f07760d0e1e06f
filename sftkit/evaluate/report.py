"""`sftkit report RUN`: the SFT guide's release checklist against what the run and its evaluations measured.

Each line is pass, fail, measured (a number shown with no threshold configured to judge it) or not measured
(with the reason and the command that measures it). What training measured comes from metrics.json (the
training report's numbers); benchmark scores from `sftkit eval --tasks`, human ratings from `sftkit eval
--ratings`; the samples, their screening and the generation speed are measured here, on this machine. The
checklist is written into the run (release_report.json) and its model card.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.atomic import write_json
from sftkit.data import plural
from sftkit.data.prompts import load_prompts
from sftkit.evaluate.perplexity import data_config, load_model
from sftkit.model import GenerationSettings, generate_replies
from sftkit.run_dir import (
    BENCHMARKS_FILE,
    HUMAN_EVAL_FILE,
    METRICS_FILE,
    RELEASE_REPORT_FILE,
    check_writable_into,
    has_adapter,
    not_a_run,
    read_json,
    shell_command,
    update_card_evaluation,
)
from sftkit.training.report import LOW_END_TOKEN_ACCURACY

if TYPE_CHECKING:
    from sftkit.config import SftConfig
    from sftkit.evaluate.judge import Judge
    from sftkit.model import Loaded

PASS, FAIL, MEASURED, NOT_MEASURED = "pass", "fail", "measured", "not measured"


@dataclass
class Check:
    """One checklist line: what is checked, its status and the numbers (or why there are none)."""

    check: str
    status: str
    detail: str


def release_report(run: Path, cfg: SftConfig, judge: Judge | None = None, max_new_tokens: int = 64) -> list[Check]:
    """Checks the run against the release checklist; prints it and writes it into the run and its model card.

    Args:
        run: the run directory (or a merged folder: then the training lines are not measured).
        cfg: the run's config (thresholds, blocklist, samples, its eval prompts).
        judge: also screen the samples with an LLM judge.
        max_new_tokens: most tokens per sampled answer.

    Returns:
        The checklist lines, in the guide's order.
    """
    check_writable_into(run, "the release checklist", not_a_run)
    metrics = read_json(run / METRICS_FILE)
    samples = sample_answers(str(run), cfg, max_new_tokens)
    checks = [
        loss_gap(metrics, cfg.release_max_loss_gap),
        end_tokens(metrics),
        diversity(metrics),
        blocklist_screen(samples, cfg.release_blocklist),
        judge_screen(samples, judge),
        *benchmark_checks(read_json(run / BENCHMARKS_FILE), cfg.benchmark_thresholds, run),
        human_score(read_json(run / HUMAN_EVAL_FILE), cfg.release_min_human_score),
        speed(samples, cfg.release_min_tokens_per_second),
        *size_checks(run, cfg, samples["memory_bytes"], cfg.release_max_model_gb),
    ]
    write_json(
        run / RELEASE_REPORT_FILE, {"run": str(run), "checks": [asdict(c) for c in checks], "samples": samples["rows"]}
    )
    update_card_evaluation(run)
    print(checklist_table(checks))
    print(f"wrote {run / RELEASE_REPORT_FILE} and the model card's release checklist")
    return checks


def checklist_table(checks: list[Check]) -> str:
    width = max(len(c.check) for c in checks)
    return "\n".join(f"{c.check:<{width}}  {c.status.upper():<12}  {c.detail}" for c in checks)


# ---------------------------------------------------------------------------- what training measured


def loss_gap(metrics: dict[str, Any] | None, limit: float) -> Check:
    name = f"eval loss within {limit:.0%} of train loss"
    if not metrics:
        return Check(name, NOT_MEASURED, f"no {METRICS_FILE}: report on the run directory of a finished run")
    train, eval_ = metrics.get("train_loss"), metrics.get("eval_loss")
    if train is None or eval_ is None:
        return Check(
            name,
            NOT_MEASURED,
            "the run logged no eval loss; train with val_size (or eval_dataset) and eval_strategy: steps",
        )
    gap = (eval_ - train) / train if train else float("inf")
    return Check(
        name, PASS if gap <= limit else FAIL, f"eval {eval_:.4f} vs train {train:.4f} (last logged): {gap:+.1%}"
    )


def end_tokens(metrics: dict[str, Any] | None) -> Check:
    name = f"end-token accuracy at least {LOW_END_TOKEN_ACCURACY:.0%} (the model stops)"
    accuracy = (metrics or {}).get("end_token_accuracy")
    if accuracy is None:
        return Check(
            name,
            NOT_MEASURED,
            f"no end-token accuracy in {METRICS_FILE}: it is measured on the eval set "
            "at the end of training (set val_size or eval_dataset)",
        )
    return Check(
        name,
        PASS if accuracy >= LOW_END_TOKEN_ACCURACY else FAIL,
        f"{accuracy:.1%} of {(metrics or {}).get('end_token_positions', '?')} reply ends",
    )


def diversity(metrics: dict[str, Any] | None) -> Check:
    rows = (metrics or {}).get("eval_rows") or {}
    shown = ", ".join(f"{name} {count}" for name, count in rows.items()) or "no eval set"
    return Check(
        "tested on diverse instructions",
        NOT_MEASURED,
        f"diversity is a judgement sftkit cannot score; eval rows per dataset: {shown}",
    )


# ---------------------------------------------------------------------------- samples, measured here


def sample_answers(model: str, cfg: SftConfig, max_new_tokens: int) -> dict[str, Any]:
    """Greedy answers to the first `release_samples` eval prompts (train prompts without an eval set), timed;
    the loaded model's size in memory."""
    import torch

    split = "eval" if cfg.has_eval_data else "train"
    loaded = load_model(model, cfg)
    prompts = load_prompts(data_config(cfg, split, None), split, cfg.release_samples, loaded.template)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=1)  # one at a time: a user's latency
    start = time.perf_counter()
    replies = generate_replies(loaded.model, loaded.tokenizer, loaded.template, prompts, settings)
    seconds = time.perf_counter() - start
    # each reply's tokens and the end token that stopped it (none when it ran out of max_new_tokens)
    tokens = sum(
        min(len(loaded.tokenizer(reply, add_special_tokens=False).input_ids) + 1, max_new_tokens) for reply in replies
    )
    rows = [
        {"dataset": p.dataset, "index": p.index, "prompt": p.messages[-1]["content"], "answer": reply}
        for p, reply in zip(prompts, replies)
    ]
    return {
        "rows": rows,
        "split": split,
        "tokens": tokens,
        "seconds": seconds,
        "memory_bytes": _memory(loaded),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def _memory(loaded: Loaded) -> int:
    """Bytes of the loaded weights and buffers (the adapter's included)."""
    model = loaded.model
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def blocklist_screen(samples: dict[str, Any], blocklist: list[str] | None) -> Check:
    name = "no harmful outputs in samples (blocklist)"
    count = len(samples["rows"])
    if not blocklist:
        return Check(
            name,
            NOT_MEASURED,
            f"no release_blocklist in the config; {plural(count, 'sample')} generated, none screened",
        )
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(word) for word in blocklist) + r")\b", re.IGNORECASE)
    hits = [(row, pattern.search(row["answer"])) for row in samples["rows"]]
    hits = [(row, match.group(0)) for row, match in hits if match]
    if hits:
        row, word = hits[0]
        return Check(
            name,
            FAIL,
            f"{len(hits)} of {count} samples hit the blocklist, first {row['dataset']} row {row['index']}: {word!r}",
        )
    return Check(
        name, PASS, f"0 of {count} samples ({samples['split']} prompts) hit the {len(blocklist)} blocked terms"
    )


def judge_screen(samples: dict[str, Any], judge: Judge | None) -> Check:
    name = "no harmful outputs in samples (judge)"
    if judge is None:
        return Check(name, NOT_MEASURED, "no judge: pass --judge-url and --judge-model to screen the samples")
    verdicts = [judge.flags(row["prompt"], row["answer"]) for row in samples["rows"]]
    flagged = sum(v is True for v in verdicts)
    unclear = sum(v is None for v in verdicts)
    detail = f"{flagged} of {len(verdicts)} flagged by {judge.model}" + (
        f", {unclear} verdicts unreadable" if unclear else ""
    )
    return Check(name, FAIL if flagged else PASS if not unclear else NOT_MEASURED, detail)


def speed(samples: dict[str, Any], least: float | None) -> Check:
    rate = samples["tokens"] / samples["seconds"] if samples["seconds"] else 0.0
    detail = (
        f"{rate:.1f} new tokens/s on {samples['device']} ({samples['tokens']} tokens of "
        f"{plural(len(samples['rows']), 'greedy answer')}, one at a time)"
    )
    if least is None:
        return Check("inference speed acceptable", MEASURED, detail + "; set release_min_tokens_per_second to judge it")
    return Check(f"inference speed at least {least:g} tokens/s", PASS if rate >= least else FAIL, detail)


def size_checks(run: Path, cfg: SftConfig, memory_bytes: int, most_gb: float | None) -> list[Check]:
    """On disk: the weights a deployment ships (a LoRA run: base + adapter, as merged); in memory: as loaded."""
    files = sorted(run.glob("*.safetensors"))
    base = Path(cfg.model_name_or_path)
    if has_adapter(run) and base.is_dir():
        files += sorted(base.glob("*.safetensors"))
    disk = sum(f.stat().st_size for f in files)
    lines = []
    for what, size, how in (
        ("on disk", disk, f"{len(files)} safetensors files" + (" (base + adapter)" if has_adapter(run) else "")),
        ("in memory", memory_bytes, "weights and buffers as loaded for inference"),
    ):
        detail = f"{_size(size)} ({how})"
        if what == "on disk" and not files:
            lines.append(
                Check(
                    "model size on disk",
                    NOT_MEASURED,
                    f"the base model {cfg.model_name_or_path} is no local folder, so its files cannot be sized",
                )
            )
        elif most_gb is None:
            lines.append(Check(f"model size {what}", MEASURED, detail + "; set release_max_model_gb to judge it"))
        else:
            lines.append(
                Check(f"model size {what} at most {most_gb:g} GB", PASS if size / 1e9 <= most_gb else FAIL, detail)
            )
    return lines


def _size(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.2f} MB"


# ---------------------------------------------------------------------------- evaluations run before


def benchmark_checks(scores: dict[str, Any] | None, thresholds: dict[str, float] | None, run: Path) -> list[Check]:
    if not thresholds:
        return [
            Check(
                "passes benchmark thresholds",
                NOT_MEASURED,
                "no benchmark_thresholds in the config (e.g. {sftkit_mc/acc: 0.5})",
            )
        ]
    lines = []
    for name, least in thresholds.items():
        task, _, metric = name.partition("/")
        value = ((scores or {}).get("tasks") or {}).get(task, {}).get(metric)
        check = f"benchmark {name} at least {least:g}"
        if value is None:
            lines.append(
                Check(
                    check,
                    NOT_MEASURED,
                    f"no score for it in {BENCHMARKS_FILE}; run {shell_command('eval', run, '--tasks', task)}",
                )
            )
        else:
            lines.append(Check(check, PASS if value >= least else FAIL, f"{value:.4f}"))
    return lines


def human_score(human: dict[str, Any] | None, least: float) -> Check:
    name = f"human evaluation score above {least:g}/5"
    if not human or human.get("overall") is None:
        return Check(
            name,
            NOT_MEASURED,
            f"no {HUMAN_EVAL_FILE}: rate answers with `sftkit predict RUN --compare BASE "
            "--sheet FILE.csv`, then `sftkit eval --ratings FILE.csv`",
        )
    return Check(
        name,
        PASS if human["overall"] > least else FAIL,
        f"{human['overall']:.2f} over {human.get('rows', '?')} prompts (win rate "
        f"{human.get('win_rate') or 0:.0%} against {human.get('opponent', '?')})",
    )
