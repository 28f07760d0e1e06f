"""Real pretrained weights: SmolLM2-135M-Instruct and Gemma 3 270M base, from the GGUF files of their pip packages.

The weight tests are integration tier. Each model is de-quantized once per machine (the GGUF cache,
`sftkit.data.gguf_source`) and one short identity run (the real demo's config) is shared by the tests that
need a trained run. Without the packages (`pip install '.[real]'` or `sftkit models fetch`) every weight test
skips, saying so. The catalog tests (`sftkit models ...`) are fast tier.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from helpers import run_cli
from sftkit.real_models import model_path, real_model

REPO = Path(__file__).resolve().parent.parent


def _demo():
    """scripts/real_demo.py: its held-out identity questions, general questions and scoring."""
    spec = importlib.util.spec_from_file_location("real_demo", REPO / "scripts" / "real_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _installed(name: str) -> Path:
    path = model_path(name)
    if path is None:
        pytest.skip(
            f"{real_model(name).requirement} is not installed (pip install '.[real]', or `sftkit models "
            f"fetch {name}` where the package index can be reached)"
        )
    return path


@pytest.fixture(scope="session")
def smollm2() -> Path:
    from sftkit.data.model_source import resolve_model

    path = _installed("smollm2")
    resolve_model(str(path))  # de-quantized once, here, not inside the first test's timing
    return path


@pytest.fixture(scope="session")
def gemma() -> Path:
    from sftkit.data.model_source import resolve_model

    path = _installed("gemma3-270m")
    resolve_model(str(path))
    return path


@pytest.fixture(scope="session")
def identity_run(smollm2: Path, tmp_path_factory: pytest.TempPathFactory):
    """(the config, the run, the base's answers before it): the real demo's run (configs/smollm2_identity.yaml,
    20 updates of 4 short rows) on the installed SmolLM2 GGUF."""
    from sftkit.config import load_config
    from sftkit.training import train

    demo = _demo()
    tmp = tmp_path_factory.mktemp("identity")
    config = tmp / "config.yaml"
    keys = yaml.safe_load((REPO / "configs" / "smollm2_identity.yaml").read_text(encoding="utf-8"))
    keys.update(model_name_or_path=str(smollm2), dataset_dir=str(REPO / "data"), output_dir=str(tmp / "run"))
    config.write_text(yaml.safe_dump(keys), encoding="utf-8")
    cfg = load_config(config)
    before = demo.answers(str(smollm2), demo.IDENTITY + demo.GENERAL, cfg)
    return config, train(cfg), before


# ---------------------------------------------------------------------------- the label rule


def _label_rule_holds(tokenizer, template, shared_data: Path) -> int:
    from test_masking import reference_labels, shared_conversations

    from sftkit.data import masking
    from sftkit.errors import DataError

    conversations = shared_conversations(shared_data)
    tool_rows = [(m, t) for m, t in conversations if t is not None]
    try:
        template.segments(*tool_rows[0])
    except DataError as exc:  # a template without a tool-call format refuses tool rows, by name; the rest are checked
        assert "tool" in str(exc)
        conversations = [(m, t) for m, t in conversations if t is None]
    rows = masking.encode_conversations(tokenizer, template, conversations, 100_000)
    assert len(rows) == len(conversations)
    for (messages, tools), row in zip(conversations, rows):
        assert row.labels == reference_labels(tokenizer, template, messages, tools, False), messages
    return len(rows)


@pytest.mark.integration
def test_smollm2_labels_follow_the_rule_on_every_shared_row_with_its_own_template(smollm2, shared_data) -> None:
    from sftkit.config import validate_config
    from sftkit.data.tokenizer import load_tokenizer_and_template

    cfg = validate_config({"model_name_or_path": str(smollm2), "dataset": "identity_quill", "output_dir": "unused"})
    tokenizer, template = load_tokenizer_and_template(cfg)
    assert type(template).__name__ == "JinjaTemplate" and "SmolLM" in template.jinja()  # its own, default system
    assert _label_rule_holds(tokenizer, template, shared_data) > 2000


@pytest.mark.integration
def test_gemma_labels_follow_the_rule_on_every_shared_row_with_the_gemma_template(gemma, shared_data) -> None:
    from sftkit.config import validate_config
    from sftkit.data.tokenizer import load_tokenizer_and_template

    cfg = validate_config(
        {"model_name_or_path": str(gemma), "dataset": "identity_quill", "template": "gemma", "output_dir": "unused"}
    )
    tokenizer, template = load_tokenizer_and_template(cfg)
    assert len(tokenizer) > 262_000 and "<start_of_turn>" in tokenizer.get_vocab()  # the real vocabulary
    assert _label_rule_holds(tokenizer, template, shared_data) > 2000


# ---------------------------------------------------------------------------- a .gguf through every command


@pytest.mark.integration
def test_a_gguf_trains_and_its_run_merges_chats_and_serves_the_same_greedy_answer(
    identity_run, monkeypatch, capsys
) -> None:
    import httpx
    from test_serve import Server

    config, run, _ = identity_run
    recorded = yaml.safe_load((run / "sftkit_config.yaml").read_text(encoding="utf-8"))
    assert recorded["model_name_or_path"] == yaml.safe_load(config.read_text())["model_name_or_path"]  # the .gguf
    assert run_cli(["merge", str(run)], monkeypatch, capsys)[0] == 0
    prompt = "What should I call you?"
    answers = {}
    for model in (run, run / "merged"):
        code, out, err = run_cli(
            ["chat", str(model), "--prompt", prompt, "--max-new-tokens", "16"], monkeypatch, capsys
        )
        assert code == 0, err
        answers[str(model)] = out.strip()
    server = Server(run / "merged", run)
    try:
        served = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"][0]["id"]
        reply = httpx.post(
            f"{server.url}/v1/chat/completions",
            timeout=120,
            json={
                "model": served,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 16,
                "temperature": 0,
            },
        )
        assert reply.status_code == 200, server.output()
        answers["serve"] = reply.json()["choices"][0]["message"]["content"].strip()
    finally:
        server.stop()
    assert len(set(answers.values())) == 1 and answers["serve"], answers


@pytest.mark.integration
def test_eval_tasks_scores_the_base_gguf_and_the_run(identity_run, smollm2, monkeypatch, capsys, tmp_path) -> None:
    config, run, _ = identity_run
    out = tmp_path / "scores.json"
    code, _, err = run_cli(
        ["eval", str(run), "--tasks", "sftkit_mc", "--limit", "8", "--compare", str(smollm2), "--out", str(out)],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    scores = json.loads(out.read_text(encoding="utf-8"))
    tuned, base = scores["tasks"]["sftkit_mc"], scores["compare"]["tasks"]["sftkit_mc"]
    assert tuned["n"] == base["n"] == 8 and 0 <= tuned["acc"] <= 1 and 0 <= base["acc"] <= 1
    assert scores["deltas"]["sftkit_mc"]["acc"] == pytest.approx(tuned["acc"] - base["acc"])


@pytest.mark.integration
def test_identity_answers_change_and_general_answers_are_kept(identity_run, capsys) -> None:
    demo = _demo()
    _, run, before = identity_run
    after = demo.answers(str(run), demo.IDENTITY + demo.GENERAL)
    n = len(demo.IDENTITY)
    identity_before, identity_after = demo.score(before[:n], demo.IDENTITY), demo.score(after[:n], demo.IDENTITY)
    general_before, general_after = demo.score(before[n:], demo.GENERAL), demo.score(after[n:], demo.GENERAL)
    print(
        f"identity {identity_before:.2f} -> {identity_after:.2f}, general {general_before:.2f} -> {general_after:.2f}"
    )
    assert identity_before == 0 and identity_after >= IDENTITY_AFTER_AT_LEAST, after[:n]
    assert general_before >= GENERAL_BEFORE_AT_LEAST and re.search(r"Paris", after[n]), after[n:]  # France, kept


# Measured with scripts/real_demo.py (the same config) on the 2-core machine, 2026-12-06: identity 0.0 -> 1.0,
# general 0.75 -> 0.25 (the capital of France kept, most of the rest forgotten); docs/real_models.md. Margins below.
IDENTITY_AFTER_AT_LEAST = 0.75
GENERAL_BEFORE_AT_LEAST = 0.5
