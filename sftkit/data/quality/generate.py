"""`sftkit data generate`: self-instruct rows from seed examples through any OpenAI-compatible endpoint.

As in the Self-Instruct paper: a few seed examples go into each request, the answer must be one JSON object
with instruction / input / output, and a new instruction whose ROUGE-L F-score against any instruction
already in the pool (seeds and generated) exceeds the threshold (0.7 there) is dropped. Rows are appended to
the output JSONL one line at a time, so an interrupted run resumes from its file; the registry entry is
written beside it.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftkit.atomic import write_json
from sftkit.data.quality.endpoint import DEFAULT_TIMEOUT_S, ask_json, make_client
from sftkit.data.registry import get_spec, read_rows
from sftkit.data.spec import REGISTRY_FILE
from sftkit.errors import DataError, SftkitError
from sftkit.run_dir import check_new_output

FIELDS = ("instruction", "input", "output")
PROMPT = """You write training data for an instruction-following assistant.

Here are example tasks:
{examples}

Write ONE new task that differs from all of them in topic and wording, with:
1. a clear, specific instruction,
2. an optional input that gives context (an empty string when none is needed),
3. a helpful, detailed output that completes the task.
Answer with one JSON object only, with the keys "instruction", "input" and "output"."""


@dataclass
class GenerateSettings:
    """How `generate` asks: the endpoint, the sampling and the filters."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    rows: int = 100
    examples_per_prompt: int = 3
    temperature: float = 1.0
    rouge_threshold: float = 0.7
    attempts: int = 3  # answers asked for per row before counting it failed
    backoff: float = 1.0  # seconds before the second answer; doubles after each
    max_retries: int = 3  # the client's own retries of transport errors (connection, 429, 5xx)
    timeout: float = DEFAULT_TIMEOUT_S  # seconds one request may take (--timeout)
    seed: int = 0


@dataclass
class GenerateResult:
    """What one run did: rows in the file now, rows added, and what was rejected."""

    rows: int
    added: int
    resumed_from: int
    malformed: int = 0
    near_duplicates: int = 0
    problems: list[str] = field(default_factory=list)

    def summary_line(self, out: Path) -> str:
        resumed = f", resumed from {self.resumed_from}" if self.resumed_from else ""
        return (
            f"{out}: {self.rows} rows ({self.added} added{resumed}); rejected: {self.malformed} malformed "
            f"answers, {self.near_duplicates} near duplicates of the pool (ROUGE-L)"
        )


def read_seeds(path: Path) -> list[dict[str, str]]:
    """Alpaca rows (instruction, input, output) of a .json / .jsonl / .csv / .parquet file, read by the registry.

    Raises:
        DataError: the file cannot be read, or a row lacks an instruction or output.
    """
    spec = get_spec({"seeds": {"file_name": path.name}}, "seeds", path.parent)
    seeds = []
    for row in read_rows(spec):
        data = row.data if isinstance(row.data, dict) else {}
        if not all(isinstance(data.get(key), str) and data[key].strip() for key in ("instruction", "output")):
            raise DataError(f"{path}: row {row.row} needs text in instruction and output (Alpaca rows)")
        seeds.append({key: str(data.get(key) or "") for key in FIELDS})
    if not seeds:
        raise DataError(f"{path}: no seed rows")
    return seeds


def generate(
    seeds: list[dict[str, str]], out: Path, settings: GenerateSettings, name: str | None = None
) -> GenerateResult:
    """Appends generated rows to `out` (JSONL) until it holds `settings.rows`; writes the registry entry beside it.

    Raises:
        SftkitError: the endpoint cannot be reached, or too many answers in a row are unusable.
    """
    registry_entry(out, name or out.stem)  # refused before any request
    existing = resume_rows(out)
    result = GenerateResult(rows=len(existing), added=0, resumed_from=len(existing))
    scorer = _rouge()
    pool = [row["instruction"] for row in [*seeds, *existing]]
    client = make_client(
        settings.base_url, settings.api_key_env, max_retries=settings.max_retries, timeout=settings.timeout
    )
    rng = random.Random(f"{settings.seed}:{len(existing)}")  # a resumed run does not replay the same prompts
    failures_in_a_row = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as f:
        if existing and not _ends_a_line(out):
            f.write("\n")  # a complete last row without its newline: the next row starts a line of its own
        while result.rows < settings.rows:
            examples = rng.sample(seeds, min(settings.examples_per_prompt, len(seeds)))
            row, problems = ask_json(
                client,
                settings.model,
                _prompt(examples),
                _valid_row,
                settings.temperature,
                settings.attempts,
                settings.backoff,
            )
            result.malformed += len(problems)
            result.problems = (result.problems + problems)[-5:]
            if row is None:
                failures_in_a_row += 1
                if failures_in_a_row >= 3:
                    raise SftkitError(
                        f"{settings.base_url}: {failures_in_a_row * settings.attempts} answers in a row "
                        f"were not a usable row (last: {problems[-1]}); {result.rows} rows are in {out}, "
                        "run again to resume"
                    )
                continue
            failures_in_a_row = 0
            row = {key: str(row.get(key) or "").strip() for key in FIELDS}
            if _near_duplicate(scorer, row["instruction"], pool, settings.rouge_threshold):
                result.near_duplicates += 1
                continue
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())  # a killed run keeps every row written before it
            pool.append(row["instruction"])
            result.rows += 1
            result.added += 1
    write_registry_entry(out, name or out.stem)
    return result


def check_out(seeds: Path, out: Path, name: str) -> None:
    """Before any request: `out` can be written, is not the seeds file, holds nothing but rows an earlier run
    wrote (it is appended to, and a cut-short last line removed), and the registry beside it does not give
    `name` to another file.

    Raises:
        SftkitError: naming --out (or the registry entry) and the fix.
    """
    check_new_output(out, True, inputs=(seeds,))
    resume_rows(out, dry_run=True)
    registry_entry(out, name)


def resume_rows(out: Path, dry_run: bool = False) -> list[dict[str, str]]:
    """The rows an earlier run wrote to `out`; a last line a killed run cut short is removed from the file
    (not with `dry_run`).

    Raises:
        DataError: a line that is not a row `generate` writes: the file is someone else's, left as it is.
    """
    if not out.is_file():
        return []
    rows, good_bytes = [], 0
    with out.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            row = _own_row(raw)
            if row is None and not raw.endswith(b"\n") and raw.lstrip().startswith(b'{"instruction"'):
                break  # the last row, cut short by a killed run
            if row is None:
                raise DataError(
                    f"--out {out}: line {number} is not a row `sftkit data generate` writes, so the file "
                    "is not ours to append to or truncate; choose a new --out"
                )
            rows.append(row)
            good_bytes += len(raw)
    if good_bytes != out.stat().st_size and not dry_run:
        with out.open("r+b") as f:
            f.truncate(good_bytes)
    return rows


def _own_row(raw: bytes) -> dict[str, str] | None:
    """The row of a JSONL line as `generate` writes it (exactly instruction, input and output), else None."""
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict) or set(value) != set(FIELDS):
        return None
    if _valid_row(value) is not None:
        return None
    return {key: value[key] for key in FIELDS}


def _ends_a_line(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def registry_entry(out: Path, name: str) -> dict[str, Any]:
    """The registry beside `out` (empty when there is none), checked to leave `name` to `out`.

    Raises:
        DataError: the registry is not a JSON object, or `name` names another file there.
    """
    registry_path = out.parent / REGISTRY_FILE
    registry: dict[str, Any] = {}
    if registry_path.is_file():
        try:
            registry = json.loads(registry_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"{registry_path}: not valid JSON ({exc}); fix or remove it") from None
        if not isinstance(registry, dict):
            raise DataError(f"{registry_path}: expected a JSON object; fix or remove it")
    entry = registry.get(name)
    if entry is not None and (not isinstance(entry, dict) or entry.get("file_name") != out.name):
        raise DataError(
            f"{registry_path}: the entry {name!r} names another file "
            f"({entry.get('file_name') if isinstance(entry, dict) else entry}), and configs naming it "
            "would train on the generated rows; pass another --name"
        )
    return registry


def write_registry_entry(out: Path, name: str) -> None:
    """Adds `name` -> `out` to `dataset_info.json` beside it, keeping the other entries (and its own, if there)."""
    registry = registry_entry(out, name)
    if name not in registry:
        registry[name] = {"file_name": out.name}
        write_json(out.parent / REGISTRY_FILE, registry)


def _prompt(examples: list[dict[str, str]]) -> str:
    return PROMPT.format(examples="\n".join(json.dumps(e, ensure_ascii=False) for e in examples))


def _valid_row(value: dict[str, Any]) -> str | None:
    for key in ("instruction", "output"):
        if not isinstance(value.get(key), str) or not value[key].strip():
            return f"{key}: expected a non-empty string"
    if not isinstance(value.get("input", ""), str):
        return "input: expected a string"
    return None


def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def _near_duplicate(scorer: Any, instruction: str, pool: list[str], threshold: float) -> bool:
    return any(scorer.score(other, instruction)["rougeL"].fmeasure > threshold for other in pool)
