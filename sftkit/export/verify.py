"""The export checked by llama.cpp itself (llama-cpp-python) against the transformers model it came from.

On a fixed conversation rendered with the trained template (merge's probe, ending with the assistant
header, so generation starts where a chat reply would):

1. tokens: llama.cpp tokenizes the rendered text (special tokens parsed) to the ids transformers gives;
2. logits: at every prompt position, max |llama.cpp - transformers| within the out-type's tolerance,
   as a fraction of the largest transformers logit;
3. greedy: 32 tokens decoded greedily by each agree. f32 must give the same tokens; after f16, bf16 or q8_0
   rounding a step may differ only where transformers itself rates the two tokens within the logit
   tolerance (a near tie that rounding may flip: a trained model meets some in 32 tokens), and then both
   continue from llama.cpp's token. The near ties are counted and printed.

Tolerances (of the largest transformers logit). Measured with llama.cpp running an f32 key/value cache: on the
tiny ERNIE model (2 layers, 64 wide, logits up to 33) f32 1.4e-7, f16 1.4e-4, bf16 1.8e-3 (every weight rounded
to 11 or 8 significant bits); on the tiny SentencePiece model with 15x larger weights f32 7e-6 (llama.cpp's
kernels sum in another order than torch's, and large activations make that visible). The limits, f32 1e-4,
f16 1%, bf16 5%, q8_0 10%, leave room for deeper models and still catch what a conversion bug does: a wrong
tensor layout, rope or vocabulary moves logits by the whole scale.
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

RELATIVE_TOLERANCE = {"f32": 1e-4, "f16": 0.01, "bf16": 0.05, "q8_0": 0.1}
EXACT_GREEDY = ("f32",)
GGML_TYPE_F32 = 0  # ggml's type id, for llama.cpp's key/value cache
GREEDY_STEPS = 32
PROBE = [{"role": "system", "content": "You are a helpful assistant."},
         {"role": "user", "content": "What is the capital of France? Answer in one word."}]


@dataclass
class Report:
    """What the check measured (printed by export, asserted by the tests)."""

    prompt_tokens: int
    max_logit_diff: float
    tolerance: float
    greedy_steps: int
    near_ties: int


def llama_cpp_available() -> bool:
    """Whether llama-cpp-python is importable (without importing it: it loads a shared library)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def verify(path: Path, model: Any, tokenizer: Any, template: Template, outtype: str) -> Report:
    """Loads `path` with llama.cpp and compares it with `model` (fp32, transformers) on the probe.

    Raises:
        SftkitError: llama.cpp cannot load the file, tokenizes differently, or computes other logits or tokens.
    """
    text = template.generation_prompt(PROBE)
    ids = tokenizer(text, add_special_tokens=False).input_ids  # training's rule for rendered text (masking.py)
    llm = _load(path, len(ids) + GREEDY_STEPS + 8)
    try:
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if theirs != ids:
            at = next((i for i, (a, b) in enumerate(zip(theirs, ids)) if a != b), min(len(theirs), len(ids)))
            raise SftkitError(f"export check failed: llama.cpp tokenizes the rendered probe differently from "
                              f"transformers (from token {at}: {theirs[at:at + 4]} vs {ids[at:at + 4]}); nothing was "
                              "written")
        reference = _hf_logits(model, ids)
        llm.eval(ids)
        logits = llm.scores[: len(ids)].astype("float64")
        return _compare(llm, model, ids, reference, logits, outtype)
    finally:
        llm.close()


def _compare(llm: Any, model: Any, ids: list[int], reference: Any, logits: Any, outtype: str) -> Report:
    import numpy as np

    scale = max(1.0, float(np.abs(reference).max()))
    tolerance = RELATIVE_TOLERANCE[outtype] * scale
    diff = float(np.abs(logits - reference).max()) if np.isfinite(logits).all() else float("inf")
    print(f"verify (llama.cpp, {outtype}): max |llama.cpp - transformers| logit difference {diff:.3g} over "
          f"{len(ids)} prompt tokens (tolerance {tolerance:.3g})", file=sys.stderr)
    if not diff <= tolerance:
        raise SftkitError(f"export check failed: llama.cpp's {outtype} logits differ from transformers' by {diff:.3g} "
                          f"(> {tolerance:.3g}); nothing was written" + ("; try --outtype f32" if outtype != "f32"
                                                                          else ""))
    near_ties = _greedy(llm, model, ids, tolerance, exact=outtype in EXACT_GREEDY)
    print(f"verify (llama.cpp, {outtype}): greedy decoding agrees for {GREEDY_STEPS} tokens"
          + (f" ({near_ties} near ties)" if near_ties else ""), file=sys.stderr)
    return Report(len(ids), diff, tolerance, GREEDY_STEPS, near_ties)


def _greedy(llm: Any, model: Any, ids: list[int], tolerance: float, exact: bool) -> int:
    """Decodes GREEDY_STEPS tokens in both, step by step from the same sequence; returns the near ties."""
    import torch

    near_ties = 0
    sequence = list(ids)
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([sequence]), use_cache=True)
        for step in range(GREEDY_STEPS):
            hf_logits = out.logits[0, -1].float()
            hf_token = int(hf_logits.argmax())
            cpp_token = int(llm.scores[llm.n_tokens - 1].argmax())
            if cpp_token != hf_token:
                gap = float(hf_logits[hf_token] - hf_logits[cpp_token])
                if exact or gap > tolerance:
                    raise SftkitError(f"export check failed: greedy step {step + 1} of {GREEDY_STEPS}: llama.cpp chose "
                                      f"token {cpp_token}, transformers {hf_token} (logit gap {gap:.3g}); nothing was "
                                      "written")
                near_ties += 1
            sequence.append(cpp_token)
            llm.eval([cpp_token])
            out = model(input_ids=torch.tensor([[cpp_token]]), past_key_values=out.past_key_values, use_cache=True)
    return near_ties


def _hf_logits(model: Any, ids: list[int]) -> Any:
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].double().numpy()


def _load(path: Path, n_ctx: int) -> Any:
    """The GGUF file in llama.cpp on the CPU, every position's logits kept, its log silenced."""
    from llama_cpp import Llama

    threads = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
    try:
        # An f32 key/value cache: llama.cpp's default f16 cache would add its own rounding to every check.
        return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, n_gpu_layers=0,
                     n_threads=threads, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise SftkitError(f"export check failed: llama.cpp cannot load the GGUF file ({exc}); nothing was "
                          "written") from None
