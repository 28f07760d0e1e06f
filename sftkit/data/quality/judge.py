"""The LLM judge: the guide's 1-5 rubric (clarity, helpfulness, formatting) through any OpenAI-compatible
endpoint, each row's score cached on disk so a second run asks nothing again."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.data.quality.endpoint import ask_json, make_client

if TYPE_CHECKING:
    from sftkit.config import SftConfig

CRITERIA = ("clarity", "helpfulness", "formatting")
RUBRIC_VERSION = 1  # part of the cache key: raise it when the prompt below changes
RUBRIC = """You rate training data for a chat assistant. Read the conversation below and score it from 1 (poor)
to 5 (excellent) on three criteria:
- clarity: is the user's instruction clear and specific?
- helpfulness: does the assistant's reply answer it helpfully and correctly?
- formatting: is the reply well formed (structure, code blocks, lists where they help, no broken text)?
Answer with one JSON object only, for example {{"clarity": 4, "helpfulness": 5, "formatting": 4}}.

Conversation:
{conversation}"""


@dataclass
class Verdict:
    """A judged row: the mean of the rubric's scores (None when the judge gave no usable answer)."""

    score: float | None
    scores: dict[str, int]


class Judge:
    """Scores rows with `cfg.clean_judge_model`, reading and appending the score cache."""

    def __init__(self, cfg: SftConfig, cache_file: Path, attempts: int = 3, backoff: float = 1.0) -> None:
        assert cfg.clean_judge_model is not None and cfg.clean_judge_base_url is not None
        self.model = cfg.clean_judge_model
        self.client = make_client(cfg.clean_judge_base_url, cfg.clean_judge_api_key_env)
        self.cache_file = cache_file
        self.attempts, self.backoff = attempts, backoff
        self.cache = _read_cache(cache_file)
        self.asked = 0

    def score(self, conversation: str) -> Verdict:
        """The row's verdict, from the cache when this model judged the same text before."""
        key = self._key(conversation)
        if key in self.cache:
            return Verdict(**self.cache[key])
        self.asked += 1
        value, _ = ask_json(
            self.client,
            self.model,
            RUBRIC.format(conversation=conversation),
            _valid_scores,
            attempts=self.attempts,
            backoff=self.backoff,
        )
        if value is None:  # not cached: the next run asks again
            return Verdict(None, {})
        scores = {name: int(value[name]) for name in CRITERIA}
        verdict = {"score": sum(scores.values()) / len(scores), "scores": scores}
        self.cache[key] = verdict
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        with self.cache_file.open("a", encoding="utf-8") as f:  # one line per score: a killed run loses none
            f.write(json.dumps({"key": key, **verdict}) + "\n")
        return Verdict(**verdict)

    def _key(self, conversation: str) -> str:
        return hashlib.sha256(f"{self.model}\0{RUBRIC_VERSION}\0{conversation}".encode()).hexdigest()


def _valid_scores(value: dict[str, Any]) -> str | None:
    for name in CRITERIA:
        score = value.get(name)
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 1 <= score <= 5:
            return f"{name}: expected a score from 1 to 5, got {score!r}"
    return None


def _read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """Earlier scores; a line a killed run cut short is skipped."""
    cache: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return cache
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
            cache[entry["key"]] = {"score": float(entry["score"]), "scores": dict(entry["scores"])}
        except (ValueError, KeyError, TypeError):
            continue
    return cache
