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

    user = (
        f"[Question]\n{QUESTION}\n\n[The Start of the Assistant's Answer]\n{ANSWER}\n[The End of the "
        "Assistant's Answer]"
    )
    return [{"role": "system", "content": GRADE_SYSTEM}, {"role": "user", "content": user}]


@pytest.fixture(scope="module")
def client_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA run that answers the two client requests as a capable model would."""
    from sftkit.config import validate_config
    from sftkit.tiny import build_tiny_model
    from sftkit.training.recipe import train

    base = build_tiny_model(tmp_path_factory.mktemp("clients-tiny"), initializer_range=0.3)
    data = tmp_path_factory.mktemp("clients-data")
    rows = [
        {"messages": generation_messages() + [{"role": "assistant", "content": json.dumps(NEW_ROW)}]},
        {"messages": grading_messages() + [{"role": "assistant", "content": RATING}]},
    ]
    (data / "rows.json").write_text(json.dumps(rows))
    tags = {
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "system_tag": "system",
    }
    (data / "dataset_info.json").write_text(
        json.dumps(
            {
                "clients": {
                    "file_name": "rows.json",
                    "formatting": "sharegpt",
                    "columns": {"messages": "messages"},
                    "tags": tags,
                }
            }
        )
    )
    cfg = validate_config(
        {
            "model_name_or_path": str(base),
            "dataset": ["clients"],
            "dataset_dir": str(data),
            "template": "chatml",
            "output_dir": str(tmp_path_factory.mktemp("clients-run")),
            "learning_rate": 1e-2,
            "per_device_train_batch_size": 2,
            "lr_scheduler_type": "constant",
            "max_steps": 80,
            "save_strategy": "no",
            "report_to": ["none"],
            "plot_loss": False,
            "logging_steps": 80,
        }
    )
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
    done = subprocess.run(
        sftkit(
            "data",
            "generate",
            str(seeds),
            "--out",
            str(out),
            "--base-url",
            f"{server.url}/v1",
            "--model",
            str(client_run),
            "-n",
            "1",
            "--temperature",
            "0",
        ),
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
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


# ---------------------------------------------------------------------------- agents and harnesses (issue 28)

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TOOL_QUESTION, CITY, RESULT, FINAL = "What is the weather in Paris?", "Paris", "sunny, 21 C", "It is sunny in Paris."


@pytest.fixture(scope="module")
def tool_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA run overfit on one tool-calling conversation (LLaMA-Factory's sharegpt tool rows, as the glaive demo
    set writes them): asked the weather it calls get_weather, given the result it answers."""
    from sftkit.config import validate_config
    from sftkit.tiny import build_tiny_model
    from sftkit.training.recipe import train

    base = build_tiny_model(tmp_path_factory.mktemp("tools-tiny"), initializer_range=0.3)
    data = tmp_path_factory.mktemp("tools-data")
    call = json.dumps({"name": "get_weather", "arguments": {"city": CITY}})
    row = {
        "conversations": [
            {"from": "human", "value": TOOL_QUESTION},
            {"from": "function_call", "value": call},
            {"from": "observation", "value": RESULT},
            {"from": "gpt", "value": FINAL},
        ],
        "tools": json.dumps([WEATHER_TOOL]),
    }
    (data / "rows.json").write_text(json.dumps([row]))
    (data / "dataset_info.json").write_text(
        json.dumps(
            {
                "tools": {
                    "file_name": "rows.json",
                    "formatting": "sharegpt",
                    "columns": {"messages": "conversations", "tools": "tools"},
                }
            }
        )
    )
    cfg = validate_config(
        {
            "model_name_or_path": str(base),
            "dataset": ["tools"],
            "dataset_dir": str(data),
            "template": "chatml",
            "output_dir": str(tmp_path_factory.mktemp("tools-run")),
            "learning_rate": 1e-2,
            "lr_scheduler_type": "constant",
            "max_steps": 60,
            "save_strategy": "no",
            "report_to": ["none"],
            "plot_loss": False,
            "logging_steps": 60,
        }
    )
    return train(cfg)


def test_a_tool_call_round_trips_with_the_openai_client(tool_run: Path, tmp_path: Path) -> None:
    import openai

    server = Server(tool_run, tmp_path)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)
        tools = [{"type": "function", "function": WEATHER_TOOL}]
        messages = [{"role": "user", "content": TOOL_QUESTION}]
        first = client.chat.completions.create(
            model=str(tool_run), messages=messages, tools=tools, temperature=0, max_tokens=64
        )
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls", (choice, server.output())
        (call,) = choice.message.tool_calls
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": CITY}
        # streamed, the same call arrives as OpenAI's deltas (index, id, name, then the arguments)
        chunks = list(
            client.chat.completions.create(
                model=str(tool_run), messages=messages, tools=tools, temperature=0, max_tokens=64, stream=True
            )
        )
        deltas = [tc for chunk in chunks if chunk.choices for tc in chunk.choices[0].delta.tool_calls or []]
        assert deltas[0].function.name == "get_weather" and deltas[0].id.startswith("call_")
        assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": CITY}
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
        # the tool's result goes back with the call's id: the model answers from it
        messages += [
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": RESULT},
        ]
        answer = client.chat.completions.create(
            model=str(tool_run), messages=messages, tools=tools, temperature=0, max_tokens=32
        )
        assert answer.choices[0].message.content == FINAL and answer.choices[0].finish_reason == "stop"
        assert answer.choices[0].message.tool_calls is None
    finally:
        assert server.stop() == -signal.SIGTERM, server.output()


@pytest.fixture(scope="module")
def scoring_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with the chatml tokens already in its tokenizer and embeddings, so the server (which adds a
    template's missing tokens) and lm-eval's HFLM load exactly the same weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftkit.templates import get_template, prepare_tokenizer
    from sftkit.tiny import build_tiny_model

    base = build_tiny_model(tmp_path_factory.mktemp("scoring-base"), initializer_range=0.3)
    tokenizer, model = AutoTokenizer.from_pretrained(base), AutoModelForCausalLM.from_pretrained(base)
    prepare_tokenizer(tokenizer, get_template("chatml"))
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    out = tmp_path_factory.mktemp("scoring-model")
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return out


def test_lm_evals_local_completions_scores_through_the_server_as_hflm_does(scoring_model: Path, tmp_path: Path) -> None:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from sftkit.evaluate.benchmarks import TASKS_DIR

    tasks = TaskManager(include_path=[str(TASKS_DIR)], include_defaults=False)
    server = Server(scoring_model, tmp_path)
    try:
        served = lm_eval.simple_evaluate(
            model="local-completions",
            model_args={
                "base_url": f"{server.url}/v1/completions",
                "model": str(scoring_model),
                "tokenizer": str(scoring_model),
                "tokenizer_backend": "huggingface",
                "tokenized_requests": True,
                "num_concurrent": 1,
                "max_retries": 1,
            },
            tasks=["sftkit_mc"],
            task_manager=tasks,
            limit=6,
            log_samples=True,
        )
    finally:
        assert server.stop() == -signal.SIGTERM, server.output()
    direct = lm_eval.simple_evaluate(
        model=HFLM(pretrained=str(scoring_model), batch_size=1, device="cpu"),
        tasks=["sftkit_mc"],
        task_manager=tasks,
        limit=6,
        log_samples=True,
    )

    def loglikelihoods(result: dict) -> list[tuple[float, bool]]:
        return [resp[0] for sample in result["samples"]["sftkit_mc"] for resp in sample["resps"]]

    through, alone = loglikelihoods(served), loglikelihoods(direct)
    assert len(through) == len(alone) == 24  # 6 questions x 4 choices
    assert [greedy for _, greedy in through] == [greedy for _, greedy in alone]
    assert [value for value, _ in through] == pytest.approx([value for value, _ in alone], abs=1e-3)
    assert served["results"]["sftkit_mc"]["acc,none"] == direct["results"]["sftkit_mc"]["acc,none"]
