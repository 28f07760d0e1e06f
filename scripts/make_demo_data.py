"""Writes the bundled demo datasets in data/ (deterministic; run again to regenerate them).

The rows are simple, checkable facts (arithmetic, word lengths, colours, a made-up assistant's
identity) so a tiny model can visibly learn them in a minute on a CPU, in all three supported layouts:
Alpaca, ShareGPT (from/value) and OpenAI messages (role/content).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"
NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()
COLOURS = {
    "sky": "blue",
    "grass": "green",
    "snow": "white",
    "coal": "black",
    "blood": "red",
    "a banana": "yellow",
    "an orange": "orange",
    "a plum": "purple",
    "chocolate": "brown",
}
WORDS = [
    "apple",
    "river",
    "mountain",
    "sftkit",
    "garden",
    "window",
    "music",
    "planet",
    "teacher",
    "bridge",
    "lantern",
    "ocean",
    "pencil",
    "rocket",
    "forest",
    "thunder",
    "valley",
    "whisper",
]


def arithmetic(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(0, 50), rng.randint(0, 50)
    if rng.random() < 0.5:
        return "What is the sum of the two numbers?", f"{a} and {b}", f"{a} plus {b} is {a + b}."
    return f"What is {max(a, b)} minus {min(a, b)}?", "", f"{max(a, b)} minus {min(a, b)} is {max(a, b) - min(a, b)}."


def word_length(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(WORDS)
    return "How many letters does this word have?", word, f'The word "{word}" has {len(word)} letters.'


def colour(rng: random.Random) -> tuple[str, str, str]:
    thing, col = rng.choice(sorted(COLOURS.items()))
    return f"What colour is {thing}?", "", f"{thing[0].upper() + thing[1:]} is usually {col}."


def spell(rng: random.Random) -> tuple[str, str, str]:
    n = rng.randint(0, 12)
    return "Write this number as a word.", str(n), f'{n} is written "{NUMBER_WORDS[n]}".'


IDENTITY = [
    ("Who are you?", "I am Tiny, a small assistant fine-tuned with sftkit."),
    ("What is your name?", "My name is Tiny. I was fine-tuned with sftkit."),
    ("Who trained you?", "I was trained with sftkit, a supervised fine-tuning tool."),
    ("Can you browse the internet?", "No. I only know what I learned during training."),
]
TASKS = (arithmetic, word_length, colour, spell)


def alpaca_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        instruction, inp, out = rng.choice(TASKS)(rng)
        row = {"instruction": instruction, "input": inp, "output": out}
        if i % 10 == 0:
            row["system"] = "You are a precise assistant. Answer in one sentence."
        if i % 7 == 0:
            q, a = rng.choice(IDENTITY)
            row["history"] = [[q, a]]
        rows.append(row)
    return rows


def chat_turns(rng: random.Random) -> list[tuple[str, str]]:
    turns = [rng.choice(IDENTITY)] if rng.random() < 0.5 else []
    for _ in range(rng.randint(1, 3)):
        instruction, inp, out = rng.choice(TASKS)(rng)
        turns.append((f"{instruction} {inp}".strip(), out))
    return turns


def sharegpt_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        conv = []
        for q, a in chat_turns(rng):
            conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        rows.append({"conversations": conv, "system": "You are Tiny, a helpful assistant."})
    return rows


def messages_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        msgs = [{"role": "system", "content": "You are Tiny, a helpful assistant."}]
        for q, a in chat_turns(rng):
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        rows.append({"messages": msgs})
    return rows


def registry() -> dict:
    openai_tags = {
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "system_tag": "system",
    }
    teich = {"formatting": "sharegpt", "columns": {"messages": "messages"}, "tags": openai_tags}
    return {
        "demo_alpaca": {"file_name": "demo_alpaca.json"},
        "demo_sharegpt": {
            "file_name": "demo_sharegpt.json",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system"},
        },
        "demo_messages": {
            "file_name": "demo_messages.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": openai_tags,
        },
        # The three datasets of the ERNIE-4.5 run (configs/ernie_lora.yaml); downloaded on first use.
        "teichai_gemini3_flash": {"hf_hub_url": "TeichAI/gemini-3-flash-preview-1000x", **teich},
        "teichai_claude_haiku45": {"hf_hub_url": "TeichAI/claude-haiku-4.5-1700x", **teich},
        "teichai_gemini25_flash_lite": {"hf_hub_url": "TeichAI/gemini-2.5-flash-lite-2509-preview-1000x", **teich},
    }


def main() -> None:
    rng = random.Random(20261123)
    DATA.mkdir(exist_ok=True)
    (DATA / "demo_alpaca.json").write_text(json.dumps(alpaca_rows(rng, 240), indent=1, ensure_ascii=False) + "\n")
    (DATA / "demo_sharegpt.json").write_text(json.dumps(sharegpt_rows(rng, 80), indent=1, ensure_ascii=False) + "\n")
    (DATA / "demo_messages.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in messages_rows(rng, 80))
    )
    (DATA / "dataset_info.json").write_text(json.dumps(registry(), indent=2) + "\n")


if __name__ == "__main__":
    main()
