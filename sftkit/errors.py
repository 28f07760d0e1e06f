"""The one exception type users see.

Anything raised as `SftkitError` is a problem with the user's input (config, data, paths), printed by
the CLI as one line per problem with exit code 2 and no traceback. Every other exception is a bug.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
    return text[:head] + marker + text[len(text) - tail :]


def gather(*checks: Callable[[], Any]) -> list[Any]:
    """Runs every check and raises one `SftkitError` with all their problems; else returns their results.

    A check that fails contributes its problems and None; the others still run, so config, file and model
    problems are reported together instead of one per attempt.
    """
    results: list[Any] = []
    failures: list[SftkitError] = []
    for check in checks:
        try:
            results.append(check())
        except SftkitError as exc:
            failures.append(exc)
            results.append(None)
    if len(failures) == 1:
        raise failures[0]
    if failures:  # the common class where all are config (or data) problems
        kinds = {type(exc) for exc in failures}
        raise (kinds.pop() if len(kinds) == 1 else SftkitError)(*[p for exc in failures for p in exc.problems])
    return results
