"""Loading: reading a YAML config, applying overrides and turning validation errors into one line each.

A config file is read with limits, because YAML can be built to hurt: a file over `MAX_CONFIG_BYTES`, a
document nested deeper than `MAX_DEPTH` or expanding (through aliases) to more than `MAX_NODES` values
is refused before anything is built from it, and so is a key given twice in one mapping (YAML would
keep the second value silently).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sftkit.config.llamafactory import V1_MESSAGE, unsupported_message, v1_keys
from sftkit.config.schema import SftConfig
from sftkit.errors import ConfigError

MAX_CONFIG_BYTES = 1_000_000  # a config is a few KB; anything this big is the wrong file
MAX_DEPTH = 32  # the config is flat; fsdp_config nests a level or two
MAX_NODES = 100_000  # values after alias expansion: a "billion laughs" document stops here
_MAX_SHOWN = 200  # characters of a bad value quoted back in an error
COMMAND_LINE = "the command line"  # what a config given only as overrides (no YAML file) is blamed as

# An override: "key=value" (blamed as `--set key=value`), or (how the user wrote it, "key=value").
Override = str | tuple[str, str]

# ---------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, overrides: list[Override] | None = None) -> SftConfig:
    """Reads a YAML config, applies `key=value` overrides and validates it.

    Args:
        path: the YAML file; None builds the config from the overrides alone (LLaMA-Factory's flag form).
        overrides: "key=value" (OmegaConf's dotted form, `fsdp_config.offload_params=true`, sets a nested key),
            or (the text shown when it is blamed, "key=value").

    Raises:
        ConfigError: every problem at once, each naming the file (or the override) and the key.
    """
    if path is None:
        return _validated({}, COMMAND_LINE, overrides)
    path = Path(path)
    return _validated(_read_yaml(path), str(path), overrides)


def load_config_text(text: str, source: str) -> SftConfig:
    """Validates a config given as YAML text (the web page's editor) exactly as `load_config` would the file.

    Args:
        text: the YAML document.
        source: the file name the error lines blame (the file the text is saved to).

    Raises:
        ConfigError: every problem at once, each line as `sftkit train` would print it for that file.
    """
    _check_size(Path(source), len(text.encode("utf-8")))
    return _validated(_mapping(Path(source), _parse_yaml(Path(source), text)), source, None)


def _validated(raw: dict[str, Any], source: str, overrides: list[Override] | None) -> SftConfig:
    """Applies the overrides to the file's keys and validates them; every problem at once."""
    overridden = {}
    problems = []
    for override in overrides or []:
        shown, text = override if isinstance(override, tuple) else (f"--set {override}", override)
        try:
            key, value = _parse_override(text, shown)
            _assign(raw, key, value, shown)
        except ConfigError as exc:
            problems += exc.problems
            continue
        overridden[key.partition(".")[0]] = shown
    try:
        cfg = validate_config(raw, source=source, overridden=overridden)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(*problems)
    return cfg


def validate_config(
    raw: dict[str, Any], source: str = "<config>", overridden: dict[str, str] | None = None
) -> SftConfig:
    """Validates a dict of config keys, turning pydantic's errors into one line per problem.

    The cross-field rules run only once every field is valid, so they are checked a second time with the
    invalid keys left out: every problem is reported in one go, not over several attempts.

    Args:
        raw: the keys and values.
        source: what to blame for a bad key (the YAML file).
        overridden: key -> how the override that gave it was written (`--set k=v`); those keys are blamed on
            it instead.
    """
    if (v1 := v1_keys(raw)) and "model_name_or_path" not in raw:
        raise ConfigError(f"{source}: {', '.join(v1)}: {V1_MESSAGE}")
    try:
        return SftConfig.model_validate(raw)
    except ValidationError as exc:
        overridden = overridden or {}
        described = _describe(exc)
        bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
        described += [
            (None, line) for line in _cross_field_lines(raw, bad) if line not in {text for _, text in described}
        ]
        lines = [
            f"{overridden[blamed]}: {line}"
            if (blamed := key or _mentioned_key(line, overridden)) in overridden
            else f"{source}: {line}"
            for key, line in described
        ]
        raise ConfigError(*lines) from None


def _mentioned_key(line: str, overridden: dict[str, str]) -> str | None:
    """The first --set key a cross-field line names ("eval_steps: required when eval_strategy is steps")."""
    return next((key for key in overridden if re.search(rf"\b{re.escape(key)}\b", line)), None)


# Stand-ins for required keys that are missing or invalid, so the cross-field rules can run on the rest.
_PLACEHOLDERS = {"model_name_or_path": "-", "dataset": ["-"], "output_dir": "-"}


def _cross_field_lines(raw: dict[str, Any], bad: set[str]) -> list[str]:
    """The cross-field problems among the valid keys (none that mention an invalid key: those are reported)."""
    rest = {key: value for key, value in raw.items() if key not in bad}
    rest |= {key: value for key, value in _PLACEHOLDERS.items() if key not in rest}
    try:
        SftConfig.model_validate(rest)
    except ValidationError as exc:
        lines = [
            line
            for err in exc.errors()
            if not err["loc"]
            for line in err["msg"].removeprefix("Value error, ").splitlines()
        ]
        return [line for line in lines if not any(re.search(rf"\b{re.escape(key)}\b", line) for key in bad)]
    return []


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    _check_size(path, path.stat().st_size)
    return _mapping(path, _parse_yaml(path, _decode(path, path.read_bytes())))


def _check_size(path: Path, size: int) -> None:
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: {size:,} bytes is far too big for a config (limit {MAX_CONFIG_BYTES:,}); is this the right file?"
        )


def _mapping(path: Path, data: Any) -> dict[str, Any]:
    if data is None:
        raise ConfigError(f"{path}: the config is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte {exc.start}, 0x{raw[exc.start]:02x}); re-save the file as UTF-8"
        ) from None


def _parse_yaml(path: Path, text: str) -> Any:
    """The YAML document, checked for size, depth and duplicate keys before any Python value is built."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # reads the first characters already: may raise too
        node = loader.get_single_node()
        if node is None:
            return None
        _check_tree(path, node)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f":{mark.line + 1}"
        elif isinstance(getattr(exc, "position", None), int):  # a ReaderError: a character YAML does not allow
            where = f":{text[: exc.position].count(chr(10)) + 1}"
        else:
            where = ""
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    except RecursionError:  # the composer recurses once per nesting level
        raise ConfigError(
            f"{path}: nested too deeply (limit {MAX_DEPTH} levels); a config is a flat list of keys"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def _check_tree(path: Path, root: yaml.Node) -> None:
    """Refuses a node tree deeper than MAX_DEPTH, larger than MAX_NODES once aliases expand, that refers to
    itself, or that gives a mapping key twice. Each node is visited once (aliases share their node)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def expanded(node: yaml.Node, depth: int) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if depth > MAX_DEPTH:
            raise ConfigError(
                f"{path}:{node.start_mark.line + 1}: nested too deeply (limit {MAX_DEPTH} levels); a "
                "config is a flat list of keys"
            )
        if id(node) in open_nodes:
            raise ConfigError(
                f"{path}:{node.start_mark.line + 1}: an alias refers to the value that contains it; remove the alias"
            )
        open_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            _refuse_duplicate_keys(path, node)
            children = [child for pair in node.value for child in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        total = 1
        for child in children:
            total += expanded(child, depth + 1)
            if total > MAX_NODES:
                raise ConfigError(
                    f"{path}:{node.start_mark.line + 1}: expands to more than {MAX_NODES:,} values "
                    "(aliases repeating aliases?); a config is a flat list of keys"
                )
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    expanded(root, 0)


def _refuse_duplicate_keys(path: Path, node: yaml.MappingNode) -> None:
    first_line: dict[str, int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        line = key.start_mark.line + 1
        if key.value in first_line:
            raise ConfigError(
                f"{path}:{line}: key {key.value!r} is given twice (lines {first_line[key.value]} and {line}); keep one"
            )
        first_line[key.value] = line


def _parse_override(text: str, shown: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{shown.removesuffix(text)}{text!r}: expected key=value")
    key = key.strip()
    if not value.strip():
        return key, None
    loader = None
    try:
        loader = yaml.SafeLoader(value)  # reads the first characters already: may raise too
        node = loader.get_single_node()
        if node is None:
            return key, None
        _check_tree(Path(f"--set {key}"), node)  # the same guard as the file: depth, alias expansion, duplicates
        return key, loader.construct_document(node)
    except yaml.YAMLError:
        return key, value
    except RecursionError:
        raise ConfigError(f"--set {key}: nested too deeply (limit {MAX_DEPTH} levels)") from None
    finally:
        if loader is not None:
            loader.dispose()


def _assign(raw: dict[str, Any], key: str, value: Any, shown: str) -> None:
    """Sets `key` in `raw`; a dotted key ("fsdp_config.offload_params") sets it inside the nested mapping, as
    OmegaConf's command-line merge does (LLaMA-Factory's `llamafactory-cli train X.yaml a.b=1`)."""
    *parents, last = key.split(".")
    node = raw
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(
                f"{shown}: {'.'.join(parents[: depth + 1])} is not a mapping, so {key} cannot be set; "
                f"set {'.'.join(parents[: depth + 1])}=VALUE instead"
            )
        node = child
    node[last] = value


def _describe(exc: ValidationError) -> list[tuple[str | None, str]]:
    """(top-level key or None, one line) per problem."""
    lines: list[tuple[str | None, str]] = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or None
        top = str(err["loc"][0]) if err["loc"] else None
        if err["type"] == "extra_forbidden":
            lines.append((top, _unknown_key(str(err["loc"][0]))))
        elif err["type"] == "missing" and len(err["loc"]) == 1:  # the input is the whole config: not worth quoting
            lines.append((top, f"{key}: required; set it in the config (or as {key}=VALUE on the command line)"))
        elif key is None:  # from the cross-field validator: already one line per problem
            lines.extend((None, line) for line in err["msg"].removeprefix("Value error, ").splitlines())
        else:
            shown = repr(err.get("input"))
            shown = shown if len(shown) <= _MAX_SHOWN else f"{shown[:_MAX_SHOWN]}... ({len(shown):,} characters)"
            lines.append((top, f"{key}: {err['msg'].removeprefix('Value error, ')} (got {shown})"))
    return lines


def _unknown_key(key: str) -> str:
    message = unsupported_message(key)
    if message is not None:
        return f"{key}: {message}"
    close = near_typo(key, list(SftConfig.model_fields))
    hint = f"; did you mean {close}?" if close else "; run `sftkit keys` for the list"
    return f"{key}: unknown key{hint}"


def near_typo(key: str, known: list[str]) -> str | None:
    """The known key `key` is a slip of the keyboard for: one edit away (two for keys of 12 characters or more).

    An edit is an inserted, deleted or changed character, or two neighbours swapped. A looser similarity
    (difflib's ratio) pairs keys that merely share a word, such as apollo_rank with lora_rank.
    """
    allowed = 1 if len(key) < 12 else 2
    best = min(known, key=lambda name: _edits(key, name))
    return best if _edits(key, best) <= allowed else None


def _edits(a: str, b: str) -> int:
    """Optimal string alignment distance (Levenshtein plus adjacent transpositions)."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[len(b)]
