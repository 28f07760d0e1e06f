"""Every shipped config validates, and its comments are exactly the schema's documentation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sftkit.config import commented_yaml, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
YAMLS = sorted(CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_config_validates_and_its_comments_never_drift(path: Path) -> None:
    load_config(path)
    text = path.read_text(encoding="utf-8")
    assert text == commented_yaml(yaml.safe_load(text)), f"regenerate {path.name} with commented_yaml"


def test_ernie_config_reproduces_the_seed_run() -> None:
    cfg = load_config(CONFIGS / "ernie_lora.yaml")
    assert cfg.model_name_or_path == "baidu/ERNIE-4.5-0.3B-Base-PT" and cfg.finetuning_type == "lora"
    assert (cfg.lora_rank, cfg.resolved_lora_alpha, cfg.lora_dropout, cfg.use_rslora) == (16, 64, 0.0, False)
    assert cfg.lora_target == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert (cfg.optim, cfg.learning_rate, cfg.lr_scheduler_type, cfg.warmup_steps) == ("adamw_bnb_8bit", 5e-5,
                                                                                       "cosine", 100)
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, cfg.cutoff_len) == (32, 2, 4096)
    assert (cfg.num_train_epochs, cfg.eval_steps, cfg.save_steps, cfg.save_total_limit) == (5, 50, 50, 3)
    assert cfg.packing and cfg.bf16 and cfg.gradient_checkpointing and cfg.load_best_model_at_end
    assert cfg.early_stopping_steps == 5 and cfg.val_size == 0.1 and cfg.template == "chatml"
    assert cfg.default_system and cfg.default_system.startswith("You are a helpful assistant")
