"""The Chat tab: the trained model and the base model answering the same conversation, side by side, streamed.

Each model answers exactly as `sftkit chat MODEL --system ... --prompt ...` would (same loader, same template,
same stop tokens, greedy by default), so what the page shows is what the terminal shows.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sftkit.chat import generate_reply
from sftkit.model import GenerationSettings
from sftkit.model.inference import Loaded, load_for_inference, trained_default_system
from sftkit.run_dir import ADAPTER_WEIGHTS, has_adapter, shell_command

_loaded: dict[tuple[str, float], Loaded] = {}
_loading = threading.Lock()


def model_for(path: str) -> Loaded:
    """The model at `path`, loaded once per version of its weights (a run trained further is loaded again)."""
    weights = Path(path) / ADAPTER_WEIGHTS if has_adapter(Path(path)) else Path(path)
    key = (path, weights.stat().st_mtime if weights.exists() else 0.0)
    with _loading:
        if key not in _loaded:
            for stale in [k for k in _loaded if k[0] == path]:
                del _loaded[stale]
            _loaded[key] = load_for_inference(path)
        return _loaded[key]


def unload() -> str:
    """Frees every model the Chat tab loaded (the next run trains with that memory back)."""
    import gc

    with _loading:
        count = len(_loaded)
        _loaded.clear()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
    return f"unloaded {count} model{'s' if count != 1 else ''}; the next message loads again"


def one_line(exc: BaseException) -> str:
    """An error as the pane shows it: its first line (an SftkitError names the path itself)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def default_system(path: str) -> str | None:
    """The run's default_system, which training gave every row without one (chat uses it too)."""
    return trained_default_system(path)


def stream_reply(path: str, messages: list[dict[str, str]], settings: GenerationSettings) -> Iterator[str]:
    """The reply to `messages` (ending with a user turn) as it grows, then the reply exactly as chat prints it."""
    from transformers import TextIteratorStreamer, set_seed

    loaded = model_for(path)
    streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            set_seed(settings.seed)
            result["reply"] = generate_reply(
                loaded.model, loaded.tokenizer, loaded.template, messages, settings, streamer=streamer
            )
        except Exception as exc:  # noqa: BLE001 - shown on the page; the streamer must still end
            result["error"] = exc
            streamer.on_finalized_text("", stream_end=True)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text.lstrip()
    thread.join()
    if "error" in result:
        raise result["error"]
    yield result["reply"]


def chat_command(path: str, system: str | None, prompt: str, settings: GenerationSettings) -> str:
    """The terminal line that gives the same first answer."""
    args: list[str] = ["chat", path]
    if system:
        args += ["--system", system]
    if settings.temperature:
        args += [
            "--temperature",
            str(settings.temperature),
            "--top-p",
            str(settings.top_p),
            "--seed",
            str(settings.seed),
        ]
    return shell_command(*args, "--max-new-tokens", str(settings.max_new_tokens), "--prompt", prompt)


def conversation(system: str | None, history: list[dict[str, Any]], prompt: str) -> list[dict[str, str]]:
    """The messages a model answers: the system prompt, the turns so far, the new user turn."""
    turns = [{"role": m["role"], "content": _text(m["content"])} for m in history if m["role"] in ("user", "assistant")]
    return ([{"role": "system", "content": system}] if system else []) + turns + [{"role": "user", "content": prompt}]


def _text(content: Any) -> str:
    """Gradio 6 hands a message's content back as a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)
