"""dataset_info.json (LLaMA-Factory's schema): resolving dataset names and reading their raw rows.

Only the entries a config selects are checked, so a registry shared with LLaMA-Factory keeps working
when its other entries use keys (ranking, ms_hub_url, images, ...) that sftkit does not support.
JSON and JSON Lines are parsed with the `json` module rather than pyarrow so that a malformed file is
reported with its line number.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sftkit.data.formats import DEFAULT_TAGS, FORMATS, locate_row
from sftkit.data.spec import REGISTRY_FILE, DatasetSpec, SourceRow
from sftkit.errors import DataError

FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
SUPPORTED_KEYS = {"file_name", "hf_hub_url", "subset", "split", "folder", "formatting", "columns", "tags"}
# Alternative sources LLaMA-Factory knows; harmless beside a file_name or hf_hub_url we can use.
OTHER_SOURCES = ("ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
# A \ud800-\udfff escape in JSON text: valid JSON, but a lone one decodes to no character at all.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JsonObject(dict):
    """A parsed JSON object that remembers the keys its text gave more than once (JSON keeps the last)."""

    duplicates: tuple[str, ...] = ()


REMOTE = "REMOTE:"  # LLaMA-Factory's dataset_dir prefix for a hub dataset repo holding the registry


def hub_offline() -> bool:
    """The Hugging Face libraries are told not to use the network."""
    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def load_registry(dataset_dir: str | Path) -> dict[str, Any]:
    """Reads `dataset_dir/dataset_info.json` without checking its entries.

    Raises:
        DataError: the file is missing, not UTF-8, not JSON, or not a JSON object.
    """
    if str(dataset_dir).startswith(REMOTE):
        repo = str(dataset_dir).removeprefix(REMOTE)
        raise DataError(
            f"dataset_dir: {dataset_dir} is LLaMA-Factory's hub dataset folder (it downloads {repo}'s "
            f"{REGISTRY_FILE} and data from the Hugging Face hub); sftkit reads a local folder: download "
            f"it (huggingface-cli download --repo-type dataset {repo} --local-dir data) and set "
            "dataset_dir: data"
        )
    path = Path(dataset_dir) / REGISTRY_FILE
    if not path.is_file():
        raise DataError(f"{path}: not found; set dataset_dir to the folder holding {REGISTRY_FILE}")
    registry = _parse_json(path, _read_text(path), object_pairs_hook=_remember_duplicates)
    if not isinstance(registry, dict):
        raise DataError(f"{path}: expected a JSON object mapping dataset names to entries")
    return registry


def get_spec(registry: dict[str, Any], name: str, dataset_dir: str | Path) -> DatasetSpec:
    """Checks the entry `name` and returns it with defaults filled in.

    Raises:
        DataError: unknown name (with close matches), unsupported keys or source, unknown formatting,
            columns or tags, or a file_name escaping dataset_dir.
    """
    where = f"{Path(dataset_dir) / REGISTRY_FILE}: dataset {name!r}"
    entry = registry.get(name)
    if entry is None:
        raise DataError(_unknown_name(name, registry, dataset_dir))
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object with file_name or hf_hub_url")
    if name in getattr(registry, "duplicates", ()):
        raise DataError(
            f"{where}: the name is given twice, and JSON keeps only the last entry; rename or remove one of them"
        )
    if getattr(entry, "duplicates", ()):
        raise DataError(f"{where}: key {entry.duplicates[0]!r} is given twice in the entry; keep one")
    _check_keys(entry, where)
    _refuse_pretraining_text(entry, where)
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATS:
        raise DataError(f"{where}: unknown formatting {formatting!r}; use {' or '.join(FORMATS)}")
    columns = _merge(FORMATS[formatting].columns, entry.get("columns"), f"{where}: columns")
    tags = _merge(DEFAULT_TAGS, entry.get("tags"), f"{where}: tags") if FORMATS[formatting].tagged else {}
    path, hub_id = _source(entry, where, Path(dataset_dir))
    return DatasetSpec(
        name=name,
        path=path,
        hub_id=hub_id,
        formatting=formatting,
        columns=columns,
        tags=tags,
        subset=entry.get("subset"),
        split=entry.get("split") or "train",
        folder=entry.get("folder"),
    )


def read_rows(spec: DatasetSpec) -> list[SourceRow]:
    """Every raw row of a dataset, in file order (a folder's files sorted by name, concatenated).

    Raises:
        DataError: missing, empty, non-UTF-8 or malformed file, or a hub dataset that cannot be loaded.
    """
    if spec.hub_id is not None:
        return _read_hub(spec)
    assert spec.path is not None
    files = _data_files(spec.path, spec.name)
    return [row for path in files for row in _read_file(path)]


def check_source(spec: DatasetSpec) -> None:
    """A local dataset's files exist and have a supported type (nothing is read; hub datasets pass unless offline).

    Raises:
        DataError: missing file or folder, or an unsupported file type.
    """
    if spec.path is not None:
        _data_files(spec.path, spec.name)
    _refuse_offline_hub(spec)


# ---------------------------------------------------------------------------- registry entries


def _unknown_name(name: str, registry: dict[str, Any], dataset_dir: str | Path) -> str:
    known = sorted(registry)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return (
        f"dataset {name!r} is not in {Path(dataset_dir) / REGISTRY_FILE}; {hint}known: {', '.join(known) or '(none)'}"
    )


def _check_keys(entry: dict[str, Any], where: str) -> None:
    if entry.get("ranking"):
        raise DataError(f"{where}: ranking (preference) datasets are not supported; sftkit trains SFT only")
    unsupported = [k for k in entry if k not in SUPPORTED_KEYS and k not in OTHER_SOURCES and k != "ranking"]
    if unsupported:
        raise DataError(
            f"{where}: key {unsupported[0]!r} is not supported by sftkit; remove it or pick another dataset"
        )
    if "file_name" not in entry and "hf_hub_url" not in entry:
        other = [k for k in OTHER_SOURCES if k in entry]
        what = f"uses {other[0]}, which sftkit does not support" if other else "has no file_name"
        raise DataError(f"{where}: {what}; give it a file_name (local file) or hf_hub_url")


def _refuse_pretraining_text(entry: dict[str, Any], where: str) -> None:
    """LLaMA-Factory registers raw text for stage: pt as an alpaca entry mapping only `prompt` (c4_demo, wiki_demo);
    read as SFT it would fail on a reply column the data never had."""
    columns = entry.get("columns")
    text_file = isinstance(entry.get("file_name"), str) and entry["file_name"].endswith(".txt")
    only_prompt = isinstance(columns, dict) and set(columns) == {"prompt"}
    if entry.get("formatting", "alpaca") == "alpaca" and (only_prompt or text_file):
        raise DataError(
            f"{where}: pretraining text is not SFT data (LLaMA-Factory trains such an entry, raw text as "
            "columns.prompt, with stage: pt); sftkit trains on conversations with replies: pick an SFT "
            "dataset, or map columns.response if these rows have replies"
        )


def _merge(defaults: dict[str, str], given: Any, where: str) -> dict[str, str]:
    """Defaults overridden by the entry's `columns`/`tags`; unknown keys are refused."""
    if given is None:
        return dict(defaults)
    if not isinstance(given, dict):
        raise DataError(f"{where}: expected an object")
    unknown = [k for k in given if k not in defaults]
    if unknown:
        raise DataError(f"{where}: {unknown[0]!r} is not supported (sftkit knows {', '.join(defaults)})")
    bad = [k for k, v in given.items() if not isinstance(v, str)]
    if bad:
        raise DataError(f"{where}: {bad[0]!r} must be a string")
    return {**defaults, **given}


def _source(entry: dict[str, Any], where: str, dataset_dir: Path) -> tuple[Path | None, str | None]:
    if "file_name" in entry and "hf_hub_url" in entry:
        raise DataError(
            f"{where}: has both file_name and hf_hub_url; LLaMA-Factory loads hf_hub_url, sftkit would "
            "load file_name, so the two disagree on the data; remove the one you do not mean"
        )
    if "file_name" in entry:
        return _local_path(entry["file_name"], where, dataset_dir), None
    hub_id = entry["hf_hub_url"]
    if not isinstance(hub_id, str) or not hub_id:
        raise DataError(f"{where}: hf_hub_url must be a hub dataset id such as 'org/name'")
    return None, hub_id


def _local_path(file_name: Any, where: str, dataset_dir: Path) -> Path:
    if not isinstance(file_name, str) or not file_name:
        raise DataError(f"{where}: file_name must be a file or folder name")
    path = Path(file_name)
    if path.is_absolute():
        return path
    # Only a literal ".." escape is refused: a symlink placed inside dataset_dir is the user's choice.
    if os.path.normpath(path).split(os.sep)[0] == os.pardir:
        raise DataError(
            f"{where}: file_name {file_name!r} points outside {dataset_dir}; use a path inside "
            "dataset_dir or an absolute path"
        )
    return dataset_dir / path


# ---------------------------------------------------------------------------- reading files


def _data_files(path: Path, name: str) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in FILE_SUFFIXES)
        if not files:
            raise DataError(f"{path}: folder of dataset {name!r} has no {'/'.join(FILE_SUFFIXES)} files")
        return files
    if not path.is_file():
        raise DataError(f"{path}: file of dataset {name!r} not found; fix file_name in {REGISTRY_FILE}")
    if path.suffix not in FILE_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use {', '.join(FILE_SUFFIXES)}")
    return [path]


def _read_file(path: Path) -> list[SourceRow]:
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    if path.suffix == ".parquet":
        rows = [SourceRow(str(path), i, row) for i, row in enumerate(_read_parquet(path))]
    elif path.suffix == ".csv":
        rows = _read_csv(path)
    else:
        rows = _read_json(path)
    if not rows:
        raise DataError(f"{path}: the file has no rows")
    return rows


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {exc.start}); re-save the file as UTF-8") from None


def _parse_json(path: Path, text: str, first_line: int = 1, object_pairs_hook: Any = None) -> Any:
    try:
        return json.loads(text, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as exc:
        line = exc.lineno + first_line - 1
        # json's messages may end in "at" ("Unterminated string starting at"): the column completes them
        where = f"{exc.msg} column {exc.colno}" if exc.msg.endswith(" at") else f"{exc.msg} at column {exc.colno}"
        raise DataError(f"{path}:{line}: invalid JSON ({where}); fix that line") from None
    except RecursionError:  # the json module recurses once per nesting level
        raise DataError(
            f"{path}:{first_line}: JSON nested too deeply to read; a row is an object of strings and message lists"
        ) from None


def _remember_duplicates(pairs: list[tuple[str, Any]]) -> JsonObject:
    obj = JsonObject(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        obj.duplicates = tuple(dict.fromkeys(key for key, _ in pairs if key in seen or seen.add(key)))
    return obj


def _refuse_lone_surrogates(row: SourceRow) -> None:
    """A lone surrogate escape loads as a string no encoder accepts; say where, before tokenizing fails."""
    bad = _first_unencodable(row.data)
    if bad is not None:
        raise DataError(
            locate_row(
                row,
                f"text holds a lone UTF-16 surrogate escape (\\u{ord(bad):04x}), which is "
                "no character; remove it or write the character it was meant to be",
            )
        )


def _first_unencodable(value: Any) -> str | None:
    """The first lone surrogate in the strings of a parsed JSON value, or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                return item[exc.start]
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _read_json(path: Path) -> list[SourceRow]:
    """A .json file holding a list of rows, or JSON Lines (in a .jsonl or .json file)."""
    text = _read_text(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        data = _parse_json(path, text)
        rows = [SourceRow(str(path), i, row) for i, row in enumerate(data)]
    else:
        _refuse_single_object(path, text)
        rows = []
        # split at "\n" only: str.splitlines also splits at U+2028, U+0085 and others, which JSON strings may hold
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                rows.append(SourceRow(str(path), len(rows), _parse_json(path, line, number), number))
    if _SURROGATE_ESCAPE.search(text):
        for row in rows:
            _refuse_lone_surrogates(row)
    return rows


def _refuse_single_object(path: Path, text: str) -> None:
    """A pretty-printed JSON object (e.g. {"data": [...]}) is the wrong shape, not malformed JSON Lines."""
    if "\n" not in text.strip() or not text.lstrip().startswith("{"):
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return  # JSON Lines (or broken JSON): the line-by-line parse names the line
    if isinstance(data, dict):
        keys = ", ".join(repr(key) for key in list(data)[:3])
        raise DataError(
            f"{path}: holds one JSON object (keys {keys}), not rows; use a JSON list of row objects "
            "or JSON Lines (one row object per line)"
        )


def csv_reader(text: str) -> csv.DictReader:
    """The one CSV reader of sftkit's inputs (datasets, rating sheets): cells as strings, any cell length the text
    can hold (csv refuses cells over 128k characters by default; none can be longer than the file itself)."""
    csv.field_size_limit(max(csv.field_size_limit(), min(len(text) + 1, 2**31 - 1)))
    return csv.DictReader(io.StringIO(text, newline=""))


def csv_rows(reader: csv.DictReader, source: str) -> Iterator[dict[str, str]]:
    """The reader's rows; a malformed file (a NUL byte, a cell past the limit) as one line naming where.

    Raises:
        DataError: naming `source` and the line.
    """
    try:
        yield from reader
    except csv.Error as exc:
        raise DataError(
            f"{source}:{reader.line_num}: not readable as CSV ({exc}); fix the file or save it "
            "again from the spreadsheet"
        ) from None


def _read_csv(path: Path) -> list[SourceRow]:
    """CSV through the csv module: every cell stays a string (pyarrow would turn "2" into a number)."""
    reader = csv_reader(_read_text(path))
    rows = []
    for row in csv_rows(reader, str(path)):
        # DictReader's line_num is the line where the row ended (rows may span lines).
        rows.append(SourceRow(str(path), len(rows), {k: v for k, v in row.items() if k is not None}, reader.line_num))
    return rows


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: cannot read Parquet ({str(exc).splitlines()[0]})") from None


def _refuse_offline_hub(spec: DatasetSpec) -> None:
    """A hub entry (LLaMA-Factory's registry has 89) while the libraries are offline: one line, not the network
    error the hub would raise."""
    if spec.hub_id is not None and hub_offline():
        raise DataError(
            f"dataset {spec.name!r}: its registry entry loads it from the Hugging Face hub "
            f"({spec.hub_id}), and this machine is offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE); "
            "download it where there is a network, or give the entry a local file_name"
        )


def _read_hub(spec: DatasetSpec) -> list[SourceRow]:
    _refuse_offline_hub(spec)
    import datasets

    try:
        dataset = datasets.load_dataset(spec.hub_id, name=spec.subset, data_dir=spec.folder, split=spec.split)
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, bad subset/split: the hub raises many types
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise DataError(
            f"dataset {spec.name!r}: cannot load {spec.hub_id} from the Hugging Face hub ({reason}); "
            "check the id and network access, or download it and use file_name"
        ) from None
    label = f"{spec.hub_id}[{spec.split}]"
    return [SourceRow(label, i, row) for i, row in enumerate(dataset)]
