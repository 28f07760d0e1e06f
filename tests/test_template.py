"""Templates: hand-written renderings, the Jinja chat_template reproducing them, tokenizer preparation."""

from __future__ import annotations

import json

import pytest

from sftkit.errors import ConfigError, DataError
from sftkit.templates import get_template, parse_tools, prepare_tokenizer

# The three templates these tests were written for; tests/test_chat_templates.py covers every template.
TEMPLATES = ("chatml", "ernie_nothink", "llama3")

TOOLS = json.dumps(
    [
        {
            "name": "get_weather",
            "description": "Weather for a city, °C",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
)
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
TOOL_BLOCK = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"name": "get_weather", "description": "Weather for a city, °C", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}\n</tools>\n\n'
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)

SINGLE = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello there."}]
SYSTEM = [{"role": "system", "content": "Be brief."}, *SINGLE]
MULTI = [*SYSTEM, {"role": "user", "content": "And {braces}?"}, {"role": "assistant", "content": "Fine."}]
TOOL_TURNS = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "function_call", "content": CALL},
    {"role": "observation", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "It is 21 °C."},
]
EMPTY_SYSTEM = [{"role": "system", "content": ""}, *SINGLE]
CONVERSATIONS = {
    "single": (SINGLE, None),
    "system": (SYSTEM, None),
    "multi": (MULTI, None),
    "empty_system": (EMPTY_SYSTEM, None),
    "tools": (TOOL_TURNS, TOOLS),
    "tools_system": ([{"role": "system", "content": "Be brief."}, *TOOL_TURNS], TOOLS),
}

# ERNIE-4.5-0.3B's chat_template, verbatim from its tokenizer_config.json (transformers' DEFAULT_CHAT_TEMPLATE).
ERNIE_OFFICIAL = (
    "{%- if not add_generation_prompt is defined -%}\n    {%- set add_generation_prompt = true -%}\n{%- endif -%}\n"
    '{%- if not cls_token is defined -%}\n    {%- set cls_token = "<|begin_of_sentence|>" -%}\n{%- endif -%}\n'
    '{%- if not sep_token is defined -%}\n    {%- set sep_token = "<|end_of_sentence|>" -%}\n{%- endif -%}\n'
    '{{- cls_token -}}\n{%- for message in messages -%}\n    {%- if message["role"] == "user" -%}\n'
    '        {{- "User: " + message["content"] + "\\n" -}}\n    {%- elif message["role"] == "assistant" -%}\n'
    '        {{- "Assistant: " + message["content"] + sep_token -}}\n'
    '    {%- elif message["role"] == "system" -%}\n        {{- message["content"] + "\\n" -}}\n    {%- endif -%}\n'
    '{%- endfor -%}\n{%- if add_generation_prompt -%}\n    {{- "Assistant: " -}}\n{%- endif -%}'
)


def text(template_name: str, messages: list[dict[str, str]], tools: str | None = None) -> str:
    return "".join(piece for piece, _ in get_template(template_name).render(messages, tools))


def trained(template_name: str, messages: list[dict[str, str]], tools: str | None = None) -> list[str]:
    return [piece for piece, is_trained in get_template(template_name).render(messages, tools) if is_trained]


def test_template_names_match_config() -> None:
    from sftkit.templates import TEMPLATES as ALL

    assert tuple(get_template(name).name for name in ALL) == ALL and ALL[:3] == TEMPLATES
    with pytest.raises(
        ConfigError,
        match="leave template unset to train in the model's own format.*chatml, ernie_nothink, llama3, qwen",
    ):
        get_template("mistral7")


@pytest.mark.parametrize("name", TEMPLATES)
def test_definition_puts_end_token_right_after_content(name: str) -> None:
    template = get_template(name)
    assert template.assistant.partition("{content}")[2].startswith(template.end_token)
    if name in ("glm4", "empty"):  # LLaMA-Factory's efficient_eos templates: nothing after a reply, stop words stop
        assert template.end_token == "" and (template.stop_words or name == "empty")
    else:
        assert template.end_token in template.special_tokens


def test_chatml_by_hand() -> None:
    assert text("chatml", MULTI) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nHello there.<|im_end|>\n"
        "<|im_start|>user\nAnd {braces}?<|im_end|>\n<|im_start|>assistant\nFine.<|im_end|>\n"
    )
    assert "".join(trained("chatml", MULTI)) == "Hello there.<|im_end|>Fine.<|im_end|>"
    assert get_template("chatml").generation_prompt(SYSTEM[:-1]) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_ernie_by_hand() -> None:
    assert text("ernie_nothink", SINGLE) == "<|begin_of_sentence|>User: hi\nAssistant: Hello there.<|end_of_sentence|>"
    assert text("ernie_nothink", MULTI) == (
        "<|begin_of_sentence|>Be brief.\nUser: hi\nAssistant: Hello there.<|end_of_sentence|>"
        "User: And {braces}?\nAssistant: Fine.<|end_of_sentence|>"
    )
    assert "".join(trained("ernie_nothink", MULTI)) == "Hello there.<|end_of_sentence|>Fine.<|end_of_sentence|>"
    assert get_template("ernie_nothink").generation_prompt(SYSTEM[:-1]) == (
        "<|begin_of_sentence|>Be brief.\nUser: hi\nAssistant: "
    )


@pytest.mark.parametrize("case", ["single", "system", "multi", "empty_system"])
def test_ernie_matches_the_official_chat_template(tiny_tokenizer, case: str) -> None:
    messages, _ = CONVERSATIONS[case]
    official = tiny_tokenizer.apply_chat_template(
        messages, chat_template=ERNIE_OFFICIAL, tokenize=False, add_generation_prompt=False
    )
    assert official == text("ernie_nothink", messages)
    prompt = tiny_tokenizer.apply_chat_template(
        messages[:-1], chat_template=ERNIE_OFFICIAL, tokenize=False, add_generation_prompt=True
    )
    assert prompt == get_template("ernie_nothink").generation_prompt(messages[:-1])


def test_tools_rendering_chatml() -> None:
    assert text("chatml", [{"role": "system", "content": "Be brief."}, *TOOL_TURNS], TOOLS) == (
        f"<|im_start|>system\nBe brief.\n\n{TOOL_BLOCK}<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        f"<|im_start|>assistant\n<tool_call>\n{CALL}\n</tool_call><|im_end|>\n"
        '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\nIt is 21 °C.<|im_end|>\n"
    )
    assert trained("chatml", TOOL_TURNS, TOOLS) == [
        f"<tool_call>\n{CALL}\n</tool_call>",
        "<|im_end|>",
        "It is 21 °C.",
        "<|im_end|>",
    ]


def test_tools_rendering_ernie_without_system() -> None:
    assert text("ernie_nothink", TOOL_TURNS, TOOLS) == (
        f"<|begin_of_sentence|>{TOOL_BLOCK}\nUser: Weather in Paris?\n"
        f"Assistant: <tool_call>\n{CALL}\n</tool_call><|end_of_sentence|>"
        'User: <tool_response>\n{"temp": 21}\n</tool_response>\n'
        "Assistant: It is 21 °C.<|end_of_sentence|>"
    )


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("case", sorted(CONVERSATIONS))
def test_jinja_reproduces_training_text_and_generation_prompt(tiny_tokenizer, name: str, case: str) -> None:
    template = get_template(name)
    prepare_tokenizer(tiny_tokenizer, template)
    messages, tools = CONVERSATIONS[case]
    schemas = json.loads(tools) if tools else None
    full = tiny_tokenizer.apply_chat_template(messages, tools=schemas, tokenize=False)
    assert full == text(name, messages, tools)
    prompt = tiny_tokenizer.apply_chat_template(
        messages[:-1], tools=schemas, tokenize=False, add_generation_prompt=True
    )
    assert prompt == template.generation_prompt(messages[:-1], tools)


@pytest.mark.parametrize("name", TEMPLATES)
def test_jinja_accepts_tool_role_as_observation(tiny_tokenizer, name: str) -> None:
    prepare_tokenizer(tiny_tokenizer, get_template(name))
    as_tool = [dict(m, role="tool") if m["role"] == "observation" else m for m in TOOL_TURNS]
    assert tiny_tokenizer.apply_chat_template(as_tool, tools=json.loads(TOOLS), tokenize=False) == text(
        name, TOOL_TURNS, TOOLS
    )


@pytest.mark.parametrize("name", TEMPLATES)
def test_saved_tokenizer_keeps_template_and_control_tokens(tiny_tokenizer, tmp_path, name: str) -> None:
    from transformers import AutoTokenizer

    template = get_template(name)
    prepare_tokenizer(tiny_tokenizer, template)
    tiny_tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.apply_chat_template(MULTI, tokenize=False) == text(name, MULTI)
    assert set(template.special_tokens) <= set(reloaded.all_special_tokens)
    assert len(reloaded) == len(tiny_tokenizer)
    assert prepare_tokenizer(reloaded, template) == []


@pytest.mark.parametrize("name", TEMPLATES)
def test_prepare_tokenizer_adds_special_tokens_once(tiny_tokenizer, name: str) -> None:
    template = get_template(name)
    size = len(tiny_tokenizer)
    added = prepare_tokenizer(tiny_tokenizer, template)
    count = len(template.special_tokens)
    assert added == list(range(size, size + count))
    assert len(tiny_tokenizer) == size + count
    for token, token_id in zip(template.special_tokens, added, strict=True):
        assert tiny_tokenizer(token, add_special_tokens=False).input_ids == [token_id]
        assert token in tiny_tokenizer.all_special_tokens
    assert tiny_tokenizer.chat_template == template.jinja()
    assert tiny_tokenizer.pad_token == "<pad>"  # kept: it had one
    assert prepare_tokenizer(tiny_tokenizer, template) == []
    assert len(tiny_tokenizer) == size + count


def test_prepare_tokenizer_never_shrinks_and_sets_pad(tiny_tokenizer) -> None:
    tiny_tokenizer.add_special_tokens({"extra_special_tokens": ["<tool>"]})
    tiny_tokenizer.pad_token = None
    size = len(tiny_tokenizer)
    prepare_tokenizer(tiny_tokenizer, get_template("chatml"))
    added = prepare_tokenizer(tiny_tokenizer, get_template("ernie_nothink"))
    assert added == [size + 2, size + 3]
    assert {"<tool>", "<|im_start|>", "<|im_end|>", "<|begin_of_sentence|>", "<|end_of_sentence|>"} <= set(
        tiny_tokenizer.all_special_tokens
    )
    assert tiny_tokenizer.pad_token == tiny_tokenizer.eos_token == "</s>"


def test_stop_token_ids(tiny_tokenizer) -> None:
    template = get_template("chatml")
    prepare_tokenizer(tiny_tokenizer, template)
    assert template.stop_token_ids(tiny_tokenizer) == [
        tiny_tokenizer.convert_tokens_to_ids("<|im_end|>"),
        tiny_tokenizer.eos_token_id,
    ]


@pytest.mark.parametrize(
    "messages, problem",
    [
        ([{"role": "assistant", "content": "a"}], "message 0 is assistant"),
        ([{"role": "user", "content": "q"}], "must end with an assistant reply"),
        ([{"role": "user", "content": "q"}, {"role": "observation", "content": "o"}], "message 1 is observation"),
        (
            [*SINGLE, {"role": "system", "content": "late"}, {"role": "assistant", "content": "a"}],
            "message 2 is system",
        ),
        ([], "empty conversation"),
    ],
)
def test_roles_out_of_order_are_data_errors(messages: list[dict[str, str]], problem: str) -> None:
    with pytest.raises(DataError, match=problem):
        get_template("chatml").render(messages)


def test_generation_prompt_needs_a_user_side_turn_last() -> None:
    with pytest.raises(DataError, match="must end with a user-side message"):
        get_template("chatml").generation_prompt(SINGLE)


@pytest.mark.parametrize("tools, expected", [(None, []), ("", []), ("[]", []), ('{"name": "f"}', [{"name": "f"}])])
def test_parse_tools(tools: str | None, expected: list) -> None:
    assert parse_tools(tools) == expected


@pytest.mark.parametrize("tools", ["[{", '["f"]', "3"])
def test_invalid_tools_are_data_errors(tools: str) -> None:
    with pytest.raises(DataError, match="tools"):
        get_template("chatml").render(SINGLE, tools)


# ---------------------------------------------------------------------------- LLaMA-Factory's templates (issue 29)

ADDED = (
    "qwen3_5",
    "qwen3_5_nothink",
    "yi",
    "smollm2",
    "intern2",
    "lfm2",
    "deepseek",
    "deepseekr1",
    "gemma2",
    "phi",
    "cohere",
    "granite3",
    "hunyuan",
    "olmo",
)
HI = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
]
# Each as LLaMA-Factory's data/template.py renders [system, user, assistant] (its format_prefix + system + user
# slots, then the assistant slot; {bos}/{eos} for the tokenizer's tokens).
LLAMAFACTORY_TEXT = {
    "qwen3_5_nothink": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n",
    "deepseek": "{bos}Be brief.\n\nUser: Hi\n\nAssistant:Hello!{eos}",
    "deepseekr1": "{bos}Be brief.<｜User｜>Hi<｜Assistant｜><think>\n\n</think>\n\nHello!{eos}",
    "phi": "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n",
    "granite3": "<|start_of_role|>system<|end_of_role|>Be brief.<|end_of_text|>\n<|start_of_role|>user<|end_of_role|>"
    "Hi<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>Hello!<|end_of_text|>\n",
    "hunyuan": "<|startoftext|>Be brief.<|extra_4|>Hi<|extra_0|>Hello!<|eos|>",
    "cohere": "{bos}<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Be brief.<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>"
    "<|USER_TOKEN|>Hi<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Hello!<|END_OF_TURN_TOKEN|>",
    "gemma2": "{bos}<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n",
    "olmo": "{eos}Be brief.<|user|>\nHi<|assistant|>\nHello!{eos}",
}


@pytest.mark.parametrize("name", sorted(LLAMAFACTORY_TEXT))
def test_added_template_renders_as_llamafactory(name: str) -> None:
    assert text(name, HI) == LLAMAFACTORY_TEXT[name]


@pytest.mark.parametrize("name", ADDED)
def test_added_template_ends_replies_on_its_token_and_its_jinja_reproduces_training(tiny_tokenizer, name: str) -> None:
    from sftkit.templates import TEMPLATES as ALL

    template = get_template(name)
    assert name in ALL and template.assistant.partition("{content}")[2].startswith(template.end_token)
    bound = template.bind(tiny_tokenizer)  # {bos} and {eos} become the tokenizer's own tokens
    prepare_tokenizer(tiny_tokenizer, bound)
    assert tiny_tokenizer.apply_chat_template(MULTI, tokenize=False) == "".join(
        piece for piece, _ in bound.render(MULTI)
    )
    assert tiny_tokenizer.apply_chat_template(MULTI[:-1], tokenize=False, add_generation_prompt=True) == (
        bound.generation_prompt(MULTI[:-1])
    )


@pytest.mark.parametrize("name", ["qwen3_5", "lfm2", "deepseek"])
def test_added_template_without_a_tool_format_says_to_use_the_models_own(name: str) -> None:
    with pytest.raises(DataError, match="tool"):
        text(name, TOOL_TURNS, TOOLS)
    if name != "deepseek":
        with pytest.raises(DataError, match="leave template unset to train with the model's own chat template"):
            text(name, TOOL_TURNS, TOOLS)
