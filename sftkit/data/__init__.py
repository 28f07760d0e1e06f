"""The data stage: registry names -> tokenized, masked examples (not packed: TRL packs at train time).

`prepare_data` is what training and evaluation use; `validate_data`, `preview` and `export` back
`sftkit validate`, `sftkit data preview` and `sftkit data export`. Tokenization is cached on disk by a
key covering the data, tokenizer, template, masking settings and the encoding code, so running the
same config again does not tokenize again.
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.data.loader import Conversations, load_conversations
from sftkit.data.stats import IGNORE_INDEX, DataStats, compute_stats
from sftkit.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

    from sftkit.config import SftConfig
    from sftkit.data.template import Template

__all__ = ["Conversations", "DataStats", "PreparedData", "export", "prepare_data", "preview", "render_example",
           "validate_data"]

COLUMNS = ("input_ids", "labels", "dataset", "index")
ANSI_TRAINED, ANSI_RESET = "\033[32m", "\033[0m"
PLAIN_TRAINED = ("[[", "]]")


@dataclass
class PreparedData:
    """Tokenized examples with columns input_ids, labels, dataset, index; `eval` is None without one."""

    train: Dataset
    eval: Dataset | None
    stats: DataStats


def prepare_data(cfg: SftConfig, tokenizer: Any) -> PreparedData:
    """Loads, normalizes, mixes, splits and tokenizes the config's datasets.

    Args:
        cfg: the run's config (datasets, template, cutoff_len, masking and cache settings).
        tokenizer: a tokenizer prepared for `cfg.template` (`sftkit.model.load_tokenizer`).

    Raises:
        DataError: a registry, file or row problem, or no training example keeps a trained token.
    """
    with _no_cycle_collection():
        return _tokenize_all(cfg, tokenizer, load_conversations(cfg))


def validate_data(cfg: SftConfig) -> str:
    """Resolves and parses every dataset of the config (no tokenizer, no model).

    Returns:
        A short summary such as "3 datasets, 400 rows: train 360, eval 40".

    Raises:
        DataError: the first problem found.
    """
    conv = load_conversations(cfg)
    eval_rows = len(conv.eval) if conv.eval is not None else 0
    summary = f"{len(conv.datasets)} datasets, {len(conv.train) + eval_rows} rows"
    if conv.eval is not None:
        summary += f": train {len(conv.train)}, eval {eval_rows}"
    if conv.skipped:
        summary += f", {conv.skipped} bad rows skipped"
    return summary


def preview(cfg: SftConfig, n: int = 3, color: bool = False) -> None:
    """Prints `n` training examples as they train, trained spans marked, then the data statistics.

    The text is decoded from input_ids/labels, so what is shown is exactly what the model sees.

    Args:
        cfg: the config.
        n: examples to show (the first ones of the training split).
        color: mark trained text in green (terminal) instead of `[[` `]]` (pipes, files).
    """
    tokenizer, data = _prepare_for_cli(cfg)
    for row in data.train.select(range(min(n, len(data.train)))):
        trained = sum(label != IGNORE_INDEX for label in row["labels"])
        print(f"--- {row['dataset']} row {row['index']}: {len(row['input_ids'])} tokens, {trained} trained")
        print(render_example(tokenizer, row["input_ids"], row["labels"], color))
    print("--- statistics")
    for line in data.stats.summary_lines():
        print(line)


def export(cfg: SftConfig, out: str | Path, split: str = "train") -> int:
    """Writes one JSON object per example (input_ids, labels, dataset, index) to `out`, atomically.

    Args:
        cfg: the config.
        out: the JSONL file to write (replaced only once it is complete).
        split: "train" or "eval".

    Returns:
        The number of rows written.

    Raises:
        DataError: `split` is eval but the config has no eval set.
    """
    if split == "eval" and not (cfg.eval_dataset or cfg.val_size):
        raise DataError("--split eval: the config has no eval set; set val_size or eval_dataset")
    _, data = _prepare_for_cli(cfg)
    dataset = data.train if split == "train" else data.eval
    assert dataset is not None
    _write_jsonl(dataset, Path(out))
    print(f"wrote {len(dataset)} {split} rows to {out}")
    return len(dataset)


# ---------------------------------------------------------------------------- tokenization

def _tokenize_all(cfg: SftConfig, tokenizer: Any, conversations: Conversations) -> PreparedData:
    from sftkit.data.template import get_template

    template = get_template(cfg.template)
    _check_cutoff_len(cfg, tokenizer, template)
    train = _tokenize(conversations.train, tokenizer, template, cfg)
    eval_ = _tokenize(conversations.eval, tokenizer, template, cfg) if conversations.eval is not None else None
    if len(train) == 0:
        raise DataError(f"no training example keeps a trained token within cutoff_len {cfg.cutoff_len} "
                        f"({len(conversations.train)} rows dropped); raise cutoff_len or shorten the prompts")
    if eval_ is not None and len(eval_) == 0:
        raise DataError(f"no eval example keeps a trained token within cutoff_len {cfg.cutoff_len}; raise "
                        "cutoff_len or choose other eval data")
    stats = compute_stats(cfg, conversations, train, eval_)
    return PreparedData(_final(train), _final(eval_) if eval_ is not None else None, stats)


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Pauses Python's cyclic garbage collector (reference counting still frees everything).

    Loading and tokenizing allocate millions of small lists and ints, none of them in reference cycles,
    yet each allocation burst makes the collector rescan every live object: a fifth of preprocessing
    time went there. Forked map workers inherit the paused state.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _check_cutoff_len(cfg: SftConfig, tokenizer: Any, template: Template) -> None:
    """A cutoff_len the template's own tokens fill leaves no room for any text: say so, not "all rows dropped"."""
    from sftkit.data.masking import template_overhead

    overhead = template_overhead(tokenizer, template)
    if cfg.cutoff_len <= overhead:
        raise DataError(f"cutoff_len {cfg.cutoff_len} leaves no room for text: the {template.name} template alone "
                        f"takes {overhead} tokens per exchange (role headers and end tokens); raise cutoff_len")


def _tokenize(conversations: Dataset, tokenizer: Any, template: Template, cfg: SftConfig) -> Dataset:
    """Encodes every conversation (datasets.map, cached on disk by `_cache_key`)."""
    from datasets import Features, Value

    key = _cache_key(conversations, tokenizer, template, cfg)
    cache_dir = _cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    if cfg.overwrite_cache:  # datasets would keep the shard count of the files left over, whatever num_proc is
        for stale in cache_dir.glob(f"tokenized-{key}*.arrow"):
            stale.unlink(missing_ok=True)
    features = Features({"input_ids": [Value("int32")], "labels": [Value("int32")], "dataset": Value("string"),
                         "index": Value("int64"), "truncated": Value("bool")})
    return conversations.map(
        _encode_batch, batched=True, batch_size=cfg.preprocessing_batch_size,
        num_proc=_num_proc(cfg.preprocessing_num_workers), remove_columns=conversations.column_names, features=features,
        fn_kwargs={"tokenizer": tokenizer, "template": template, "cutoff_len": cfg.cutoff_len,
                   "train_on_prompt": cfg.train_on_prompt, "mask_history": cfg.mask_history},
        cache_file_name=str(cache_dir / f"tokenized-{key}.arrow"), load_from_cache_file=not cfg.overwrite_cache,
        new_fingerprint=key, desc="Tokenizing")


def _num_proc(workers: int | None) -> int | None:
    """One worker means this process: datasets forks for any num_proc, and a forked child loses the fast
    tokenizer's multi-threading, so num_proc=1 would run slower than no worker process at all."""
    return workers if workers is not None and workers > 1 else None


def _encode_batch(batch: dict[str, list[Any]], tokenizer: Any, template: Template, cutoff_len: int,
                  train_on_prompt: bool, mask_history: bool) -> dict[str, list[Any]]:
    """One map batch, tokenized in one call; rows with no trained token left are dropped (the batch shrinks)."""
    from sftkit.data import masking  # module attribute looked up per call: tests can count calls

    try:
        rows = masking.encode_conversations(tokenizer, template, list(zip(batch["messages"], batch["tools"])),
                                            cutoff_len, train_on_prompt=train_on_prompt, mask_history=mask_history)
    except masking.ConversationError as exc:  # formats.py checks the same rules first; this names the row if not
        raise DataError(f"dataset {batch['dataset'][exc.position]!r} row {batch['index'][exc.position]}: "
                        f"{exc}") from None
    out: dict[str, list[Any]] = {name: [] for name in (*COLUMNS, "truncated")}
    for row, name, index in zip(rows, batch["dataset"], batch["index"]):
        if row is None:
            continue
        for column, value in zip((*COLUMNS, "truncated"),
                                 (row.input_ids, row.labels, name, index, row.truncated)):
            out[column].append(value)
    return out


def _cache_key(conversations: Dataset, tokenizer: Any, template: Template, cfg: SftConfig) -> str:
    """Changes whenever the tokenized result could: data, tokenizer, template, settings or code."""
    from sftkit.data import masking, template as template_module

    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    parts = [conversations._fingerprint, type(tokenizer).__name__, vocab, repr(template), str(cfg.cutoff_len),
             str(cfg.train_on_prompt), str(cfg.mask_history), inspect.getsource(masking),
             inspect.getsource(template_module), inspect.getsource(_encode_batch)]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8") + b"\0")
    return digest.hexdigest()[:32]


def _cache_dir() -> Path:
    """Beside the datasets library's own cache (HF_DATASETS_CACHE), read when called."""
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "sftkit"


def _final(dataset: Dataset) -> Dataset:
    """The public columns only (the `truncated` flag was for the statistics)."""
    return dataset.select_columns(list(COLUMNS))


# ---------------------------------------------------------------------------- preview / export helpers

def render_example(tokenizer: Any, input_ids: list[int], labels: list[int], color: bool) -> str:
    """Decodes an example run by run, marking trained runs (ANSI green, or `[[` `]]` when not `color`)."""
    start, end = (ANSI_TRAINED, ANSI_RESET) if color else PLAIN_TRAINED
    pieces = []
    for trained, ids in _runs(input_ids, labels):
        text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        pieces.append(f"{start}{text}{end}" if trained else text)
    return "".join(pieces)


def _prepare_for_cli(cfg: SftConfig) -> tuple[Any, PreparedData]:
    """Data problems surface before the tokenizer (or anything of the model) is loaded."""
    with _no_cycle_collection():
        conversations = load_conversations(cfg)
        tokenizer = _load_tokenizer(cfg)
        return tokenizer, _tokenize_all(cfg, tokenizer, conversations)


def _runs(input_ids: list[int], labels: list[int]) -> list[tuple[bool, list[int]]]:
    """Consecutive tokens grouped by whether they are trained."""
    runs: list[tuple[bool, list[int]]] = []
    for token, label in zip(input_ids, labels):
        trained = label != IGNORE_INDEX
        if runs and runs[-1][0] == trained:
            runs[-1][1].append(token)
        else:
            runs.append((trained, [token]))
    return runs


def _write_jsonl(dataset: Dataset, out: Path) -> None:
    """Writes to a temporary file beside `out`, then renames it: never a half-written file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            for row in dataset:
                handle.write(json.dumps({c: row[c] for c in COLUMNS}, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load_tokenizer(cfg: SftConfig) -> Any:
    from sftkit.model import load_tokenizer

    return load_tokenizer(cfg)

