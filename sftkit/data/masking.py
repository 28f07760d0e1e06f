"""Conversations -> token ids + labels: whole-text tokenization, -100 masking, truncation.

Each rendered conversation is tokenized once, as a whole, so training sees exactly the ids that
`tokenizer(text)` (and `apply_chat_template`) give. A batch of conversations goes to the tokenizer in
one call: the fast tokenizer then works in Rust across all cores, which per-row calls never do. The
trained spans (assistant content + end token) are character ranges, mapped onto token ranges through
the encoding's char->token index (two lookups per span, no per-token Python loop); a token straddling
a boundary, like " Hello" after "Assistant:", counts as trained. Control-token text inside message
content (e.g. "<|im_end|>") is tokenized as plain text, so no example can inject template structure.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sftkit.errors import DataError
from sftkit.templates import Segment, Template, split_system

IGNORE_INDEX = -100  # the label of a token no loss is taken on (PyTorch cross-entropy's default ignore_index)
# Common reply openings: where one merges with the header's last token, that token is left out of prompts
_PROBE_REPLIES = ("the", "Hello", "I", "Sure", "1")

Offsets = list[tuple[int, int]]
Conversation = tuple[list[dict[str, str]], str | None]  # (messages, tools JSON)


@dataclass
class EncodedRow:
    """One training example: `labels` is `input_ids` with -100 where no loss is taken."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


class ConversationError(DataError):
    """A conversation of a batch breaks the template's rules; `position` is its place in the batch."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


@dataclass
class _Tokens:
    """Ids of one rendered text, with the fast tokenizer's encoding (char->token) or explicit offsets."""

    ids: list[int]
    chars: int
    encoding: Any = None
    offsets: Offsets | None = None

    def span(self, start: int, end: int) -> tuple[int, int]:
        """[first, last) tokens overlapping characters [start, end)."""
        if self.encoding is not None:
            first, last = self.encoding.char_to_token(start), self.encoding.char_to_token(end - 1)
            after = self.encoding.char_to_token(end) if end < self.chars else len(self.ids)
            if None not in (first, last, after):
                # `after`: a multi-byte character split over tokens leaves `last` on its first piece
                return first, max(last + 1, after)
        # explicit offsets, or an edge character no token covers (a normalizer dropped it)
        hits = [i for i, (s, e) in enumerate(self.all_offsets()) if s < end and max(e, s + 1) > start]
        return (hits[0], hits[-1] + 1) if hits else (0, 0)

    def all_offsets(self) -> Offsets:
        return self.offsets if self.offsets is not None else [tuple(span) for span in self.encoding.offsets]


def encode_conversations(
    tokenizer: Any,
    template: Template,
    conversations: Sequence[Conversation],
    cutoff_len: int,
    train_on_prompt: bool = False,
    mask_history: bool = False,
) -> list[EncodedRow | None]:
    """Tokenizes a batch of conversations (one tokenizer call) and labels the tokens trained on.

    Args:
        tokenizer: a fast tokenizer prepared with `prepare_tokenizer`.
        template: the chat template.
        conversations: (normalized messages ending with an assistant-side turn, tools JSON or None).
        cutoff_len: most tokens kept: later user/assistant pairs are dropped first, then the last kept
            reply's tail is cut.
        train_on_prompt: train on every token.
        mask_history: train only the last assistant-side turn (of the pairs kept).

    Returns:
        One encoded row per conversation, or None where no trained token is left (the caller counts
        dropped rows).

    Raises:
        ConversationError: roles out of order or invalid tools (`position` names the conversation).
    """
    control = _control_pattern(tokenizer, template)
    rendered = [
        _segments(template, messages, tools, position, mask_history)
        for position, (messages, tools) in enumerate(conversations)
    ]
    tokenized = _tokenize_many(tokenizer, rendered, control)
    tail = generation_tail(tokenizer, template)
    return [
        _finish(
            tokenizer,
            template,
            control,
            conversation,
            segments,
            tokens,
            cutoff_len,
            train_on_prompt,
            mask_history,
            tail,
        )
        for conversation, segments, tokens in zip(conversations, rendered, tokenized)
    ]


def encode_conversation(
    tokenizer: Any,
    template: Template,
    messages: list[dict[str, str]],
    tools: str | None,
    cutoff_len: int,
    train_on_prompt: bool = False,
    mask_history: bool = False,
) -> EncodedRow | None:
    """`encode_conversations` for one conversation.

    Raises:
        DataError: roles out of order or invalid tools.
    """
    return encode_conversations(tokenizer, template, [(messages, tools)], cutoff_len, train_on_prompt, mask_history)[0]


def _segments(
    template: Template, messages: list[dict[str, str]], tools: str | None, position: int, only_last: bool = False
) -> list[Segment]:
    try:
        return template.segments(messages, tools, only_last=only_last)
    except DataError as exc:
        raise ConversationError(str(exc), position) from None


def _finish(
    tokenizer: Any,
    template: Template,
    control: re.Pattern[str],
    conversation: Conversation,
    segments: list[Segment],
    tokens: _Tokens,
    cutoff_len: int,
    train_on_prompt: bool,
    mask_history: bool,
    tail: str = "",
) -> EncodedRow | None:
    """Labels one tokenized conversation; over `cutoff_len`, re-encodes the pairs that fit and cuts the tail."""
    truncated = len(tokens.ids) > cutoff_len
    if truncated:
        messages, tools = conversation
        system, turns = split_system(messages)
        keep = _pairs_that_fit(segments, tokens.all_offsets(), cutoff_len)
        kept = ([{"role": "system", "content": system}] if system is not None else []) + turns[: 2 * keep]
        segments = template.segments(kept, tools, only_last=mask_history)
        tokens = _tokenize_many(tokenizer, [segments], control)[0]
    labels = _labels(tokens, segments, train_on_prompt, mask_history, tail)
    ids, labels = tokens.ids[:cutoff_len], labels[:cutoff_len]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return EncodedRow(ids, labels, truncated)


def encode_prompt(
    tokenizer: Any, template: Template, messages: list[dict[str, str]], tools: str | None = None
) -> list[int]:
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


def generation_tail(tokenizer: Any, template: Template) -> str:
    """The end of the assistant header that `encode_prompt` leaves for the model to generate ("" for most).

    ERNIE's header ends in a space that merges into most replies' first token (" the"), so prompts stop
    before it; where a reply does not merge ("Assistant: " + "1" may give a lone space token), that space
    is still the model's to write at inference, so training must teach it: `_labels` trains it too.
    """
    probe = [{"role": "user", "content": "Hi"}]
    prompt = template.segments(probe, None, add_generation_prompt=True)
    text = "".join(segment.text for segment in prompt)
    kept = encode_prompt(tokenizer, template, probe)
    ids, offsets = _tokenize(tokenizer, prompt, _control_pattern(tokenizer, template))
    cut = offsets[len(kept) - 1][1] if kept and len(kept) < len(ids) else len(text)
    tail = text[cut:]
    return tail if tail and not tail.strip() else ""  # only whitespace is ever left to the model


def template_overhead(tokenizer: Any, template: Template) -> int:
    """Tokens the template itself spends on one user/assistant exchange (headers and end tokens, no text)."""
    empty = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]
    text = "".join(segment.text for segment in template.segments(empty))
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _tokenize(tokenizer: Any, segments: list[Segment], control: re.Pattern[str]) -> tuple[list[int], Offsets]:
    """Ids and character offsets of the concatenated segments (prompts, not the training hot path)."""
    tokens = _tokenize_many(tokenizer, [segments], control)[0]
    return tokens.ids, tokens.all_offsets()


def _tokenize_many(tokenizer: Any, rows: list[list[Segment]], control: re.Pattern[str]) -> list[_Tokens]:
    """Each row's concatenated segments, tokenized whole; the clean rows in one batched tokenizer call.

    Only a row whose message content holds control-token text is cut at the template's own control
    tokens and its pieces tokenized with special tokens split, so content can never produce a
    control-token id.
    """
    texts = ["".join(segment.text for segment in segments) for segments in rows]
    guarded = [any(control.search(s.text) for s in segments if s.content) for segments in rows]
    clean = [text for text, unsafe in zip(texts, guarded) if not unsafe]
    # verbose=False: rows over model_max_length are expected here, cutoff_len handles them
    batch = (
        tokenizer(
            clean, add_special_tokens=False, verbose=False, return_attention_mask=False, return_token_type_ids=False
        )
        if clean
        else None
    )
    encoded = iter(zip(batch["input_ids"], batch.encodings) if batch is not None else ())
    out = []
    for segments, text, unsafe in zip(rows, texts, guarded):
        if unsafe:
            ids, offsets = _tokenize_guarded(tokenizer, segments, control)
            out.append(_Tokens(ids, len(text), offsets=offsets))
        else:
            ids, encoding = next(encoded)
            out.append(_Tokens(ids, len(text), encoding=encoding))
    return out


def _labels(
    tokens: _Tokens, segments: list[Segment], train_on_prompt: bool, mask_history: bool, tail: str = ""
) -> list[int]:
    """`tokens.ids` with -100 outside the token ranges that overlap a trained segment (or its header's `tail`)."""
    if train_on_prompt:
        return list(tokens.ids)
    labels = [IGNORE_INDEX] * len(tokens.ids)
    text = "".join(segment.text for segment in segments) if tail else ""
    for start, end in _trained_chars(segments, mask_history):
        if tail and text.endswith(tail, 0, start):  # the header's tail a prompt leaves out: the model writes it
            start -= len(tail)
        first, last = tokens.span(start, end)
        labels[first:last] = tokens.ids[first:last]
    return labels


def _trained_chars(segments: list[Segment], mask_history: bool) -> list[tuple[int, int]]:
    """Character ranges [start, end) of the trained segments, adjacent ones merged."""
    last_turn = segments[-1].turn  # turns only grow along the conversation
    spans: list[tuple[int, int]] = []
    position = 0
    for segment in segments:
        end = position + len(segment.text)
        if segment.trained and segment.text and (not mask_history or segment.turn == last_turn):
            if spans and spans[-1][1] == position:
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((position, end))
        position = end
    return spans


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


def _tokenize_guarded(tokenizer: Any, segments: list[Segment], control: re.Pattern[str]) -> tuple[list[int], Offsets]:
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
        encoding = tokenizer(
            piece, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True, verbose=False
        )
        return encoding["input_ids"], [tuple(span) for span in encoding["offset_mapping"]]

    if at_start:
        return encode(text)
    newline, _ = encode("\n")
    ids, offsets = encode("\n" + text)
    if ids[: len(newline)] != newline:
        return encode(text)
    return ids[len(newline) :], [(max(s - 1, 0), e - 1) for s, e in offsets[len(newline) :]]
