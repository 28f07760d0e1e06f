"""The FastAPI application: OpenAI's routes, its error objects, bearer-key auth, streaming over SSE.

Every error a client can cause is answered as OpenAI's error JSON with a 4xx status (FastAPI's 422 for a
body that does not validate becomes OpenAI's 400); the server's own failures are a 500 of the same shape,
their traceback going to the server's log only.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from sftkit.errors import SftkitError
from sftkit.serve.engine import Delta, Engine, Failed, Finished, Generation, Job, Started
from sftkit.serve.protocol import ApiError, ChatRequest, CompletionRequest, Reply, Usage, surrogate_at, tool_calls_body

# How often a waiting request checks whether its client is still there.
DISCONNECT_POLL_S = 0.25
# A request body is read whole before any handler runs: at most this many bytes, each part arriving within
# BODY_READ_TIMEOUT_S, so a client cannot hold memory or the server's shutdown with a body it never finishes.
MAX_BODY_BYTES = 4 * 2**20
BODY_READ_TIMEOUT_S = 30.0
_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict"}
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


def build_app(
    engine: Engine,
    model_id: str,
    api_key: str | None = None,
    default_system: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The OpenAI-compatible app serving `engine` under the name `model_id`.

    Args:
        engine: the generation worker (started and stopped with the app).
        model_id: the name /v1/models lists; a request naming another model gets 404.
        api_key: when set, every /v1 route requires `Authorization: Bearer <api_key>`.
        default_system: system prompt for conversations without one (the run's default_system).
        max_body_bytes: larger request bodies are answered 413 before they are read whole.

    Raises:
        SftkitError: an empty `api_key` (an unset variable in `--api-key "$KEY"`): the server would be open.
    """

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="sftkit serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    if api_key is not None:
        app.add_middleware(BearerAuth, key=check_api_key(api_key))
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, timeout=BODY_READ_TIMEOUT_S)  # outermost: before auth
    _add_error_handlers(app)
    created = int(time.time())

    def check_model(name: str | None) -> None:
        if name is not None and name != model_id:
            raise ApiError(
                404, f"the model {name!r} does not exist; this server serves {model_id!r}", "model", "model_not_found"
            )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": model_id,
            "queued": engine.jobs.qsize(),
            "generating": engine.generating,
            "cancelled": engine.cancelled,
            "max_batch": engine.max_batch,
            "largest_batch": engine.largest_batch,
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "sftkit"}],
        }

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        check_model(name)
        return {"id": model_id, "object": "model", "created": created, "owned_by": "sftkit"}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Response:
        check_model(body.model)
        generation = Generation(
            body.conversation(default_system),
            None,
            body.token_budget(),
            body.temperature,
            body.top_p,
            body.seed,
            body.stops(),
            body.stream,
        )
        chat_extras(generation, body)
        return await _answer(engine, generation, Reply(True, model_id), body.include_usage(), request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        check_model(body.model)
        generations = completion_generations(body)
        if len(generations) > 1:
            return await _answer_prompts(engine, generations, Reply(False, model_id), request)
        return await _answer(engine, generations[0], Reply(False, model_id), body.include_usage(), request)

    return app


async def _answer(
    engine: Engine, generation: Generation, reply: Reply, include_usage: bool, request: Request
) -> Response:
    """Queues the generation and answers it whole, or as a stream once the prompt was accepted."""
    job = Job(generation, asyncio.get_running_loop())
    engine.submit(job)
    streaming = False
    try:
        await _next(job, request)  # Started, or the ApiError of a prompt that does not fit
        if generation.stream:
            streaming = True  # from here on the stream's own `finally` ends the job
            return StreamingResponse(
                _stream(job, reply, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        while not isinstance(event := await _next(job, request), Finished):
            pass
        return JSONResponse(
            reply.complete_choices(event.choices, event.usage)
            if event.choices
            else reply.complete(event.text, event.finish_reason, event.usage)
        )
    except ClientGone:
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
    finally:
        if not streaming:
            job.cancelled.set()  # a no-op once finished; else the worker drops or stops the job


async def _next(job: Job, request: Request) -> Started | Delta | Finished:
    """The job's next event; a failure is raised, and so is a client that disconnected meanwhile."""
    while True:
        try:
            event = await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
        except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11 on
            if await request.is_disconnected():
                job.cancelled.set()
                raise ClientGone from None
            continue
        if isinstance(event, Failed):
            raise event.error
        return event


async def _stream(job: Job, reply: Reply, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk shape, ending with `data: [DONE]`.

    Starlette cancels this generator when the client disconnects; `finally` then stops the generation.
    """
    offsets = [0] * job.request.n  # a completion's text_offset, per choice
    try:
        for index in range(job.request.n):
            yield _sse(reply.choice_chunk(index, first=True))
        while True:
            event = await job.events.get()
            if isinstance(event, Delta):
                yield _sse(reply.choice_chunk(event.index, event.text, event.logprobs, offset=offsets[event.index]))
                offsets[event.index] += sum(len(entry[0]) for entry in event.logprobs or [])
            elif isinstance(event, Finished):
                for chunk in _finish_chunks(reply, event):
                    yield _sse(chunk)
                if include_usage:
                    yield _sse(reply.usage_chunk(event.usage))
                break
            elif isinstance(event, Failed):  # headers are sent: the error goes into the stream, as OpenAI does
                yield _sse(event.error.body())
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()


def _finish_chunks(reply: Reply, finished: Finished) -> list[dict[str, Any]]:
    """The end of each choice's stream: its tool calls as OpenAI streams them (the first delta of a call carries
    its index, id, type and name, the next its arguments), then its finish reason."""
    chunks = []
    for answer in finished.choices or [None]:
        index = answer.index if answer else 0
        for position, call in enumerate(tool_calls_body(answer.tool_calls) if answer and answer.tool_calls else []):
            head = {
                "index": position,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            chunks.append(reply.choice_chunk(index, tool_calls=[head]))
            chunks.append(
                reply.choice_chunk(
                    index, tool_calls=[{"index": position, "function": {"arguments": call["function"]["arguments"]}}]
                )
            )
        chunks.append(
            reply.choice_chunk(index, finish_reason=answer.finish_reason if answer else finished.finish_reason)
        )
    return chunks


def chat_extras(generation: Generation, body: ChatRequest) -> None:
    """The agent features of a chat request onto its generation: choices, log-probs, tools, a JSON reply."""
    generation.n = body.n
    generation.logprobs = body.top_logprobs_wanted()
    generation.tools, generation.tool_choice = body.tool_mode()
    generation.reply_schema = body.reply_schema()


def completion_generations(body: CompletionRequest) -> list[Generation]:
    """One generation per prompt (text or token ids) of a completion request.

    Raises:
        ApiError: several prompts streamed (their chunks would interleave).
    """
    prompts = body.prompts()
    if len(prompts) > 1 and body.stream:
        raise ApiError(
            400,
            "prompt: several prompts cannot be streamed in one request; send one prompt per streamed request",
            "prompt",
        )
    return [
        Generation(
            None,
            prompt if isinstance(prompt, str) else None,
            body.max_tokens,
            body.temperature,
            body.top_p,
            body.seed,
            body.stops(),
            body.stream,
            n=body.n,
            logprobs=body.logprobs,
            echo=body.echo,
            prompt_token_ids=None if isinstance(prompt, str) else prompt,
        )
        for prompt in prompts
    ]


async def _answer_prompts(engine: Engine, generations: list[Generation], reply: Reply, request: Request) -> Response:
    """Several prompts of one completion request, queued together; their choices numbered prompt by prompt."""
    jobs = [Job(generation, asyncio.get_running_loop()) for generation in generations]
    try:
        for job in jobs:
            engine.submit(job)
        answers, prompt_tokens, completion_tokens = [], 0, 0
        for job in jobs:
            while not isinstance(event := await _next(job, request), Finished):
                pass
            for answer in event.choices:
                answer.index = len(answers)
                answers.append(answer)
            prompt_tokens += event.usage.prompt_tokens
            completion_tokens += event.usage.completion_tokens
        return JSONResponse(reply.complete_choices(answers, Usage(prompt_tokens, completion_tokens)))
    except ClientGone:
        return Response(status_code=499)
    finally:
        for job in jobs:
            job.cancelled.set()


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


# ---------------------------------------------------------------------------- errors and auth


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_error(exc.errors()).body(), 400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        error = ApiError(
            exc.status_code,
            f"{exc.detail}: {request.method} {request.url.path} (the routes are "
            "/v1/models, /v1/chat/completions, /v1/completions and /health)",
        )
        return JSONResponse(error.body(), exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def bug(_: Request, exc: Exception) -> JSONResponse:
        error = ApiError(500, f"internal error ({type(exc).__name__}); see the server's log", kind="server_error")
        return JSONResponse(error.body(), 500)


def validation_error(errors: Any) -> ApiError:
    """The first problem of a body that does not validate, named by its parameter, as one ApiError."""
    first = dict(errors[0]) if errors else {}
    where = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'malformed')})")
    if not where and first.get("type") == "value_error":
        return whole_body_error(str(first.get("msg", "invalid")))
    if not where:
        return ApiError(400, "the request body must be a JSON object with the request's parameters")
    # pydantic also names the branch of a union it tried ("messages.0.content.list[TextPart]"): dropped
    param = ".".join(part for part in where if re.fullmatch(r"\d+|[a-z_]+", part) and part not in _TYPE_NAMES)
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        message = "unknown or unsupported parameter; remove it"
    return ApiError(400, f"{param}: {message}", param)


def whole_body_error(message: str) -> ApiError:
    """A check across parameters ("name: why"), named by the parameter its message starts with."""
    message = message.removeprefix("Value error, ")
    param = message.partition(":")[0]
    return ApiError(400, message, param if re.fullmatch(r"[a-z_]+", param) else None)


def check_api_key(api_key: str) -> str:
    """The key, refused when it is empty or blank: `--api-key "$KEY"` with KEY unset must not start an open server.

    Raises:
        SftkitError: naming the option and the fix.
    """
    if not api_key.strip():
        raise SftkitError(
            '--api-key is empty (an unset variable in --api-key "$KEY"?), which would leave the '
            "server open; give the key, or leave out --api-key (and SFTKIT_API_KEY) to serve without one"
        )
    return api_key


class BodyLimit:
    """Reads each HTTP request's body before the app sees it: 413 past `max_bytes` (a Content-Length saying so is
    refused unread), 408 when a part takes longer than `timeout` seconds to arrive."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(413, scope, receive, send)
            return
        body, status = await self._read(receive)
        if status:
            await self._refuse(status, scope, receive, send)
            return
        where = lone_surrogate_in(body)
        if where is not None:  # pydantic itself fails on such a string (a key, say), so it is refused here
            error = ApiError(
                400,
                f"{where or 'the body'}: holds a lone surrogate escape (half of a UTF-16 pair), "
                "which is not text; send valid Unicode",
                where or None,
            )
            await JSONResponse(error.body(), 400)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> tuple[bytes, int | None]:
        parts, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except asyncio.TimeoutError:
                return b"", 408
            if message["type"] == "http.disconnect":
                return b"", 499
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > self.max_bytes:
                return b"", 413
            if not message.get("more_body", False):
                return b"".join(parts), None

    async def _refuse(self, status: int, scope: Scope, receive: Receive, send: Send) -> None:
        if status == 499:
            return  # the client is gone: nobody reads an answer
        message = (
            f"the request body is larger than this server's limit of {self.max_bytes:,} bytes; send a shorter request"
            if status == 413
            else f"the request body did not arrive within {self.timeout:g} seconds of its previous part"
        )
        error = ApiError(status, message, code="request_too_large" if status == 413 else "request_timeout")
        await JSONResponse(error.body(), status, headers={"Connection": "close"})(scope, receive, send)


def lone_surrogate_in(body: bytes) -> str | None:
    """Where a JSON body holds a lone surrogate escape ("\\ud800"), or None; the body is parsed only when it holds
    a surrogate escape at all (paired ones, an emoji written as two escapes, are fine)."""
    if not _SURROGATE_ESCAPE.search(body):
        return None
    try:
        return surrogate_at(json.loads(body))
    except ValueError:
        return None  # not JSON: the route's own validation says so


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the body already read once, then the connection's own messages (a disconnect)."""
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


class BearerAuth:
    """Requires `Authorization: Bearer <key>` on every /v1 route, compared in constant time (hmac)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1") and not self._authorized(scope):
            error = ApiError(
                401,
                "missing or incorrect API key; send the header 'Authorization: Bearer <key>' "
                "with the key the server was started with",
                code="invalid_api_key",
            )
            await JSONResponse(error.body(), 401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
