"""Documentation: the field reference, the docs/config.md table, commented YAML and the resolved-config dump."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sftkit.config.schema import GROUPS, SftConfig

# ---------------------------------------------------------------------------- documentation


def field_docs() -> list[tuple[str, str, Any, str, str]]:
    """(group, key, default, type, doc) for every field, by group (GROUPS), in schema order within a group.

    Sorted because fields come from several classes (the "finetuning" group is `MethodsConfig`'s).
    """
    rows = []
    for name, info in _in_reference_order(SftConfig.model_fields):
        group = (info.json_schema_extra or {}).get("group", "")
        default = "(required)" if info.is_required() else info.default
        type_name = getattr(info.annotation, "__name__", None) or str(info.annotation).replace("typing.", "")
        rows.append((group, name, default, type_name, info.description or ""))
    return sorted(rows, key=lambda row: GROUPS.index(row[0]) if row[0] in GROUPS else len(GROUPS))


def _in_reference_order(fields: dict[str, Any]) -> list[tuple[str, Any]]:
    """By group (GROUPS), and within a group the schema's own keys before those of a mixin (pydantic lists a base
    class's fields first)."""
    own = SftConfig.__annotations__

    def key(item: tuple[str, Any]) -> tuple[int, bool]:
        group = (item[1].json_schema_extra or {}).get("group", "")
        return (GROUPS.index(group) if group in GROUPS else len(GROUPS), item[0] not in own)

    return sorted(fields.items(), key=key)


def reference_markdown() -> str:
    """The config reference table that docs/config.md embeds (a test keeps them equal)."""
    out = ["| key | default | meaning |", "|---|---|---|"]
    for _group, name, default, _type, doc in field_docs():
        shown = default if isinstance(default, str) and default == "(required)" else repr(default)
        out.append(f"| `{name}` | `{shown}` | {doc} |")
    return "\n".join(out)


def commented_yaml(values: dict[str, Any]) -> str:
    """Renders config values as YAML with each key's documentation as the comment above it.

    The shipped `configs/*.yaml` are exactly this rendering of their own values (tested), so their
    comments can never drift from the schema.
    """
    docs = {name: doc for _g, name, _d, _t, doc in field_docs()}
    groups = {name: group for group, name, _d, _t, _doc in field_docs()}
    order = list(docs)
    lines: list[str] = []
    current = None
    for key in sorted(values, key=lambda k: order.index(k) if k in order else len(order)):
        if groups.get(key) != current:
            current = groups.get(key)
            lines.append(f"{'' if not lines else chr(10)}### {current}")
        lines.append(f"# {docs.get(key, '')}")
        dumped = yaml.safe_dump({key: values[key]}, sort_keys=False, allow_unicode=True, width=10_000)
        lines.append(dumped.rstrip("\n"))
    return "\n".join(lines) + "\n"


def dump_resolved(cfg: SftConfig, path: str | Path) -> None:
    """Writes the config with every default filled in (the run's record of what it did)."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False, allow_unicode=True), encoding="utf-8")
