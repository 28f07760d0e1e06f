"""The export checked by llama.cpp itself (llama-cpp-python) against the transformers model it came from.

llama.cpp loads the file as llama-server and Ollama run it: an f16 key/value cache (llama.cpp's default),
on the CPU. For each of several conversations rendered with the trained template (short, long, unicode, a
multi-turn chat; each ends with the assistant header, where a reply starts):

1. tokens: llama.cpp tokenizes the rendered text (special tokens parsed) to the ids transformers gives;
2. logits: at every prompt position, max |llama.cpp - transformers| as a fraction of the largest transformers
   logit, within the out-type's limit (LIMITS);
3. greedy: GREEDY_STEPS tokens decoded by each, every step's logits (through both KV caches) within the same
   limit, the tokens equal up to the first step where the two choose differently: a near tie (with logits
   within d of each other, a choice can flip only where transformers rates the two tokens within 2d), after
   which the continuations differ and comparing further means nothing; where it happened is reported;
4. the file's chat template is the trained template.

One report line per prompt. Any failure raises and the caller leaves nothing written.

LIMITS is what rounding the same weights costs, measured, plus a margin. Measured as max relative logit
difference over these prompts (f16 KV cache) on the tiny ERNIE (2 layers, width 64), SmolLM2-135M (30 layers)
and Gemma-3-270M (18 layers): see docs/deploy.md for the table. The f16 cache alone adds about 1-2%, which is
why f32 and f16 files share a floor. A conversion bug (a wrong tensor layout, rope, norm or vocabulary)
moves logits by the whole scale and breaks greedy decoding at once, far past every limit.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.errors import SftkitError

if TYPE_CHECKING:
    from sftkit.templates import Template

LIMITS = {"f32": 0.05, "f16": 0.05, "bf16": 0.10, "q8_0": 0.25, "q6_k": 0.35, "q5_k_m": 0.45, "q4_k_m": 0.60}
GREEDY_STEPS = 16
_LONG = (
    "Summarise the following notes in two sentences. The garden was planted in early spring: tomatoes along "
    "the south wall, beans on the trellis, and a row of lettuce that bolted by June because the summer came "
    "early and hot. Watering twice a day kept the tomatoes alive, but the beans needed shade cloth in July. "
    "The harvest in August gave about forty kilograms of tomatoes, most of them turned into sauce and frozen. "
    "Next year the plan is to move the lettuce to the north bed, start the beans two weeks later, mulch "
    "every bed with straw to hold the water, and keep a written log of rainfall and temperatures so the "
    "timing can be compared from one season to the next. "
)
PROMPTS: dict[str, list[dict[str, str]]] = {
    "short": [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
    "long": [
        {"role": "system", "content": "You are a careful assistant who answers briefly."},
        {"role": "user", "content": _LONG * 2},
    ],
    "unicode": [{"role": "user", "content": "Traduis: « café, naïve, 植物と水 🌱 — Ærøskøbing, Straße ≠ Strasse »"}],
    "multi-turn": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Name a red fruit."},
        {"role": "assistant", "content": "An apple."},
        {"role": "user", "content": "And a yellow one?"},
        {"role": "assistant", "content": "A banana."},
        {"role": "user", "content": "Which of the two has more potassium?"},
    ],
}


@dataclass
class PromptReport:
    """What the check measured on one prompt."""

    name: str
    tokens: int
    relative_diff: float  # max |llama.cpp - transformers| / largest |transformers logit|
    greedy_equal: int  # greedy tokens equal before the first near tie (or all GREEDY_STEPS)
    near_tie_at: int | None  # the step (1-based) of the first near tie, if any


@dataclass
class Report:
    """What the check measured (printed by export, asserted by the tests)."""

    outtype: str
    limit: float
    prompts: list[PromptReport]

    @property
    def worst(self) -> float:
        return max(p.relative_diff for p in self.prompts)


def llama_cpp_available() -> bool:
    """Whether llama-cpp-python is importable (without importing it: it loads a shared library)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def verify(path: Path, model: Any, tokenizer: Any, template: Template, outtype: str) -> Report:
    """Loads `path` with llama.cpp (f16 KV cache) and compares it with `model` (fp32, transformers) on PROMPTS.

    Raises:
        SftkitError: llama.cpp cannot load the file, tokenizes differently, carries another chat template, or
            computes logits or greedy tokens past the out-type's limit.
    """
    rendered = {name: template.generation_prompt(messages) for name, messages in PROMPTS.items()}
    # training's rule for rendered text (masking.py): the template writes every special token itself
    ids = {name: tokenizer(text, add_special_tokens=False).input_ids for name, text in rendered.items()}
    llm = _load(path, max(len(i) for i in ids.values()) + GREEDY_STEPS + 8)
    try:
        if llm.metadata.get("tokenizer.chat_template") != template.jinja():
            raise SftkitError(
                "export check failed: the GGUF file's tokenizer.chat_template is not the trained "
                "template; nothing was written"
            )
        report = Report(outtype, LIMITS[outtype], [])
        for name, text in rendered.items():
            _check_tokens(llm, name, text, ids[name])
            report.prompts.append(_check_prompt(llm, model, name, ids[name], report.limit, outtype))
        return report
    finally:
        llm.close()


def _check_tokens(llm: Any, name: str, text: str, ids: list[int]) -> None:
    theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    if theirs != ids:
        at = next((i for i, (a, b) in enumerate(zip(theirs, ids)) if a != b), min(len(theirs), len(ids)))
        raise SftkitError(
            f"export check failed: llama.cpp tokenizes the {name} prompt differently from transformers "
            f"(from token {at}: {theirs[at : at + 4]} vs {ids[at : at + 4]}); nothing was written"
        )


def _check_prompt(llm: Any, model: Any, name: str, ids: list[int], limit: float, outtype: str) -> PromptReport:
    import numpy as np
    import torch

    llm.reset()
    llm.eval(ids)
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), use_cache=True)
    reference = out.logits[0].float().numpy()
    logits = llm.scores[: len(ids)]
    scale = max(1.0, float(np.abs(reference).max()))
    diff = float(np.abs(logits - reference).max()) / scale if np.isfinite(logits).all() else float("inf")
    if not diff <= limit:
        raise SftkitError(
            f"export check failed: on the {name} prompt llama.cpp's {outtype} logits differ from "
            f"transformers' by {diff:.1%} of the largest logit (limit {limit:.0%}); nothing was written"
        )
    equal, tie = _greedy(llm, model, out, limit, name, outtype)
    line = (
        f"verify (llama.cpp {outtype}, f16 KV cache) {name}: {len(ids)} tokens, max logit difference {diff:.2%} "
        f"of the largest (limit {limit:.0%}), greedy {equal}/{GREEDY_STEPS} tokens equal"
    )
    print(line + (f" up to a near tie at step {tie}" if tie else ""), file=sys.stderr)
    return PromptReport(name, len(ids), diff, equal, tie)


def _greedy(llm: Any, model: Any, out: Any, limit: float, name: str, outtype: str) -> tuple[int, int | None]:
    """Greedy tokens from both, each step's logits (now through both KV caches) within the limit, until
    GREEDY_STEPS or the first step where they choose differently: a near tie, since transformers then rates
    the two tokens within twice that step's logit difference; (equal count, tie step)."""
    import numpy as np
    import torch

    with torch.inference_mode():
        for step in range(GREEDY_STEPS):
            hf_logits = out.logits[0, -1].float().numpy()
            cpp_logits = llm.scores[llm.n_tokens - 1]
            diff = float(np.abs(cpp_logits - hf_logits).max()) / max(1.0, float(np.abs(hf_logits).max()))
            if not diff <= limit:
                raise SftkitError(
                    f"export check failed: on the {name} prompt, greedy step {step + 1}: llama.cpp's "
                    f"{outtype} logits differ from transformers' by {diff:.1%} of the largest (limit "
                    f"{limit:.0%}); nothing was written"
                )
            hf_token, cpp_token = int(hf_logits.argmax()), int(cpp_logits.argmax())
            if cpp_token != hf_token:
                return step, step + 1
            llm.eval([cpp_token])
            out = model(input_ids=torch.tensor([[cpp_token]]), past_key_values=out.past_key_values, use_cache=True)
    return GREEDY_STEPS, None


def _load(path: Path, n_ctx: int) -> Any:
    """The GGUF file in llama.cpp on the CPU as its servers run it (default f16 key/value cache), every
    position's logits kept, its log silenced."""
    from llama_cpp import Llama

    threads = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
    try:
        return Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=n_ctx,
            n_ubatch=n_ctx,
            logits_all=True,
            n_gpu_layers=0,
            n_threads=threads,
            verbose=False,
        )
    except (ValueError, RuntimeError) as exc:
        raise SftkitError(
            f"export check failed: llama.cpp cannot load the GGUF file ({exc}); nothing was written"
        ) from None
