"""The normalized conversation and its rules, stated once for the data formats and the templates.

A normalized conversation is a list of `{"role", "content"}` messages with roles system, user,
assistant, function_call and observation: at most one system message, first; then turns that
alternate between the user side (user, observation) and the assistant side (assistant,
function_call), starting on the user side. Tools travel beside the messages as one JSON string of
tool schemas per conversation. Each rule here returns the problem as one line (or None), and the
caller raises it as its own error type with the file and row it knows.
"""

from __future__ import annotations

import json
from typing import Any

USER_SIDE = ("user", "observation")
ASSISTANT_SIDE = ("assistant", "function_call")
ROLES = ("system", *USER_SIDE, *ASSISTANT_SIDE)

Message = dict[str, str]


def split_system(messages: list[Message]) -> tuple[str | None, list[Message]]:
    """(system content or None, the remaining turns)."""
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


def with_system(system: str | None, turns: list[Message]) -> list[Message]:
    """`turns` with a leading system message when `system` is non-empty."""
    return ([{"role": "system", "content": system}] if system else []) + turns


def role_order_problem(turns: list[Message], end_with_assistant: bool = True, first_position: int = 0) -> str | None:
    """Why `turns` (no system message) break the alternation rule, or None.

    Args:
        turns: the conversation without its system message.
        end_with_assistant: training data ends on an assistant reply; a prompt to generate from ends on the
            user side.
        first_position: position of `turns[0]` in the source row, for the message numbers shown.
    """
    if not turns:
        return "empty conversation (only a system message); remove the row"
    for i, message in enumerate(turns):
        expected = ASSISTANT_SIDE if i % 2 else USER_SIDE
        if message["role"] not in expected:
            return (
                f"roles out of order: message {i + first_position} is {message['role']}, expected "
                f"{' or '.join(expected)}; turns must alternate user -> assistant, starting with the user"
            )
    if (len(turns) % 2 == 0) != end_with_assistant:
        wanted = "an assistant reply (remove the trailing message)" if end_with_assistant else "a user-side message"
        return f"the conversation ends with a {turns[-1]['role']} message; it must end with {wanted}"
    return None


def parse_tools(tools: Any) -> list[dict[str, Any]]:
    """Tool schemas from a JSON string, a list or a single object (None, "" and []: no tools).

    Raises:
        ValueError: not JSON, or not an object / list of objects (the message reads after the value's name).
    """
    if tools is None or tools == "" or tools == []:
        return []
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"is not valid JSON ({exc.msg} at char {exc.pos}); it must be a JSON list of tool schemas"
            ) from None
    tools = [tools] if isinstance(tools, dict) else tools
    if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
        raise ValueError("must be a JSON list of tool-schema objects")
    return tools
