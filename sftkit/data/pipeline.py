"""The data pipeline: registry names -> tokenized, masked examples (not packed: TRL packs at train time).

`prepare_data` is what training and evaluation use; `validate_setup` (data and model) backs `sftkit validate`.
Tokenization is cached on disk by a key covering what decides its output (the data, the tokenizer, the
template, the masking settings and `ENCODING_VERSION`), so running the same config again does not
tokenize again.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.data import masking
from sftkit.data.loader import Conversations, load_conversations
from sftkit.data.model_source import local_model_folder, model_problems
from sftkit.data.quality.apply import clean_and_balance, order_for_curriculum
from sftkit.data.stats import DataStats, compute_stats
from sftkit.data.tokenizer import base_tokenizer, named_template, resolve_template, template_origin
from sftkit.errors import DataError, SftkitError, gather
from sftkit.templates import Template, get_template

if TYPE_CHECKING:
    from datasets import Dataset

    from sftkit.config import SftConfig

COLUMNS = ("input_ids", "labels", "dataset", "index")
# Part of the tokenization cache key: raise it whenever a change to rendering, masking or truncation
# changes the ids or labels of any row (a comment or a refactor does not).
ENCODING_VERSION = 2


@dataclass
class PreparedData:
    """Tokenized examples with columns input_ids, labels, dataset, index; `eval` is None without one.

    `conversations`: the rows they were tokenized from (after cleaning and balance), for `data stats`.
    """

    train: Dataset
    eval: Dataset | None
    stats: DataStats
    conversations: Conversations | None = None


def prepare_data(cfg: SftConfig, tokenizer: Any, template: Template | None = None) -> PreparedData:
    """Loads, normalizes, mixes, splits and tokenizes the config's datasets.

    Args:
        cfg: the run's config (datasets, cutoff_len, masking and cache settings).
        tokenizer: a tokenizer prepared for the template (`sftkit.data.load_tokenizer`).
        template: the chat template (default: the config's).

    Raises:
        DataError: a registry, file or row problem, or no training example keeps a trained token.
    """
    with no_cycle_collection():
        return tokenize_all(cfg, tokenizer, template or resolve_template(cfg, tokenizer), load_conversations(cfg))


def validate_setup(cfg: SftConfig) -> str:
    """`sftkit validate`: every dataset resolves and parses, and the model is checked without loading weights.

    Returns:
        A short summary such as "3 datasets, 400 rows: train 360, eval 40; model models/x: ...".

    Raises:
        SftkitError: every data and model problem found, together.
    """
    data, model = gather(lambda: validate_data(cfg), lambda: _model_summary(cfg))
    return f"{data}; {model}; {validate_template(cfg)}"  # rendering every row needs good data and a model


def validate_data(cfg: SftConfig) -> str:
    """Resolves and parses every dataset of the config (no tokenizer, no model).

    Returns:
        A short summary such as "3 datasets, 400 rows: train 360, eval 40".

    Raises:
        DataError: the problems found.
    """
    conv = load_conversations(cfg)
    eval_rows = len(conv.eval) if conv.eval is not None else 0
    summary = f"{plural(len(conv.datasets), 'dataset')}, {plural(len(conv.train) + eval_rows, 'row')}"
    if conv.eval is not None:
        summary += f": train {len(conv.train)}, eval {eval_rows}"
    if conv.skipped:
        summary += f", {plural(conv.skipped, 'bad row')} skipped"
    return summary


def _model_summary(cfg: SftConfig) -> str:
    problems, line = model_problems(
        cfg.model_name_or_path, cfg.trust_remote_code, get_template(cfg.template).special_tokens if cfg.template else ()
    )
    if problems:
        raise SftkitError(*problems)
    return line


def plural(count: int, noun: str) -> str:
    """ "1 dataset", "3 datasets"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def validate_template(cfg: SftConfig) -> str:
    """Renders every row with the config's template (no model); which template is in force and where from.

    The template of a local model folder is read from its tokenizer files; a hub id's own template is
    only known once its tokenizer loads (a named template is checked without it).

    Raises:
        DataError: a row the template cannot train on (naming the dataset, the row and the template).
        ConfigError: no template anywhere, or a chat template sftkit cannot train with.
    """
    conversations = load_conversations(cfg)
    if local_model_folder(cfg.model_name_or_path) is not None:
        template = resolve_template(cfg, base_tokenizer(cfg))
    elif cfg.template is not None:
        template = named_template(cfg)
    else:
        return "template: the model's own chat_template (read when its tokenizer loads)"
    splits = [conversations.train] + ([conversations.eval] if conversations.eval is not None else [])
    for rows in splits:
        for row in rows:
            try:
                template.segments(row["messages"], row["tools"], only_last=cfg.mask_history)
            except DataError as exc:
                raise DataError(
                    f"dataset {row['dataset']!r} row {row['index']}: {exc} ({template_origin(template)})"
                ) from None
    return template_origin(template)


# ---------------------------------------------------------------------------- tokenization


def tokenize_all(cfg: SftConfig, tokenizer: Any, template: Template, conversations: Conversations) -> PreparedData:
    """Cleans and balances loaded conversations (when the config asks), tokenizes them into the train and eval
    examples (train in curriculum order when asked), with their statistics."""
    _check_cutoff_len(cfg, tokenizer, template)
    conversations, notes = clean_and_balance(cfg, conversations, tokenizer, judge_cache())
    train = _tokenize(conversations.train, tokenizer, template, cfg)
    eval_ = _tokenize(conversations.eval, tokenizer, template, cfg) if conversations.eval is not None else None
    if len(train) == 0:
        raise DataError(
            f"no training example keeps a trained token within cutoff_len {cfg.cutoff_len} "
            f"({len(conversations.train)} rows dropped); raise cutoff_len or shorten the prompts"
        )
    if eval_ is not None and len(eval_) == 0:
        raise DataError(
            f"no eval example keeps a trained token within cutoff_len {cfg.cutoff_len}; raise "
            "cutoff_len or choose other eval data"
        )
    stats = compute_stats(cfg, conversations, train, eval_)
    train, order_notes = order_for_curriculum(cfg, _final(train))
    stats.notes = notes + order_notes
    return PreparedData(train, _final(eval_) if eval_ is not None else None, stats, conversations)


@contextmanager
def no_cycle_collection() -> Iterator[None]:
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
    overhead = masking.template_overhead(tokenizer, template)
    if cfg.cutoff_len <= overhead:
        raise DataError(
            f"cutoff_len {cfg.cutoff_len} leaves no room for text: the {template.name} template alone "
            f"takes {overhead} tokens per exchange (role headers and end tokens); raise cutoff_len"
        )


def _tokenize(conversations: Dataset, tokenizer: Any, template: Template, cfg: SftConfig) -> Dataset:
    """Encodes every conversation (datasets.map, cached on disk by `_cache_key`)."""
    from datasets import Features, Value

    key = _cache_key(conversations, tokenizer, template, cfg)
    cache_dir = _cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    if cfg.overwrite_cache:  # datasets would keep the shard count of the files left over, whatever num_proc is
        for stale in cache_dir.glob(f"tokenized-{key}*.arrow"):
            stale.unlink(missing_ok=True)
    features = Features(
        {
            "input_ids": [Value("int32")],
            "labels": [Value("int32")],
            "dataset": Value("string"),
            "index": Value("int64"),
            "truncated": Value("bool"),
        }
    )
    return conversations.map(
        _encode_batch,
        batched=True,
        batch_size=cfg.preprocessing_batch_size,
        num_proc=_num_proc(cfg.preprocessing_num_workers, len(conversations)),
        remove_columns=conversations.column_names,
        features=features,
        fn_kwargs={
            "tokenizer": tokenizer,
            "template": template,
            "cutoff_len": cfg.cutoff_len,
            "train_on_prompt": cfg.train_on_prompt,
            "mask_history": cfg.mask_history,
        },
        cache_file_name=str(cache_dir / f"tokenized-{key}.arrow"),
        load_from_cache_file=not cfg.overwrite_cache,
        new_fingerprint=key,
        desc="Tokenizing",
    )


def _num_proc(workers: int | None, rows: int) -> int | None:
    """One worker means this process: datasets forks for any num_proc, and a forked child loses the fast
    tokenizer's multi-threading, so num_proc=1 would run slower than no worker process at all.

    Never more workers than CPUs (the start summary notes it) or rows (datasets would say so at every map)."""
    workers = min(workers, os.cpu_count() or 1, rows) if workers is not None else None
    return workers if workers is not None and workers > 1 else None


def _encode_batch(
    batch: dict[str, list[Any]],
    tokenizer: Any,
    template: Template,
    cutoff_len: int,
    train_on_prompt: bool,
    mask_history: bool,
) -> dict[str, list[Any]]:
    """One map batch, tokenized in one call; rows with no trained token left are dropped (the batch shrinks)."""
    try:  # masking's attribute is looked up per call: tests can count the calls
        rows = masking.encode_conversations(
            tokenizer,
            template,
            list(zip(batch["messages"], batch["tools"])),
            cutoff_len,
            train_on_prompt=train_on_prompt,
            mask_history=mask_history,
        )
    except masking.ConversationError as exc:  # formats.py checks the same rules first; this names the row if not
        raise DataError(
            f"dataset {batch['dataset'][exc.position]!r} row {batch['index'][exc.position]}: {exc}"
        ) from None
    out: dict[str, list[Any]] = {name: [] for name in (*COLUMNS, "truncated")}
    for row, name, index in zip(rows, batch["dataset"], batch["index"]):
        if row is None:
            continue
        for column, value in zip((*COLUMNS, "truncated"), (row.input_ids, row.labels, name, index, row.truncated)):
            out[column].append(value)
    return out


def _cache_key(conversations: Dataset, tokenizer: Any, template: Template, cfg: SftConfig) -> str:
    """Changes whenever the tokenized result could: data, tokenizer, template, masking settings, encoding version.

    The conversations' fingerprint covers the data and every config key that shapes it (datasets, their
    order and mix, max_samples, val_size, seed, default_system), since datasets derives it from content.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    parts = [
        conversations._fingerprint,
        type(tokenizer).__name__,
        vocab,
        repr(template),
        str(cfg.cutoff_len),
        str(cfg.train_on_prompt),
        str(cfg.mask_history),
        str(ENCODING_VERSION),
    ]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8") + b"\0")
    return digest.hexdigest()[:32]


def judge_cache() -> Path:
    """The LLM judge's scores (one JSON line per judged row), beside the tokenization cache."""
    return _cache_dir() / "judge_scores.jsonl"


def _cache_dir() -> Path:
    """Beside the datasets library's own cache (HF_DATASETS_CACHE), read when called."""
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "sftkit"


def _final(dataset: Dataset) -> Dataset:
    """The public columns only (the `truncated` flag was for the statistics)."""
    return dataset.select_columns(list(COLUMNS))
