"""The tokenizer the data is encoded with, and the chat template in force: named, given, or the model's own.

Which template trains, in order: `template: NAME` (a built-in one), `chat_template: PATH|TEXT` (a Jinja
template), else the model's own `chat_template` (tokenizer_config.json or chat_template.jinja). A model
with none, and neither key set, is one line naming the choices. `template_origin` says which, for
`sftkit validate`, `data preview` and the training banner.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.config.compat import TOOL_FORMAT_NAMES
from sftkit.data.model_source import resolve_model
from sftkit.errors import ConfigError, DataError, SftkitError
from sftkit.templates import TEMPLATES, JinjaTemplate, Template, get_template, prepare_tokenizer

if TYPE_CHECKING:
    from sftkit.config import SftConfig


def load_tokenizer(cfg: SftConfig, template: Template | None = None) -> Any:
    """Loads the base tokenizer and prepares it for the chat template (default: the config's, `resolve_template`).

    Control tokens the template needs are added as special tokens, its Jinja chat template is set and a
    pad token is provided if missing (`sftkit.templates.prepare_tokenizer`).

    Raises:
        SftkitError: the model directory or hub id cannot be loaded (missing, offline, not a tokenizer).
        ConfigError: no template set and the model has none.
    """
    tokenizer = base_tokenizer(cfg)
    _prepare(tokenizer, template or resolve_template(cfg, tokenizer), cfg)
    return tokenizer


def load_tokenizer_and_template(cfg: SftConfig) -> tuple[Any, Template]:
    """The prepared tokenizer and the template in force (resolved once, then passed along)."""
    tokenizer = base_tokenizer(cfg)
    template = resolve_template(cfg, tokenizer)
    _prepare(tokenizer, template, cfg)
    return tokenizer, template


def _prepare(tokenizer: Any, template: Template, cfg: SftConfig) -> None:
    """The template's tokens and settings, then new_special_tokens (after them, so the template's keep their ids;
    both train as trainable tokens)."""
    prepare_tokenizer(tokenizer, template)
    if cfg.new_special_tokens:
        tokenizer.add_tokens(cfg.new_special_tokens, special_tokens=True)


def base_tokenizer(cfg: SftConfig) -> Any:
    """The model's tokenizer as shipped (no template applied).

    Raises:
        SftkitError: the model directory or hub id cannot be loaded.
    """
    source = resolve_model(cfg.model_name_or_path)  # a missing folder or an unreachable hub fails here, at once
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - damaged tokenizer files fail as KeyError, TypeError, tokenizers' Exception
        raise SftkitError(unloadable(cfg.model_name_or_path, "tokenizer", exc)) from None


def resolve_template(cfg: SftConfig, tokenizer: Any) -> Template:
    """The template the config trains with, bound to `tokenizer` (before `prepare_tokenizer` changes it).

    Raises:
        ConfigError: no template anywhere, an unreadable chat_template file, or a Jinja template sftkit cannot
            train with (one line naming it).
        DataError: a named template needs a token (bos/eos) the tokenizer lacks.
    """
    if cfg.template is not None:
        return named_template(cfg).bind(tokenizer, cfg.enable_thinking)
    if cfg.chat_template is not None:
        source, origin = _given_jinja(cfg.chat_template)
        return _jinja(tokenizer, source, "chat_template", origin, cfg.enable_thinking)
    own = _own_chat_template(tokenizer)
    if own is None:
        raise ConfigError(
            f"template: {cfg.model_name_or_path} has no chat template; set template: to one of "
            f"{', '.join(TEMPLATES)}, or chat_template: to a .jinja file"
        )
    return _jinja(
        tokenizer, own, "model's own", f"the chat_template of {_own_file(cfg.model_name_or_path)}", cfg.enable_thinking
    )


def named_template(cfg: SftConfig) -> Template:
    """The config's named template (cfg.template set), with LLaMA-Factory's tool_format in place of its own."""
    template = get_template(cfg.template or "")
    if cfg.tool_format:
        template = dataclasses.replace(template, tool_format=TOOL_FORMAT_NAMES[cfg.tool_format])
    return template


def config_template(cfg: SftConfig) -> Template:
    """The config's template, from the model's tokenizer files (no model), for prompt texts and references."""
    return resolve_template(cfg, base_tokenizer(cfg))


def run_template(cfg: SftConfig, tokenizer: Any) -> Template:
    """The template a run (or merged model) was trained with: named in its config, else its saved chat_template.

    Raises:
        SftkitError: the run names no template and its tokenizer has no chat_template.
    """
    if cfg.template is not None:
        return named_template(cfg).bind(tokenizer, cfg.enable_thinking)
    own = _own_chat_template(tokenizer)
    if own is None:
        raise SftkitError("the run's tokenizer has no chat_template; it was not saved by sftkit train")
    name = "chat_template" if cfg.chat_template is not None else "model's own"
    return _jinja(tokenizer, own, name, "the run's saved chat_template", cfg.enable_thinking)


def template_origin(template: Template) -> str:
    """ "template qwen3 (built-in)" / "template model's own (the chat_template of DIR/tokenizer_config.json)"."""
    return f"template {template.name} ({template.origin})"


def _jinja(tokenizer: Any, source: str, name: str, origin: str, enable_thinking: bool) -> JinjaTemplate:
    try:
        return JinjaTemplate.from_tokenizer(tokenizer, source, name, origin, enable_thinking)
    except DataError as exc:
        raise ConfigError(f"chat_template: {exc} (from {origin})") from None


def _given_jinja(value: str) -> tuple[str, str]:
    """(Jinja text, where from) of the chat_template key: a file when it names one, else the text itself."""
    looks_like_path = "{" not in value and "\n" not in value
    path = Path(value)
    if looks_like_path:
        if not path.is_file():
            raise ConfigError(f"chat_template: {value} is not a file; give a .jinja file or the Jinja text itself")
        try:
            return path.read_text(encoding="utf-8"), f"chat_template {value}"
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"chat_template: cannot read {value} ({type(exc).__name__})") from None
    return value, "chat_template given inline in the config"


def _own_chat_template(tokenizer: Any) -> str | None:
    template = tokenizer.chat_template
    if isinstance(template, dict):  # several named templates: the default one trains
        template = template.get("default")
    return template if isinstance(template, str) and template.strip() else None


def _own_file(model: str) -> str:
    folder = Path(model)
    jinja = folder / "chat_template.jinja"
    return str(jinja) if jinja.is_file() else str(folder / "tokenizer_config.json") if folder.is_dir() else model


def unloadable(name: str, what: str, exc: Exception) -> str:
    """One line saying why `name` could not be loaded and what to do about it."""
    text = str(exc).strip()
    if "trust_remote_code" in text:
        return (
            f"model_name_or_path: {name!r} ships its own Python code for its {what}, which runs only with "
            "trust_remote_code: true; set it if you trust the model's author, or use another model"
        )
    reason = text.splitlines()[0].strip() if text else ""
    if Path(name).is_dir():
        if reason.endswith(":") or not reason:  # "Couldn't instantiate the backend tokenizer from one of: "
            files = ", ".join(sorted(path.name for path in Path(name).iterdir())[:8]) or "nothing"
            reason = f"{type(exc).__name__}: no {what} files it can read; the folder holds {files}"
        else:
            reason = f"{type(exc).__name__}: {reason}" if isinstance(exc, (KeyError, TypeError)) else reason
        return (
            f"model_name_or_path: cannot load the {what} from {name!r} ({reason}); its files look incomplete "
            "or damaged: copy the model folder again"
        )
    return (
        f"model_name_or_path: cannot load the {what} from {name!r} ({reason or type(exc).__name__}); use an "
        "existing local model directory, or a Hugging Face hub id with network access"
    )
