"""The fine-tuning methods LLaMA-Factory users pick, each trained for real on the tiny model on the CPU.

Every run is a few updates of `sftkit.training.train` on four rows; each test then checks what the method
promises in the saved weights (what trained, what stayed frozen), and adapters are merged and chatted.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from helpers import make_config, run_cli
from sftkit.config import SftConfig
from sftkit.config.environment import cannot_run_here
from sftkit.errors import ConfigError, SftkitError
from sftkit.training.recipe import train

DATASET = "demo_alpaca"


@pytest.fixture(scope="module", autouse=True)
def _private_datasets_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import datasets

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf-cache")))
        yield


def method_config(model_dir: Path, data_dir: Path, out: Path, **keys: Any) -> SftConfig:
    """Four short rows, three updates at a high learning rate, nothing saved but the final weights."""
    return make_config(
        **{
            "model_name_or_path": model_dir,
            "dataset": DATASET,
            "dataset_dir": data_dir,
            "output_dir": out,
            "report_to": "none",
            "max_samples": 4,
            "cutoff_len": 64,
            "per_device_train_batch_size": 2,
            "max_steps": 3,
            "learning_rate": 1e-2,
            "lr_scheduler_type": "constant",
            "save_strategy": "no",
            "logging_steps": 1,
            "plot_loss": False,
            **keys,
        }
    )


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """Trains a run with the given keys (once per distinct set of keys in this module) and returns its folder."""
    runs: dict[str, Path] = {}

    def run(**keys: Any) -> Path:
        name = json.dumps(keys, sort_keys=True)
        if name not in runs:
            out = tmp_path_factory.mktemp("method") / "run"
            runs[name] = train(method_config(tiny_model_dir, bundled_data, out, **keys))
        return runs[name]

    return run


def base_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def first_losses(run: Path) -> list[float]:
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    """Names whose values differ (rows grown for the template's tokens are compared on the base's rows)."""
    out = set()
    for name, value in before.items():
        new = after[name][: value.shape[0]] if after[name].shape != value.shape else after[name]
        if not torch.equal(new.float(), value.float()):
            out.add(name)
    return out


def assert_adapter_trained(run: Path, marker: str) -> dict[str, torch.Tensor]:
    saved = load_file(run / "adapter_model.safetensors")
    matrices = {key: value for key, value in saved.items() if marker in key}
    assert matrices, f"no {marker} tensors in {sorted(saved)[:5]}"
    assert all(value.abs().sum() > 0 for value in matrices.values())
    return saved


def merge_and_chat(run: Path, tmp_path: Path) -> None:
    """The adapter merges (merge checks merged logits against base+adapter) and the run answers a prompt."""
    from sftkit.merge import merge
    from sftkit.model import GenerationSettings, generate_replies, load_for_inference

    merged = merge(run, tmp_path / "merged")
    assert (merged / "model.safetensors").is_file()
    loaded = load_for_inference(str(run))

    class Prompt:
        messages = [{"role": "user", "content": "Hi"}]
        tools = None

    (reply,) = generate_replies(
        loaded.model, loaded.tokenizer, loaded.template, [Prompt()], GenerationSettings(max_new_tokens=4)
    )
    assert isinstance(reply, str)


# ---------------------------------------------------------------------------- freeze and full


def test_freeze_trains_only_the_chosen_modules_of_the_last_layers(trained, tiny_model_dir: Path) -> None:
    run = trained(finetuning_type="freeze", freeze_trainable_layers=1, freeze_trainable_modules="mlp")
    moved = changed(base_weights(tiny_model_dir), load_file(run / "model.safetensors"))
    assert moved and all(".layers.1.mlp." in name for name in moved)
    assert any("layers.1.mlp.down_proj" in name for name in moved)
    assert not (run / "adapter_config.json").exists()


def test_freeze_first_layers_and_extra_modules(trained, tiny_model_dir: Path) -> None:
    run = trained(
        finetuning_type="freeze",
        freeze_trainable_layers=-1,
        freeze_trainable_modules="self_attn",
        freeze_extra_modules="norm",
    )
    moved = changed(base_weights(tiny_model_dir), load_file(run / "model.safetensors"))
    assert any(".layers.0.self_attn." in name for name in moved) and "model.norm.weight" in moved
    # LLaMA-Factory matches extra modules as substrings of parameter names: "norm" trains every layer norm too
    assert all(".layers.0.self_attn." in name or "norm" in name for name in moved)
    assert not any(".mlp." in name or ".layers.1.self_attn." in name for name in moved)


def test_freeze_names_a_module_the_model_lacks(tiny_model_dir: Path, bundled_data: Path, tmp_path: Path) -> None:
    cfg = method_config(
        tiny_model_dir, bundled_data, tmp_path / "run", finetuning_type="freeze", freeze_trainable_modules="attention"
    )
    with pytest.raises(SftkitError, match="freeze_trainable_modules: 'attention' is not a module .* mlp"):
        train(cfg)
    assert not (tmp_path / "run" / "sftkit_config.yaml").exists()


def test_llama_pro_trains_every_nth_layer() -> None:
    from sftkit.model.freeze import trainable_layer_ids

    assert trainable_layer_ids(8, 2, llama_pro=True) == [3, 7]
    assert trainable_layer_ids(8, 3, llama_pro=False) == [5, 6, 7]
    assert trainable_layer_ids(8, -2, llama_pro=False) == [0, 1]
    with pytest.raises(SftkitError, match="3 expanded blocks do not divide the model's 8 layers"):
        trainable_layer_ids(8, 3, llama_pro=True)


def test_llama_pro_with_freeze_and_with_lora(trained, tiny_model_dir: Path) -> None:
    run = trained(finetuning_type="freeze", use_llama_pro=True, freeze_trainable_layers=1)
    moved = changed(base_weights(tiny_model_dir), load_file(run / "model.safetensors"))
    assert moved and all(".layers.1." in name for name in moved)  # 2 layers, 1 block: the last of each pair
    lora = assert_adapter_trained(trained(use_llama_pro=True, freeze_trainable_layers=1), "lora_B")
    assert all(".layers.1." in key for key in lora if "lora_" in key)


def test_pure_bf16_full_keeps_bf16_weights(trained, tiny_model_dir: Path) -> None:
    run = trained(finetuning_type="full", pure_bf16=True)
    saved = load_file(run / "model.safetensors")
    assert {value.dtype for value in saved.values()} == {torch.bfloat16}
    assert changed(base_weights(tiny_model_dir), saved)


# ---------------------------------------------------------------------------- LoRA variants, OFT


def test_dora_trains_merges_and_chats(trained, tmp_path: Path) -> None:
    run = trained(use_dora=True)
    saved = assert_adapter_trained(run, "lora_B")
    assert any("lora_magnitude_vector" in key for key in saved)
    assert json.loads((run / "adapter_config.json").read_text())["use_dora"] is True
    merge_and_chat(run, tmp_path)


def test_oft_trains_merges_and_chats(trained, tmp_path: Path) -> None:
    run = trained(finetuning_type="oft", oft_block_size=16, oft_target="q_proj,v_proj")
    assert_adapter_trained(run, "oft_")
    config = json.loads((run / "adapter_config.json").read_text())
    assert config["peft_type"] == "OFT" and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    merge_and_chat(run, tmp_path)


def test_pissa_adapter_is_saved_converted_for_the_original_base(trained, tiny_model_dir: Path, tmp_path: Path) -> None:
    """The saved adapter on the unchanged base gives the trained model's logits (base residual + PiSSA)."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from sftkit.model import load_adapter_run

    run = trained(
        pissa_init=True,
        pissa_iter=-1,
        pissa_convert=True,
        lora_target="q_proj,v_proj",
        save_strategy="steps",
        save_steps=3,
    )
    config = json.loads((run / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["init_lora_weights"] is True  # PEFT's conversion doubles the rank
    # the trained model as it was: PiSSA's residual base (an exact SVD) with the unconverted final adapter
    loaded = load_adapter_run(run)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    base.resize_token_embeddings(len(loaded.tokenizer))
    pissa = get_peft_model(
        base,
        LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=["q_proj", "v_proj"],
            init_lora_weights="pissa",
            trainable_token_indices=config["trainable_token_indices"],
        ),
    )
    set_peft_model_state_dict(pissa, load_file(run / "checkpoint-3" / "adapter_model.safetensors"))
    ids = torch.tensor([[5, 17, 99, 300, 42, 7]])
    with torch.no_grad():
        expected, got = pissa(input_ids=ids).logits, loaded.model(input_ids=ids).logits
        with loaded.model.disable_adapter():
            untrained = loaded.model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, untrained, atol=1e-3)
    merge_and_chat(run, tmp_path)


def test_loraplus_gives_the_b_matrices_a_larger_learning_rate(
    tiny_model_dir: Path, bundled_data: Path, tmp_path: Path
) -> None:
    trainer = built_trainer(tiny_model_dir, bundled_data, tmp_path, loraplus_lr_ratio=16.0)
    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    rates = {
        names[id(p)].split(".lora_")[-1][0] + str(group["lr"])
        for group in optimizer.param_groups
        for p in group["params"]
        if "lora_" in names[id(p)]
    }
    assert rates == {"A0.01", "B0.16"}
    trainer.train()
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)


def test_additional_target_and_resize_vocab_save_whole_modules(trained) -> None:
    saved = assert_adapter_trained(trained(additional_target="norm", lora_target="q_proj"), "lora_B")
    assert any(key.endswith("model.norm.modules_to_save.default.weight") or "norm.weight" in key for key in saved)
    resized = load_file(trained(resize_vocab=True, lora_target="q_proj") / "adapter_model.safetensors")
    assert any("embed_tokens" in key and "token_adapter" not in key for key in resized)


def test_continue_from_an_adapter(trained, tiny_model_dir: Path, bundled_data: Path, tmp_path: Path) -> None:
    """adapter_name_or_path continues the adapter: a run at a vanishing learning rate ends where it began."""
    first = trained(lora_target="q_proj,v_proj")
    cfg = method_config(
        tiny_model_dir,
        bundled_data,
        tmp_path / "next",
        adapter_name_or_path=str(first),
        learning_rate=1e-12,
        max_steps=1,
    )
    again = train(cfg)
    before, after = load_file(first / "adapter_model.safetensors"), load_file(again / "adapter_model.safetensors")
    lora = [key for key in before if "lora_B" in key]
    assert lora and all(torch.allclose(before[key], after[key], atol=1e-6) for key in lora)


def test_new_special_tokens_are_added_and_trained(trained) -> None:
    from transformers import AutoTokenizer

    run = trained(new_special_tokens="<tool_a>,<tool_b>", lora_target="q_proj")
    tokenizer = AutoTokenizer.from_pretrained(run)
    ids = tokenizer.convert_tokens_to_ids(["<tool_a>", "<tool_b>"])
    assert tokenizer.unk_token_id not in ids and None not in ids
    assert set(ids) <= set(json.loads((run / "adapter_config.json").read_text())["trainable_token_indices"])


def test_neftune_noise_changes_the_first_loss(trained) -> None:
    plain, noisy = (
        first_losses(trained(lora_target="q_proj")),
        first_losses(trained(lora_target="q_proj", neftune_noise_alpha=50.0)),
    )
    assert plain[0] != pytest.approx(noisy[0], abs=1e-6)


# ---------------------------------------------------------------------------- QLoRA


def test_qlora_4bit_trains_on_cpu_and_merges_unquantized(trained, tmp_path: Path) -> None:
    run = trained(quantization_bit=4, lora_target="all")
    assert_adapter_trained(run, "lora_B")
    merge_and_chat(run, tmp_path)


@pytest.mark.parametrize(
    "keys",
    [
        {"quantization_bit": 8, "lora_target": "q_proj,v_proj", "gradient_checkpointing": True},
        {
            "quantization_bit": 4,
            "double_quantization": False,
            "quantization_type": "fp4",
            "finetuning_type": "oft",
            "oft_block_size": 16,
        },
    ],
    ids=["qlora-8bit", "qoft-fp4"],
)
def test_other_quantized_adapters_train(trained, keys: dict[str, Any]) -> None:
    assert_adapter_trained(trained(**keys), "oft_" if keys.get("finetuning_type") == "oft" else "lora_B")


def test_quantized_loading_uses_bitsandbytes(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from sftkit.model import Precision, load_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for bits, layer in ((4, "Linear4bit"), (8, "Linear8bitLt")):
        cfg = make_config(model_name_or_path=tiny_model_dir, output_dir="unused", quantization_bit=bits)
        model = load_model(cfg, tokenizer, Precision("float32", "cpu", "fp32"))
        assert type(model.model.layers[0].mlp.down_proj).__name__ == layer


def gptq_copy(tiny_model_dir: Path, folder: Path) -> Path:
    """The tiny model's files with a config that says GPTQ, as a GPTQ checkpoint's does."""
    import shutil

    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_gptq_model_without_its_package_warns_in_validate_and_stops_train(
    tiny_model_dir: Path, bundled_data: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import yaml

    model = gptq_copy(tiny_model_dir, tmp_path / "gptq")
    keys = {
        "model_name_or_path": str(model),
        "dataset": DATASET,
        "dataset_dir": str(bundled_data),
        "output_dir": str(tmp_path / "run"),
        "template": "chatml",
        "report_to": "none",
    }
    (tmp_path / "qlora.yaml").write_text(yaml.safe_dump(keys))
    code, out, err = run_cli(["validate", str(tmp_path / "qlora.yaml")], monkeypatch, capsys)
    (line,) = [text for text in err.splitlines() if text.startswith("warning:")]
    assert code == 0 and "OK" in out and "GPTQ-quantized" in line and "gptqmodel" in line
    code, _, err = run_cli(["train", str(tmp_path / "qlora.yaml")], monkeypatch, capsys)
    assert code == 2 and line.split(": ", 2)[2] in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    full = make_config(model_name_or_path=model, output_dir="unused", finetuning_type="full")
    from sftkit.config import check_environment

    with pytest.raises(ConfigError, match="gptq-quantized, so it trains only with lora or oft, not full"):
        check_environment(full)


# ---------------------------------------------------------------------------- loss variants


@pytest.mark.parametrize(
    "keys",
    [
        {"use_dft_loss": True},
        {"use_eaft_loss": True},
        {"use_asft_loss": True, "asft_alpha": 0.5},
        {"use_asft_loss": True, "finetuning_type": "full"},
    ],
    ids=str,
)
def test_loss_variants_train(trained, keys: dict[str, Any]) -> None:
    losses = first_losses(trained(lora_target="q_proj,v_proj", **keys))
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    assert losses != first_losses(
        trained(lora_target="q_proj,v_proj", **({"finetuning_type": "full"} if "finetuning_type" in keys else {}))
    )


# ---------------------------------------------------------------------------- optimizers


def built_trainer(model_dir: Path, data_dir: Path, tmp_path: Path, **keys: Any) -> Any:
    from transformers import set_seed

    from sftkit.data import load_tokenizer_and_template, prepare_data
    from sftkit.model import Precision
    from sftkit.training.recipe import load_model_for_training
    from sftkit.training.trainer import build_trainer

    cfg = method_config(model_dir, data_dir, tmp_path / "run", **keys)
    set_seed(cfg.seed)
    precision = Precision("float32", "cpu", "fp32")
    tokenizer, template = load_tokenizer_and_template(cfg)
    rows = prepare_data(cfg, tokenizer, template).train
    model = load_model_for_training(cfg, tokenizer, template, precision)
    return build_trainer(cfg, precision, model, tokenizer, template, rows, None)


@pytest.mark.parametrize(
    "keys,optimizer",
    [
        ({"use_galore": True, "galore_rank": 4, "galore_target": "mlp"}, "galore_torch.AdamW"),
        ({"use_galore": True, "galore_rank": 4, "galore_layerwise": True}, "transformers.LayerWiseDummyOptimizer"),
        ({"use_apollo": True, "apollo_rank": 4}, "apollo_torch.AdamW"),
        ({"use_badam": True, "badam_switch_interval": 1}, "badam.BlockOptimizer"),
        ({"use_adam_mini": True}, "adam_mini.Adam_mini"),
        ({"use_muon": True}, "sftkit.MuonWithAdamW"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_optimizer_methods_train_full_weights(
    tiny_model_dir: Path, bundled_data: Path, tmp_path: Path, keys: dict[str, Any], optimizer: str
) -> None:
    trainer = built_trainer(tiny_model_dir, bundled_data, tmp_path, finetuning_type="full", **keys)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    assert f"{type(inner).__module__.split('.')[0]}.{type(inner).__name__}" == optimizer
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert any("layers" in n and p.ndim == 2 for n, p in trainer.model.named_parameters() if n in moved)


# ---------------------------------------------------------------------------- what this machine cannot run


def test_settings_this_machine_cannot_run_validate_with_one_line_each() -> None:
    cfg = make_config(finetuning_type="full", fp8=True, bf16=True, mixture_of_depths="convert")
    lines = cannot_run_here(cfg)
    if torch.cuda.is_available():
        pytest.skip("a GPU may run fp8")
    assert [line.split(":")[0] for line in lines] == ["mixture_of_depths", "fp8"]
    assert "needs an NVIDIA GPU of compute capability 8.9" in lines[1] and "mixture-of-depth" in lines[0]


def test_on_the_fly_methods_without_their_package_say_what_to_install() -> None:
    lines = cannot_run_here(make_config(quantization_bit=8, quantization_method="eetq"))
    assert lines == [
        "quantization_method: eetq needs the eetq package, which is not installed here; `pip install "
        "eetq`, or quantization_method: bnb"
    ]
    assert cannot_run_here(make_config(quantization_bit=4)) == []  # bitsandbytes runs here


def test_trainer_arguments_carry_the_methods(monkeypatch) -> None:
    from sftkit.model import Precision
    from sftkit.training.arguments import build_sft_config

    fp32 = Precision("float32", "cpu", "fp32")
    galore = build_sft_config(
        make_config(finetuning_type="full", use_galore=True, galore_layerwise=True, galore_rank=128, optim="adafactor"),
        fp32,
    )
    assert galore.optim == "galore_adafactor_layerwise" and galore.optim_target_modules == "all-linear"
    assert galore.optim_args == "rank=128,update_proj_gap=200,scale=2.0,proj_type=std"
    apollo = build_sft_config(make_config(finetuning_type="full", use_apollo=True, apollo_target="mlp"), fp32)
    assert apollo.optim == "apollo_adamw" and apollo.optim_target_modules == ["mlp"]
    assert build_sft_config(make_config(neftune_noise_alpha=5), fp32).neftune_noise_alpha == 5
    monkeypatch.delenv("ACCELERATE_FP8_BACKEND", raising=False)  # restored after the test
    fp8 = build_sft_config(make_config(finetuning_type="full", fp8=True, bf16=True, fp8_backend="te"), fp32)
    assert fp8.mixed_precision == "fp8" and os.environ["ACCELERATE_FP8_BACKEND"] == "TE"


def test_train_stops_on_what_cannot_run_before_loading(
    tiny_model_dir: Path, bundled_data: Path, tmp_path: Path
) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU may run fp8")
    cfg = method_config(tiny_model_dir, bundled_data, tmp_path / "run", fp8=True, bf16=True)
    with pytest.raises(ConfigError) as info:
        train(cfg)
    assert info.value.problems == cannot_run_here(cfg) and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- the schema's rules


@pytest.mark.parametrize(
    "keys,message",
    [
        ({"freeze_trainable_layers": 4}, "freeze_trainable_layers: only used by finetuning_type: freeze"),
        ({"finetuning_type": "full", "use_dora": True}, "use_dora: only valid with finetuning_type: lora"),
        ({"quantization_bit": 4, "finetuning_type": "full"}, "a quantized model trains only with finetuning_type lora"),
        ({"quantization_bit": 3}, "quantization_bit: bnb takes 4 or 8, not 3"),
        ({"quantization_bit": 4, "quantization_method": "gptq"}, "gptq does not quantize on the fly"),
        ({"quantization_bit": 4, "pissa_init": True}, "pissa_init: cannot be combined with quantization_bit"),
        ({"use_dft_loss": True, "use_eaft_loss": True}, "use_dft_loss and use_eaft_loss: choose one loss"),
        ({"use_dft_loss": True, "loss_chunk_size": 0}, "use_dft_loss: is computed by the chunked loss"),
        ({"use_galore": True}, "use_galore: trains full weights; use finetuning_type full or freeze"),
        ({"finetuning_type": "full", "use_galore": True, "use_badam": True}, "use_galore and use_badam: choose one"),
        (
            {"finetuning_type": "full", "use_galore": True, "galore_layerwise": True, "gradient_accumulation_steps": 2},
            "galore_layerwise: updates during backward, so gradient_accumulation_steps must be 1",
        ),
        ({"finetuning_type": "oft", "oft_rank": 4}, "oft_rank and oft_block_size: set exactly one"),
        (
            {"finetuning_type": "full", "use_llama_pro": True},
            "use_llama_pro: works with finetuning_type freeze or lora",
        ),
    ],
)
def test_method_rules_name_the_keys_and_the_fix(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(**keys)
    assert any(message in line for line in info.value.problems), info.value.problems


def test_rope_scaling_stretches_the_context(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from sftkit.model.loading import scaled_rope_config

    config = scaled_rope_config(
        make_config(model_name_or_path=tiny_model_dir, output_dir="unused", rope_scaling="linear", cutoff_len=10_000),
        str(tiny_model_dir),
    )
    assert config.rope_parameters["rope_type"] == "linear" and config.rope_parameters["factor"] == 3.0
    assert config.max_position_embeddings == 3 * 4096
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, config=config)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, plain(input_ids=ids).logits)
    unchanged = scaled_rope_config(
        make_config(model_name_or_path=tiny_model_dir, output_dir="unused", rope_scaling="linear", cutoff_len=512),
        str(tiny_model_dir),
    )
    assert unchanged.rope_parameters.get("rope_type") == "default"
