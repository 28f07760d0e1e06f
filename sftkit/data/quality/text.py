"""Text views of a normalized conversation that the quality checks compare: normalised text, n-grams, language."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

# CJK characters count one unit each (those scripts write no spaces); other text splits into words.
_UNITS = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]|[^\W\u3040-\u30ff\u3400-\u4dbf"
    r"\u4e00-\u9fff\uac00-\ud7af]+"
)
NGRAM = 3  # word 3-grams: the shingle size of near-duplicate detection and the repetition filter
PROMPT_ROLES = ("system", "user", "observation")


def normalise(text: str) -> str:
    """Lower case, NFKC, punctuation dropped, whitespace collapsed: "Hello,  World!" -> "hello world"."""
    return " ".join(units(text))


def units(text: str) -> list[str]:
    """Words (CJK: characters) of `text`, lower-cased after NFKC normalisation."""
    return _UNITS.findall(unicodedata.normalize("NFKC", text).lower())


def ngrams(tokens: list[str], n: int = NGRAM) -> list[tuple[str, ...]]:
    """The n-grams of `tokens`; a text shorter than n is its one n-gram."""
    if len(tokens) < n:
        return [tuple(tokens)] if tokens else []
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def replies(row: dict[str, Any]) -> list[str]:
    """The assistant replies of a normalized row (tool calls included: they are trained too)."""
    return [m["content"] for m in row["messages"] if m["role"] in ("assistant", "function_call")]


def prompt_text(row: dict[str, Any]) -> str:
    """What the model reads but does not write: system, user and tool-result turns."""
    return "\n".join(m["content"] for m in row["messages"] if m["role"] in PROMPT_ROLES)


def conversation_text(row: dict[str, Any]) -> str:
    """Every turn with its role, and the tools: two rows with equal text train the same tokens."""
    turns = "\n".join(f"{m['role']}: {m['content']}" for m in row["messages"])
    return f"{row.get('tools') or ''}\n{turns}"


def language(text: str) -> str:
    """ISO 639-1 code of `text` by py3langid (offline, its model ships in the package); "" for no letters."""
    if not units(text):
        return ""
    import py3langid

    return str(py3langid.classify(text)[0])


def repeated_share(text: str, n: int = NGRAM) -> float:
    """Share of the n-grams of `text` that repeat an earlier one (0 for no repetition, near 1 for a loop)."""
    grams = ngrams(units(text), n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0
