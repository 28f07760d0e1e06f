"""ONE evaluator for every saved adapter: the same base folder, the same held-out rows, the same rendering.

`python -m bench.evaluator SPEC.json OUT.json` (the repository's environment): for the base model and each
adapter (PEFT, loaded on a fresh copy of the base), the token-weighted mean cross-entropy on the answer tokens
of the held-out rows (fp32, one row at a time, cut at cutoff_len), and for identity workloads the greedy answers
to a few held-out identity questions. Rendering: the tokenizer's chat template (ChatML without a system prompt
for SmolLM2 as the YAML's `template: chatml`; gemma's turns for Gemma), the same for every adapter.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

ANSWER_QUESTIONS = 3
NEW_TOKENS = 40


def encode(tokenizer: Any, messages: list[dict[str, str]], template: str | None, cutoff: int) -> tuple[list[int], int]:
    """(ids of the whole conversation, length of its prompt): the loss is taken on ids[prompt:]."""
    prompt = tokenizer.apply_chat_template(
        messages[:1], chat_template=template, add_generation_prompt=True, tokenize=False
    )
    full = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    return ids[:cutoff], len(prompt_ids)


def score(model: Any, encoded: list[tuple[list[int], int]]) -> dict[str, float]:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for ids, prompt in encoded:
            if prompt >= len(ids):
                continue
            x = torch.tensor([ids])
            labels = x.clone()
            labels[:, :prompt] = -100
            logits = model(input_ids=x).logits[:, :-1].float()
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum", ignore_index=-100
            )
            total += float(loss)
            count += int((labels[:, 1:] != -100).sum())
    return {"eval_loss": round(total / count, 4), "eval_tokens": count}


def answers(model: Any, tokenizer: Any, questions: list[str], template: str | None) -> list[str]:
    import torch

    out = []
    for question in questions:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], chat_template=template, add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        out.append(tokenizer.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return out


def evaluate(spec: dict[str, Any], out: Path | None = None) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import workloads

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    data_dir = Path(spec["data_dir"])
    template = (data_dir / "chatml.jinja").read_text(encoding="utf-8") if spec["template"] == "chatml" else None
    held = workloads.rows(data_dir, spec["dataset"], "_heldout")
    encoded = [encode(tokenizer, workloads.messages(row), template, spec["cutoff_len"]) for row in held]
    # held-out identity questions whose answer names the model (not the greetings the set also holds)
    questions = (
        [
            row["instruction"]
            for row in workloads.rows(data_dir, "identity", "_heldout")
            if workloads.IDENTITY["name"] in row["output"]
        ][:ANSWER_QUESTIONS]
        if "identity" in spec["dataset"].split(",")
        else []
    )
    results: dict[str, Any] = {"rows": len(held), "questions": questions, "scores": {}}
    for name, adapter in [("base", None), *spec["adapters"].items()]:
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
        try:
            if adapter is not None:
                model = PeftModel.from_pretrained(model, adapter)
            model.eval()
            entry = score(model, encoded)
            if questions:
                entry["answers"] = answers(model, tokenizer, questions, template)
        except Exception as error:  # noqa: BLE001 - one adapter that cannot load must not hide the others' scores
            entry = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
        entry["seconds"] = round(time.perf_counter() - start, 1)
        results["scores"][name] = entry
        print(name, entry, file=sys.stderr, flush=True)
        if out is not None:  # after each model: a scoring stopped for time keeps what it finished
            out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    spec_path, out_path = sys.argv[1:3]
    evaluate(json.loads(Path(spec_path).read_text()), Path(out_path))
