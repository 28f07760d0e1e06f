"""Evaluation stage: loss and perplexity on the trained tokens, scored generations, overfitting signs.

`evaluate` and `predict` load a model the way `sftkit chat` does (a run directory, a merged model, or
a base model given the template's tokens) and read the config's data through the data stage, so a
base model and its fine-tunes are measured on the same rows, with the same masks, as training.

Submodules: `loss` (sftkit eval), `predictions` (sftkit predict, scoring), `overfitting`, `files` (writers).
"""

from __future__ import annotations

from sftkit.evaluate.loss import evaluate
from sftkit.evaluate.overfitting import OVERFIT_GAP, overfitting_signs
from sftkit.evaluate.predictions import (GenerationSettings, Prompt, encode_prompts, generate, load_prompts,
                                         metrics_path, predict, score, to_prompt)

__all__ = ["OVERFIT_GAP", "GenerationSettings", "Prompt", "encode_prompts", "evaluate", "generate", "load_prompts",
           "metrics_path", "overfitting_signs", "predict", "score", "to_prompt"]
