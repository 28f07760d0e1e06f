"""Alpaca / ShareGPT / OpenAI-messages rows -> normalized conversations, and every row-level error."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from sftkit.data.formats import normalize
from sftkit.data.registry import DatasetSpec, SourceRow, get_spec, load_registry, read_rows
from sftkit.errors import DataError

OPENAI_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}


def spec(entry: dict[str, Any] | None = None, name: str = "d") -> DatasetSpec:
    """A checked registry entry (the data file itself is never read by these tests)."""
    return get_spec({name: {"file_name": "d.json", **(entry or {})}}, name, ".")


def rows(*data: Any) -> list[SourceRow]:
    return [SourceRow("d.json", i, row) for i, row in enumerate(data)]


def convert(row: Any, entry: dict[str, Any] | None = None, default_system: str | None = None) -> dict[str, Any]:
    return normalize(rows(row), spec(entry), default_system).rows[0]


def error_of(row: Any, entry: dict[str, Any] | None = None) -> str:
    with pytest.raises(DataError) as info:
        normalize(rows(row), spec(entry), None)
    message = str(info.value)
    assert "\n" not in message and message.startswith("d.json: row 0: ")
    return message


SHAREGPT = {"formatting": "sharegpt"}
OPENAI = {"formatting": "sharegpt", "columns": {"messages": "messages"}, "tags": OPENAI_TAGS}


# ---------------------------------------------------------------------------- alpaca


def test_alpaca_instruction_and_input_join_with_a_newline() -> None:
    row = convert({"instruction": "Sum these.", "input": "2 and 3", "output": "5"})
    assert row["messages"] == [
        {"role": "user", "content": "Sum these.\n2 and 3"},
        {"role": "assistant", "content": "5"},
    ]
    assert row["tools"] is None and row["dataset"] == "d" and row["index"] == 0


def test_alpaca_empty_or_absent_input_leaves_the_instruction_alone() -> None:
    assert convert({"instruction": "Hi", "input": "", "output": "Hello"})["messages"][0]["content"] == "Hi"
    assert convert({"instruction": "Hi", "output": "Hello"})["messages"][0]["content"] == "Hi"


def test_alpaca_system_column_wins_over_default_system() -> None:
    row = {"instruction": "Hi", "output": "Hello", "system": "Be brief."}
    assert convert(row, default_system="Default.")["messages"][0] == {"role": "system", "content": "Be brief."}
    no_system = {"instruction": "Hi", "output": "Hello"}
    assert convert(no_system, default_system="Default.")["messages"][0] == {"role": "system", "content": "Default."}
    assert convert(no_system)["messages"][0]["role"] == "user"


def test_alpaca_history_pairs_come_first() -> None:
    row = convert(
        {"instruction": "And 3?", "output": "three", "system": "S", "history": [["1?", "one"], ["2?", "two"]]}
    )
    assert [(m["role"], m["content"]) for m in row["messages"]] == [
        ("system", "S"),
        ("user", "1?"),
        ("assistant", "one"),
        ("user", "2?"),
        ("assistant", "two"),
        ("user", "And 3?"),
        ("assistant", "three"),
    ]


def test_alpaca_custom_columns() -> None:
    entry = {"columns": {"prompt": "q", "response": "a", "query": "ctx"}}
    row = convert({"q": "Question", "ctx": "context", "a": "Answer"}, entry)
    assert [m["content"] for m in row["messages"]] == ["Question\ncontext", "Answer"]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"input": "x", "output": "y"}, "missing column 'instruction'; map the right one with columns.prompt"),
        ({"instruction": "x"}, "missing column 'output'"),
        ({"instruction": "x", "output": None}, "missing column 'output'"),
        ({"instruction": "x", "input": 2, "output": "y"}, "column 'input' must be a string, got int"),
        ({"instruction": ["x"], "output": "y"}, "column 'instruction' must be a string, got list"),
        ({"instruction": "x", "output": "  "}, "empty assistant reply (column 'output')"),
        ({"instruction": "x", "output": "y", "history": "q a"}, "'history' must be a list of [question, answer]"),
        ({"instruction": "x", "output": "y", "history": [["q"]]}, "pair 0 is ['q']"),
        ({"instruction": "x", "output": "y", "history": [["q", ""]]}, "empty assistant reply in 'history' pair 0"),
        (["not", "an", "object"], "expected a JSON object, got list"),
    ],
)
def test_alpaca_bad_rows(row: Any, expected: str) -> None:
    assert expected in error_of(row)


# ---------------------------------------------------------------------------- sharegpt


def test_sharegpt_from_value_with_system_column() -> None:
    row = convert(
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}], "system": "S"},
        SHAREGPT,
        default_system="Default.",
    )
    assert row["messages"] == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]


def test_sharegpt_leading_system_message_and_default_system() -> None:
    turns = [{"from": "system", "value": "Own."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]
    assert convert({"conversations": turns}, SHAREGPT, "Default.")["messages"][0]["content"] == "Own."
    assert convert({"conversations": turns[1:]}, SHAREGPT, "Default.")["messages"][0]["content"] == "Default."


def test_openai_messages_layout() -> None:
    row = convert(
        {
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "Q1"},
                {"role": "assistant", "content": "A1"},
                {"role": "user", "content": "Q2"},
                {"role": "assistant", "content": "A2"},
            ]
        },
        OPENAI,
    )
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user", "assistant"]


def test_bundled_openai_messages_dataset(bundled_data: Path) -> None:
    demo = get_spec(load_registry(bundled_data), "demo_messages", bundled_data)
    result = normalize(read_rows(demo), demo, None)
    assert len(result.rows) == 80 and result.skipped == 0
    assert all(row["messages"][0]["role"] == "system" for row in result.rows)
    assert [row["index"] for row in result.rows] == list(range(80))


def test_glaive_tool_calls(shared_data: Path) -> None:
    glaive = get_spec(load_registry(shared_data), "glaive_toolcall_en_demo", shared_data)
    result = normalize(read_rows(glaive), glaive, None)
    assert len(result.rows) == 300
    with_call = next(row for row in result.rows if any(m["role"] == "function_call" for m in row["messages"]))
    roles = [m["role"] for m in with_call["messages"]]
    assert roles[roles.index("function_call") + 1] == "observation"
    assert isinstance(json.loads(with_call["tools"]), list) and json.loads(with_call["tools"])
    # "[]" in the tools column means no tools
    assert any(row["tools"] is None for row in result.rows)


def test_tools_column_as_a_list_is_dumped_to_json() -> None:
    tools = [{"name": "add", "parameters": {"type": "object"}}]
    row = convert(
        {
            "conversations": [
                {"from": "human", "value": "2+2?"},
                {"from": "function_call", "value": '{"name": "add"}'},
                {"from": "observation", "value": "4"},
                {"from": "gpt", "value": "4."},
            ],
            "tools": tools,
        },
        SHAREGPT,
    )
    assert json.loads(row["tools"]) == tools
    assert [m["role"] for m in row["messages"]] == ["user", "function_call", "observation", "assistant"]


def turns(*pairs: tuple[str, str]) -> dict[str, Any]:
    return {"conversations": [{"from": role, "value": value} for role, value in pairs]}


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"messages": []}, "missing column 'conversations'; map the right one with columns.messages"),
        ({"conversations": "Hi"}, "column 'conversations' must be a list of messages, got str"),
        ({"conversations": []}, "empty conversation"),
        (turns(("system", "S")), "empty conversation (only a system message)"),
        (
            turns(("gpt", "Hello"), ("human", "Hi")),
            "roles out of order: message 0 is assistant, expected user or observation",
        ),
        (turns(("human", "Hi"), ("human", "Hi again"), ("gpt", "Yo")), "roles out of order: message 1 is user"),
        (turns(("system", "S"), ("human", "Hi"), ("observation", "x")), "message 2 is observation"),
        (turns(("human", "Hi")), "ends with a user message; it must end with an assistant reply"),
        (turns(("human", "Hi"), ("gpt", " ")), "empty assistant reply in message 1"),
        (turns(("human", "Hi"), ("bot", "Hello")), "message 1 has unknown role 'bot', expected one of human, gpt"),
        (turns(("human", "Hi"), ("gpt", "Yo"), ("system", "late"), ("gpt", "x")), "only the first message may be"),
        ({"conversations": [{"from": "human"}]}, "message 0 has no 'value' key; set tags.content_tag"),
        ({"conversations": [{"from": "human", "value": 3}]}, "'value' must be a string, got int"),
        ({"conversations": ["Hi"]}, "message 0 must be an object, got str"),
        ({**turns(("human", "Hi"), ("gpt", "Yo")), "tools": "{not json"}, "column 'tools' is not valid JSON"),
        ({**turns(("human", "Hi"), ("gpt", "Yo")), "tools": 5}, "column 'tools' must be a JSON string"),
        ({**turns(("human", "Hi"), ("gpt", "Yo")), "system": 1}, "column 'system' must be a string, got int"),
    ],
)
def test_sharegpt_bad_rows(row: Any, expected: str) -> None:
    assert expected in error_of(row, SHAREGPT)


def test_openai_unknown_role_names_the_tags_fix() -> None:
    message = error_of({"messages": [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "x"}]}, OPENAI)
    assert "unknown role 'tool'" in message and "map it with tags in dataset_info.json" in message


# ---------------------------------------------------------------------------- many rows


def test_first_bad_row_is_reported_with_the_count_of_the_others() -> None:
    good = {"instruction": "x", "output": "y"}
    with pytest.raises(DataError) as info:
        normalize(rows(good, {"instruction": "x"}, good, {"output": "y"}), spec(), None)
    assert str(info.value).startswith("d.json: row 1: missing column 'output'")
    assert "(1 more bad rows; skip_bad_rows: true skips them)" in str(info.value)


def test_skip_bad_rows_counts_names_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    good = {"instruction": "x", "output": "y"}
    data = [good, {"instruction": "x"}, *([good] * 3), *([{"output": "y"}] * 7)]
    with caplog.at_level(logging.WARNING, logger="sftkit.data.formats"):
        result = normalize(rows(*data), spec(), None, skip_bad_rows=True)
    assert [row["index"] for row in result.rows] == [0, 2, 3, 4]  # source row numbers survive the skip
    assert result.skipped == 8 and len(result.problems) == 5
    assert result.problems[0].startswith("d.json: row 1: missing column 'output'")
    assert "dataset d: skipped 8 bad rows" in caplog.text


def test_jsonl_rows_name_their_line(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "a"}\n')
    entry = get_spec({"d": {"file_name": "d.jsonl"}}, "d", tmp_path)
    with pytest.raises(DataError, match=r"d.jsonl: row 1 \(line 3\): missing column 'output'"):
        normalize(read_rows(entry), entry, None)
