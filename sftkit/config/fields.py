"""The schema's building blocks, shared by SftConfig and its mixins: one documented-field helper, one list rule."""

from __future__ import annotations

from typing import Any

from pydantic import Field


def documented(default: Any, doc: str, group: str, **kw: Any) -> Any:
    """A field with its documentation (`--help`, `sftkit keys`, docs/config.md); `group` orders the reference."""
    return Field(default, description=doc, json_schema_extra={"group": group}, **kw)


def split_commas(value: Any) -> Any:
    """LLaMA-Factory writes lists as "a,b,c"; YAML lists are accepted too."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value
