"""The named chat templates: one `Template` entry each; adding a template is adding an entry here.

A model's own Jinja template needs no entry: `JinjaTemplate` (sftkit.templates.jinja) trains with it.
"""

from __future__ import annotations

from sftkit.errors import ConfigError
from sftkit.templates.template import Template

_DEFINITIONS = (
    Template(
        name="chatml",
        prefix="",
        system="<|im_start|>system\n{content}<|im_end|>\n",
        user="<|im_start|>user\n{content}<|im_end|>\n",
        assistant="<|im_start|>assistant\n{content}<|im_end|>\n",
        observation="<|im_start|>user\n{content}<|im_end|>\n",
        end_token="<|im_end|>",
        special_tokens=("<|im_start|>", "<|im_end|>"),
    ),
    # ERNIE-4.5's own chat template (as in the model's tokenizer_config.json), LLaMA-Factory's name.
    Template(
        name="ernie_nothink",
        prefix="<|begin_of_sentence|>",
        system="{content}\n",
        user="User: {content}\n",
        assistant="Assistant: {content}<|end_of_sentence|>",
        observation="User: {content}\n",
        end_token="<|end_of_sentence|>",
        special_tokens=("<|begin_of_sentence|>", "<|end_of_sentence|>"),
    ),
    # Meta's Llama 3 / 3.1 instruct format; with tools, Llama 3.1's JSON tool calling (schemas in the system
    # message, `{"name", "parameters"}` calls, results in the `ipython` role), as Meta's template and LLaMA-Factory.
    Template(
        name="llama3",
        prefix="<|begin_of_text|>",
        system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant="<|start_header_id|>assistant<|end_header_id|>\n\n{content}<|eot_id|>",
        observation="<|start_header_id|>ipython<|end_header_id|>\n\n{content}<|eot_id|>",
        end_token="<|eot_id|>",
        special_tokens=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        tool_format="llama3",
    ),
    # Below: LLaMA-Factory's templates of the same name (text, stop words, default systems) as reference.
    Template(
        name="qwen",
        prefix="",
        system="<|im_start|>system\n{content}<|im_end|>\n",
        user="<|im_start|>user\n{content}<|im_end|>\n",
        assistant="<|im_start|>assistant\n{content}<|im_end|>\n",
        observation="<|im_start|>user\n{content}<|im_end|>\n",
        end_token="<|im_end|>",
        special_tokens=("<|im_start|>", "<|im_end|>"),
        default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    ),
    # Qwen3 thinking: a reply without <think> gets an empty thought block (trained); enable_thinking: false
    # drops the reasoning and puts the empty block in the prompt instead.
    Template(
        name="qwen3",
        prefix="",
        system="<|im_start|>system\n{content}<|im_end|>\n",
        user="<|im_start|>user\n{content}<|im_end|>\n",
        assistant="<|im_start|>assistant\n{content}<|im_end|>\n",
        observation="<|im_start|>user\n{content}<|im_end|>\n",
        end_token="<|im_end|>",
        special_tokens=("<|im_start|>", "<|im_end|>"),
        thought=("<think>\n", "\n</think>\n\n"),
    ),
    Template(
        name="qwen3_nothink",
        prefix="",
        system="<|im_start|>system\n{content}<|im_end|>\n",
        user="<|im_start|>user\n{content}<|im_end|>\n",
        assistant="<|im_start|>assistant\n{content}<|im_end|>\n",
        observation="<|im_start|>user\n{content}<|im_end|>\n",
        end_token="<|im_end|>",
        special_tokens=("<|im_start|>", "<|im_end|>"),
    ),
    # ERNIE-4.5 thinking models (chatml-like, blank line between turns, think mode in the system prompt).
    Template(
        name="ernie",
        prefix="",
        system="<|im_start|>system\n{content}<|im_end|>\n\n",
        user="<|im_start|>user\n{content}<|im_end|>\n\n",
        assistant="<|im_start|>assistant\n{content}<|im_end|>\n\n",
        observation="<|im_start|>tool\n{content}<|im_end|>\n\n",
        end_token="<|im_end|>",
        special_tokens=("<|im_start|>", "<|im_end|>"),
        default_system="<global_setting>\nthink_mode=True\n</global_setting>",
    ),
    Template(
        name="llama2",
        prefix="",
        system="<<SYS>>\n{content}\n<</SYS>>\n\n",
        user="{bos}[INST] {content} [/INST]",
        assistant="{content}{eos}",
        observation="{content}",
        end_token="{eos}",
        special_tokens=("{bos}", "{eos}"),
        tool_format=None,
        system_in_user=True,
    ),
    Template(
        name="mistral",
        prefix="{bos}",
        system="{content}\n\n",
        user="[INST] {content}[/INST]",
        assistant=" {content}{eos}",
        observation="{content}",
        end_token="{eos}",
        special_tokens=(
            "{bos}",
            "{eos}",
            "[INST]",
            "[/INST]",
            "[AVAILABLE_TOOLS]",
            "[/AVAILABLE_TOOLS]",
            "[TOOL_CALLS]",
            "[TOOL_RESULTS]",
            "[/TOOL_RESULTS]",
        ),
        tool_format="mistral",
        system_in_user=True,
    ),
    Template(
        name="gemma",
        prefix="{bos}",
        system="{content}\n\n",
        user="<start_of_turn>user\n{content}<end_of_turn>\n",
        assistant="<start_of_turn>model\n{content}<end_of_turn>\n",
        observation="<start_of_turn>tool\n{content}<end_of_turn>\n",
        end_token="<end_of_turn>",
        special_tokens=("{bos}", "<start_of_turn>", "<end_of_turn>"),
        tool_format=None,
        system_in_user=True,
    ),
    Template(
        name="gemma3",
        prefix="{bos}",
        system="{content}\n\n",
        user="<start_of_turn>user\n{content}<end_of_turn>\n",
        assistant="<start_of_turn>model\n{content}<end_of_turn>\n",
        observation="<start_of_turn>tool\n{content}<end_of_turn>\n",
        end_token="<end_of_turn>",
        special_tokens=("{bos}", "<start_of_turn>", "<end_of_turn>"),
        tool_format=None,
        system_in_user=True,
    ),
    Template(
        name="phi4",
        prefix="",
        system="<|im_start|>system<|im_sep|>{content}<|im_end|>",
        user="<|im_start|>user<|im_sep|>{content}<|im_end|>",
        assistant="<|im_start|>assistant<|im_sep|>{content}<|im_end|>",
        observation="{content}",
        end_token="<|im_end|>",
        special_tokens=("<|im_start|>", "<|im_sep|>", "<|im_end|>"),
        tool_format=None,
    ),
    Template(
        name="deepseek3",
        prefix="{bos}",
        system="{content}",
        user="<｜User｜>{content}",
        assistant="<｜Assistant｜>{content}{eos}",
        observation="{content}",
        end_token="{eos}",
        special_tokens=("{bos}", "{eos}", "<｜User｜>", "<｜Assistant｜>"),
        tool_format=None,
        # the saved Jinja takes a call as the data's JSON text, and Jinja cannot take JSON apart
        no_tools_reason="the deepseek3 template has no tool-call format: DeepSeek V3 writes a call's name and "
        "arguments apart between its tool tokens, which a named template cannot; leave template unset "
        "to train with the model's own DeepSeek V3 chat template (tool calls and results; it has no "
        "place for tool schemas), or remove the tool turns",
    ),
    # GLM-4 writes no token after a reply: generation stops at the next role token (stop words), and a
    # reply's end is not trained (LLaMA-Factory's efficient_eos).
    Template(
        name="glm4",
        prefix="[gMASK]<sop>",
        system="<|system|>\n{content}",
        user="<|user|>\n{content}",
        assistant="<|assistant|>\n{content}",
        observation="<|observation|>\n{content}",
        end_token="",
        special_tokens=("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"),
        stop_words=("<|user|>", "<|observation|>"),
        tool_format=None,
    ),
    Template(
        name="default",
        prefix="",
        system="System: {content}{eos}\n",
        user="Human: {content}{eos}\n",
        assistant="Assistant:{content}{eos}\n",
        observation="{content}",
        end_token="{eos}",
        special_tokens=("{eos}",),
        tool_format=None,
    ),
    # No format at all (raw text); replies end with nothing, so generation stops only at eos.
    Template(
        name="empty",
        prefix="",
        system="{content}",
        user="{content}",
        assistant="{content}",
        observation="{content}",
        end_token="",
        special_tokens=(),
        tool_format=None,
    ),
    Template(
        name="alpaca",
        prefix="",
        system="{content}",
        user="### Instruction:\n{content}\n\n",
        assistant="### Response:\n{content}{eos}\n\n",
        observation="{content}",
        end_token="{eos}",
        special_tokens=("{eos}",),
        tool_format=None,
        default_system="Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n",
    ),
    Template(
        name="vicuna",
        prefix="",
        system="{content}",
        user="USER: {content} ",
        assistant="ASSISTANT:{content}{eos}",
        observation="{content}",
        end_token="{eos}",
        special_tokens=("{eos}",),
        tool_format=None,
        default_system="A chat between a curious user and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions.",
    ),
)

_OWN_TOOLS = (
    "the {name} template has no tool-call format sftkit can write ({what}); leave template unset to "
    "train with the model's own chat template, or remove the tool turns"
)


def _chatml(name: str, default_system: str | None = None, prefix: str = "", **kw: object) -> Template:
    """A ChatML family member: Yi, SmolLM2, InternLM2, LFM2, Qwen3.5 (LLaMA-Factory's definitions)."""
    return Template(
        name=name,
        prefix=prefix,
        system="<|im_start|>system\n{content}<|im_end|>\n",
        user="<|im_start|>user\n{content}<|im_end|>\n",
        assistant="<|im_start|>assistant\n{content}<|im_end|>\n",
        observation="<|im_start|>user\n{content}<|im_end|>\n",
        end_token="<|im_end|>",
        special_tokens=tuple(t for t in ("{bos}",) if t in prefix) + ("<|im_start|>", "<|im_end|>"),
        default_system=default_system,
        **kw,
    )  # type: ignore[arg-type]


# LLaMA-Factory's text templates added for LLaMA-Factory YAMLs (issue 29), as its data/template.py defines them
# (slots, stop words, default systems); the families' own tools formats are left to the model's own template.
_MORE = (
    # Qwen3.5: Qwen3's text and reasoning; its tool calls are XML (<function=...><parameter=...>), not Hermes JSON
    _chatml(
        "qwen3_5",
        thought=("<think>\n", "\n</think>\n\n"),
        tool_format=None,
        no_tools_reason=_OWN_TOOLS.format(name="qwen3_5", what="XML function calls"),
    ),
    _chatml(
        "qwen3_5_nothink",
        tool_format=None,
        no_tools_reason=_OWN_TOOLS.format(name="qwen3_5_nothink", what="XML function calls"),
    ),
    _chatml("yi"),
    _chatml("smollm2", default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face."),
    _chatml(
        "intern2",
        prefix="{bos}",
        default_system=(
            "You are an AI assistant whose name is InternLM (书生·浦语).\n"
            "- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI Laboratory "
            "(上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
            "- InternLM (书生·浦语) can understand and communicate fluently in the language chosen by the user such "
            "as English and 中文."
        ),
    ),
    _chatml(
        "lfm2",
        default_system="You are a helpful AI assistant.",
        tool_format=None,
        no_tools_reason=_OWN_TOOLS.format(name="lfm2", what="<|tool_call_start|> Python-style calls"),
    ),
    # DeepSeek LLM (V1/V2 chat) and DeepSeek-R1 (reasoning)
    Template(
        name="deepseek",
        prefix="{bos}",
        system="{content}\n\n",
        user="User: {content}\n\n",
        assistant="Assistant:{content}{eos}",
        observation="{content}",
        end_token="{eos}",
        special_tokens=("{bos}", "{eos}"),
        tool_format=None,
    ),
    Template(
        name="deepseekr1",
        prefix="{bos}",
        system="{content}",
        user="<｜User｜>{content}",
        assistant="<｜Assistant｜>{content}{eos}",
        observation="{content}",
        end_token="{eos}",
        special_tokens=("{bos}", "{eos}", "<｜User｜>", "<｜Assistant｜>"),
        thought=("<think>\n", "\n</think>\n\n"),
        tool_format=None,
    ),
    # Gemma 2: Gemma's turns (LLaMA-Factory also stops on <eos>)
    Template(
        name="gemma2",
        prefix="{bos}",
        system="{content}\n\n",
        user="<start_of_turn>user\n{content}<end_of_turn>\n",
        assistant="<start_of_turn>model\n{content}<end_of_turn>\n",
        observation="<start_of_turn>tool\n{content}<end_of_turn>\n",
        end_token="<end_of_turn>",
        special_tokens=("{bos}", "<start_of_turn>", "<end_of_turn>"),
        stop_words=("{eos}",),
        tool_format=None,
        system_in_user=True,
    ),
    # Phi-3 / Phi-3.5
    Template(
        name="phi",
        prefix="",
        system="<|system|>\n{content}<|end|>\n",
        user="<|user|>\n{content}<|end|>\n",
        assistant="<|assistant|>\n{content}<|end|>\n",
        observation="{content}",
        end_token="<|end|>",
        special_tokens=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
        tool_format=None,
    ),
    # Cohere Command R / R+
    Template(
        name="cohere",
        prefix="{bos}",
        system="<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{content}<|END_OF_TURN_TOKEN|>",
        user="<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{content}<|END_OF_TURN_TOKEN|>",
        assistant="<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{content}<|END_OF_TURN_TOKEN|>",
        observation="{content}",
        end_token="<|END_OF_TURN_TOKEN|>",
        special_tokens=(
            "{bos}",
            "<|START_OF_TURN_TOKEN|>",
            "<|SYSTEM_TOKEN|>",
            "<|USER_TOKEN|>",
            "<|CHATBOT_TOKEN|>",
            "<|END_OF_TURN_TOKEN|>",
        ),
        tool_format=None,
    ),
    # IBM Granite 3
    Template(
        name="granite3",
        prefix="",
        system="<|start_of_role|>system<|end_of_role|>{content}<|end_of_text|>\n",
        user="<|start_of_role|>user<|end_of_role|>{content}<|end_of_text|>\n",
        assistant="<|start_of_role|>assistant<|end_of_role|>{content}<|end_of_text|>\n",
        observation="{content}",
        end_token="<|end_of_text|>",
        special_tokens=("<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>"),
        tool_format=None,
    ),
    # Tencent Hunyuan (v1)
    Template(
        name="hunyuan",
        prefix="<|startoftext|>",
        system="{content}<|extra_4|>",
        user="{content}<|extra_0|>",
        assistant="{content}<|eos|>",
        observation="{content}",
        end_token="<|eos|>",
        special_tokens=("<|startoftext|>", "<|extra_4|>", "<|extra_0|>", "<|eos|>"),
        tool_format=None,
    ),
    # AllenAI OLMo (v1): the conversation opens with eos, as LLaMA-Factory writes it
    Template(
        name="olmo",
        prefix="{eos}",
        system="{content}",
        user="<|user|>\n{content}",
        assistant="<|assistant|>\n{content}{eos}",
        observation="{content}",
        end_token="{eos}",
        special_tokens=("{eos}", "<|user|>", "<|assistant|>"),
        tool_format=None,
    ),
)
_DEFINITIONS = (*_DEFINITIONS, *_MORE)
_BY_NAME = {template.name: template for template in _DEFINITIONS}
TEMPLATES = tuple(_BY_NAME)
# LLaMA-Factory template names whose format one of ours already is, or the nearest thing.
TEMPLATE_HINTS = {
    "qwen2_vl": "text-only training of Qwen2-VL uses qwen",
    "qwen3_vl": "text-only training of Qwen3-VL uses qwen3",
    "llama4": "not built in; leave template unset to train with the model's own chat template",
    "smollm": "SmolLM2's format is smollm2",
    "intern": "InternLM2's format is intern2",
}
# The answer to a LLaMA-Factory name sftkit does not build in: the model's own template trains in its format.
UNSET_HINT = "leave template unset to train in the model's own format (its tokenizer's chat template)"


def get_template(name: str) -> Template:
    """The template called `name` (one of `TEMPLATES`).

    Raises:
        ConfigError: unknown name.
    """
    if name not in _BY_NAME:
        raise ConfigError(f"unknown template {name!r}; {UNSET_HINT}, or choose one of {', '.join(TEMPLATES)}")
    return _BY_NAME[name]
