"""`sftkit train` end to end on the tiny model: one real run shared by the assertions, plus the loss scaling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from helpers import make_config
from sftkit.config import SftConfig, validate_config
from sftkit.errors import SftkitError
from sftkit.model import Precision
from sftkit.training.arguments import build_sft_config
from sftkit.training.recipe import check_output_dir, train

FP32 = Precision("float32", "cpu", "fp32 on cpu")
DATASETS = "demo_alpaca,demo_sharegpt,demo_messages"


def tiny_config(tiny_model_dir: Path, data_dir: Path, output_dir: Path, **overrides: Any) -> SftConfig:
    return make_config(
        **{
            "model_name_or_path": tiny_model_dir,
            "dataset": DATASETS,
            "dataset_dir": data_dir,
            "output_dir": output_dir,
            "report_to": "none",
            **overrides,
        }
    )


@pytest.fixture(scope="module", autouse=True)
def _private_datasets_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Tokenized rows are cached by prepare_data: keep them out of the user's datasets cache."""
    import datasets

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf-cache")))
        yield


# ---------------------------------------------------------------------------- one real run


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short overfit: 3 training rows, many epochs, a high learning rate, eval and save every 4 updates.

    Eval loss bottoms out and rises as the rows are memorised, so early stopping ends the run after the
    best checkpoint, which must then be the one restored and saved.
    """
    out = tmp_path_factory.mktemp("train") / "run"
    cfg = tiny_config(
        tiny_model_dir,
        bundled_data,
        out,
        max_samples=2,
        val_size=3,
        cutoff_len=128,
        packing=True,
        lora_rank=8,
        lora_target="all",
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        num_train_epochs=40,
        per_device_train_batch_size=2,
        eval_strategy="steps",
        eval_steps=4,
        save_steps=4,
        save_total_limit=2,
        early_stopping_steps=2,
        load_best_model_at_end=True,
        logging_steps=1,
        report_to="tensorboard",
        gradient_checkpointing=True,
    )
    return train(cfg)


def test_run_writes_every_output(run: Path) -> None:
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "chat_template.jinja",
        "tokenizer.json",
        "sftkit_config.yaml",
        "trainer_state.json",
        "metrics.json",
        "training_loss.png",
        "generation_config.json",
    ):
        assert (run / name).is_file(), name
    assert list(run.glob("runs/*/events.out.tfevents.*")), "no TensorBoard events file"


def test_training_loss_falls_and_eval_loss_is_logged(run: Path) -> None:
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) >= 4 and losses[-1] < losses[0]
    assert [entry for entry in history if "eval_loss" in entry]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_loss"] is not None and metrics["eval_perplexity"] > 1
    assert metrics["tokens_seen"] > 0 and metrics["world_size"] == 1
    assert 0 <= metrics["end_token_accuracy"] <= 1 and metrics["end_token_positions"] > 0


def test_lora_parameters_and_template_token_rows_trained(run: Path) -> None:
    saved = load_file(run / "adapter_model.safetensors")
    lora_b = {key: value for key, value in saved.items() if "lora_B" in key}
    assert lora_b and all(value.abs().sum() > 0 for value in lora_b.values())  # PEFT initialises B to zero
    prefix = "base_model.model.model.embed_tokens.token_adapter."
    delta = saved[prefix + "trainable_tokens_delta"]
    ids = json.loads((run / "adapter_config.json").read_text())["trainable_token_indices"]
    base_rows = saved[prefix + "base_layer.weight"][ids]  # the tiny vocabulary grew, so PEFT saves the matrix
    assert not torch.allclose(delta, base_rows)


def test_checkpoints_rotate_and_the_best_is_restored(run: Path) -> None:
    state = json.loads((run / "trainer_state.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    checkpoints = sorted(run.glob("checkpoint-*"))
    assert state["global_step"] // 4 > 2 and len(checkpoints) <= 2  # more saves than save_total_limit
    evals = [(entry["eval_loss"], entry["step"]) for entry in state["log_history"] if "eval_loss" in entry]
    best_loss, best_step = min(evals)
    assert best_step < state["global_step"] < state["max_steps"]  # early stopping ended the run after the best
    assert metrics["best_step"] == best_step and metrics["best_eval_loss"] == pytest.approx(best_loss)
    best = Path(state["best_model_checkpoint"])
    assert best.name == f"checkpoint-{best_step}" and best.is_dir()
    final, at_best = load_file(run / "adapter_model.safetensors"), load_file(best / "adapter_model.safetensors")
    assert final.keys() == at_best.keys()
    assert all(torch.equal(final[key], at_best[key]) for key in final)


def test_generation_stops_at_the_template_end_token(run: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run)
    generation = json.loads((run / "generation_config.json").read_text())
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in generation["eos_token_id"]


def test_non_empty_output_dir_is_refused_without_overwrite(run: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sftkit", "train", str(run / "sftkit_config.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "is not empty; pass --overwrite" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------- output_dir rules


def test_output_dir_rules(tmp_path: Path) -> None:
    assert check_output_dir(tmp_path / "new", overwrite=False) is False
    (tmp_path / "file").write_text("x")
    with pytest.raises(SftkitError, match="is a file"):
        check_output_dir(tmp_path / "file", overwrite=True)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(SftkitError, match="holds no sftkit run"):
        check_output_dir(stranger, overwrite=True)
    (stranger / "sftkit_config.yaml").write_text("{}")
    assert check_output_dir(stranger, overwrite=True) is True
    assert check_output_dir(stranger, overwrite=False, resuming=True) is False


# ---------------------------------------------------------------------------- TRL config


def test_sft_config_carries_the_schema(tmp_path: Path) -> None:
    cfg = validate_config(
        {
            "model_name_or_path": "m",
            "dataset": "d",
            "output_dir": str(tmp_path),
            "bf16": True,
            "packing": True,
            "cutoff_len": 512,
            "val_size": 0.1,
            "eval_strategy": "steps",
            "eval_steps": 5,
            "save_steps": 10,
            "early_stopping_steps": 2,
            "warmup_steps": 3,
            "gradient_checkpointing": True,
        }
    )
    args = build_sft_config(cfg, Precision("bfloat16", "cpu", "bf16 on cpu"))  # bf16 on CPU needs use_cpu
    assert args.bf16 and args.use_cpu and args.max_length == 512 and args.packing and args.padding_free
    assert args.load_best_model_at_end and args.metric_for_best_model == "eval_loss"
    assert args.greater_is_better is False and args.prediction_loss_only
    assert args.gradient_checkpointing_kwargs == {"use_reentrant": False} and args.warmup_steps == 3


# ---------------------------------------------------------------------------- loss scaling


def _after_one_step(
    tiny_model_dir: Path, data_dir: Path, out: Path, batch: int, accumulation: int
) -> dict[str, torch.Tensor]:
    """Trainable parameters after one SGD update on the same two rows (of different lengths)."""
    from transformers import set_seed

    from sftkit.data import load_tokenizer, prepare_data
    from sftkit.templates import get_template
    from sftkit.training.recipe import load_model_for_training
    from sftkit.training.trainer import build_trainer

    cfg = tiny_config(
        tiny_model_dir,
        data_dir,
        out,
        dataset="demo_alpaca",
        max_samples=2,
        cutoff_len=128,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        max_grad_norm=0,
        save_strategy="no",
        lora_target="all",
    )
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg)
    rows = prepare_data(cfg, tokenizer).train
    trained = [sum(label != -100 for label in labels) for labels in rows["labels"]]
    assert len(trained) == 2 and abs(trained[0] - trained[1]) > 5  # per-micro-batch means would differ
    template = get_template(cfg.template)
    model = load_model_for_training(cfg, tokenizer, template, FP32)
    build_trainer(cfg, FP32, model, tokenizer, template, rows, None).train()
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def test_accumulation_averages_over_all_trained_tokens(
    tiny_model_dir: Path, bundled_data: Path, tmp_path: Path
) -> None:
    """Batch 1 x accumulation 2 updates exactly like batch 2 x accumulation 1."""
    accumulated = _after_one_step(tiny_model_dir, bundled_data, tmp_path / "a", batch=1, accumulation=2)
    batched = _after_one_step(tiny_model_dir, bundled_data, tmp_path / "b", batch=2, accumulation=1)
    assert any("lora_B" in name and value.abs().sum() > 0 for name, value in batched.items())  # it moved
    for name, value in batched.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------- packing


def test_packed_rows_keep_examples_apart(tiny_model_dir: Path) -> None:
    """Two examples packed in one row attend only to themselves, as if each were alone."""
    from transformers import AutoModelForCausalLM

    from sftkit.training.collator import PackedRowsCollator

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    torch.manual_seed(0)
    a, b, c = (torch.randint(3, 700, (n,)).tolist() for n in (9, 6, 4))
    batch = PackedRowsCollator(pad_token_id=0)(
        [
            {"input_ids": a + b, "labels": a + b, "seq_lengths": [len(a), len(b)]},
            {"input_ids": c, "labels": c, "seq_lengths": [len(c)]},
        ]
    )
    assert "attention_mask" not in batch and batch["labels"][0, len(a)] == -100
    assert batch["sftkit_real_tokens"] == 19 and batch["input_ids"].numel() == 30  # tokens_seen skips padding
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        alone = [model(input_ids=torch.tensor([ids]), use_cache=False).logits[0] for ids in (a, b, c)]
    torch.testing.assert_close(packed[0, : len(a)], alone[0])
    torch.testing.assert_close(packed[0, len(a) :], alone[1])
    torch.testing.assert_close(packed[1, : len(c)], alone[2])


@pytest.mark.integration  # the demo's whole training run (about two minutes on two cores)
def test_the_demo_learns_to_stop(tmp_path: Path) -> None:
    """configs/tiny_smoke.yaml on the demo's model: the end token is learned, so the showcase answer ends."""
    from sftkit.chat import ChatSession
    from sftkit.config import load_config
    from sftkit.model import GenerationSettings, load_for_inference
    from sftkit.tiny import build_tiny_model

    repo = Path(__file__).resolve().parent.parent
    model_dir = build_tiny_model(tmp_path / "tiny-ernie", initializer_range=0.3)  # as scripts/make_tiny_model.py
    cfg = load_config(
        repo / "configs" / "tiny_smoke.yaml",
        [f"model_name_or_path={model_dir}", f"dataset_dir={repo / 'data'}", f"output_dir={tmp_path / 'run'}"],
    )
    out = train(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["end_token_accuracy"] >= 0.9, metrics
    loaded = load_for_inference(str(out))
    budget = 40
    session = ChatSession(loaded.model, loaded.tokenizer, loaded.template, GenerationSettings(budget))
    reply = session.ask("What colour is snow?")
    assert len(loaded.tokenizer(reply, add_special_tokens=False).input_ids) < budget // 2  # it stopped, early
