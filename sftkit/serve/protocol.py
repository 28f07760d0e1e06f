"""OpenAI's HTTP API as sftkit serves it: request bodies, errors, responses and stream chunks.

Request bodies are pydantic models with `extra="forbid"`: a parameter sftkit does not implement (tools,
logprobs, penalties other than 0, ...) is refused with a 400 naming it, never silently ignored. Defaults
are OpenAI's (temperature 1, top_p 1; 16 tokens for a completion, the rest of the context for a chat).
"""

from __future__ import annotations

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
ROLE_NAMES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(Exception):
    """A request that cannot be served, answered as OpenAI's error object with `status`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
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
            raise ValueError(f"{where or 'the body'}: holds a lone surrogate escape (half of a UTF-16 pair), which is "
                             "not text; send valid Unicode")
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


class Message(_Body):
    """One chat message: `content` as a string or as a list of text parts."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        # one message for what a union of two shapes would report as two unrelated errors
        if isinstance(value, str) or (isinstance(value, list) and all(
                isinstance(part, dict) and part.get("type") == "text" for part in value)):
            return value
        raise ValueError("must be a string or a list of text parts ({\"type\": \"text\", \"text\": ...}); "
                         "sftkit serves text models")

    def text(self) -> str:
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
        if value != 1:
            raise ValueError("only n=1 is supported (one choice per request); send several requests")
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


class ChatRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None

    def token_budget(self) -> int | None:
        """max_completion_tokens (OpenAI's current name), else max_tokens; None: the rest of the context."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def conversation(self, default_system: str | None) -> list[dict[str, str]]:
        """The messages as sftkit's normalized conversation, checked against the template's rules.

        Raises:
            ApiError: a system message after the first, or turns that do not alternate user -> assistant
                and end with the user.
        """
        messages = [{"role": ROLE_NAMES[m.role], "content": m.text()} for m in self.messages]
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

    prompt: str | list[str]
    max_tokens: Annotated[int, Field(ge=1)] | None = 16
    echo: Literal[False] = False

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, value: Any) -> Any:
        return list_or_one(value, "prompt", 1)

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


# ---------------------------------------------------------------------------- responses

@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int

    def body(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


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
        choice: dict[str, Any] = ({"index": 0, "message": {"role": "assistant", "content": text}} if self.chat
                                  else {"index": 0, "text": text})
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

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        """The stream's last chunk when stream_options.include_usage asks for it: no choices, the usage."""
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return self._envelope(obj, []) | {"usage": usage.body()}
