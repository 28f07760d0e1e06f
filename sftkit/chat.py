"""Chat stage: talk to a trained, merged or base model with the template it was trained on.

Prompts are built by `encode_prompt`, the same template definition that rendered the training data,
and generation stops at the template's end token (or eos). Three ways in:

- `--prompt TEXT`: answer it, print the answer, exit.
- stdin not a terminal (and no `--repl`): every line is a prompt answered independently (a fresh
  conversation with the `--system` prompt each time, so answers do not depend on line order), one
  answer printed per prompt.
- a terminal (or `--repl`): a multi-turn conversation that streams tokens; `/reset` clears it,
  `/system TEXT` sets the system prompt (`/system` alone removes it), `/exit` or Ctrl-D leaves,
  Ctrl-C stops the current answer and keeps the conversation.

Loading and generation are the model stage's (`sftkit.model`), shared with eval and predict.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TextIO

from sftkit.errors import SftkitError
from sftkit.model import GenerationSettings, generate_replies, load_for_inference, trained_default_system

if TYPE_CHECKING:
    from sftkit.templates import Template

PROMPT = ">>> "
COMMANDS = "commands: /reset (new conversation), /system TEXT (set the system prompt), /exit"


@dataclass
class ChatSession:
    """A conversation with a loaded model: the system prompt and the turns so far."""

    model: Any
    tokenizer: Any
    template: Template
    settings: GenerationSettings
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)

    def ask(self, text: str, streamer: Any = None, stop: StopOnInterrupt | None = None) -> str:
        """Answers `text` as the next user turn and records both turns."""
        turns = self.history + [{"role": "user", "content": text}]
        system = [{"role": "system", "content": self.system}] if self.system else []
        reply = generate_reply(
            self.model, self.tokenizer, self.template, system + turns, self.settings, streamer=streamer, stop=stop
        )
        self.history = turns + [{"role": "assistant", "content": reply}]
        return reply


def chat(
    model: str,
    system: str | None = None,
    prompt: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    repl: bool = False,
) -> None:
    """Answers prompts from a run directory, merged model, or base model.

    Args:
        model: run directory (LoRA adapter or full weights), merged model directory, or base model
            path / hub id.
        system: system prompt (default: the run's default_system, as in training).
        prompt: answer this prompt and return, instead of reading stdin.
        max_new_tokens: most tokens per answer.
        temperature: 0 for greedy decoding; otherwise sampling with `top_p`.
        top_p: nucleus sampling mass.
        seed: seed of the sampling.
        repl: run the interactive loop even when stdin is not a terminal.

    Raises:
        SftkitError: bad generation settings, or a model that cannot be loaded.
    """
    from transformers import set_seed

    settings = GenerationSettings(max_new_tokens, temperature, top_p)
    if settings.problems():
        raise SftkitError(*settings.problems())
    loaded = load_for_inference(model)
    set_seed(seed)
    session = ChatSession(
        loaded.model, loaded.tokenizer, loaded.template, settings, system=system or _trained_default_system(model)
    )
    if prompt is not None:
        print(session.ask(prompt))
    elif repl or sys.stdin.isatty():
        run_repl(
            session, _terminal_reader() if sys.stdin.isatty() else _stream_reader(sys.stdin, sys.stdout), sys.stdout
        )
    else:
        _answer_lines(session, sys.stdin)


def _trained_default_system(model: str) -> str | None:
    """The run's default_system: training gave it to every row without a system prompt."""
    system = trained_default_system(model)
    if system:
        _note(f"system prompt {system!r} (the run's default_system; --system replaces it)")
    return system


# ---------------------------------------------------------------------------- generation


class StopOnInterrupt:
    """A stopping criterion that ends generation once Ctrl-C (SIGINT) arrives while armed.

    Duck-typed for `StoppingCriteriaList`, so this module imports without transformers.
    """

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.requested, dtype=torch.bool, device=input_ids.device)

    @contextmanager
    def armed(self) -> Iterator[StopOnInterrupt]:
        """Within the block, SIGINT sets the flag instead of raising KeyboardInterrupt."""
        self.requested = False
        previous = signal.signal(signal.SIGINT, lambda _signum, _frame: setattr(self, "requested", True))
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def generate_reply(
    model: Any,
    tokenizer: Any,
    template: Template,
    messages: list[dict[str, str]],
    settings: GenerationSettings,
    tools: str | None = None,
    streamer: Any = None,
    stop: StopOnInterrupt | None = None,
) -> str:
    """The assistant's reply to a conversation ending with a user turn, streamed, stopped early by `stop`."""
    from transformers import StoppingCriteriaList

    conversation = SimpleNamespace(messages=messages, tools=tools)
    return generate_replies(
        model,
        tokenizer,
        template,
        [conversation],
        settings,
        streamer=streamer,
        stopping_criteria=StoppingCriteriaList([stop] if stop else []),
    )[0]


# ---------------------------------------------------------------------------- the three ways in


def run_repl(session: ChatSession, read: Callable[[str], str], out: TextIO) -> None:
    """The interactive loop: streams answers, handles /reset, /system, /exit, Ctrl-C and Ctrl-D.

    Args:
        session: the conversation.
        read: shows a prompt and returns one line; raises EOFError at the end (Ctrl-D).
        out: where answers and messages go.
    """
    stop = StopOnInterrupt()
    out.write(f"{COMMANDS}\n")
    while True:
        try:
            line = read(PROMPT).strip()
        except EOFError:
            out.write("\n")
            return
        except KeyboardInterrupt:  # Ctrl-C at the prompt abandons the line, as in a shell
            out.write("\n")
            continue
        if line == "/exit":
            return
        if line:
            _handle(session, line, out, stop)


def _handle(session: ChatSession, line: str, out: TextIO, stop: StopOnInterrupt) -> None:
    """One REPL line: a command or the next user turn (streamed)."""
    command, _, argument = line.partition(" ")
    if command == "/reset":
        session.history = []
        out.write("(new conversation)\n")
    elif command == "/system":
        session.system = argument.strip() or None
        out.write(f"(system prompt {'set' if session.system else 'removed'})\n")
    elif command.startswith("/"):
        out.write(f"unknown command {command}; {COMMANDS}\n")
    else:
        with stop.armed():
            session.ask(line, streamer=_streamer(session.tokenizer, out), stop=stop)
        if stop.requested:
            out.write("(stopped)\n")


def _answer_lines(session: ChatSession, lines: TextIO) -> None:
    """One-shot over stdin: each non-empty line answered in a fresh conversation."""
    for line in lines:
        if line.strip():
            session.history = []
            print(session.ask(line.rstrip("\n")), flush=True)


def _terminal_reader() -> Callable[[str], str]:
    import readline  # noqa: F401  (line editing and history for input())

    return input


def _stream_reader(stream: TextIO, out: TextIO) -> Callable[[str], str]:
    """`input()` for a non-terminal stream: echoes the prompt, raises EOFError at the end."""

    def read(prompt: str) -> str:
        out.write(prompt)
        out.flush()
        line = stream.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    return read


def _streamer(tokenizer: Any, out: TextIO) -> Any:
    """A TextStreamer that writes the reply to `out` instead of stdout."""
    from transformers import TextStreamer

    class OutStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            out.write(text + ("\n" if stream_end else ""))
            out.flush()

    return OutStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)
