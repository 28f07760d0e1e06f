"""dataset_info.json, file reading, and loading by name: mixing, max_samples, val_size, eval_dataset."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from helpers import make_config
from sftkit.config import SftConfig
from sftkit.data import validate_data
from sftkit.data.loader import load_conversations
from sftkit.data.registry import get_spec, load_registry, read_rows
from sftkit.errors import DataError

ALPACA = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(10)]


def config(dataset_dir: Path, dataset: str, **keys: Any) -> SftConfig:
    return make_config(dataset=dataset, dataset_dir=dataset_dir, **keys)


def write_dir(tmp_path: Path, registry: dict[str, Any], files: dict[str, Any]) -> Path:
    """A dataset_dir with `registry` and files (JSON-dumped unless given as str/bytes)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "dataset_info.json").write_text(json.dumps(registry))
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return tmp_path


def load_error(tmp_path: Path, file_name: str, content: Any) -> str:
    """The DataError message of loading one file as dataset `d`."""
    write_dir(tmp_path, {"d": {"file_name": file_name}}, {file_name: content} if content is not None else {})
    with pytest.raises(DataError) as info:
        validate_data(config(tmp_path, "d"))
    assert "\n" not in str(info.value)
    return str(info.value)


# ---------------------------------------------------------------------------- the registry


def test_shared_registry_works_as_it_is(shared_data: Path) -> None:
    registry = load_registry(shared_data)
    specs = {name: get_spec(registry, name, shared_data) for name in registry}
    assert specs["glaive_toolcall_en_demo"].formatting == "sharegpt"
    assert specs["glaive_toolcall_en_demo"].columns["tools"] == "tools"
    assert specs["glaive_toolcall_en_demo"].tags["role_tag"] == "from"
    assert specs["alpaca_en_demo"].columns["prompt"] == "instruction"
    summary = validate_data(config(shared_data, "alpaca_en_demo,alpaca_zh_demo,identity,glaive_toolcall_en_demo"))
    assert summary == "4 datasets, 2390 rows"


def test_hub_dataset_offline_is_a_clear_error(bundled_data: Path) -> None:
    entry = get_spec(load_registry(bundled_data), "teichai_gemini3_flash", bundled_data)
    assert entry.hub_id == "TeichAI/gemini-3-flash-preview-1000x" and entry.split == "train"
    # offline by the environment (HF_HUB_OFFLINE, as the tests run): said before the hub is asked; else its failure
    with pytest.raises(
        DataError,
        match=r"dataset 'teichai_gemini3_flash': (cannot load "
        r"TeichAI/gemini-3-flash-preview-1000x from the Hugging Face hub|its registry "
        r"entry loads it from the Hugging Face hub \(TeichAI/gemini-3-flash-preview-"
        r"1000x\), and this machine is offline)",
    ):
        read_rows(entry)


def test_unsupported_keys_of_other_entries_do_not_matter(tmp_path: Path) -> None:
    registry = {
        "good": {"file_name": "g.json"},
        "prefs": {"file_name": "p.json", "ranking": True, "columns": {"chosen": "c", "rejected": "r"}},
        "modelscope": {"ms_hub_url": "x/y"},
        "script": {"script_url": "s"},
        "images": {"file_name": "g.json", "columns": {"images": "img"}},
        "weird": {"num_samples": 3, "file_name": "g.json"},
    }
    write_dir(tmp_path, registry, {"g.json": ALPACA})
    assert validate_data(config(tmp_path, "good")) == "1 dataset, 10 rows"
    for name, expected in [
        ("prefs", "ranking (preference) datasets are not supported"),
        ("modelscope", "uses ms_hub_url, which sftkit does not support; give it a file_name"),
        ("script", "uses script_url"),
        ("images", "columns: 'images' is not supported"),
        ("weird", "key 'num_samples' is not supported"),
    ]:
        with pytest.raises(DataError, match=re.escape(expected)):
            validate_data(config(tmp_path, name))


def test_unknown_dataset_lists_known_and_suggests(shared_data: Path) -> None:
    with pytest.raises(DataError) as info:
        validate_data(config(shared_data, "alpaca_en_dmo"))
    message = str(info.value)
    assert "dataset 'alpaca_en_dmo' is not in" in message and "did you mean alpaca_en_demo" in message
    assert "known: alpaca_en_demo, alpaca_zh_demo, glaive_toolcall_en_demo, identity" in message


def test_missing_registry(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset_info.json: not found; set dataset_dir"):
        validate_data(config(tmp_path, "d"))


def test_malformed_registry_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "dataset_info.json").write_text('{\n  "d": {"file_name": "d.json"},\n  oops\n}')
    with pytest.raises(DataError, match=r"dataset_info.json:3: invalid JSON"):
        validate_data(config(tmp_path, "d"))


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"file_name": "d.json", "formatting": "openai"}, "unknown formatting 'openai'; use alpaca or sharegpt"),
        ({"file_name": "d.json", "formatting": "sharegpt", "tags": {"speaker_tag": "x"}}, "tags: 'speaker_tag' is not"),
        ({"file_name": "d.json", "columns": ["instruction"]}, "columns: expected an object"),
        ({"file_name": "../outside.json"}, "points outside"),
        ({"file_name": "sub/../../outside.json"}, "points outside"),
        ("d.json", "expected an object with file_name or hf_hub_url"),
    ],
)
def test_bad_registry_entries(tmp_path: Path, entry: Any, expected: str) -> None:
    write_dir(tmp_path, {"d": entry}, {"d.json": ALPACA})
    with pytest.raises(DataError, match=re.escape(expected)):
        validate_data(config(tmp_path, "d"))


def test_absolute_file_name_is_allowed(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "d.json"
    write_dir(tmp_path / "elsewhere", {}, {"d.json": ALPACA})
    write_dir(tmp_path / "reg", {"d": {"file_name": str(outside)}}, {})
    assert validate_data(config(tmp_path / "reg", "d")) == "1 dataset, 10 rows"


# ---------------------------------------------------------------------------- files


def test_jsonl_parquet_csv_and_folders(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = "\n".join(json.dumps(row) for row in ALPACA[:4]) + "\n"
    csv_text = 'instruction,input,output\nWrite 2 as a word,2,two\n"multi\nline",,ok\n'
    write_dir(
        tmp_path,
        {
            "j": {"file_name": "d.jsonl"},
            "c": {"file_name": "d.csv"},
            "p": {"file_name": "d.parquet"},
            "f": {"file_name": "folder"},
        },
        {
            "d.jsonl": jsonl,
            "d.csv": csv_text,
            "folder/b.json": ALPACA[:2],
            "folder/a.jsonl": jsonl,
            "folder/notes.txt": "ignored",
        },
    )
    pq.write_table(pa.Table.from_pylist(ALPACA[:3]), tmp_path / "d.parquet")
    assert validate_data(config(tmp_path, "j,c,p,f")) == "4 datasets, 15 rows"
    train = load_conversations(config(tmp_path, "c,f")).train
    assert train[0]["messages"][0]["content"] == "Write 2 as a word\n2"  # csv cells stay strings
    assert train[1]["messages"][0]["content"] == "multi\nline"
    folder = [row for row in train if row["dataset"] == "f"]
    assert [row["index"] for row in folder] == list(range(6))  # a.jsonl first, then b.json
    assert folder[4]["messages"][0]["content"] == "q0"


@pytest.mark.parametrize(
    ("file_name", "content", "expected"),
    [
        ("d.json", None, r"d.json: file of dataset 'd' not found; fix file_name"),
        ("d.json", "", r"d.json: the file is empty"),
        ("d.json", "  \n", r"d.json: the file is empty"),
        ("d.json", [], r"d.json: the file has no rows"),
        ("d.jsonl", "\n\n", r"d.jsonl: the file is empty"),
        (
            "d.json",
            '[\n {"instruction": "a", "output": "b"},\n {"instruction": "a" "output": "b"}\n]',
            r"d.json:3: invalid JSON \(Expecting ',' delimiter at column 22\)",
        ),
        (
            "d.jsonl",
            '{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": b}\n',
            r"d.jsonl:2: invalid JSON",
        ),
        ("d.json", b'[{"instruction": "caf\xe9", "output": "b"}]', r"d.json:1: not UTF-8 text \(byte 21\)"),
        ("d.xml", "x", r"unsupported file type '.xml'"),
        ("folder", None, r"not found"),
    ],
)
def test_bad_files(tmp_path: Path, file_name: str, content: Any, expected: str) -> None:
    assert re.search(expected, load_error(tmp_path, file_name, content))


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    assert "folder of dataset 'd' has no .json/.jsonl/.parquet/.csv files" in load_error(tmp_path, "folder", None)


def test_corrupt_parquet(tmp_path: Path) -> None:
    assert "cannot read Parquet" in load_error(tmp_path, "d.parquet", b"PAR1 not really")


def test_bad_row_error_names_file_and_row(tmp_path: Path) -> None:
    message = load_error(tmp_path, "d.json", [*ALPACA[:3], {"instruction": "x", "output": ""}])
    assert message.endswith("d.json: row 3: empty assistant reply (column 'output'); fill it in or remove the row")


def test_skip_bad_rows_reaches_the_summary(tmp_path: Path) -> None:
    write_dir(tmp_path, {"d": {"file_name": "d.json"}}, {"d.json": [*ALPACA, {"instruction": "x"}, 3]})
    assert validate_data(config(tmp_path, "d", skip_bad_rows=True)) == "1 dataset, 10 rows, 2 bad rows skipped"
    conv = load_conversations(config(tmp_path, "d", skip_bad_rows=True))
    assert conv.skipped == 2 and conv.problems[1].endswith("row 11: expected a JSON object, got int")


def test_skip_bad_rows_leaving_nothing_is_an_error(tmp_path: Path) -> None:
    write_dir(tmp_path, {"d": {"file_name": "d.json"}}, {"d.json": [{"instruction": "x"}]})
    with pytest.raises(DataError, match=r"dataset 'd' .*: no usable rows, 1 bad rows skipped"):
        validate_data(config(tmp_path, "d", skip_bad_rows=True))


# ---------------------------------------------------------------------------- mixing and splitting


@pytest.fixture()
def two_sets(tmp_path: Path) -> Path:
    big = [{"instruction": f"big{i}", "output": "x"} for i in range(30)]
    small = [{"instruction": f"small{i}", "output": "y"} for i in range(10)]
    return write_dir(
        tmp_path,
        {"big": {"file_name": "big.json"}, "small": {"file_name": "small.json"}},
        {"big.json": big, "small.json": small},
    )


def test_concat_keeps_order_and_provenance(two_sets: Path) -> None:
    train = load_conversations(config(two_sets, "small,big")).train
    assert train["dataset"] == ["small"] * 10 + ["big"] * 30
    assert train["index"] == list(range(10)) + list(range(30))


def test_max_samples_takes_the_first_rows_of_each(two_sets: Path) -> None:
    train = load_conversations(config(two_sets, "big,small", max_samples=4)).train
    assert [m[0]["content"] for m in train["messages"]] == [f"big{i}" for i in range(4)] + [
        f"small{i}" for i in range(4)
    ]


def test_interleave_under_and_over(two_sets: Path) -> None:
    under = load_conversations(config(two_sets, "big,small", mix_strategy="interleave_under")).train
    assert under["dataset"][:4] == ["big", "small", "big", "small"] and len(under) == 20
    over = load_conversations(
        config(two_sets, "big,small", mix_strategy="interleave_over", interleave_probs=[0.5, 0.5], seed=1)
    ).train
    counts = Counter(over["dataset"])
    assert counts["big"] >= 30 and counts["small"] >= 10  # sampled until every dataset ran out
    again = load_conversations(
        config(two_sets, "big,small", mix_strategy="interleave_over", interleave_probs=[0.5, 0.5], seed=1)
    ).train
    assert again["index"] == over["index"]


def test_val_size_split_is_deterministic_by_seed(two_sets: Path) -> None:
    def eval_rows(seed: int, val_size: float) -> list[tuple[str, int]]:
        conv = load_conversations(config(two_sets, "big,small", val_size=val_size, seed=seed))
        assert len(conv.train) + len(conv.eval) == 40
        assert not set(zip(conv.train["dataset"], conv.train["index"])) & set(
            zip(conv.eval["dataset"], conv.eval["index"])
        )
        return list(zip(conv.eval["dataset"], conv.eval["index"]))

    assert len(eval_rows(0, 0.25)) == 10 and len(eval_rows(0, 7)) == 7
    assert eval_rows(0, 0.25) == eval_rows(0, 0.25)
    assert eval_rows(0, 0.25) != eval_rows(1, 0.25)


def test_val_size_too_large(two_sets: Path) -> None:
    with pytest.raises(
        DataError,
        match=r"val_size 40.0: 40 rows cannot give both splits a row \(40 eval, 0 train\); "
        r"use a smaller val_size",
    ):
        validate_data(config(two_sets, "big,small", val_size=40))


def test_eval_dataset_is_the_eval_set(two_sets: Path) -> None:
    conv = load_conversations(config(two_sets, "big", eval_dataset="small", val_size=0.5))
    assert set(conv.train["dataset"]) == {"big"} and len(conv.train) == 30
    assert conv.eval["dataset"] == ["small"] * 10
    assert validate_data(config(two_sets, "big", eval_dataset="small")) == "2 datasets, 40 rows: train 30, eval 10"


# ---------------------------------------------------------------------------- valid files that are unusual


def rows_of(tmp_path: Path, file_name: str, content: Any) -> list[Any]:
    write_dir(tmp_path, {"d": {"file_name": file_name}}, {file_name: content})
    return [row.data for row in read_rows(get_spec(load_registry(tmp_path), "d", tmp_path))]


def test_a_csv_cell_over_128k_characters_loads(tmp_path: Path) -> None:
    long = "x" * 300_000
    rows = rows_of(tmp_path, "d.csv", f'instruction,output\n"{long}",short\nq,a\n')
    assert rows == [{"instruction": long, "output": "short"}, {"instruction": "q", "output": "a"}]


def test_line_separators_inside_jsonl_strings_stay_in_one_row(tmp_path: Path) -> None:
    text = "".join(
        json.dumps({"instruction": f"a{sep}b", "output": "o"}, ensure_ascii=False) + "\n"
        for sep in ("\u2028", "\u0085", "\u2029", "\r\n")
    )
    rows = rows_of(tmp_path, "d.jsonl", text)
    assert [row["instruction"] for row in rows] == ["a\u2028b", "a\u0085b", "a\u2029b", "a\r\nb"]


def test_a_lone_surrogate_is_refused_with_file_row_and_fix(tmp_path: Path) -> None:
    good = '{"instruction": "a pair \\ud83d\\ude00 is one character", "output": "o"}\n'
    assert rows_of(tmp_path, "d.jsonl", good)[0]["instruction"] == "a pair \U0001f600 is one character"
    for file_name, text, where in [
        ("d.jsonl", good + '{"instruction": "ok", "output": "cut \\ud83d"}\n', "row 1 (line 2)"),
        ("d.json", '[{"instruction": "ok", "output": "o"}, {"instruction": "\\udc00", "output": "o"}]', "row 1"),
    ]:
        problem = load_error(tmp_path / file_name.replace(".", "_"), file_name, text)
        assert f"{file_name}: {where}: text holds a lone UTF-16 surrogate escape" in problem
        assert "remove it or write the character it was meant to be" in problem


def test_deeply_nested_json_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    assert "d.jsonl:2: JSON nested too deeply to read" in load_error(
        tmp_path, "d.jsonl", '{"instruction": "q", "output": "a"}\n' + "[" * 100_000 + "]" * 100_000 + "\n"
    )


# ---------------------------------------------------------------------------- ambiguity


def test_a_registry_name_given_twice_is_refused_when_selected(tmp_path: Path) -> None:
    (tmp_path / "g.json").write_text(json.dumps(ALPACA))
    (tmp_path / "dataset_info.json").write_text(
        '{"d": {"file_name": "g.json"}, "d": {"file_name": "h.json"}, '
        '"e": {"file_name": "g.json", "formatting": "alpaca", '
        '"formatting": "sharegpt"}, "ok": {"file_name": "g.json"}}'
    )
    assert validate_data(config(tmp_path, "ok")) == "1 dataset, 10 rows"  # the others are not selected
    with pytest.raises(DataError, match="dataset 'd': the name is given twice, and JSON keeps only the last entry"):
        validate_data(config(tmp_path, "d"))
    with pytest.raises(DataError, match="dataset 'e': key 'formatting' is given twice in the entry"):
        validate_data(config(tmp_path, "e"))


def test_file_name_and_hf_hub_url_together_are_refused(tmp_path: Path) -> None:
    write_dir(tmp_path, {"d": {"file_name": "g.json", "hf_hub_url": "org/name"}}, {"g.json": ALPACA})
    with pytest.raises(
        DataError,
        match="has both file_name and hf_hub_url; LLaMA-Factory loads hf_hub_url, sftkit would load file_name",
    ):
        validate_data(config(tmp_path, "d"))


def test_val_size_that_leaves_a_side_empty_is_our_message(tmp_path: Path) -> None:
    write_dir(tmp_path, {"d": {"file_name": "g.json"}}, {"g.json": ALPACA[:1]})
    with pytest.raises(DataError) as info:
        validate_data(config(tmp_path, "d", val_size=0.5))
    assert str(info.value) == (
        "val_size 0.5: 1 rows cannot give both splits a row (1 eval, 0 train); use a smaller "
        "val_size, more data, or set eval_dataset"
    )


def test_json_error_reads_as_a_sentence(tmp_path: Path) -> None:
    from sftkit.data.registry import _parse_json

    with pytest.raises(DataError) as caught:
        _parse_json(tmp_path / "d.json", '[{"a": "unterminated')
    assert "(Unterminated string starting at column 8)" in str(caught.value) and "at at" not in str(caught.value)
