"""How the page tells the user things: the terminal command beside each action, and errors as one-line toasts."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import gradio as gr

from sftkit.errors import SftkitError


def said(command: str) -> str:
    """The terminal command beside an action."""
    return f"`$ {command}`"


def shown_errors(handler: Callable[..., Any]) -> Callable[..., Any]:
    """A handler whose SftkitError (a bad config, dataset or model path) reaches the page as Gradio's error toast,
    one line per problem as the CLI prints them, instead of a generic "Error" and a traceback in the server log."""
    if inspect.isgeneratorfunction(handler):  # Gradio streams only from a generator function: keep it one

        @functools.wraps(handler)
        def streamed(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from handler(*args, **kwargs)
            except SftkitError as exc:
                raise _toast(exc) from None

        return streamed

    @functools.wraps(handler)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except SftkitError as exc:
            raise _toast(exc) from None

    return wrapped


def _toast(exc: SftkitError) -> gr.Error:
    return gr.Error("\n".join(f"error: {line}" for line in exc.problems or [str(exc)]))
