"""Columns of the source rows that normalization does not carry (a category, a difficulty score).

Normalized rows keep `dataset` and `index` (the row's position in its source), so any other column is read
back from the source by those two.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sftkit.data.loader import dataset_specs
from sftkit.data.registry import read_rows
from sftkit.errors import DataError

if TYPE_CHECKING:
    from sftkit.config import SftConfig


def column_values(cfg: SftConfig, rows: list[dict[str, Any]], column: str, key: str) -> list[Any]:
    """The value of `column` for each normalized row; `dataset` is the registry name itself.

    Args:
        key: the config key asking, named in errors.

    Raises:
        DataError: a row whose source has no such column (naming the dataset and row).
    """
    if column == "dataset":
        return [row["dataset"] for row in rows]
    specs = dataset_specs(cfg)
    sources: dict[str, list[Any]] = {}
    values = []
    for row in rows:
        name = row["dataset"]
        if name not in sources:
            sources[name] = read_rows(specs[name])
        data = sources[name][row["index"]].data
        if not isinstance(data, dict) or column not in data:
            raise DataError(
                f"{key}: dataset {name!r} row {row['index']} has no column {column!r}; add it to every "
                f"row or name another column (or `dataset`)"
            )
        values.append(data[column])
    return values
