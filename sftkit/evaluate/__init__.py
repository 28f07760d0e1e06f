"""Evaluation stage: loss and perplexity on the trained tokens, and scored generations.

`evaluate` and `predict` load a model the way `sftkit chat` does (a run directory, a merged model, or
a base model given the template's tokens) and read the config's data through the data stage, so a
base model and its fine-tunes are measured on the same rows, with the same masks, as training.

Submodules: `perplexity` (sftkit eval), `predictions` (sftkit predict, scoring).
"""

from __future__ import annotations

from sftkit.evaluate.perplexity import evaluate
from sftkit.evaluate.predictions import metrics_path, predict, score

__all__ = ["evaluate", "metrics_path", "predict", "score"]
