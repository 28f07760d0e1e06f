"""Chat templates: the conversation rules and the formats that turn a conversation into training text.

Below every stage: the config checks template names against the registry, the data stage renders and
masks with a `Template`, and the model, chat, merge and evaluation stages build prompts and stop tokens
from the same object. Submodules: `conversation` (roles, their order, tools), `template` (the `Template`
type, its rendering and Jinja), `jinja` (`JinjaTemplate`: a model's own Jinja chat template, masks derived
from it), `registry` (the named templates).
"""

from sftkit.templates.conversation import (
    ASSISTANT_SIDE,
    USER_SIDE,
    parse_tools,
    role_order_problem,
    split_system,
    with_system,
)
from sftkit.templates.jinja import JinjaTemplate
from sftkit.templates.registry import TEMPLATE_HINTS, TEMPLATES, get_template
from sftkit.templates.template import Segment, Template, prepare_tokenizer, remove_thought

__all__ = [
    "ASSISTANT_SIDE",
    "TEMPLATES",
    "TEMPLATE_HINTS",
    "USER_SIDE",
    "JinjaTemplate",
    "Segment",
    "Template",
    "get_template",
    "parse_tools",
    "prepare_tokenizer",
    "remove_thought",
    "role_order_problem",
    "split_system",
    "with_system",
]
