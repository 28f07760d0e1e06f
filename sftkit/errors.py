"""The one exception type users see.

Anything raised as `SftkitError` is a problem with the user's input (config, data, paths), printed by
the CLI as one line per problem with exit code 2 and no traceback. Every other exception is a bug.
"""

from __future__ import annotations


class SftkitError(Exception):
    """A user-facing error. `problems` holds one line per problem; all are reported together."""

    def __init__(self, *problems: str) -> None:
        self.problems = [p for p in problems if p]
        super().__init__("\n".join(self.problems))


class ConfigError(SftkitError):
    """The YAML config or a `--set` override is invalid."""


class DataError(SftkitError):
    """A dataset, its registry entry or one of its rows is invalid."""
