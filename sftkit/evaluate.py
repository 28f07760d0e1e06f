"""Evaluation stage: loss and perplexity on the trained tokens, scored generations, overfitting signs.

`evaluate` and `predict` load a model the way `sftkit chat` does (a run directory, a merged model, or
a base model given the template's tokens) and read the config's data through the data stage, so a
base model and its fine-tunes are measured on the same rows, with the same masks, as training.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.errors import SftkitError

if TYPE_CHECKING:
    from datasets import Dataset

    from sftkit.config import SftConfig
    from sftkit.data.template import Template


SPLITS = ("eval", "train")
IGNORE_INDEX = -100
# Trained tokens per output-head call when the config turns chunking off (loss_chunk_size: 0).
LOSS_CHUNK_TOKENS = 1024
GENERATION_BATCH_SIZE = 16
ROUGE_TYPES = {"rouge_1": "rouge1", "rouge_2": "rouge2", "rouge_l": "rougeL"}
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
RUN_CONFIG = "sftkit_config.yaml"
ADAPTER_CONFIG = "adapter_config.json"
# Overfitting signs: an eval-loss rise within this fraction of the best is noise; an eval loss more
# than OVERFIT_GAP above the train loss at the best step means the training rows are memorised.
RISE_TOLERANCE = 0.01
OVERFIT_GAP = 0.10


@dataclass
class Loaded:
    """A model ready for inference, its tokenizer and the chat template it speaks."""

    model: Any
    tokenizer: Any
    template: Template


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
    def perplexity(self) -> float:
        return _exp(self.loss)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "tokens": self.tokens, "loss": self.loss, "perplexity": self.perplexity}


@dataclass(frozen=True)
class Prompt:
    """A conversation cut before its last assistant-side reply, and that reply as the reference."""

    dataset: str
    index: int
    messages: list[dict[str, str]]
    tools: str | None
    reference: str


@dataclass
class GenerationSettings:
    """How replies are generated: greedy when `temperature` is 0, else sampled with `seed`."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0
    batch_size: int = GENERATION_BATCH_SIZE


# ---------------------------------------------------------------------------- sftkit eval

def evaluate(model: str, cfg: SftConfig, split: str = "eval", dataset: str | None = None,
             out: str | Path | None = None) -> dict[str, Any]:
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
    loaded = load_model(model, cfg)
    rows = prepared_rows(cfg, loaded, "train" if dataset is not None else split)
    totals = masked_loss(loaded.model, rows, loaded.tokenizer.pad_token_id,
                         batch_tokens=cfg.per_device_eval_batch_size * cfg.cutoff_len,
                         chunk_size=cfg.loss_chunk_size or LOSS_CHUNK_TOKENS)
    results = loss_results(model, loaded.template.name, dataset or split, totals)
    path = Path(out) if out is not None else default_eval_path(model, dataset or split)
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
    if split == "eval" and not (cfg.eval_dataset or cfg.val_size):
        raise SftkitError("--split eval: the config has no eval set; set val_size or eval_dataset, or use "
                          "--split train")
    return cfg


def load_model(model: str, cfg: SftConfig) -> Loaded:
    """Loads `model` for inference, in eval mode on the best device.

    An sftkit run or merged directory speaks its own template (`sftkit.chat.load_for_inference`).
    Anything else is a base model, loaded as training starts from it (`sftkit.model`, seeded with
    `cfg.seed`: the config's template tokens added, embeddings grown), so it is measured on exactly
    the rows, masks and prompts its fine-tunes were.
    """
    if (Path(model) / RUN_CONFIG).is_file() or (Path(model) / ADAPTER_CONFIG).is_file():
        from sftkit.chat import load_for_inference

        return Loaded(*load_for_inference(model))
    return _load_base(cfg.model_copy(update={"model_name_or_path": model}))


def _load_base(cfg: SftConfig) -> Loaded:
    import torch
    from transformers import set_seed

    from sftkit.data.template import get_template
    from sftkit.model import load_model as load_lm, load_tokenizer, resolve_precision

    set_seed(cfg.seed)  # the new token rows are drawn as training's were
    tokenizer = load_tokenizer(cfg)
    lm = load_lm(cfg, tokenizer, resolve_precision(cfg))
    lm.eval()
    return Loaded(lm.to("cuda") if torch.cuda.is_available() else lm, tokenizer, get_template(cfg.template))


def prepared_rows(cfg: SftConfig, loaded: Loaded, split: str) -> Dataset:
    """The tokenized rows of `split`, encoded with the model's own tokenizer and template."""
    from sftkit.data import prepare_data

    data = prepare_data(cfg.model_copy(update={"template": loaded.template.name}), loaded.tokenizer)
    rows = data.eval if split == "eval" else data.train
    if rows is None or len(rows) == 0:
        raise SftkitError(f"--split {split}: no rows to evaluate")
    return rows


def masked_loss(model: Any, rows: Dataset, pad_id: int | None, batch_tokens: int,
                chunk_size: int = LOSS_CHUNK_TOKENS) -> dict[str, LossTotals]:
    """Summed cross-entropy of the trained tokens of each dataset in `rows`.

    Rows of one dataset are batched by length (at most `batch_tokens` tokens of padded batch); the
    output head runs only on trained positions, `chunk_size` at a time (`sftkit.loss`, the loss
    training uses), so no full-vocabulary logits of a batch are ever held.

    Returns:
        Dataset name -> totals.
    """
    import torch

    from sftkit.loss import causal_lm_of

    lm = causal_lm_of(model)  # PEFT injects LoRA layers in place: the inner model includes them
    columns = rows.select_columns(["input_ids", "labels", "dataset"]).to_dict()
    totals: dict[str, LossTotals] = defaultdict(LossTotals)
    with torch.inference_mode():
        for batch in _length_batches(columns["dataset"], [len(ids) for ids in columns["input_ids"]],
                                     batch_tokens):
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


def _batch_loss(lm: Any, ids: list[list[int]], labels: list[list[int]], pad_id: int,
                chunk_size: int) -> LossTotals:
    """Summed cross-entropy and trained-token count of one right-padded batch."""
    import torch

    from sftkit.loss import chunked_cross_entropy

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
    return {"model": model, "template": template, "split": split, **overall.as_dict(),
            "datasets": {name: part.as_dict() for name, part in sorted(totals.items())}}


def loss_table(results: dict[str, Any]) -> str:
    """A plain-text table: one line per dataset, then the overall line."""
    lines = [f"{results['model']} on {results['split']} (template {results['template']})",
             f"{'dataset':<28} {'rows':>7} {'tokens':>10} {'loss':>9} {'perplexity':>11}"]
    parts = [*results["datasets"].items(), ("all", results)]
    for name, part in parts:
        lines.append(f"{name:<28} {part['rows']:>7} {part['tokens']:>10} {part['loss']:>9.4f} "
                     f"{part['perplexity']:>11.3f}")
    return "\n".join(lines)


def default_eval_path(model: str, split: str) -> Path:
    """Inside an sftkit run or merged directory; else in the working directory, named after the model."""
    if (Path(model) / RUN_CONFIG).is_file():
        return Path(model) / f"eval_{split}.json"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name or model).strip("_") or "model"
    return Path(f"eval_{slug}_{split}.json")


# ---------------------------------------------------------------------------- sftkit predict

def predict(model: str, cfg: SftConfig, out: str | Path, n: int = 20, split: str = "eval",
            compare: str | None = None, max_new_tokens: int = 128, temperature: float = 0.0, seed: int = 0,
            batch_size: int = GENERATION_BATCH_SIZE) -> dict[str, Any]:
    """Answers the first `n` prompts of a split and scores the answers against the references.

    A prompt is a conversation up to its last assistant-side reply; that reply is the reference.
    Writes `out` (JSONL: dataset, index, prompt, reference, generation, scores, and the same for
    `compare`) and `<out stem>.metrics.json` (corpus BLEU-4 and mean ROUGE-1/2/L F1, 0-100).

    Args:
        model: a run directory, a merged model directory, or a base model path or hub id.
        cfg: the config whose datasets and split give the prompts.
        out: the JSONL file to write.
        n: number of prompts (the first ones of the split).
        split: "eval" or "train".
        compare: a second model answering the same prompts (`generation_compare`).
        max_new_tokens: most tokens per answer.
        temperature: 0 for greedy decoding, else sampling at this temperature.
        seed: sampling seed.
        batch_size: prompts generated together (left padded).

    Returns:
        The corpus-level metrics as written to the metrics file.

    Raises:
        SftkitError: bad split or n, or a model or data problem.
    """
    _check_generation_args(n, max_new_tokens, temperature, batch_size)
    prompts = load_prompts(data_config(cfg, split, None), split, n)
    settings = GenerationSettings(max_new_tokens, temperature, seed, batch_size)
    answers = {"generation": answer(model, cfg, prompts, settings)}
    if compare is not None:
        answers["generation_compare"] = answer(compare, cfg, prompts, settings)
    rows, metrics = score_predictions(prompts, answers, cfg)
    metrics.update(model=model, compare=compare, split=split, max_new_tokens=max_new_tokens,
                   temperature=temperature, seed=seed)
    write_predictions(Path(out), rows, metrics)
    print(metrics_table(metrics))
    return metrics


def _check_generation_args(n: int, max_new_tokens: int, temperature: float, batch_size: int) -> None:
    problems = ["-n: answer at least one prompt" if n < 1 else "",
                "--max-new-tokens: must be at least 1" if max_new_tokens < 1 else "",
                "--temperature: must be 0 (greedy) or positive" if temperature < 0 else "",
                "--batch-size: must be at least 1" if batch_size < 1 else ""]
    if any(problems):
        raise SftkitError(*problems)


def load_prompts(cfg: SftConfig, split: str, n: int) -> list[Prompt]:
    """The first `n` conversations of the split, each cut before its last assistant-side reply."""
    from sftkit.data.loader import load_conversations
    from sftkit.data.template import get_template

    conversations = load_conversations(cfg)
    rows = conversations.eval if split == "eval" else conversations.train
    assert rows is not None  # data_config checked that an eval set exists
    template = get_template(cfg.template)
    return [to_prompt(row, template) for row in rows.select(range(min(n, len(rows))))]


def to_prompt(row: dict[str, Any], template: Template) -> Prompt:
    """Splits a normalized conversation into its prompt and the last reply's trained text (no end token)."""
    messages = row["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] in ("assistant", "function_call"))
    segments = template.segments(messages[:last + 1], row["tools"])
    reply_turn = segments[-1].turn
    reference = "".join(s.text for s in segments if s.turn == reply_turn and s.trained and s.content)
    return Prompt(row["dataset"], row["index"], messages[:last], row["tools"], reference)


def answer(model: str, cfg: SftConfig, prompts: list[Prompt], settings: GenerationSettings) -> list[str]:
    """Loads `model`, generates a reply to every prompt with its own template, then frees the model."""
    import gc

    loaded = load_model(model, cfg)
    ids, header_tails = encode_prompts(loaded.tokenizer, loaded.template, prompts)
    replies = generate(loaded.model, loaded.tokenizer, ids, loaded.template.stop_token_ids(loaded.tokenizer),
                       settings)
    del loaded
    gc.collect()
    return [reply.removeprefix(tail) for reply, tail in zip(replies, header_tails)]


def encode_prompts(tokenizer: Any, template: Template, prompts: list[Prompt]) -> tuple[list[list[int]], list[str]]:
    """Generation ids of each prompt, and the header text each leaves for the model to generate.

    ERNIE's "Assistant: " keeps its space out of the prompt ids (it merges with the reply's first
    token); the model generates it, and it is no part of the reply.
    """
    from sftkit.chat import _header_tail
    from sftkit.data.masking import encode_prompt

    ids = [encode_prompt(tokenizer, template, p.messages, p.tools) for p in prompts]
    tails = [_header_tail(tokenizer, template, p.messages, p.tools, i) for p, i in zip(prompts, ids)]
    return ids, tails


def generate(model: Any, tokenizer: Any, prompts: list[list[int]], stop_ids: list[int],
             settings: GenerationSettings) -> list[str]:
    """Replies to token-id prompts, batched with left padding, each stopping at any of `stop_ids`.

    Sampling (temperature > 0) is seeded with `settings.seed`; greedy decoding touches no random
    state, so calling this during training leaves the run's randomness alone. The model's train/eval
    mode is restored afterwards.

    Returns:
        The decoded replies (special tokens, the stop token included, removed), in prompt order.
    """
    import torch
    from transformers import GenerationConfig

    sampling = ({"do_sample": True, "temperature": settings.temperature, "top_p": 1.0}
                if settings.temperature > 0 else {"do_sample": False})
    config = GenerationConfig(max_new_tokens=settings.max_new_tokens, eos_token_id=stop_ids,
                              pad_token_id=tokenizer.pad_token_id, **sampling)
    if settings.temperature > 0:
        torch.manual_seed(settings.seed)
    was_training = model.training
    model.eval()
    try:
        replies: list[str] = []
        for start in range(0, len(prompts), settings.batch_size):
            replies += _generate_batch(model, tokenizer, prompts[start:start + settings.batch_size], config)
        return replies
    finally:
        model.train(was_training)


def _generate_batch(model: Any, tokenizer: Any, prompts: list[list[int]], config: Any) -> list[str]:
    import torch

    batch = tokenizer.pad({"input_ids": prompts}, padding_side="left", return_tensors="pt").to(model.device)
    with torch.inference_mode():
        output = model.generate(**batch, generation_config=config)
    new_tokens = output[:, batch["input_ids"].shape[1]:]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def score_predictions(prompts: list[Prompt], answers: dict[str, list[str]],
                      cfg: SftConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Output rows with per-row scores, and the corpus-level metrics of every generation column."""
    from sftkit.data.template import get_template

    template = get_template(cfg.template)
    references = [p.reference for p in prompts]
    rows = [{"dataset": p.dataset, "index": p.index, "prompt": template.generation_prompt(p.messages, p.tools),
             "reference": p.reference} for p in prompts]
    metrics: dict[str, Any] = {"n": len(prompts)}
    for column, replies in answers.items():
        per_row, corpus = score(replies, references)
        for row, reply, scores in zip(rows, replies, per_row):
            row[column] = reply
            row[column.replace("generation", "scores")] = scores
        metrics[column] = corpus
    metrics["tokenize"] = bleu_tokenize(references)
    return rows, metrics


def score(replies: list[str], references: list[str]) -> tuple[list[dict[str, float]], dict[str, float]]:
    """BLEU-4 (sacrebleu) and ROUGE-1/2/L F1 (rouge-score), per row and over the corpus, 0-100.

    Both metrics count the same tokens (sacrebleu's 13a tokenizer, or its Chinese one when the
    references hold Chinese characters, which rouge-score's own tokenizer would drop). The corpus
    BLEU is sacrebleu's corpus score; the corpus ROUGE is the mean of the row F1 scores.
    """
    from rouge_score.rouge_scorer import RougeScorer
    from sacrebleu.metrics import BLEU

    tokenize = bleu_tokenize(references)
    corpus_bleu = BLEU(tokenize=tokenize)
    row_bleu = BLEU(tokenize=tokenize, effective_order=True)  # short replies: no zero from a missing 4-gram
    rouge = RougeScorer(list(ROUGE_TYPES.values()), tokenizer=_RougeTokens(corpus_bleu.tokenizer))
    rows = []
    for reply, reference in zip(replies, references):
        scores = {"bleu_4": row_bleu.sentence_score(reply, [reference]).score}
        rouges = rouge.score(reference, reply)
        scores.update({name: 100.0 * rouges[kind].fmeasure for name, kind in ROUGE_TYPES.items()})
        rows.append(scores)
    corpus = {"bleu_4": corpus_bleu.corpus_score(replies, [references]).score}
    corpus.update({name: sum(row[name] for row in rows) / len(rows) for name in ROUGE_TYPES})
    return rows, corpus


def bleu_tokenize(references: list[str]) -> str:
    """sacrebleu's tokenizer name for these references: zh when they hold Chinese characters."""
    return "zh" if any(CJK.search(text) for text in references) else "13a"


class _RougeTokens:
    """A rouge-score tokenizer that splits text like sacrebleu does (case-insensitive)."""

    def __init__(self, tokenize: Any) -> None:
        self._tokenize = tokenize

    def tokenize(self, text: str) -> list[str]:
        return self._tokenize(text.lower()).split()


def write_predictions(out: Path, rows: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
    """Writes the JSONL rows and the metrics file beside it, each replaced only once complete."""
    write_text(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    write_json(metrics_path(out), metrics)
    print(f"wrote {len(rows)} predictions to {out} and metrics to {metrics_path(out)}")


def metrics_path(out: Path) -> Path:
    """`preds.jsonl` -> `preds.metrics.json`."""
    return out.with_name(f"{out.stem}.metrics.json")


def metrics_table(metrics: dict[str, Any]) -> str:
    """Corpus metrics of each generation column, one line each."""
    columns = [c for c in ("generation", "generation_compare") if c in metrics]
    lines = [f"{'':<22} {'BLEU-4':>8} {'ROUGE-1':>8} {'ROUGE-2':>8} {'ROUGE-L':>8}   ({metrics['n']} prompts)"]
    for column in columns:
        name = metrics["model"] if column == "generation" else metrics["compare"]
        values = metrics[column]
        lines.append(f"{_shorten(name, 22):<22} {values['bleu_4']:>8.2f} {values['rouge_1']:>8.2f} "
                     f"{values['rouge_2']:>8.2f} {values['rouge_l']:>8.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- overfitting

def overfitting_signs(log_history: list[dict[str, Any]]) -> list[str]:
    """Signs of overfitting in a trainer's `state.log_history`, one line each (empty: none seen).

    Two signs: the eval loss rose after its best while the train loss kept falling, and the eval
    loss at its best step sits more than 10% above the train loss there.
    """
    evals = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    trains = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    if not evals or not trains:
        return []
    best_step, best = min(evals, key=lambda pair: pair[1])
    signs = [_rising_sign(evals, trains, best_step, best), _gap_sign(trains, best_step, best)]
    return [sign for sign in signs if sign]


def _rising_sign(evals: list[tuple[int, float]], trains: list[tuple[int, float]], best_step: int,
                 best: float) -> str | None:
    last_step, last = evals[-1]
    train_at_best, train_at_last = _train_loss_at(trains, best_step), _train_loss_at(trains, last_step)
    if last_step <= best_step or last <= best * (1 + RISE_TOLERANCE) or train_at_last >= train_at_best:
        return None
    return (f"eval loss rose from {best:.4f} (step {best_step}) to {last:.4f} (step {last_step}) while train "
            f"loss fell from {train_at_best:.4f} to {train_at_last:.4f}: the model is overfitting; keep the best "
            "checkpoint (load_best_model_at_end or early_stopping_steps), train fewer epochs or add data")


def _gap_sign(trains: list[tuple[int, float]], best_step: int, best: float) -> str | None:
    train = _train_loss_at(trains, best_step)
    if best <= train * (1 + OVERFIT_GAP):
        return None
    gap = f"{100 * (best / train - 1):.0f}% above" if train > 0 else "above"
    return (f"at the best step ({best_step}) eval loss {best:.4f} is {gap} train loss {train:.4f}: the model "
            "fits its training rows much better than unseen ones; add data, lower num_train_epochs or "
            "learning_rate, or raise lora_dropout")


def _train_loss_at(trains: list[tuple[int, float]], step: int) -> float:
    """The last train loss logged at or before `step` (the first one logged if none was yet)."""
    before = [loss for logged, loss in trains if logged <= step]
    return before[-1] if before else trains[0][1]


# ---------------------------------------------------------------------------- files

def write_json(path: Path, data: dict[str, Any]) -> None:
    """Writes `data` as indented JSON (NaN/inf as null), replacing `path` only once complete."""
    write_text(path, json.dumps(_finite(data), indent=2, ensure_ascii=False) + "\n")


def write_text(path: Path, text: str) -> None:
    """Writes to a temporary file beside `path`, then renames it: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _exp(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]
