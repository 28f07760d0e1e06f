"""sftkit's own OpenAI clients against `sftkit serve`: `data generate` and the judge.

The tiny model is overfit on exactly the requests each client sends (the generation prompt for one seed row,
the judge's grading messages for one answer), so a greedy server answers them with a known JSON row and a
known rating: the round trip is checked end to end, not only that some reply came back.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from test_serve import Server, server_env, sftkit

pytestmark = pytest.mark.integration

SEED = {"instruction": "Give the capital of France.", "input": "", "output": "Paris."}
NEW_ROW = {"instruction": "Name a colour of the sky.", "input": "", "output": "Blue."}
QUESTION, ANSWER = "What is two plus two?", "Four."
RATING = "The answer is correct. [[7]]"


def generation_messages() -> list[dict[str, str]]:
    from sftkit.data.quality.generate import PROMPT

    return [{"role": "user", "content": PROMPT.format(examples=json.dumps(SEED, ensure_ascii=False))}]


def grading_messages() -> list[dict[str, str]]:
    from sftkit.evaluate.judge import GRADE_SYSTEM

    user = (f"[Question]\n{QUESTION}\n\n[The Start of the Assistant's Answer]\n{ANSWER}\n[The End of the "
            "Assistant's Answer]")
    return [{"role": "system", "content": GRADE_SYSTEM}, {"role": "user", "content": user}]


@pytest.fixture(scope="module")
def client_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA run that answers the two client requests as a capable model would."""
    from sftkit.config import validate_config
    from sftkit.tiny import build_tiny_model
    from sftkit.training.recipe import train

    base = build_tiny_model(tmp_path_factory.mktemp("clients-tiny"), initializer_range=0.3)
    data = tmp_path_factory.mktemp("clients-data")
    rows = [{"messages": generation_messages() + [{"role": "assistant", "content": json.dumps(NEW_ROW)}]},
            {"messages": grading_messages() + [{"role": "assistant", "content": RATING}]}]
    (data / "rows.json").write_text(json.dumps(rows))
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
            "system_tag": "system"}
    (data / "dataset_info.json").write_text(json.dumps({"clients": {
        "file_name": "rows.json", "formatting": "sharegpt", "columns": {"messages": "messages"}, "tags": tags}}))
    cfg = validate_config({
        "model_name_or_path": str(base), "dataset": ["clients"], "dataset_dir": str(data), "template": "chatml",
        "output_dir": str(tmp_path_factory.mktemp("clients-run")), "learning_rate": 1e-2,
        "per_device_train_batch_size": 2, "lr_scheduler_type": "constant", "max_steps": 80,
        "save_strategy": "no", "report_to": ["none"], "plot_loss": False, "logging_steps": 80})
    return train(cfg)


@pytest.fixture(scope="module")
def server(client_run: Path, tmp_path_factory: pytest.TempPathFactory):
    running = Server(client_run, tmp_path_factory.mktemp("clients-log"))
    yield running
    assert running.stop() == -signal.SIGTERM, running.output()


def test_data_generate_writes_the_served_models_row(server: Server, client_run: Path, tmp_path: Path) -> None:
    import subprocess

    seeds, out = tmp_path / "seeds.json", tmp_path / "gen" / "new.jsonl"
    seeds.write_text(json.dumps([SEED]))
    done = subprocess.run(sftkit("data", "generate", str(seeds), "--out", str(out), "--base-url",
                                 f"{server.url}/v1", "--model", str(client_run), "-n", "1", "--temperature", "0"),
                          env=server_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr + server.output()
    assert [json.loads(line) for line in out.read_text().splitlines()] == [NEW_ROW]
    registry = json.loads((out.parent / "dataset_info.json").read_text())
    assert registry["new"] == {"file_name": "new.jsonl"}


def test_the_judge_grades_through_the_server_and_caches(server: Server, client_run: Path, tmp_path: Path) -> None:
    from sftkit.evaluate.judge import Judge

    cache = tmp_path / "judge.jsonl"
    verdict = Judge(f"{server.url}/v1", str(client_run), cache).grade(QUESTION, ANSWER)
    assert verdict == {"rating": 7.0, "judgment": RATING}, server.output()
    assert len(cache.read_text().splitlines()) == 1
    # a second judge on the same cache asks nothing: it answers with the server unreachable
    offline = Judge("http://127.0.0.1:9/v1", str(client_run), cache)
    assert offline.grade(QUESTION, ANSWER) == verdict
