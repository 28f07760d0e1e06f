"""The tokenizer in llama.cpp's terms: a GGUF vocabulary that tokenizes as the transformers tokenizer does.

Two families reach here, told apart by the fast tokenizer's own description (its tokenizer.json):

- byte-level BPE (GPT-2 style: ByteLevel pre-tokenizer and decoder, no byte fallback), the tiny model's:
  llama.cpp's `gpt2` model with the `gpt-2` pre-tokenizer, the byte-level vocabulary as it is and the merges.
- SentencePiece BPE with byte fallback (Metaspace pre-tokenizer), ERNIE-4.5's own: llama.cpp's `llama` (SPM)
  model, pieces with scores and types. transformers saves such a tokenizer as tokenizer.json only (no
  tokenizer.model), so the scores come from its merges: llama.cpp's SPM merges the adjacent pair whose
  joined piece scores highest, and a piece's score is minus the rank of the merge that makes it, which is
  the order the BPE model merges in (the order SentencePiece itself gave them).

Merges go through gguf's own `SpecialVocab` (read from the tokenizer as saved, spaces in merges encoded as
llama.cpp expects), and so do the special-token ids, taken from the loaded tokenizer; the add-BOS/EOS flags
are set from what the tokenizer really does when asked to add special tokens, since llama.cpp's defaults
differ per model type. Whatever cannot be expressed is an error naming
the part of the tokenizer; `sftkit export` also checks the round trip on the rendered probe (verify.py).
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftkit.errors import SftkitError

_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass
class GgufVocab:
    """What the GGUF file records about the tokenizer."""

    model: str  # llama.cpp's tokenizer.ggml.model: gpt2 or llama
    pre: str  # tokenizer.ggml.pre
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None  # SentencePiece only
    add_space_prefix: bool | None = None  # SentencePiece only


def tokenizer_spec(tokenizer: Any) -> dict[str, Any]:
    """The fast tokenizer's own description (its tokenizer.json), or an error for a slow one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise SftkitError(
            f"tokenizer {type(tokenizer).__name__}: not a fast (tokenizers) tokenizer, which GGUF "
            "export reads; save the model's tokenizer with transformers first"
        )
    return json.loads(backend.to_str())


def build_vocab(tokenizer: Any, n_vocab: int) -> GgufVocab:
    """The GGUF vocabulary of `tokenizer`, padded with unused entries to the model's `n_vocab` embedding rows.

    Raises:
        SftkitError: a tokenizer family llama.cpp cannot reproduce, or more tokens than embedding rows.
    """
    spec = tokenizer_spec(tokenizer)
    model = spec.get("model") or {}
    if len(tokenizer) > n_vocab:
        raise SftkitError(f"the tokenizer has {len(tokenizer)} tokens but the model only {n_vocab} embedding rows")
    if model.get("type") == "BPE" and not model.get("byte_fallback") and _is_byte_level(spec):
        return _byte_level_vocab(tokenizer, spec, n_vocab)
    if model.get("type") == "BPE" and model.get("byte_fallback") and _metaspace(spec) is not None:
        return _sentencepiece_vocab(tokenizer, spec, n_vocab)
    raise SftkitError(
        f"tokenizer: a {model.get('type')} model with pre-tokenizer "
        f"{_describe(spec.get('pre_tokenizer'))} has no llama.cpp equivalent sftkit writes (byte-level "
        "BPE and SentencePiece BPE are supported)"
    )


def add_special_vocab(writer: Any, tokenizer: Any, vocab: GgufVocab, eot_id: int | None) -> None:
    """Merges and special-token ids (gguf's SpecialVocab), add-BOS/EOS as the tokenizer does them, the EOT id."""
    import gguf

    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        special = gguf.SpecialVocab(Path(folder), load_merges=vocab.model == "gpt2", n_vocab=len(vocab.tokens))
    special.chat_template = None  # the trained template is written by the caller, from the template itself
    special.add_special_token = {}  # set below from behaviour, not from configuration files
    # The ids the loaded tokenizer itself uses (llama.cpp's SPM defaults, bos 1 / eos 2, must never apply).
    ids = {kind: getattr(tokenizer, f"{kind}_token_id", None) for kind in special.special_token_types}
    special.special_token_ids = {kind: i for kind, i in ids.items() if isinstance(i, int) and i < len(vocab.tokens)}
    special.add_to_gguf(writer, quiet=True)
    adds_bos, adds_eos = _adds_special_tokens(tokenizer)
    writer.add_add_bos_token(adds_bos)
    writer.add_add_eos_token(adds_eos)
    if eot_id is not None:
        writer.add_eot_token_id(eot_id)


def write_vocab(writer: Any, vocab: GgufVocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)


# ---------------------------------------------------------------------------- the two families


def _byte_level_vocab(tokenizer: Any, spec: dict[str, Any], n_vocab: int) -> GgufVocab:
    import gguf

    pre = _byte_level_pre(_pre_tokenizers(spec.get("pre_tokenizer")))
    if pre is None:
        # llama.cpp's pre-tokenizers are named regexes; the converter recognises a tokenizer's by a hash of
        # its tokenization of a test text, which a retrained (tiny or extended) vocabulary never matches
        raise SftkitError(
            f"tokenizer: byte-level BPE with pre-tokenizer {_describe(spec.get('pre_tokenizer'))}; "
            "sftkit writes GPT-2's (ByteLevel, its regex) and Qwen2's split as llama.cpp's gpt-2 and "
            "qwen2"
        )
    tokens, types = _padded(n_vocab), [int(gguf.TokenType.UNUSED)] * n_vocab
    added = tokenizer.added_tokens_decoder
    for token, index in tokenizer.get_vocab().items():
        tokens[index] = token
        types[index] = int(_added_type(added[index]) if index in added else gguf.TokenType.NORMAL)
    return GgufVocab("gpt2", pre, tokens, types)


# The split regexes llama.cpp implements under a pre-tokenizer name (its llama-vocab.cpp), as tokenizer.json
# writes them before a regex-free ByteLevel step.
NAMED_SPLITS = {
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+": "qwen2",
}


def _byte_level_pre(steps: list[dict[str, Any]]) -> str | None:
    """llama.cpp's pre-tokenizer name for these steps: GPT-2's (one ByteLevel with its regex) or a named split."""
    if len(steps) == 1 and not steps[0].get("add_prefix_space") and steps[0].get("use_regex", True):
        return "gpt-2"
    if len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel":
        split, level = steps
        regex = (split.get("pattern") or {}).get("Regex")
        if (
            split.get("behavior") == "Isolated"
            and not split.get("invert")
            and not level.get("add_prefix_space")
            and not level.get("use_regex", True)
        ):
            return NAMED_SPLITS.get(regex)
    return None


def _sentencepiece_vocab(tokenizer: Any, spec: dict[str, Any], n_vocab: int) -> GgufVocab:
    import gguf

    model = spec["model"]
    ranks: dict[str, int] = {}
    for rank, merge in enumerate(model.get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        ranks.setdefault(left + right, rank)
    tokens, types = _padded(n_vocab), [int(gguf.TokenType.UNUSED)] * n_vocab
    scores = [-1e9] * n_vocab  # pads and pieces no merge makes: never chosen as a merge result
    added = tokenizer.added_tokens_decoder
    unk = model.get("unk_token")
    for token, index in tokenizer.get_vocab().items():
        tokens[index] = token
        if index in added:
            types[index], scores[index] = int(_added_type(added[index])), 0.0
        elif token == unk:
            types[index], scores[index] = int(gguf.TokenType.UNKNOWN), 0.0
        elif _BYTE_PIECE.fullmatch(token):
            types[index], scores[index] = int(gguf.TokenType.BYTE), 0.0
        else:
            types[index] = int(gguf.TokenType.NORMAL)
            scores[index] = -float(ranks[token]) if token in ranks else (0.0 if len(token) == 1 else -1e9)
    # llama.cpp puts the "▁" prefix before the text at the start and after every special token, which is
    # transformers' "always"; "first" (only at the very start of the text) has no llama.cpp form, and without
    # the prefix both agree on every text that starts with a special token, as chat prompts do.
    prepend = _metaspace(spec).get("prepend_scheme", "always")
    return GgufVocab("llama", "default", tokens, types, scores, add_space_prefix=prepend == "always")


def _added_type(token: Any) -> Any:
    """Added tokens: special ones are llama.cpp CONTROL tokens (matched when parsing special text), the rest
    USER_DEFINED (always matched), as transformers matches both in the text it tokenizes."""
    import gguf

    return gguf.TokenType.CONTROL if token.special else gguf.TokenType.USER_DEFINED


def _adds_special_tokens(tokenizer: Any) -> tuple[bool, bool]:
    """Whether encoding with add_special_tokens=True puts the bos first / the eos last."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    adds_bos = bos is not None and len(full) > len(plain) and full[0] == bos and plain[:1] != [bos]
    adds_eos = eos is not None and len(full) > len(plain) and full[-1] == eos and plain[-1:] != [eos]
    return adds_bos, adds_eos


# ---------------------------------------------------------------------------- reading the description


def _pre_tokenizers(node: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [step for child in node.get("pretokenizers", []) for step in _pre_tokenizers(child)]
    return [node]


def _is_byte_level(spec: dict[str, Any]) -> bool:
    steps = _pre_tokenizers(spec.get("pre_tokenizer"))
    return (
        any(step.get("type") == "ByteLevel" for step in steps)
        and (spec.get("decoder") or {}).get("type") == "ByteLevel"
    )


def _metaspace(spec: dict[str, Any]) -> dict[str, Any] | None:
    return next((step for step in _pre_tokenizers(spec.get("pre_tokenizer")) if step.get("type") == "Metaspace"), None)


def _describe(node: dict[str, Any] | None) -> str:
    steps = _pre_tokenizers(node)
    return "+".join(step.get("type", "?") for step in steps) if steps else "none"


def _padded(n_vocab: int) -> list[str]:
    """Rows no token uses (the embedding is often padded): llama.cpp's convention for their text."""
    return [f"[PAD{index}]" for index in range(n_vocab)]
