"""The LLM judge against a small OpenAI-compatible endpoint started on loopback in the test (FastAPI + uvicorn).

The fake endpoint judges by a visible rule (an answer containing "good" is better), so each verdict the client
parses is known; a second endpoint always answers [[A]], the position bias the swap must cancel.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sftkit.errors import SftkitError
from sftkit.evaluate.judge import Judge, judge_predictions


def fake_judge_app(calls: list[str], always_a: bool = False) -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/v1/chat/completions")
    def complete(body: dict[str, Any]) -> dict[str, Any]:
        system, user = body["messages"][0]["content"], body["messages"][1]["content"]
        calls.append(user)
        if "[[A]]" in system:  # pairwise
            a, b = re.search(r"A's Answer\]\n(.*?)\n\[The End.*B's Answer\]\n(.*?)\n\[The End", user, re.S).groups()
            verdict = (
                "A"
                if always_a or ("good" in a and "good" not in b)
                else "B"
                if "good" in b and "good" not in a
                else "C"
            )
            text = f"Compared both. [[{verdict}]]"
        elif "[[YES]]" in system:
            text = "Harmful." + (" [[YES]]" if "poison" in user else " [[NO]]")
        else:
            text = "Rated. " + ("[[8]]" if "good" in user.split("Answer]")[1] else "[[3]]")
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    return app


def serve(app: Any) -> Iterator[str]:
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # log_config=None: uvicorn's own dictConfig would close every logging handler there is, pytest's included
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def calls() -> list[str]:
    return []


@pytest.fixture(scope="module")
def endpoint(calls: list[str]) -> Iterator[str]:
    yield from serve(fake_judge_app(calls))


@pytest.fixture(scope="module")
def biased_endpoint() -> Iterator[str]:
    yield from serve(fake_judge_app([], always_a=True))


def test_grades_preferences_and_screening_round_trip(
    endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUDGE_KEY", "secret")
    judge = Judge(endpoint, "judge-model", tmp_path / "cache.jsonl", "JUDGE_KEY")
    assert judge.grade("Q?", "a good answer")["rating"] == 8
    assert judge.grade("Q?", "a bad answer")["rating"] == 3
    # the better answer wins in both positions
    assert judge.prefer("Q?", "a good answer", "meh")["winner"] == "first"
    assert judge.prefer("Q?", "meh", "a good answer") == {"winner": "second", "verdicts": ["B", "A"]}
    assert judge.flags("How?", "use poison") is True and judge.flags("How?", "ask a doctor") is False


def test_position_bias_is_cancelled_by_the_swap(biased_endpoint: str, tmp_path: Path) -> None:
    judge = Judge(biased_endpoint, "m", tmp_path / "cache.jsonl")
    assert judge.prefer("Q?", "a good answer", "meh") == {"winner": "tie", "verdicts": ["A", "A"]}


def test_verdicts_are_cached_per_answer(endpoint: str, calls: list[str], tmp_path: Path) -> None:
    cache = tmp_path / "cache.jsonl"
    rows = [
        {"dataset": "d", "index": i, "prompt": f"Q{i}?", "generation": g, "generation_compare": c}
        for i, (g, c) in enumerate([("good one", "poor"), ("poor", "good two")])
    ]
    names = {"generation": "tuned", "generation_compare": "base"}
    before = len(calls)
    questions = [row["prompt"] for row in rows]
    first = judge_predictions(Judge(endpoint, "m", cache), questions, rows, names)
    asked = len(calls) - before
    assert asked == 2 * 2 + 2 * 2  # two grades and two orderings per row
    assert first["grades"] == {"tuned": pytest.approx(5.5), "base": pytest.approx(5.5)}
    assert first["preference"] == {"tuned": 1, "base": 1, "tie": 0}
    # a fresh judge on the same answers reads the cache file and asks nothing
    again = judge_predictions(Judge(endpoint, "m", cache), questions, rows, names)
    assert len(calls) - before == asked and again == first
    # a changed answer is asked about again, only it
    rows[0]["generation"] = "good, changed"
    judge_predictions(Judge(endpoint, "m", cache), questions, rows, names)
    assert len(calls) - before == asked + 1 + 2


def test_a_cut_cache_line_is_asked_again(endpoint: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache.jsonl"
    Judge(endpoint, "m", cache).grade("Q?", "good")
    cache.write_text(cache.read_text()[:-10], encoding="utf-8")  # killed mid-write
    assert Judge(endpoint, "m", cache).grade("Q?", "good")["rating"] == 8


def test_an_unreachable_endpoint_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    judge = Judge(f"http://127.0.0.1:{port}/v1", "m", tmp_path / "cache.jsonl")
    with pytest.raises(SftkitError, match=r"--judge-url .* the judge endpoint failed \(cannot reach the endpoint"):
        judge.grade("Q?", "A.")
