"""The tokenizer the data is encoded with: the base model's, prepared for the chat template."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.data.model_source import resolve_model
from sftkit.errors import SftkitError
from sftkit.templates import Template, get_template, prepare_tokenizer

if TYPE_CHECKING:
    from sftkit.config import SftConfig


def load_tokenizer(cfg: SftConfig, template: Template | None = None) -> Any:
    """Loads the base tokenizer and prepares it for the chat template (default: the config's).

    Control tokens the template needs are added as special tokens, its Jinja chat template is set and a
    pad token is provided if missing (`sftkit.templates.prepare_tokenizer`).

    Raises:
        SftkitError: the model directory or hub id cannot be loaded (missing, offline, not a tokenizer).
    """
    source = resolve_model(cfg.model_name_or_path)  # a missing folder or an unreachable hub fails here, at once
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - damaged tokenizer files fail as KeyError, TypeError, tokenizers' Exception
        raise SftkitError(unloadable(cfg.model_name_or_path, "tokenizer", exc)) from None
    prepare_tokenizer(tokenizer, template or get_template(cfg.template))
    return tokenizer


def unloadable(name: str, what: str, exc: Exception) -> str:
    """One line saying why `name` could not be loaded and what to do about it."""
    text = str(exc).strip()
    if "trust_remote_code" in text:
        return (f"model_name_or_path: {name!r} ships its own Python code for its {what}, which runs only with "
                "trust_remote_code: true; set it if you trust the model's author, or use another model")
    reason = text.splitlines()[0].strip() if text else ""
    if Path(name).is_dir():
        if reason.endswith(":") or not reason:  # "Couldn't instantiate the backend tokenizer from one of: "
            files = ", ".join(sorted(path.name for path in Path(name).iterdir())[:8]) or "nothing"
            reason = f"{type(exc).__name__}: no {what} files it can read; the folder holds {files}"
        else:
            reason = f"{type(exc).__name__}: {reason}" if isinstance(exc, (KeyError, TypeError)) else reason
        return (f"model_name_or_path: cannot load the {what} from {name!r} ({reason}); its files look incomplete "
                "or damaged: copy the model folder again")
    return (f"model_name_or_path: cannot load the {what} from {name!r} ({reason or type(exc).__name__}); use an "
            "existing local model directory, or a Hugging Face hub id with network access")
