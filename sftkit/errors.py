"""The one exception type users see.

Anything raised as `SftkitError` is a problem with the user's input (config, data, paths), printed by
the CLI as one line per problem with exit code 2 and no traceback. Every other exception is a bug.
"""

from __future__ import annotations

# An error names the problem and the fix; it never echoes megabytes of the user's data back.
MAX_PROBLEM_CHARS = 1000


class SftkitError(Exception):
    """A user-facing error. `problems` holds one line per problem; all are reported together."""

    def __init__(self, *problems: str) -> None:
        self.problems = [shorten(p) for p in problems if p]
        super().__init__("\n".join(self.problems))


class ConfigError(SftkitError):
    """The YAML config or a `--set` override is invalid."""


class DataError(SftkitError):
    """A dataset, its registry entry or one of its rows is invalid."""


def shorten(text: str, limit: int = MAX_PROBLEM_CHARS) -> str:
    """`text` on one line of at most `limit` characters: the middle is cut, the start and the fix are kept."""
    text = " ".join(str(text).split("\n"))
    if len(text) <= limit:
        return text
    marker = f" [... {len(text) - limit} characters cut ...] "
    head = (limit - len(marker)) * 2 // 3
    tail = limit - len(marker) - head
    return text[:head] + marker + text[len(text) - tail:]
