"""The generation worker: one thread that owns the model and its tokenizer, fed by a bounded queue.

HTTP handlers never touch the model or the tokenizer (a fast tokenizer used from two threads at once
raises "Already borrowed"); they put a `Job` on the queue, which answers 503 when full, and read the
job's events: `Started` (the prompt fits), `Delta` (streamed text), then `Finished` or `Failed`. A job
whose client went away is marked cancelled: skipped while queued, stopped at the next token while it
generates (`ReplyWatch`, a stopping criterion).

The worker takes what is queued together, up to `max_batch` jobs (`--max-batch`: 8 on a CUDA GPU, 1 on
the CPU, so that there an answer never depends on what else was queued), and the transformers backend
answers the jobs that sample alike in one left-padded `generate` call; each row has its own watch, budget
and stream. A request for n choices is n rows; its log-probabilities, JSON or forced-call grammar and echoed
prompt are `sftkit.serve.decoding`'s; its tool calls are parsed from the template's format once it is done.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sys
import threading
import traceback
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol

from sftkit.errors import SftkitError
from sftkit.model import GenerationSettings, Loaded, encode_prompts, generate
from sftkit.serve.decoding import (
    GrammarCompiler,
    GrammarMask,
    LogprobRecorder,
    Scored,
    json_grammar,
    prompt_scores,
    sampling_processors,
    tool_call_grammar,
)
from sftkit.serve.protocol import ApiError, Usage
from sftkit.templates.tool_calls import ToolCall, parse_tool_calls, tool_call_format

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
    n: int = 1
    logprobs: int | None = None  # alternatives per token when log-probabilities are asked for; None: none
    echo: bool = False  # a completion that repeats (and scores) its prompt
    prompt_token_ids: list[int] | None = None  # a completion prompt given as token ids
    tools: list[dict[str, Any]] | None = None  # OpenAI tool objects the prompt shows; None: no tool may be called
    tool_choice: str = "none"  # "auto", "required" or the name of the function that must be called
    reply_schema: dict[str, Any] | None = None  # the reply must be JSON valid against it


@dataclass
class Started:
    prompt_tokens: int


# A token as the client sees it: its text, its log-probability, the most likely tokens at its step
TokenLogprob = tuple[str, float, list[tuple[str, float]]]


@dataclass
class Delta:
    text: str
    index: int = 0  # the choice it belongs to (n > 1)
    logprobs: list[TokenLogprob | None] | None = None  # its tokens' (None: a prompt's first token, echoed)


@dataclass
class Answer:
    """One choice of a finished request."""

    index: int
    text: str
    finish_reason: str
    tokens: int
    logprobs: list[TokenLogprob | None] | None = None
    tool_calls: list[ToolCall] | None = None
    prompt_chars: int = 0  # echoed prompt text at the start of `text` (the completion's text_offset base)


@dataclass
class Finished:
    text: str
    finish_reason: str
    usage: Usage
    choices: list[Answer] = field(default_factory=list)  # every choice, the first one's text/finish_reason above


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
    answered: bool = False  # Finished or Failed was sent

    def send(self, event: Event) -> None:
        self.answered = self.answered or isinstance(event, (Finished, Failed))
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class Backend(Protocol):
    """A way of generating: loads the model once, then serves the worker's jobs on the worker thread."""

    def run_batch(self, jobs: list[Job]) -> None:
        """Sends `Started`, any `Delta`s and `Finished` (or `Failed`) for each job."""


class Engine:
    """The queue and the one worker thread in front of a backend."""

    def __init__(self, backend: Backend, max_queue: int, max_batch: int = 1) -> None:
        self.backend = backend
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.max_batch = max_batch
        self.generating = False
        self.cancelled = 0  # jobs dropped or stopped because their client left (shown by /health)
        self.largest_batch = 0  # the most jobs answered together so far (shown by /health)
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
            raise ApiError(
                503,
                f"the server is busy ({self.jobs.maxsize} requests queued, the limit set by --max-queue); retry later",
                code="queue_full",
                kind="server_error",
            ) from None

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            batch, stopping = self._take_more([job])
            live = [job for job in batch if not job.cancelled.is_set()]
            self.cancelled += len(batch) - len(live)
            if live:
                self._answer(live)
            if stopping:
                break

    def _take_more(self, batch: list[Job]) -> tuple[list[Job], bool]:
        """What else is queued now, up to max_batch jobs in all (never waiting for more); and whether the stop
        sentinel came with them."""
        while len(batch) < self.max_batch:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _answer(self, jobs: list[Job]) -> None:
        self.generating = True
        self.largest_batch = max(self.largest_batch, len(jobs))
        try:
            self.backend.run_batch(jobs)
        except Exception as exc:  # noqa: BLE001 - a bug (not an ApiError): logged, the clients get a plain 500
            if isinstance(exc, ApiError):
                error = exc
            else:
                traceback.print_exc(file=sys.stderr)
                error = ApiError(
                    500, f"internal error ({type(exc).__name__}); see the server's log", kind="server_error"
                )
            for job in jobs:
                if not job.answered:
                    job.send(Failed(error))
        finally:
            self.generating = False
            self.cancelled += sum(job.stopped_early for job in jobs)


# ---------------------------------------------------------------------------- transformers


class TransformersBackend:
    """Generation with sftkit's own model stage: the template's prompt ids, its stop tokens, `generate`."""

    def __init__(self, loaded: Loaded) -> None:
        self.model, self.tokenizer, self.template = loaded.model, loaded.tokenizer, loaded.template
        self.stop_ids = self.template.stop_token_ids(self.tokenizer)
        self.context: int | None = getattr(self.model.config, "max_position_embeddings", None)
        self.grammars = GrammarCompiler(self.tokenizer, self.stop_ids)
        self.tool_format = tool_call_format(self.template)
        self.char_limit = prompt_char_limit(self.tokenizer, self.context)

    def run_batch(self, jobs: list[Job]) -> None:
        """The jobs that sample alike together (greedy ones, or the same temperature and top_p); a job with its own
        seed alone, so its answer is the one that seed gives."""
        for group in sampling_groups(jobs):
            self._run_together(group)

    def _run_together(self, jobs: list[Job]) -> None:
        from transformers import LogitsProcessorList, StoppingCriteriaList, set_seed

        watches, prompts, matchers = [], [], []
        for job in jobs:
            try:
                check_prompt_chars(job.request, self.char_limit, self.context)  # before rendering a huge prompt
                ids, tail = prompt_ids(self.tokenizer, self.template, job.request)
                if job.request.max_tokens == 0:  # echo alone: the prompt scored, nothing generated
                    job.send(Started(len(ids)))
                    self._send_echo_only(job, ids)
                    continue
                budget = token_budget(len(ids), job.request.max_tokens, self.context)
                grammar = self._grammar(job.request, tail)
                rows = [
                    ReplyWatch(self.tokenizer, len(ids), tail, budget, self.stop_ids, job) for _ in range(job.request.n)
                ]
                row_matchers = [self.grammars.matcher(grammar) if grammar else None for _ in rows]
                echo = self._echo(job.request, ids)
            except ApiError as exc:  # this request's own problem: the others in the batch go on
                job.send(Failed(exc))
                continue
            job.send(Started(len(ids)))
            for index, watch in enumerate(rows):
                watch.index, watch.hold = index, job.request.tool_choice != "none"
                watch.echo(*echo)
            watches += rows
            matchers += row_matchers
            prompts += [ids] * len(rows)
        if not watches:
            return
        request = watches[0].job.request
        if request.seed is not None:
            set_seed(request.seed)
        # temperature and top-p run as processors after the log-probability recorder (sampling_processors)
        settings = GenerationSettings(
            max_new_tokens=max(w.budget for w in watches),
            temperature=1.0 if request.temperature > 0 else 0.0,
            batch_size=len(prompts),
        )
        wanted = [w.job.request.logprobs for w in watches if w.job.request.logprobs is not None]
        recorder = LogprobRecorder(max(wanted)) if wanted else None
        processors = (
            ([recorder] if recorder else [])
            + ([GrammarMask(matchers, self.stop_ids)] if any(matchers) else [])
            + sampling_processors(request.temperature, request.top_p)
        )
        rows = ScoredRows(watches, max(len(ids) for ids in prompts), recorder)  # left padding: replies start there
        generate(
            self.model,
            self.tokenizer,
            prompts,
            self.stop_ids,
            settings,
            stopping_criteria=StoppingCriteriaList([rows]),
            logits_processor=LogitsProcessorList(processors),
        )
        self._send_answers(watches)

    def _send_answers(self, watches: list[ReplyWatch]) -> None:
        """Each job's choices, once all of its rows are done."""
        by_job: dict[int, list[ReplyWatch]] = {}
        for watch in watches:
            by_job.setdefault(id(watch.job), []).append(watch)
        for rows in by_job.values():
            answers = [self._answer_of(watch) for watch in rows]
            usage = Usage(rows[0].prompt_tokens, sum(answer.tokens for answer in answers))
            rows[0].job.send(Finished(answers[0].text, answers[0].finish_reason, usage, answers))

    def _answer_of(self, watch: ReplyWatch) -> Answer:
        reply, stopped = watch.finish()
        ended = stopped or watch.last_id in self.stop_ids or watch.count < watch.budget
        answer = Answer(
            watch.index,
            watch.echo_text + reply,
            "stop" if ended else "length",
            watch.count,
            prompt_chars=len(watch.echo_text),
        )
        if watch.job.request.logprobs is not None:
            answer.logprobs = watch.echo_scores + self._token_texts(
                watch.scored[: watch.reply_tokens(reply)], watch.job.request.logprobs
            )
        if watch.hold and self.tool_format:
            content, calls = parse_tool_calls(watch.raw_reply(), self.tool_format)
            if calls:
                answer.text, answer.tool_calls, answer.finish_reason = content.strip(), calls, "tool_calls"
        watch.send_rest(answer)
        return answer

    def _grammar(self, request: Generation, tail: str) -> str | None:
        """The grammar a reply must follow: a JSON schema's, a forced tool call's, or None."""
        if request.reply_schema is not None:
            return json_grammar(request.reply_schema, tail)
        if request.tool_choice in ("none", "auto") or not request.tools:
            return None
        names = (
            [tool["function"]["name"] for tool in request.tools]
            if request.tool_choice == "required"
            else [request.tool_choice]
        )
        return tool_call_grammar(self.tool_format, request.tools, names, tail)

    def _echo(self, request: Generation, ids: list[int]) -> tuple[str, list[TokenLogprob | None]]:
        """The echoed prompt's text and (when asked for) its tokens' log-probabilities."""
        if not request.echo:
            return "", []
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        if request.logprobs is None:
            return text, []
        scored = prompt_scores(self.model, ids, request.logprobs)
        first = (self.tokenizer.decode(ids[:1], skip_special_tokens=False), None, None)  # nothing precedes it
        return text, [first] + self._token_texts(scored[1:], request.logprobs)  # type: ignore[arg-type, list-item]

    def _send_echo_only(self, job: Job, ids: list[int]) -> None:
        text, scores = self._echo(job.request, ids)
        answers = [Answer(i, text, "length", 0, scores or None, prompt_chars=len(text)) for i in range(job.request.n)]
        if job.request.stream:
            for answer in answers:
                job.send(Delta(text, answer.index, answer.logprobs))
        job.send(Finished(text, "length", Usage(len(ids), 0), answers))

    def _token_texts(self, scored: list[Scored], top: int) -> list[TokenLogprob | None]:
        return token_logprobs(self.tokenizer, scored, top)


def sampling_groups(jobs: list[Job]) -> list[list[Job]]:
    """Jobs that can share one `generate` call: greedy with greedy, sampled with the same temperature and top_p;
    a seeded job alone. In arrival order of each group's first job."""
    groups: dict[Any, list[Job]] = {}
    for i, job in enumerate(jobs):
        request = job.request
        if request.seed is not None and request.temperature > 0:
            key: Any = ("seeded", i)
        else:
            key = ("greedy",) if request.temperature == 0 else ("sampled", request.temperature, request.top_p)
        groups.setdefault(key, []).append(job)
    return list(groups.values())


def prompt_ids(tokenizer: Any, template: Template, request: Generation) -> tuple[list[int], str]:
    """Prompt ids, and the header text they leave for the model to generate (a chat's "Assistant: " space).

    A chat is rendered by the trained template (`encode_prompts`, as `sftkit chat` does); a completion's prompt
    is tokenized as it is.

    Raises:
        ApiError: an empty prompt, or a conversation the template refuses.
    """
    if request.prompt_token_ids is not None:
        return checked_token_ids(tokenizer, request.prompt_token_ids), ""
    param = "prompt" if request.messages is None else "messages"
    try:
        if request.messages is None:
            ids = tokenizer(request.prompt).input_ids
            if not ids:
                raise ApiError(400, "prompt: empty; give some text to continue", "prompt")
            return ids, ""
        ids, tails = encode_prompts(
            tokenizer, template, [SimpleNamespace(messages=request.messages, tools=template_tools(template, request))]
        )
    except SftkitError as exc:
        raise ApiError(400, f"messages: {exc}", "messages") from None
    except (TypeError, ValueError, UnicodeError, OverflowError) as exc:  # text the tokenizer cannot encode
        raise ApiError(
            400,
            f"{param}: the tokenizer cannot encode this text ({type(exc).__name__}); send plain Unicode text",
            param,
        ) from None
    return ids[0], tails[0]


def checked_token_ids(tokenizer: Any, ids: list[int]) -> list[int]:
    """A token-id prompt whose every id is in the tokenizer's vocabulary.

    Raises:
        ApiError: an id past the vocabulary.
    """
    if max(ids) >= len(tokenizer):
        raise ApiError(
            400,
            f"prompt: token id {max(ids)} is past this model's vocabulary ({len(tokenizer)} "
            "tokens); send ids of this model's tokenizer",
            "prompt",
        )
    return ids


def template_tools(template: Template, request: Generation) -> str | None:
    """The request's tools as the template reads them (JSON text): a model's own Jinja takes OpenAI's tool objects
    as they come; sftkit's named templates were trained on the function schemas (LLaMA-Factory's `tools`)."""
    if not request.tools:
        return None
    own_jinja = hasattr(template, "source")
    return json.dumps(request.tools if own_jinja else [tool["function"] for tool in request.tools], ensure_ascii=False)


def prompt_char_limit(tokenizer: Any, context: int | None) -> int | None:
    """The most characters a prompt that fits the context can have: `context` tokens of the vocabulary's longest
    token. A longer one is refused before it is rendered and tokenized (which takes seconds per megabyte, on
    the one generation worker)."""
    if context is None:
        return None
    try:
        longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
    except (AttributeError, NotImplementedError, TypeError):
        return None
    return context * max(longest, 1)


def check_prompt_chars(request: Generation, limit: int | None, context: int | None) -> None:
    """Refuses a prompt with more characters than any prompt that fits the context (`prompt_char_limit`).

    Raises:
        ApiError: 400 context_length_exceeded, naming both numbers.
    """
    chars = len(request.prompt or "") + sum(len(str(m.get("content") or "")) for m in request.messages or [])
    if limit is not None and chars > limit:
        param = "prompt" if request.messages is None else "messages"
        raise ApiError(
            400,
            f"this model's maximum context length is {context} tokens, and the prompt has {chars:,} "
            f"characters, more than {context} tokens can hold ({limit:,}); shorten the prompt",
            param,
            "context_length_exceeded",
        )


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
        raise ApiError(
            400,
            f"this model's maximum context length is {context} tokens, and the request asks for "
            f"{asked} ({detail}); shorten the prompt or lower max_tokens",
            "messages",
            "context_length_exceeded",
        )
    return max_tokens or context - prompt_tokens


class ReplyWatch:
    """Follows one reply as it grows: stop strings, its token budget, cancellation, streaming.

    `RowWatches` calls `step` after every token with the row's generated ids so far, before the next
    step, so a stop string or a client gone away ends that row at once. Streamed text holds back what
    may still change: the header tail while it is being generated, a half-decoded character, the start
    of a stop string.
    """

    def __init__(
        self, tokenizer: Any, prompt_tokens: int, tail: str, budget: int, stop_ids: list[int], job: Job
    ) -> None:
        self.tokenizer, self.prompt_tokens, self.tail, self.job = tokenizer, prompt_tokens, tail, job
        self.budget, self.stop_ids, self.stops = budget, stop_ids, job.request.stops
        self.ids: list[int] = []
        self.done = False
        self.sent = ""
        self.follow = job.request.stream or bool(self.stops)
        self.index = 0  # the choice this row answers (n > 1)
        self.hold = False  # tool calls may come: stream nothing until the reply is parsed (send_rest)
        self.echo_text = ""
        self.echo_scores: list[TokenLogprob | None] = []
        self.scored: list[Scored] = []  # each generated token's log-probability (ScoredRows), when asked for
        self.scores_sent = 0
        self.longest_stop = max((len(stop) for stop in self.stops), default=0)
        self.checked = 0  # characters of the visible text already searched for stop strings

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def last_id(self) -> int | None:
        return self.ids[-1] if self.ids else None

    def step(self, generated: list[int]) -> bool:
        """Takes the row's ids so far; True once the row is done (its stop token, budget, a stop string, or
        its client gone). A done row is not followed further: the batch pads it until every row is done."""
        if self.done:
            return True
        self.ids = generated
        stop = self.job.stopped_early = self.job.cancelled.is_set()
        if self.follow and not stop:
            text = self._visible(self.tokenizer.decode(generated, skip_special_tokens=True))
            # only the new text and a stop's length before it can hold a stop not found yet (a few characters
            # more: decoding the next token may change the last character)
            cut = first_stop(text, self.stops, max(0, min(self.checked, len(text)) - self.longest_stop - 4))
            self.checked = len(text)
            stop = cut is not None
            self._send(text[:cut] if stop else text[: len(text) - _held(text, self.stops)])
        self.done = stop or self.last_id in self.stop_ids or self.count >= self.budget
        return self.done

    def finish(self) -> tuple[str, bool]:
        """The reply decoded, cut at a stop string, and whether one was found; the rest is streamed."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
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
        if self.job.request.stream and not self.hold and len(text) > len(self.sent) and text.startswith(self.sent):
            # the newest token may still turn out to be the stop token: its log-probability waits
            self.job.send(Delta(text[len(self.sent) :], self.index, self._new_scores(len(self.scored) - 1)))
            self.sent = text

    def echo(self, text: str, scores: list[TokenLogprob | None]) -> None:
        """An echoed prompt: it opens the reply (streamed first)."""
        self.echo_text, self.echo_scores = text, scores
        if text and self.job.request.stream:
            self.job.send(Delta(text, self.index, scores or None))

    def _new_scores(self, upto: int) -> list[TokenLogprob | None] | None:
        if self.job.request.logprobs is None or upto <= self.scores_sent:
            return None
        new = token_logprobs(self.tokenizer, self.scored[self.scores_sent : upto], self.job.request.logprobs)
        self.scores_sent = upto
        return new

    def send_rest(self, answer: Answer) -> None:
        """What a stream has not had yet: a held reply's text (or the text before its calls), the last log-probs."""
        if not self.job.request.stream:
            return
        text = answer.text[answer.prompt_chars :]
        rest = text if self.hold else text[len(self.sent) :] if text.startswith(self.sent) else ""
        scores = self._new_scores(self.reply_tokens(text) if answer.tool_calls is None else len(self.scored))
        if rest or scores:
            self.job.send(Delta(rest, self.index, scores))

    def reply_tokens(self, reply: str) -> int:
        """How many generated tokens make up `reply` (no stop token; none past a stop string's cut)."""
        count = self.count - (1 if self.last_id in self.stop_ids else 0)
        if not self.stops:
            return count
        want = len(self.tail) + len(reply)
        for j in range(1, count + 1):
            if len(self.tokenizer.decode(self.ids[:j], skip_special_tokens=True)) >= want:
                return j
        return count

    def raw_reply(self) -> str:
        """The reply with the control tokens it wrote (Mistral's [TOOL_CALLS] is one), its stop token left out."""
        ids = self.ids[:-1] if self.last_id in self.stop_ids else self.ids
        return self.tokenizer.decode(ids, skip_special_tokens=False).removeprefix(self.tail)


class RowWatches:
    """The stopping criterion of a batch: each row's `ReplyWatch`, on the ids generated after the padded prompts."""

    def __init__(self, watches: list[ReplyWatch], prompt_width: int) -> None:
        self.watches, self.width = watches, prompt_width

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = [watch.step(input_ids[row, self.width :].tolist()) for row, watch in enumerate(self.watches)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class ScoredRows(RowWatches):
    """Row watches that first note each row's new token with its log-probability (from `LogprobRecorder`)."""

    def __init__(self, watches: list[ReplyWatch], prompt_width: int, recorder: LogprobRecorder | None) -> None:
        super().__init__(watches, prompt_width)
        self.recorder = recorder

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        if self.recorder is not None and self.recorder.last is not None:
            for row, watch in enumerate(self.watches):
                if not watch.done and watch.job.request.logprobs is not None:
                    watch.scored.append(self.recorder.scored(row, int(input_ids[row, -1])))
        return super().__call__(input_ids, scores, **kwargs)


def token_logprobs(tokenizer: Any, scored: list[Scored], top: int) -> list[TokenLogprob | None]:
    """Token ids as the text each decodes to (a byte-level piece of a character may decode to U+FFFD)."""

    def text(token: int) -> str:
        return tokenizer.decode([token], skip_special_tokens=False)

    return [
        (text(token), logprob, [(text(other), value) for other, value in alternatives[:top]])
        for token, logprob, alternatives in scored
    ]


def first_stop(text: str, stops: list[str], start: int = 0) -> int | None:
    """Where the earliest stop string starts in `text` (searched from `start`), or None."""
    found = [i for i in (text.find(stop, start) for stop in stops) if i >= 0]
    return min(found) if found else None


def _held(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that a stop string starts with (not sent until it is decided)."""
    if not stops:
        return 0
    tail = text[-max(len(stop) for stop in stops) :]  # a bounded window, not the whole reply
    return max((k for stop in stops for k in range(1, len(stop)) if tail.endswith(stop[:k])), default=0)
