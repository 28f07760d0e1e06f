"""A tiny, deterministic ERNIE-4.5-architecture model and tokenizer, built locally.

Nothing can be downloaded in tests or on an offline machine, so the demo config and the test-suite use
a model with ERNIE's real architecture (`Ernie4_5ForCausalLM`, tied embeddings like the 0.3B model)
at toy size, and a byte-level BPE tokenizer trained on the demo text (`data/`, packaged as `assets/tiny_corpus.json`). The tokenizer has
pad/bos/eos but no chat tokens on purpose: every run exercises the add-special-tokens path.
`ernie_shape_config()` / `build_ernie_shape_model()` give the exact ERNIE-4.5-0.3B shape for
benchmarks (random weights).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Every string of the demo data in data/ (demo_*.json*), the tokenizer's training text. A copy inside the
# package, so an installed sftkit builds the same tokenizer without the repository (tests keep it equal).
CORPUS_FILE = Path(__file__).resolve().parent / "assets" / "tiny_corpus.json"
TINY_VOCAB = 1024


def corpus_strings(data_dir: Path) -> list[str]:
    """Every string in the JSON/JSONL demo files of `data_dir`, in file and document order."""

    def strings(node: object) -> Iterator[str]:
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for value in node.values():
                yield from strings(value)
        elif isinstance(node, list):
            for value in node:
                yield from strings(value)

    out: list[str] = []
    for path in sorted(data_dir.glob("demo_*.json*")):
        text = path.read_text(encoding="utf-8")
        docs = [json.loads(line) for line in text.splitlines() if line] if path.suffix == ".jsonl" else json.loads(text)
        out += strings(docs)
    return out


def build_tiny_tokenizer(vocab_size: int = TINY_VOCAB):
    """A byte-level BPE tokenizer trained on the packaged demo text; deterministic for the same text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(json.loads(CORPUS_FILE.read_text(encoding="utf-8")), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", model_max_length=4096
    )


def tiny_model_config(vocab_size: int, pad_id: int, bos_id: int, eos_id: int, initializer_range: float = 0.02):
    """Two layers of ERNIE-4.5 at toy width (head_dim must be set explicitly)."""
    from transformers import Ernie4_5Config

    return Ernie4_5Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        initializer_range=initializer_range,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )


def ernie_shape_config():
    """ERNIE-4.5-0.3B's exact shape: `Ernie4_5Config` defaults are that model's."""
    from transformers import Ernie4_5Config

    return Ernie4_5Config()


def build_tiny_model(out_dir: str | Path, seed: int = 0, initializer_range: float = 0.02) -> Path:
    """Writes the tiny tokenizer and a randomly initialised tiny model to `out_dir`.

    The demo uses initializer_range 0.3: at the real 0.02 a 64-wide tied embedding keeps logits near
    zero, so a one-minute LoRA run cannot visibly learn to answer.
    """
    import torch

    tokenizer = build_tiny_tokenizer()
    config = tiny_model_config(
        len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, initializer_range
    )
    return _write_model(out_dir, config, tokenizer, seed, torch.float32)


def build_ernie_shape_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Writes ERNIE-4.5-0.3B's exact shape with random bf16 weights beside the tiny tokenizer (benchmarks,
    GPU checks: nothing downloaded). The 103,424-row vocabulary is kept, so head and loss run at real size."""
    import torch

    tokenizer = build_tiny_tokenizer()
    config = ernie_shape_config()
    config.pad_token_id, config.bos_token_id, config.eos_token_id = (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    )
    return _write_model(out_dir, config, tokenizer, seed, torch.bfloat16)


def _write_model(out_dir: str | Path, config: Any, tokenizer: Any, seed: int, dtype: Any) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
