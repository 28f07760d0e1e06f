"""Supervised fine-tuning from scratch: the whole mechanism in plain PyTorch, readable top to bottom.

    python scripts/sft_from_scratch.py [MODEL_DIR]      # default models/tiny-ernie (built if missing)

What `sftkit train` does, without a trainer, a config or a library of ours in the way:

  1. render a conversation with the chat template (ChatML here), marking the text the model must learn
     to write: the assistant's reply and the end token after it;
  2. tokenize the whole text once, and give each token a label: its own id where it is trained, -100
     (ignored by the loss) where it is context;
  3. pack several conversations into one sequence, with position ids restarting at each, so none of them
     attends to another;
  4. forward, cross-entropy of each position's logits against the next token's label (trained tokens only),
     backward, an AdamW step.

On the tiny demo model it runs in well under a minute on a CPU. tests/test_sft_from_scratch.py checks that
the loss of its first step equals `sftkit train`'s first logged loss on the same rows, and scripts/bench.py
times its `train_step` as the floor sftkit's speed is measured against.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

IGNORE = -100  # the label of a token no loss is taken on (cross_entropy's ignore_index)
START, END = "<|im_start|>", "<|im_end|>"  # ChatML's control tokens (sftkit's `chatml` template)
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------- 1. render with the template


def render(messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """ChatML text of a conversation as (text, trained) pieces: only assistant replies and their end token train."""
    pieces = []
    for message in messages:
        pieces.append((f"{START}{message['role']}\n", False))
        trained = message["role"] == "assistant"
        pieces.append((f"{message['content']}{END}", trained))  # learning END is learning to stop
        pieces.append(("\n", False))
    return pieces


# ---------------------------------------------------------------------------- 2. tokenize, label


def tokenize(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids of the whole rendered text and their labels (-100 where the text is not trained).

    A token is trained when any of its characters is. (sftkit also keeps control-token text typed inside a
    message from turning into control tokens; the demo data has none.)
    """
    pieces = render(messages)
    text = "".join(piece for piece, _ in pieces)
    trained_chars, at = [], 0
    for piece, trained in pieces:
        if trained:
            trained_chars.append((at, at + len(piece)))
        at += len(piece)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        trained = any(start < span_end and end > span_start for span_start, span_end in trained_chars)
        labels.append(token if trained else IGNORE)
    return encoded["input_ids"], labels


# ---------------------------------------------------------------------------- 3. pack


def pack(rows: list[tuple[list[int], list[int]]], max_tokens: int) -> list[dict[str, torch.Tensor]]:
    """Rows laid end to end into sequences of at most `max_tokens`, position ids restarting at each row.

    With restarting position ids and no attention mask, transformers attends only within each row (a
    block-diagonal causal mask), and a row's first label is -100, so no row predicts the next one's start.
    """
    sequences, current = [], []
    for ids, labels in rows:
        if current and sum(len(row[0]) for row in current) + len(ids) > max_tokens:
            sequences.append(current)
            current = []
        current.append((ids[:max_tokens], labels[:max_tokens]))
    if current:
        sequences.append(current)
    batches = []
    for sequence in sequences:
        batches.append(
            {
                "input_ids": torch.tensor([[token for ids, _ in sequence for token in ids]]),
                "labels": torch.tensor([[label for _, labels in sequence for label in [IGNORE, *labels[1:]]]]),
                "position_ids": torch.tensor([[position for ids, _ in sequence for position in range(len(ids))]]),
            }
        )
    return batches


# ---------------------------------------------------------------------------- 4. loss, backward, step


def loss_of(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the trained tokens: the logits at t predict the label at t + 1."""
    device = next(model.parameters()).device
    logits = model(
        input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device), use_cache=False
    ).logits
    predicted, targets = logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten().to(device)
    return F.cross_entropy(predicted.float(), targets, ignore_index=IGNORE)


def train_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    max_grad_norm: float = 1.0,
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """One update: forward, loss, backward, gradient clipping, AdamW step. Returns the loss (before the step)."""
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=autocast) if autocast is not None else nullcontext():
        loss = loss_of(model, batch)
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


# ---------------------------------------------------------------------------- the model and the data


def load(model_dir: str | Path, seed: int = 42) -> tuple[Any, Any]:
    """The base model and its tokenizer, with ChatML's control tokens added as new (trainable) rows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.add_special_tokens({"extra_special_tokens": [START, END]}, replace_extra_special_tokens=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(seed)  # the new rows are drawn around the mean of the others, as sftkit's are
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer


def alpaca_conversations(path: Path, limit: int | None = None) -> list[list[dict[str, str]]]:
    """Alpaca rows as conversations: system, earlier (user, assistant) pairs, then instruction + input -> output."""
    conversations = []
    for row in json.loads(path.read_text(encoding="utf-8"))[:limit]:
        messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
        for user, assistant in row.get("history") or []:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        question = "\n".join(part for part in (row["instruction"], row.get("input")) if part)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": row["output"]}]
        conversations.append(messages)
    return conversations


def answer(model: Any, tokenizer: Any, question: str, max_new_tokens: int = 40) -> str:
    """Greedy decoding after the assistant header, stopping at the end token."""
    prompt = f"{START}user\n{question}{END}\n{START}assistant\n"
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    end = tokenizer.convert_tokens_to_ids(END)
    model.eval()
    with torch.no_grad():
        for _ in range(max_new_tokens):
            next_id = model(input_ids=ids).logits[0, -1].argmax()
            if next_id == end:
                break
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    return tokenizer.decode(ids[0, len(tokenizer(prompt, add_special_tokens=False).input_ids) :])


def main(model_dir: str = "models/tiny-ernie", epochs: int = 6, learning_rate: float = 3e-3) -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()  # its notes about resized embeddings and loading bars
    transformers.utils.logging.disable_progress_bar()
    if not Path(model_dir, "config.json").is_file():
        from sftkit.tiny import build_tiny_model

        build_tiny_model(model_dir, initializer_range=0.3)
    torch.manual_seed(0)
    model, tokenizer = load(model_dir)
    rows = [tokenize(tokenizer, messages) for messages in alpaca_conversations(REPO / "data" / "demo_alpaca.json")]
    batches = pack(rows, max_tokens=512)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)  # full fine-tuning: every weight trains
    started = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        losses = [float(train_step(model, optimizer, batch)) for batch in batches]
        print(
            f"epoch {epoch + 1}/{epochs}: loss {sum(losses) / len(losses):.4f} "
            f"({len(batches)} packed sequences, {time.perf_counter() - started:.0f}s)",
            flush=True,
        )
    print(f"What colour is snow? -> {answer(model, tokenizer, 'What colour is snow?')!r}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
