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
import time
from collections.abc import Callable
from typing import Any

from sftkit.errors import SftkitError

NO_KEY = "none"  # the client insists on some key; local servers ignore it
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


def make_client(base_url: str, api_key_env: str, max_retries: int = 3, timeout: float = 120.0) -> Any:
    """An `openai.OpenAI` client for `base_url`, its key read from the environment variable `api_key_env`."""
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or NO_KEY, max_retries=max_retries,
                  timeout=timeout)


def ask_json(client: Any, model: str, prompt: str, validate: Callable[[dict[str, Any]], str | None],
             temperature: float = 0.0, attempts: int = 3, backoff: float = 1.0) -> tuple[dict[str, Any] | None, list[str]]:
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
        value = json.loads(text[start:end + 1])
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg})"
    return (value, None) if isinstance(value, dict) else (None, "the JSON is not an object")


def _complete(client: Any, model: str, prompt: str, temperature: float) -> str:
    import openai

    try:
        response = client.chat.completions.create(model=model, temperature=temperature,
                                                  messages=[{"role": "user", "content": prompt}])
    except openai.AuthenticationError as exc:
        raise SftkitError(f"{client.base_url}: the key was refused ({exc.status_code}); put the right key in the "
                          "environment variable named by the api key setting") from None
    except openai.APIStatusError as exc:
        raise SftkitError(f"{client.base_url}: model {model!r} answered HTTP {exc.status_code} "
                          f"({_short(exc.message)}); check the model name and the server") from None
    except openai.APIConnectionError as exc:
        raise SftkitError(f"{client.base_url}: cannot reach the endpoint ({_short(str(exc))}) after "
                          f"{client.max_retries} retries; start the server or fix the base URL") from None
    choices = getattr(response, "choices", None) or []
    return (choices[0].message.content or "") if choices else ""


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
