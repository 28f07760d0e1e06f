"""`sftkit chat`: prompt ids, stopping, the REPL, one-shot modes, and the train -> merge -> chat chain."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from helpers import run_cli

# The three templates these tests were written for; tests/test_chat_templates.py covers every template.
TEMPLATES = ("chatml", "ernie_nothink", "llama3")

QUESTION = "What is the capital of France?"
ANSWER = "Paris."
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi, how can I help?"},
    {"role": "user", "content": QUESTION},
]


class TokenCapture:
    """A streamer that keeps the ids `generate` is fed (the prompt) and those it generates."""

    def __init__(self) -> None:
        self.prompt: list[int] | None = None
        self.generated: list[int] = []

    def put(self, value) -> None:
        if self.prompt is None:
            self.prompt = value.flatten().tolist()
        else:
            self.generated += value.flatten().tolist()

    def end(self) -> None:
        pass


def prepared_model(model_dir: Path, template_name: str):
    """The tiny model and tokenizer set up for `template_name` as training sets them up."""
    from sftkit.config import validate_config
    from sftkit.data import load_tokenizer
    from sftkit.model import Precision, load_model
    from sftkit.templates import get_template

    cfg = validate_config(
        {"model_name_or_path": str(model_dir), "dataset": ["x"], "output_dir": "unused", "template": template_name}
    )
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, tokenizer, Precision("float32", "cpu", "test"))
    return model.eval(), tokenizer, get_template(template_name)


@pytest.fixture(scope="module")
def base_session(tiny_model_dir: Path):
    from sftkit.chat import ChatSession, GenerationSettings

    model, tokenizer, template = prepared_model(tiny_model_dir, "chatml")
    return ChatSession(model, tokenizer, template, GenerationSettings(max_new_tokens=4))


# ---------------------------------------------------------------------------- prompt ids and stopping


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_chat_feeds_the_training_ids_up_to_the_assistant_header(tiny_model_dir: Path, template_name: str) -> None:
    from sftkit.chat import GenerationSettings, generate_reply
    from sftkit.data.masking import encode_conversation

    model, tokenizer, template = prepared_model(tiny_model_dir, template_name)
    capture = TokenCapture()
    generate_reply(model, tokenizer, template, CONVERSATION, GenerationSettings(max_new_tokens=1), streamer=capture)
    trained = encode_conversation(
        tokenizer, template, CONVERSATION + [{"role": "assistant", "content": ANSWER}], None, cutoff_len=1024
    ).input_ids
    header_end = tokenizer(template.generation_prompt(CONVERSATION), add_special_tokens=False).input_ids
    assert capture.prompt == trained[: len(capture.prompt)]
    # everything up to the assistant header; at most the header's last token (merged with the reply's
    # first in a byte-level BPE) is left for the model to generate
    assert capture.prompt == header_end[: len(capture.prompt)] and len(header_end) - len(capture.prompt) <= 1
    assert tokenizer.convert_tokens_to_ids(template.end_token) in capture.prompt  # one control token, not text


def test_ctrl_c_stops_the_answer_and_restores_the_handler(base_session, request) -> None:
    from sftkit.chat import GenerationSettings, StopOnInterrupt, generate_reply

    # Python's own handler, as in a terminal (a shell's background job starts with SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))

    session = base_session
    settings = GenerationSettings(max_new_tokens=30)
    messages = [{"role": "user", "content": QUESTION}]
    full = generate_reply(session.model, session.tokenizer, session.template, messages, settings)
    stop = StopOnInterrupt()
    with stop.armed():
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends; the process must survive it
        cut = generate_reply(session.model, session.tokenizer, session.template, messages, settings, stop=stop)
    assert stop.requested
    assert len(session.tokenizer(cut).input_ids) <= 1 < len(session.tokenizer(full).input_ids)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ---------------------------------------------------------------------------- REPL


def test_repl_commands_reset_and_set_the_system_prompt(base_session) -> None:
    from sftkit.chat import (
        _stream_reader,  # the reader `--repl` uses on a non-terminal stdin
        run_repl,
    )

    base_session.history, base_session.system = [], None
    out = io.StringIO()
    lines = io.StringIO("hello\n/reset\n/system Be brief\n/unknown\nhi\n/exit\nnever read\n")
    run_repl(base_session, _stream_reader(lines, out), out)
    text = out.getvalue()
    assert "(new conversation)" in text and "(system prompt set)" in text and "unknown command /unknown" in text
    assert base_session.system == "Be brief"
    assert [m["role"] for m in base_session.history] == ["user", "assistant"]
    assert base_session.history[0]["content"] == "hi"
    assert lines.readline() == "never read\n"  # /exit left the loop


def test_repl_leaves_at_end_of_input(base_session) -> None:
    from sftkit.chat import _stream_reader, run_repl

    base_session.history = []
    out = io.StringIO()
    run_repl(base_session, _stream_reader(io.StringIO("hi\n"), out), out)  # no /exit: Ctrl-D
    assert len(base_session.history) == 2


# ---------------------------------------------------------------------------- loading and templates


def test_base_model_gets_chatml_with_a_note(tiny_model_dir: Path, monkeypatch, capsys) -> None:
    code, out, err = run_cli(
        ["chat", str(tiny_model_dir), "--prompt", "hi", "--max-new-tokens", "3"], monkeypatch, capsys
    )
    assert code == 0 and len(out) > 1  # some answer, then the newline
    assert "note: template chatml (default: no chat_template)" in err


def test_template_and_system_come_from_run_config_else_from_chat_template(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from sftkit.chat import load_for_inference
    from sftkit.config import dump_resolved, validate_config

    _, tokenizer, _ = prepared_model(tiny_model_dir, "ernie_nothink")
    merged_like = tmp_path / "merged"
    shutil.copytree(tiny_model_dir, merged_like)
    tokenizer.save_pretrained(merged_like)
    assert load_for_inference(str(merged_like)).template.name == "ernie_nothink"
    assert "recognised from the tokenizer's chat_template" in capsys.readouterr().err

    full_run = tmp_path / "full"
    shutil.copytree(tiny_model_dir, full_run)
    dump_resolved(
        validate_config(
            {
                "model_name_or_path": "x",
                "dataset": ["x"],
                "output_dir": str(full_run),
                "template": "ernie_nothink",
                "finetuning_type": "full",
                "default_system": "Be brief.",
            }
        ),
        full_run / "sftkit_config.yaml",
    )
    loaded = load_for_inference(str(full_run))
    model, tokenizer, template = loaded.model, loaded.tokenizer, loaded.template
    assert template.name == "ernie_nothink" and "sftkit_config.yaml" in capsys.readouterr().err
    assert len(tokenizer) <= model.get_input_embeddings().weight.shape[0]

    code, _, err = run_cli(["chat", str(full_run), "--prompt", "hi", "--max-new-tokens", "2"], monkeypatch, capsys)
    assert code == 0 and "system prompt 'Be brief.' (the run's default_system" in err


def test_sampling_is_seeded(tiny_model_dir: Path, monkeypatch, capsys) -> None:
    def sample(seed: int) -> str:
        args = [
            "chat",
            str(tiny_model_dir),
            "--prompt",
            "hi",
            "--temperature",
            "1",
            "--max-new-tokens",
            "12",
            "--seed",
            str(seed),
        ]
        return run_cli(args, monkeypatch, capsys)[1]

    assert sample(1) == sample(1) != sample(2)


def test_cli_errors_are_one_line(tmp_path: Path, tiny_model_dir: Path, monkeypatch, capsys) -> None:
    (tmp_path / "empty").mkdir()
    for args, words in (
        ([str(tmp_path / "missing"), "--prompt", "hi"], "missing does not exist (looked in"),
        ([str(tmp_path / "empty"), "--prompt", "hi"], "cannot load a tokenizer"),
        ([str(tiny_model_dir), "--temperature", "-1"], "--temperature"),
    ):
        code, _, err = run_cli(["chat", *args], monkeypatch, capsys)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and "Traceback" not in err and len(errors) == 1 and words in errors[0], err


# ---------------------------------------------------------------------------- train -> merge -> chat


@pytest.fixture(scope="module")
def learnable_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a wider initialisation, so a few LoRA steps can overfit it.

    The shared tiny model's tied, frozen embeddings (std 0.02) bound its logits to about +-1.3: LoRA
    cannot make any token likely, and greedy output after a short run is noise. At std 0.3 one row is
    reproduced exactly after ~30 steps.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from sftkit.tiny import build_tiny_tokenizer, tiny_model_config

    out = tmp_path_factory.mktemp("learnable-tiny")
    tokenizer = build_tiny_tokenizer()
    config = tiny_model_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    config.initializer_range = 0.3
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def trained_run(learnable_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA run of `sftkit.train.train` overfit on one conversation."""
    from sftkit.config import validate_config
    from sftkit.training.recipe import train

    data = tmp_path_factory.mktemp("chat-data")
    (data / "rows.json").write_text(json.dumps([{"instruction": QUESTION, "input": "", "output": ANSWER}]))
    (data / "dataset_info.json").write_text(json.dumps({"one": {"file_name": "rows.json"}}))
    cfg = validate_config(
        {
            "model_name_or_path": str(learnable_base),
            "dataset": ["one"],
            "dataset_dir": str(data),
            "template": "chatml",
            "output_dir": str(tmp_path_factory.mktemp("chat-run")),
            "learning_rate": 1e-2,
            "lr_scheduler_type": "constant",
            "max_steps": 40,
            "save_strategy": "no",
            "report_to": ["none"],
            "plot_loss": False,
            "logging_steps": 40,
        }
    )
    return train(cfg)


@pytest.mark.integration  # these four share trained_run, a 40-step training (30-90 s on two busy cores)
def test_one_shot_on_the_run_reproduces_the_trained_answer(trained_run: Path, monkeypatch, capsys) -> None:
    code, out, err = run_cli(["chat", str(trained_run), "--prompt", QUESTION], monkeypatch, capsys)
    assert code == 0
    assert out == ANSWER + "\n"  # stopped at <|im_end|>: nothing after the trained reply
    assert "template chatml (from" in err


@pytest.mark.integration
def test_stdin_prompts_are_answered_one_by_one(trained_run: Path, monkeypatch, capsys) -> None:
    code, out, _ = run_cli(["chat", str(trained_run)], monkeypatch, capsys, stdin=f"{QUESTION}\n\n{QUESTION}\n")
    assert code == 0 and out == f"{ANSWER}\n{ANSWER}\n"


@pytest.mark.integration
def test_repl_flag_streams_the_answer(trained_run: Path, monkeypatch, capsys) -> None:
    code, out, _ = run_cli(
        ["chat", str(trained_run), "--repl"],
        monkeypatch,
        capsys,
        stdin=f"{QUESTION}\n/reset\n/system Be brief\n/exit\n",
    )
    assert code == 0
    assert f">>> {ANSWER}\n>>> (new conversation)\n>>> (system prompt set)\n>>> " in out


@pytest.mark.integration
def test_merged_model_answers_like_the_run(trained_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from sftkit.chat import GenerationSettings, generate_reply, load_for_inference
    from sftkit.merge import merge

    merged = merge(trained_run, out=tmp_path / "merged", dtype="fp32")
    assert f"merged {trained_run} into {merged}" in capsys.readouterr().out
    code, out, err = run_cli(["chat", str(merged), "--prompt", QUESTION], monkeypatch, capsys)
    assert code == 0 and out == ANSWER + "\n"
    assert f"template chatml (from {merged / 'sftkit_config.yaml'})" in err

    messages = [{"role": "user", "content": QUESTION}]
    captures = []
    for source in (trained_run, merged):
        loaded = load_for_inference(str(source))
        model, tokenizer, template = loaded.model, loaded.tokenizer, loaded.template
        captures.append(TokenCapture())
        generate_reply(
            model, tokenizer, template, messages, GenerationSettings(max_new_tokens=8), streamer=captures[-1]
        )
    assert captures[0].prompt == captures[1].prompt
    assert captures[0].generated == captures[1].generated
    assert captures[0].generated[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
