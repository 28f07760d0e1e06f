"""Prompts with references: conversations cut before their last reply, for generation at eval and predict time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sftkit.data.loader import load_conversations
from sftkit.templates import ASSISTANT_SIDE, Template

if TYPE_CHECKING:
    from sftkit.config import SftConfig


@dataclass(frozen=True)
class Prompt:
    """A conversation cut before its last assistant-side reply, and that reply as the reference."""

    dataset: str
    index: int
    messages: list[dict[str, str]]
    tools: str | None
    reference: str


def load_prompts(cfg: SftConfig, split: str, n: int, template: Template) -> list[Prompt]:
    """The first `n` conversations of the split ("train" or "eval"), each cut before its last reply."""
    conversations = load_conversations(cfg)
    rows = conversations.eval if split == "eval" else conversations.train
    assert rows is not None  # callers check that an eval set exists
    return [to_prompt(row, template) for row in rows.select(range(min(n, len(rows))))]


def to_prompt(row: dict[str, Any], template: Template) -> Prompt:
    """Splits a normalized conversation into its prompt and the last reply's trained text (no end token)."""
    messages = row["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] in ASSISTANT_SIDE)
    segments = template.segments(messages[: last + 1], row["tools"])
    reply_turn = segments[-1].turn
    reference = "".join(s.text for s in segments if s.turn == reply_turn and s.trained and not s.end)
    return Prompt(row["dataset"], row["index"], messages[:last], row["tools"], reference)
