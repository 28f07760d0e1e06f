"""sftkit.data.gguf_source: a GGUF file is a model, de-quantized once into a cache folder keyed by its hash.

A tiny llama GGUF is written here with the `gguf` package (F32 tensors, the tiny byte-level BPE vocabulary,
q/k permuted as llama.cpp's converter stores them), so the de-quantized model can be compared exactly with
the one it was written from.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import run_cli
from sftkit.data import gguf_source
from sftkit.data.gguf_source import PROVENANCE, cached_folder, dequantized_folder, gguf_file, read_gguf
from sftkit.data.model_source import model_problems, resolve_model
from sftkit.errors import SftkitError

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"


def _permuted(weight, heads: int):  # llama.cpp's rotary layout for q and k, which transformers undoes on load
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """(path of a tiny llama GGUF, the transformers model it was written from, its tokenizer)."""
    import gguf
    import numpy as np
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from sftkit.export.vocab import add_special_vocab, build_vocab, write_vocab

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # the session's tiny byte-level BPE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    for add, value in (
        (writer.add_context_length, 128),
        (writer.add_embedding_length, 32),
        (writer.add_block_count, 2),
        (writer.add_feed_forward_length, 64),
        (writer.add_head_count, 4),
        (writer.add_head_count_kv, 2),
        (writer.add_rope_freq_base, 10000.0),
        (writer.add_rope_dimension_count, 8),
        (writer.add_layer_norm_rms_eps, config.rms_norm_eps),
        (writer.add_file_type, gguf.LlamaFileType.ALL_F32),
        (writer.add_chat_template, TEMPLATE),
    ):
        add(value)
    vocab = build_vocab(tokenizer, len(tokenizer))
    write_vocab(writer, vocab)
    add_special_vocab(writer, tokenizer, vocab, None)
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.LLAMA, 2)
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight":  # tied: llama.cpp reads token_embd
            continue
        data = tensor.numpy()
        heads = 4 if key.endswith("q_proj.weight") else 2 if key.endswith("k_proj.weight") else 0
        writer.add_tensor(
            names.get_name(key, try_suffixes=(".weight",)),
            np.ascontiguousarray(_permuted(data, heads) if heads else data, dtype=np.float32),
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, model, tokenizer


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SFTKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


def test_a_gguf_file_is_dequantized_once_into_a_folder_that_loads_as_the_same_model(
    tiny_gguf, cache: Path, capsys
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, model, tokenizer = tiny_gguf
    folder = Path(resolve_model(str(path)))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert folder == cache / digest[:16] and "de-quantizing tiny-llama.F32.gguf" in capsys.readouterr().err
    record = json.loads((folder / PROVENANCE).read_text(encoding="utf-8"))
    assert (record["sha256"], record["source"], record["quantization"]) == (digest, str(path.resolve()), "F32")
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    again = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("What colour is snow?", return_tensors="pt").input_ids
    assert again("What colour is snow?").input_ids == ids[0].tolist() and again.chat_template == TEMPLATE
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert loaded.config.tie_word_embeddings and not hasattr(loaded.config, "quantization_config")
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(str(path)) == str(folder) and "de-quantizing" not in capsys.readouterr().err
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # read from the cache, not built again


def test_a_folder_holding_one_gguf_is_that_model_and_two_are_refused(tiny_gguf, tmp_path: Path) -> None:
    path = tiny_gguf[0]
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / path.name).symlink_to(path)
    assert gguf_file(str(folder)) == folder / path.name
    shutil.copy(path, folder / "second.gguf")
    with pytest.raises(SftkitError, match="holds 2 .gguf files .* give the .gguf file's path instead"):
        gguf_file(str(folder))
    (folder / "config.json").write_text("{}", encoding="utf-8")  # a transformers folder: its .gguf are not it
    assert gguf_file(str(folder)) is None


@pytest.mark.parametrize(
    "damage, message", [("text", "not a GGUF file"), ("truncated", "truncated"), ("missing", "no such GGUF file")]
)
def test_a_damaged_or_missing_gguf_is_one_line_before_anything_loads(
    tiny_gguf, tmp_path: Path, cache: Path, damage: str, message: str
) -> None:
    bad = tmp_path / "bad.gguf"
    if damage == "text":
        bad.write_text("not a model\n", encoding="utf-8")
    elif damage == "truncated":
        bad.write_bytes(tiny_gguf[0].read_bytes()[:-5000])
    with pytest.raises(SftkitError, match=message) as caught:
        resolve_model(str(bad))
    assert len(caught.value.problems) == 1 and "\n" not in str(caught.value)
    assert not cache.exists() or not any(cache.iterdir())


def test_validate_checks_a_gguf_from_its_header_and_reports_damage_as_exit_2(
    tiny_gguf, tmp_path: Path, cache: Path, monkeypatch, capsys
) -> None:
    path = tiny_gguf[0]
    problems, line = model_problems(str(path), False, ("<|im_start|>",))
    assert problems == [] and "GGUF llama (F32)" in line and "when it first loads" in line
    assert "adds 1 control token" in line and cached_folder(path) is None  # nothing de-quantized by a check
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(path.read_bytes()[:-5000])
    config = tmp_path / "cfg.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(bad),
                "dataset": "demo_alpaca",
                "template": "chatml",
                "dataset_dir": str(REPO / "data"),
                "output_dir": str(tmp_path / "out"),
            }
        )
    )
    code, out, err = run_cli(["validate", str(config)], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "truncated" in err and str(bad) in err, err


def test_an_interrupted_build_leaves_no_cache_folder_to_be_used(tiny_gguf, cache: Path, monkeypatch) -> None:
    path = tiny_gguf[0]

    def dies_half_way(info: gguf_source.GgufInfo, out: Path) -> None:
        (out / "config.json").write_text("{}", encoding="utf-8")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_source, "_write_folder", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        dequantized_folder(path)
    assert cached_folder(path) is None and not any(cache.iterdir())


def test_a_cache_folder_of_an_older_format_is_built_again(tiny_gguf, cache: Path) -> None:
    path = tiny_gguf[0]
    folder = dequantized_folder(path)
    record = json.loads((folder / PROVENANCE).read_text(encoding="utf-8"))
    (folder / PROVENANCE).write_text(json.dumps({**record, "format": 0}), encoding="utf-8")
    assert cached_folder(path) is None
    assert dequantized_folder(path) == folder and cached_folder(path) == folder
    assert read_gguf(path).architecture == "llama"


def test_an_unwritable_cache_is_one_line_naming_sftkit_cache(tiny_gguf, tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")
    monkeypatch.setenv("SFTKIT_CACHE", str(blocker))  # a file where the cache folder should be
    with pytest.raises(SftkitError, match="cannot be cached .* set SFTKIT_CACHE to a writable folder"):
        dequantized_folder(tiny_gguf[0])
