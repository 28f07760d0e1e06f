"""Chat templates: one definition per template drives training text, masks and the saved Jinja.

A `Template` is a handful of format strings (`{content}` marks where a message goes). From them come
the training rendering (`segments`/`render`), the generation prompt, and `jinja()`, the chat template
written into the saved tokenizer, so `tokenizer.apply_chat_template` reproduces training's text exactly.

Tool use, identical in every template: the tool schemas (one JSON object a line, `<tools>` block)
follow the system text, a `function_call` is an assistant turn whose content is
`<tool_call>\\n{json}\\n</tool_call>` (trained), an `observation` is a user-side turn wrapping the result
in `<tool_response>` (masked). In the Jinja, role `tool` is accepted as an alias of `observation`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from string import Template as _Source
from typing import Any

from sftkit.errors import DataError
from sftkit.templates.conversation import parse_tools, role_order_problem, split_system

TOOLS_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)
TOOLS_SEPARATOR = "\n\n"  # between the system text and the tools prompt
FUNCTION_CALL = "<tool_call>\n{content}\n</tool_call>"
TOOL_RESPONSE = "<tool_response>\n{content}\n</tool_response>"


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text.

    `trained`: assistant-side content and its end token. `content`: text that comes from the data
    (never a template control token). `turn`: index of the user/assistant pair, -1 before the first.
    """

    text: str
    trained: bool
    content: bool
    turn: int


@dataclass(frozen=True)
class Template:
    """A chat format: format strings with one `{content}` slot each.

    `assistant` must put `end_token` right after `{content}`: content + end token are what is trained.
    """

    name: str
    prefix: str
    system: str
    user: str
    assistant: str
    observation: str
    end_token: str
    special_tokens: tuple[str, ...]

    def segments(self, messages: list[dict[str, str]], tools: str | None = None,
                 add_generation_prompt: bool = False) -> list[Segment]:
        """The conversation as annotated segments (the one rendering everything else derives from).

        Args:
            messages: normalized messages (an optional leading system, then user/assistant-side turns).
            tools: JSON string of tool schemas, or None.
            add_generation_prompt: the conversation ends on the user side; append the assistant header.

        Raises:
            DataError: roles out of order, or `tools` is not a JSON list of objects.
        """
        system, turns = split_system(messages)
        problem = role_order_problem(turns, end_with_assistant=not add_generation_prompt)
        if problem:
            raise DataError(problem)
        out = [Segment(self.prefix, False, False, -1)] if self.prefix else []
        system_text = _system_text(system, _tools(tools))
        if system_text is not None:
            out += _wrap(self.system, system_text, trained=False, turn=-1)
        for i, message in enumerate(turns):
            out += self._turn(message, turn=i // 2)
        if add_generation_prompt:
            out.append(Segment(self.assistant_header, False, False, len(turns) // 2))
        return out

    def render(self, messages: list[dict[str, str]], tools: str | None = None) -> list[tuple[str, bool]]:
        """Training text as `(text, trained)` segments; concatenated they are the rendered text."""
        return [(s.text, s.trained) for s in self.segments(messages, tools)]

    def generation_prompt(self, messages: list[dict[str, str]], tools: str | None = None) -> str:
        """Rendered conversation (ending with a user-side turn) followed by the assistant header."""
        return "".join(s.text for s in self.segments(messages, tools, add_generation_prompt=True))

    @property
    def assistant_header(self) -> str:
        return self.assistant.partition("{content}")[0]

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """Ids that end a reply: the template's end token, then the tokenizer's eos (if different)."""
        ids = [tokenizer.convert_tokens_to_ids(self.end_token), tokenizer.eos_token_id]
        return list(dict.fromkeys(i for i in ids if i is not None))

    def token_ids(self, tokenizer: Any) -> list[int]:
        """Ids of the template's control tokens: the embedding rows that must train.

        A base model has never seen them in use, whether `prepare_tokenizer` just added them or the
        vocabulary already reserved them, so all of them train (as PEFT trainable tokens).
        """
        return sorted({tokenizer.convert_tokens_to_ids(token) for token in self.special_tokens})

    def jinja(self) -> str:
        """The same format as a Jinja chat template for the saved tokenizer."""
        fields = {"prefix": self.prefix, "assistant_header": self.assistant_header,
                  "tools_separator": TOOLS_SEPARATOR}
        for key, fmt in (("system", self.system), ("user", self.user), ("observation", self.observation),
                         ("assistant", self.assistant), ("call", FUNCTION_CALL), ("response", TOOL_RESPONSE)):
            fields[f"{key}_before"], _, fields[f"{key}_after"] = fmt.partition("{content}")
        fields["tools_before"], _, fields["tools_after"] = TOOLS_PROMPT.partition("{tools}")
        # A JSON string literal is a valid Jinja string literal: escapes survive exactly.
        literals = {key: json.dumps(value, ensure_ascii=False) for key, value in fields.items()}
        return _Source(_JINJA).substitute(literals)

    def _turn(self, message: dict[str, str], turn: int) -> list[Segment]:
        role, content = message["role"], message["content"]
        if role == "user":
            return _wrap(self.user, content, trained=False, turn=turn)
        if role == "observation":
            return _wrap(self.observation, _fill(TOOL_RESPONSE, content), trained=False, turn=turn)
        text = _fill(FUNCTION_CALL, content) if role == "function_call" else content
        before, _, after = self.assistant.partition("{content}")
        rest = after[len(self.end_token):]
        return [seg for seg in (Segment(before, False, False, turn), Segment(text, True, True, turn),
                                Segment(self.end_token, True, False, turn), Segment(rest, False, False, turn))
                if seg.text]


def _fill(fmt: str, content: str) -> str:
    """`fmt` with `{content}` replaced; not str.format, so braces in content stay literal."""
    before, _, after = fmt.partition("{content}")
    return before + content + after


def _wrap(fmt: str, content: str, trained: bool, turn: int) -> list[Segment]:
    before, _, after = fmt.partition("{content}")
    return [seg for seg in (Segment(before, trained, False, turn), Segment(content, trained, True, turn),
                            Segment(after, trained, False, turn)) if seg.text]


def _tools(tools: str | None) -> list[dict[str, Any]]:
    try:
        return parse_tools(tools)
    except ValueError as exc:
        raise DataError(f"tools {exc}") from None


def _system_text(system: str | None, tools: list[dict[str, Any]]) -> str | None:
    """System content with the tools prompt appended; None when there is neither."""
    if not tools:
        return system
    schemas = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    tools_prompt = TOOLS_PROMPT.replace("{tools}", schemas)
    return system + TOOLS_SEPARATOR + tools_prompt if system else tools_prompt


# `$name` slots hold JSON string literals from `Template.jinja`; whitespace control ({%- -%}) keeps
# the template's own layout out of the output.
_JINJA = """
{%- if messages and messages[0]['role'] == 'system' -%}
  {%- set system = messages[0]['content'] -%}
  {%- set loop_messages = messages[1:] -%}
{%- else -%}
  {%- set system = none -%}
  {%- set loop_messages = messages -%}
{%- endif -%}
{{- $prefix -}}
{%- if system is not none or tools -%}
  {{- $system_before -}}
  {%- if system is not none -%}{{- system -}}{%- endif -%}
  {%- if tools -%}
    {%- if system -%}{{- $tools_separator -}}{%- endif -%}
    {{- $tools_before -}}
    {%- for tool in tools -%}
      {%- if not loop.first -%}{{- "\\n" -}}{%- endif -%}
      {{- tool | tojson -}}
    {%- endfor -%}
    {{- $tools_after -}}
  {%- endif -%}
  {{- $system_after -}}
{%- endif -%}
{%- for message in loop_messages -%}
  {%- if message['role'] == 'user' -%}
    {{- $user_before + message['content'] + $user_after -}}
  {%- elif message['role'] in ['observation', 'tool'] -%}
    {{- $observation_before + $response_before + message['content'] + $response_after + $observation_after -}}
  {%- elif message['role'] == 'assistant' -%}
    {{- $assistant_header + message['content'] + $assistant_after -}}
  {%- elif message['role'] == 'function_call' -%}
    {{- $assistant_header + $call_before + message['content'] + $call_after + $assistant_after -}}
  {%- else -%}
    {{- raise_exception('unsupported role ' + message['role']) -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- $assistant_header -}}{%- endif -%}
"""


def prepare_tokenizer(tokenizer: Any, template: Template) -> list[int]:
    """Makes `tokenizer` speak `template`; idempotent and never removes anything.

    Adds the template's control tokens it lacks as special tokens (kept whole, skipped when decoding),
    writes `template.jinja()` as its chat template, and sets a pad token (eos) if it has none.

    Args:
        tokenizer: a transformers tokenizer, changed in place.
        template: the chat template.

    Returns:
        Ids of tokens new to the vocabulary (their embedding rows must be trained); [] on a second call.
    """
    vocab = tokenizer.get_vocab()
    registered = set(tokenizer.added_tokens_encoder)
    missing = [token for token in template.special_tokens if token not in registered]
    new = [token for token in missing if token not in vocab]
    if missing:
        # v5 name of additional_special_tokens; replace=False keeps the tokenizer's existing extras
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    tokenizer.chat_template = template.jinja()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or template.end_token
    return tokenizer.convert_tokens_to_ids(new)
