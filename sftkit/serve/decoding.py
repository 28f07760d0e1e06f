"""What the served model's decoding adds for agents: constrained replies, token log-probabilities, tool calls.

- JSON replies (`response_format`) and forced tool calls (`tool_choice: "required"` or a named function) go
  through llguidance: its JSON-schema compiler and Earley parser give, before every token, the set of tokens
  that keep the reply valid; `GrammarMask`, a transformers `LogitsProcessor`, sets every other token's logit
  to -inf. Chosen over outlines (many dependencies), xgrammar (pulls triton onto a CPU install) and
  lm-format-enforcer (pure Python, character-level, slower): one 3 MB abi3 wheel with no dependencies, the
  engine of vLLM's `guidance` backend, reading a fast tokenizer directly (`llguidance.hf.from_tokenizer`).
- Log-probabilities are those of the model's own distribution, before temperature, top-p or a grammar
  (vLLM's default `raw_logprobs`): `LogprobRecorder` is the first logits processor, so it sees the raw
  logits; sampling's temperature and top-p run after it as transformers' own warpers (`sampling_processors`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sftkit.serve.protocol import ApiError

# (token id, its log-probability, the most likely tokens at that step as (id, log-probability))
Scored = tuple[int, float, list[tuple[int, float]]]


class LogprobRecorder:
    """Logits processor (the first one): each row's log-softmax at this step, read by the rows' watches."""

    def __init__(self, top: int) -> None:
        self.top = top
        self.last: Any = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.last = scores.float().log_softmax(dim=-1)
        return scores

    def scored(self, row: int, token: int) -> Scored:
        """The chosen token of `row` with its log-probability and the step's `top` most likely tokens."""
        values = self.last[row]
        best = values.topk(min(self.top, values.numel())) if self.top else None
        alternatives = list(zip(best.indices.tolist(), best.values.tolist())) if best is not None else []
        return token, float(values[token]), alternatives


def sampling_processors(temperature: float, top_p: float) -> list[Any]:
    """Temperature and top-p as transformers' warpers, to run after the recorder (greedy: none)."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    if temperature == 0:
        return []
    return [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])


def prompt_scores(model: Any, ids: list[int], top: int) -> list[Scored | None]:
    """Each prompt token's log-probability given the tokens before it (None for the first), one forward pass."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(torch.tensor([ids], device=device)).logits[0, :-1].float()
    recorder = LogprobRecorder(top)
    recorder.last = logits.log_softmax(dim=-1)
    return [None] + [recorder.scored(i, token) for i, token in enumerate(ids[1:])]


# ---------------------------------------------------------------------------- grammars

# JSON as json.dumps writes it (what the templates train calls as): no free whitespace, which a weak model
# would otherwise fill its whole budget with
COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def json_grammar(schema: dict[str, Any], tail: str) -> str:
    """A Lark grammar (llguidance's dialect) for a reply that is JSON valid against `schema`, after the header
    tail the model writes first (ERNIE's space)."""
    body = f"%json {json.dumps(compact(schema))}"
    return f"start: {json.dumps(tail)} reply\nreply: {body}\n" if tail else f"start: reply\nreply: {body}\n"


def compact(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with llguidance's layout options (its `x-guidance` key) set to json.dumps' own."""
    return {**schema, "x-guidance": COMPACT | schema.get("x-guidance", {})}


def call_schema(tools: list[dict[str, Any]], names: list[str], key: str) -> dict[str, Any]:
    """A JSON schema for one call `{"name": ..., key: {...}}` of one of `names`."""
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool["function"]["name"]},
                key: tool["function"].get("parameters") or {"type": "object"},
            },
            "required": ["name", key],
            "additionalProperties": False,
        }
        for tool in tools
        if tool["function"]["name"] in names
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def tool_call_grammar(form: str | None, tools: list[dict[str, Any]], names: list[str], tail: str) -> str:
    """A Lark grammar forcing one call, written as the template trains it (hermes or Llama 3.1 JSON).

    Raises:
        ApiError: a format whose calls cannot be forced here.
    """
    if form == "hermes":
        body = f"%json {json.dumps(compact(call_schema(tools, names, 'arguments')))}"
        return f'start: {json.dumps(tail + "<tool_call>" + chr(10))} call "\\n</tool_call>"\ncall: {body}\n'
    if form == "llama3":
        return json_grammar(call_schema(tools, names, "parameters"), tail)
    raise ApiError(
        400,
        f"tool_choice: forcing a call is supported for the hermes and llama3 tool formats; this "
        f'model\'s template writes {form or "no"} tool calls; use tool_choice "auto"',
        "tool_choice",
    )


class GrammarMask:
    """Logits processor: each constrained row may only take the tokens its llguidance matcher allows."""

    def __init__(self, matchers: list[Any], stop_ids: list[int]) -> None:
        self.matchers, self.stop_ids, self.started = matchers, stop_ids, False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import numpy as np
        import torch

        for row, matcher in enumerate(self.matchers):
            if matcher is None:
                continue
            if self.started:
                matcher.consume_token(int(input_ids[row, -1]))
            if matcher.is_error() or matcher.is_stopped():  # the reply is complete: only its end may follow
                ended = torch.full_like(scores[row], float("-inf"))
                ended[self.stop_ids] = scores[row, self.stop_ids]
                scores[row] = ended
                continue
            bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
            allowed = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
            known = min(len(bits), scores.shape[1])  # rows past the tokenizer's vocabulary stay disallowed
            allowed[:known] = torch.from_numpy(bits[:known].astype(bool)).to(scores.device)
            scores[row, ~allowed] = float("-inf")
        self.started = True
        return scores


@dataclass
class GrammarCompiler:
    """llguidance's view of the tokenizer, built once (about a second) on first use."""

    tokenizer: Any
    stop_ids: list[int]
    _llg: Any = None

    def matcher(self, grammar: str) -> Any:
        """A fresh matcher for one reply.

        Raises:
            ApiError: a schema llguidance cannot compile (named with its reason), or a slow tokenizer.
        """
        import llguidance
        import llguidance.hf

        if self._llg is None:
            try:
                self._llg = llguidance.hf.from_tokenizer(
                    self.tokenizer, n_vocab=len(self.tokenizer), eos_token=self.stop_ids
                )
            except ValueError as exc:
                raise ApiError(
                    400, f"response_format: constrained decoding needs a fast tokenizer ({exc})", "response_format"
                ) from None
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self._llg)
        if is_error:
            raise ApiError(
                400, f"response_format: the schema cannot be enforced ({'; '.join(messages)[:300]})", "response_format"
            )
        return llguidance.LLMatcher(self._llg, grammar, log_level=0)
