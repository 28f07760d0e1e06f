"""Evaluation stage: loss and perplexity, scored generations, benchmarks, ratings, a judge, the release checklist.

`evaluate` and `predict` load a model the way `sftkit chat` does (a run directory, a merged model, or
a base model given the template's tokens) and read the config's data through the data stage, so a
base model and its fine-tunes are measured on the same rows, with the same masks, as training.

Submodules: `perplexity` (sftkit eval), `predictions` (sftkit predict, scoring), `benchmarks` (sftkit eval
--tasks: lm-evaluation-harness), `ratings` (blind rating sheets, sftkit eval --ratings), `judge` (an LLM
judge on an OpenAI-compatible endpoint), `report` (sftkit report: the release checklist).
"""

from __future__ import annotations

from sftkit.evaluate.benchmarks import benchmark
from sftkit.evaluate.judge import Judge
from sftkit.evaluate.perplexity import evaluate
from sftkit.evaluate.predictions import metrics_path, predict, score
from sftkit.evaluate.ratings import read_ratings
from sftkit.evaluate.report import release_report

__all__ = ["Judge", "benchmark", "evaluate", "metrics_path", "predict", "read_ratings", "release_report", "score"]
