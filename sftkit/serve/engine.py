"""The generation worker: one thread that owns the model and its tokenizer, fed by a bounded queue.

HTTP handlers never touch the model or the tokenizer (a fast tokenizer used from two threads at once
raises "Already borrowed"); they put a `Job` on the queue, which answers 503 when full, and read the
job's events: `Started` (the prompt fits), `Delta` (streamed text), then `Finished` or `Failed`. A job
whose client went away is marked cancelled: skipped while queued, stopped at the next token while it
generates (`ReplyWatch`, a stopping criterion).
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import traceback
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol

from sftkit.errors import SftkitError
from sftkit.model import GenerationSettings, Loaded, encode_prompts, generate
from sftkit.serve.protocol import ApiError, Usage

if TYPE_CHECKING:
    from sftkit.templates import Template


@dataclass
class Generation:
    """What one request asks for: a conversation (chat) or raw text (completion), and how to sample."""

    messages: list[dict[str, str]] | None
    prompt: str | None
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    stops: list[str]
    stream: bool


@dataclass
class Started:
    prompt_tokens: int


@dataclass
class Delta:
    text: str


@dataclass
class Finished:
    text: str
    finish_reason: str
    usage: Usage


@dataclass
class Failed:
    error: ApiError


Event = Started | Delta | Finished | Failed


@dataclass
class Job:
    """A request on its way through the worker; events cross back to the event loop thread-safely."""

    request: Generation
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    stopped_early: bool = False  # generation was cut short because the client left

    def send(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class Backend(Protocol):
    """A way of generating: loads the model once, then serves one job at a time on the worker thread."""

    def run(self, job: Job) -> None:
        """Sends `Started`, any `Delta`s and `Finished` for the job, or raises ApiError."""


class Engine:
    """The queue and the one worker thread in front of a backend."""

    def __init__(self, backend: Backend, max_queue: int) -> None:
        self.backend = backend
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.generating = False
        self.cancelled = 0  # jobs dropped or stopped because their client left (shown by /health)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="sftkit-generation", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Cancels what is still queued and ends the worker after its current job."""
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancelled.set()
                job.send(Failed(ApiError(503, "the server is shutting down", kind="server_error")))
        self.jobs.put(None)
        if self._thread is not None:
            self._thread.join()

    def submit(self, job: Job) -> None:
        """Queues the job.

        Raises:
            ApiError: 503 when the queue is full.
        """
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise ApiError(503, f"the server is busy ({self.jobs.maxsize} requests queued, the limit set by "
                                "--max-queue); retry later", code="queue_full", kind="server_error") from None

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            if job.cancelled.is_set():
                self.cancelled += 1
                continue
            self.generating = True
            try:
                self.backend.run(job)
            except ApiError as exc:
                job.send(Failed(exc))
            except Exception as exc:  # noqa: BLE001 - a bug: logged here, the client gets a plain 500, the server lives
                traceback.print_exc(file=sys.stderr)
                job.send(Failed(ApiError(500, f"internal error ({type(exc).__name__}); see the server's log",
                                         kind="server_error")))
            finally:
                self.generating = False
                self.cancelled += job.stopped_early


# ---------------------------------------------------------------------------- transformers

class TransformersBackend:
    """Generation with sftkit's own model stage: the template's prompt ids, its stop tokens, `generate`."""

    def __init__(self, loaded: Loaded) -> None:
        self.model, self.tokenizer, self.template = loaded.model, loaded.tokenizer, loaded.template
        self.stop_ids = self.template.stop_token_ids(self.tokenizer)
        self.context: int | None = getattr(self.model.config, "max_position_embeddings", None)

    def run(self, job: Job) -> None:
        from transformers import StoppingCriteriaList, set_seed

        request = job.request
        ids, tail = prompt_ids(self.tokenizer, self.template, request)
        budget = token_budget(len(ids), request.max_tokens, self.context)
        job.send(Started(len(ids)))
        if request.seed is not None:
            set_seed(request.seed)
        watch = ReplyWatch(self.tokenizer, len(ids), tail, request.stops, job)
        settings = GenerationSettings(max_new_tokens=budget, temperature=request.temperature, top_p=request.top_p,
                                      batch_size=1)
        text = generate(self.model, self.tokenizer, [ids], self.stop_ids, settings,
                        stopping_criteria=StoppingCriteriaList([watch]))[0]
        reply, stopped = watch.finish(text)
        ended = stopped or watch.last_id in self.stop_ids or watch.count < budget
        job.send(Finished(reply, "stop" if ended else "length", Usage(len(ids), watch.count)))


def prompt_ids(tokenizer: Any, template: Template, request: Generation) -> tuple[list[int], str]:
    """Prompt ids, and the header text they leave for the model to generate (a chat's "Assistant: " space).

    A chat is rendered by the trained template (`encode_prompts`, as `sftkit chat` does); a completion's prompt
    is tokenized as it is.

    Raises:
        ApiError: an empty prompt, or a conversation the template refuses.
    """
    if request.messages is None:
        ids = tokenizer(request.prompt).input_ids
        if not ids:
            raise ApiError(400, "prompt: empty; give some text to continue", "prompt")
        return ids, ""
    try:
        ids, tails = encode_prompts(tokenizer, template, [SimpleNamespace(messages=request.messages, tools=None)])
    except SftkitError as exc:
        raise ApiError(400, f"messages: {exc}", "messages") from None
    return ids[0], tails[0]


def token_budget(prompt_tokens: int, max_tokens: int | None, context: int | None) -> int:
    """The tokens a reply may have: max_tokens, else the rest of the context.

    Raises:
        ApiError: the prompt (and max_tokens) do not fit the model's context.
    """
    if context is None:
        return max_tokens or 256
    asked = prompt_tokens + (max_tokens or 1)
    if asked > context:
        detail = f"{prompt_tokens} in the prompt" + (f" + {max_tokens} max_tokens" if max_tokens else "")
        raise ApiError(400, f"this model's maximum context length is {context} tokens, and the request asks for "
                            f"{asked} ({detail}); shorten the prompt or lower max_tokens",
                       "messages", "context_length_exceeded")
    return max_tokens or context - prompt_tokens


class ReplyWatch:
    """A stopping criterion that follows the reply as it grows: stop strings, cancellation, streaming.

    Called by `generate` after every token with all ids so far, before the next step, so a stop string
    or a client gone away ends generation at once. Streamed text holds back what may still change: the
    header tail while it is being generated, a half-decoded character, the start of a stop string.
    """

    def __init__(self, tokenizer: Any, prompt_tokens: int, tail: str, stops: list[str], job: Job) -> None:
        self.tokenizer, self.prompt_tokens, self.tail, self.stops, self.job = tokenizer, prompt_tokens, tail, stops, job
        self.count = 0
        self.last_id: int | None = None
        self.sent = ""
        self.follow = job.request.stream or bool(stops)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        generated = input_ids[0, self.prompt_tokens:]
        self.count, self.last_id = len(generated), int(generated[-1])
        stop = self.job.stopped_early = self.job.cancelled.is_set()
        if self.follow and not stop:
            text = self._visible(self.tokenizer.decode(generated, skip_special_tokens=True))
            cut = first_stop(text, self.stops)
            stop = cut is not None
            self._send(text[:cut] if stop else text[:len(text) - _held(text, self.stops)])
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    def finish(self, text: str) -> tuple[str, bool]:
        """The reply `generate` decoded, cut at a stop string, and whether one was found; the rest is streamed."""
        reply = text.removeprefix(self.tail)  # as generate_replies does, so chat and serve answer alike
        cut = first_stop(reply, self.stops)
        reply = reply if cut is None else reply[:cut]
        self._send(reply)
        return reply, cut is not None

    def _visible(self, text: str) -> str:
        if self.tail.startswith(text):  # the header tail is still being generated
            return ""
        return text.removeprefix(self.tail).rstrip("\ufffd")  # U+FFFD: a character's bytes still coming

    def _send(self, text: str) -> None:
        if self.job.request.stream and len(text) > len(self.sent) and text.startswith(self.sent):
            self.job.send(Delta(text[len(self.sent):]))
            self.sent = text


def first_stop(text: str, stops: list[str]) -> int | None:
    """Where the earliest stop string starts in `text`, or None."""
    found = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    return min(found) if found else None


def _held(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that a stop string starts with (not sent until it is decided)."""
    return max((k for stop in stops for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0)
