"""The tokenizer the data is encoded with: the base model's, prepared for the chat template."""

from __future__ import annotations

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
    except (OSError, ValueError) as exc:
        raise SftkitError(unloadable(cfg.model_name_or_path, "tokenizer", exc)) from None
    prepare_tokenizer(tokenizer, template or get_template(cfg.template))
    return tokenizer


def unloadable(name: str, what: str, exc: Exception) -> str:
    """One line saying why `name` could not be loaded and what to do about it."""
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    return (f"model_name_or_path: cannot load the {what} from {name!r} ({reason}); use an existing local "
            "model directory, or a Hugging Face hub id with network access")
