"""gradient_checkpointing: auto decides from an activation estimate that matches what autograd really keeps."""

from __future__ import annotations

from pathlib import Path

import torch

from helpers import make_config
from sftkit.model import resolve_precision
from sftkit.training.memory import Shape, activation_bytes, micro_batch_tokens, use_gradient_checkpointing


def _saved_bytes(model: torch.nn.Module, input_ids: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd saves in one decoder forward (what checkpointing frees).

    The decoder alone: the head and loss are the chunked loss's business and never keep full logits.
    """
    storages: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    params = {p.data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state.sum().backward()
    return sum(size for ptr, size in storages.items() if ptr not in params)


def test_estimate_is_within_reach_of_the_saved_tensors(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    tokens = 512
    measured = _saved_bytes(model, torch.randint(3, 500, (1, tokens)))
    estimate = activation_bytes(Shape.of(model.config), tokens, 4)
    assert 0.9 * measured <= estimate <= 1.1 * measured, (estimate, measured)  # 1,184 vs 1,191.5 values/token/layer


def test_explicit_values_are_honoured_and_auto_follows_the_estimate(tiny_model_dir: Path) -> None:
    def decide(**keys: object) -> bool:
        cfg = make_config(model_name_or_path=tiny_model_dir, packing=True, cutoff_len=4096, **keys)
        return use_gradient_checkpointing(cfg, resolve_precision(cfg))

    assert decide(gradient_checkpointing=True) and not decide(gradient_checkpointing=False, batch_tokens=10**9)
    assert not decide()  # the tiny model's 4,096 tokens fit any machine
    assert decide(batch_tokens=10**9)  # a billion tokens of activations fit none
    cfg = make_config(packing=True, cutoff_len=1024, per_device_train_batch_size=8)
    assert micro_batch_tokens(cfg) == 8192 and micro_batch_tokens(make_config(packing=True, batch_tokens=5000)) == 5000


def test_an_unreadable_model_config_keeps_checkpointing_on(tmp_path: Path) -> None:
    cfg = make_config(model_name_or_path=tmp_path / "missing")
    assert use_gradient_checkpointing(cfg, resolve_precision(cfg))


def test_the_ernie_shape_needs_checkpointing_at_the_seed_runs_batch_only() -> None:
    from sftkit.tiny import ernie_shape_config

    shape = Shape.of(ernie_shape_config())
    assert 0.3e9 < shape.parameters < 0.4e9  # ERNIE-4.5-0.3B: 0.36B parameters
    per_token = activation_bytes(shape, 1, 2)
    assert 32 * 4096 * per_token > 0.75 * 80 * 2**30 > 8 * 4096 * per_token  # H100 80 GB: batch 32 no, batch 8 yes
