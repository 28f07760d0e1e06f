"""Looking at prepared data: `sftkit data preview` (rendered examples, trained spans marked) and `data export`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.atomic import write_lines
from sftkit.data.loader import load_conversations
from sftkit.data.masking import IGNORE_INDEX
from sftkit.data.pipeline import COLUMNS, PreparedData, no_cycle_collection, tokenize_all
from sftkit.data.tokenizer import load_tokenizer_and_template, template_origin
from sftkit.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

    from sftkit.config import SftConfig

ANSI_TRAINED, ANSI_RESET = "\033[32m", "\033[0m"
PLAIN_TRAINED = ("[[", "]]")


def preview(cfg: SftConfig, n: int = 3, color: bool = False, stats_command: str | None = None) -> None:
    """Prints `n` training examples as they train, trained spans marked, then the data statistics.

    The text is decoded from input_ids/labels, so what is shown is exactly what the model sees.

    Args:
        cfg: the config.
        n: examples to show (the first ones of the training split).
        color: mark trained text in green (terminal) instead of `[[` `]]` (pipes, files).
        stats_command: the `sftkit data stats` command for this config, printed as where the full statistics are.
    """
    tokenizer, template, data = prepare_for_cli(cfg)
    print(f"--- {template_origin(template)}")
    print(legend(color))
    for row in data.train.select(range(min(n, len(data.train)))):
        trained = sum(label != IGNORE_INDEX for label in row["labels"])
        print(f"--- {row['dataset']} row {row['index']}: {len(row['input_ids'])} tokens, {trained} trained")
        print(render_example(tokenizer, row["input_ids"], row["labels"], color))
    print("--- statistics")
    for line in data.stats.summary_lines():
        print(line)
    if stats_command:
        print(f"per dataset (turns, lengths, duplicates, languages) with plots: {stats_command}")


def export(cfg: SftConfig, out: str | Path, split: str = "train") -> int:
    """Writes one JSON object per example (input_ids, labels, dataset, index) to `out`, atomically.

    Args:
        cfg: the config.
        out: the JSONL file to write (replaced only once it is complete).
        split: "train" or "eval".

    Returns:
        The number of rows written.

    Raises:
        DataError: `split` is eval but the config has no eval set.
    """
    if split == "eval" and not cfg.has_eval_data:
        raise DataError("--split eval: the config has no eval set; set val_size or eval_dataset")
    _, _, data = prepare_for_cli(cfg)
    dataset = data.train if split == "train" else data.eval
    assert dataset is not None
    _write_jsonl(dataset, Path(out))
    print(f"wrote {len(dataset)} {split} rows to {out}")
    return len(dataset)


def legend(color: bool) -> str:
    """What the marks in a rendered example mean."""
    marked = "green" if color else f"between {PLAIN_TRAINED[0]} and {PLAIN_TRAINED[1]}"
    return (
        f"(text {marked} is trained: the loss is taken on it; everything else is context the model reads "
        "but is not trained to write)"
    )


def render_example(tokenizer: Any, input_ids: list[int], labels: list[int], color: bool) -> str:
    """Decodes an example run by run, marking trained runs (ANSI green, or `[[` `]]` when not `color`)."""
    start, end = (ANSI_TRAINED, ANSI_RESET) if color else PLAIN_TRAINED
    return "".join(
        f"{start}{text}{end}" if trained else text for text, trained in decoded_runs(tokenizer, input_ids, labels)
    )


def decoded_runs(tokenizer: Any, input_ids: list[int], labels: list[int]) -> list[tuple[str, bool]]:
    """The example's text run by run, each with whether it is trained (the web page highlights these)."""
    return [
        (tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False), trained)
        for trained, ids in _runs(input_ids, labels)
    ]


def prepare_for_cli(cfg: SftConfig) -> tuple[Any, Any, PreparedData]:
    """Data problems surface before the tokenizer (or anything of the model) is loaded."""
    with no_cycle_collection():
        conversations = load_conversations(cfg)
        tokenizer, template = load_tokenizer_and_template(cfg)
        return tokenizer, template, tokenize_all(cfg, tokenizer, template, conversations)


def _runs(input_ids: list[int], labels: list[int]) -> list[tuple[bool, list[int]]]:
    """Consecutive tokens grouped by whether they are trained."""
    runs: list[tuple[bool, list[int]]] = []
    for token, label in zip(input_ids, labels):
        trained = label != IGNORE_INDEX
        if runs and runs[-1][0] == trained:
            runs[-1][1].append(token)
        else:
            runs.append((trained, [token]))
    return runs


def _write_jsonl(dataset: Dataset, out: Path) -> None:
    """One JSON object a line, streamed; `out` is replaced only once complete."""
    write_lines(out, (json.dumps({c: row[c] for c in COLUMNS}, ensure_ascii=False) + "\n" for row in dataset))
