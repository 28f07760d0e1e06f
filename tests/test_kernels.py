"""Load-time kernels: compiled decoder layers train to the same losses; Liger's patch finds ERNIE's modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import make_config
from sftkit.config import environment_notes
from sftkit.training.kernels import (
    apply_kernels,
    compile_decoder_layers,
    decoder_layers,
    is_rms_norm,
    is_swiglu_mlp,
    liger_usable,
)

LIGER = liger_usable("cuda") and torch.cuda.is_available()


def _model(model_dir: Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").to(device)


def _batch(device: str = "cpu") -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 500, (2, 24), generator=gen)
    return {"input_ids": input_ids.to(device), "labels": input_ids.clone().to(device), "use_cache": False}


def _train_losses(model: torch.nn.Module, steps: int, device: str = "cpu") -> list[float]:
    """A few real AdamW steps on one batch: the losses, and the weights move."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = model(**_batch(device)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def _compiled_equals_eager(model_dir: Path, backend: str) -> None:
    eager = _train_losses(_model(model_dir), 3)
    model = _model(model_dir)
    assert compile_decoder_layers(model, backend=backend) == len(decoder_layers(model)) == 2
    compiled = _train_losses(model, 3)
    assert eager[-1] < eager[0]  # it trains
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_compiled_layers_train_to_the_same_losses(tiny_model_dir: Path) -> None:
    # aot_eager traces the layers through dynamo and AOTAutograd (the graphs inductor would fuse) in seconds
    _compiled_equals_eager(tiny_model_dir, "aot_eager")


@pytest.mark.integration  # inductor builds C++ kernels on a CPU: a minute on two cores
def test_inductor_compiled_layers_train_to_the_same_losses(tiny_model_dir: Path) -> None:
    _compiled_equals_eager(tiny_model_dir, "inductor")


def test_liger_patch_finds_ernies_norms_and_mlps(tiny_model_dir: Path) -> None:
    model = _model(tiny_model_dir)
    layers = len(decoder_layers(model))
    assert sum(is_rms_norm(m) for m in model.modules()) == 2 * layers + 1  # two per layer, and the final norm
    assert sum(is_swiglu_mlp(m) for m in model.modules()) == layers
    assert not any(is_rms_norm(m) or is_swiglu_mlp(m) for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_liger_on_a_cpu_changes_nothing_and_validate_says_so(tiny_model_dir: Path) -> None:
    model = _model(tiny_model_dir)
    before = [type(m) for m in model.modules()]
    assert apply_kernels(model, enable_liger_kernel=True, torch_compile=False, device="cpu") == []
    assert [type(m) for m in model.modules()] == before
    notes = environment_notes(make_config(enable_liger_kernel=True))
    if torch.cuda.is_available() and liger_usable("cuda"):
        assert notes == []
    else:
        assert len(notes) == 1 and notes[0].startswith("enable_liger_kernel: Liger's kernels need a CUDA GPU")
    assert environment_notes(make_config()) == []


@pytest.mark.skipif(not LIGER, reason="needs a CUDA GPU and liger-kernel (scripts/gpu_check.sh runs it)")
def test_liger_kernels_give_the_same_loss_and_gradients(tiny_model_dir: Path) -> None:
    from sftkit.training.kernels import apply_liger_kernels

    ref_model, model = _model(tiny_model_dir, "cuda", torch.bfloat16), _model(tiny_model_dir, "cuda", torch.bfloat16)
    layers = len(decoder_layers(model))
    assert apply_liger_kernels(model) == {"rms_norm": 2 * layers + 1, "swiglu": layers}
    ref, out = ref_model(**_batch("cuda")), model(**_batch("cuda"))
    ref.loss.backward()
    out.loss.backward()
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-2, atol=1e-2)
    ref_grads = dict(ref_model.named_parameters())
    for name, param in model.named_parameters():  # the same names: the norms' weights are shared, not copied
        torch.testing.assert_close(param.grad.float(), ref_grads[name].grad.float(), rtol=5e-2, atol=5e-2, msg=name)


def test_liger_is_applied_by_sftkit_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # kernels.py swaps the modules at load and SftkitTrainer takes the fused loss; transformers' own switch
    # (use_liger_kernel) would patch a model type Liger knows a second time, so it stays off where Liger runs
    from sftkit.model import Precision
    from sftkit.training import arguments

    monkeypatch.setattr(arguments, "liger_available", lambda: True)
    cfg, cuda = make_config(enable_liger_kernel=True), Precision("float32", "cuda", "test")
    assert arguments.use_liger_kernel(cfg, cuda)  # the trainer's fused loss is on
    assert arguments.build_sft_config(cfg, cuda).use_liger_kernel is False
