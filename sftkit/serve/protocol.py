"""OpenAI's HTTP API as sftkit serves it: request bodies, errors, responses and stream chunks.

Request bodies are pydantic models with `extra="forbid"`: a parameter sftkit does not implement is refused
with a 400 naming it, never silently ignored; those clients send at a neutral value (`logit_bias: {}`,
penalties 0, vLLM's `top_k: -1`, ...) are accepted at that value only (`NEUTRAL`). Implemented besides the
basics: tools / tool_choice and tool messages, logprobs / top_logprobs, response_format (JSON, a schema),
n > 1, and on completions echo, token-id prompts and several prompts (docs/serve_api.md). Defaults are
OpenAI's (temperature 1, top_p 1; 16 tokens for a completion, the rest of the context for a chat).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sftkit.templates import role_order_problem

# Limits on what a client sends, checked before any work (OpenAI allows 4 stop sequences; a seed seeds numpy too,
# whose seeds are 32-bit).
MAX_STOPS = 4
MAX_STOP_CHARS = 256
MAX_SEED = 2**32 - 1

# OpenAI's "developer" role is its newer name for the system prompt.
ROLE_NAMES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "observation",
}
MAX_CHOICES = 16  # n: choices per request (each one a row of the batch)
MAX_PROMPTS = 64  # prompts in one /v1/completions request (lm-eval sends its batch as one request)
MAX_LOGPROBS = 20  # alternatives per token, as vLLM and OpenAI's chat allow


class ApiError(Exception):
    """A request that cannot be served, answered as OpenAI's error object with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        message, param = _printable(message), _printable(param) if param is not None else None
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI's clients parse into their APIError."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _printable(text: str) -> str:
    """`text` as valid Unicode: a lone surrogate a client sent (in a key it names, say) written as its escape, so
    the error's JSON can be encoded."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# ---------------------------------------------------------------------------- request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _text_is_unicode(cls, value: Any) -> Any:
        where = surrogate_at(value)
        if where is not None:
            # JSON's "\\ud800" escapes decode to half a character, which no tokenizer encodes
            raise ValueError(
                f"{where or 'the body'}: holds a lone surrogate escape (half of a UTF-16 pair), which is "
                "not text; send valid Unicode"
            )
        return value


def surrogate_at(value: Any, where: str = "") -> str | None:
    """The path of the first string in a JSON value that holds a lone surrogate, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        path = f"{where}.{key}".lstrip(".")
        found = surrogate_at(key, path) if isinstance(key, str) else None
        found = found if found is not None else surrogate_at(item, path)
        if found is not None:
            return found
    return None


def list_or_one(value: Any, noun: str, most: int) -> Any:
    """A string, or a list of 1..`most` strings, the limit named in the message (pydantic's union of the two shapes
    would report "should be a valid string")."""
    if isinstance(value, list):
        if not 1 <= len(value) <= most:
            allowed = f"exactly one {noun}" if most == 1 else f"1 to {most} {noun}s"
            raise ValueError(f"a string or a list of {allowed} (got a list of {len(value)})")
        bad = next((i for i, item in enumerate(value) if not isinstance(item, str)), None)
        if bad is not None:
            raise ValueError(f"item {bad} of the list must be a string")
    elif value is not None and not isinstance(value, str):
        raise ValueError(f"must be a string or a list of strings (a {noun})")
    return value


class TextPart(_Body):
    """One part of a message's content given as a list (only text parts: sftkit serves text models)."""

    type: Literal["text"]
    text: str


class FunctionCallIn(_Body):
    name: str
    arguments: str  # a JSON object as text, as OpenAI sends it back


class ToolCallIn(_Body):
    """A call in an earlier assistant message of the conversation."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class Message(_Body):
    """One chat message: `content` as a string or as a list of text parts."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: Annotated[list[ToolCallIn], Field(min_length=1)] | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        # one message for what a union of two shapes would report as two unrelated errors
        if (
            value is None
            or isinstance(value, str)
            or (
                isinstance(value, list) and all(isinstance(part, dict) and part.get("type") == "text" for part in value)
            )
        ):
            return value
        raise ValueError(
            'must be a string or a list of text parts ({"type": "text", "text": ...}); sftkit serves text models'
        )

    @model_validator(mode="after")
    def _content_or_calls(self) -> Message:
        return check_message(self)

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    """The parameters both endpoints share."""

    model: str | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    stop: str | list[str] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Accepted at their neutral value only, as clients often send them explicitly.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float | int] | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: Literal["auto", "default"] | None = None
    # vLLM's sampling extras, at their neutral values
    top_k: int | None = None
    min_p: float | int | None = None
    repetition_penalty: float | int | None = None

    @model_validator(mode="after")
    def _neutral_only(self) -> _Sampling:
        return check_neutral(self)

    @field_validator("temperature", "top_p", "presence_penalty", "frequency_penalty", mode="before")
    @classmethod
    def _int_is_a_number(cls, value: Any) -> Any:
        # strict mode refuses 0 for a float; JSON has one number type
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float) -> float:
        if value != 0:
            raise ValueError("penalties are not supported; leave it at 0")
        return value

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if not 1 <= value <= MAX_CHOICES:
            raise ValueError(f"must be in 1..{MAX_CHOICES} (choices per request)")
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _bounded_stops(cls, value: Any) -> Any:
        # every stop is searched for after each token: their count and length bound that work
        list_or_one(value, "stop sequence", MAX_STOPS)
        for stop in [value] if isinstance(value, str) else value or []:
            if stop == "":
                raise ValueError("a stop sequence must not be empty")
            if len(stop) > MAX_STOP_CHARS:
                raise ValueError(f"a stop sequence has at most {MAX_STOP_CHARS} characters (got {len(stop):,})")
        return value

    @field_validator("seed", mode="before")
    @classmethod
    def _seed_range(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= MAX_SEED:
            raise ValueError(f"must be a whole number in 0..{MAX_SEED} (got {value})")
        return value

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class FunctionSchema(_Body):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Body):
    """One entry of `tools`: a function the model may call."""

    type: Literal["function"]
    function: FunctionSchema


class FunctionName(_Body):
    name: str


class NamedToolChoice(_Body):
    """`tool_choice` naming the function that must be called."""

    type: Literal["function"]
    function: FunctionName


class JsonSchemaFormat(_Body):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    """`response_format`: plain text (the default), any JSON object, or JSON valid against a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError('give json_schema ({"name": ..., "schema": {...}}) exactly when type is "json_schema"')
        return self

    def reply_schema(self) -> dict[str, Any] | None:
        """The JSON schema the reply must follow; None: free text."""
        if self.type == "text":
            return None
        return self.json_schema.schema_ if self.json_schema else {"type": "object"}


class ChatRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _agents_consistent(self) -> ChatRequest:
        return check_chat_extras(self)

    def top_logprobs_wanted(self) -> int | None:
        """Alternatives per token when logprobs are asked for (0: the chosen token's only); None: no logprobs."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def tool_mode(self) -> tuple[list[dict[str, Any]] | None, str]:
        """The tools the prompt shows and how they may be called ("auto", "required" or a function name);
        (None, "none") when no tool can be called (no tools, or tool_choice "none")."""
        choice = self.tool_choice or "auto"
        if not self.tools or choice == "none":
            return None, "none"
        name = choice.function.name if isinstance(choice, NamedToolChoice) else choice
        return [tool.model_dump(exclude_none=True) for tool in self.tools], name

    def reply_schema(self) -> dict[str, Any] | None:
        """The JSON schema the reply must follow (response_format); None: free text."""
        return self.response_format.reply_schema() if self.response_format else None

    def token_budget(self) -> int | None:
        """max_completion_tokens (OpenAI's current name), else max_tokens; None: the rest of the context."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def conversation(self, default_system: str | None) -> list[dict[str, str]]:
        """The messages as sftkit's normalized conversation, checked against the template's rules.

        Raises:
            ApiError: a system message after the first, or turns that do not alternate user -> assistant
                and end with the user.
        """
        messages = merge_tool_results([normalized_message(m) for m in self.messages])
        for i, message in enumerate(messages[1:], start=1):
            if message["role"] == "system":
                raise ApiError(400, f"messages[{i}]: a system message may only come first", "messages")
        if messages[0]["role"] != "system" and default_system:
            messages.insert(0, {"role": "system", "content": default_system})  # as training gave it
        turns = messages[1:] if messages[0]["role"] == "system" else messages
        problem = role_order_problem(turns, end_with_assistant=False)
        if problem:
            raise ApiError(400, f"messages: {problem}", "messages")
        return messages


class CompletionRequest(_Sampling):
    """POST /v1/completions: raw text continued, no chat template."""

    prompt: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
        | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
        | Annotated[
            list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]],
            Field(min_length=1, max_length=MAX_PROMPTS),
        ]
    )
    # 0 with echo: score the prompt only (lm-eval's log-likelihood requests)
    max_tokens: Annotated[int, Field(ge=0)] | None = 16
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    best_of: Literal[1] | None = None
    suffix: None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _named_prompt_limits(cls, value: Any) -> Any:
        # pydantic's union of the four prompt shapes would answer any of these with "should be a valid string"
        token_ids = isinstance(value, list) and value and all(type(item) is int for item in value)
        if isinstance(value, list) and not token_ids and not 1 <= len(value) <= MAX_PROMPTS:
            raise ValueError(
                f"a string, a list of token ids, or a list of 1 to {MAX_PROMPTS} prompts (got a list of {len(value)})"
            )
        if not isinstance(value, str | list):
            raise ValueError("must be a string, a list of token ids, or a list of prompts")
        return value

    @model_validator(mode="after")
    def _zero_tokens_with_echo(self) -> CompletionRequest:
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens: 0 is only meaningful with echo (scoring the prompt); ask for at least 1")
        return self

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: text, or token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(item, int) for item in self.prompt):
            return [list(self.prompt)]  # type: ignore[arg-type]
        return list(self.prompt)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- checks of the agent features

# Parameters accepted at the value that changes nothing (clients and frameworks send them explicitly).
NEUTRAL = {
    "logit_bias": ({}, None),
    "top_k": (-1, 0, None),
    "min_p": (0, None),
    "repetition_penalty": (1, None),
    "store": (False, None),
}


def check_neutral(body: _Sampling) -> _Sampling:
    """Refuses a parameter sftkit does not implement unless it is at its neutral value."""
    for name, neutral in NEUTRAL.items():
        value = getattr(body, name)
        if not any(value == ok and type(value) is not bool or value is ok for ok in neutral):
            shown = " or ".join("null" if ok is None else json.dumps(ok) for ok in neutral)
            raise ValueError(f"{name}: not supported; leave it out (or send {shown})")
    return body


def check_message(message: Message) -> Message:
    """Content where the role needs it: a tool result names its call; an assistant turn has content or calls."""
    if message.role == "tool" and message.tool_call_id is None:
        raise ValueError("a tool message needs the tool_call_id of the call it answers")
    if message.tool_calls is not None and message.role != "assistant":
        raise ValueError("only an assistant message carries tool_calls")
    if message.content is None and not (message.role == "assistant" and message.tool_calls):
        raise ValueError("content: give the message's text (only an assistant message with tool_calls may omit it)")
    return message


def check_chat_extras(body: ChatRequest) -> ChatRequest:
    """tool_choice against tools, top_logprobs against logprobs, JSON replies against tool calls."""
    choice = body.tool_choice
    names = [tool.function.name for tool in body.tools or []]
    if len(set(names)) < len(names):
        raise ValueError("tools: two tools share a name; give each function its own name")
    if (choice == "required" or isinstance(choice, NamedToolChoice)) and not names:
        raise ValueError("tool_choice: asks for a tool call, but the request has no tools")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise ValueError(
            f"tool_choice: names {choice.function.name!r}, which is not one of the tools ({', '.join(names)})"
        )
    if body.top_logprobs and not body.logprobs:
        raise ValueError("top_logprobs: needs logprobs: true")
    if body.reply_schema() is not None and names and choice != "none":
        raise ValueError(
            "response_format: a JSON reply and tool calls exclude each other here; send tool_choice "
            '"none" or response_format {"type": "text"}'
        )
    return body


def normalized_message(message: Message) -> dict[str, str]:
    """One OpenAI message as sftkit's normalized one: calls become a `function_call` turn (its JSON as the template
    trains it: one object, or a list for parallel calls), a tool result an `observation`."""
    if message.role == "assistant" and message.tool_calls:
        calls = [
            {"name": call.function.name, "arguments": _arguments(call.function.arguments, i)}
            for i, call in enumerate(message.tool_calls)
        ]
        return {
            "role": "function_call",
            "content": json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False),
        }
    return {"role": ROLE_NAMES[message.role], "content": message.text()}


def _arguments(text: str, i: int) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise ApiError(
            400,
            f"messages: tool_calls[{i}].function.arguments must be a JSON object as text (got {text[:40]!r})",
            "messages",
        )
    return value


def merge_tool_results(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Consecutive tool results (the answers to parallel calls) as one observation turn, one result a line."""
    merged: list[dict[str, str]] = []
    for message in messages:
        if merged and message["role"] == merged[-1]["role"] == "observation":
            merged[-1] = {"role": "observation", "content": merged[-1]["content"] + "\n" + message["content"]}
        else:
            merged.append(message)
    return merged


# ---------------------------------------------------------------------------- responses


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int

    def body(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


class Reply:
    """The shape of one response (chat or completion), its id and creation time fixed at the start."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat, self.model = chat, model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def complete(self, text: str, finish_reason: str, usage: Usage) -> dict[str, Any]:
        """The whole (non-streamed) response."""
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text}} if self.chat else {"index": 0, "text": text}
        )
        choice |= {"logprobs": None, "finish_reason": finish_reason}
        body = self._envelope("chat.completion" if self.chat else "text_completion", [choice])
        return body | {"usage": usage.body()}

    def chunk(self, text: str | None = None, finish_reason: str | None = None, first: bool = False) -> dict[str, Any]:
        """One stream chunk: the first carries the assistant role, the last the finish reason."""
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            choice = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": text or ""}
        choice |= {"logprobs": None, "finish_reason": finish_reason}
        return self._envelope("chat.completion.chunk" if self.chat else "text_completion", [choice])

    def complete_choices(self, answers: list[Any], usage: Usage) -> dict[str, Any]:
        """The whole response with every choice (`answers`: engine Answers, in index order)."""
        body = self._envelope(
            "chat.completion" if self.chat else "text_completion",
            [choice_body(answer, self.chat) for answer in answers],
        )
        return body | {"usage": usage.body()}

    def choice_chunk(
        self,
        index: int,
        text: str = "",
        logprobs: list[Any] | None = None,
        finish_reason: str | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
        first: bool = False,
        offset: int = 0,
    ) -> dict[str, Any]:
        """One stream chunk of choice `index`: text and its tokens' log-probs, or tool-call deltas, or the end."""
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            if tool_calls:
                delta["tool_calls"] = tool_calls
            choice = {"index": index, "delta": delta, "logprobs": chat_logprobs(logprobs)}
        else:
            choice = {"index": index, "text": text, "logprobs": completion_logprobs(logprobs, offset)}
        choice["finish_reason"] = finish_reason
        return self._envelope("chat.completion.chunk" if self.chat else "text_completion", [choice])

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        """The stream's last chunk when stream_options.include_usage asks for it: no choices, the usage."""
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return self._envelope(obj, []) | {"usage": usage.body()}


# ---------------------------------------------------------------------------- choices: several, log-probs, tool calls


def chat_logprobs(entries: list[Any] | None) -> dict[str, Any] | None:
    """OpenAI's chat `logprobs`: `content`, one object per token with its `top_logprobs`."""
    if entries is None:
        return None

    def token(text: str, logprob: float) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [
            token(text, logprob) | {"top_logprobs": [token(t, lp) for t, lp in top]} for text, logprob, top in entries
        ],
        "refusal": None,
    }


def completion_logprobs(entries: list[Any] | None, offset: int = 0) -> dict[str, Any] | None:
    """OpenAI's legacy completion `logprobs`: parallel lists; each top_logprobs dict holds the most likely tokens
    and the chosen one; an echoed prompt's first token has None for both (nothing precedes it)."""
    if entries is None:
        return None
    out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for text, logprob, top in entries:
        out["tokens"].append(text)
        out["token_logprobs"].append(logprob)
        out["top_logprobs"].append(None if top is None else dict(top) | {text: logprob})
        out["text_offset"].append(offset)
        offset += len(text)
    return out


def tool_calls_body(calls: list[Any]) -> list[dict[str, Any]]:
    """Parsed calls in OpenAI's shape, each with a fresh id and its arguments as JSON text."""
    return [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)},
        }
        for call in calls
    ]


def choice_body(answer: Any, chat: bool) -> dict[str, Any]:
    """One finished choice (`answer`: an engine Answer) of a whole response."""
    if not chat:
        return {
            "index": answer.index,
            "text": answer.text,
            "logprobs": completion_logprobs(answer.logprobs),
            "finish_reason": answer.finish_reason,
        }
    message: dict[str, Any] = {"role": "assistant", "content": answer.text}
    if answer.tool_calls:
        message = {
            "role": "assistant",
            "content": answer.text or None,
            "tool_calls": tool_calls_body(answer.tool_calls),
        }
    return {
        "index": answer.index,
        "message": message,
        "logprobs": chat_logprobs(answer.logprobs),
        "finish_reason": answer.finish_reason,
    }
