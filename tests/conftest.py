"""Shared fixtures: a tiny ERNIE-architecture model and tokenizer built once per test session.

Nothing is downloaded: HF_HUB_OFFLINE is forced on so a test that would reach the hub fails loudly.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
# Tiny matmuls on a shared 2-core machine are ~50x faster single-threaded than contending for both cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
# Variables sftkit sets for the libraries that read them only from the environment (accelerate's fp8 backend,
# transformers' TensorBoard folder): a run sets them for its own process, so a test must not leak them.
PROCESS_SETTINGS = ("ACCELERATE_FP8_BACKEND", "TENSORBOARD_LOGGING_DIR")


@pytest.fixture(autouse=True)
def _process_settings_kept():
    saved = {name: os.environ.get(name) for name in PROCESS_SETTINGS}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with the tiny model + tokenizer (no chat tokens), as scripts/make_tiny_model.py writes it."""
    from sftkit.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-ernie"))


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


@pytest.fixture()
def tiny_tokenizer(tiny_model_dir: Path):
    """A fresh tokenizer per test: templates add tokens to it, so it must not be shared."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def shared_folder(name: str, marker: str) -> Path:
    """A folder of ../shared (it holds `marker`); absent on a user's clone, so the test skips there."""
    folder = SHARED / name
    if not (folder / marker).is_file():
        pytest.skip(f"{folder} is absent (only CI and developer machines have ../shared)")
    return folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """LLaMA-Factory's demo data beside the project."""
    return shared_folder("data", "dataset_info.json")


@pytest.fixture(scope="session")
def chat_templates() -> Path:
    """Official chat templates of eight model families (../shared/chat_templates)."""
    return shared_folder("chat_templates", "README.md")


@pytest.fixture(scope="session")
def bundled_data() -> Path:
    return REPO / "data"
