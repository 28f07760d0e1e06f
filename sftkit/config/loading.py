"""Loading: reading a YAML config, applying overrides and turning validation errors into one line each."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sftkit.config.schema import UNSUPPORTED_LLAMAFACTORY_KEYS, SftConfig
from sftkit.errors import ConfigError

# ---------------------------------------------------------------------------- loading

def load_config(path: str | Path, overrides: list[str] | None = None) -> SftConfig:
    """Reads a YAML config, applies `key=value` overrides and validates it.

    Raises:
        ConfigError: every problem at once, each naming the file and the key.
    """
    path = Path(path)
    raw = _read_yaml(path)
    problems = []
    for override in overrides or []:
        try:
            key, value = _parse_override(override)
        except ConfigError as exc:
            problems += exc.problems
            continue
        raw[key] = value
    try:
        cfg = validate_config(raw, source=str(path))
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(*problems)
    return cfg


def validate_config(raw: dict[str, Any], source: str = "<config>") -> SftConfig:
    """Validates a dict of config keys, turning pydantic's errors into one line per problem.

    The cross-field rules run only once every field is valid, so they are checked a second time with the
    invalid keys left at their defaults: every problem is reported in one go, not over several attempts.
    """
    try:
        return SftConfig.model_validate(raw)
    except ValidationError as exc:
        lines = _describe(exc)
        bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
        lines += [line for line in _cross_field_lines(raw, bad) if line not in lines]
        raise ConfigError(*[f"{source}: {line}" for line in lines]) from None


# Stand-ins for required keys that are missing or invalid, so the cross-field rules can run on the rest.
_PLACEHOLDERS = {"model_name_or_path": "-", "dataset": ["-"], "output_dir": "-"}


def _cross_field_lines(raw: dict[str, Any], bad: set[str]) -> list[str]:
    """The cross-field problems among the valid keys (none that mention an invalid key: those are reported)."""
    rest = {key: value for key, value in raw.items() if key not in bad}
    rest |= {key: value for key, value in _PLACEHOLDERS.items() if key not in rest}
    try:
        SftConfig.model_validate(rest)
    except ValidationError as exc:
        lines = [line for err in exc.errors() if not err["loc"]
                 for line in err["msg"].removeprefix("Value error, ").splitlines()]
        return [line for line in lines if not any(re.search(rf"\b{re.escape(key)}\b", line) for key in bad)]
    return []


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    if data is None:
        raise ConfigError(f"{path}: the config is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value")
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        return key.strip(), value


def _describe(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or None
        if err["type"] == "extra_forbidden":
            lines.append(_unknown_key(str(err["loc"][0])))
        elif key is None:  # from the cross-field validator: already one line per problem
            lines.extend(err["msg"].removeprefix("Value error, ").splitlines())
        else:
            lines.append(f"{key}: {err['msg'].removeprefix('Value error, ')} (got {err.get('input')!r})")
    return lines


def _unknown_key(key: str) -> str:
    if key in UNSUPPORTED_LLAMAFACTORY_KEYS:
        return f"{key}: a LLaMA-Factory setting sftkit does not support; remove it"
    close = difflib.get_close_matches(key, SftConfig.model_fields, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else "; run `sftkit keys` for the list"
    return f"{key}: unknown key{hint}"
