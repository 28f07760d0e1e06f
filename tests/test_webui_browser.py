"""`sftkit webui` in a real browser: Debian's headless Chromium, driven by selenium through Debian's chromedriver.

One long walk through the page, as a user would: choose the tiny model and a shared dataset, preview the data,
start a 10-step run, watch the curve gain points, stop it (SIGINT: it saves), resume it to the end, compare runs,
chat with the result side by side with the base model, merge it. A screenshot of each tab is kept in
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
    """`sftkit webui` started as a user starts it, in a folder of its own, on a free loopback port."""
    _browser_or_skip()
    port = _free_port()
    log = (tmp_path / "webui.log").open("wb")
    server = subprocess.Popen([*SFTKIT, "webui", "--port", str(port), "--model", str(tiny_model_dir),
                               "--dataset-dir", str(shared_data), "--output-dir", "runs/web"],
                              cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    _wait(lambda: _answers(url), 120, f"the page at {url} (log: {tmp_path / 'webui.log'})")
    yield url
    server.terminate()
    server.wait(30)
    log.close()


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture()
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # the flags that keep Chromium from calling out of a closed network at start (and failing slowly)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1800"):
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


def _value(driver: Any, elem_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input").get_attribute("value")


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

    tab = _wait(lambda: next((t for t in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                              if t.text == label), None), 60, f"the {label} tab")
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


# ---------------------------------------------------------------------------- the walk

def test_configure_preview_train_stop_resume_compare_chat_and_merge_in_a_browser(
        page_url: str, browser: Any, tmp_path: Path, tiny_model_dir: Path) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(page_url)
    _wait(lambda: "alpaca_en_demo" in _text(driver, "dataset"), 60, "the shared datasets with row counts")
    assert "rows)" in _text(driver, "dataset")

    # Setup: the tiny model (no chat template of its own, so a named one) and a shared dataset
    _choose(driver, "template", "chatml")
    _choose(driver, "eval_strategy", "steps")
    driver.find_element(By.CSS_SELECTOR, "#dataset input[name=alpaca_en_demo]").click()
    for key, value in (("cutoff_len", "512"), ("val_size", "16"), ("max_steps", "10"), ("logging_steps", "1"),
                       ("eval_steps", "5"), ("save_steps", "5"), ("learning_rate", "0.03"),
                       ("per_device_train_batch_size", "16"), ("gradient_accumulation_steps", "8")):
        _type(driver, key, value)
    _wait(lambda: "named" in _text(driver, "template-note"), 20, "the template note")
    _shot(driver, "1-setup")

    # Run tab: the YAML the form means, validated as the CLI validates it
    _tab(driver, "Run")
    _wait(lambda: "max_steps: 10" in _value(driver, "yaml") and "alpaca_en_demo" in _value(driver, "yaml"), 30,
          "the YAML written from the form")
    _wait(lambda: _value(driver, "problems").startswith("OK"), 30, "live validation")
    _type(driver, "yaml", _value(driver, "yaml") + "\nnot_a_key: 1\n")
    _wait(lambda: "not_a_key" in _value(driver, "problems"), 30, "the unknown key reported")
    assert _value(driver, "problems").startswith("error: ") and "webui/web.yaml" in _value(driver, "problems")
    _type(driver, "yaml", _value(driver, "yaml").replace("\nnot_a_key: 1\n", "\n"))
    _wait(lambda: _value(driver, "problems").startswith("OK"), 30, "the fixed YAML accepted")

    # Data tab: the preview with trained spans highlighted, and the statistics plots
    _tab(driver, "Data")
    _click(driver, "preview-button")
    _wait(lambda: "trained" in _text(driver, "preview") and "alpaca_en_demo row" in _text(driver, "preview"), 120,
          "the preview")
    assert driver.find_elements(By.CSS_SELECTOR, "#preview .highlighted"), "no highlighted (trained) span"
    assert "sftkit data preview" in _text(driver, "data-command")
    _shot(driver, "2-data")
    _click(driver, "stats-button")
    _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#stats-plots img"), 180, "the data stats plots")
    assert "sftkit data stats" in _text(driver, "data-command")
    _shot(driver, "2-data-stats", scroll_to="stats-plots")

    # Start the run and watch the curve gain points
    config = tmp_path / "sftkit_webui" / "web.yaml"
    _tab(driver, "Run")
    _click(driver, "start-button")
    _wait(lambda: "sftkit train" in _text(driver, "run-command"), 30, "the train command")
    assert str(config) in _text(driver, "run-command")
    first = _wait(lambda: _points(_text(driver, "run-state")), 180, "the first loss point")
    _wait(lambda: _points(_text(driver, "run-state")) > first, 60, "a second loss point")
    _shot(driver, "3-run", scroll_to="run-state")

    # the browser leaves and comes back: the run went on without it, and the page shows it again
    seen = _points(_text(driver, "run-state"))
    driver.get("about:blank")
    time.sleep(3)
    driver.get(page_url)
    _tab(driver, "Run")
    _wait(lambda: _points(_text(driver, "run-state")) > seen, 60, "the run still going after the page came back")
    assert "running" in _text(driver, "run-state")

    # a second run into the same output folder (here: from a terminal) is refused by the run's lock
    second = subprocess.run([*SFTKIT, "train", str(config)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr

    # Stop: SIGINT, the run saves a checkpoint and exits; then resume it to the end
    _click(driver, "stop-button")
    _wait(lambda: "stopped" in _text(driver, "run-state"), 120, "the run stopped")
    stopped_at = _steps(_text(driver, "run-state"))
    assert 0 < stopped_at < 10 and list((tmp_path / "runs" / "web").glob("checkpoint-*"))
    _click(driver, "resume-button")
    _wait(lambda: "--resume latest" in _text(driver, "run-command"), 30, "the resume command")
    _wait(lambda: "finished" in _text(driver, "run-state"), 300, "the resumed run to finish")
    assert _steps(_text(driver, "run-state")) == 10 and "eval loss" in _text(driver, "run-state")
    _shot(driver, "3-run-finished", scroll_to="run-state")

    # the YAML the page wrote is a file `sftkit train` accepts as it is
    from sftkit.config import load_config

    assert load_config(config).max_steps == 10
    checked = subprocess.run([*SFTKIT, "validate", str(config)], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert checked.returncode == 0, checked.stderr

    # Runs tab: the finished run in the table
    _tab(driver, "Runs")
    _click(driver, "runs-refresh")
    _wait(lambda: "web" in _text(driver, "runs-table"), 30, "the run in the table")
    _wait(lambda: "metrics.json" in _text(driver, "runs-command"), 30, "the command beside the table")
    _shot(driver, "4-runs")

    # Chat tab: the trained model beside the base, the same answer `sftkit chat --prompt` gives
    _tab(driver, "Chat")
    _type(driver, "chat-max-new-tokens", "12")
    _type(driver, "chat-message", "Give three tips for staying healthy.")
    _click(driver, "chat-send")
    _wait(lambda: "sftkit chat" in _text(driver, "chat-command"), 240, "both answers")
    _shot(driver, "5-chat")
    said = subprocess.run([*SFTKIT, "chat", "runs/web", "--max-new-tokens", "12", "--prompt",
                           "Give three tips for staying healthy."], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert said.returncode == 0 and said.stdout.strip(), (said.stdout, said.stderr)  # an answer to compare
    bubbles = driver.find_elements(By.CSS_SELECTOR, "#chat-left .message.bot, #chat-left [data-testid=bot]")
    shown = " ".join(bubbles[-1].text.split()) if bubbles else ""
    assert shown == " ".join(said.stdout.split()), (shown, said.stdout)
    assert driver.find_elements(By.CSS_SELECTOR, "#chat-right .message.bot, #chat-right [data-testid=bot]")

    # Export tab: merge, as `sftkit merge` does
    _tab(driver, "Export")
    _click(driver, "merge-button")
    _wait(lambda: "finished" in _text(driver, "export-state"), 300, "the merge")
    assert (tmp_path / "runs" / "web" / "merged" / "config.json").is_file()
    assert "sftkit merge" in _text(driver, "export-command")

    # and serve it: the OpenAI API answers on the port the page was given, until the page stops it
    import httpx

    port = _free_port()
    _type(driver, "export-model", "runs/web/merged")
    _type(driver, "serve-port", str(port))
    _click(driver, "serve-button")
    _wait(lambda: _answers(f"http://127.0.0.1:{port}/health"), 180, "the served model")
    assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()["data"][0]["id"]
    assert "sftkit serve runs/web/merged --port" in _text(driver, "export-command")
    _shot(driver, "6-export")
    _click(driver, "serve-stop")
    _wait(lambda: "serve**: stopped" in driver.find_element(By.ID, "export-state").get_attribute("innerHTML")
          or "serve: stopped" in _text(driver, "export-state"), 60, "the server stopped")
    assert not _answers(f"http://127.0.0.1:{port}/health")

