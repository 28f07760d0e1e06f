"""Cleaning: which rows to drop and why (duplicates, leaks, filters, the judge). Nothing here writes files.

Rows are normalized conversations (`messages`, `tools`, `dataset`, `index`). The first of a set of
duplicates is kept, in the order the rows come (dataset order, then file order; the seeded split order in
training), so the result depends only on the data and the seed (which also seeds MinHash).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.data.quality.text import (
    conversation_text,
    language,
    ngrams,
    normalise,
    prompt_text,
    repeated_share,
    replies,
)

if TYPE_CHECKING:
    from sftkit.config import SftConfig

NUM_PERM = 128  # MinHash permutations: Jaccard estimates within about +-0.09 (1 / sqrt(128))


@dataclass
class Removal:
    """One row that cleaning drops (or, for a kept leak, reports), and why."""

    split: str
    dataset: str
    index: int
    reason: str  # exact_duplicate, near_duplicate, leak, empty_reply, short_reply, long_reply, ...
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "dataset": self.dataset,
            "index": self.index,
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass
class CleanResult:
    """Positions kept in each split, every removed row with its reason, and the leaks found."""

    train_keep: list[int]
    eval_keep: list[int] | None
    removed: list[Removal] = field(default_factory=list)
    leaks: list[Removal] = field(default_factory=list)
    leaks_removed: bool = False
    unjudged: int = 0

    def summary_line(self, train_rows: int) -> str:
        """ "clean: 380 of 400 train rows kept (12 exact_duplicate, 3 near_duplicate); 2 leaks (removed)"."""
        train_removed = Counter(r.reason for r in self.removed if r.split == "train")
        line = f"clean: {len(self.train_keep)} of {train_rows} train rows kept"
        if train_removed:
            line += f" ({', '.join(f'{n} {reason}' for reason, n in train_removed.most_common())})"
        if self.eval_keep is not None:
            eval_removed = sum(r.split == "eval" for r in self.removed)
            line += f"; eval: {eval_removed} removed"
        if self.leaks:
            line += f"; {len(self.leaks)} train prompts also in the eval set ({'removed' if self.leaks_removed else 'kept: clean_remove_leaks: true drops them'})"
        if self.unjudged:
            line += f"; {self.unjudged} rows the judge gave no usable score (kept, asked again next time)"
        return line


def cleaning_on(cfg: SftConfig) -> bool:
    """Whether any cleaning key is set (else the rows pass untouched and unread)."""
    return (
        cfg.clean_dedup != "none"
        or cfg.clean_remove_leaks
        or cfg.clean_empty_replies
        or cfg.clean_min_reply_tokens is not None
        or cfg.clean_max_reply_tokens is not None
        or cfg.clean_max_repeated_ngrams is not None
        or cfg.clean_prompt_copies
        or bool(cfg.clean_patterns)
        or bool(cfg.clean_languages)
        or cfg.clean_judge_model is not None
    )


def clean_rows(
    cfg: SftConfig,
    train: list[dict[str, Any]],
    eval_: list[dict[str, Any]] | None,
    tokenizer: Any = None,
    judge_cache: Path | None = None,
) -> CleanResult:
    """Decides which rows stay: filters, then duplicates, then leaks, then the judge (the costly part) last.

    Args:
        cfg: the cleaning keys.
        train / eval_: normalized rows of each split (eval_ None without an eval set).
        tokenizer: counts reply tokens (needed only with clean_min_reply_tokens / clean_max_reply_tokens).
        judge_cache: the judge's score cache file (needed only with clean_judge_model).
    """
    removed: list[Removal] = []
    keep_train = _survivors(cfg, train, "train", tokenizer, removed)
    keep_eval = _survivors(cfg, eval_, "eval", tokenizer, removed) if eval_ is not None else None
    result = CleanResult(keep_train, keep_eval, removed)
    if eval_ is not None and keep_eval is not None and (cfg.clean_dedup != "none" or cfg.clean_remove_leaks):
        leaks = find_leaks(
            [train[i] for i in keep_train],
            [eval_[i] for i in keep_eval],
            near=cfg.clean_dedup == "near",
            threshold=cfg.clean_near_threshold,
            seed=cfg.seed,
        )
        for position, eval_position in sorted(leaks.items()):
            row, source = train[keep_train[position]], eval_[keep_eval[eval_position]]
            result.leaks.append(
                Removal(
                    "train",
                    row["dataset"],
                    row["index"],
                    "leak",
                    f"prompt of eval {source['dataset']} row {source['index']}",
                )
            )
        if cfg.clean_remove_leaks:
            result.train_keep = [i for p, i in enumerate(keep_train) if p not in leaks]
            result.removed += result.leaks
            result.leaks_removed = True
    if cfg.clean_judge_model is not None:
        assert judge_cache is not None
        _judge(cfg, train, result, judge_cache)
    return result


def _survivors(
    cfg: SftConfig, rows: list[dict[str, Any]], split: str, tokenizer: Any, removed: list[Removal]
) -> list[int]:
    """Positions of `rows` that pass the filters and are no duplicate of an earlier survivor."""
    failed = row_filters(cfg, rows, tokenizer)
    for position, (reason, detail) in sorted(failed.items()):
        removed.append(Removal(split, rows[position]["dataset"], rows[position]["index"], reason, detail))
    passing = [i for i in range(len(rows)) if i not in failed]
    if cfg.clean_dedup == "none":
        return passing
    duplicates = find_duplicates([rows[i] for i in passing], cfg.clean_dedup, cfg.clean_near_threshold, cfg.seed)
    for position, (kind, first) in sorted(duplicates.items()):
        row, kept = rows[passing[position]], rows[passing[first]]
        removed.append(
            Removal(
                split, row["dataset"], row["index"], f"{kind}_duplicate", f"of {kept['dataset']} row {kept['index']}"
            )
        )
    return [i for p, i in enumerate(passing) if p not in duplicates]


# ---------------------------------------------------------------------------- duplicates and leaks


def find_duplicates(
    rows: list[dict[str, Any]], mode: str = "near", threshold: float = 0.8, seed: int = 0
) -> dict[int, tuple[str, int]]:
    """position -> ("exact" | "near", position of the earlier row it duplicates), over whole conversations."""
    texts = [normalise(conversation_text(row)) for row in rows]
    return _matches(texts, texts, mode == "near", threshold, seed, same=True)


def find_leaks(
    train: list[dict[str, Any]], eval_: list[dict[str, Any]], near: bool, threshold: float, seed: int
) -> dict[int, int]:
    """train position -> eval position whose prompt it repeats (an eval question seen in training)."""
    return {
        p: first
        for p, (_, first) in _matches(
            [normalise(prompt_text(r)) for r in train],
            [normalise(prompt_text(r)) for r in eval_],
            near,
            threshold,
            seed,
            same=False,
        ).items()
    }


def _matches(
    queries: list[str], pool: list[str], near: bool, threshold: float, seed: int, same: bool
) -> dict[int, tuple[str, int]]:
    """For each query, the first pool text equal to it (or, with `near`, MinHash-similar above `threshold`).

    `same`: queries and pool are one list, and a text only matches an earlier one that is itself kept.
    """
    exact: dict[str, int] = {}
    found: dict[int, tuple[str, int]] = {}
    if not same:
        for position, text in enumerate(pool):
            exact.setdefault(text, position)
    lsh, hashes = (_lsh(threshold), {}) if near else (None, {})
    if near and not same:
        for position, text in enumerate(pool):
            hashes[position] = _minhash(text, seed)
            lsh.insert(position, hashes[position])
    for position, text in enumerate(queries):
        if text in exact and (not same or exact[text] != position):
            found[position] = ("exact", exact[text])
            continue
        if near:
            signature = _minhash(text, seed)
            hits = [int(h) for h in lsh.query(signature) if signature.jaccard(hashes[int(h)]) >= threshold]
            if hits:
                found[position] = ("near", min(hits))
                continue
        if same:  # a kept row: later rows are compared with it
            exact[text] = position
            if near:
                hashes[position] = signature
                lsh.insert(position, signature)
    return found


def _lsh(threshold: float) -> Any:
    from datasketch import MinHashLSH

    return MinHashLSH(threshold=threshold, num_perm=NUM_PERM)


def _minhash(text: str, seed: int) -> Any:
    from datasketch import MinHash

    signature = MinHash(num_perm=NUM_PERM, seed=seed)
    signature.update_batch([" ".join(gram).encode("utf-8") for gram in ngrams(text.split())])
    return signature


# ---------------------------------------------------------------------------- row filters


def row_filters(cfg: SftConfig, rows: list[dict[str, Any]], tokenizer: Any = None) -> dict[int, tuple[str, str]]:
    """position -> (reason, detail) for every row a filter drops; the first failing filter names it."""
    counts = _reply_tokens(rows, tokenizer) if (cfg.clean_min_reply_tokens or cfg.clean_max_reply_tokens) else None
    patterns = [re.compile(p, re.IGNORECASE | re.MULTILINE) for p in cfg.clean_patterns or []]
    failed: dict[int, tuple[str, str]] = {}
    for position, row in enumerate(rows):
        problem = _first_problem(cfg, row, counts[position] if counts is not None else 0, patterns)
        if problem is not None:
            failed[position] = problem
    return failed


def _first_problem(
    cfg: SftConfig, row: dict[str, Any], tokens: int, patterns: list[re.Pattern[str]]
) -> tuple[str, str] | None:
    texts = replies(row)
    if cfg.clean_empty_replies and any(not text.strip() for text in texts):
        return "empty_reply", "a reply is empty or whitespace"
    if cfg.clean_min_reply_tokens is not None and tokens < cfg.clean_min_reply_tokens:
        return "short_reply", f"{tokens} reply tokens < {cfg.clean_min_reply_tokens}"
    if cfg.clean_max_reply_tokens is not None and tokens > cfg.clean_max_reply_tokens:
        return "long_reply", f"{tokens} reply tokens > {cfg.clean_max_reply_tokens}"
    if cfg.clean_max_repeated_ngrams is not None:
        share = max((repeated_share(text) for text in texts), default=0.0)
        if share > cfg.clean_max_repeated_ngrams:
            return "repeated_ngrams", f"{share:.0%} of a reply's 3-grams repeat"
    if cfg.clean_prompt_copies and _copies_prompt(row):
        return "prompt_copy", "the reply copies the prompt"
    for pattern in patterns:
        if any(pattern.search(text) for text in texts):
            return "pattern", f"a reply matches {pattern.pattern!r}"
    if cfg.clean_languages:
        found = language(prompt_text(row) + "\n" + "\n".join(texts))
        if found not in cfg.clean_languages:
            return "language", f"{found or 'no text'} not in {','.join(cfg.clean_languages)}"
    return None


def _copies_prompt(row: dict[str, Any]) -> bool:
    prompt = normalise(prompt_text(row))
    for text in replies(row):
        reply = normalise(text)
        if reply and (reply == prompt or (reply in prompt and 2 * len(reply) >= len(prompt))):
            return True
    return False


def _reply_tokens(rows: list[dict[str, Any]], tokenizer: Any) -> list[int]:
    """Tokens of each row's replies together, the tokenizer called once for all of them."""
    assert tokenizer is not None, "reply token filters need the tokenizer"
    texts = [replies(row) for row in rows]
    flat = [text for row_texts in texts for text in row_texts]
    ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    counts, at = [], 0
    for row_texts in texts:
        counts.append(sum(len(ids[at + i]) for i in range(len(row_texts))))
        at += len(row_texts)
    return counts


def _judge(cfg: SftConfig, train: list[dict[str, Any]], result: CleanResult, cache: Path) -> None:
    from sftkit.data.quality.judge import Judge

    judge = Judge(cfg, cache)
    kept = []
    for position in result.train_keep:
        row = train[position]
        verdict = judge.score(conversation_text(row).strip())
        if verdict.score is None:
            result.unjudged += 1
        elif verdict.score < cfg.clean_judge_threshold:
            result.removed.append(
                Removal(
                    "train",
                    row["dataset"],
                    row["index"],
                    "judge",
                    f"score {verdict.score:.2f} < {cfg.clean_judge_threshold} {verdict.scores}",
                )
            )
            continue
        kept.append(position)
    result.train_keep = kept
