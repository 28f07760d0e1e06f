"""Evaluation: loss/perplexity equal to the trainer's, scored predictions, samples in TensorBoard, overfitting.

One tiny LoRA run (module-scoped) overfits a few rows with evaluation on; the tests compare it with its
base model on the same rows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sftkit.data.template import get_template
from sftkit.errors import SftkitError
from sftkit.evaluate import OVERFIT_GAP, metrics_path, overfitting_signs, score, to_prompt

# ---------------------------------------------------------------------------- overfitting_signs


def history(train: list[tuple[int, float]], evals: list[tuple[int, float]]) -> list[dict]:
    """A trainer log_history: train and eval entries by step, then the end-of-training summary."""
    entries = [{"step": s, "loss": v, "learning_rate": 1e-4} for s, v in train]
    entries += [{"step": s, "eval_loss": v, "eval_runtime": 0.1} for s, v in evals]
    entries.sort(key=lambda e: (e["step"], "eval_loss" in e))
    return entries + [{"step": max(s for s, _ in train), "train_loss": 1.0, "train_runtime": 3.0}]


def test_healthy_run_shows_no_sign() -> None:
    log = history([(10, 2.0), (20, 1.6), (30, 1.4)], [(10, 2.05), (20, 1.7), (30, 1.5)])
    assert overfitting_signs(log) == []


def test_eval_loss_rising_while_train_loss_falls_is_flagged() -> None:
    log = history([(10, 2.0), (20, 1.5), (30, 1.0), (40, 0.6)], [(10, 2.0), (20, 1.55), (30, 1.7), (40, 1.9)])
    signs = overfitting_signs(log)
    assert len(signs) == 1
    assert "rose from 1.5500 (step 20) to 1.9000 (step 40)" in signs[0]
    assert "train loss fell from 1.5000 to 0.6000" in signs[0]


def test_eval_loss_far_above_train_loss_at_best_step_is_flagged() -> None:
    gap = 1 + 2 * OVERFIT_GAP
    log = history([(10, 1.0), (20, 0.5)], [(10, 1.0 * gap + 0.1), (20, 0.5 * gap)])
    signs = overfitting_signs(log)
    assert len(signs) == 1
    assert "step (20)" in signs[0] and f"{100 * (gap - 1):.0f}% above train loss" in signs[0]


def test_small_gap_or_rise_within_noise_is_not_flagged() -> None:
    near = 1 + OVERFIT_GAP / 2
    log = history([(10, 1.0), (20, 0.8)], [(10, 1.0 * near), (20, 0.8 * near * 1.005)])
    assert overfitting_signs(log) == []


def test_eval_rising_together_with_train_loss_is_not_overfitting() -> None:
    log = history([(10, 1.0), (20, 1.2)], [(10, 1.0), (20, 1.1)])
    assert overfitting_signs(log) == []


def test_both_signs_together() -> None:
    log = history([(10, 1.0), (20, 0.5), (30, 0.2)], [(10, 1.3), (20, 1.2), (30, 1.6)])
    assert len(overfitting_signs(log)) == 2


def test_no_evaluation_no_signs() -> None:
    assert overfitting_signs(history([(10, 2.0), (20, 0.1)], [])) == []
    assert overfitting_signs([]) == []


# ---------------------------------------------------------------------------- scores


def test_identical_replies_score_100_and_unrelated_ones_near_0() -> None:
    refs = ["27 minus 6 is 21.", "The word \"apple\" has 5 letters."]
    rows, corpus = score(refs, refs)
    assert all(value == pytest.approx(100) for row in rows for value in row.values())
    assert corpus == pytest.approx({"bleu_4": 100, "rouge_1": 100, "rouge_2": 100, "rouge_l": 100})
    rows, corpus = score(["banana yellow tree", "ocean"], refs)
    assert corpus["bleu_4"] < 5 and corpus["rouge_1"] == 0
    assert set(rows[0]) == {"bleu_4", "rouge_1", "rouge_2", "rouge_l"}


def test_partial_overlap_is_between() -> None:
    _, corpus = score(["27 minus 6 is 20."], ["27 minus 6 is 21."])
    assert 0 < corpus["bleu_4"] < 100 and 0 < corpus["rouge_l"] < 100


def test_chinese_text_is_scored_by_character() -> None:
    # rouge-score's own tokenizer keeps only [a-z0-9]: Chinese would score 0 even when identical
    rows, corpus = score(["你好，世界", "今天天气很好"], ["你好，世界", "今天天气不错"])
    assert rows[0]["rouge_1"] == pytest.approx(100)
    assert 0 < rows[1]["rouge_1"] < 100 and corpus["bleu_4"] > 0


def test_prompt_is_the_conversation_before_the_last_reply() -> None:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
                {"role": "function_call", "content": '{"name": "f"}'}]
    prompt = to_prompt({"messages": messages, "tools": None, "dataset": "d", "index": 3}, get_template("chatml"))
    assert prompt.messages == messages[:4]
    assert prompt.reference == '<tool_call>\n{"name": "f"}\n</tool_call>'
    assert (prompt.dataset, prompt.index) == ("d", 3)


def test_metrics_file_sits_beside_the_predictions() -> None:
    assert metrics_path(Path("out/preds.jsonl")) == Path("out/preds.metrics.json")
