"""Where a model comes from: a local folder or a Hugging Face hub id, decided once, before anything loads.

Every loader (the tokenizer, the model, a merge's base, chat, eval, predict) asks `resolve_model` first, so a
mistyped folder fails at once with the folder and the working directory named, instead of being sent to the
hub as an id and retried for a minute. A GGUF file (or a folder holding one) resolves to the folder it is
de-quantized into, once (`gguf_source`). A hub id is tried on the hub only when the hub answers a quick
connection (one attempt, a few seconds at most); offline (`HF_HUB_OFFLINE=1`) or unreachable, a model already
in the local hub cache is used from there and anything else is one line. `model_problems` is `sftkit
validate`'s cheap look at a model folder: files, architecture, remote code and the template's tokens, with
no weights read.
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sftkit.data.gguf_source import cached_folder, dequantized_folder, gguf_file, read_gguf
from sftkit.errors import SftkitError

# A hub id is `name` or `owner/name`: letters, digits, `-`, `_`, `.`; no `--` or `..`; at most 96 characters.
_HUB_ID = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?$")
# First parts of a relative name that are folders in practice, not hub owners (`models/tiny-ernie`).
_FOLDER_WORDS = {"models", "model", "runs", "run", "outputs", "output", "checkpoints", "saves", "ckpt", "data"}
_OFFLINE_WORDS = {"1", "on", "yes", "true"}
PROBE_TIMEOUT_S = 3.0
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json", "spiece.model")


def resolve_model(name: str) -> str:
    """The folder or hub id to load `name` from, decided without waiting on the network.

    Returns:
        A local folder (as given, `~` expanded; or the hub cache's snapshot when the hub cannot be reached; or,
        for a GGUF file, the folder it was de-quantized into, `gguf_source.dequantized_folder`) or the hub id
        itself when the hub answers.

    Raises:
        SftkitError: a GGUF file that is damaged or of an unknown architecture, a path-like name whose folder
            does not exist, a name that is no hub id, or a hub id that is
            neither reachable nor in the local cache.
    """
    gguf = gguf_file(name)
    if gguf is not None:
        return str(dequantized_folder(gguf))
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if looks_like_path(name) or not _HUB_ID.match(name):
        raise SftkitError(missing_folder(name))
    if not hub_offline():
        problem = hub_unreachable()
        if problem is None:
            return name
    cached = cached_snapshot(name)
    if cached is not None:
        return cached
    why = "HF_HUB_OFFLINE is set" if hub_offline() else f"the hub cannot be reached ({hub_unreachable()})"
    raise SftkitError(
        f"model {name!r}: no such local folder (looked in {Path.cwd()}), and as a hub id it cannot be "
        f"downloaded: {why} and it is not in the local hub cache; check the name, the network (or "
        "unset HF_HUB_OFFLINE), or download it where there is network and point at the folder"
    )


def looks_like_path(name: str) -> bool:
    """`./x`, `../x`, `/x`, `~/x`, `x/` or `models/x`: a folder was meant, never a hub id."""
    if name.startswith(("./", "../", "/", "~", ".\\")) or name in (".", "..") or "\\" in name:
        return True
    parts = name.rstrip("/").split("/")
    if name.endswith("/") or len(parts) > 2:
        return True
    return len(parts) == 2 and (parts[0].lower() in _FOLDER_WORDS or Path(parts[0]).is_dir())


def missing_folder(name: str) -> str:
    """One line for a folder that is not there, naming where it was looked for and how to get the demo's."""
    hint = (
        "; build it with `python scripts/make_tiny_model.py models/tiny-ernie`"
        if "tiny-ernie" in name
        else ("; give an existing model folder, or a hub id such as baidu/ERNIE-4.5-0.3B-Base-PT")
    )
    return f"folder {name} does not exist (looked in {Path.cwd()}){hint}"


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) asks for no network at all."""
    return any(
        os.environ.get(key, "").strip().lower() in _OFFLINE_WORDS for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


@functools.cache
def hub_unreachable() -> str | None:
    """Why the hub endpoint (HF_ENDPOINT) does not accept a connection, or None when it does: one attempt."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc.__class__.__name__}"
    return None


def cached_snapshot(repo_id: str) -> str | None:
    """The local hub cache's folder of `repo_id` when its config.json was downloaded before, else None."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo_id, "config.json")
    return str(Path(config).parent) if isinstance(config, str) else None


# ---------------------------------------------------------------------------- sftkit validate


def model_problems(name: str, trust_remote_code: bool, special_tokens: tuple[str, ...]) -> tuple[list[str], str]:
    """Checks a model without loading weights: (problems, one-line description when there are none).

    A local folder must hold a readable config.json naming an architecture transformers knows (or one that
    ships its own code, which needs trust_remote_code) and tokenizer files that load; the description says how
    many of the template's control tokens the vocabulary lacks (they are added as new, trained rows).
    """
    try:
        gguf = gguf_file(name)
        if gguf is not None:
            return _gguf_line(gguf, special_tokens)
        source = resolve_model(name)
    except SftkitError as exc:
        return [f"model_name_or_path: {line}" for line in exc.problems], ""
    folder = Path(source)
    if not folder.is_dir():
        return [], f"model {name}: hub id, downloaded when training starts"
    config, problems = _read_model_config(folder)
    if config is not None:
        problems += _architecture_problems(config, folder, trust_remote_code)
    if not any((folder / file).is_file() for file in TOKENIZER_FILES):
        problems.append(f"model_name_or_path: {folder} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}...)")
    if problems:
        return [p if p.startswith("model_name_or_path") else f"model_name_or_path: {p}" for p in problems], ""
    return _tokenizer_line(folder, trust_remote_code, special_tokens, config)


def local_model_folder(name: str) -> Path | None:
    """The local folder `name` loads from, without building anything: a folder, or a GGUF already de-quantized."""
    gguf = gguf_file(name)
    if gguf is not None:
        return cached_folder(gguf)
    path = Path(name).expanduser()
    return path if path.is_dir() else None


def _gguf_line(gguf: Path, special_tokens: tuple[str, ...]) -> tuple[list[str], str]:
    """A GGUF file checked from its header alone: it is complete and of an architecture transformers reads."""
    info = read_gguf(gguf)
    folder = cached_folder(gguf)
    missing = [token for token in special_tokens if token not in set(info.vocabulary)]
    added = (
        f"the template adds {len(missing)} control token{'' if len(missing) == 1 else 's'} (new rows, trained)"
        if missing
        else "the template's control tokens are in the vocabulary"
    )
    where = f"de-quantized in {folder}" if folder else "de-quantized (float32, cached) when it first loads"
    return [], (
        f"model {gguf}: GGUF {info.architecture} ({info.quantization}), vocabulary "
        f"{len(info.vocabulary):,}, {where}; {added}"
    )


def _read_model_config(folder: Path) -> tuple[dict[str, Any] | None, list[str]]:
    path = folder / "config.json"
    if not path.is_file():
        return None, [f"{folder} has no config.json, so it is not a transformers model folder"]
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, [f"{path} cannot be read ({str(exc).splitlines()[0]})"]
    if not isinstance(config, dict):
        return None, [f"{path} is not a JSON object"]
    return config, []


def _architecture_problems(config: dict[str, Any], folder: Path, trust_remote_code: bool) -> list[str]:
    """The architecture must be one transformers ships, or remote code that trust_remote_code allows."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type")
    remote = "AutoModelForCausalLM" in (config.get("auto_map") or {})
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not (remote and trust_remote_code):
        return []
    if remote:
        return (
            []
            if trust_remote_code
            else [f"{folder} ships its own model code (auto_map); set trust_remote_code: true if you trust its author"]
        )
    known = "is not a causal LM transformers knows" if model_type else "names no model_type"
    return [f"{folder}/config.json: model_type {model_type!r} {known}; upgrade transformers or use another model"]


def _tokenizer_line(
    folder: Path, trust_remote_code: bool, special_tokens: tuple[str, ...], config: dict[str, Any] | None
) -> tuple[list[str], str]:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [f"model_name_or_path: the tokenizer in {folder} does not load ({reason})"], ""
    vocab = tokenizer.get_vocab()
    missing = [token for token in special_tokens if token not in vocab]
    rows = (config or {}).get("vocab_size") or (config or {}).get("text_config", {}).get("vocab_size")
    architecture = ",".join((config or {}).get("architectures") or [str((config or {}).get("model_type"))])
    added = (
        f"the template adds {len(missing)} control token{'' if len(missing) == 1 else 's'} (new rows, trained)"
        if missing
        else "the template's control tokens are in the vocabulary"
    )
    return [], f"model {folder}: {architecture}, vocabulary {len(tokenizer):,}" + (
        f" of {rows:,} embedding rows" if isinstance(rows, int) else ""
    ) + f"; {added}"
