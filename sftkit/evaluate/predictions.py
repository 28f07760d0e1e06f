"""`sftkit predict`: generated answers to a split's prompts, scored with BLEU-4 and ROUGE-1/2/L."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.atomic import write_json, write_lines
from sftkit.data.model_source import resolve_model
from sftkit.data.prompts import Prompt, load_prompts
from sftkit.data.tokenizer import config_template
from sftkit.errors import SftkitError, gather
from sftkit.evaluate.judge import Judge, judge_predictions
from sftkit.evaluate.perplexity import data_config, load_model
from sftkit.evaluate.ratings import html_path, key_path, write_sheet
from sftkit.model import GenerationSettings, generate_replies
from sftkit.run_dir import check_new_output

if TYPE_CHECKING:
    from sftkit.config import SftConfig

ROUGE_TYPES = {"rouge_1": "rouge1", "rouge_2": "rouge2", "rouge_l": "rougeL"}
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


# ---------------------------------------------------------------------------- sftkit predict


def predict(
    model: str,
    cfg: SftConfig,
    out: str | Path,
    n: int = 20,
    split: str = "eval",
    compare: str | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 16,
    overwrite: bool = False,
    sheet: Path | None = None,
    judge: Judge | None = None,
) -> dict[str, Any]:
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
        overwrite: replace `out` (and its metrics file) when they exist.
        sheet: with `compare`, a blind rating sheet (CSV, HTML page and key file; `sftkit eval --ratings`).
        judge: grade the answers (and, with `compare`, prefer one) with an LLM judge; `<out stem>.judge.json`.

    Returns:
        The corpus-level metrics as written to the metrics file.

    Raises:
        SftkitError: bad split or n, or a model or data problem.
    """
    settings = GenerationSettings(max_new_tokens, temperature, seed=seed, batch_size=batch_size)
    problems = (
        (["-n: answer at least one prompt"] if n < 1 else [])
        + settings.problems()
        + (["--sheet: a rating sheet compares two models; add --compare MODEL"] if sheet and compare is None else [])
    )
    if problems:
        raise SftkitError(*problems)
    outputs = [
        Path(out),
        metrics_path(Path(out)),
        *([judge_path(Path(out))] if judge else []),
        *([sheet, html_path(sheet), key_path(sheet)] if sheet else []),
    ]
    gather(
        *[lambda path=path: check_new_output(path, overwrite) for path in outputs],
        *[lambda name=name: resolve_model(name) for name in (model, compare) if name is not None],
    )
    template = config_template(cfg)
    prompts = load_prompts(data_config(cfg, split, None), split, n, template)
    answers = {"generation": answer(model, cfg, prompts, settings)}
    if compare is not None:
        answers["generation_compare"] = answer(compare, cfg, prompts, settings)
    rows, metrics = score_predictions(prompts, answers, cfg, template)
    metrics.update(
        model=model, compare=compare, split=split, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed
    )
    write_predictions(Path(out), rows, metrics)
    print(metrics_table(metrics))
    if sheet is not None and compare is not None:
        write_sheet(
            sheet,
            [plain_conversation(p.messages) for p in prompts],
            {model: answers["generation"], compare: answers["generation_compare"]},
            seed,
        )
        print(
            f"wrote the blind rating sheet {sheet} (and {html_path(sheet)}); its key is {key_path(sheet)}: keep it "
            "from the raters"
        )
    if judge is not None:
        names = {"generation": model, **({"generation_compare": compare} if compare is not None else {})}
        verdicts = judge_predictions(judge, [plain_conversation(p.messages) for p in prompts], rows, names)
        write_json(judge_path(Path(out)), verdicts)
        print(
            f"judge {judge.model}: mean grade (1-10) "
            + ", ".join(
                f"{name} {grade:.2f}" if grade is not None else f"{name} -"
                for name, grade in verdicts["grades"].items()
            )
            + (f"; preferred {verdicts['preference']}" if "preference" in verdicts else "")
            + f"; wrote {judge_path(Path(out))}"
        )
    return metrics


def plain_conversation(messages: list[dict[str, str]]) -> str:
    """A prompt as a person (or a judge) reads it: the question alone, or the turns with their roles, no
    control tokens."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].replace('_', ' ').capitalize()}: {m['content']}" for m in messages)


def judge_path(out: Path) -> Path:
    """`preds.jsonl` -> `preds.judge.json`."""
    return out.with_name(f"{out.stem}.judge.json")


def answer(model: str, cfg: SftConfig, prompts: list[Prompt], settings: GenerationSettings) -> list[str]:
    """Loads `model`, generates a reply to every prompt with its own template, then frees the model."""
    import gc

    import torch

    loaded = load_model(model, cfg)
    if settings.temperature > 0:
        torch.manual_seed(settings.seed)
    replies = generate_replies(loaded.model, loaded.tokenizer, loaded.template, prompts, settings)
    del loaded
    gc.collect()
    return replies


def score_predictions(
    prompts: list[Prompt], answers: dict[str, list[str]], cfg: SftConfig, template: Any = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Output rows with per-row scores, and the corpus-level metrics of every generation column."""
    template = template or config_template(cfg)
    references = [p.reference for p in prompts]
    rows = [
        {
            "dataset": p.dataset,
            "index": p.index,
            "prompt": template.generation_prompt(p.messages, p.tools),
            "reference": p.reference,
        }
        for p in prompts
    ]
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
    write_lines(out, (json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
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
        lines.append(
            f"{_shorten(name, 22):<22} {values['bleu_4']:>8.2f} {values['rouge_1']:>8.2f} "
            f"{values['rouge_2']:>8.2f} {values['rouge_l']:>8.2f}"
        )
    return "\n".join(lines)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3) :]
