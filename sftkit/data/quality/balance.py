"""Category balance: the training rows sampled to target shares of a category column."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from sftkit.errors import DataError


@dataclass
class Balanced:
    """Positions of the sampled rows (in a seeded shuffled order), and what each category got."""

    positions: list[int]
    wanted: dict[str, float]  # normalised shares
    achieved: dict[str, int]  # rows per category after sampling
    available: dict[str, int]  # rows per category before
    left_out: dict[str, int]  # rows of categories without a share

    def summary_line(self, column: str) -> str:
        """ "balance by category: qa 25.0% (wanted 25%, 50 of 80 rows), ...; 200 rows"."""
        total = sum(self.achieved.values())
        parts = [
            f"{name} {self.achieved[name] / total:.1%} (wanted {share:.1%}, {self.achieved[name]} of "
            f"{self.available[name]} rows)"
            for name, share in self.wanted.items()
        ]
        line = f"balance by {column}: {', '.join(parts)}; {total} rows"
        if self.left_out:
            line += f"; left out (no share): {', '.join(f'{k} {v}' for k, v in sorted(self.left_out.items()))}"
        return line


def balance(
    categories: list[str], shares: dict[str, float], rows: int | None, seed: int, key: str = "balance_shares"
) -> Balanced:
    """Samples positions so each category makes up its share of the result.

    Args:
        categories: the category of each row (str() of the column's value).
        shares: category -> share (any positive scale; normalised here).
        rows: rows wanted in all; None: the most the shares allow without repeating a row. A category with
            fewer rows than its share then repeats rows (sampled with replacement beyond its own rows).
        seed: the sampling seed.

    Raises:
        DataError: a category of `shares` that no row has.
    """
    total_share = sum(shares.values())
    wanted = {str(name): share / total_share for name, share in shares.items()}
    by_category: dict[str, list[int]] = {name: [] for name in wanted}
    left_out: Counter[str] = Counter()
    for position, category in enumerate(categories):
        if category in by_category:
            by_category[category].append(position)
        else:
            left_out[category] += 1
    missing = [name for name, positions in by_category.items() if not positions]
    if missing:
        seen = ", ".join(sorted(set(categories))[:10])
        raise DataError(
            f"{key}: no training row has category {missing[0]!r} (the data has: {seen}); fix the "
            "share's name or drop it"
        )
    if rows is None:
        rows = int(min(len(by_category[name]) / share for name, share in wanted.items()))
    counts = _apportion(wanted, rows)
    rng = random.Random(seed)
    positions: list[int] = []
    for name, count in counts.items():
        pool = by_category[name]
        picked = rng.sample(pool, min(count, len(pool)))
        picked += rng.choices(pool, k=count - len(picked))  # short of its share: rows repeat
        positions += picked
    rng.shuffle(positions)
    return Balanced(positions, wanted, counts, {k: len(v) for k, v in by_category.items()}, dict(left_out))


def _apportion(wanted: dict[str, float], rows: int) -> dict[str, int]:
    """Whole rows per category summing to `rows`, by largest remainder."""
    exact = {name: share * rows for name, share in wanted.items()}
    counts = {name: int(value) for name, value in exact.items()}
    for name in sorted(exact, key=lambda n: counts[n] - exact[n])[: rows - sum(counts.values())]:
        counts[name] += 1
    return counts
