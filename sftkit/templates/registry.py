"""The named chat templates: one `Template` entry each; adding a template is adding an entry here."""

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
    # Meta's Llama 3 / 3.1 instruct format; tool results in the `ipython` role, as Llama 3.1 and LLaMA-Factory.
    Template(
        name="llama3",
        prefix="<|begin_of_text|>",
        system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant="<|start_header_id|>assistant<|end_header_id|>\n\n{content}<|eot_id|>",
        observation="<|start_header_id|>ipython<|end_header_id|>\n\n{content}<|eot_id|>",
        end_token="<|eot_id|>",
        special_tokens=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
)
_BY_NAME = {template.name: template for template in _DEFINITIONS}
TEMPLATES = tuple(_BY_NAME)
# LLaMA-Factory template names whose format one of ours already is, or the nearest thing.
TEMPLATE_HINTS = {
    "qwen": "Qwen2/2.5 use chatml; put Qwen's system prompt in default_system",
    "ernie": "ERNIE-4.5 base models: ernie_nothink; the thinking variant is not implemented",
}


def get_template(name: str) -> Template:
    """The template called `name` (one of `TEMPLATES`).

    Raises:
        ConfigError: unknown name.
    """
    if name not in _BY_NAME:
        raise ConfigError(f"unknown template {name!r}; choose one of {', '.join(TEMPLATES)}")
    return _BY_NAME[name]


