"""Fuzzing the readers of user files: the YAML config loader and the dataset readers (integration tier).

Valid files are mutated byte by byte (inserted hostile fragments, deletions, duplicated spans) and fed to
`load_config` and `validate_data`. Every outcome must be a loaded config or dataset, or an `SftkitError`
whose problems are single short lines: never another exception, which a user would see as a traceback.
Bounded: a few hundred examples each, derandomized so CI sees the same ones.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sftkit.errors import MAX_PROBLEM_CHARS, SftkitError

pytestmark = pytest.mark.integration

CONFIG = b"""model_name_or_path: m
dataset: d, e
dataset_dir: data
output_dir: out
learning_rate: 1.0e-4
lora_target: q_proj,v_proj
report_to: none
fsdp_config: {a: [1, 2, {b: c}]}
"""
ROWS = [{"instruction": "q\u2028x", "input": "", "output": "a\u0085"}, {"instruction": "2", "output": "\U0001f600"}]
FILES = {
    ".json": json.dumps(ROWS).encode(),
    ".jsonl": b"".join(json.dumps(row).encode() + b"\n" for row in ROWS),
    ".csv": b'instruction,input,output\nq,,"a\nb"\n2,x,y\n',
}
FRAGMENTS = [
    b"&a ",
    b"*a",
    b"[",
    b"]",
    b"{",
    b"}",
    b": ",
    b"\n",
    b"  ",
    b"- ",
    b"<<: *a",
    b"!!python/name:os.system",
    b"!!binary",
    b"\x00",
    b"\xff\xfe",
    b"\xe9",
    b'"',
    b"'",
    b"\\ud800",
    b"\\u",
    b",",
    b"#",
    b"%YAML 1.1\n",
    b"---\n",
    b"? ",
    b"|\n",
    b"\t",
    b"\r",
    b"\xe2\x80\xa8",
    b"\xc2\x85",
    b"null",
    b"1e999",
    b"-",
    b"~",
]


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["fragment", "bytes", "delete", "repeat"]))
        if kind == "fragment":
            data[at:at] = draw(st.sampled_from(FRAGMENTS)) * draw(st.integers(1, 40))
        elif kind == "bytes":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 20))]
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 30))] * draw(st.integers(2, 20))
    return bytes(data)


def assert_user_error(exc: SftkitError) -> None:
    assert exc.problems, "an error with no problem in it"
    for line in exc.problems:
        assert line and "\n" not in line and len(line) <= MAX_PROBLEM_CHARS, line[:200]


FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(text=mutated(CONFIG))
def test_config_loader_never_crashes(text: bytes) -> None:
    from sftkit.config import load_config

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cfg.yaml"
        path.write_bytes(text)
        try:
            load_config(path, ["seed=3"])
        except SftkitError as exc:
            assert_user_error(exc)


@settings(FUZZ, max_examples=100)
@given(text=mutated(CONFIG), override=st.text(max_size=40))
def test_set_overrides_never_crash(text: bytes, override: str) -> None:
    from sftkit.config import load_config

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cfg.yaml"
        path.write_bytes(text)
        try:
            load_config(path, [override, f"lora_rank={override}"])
        except SftkitError as exc:
            assert_user_error(exc)


@FUZZ
@given(suffix=st.sampled_from(sorted(FILES)), data=st.data())
def test_dataset_readers_never_crash(suffix: str, data: st.DataObject) -> None:
    from sftkit.config import validate_config
    from sftkit.data import validate_data

    content = data.draw(mutated(FILES[suffix]))
    registry = json.dumps({"d": {"file_name": f"d{suffix}"}}).encode()
    if data.draw(st.integers(0, 4)) == 0:
        registry = data.draw(mutated(registry))
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / f"d{suffix}").write_bytes(content)
        (Path(folder) / "dataset_info.json").write_bytes(registry)
        cfg = validate_config({"model_name_or_path": "m", "dataset": "d", "dataset_dir": folder, "output_dir": "o"})
        try:
            validate_data(cfg)
        except SftkitError as exc:
            assert_user_error(exc)


# ---------------------------------------------------------------------------- round two: the newer readers

YAML_VALUE = b"[&a [x, y], *a, {k: *a}, 'q', 1e3]"


@settings(FUZZ, max_examples=150)
@given(value=mutated(YAML_VALUE))
def test_set_values_get_the_files_guard(value: bytes) -> None:
    from sftkit.config import load_config

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cfg.yaml"
        path.write_bytes(CONFIG)
        try:
            load_config(path, [f"lora_target={value.decode('utf-8', 'replace')}"])
        except SftkitError as exc:
            assert_user_error(exc)


SHEET = (
    b"id,prompt,response_a,response_b,helpfulness_a,accuracy_a,clarity_a,safety_a,helpfulness_b,accuracy_b,"
    b'clarity_b,safety_b,preferred,rater,notes\n0,p,"a\nb",c,4,4,4,4,3,3,3,3,a,ann,\n1,q,x,y,,,,,5,5,5,5,b,,\n'
)


@settings(FUZZ, max_examples=150)
@given(sheet=mutated(SHEET))
def test_rating_sheets_never_crash(sheet: bytes) -> None:
    from sftkit.evaluate.ratings import read_ratings

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "filled.csv"
        path.write_bytes(sheet)
        key = {
            "sheet": "s.csv",
            "seed": 0,
            "models": ["m1", "m2"],
            "rows": {"0": {"a": "m1", "b": "m2"}, "1": {"a": "m2", "b": "m1"}},
        }
        (Path(folder) / "filled.key.json").write_text(json.dumps(key))
        try:
            read_ratings([path])
        except SftkitError as exc:
            assert_user_error(exc)


class _NoModel:
    """A backend that is never reached: every fuzzed body is checked before generation, or answered 503."""

    def run_batch(self, jobs) -> None:
        from sftkit.serve.engine import Failed
        from sftkit.serve.protocol import ApiError

        for job in jobs:
            job.send(Failed(ApiError(503, "no model in this test", kind="server_error")))


BODY = json.dumps(
    {"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b"], "seed": 3, "max_tokens": 2, "temperature": 0}
).encode()


@pytest.fixture(scope="module")
def bare_client():
    from fastapi.testclient import TestClient

    from sftkit.serve import build_app
    from sftkit.serve.engine import Engine

    with TestClient(build_app(Engine(_NoModel(), 4), "tiny"), raise_server_exceptions=False) as client:
        yield client


@settings(FUZZ, max_examples=200)
@given(body=mutated(BODY))
def test_request_bodies_never_get_a_500(bare_client, body: bytes) -> None:
    response = bare_client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code in (400, 404, 413, 422, 503), response.text[:300]
    assert response.json()["error"]["message"]
