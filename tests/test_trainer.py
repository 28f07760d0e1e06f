"""SftkitTrainer trains a tiny LoRA model with the chunked loss and logs what users need to see."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def _rows(n: int = 24, seed: int = 0) -> list[dict[str, list[int]]]:
    """Pre-tokenized rows as `prepare_data` writes them: the first half of each row is an untrained prompt."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(8, 30, (1,), generator=gen))
        ids = torch.randint(3, 500, (length,), generator=gen).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (length // 2) + ids[length // 2 :]})
    return rows


def _trainer(model_dir: Path, out: Path, loss_chunk_size: int | None = 16, **overrides):
    """SftkitTrainer over a LoRA tiny model; `loss_chunk_size=None` gives plain TRL SFTTrainer on the same model."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from sftkit.training.trainer import SftkitTrainer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    settings = dict(
        output_dir=str(out),
        max_steps=4,
        logging_steps=2,
        packing=True,
        max_length=64,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=1e-2,
        report_to=[],
        bf16=False,
        use_cpu=True,
        save_strategy="no",
        gradient_checkpointing=False,
    )
    args = SFTConfig(**settings | overrides)
    common = dict(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(_rows()),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )
    if loss_chunk_size is None:
        return SFTTrainer(**common)
    return SftkitTrainer(**common, loss_chunk_size=loss_chunk_size)


def test_trains_and_logs_loss_accuracy_and_tokens(tiny_model_dir: Path, tmp_path: Path) -> None:
    trainer = _trainer(tiny_model_dir, tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert set(changed) == set(before)
    first, second = trainer.state.log_history[:2]
    for log in (first, second):
        assert {"loss", "grad_norm", "learning_rate", "mean_token_accuracy", "num_tokens"} <= log.keys()
        assert 0 <= log["mean_token_accuracy"] <= 1
        assert "entropy" not in log  # the full-vocabulary pass TRL makes every step is gone
    assert 0 < first["num_tokens"] < second["num_tokens"]


@pytest.mark.parametrize("loss_chunk_size", [16, 0])
def test_loss_equals_trl_on_the_same_batch(tiny_model_dir: Path, tmp_path: Path, loss_chunk_size: int) -> None:
    trainer = _trainer(tiny_model_dir, tmp_path, loss_chunk_size=loss_chunk_size)
    plain_trl = _trainer(tiny_model_dir, tmp_path, loss_chunk_size=None)  # the same weights, TRL's fused head
    batch = next(iter(trainer.get_train_dataloader()))
    ours = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=40)
    theirs = plain_trl.compute_loss(plain_trl.model, dict(batch), num_items_in_batch=40)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_the_forward_is_wrapped_once_by_our_loss_and_never_by_trls(tiny_model_dir: Path, tmp_path: Path) -> None:
    from sftkit.model import causal_lm_of

    # TRL 1.16 wraps every SFTTrainer's model with its fused LM head; if it stops, the re-install can go
    plain_lm = causal_lm_of(_trainer(tiny_model_dir, tmp_path, loss_chunk_size=None).model)
    assert "forward" in vars(plain_lm)
    lm = causal_lm_of(_trainer(tiny_model_dir, tmp_path).model)
    assert lm.forward.__func__.__wrapped__ is type(lm).forward  # our patch, directly over the class's forward
    ids = torch.tensor([[5, 6, 7]])
    out = lm(input_ids=ids, labels=ids, fused_lm_head=True)  # TRL's head is not in the call chain to answer it
    assert out.logits is not None and not hasattr(out, "log_probs")


def test_liger_is_refused_off_gpu_with_the_reason(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from sftkit.training.loss import liger_available
    from sftkit.training.trainer import liger_loss_blocker

    reason = liger_loss_blocker(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    assert reason is not None
    assert ("GPU" in reason) if liger_available() else ("not installed" in reason)
