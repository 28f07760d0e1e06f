"""Conversation -> token ids + labels: whole-text tokenization, -100 masking, truncation.

The rendered conversation is tokenized once, as a whole, so training sees exactly the ids that
`tokenizer(text)` (and `apply_chat_template`) give. Character offsets map the trained spans (assistant
content + end token) onto tokens; a token straddling a boundary, like " Hello" after "Assistant:",
counts as trained. Control-token text inside message content (e.g. "<|im_end|>") is tokenized as plain
text, so no example can inject template structure.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

from sftkit.data.template import Segment, Template, split_system

IGNORE_INDEX = -100
# Common reply openings: where one merges with the header's last token, that token is left out of prompts
_PROBE_REPLIES = ("the", "Hello", "I", "Sure", "1")

Offsets = list[tuple[int, int]]


@dataclass
class EncodedRow:
    """One training example: `labels` is `input_ids` with -100 where no loss is taken."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def encode_conversation(tokenizer: Any, template: Template, messages: list[dict[str, str]],
                        tools: str | None, cutoff_len: int, train_on_prompt: bool = False,
                        mask_history: bool = False) -> EncodedRow | None:
    """Tokenizes one conversation and labels the tokens trained on.

    Args:
        tokenizer: a fast tokenizer prepared with `prepare_tokenizer`.
        template: the chat template.
        messages: normalized messages ending with an assistant-side turn.
        tools: JSON string of tool schemas, or None.
        cutoff_len: most tokens kept: later user/assistant pairs are dropped first, then the last kept
            reply's tail is cut.
        train_on_prompt: train on every token.
        mask_history: train only the last assistant-side turn (of the pairs kept).

    Returns:
        The encoded row, or None when no trained token is left (the caller counts dropped rows).

    Raises:
        DataError: roles out of order or invalid tools.
    """
    control = _control_pattern(tokenizer, template)
    segments = template.segments(messages, tools)
    ids, labels, offsets = _encode(tokenizer, segments, control, train_on_prompt, mask_history)
    truncated = len(ids) > cutoff_len
    if truncated:
        system, turns = split_system(messages)
        keep = _pairs_that_fit(segments, offsets, cutoff_len)
        kept = ([{"role": "system", "content": system}] if system is not None else []) + turns[:2 * keep]
        ids, labels, _ = _encode(tokenizer, template.segments(kept, tools), control, train_on_prompt, mask_history)
        ids, labels = ids[:cutoff_len], labels[:cutoff_len]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return EncodedRow(ids, labels, truncated)


def encode_prompt(tokenizer: Any, template: Template, messages: list[dict[str, str]],
                  tools: str | None = None) -> list[int]:
    """Ids to feed the model to generate the reply to a conversation that ends with a user-side turn.

    They are a prefix of the training ids of the same conversation continued with a reply: when the
    header's last token would merge with the reply's first (ERNIE's "Assistant: " + "the" gives
    " the" in a byte-level BPE), that token is left for the model to generate.

    Raises:
        DataError: roles out of order or invalid tools.
    """
    control = _control_pattern(tokenizer, template)
    prompt = template.segments(messages, tools, add_generation_prompt=True)
    ids, _ = _tokenize(tokenizer, prompt, control)
    keep = len(ids)
    for reply in _PROBE_REPLIES:
        probe_ids, _ = _tokenize(tokenizer, prompt + [Segment(reply, True, True, prompt[-1].turn)], control)
        keep = min(keep, _common_prefix(ids, probe_ids))
    return ids[:keep]


def template_overhead(tokenizer: Any, template: Template) -> int:
    """Tokens the template itself spends on one user/assistant exchange (headers and end tokens, no text)."""
    empty = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]
    text = "".join(segment.text for segment in template.segments(empty))
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _tokenize(tokenizer: Any, segments: list[Segment], control: re.Pattern[str]) -> tuple[list[int], Offsets]:
    """Ids and character offsets of the concatenated segments.

    The whole text is tokenized at once. Only when message content holds control-token text is the
    text cut at the template's own control tokens and the pieces tokenized with special tokens split,
    so content can never produce a control-token id.
    """
    text = "".join(segment.text for segment in segments)
    if not any(control.search(segment.text) for segment in segments if segment.content):
        # verbose=False: rows over model_max_length are expected here, cutoff_len handles them
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return encoding["input_ids"], [tuple(span) for span in encoding["offset_mapping"]]
    return _tokenize_guarded(tokenizer, segments, control)


def _encode(tokenizer: Any, segments: list[Segment], control: re.Pattern[str], train_on_prompt: bool,
            mask_history: bool) -> tuple[list[int], list[int], Offsets]:
    ids, offsets = _tokenize(tokenizer, segments, control)
    if train_on_prompt:
        return ids, list(ids), offsets
    last_turn = max(segment.turn for segment in segments)
    trained = bytearray(sum(len(segment.text) for segment in segments))
    start = 0
    for segment in segments:
        if segment.trained and (not mask_history or segment.turn == last_turn):
            trained[start:start + len(segment.text)] = b"\1" * len(segment.text)
        start += len(segment.text)
    labels = [i if any(trained[s:max(e, s + 1)]) else IGNORE_INDEX for i, (s, e) in zip(ids, offsets)]
    return ids, labels, offsets


def _pairs_that_fit(segments: list[Segment], offsets: Offsets, cutoff_len: int) -> int:
    """How many leading user/assistant pairs fit in `cutoff_len` tokens (at least 1).

    Pairs end on a control token, where tokenization splits, so the tokens before a pair's end
    are exactly the tokens of the conversation cut there.
    """
    ends: dict[int, int] = {}
    position = 0
    for segment in segments:
        position += len(segment.text)
        ends[segment.turn] = position
    starts = [start for start, _ in offsets]
    fitting = [turn + 1 for turn, end in ends.items() if turn >= 0 and bisect_left(starts, end) <= cutoff_len]
    return max(fitting, default=1)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _control_pattern(tokenizer: Any, template: Template) -> re.Pattern[str]:
    """Matches any special token of the tokenizer (longest first)."""
    tokens = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    missing = [token for token in template.special_tokens if token not in tokens]
    if missing:  # a bug, not a user error: every caller prepares the tokenizer first
        raise ValueError(f"the tokenizer lacks {', '.join(missing)}: call prepare_tokenizer(tokenizer, template)")
    return re.compile("|".join(re.escape(token) for token in sorted(tokens, key=len, reverse=True)) or "(?!)")


def _tokenize_guarded(tokenizer: Any, segments: list[Segment],
                      control: re.Pattern[str]) -> tuple[list[int], Offsets]:
    """Template control tokens by id; the text between them tokenized with special tokens split.

    Fast tokenizers split the input at special tokens before anything else, so tokenizing the runs
    between the template's control tokens separately gives the same ids as tokenizing the whole text.
    """
    text = "".join(segment.text for segment in segments)
    ids: list[int] = []
    offsets: Offsets = []
    for start, end, is_control in _runs(segments, control):
        if is_control:
            ids.append(tokenizer.convert_tokens_to_ids(text[start:end]))
            offsets.append((start, end))
            continue
        run_ids, run_offsets = _plain_text(tokenizer, text[start:end], at_start=start == 0)
        ids += run_ids
        offsets += [(s + start, e + start) for s, e in run_offsets]
    return ids, offsets


def _runs(segments: list[Segment], control: re.Pattern[str]) -> list[tuple[int, int, bool]]:
    """(start, end, is_control) character runs: template control tokens and the text between them."""
    runs: list[tuple[int, int, bool]] = []
    position = text_start = 0
    for segment in segments:
        matches = [] if segment.content else control.finditer(segment.text)
        for match in matches:
            if position + match.start() > text_start:
                runs.append((text_start, position + match.start(), False))
            runs.append((position + match.start(), position + match.end(), True))
            text_start = position + match.end()
        position += len(segment.text)
    if position > text_start:
        runs.append((text_start, position, False))
    return runs


def _plain_text(tokenizer: Any, text: str, at_start: bool) -> tuple[list[int], Offsets]:
    """Tokenizes `text` with special tokens split, as it would be inside a longer text.

    SentencePiece-style tokenizers add a prefix space at the start of the input only; tokenizing
    after a newline and removing it again keeps a run from the middle of the text free of it.
    """
    def encode(piece: str) -> tuple[list[int], Offsets]:
        encoding = tokenizer(piece, add_special_tokens=False, split_special_tokens=True,
                             return_offsets_mapping=True, verbose=False)
        return encoding["input_ids"], [tuple(span) for span in encoding["offset_mapping"]]

    if at_start:
        return encode(text)
    newline, _ = encode("\n")
    ids, offsets = encode("\n" + text)
    if ids[:len(newline)] != newline:
        return encode(text)
    return ids[len(newline):], [(max(s - 1, 0), e - 1) for s, e in offsets[len(newline):]]
