"""The dataset formats (a registry: `FORMATS`): raw rows -> normalized conversations, row by row.

A normalized row is `{"messages": [{"role", "content"}, ...], "tools": str | None, "dataset", "index"}`
following the conversation rules of `sftkit.templates.conversation`. Every problem is one line naming
the file, the row and the fix. Adding a format is one `FORMATS` entry: its default columns and its
converter.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sftkit.data.spec import REGISTRY_FILE, DatasetSpec, SourceRow
from sftkit.errors import DataError
from sftkit.templates.conversation import parse_tools, role_order_problem, with_system

logger = logging.getLogger(__name__)

SHOWN_PROBLEMS = 5
DEFAULT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "system_tag": "system",
    "observation_tag": "observation",
    "function_tag": "function_call",
}
# tags key -> normalized role
TAG_ROLES = {
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
    "observation_tag": "observation",
    "function_tag": "function_call",
}

Message = dict[str, str]


class RowError(Exception):
    """What is wrong with one row, and the fix (the caller adds file and row)."""


@dataclass
class Normalized:
    """A dataset's good rows, and the bad ones that `skip_bad_rows` dropped."""

    rows: list[dict[str, Any]]
    skipped: int = 0
    problems: list[str] = field(default_factory=list)  # the first few, one line each


def normalize(
    rows: list[SourceRow], spec: DatasetSpec, default_system: str | None, skip_bad_rows: bool = False
) -> Normalized:
    """Converts a dataset's raw rows into normalized conversations.

    Args:
        rows: raw rows from `registry.read_rows`; their position becomes the `index` column.
        spec: the dataset's registry entry.
        default_system: system prompt for rows that carry none.
        skip_bad_rows: skip (and count) bad rows instead of raising.

    Raises:
        DataError: the first bad row (with how many more there are), unless `skip_bad_rows`.
    """
    convert = FORMATS[spec.formatting].convert
    good: list[dict[str, Any]] = []
    problems: list[str] = []
    for index, row in enumerate(rows):
        try:
            messages, tools = convert(row.data, spec, default_system)
        except RowError as exc:
            problems.append(locate_row(row, str(exc)))
            continue
        good.append({"messages": messages, "tools": tools, "dataset": spec.name, "index": index})
    if problems and not skip_bad_rows:
        more = f" ({len(problems) - 1} more bad rows; skip_bad_rows: true skips them)" if len(problems) > 1 else ""
        raise DataError(problems[0] + more)
    if problems:
        logger.warning("dataset %s: skipped %d bad rows, first: %s", spec.name, len(problems), problems[0])
    return Normalized(good, len(problems), problems[:SHOWN_PROBLEMS])


def alpaca_to_messages(data: Any, spec: DatasetSpec, default_system: str | None) -> tuple[list[Message], str | None]:
    """instruction (+ "\\n" + input) -> user, output -> assistant, after any `history` pairs.

    Raises:
        RowError: missing or mistyped column, malformed history, empty output.
    """
    row = _as_object(data)
    _check_layout(row, spec)
    cols = spec.columns
    prompt = _text(row, cols["prompt"], "prompt", required=True)
    query = _text(row, cols["query"], "query")
    response = _text(row, cols["response"], "response", required=True)
    if not response.strip():
        raise RowError(f"empty assistant reply (column {cols['response']!r}); fill it in or remove the row")
    system = _text(row, cols["system"], "system") or default_system
    response = with_reasoning(_text(row, cols["reasoning"], "reasoning"), response)
    user = "\n".join(part for part in (prompt, query) if part)
    turns = _history(row.get(cols["history"]), cols["history"])
    turns += [{"role": "user", "content": user}, {"role": "assistant", "content": response}]
    return with_system(system, turns), None


def sharegpt_to_messages(data: Any, spec: DatasetSpec, default_system: str | None) -> tuple[list[Message], str | None]:
    """A list of tagged messages -> normalized roles; system from a leading system message or column.

    Raises:
        RowError: missing or mistyped column, unknown role tag, roles out of order, empty reply.
    """
    row = _as_object(data)
    _check_layout(row, spec)
    column = spec.columns["messages"]
    raw = row.get(column)
    if raw is None:
        raise RowError(f"missing column {column!r}; map the right one with columns.messages in {REGISTRY_FILE}")
    if not isinstance(raw, list):
        raise RowError(f"column {column!r} must be a list of messages, got {type(raw).__name__}")
    if not raw:
        raise RowError(f"empty conversation in column {column!r}; remove the row")
    messages = [_tagged_message(m, i, spec.tags, spec.columns["reasoning"]) for i, m in enumerate(raw)]
    system = messages.pop(0)["content"] if messages[0]["role"] == "system" else None
    check_turns(messages, first_position=len(raw) - len(messages))
    system = system or _text(row, spec.columns["system"], "system") or default_system
    reasoning = _text(row, spec.columns["reasoning"], "reasoning")
    if reasoning:  # the row's reasoning belongs to its last reply
        messages[-1] = {**messages[-1], "content": with_reasoning(reasoning, messages[-1]["content"])}
    return with_system(system, messages), _tools(row.get(spec.columns["tools"]), spec.columns["tools"])


def with_reasoning(reasoning: str, reply: str) -> str:
    """A reply with its separate reasoning as the `<think>` block the thinking templates read (Qwen3's layout).

    The `<think>` block is the one normalized form of reasoning: named templates render it as they define,
    and a model's own Jinja that reads `reasoning_content` gets it back as that field (`JinjaTemplate`).

    Raises:
        RowError: the reply already holds a `<think>` block (two sources of reasoning for one reply).
    """
    if not reasoning.strip():
        return reply
    if "</think>" in reply:
        raise RowError("the reply has both separate reasoning and a <think> block in its text; keep one of them")
    return f"<think>\n{reasoning.strip()}\n</think>\n\n{reply}"


def check_turns(turns: list[Message], first_position: int = 0) -> None:
    """Raises RowError unless turns follow the conversation rules and every reply has text.

    Args:
        turns: the conversation without its system message.
        first_position: position of `turns[0]` in the source row (for the message numbers shown).
    """
    problem = role_order_problem(turns, first_position=first_position)
    if problem:
        raise RowError(problem)
    for i, message in enumerate(turns):
        if i % 2 and not message["content"].strip():
            raise RowError(f"empty assistant reply in message {i + first_position}; fill it in or remove the row")


# ---------------------------------------------------------------------------- helpers


def locate_row(row: SourceRow, problem: str) -> str:
    """Names a row problem the one way every row problem is named: FILE: row N (line L): PROBLEM."""
    line = f" (line {row.line})" if row.line is not None else ""
    return f"{row.source}: row {row.row}{line}: {problem}"


def _as_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise RowError(f"expected a JSON object, got {type(data).__name__}")
    return data


def _check_layout(row: dict[str, Any], spec: DatasetSpec) -> None:
    """A row of the other layout is named as a formatting mismatch rather than a missing column."""
    if spec.formatting == "alpaca" and spec.columns["prompt"] not in row:
        lists = [
            key
            for key, value in row.items()
            if isinstance(value, list) and value and all(isinstance(item, dict) for item in value)
        ]
        if lists:
            raise RowError(
                f"no column {spec.columns['prompt']!r}, and column {lists[0]!r} holds a list of messages: "
                f'the rows look like sharegpt; set "formatting": "sharegpt" in {REGISTRY_FILE}'
            )
    if spec.formatting == "sharegpt" and spec.columns["messages"] not in row and {"instruction", "output"} <= set(row):
        raise RowError(
            f"no column {spec.columns['messages']!r}, but instruction/output columns: the rows look like "
            f'alpaca; set "formatting": "alpaca" in {REGISTRY_FILE}'
        )


def _text(row: dict[str, Any], column: str, logical: str, required: bool = False) -> str:
    """A string column; absent or null is "" unless required."""
    value = row.get(column)
    if value is None:
        if required:
            raise RowError(f"missing column {column!r}; map the right one with columns.{logical} in {REGISTRY_FILE}")
        return ""
    if not isinstance(value, str):
        raise RowError(f"column {column!r} must be a string, got {type(value).__name__} ({_short(value)})")
    return value


def _history(value: Any, column: str) -> list[Message]:
    if value is None:
        return []
    fix = f"column {column!r} must be a list of [question, answer] string pairs"
    if not isinstance(value, list):
        raise RowError(f"{fix}, got {type(value).__name__}")
    turns: list[Message] = []
    for i, pair in enumerate(value):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise RowError(f"{fix}; pair {i} is {_short(pair)}")
        if not pair[1].strip():
            raise RowError(f"empty assistant reply in {column!r} pair {i}; fill it in or remove the pair")
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return turns


def _tagged_message(message: Any, position: int, tags: dict[str, str], reasoning_key: str) -> Message:
    """One tagged message, normalized; an assistant's own reasoning field (OpenAI's `reasoning_content`, or the
    registry's reasoning column name) becomes its `<think>` block."""
    if not isinstance(message, dict):
        raise RowError(f"message {position} must be an object, got {type(message).__name__}")
    role_tag, content_tag = tags["role_tag"], tags["content_tag"]
    for key, tag in ((role_tag, "role_tag"), (content_tag, "content_tag")):
        if key not in message:
            raise RowError(f"message {position} has no {key!r} key; set tags.{tag} in {REGISTRY_FILE}")
    roles = {tags[key]: role for key, role in TAG_ROLES.items()}
    role, content = message[role_tag], message[content_tag]
    if role not in roles:
        raise RowError(
            f"message {position} has unknown role {_short(role)}, expected one of "
            f"{', '.join(roles)}; map it with tags in {REGISTRY_FILE}"
        )
    if not isinstance(content, str):
        raise RowError(f"message {position}: {content_tag!r} must be a string, got {type(content).__name__}")
    if roles[role] == "system" and position:
        raise RowError(f"message {position} is a system message; only the first message may be one")
    return {"role": roles[role], "content": _message_reasoning(message, position, roles[role], content, reasoning_key)}


def _message_reasoning(message: dict[str, Any], position: int, role: str, content: str, reasoning_key: str) -> str:
    """`content` with the message's own reasoning field as its `<think>` block (absent, null or "": unchanged)."""
    keys = [key for key in dict.fromkeys(("reasoning_content", reasoning_key)) if message.get(key) not in (None, "")]
    if not keys:
        return content
    if len(keys) > 1:
        raise RowError(f"message {position} has both {keys[0]!r} and {keys[1]!r}; keep one reasoning field")
    reasoning = message[keys[0]]
    if not isinstance(reasoning, str):
        raise RowError(f"message {position}: {keys[0]!r} must be a string, got {type(reasoning).__name__}")
    if role != "assistant":
        raise RowError(
            f"message {position} is a {role} message with {keys[0]!r}; only assistant replies carry reasoning"
        )
    try:
        return with_reasoning(reasoning, content)
    except RowError as exc:
        raise RowError(f"message {position}: {exc}") from None


def _tools(value: Any, column: str) -> str | None:
    """Tool schemas as a JSON string (lists and objects are dumped), None when absent."""
    if not isinstance(value, (str, list, dict, type(None))):
        raise RowError(f"column {column!r} must be a JSON string or list of tool schemas, got {type(value).__name__}")
    try:
        tools = parse_tools(value)
    except ValueError as exc:
        raise RowError(f"column {column!r} {exc}; fix the tool schemas") from None
    if not tools:
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class Format:
    """A dataset format: its logical columns (with default names) and the converter of one row."""

    columns: dict[str, str]
    convert: Callable[[Any, DatasetSpec, str | None], tuple[list[Message], str | None]]
    tagged: bool = False  # rows hold tagged messages (registry `tags`)


FORMATS = {
    "alpaca": Format(
        {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "system": "system",
            "history": "history",
            "reasoning": "reasoning",
        },
        alpaca_to_messages,
    ),
    "sharegpt": Format(
        {"messages": "conversations", "system": "system", "tools": "tools", "reasoning": "reasoning"},
        sharegpt_to_messages,
        tagged=True,
    ),
}
