"""The data-quality keys (cleaning, balance, curriculum): a mixin that `SftConfig` inherits, and their checks.

They sit in the data group of the reference. Every key is off by default, so a config without them trains
on exactly the rows it always did.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, field_validator

from sftkit.config.fields import documented

if TYPE_CHECKING:
    from sftkit.config.schema import SftConfig

JUDGE_THRESHOLD = 4.0  # the guide's cut: keep rows whose mean 1-5 rubric score is at least this


def _field(default: Any, doc: str, **kw: Any) -> Any:
    return documented(default, doc, "data", **kw)


class DataQualityConfig(BaseModel):
    """Cleaning, balance and curriculum settings, applied to the loaded rows before tokenization."""

    clean_dedup: Literal["none", "exact", "near"] = _field(
        "none",
        "Drop duplicate conversations within and across the datasets, keeping the first: exact (same text "
        "once case, punctuation and spacing are normalised) or near (also MinHash LSH similarity above "
        "clean_near_threshold). With an eval set, train rows whose prompt is in the eval set are reported as "
        "leaks.",
    )
    clean_near_threshold: float = _field(
        0.8,
        "Estimated Jaccard similarity of word 3-grams above which two conversations are near duplicates "
        "(clean_dedup: near).",
        gt=0,
        lt=1,
    )
    clean_remove_leaks: bool = _field(
        False, "Also drop the train rows whose prompt is an (exact or near) duplicate of an eval row's prompt."
    )
    clean_empty_replies: bool = _field(False, "Drop conversations with an empty or whitespace-only assistant reply.")
    clean_min_reply_tokens: int | None = _field(
        None, "Drop conversations whose assistant replies together have fewer tokens than this.", gt=0
    )
    clean_max_reply_tokens: int | None = _field(
        None, "Drop conversations whose assistant replies together have more tokens than this.", gt=0
    )
    clean_max_repeated_ngrams: float | None = _field(
        None,
        "Drop a conversation when more than this share of a reply's word 3-grams are repeats (looping text), e.g. 0.5.",
        gt=0,
        lt=1,
    )
    clean_prompt_copies: bool = _field(
        False,
        "Drop conversations whose reply copies the prompt (the normalised reply is the prompt, or is found "
        "in it and is at least half its length).",
    )
    clean_patterns: list[str] | None = _field(
        None,
        "Regular expressions (case-insensitive) for refusals or boilerplate; a conversation with a reply "
        "matching any is dropped, e.g. ['as an ai language model', '^i.m sorry, but'].",
    )
    clean_languages: list[str] | None = _field(
        None,
        "Keep only conversations in these languages (ISO 639-1 codes such as en, zh, identified offline by py3langid).",
    )
    clean_judge_model: str | None = _field(
        None,
        "Score each training conversation 1-5 for clarity, helpfulness and formatting with this model "
        "behind an OpenAI-compatible endpoint (clean_judge_base_url) and drop those below "
        "clean_judge_threshold; scores are cached per row. Unset: no judge.",
    )
    clean_judge_base_url: str | None = _field(
        None, "Base URL of the judge's OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1."
    )
    clean_judge_api_key_env: str = _field(
        "OPENAI_API_KEY", "Environment variable holding the judge's API key (a local server may need none)."
    )
    clean_judge_threshold: float = _field(
        JUDGE_THRESHOLD, "Lowest mean rubric score (1-5) a judged conversation keeps.", ge=1, le=5
    )
    balance_column: str | None = _field(
        None,
        "Sample the training rows to the shares of balance_shares by this column of the source rows, or "
        "by `dataset` (the registry name).",
    )
    balance_shares: dict[str, float] | None = _field(
        None,
        "Target share per category of balance_column, e.g. {creative: 20, qa: 25, code: 15, analysis: 20, "
        "chat: 20} (percent or fractions: they are normalised). Rows of other categories are left out.",
    )
    balance_rows: int | None = _field(
        None,
        "Training rows after balancing; a category short of its share is then sampled with repetition. "
        "Unset: as many as the shares allow without repeating a row.",
        gt=0,
    )
    curriculum: Literal["none", "length", "score", "loss"] = _field(
        "none",
        "Train easy to hard, in order (sequential sampling, no shuffling): by length (tokens), by "
        "curriculum_column (ascending), or by the model's own loss on each row measured before training.",
    )
    curriculum_column: str | None = _field(
        None, "Numeric column of the source rows that orders the curriculum (curriculum: score)."
    )
    curriculum_stages: int = _field(
        1,
        "1: strictly sorted. N > 1: N phases of one run (easy, ..., hard), each a slice of the sorted rows, "
        "shuffled within the phase.",
        ge=1,
    )

    @field_validator("clean_patterns", "clean_languages", mode="before")
    @classmethod
    def _quality_comma_lists(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("clean_patterns")
    @classmethod
    def _compiles(cls, value: list[str] | None) -> list[str] | None:
        for pattern in value or []:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression ({exc})") from None
        return value

    @field_validator("balance_shares")
    @classmethod
    def _positive_shares(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None and (not value or any(share <= 0 for share in value.values())):
            raise ValueError("give each category a share above 0, e.g. {qa: 25, code: 15}")
        return value


# Each check returns None when satisfied, else one line naming the keys and the fix.


def check_balance(c: SftConfig) -> str | None:
    if (c.balance_column is None) != (c.balance_shares is None):
        return "balance_column and balance_shares: set both (the column and its target shares) or neither"
    if c.balance_rows is not None and c.balance_column is None:
        return "balance_rows: set balance_column and balance_shares too"
    return None


def check_curriculum(c: SftConfig) -> str | None:
    if (c.curriculum == "score") != (c.curriculum_column is not None):
        return "curriculum_column: set it exactly when curriculum is score"
    if c.curriculum != "none" and c.packing:
        return (
            "curriculum: packing regroups rows by length (TRL's best-fit decreasing), which undoes the order; "
            "set packing: false"
        )
    return None


def check_reply_tokens(c: SftConfig) -> str | None:
    low, high = c.clean_min_reply_tokens, c.clean_max_reply_tokens
    if low is not None and high is not None and low > high:
        return f"clean_min_reply_tokens ({low}) is above clean_max_reply_tokens ({high}); no row could stay"
    return None


def check_judge(c: SftConfig) -> str | None:
    if c.clean_judge_model is not None and c.clean_judge_base_url is None:
        return "clean_judge_model: set clean_judge_base_url too (the judge's OpenAI-compatible endpoint)"
    return None


QUALITY_CHECKS = (check_balance, check_curriculum, check_reply_tokens, check_judge)
