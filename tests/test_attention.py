"""Document-masked attention on packed rows gives the same loss, outputs and gradients as sdpa with its mask.

On a CPU: per-example sdpa (loss, logits, gradients) and flex_attention's forward (a CPU has no flex backward).
On a GPU (skipped elsewhere; scripts/gpu_check.sh runs them): flex_attention and flash-attention 2 gradients.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sftkit.errors import SftkitError
from sftkit.model import attention_implementation
from sftkit.training.attention import FLEX, PACKED_SDPA, example_spans, use_document_attention, varlen_attention

CUDA = torch.cuda.is_available()


def _model(
    model_dir: Path, packed: bool, kernel: str = "sdpa", device: str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=kernel)
    if packed:
        assert use_document_attention(model, "auto", device) == PACKED_SDPA
        assert model.config._attn_implementation == PACKED_SDPA
    return model.to(device)


def _batch() -> dict[str, torch.Tensor]:
    """Row 0 packs three examples; row 1 holds one example and three pads (position 0, label -100)."""
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 500, (2, 20), generator=gen)
    position_ids = torch.stack(
        [
            torch.cat([torch.arange(8), torch.arange(7), torch.arange(5)]),
            torch.cat([torch.arange(17), torch.zeros(3, dtype=torch.long)]),
        ]
    )
    labels = input_ids.clone()
    labels[position_ids == 0] = -100
    labels[1, 17:] = -100
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels, "use_cache": False}


def _loss_grads_logits(model: torch.nn.Module, batch: dict) -> tuple:
    out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.loss.detach(), grads, out.logits.detach()


def test_same_loss_gradients_and_logits_as_masked_sdpa(tiny_model_dir: Path) -> None:
    batch = _batch()
    ref_loss, ref_grads, ref_logits = _loss_grads_logits(_model(tiny_model_dir, packed=False), batch)
    loss, grads, logits = _loss_grads_logits(_model(tiny_model_dir, packed=True), batch)
    torch.testing.assert_close(loss, ref_loss)
    real = batch["labels"] != -100  # pads are merged into one span: only their own outputs may differ
    torch.testing.assert_close(logits[real], ref_logits[real], rtol=1e-4, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-3, atol=1e-5, msg=name)


def test_packed_rows_build_no_dense_mask(tiny_model_dir: Path) -> None:
    from transformers.masking_utils import create_causal_mask

    model = _model(tiny_model_dir, packed=True)
    batch = _batch()
    embeds = model.get_input_embeddings()(batch["input_ids"])
    mask = create_causal_mask(
        config=model.config,
        inputs_embeds=embeds,
        attention_mask=None,
        past_key_values=None,
        position_ids=batch["position_ids"],
    )
    assert mask is None
    dense = create_causal_mask(
        config=_model(tiny_model_dir, packed=False).config,
        inputs_embeds=embeds,
        attention_mask=None,
        past_key_values=None,
        position_ids=batch["position_ids"],
    )
    assert dense.shape == (2, 1, 20, 20)  # what sdpa alone builds: the block-diagonal mask
    padded = create_causal_mask(
        config=model.config,
        inputs_embeds=embeds,
        attention_mask=torch.ones(2, 20).long(),
        past_key_values=None,
        position_ids=batch["position_ids"],
    )
    assert padded is None or padded.shape[-1] == 20  # a padding mask goes to sdpa's own mask function


def test_packing_matters_to_the_reference(tiny_model_dir: Path) -> None:
    # Guards the test above: attending across examples would change the loss.
    model = _model(tiny_model_dir, packed=True)
    batch = _batch()
    across = model(**batch | {"position_ids": torch.arange(20).repeat(2, 1)}).loss
    assert not torch.allclose(across, model(**batch).loss)


def test_generation_is_unchanged(tiny_model_dir: Path) -> None:
    prompt = _batch()["input_ids"][:1, :6]
    kwargs = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    expected = _model(tiny_model_dir, packed=False).generate(prompt, **kwargs)
    torch.testing.assert_close(_model(tiny_model_dir, packed=True).generate(prompt, **kwargs), expected)


@pytest.mark.parametrize(
    ("positions", "spans"),
    [
        ([0, 1, 2, 0, 1, 0, 1, 2], [(0, 3), (3, 5), (5, 8)]),
        ([0, 1, 2, 3, 0, 0, 0], [(0, 4), (4, 7)]),
    ],
)
def test_example_spans_cut_where_positions_restart(positions: list[int], spans: list[tuple[int, int]]) -> None:
    query = torch.zeros(1, 1, len(positions), 4)
    assert example_spans(torch.tensor([positions]), query, query) == [spans]


def test_unpacked_rows_and_decoding_fall_back_to_sdpa() -> None:
    query = torch.zeros(1, 1, 5, 4)
    assert example_spans(torch.arange(5)[None], query, query) is None
    assert example_spans(None, query, query) is None
    assert example_spans(torch.tensor([[0, 1, 0, 1, 2]]), query, torch.zeros(1, 1, 9, 4)) is None  # a KV cache


def test_auto_picks_the_kernel_per_device(tiny_model_dir: Path) -> None:
    assert attention_implementation("auto", "cpu") == "sdpa"
    assert (attention_implementation("fa2", "cpu"), attention_implementation("fa3", "cuda")) == (
        "flash_attention_2",
        "flash_attention_3",
    )
    assert (attention_implementation("flex", "cpu"), attention_implementation("disabled", "cuda")) == (FLEX, "eager")
    on_gpu = _model(tiny_model_dir, packed=False)
    assert use_document_attention(on_gpu, "auto", "cuda") == FLEX  # a GPU without flash-attn: flex's block mask
    assert on_gpu.config._attn_implementation == FLEX and not varlen_attention(on_gpu)
    explicit = _model(tiny_model_dir, packed=False)
    assert use_document_attention(explicit, "sdpa", "cuda") == PACKED_SDPA  # sdpa asked for: per example
    eager = _model(tiny_model_dir, packed=False, kernel="eager")
    assert use_document_attention(eager, "disabled", "cpu") is None and eager.config._attn_implementation == "eager"


def test_flex_cannot_train_on_a_cpu(tiny_model_dir: Path) -> None:
    with pytest.raises(SftkitError, match="flash_attn: flex cannot train on a CPU"):
        use_document_attention(_model(tiny_model_dir, packed=False, kernel=FLEX), "flex", "cpu")


@pytest.mark.integration  # torch.compile of flex_attention on a CPU: tens of seconds
def test_flex_forward_matches_the_masked_reference_on_a_cpu(tiny_model_dir: Path) -> None:
    batch = _batch()
    with torch.no_grad():
        ref = _model(tiny_model_dir, packed=False)(**batch)
        flex = _model(tiny_model_dir, packed=False, kernel=FLEX)(**batch)
    real = batch["labels"] != -100
    torch.testing.assert_close(flex.loss, ref.loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(flex.logits[real], ref.logits[real], rtol=1e-4, atol=1e-4)


def _flattened(batch: dict) -> dict:
    """The batch as TRL's padding-free collator gives it to flash-attention: one row, position_ids restarting."""
    keep = (batch["labels"] != -100) | (batch["position_ids"] == 0)
    keep[1, 17:] = False  # row 1's pads are dropped, as padding-free batches carry none
    return {
        "input_ids": batch["input_ids"][keep][None],
        "position_ids": batch["position_ids"][keep][None],
        "labels": batch["labels"][keep][None],
        "use_cache": False,
    }


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (scripts/gpu_check.sh runs it)")
@pytest.mark.parametrize("kernel", [FLEX, "flash_attention_2"])
def test_gpu_kernels_give_the_masked_reference_loss_and_gradients(tiny_model_dir: Path, kernel: str) -> None:
    from transformers.utils import is_flash_attn_2_available

    if kernel == "flash_attention_2" and not is_flash_attn_2_available():
        pytest.skip("flash-attn is not installed")
    dtype = torch.bfloat16 if kernel == "flash_attention_2" else torch.float32  # flash: half precision only
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in _batch().items()}
    ref = _loss_grads_logits(_model(tiny_model_dir, False, device="cuda", dtype=dtype), batch)
    model = _model(tiny_model_dir, False, kernel="sdpa", device="cuda", dtype=dtype)
    auto = "auto" if kernel == FLEX else "fa2"
    if kernel == FLEX:
        assert use_document_attention(model, auto, "cuda") == FLEX
    else:
        model.set_attn_implementation(kernel)
        batch = _flattened(batch)
    loss, grads, _ = _loss_grads_logits(model, batch)
    tol = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-3, "atol": 1e-5}
    torch.testing.assert_close(loss, ref[0], **tol)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref[1][name], **tol, msg=name)
