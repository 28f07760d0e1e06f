"""Curriculum order: rows sorted easy to hard by a difficulty, optionally in shuffled stages."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def curriculum_order(difficulty: Sequence[float], stages: int, seed: int) -> list[int]:
    """Positions sorted by `difficulty` (ties keep their order); with stages > 1, cut into that many slices
    (easy first), each shuffled by `seed`."""
    order = sorted(range(len(difficulty)), key=lambda i: difficulty[i])
    if stages <= 1:
        return order
    rng = random.Random(seed)
    out: list[int] = []
    for part in stage_slices(len(order), stages):
        piece = order[part]
        rng.shuffle(piece)
        out += piece
    return out


def stage_slices(rows: int, stages: int) -> list[slice]:
    """`stages` consecutive slices of `rows` (the last ones one row shorter when it does not divide)."""
    size = math.ceil(rows / stages) if stages else rows
    return [slice(start, min(start + size, rows)) for start in range(0, rows, max(size, 1))]


def curriculum_line(by: str, difficulty: Sequence[float], stages: int) -> str:
    """The start summary's line: what orders the rows and the difficulty range of each stage."""
    what = {"length": "length (tokens)", "loss": "the model's own loss before training"}.get(by, by)
    ordered = sorted(difficulty)
    if not ordered:
        return f"curriculum: by {what}, sequential sampling"
    if stages <= 1:
        return (
            f"curriculum: by {what}, easy to hard, sequential sampling (no shuffling): "
            f"{_fmt(ordered[0])} -> {_fmt(ordered[-1])}"
        )
    parts = [f"{_fmt(ordered[s.start])}-{_fmt(ordered[s.stop - 1])}" for s in stage_slices(len(ordered), stages)]
    return f"curriculum: by {what}, {len(parts)} stages in order, shuffled within each: {', '.join(parts)}"


def _fmt(value: float) -> str:
    return f"{value:g}" if isinstance(value, int) or float(value).is_integer() else f"{value:.3g}"
