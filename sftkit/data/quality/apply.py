"""The quality steps inside data preparation: clean and balance the loaded rows, order the tokenized ones.

`prepare_data` (training, `data preview`, `data export`) runs these, so what trains is what was inspected.
Each step is a no-op unless its keys are set.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.data.quality.balance import balance
from sftkit.data.quality.clean import clean_rows, cleaning_on
from sftkit.data.quality.columns import column_values
from sftkit.data.quality.curriculum import curriculum_line, curriculum_order
from sftkit.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

    from sftkit.config import SftConfig
    from sftkit.data.loader import Conversations


def clean_and_balance(
    cfg: SftConfig, conversations: Conversations, tokenizer: Any, judge_cache: Path
) -> tuple[Conversations, list[str]]:
    """The conversations cleaned (`clean_*` keys) and the train split balanced (`balance_*`), with summary lines.

    Raises:
        DataError: cleaning or balance leaves no training row, or a balance category is missing.
    """
    lines: list[str] = []
    train, eval_ = conversations.train, conversations.eval
    if cleaning_on(cfg):
        result = clean_rows(
            cfg, train.to_list(), eval_.to_list() if eval_ is not None else None, tokenizer, judge_cache
        )
        lines.append(result.summary_line(len(train)))
        if not result.train_keep:
            raise DataError(
                f"cleaning removed every training row ({result.summary_line(len(train))}); loosen the clean_* keys"
            )
        if eval_ is not None and result.eval_keep is not None and not result.eval_keep:
            raise DataError("cleaning removed every eval row; loosen the clean_* keys or choose other eval data")
        train = train.select(result.train_keep)
        eval_ = eval_.select(result.eval_keep) if eval_ is not None and result.eval_keep is not None else eval_
    if cfg.balance_column is not None and cfg.balance_shares is not None:
        categories = [str(v) for v in column_values(cfg, train.to_list(), cfg.balance_column, "balance_column")]
        sampled = balance(categories, cfg.balance_shares, cfg.balance_rows, cfg.seed)
        if not sampled.positions:
            raise DataError("balance_shares: no training row is left at these shares; set balance_rows")
        train = train.select(sampled.positions)
        lines.append(sampled.summary_line(cfg.balance_column))
    return dataclasses.replace(conversations, train=train, eval=eval_), lines


def order_for_curriculum(cfg: SftConfig, train: Dataset) -> tuple[Dataset, list[str]]:
    """The tokenized train rows in curriculum order (length or score); `loss` is ordered once the model loads.

    The trainer samples sequentially whenever `curriculum` is set (`sftkit.training.arguments`).
    """
    import pyarrow.compute as pc

    if cfg.curriculum == "none":
        return train, []
    if cfg.curriculum == "loss":
        return train, [
            "curriculum: by the model's own loss before training (measured once the model loads), sequential sampling"
        ]
    if cfg.curriculum == "length":
        table = train.with_format("arrow")[:]
        difficulty = pc.list_value_length(table["input_ids"]).to_pylist()
    else:
        assert cfg.curriculum_column is not None
        values = column_values(
            cfg, train.select_columns(["dataset", "index"]).to_list(), cfg.curriculum_column, "curriculum_column"
        )
        difficulty = [_number(v, cfg.curriculum_column) for v in values]
    order = curriculum_order(difficulty, cfg.curriculum_stages, cfg.seed)
    return train.select(order), [curriculum_line(cfg.curriculum, difficulty, cfg.curriculum_stages)]


def _number(value: Any, column: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"curriculum_column: {column!r} holds {value!r}; the curriculum needs a number in every row")
    return float(value)
