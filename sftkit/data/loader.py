"""Registry names -> normalized conversation Datasets: load, normalize, mix, split.

No tokenizer is involved, so `sftkit validate` runs everything here without loading a model.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sftkit.data.formats import Normalized, normalize
from sftkit.data.registry import check_source, get_spec, load_registry, read_rows
from sftkit.data.spec import DatasetSpec
from sftkit.errors import DataError, gather

if TYPE_CHECKING:
    from datasets import Dataset

    from sftkit.config import SftConfig

STOPPING = {"interleave_under": "first_exhausted", "interleave_over": "all_exhausted"}


@dataclass
class Conversations:
    """Normalized conversations split into train and eval, and what loading skipped."""

    train: Dataset
    eval: Dataset | None
    datasets: list[str]  # every registry name used (train and eval)
    skipped: int = 0
    problems: list[str] = field(default_factory=list)


def load_conversations(cfg: SftConfig) -> Conversations:
    """Loads, normalizes, mixes and splits the config's datasets.

    Raises:
        DataError: any registry, file or row problem (rows are skipped instead with `skip_bad_rows`),
            a dataset left with no rows, or a `val_size` the data cannot satisfy.
    """
    specs = dataset_specs(cfg)  # all names checked first
    loaded = dict(zip(specs, gather(*(functools.partial(_normalized, spec, cfg) for spec in specs.values()))))
    names = list(specs)
    train = mix([_to_dataset(loaded[name]) for name in cfg.dataset], cfg.mix_strategy, cfg.interleave_probs, cfg.seed)
    if cfg.eval_dataset:
        eval_ = mix([_to_dataset(loaded[name]) for name in cfg.eval_dataset])
    else:
        train, eval_ = split(train, cfg.val_size, cfg.seed)
    problems = [p for part in loaded.values() for p in part.problems]
    return Conversations(train, eval_, names, sum(p.skipped for p in loaded.values()), problems[:5])


def dataset_specs(cfg: SftConfig) -> dict[str, DatasetSpec]:
    """Every dataset the config names (train and eval), resolved in the registry, all problems at once.

    Raises:
        DataError: a missing or broken registry, or unknown or broken entries.
    """
    registry = load_registry(cfg.dataset_dir)
    names = list(dict.fromkeys([*cfg.dataset, *(cfg.eval_dataset or [])]))
    return dict(zip(names, gather(*(functools.partial(get_spec, registry, name, cfg.dataset_dir) for name in names))))


def check_sources(cfg: SftConfig) -> None:
    """The instant data check before training: registry entries resolve and local files exist (none is read).

    Raises:
        SftkitError: every problem found.
    """
    gather(*(functools.partial(check_source, spec) for spec in dataset_specs(cfg).values()))


def mix(parts: list[Dataset], strategy: str = "concat", probs: list[float] | None = None, seed: int = 0) -> Dataset:
    """Concatenates datasets, or interleaves them (`interleave_under|interleave_over`) by `probs` and `seed`."""
    from datasets import concatenate_datasets, interleave_datasets

    if len(parts) == 1:
        return parts[0]
    if strategy == "concat":
        return concatenate_datasets(parts)
    return interleave_datasets(parts, probabilities=probs, seed=seed, stopping_strategy=STOPPING[strategy])


def split(dataset: Dataset, val_size: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Draws `val_size` rows (a fraction below 1, else a count) off `dataset`, deterministically by `seed`.

    Raises:
        DataError: the split would leave the train or eval side empty.
    """
    if not val_size:
        return dataset, None
    size: float | int = val_size if val_size < 1 else int(val_size)
    rows = len(dataset)
    eval_rows = math.ceil(size * rows) if isinstance(size, float) else size  # as datasets rounds it
    if not 0 < eval_rows < rows:
        raise DataError(
            f"val_size {val_size}: {rows} rows cannot give both splits a row ({eval_rows} eval, "
            f"{rows - eval_rows} train); use a smaller val_size, more data, or set eval_dataset"
        )
    parts = dataset.train_test_split(test_size=size, seed=seed)
    return parts["train"], parts["test"]


def conversation_features() -> Any:
    """Arrow schema of normalized rows (explicit, so datasets with and without tools concatenate)."""
    from datasets import Features, Value

    return Features(
        {
            "messages": [{"role": Value("string"), "content": Value("string")}],
            "tools": Value("string"),
            "dataset": Value("string"),
            "index": Value("int64"),
        }
    )


def _normalized(spec: Any, cfg: SftConfig) -> Normalized:
    rows = read_rows(spec)
    if cfg.max_samples is not None:
        rows = rows[: cfg.max_samples]
    result = normalize(rows, spec, cfg.default_system, cfg.skip_bad_rows)
    if not result.rows:
        raise DataError(
            f"dataset {spec.name!r} ({spec.source}): no usable rows, {result.skipped} bad rows "
            f"skipped; first: {result.problems[0] if result.problems else '-'}"
        )
    return result


def _to_dataset(normalized: Normalized) -> Dataset:
    from datasets import Dataset

    return Dataset.from_list(normalized.rows, features=conversation_features())
