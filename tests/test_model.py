"""The model stage: tokenizer, precision, embeddings, LoRA adapter and its trainable token rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import make_config
from sftkit.config import SftConfig
from sftkit.data import load_tokenizer
from sftkit.errors import SftkitError
from sftkit.model import Precision, add_adapter, count_parameters, grow_embeddings, load_model, resolve_precision
from sftkit.model import precision as model_stage
from sftkit.templates import get_template

FP32 = Precision("float32", "cpu", "fp32 on cpu")
ERNIE_SEED_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def config(model_dir: Path | str, **overrides: Any) -> SftConfig:
    return make_config(model_name_or_path=model_dir, output_dir="out", **overrides)


def lora_model(tiny_model_dir: Path, **overrides: Any) -> tuple[Any, Any, list[int]]:
    cfg = config(tiny_model_dir, **overrides)
    tokenizer = load_tokenizer(cfg)
    ids = get_template(cfg.template).token_ids(tokenizer)
    torch.manual_seed(0)
    return add_adapter(load_model(cfg, tokenizer, FP32), cfg, ids), tokenizer, ids


# ---------------------------------------------------------------------------- tokenizer


def test_load_tokenizer_adds_the_template_tokens_and_chat_template(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    base_vocab = len(AutoTokenizer.from_pretrained(tiny_model_dir))
    tokenizer = load_tokenizer(config(tiny_model_dir))
    ids = get_template("chatml").token_ids(tokenizer)
    assert ids == [base_vocab, base_vocab + 1]  # the tiny tokenizer has no chat tokens: both are new
    assert tokenizer.convert_ids_to_tokens(ids) == ["<|im_start|>", "<|im_end|>"]
    assert "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.tokenize("<|im_end|>") == ["<|im_end|>"]  # kept whole


def test_unloadable_model_path_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(SftkitError, match=r"^folder .*missing does not exist \(looked in "):
        load_tokenizer(config(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SftkitError, match=r"model_name_or_path: cannot load the tokenizer from .*empty"):
        load_tokenizer(config(tmp_path / "empty"))


# ---------------------------------------------------------------------------- embeddings


def test_embeddings_only_grow_and_stay_tied(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = model.get_input_embeddings().weight.shape[0]
    grow_embeddings(model, rows - 10)  # a tokenizer smaller than the matrix: never shrink
    assert model.get_input_embeddings().weight.shape[0] == rows
    grow_embeddings(model, rows + 3)
    assert model.get_input_embeddings().weight.shape[0] == rows + 3
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


# ---------------------------------------------------------------------------- adapter


def test_template_tokens_train_as_token_rows_and_are_saved(tiny_model_dir: Path, tmp_path: Path) -> None:
    model, tokenizer, ids = lora_model(tiny_model_dir)
    hidden = model.config.hidden_size
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in name or "trainable_tokens_delta" in name for name in trainable)  # never whole matrices
    assert sum(p.numel() for name, p in trainable.items() if "trainable_tokens" in name) == len(ids) * hidden

    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    before = model.get_input_embeddings().weight[ids].detach().clone()
    other_before = model.get_input_embeddings().weight[: ids[0]].detach().clone()
    input_ids = torch.tensor([tokenizer("hello world").input_ids + [end]])
    model(input_ids=input_ids, labels=input_ids).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()

    after = model.get_input_embeddings().weight[ids].detach()
    assert not torch.allclose(after, before)  # the template's rows trained ...
    assert torch.equal(model.get_input_embeddings().weight[: ids[0]].detach(), other_before)  # ... and only they
    assert torch.equal(model.get_output_embeddings().weight[ids].detach(), after)  # tied output rows follow

    model.save_pretrained(tmp_path)
    reloaded = _reload(tiny_model_dir, tokenizer, tmp_path)
    assert torch.allclose(reloaded.get_input_embeddings().weight[ids], after)


def _reload(tiny_model_dir: Path, tokenizer: Any, adapter_dir: Path) -> Any:
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    with safe_open(adapter_dir / "adapter_model.safetensors", "pt") as saved:
        assert any("trainable_tokens_delta" in key for key in saved.keys())
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    grow_embeddings(base, len(tokenizer))
    return PeftModel.from_pretrained(base, adapter_dir)


def test_lora_target_matching_no_layer_lists_the_linear_layers(tiny_model_dir: Path) -> None:
    with pytest.raises(SftkitError) as info:
        lora_model(tiny_model_dir, lora_target="q_proj,qkv_proj")
    message = str(info.value)
    assert "lora_target: qkv_proj matches no linear layer" in message
    assert "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in message
    assert "lm_head" not in message


def test_lora_all_targets_every_linear_layer_but_the_head(tiny_model_dir: Path) -> None:
    model, _, _ = lora_model(tiny_model_dir, lora_target="all")
    adapted = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_full_finetuning_trains_every_weight(tiny_model_dir: Path) -> None:
    model, _, _ = lora_model(tiny_model_dir, finetuning_type="full")
    report = count_parameters(model)
    assert report.trainable == report.total and report.lora == 0


def test_ernie_shape_reports_the_seed_runs_lora_parameters() -> None:
    """ERNIE-4.5-0.3B (random weights, meta device) with the seed's LoRA: 6,045,696 LoRA parameters."""
    from transformers import AutoModelForCausalLM

    from sftkit.tiny import ernie_shape_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(ernie_shape_config(), dtype=torch.bfloat16)
    cfg = config("unused", lora_rank=16, lora_alpha=64, lora_target=ERNIE_SEED_TARGETS)
    report = count_parameters(add_adapter(model, cfg, [100, 101]))
    assert report.lora == 6_045_696
    assert report.trainable == 6_045_696 + 2 * 1024  # plus the two trainable token rows
    assert 0.36e9 < report.total < 0.37e9


# ---------------------------------------------------------------------------- precision


@pytest.mark.parametrize(("supported", "dtype"), [(True, "bfloat16"), (False, "float32")])
def test_bf16_falls_back_to_fp32_where_unsupported(
    monkeypatch: pytest.MonkeyPatch, supported: bool, dtype: str
) -> None:
    monkeypatch.setattr(model_stage, "_device_type", lambda: "cpu")
    monkeypatch.setattr(model_stage, "_bf16_supported", lambda device: supported)
    precision = resolve_precision(config("m", bf16=True))
    assert precision.dtype_name == dtype and precision.device == "cpu"
    if not supported:
        assert "bf16 requested" in precision.note and "fp32" in precision.note


def test_fp16_needs_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_stage, "_device_type", lambda: "cpu")
    assert resolve_precision(config("m", fp16=True)).dtype == torch.float32
    monkeypatch.setattr(model_stage, "_device_type", lambda: "cuda")
    assert resolve_precision(config("m", fp16=True)).fp16


# ---------------------------------------------------------------------------- damaged or unusual model folders


def test_truncated_weights_are_named_from_their_header(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from sftkit.run_dir import check_weights, safetensors_problem

    assert safetensors_problem(tiny_model_dir / "model.safetensors") is None
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as handle:
        handle.truncate(size - 10)
    assert safetensors_problem(weights) == f"{size - 10:,} of {size:,} bytes: truncated"
    with pytest.raises(
        SftkitError,
        match=r"model.safetensors: damaged weights file \(.* truncated\); the copy is "
        r"incomplete",
    ):
        load_model(config(model), None, Precision("float32", "cpu", "test"))
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    assert safetensors_problem(weights) == "its header is not readable: not a safetensors file, or corrupted"
    with pytest.raises(SftkitError, match="damaged weights file"):
        check_weights(model, "fix")


def test_a_model_with_its_own_code_says_trust_remote_code(tiny_model_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    model = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, model)
    settings = json.loads((model / "config.json").read_text())
    settings.update(
        model_type="sftkit_custom",
        auto_map={
            "AutoConfig": "configuration_custom.CustomConfig",
            "AutoModelForCausalLM": "modeling_custom.CustomModel",
        },
    )
    (model / "config.json").write_text(json.dumps(settings))
    with pytest.raises(
        SftkitError,
        match="ships its own Python code for its model, which runs only with "
        "trust_remote_code: true; set it if you trust the model's author",
    ):
        load_model(config(model), load_tokenizer(config(tiny_model_dir)), Precision("float32", "cpu", "test"))


def test_a_tokenizer_that_cannot_be_built_says_why(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bare / name).unlink()
    with pytest.raises(
        SftkitError,
        match=r"\(ValueError: no tokenizer files it can read; the folder holds "
        r"config.json, generation_config.json, model.safetensors\); its files look "
        r"incomplete or damaged: copy the model folder again",
    ):
        load_tokenizer(config(bare))
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_model_dir, damaged)
    (damaged / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE"}}')  # a KeyError inside
    with pytest.raises(SftkitError, match=r"cannot load the tokenizer from .* \(KeyError: 'added_tokens'\)"):
        load_tokenizer(config(damaged))
