"""The registry's contract: one checked dataset entry, and one raw row with where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

REGISTRY_FILE = "dataset_info.json"


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry, checked and with every default filled in.

    Attributes:
        name: the registry name (carried by every row as `dataset`).
        path: local file or folder (None for hub datasets).
        hub_id: Hugging Face hub dataset id (None for local files).
        formatting: "alpaca" or "sharegpt".
        columns: logical column -> column name in the data (all logical columns present).
        tags: sharegpt role/content tags (all present).
    """

    name: str
    path: Path | None
    hub_id: str | None
    formatting: str
    columns: dict[str, str]
    tags: dict[str, str] = field(default_factory=dict)
    subset: str | None = None
    split: str = "train"
    folder: str | None = None

    @property
    def source(self) -> str:
        """What to call the data in messages: its path or hub id."""
        return str(self.path) if self.path is not None else f"hub dataset {self.hub_id}"


class SourceRow(NamedTuple):
    """One raw row and where it came from: file (or hub id), 0-based row in that file, line if known."""

    source: str
    row: int
    data: Any
    line: int | None = None
