"""A transformers model as a GGUF file, by llama.cpp's own tools: convert_hf_to_gguf.py, then llama.cpp's quantizer.

The converter is llama.cpp's (every architecture it knows, its tensor layouts, its tokenizer handling),
taken from the llama-cpp-python source of the installed version: scripts/setup.sh extracts
convert_hf_to_gguf.py, its conversion/ package and gguf-py into `.venv/share/sftkit/llama.cpp/`
(SFTKIT_LLAMA_CPP_DIR names another copy). It runs in a subprocess with that gguf-py first on the path,
through converter_main.py, which adds the trained chat template and end-of-turn token (and a vocabulary for
tokenizers the converter cannot read). The quantized types (q8_0 and the k-quants) are made from the f32
file by `llama_model_quantize`, the function llama-quantize runs, as llama.cpp's own instructions do.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.errors import SftkitError

if TYPE_CHECKING:
    from sftkit.model import Loaded

CONVERTED = ("f32", "f16", "bf16")  # written by the converter itself
QUANTIZED = {"q8_0": "MOSTLY_Q8_0", "q4_k_m": "MOSTLY_Q4_K_M", "q5_k_m": "MOSTLY_Q5_K_M", "q6_k": "MOSTLY_Q6_K"}
OUTTYPES = (*CONVERTED, *QUANTIZED)
K_QUANT_BLOCK = 256  # a k-quant block: rows whose length it does not divide get another type from llama.cpp
SETUP_HINT = "run scripts/setup.sh (it extracts llama.cpp's converter from the llama-cpp-python source)"


def llama_cpp_dir() -> Path:
    """Where llama.cpp's convert_hf_to_gguf.py and gguf-py are (SFTKIT_LLAMA_CPP_DIR, else the environment's share/)."""
    return Path(os.environ.get("SFTKIT_LLAMA_CPP_DIR") or Path(sys.prefix) / "share" / "sftkit" / "llama.cpp")


def check_converter() -> Path:
    """The converter's folder, or an error saying how to get it.

    Raises:
        SftkitError: convert_hf_to_gguf.py or gguf-py is missing.
    """
    folder = llama_cpp_dir()
    if not (folder / "convert_hf_to_gguf.py").is_file() or not (folder / "gguf-py" / "gguf").is_dir():
        raise SftkitError(
            f"{folder}: llama.cpp's convert_hf_to_gguf.py and gguf-py are not there; {SETUP_HINT}, or "
            "set SFTKIT_LLAMA_CPP_DIR to a llama.cpp checkout"
        )
    return folder


@cache
def supported_architectures(folder: Path) -> frozenset[str]:
    """The transformers architectures the converter registers a model class for (read from its source, no import)."""
    names: set[str] = set()
    for source in sorted((folder / "conversion").glob("*.py")) + [folder / "convert_hf_to_gguf.py"]:
        for args in re.findall(r"@ModelBase\.register\(([^)]*)\)", source.read_text(encoding="utf-8")):
            names.update(re.findall(r"[\"']([A-Za-z0-9_]+)[\"']", args))
    return frozenset(names)


def check_architecture(config: Any) -> str:
    """The model's architecture, refused before any weights load unless llama.cpp's converter knows it.

    Raises:
        SftkitError: naming the architecture.
    """
    names = list(getattr(config, "architectures", None) or [])
    if not names:
        raise SftkitError(
            f"config.json (model_type {config.model_type}) names no `architectures`, which llama.cpp's "
            "converter picks its model class by; save the model with transformers' save_pretrained"
        )
    if names[0] not in supported_architectures(check_converter()):
        raise SftkitError(
            f"architecture {names[0]}: llama.cpp's convert_hf_to_gguf.py has no model class for it "
            f"(llama-cpp-python {_version(check_converter())}), so it cannot be exported to GGUF"
        )
    return names[0]


def write_gguf(path: Path, loaded: Loaded, outtype: str, name: str, work: Path) -> list[str]:
    """Writes the model as a GGUF file of `outtype` at `path`, through an HF folder and an f32 file in `work`.

    Returns:
        Notes for the report (tensors the k-quant left in another type).

    Raises:
        SftkitError: the converter or the quantizer failed (its last lines quoted).
    """
    hf = work / "hf"
    _save_hf_folder(loaded, hf)
    stop = loaded.template.stop_token_ids(loaded.tokenizer)
    settings = work / "settings.json"
    settings.write_text(
        json.dumps({"template": loaded.template.jinja(), "eot_id": stop[0] if stop else None}), encoding="utf-8"
    )
    converted = path if outtype in CONVERTED else work / "f32.gguf"
    _run_converter(hf, converted, outtype if outtype in CONVERTED else "f32", name, settings)
    if outtype in CONVERTED:
        return []
    quantize(converted, path, outtype)
    converted.unlink()
    return _fallback_notes(path, outtype)


def _save_hf_folder(loaded: Loaded, folder: Path) -> None:
    """The (merged) model as transformers saves it, its tokenizer carrying the trained template."""
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.chat_template = loaded.template.jinja()
    loaded.tokenizer.save_pretrained(folder)


def _run_converter(hf: Path, out: Path, outtype: str, name: str, settings: Path) -> None:
    folder = check_converter()
    sftkit_root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(folder / "gguf-py"), str(sftkit_root)]),
        "NO_LOCAL_GGUF": "1",
    }  # the path above already puts this llama.cpp's gguf-py first
    command = [
        sys.executable,
        str(Path(__file__).with_name("converter_main.py")),
        str(folder),
        str(settings),
        "--",
        str(hf),
        "--outfile",
        str(out),
        "--outtype",
        outtype,
        "--model-name",
        name,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    for line in result.stderr.splitlines():
        if line.startswith("sftkit: "):
            print(f"export: {line.removeprefix('sftkit: ')}", file=sys.stderr)
    own = [
        line.removeprefix("sftkit-error: ") for line in result.stderr.splitlines() if line.startswith("sftkit-error:")
    ]
    if own:
        raise SftkitError(f"{own[-1]}; nothing was written")
    if result.returncode != 0:
        tail = " | ".join(line.strip() for line in result.stderr.strip().splitlines()[-3:])
        raise SftkitError(f"llama.cpp's convert_hf_to_gguf.py failed on {hf.name} ({tail}); nothing was written")


def quantize(source: Path, out: Path, outtype: str) -> None:
    """llama.cpp's quantizer (llama-quantize's function) from the f32 file `source` to `outtype`.

    Raises:
        SftkitError: llama.cpp refused.
    """
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{QUANTIZED[outtype]}")
    params.nthread = max(1, min(4, os.cpu_count() or 1))
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params) != 0:
        raise SftkitError(f"llama.cpp's quantizer failed to make {outtype} from {source.name}; nothing was written")


def _fallback_notes(path: Path, outtype: str) -> list[str]:
    """llama.cpp gives a k-quant tensor whose rows 256 does not divide another type (q5_0, q8_0, ...): said, not
    hidden, since a tiny model then is not the type its name says."""
    import gguf

    if not outtype.startswith(("q4_k", "q5_k", "q6_k")):
        return []
    reader = gguf.GGUFReader(path)
    matrices = [t for t in reader.tensors if len(t.shape) >= 2]
    other = [t for t in matrices if not t.tensor_type.name.endswith("_K") and int(t.shape[0]) % K_QUANT_BLOCK]
    if not other:
        return []
    kinds = sorted({t.tensor_type.name for t in other})
    note = (
        f"{len(other)} of {len(matrices)} weight matrices have rows of a length {K_QUANT_BLOCK} does not divide "
        f"(e.g. {other[0].name}, {int(other[0].shape[0])}), so llama.cpp stored them as {', '.join(kinds)}, not a "
        "k-quant"
    )
    return [note]


def _version(folder: Path) -> str:
    version = folder / "VERSION"
    return version.read_text(encoding="utf-8").strip() if version.is_file() else "unknown version"
