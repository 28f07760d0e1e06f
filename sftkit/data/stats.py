"""Statistics of prepared data: what `sftkit data preview` prints and training logs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sftkit.data.masking import IGNORE_INDEX
from sftkit.data.packing import packing_efficiency

if TYPE_CHECKING:
    from datasets import Dataset

    from sftkit.config import SftConfig
    from sftkit.data.loader import Conversations


@dataclass
class DataStats:
    """Counts and token statistics of prepared data; lengths and fractions are over the train split.

    Attributes:
        train_rows / eval_rows: examples per dataset name after tokenization.
        truncated: examples cut to cutoff_len (train and eval) that kept a trained token.
        dropped: examples dropped because no trained token was left (train and eval).
        skipped: bad source rows skipped by `skip_bad_rows`; `skipped_examples` describes the first few.
        length_p50 / p90 / p99 / max: tokens per train example.
        trained_fraction: share of train tokens whose label is trained (not -100).
        packing_efficiency: share of real tokens in packed sequences of cutoff_len (None unless packing).
        per_dataset: name -> rows, tokens, trained tokens, length percentiles, truncated, over both splits.
        notes: what cleaning, balance and curriculum did (one line each; empty when they are off).
    """

    train_rows: dict[str, int]
    eval_rows: dict[str, int]
    cutoff_len: int
    truncated: int = 0
    dropped: int = 0
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    length_p50: int = 0
    length_p90: int = 0
    length_p99: int = 0
    length_max: int = 0
    trained_tokens: int = 0
    total_tokens: int = 0
    packing_efficiency: float | None = None
    per_dataset: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def trained_fraction(self) -> float:
        return self.trained_tokens / self.total_tokens if self.total_tokens else 0.0

    def summary_lines(self) -> list[str]:
        """Human-readable lines, one fact each."""
        lines = [
            f"train rows: {_rows(self.train_rows)}",
            f"eval rows: {_rows(self.eval_rows)}",
            f"truncated to cutoff_len {self.cutoff_len}: {self.truncated}; dropped (no trained token left): "
            f"{self.dropped}; bad rows skipped: {self.skipped}",
        ]
        lines += [f"  skipped: {problem}" for problem in self.skipped_examples]
        lines.append(
            f"tokens per example: p50 {self.length_p50}, p90 {self.length_p90}, p99 {self.length_p99}, "
            f"max {self.length_max}"
        )
        lines.append(f"trained tokens: {self.trained_tokens:,} of {self.total_tokens:,} ({self.trained_fraction:.1%})")
        if self.packing_efficiency is not None:
            lines.append(f"packing efficiency at {self.cutoff_len} tokens: {self.packing_efficiency:.1%}")
        return lines + self.notes


def compute_stats(cfg: SftConfig, conversations: Conversations, train: Dataset, eval_: Dataset | None) -> DataStats:
    """Statistics of tokenized `train`/`eval_` (still holding their `truncated` column)."""
    import numpy as np
    import pyarrow.compute as pc

    # Arrow compute, not Python loops: a real dataset has billions of label ids.
    tables = [_table(ds) for ds in (train, eval_) if ds is not None]
    sources = [ds for ds in (conversations.train, conversations.eval) if ds is not None]
    lengths = pc.list_value_length(tables[0]["input_ids"]).to_numpy(zero_copy_only=False).astype(np.int64)
    stats = DataStats(
        train_rows=_per_dataset(tables[0]),
        eval_rows=_per_dataset(tables[1]) if len(tables) > 1 else {},
        cutoff_len=cfg.cutoff_len,
        truncated=sum(pc.sum(t["truncated"]).as_py() or 0 for t in tables),
        dropped=sum(len(s) for s in sources) - sum(t.num_rows for t in tables),
        skipped=conversations.skipped,
        skipped_examples=list(conversations.problems),
        trained_tokens=pc.sum(pc.not_equal(pc.list_flatten(tables[0]["labels"]), IGNORE_INDEX)).as_py() or 0,
        total_tokens=int(lengths.sum()),
    )
    if len(lengths):
        p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
        stats.length_p50, stats.length_p90, stats.length_p99 = int(p50), int(p90), int(p99)
        stats.length_max = int(lengths.max())
    if cfg.packing and len(lengths):
        stats.packing_efficiency = packing_efficiency(lengths.tolist(), cfg.cutoff_len)
    stats.per_dataset = _dataset_facts(tables)
    return stats


def _dataset_facts(tables: list[Any]) -> dict[str, dict[str, Any]]:
    """Token facts per dataset over every split: rows, tokens (prompt / trained), length percentiles, truncated."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.concat_tables([t.select(["input_ids", "labels", "dataset", "truncated"]) for t in tables])
    lengths = pc.list_value_length(table["input_ids"]).to_numpy(zero_copy_only=False).astype(np.int64)
    labels = pc.list_flatten(table["labels"])
    trained_flat = pc.not_equal(labels, IGNORE_INDEX).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(table["labels"]).to_numpy(zero_copy_only=False)
    trained = np.bincount(parents, weights=trained_flat, minlength=table.num_rows).astype(np.int64)
    names = np.asarray(table["dataset"].to_pylist(), dtype=object)
    truncated = table["truncated"].to_numpy(zero_copy_only=False)
    facts = {}
    for name in sorted(set(names)):
        rows = names == name
        p50, p90, p99 = np.percentile(lengths[rows], [50, 90, 99])
        tokens, trained_tokens = int(lengths[rows].sum()), int(trained[rows].sum())
        facts[str(name)] = {
            "rows": int(rows.sum()),
            "tokens": tokens,
            "trained_tokens": trained_tokens,
            "prompt_tokens": tokens - trained_tokens,
            "trained_fraction": trained_tokens / tokens if tokens else 0.0,
            "length_p50": int(p50),
            "length_p90": int(p90),
            "length_p99": int(p99),
            "length_max": int(lengths[rows].max()),
            "truncated": int(truncated[rows].sum()),
            "lengths": lengths[rows].tolist(),
        }
    return facts


def _table(dataset: Dataset) -> Any:
    """The dataset as a pyarrow Table (memory-mapped when cached on disk)."""
    return dataset.with_format("arrow")[:]


def _per_dataset(table: Any) -> dict[str, int]:
    import pyarrow.compute as pc

    counts = pc.value_counts(table["dataset"]).to_pylist()
    return dict(sorted((c["values"], c["counts"]) for c in counts))


def _rows(counts: dict[str, int]) -> str:
    if not counts:
        return "0"
    parts = ", ".join(f"{name} {n}" for name, n in counts.items())
    return f"{sum(counts.values())} ({parts})"
