"""A GGUF file is a model: de-quantized once into a cache folder that every loader then reads like any other.

`model_name_or_path: PATH.gguf` (or a folder holding exactly one `.gguf` and no config.json) is what a user
already runs in llama.cpp or Ollama. transformers reads GGUF (`from_pretrained(folder, gguf_file=NAME)`),
but slowly (every tensor de-quantized, every time) and a GGUF-loaded model refuses `save_pretrained`, so
`dequantized_folder` does it once: the tokenizer (its chat template from the GGUF metadata) and the weights
in float32, where the de-quantized values are exact, saved as a plain transformers folder under
`$SFTKIT_CACHE/gguf/<sha16>/` (default `~/.cache/sftkit`), keyed by the file's sha256, built in a staging
folder and renamed into place, so a half-written folder is never used. The training and inference dtype
is then applied by the normal loading, as the config says. `read_gguf` is the cheap look (the header and
metadata only) that `sftkit validate` and the error messages use.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftkit.atomic import place_problem, staged_dir, write_json
from sftkit.errors import SftkitError

MAGIC = b"GGUF"
PROVENANCE = "sftkit_gguf.json"  # written last in the cache folder: where the weights came from
CACHE_FORMAT = 1  # raised when the folder's layout changes, so an older cache folder is built again
_HASH_CHUNK = 1 << 22


@dataclass(frozen=True)
class GgufInfo:
    """What a GGUF file's header says: enough to validate it and to describe it in one line."""

    path: Path
    architecture: str
    quantization: str  # the file type llama.cpp wrote (Q4_1, Q4_K_M, ...), or the tensor types when it is absent
    tensor_types: dict[str, int]
    vocabulary: list[str]
    chat_template: str | None

    @property
    def line(self) -> str:
        return f"{self.path.name} ({self.quantization})"


def gguf_file(name: str) -> Path | None:
    """The GGUF file `name` means, or None when it names no GGUF (a model folder, a hub id).

    Raises:
        SftkitError: a `.gguf` path that does not exist, or a folder without config.json holding several `.gguf`.
    """
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf" and not path.is_dir():
        if not path.is_file():
            raise SftkitError(
                f"model {name}: no such GGUF file (looked in {Path.cwd()}); give an existing .gguf "
                "path (`sftkit models path smollm2` prints the demo's)"
            )
        return path
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    files = sorted(p for p in path.glob("*.gguf") if p.is_file())
    if len(files) > 1:
        shown = ", ".join(p.name for p in files[:4])
        raise SftkitError(
            f"model {name}: the folder holds {len(files)} .gguf files ({shown}"
            "), so which one is the model is unclear; give the .gguf file's path instead"
        )
    return files[0] if files else None


@functools.lru_cache(maxsize=16)
def _read_cached(path: str, size: int, mtime_ns: int) -> GgufInfo:
    from gguf import GGUFReader, LlamaFileType

    file = Path(path)
    with file.open("rb") as handle:
        if handle.read(4) != MAGIC:
            raise SftkitError(
                f"model {path}: not a GGUF file (it does not start with the GGUF magic bytes); "
                "give a .gguf model file as llama.cpp writes it"
            )
    try:
        reader = GGUFReader(path)
    except (ValueError, KeyError, IndexError, OSError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SftkitError(
            f"model {path}: the GGUF file cannot be read ({reason}): truncated or damaged; download or copy it again"
        ) from None
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size or not reader.tensors:
        raise SftkitError(
            f"model {path}: the GGUF file is {size:,} bytes but its tensors need {end:,}: truncated; "
            "download or copy it again"
        )
    architecture = str(_field(reader, "general.architecture") or "")
    tensor_types = dict(Counter(t.tensor_type.name for t in reader.tensors).most_common())
    file_type = _field(reader, "general.file_type")
    try:
        named = LlamaFileType(int(file_type)) if file_type is not None else None
    except ValueError:  # a file type newer than this gguf package: the tensor types say it instead
        named = None
    quantization = named.name.removeprefix("MOSTLY_").removeprefix("ALL_") if named is not None else None
    template = _field(reader, "tokenizer.chat_template")
    return GgufInfo(
        file,
        architecture,
        quantization or "+".join(tensor_types),
        tensor_types,
        list(_field(reader, "tokenizer.ggml.tokens") or []),
        str(template) if template else None,
    )


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return field.contents() if field is not None else None


def read_gguf(path: Path) -> GgufInfo:
    """The header of the GGUF file at `path` (memory-mapped: no tensor is read), checked to be complete.

    Raises:
        SftkitError: not a GGUF file, unreadable metadata, tensors past the end of the file (a truncated copy),
            or an architecture transformers cannot de-quantize.
    """
    stat = path.stat()
    info = _read_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    if info.architecture not in GGUF_CONFIG_MAPPING:
        known = ", ".join(sorted(key for key in GGUF_CONFIG_MAPPING if key not in ("general", "tokenizer")))
        raise SftkitError(
            f"model {path}: GGUF architecture {info.architecture!r} is not one transformers can "
            f"de-quantize (it reads {known}); use the model's transformers folder instead"
        )
    return info


def file_sha256(path: Path) -> str:
    """The sha256 of `path`'s content, hashed once per path, size and modification time in this process."""
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cache_root() -> Path:
    """Where de-quantized GGUF models are kept: `$SFTKIT_CACHE/gguf` (default `~/.cache/sftkit/gguf`)."""
    return Path(os.environ.get("SFTKIT_CACHE") or "~/.cache/sftkit").expanduser() / "gguf"


def cache_folder(path: Path) -> Path:
    """The cache folder the GGUF file at `path` de-quantizes into (complete or not yet)."""
    return cache_root() / file_sha256(path)[:16]


def cached_folder(path: Path) -> Path | None:
    """The complete cache folder of the GGUF file at `path`, or None when it was not de-quantized yet."""
    folder = cache_folder(path)
    return folder if (provenance(folder) or {}).get("format") == CACHE_FORMAT else None


def provenance(folder: Path) -> dict[str, Any] | None:
    """The record of where a cache folder's weights came from (source file, sha256, quantization), or None."""
    try:
        record = json.loads((Path(folder) / PROVENANCE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def dequantized_folder(path: Path) -> Path:
    """The transformers folder holding the GGUF file at `path` de-quantized (built the first time, ~20-60 s).

    Raises:
        SftkitError: the file is no complete GGUF of an architecture transformers reads, or the cache folder
            cannot be written.
    """
    info = read_gguf(path)
    folder = cached_folder(path)
    if folder is not None:
        return folder
    folder = cache_folder(path)
    problem = place_problem(folder, "dir")
    if problem:
        raise SftkitError(
            f"model {path}: the de-quantized copy cannot be cached ({problem}); set SFTKIT_CACHE to a writable folder"
        )
    print(
        f"note: de-quantizing {info.line} once into {folder} (float32; later runs read it from there)",
        file=sys.stderr,
        flush=True,
    )
    try:
        with staged_dir(folder) as staging:
            _write_folder(info, staging)
            if cached_folder(path) is not None:  # another process finished first: keep its folder, which may be in use
                raise _BuiltElsewhere
            # last, so a folder holding it is complete (the rename below is atomic as well)
            write_json(
                staging / PROVENANCE,
                {
                    "format": CACHE_FORMAT,
                    "source": str(path.resolve()),
                    "sha256": file_sha256(path),
                    "quantization": info.quantization,
                    "tensor_types": info.tensor_types,
                    "architecture": info.architecture,
                },
            )
    except _BuiltElsewhere:
        pass
    return folder


class _BuiltElsewhere(Exception):
    """Ends a de-quantization whose cache folder another process completed meanwhile (its staging is deleted)."""


def weights_origin(name: str) -> str | None:
    """`de-quantized from X.gguf (Q4_1) -> FOLDER` when `name` is a GGUF model, for the start summaries; else None."""
    gguf = gguf_file(name)
    if gguf is None:
        return None
    return f"de-quantized from {read_gguf(gguf).line} -> {cached_folder(gguf) or cache_folder(gguf)}"


def _write_folder(info: GgufInfo, out: Path) -> None:
    """The tokenizer (with the GGUF's chat template) and the float32 weights of `info`'s file, saved into `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftkit.quiet import quiet_loading_bars

    quiet_loading_bars()
    folder, name = str(info.path.resolve().parent), info.path.resolve().name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if info.chat_template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = info.chat_template
    tokenizer.save_pretrained(out)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: the same architecture built from its config (on the meta
    # device, so no second copy is allocated) takes the de-quantized tensors as they are.
    config = loaded.config
    config.dtype = torch.float32
    if hasattr(config, "quantization_config"):  # else Trainer refuses the saved model as a GGUF-quantized one
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
        missing = [key for key in missing if key != "lm_head.weight"]
    if missing or unexpected:
        raise SftkitError(
            f"model {info.path}: de-quantized tensors do not fit {type(plain).__name__} (missing "
            f"{missing[:3]}, unexpected {unexpected[:3]}); use the model's transformers folder instead"
        )
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out)
