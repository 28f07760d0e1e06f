"""`sftkit data clean CONFIG --out DIR`: the config's datasets cleaned into a new dataset folder.

DIR gets each dataset's kept rows in its source layout (a `.json` list stays a `.json` list, other files
become `.jsonl`), a `dataset_info.json` with the same names and column mappings (so `dataset_dir: DIR`
trains on the cleaned data), `removed.jsonl` (every removed row: split, dataset, index, reason, detail) and
`clean_report.json` (counts by reason, the leaks found, the settings used).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.atomic import staged_dir, write_json, write_lines, write_text
from sftkit.data.loader import dataset_specs, load_conversations
from sftkit.data.pipeline import judge_cache
from sftkit.data.quality.clean import CleanResult, Removal, clean_rows
from sftkit.data.registry import load_registry, read_rows
from sftkit.data.spec import REGISTRY_FILE
from sftkit.run_dir import check_new_folder

if TYPE_CHECKING:
    from sftkit.config import SftConfig

REMOVED_FILE = "removed.jsonl"
REPORT_FILE = "clean_report.json"
_SOURCE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "subset", "split", "folder", "file_name")


def check_clean_out(cfg: SftConfig, out: Path, overwrite: bool) -> None:
    """--out must be a new folder (or, with --overwrite, an earlier `data clean` output), never dataset_dir or a
    folder holding it; a place under a file or in a read-only folder is refused before the work.

    Raises:
        SftkitError: naming the folder and the fix.
    """
    check_new_folder(
        out,
        Path(cfg.dataset_dir),
        f"the config's dataset_dir {cfg.dataset_dir}",
        overwrite,
        _not_cleaned,
        "an earlier `sftkit data clean` output",
    )


def _not_cleaned(out: Path) -> str | None:
    return None if (out / REPORT_FILE).is_file() else f"it holds no {REPORT_FILE}"


def clean_datasets(cfg: SftConfig, out: Path, tokenizer: Any = None) -> dict[str, Any]:
    """Cleans every dataset the config names (train and eval) as the `clean_*` keys say, and writes DIR.

    Every row of the datasets is looked at (no val_size split: that happens when training), in the config's
    dataset order, so the first of a set of duplicates is the one kept.

    Returns:
        The report written to clean_report.json.
    """
    whole = cfg.model_copy(update={"val_size": 0.0, "mix_strategy": "concat", "interleave_probs": None})
    conversations = load_conversations(whole)
    train = conversations.train.to_list()
    eval_ = conversations.eval.to_list() if conversations.eval is not None else None
    result = clean_rows(cfg, train, eval_, tokenizer, judge_cache())
    kept = {(row["dataset"], row["index"]) for row in (train[i] for i in result.train_keep)}
    if eval_ is not None and result.eval_keep is not None:
        kept |= {(row["dataset"], row["index"]) for row in (eval_[i] for i in result.eval_keep)}
    loaded = {(row["dataset"], row["index"]) for row in [*train, *(eval_ or [])]}
    registry = load_registry(cfg.dataset_dir)
    specs = dataset_specs(cfg)
    removed = list(result.removed)
    with staged_dir(out) as staging:
        entries, rows_out = {}, {}
        for name, spec in specs.items():
            raw = read_rows(spec)
            keep = [i for i in range(len(raw)) if (name, i) in kept]
            removed += [
                Removal(
                    "-",
                    name,
                    i,
                    "bad_row" if i < _loaded_rows(cfg) else "max_samples",
                    "unreadable row (skip_bad_rows)" if i < _loaded_rows(cfg) else "beyond max_samples",
                )
                for i in range(len(raw))
                if (name, i) not in loaded
            ]
            file_name = _write_rows(staging, name, spec.path, [raw[i].data for i in keep])
            entry = {k: v for k, v in registry[name].items() if k not in _SOURCE_KEYS}
            entries[name] = {"file_name": file_name, **entry}
            rows_out[name] = {"rows": len(raw), "kept": len(keep)}
        write_json(staging / REGISTRY_FILE, entries)
        write_lines(staging / REMOVED_FILE, (json.dumps(r.as_dict(), ensure_ascii=False) + "\n" for r in removed))
        report = _report(cfg, result, removed, rows_out, len(train))
        write_json(staging / REPORT_FILE, report)
    return report


def _loaded_rows(cfg: SftConfig) -> int:
    return cfg.max_samples if cfg.max_samples is not None else 1 << 62


def _write_rows(folder: Path, name: str, source: Path | None, rows: list[Any]) -> str:
    """The rows in their source layout: a JSON list for a `.json` file, else JSON lines."""
    if source is not None and source.is_file() and source.suffix == ".json":
        file_name = f"{name}.json"
        write_text(folder / file_name, json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
    else:
        file_name = f"{name}.jsonl"
        write_lines(folder / file_name, (json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows))
    return file_name


def _report(
    cfg: SftConfig, result: CleanResult, removed: list[Removal], rows_out: dict[str, dict[str, int]], train_rows: int
) -> dict[str, Any]:
    settings = {key: value for key, value in cfg.model_dump().items() if key.startswith("clean_")}
    return {
        "datasets": rows_out,
        "removed": dict(Counter(r.reason for r in removed).most_common()),
        "leaks": [leak.as_dict() for leak in result.leaks],
        "leaks_removed": result.leaks_removed,
        "unjudged": result.unjudged,
        "seed": cfg.seed,
        "settings": settings,
        "summary": result.summary_line(train_rows),
    }


def summary_lines(report: dict[str, Any], out: Path) -> list[str]:
    """The terminal summary of a clean."""
    lines = [f"{name}: kept {d['kept']:,} of {d['rows']:,} rows" for name, d in report["datasets"].items()]
    if report["removed"]:
        lines.append("removed: " + ", ".join(f"{n} {reason}" for reason, n in report["removed"].items()))
    if report["leaks"]:
        lines.append(
            f"leaks: {len(report['leaks'])} train prompts also in the eval data "
            f"({'removed' if report['leaks_removed'] else 'kept; clean_remove_leaks: true removes them'})"
        )
    lines.append(
        f"wrote {out}/ ({REGISTRY_FILE}, {REMOVED_FILE}, {REPORT_FILE}); train on it with --set dataset_dir={out}"
    )
    return lines
