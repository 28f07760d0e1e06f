"""Asking an OpenAI-compatible endpoint for a JSON object: the one client of the judge and of generation.

Nothing here knows which server answers (`sftkit serve`, vLLM, llama.cpp, a hosted API): only the base URL,
the model name and an environment variable holding the key. Transport failures (connection errors, 429,
5xx) are retried with backoff by the `openai` client itself (`max_retries`); an answer that is not the JSON
asked for is asked again here, with the same exponential backoff shape.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sftkit.errors import SftkitError

DEFAULT_TIMEOUT_S = 60.0  # --timeout: seconds one request may take before it is tried again
WAIT_LINE_S = 10.0  # how often a request still waiting says so
NO_KEY = "none"  # the client insists on some key; local servers ignore it
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


def make_client(base_url: str, api_key_env: str, max_retries: int = 3, timeout: float = DEFAULT_TIMEOUT_S) -> Any:
    """An `openai.OpenAI` client for `base_url`, its key read from the environment variable `api_key_env`."""
    from openai import OpenAI

    return OpenAI(
        base_url=base_url, api_key=os.environ.get(api_key_env) or NO_KEY, max_retries=max_retries, timeout=timeout
    )


def ask_json(
    client: Any,
    model: str,
    prompt: str,
    validate: Callable[[dict[str, Any]], str | None],
    temperature: float = 0.0,
    attempts: int = 3,
    backoff: float = 1.0,
) -> tuple[dict[str, Any] | None, list[str]]:
    """Asks `prompt` until the answer is a JSON object that `validate` accepts (it returns a problem or None).

    Args:
        attempts: answers asked for at most; between them the wait doubles from `backoff` seconds.

    Returns:
        (the object, or None when every answer was unusable; what was wrong with each unusable answer).

    Raises:
        SftkitError: the endpoint cannot be reached or refuses (after the client's own retries).
    """
    problems: list[str] = []
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        answer = _complete(client, model, prompt, temperature)
        if answer is None:
            problems.append("the answer has no text (choices[0].message.content is not a string)")
            continue
        value, problem = parse_object(answer)
        if value is not None:
            problem = validate(value)
            if problem is None:
                return value, problems
        problems.append(problem or "unusable answer")
    return None, problems


def parse_object(answer: str) -> tuple[dict[str, Any] | None, str | None]:
    """The JSON object in a model's answer (a ```json fence around it is allowed), or (None, why not)."""
    text = _FENCE.sub("", answer.strip())
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None, "no JSON object in the answer"
    try:
        value = json.loads(text[start : end + 1])
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg})"
    return (value, None) if isinstance(value, dict) else (None, "the JSON is not an object")


def _complete(client: Any, model: str, prompt: str, temperature: float) -> str | None:
    return complete_chat(client, model, [{"role": "user", "content": prompt}], temperature=temperature)


def complete_chat(
    client: Any, model: str, messages: list[dict[str, str]], option: str = "--timeout", **params: Any
) -> str | None:
    """The text of the endpoint's first choice, or None when the answer has none (no choices, no message, a
    content that is not a string: an endpoint's answer is checked before anything uses or caches it). While the
    endpoint takes its time, a line on stderr says so every WAIT_LINE_S seconds.

    Raises:
        SftkitError: the endpoint cannot be reached, refuses, or gives no answer within the client's timeout.
    """
    import openai

    try:
        with waiting_line(str(client.base_url), client.timeout, option):
            response = client.chat.completions.create(model=model, messages=messages, **params)
    except openai.AuthenticationError as exc:
        raise SftkitError(
            f"{client.base_url}: the key was refused ({exc.status_code}); put the right key in the "
            "environment variable named by the api key setting"
        ) from None
    except openai.APIStatusError as exc:
        raise SftkitError(
            f"{client.base_url}: model {model!r} answered HTTP {exc.status_code} "
            f"({_short(exc.message)}); check the model name and the server"
        ) from None
    except openai.APITimeoutError:
        raise SftkitError(
            f"{client.base_url}: no answer within {option} {client.timeout:g} s "
            f"({client.max_retries + 1} tries); check the server, or raise {option}"
        ) from None
    except openai.APIConnectionError as exc:
        raise SftkitError(
            f"{client.base_url}: cannot reach the endpoint ({_short(str(exc))}) after "
            f"{client.max_retries} retries; start the server or fix the base URL"
        ) from None
    return reply_text(response)


def reply_text(response: Any) -> str | None:
    """choices[0].message.content when the answer has that shape and it is a string, else None."""
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices:
        return None
    content = getattr(getattr(choices[0], "message", None), "content", None)
    return content if isinstance(content, str) else None


@contextmanager
def waiting_line(base_url: str, timeout: Any, option: str = "--timeout", every: float | None = None) -> Iterator[None]:
    """Prints "waiting for the endpoint ..." to stderr every `every` seconds until the block ends."""
    done = threading.Event()
    start = time.monotonic()
    every = WAIT_LINE_S if every is None else every
    limit = f"; {option} {timeout:g} s per try" if isinstance(timeout, (int, float)) else ""

    def tell() -> None:
        while not done.wait(every):
            print(
                f"waiting for the endpoint {base_url} ({time.monotonic() - start:.0f} s so far{limit})",
                file=sys.stderr,
                flush=True,
            )

    thread = threading.Thread(target=tell, name="sftkit-endpoint-wait", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
