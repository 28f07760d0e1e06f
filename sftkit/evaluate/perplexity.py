"""`sftkit eval`: loss and perplexity on the trained tokens of a split, per dataset and overall."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.atomic import write_json
from sftkit.config.schema import LOSS_CHUNK_SIZE
from sftkit.data import IGNORE_INDEX, load_tokenizer_and_template, prepare_data
from sftkit.errors import SftkitError
from sftkit.model import Loaded, causal_lm_of, load_for_inference, resolve_precision, to_device
from sftkit.model import load_model as load_lm
from sftkit.run_dir import check_new_output, has_adapter, has_run_config
from sftkit.training.loss import chunked_cross_entropy, perplexity

if TYPE_CHECKING:
    from datasets import Dataset

    from sftkit.config import SftConfig

SPLITS = ("eval", "train")


@dataclass
class LossTotals:
    """Summed cross-entropy over trained tokens; totals of batches and datasets merge by addition."""

    loss_sum: float = 0.0
    tokens: int = 0
    rows: int = 0

    def add(self, other: LossTotals) -> None:
        self.loss_sum += other.loss_sum
        self.tokens += other.tokens
        self.rows += other.rows

    @property
    def loss(self) -> float:
        return self.loss_sum / self.tokens if self.tokens else math.nan

    @property
    def perplexity(self) -> float | None:
        return perplexity(self.loss)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "tokens": self.tokens, "loss": self.loss, "perplexity": self.perplexity}


# ---------------------------------------------------------------------------- sftkit eval


def evaluate(
    model: str,
    cfg: SftConfig,
    split: str = "eval",
    dataset: str | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Loss and perplexity on the trained tokens (labels != -100) of a split, per dataset and overall.

    The loss is the token-weighted mean cross-entropy over every trained token of the split, the
    rows and masks `prepare_data` gives training; perplexity is its exp. The trainer's eval_loss
    (`SftkitTrainer.evaluation_loop`) is the same token-weighted mean.

    Args:
        model: a run directory, a merged model directory, or a base model path or hub id.
        cfg: the config whose datasets, masking and cutoff_len define the rows.
        split: "eval" (the config's eval set) or "train".
        dataset: evaluate every row of this registered dataset instead of a split.
        out: JSON file for the results; default `eval_<split>.json` inside a run or merged directory,
            else in the working directory.

    Returns:
        The results as written to the JSON file.

    Raises:
        SftkitError: unknown split, no eval set, or a model or data problem.
    """
    cfg = data_config(cfg, split, dataset)
    path = Path(out) if out is not None else default_eval_path(model, dataset or split)
    check_new_output(path, overwrite)
    loaded = load_model(model, cfg)
    rows = prepared_rows(cfg, loaded, "train" if dataset is not None else split)
    totals = masked_loss(
        loaded.model,
        rows,
        loaded.tokenizer.pad_token_id,
        batch_tokens=cfg.per_device_eval_batch_size * cfg.cutoff_len,
        chunk_size=cfg.loss_chunk_size or LOSS_CHUNK_SIZE,
    )
    results = loss_results(model, loaded.template.name, dataset or split, totals)
    write_json(path, results)
    print(loss_table(results))
    print(f"wrote {path}")
    return results


def data_config(cfg: SftConfig, split: str, dataset: str | None) -> SftConfig:
    """The config whose `prepare_data` yields the rows to evaluate (every row of `dataset` if given).

    Raises:
        SftkitError: unknown split, or split eval without an eval set.
    """
    if split not in SPLITS:
        raise SftkitError(f"--split {split!r}: use eval or train")
    if dataset is not None:
        return cfg.model_copy(update={"dataset": [dataset], "eval_dataset": None, "val_size": 0.0})
    if split == "eval" and not cfg.has_eval_data:
        raise SftkitError(
            "--split eval: the config has no eval set; set val_size or eval_dataset, or use --split train"
        )
    return cfg


def load_model(model: str, cfg: SftConfig) -> Loaded:
    """Loads `model` for inference, in eval mode on the best device.

    An sftkit run or merged directory speaks its own template (`sftkit.model.load_for_inference`); a LoRA
    run's adapter is folded into its base in memory.
    Anything else is a base model, loaded as training starts from it (`sftkit.model`, seeded with
    `cfg.seed`: the config's template tokens added, embeddings grown), so it is measured on exactly
    the rows, masks and prompts its fine-tunes were.
    """
    if has_adapter(Path(model)):
        loaded = load_for_inference(model)
        # The adapter folded in memory: lm-eval's HFLM (and anything else that calls tie_weights()) meets a plain
        # transformers model, not PEFT's wrapped embeddings (a run that added its template's tokens trains
        # them through a wrapper), and the scores are the merged model's, which `sftkit merge` would save.
        loaded.model = loaded.model.merge_and_unload()
        return loaded
    if has_run_config(Path(model)):
        return load_for_inference(model)
    return _load_base(cfg.model_copy(update={"model_name_or_path": model}))


def _load_base(cfg: SftConfig) -> Loaded:
    from transformers import set_seed

    set_seed(cfg.seed)  # the new token rows are drawn as training's were
    tokenizer, template = load_tokenizer_and_template(cfg)
    return Loaded(to_device(load_lm(cfg, tokenizer, resolve_precision(cfg))), tokenizer, template)


def prepared_rows(cfg: SftConfig, loaded: Loaded, split: str) -> Dataset:
    """The tokenized rows of `split`, encoded with the model's own tokenizer and template."""
    data = prepare_data(cfg, loaded.tokenizer, loaded.template)
    rows = data.eval if split == "eval" else data.train
    if rows is None or len(rows) == 0:
        raise SftkitError(f"--split {split}: no rows to evaluate")
    return rows


def masked_loss(
    model: Any, rows: Dataset, pad_id: int | None, batch_tokens: int, chunk_size: int = LOSS_CHUNK_SIZE
) -> dict[str, LossTotals]:
    """Summed cross-entropy of the trained tokens of each dataset in `rows`.

    Rows of one dataset are batched by length (at most `batch_tokens` tokens of padded batch); the
    output head runs only on trained positions, `chunk_size` at a time (`sftkit.training.loss`, the loss
    training uses), so no full-vocabulary logits of a batch are ever held.

    Returns:
        Dataset name -> totals.
    """
    import torch

    lm = causal_lm_of(model)  # PEFT injects LoRA layers in place: the inner model includes them
    columns = rows.select_columns(["input_ids", "labels", "dataset"]).to_dict()
    totals: dict[str, LossTotals] = defaultdict(LossTotals)
    with torch.inference_mode():
        for batch in _length_batches(columns["dataset"], [len(ids) for ids in columns["input_ids"]], batch_tokens):
            ids = [columns["input_ids"][i] for i in batch]
            labels = [columns["labels"][i] for i in batch]
            totals[columns["dataset"][batch[0]]].add(_batch_loss(lm, ids, labels, pad_id or 0, chunk_size))
    return dict(totals)


def _length_batches(names: list[str], lengths: list[int], batch_tokens: int) -> Iterator[list[int]]:
    """Row indices grouped by dataset, longest first, so that rows x longest row fits `batch_tokens`."""
    order = sorted(range(len(lengths)), key=lambda i: (names[i], -lengths[i]))
    batch: list[int] = []
    for i in order:
        full = (len(batch) + 1) * lengths[batch[0]] > batch_tokens if batch else False
        if batch and (full or names[i] != names[batch[0]]):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _batch_loss(lm: Any, ids: list[list[int]], labels: list[list[int]], pad_id: int, chunk_size: int) -> LossTotals:
    """Summed cross-entropy and trained-token count of one right-padded batch."""
    import torch

    device = lm.device
    width = max(len(row) for row in ids)
    input_ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in ids], device=device)
    label_ids = torch.tensor([row + [IGNORE_INDEX] * (width - len(row)) for row in labels], device=device)
    attention = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids], device=device)
    hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention, use_cache=False).last_hidden_state
    # num_items_in_batch=1: the sum itself, merged token-weighted across batches by the caller
    out = chunked_cross_entropy(lm.get_output_embeddings(), hidden, label_ids, chunk_size, num_items_in_batch=1)
    return LossTotals(float(out.loss), out.num_trained, len(ids))


def loss_results(model: str, template: str, split: str, totals: dict[str, LossTotals]) -> dict[str, Any]:
    """The JSON record: overall and per-dataset rows, tokens, loss and perplexity."""
    overall = LossTotals()
    for part in totals.values():
        overall.add(part)
    return {
        "model": model,
        "template": template,
        "split": split,
        **overall.as_dict(),
        "datasets": {name: part.as_dict() for name, part in sorted(totals.items())},
    }


def loss_table(results: dict[str, Any]) -> str:
    """A plain-text table: one line per dataset, then the overall line."""
    lines = [
        f"{results['model']} on {results['split']} (template {results['template']})",
        f"{'dataset':<28} {'rows':>7} {'tokens':>10} {'loss':>9} {'perplexity':>11}",
    ]
    parts = [*results["datasets"].items(), ("all", results)]
    for name, part in parts:
        lines.append(
            f"{name:<28} {part['rows']:>7} {part['tokens']:>10} {part['loss']:>9.4f} {part['perplexity']:>11.3f}"
        )
    return "\n".join(lines)


def default_eval_path(model: str, split: str) -> Path:
    """In the working directory, named after the model as given (never inside a model or run folder)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/")).strip("_.") or "model"
    return Path(f"eval_{slug}_{split}.json")
