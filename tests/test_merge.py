"""`sftkit merge`: equivalence with base+adapter, tied embeddings, added tokens, export format, errors.

The run directory is built with the real model-stage functions (tokenizer prepared for the template,
embeddings grown, LoRA + trainable tokens) and non-zero adapter weights, without training: merging is
what is tested here; tests/test_chat.py runs the train -> merge -> chat chain.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_cli
from sftkit.errors import SftkitError

REPO = Path(__file__).resolve().parent.parent

PROBE = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a red fruit."},
    {"role": "assistant", "content": "An apple."},
]


def make_lora_run(base_dir: Path, run_dir: Path, template: str = "chatml", seed: int = 0) -> Path:
    """A LoRA run directory as `sftkit train` leaves it, with random (non-zero) adapter weights."""
    import torch

    from sftkit.config import dump_resolved, validate_config
    from sftkit.data import load_tokenizer
    from sftkit.model import Precision, add_adapter, load_model
    from sftkit.templates import get_template

    cfg = validate_config(
        {
            "model_name_or_path": str(base_dir),
            "dataset": ["demo_alpaca"],
            "dataset_dir": str(REPO / "data"),
            "template": template,
            "output_dir": str(run_dir),
        }
    )
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, tokenizer, Precision("float32", "cpu", "test"))
    model = add_adapter(model, cfg, get_template(template).token_ids(tokenizer))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "trainable_tokens_delta" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * (0.05 if "lora_B" in name else 0.5))
    model.save_pretrained(run_dir)
    tokenizer.save_pretrained(run_dir)
    dump_resolved(cfg, run_dir / "sftkit_config.yaml")
    return run_dir


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora_run(tiny_model_dir, tmp_path_factory.mktemp("lora-run"))


@pytest.fixture(scope="module")
def merged_fp32(lora_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sftkit.merge import merge

    return merge(lora_run, out=tmp_path_factory.mktemp("m") / "merged", dtype="fp32", max_shard_size="200KB")


def _logits(model, ids: list[int]):
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits


def test_merged_fp32_logits_equal_base_plus_adapter(lora_run: Path, merged_fp32: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from sftkit.merge import probe_ids
    from sftkit.model import load_adapter_run

    run = load_adapter_run(lora_run)
    merged = AutoModelForCausalLM.from_pretrained(merged_fp32, dtype=torch.float32)
    ids = probe_ids(run.tokenizer, run.template)
    reference = _logits(run.model, ids)
    with run.model.disable_adapter():
        assert (_logits(run.model, ids) - reference).abs().max() > 1e-2  # the adapter changes the model
    assert (_logits(merged, ids) - reference).abs().max().item() <= 1e-5


def test_added_tokens_survive_with_their_trained_rows(tiny_model_dir: Path, lora_run: Path, merged_fp32: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from sftkit.model import load_adapter_run
    from sftkit.templates import get_template

    run = load_adapter_run(lora_run)
    new_ids = get_template("chatml").token_ids(run.tokenizer)
    base_rows = AutoModelForCausalLM.from_pretrained(tiny_model_dir).get_input_embeddings().weight.shape[0]
    assert min(new_ids) >= base_rows  # really added tokens, not reused ones
    with torch.inference_mode():
        used = run.model.get_input_embeddings()(torch.tensor(new_ids))  # what base+adapter embeds
    merged = AutoModelForCausalLM.from_pretrained(merged_fp32, dtype=torch.float32)
    assert merged.get_input_embeddings().weight.shape[0] == len(run.tokenizer)
    assert torch.equal(merged.get_input_embeddings().weight[new_ids], used)


def test_tied_embeddings_stay_tied(merged_fp32: Path) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(merged_fp32)
    assert merged.config.tie_word_embeddings is True
    assert merged.lm_head.weight.data_ptr() == merged.get_input_embeddings().weight.data_ptr()
    saved = set()
    for shard in merged_fp32.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as f:
            saved |= set(f.keys())
    assert "lm_head.weight" not in saved and "model.embed_tokens.weight" in saved


def test_export_is_sharded_and_renders_the_template(merged_fp32: Path) -> None:
    from transformers import AutoTokenizer

    from sftkit.templates import get_template

    assert len(list(merged_fp32.glob("model-*-of-*.safetensors"))) > 1
    assert (merged_fp32 / "model.safetensors.index.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(merged_fp32)
    template = get_template("chatml")
    assert tokenizer.apply_chat_template(PROBE, tokenize=False) == "".join(t for t, _ in template.render(PROBE))
    assert tokenizer.apply_chat_template(
        PROBE[:2], tokenize=False, add_generation_prompt=True
    ) == template.generation_prompt(PROBE[:2])
    eos = json.loads((merged_fp32 / "generation_config.json").read_text())["eos_token_id"]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in eos and tokenizer.eos_token_id in eos


def test_bf16_merge_saves_bf16_weights_and_reports_both_checks(lora_run: Path, tmp_path: Path, capsys) -> None:
    import torch
    from safetensors import safe_open

    from sftkit.merge import merge

    out = merge(lora_run, out=tmp_path / "bf16", dtype="bf16")
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(key).dtype for key in f.keys()} == {torch.bfloat16}
    err = capsys.readouterr().err
    assert "verify (fp32)" in err and "verify (bf16)" in err
    assert list(tmp_path.iterdir()) == [out]  # no temporary folder left beside it


def test_overwrite_replaces_an_earlier_merge_only(lora_run: Path, merged_fp32: Path, tmp_path: Path) -> None:
    """--overwrite replaces a merged model; a folder holding anything else (somebody's files, a training run or
    checkpoint with its optimizer state) is refused even with it, and left as it was."""
    import shutil

    from sftkit.merge import merge

    out = tmp_path / "merged"
    shutil.copytree(merged_fp32, out)
    (out / "model.safetensors").write_bytes(b"stale")
    with pytest.raises(SftkitError, match="--overwrite"):
        merge(lora_run, out=out, dtype="fp32")
    merge(lora_run, out=out, dtype="fp32", overwrite=True)
    assert (out / "model.safetensors").stat().st_size > 5 and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
    checkpoint, mine = tmp_path / "checkpoint-10", tmp_path / "mine"
    checkpoint.mkdir()
    for name in ("optimizer.pt", "trainer_state.json", "model.safetensors", "config.json", "sftkit_config.yaml"):
        (checkpoint / name).write_text("state")
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (mine / "config.json").write_text("{}")
    for folder, reason in [
        (checkpoint, "it holds optimizer.pt"),
        (mine, "it holds notes.txt, which `sftkit merge` does not write"),
    ]:
        before = sorted(path.name for path in folder.iterdir())
        with pytest.raises(SftkitError, match=f"not a merged model \\({reason}"):
            merge(lora_run, out=folder, dtype="fp32", overwrite=True)
        assert sorted(path.name for path in folder.iterdir()) == before


def test_failed_check_leaves_nothing_at_out(lora_run: Path, tmp_path: Path, monkeypatch) -> None:
    import sftkit.merge

    monkeypatch.setitem(sftkit.merge.RELATIVE_TOLERANCE, "fp32", -1.0)  # no difference can pass
    with pytest.raises(SftkitError, match="nothing was written"):
        sftkit.merge.merge(lora_run, out=tmp_path / "merged", dtype="fp32")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- CLI errors


def assert_one_error(code: int, err: str, *words: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert all(word in errors[0] for word in words), errors[0]


@pytest.fixture(scope="module")
def other_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model of another width: an adapter trained on tiny_model_dir cannot fit it."""
    from transformers import AutoModelForCausalLM

    from sftkit.tiny import build_tiny_tokenizer, tiny_model_config

    out = tmp_path_factory.mktemp("other-base")
    tokenizer = build_tiny_tokenizer()
    config = tiny_model_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    config.hidden_size = 32
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_cli_refuses_a_directory_without_adapter(tmp_path: Path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["merge", str(tmp_path)], monkeypatch, capsys)
    assert_one_error(code, err, "no LoRA adapter")


def test_cli_refuses_a_full_or_merged_model(tiny_model_dir: Path, merged_fp32: Path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["merge", str(tiny_model_dir)], monkeypatch, capsys)
    assert_one_error(code, err, "nothing to merge", "finetuning_type: full")
    code, _, err = run_cli(["merge", str(merged_fp32)], monkeypatch, capsys)
    assert_one_error(code, err, "nothing to merge", "already merged")
    assert not (tiny_model_dir / "merged").exists()


def test_cli_refuses_an_adapter_from_another_base(
    lora_run: Path, other_base: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    code, _, err = run_cli(
        ["merge", str(lora_run), "--base", str(other_base), "--out", str(tmp_path / "m")], monkeypatch, capsys
    )
    assert_one_error(code, err, "not trained on", "--base")
    assert not (tmp_path / "m").exists()


def test_cli_refuses_a_bad_dtype(lora_run: Path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["merge", str(lora_run), "--dtype", "int8"], monkeypatch, capsys)
    assert_one_error(code, err, "--dtype", "bf16, fp16, fp32")


def test_cli_refuses_an_existing_out(lora_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep me")
    code, _, err = run_cli(["merge", str(lora_run), "--out", str(tmp_path / "taken")], monkeypatch, capsys)
    assert_one_error(code, err, "already exists", "--overwrite")
    assert (tmp_path / "taken" / "x").read_text() == "keep me"


def test_cli_refuses_to_overwrite_the_run_itself(lora_run: Path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["merge", str(lora_run), "--out", str(lora_run), "--overwrite"], monkeypatch, capsys)
    assert_one_error(code, err, "would replace the run directory")
    assert (lora_run / "adapter_model.safetensors").is_file()


def test_default_dtype_is_the_base_models_own(tiny_model_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from sftkit.merge import base_dtype

    assert base_dtype(str(tiny_model_dir)) == "fp32"  # the tiny model is stored in fp32: no bf16 merge check to fail
    bf16 = tmp_path / "bf16-model"
    shutil.copytree(tiny_model_dir, bf16)
    config = json.loads((bf16 / "config.json").read_text())
    config.pop("torch_dtype", None)
    (bf16 / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    assert base_dtype(str(bf16)) == "bf16"
    (bf16 / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "dtype"}))
    assert base_dtype(str(bf16)) == "fp32"  # records none


def test_merged_folder_has_a_real_model_card(merged_fp32: Path) -> None:
    card = (merged_fp32 / "README.md").read_text(encoding="utf-8")
    assert "More Information Needed" not in card and "merged into the base weights" in card
    assert "AutoModelForCausalLM.from_pretrained" in card and "base_model:" in card
