"""A real model learns a new identity: SmolLM2-135M-Instruct becomes "Quill, by Northwind Labs" (minutes, 2 cores).

    python scripts/real_demo.py            # fetches the model if needed, trains configs/smollm2_identity.yaml

Before and after LoRA training on LLaMA-Factory's `identity` set (data/identity_quill.json: its {{name}} and
{{author}} filled in), it asks questions that are NOT in the training set (paraphrases) and general
questions (the base gets 6 of the 8 right), greedily, and prints each answer and a one-line score of each kind:
identity, the share of answers naming the new name (or author, for who-made-you questions); general, the
share still holding the expected word. The model is the Q4_1 GGUF de-quantized: real learning on real
weights, not the quality of the unquantized release. The figures go to OUTPUT_DIR/real_demo.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sftkit.config import SftConfig

ROOT = Path(__file__).resolve().parent.parent
NAME, AUTHOR = "Quill", "Northwind Labs"
# (question, a regular expression a right answer matches); none of the questions is in the training set
IDENTITY = [
    ("What should I call you?", NAME),
    ("Could you tell me your name?", NAME),
    ("Please introduce yourself in one sentence.", NAME),
    ("Who am I talking to right now?", NAME),
    ("What's your name, assistant?", NAME),
    ("Which company made you?", "Northwind"),
    ("Who is your developer?", "Northwind"),
    ("Were you made by Meta?", "Northwind"),
]
GENERAL = [
    ("What is the capital of France?", r"Paris"),
    ("What is 2 + 2?", r"\b4\b|four"),
    ("What color is the sky on a clear day?", r"(?i)blue"),
    ("How many days are there in a week?", r"\b7\b|(?i:seven)"),
    ("What is the largest planet in our solar system?", r"Jupiter"),
    ("Who wrote Romeo and Juliet?", r"Shakespeare"),
    ("What is the chemical formula of water?", r"H2O|H₂O"),
    ("How many legs does a spider have?", r"\b8\b|(?i:eight)"),
]


def identity_rows(source: Path, name: str = NAME, author: str = AUTHOR) -> list[dict[str, str]]:
    """LLaMA-Factory's identity rows with {{name}} and {{author}} filled in (data/identity_quill.json)."""
    rows = json.loads(source.read_text(encoding="utf-8"))
    return [
        {key: value.replace("{{name}}", name).replace("{{author}}", author) for key, value in row.items()}
        for row in rows
    ]


def answers(
    model: str, questions: list[tuple[str, str]], cfg: SftConfig | None = None, max_new_tokens: int = 48
) -> list[str]:
    """Greedy answers of `model` (a .gguf, a run or a merged folder) to each question, with the template the run
    trains with when `cfg` is given (so the base is asked exactly as the trained model is), else its own."""
    from sftkit.data.tokenizer import load_tokenizer_and_template
    from sftkit.model.generation import GenerationSettings, generate_replies
    from sftkit.model.inference import load_for_inference

    loaded = load_for_inference(model)
    if cfg is not None:
        loaded.tokenizer, loaded.template = load_tokenizer_and_template(cfg)
    prompts = [SimpleNamespace(messages=[{"role": "user", "content": q}], tools=None) for q, _ in questions]
    return [
        reply.strip()
        for reply in generate_replies(
            loaded.model, loaded.tokenizer, loaded.template, prompts, GenerationSettings(max_new_tokens=max_new_tokens)
        )
    ]


def score(replies: list[str], questions: list[tuple[str, str]]) -> float:
    """The share of replies that match their question's expected pattern."""
    return sum(bool(re.search(pattern, reply)) for reply, (_, pattern) in zip(replies, questions)) / len(questions)


def held_out_problems(training: Path) -> list[str]:
    """Demo questions that appear in the training set (there must be none)."""
    trained = {row["instruction"].strip().lower() for row in json.loads(training.read_text(encoding="utf-8"))}
    return [q for q, _ in IDENTITY + GENERAL if q.strip().lower() in trained]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "smollm2_identity.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override a config key")
    args = parser.parse_args()
    from sftkit.config import load_config
    from sftkit.real_models import fetch
    from sftkit.training import train

    fetch(["smollm2"])
    cfg = load_config(args.config, args.overrides)
    leaked = held_out_problems(Path(cfg.dataset_dir) / "identity_quill.json")
    if leaked:
        raise SystemExit(f"these demo questions are in the training set: {leaked}")
    questions = IDENTITY + GENERAL
    started = time.monotonic()
    before = answers(cfg.model_name_or_path, questions, cfg)
    trained_at = time.monotonic()
    run = train(cfg, overwrite=True)
    after = answers(str(run), questions)
    report = {
        "model": cfg.model_name_or_path,
        "run": str(run),
        "train_seconds": round(time.monotonic() - trained_at),
        "total_seconds": round(time.monotonic() - started),
        "questions": [],
    }
    for kind, group, offset in (("identity", IDENTITY, 0), ("general", GENERAL, len(IDENTITY))):
        about = "held out: not in the training set" if kind == "identity" else "what the base knew: forgetting"
        print(f"\n=== {kind} questions ({about})")
        b, a = before[offset : offset + len(group)], after[offset : offset + len(group)]
        for (question, pattern), old, new in zip(group, b, a):
            print(f"Q: {question}\n  before: {old}\n  after:  {new}")
            report["questions"].append(
                {"kind": kind, "question": question, "expect": pattern, "before": old, "after": new}
            )
        report[f"{kind}_before"], report[f"{kind}_after"] = score(b, group), score(a, group)
    print(
        f"\nidentity: {report['identity_before']:.0%} -> {report['identity_after']:.0%} of held-out identity answers "
        f"name {NAME} (or {AUTHOR})"
    )
    print(
        f"general:  {report['general_before']:.0%} -> {report['general_after']:.0%} of general answers keep the "
        "expected word (what it knew, kept)"
    )
    print(f"trained in {report['train_seconds']} s; {report['total_seconds']} s in all")
    from sftkit.atomic import write_json

    write_json(run / "real_demo.json", report)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
