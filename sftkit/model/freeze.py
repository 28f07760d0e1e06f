"""Freeze (partial-parameter) fine-tuning and LLaMA Pro's expanded blocks, with LLaMA-Factory's semantics.

freeze_trainable_layers n > 0 trains the last n decoder layers, n < 0 the first -n; with use_llama_pro, n
is the number of expanded blocks, every (layers / n)-th layer (LLaMA-Factory's scripts/llama_pro.py puts
each copy last in its group). freeze_trainable_modules picks modules inside those layers (mlp,
self_attn, ... or all), freeze_extra_modules names modules outside them (embed_tokens, norm). Names
match as LLaMA-Factory matches them: ".{layer}.{module}" as a substring of a parameter's name.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from sftkit.errors import SftkitError

if TYPE_CHECKING:
    from sftkit.config import SftConfig

logger = logging.getLogger(__name__)


def freeze_layers(model: Any, cfg: SftConfig) -> list[str]:
    """Leaves only the chosen layers' modules (and the extra modules) trainable; returns the name patterns.

    Raises:
        SftkitError: a module name the model does not have, or LLaMA Pro blocks that do not divide the layers.
    """
    layer_ids = trainable_layer_ids(_num_layers(model), cfg.freeze_trainable_layers, cfg.use_llama_pro)
    inside, outside = _module_names(model)
    patterns = []
    for module in cfg.freeze_trainable_modules:
        if module != "all" and module not in inside:
            raise SftkitError(
                f"freeze_trainable_modules: {module!r} is not a module of the decoder layers; choose "
                f"from {', '.join(sorted(inside))} or all"
            )
        patterns += [f".{i}.{module if module != 'all' else ''}" for i in layer_ids]
    for module in cfg.freeze_extra_modules or []:
        if module not in outside:
            raise SftkitError(
                f"freeze_extra_modules: {module!r} is not a module outside the decoder layers; choose "
                f"from {', '.join(sorted(outside))}"
            )
        patterns.append(module)
    for name, param in model.named_parameters():
        param.requires_grad_(any(pattern in name for pattern in patterns))
    logger.info("freeze: training layers %s (%s)", ",".join(map(str, layer_ids)), ",".join(patterns))
    return patterns


def trainable_layer_ids(num_layers: int, n: int, llama_pro: bool) -> list[int]:
    """The decoder layers that train: the last n (n > 0), the first -n (n < 0), or LLaMA Pro's n blocks.

    Raises:
        SftkitError: LLaMA Pro's block count does not divide the number of layers.
    """
    if llama_pro:
        if num_layers % n:
            raise SftkitError(
                f"freeze_trainable_layers: {n} expanded blocks do not divide the model's {num_layers} "
                "layers; use the number of blocks scripts/llama_pro.py added"
            )
        stride = num_layers // n
        return list(range(stride - 1, num_layers, stride))
    if n > 0:
        return list(range(max(0, num_layers - n), num_layers))
    return list(range(min(-n, num_layers)))


def expanded_block_modules(model: Any, targets: list[str] | str, n: int) -> list[str]:
    """LoRA with use_llama_pro: the full names of the target linear modules inside the expanded blocks."""
    import torch

    layer_ids = trainable_layer_ids(_num_layers(model), n, llama_pro=True)
    marks = [f".{i}." for i in layer_ids]
    head = model.get_output_embeddings()
    return [
        name
        for name, module in model.named_modules()
        if any(mark in name for mark in marks)
        and isinstance(module, torch.nn.Linear)
        and module is not head
        and (targets == "all-linear" or name.rsplit(".", 1)[-1] in targets)
    ]


def _num_layers(model: Any) -> int:
    config = getattr(model.config, "text_config", model.config)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", None)
    if not layers:
        raise SftkitError(
            f"finetuning_type: freeze: {type(model).__name__} does not say how many layers it has; use lora or full"
        )
    return int(layers)


def _module_names(model: Any) -> tuple[set[str], set[str]]:
    """(modules inside the numbered decoder layers, modules outside them), as LLaMA-Factory names them."""
    inside, outside = set(), set()
    for name, _ in model.named_parameters():
        for mark in (".0.", ".1."):  # mixture-of-depths models start at layer 1
            if mark in name:
                inside.add(name.split(mark)[-1].split(".")[0])
                break
        if re.search(r"\.\d+\.", name) is None:
            outside.add(name.split(".")[-2])  # the module holding the weight/bias
    return inside, outside
