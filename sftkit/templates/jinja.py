"""A model's own Jinja chat template as a `Template`: rendering by the Jinja itself, masks derived from it.

The rendered text is exactly `apply_chat_template(messages, tokenize=False)`. What is trained is found
by rendering the template itself, never by guessing its format:

- `{% generation %}` blocks, where the template has them, are the trained spans (Phi-4).
- Otherwise, for each assistant-side turn k: the reply starts where the conversation up to k with the
  generation prompt stops agreeing with the conversation up to k with the reply (usually: right after the
  generation prompt), and ends after the end-of-turn token(s) the template writes after a reply (found by
  rendering a probe reply: the control tokens right after it, e.g. `<|im_end|>`, `<|eot_id|>`, `</s>`).
- A turn that renders differently once later turns follow (Qwen3 drops the reasoning of earlier replies)
  is trained as the whole conversation renders it: from where its header ends to its end-of-turn token,
  provided the reply's visible text is found there; otherwise the row is refused (one line naming the
  template), never silently mis-masked.

Message content holding control-token text is located in the rendering and marked as data, so it is
tokenized as plain text (masking's guard); content the template changes so it cannot be found is refused.
The normalized roles map onto the template's: `function_call` -> an assistant message with `tool_calls`,
`observation` -> `tool`; tools go in as the list of schemas the template reads. A reply's reasoning (its
leading `<think>` block) goes in as `reasoning_content` when the template reads that field (Qwen3, DeepSeek R1
style), else stays in the content for the template to render or drop as it defines.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sftkit.errors import DataError
from sftkit.templates.conversation import parse_tools, role_order_problem, split_system
from sftkit.templates.template import Segment, remove_thought

_PROBE_REPLY = "sftkit probe reply 7"
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")
# A template that writes or checks tool-call ids (Mistral's: 9 letters and digits, or it raises)
_READS_CALL_IDS = re.compile(r"tool_call_id|tool_call\.id|\[['\"]id['\"]\]")


@dataclass(frozen=True)
class JinjaTemplate:
    """A Jinja chat template bound to its tokenizer's special tokens (`from_tokenizer` builds one).

    `variables`: the values the template sees besides messages/tools (bos_token, eos_token, ...,
    enable_thinking). `control_tokens`: the tokenizer's special tokens (for the end-token probe and the
    content guard). `special_tokens`: those the template writes. `end_token`: what ends a reply.
    """

    name: str
    source: str
    origin: str
    variables: tuple[tuple[str, Any], ...]
    control_tokens: tuple[str, ...]
    special_tokens: tuple[str, ...]
    end_token: str
    arguments_as_text: bool = False
    stop_words: tuple[str, ...] = ()

    @classmethod
    def from_tokenizer(
        cls, tokenizer: Any, source: str, name: str, origin: str, enable_thinking: bool | None = None
    ) -> JinjaTemplate:
        """Binds `source` to `tokenizer` and probes what ends a reply.

        Raises:
            DataError: the template does not render a plain user/assistant exchange, or writes no control
                token right after a reply (a model trained on it would never learn to stop).
        """
        values = {key: value for key, value in tokenizer.special_tokens_map.items() if isinstance(value, str)}
        if enable_thinking is not None and "enable_thinking" in source:
            values["enable_thinking"] = enable_thinking
        added = {t.content: t.special for t in tokenizer.added_tokens_decoder.values()}
        specials = {content for content, special in added.items() if special}
        specials |= {v for v in values.values() if isinstance(v, str)}
        draft = cls(name, source, origin, tuple(sorted(values.items())), _longest_first(specials), (), "")
        # Role markers a tokenizer added without the special flag (DeepSeek's <｜User｜>, <｜Assistant｜>) are the
        # template's structure all the same: written outside any message, they become control tokens (and
        # prepare_tokenizer flags them special), so message text can never produce them.
        structure = draft._probe_text().replace("probe question", "").replace(_PROBE_REPLY, "")
        control = _longest_first(specials | {content for content in added if content in structure})
        draft = cls(name, source, origin, draft.variables, control, (), "")
        end, stops = draft._probe_end()
        written = tuple(t for t in control if t in draft._probe_text())
        return cls(name, source, origin, draft.variables, control, written, end, draft._probe_arguments(), stops)

    # ------------------------------------------------------------------ the Template interface

    def segments(
        self,
        messages: list[dict[str, str]],
        tools: str | None = None,
        add_generation_prompt: bool = False,
        only_last: bool = False,
    ) -> list[Segment]:
        """The rendered conversation, cut into trained / untrained / content segments.

        `only_last` (mask_history): an earlier reply the template rewrites is left untrained, not refused.

        Raises:
            DataError: roles out of order, tools the template cannot take, or a reply it cannot locate.
        """
        system, turns = split_system(messages)
        problem = role_order_problem(turns, end_with_assistant=not add_generation_prompt)
        if problem:
            raise DataError(problem)
        schemas = self._schemas(tools, turns)
        chat = [self._message(m) for m in messages]
        if _READS_CALL_IDS.search(self.source):
            chat = _with_call_ids(chat, json.dumps(messages, ensure_ascii=False, sort_keys=True))
        full = self.render(chat, schemas, add_generation_prompt)
        offset = len(messages) - len(turns)
        replies = [] if add_generation_prompt else self._replies(chat, schemas, full, offset, only_last)
        contents = self._contents(messages, chat, full)
        return _cut(full, replies, contents, len(turns) // 2 if add_generation_prompt else None)

    def generation_prompt(self, messages: list[dict[str, str]], tools: str | None = None) -> str:
        """Rendered conversation (ending with a user-side turn) followed by the generation prompt."""
        return "".join(s.text for s in self.segments(messages, tools, add_generation_prompt=True))

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """Ids that end a reply: the template's end-of-turn tokens, then the tokenizer's eos."""
        tokens = [t for t in self.control_tokens if t in self.end_token] + list(self.stop_words)
        tokens.sort(key=self.end_token.find)
        ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens] + [tokenizer.eos_token_id]
        return list(dict.fromkeys(i for i in ids if i is not None and i != tokenizer.unk_token_id))

    def token_ids(self, tokenizer: Any) -> list[int]:
        """Ids of the control tokens the template writes (their embedding rows train, as for a named template)."""
        return sorted({tokenizer.convert_tokens_to_ids(token) for token in self.special_tokens})

    def jinja(self) -> str:
        return self.source

    def bind(self, tokenizer: Any, enable_thinking: bool = True) -> JinjaTemplate:
        return self

    # ------------------------------------------------------------------ rendering

    def render(
        self, chat: list[dict[str, Any]], tools: list[dict[str, Any]] | None, add_generation_prompt: bool
    ) -> str:
        """The Jinja rendering of template-shaped messages (`apply_chat_template(..., tokenize=False)`)."""
        return self._render(chat, tools, add_generation_prompt)[0]

    def _render(
        self,
        chat: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        add_generation_prompt: bool,
        track: bool = False,
    ) -> tuple[str, list[tuple[int, int]]]:
        from jinja2 import TemplateError
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            with render_budget():
                rendered, spans = render_jinja_template(
                    [chat],
                    tools=tools,
                    chat_template=self.source,
                    return_assistant_tokens_mask=track,
                    add_generation_prompt=add_generation_prompt,
                    **dict(self.variables),
                )
        except RenderBudgetExceeded as exc:
            raise DataError(
                f"the {self.name} chat template did not finish rendering one conversation ({exc}; "
                "loops nested in loops?); fix the template or use another"
            ) from None
        except RecursionError:
            raise DataError(
                f"the {self.name} chat template recurses without end (a macro calling itself?); fix the "
                "template or use another"
            ) from None
        except (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise DataError(
                f"the {self.name} chat template cannot render this conversation ({_first_line(exc)})"
            ) from None
        return rendered[0], (spans[0] if spans else [])

    def _message(self, message: dict[str, str]) -> dict[str, Any]:
        role, content = message["role"], message["content"]
        if role == "observation":
            return {"role": "tool", "content": content}
        if role == "assistant" and "reasoning_content" in self.source:
            return _with_reasoning_field(content)
        if role != "function_call":
            return {"role": role, "content": content}
        try:
            call = json.loads(content)
            name, arguments = call["name"], call.get("arguments", {})
        except (json.JSONDecodeError, TypeError, KeyError):
            raise DataError(
                'a function_call turn must be a JSON object {"name": ..., "arguments": {...}}; got '
                f"{content[:60]!r}"
            ) from None
        if self.arguments_as_text and not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        return {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}],
        }

    def _schemas(self, tools: str | None, turns: list[dict[str, str]]) -> list[dict[str, Any]] | None:
        try:
            schemas = parse_tools(tools)
        except ValueError as exc:
            raise DataError(f"tools {exc}") from None
        calls = any(m["role"] in ("function_call", "observation") for m in turns)
        if (schemas or calls) and "tool_calls" not in self.source:
            raise DataError(
                f"the {self.name} chat template has no tool-call format (it never reads tools / "
                "tool_calls); use a template with one (qwen, qwen3, chatml, llama3) or remove the tool turns"
            )
        if schemas and not re.search(r"\btools\b", self.source):
            # DeepSeek V3's own template: calls and results have tokens, the schemas no place at all, and a model
            # trained to call tools it was never shown would make them up
            raise DataError(
                f"the {self.name} chat template writes tool calls but never reads the tool schemas "
                "(tools), so they would silently vanish from the prompt; describe the tools in the "
                "system message and drop the tools column, or choose a template that lists them"
            )
        # OpenAI's shape, as transformers builds schemas from Python functions and model templates expect it
        # (gpt-oss, Gemma 4, Cohere and MiniMax read tool.function.name); a schema already wrapped stays as it is
        return [_openai_tool(schema) for schema in schemas] if schemas else None

    # ------------------------------------------------------------------ what is trained

    def _replies(
        self,
        chat: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        full: str,
        offset: int,
        only_last: bool = False,
    ) -> list[tuple[int, int, int, int]]:
        """(start, content end, end, turn) of every assistant-side reply in `full`."""
        positions = [k for k, m in enumerate(chat) if k >= offset and (k - offset) % 2]
        if _GENERATION.search(self.source):
            _, blocks = self._render(chat, tools, False, track=True)
            if len(blocks) != len(positions):
                raise DataError(
                    f"the {self.name} chat template marks {len(blocks)} generation blocks for "
                    f"{len(positions)} replies; sftkit cannot tell which text is trained"
                )
            return [
                (s, max(s, e - len(self._end_in(full[s:e]))), e, (k - offset) // 2)
                for (s, e), k in zip(blocks, positions)
            ]
        spans = []
        for k in positions:
            try:
                spans.append(self._reply_span(chat, tools, full, k, (k - offset) // 2))
            except DataError:
                if not only_last or k == positions[-1]:
                    raise
        return spans

    def _reply_span(
        self, chat: list[dict[str, Any]], tools: list[dict[str, Any]] | None, full: str, k: int, turn: int
    ) -> tuple[int, int, int, int]:
        prompt = self.render(chat[:k], tools, True)
        upto = full if k == len(chat) - 1 else self.render(chat[: k + 1], tools, False)
        start = self._reply_start(prompt, upto)
        cut = upto.rfind(self.end_token)
        if cut >= start and full.startswith(upto[: cut + len(self.end_token)]):
            return start, cut, cut + len(self.end_token), turn
        # the turn renders differently once later turns follow (Qwen3 drops earlier reasoning)
        start = min(self._reply_start(prompt, full), self._reply_start(upto, full))
        cut = full.find(self.end_token, start)
        visible = _visible(chat[k])
        if cut < 0 or (visible and visible not in full[start:cut]):
            raise DataError(
                f"the {self.name} chat template renders reply {k} differently once later turns follow, "
                "and sftkit cannot locate it; set mask_history: true (train the last reply only) or "
                "choose a named template"
            )
        return start, cut, cut + len(self.end_token), turn

    def _reply_start(self, prompt: str, text: str) -> int:
        """Where a reply starts in `text`: after the generation prompt, or where the two part ways, backed off to
        the last line break or control token (so "<think>" vs "<tool_call>" does not start the reply at "ool")."""
        common = _common_prefix(prompt, text)
        if common == len(prompt):
            return common
        head = text[:common]
        boundary = head.rfind("\n") + 1
        for token in self.control_tokens:
            at = head.rfind(token)
            if at >= 0:
                boundary = max(boundary, at + len(token))
        return boundary

    def _contents(self, messages: list[dict[str, str]], chat: list[dict[str, Any]], full: str) -> list[tuple[int, int]]:
        """Where the message text holding control-token text lies in `full` (only such text needs marking).

        The text is what the template was given: a reply's content and `reasoning_content` apart where it reads
        that field (so the <think> it writes itself stays its own token), else the normalized content.
        """
        pattern = _control_regex(self.control_tokens)
        spans: list[tuple[int, int]] = []
        cursor = 0
        for i, (message, given) in enumerate(zip(messages, chat, strict=True)):
            parts = (
                [message["content"]]
                if "tool_calls" in given
                else [given.get("reasoning_content") or "", given["content"]]
            )
            for part in (p for p in parts if pattern.search(p)):
                for text in (part, part.strip(), remove_thought(part, "</think>")):
                    at = full.find(text, cursor)
                    if text and at >= 0:
                        spans.append((at, at + len(text)))
                        cursor = at + len(text)
                        break
                else:
                    raise DataError(
                        f"message {i} holds control-token text that the {self.name} chat template "
                        "changes, so it cannot be kept as plain text; remove the control-token text "
                        "from the row"
                    )
        return spans

    def _end_in(self, text: str) -> str:
        """The control tokens that close `text` (a generation block's end-of-turn tokens)."""
        end = ""
        while True:
            token = next((t for t in self.control_tokens if text[: len(text) - len(end)].endswith(t)), None)
            if token is None:
                return end
            end = token + end

    # ------------------------------------------------------------------ probes (at binding)

    def _probe_text(self) -> str:
        chat = [{"role": "user", "content": "probe question"}, {"role": "assistant", "content": _PROBE_REPLY}]
        return self.render(chat, None, False)

    def _probe_end(self) -> tuple[str, tuple[str, ...]]:
        """(what ends a reply, further stop words). Usually the control tokens right after the reply, whitespace
        before them included (Nemotron Nano v2 writes a newline first). A template that writes nothing after a
        reply (GLM-4.5 to 4.7, as LLaMA-Factory's efficient_eos glm4_moe) ends it with the next turn's role
        token: nothing is trained after the reply, and generation stops at that token."""
        after = self._probe_text().rpartition(_PROBE_REPLY)[2]
        end = after[: len(after) - len(after.lstrip(" \n"))]
        lead = len(end)
        while token := next((t for t in self.control_tokens if after.startswith(t, len(end))), None):
            end += token
        if len(end) > lead:
            return end, ()
        if not after.strip() and (stops := self._next_turn_tokens()):
            return "", stops
        raise DataError(
            f"the {self.name} chat template writes no end-of-turn token right after a reply "
            f"({after[:30]!r} follows it), so a model trained on it would never stop; set template: "
            "to a named one"
        )

    def _next_turn_tokens(self) -> tuple[str, ...]:
        """The control tokens that open the turn after a reply (the user's; a tool result's where the template
        has one), when they follow the reply with nothing but whitespace between."""
        chat = [
            {"role": "user", "content": "probe question"},
            {"role": "assistant", "content": _PROBE_REPLY},
            {"role": "user", "content": "probe again"},
        ]
        try:
            after = self.render(chat, None, False).partition(_PROBE_REPLY)[2].lstrip(" \n")
        except DataError:
            return ()
        first = next((t for t in self.control_tokens if after.startswith(t)), None)
        if first is None:
            return ()
        tool = first.replace("user", "observation")
        return (first, tool) if tool != first and tool in self.control_tokens else (first,)

    def _probe_arguments(self) -> bool:
        """Whether the template concatenates tool-call arguments as text (DeepSeek) rather than a dict."""
        if "tool_calls" not in self.source:
            return False
        call = [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}],
            },
        ]
        try:
            self.render(call, [{"type": "function", "function": {"name": "f"}}], False)
        except DataError:
            return True
        return False


# ---------------------------------------------------------------------------- a budget on rendering
# A chat template is code from the model's files (or a config); a few nested loops run for hours. Jinja has no
# step limit, so the template's own compiled code is counted while it renders (its frames are named
# "<template>"; other code is not traced), and stopped past RENDER_STEPS lines or RENDER_SECONDS.
RENDER_STEPS = 5_000_000  # lines of the compiled template: a real template runs some tens per message
RENDER_SECONDS = 20.0
_CHECK_EVERY = 4096  # steps between looks at the clock
_TEMPLATE_FILE = "<template>"


class RenderBudgetExceeded(Exception):
    """A template rendering ran past its step or time budget."""


@contextmanager
def render_budget(steps: int | None = None, seconds: float | None = None) -> Iterator[None]:
    """Stops a rendering in this thread past `steps` template lines or `seconds` (raising RenderBudgetExceeded).
    Off where a tracer already runs (a debugger, coverage): replacing it would break it."""
    if sys.gettrace() is not None:
        yield
        return
    limit = RENDER_STEPS if steps is None else steps
    budget = RENDER_SECONDS if seconds is None else seconds
    deadline = time.monotonic() + budget
    count = 0

    def line(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
            if count % _CHECK_EVERY == 0 or count > limit:
                if count > limit:
                    raise RenderBudgetExceeded(f"more than {limit:,} steps")
                if time.monotonic() > deadline:
                    raise RenderBudgetExceeded(f"more than {budget:g} s")
        return line

    def call(frame: Any, event: str, arg: Any) -> Any:
        return line if frame.f_code.co_filename == _TEMPLATE_FILE else None

    sys.settrace(call)
    try:
        yield
    finally:
        sys.settrace(None)


def _cut(
    full: str, replies: list[tuple[int, int, int, int]], contents: list[tuple[int, int]], prompt_turn: int | None
) -> list[Segment]:
    """`full` as segments: trained replies (content, then end tokens), marked content, the text between."""
    cuts = {0, len(full)}
    for start, content_end, end, _ in replies:
        cuts |= {start, content_end, end}
    for start, end in contents:
        cuts |= {start, end}
    points = sorted(cuts)
    out = []
    for a, b in zip(points, points[1:]):
        reply = next(((s, c, e, t) for s, c, e, t in replies if e > a), None)
        trained = reply is not None and reply[0] <= a < reply[2]
        turn = prompt_turn if prompt_turn is not None else (reply[3] if reply else replies[-1][3] if replies else 0)
        content = any(s <= a < e for s, e in contents)
        out.append(Segment(full[a:b], trained, content, turn, end=trained and a >= reply[1]))
    return out


def _with_reasoning_field(content: str) -> dict[str, Any]:
    """An assistant message for a template that reads `reasoning_content`: a leading `<think>` block (sftkit's
    normalized reasoning) moves into that field, as OpenAI-style messages carry it."""
    head, close, reply = content.partition("</think>")
    if not close or not head.lstrip().startswith("<think>"):
        return {"role": "assistant", "content": content}
    reasoning = head.lstrip()[len("<think>") :].strip("\n")
    return {"role": "assistant", "content": reply.lstrip("\n"), "reasoning_content": reasoning}


def _visible(message: dict[str, Any]) -> str:
    """A reply's text that any rendering of it shows (its reasoning may be dropped)."""
    if message.get("tool_calls"):
        return message["tool_calls"][0]["function"]["name"]
    return remove_thought(message["content"], "</think>").strip()


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # binary search on the first difference
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


def _longest_first(tokens: set[str]) -> tuple[str, ...]:
    return tuple(sorted(tokens, key=lambda token: (-len(token), token)))


def _control_regex(tokens: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(re.escape(t) for t in tokens) or "(?!)")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _openai_tool(schema: dict[str, Any]) -> dict[str, Any]:
    """`{"type": "function", "function": schema}` unless the schema is already in that shape."""
    if schema.get("type") == "function" and isinstance(schema.get("function"), dict):
        return schema
    return {"type": "function", "function": schema}


def tool_call_id(row_key: str, k: int) -> str:
    """The k-th tool call's id in a conversation: 9 letters and digits (Mistral's templates refuse others), the same
    for the same row on every run and every process (a hash of the conversation, not a random draw)."""
    import hashlib

    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    number = int.from_bytes(hashlib.sha256(f"{k}:{row_key}".encode()).digest()[:8], "big")
    return "".join(alphabet[(number // len(alphabet) ** i) % len(alphabet)] for i in range(9))


def _with_call_ids(chat: list[dict[str, Any]], row_key: str) -> list[dict[str, Any]]:
    """Gives every tool call an id and every tool result the id of the call it answers (the oldest one not yet
    answered), as OpenAI-style templates that write or check them need."""
    waiting: list[str] = []
    out, k = [], 0
    for message in chat:
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                calls.append({**call, "id": tool_call_id(row_key, k)})
                waiting.append(calls[-1]["id"])
                k += 1
            message = {**message, "tool_calls": calls}
        elif message["role"] == "tool":
            message = {**message, "tool_call_id": waiting.pop(0) if waiting else tool_call_id(row_key, k)}
        out.append(message)
    return out
