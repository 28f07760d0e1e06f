"""`sftkit webui` in a real browser: Debian's headless Chromium, driven by selenium through Debian's chromedriver.

One walk through the page, as a user would: the page refuses requests without its token or from a foreign Host
or Origin; typing at machine speed and at a human pace settles (no event loop) and keeps a hand edit of the
YAML; a bad number is named at its field; the language switch, a preset, Save, a reload and Load; two runs
started in a row, each in its own folder, the eval curve drawn while the first trains, Stop and Resume; both
runs in the Runs plot; chat with an error in one pane only and Unload; Evaluate; Merge to a folder given.
A screenshot of each tab is kept in
test-artifacts/webui/ (SFTKIT_TEST_ARTIFACTS moves it). Skips where chromium is not installed, unless
SFTKIT_REQUIRE_BROWSER=1 (CI sets it: .ci/run installs the packages).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SFTKIT = [sys.executable, "-m", "sftkit"]
ARTIFACTS = Path(os.environ.get("SFTKIT_TEST_ARTIFACTS", REPO / "test-artifacts")) / "webui"


def _browser_or_skip() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:
        message = f"{', '.join(missing)} missing: apt-get install chromium chromium-driver"
        if os.environ.get("SFTKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    pytest.importorskip("gradio")
    pytest.importorskip("selenium")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def page_url(tmp_path: Path, tiny_model_dir: Path, shared_data: Path) -> Iterator[str]:
    """`sftkit webui` started as a user starts it, in a folder of its own, on a free loopback port: the URL it
    prints, with its per-launch token."""
    _browser_or_skip()
    port = _free_port()
    log_path = tmp_path / "webui.log"
    log = log_path.open("wb")
    server = subprocess.Popen(
        [
            *SFTKIT,
            "webui",
            "--port",
            str(port),
            "--model",
            str(tiny_model_dir),
            "--dataset-dir",
            str(shared_data),
            "--output-dir",
            "runs/web",
        ],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    printed = _wait(
        lambda: next((word for word in log_path.read_text().split() if "?token=" in word), None),
        120,
        f"the URL the page prints (log: {log_path})",
    )
    assert printed.startswith(f"http://127.0.0.1:{port}/?token=")
    _wait(lambda: _answers(printed), 120, f"the page at {printed}")
    yield printed
    server.terminate()
    server.wait(30)
    log.close()


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2, follow_redirects=True).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture()
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # the flags that keep Chromium from calling out of a closed network at start (and failing slowly)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1800",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


# ---------------------------------------------------------------------------- driving Gradio


def _wait(ready: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"gave up waiting for {what} after {timeout:.0f} s")


def _text(driver: Any, elem_id: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.ID, elem_id)
    return found[0].text if found else ""


def _line(driver: Any, elem_id: str) -> str:
    """An element's text as one line (a Markdown line wraps around its code spans)."""
    return " ".join(_text(driver, elem_id).split())


def _value(driver: Any, elem_id: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input")
    return found[0].get_attribute("value") if found else ""  # "" while the page is still being drawn


def _type(driver: Any, elem_id: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    field.send_keys(text)
    field.send_keys(Keys.TAB)


def _choose(driver: Any, elem_id: str, option: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
    field.click()
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(option)
    field.send_keys(Keys.ENTER)


def _click(driver: Any, elem_id: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, elem_id).click()


def _tab(driver: Any, label: str) -> None:
    from selenium.webdriver.common.by import By

    tab = _wait(
        lambda: next((t for t in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if t.text == label), None),
        60,
        f"the {label} tab",
    )
    tab.click()
    time.sleep(1)


def _shot(driver: Any, name: str, scroll_to: str | None = None) -> None:
    from selenium.webdriver.common.by import By

    if scroll_to:
        driver.execute_script("arguments[0].scrollIntoView()", driver.find_element(By.ID, scroll_to))
        time.sleep(1)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _steps(state: str) -> int:
    """The step the run tab's state line reports ("step 4/10 ...")."""
    if "step " not in state:
        return 0
    return int(state.split("step ", 1)[1].split("/", 1)[0])


def _points(state: str) -> int:
    """How many loss points the plot holds (the state line counts what the plot draws)."""
    return int(state.split(" loss points")[0].rsplit("(", 1)[1]) if " loss points" in state else 0


def _requests(driver: Any) -> int:
    """Event requests the page has sent so far (Gradio posts each to /queue/join)."""
    return driver.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.name.includes('/queue/join')).length"
    )


def _settles(driver: Any, keystrokes: int, what: str) -> int:
    """The page's requests stop after typing (no event loop): a 3-second window with none, reached within 30 s,
    and not many more requests than keys were typed."""
    before = _requests(driver)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        start = _requests(driver)
        time.sleep(3)
        if _requests(driver) == start:
            break
    else:
        raise AssertionError(f"{what}: the page kept sending requests ({_requests(driver) - before} in 30 s)")
    total = _requests(driver)
    return total


def _type_slowly(driver: Any, elem_id: str, text: str, pause: float) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    for char in text:
        field.send_keys(char)
        time.sleep(pause)


def _ticked(driver: Any, name: str) -> bool:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, f"#dataset input[name={name}]")
    return bool(found) and found[0].is_selected()


TRAIN_YAML = """model_name_or_path: {model}
template: chatml
dataset_dir: {data}
dataset: alpaca_en_demo
cutoff_len: 512
val_size: 16
finetuning_type: lora
lora_rank: 8
learning_rate: 0.03
max_steps: 40
per_device_train_batch_size: 16
logging_steps: 1
eval_strategy: steps
eval_steps: 3
save_steps: 3
bf16: false
output_dir: runs/web
"""


# ---------------------------------------------------------------------------- the walk


def test_a_guarded_page_two_views_of_one_config_runs_in_folders_of_their_own_live_curves_chat_eval_and_merge(
    page_url: str, browser: Any, tmp_path: Path, tiny_model_dir: Path, shared_data: Path
) -> None:
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    base, token = page_url.split("/?token=")
    # the page itself refuses what another site could make this browser send
    assert httpx.get(f"{base}/config").status_code == 403  # no token
    assert httpx.get(f"{base}/config", headers={"X-Sftkit-Token": token, "Host": "evil.example"}).status_code == 403
    refused = httpx.post(
        f"{base}/gradio_api/call/start",
        json={"data": ["output_dir: x", False, "1", "none"]},
        headers={"X-Sftkit-Token": token, "Origin": "http://evil.example"},
    )
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
    assert httpx.get(f"{base}/config", headers={"X-Sftkit-Token": token}).status_code == 200

    driver.get(page_url)
    _wait(lambda: "alpaca_en_demo" in _text(driver, "dataset"), 60, "the shared datasets with row counts")
    assert "token=" not in driver.current_url  # the token moved into a cookie
    driver.execute_script("performance.setResourceTimingBufferSize(100000)")
    assert "Learning rate (learning_rate)" in driver.find_element(By.ID, "learning_rate").text

    # Setup: a named template, a shared dataset; a hand edit in the YAML editor the form must keep
    _choose(driver, "template", "chatml")
    driver.find_element(By.CSS_SELECTOR, "#dataset input[name=alpaca_en_demo]").click()
    _tab(driver, "Run")
    editor = driver.find_element(By.CSS_SELECTOR, "#yaml textarea")
    editor.send_keys(Keys.CONTROL, Keys.END)
    editor.send_keys("seed: 7\n")
    _wait(lambda: _value(driver, "problems").startswith("OK"), 30, "the hand-edited YAML accepted")
    _tab(driver, "Setup")

    # typing at machine speed, then at a human pace: the requests stop, the hand edit and the tick stay
    _type_slowly(driver, "model_name_or_path", str(tiny_model_dir), 0)
    _settles(driver, len(str(tiny_model_dir)), "machine-speed typing")
    _type_slowly(driver, "dataset_dir", str(shared_data), 0.12)
    _settles(driver, len(str(shared_data)), "human-pace typing")
    text = _value(driver, "yaml")
    assert "seed: 7" in text and f"model_name_or_path: {tiny_model_dir}" in text, text
    assert f"dataset_dir: {shared_data}" in text and "alpaca_en_demo" in text
    _wait(lambda: _ticked(driver, "alpaca_en_demo"), 20, "the dataset still ticked after typing dataset_dir")

    # a value that is no number is named at its field, on this tab, and nothing trains
    _type(driver, "learning_rate", "abc")
    _wait(lambda: "Learning rate (learning_rate)" in _text(driver, "setup-problems"), 20, "the field's problem")
    _tab(driver, "Run")
    _click(driver, "start-button")
    toast = _wait(
        lambda: " ".join(t.text for t in driver.find_elements(By.CSS_SELECTOR, "[data-testid=toast-text]")),
        20,
        "the refusal",
    )
    assert "learning_rate" in toast, toast
    assert "sftkit train" not in _line(driver, "run-command") and not (tmp_path / "runs").exists()
    for close in driver.find_elements(By.CSS_SELECTOR, "[data-testid=toast-close]"):
        driver.execute_script("arguments[0].click()", close)
    _tab(driver, "Setup")
    _type(driver, "learning_rate", "0.01")
    _wait(lambda: not _text(driver, "setup-problems"), 20, "the problem gone")

    # the language switch, and a preset filling a real model's file
    driver.execute_script("arguments[0].click()", driver.find_element(By.CSS_SELECTOR, "#language input[value='中文']"))
    _wait(lambda: "学习率 (learning_rate)" in driver.find_element(By.ID, "learning_rate").text, 20, "Chinese labels")
    _shot(driver, "1-setup-zh")
    driver.execute_script(
        "arguments[0].click()", driver.find_element(By.CSS_SELECTOR, "#language input[value='English']")
    )
    _wait(lambda: "Learning rate" in driver.find_element(By.ID, "learning_rate").text, 20, "English again")
    preset = driver.find_elements(By.CSS_SELECTOR, "#preset input")
    if "SmolLM2" in driver.find_element(By.ID, "preset").text:
        _choose(driver, "preset", "SmolLM2-135M-Instruct (GGUF)")
        _wait(
            lambda: _value(driver, "model_name_or_path").endswith("SmolLM2-135M-Instruct.Q4_1.gguf"),
            20,
            "the preset's model file",
        )
    assert preset

    # Save arguments; a reload restores the last state (form and editor)
    _type(driver, "save-name", "mine")
    _click(driver, "save-button")
    saved = tmp_path / "sftkit_webui" / "saved" / "mine.yaml"
    _wait(lambda: str(saved) in _text(driver, "setup-command"), 20, "where the arguments were saved")
    assert "seed: 7" in saved.read_text(encoding="utf-8")
    driver.refresh()
    _wait(lambda: _value(driver, "learning_rate") == "0.01", 60, "the last state in the form after a reload")
    _wait(lambda: _ticked(driver, "alpaca_en_demo"), 20, "the dataset ticked after a reload")
    _tab(driver, "Run")  # a tab's content is drawn when it is first shown
    _wait(lambda: "seed: 7" in _value(driver, "yaml"), 20, "the hand edit in the editor after a reload")
    _tab(driver, "Setup")

    # Load a YAML into the form: the fields show its values
    train_yaml = tmp_path / "train.yaml"
    train_yaml.write_text(TRAIN_YAML.format(model=tiny_model_dir, data=shared_data), encoding="utf-8")
    _type(driver, "load-path", str(train_yaml))
    _click(driver, "load-button")
    _wait(
        lambda: _value(driver, "max_steps") == "40" and _value(driver, "learning_rate") == "0.03",
        30,
        "the loaded YAML in the form",
    )
    assert _value(driver, "output_dir") == "runs/web" and "seed: 7" not in _value(driver, "yaml")
    _shot(driver, "1-setup")

    # Run: the first run into runs/web; the eval curve appears while it trains; Stop saves, Resume ends it
    _tab(driver, "Run")
    _wait(lambda: _value(driver, "problems").startswith("OK"), 30, "the loaded YAML valid")
    _click(driver, "start-button")
    _wait(lambda: "sftkit train" in _line(driver, "run-command"), 30, "the train command")
    assert "writes the run to runs/web" in _line(driver, "run-command")
    following = _value(driver, "output_dir")
    assert following.startswith("runs/train_20"), following  # the next run's folder, shown before its Start
    live = _wait(
        lambda: (lambda drawn, state: (drawn, state) if "eval loss (1 points)" in drawn else None)(
            _text(driver, "loss-drawn"), _text(driver, "run-state")
        ),
        240,
        "the eval curve drawn live",
    )
    assert "running" in live[1], live  # drawn while the run trains, not after a reload
    _shot(driver, "3-run-live", scroll_to="loss-plot")
    _click(driver, "stop-button")
    _wait(lambda: "stopped" in _text(driver, "run-state"), 120, "the run stopped")
    assert 0 < _steps(_text(driver, "run-state")) < 40 and list((tmp_path / "runs" / "web").glob("checkpoint-*"))
    _click(driver, "resume-button")
    _wait(lambda: "--resume latest" in _line(driver, "run-command"), 30, "the resume command")
    _wait(lambda: "finished" in _text(driver, "run-state"), 240, "the first run to finish")
    assert _steps(_text(driver, "run-state")) == 40
    assert len(_value(driver, "log").splitlines()) <= 12  # the newest lines, not the oldest

    # a second Start right away trains into its own folder
    _click(driver, "start-button")
    _wait(lambda: f"writes the run to {following}" in _line(driver, "run-command"), 30, "the second run")
    _wait(
        lambda: "finished" in _text(driver, "run-state") and following in _text(driver, "run-state"),
        240,
        "the second run to finish",
    )
    for run in ("web", following.split("/", 1)[1]):
        assert (tmp_path / "runs" / run / "adapter_model.safetensors").is_file(), run
    _shot(driver, "3-run-finished", scroll_to="run-state")

    # Runs: both runs in the table and drawn in one plot
    _tab(driver, "Runs")
    _click(driver, "runs-refresh")
    _wait(lambda: "drawn: 2 runs" in _text(driver, "runs-drawn"), 30, "both runs drawn")
    assert "web" in _text(driver, "runs-table") and "train_" in _text(driver, "runs-table")
    _shot(driver, "4-runs")

    # Chat: the newest run from the list; a broken base model errs in its own pane only; Unload
    _tab(driver, "Chat")
    _click(driver, "chat-trained-refresh")
    _wait(
        lambda: following in driver.find_element(By.CSS_SELECTOR, "#chat-trained input").get_attribute("value"),
        20,
        "the newest run chosen",
    )
    _type(driver, "chat-base", str(tmp_path / "no-such-model"))
    _type(driver, "chat-max-new-tokens", "8")
    _type(driver, "chat-message", "Give three tips for staying healthy.")
    _click(driver, "chat-send")
    _wait(lambda: "sftkit chat" in _text(driver, "chat-command"), 240, "both panes answered")
    assert "error:" in _text(driver, "chat-right") and "error:" not in _text(driver, "chat-left")
    assert driver.find_elements(By.CSS_SELECTOR, "#chat-left .message.bot, #chat-left [data-testid=bot]")
    _shot(driver, "5-chat")
    # one of the first run's checkpoints, chosen from the list, answers too
    _click(driver, "chat-clear")
    _type(driver, "chat-base", "")
    _choose(driver, "chat-trained", "runs/web/checkpoint-3")
    _type(driver, "chat-message", "Hi")
    _click(driver, "chat-send")
    _wait(lambda: "checkpoint-3" in _line(driver, "chat-command"), 240, "the checkpoint's answer")
    assert "error:" not in _text(driver, "chat-left"), _text(driver, "chat-left")
    _click(driver, "chat-unload")
    _wait(lambda: "unloaded 2 models" in _text(driver, "chat-command"), 30, "the models unloaded")

    # Evaluate & Predict: `sftkit eval` scores the run and its result file is shown
    _tab(driver, "Evaluate & Predict")
    _click(driver, "eval-model-refresh")
    _wait(lambda: following in _value(driver, "eval-model"), 20, "the newest run chosen")
    _click(driver, "eval-button")
    _wait(lambda: "finished" in _text(driver, "eval-state"), 240, "the evaluation")
    assert "loss" in _text(driver, "eval-result") and "sftkit eval" in _line(driver, "eval-command")
    assert "writes " in _line(driver, "eval-command") and ".json" in _line(driver, "eval-command")
    _shot(driver, "6-eval")
    _type(driver, "predict-n", "2")
    _type(driver, "predict-max-new-tokens", "4")
    _click(driver, "predict-button")
    _wait(
        lambda: "sftkit predict" in _line(driver, "eval-state") and "finished" in _text(driver, "eval-state"),
        240,
        "the predictions",
    )
    assert "prompt" in _text(driver, "eval-result") and ".jsonl" in _line(driver, "eval-command")

    # Export: merge into the output folder given
    _tab(driver, "Export")
    _click(driver, "export-model-refresh")
    _wait(lambda: following in _value(driver, "export-model"), 20, "the newest run chosen")
    _type(driver, "export-out", "runs/merged-out")
    _click(driver, "merge-button")
    _wait(lambda: "finished" in _text(driver, "export-state"), 300, "the merge")
    assert (tmp_path / "runs" / "merged-out" / "config.json").is_file()
    assert "writes runs/merged-out" in _line(driver, "export-command")
    _shot(driver, "7-export")
