"""`sftkit data stats`: per-dataset and overall statistics as JSON, PNG plots and a terminal summary."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sftkit.atomic import staged_dir, write_json
from sftkit.data.quality.clean import find_duplicates
from sftkit.data.quality.text import language, prompt_text, replies
from sftkit.run_dir import check_new_folder

if TYPE_CHECKING:
    from sftkit.config import SftConfig
    from sftkit.data.pipeline import PreparedData

STATS_FILE = "data_stats.json"
PLOTS = ("lengths.png", "mix.png", "trained_share.png")
_SUMMED = (
    "rows",
    "tokens",
    "trained_tokens",
    "prompt_tokens",
    "truncated",
    "turns",
    "exact_duplicates",
    "near_duplicates",
)


def check_stats_out(out: Path, overwrite: bool) -> None:
    """An existing --out is replaced only with --overwrite, and only when it holds statistics sftkit wrote; a place
    under a file or in a read-only folder is refused before the work (the one rule, run_dir.check_new_folder).

    Raises:
        SftkitError: naming the folder and the fix.
    """
    check_new_folder(out, None, "", overwrite, _not_stats, "statistics `sftkit data stats` wrote")


def _not_stats(out: Path) -> str | None:
    return None if (out / STATS_FILE).is_file() else f"it holds no {STATS_FILE}"


def write_data_stats(cfg: SftConfig, data: PreparedData, out: Path) -> dict[str, Any]:
    """Computes the statistics of prepared data and writes `out/data_stats.json` and the plots, atomically.

    Returns:
        The statistics as written.
    """
    report = data_report(cfg, data)
    with staged_dir(out) as staging:
        write_json(staging / STATS_FILE, report)
        plot_all(report, staging)
    return report


def data_report(cfg: SftConfig, data: PreparedData) -> dict[str, Any]:
    """Per dataset and overall: rows, turns, tokens (prompt / trained), length percentiles, trained fraction,
    truncated rows, duplicates found (exact / near, within and across datasets) and languages."""
    assert data.conversations is not None
    # the rows tokenization kept (a row left with no trained token within cutoff_len is not trained on)
    tokenized = {
        (name, index)
        for split in (data.train, data.eval)
        if split is not None
        for name, index in zip(split["dataset"], split["index"])
    }
    rows = [
        row
        for split in (data.conversations.train, data.conversations.eval)
        if split is not None
        for row in split.to_list()
        if (row["dataset"], row["index"]) in tokenized
    ]
    duplicates = find_duplicates(rows, "near", cfg.clean_near_threshold, cfg.seed)
    datasets: dict[str, dict[str, Any]] = {}
    for name, facts in data.stats.per_dataset.items():
        datasets[name] = {k: v for k, v in facts.items() if k != "lengths"}
    extra: dict[str, dict[str, Any]] = {}
    for position, row in enumerate(rows):
        entry = extra.setdefault(
            row["dataset"], {"turns": 0, "languages": Counter(), "exact_duplicates": 0, "near_duplicates": 0}
        )
        entry["turns"] += len(replies(row))
        entry["languages"][language(prompt_text(row) + "\n" + "\n".join(replies(row))) or "none"] += 1
        if position in duplicates:
            entry[f"{duplicates[position][0]}_duplicates"] += 1
    for name, entry in datasets.items():
        more = extra.get(name, {"turns": 0, "languages": Counter(), "exact_duplicates": 0, "near_duplicates": 0})
        entry.update(
            turns=more["turns"],
            mean_turns=more["turns"] / entry["rows"] if entry["rows"] else 0.0,
            languages=dict(more["languages"].most_common()),
            exact_duplicates=more["exact_duplicates"],
            near_duplicates=more["near_duplicates"],
        )
    lengths = {name: facts["lengths"] for name, facts in data.stats.per_dataset.items()}
    return {
        "cutoff_len": cfg.cutoff_len,
        "datasets": datasets,
        "overall": _overall(datasets, lengths),
        "train_rows": data.stats.train_rows,
        "eval_rows": data.stats.eval_rows,
        "notes": data.stats.notes,
        "lengths": lengths,
        "plots": list(PLOTS),
        "near_duplicate_threshold": cfg.clean_near_threshold,
        "duplicate_examples": [
            {
                "dataset": rows[p]["dataset"],
                "index": rows[p]["index"],
                "kind": kind,
                "of_dataset": rows[first]["dataset"],
                "of_index": rows[first]["index"],
            }
            for p, (kind, first) in sorted(duplicates.items())[:20]
        ],
    }


def _overall(datasets: dict[str, dict[str, Any]], lengths: dict[str, list[int]]) -> dict[str, Any]:
    overall: dict[str, Any] = {key: sum(d[key] for d in datasets.values()) for key in _SUMMED}
    every = np.asarray([n for values in lengths.values() for n in values], dtype=np.int64)
    p50, p90, p99 = np.percentile(every, [50, 90, 99]) if len(every) else (0, 0, 0)
    languages: Counter[str] = Counter()
    for d in datasets.values():
        languages.update(d["languages"])
    overall.update(
        trained_fraction=overall["trained_tokens"] / overall["tokens"] if overall["tokens"] else 0.0,
        length_p50=int(p50),
        length_p90=int(p90),
        length_p99=int(p99),
        length_max=int(every.max()) if len(every) else 0,
        languages=dict(languages.most_common()),
        mean_turns=overall["turns"] / overall["rows"] if overall["rows"] else 0.0,
    )
    return overall


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The terminal summary: one line per dataset and one overall."""
    lines = [
        f"{'dataset':<26} {'rows':>7} {'turns':>6} {'tokens':>10} {'trained':>8} {'p50':>5} {'p90':>5} "
        f"{'p99':>5} {'max':>6} {'trunc':>6} {'dups':>9}  languages"
    ]
    for name, d in [*report["datasets"].items(), ("(all)", report["overall"])]:
        langs = ", ".join(f"{k} {v}" for k, v in list(d["languages"].items())[:3])
        lines.append(
            f"{name[:26]:<26} {d['rows']:>7,} {d['mean_turns']:>6.2f} {d['tokens']:>10,} "
            f"{d['trained_fraction']:>8.1%} {d['length_p50']:>5} {d['length_p90']:>5} {d['length_p99']:>5} "
            f"{d['length_max']:>6} {d['truncated']:>6} {d['exact_duplicates']:>4}+{d['near_duplicates']:<4}"
            f"  {langs}"
        )
    lines.append(
        "(turns: replies per conversation; trained: share of tokens trained; p50-max: tokens per example; "
        "trunc: cut to cutoff_len; dups: exact+near duplicates of an earlier row)"
    )
    return lines + report["notes"]


# ---------------------------------------------------------------------------- plots


def plot_all(report: dict[str, Any], folder: Path) -> None:
    """lengths.png (histograms per dataset), mix.png (rows and trained tokens per dataset), trained_share.png."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to the files
    import matplotlib.pyplot as plt

    names = list(report["datasets"])
    _lengths_plot(plt, report, names, folder / PLOTS[0])
    _mix_plot(plt, report, names, folder / PLOTS[1])
    _share_plot(plt, report, names, folder / PLOTS[2])


def _lengths_plot(plt: Any, report: dict[str, Any], names: list[str], path: Path) -> None:
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.2 * len(names) + 0.6), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        ax.hist(report["lengths"][name], bins=40, color="#4878d0")
        ax.axvline(report["cutoff_len"], color="#d65f5f", linestyle="--", label=f"cutoff_len {report['cutoff_len']}")
        d = report["datasets"][name]
        ax.set_title(f"{name}: {d['rows']:,} rows, p50 {d['length_p50']} / p90 {d['length_p90']} tokens", fontsize=9)
        ax.set_ylabel("rows")
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("tokens per example")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _mix_plot(plt: Any, report: dict[str, Any], names: list[str], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((left, "rows", "share of rows"), (right, "trained_tokens", "share of trained tokens")):
        values = [report["datasets"][n][key] for n in names]
        ax.pie(values, labels=names, autopct="%1.1f%%", textprops={"fontsize": 8})
        ax.set_title(title)
    fig.suptitle("dataset mix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _share_plot(plt: Any, report: dict[str, Any], names: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(names) + 1.6))
    trained = [report["datasets"][n]["trained_fraction"] * 100 for n in names]
    ax.barh(names, trained, color="#6acc64", label="trained (replies)")
    ax.barh(names, [100 - t for t in trained], left=trained, color="#b0b0b0", label="context (prompt, template)")
    for y, share in enumerate(trained):
        ax.text(1, y, f"{share:.1f}%", va="center", fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of tokens")
    ax.set_title("trained-token share per dataset")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
