"""Data quality: statistics and plots, cleaning (duplicates, leaks, filters, the judge), balance, curriculum and
self-instruct generation, on LLaMA-Factory's demo data and against a fake OpenAI-compatible endpoint."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import Request  # resolved by name: FastAPI reads the handler's annotation as a string

from helpers import make_config, run_cli
from sftkit.data import prepare_data
from sftkit.data.quality.balance import balance
from sftkit.data.quality.clean import clean_rows, find_duplicates
from sftkit.data.quality.curriculum import curriculum_order
from sftkit.data.quality.generate import GenerateSettings, generate, read_seeds, resume_rows
from sftkit.data.quality.text import language, normalise, repeated_share
from sftkit.templates import get_template, prepare_tokenizer


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tokenization caches (and the judge's scores) go to a fresh folder per test."""
    import datasets

    cache = tmp_path_factory.mktemp("hf-datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    return cache


def alpaca(shared_data: Path) -> list[dict[str, str]]:
    return json.loads((shared_data / "alpaca_en_demo.json").read_text(encoding="utf-8"))


def write_registry(folder: Path, files: dict[str, list[dict[str, Any]]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        (folder / f"{name}.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    (folder / "dataset_info.json").write_text(json.dumps({name: {"file_name": f"{name}.json"} for name in files}))
    return folder


def row(instruction: str, output: str, **extra: Any) -> dict[str, Any]:
    return {"instruction": instruction, "input": "", "output": output, **extra}


def conversation(prompt: str, reply: str, dataset: str = "d", index: int = 0) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}],
        "tools": None,
        "dataset": dataset,
        "index": index,
    }


# ---------------------------------------------------------------------------- text measures


def test_text_measures() -> None:
    assert normalise("  Hello,   WORLD!\n") == "hello world" == normalise("hello world")
    assert normalise("你好，世界") == "你 好 世 界"  # CJK counts characters
    assert repeated_share("one two three four five six") == 0.0
    assert repeated_share("buy now " * 20) > 0.9
    assert language("The quick brown fox jumps over the lazy dog near the river bank.") == "en"
    assert language("今天天气很好，我们去公园散步吧。") == "zh"


# ---------------------------------------------------------------------------- cleaning


@pytest.fixture()
def seeded(shared_data: Path, tmp_path: Path) -> dict[str, Any]:
    """60 distinct demo rows, plus seeded exact and near duplicates (within and across datasets) and leaks."""
    rows = alpaca(shared_data)
    base = rows[:60]
    assert not find_duplicates([conversation(r["instruction"] + r["input"], r["output"]) for r in base], "near"), (
        "the base rows must hold no duplicates of their own"
    )
    long_rows = [i for i, r in enumerate(base) if len(r["output"].split()) > 80][:2]
    near = [dict(base[i], output=base[i]["output"].replace(" the ", " a ", 1)) for i in long_rows]
    exact_within = dict(base[5], instruction=base[5]["instruction"].upper() + "  ")
    extra = [
        dict(base[1], output=base[1]["output"] + "!!"),  # punctuation only: exact after normalising
        rows[200],
        rows[201],  # distinct
        dict(base[2], instruction="  " + base[2]["instruction"].lower()),
        *near,
    ]
    held = [rows[300 + i] for i in range(10)]
    leaks = [
        dict(held[0], output="A different answer entirely, written for training."),
        dict(held[3], input=held[3]["input"], output="Another answer of mine."),
    ]
    folder = write_registry(tmp_path / "data", {"base": [*base, exact_within], "extra": [*extra, *leaks], "held": held})
    expected = {
        ("base", 60, "exact_duplicate"),
        ("extra", 0, "exact_duplicate"),
        ("extra", 3, "exact_duplicate"),
        *{("extra", 4 + k, "near_duplicate") for k in range(len(near))},
        ("extra", 4 + len(near), "leak"),
        ("extra", 5 + len(near), "leak"),
    }
    return {"folder": folder, "expected": expected, "rows": (61, len(extra) + len(leaks), len(held))}


def _config_file(tmp_path: Path, **keys: Any) -> Path:
    path = tmp_path / "clean.yaml"
    path.write_text(
        json.dumps({"model_name_or_path": "unused", "output_dir": str(tmp_path / "run"), "template": "chatml", **keys}),
        encoding="utf-8",
    )
    return path


def test_clean_removes_seeded_duplicates_and_leaks_exactly(
    seeded: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    config = _config_file(
        tmp_path,
        dataset="base,extra",
        eval_dataset="held",
        dataset_dir=str(seeded["folder"]),
        clean_dedup="near",
        clean_remove_leaks=True,
    )
    code, out, err = run_cli(["data", "clean", str(config), "--out", str(tmp_path / "clean")], monkeypatch, capsys)
    assert code == 0, err
    removed = [json.loads(line) for line in (tmp_path / "clean" / "removed.jsonl").read_text().splitlines()]
    assert {(r["dataset"], r["index"], r["reason"]) for r in removed} == seeded["expected"]
    assert all(r["detail"] for r in removed)
    base_rows, extra_rows, held_rows = seeded["rows"]
    kept_base = json.loads((tmp_path / "clean" / "base.json").read_text())
    kept_extra = json.loads((tmp_path / "clean" / "extra.json").read_text())
    assert len(kept_base) == base_rows - 1 and len(kept_extra) == extra_rows - (len(seeded["expected"]) - 1)
    assert "leaks: 2 train prompts" in out and "--set dataset_dir=" in out
    # the output is a dataset folder sftkit reads as it is
    from sftkit.data.loader import load_conversations

    cleaned = load_conversations(make_config(dataset="base,extra", eval_dataset="held", dataset_dir=tmp_path / "clean"))
    assert len(cleaned.train) == len(kept_base) + len(kept_extra) and len(cleaned.eval) == held_rows
    assert not find_duplicates(cleaned.train.to_list(), "near")

    # deterministic: a second clean gives the same files; without clean_remove_leaks the leaks are reported only
    config = _config_file(
        tmp_path, dataset="base,extra", eval_dataset="held", dataset_dir=str(seeded["folder"]), clean_dedup="near"
    )
    code, out, err = run_cli(["data", "clean", str(config), "--out", str(tmp_path / "clean")], monkeypatch, capsys)
    assert code == 2 and "--overwrite" in err
    code, out, err = run_cli(
        ["data", "clean", str(config), "--out", str(tmp_path / "clean"), "--overwrite"], monkeypatch, capsys
    )
    assert code == 0, err
    report = json.loads((tmp_path / "clean" / "clean_report.json").read_text())
    assert len(report["leaks"]) == 2 and not report["leaks_removed"] and "leak" not in report["removed"]
    assert len(json.loads((tmp_path / "clean" / "extra.json").read_text())) == len(kept_extra) + 2


def test_clean_in_training_data_and_its_summary(
    seeded: dict[str, Any], tiny_model_dir: Path, tiny_tokenizer: Any
) -> None:
    prepare_tokenizer(tiny_tokenizer, get_template("chatml"))
    cfg = make_config(
        model_name_or_path=tiny_model_dir,
        dataset="base,extra",
        eval_dataset="held",
        dataset_dir=seeded["folder"],
        clean_dedup="exact",
        cutoff_len=1024,
    )
    data = prepare_data(cfg, tiny_tokenizer)
    base_rows, extra_rows, _ = seeded["rows"]
    assert len(data.train) == base_rows + extra_rows - 3  # the three exact duplicates; near ones stay with exact
    line = next(line for line in data.stats.summary_lines() if line.startswith("clean:"))
    assert "3 exact_duplicate" in line and "2 train prompts also in the eval set (kept" in line


def test_filters_name_each_reason(tiny_tokenizer: Any) -> None:
    rows = [
        conversation("Say hi", "Hello there, nice to meet you today.", index=0),
        conversation("Say hi", "   ", index=1),
        conversation("Explain", "k", index=2),
        conversation("Sell", "buy now buy now buy now buy now buy now buy now buy now", index=3),
        conversation("Repeat after me: the cat sat on the mat", "the cat sat on the mat", index=4),
        conversation("Help", "As an AI language model, I cannot do that.", index=5),
        conversation("你好", "今天天气很好，我们去公园散步吧，然后去吃饭。", index=6),
        conversation("Write", " ".join(f"word{i}" for i in range(200)), index=7),
    ]
    cfg = make_config(
        clean_empty_replies=True,
        clean_min_reply_tokens=3,
        clean_max_reply_tokens=150,
        clean_max_repeated_ngrams=0.5,
        clean_prompt_copies=True,
        clean_patterns=["as an ai language model"],
        clean_languages="en",
    )
    result = clean_rows(cfg, rows, None, tiny_tokenizer)
    assert result.train_keep == [0]
    assert [(r.index, r.reason) for r in result.removed] == [
        (1, "empty_reply"),
        (2, "short_reply"),
        (3, "repeated_ngrams"),
        (4, "prompt_copy"),
        (5, "pattern"),
        (6, "language"),
        (7, "long_reply"),
    ]


# ---------------------------------------------------------------------------- statistics and plots


def test_stats_writes_json_plots_and_summary(
    shared_data: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    config = _config_file(
        tmp_path,
        model_name_or_path=str(tiny_model_dir),
        dataset_dir=str(shared_data),
        dataset="alpaca_en_demo,alpaca_zh_demo,identity",
        max_samples=40,
        val_size=0.1,
        cutoff_len=256,
    )
    out = tmp_path / "stats"
    code, stdout, err = run_cli(["data", "stats", str(config), "--out", str(out)], monkeypatch, capsys)
    assert code == 0, err
    report = json.loads((out / "data_stats.json").read_text())
    assert set(report["datasets"]) == {"alpaca_en_demo", "alpaca_zh_demo", "identity"}
    en, zh = report["datasets"]["alpaca_en_demo"], report["datasets"]["alpaca_zh_demo"]
    assert report["overall"]["rows"] == sum(d["rows"] for d in report["datasets"].values())
    assert en["rows"] <= 40 and en["turns"] == en["rows"] and en["prompt_tokens"] + en["trained_tokens"] == en["tokens"]
    assert (
        max(en["languages"], key=en["languages"].get) == "en" and max(zh["languages"], key=zh["languages"].get) == "zh"
    )
    assert 0 < en["trained_fraction"] < 1 and en["length_p50"] <= en["length_p90"] <= en["length_max"] <= 256
    assert "alpaca_zh_demo" in stdout and "(all)" in stdout
    import matplotlib.image as mpimg

    for name in report["plots"]:
        pixels = mpimg.imread(out / name)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 400
        assert pixels[..., :3].std() > 0.05, f"{name} is blank"
    code, stdout, _ = run_cli(["data", "preview", str(config), "-n", "1"], monkeypatch, capsys)
    assert code == 0 and "data stats" in stdout and str(config) in stdout


# ---------------------------------------------------------------------------- balance and curriculum


def test_balance_hits_the_shares() -> None:
    categories = ["qa"] * 50 + ["code"] * 10 + ["chat"] * 40 + ["other"] * 5
    result = balance(categories, {"qa": 50, "code": 25, "chat": 25}, None, seed=0)
    assert result.achieved == {"qa": 20, "code": 10, "chat": 10} and result.left_out == {"other": 5}
    assert len(set(result.positions)) == 40  # as many as the shares allow, no row twice
    assert result.positions == balance(categories, {"qa": 50, "code": 25, "chat": 25}, None, seed=0).positions
    more = balance(categories, {"qa": 0.5, "code": 0.25, "chat": 0.25}, 100, seed=1)
    assert more.achieved == {"qa": 50, "code": 25, "chat": 25}  # code repeats rows to reach its share
    assert "code 25.0% (wanted 25.0%, 25 of 10 rows)" in more.summary_line("category")


def test_balance_and_curriculum_in_prepared_data(
    shared_data: Path, tiny_model_dir: Path, tiny_tokenizer: Any, tmp_path: Path
) -> None:
    rows = alpaca(shared_data)[:100]
    kinds = ["creative", "qa", "code", "analysis", "chat"]
    folder = write_registry(
        tmp_path / "data", {"mixed": [dict(r, category=kinds[i % 5], score=(i * 7) % 11) for i, r in enumerate(rows)]}
    )
    prepare_tokenizer(tiny_tokenizer, get_template("chatml"))
    common = dict(model_name_or_path=tiny_model_dir, dataset="mixed", dataset_dir=folder, cutoff_len=512)
    cfg = make_config(
        **common,
        balance_column="category",
        balance_shares={"creative": 20, "qa": 25, "code": 15, "analysis": 20, "chat": 20},
        curriculum="length",
    )
    data = prepare_data(cfg, tiny_tokenizer)
    lengths = [len(ids) for ids in data.train["input_ids"]]
    assert lengths == sorted(lengths)
    lines = data.stats.summary_lines()
    assert any(
        line.startswith("balance by category: creative 20.0% (wanted 20.0%") and "qa 25.0% (wanted 25.0%" in line
        for line in lines
    ), lines
    assert any(line.startswith("curriculum: by length (tokens), easy to hard") for line in lines)
    assert len(data.train) == 80  # qa (20 rows) limits it: 20 / 0.25

    staged = prepare_data(
        make_config(**common, curriculum="score", curriculum_column="score", curriculum_stages=3), tiny_tokenizer
    )
    scores = [(i * 7) % 11 for i in staged.train["index"]]
    thirds = [scores[:34], scores[34:68], scores[68:]]
    assert max(thirds[0]) <= min(thirds[1]) and max(thirds[1]) <= min(thirds[2])
    assert thirds[0] != sorted(thirds[0]) or thirds[2] != sorted(thirds[2])  # shuffled within a stage


def test_curriculum_order_and_sequential_sampling() -> None:
    assert curriculum_order([3, 1, 2, 1], 1, 0) == [1, 3, 2, 0]
    staged = curriculum_order(list(range(9, -1, -1)), 2, 0)
    assert set(staged[:5]) == {5, 6, 7, 8, 9} and set(staged[5:]) == {0, 1, 2, 3, 4}
    from sftkit.model import resolve_precision
    from sftkit.training.arguments import build_sft_config

    cfg = make_config(curriculum="length", report_to="none", output_dir="/tmp/unused-run")
    assert build_sft_config(cfg, resolve_precision(cfg)).train_sampling_strategy == "sequential"
    plain = make_config(report_to="none", output_dir="/tmp/unused-run")
    assert build_sft_config(plain, resolve_precision(plain)).train_sampling_strategy == "random"


def test_quality_keys_are_checked() -> None:
    from sftkit.errors import ConfigError

    for keys, words in [
        ({"curriculum": "length", "packing": True}, "packing"),
        ({"curriculum": "score"}, "curriculum_column"),
        ({"balance_column": "category"}, "balance_shares"),
        ({"clean_patterns": ["(unclosed"]}, "not a regular expression"),
        ({"clean_judge_model": "m"}, "clean_judge_base_url"),
    ]:
        with pytest.raises(ConfigError, match=words):
            make_config(**keys)


# ---------------------------------------------------------------------------- a fake OpenAI-compatible endpoint


class FakeEndpoint:
    """/v1/chat/completions on loopback, answering with `reply(prompt)`; `statuses` are sent first, one per call."""

    def __init__(self, reply: Callable[[str], str]) -> None:
        self.reply = reply
        self.prompts: list[str] = []
        self.statuses: list[int] = []

    def app(self) -> Any:
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse

        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def complete(request: Request) -> Any:
            body = await request.json()
            if self.statuses:
                return JSONResponse({"error": {"message": "busy"}}, status_code=self.statuses.pop(0))
            prompt = body["messages"][-1]["content"]
            self.prompts.append(prompt)
            return {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": self.reply(prompt)},
                    }
                ],
            }

        return app


@pytest.fixture()
def endpoint() -> Iterator[Callable[[Callable[[str], str]], tuple[str, FakeEndpoint]]]:
    import uvicorn

    servers = []

    def start(reply: Callable[[str], str]) -> tuple[str, FakeEndpoint]:
        fake = FakeEndpoint(reply)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(fake.app(), log_level="error"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        servers.append((server, thread))
        while not server.started:
            time.sleep(0.01)
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1", fake

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=5)


def test_judge_scores_filter_and_cache(endpoint: Any, tmp_path: Path) -> None:
    malformed_once = {"count": 0}

    def judge(prompt: str) -> str:
        if "sloppy" in prompt:
            return '{"clarity": 2, "helpfulness": 1, "formatting": 2}'
        if "flaky" in prompt and malformed_once["count"] == 0:
            malformed_once["count"] += 1
            return "I think this deserves a five."
        return '```json\n{"clarity": 5, "helpfulness": 4, "formatting": 5}\n```'

    url, fake = endpoint(judge)
    rows = [
        conversation("Explain rain", "Water vapour condenses into drops that fall.", index=0),
        conversation("Explain rain", "sloppy answr", index=1),
        conversation("Explain snow (flaky)", "Ice crystals form in cold clouds and fall.", index=2),
    ]
    cfg = make_config(clean_judge_model="judge", clean_judge_base_url=url)
    cache = tmp_path / "scores.jsonl"
    result = clean_rows(cfg, rows, None, judge_cache=cache)
    assert result.train_keep == [0, 2] and result.unjudged == 0
    assert [(r.index, r.reason) for r in result.removed] == [(1, "judge")] and "1.67" in result.removed[0].detail
    assert len(fake.prompts) == 4  # three rows, one asked twice
    again = clean_rows(cfg, rows, None, judge_cache=cache)
    assert again.train_keep == [0, 2] and len(fake.prompts) == 4  # every score came from the cache


def test_generate_validates_dedups_retries_and_resumes(endpoint: Any, tmp_path: Path) -> None:
    answers = iter(
        [
            "not json at all",
            '{"instruction": "", "output": "x"}',  # invalid: empty instruction
            '{"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well."}',  # seed copy
            '{"instruction": "Name a mammal that can fly.", "input": "", "output": "The bat."}',
            '{"instruction": "Translate good morning into French.", "input": "", "output": "Bonjour."}',
            '{"instruction": "Write a haiku about autumn leaves.", "input": "", "output": "Red leaves drift..."}',
            '{"instruction": "List two prime numbers above ten.", "input": "", "output": "11 and 13."}',
        ]
    )
    url, fake = endpoint(lambda prompt: next(answers))
    seeds_file = tmp_path / "seeds.json"
    seeds_file.write_text(
        json.dumps(
            [
                row("Give three tips for staying healthy.", "Eat, sleep, move."),
                row("Describe the water cycle.", "Evaporation, condensation, rain."),
            ]
        )
    )
    out = tmp_path / "gen" / "self_instruct.jsonl"
    settings = GenerateSettings(base_url=url, model="m", rows=2, backoff=0.0, max_retries=2)
    fake.statuses = [503]  # the client retries a busy server by itself
    result = generate(read_seeds(seeds_file), out, settings)
    assert (result.rows, result.added, result.malformed, result.near_duplicates) == (2, 2, 2, 1)
    assert [json.loads(line)["instruction"] for line in out.read_text().splitlines()] == [
        "Name a mammal that can fly.",
        "Translate good morning into French.",
    ]
    registry = json.loads((out.parent / "dataset_info.json").read_text())
    assert registry == {"self_instruct": {"file_name": "self_instruct.jsonl"}}
    with out.open("a") as f:
        f.write('{"instruction": "cut sho')  # a run killed mid-line
    assert len(resume_rows(out)) == 2 and out.read_text().endswith("}\n")
    resumed = generate(read_seeds(seeds_file), out, GenerateSettings(base_url=url, model="m", rows=4, backoff=0.0))
    assert (resumed.resumed_from, resumed.added, resumed.rows) == (2, 2, 4)
    from sftkit.data.loader import load_conversations

    assert len(load_conversations(make_config(dataset="self_instruct", dataset_dir=out.parent)).train) == 4


def test_generate_cli_names_an_unreachable_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    seeds_file = tmp_path / "seeds.json"
    seeds_file.write_text(json.dumps([row("Describe the water cycle.", "Evaporation, condensation, rain.")]))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there
    code, _, err = run_cli(
        [
            "data",
            "generate",
            str(seeds_file),
            "--out",
            str(tmp_path / "g.jsonl"),
            "--base-url",
            f"http://127.0.0.1:{port}/v1",
            "--model",
            "m",
            "-n",
            "1",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 2 and "cannot reach the endpoint" in err and "Traceback" not in err
