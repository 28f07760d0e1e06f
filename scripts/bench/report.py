"""The race's table, target checks and the docs/benchmarks.md section, from the race's JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# (workload prefix, measure, op, ratio wanted, against): never lowered; sftkit / peer
TARGETS = [
    ("smollm2", "trained_tokens_per_s", ">=", 1.5, "llamafactory"),
    ("smollm2", "trained_tokens_per_s", ">=", 1.5, "trl"),
    ("smollm2", "peak_rss_gb", "<=", 0.7, "llamafactory"),
    ("gemma", "trained_tokens_per_s", ">=", 2.0, "llamafactory"),
    ("gemma", "trained_tokens_per_s", ">=", 2.0, "trl"),
    ("gemma", "peak_rss_gb", "<=", 0.5, "llamafactory"),
]
EVAL_MARGIN = 1.02  # sftkit's eval loss within 2% of (or below) the peer's
BEGIN, END = "<!-- race:begin (written by `python scripts/bench.py race`) -->", "<!-- race:end -->"


def best_runs(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (workload, contestant) the run of the round with the highest trained tokens/s (the least disturbed
    by the machine's other users), others kept in the JSON; a failed contestant keeps its error."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for run in report["runs"]:
        key = (run["workload"], run["contestant"])
        old = best.get(key)
        if (
            old is None
            or ("error" in old and "error" not in run)
            or (
                "error" not in run
                and "error" not in old
                and run.get("trained_tokens_per_s", 0) > old.get("trained_tokens_per_s", 0)
            )
        ):
            best[key] = run
    return best


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    best = best_runs(report)
    evals = report.get("eval", {})
    checks = []
    for workload in report["workloads"]:
        ours = best.get((workload, "sftkit"))
        for prefix, measure, op, wanted, peer in TARGETS:
            theirs = best.get((workload, peer))
            if not workload.startswith(prefix) or not ours or not theirs:
                continue
            name = f"{workload}: sftkit / {peer} {measure}"
            if "error" in ours or "error" in theirs or not theirs.get(measure):
                checks.append(
                    {
                        "check": name,
                        "ratio": None,
                        "target": f"{op} {wanted}",
                        "met": None,
                        "note": "not measured: " + (ours.get("error") or theirs.get("error") or "no value"),
                    }
                )
                continue
            ratio = ours[measure] / theirs[measure]
            met = ratio >= wanted if op == ">=" else ratio <= wanted
            if measure == "trained_tokens_per_s":  # speed counts only at equal or lower eval loss
                ours_loss = evals.get(workload, {}).get("scores", {}).get("sftkit", {}).get("eval_loss")
                their_loss = evals.get(workload, {}).get("scores", {}).get(peer, {}).get("eval_loss")
                if ours_loss is not None and their_loss is not None:
                    met = met and ours_loss <= their_loss * EVAL_MARGIN
                    name += f" (eval loss {ours_loss:.3f} vs {their_loss:.3f})"
            checks.append({"check": name, "ratio": round(ratio, 3), "target": f"{op} {wanted}", "met": bool(met)})
    return checks


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else str(value)


def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        f"Race of {meta['date']} on {meta['machine']}, {meta['rounds']} round(s), load average "
        f"{_f(meta['load_average_start'][0])} -> {_f(meta.get('load_average_end', [None])[0])}; "
        f"{meta['wall_s']:.0f} s in all. Command: `{meta['command']}`",
        "",
    ]
    best = best_runs(report)
    for workload in report["workloads"]:
        config = report["configs"][workload]
        lines += [
            f"**{workload}**: {config['model_name_or_path'].rsplit('/', 1)[-1]}, `dataset: {config['dataset']}`, "
            f"template {config['template']}, packing {config.get('packing', 'tool default')}, batch "
            f"{config['per_device_train_batch_size']}, max_steps {config['max_steps']} (the bound), "
            f"lr {config['learning_rate']}, seed {config['seed']}",
            "",
            "| contestant | wall s | load s | other setup s | train s | save+exit s | steps | trained tok/s "
            "| tok/s (all) | peak RSS GB | train loss (last 1/4) | eval loss | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        scores = report.get("eval", {}).get(workload, {}).get("scores", {})
        for name in report["contestants"]:
            run = best.get((workload, name))
            if run is None:
                continue
            score = scores.get(name, {})
            note = run.get("error", "")
            if score.get("error"):
                note = (note + "; " if note else "") + "eval: " + score["error"]
            lines.append(
                f"| {name} | {_f(run.get('wall_s'))} | {_f(run.get('load_s'))} | "
                f"{_f(run.get('setup_other_s'))} | {_f(run.get('train_s'))} | "
                f"{_f(run.get('after_train_s'))} | {_f(run.get('steps'), 0)} | "
                f"{_f(run.get('trained_tokens_per_s'))} | {_f(run.get('tokens_per_s'))} | "
                f"{_f(run.get('peak_rss_gb'), 2)} | {_f(run.get('final_train_loss'), 3)} | "
                f"{_f(score.get('eval_loss'), 4)} | {note.replace('|', '/')[:300]} |"
            )
        if "base" in scores:
            lines.append(f"| (base, no adapter) | | | | | | | | | | | {_f(scores['base'].get('eval_loss'), 4)} | |")
        questions = report.get("eval", {}).get(workload, {}).get("questions") or []
        if questions:
            lines += [
                "",
                "| held-out identity question | "
                + " | ".join(n for n in ["base", *report["contestants"]] if n in scores)
                + " |",
                "|---|" + "---|" * len([n for n in ["base", *report["contestants"]] if n in scores]),
            ]
            for i, question in enumerate(questions):
                cells = [
                    (scores[n].get("answers") or ["-"] * len(questions))[i].replace("|", "/").replace("\n", " ")
                    for n in ["base", *report["contestants"]]
                    if n in scores
                ]
                lines.append(f"| {question} | " + " | ".join(cells) + " |")
        lines.append("")
    checks = report.get("targets", [])
    if checks:
        lines += ["| target | ratio | wanted | met |", "|---|---|---|---|"]
        lines += [
            f"| {c['check']} | {_f(c['ratio'], 2)} | {c['target']} | "
            f"{'yes' if c['met'] else ('NO' if c['met'] is False else 'not measured: ' + c.get('note', ''))} |"
            for c in checks
        ]
    stage = report.get("data_stage")
    if stage:
        lines += [
            "",
            f"Data stage on the same {stage.get('rows', '?'):,} rows (train sets repeated), "
            "tokenize + mask, fresh cache:",
            "",
            "| data stage | workers | seconds | rows/s |",
            "|---|---|---|---|",
        ]
        for entry in stage.get("runs", []):
            lines.append(
                f"| {entry['tool']} | {entry.get('workers')} | {_f(entry.get('seconds'), 2)} | "
                f"{_f(entry.get('rows_per_s'), 0)} |"
                if "error" not in entry
                else f"| {entry['tool']} | {entry.get('workers')} | failed: {entry['error'][:200]} | |"
            )
    return "\n".join(lines)


def write_section(doc: Path, text: str) -> None:
    """Replaces the race section between the markers of docs/benchmarks.md (adds the markers once)."""
    old = doc.read_text(encoding="utf-8") if doc.is_file() else "# Benchmarks\n"
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + block + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n## Race: the latest measured run\n\n" + block + "\n"
    doc.write_text(new, encoding="utf-8")
