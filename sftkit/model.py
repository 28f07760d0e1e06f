"""Model stage: tokenizer, base model, precision and the LoRA adapter.

Our schema meets PEFT in exactly one function, `add_adapter`. Heavy libraries are imported inside the
functions so the CLI stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sftkit.errors import SftkitError

if TYPE_CHECKING:
    from sftkit.config import SftConfig


def load_tokenizer(cfg: SftConfig) -> Any:
    """Loads the base tokenizer and prepares it for the config's chat template.

    Control tokens the template needs are added as special tokens, its Jinja chat template is set and a
    pad token is provided if missing (`sftkit.data.template.prepare_tokenizer`).

    Raises:
        SftkitError: the model directory or hub id cannot be loaded (missing, offline, not a tokenizer).
    """
    from transformers import AutoTokenizer

    from sftkit.data.template import get_template, prepare_tokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise SftkitError(_unloadable(cfg.model_name_or_path, "tokenizer", exc)) from None
    prepare_tokenizer(tokenizer, get_template(cfg.template))
    return tokenizer


def _unloadable(name: str, what: str, exc: Exception) -> str:
    """One line saying why `name` could not be loaded and what to do about it."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"model_name_or_path: cannot load the {what} from {name!r} ({first_line}); use an existing "
            "local model directory, or a Hugging Face hub id with network access")
