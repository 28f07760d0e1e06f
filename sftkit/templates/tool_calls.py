"""A model's tool calls read back from its reply, in the format its template trains them (`TOOL_FORMATS`).

The inverse of the template's rendering of a `function_call` turn: hermes `<tool_call>\\n{json}\\n</tool_call>`
blocks (after any text), Llama 3.1's bare `{"name": ..., "parameters": ...}` reply, Mistral's
`[TOOL_CALLS] [{...}, ...]`. A model's own Jinja template gets the format its source writes. A reply that
holds no complete, parseable call is plain text: a malformed call is never guessed at. Adding a format is
one entry in `PARSERS` (and `CALL_STARTS`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# What opens a call in each format (Llama 3.1's call is the whole reply, a JSON object)
CALL_STARTS = {"hermes": "<tool_call>", "mistral": "[TOOL_CALLS]", "llama3": "{"}
_HERMES_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    """One parsed call: the function's name and its arguments as a JSON object."""

    name: str
    arguments: dict[str, Any]


def tool_call_format(template: Any) -> str | None:
    """The tool-call format `template` trains: a named template's `tool_format`, or what a Jinja source writes."""
    named = getattr(template, "tool_format", "")
    if named != "":
        return named
    source = getattr(template, "source", "")
    if "tool_calls" not in source:
        return None
    if "<tool_call>" in source:
        return "hermes"
    if "[TOOL_CALLS]" in source:
        return "mistral"
    return "llama3"  # Llama 3.1 and the templates that write the call as bare JSON


def parse_tool_calls(text: str, form: str) -> tuple[str, list[ToolCall]]:
    """(the text before the calls, the calls) of a reply decoded with its control tokens; no calls: (text, [])."""
    start = text.find(CALL_STARTS[form]) if form != "llama3" else (0 if text.lstrip().startswith("{") else -1)
    if start < 0:
        return text, []
    calls = PARSERS[form](text[start:])
    return (text[:start], calls) if calls else (text, [])


def _calls(value: Any, key: str = "arguments") -> list[ToolCall]:
    """Calls from parsed JSON: one object or a list of them, each `{"name": str, key: object}`."""
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return []
        arguments = item.get(key, item.get("arguments", {}))
        if isinstance(arguments, str):  # some models write the arguments as a JSON string, as OpenAI sends them
            arguments = _json(arguments)
        if not isinstance(arguments, dict):
            return []
        calls.append(ToolCall(item["name"], arguments))
    return calls


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _hermes(text: str) -> list[ToolCall]:
    calls = []
    for block in _HERMES_BLOCK.findall(text):
        found = _calls(_json(block))
        if not found:
            return []
        calls += found
    return calls


def _mistral(text: str) -> list[ToolCall]:
    return _calls(_json(text.removeprefix(CALL_STARTS["mistral"]).strip()))


def _llama3(text: str) -> list[ToolCall]:
    whole = _calls(_json(text.strip()), "parameters")
    if whole:
        return whole
    # Meta's format allows several calls separated by ";" on one reply
    parts = [part for part in text.strip().split(";") if part.strip()]
    calls = [call for part in parts for call in _calls(_json(part), "parameters")]
    return calls if len(calls) >= len(parts) else []


PARSERS = {"hermes": _hermes, "mistral": _mistral, "llama3": _llama3}
