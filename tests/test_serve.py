"""`sftkit serve`: OpenAI's API over the tiny model.

Fast tier: the app in-process (FastAPI's TestClient) for the response shapes, streaming, stop strings, every
bad request, auth and the bounded queue. Integration tier: `sftkit serve` in a subprocess on a free loopback
port, spoken to with the official `openai` client: chat equal to `sftkit chat --prompt` token for token, a
load test, a client that disconnects mid-stream, SIGTERM during a stream, and scripts/bench_serve.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parent.parent
QUESTION = "What is the capital of France?"
ANSWER = "Paris."
KEY = "test-key-123"
USER = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def varied_base(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model re-initialised at std 0.3: its greedy text varies from token to token and does not stop by
    itself (at the usual 0.02 it repeats one token), so stop strings, streaming and cancelling are visible."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = tmp_path_factory.mktemp("varied-tiny")
    shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True)  # the tokenizer, without training it again
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.initializer_range = 0.3
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def backend(varied_base: Path):
    from sftkit.model import load_for_inference
    from sftkit.serve.engine import TransformersBackend

    return TransformersBackend(load_for_inference(str(varied_base)))


def client_for(backend, api_key: str | None = None, max_queue: int = 8, default_system: str | None = None):
    from fastapi.testclient import TestClient

    from sftkit.serve import build_app
    from sftkit.serve.engine import Engine

    app = build_app(Engine(backend, max_queue), "tiny", api_key, default_system)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(backend):
    with client_for(backend) as test_client:
        yield test_client


def chat(client, **body):
    return client.post("/v1/chat/completions", json={"model": "tiny", "messages": USER, "temperature": 0} | body)


def stream_events(response) -> list:
    """The SSE data lines of a streamed response, JSON-decoded, `[DONE]` kept as the string."""
    lines = [line for line in response.text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines), response.text[:500]
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:]) for line in lines]


def direct_reply(backend, messages, max_new_tokens: int) -> str:
    """What `sftkit chat` generates for these messages (its generation function, greedy)."""
    from sftkit.model import GenerationSettings, generate_replies

    conversation = SimpleNamespace(messages=messages, tools=None)
    return generate_replies(
        backend.model,
        backend.tokenizer,
        backend.template,
        [conversation],
        GenerationSettings(max_new_tokens=max_new_tokens),
    )[0]


# ---------------------------------------------------------------------------- answers


def test_models_and_health(client) -> None:
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
    assert client.get("/v1/models/tiny").json()["id"] == "tiny"
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["queued"] == 0 and health["generating"] is False


def test_chat_answers_as_sftkit_chat_does_in_openai_shape(client, backend) -> None:
    from sftkit.model import encode_prompts

    body = chat(client, max_tokens=12).json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "tiny"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    assert choice["message"]["content"] == direct_reply(backend, USER, 12)
    prompt = encode_prompts(backend.tokenizer, backend.template, [SimpleNamespace(messages=USER, tools=None)])[0][0]
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": 12, "total_tokens": len(prompt) + 12}
    # max_completion_tokens is OpenAI's newer name for the same budget, and wins over max_tokens
    again = chat(client, max_tokens=3, max_completion_tokens=12).json()
    assert again["choices"][0]["message"]["content"] == choice["message"]["content"]


def test_stream_is_the_same_answer_in_openai_chunks(client) -> None:
    whole = chat(client, max_tokens=12).json()["choices"][0]["message"]["content"]
    response = chat(client, max_tokens=12, stream=True, stream_options={"include_usage": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = stream_events(response)
    assert events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    deltas = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert len(deltas) > 1 and "".join(deltas) == whole  # streamed piece by piece, nothing lost or added
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 12


def test_stop_string_cuts_the_answer_streamed_or_not(client) -> None:
    whole = chat(client, max_tokens=20).json()["choices"][0]["message"]["content"]
    stop = whole[len(whole) // 2 : len(whole) // 2 + 2]  # from the middle of the answer
    cut = chat(client, max_tokens=20, stop=[stop, "never appears"]).json()
    assert cut["choices"][0]["message"]["content"] == whole[: whole.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop" and cut["usage"]["completion_tokens"] < 20
    events = stream_events(chat(client, max_tokens=20, stop=stop, stream=True))
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert streamed == whole[: whole.index(stop)] and events[-2]["choices"][0]["finish_reason"] == "stop"


def test_completions_continue_the_raw_text(client, backend) -> None:
    from sftkit.model import GenerationSettings, generate

    prompt = "The sea is"
    body = client.post("/v1/completions", json={"prompt": prompt, "temperature": 0}).json()
    assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] == 16  # OpenAI's default
    ids = backend.tokenizer(prompt).input_ids
    expected = generate(backend.model, backend.tokenizer, [ids], backend.stop_ids, GenerationSettings(16))[0]
    assert body["choices"][0]["text"] == expected and body["usage"]["prompt_tokens"] == len(ids)
    events = stream_events(client.post("/v1/completions", json={"prompt": [prompt], "temperature": 0, "stream": True}))
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == expected


def test_text_parts_the_developer_role_and_the_runs_default_system(backend) -> None:
    system = [{"role": "system", "content": "Be brief."}]
    with client_for(backend, default_system="Be brief.") as with_default:
        implicit = chat(with_default, max_tokens=6).json()  # no system message: the run's default_system
        parts = [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]
        explicit = chat(with_default, max_tokens=6, messages=[{"role": "developer", "content": parts}, *USER]).json()
    expected = direct_reply(backend, system + USER, 6)
    assert implicit["choices"][0]["message"]["content"] == explicit["choices"][0]["message"]["content"] == expected
    assert implicit["usage"] == explicit["usage"]
    assert expected != direct_reply(backend, USER, 6)  # the system prompt changed the answer


def test_sampling_follows_the_seed(client) -> None:
    def sample(seed: int) -> str:
        return chat(client, max_tokens=12, temperature=1.0, seed=seed).json()["choices"][0]["message"]["content"]

    assert sample(1) == sample(1) != sample(2)


# ---------------------------------------------------------------------------- bad requests

LONG = "sea " * 5000  # far past the tiny model's 4,096 positions
BAD_CHAT = [  # (body, the words the one-line message must hold)
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "roles out of order"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]}, "roles out of order"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}, "must end with"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]}, "may only come first"),
    ({"messages": []}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content: must be a string or a list of text"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "text parts"),
    ({"messages": [{"role": "user"}]}, "messages.0: content: give the message's text"),
    ({"messages": [{"role": "user", "content": LONG}]}, "maximum context length is 4096"),
    ({"max_tokens": 4090}, "maximum context length"),
    ({"max_tokens": 4090, "stream": True}, "maximum context length"),  # refused before the stream starts
    ({"max_tokens": -1}, "max_tokens: Input should be greater than or equal to 1"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": -5}, "max_completion_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"max_tokens": "10"}, "max_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": 3}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"stream": "yes"}, "stream"),
    ({"seed": 1.5}, "seed"),
    ({"stop": 7}, "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": ""}, "must not be empty"),
    ({"n": 17}, "n: must be in 1..16"),
    ({"n": 0}, "must be in 1..16"),
    ({"tools": [{"type": "function"}]}, "tools.0.function: Field required"),
    ({"presence_penalty": 0.5}, "penalties are not supported"),
]


@pytest.mark.parametrize(("body", "words"), BAD_CHAT, ids=[words for _, words in BAD_CHAT])
def test_bad_chat_requests_get_openai_errors(client, body: dict, words: str) -> None:
    response = client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 4} | body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error", error
    assert "Traceback" not in response.text


def test_other_bad_requests(client) -> None:
    for raw, words in (
        (b'{"messages": [', "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"", "must be a JSON object"),
    ):
        response = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 400 and words in response.json()["error"]["message"], response.text
    cases = (
        (client.post, "/v1/chat/completions", {"model": "gpt-4", "messages": USER}, 404, "does not exist"),
        (client.post, "/v1/completions", {"prompt": []}, 400, "prompt"),
        (client.post, "/v1/completions", {"prompt": "a", "max_tokens": 0}, 400, "only meaningful with echo"),
        (client.post, "/v1/completions", {"prompt": LONG}, 400, "maximum context length"),
        (client.post, "/v1/embeddings", {"input": "a"}, 404, "the routes are"),
        (client.get, "/v1/chat/completions", None, 405, "Method Not Allowed"),
    )
    for method, path, body, status, words in cases:
        response = method(path, json=body) if body is not None else method(path)
        assert response.status_code == status and words in response.json()["error"]["message"], response.text
    assert chat(client, max_tokens=2).status_code == 200  # the server still serves


def test_api_key_is_required_on_v1_routes(backend) -> None:
    with client_for(backend, api_key=KEY) as keyed:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {KEY}"},
            {"Authorization": f"Bearer {KEY}x"},
        ):
            for response in (
                keyed.get("/v1/models", headers=headers),
                keyed.post("/v1/chat/completions", json={"messages": USER}, headers=headers),
                keyed.post("/v1/chat/completions", content=b"{broken", headers=headers),
            ):
                assert response.status_code == 401, (headers, response.text)
                assert response.json()["error"]["code"] == "invalid_api_key"
        good = {"Authorization": f"Bearer {KEY}"}
        assert keyed.get("/v1/models", headers=good).status_code == 200
        answered = keyed.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2}, headers=good)
        assert answered.status_code == 200
        assert keyed.get("/health").status_code == 200  # probes need no key


def test_cli_refuses_bad_options_before_loading(tiny_model_dir: Path, monkeypatch, capsys) -> None:
    from helpers import run_cli

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        for args, words in (
            (["--port", port], f"--port {port}: cannot listen there"),
            (["--port", "70000"], "--port 70000: must be in 1..65535"),
            (["--max-queue", "0"], "--max-queue 0: must be at least 1"),
            (["--backend", "tgi"], "--backend tgi: use one of transformers, vllm"),
            (["--backend", "vllm", "--port", free_port_str()], "--backend vllm: "),
        ):
            code, _, err = run_cli(["serve", str(tiny_model_dir), *args], monkeypatch, capsys)
            errors = [line for line in err.splitlines() if line.startswith("error:")]
            assert code == 2 and len(errors) == 1 and words in errors[0] and "Traceback" not in err, err
            assert "note: template" not in err  # refused before any model loads


class GatedBackend:
    """The real backend, made to wait at a gate before each job: the test decides when the worker is busy."""

    def __init__(self, backend) -> None:
        self.backend, self.gate = backend, threading.Event()

    def run_batch(self, jobs) -> None:
        self.gate.wait(60)
        self.backend.run_batch(jobs)


def test_a_full_queue_answers_503_and_the_rest_are_served(backend) -> None:
    gated = GatedBackend(backend)
    with client_for(gated, max_queue=1) as small:
        engine = small.app.state.engine
        results: list = []
        workers = [threading.Thread(target=lambda: results.append(chat(small, max_tokens=3))) for _ in range(2)]
        workers[0].start()
        _wait(lambda: engine.generating)  # the first request holds the worker
        workers[1].start()
        _wait(lambda: engine.jobs.qsize() == 1)  # the second fills the one queue place
        refused = chat(small, max_tokens=3)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_full"
        gated.gate.set()
        for worker in workers:
            worker.join(60)
        assert [r.status_code for r in results] == [200, 200]


def test_a_cancelled_job_stops_generating(backend) -> None:
    from sftkit.serve.engine import Engine, Finished, Generation, Job, Started

    async def run(cancel: bool) -> Finished:
        engine = Engine(backend, 2)
        engine.start()
        job = Job(Generation(USER, None, 200, 0.0, 1.0, None, [], stream=False), asyncio.get_running_loop())
        engine.submit(job)
        assert isinstance(await job.events.get(), Started)
        if cancel:
            job.cancelled.set()  # what a disconnected client's handler does
        finished = await job.events.get()
        await asyncio.to_thread(engine.stop)
        assert engine.cancelled == cancel
        return finished

    assert asyncio.run(run(False)).usage.completion_tokens == 200  # the varied model runs to the budget
    assert asyncio.run(run(True)).usage.completion_tokens < 50


def test_queued_requests_are_answered_in_one_batch_each_as_if_alone(backend) -> None:
    from sftkit.serve.engine import Delta, Engine, Finished, Generation, Job, Started

    prompts = [
        ("Hello there", 5, False),
        ("What colour is snow? Tell me in a few words.", 9, True),
        ("2+2?", 13, False),
    ]

    async def answers(max_batch: int, gate: bool) -> tuple[list[tuple[str, str, int]], list[str], int]:
        gated = GatedBackend(backend)
        if not gate:
            gated.gate.set()
        engine = Engine(gated, 8, max_batch=max_batch)
        engine.start()
        loop = asyncio.get_running_loop()
        holder = Job(Generation([{"role": "user", "content": "hold"}], None, 2, 0.0, 1.0, None, [], False), loop)
        engine.submit(holder)
        if gate:
            await asyncio.to_thread(_wait, lambda: engine.generating)  # the worker is busy: the next three queue up
        jobs = [
            Job(Generation([{"role": "user", "content": text}], None, budget, 0.0, 1.0, None, [], stream), loop)
            for text, budget, stream in prompts
        ]
        for job in jobs:
            engine.submit(job)
        gated.gate.set()
        finished, streamed = [], []
        for job in [holder, *jobs]:
            events = [await job.events.get()]
            while not isinstance(events[-1], Finished):
                events.append(await job.events.get())
            assert isinstance(events[0], Started)
            end = events[-1]
            finished.append((end.text, end.finish_reason, end.usage.completion_tokens))
            streamed.append("".join(e.text for e in events if isinstance(e, Delta)))
        await asyncio.to_thread(engine.stop)
        return finished[1:], streamed[1:], engine.largest_batch

    together, streamed, largest = asyncio.run(answers(max_batch=4, gate=True))
    alone, _, one = asyncio.run(answers(max_batch=1, gate=False))
    assert largest == 3 and one == 1
    assert together == alone  # left padding changes nothing: the same greedy tokens, finish reasons and counts
    assert [tokens for _, _, tokens in together] == [5, 9, 13]  # each row kept its own max_tokens
    assert streamed[1] == together[1][0] and streamed[0] == streamed[2] == ""  # only the streamed row streamed


def test_sampling_groups_keep_seeded_requests_alone() -> None:
    from sftkit.serve.engine import Generation, Job, sampling_groups

    def job(temperature: float, seed: int | None, top_p: float = 1.0) -> Job:
        return Job(Generation(USER, None, 4, temperature, top_p, seed, [], False), None)

    greedy, greedy_seeded, warm, warm2, seeded, other = (
        job(0, None),
        job(0, 3),
        job(0.7, None),
        job(0.7, None),
        job(0.7, 1),
        job(0.7, None, 0.9),
    )
    groups = sampling_groups([greedy, warm, seeded, greedy_seeded, warm2, other])
    assert groups == [[greedy, greedy_seeded], [warm, warm2], [seeded], [other]]


def _wait(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# ---------------------------------------------------------------------------- a real server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_str() -> str:
    return str(free_port())


def sftkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "sftkit", *args]


def server_env(**extra: str) -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"} | extra


class Server:
    """`sftkit serve MODEL` in a subprocess on a free loopback port, ready once /health answers."""

    def __init__(self, model: Path, log_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"serve-{self.port}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                sftkit("serve", str(model), "--port", str(self.port), *args),
                cwd=REPO,
                env=env or server_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 180
        while True:
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.3)

    def health(self) -> dict:
        import httpx

        return httpx.get(f"{self.url}/health", timeout=5).json()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA run overfit on one conversation (as tests/test_chat.py trains it), so greedy answers are known."""
    from sftkit.config import validate_config
    from sftkit.tiny import build_tiny_model
    from sftkit.training.recipe import train

    base = build_tiny_model(tmp_path_factory.mktemp("learnable-tiny"), initializer_range=0.3)
    data = tmp_path_factory.mktemp("serve-data")
    (data / "rows.json").write_text(json.dumps([{"instruction": QUESTION, "input": "", "output": ANSWER}]))
    (data / "dataset_info.json").write_text(json.dumps({"one": {"file_name": "rows.json"}}))
    cfg = validate_config(
        {
            "model_name_or_path": str(base),
            "dataset": ["one"],
            "dataset_dir": str(data),
            "template": "chatml",
            "output_dir": str(tmp_path_factory.mktemp("serve-run")),
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


@pytest.fixture(scope="module")
def server(trained_run: Path, tmp_path_factory: pytest.TempPathFactory):
    # the key comes from the environment, as SFTKIT_API_KEY
    running = Server(trained_run, tmp_path_factory.mktemp("serve-log"), env=server_env(SFTKIT_API_KEY=KEY))
    yield running
    assert running.stop() == -signal.SIGTERM and "Finished server process" in running.output(), running.output()


def openai_client(server: Server, key: str = KEY):
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.mark.integration
@pytest.mark.parametrize(("prompt", "finish"), [(QUESTION, "stop"), ("Tell me about the sea.", None)])
def test_openai_client_gets_what_sftkit_chat_answers(
    server: Server, trained_run: Path, prompt: str, finish: str | None
) -> None:
    chat_cli = subprocess.run(
        sftkit("chat", str(trained_run), "--prompt", prompt, "--max-new-tokens", "24"),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=server_env(),
        timeout=300,
    )
    assert chat_cli.returncode == 0, chat_cli.stderr
    expected = chat_cli.stdout.removesuffix("\n")
    client = openai_client(server)
    model = client.models.list().data[0].id
    assert model == str(trained_run)
    messages = [{"role": "user", "content": prompt}]
    whole = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=24)
    assert whole.choices[0].message.content == expected
    assert finish is None or whole.choices[0].finish_reason == finish
    if finish == "stop":
        assert expected == ANSWER  # the overfit reply, stopped at <|im_end|>
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model=model, messages=messages, temperature=0, max_tokens=24, stream=True
        )
        if chunk.choices
    ]
    assert "".join(pieces) == expected


@pytest.mark.integration
def test_openai_client_sees_auth_and_bad_requests_as_api_errors(server: Server) -> None:
    import openai

    with pytest.raises(openai.AuthenticationError):
        openai_client(server, key="wrong").models.list()
    client = openai_client(server)
    model = client.models.list().data[0].id
    for bad in (
        {"n": 17},
        {"max_tokens": -1},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"role": "user", "content": "sea " * 5000}]},
    ):
        with pytest.raises(openai.BadRequestError) as raised:
            client.chat.completions.create(**({"model": model, "messages": USER} | bad))
        assert raised.value.status_code == 400
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=USER)


@pytest.mark.integration
def test_eight_clients_at_once_get_every_answer(server: Server) -> None:
    from concurrent.futures import ThreadPoolExecutor

    model = openai_client(server).models.list().data[0].id

    def one_client(i: int) -> list[str]:
        client = openai_client(server)
        answers = []
        for j in range(5):
            messages = [{"role": "user", "content": QUESTION}]
            if (i + j) % 2:
                stream = client.chat.completions.create(
                    model=model, messages=messages, temperature=0, max_tokens=16, stream=True
                )
                answers.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
            else:
                answers.append(
                    client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=16)
                    .choices[0]
                    .message.content
                )
        return answers

    with ThreadPoolExecutor(8) as pool:
        answers = [a for batch in pool.map(one_client, range(8)) for a in batch]
    assert answers == [ANSWER] * 40  # zero errors, and queueing changed no answer


@pytest.mark.integration
def test_disconnect_stops_generation_and_sigterm_finishes_the_stream(varied_base: Path, tmp_path: Path) -> None:
    import httpx

    server = Server(varied_base, tmp_path)  # no key: also the default
    try:
        # the varied model does not stop by itself (test_a_cancelled_job_stops_generating): 3000 tokens take long
        body = {"messages": USER, "temperature": 0, "max_tokens": 3000, "stream": True}
        before = server.health()["cancelled"]
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as response:
            next(response.iter_lines())  # the first chunk: generation runs
        _wait(lambda: not server.health()["generating"], timeout=20)
        assert server.health()["cancelled"] == before + 1

        # SIGTERM while a stream runs: uvicorn stops listening, the stream ends properly, the process exits 0
        lines = []
        with httpx.stream(
            "POST", f"{server.url}/v1/chat/completions", timeout=60, json=body | {"max_tokens": 200}
        ) as response:
            for line in response.iter_lines():
                if line and not lines:
                    server.proc.send_signal(signal.SIGTERM)
                lines.append(line)
        assert [line for line in lines if line][-1] == "data: [DONE]"
    finally:
        code = server.stop()
    # uvicorn re-raises SIGTERM once it has shut down gracefully: the process ends as killed by it
    assert code == -signal.SIGTERM and "Finished server process" in server.output(), server.output()


@pytest.mark.integration
def test_bench_serve_reports_throughput_and_latency(tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench.py"),
            "--serve",
            "--clients",
            "2",
            "--requests",
            "2",
            "--max-tokens",
            "8",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=server_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["errors"] == 0 and report["requests"] == 4
    for key in ("requests_per_s", "ttft_p50_s", "ttft_p95_s", "latency_p50_s", "latency_p95_s", "tokens_per_s"):
        assert report[key] > 0, key


# ---------------------------------------------------------------------------- what agents and harnesses need

WEATHER = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 8}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_neutral_values_openai_and_vllm_accept_change_nothing(client) -> None:
    plain = chat(client, max_tokens=6).json()["choices"][0]
    neutral = {
        "logprobs": False,
        "response_format": {"type": "text"},
        "tool_choice": "none",
        "parallel_tool_calls": True,
        "logit_bias": {},
        "store": False,
        "top_k": -1,
        "min_p": 0,
        "repetition_penalty": 1,
        "n": 1,
        "service_tier": "auto",
        "metadata": {"a": "b"},
    }
    same = chat(client, max_tokens=6, tools=WEATHER, **neutral).json()["choices"][0]
    assert same == plain  # tools with tool_choice "none" are not shown to the model (vLLM's default too)
    for name, value in (("top_k", 5), ("logit_bias", {"1": 2}), ("repetition_penalty", 1.2), ("min_p", 0.1)):
        error = chat(client, **{name: value}).json()["error"]
        assert error["param"] == name and "not supported" in error["message"], error


def _logprob_sum(content: list) -> float:
    return sum(token["logprob"] for token in content)


def test_chat_logprobs_are_the_models_own_distribution_streamed_too(client, backend) -> None:
    import torch

    body = chat(client, max_tokens=6, logprobs=True, top_logprobs=3).json()
    (choice,) = body["choices"]
    content = choice["logprobs"]["content"]
    assert len(content) == 6 and "".join(t["token"] for t in content) == choice["message"]["content"]
    for token in content:
        assert len(token["top_logprobs"]) == 3 and token["bytes"] == list(token["token"].encode())
        # greedy: the chosen token is the most likely one
        assert token["logprob"] == pytest.approx(token["top_logprobs"][0]["logprob"])
    # the same numbers from greedy steps of the model itself, without generate
    from sftkit.model import encode_prompts

    ids = encode_prompts(backend.tokenizer, backend.template, [SimpleNamespace(messages=USER, tools=None)])[0][0]
    direct = []
    with torch.inference_mode():
        for _ in range(6):
            logprobs = backend.model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
            ids = ids + [int(logprobs.argmax())]
            direct.append(float(logprobs.max()))
    assert [t["logprob"] for t in content] == pytest.approx(direct, abs=1e-4)
    events = stream_events(chat(client, max_tokens=6, logprobs=True, top_logprobs=3, stream=True))
    streamed = [t for e in events[:-1] for t in (e["choices"][0]["logprobs"] or {}).get("content", [])]
    assert streamed == content
    assert chat(client, top_logprobs=2).json()["error"]["message"] == "top_logprobs: needs logprobs: true"
    assert "top_logprobs" in chat(client, logprobs=True, top_logprobs=21).json()["error"]["message"]


def test_echo_and_token_id_prompts_score_the_prompt_as_lm_eval_asks(client, backend) -> None:
    import torch

    ids = backend.tokenizer("The sea is deep").input_ids
    body = client.post(
        "/v1/completions",
        json={"prompt": [ids, ids[:3]], "echo": True, "max_tokens": 0, "logprobs": 1, "temperature": 0},
    ).json()
    first, second = body["choices"]
    assert first["index"] == 0 and second["index"] == 1 and body["usage"]["completion_tokens"] == 0
    logprobs = first["logprobs"]
    assert first["text"] == backend.tokenizer.decode(ids) and logprobs["token_logprobs"][0] is None
    with torch.inference_mode():
        direct = backend.model(torch.tensor([ids])).logits[0].log_softmax(-1)
    expected = [float(direct[i - 1, ids[i]]) for i in range(1, len(ids))]
    assert logprobs["token_logprobs"][1:] == pytest.approx(expected, abs=1e-4)
    assert second["logprobs"]["token_logprobs"][1:] == pytest.approx(expected[:2], abs=1e-4)
    assert [len(top) for top in logprobs["top_logprobs"][1:]] == [
        len({t, max(top, key=top.get)}) for t, top in zip(logprobs["tokens"][1:], logprobs["top_logprobs"][1:])
    ]
    assert logprobs["text_offset"] == [sum(len(t) for t in logprobs["tokens"][:i]) for i in range(len(ids))]
    # echo with a generated token: the prompt's scores, then the continuation's
    grown = client.post(
        "/v1/completions", json={"prompt": ids, "echo": True, "max_tokens": 1, "logprobs": 1, "temperature": 0}
    ).json()["choices"][0]
    assert grown["logprobs"]["token_logprobs"][: len(ids)] == logprobs["token_logprobs"]
    assert len(grown["logprobs"]["tokens"]) == len(ids) + 1 and grown["text"].startswith(first["text"])
    for bad, words in (
        ({"prompt": [len(backend.tokenizer) + 5]}, "past this model's vocabulary"),
        ({"prompt": [[1], []]}, "prompt"),
        ({"prompt": [-1]}, "prompt"),
        ({"prompt": ["a", "b"], "stream": True}, "cannot be streamed"),
        ({"prompt": "a", "logprobs": 21}, "logprobs"),
        ({"prompt": "a", "best_of": 2}, "best_of"),
        ({"prompt": "a", "suffix": "x"}, "suffix"),
    ):
        response = client.post("/v1/completions", json=bad)
        assert response.status_code == 400 and words in response.json()["error"]["message"], response.text


def test_several_choices_greedy_alike_sampled_apart(client) -> None:
    greedy = chat(client, max_tokens=8, n=3).json()
    texts = [c["message"]["content"] for c in greedy["choices"]]
    assert [c["index"] for c in greedy["choices"]] == [0, 1, 2] and len(set(texts)) == 1
    assert greedy["usage"]["completion_tokens"] == 24
    sampled = chat(client, max_tokens=8, n=3, temperature=1.0, seed=5).json()["choices"]
    assert len({c["message"]["content"] for c in sampled}) == 3
    events = stream_events(chat(client, max_tokens=8, n=2, stream=True))
    for index in (0, 1):
        pieces = [e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"][0]["index"] == index]
        assert "".join(pieces) == texts[0]
    ends = [e["choices"][0] for e in events[:-1] if e["choices"][0]["finish_reason"]]
    assert sorted(c["index"] for c in ends) == [0, 1]


def test_json_schema_replies_are_valid_even_from_a_random_model(client) -> None:
    import jsonschema

    for seed in range(3):
        body = chat(
            client,
            max_tokens=120,
            temperature=1.0,
            seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
        ).json()
        choice = body["choices"][0]
        jsonschema.validate(json.loads(choice["message"]["content"]), PERSON)
        assert choice["finish_reason"] == "stop"
    any_object = chat(client, max_tokens=120, response_format={"type": "json_object"}).json()
    assert isinstance(json.loads(any_object["choices"][0]["message"]["content"]), dict)
    for bad, words in (
        ({"type": "json_schema"}, "give json_schema"),
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}, "cannot be enforced"),
    ):
        response = chat(client, response_format=bad)
        assert response.status_code == 400 and words in response.json()["error"]["message"], response.text


def test_a_forced_tool_call_comes_back_in_openai_shape_streamed_too(client) -> None:
    body = chat(client, max_tokens=200, tools=WEATHER, tool_choice="required").json()
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls", choice
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_") and call["function"]["name"] == "get_weather"
    assert set(json.loads(call["function"]["arguments"])) == {"city"} and choice["message"]["content"] is None
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert chat(client, max_tokens=200, tools=WEATHER, tool_choice=named).json()["choices"][0] == choice | {
        "message": choice["message"] | {"tool_calls": [call | {"id": ANY_ID}]}
    }
    events = stream_events(chat(client, max_tokens=200, tools=WEATHER, tool_choice="required", stream=True))
    deltas = [e["choices"][0]["delta"] for e in events[1:-1]]
    head, arguments = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert (
        head["index"] == 0
        and head["id"].startswith("call_")
        and head["function"] == {"name": "get_weather", "arguments": ""}
    )
    assert arguments == {"index": 0, "function": {"arguments": call["function"]["arguments"]}}
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert not any(d.get("content") for d in deltas)  # the call is not streamed as text


class _AnyId(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and other.startswith("call_")

    __hash__ = str.__hash__


ANY_ID = _AnyId("call_")


def test_tool_messages_render_as_the_template_trains_them(client, backend) -> None:
    from sftkit.model import encode_prompts

    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    body = chat(client, max_tokens=5, tools=WEATHER, messages=messages).json()
    normalized = [
        *USER,
        {"role": "function_call", "content": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
        {"role": "observation", "content": "sunny"},
    ]
    tools = json.dumps([WEATHER[0]["function"]])
    prompt = encode_prompts(backend.tokenizer, backend.template, [SimpleNamespace(messages=normalized, tools=tools)])
    assert body["usage"]["prompt_tokens"] == len(prompt[0][0])
    assert "<tool_call>" in backend.tokenizer.decode(prompt[0][0]) and "<tool_response>" in backend.tokenizer.decode(
        prompt[0][0]
    )
    for bad, words in (
        ({"tool_choice": "required"}, "the request has no tools"),
        ({"tools": WEATHER, "tool_choice": {"type": "function", "function": {"name": "x"}}}, "not one of the tools"),
        ({"tools": WEATHER * 2}, "share a name"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "tool_call_id"),
        ({"messages": [*USER, {"role": "assistant", "content": None}, *USER]}, "content"),
        (
            {
                "messages": [
                    *USER,
                    {"role": "assistant", "tool_calls": [call | {"function": {"name": "f", "arguments": "not json"}}]},
                    {"role": "tool", "tool_call_id": "1", "content": "x"},
                ]
            },
            "arguments must be",
        ),
        ({"tools": WEATHER, "response_format": {"type": "json_object"}}, "exclude each other"),
    ):
        response = chat(client, **bad)
        assert response.status_code == 400 and words in response.json()["error"]["message"], response.text


@pytest.mark.parametrize(
    ("form", "text", "content", "calls"),
    [
        (
            "hermes",
            'Let me look.<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>',
            "Let me look.",
            [("f", {"x": 1})],
        ),
        (
            "hermes",
            '<tool_call>\n[{"name": "f", "arguments": {}}, {"name": "g", "arguments": {"y": "2"}}]\n</tool_call>',
            "",
            [("f", {}), ("g", {"y": "2"})],
        ),
        ("hermes", "<tool_call>\n{not json}\n</tool_call>", "<tool_call>\n{not json}\n</tool_call>", []),
        ("hermes", "no call here", "no call here", []),
        ("llama3", '{"name": "f", "parameters": {"x": "a;b"}}', "", [("f", {"x": "a;b"})]),
        (
            "llama3",
            '{"name": "f", "parameters": {}}; {"name": "g", "parameters": {"z": 3}}',
            "",
            [("f", {}), ("g", {"z": 3})],
        ),
        ("llama3", '{"not": "a call"}', '{"not": "a call"}', []),
        ("mistral", '[TOOL_CALLS] [{"name": "f", "arguments": {"x": 1}}]', "", [("f", {"x": 1})]),
        ("mistral", "plain [TOOL_CALLS] nonsense", "plain [TOOL_CALLS] nonsense", []),
    ],
)
def test_tool_calls_are_read_back_in_the_templates_format(form: str, text: str, content: str, calls: list) -> None:
    from sftkit.templates.tool_calls import parse_tool_calls

    got_content, got = parse_tool_calls(text, form)
    assert got_content == content and [(c.name, c.arguments) for c in got] == calls


def test_each_templates_rendered_call_parses_back(tiny_tokenizer) -> None:
    from sftkit.templates import get_template
    from sftkit.templates.tool_calls import parse_tool_calls, tool_call_format

    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    for name in ("chatml", "llama3", "mistral", "qwen3"):
        template = get_template(name)
        form = tool_call_format(template)
        segments = template.segments(
            [*USER, {"role": "function_call", "content": json.dumps(call)}], json.dumps([WEATHER[0]["function"]])
        )
        reply = "".join(s.text for s in segments if s.trained and not s.end)
        _, calls = parse_tool_calls(reply, form)
        assert [(c.name, c.arguments) for c in calls] == [(call["name"], call["arguments"])], (name, reply)
    # a model's own Jinja: the format its source writes
    assert tool_call_format(SimpleNamespace(source="{{ tool_calls }}<tool_call>")) == "hermes"
    assert tool_call_format(SimpleNamespace(source="{{ tool_calls }}[TOOL_CALLS]")) == "mistral"
    assert tool_call_format(SimpleNamespace(source="no tools")) is None


@pytest.mark.parametrize("family", ["qwen_25", "qwen3"])
def test_an_official_jinjas_rendered_call_parses_back(tiny_model_dir, chat_templates, family: str) -> None:
    from test_chat_templates import family_tokenizer

    from sftkit.serve.engine import Generation, template_tools
    from sftkit.templates.tool_calls import parse_tool_calls, tool_call_format

    _, template = family_tokenizer(tiny_model_dir, chat_templates, family)
    request = Generation(USER, None, 4, 0.0, 1.0, None, [], False, tools=WEATHER, tool_choice="auto")
    tools = template_tools(template, request)
    assert json.loads(tools) == WEATHER  # a model's own Jinja reads OpenAI's tool objects as they come
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    segments = template.segments([*USER, {"role": "function_call", "content": json.dumps(call)}], tools)
    assert "get_weather" in "".join(s.text for s in segments if not s.trained)  # the schema is in the prompt
    reply = "".join(s.text for s in segments if s.trained and not s.end)
    _, calls = parse_tool_calls(reply, tool_call_format(template))
    assert [(c.name, c.arguments) for c in calls] == [(call["name"], call["arguments"])]
