"""Chat templates: one definition per template drives training text, masks and the saved Jinja.

A `Template` (a built-in, named one) is a handful of format strings (`{content}` marks where a message
goes). From them come the training rendering (`segments`/`render`), the generation prompt, and
`jinja()`, the chat template written into the saved tokenizer, so `tokenizer.apply_chat_template`
reproduces training's text exactly. A model's own Jinja chat template is a `JinjaTemplate`
(`sftkit.templates.jinja`) with the same interface: both hand masking the same annotated `Segment`s.
`{bos}` and `{eos}` in a definition stand for the tokenizer's own tokens (`bind`).

Tool use, by the template's tool format (`TOOL_FORMATS`): the tool schemas join the system text, a
`function_call` is an assistant turn holding the call (trained), an `observation` a user-side turn holding the
result (masked). Hermes (the default): `<tools>` block, `<tool_call>\\n{json}\\n</tool_call>`,
`<tool_response>`; Llama 3.1: the schemas ahead of the system text, `{"name": ..., "parameters": ...}` calls,
raw results in the `ipython` role; Mistral: `[AVAILABLE_TOOLS]`, `[TOOL_CALLS]`, `[TOOL_RESULTS]`. In the Jinja,
role `tool` is accepted as an alias of `observation`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
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
# Meta's Llama 3.1 template with tools in the system message (tools_in_user_message false, as LLaMA-Factory's
# llama3 tool format), its wording verbatim. The date is the template's own default, not today's (as
# LLaMA-Factory writes it): the saved Jinja must render tomorrow what training rendered today.
LLAMA3_TOOLS_PROMPT = (
    "Environment: ipython\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
    "You have access to the following functions. To call a function, please respond with JSON for a function call."
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'
    "Do not use variables.\n\n{tools}"
)


@dataclass(frozen=True)
class ToolFormat:
    """How tools appear: the prompt listing the schemas (`{tools}`: each schema as `tool` with `{schema}`,
    joined by `joiner`), its separator from the system text, a call (`{content}`: the call's JSON) and a result.

    `wrap`: a schema not already `{"type": "function", ...}` is wrapped as one. `indent`: the schemas' JSON
    indent. `tools_first`: the tools prompt comes before the system text (Llama 3.1). `call_key`: the key a
    call's arguments are written under (Llama 3.1's "parameters"; the data's JSON says "arguments").
    """

    prompt: str
    separator: str
    tool: str
    joiner: str
    call: str
    response: str
    wrap: bool = False
    indent: int | None = None
    tools_first: bool = False
    call_key: str = "arguments"


TOOL_FORMATS = {
    # Qwen / Hermes: one schema a line in <tools>, calls in <tool_call>, results in <tool_response>
    "hermes": ToolFormat(TOOLS_PROMPT, TOOLS_SEPARATOR, "{schema}", "\n", FUNCTION_CALL, TOOL_RESPONSE),
    # Mistral (LLaMA-Factory's "mistral" tool format): [AVAILABLE_TOOLS], [TOOL_CALLS] [...], [TOOL_RESULTS]
    "mistral": ToolFormat(
        "[AVAILABLE_TOOLS] [{tools}][/AVAILABLE_TOOLS]",
        "",
        '{"type": "function", "function": {schema}}',
        ", ",
        "[TOOL_CALLS] [{content}]",
        '[TOOL_RESULTS] {"content": {content}}[/TOOL_RESULTS]',
    ),
    # Llama 3.1 JSON tool calling: schemas (indent 4) ahead of the system text, a call is the bare JSON object,
    # results go raw into the template's `ipython` turn
    "llama3": ToolFormat(
        LLAMA3_TOOLS_PROMPT,
        "",
        "{schema}\n\n",
        "",
        "{content}",
        "{content}",
        wrap=True,
        indent=4,
        tools_first=True,
        call_key="parameters",
    ),
}


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text.

    `trained`: assistant-side content and its end token. `content`: text that comes from the data
    (never a template control token). `turn`: index of the user/assistant pair, -1 before the first.
    `end`: the end-of-turn token(s) closing a reply (trained, but no part of the reply's text).
    """

    text: str
    trained: bool
    content: bool
    turn: int
    end: bool = False


@dataclass(frozen=True)
class Template:
    """A chat format: format strings with one `{content}` slot each.

    `assistant` must put `end_token` right after `{content}`: content + end token are what is trained.
    `default_system`: the system prompt of rows that carry none. `stop_words`: further tokens that end
    a reply at generation. `tool_format`: a `TOOL_FORMATS` name ("hermes": `<tool_call>` JSON,
    `<tool_response>` results; "llama3"; "mistral") or None (tools are an error). `system_in_user`: the system text opens the first user turn (Llama 2,
    Mistral, Gemma). `thought`: the (open, close) words of a reasoning template: a reply without them
    gets an empty thought block, trained when `enable_thinking`, else put in the prompt with every
    reply's reasoning removed (LLaMA-Factory's ReasoningTemplate). `no_tools_reason`: why a template without
    a tool format has none, for its tool-row error.
    """

    name: str
    prefix: str
    system: str
    user: str
    assistant: str
    observation: str
    end_token: str
    special_tokens: tuple[str, ...]
    default_system: str | None = None
    stop_words: tuple[str, ...] = ()
    tool_format: str | None = "hermes"
    system_in_user: bool = False
    thought: tuple[str, str] | None = None
    enable_thinking: bool = True
    origin: str = "built-in"
    no_tools_reason: str = ""

    def segments(
        self,
        messages: list[dict[str, str]],
        tools: str | None = None,
        add_generation_prompt: bool = False,
        only_last: bool = False,
    ) -> list[Segment]:
        """The conversation as annotated segments (the one rendering everything else derives from).

        Args:
            messages: normalized messages (an optional leading system, then user/assistant-side turns).
            tools: JSON string of tool schemas, or None.
            add_generation_prompt: the conversation ends on the user side; append the assistant header.
            only_last: only the last reply will be trained (mask_history); a format template marks every
                reply all the same.

        Raises:
            DataError: roles out of order, or `tools` is not a JSON list of objects.
        """
        system, turns = split_system(messages)
        problem = role_order_problem(turns, end_with_assistant=not add_generation_prompt)
        if problem:
            raise DataError(problem)
        schemas = _tools(tools)
        if (schemas or any(m["role"] in ("function_call", "observation") for m in turns)) and not self.tool_format:
            raise DataError(
                self.no_tools_reason
                or f"the {self.name} template has no tool-call format; use a "
                "template with one (chatml, qwen, qwen3, llama3) or the model's own chat template, or "
                "remove the tool turns"
            )
        out = [Segment(self.prefix, False, False, -1)] if self.prefix else []
        system_text = _system_text(system if system is not None else self.default_system, schemas, self._tool_format)
        if system_text is not None and not self.system_in_user:
            out += _wrap(self.system, system_text, trained=False, turn=-1)
        for i, message in enumerate(turns):
            if i == 0 and self.system_in_user and system_text:
                out += self._user_with_system(message, system_text)
                continue
            out += self._turn(message, turn=i // 2)
        if add_generation_prompt:
            out.append(Segment(self.assistant_header + self._prompt_thought(), False, False, len(turns) // 2))
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

    def bind(self, tokenizer: Any, enable_thinking: bool = True) -> Template:
        """This template for `tokenizer`: `{bos}`/`{eos}` become its own tokens; the thinking setting is fixed.

        Raises:
            DataError: the definition needs an eos (or bos) token the tokenizer lacks.
        """
        values = {"{bos}": tokenizer.bos_token, "{eos}": tokenizer.eos_token}
        changes: dict[str, Any] = {"enable_thinking": enable_thinking}
        for field in ("prefix", "system", "user", "assistant", "observation", "end_token"):
            text = getattr(self, field)
            for slot, token in values.items():
                if slot in text and token is None:
                    raise DataError(
                        f"the {self.name} template needs the tokenizer's {slot[1:-1]} token, and it has "
                        "none; choose another template"
                    )
                text = text.replace(slot, token or "")
            changes[field] = text
        changes["special_tokens"] = tuple(t for t in (values.get(t, t) for t in self.special_tokens) if t)
        return replace(self, **changes)

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """Ids that end a reply: the template's end token and stop words, then the tokenizer's eos."""
        ids = [tokenizer.convert_tokens_to_ids(t) for t in (self.end_token, *self.stop_words)]
        ids.append(tokenizer.eos_token_id)
        return list(dict.fromkeys(i for i in ids if i is not None and i != tokenizer.unk_token_id))

    def token_ids(self, tokenizer: Any) -> list[int]:
        """Ids of the template's control tokens: the embedding rows that must train.

        A base model has never seen them in use, whether `prepare_tokenizer` just added them or the
        vocabulary already reserved them, so all of them train (as PEFT trainable tokens).
        """
        return sorted({tokenizer.convert_tokens_to_ids(token) for token in self.special_tokens})

    def jinja(self) -> str:
        """The same format as a Jinja chat template for the saved tokenizer."""
        fields = {
            "prefix": self.prefix,
            "assistant_header": self.assistant_header,
            "tools_separator": self._tool_format.separator,
            "default_system": self.default_system or "",
            "tool_joiner": self._tool_format.joiner,
            "arguments_key": '"arguments"',
            "call_key": f'"{self._tool_format.call_key}"',
            "open": self.thought[0] if self.thought else "",
            "close": self.thought[1] if self.thought else "",
        }
        for key, fmt in (
            ("system", self.system),
            ("user", self.user),
            ("observation", self.observation),
            ("assistant", self.assistant),
            ("call", self._tool_format.call),
            ("response", self._tool_format.response),
            ("tool", self._tool_format.tool),
        ):
            fields[f"{key}_before"], _, fields[f"{key}_after"] = fmt.partition("{content}")
        fields["tools_before"], _, fields["tools_after"] = self._tool_format.prompt.partition("{tools}")
        fields["tool_before"], _, fields["tool_after"] = self._tool_format.tool.partition("{schema}")
        # A JSON string literal is a valid Jinja string literal: escapes survive exactly.
        literals = {key: json.dumps(value, ensure_ascii=False) for key, value in fields.items()}
        literals["has_default"] = "true" if self.default_system is not None else "false"
        literals["system_in_user"] = "true" if self.system_in_user else "false"
        literals["thinking"] = "true" if self.thought else "false"
        literals["enable_thinking"] = "true" if self.enable_thinking else "false"
        form = self._tool_format
        literals["wrap"] = "true" if form.wrap else "false"
        literals["indent"] = "none" if form.indent is None else str(form.indent)
        literals["tools_first"] = "true" if form.tools_first else "false"
        return _Source(_JINJA).substitute(literals)

    @property
    def _tool_format(self) -> ToolFormat:
        return TOOL_FORMATS[self.tool_format or "hermes"]

    def _user_with_system(self, message: dict[str, str], system_text: str) -> list[Segment]:
        """The first user turn opening with the wrapped system text (Llama 2 style)."""
        before, _, after = self.user.partition("{content}")
        sys_before, _, sys_after = self.system.partition("{content}")
        pieces = (
            Segment(before + sys_before, False, False, 0),
            Segment(system_text, False, True, 0),
            Segment(sys_after, False, False, 0),
            Segment(message["content"], False, True, 0),
            Segment(after, False, False, 0),
        )
        return [seg for seg in pieces if seg.text]

    def _reply(self, content: str) -> str:
        """A reply's trained text: reasoning templates add an empty thought block, or remove reasoning."""
        if not self.thought:
            return content
        if not self.enable_thinking:
            return remove_thought(content, self.thought[1])
        if self.thought[0].strip() in content or self.thought[1].strip() in content:
            return content
        return self.thought[0] + self.thought[1] + content

    def _prompt_thought(self) -> str:
        """The empty thought block that opens the reply in the prompt when thinking is off."""
        return self.thought[0] + self.thought[1] if self.thought and not self.enable_thinking else ""

    def _turn(self, message: dict[str, str], turn: int) -> list[Segment]:
        role, content = message["role"], message["content"]
        if role == "user":
            return _wrap(self.user, content, trained=False, turn=turn)
        if role == "observation":
            return _wrap(self.observation, _fill(self._tool_format.response, content), trained=False, turn=turn)
        text = self._reply(
            _fill(self._tool_format.call, _call(content, self._tool_format.call_key))
            if role == "function_call"
            else content
        )
        before, _, after = self.assistant.partition("{content}")
        before += self._prompt_thought()
        rest = after[len(self.end_token) :]
        return [
            seg
            for seg in (
                Segment(before, False, False, turn),
                Segment(text, True, True, turn),
                Segment(self.end_token, True, False, turn, end=True),
                Segment(rest, False, False, turn),
            )
            if seg.text
        ]


def remove_thought(content: str, close: str) -> str:
    """The reply without its reasoning: everything up to the last closing word removed, as Qwen3's template does."""
    marker = close.strip()
    return content.rsplit(marker, 1)[-1].lstrip("\n") if marker in content else content


def _fill(fmt: str, content: str) -> str:
    """`fmt` with `{content}` replaced; not str.format, so braces in content stay literal."""
    before, _, after = fmt.partition("{content}")
    return before + content + after


def _wrap(fmt: str, content: str, trained: bool, turn: int) -> list[Segment]:
    before, _, after = fmt.partition("{content}")
    return [
        seg
        for seg in (
            Segment(before, trained, False, turn),
            Segment(content, trained, True, turn),
            Segment(after, trained, False, turn),
        )
        if seg.text
    ]


def _tools(tools: str | None) -> list[dict[str, Any]]:
    try:
        return parse_tools(tools)
    except ValueError as exc:
        raise DataError(f"tools {exc}") from None


def _system_text(
    system: str | None, tools: list[dict[str, Any]], form: ToolFormat = TOOL_FORMATS["hermes"]
) -> str | None:
    """System content with the tools prompt (after it, or before it for `tools_first`); None when there is neither."""
    if not tools:
        return system
    schemas = form.joiner.join(form.tool.replace("{schema}", _schema(tool, form)) for tool in tools)
    tools_prompt = form.prompt.replace("{tools}", schemas)
    if not system:
        return tools_prompt
    return tools_prompt + form.separator + system if form.tools_first else system + form.separator + tools_prompt


def _schema(tool: dict[str, Any], form: ToolFormat) -> str:
    """One tool schema as the format writes it (the Jinja's `tojson` is this same json.dumps)."""
    if form.wrap and tool.get("type") != "function":
        tool = {"type": "function", "function": tool}
    return json.dumps(tool, ensure_ascii=False, indent=form.indent)


def _call(content: str, key: str) -> str:
    """A function_call's JSON with its arguments under `key`, by the same text replacement the Jinja makes (it
    cannot parse JSON); a call the replacement would garble is refused rather than trained wrong.

    Raises:
        DataError: the call is not `{"name": ..., "arguments": ...}` JSON (or a list of them) that renames cleanly.
    """
    if key == "arguments":
        return content
    renamed = content.replace('"arguments"', f'"{key}"')
    try:
        calls, got = json.loads(content), json.loads(renamed)
        calls, got = ([calls], [got]) if isinstance(calls, dict) else (calls, got)
        clean = all(
            set(c) == {"name", "arguments"} and g == {"name": c["name"], key: c["arguments"]}
            for c, g in zip(calls, got, strict=True)
        )
    except (json.JSONDecodeError, TypeError, ValueError):
        clean = False
    if not clean:
        raise DataError(
            f'a function_call turn must be a JSON object {{"name": ..., "arguments": {{...}}}} (its '
            f'arguments are written as "{key}"); got {content[:60]!r}'
        )
    return renamed


# `$name` slots hold JSON string literals from `Template.jinja`; whitespace control ({%- -%}) keeps
# the template's own layout out of the output.
_JINJA = """
{%- if messages and messages[0]['role'] == 'system' -%}
  {%- set system = messages[0]['content'] -%}
  {%- set loop_messages = messages[1:] -%}
{%- else -%}
  {%- set system = $default_system if $has_default else none -%}
  {%- set loop_messages = messages -%}
{%- endif -%}
{%- if enable_thinking is not defined -%}{%- set enable_thinking = $enable_thinking -%}{%- endif -%}
{%- set ns = namespace(system_text=none, tools_text='') -%}
{%- if system is not none or tools -%}
  {%- set ns.system_text = system if system is not none else '' -%}
  {%- if tools -%}
    {%- set ns.tools_text = $tools_before -%}
    {%- for tool in tools -%}
      {%- set schema = {'type': 'function', 'function': tool} if $wrap and tool.get('type') != 'function' else tool -%}
      {%- if not loop.first -%}{%- set ns.tools_text = ns.tools_text + $tool_joiner -%}{%- endif -%}
      {%- set ns.tools_text = ns.tools_text + $tool_before + (schema | tojson(indent=$indent)) + $tool_after -%}
    {%- endfor -%}
    {%- set ns.tools_text = ns.tools_text + $tools_after -%}
    {%- if not system -%}{%- set ns.system_text = ns.tools_text -%}
    {%- elif $tools_first -%}{%- set ns.system_text = ns.tools_text + $tools_separator + system -%}
    {%- else -%}{%- set ns.system_text = system + $tools_separator + ns.tools_text -%}{%- endif -%}
  {%- endif -%}
{%- endif -%}
{%- set header = $assistant_header -%}
{%- if $thinking and not enable_thinking -%}{%- set header = header + $open + $close -%}{%- endif -%}
{{- $prefix -}}
{%- if ns.system_text is not none and not $system_in_user -%}
  {{- $system_before + ns.system_text + $system_after -}}
{%- endif -%}
{%- for message in loop_messages -%}
  {%- if message['role'] == 'user' -%}
    {%- if loop.first and $system_in_user and ns.system_text -%}
      {{- $user_before + $system_before + ns.system_text + $system_after + message['content'] + $user_after -}}
    {%- else -%}
      {{- $user_before + message['content'] + $user_after -}}
    {%- endif -%}
  {%- elif message['role'] in ['observation', 'tool'] -%}
    {{- $observation_before + $response_before + message['content'] + $response_after + $observation_after -}}
  {%- elif message['role'] in ['assistant', 'function_call'] -%}
    {%- if message['role'] == 'function_call' -%}
      {%- set reply = $call_before + (message['content'] | replace($arguments_key, $call_key)) + $call_after -%}
    {%- else -%}
      {%- set reply = message['content'] -%}
    {%- endif -%}
    {%- if $thinking -%}
      {%- if not enable_thinking -%}
        {%- if $close.strip() in reply -%}{%- set reply = reply.split($close.strip())[-1].lstrip("\\n") -%}{%- endif -%}
      {%- elif $open.strip() not in reply and $close.strip() not in reply -%}
        {%- set reply = $open + $close + reply -%}
      {%- endif -%}
    {%- endif -%}
    {{- header + reply + $assistant_after -}}
  {%- else -%}
    {{- raise_exception('unsupported role ' + message['role']) -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- header -}}{%- endif -%}
"""


def prepare_tokenizer(tokenizer: Any, template: Template) -> list[int]:
    """Makes `tokenizer` speak `template`; idempotent and never removes anything.

    Adds the template's control tokens it lacks as special tokens (kept whole, skipped when decoding; one it
    has as a plain added token is flagged special, same id), writes `template.jinja()` as its chat template,
    and sets a pad token (eos) if it has none.

    Args:
        tokenizer: a transformers tokenizer, changed in place.
        template: the chat template.

    Returns:
        Ids of tokens new to the vocabulary (their embedding rows must be trained); [] on a second call.
    """
    vocab = tokenizer.get_vocab()
    # flagged special, so masking's guard can split message text that spells one
    registered = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    missing = [token for token in template.special_tokens if token not in registered]
    new = [token for token in missing if token not in vocab]
    if missing:
        # v5 name of additional_special_tokens; replace=False keeps the tokenizer's existing extras
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    tokenizer.chat_template = template.jinja()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or template.end_token
    return tokenizer.convert_tokens_to_ids(new)
