"""Blind rating sheets: written with a seeded A/B order, filled by raters, read back into means, win rate and
agreement. The answers are plain strings: what is tested is the sheet, not a model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from sftkit.errors import SftkitError
from sftkit.evaluate.ratings import DIMENSIONS, fleiss_kappa, html_path, key_path, read_ratings, write_sheet

PROMPTS = [f"<|im_start|>user\nQuestion {i}?<|im_end|>\n<|im_start|>assistant\n" for i in range(6)]
ANSWERS = {"runs/tuned": [f"tuned answer {i}" for i in range(6)], "models/base": [f"base answer {i}" for i in range(6)]}


def fill(sheet: Path, out: Path, rater: str, tuned_score: int, base_score: int, prefer_tuned: bool = True) -> None:
    """A rater's filled copy: the tuned model's answer gets `tuned_score` everywhere, the base's `base_score`."""
    key = json.loads(key_path(sheet).read_text())
    with sheet.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        sides = key["rows"][row["id"]]
        for side in ("a", "b"):
            for dim in DIMENSIONS:
                row[f"{dim}_{side}"] = str(tuned_score if sides[side] == "runs/tuned" else base_score)
        tuned_side = "a" if sides["a"] == "runs/tuned" else "b"
        row["preferred"] = tuned_side if prefer_tuned else ("b" if tuned_side == "a" else "a")
        row["rater"] = rater
    with out.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_the_sheet_is_blind_and_seeded(tmp_path: Path) -> None:
    sheet = tmp_path / "ratings.csv"
    key = write_sheet(sheet, PROMPTS, ANSWERS, seed=3)
    rows = list(csv.DictReader(sheet.open(encoding="utf-8")))
    assert len(rows) == 6 and "runs/tuned" not in sheet.read_text() and "models/base" not in sheet.read_text()
    firsts = {key["rows"][str(i)]["a"] for i in range(6)}
    assert firsts == {"runs/tuned", "models/base"}  # shuffled: each model is A somewhere
    for row in rows:  # the key says who wrote which answer
        assert row[f"response_{'a' if key['rows'][row['id']]['a'] == 'runs/tuned' else 'b'}"].startswith("tuned")
    assert write_sheet(tmp_path / "again.csv", PROMPTS, ANSWERS, seed=3)["rows"] == key["rows"]
    assert write_sheet(tmp_path / "other.csv", PROMPTS, ANSWERS, seed=4)["rows"] != key["rows"]
    page = html_path(sheet).read_text()
    assert "&lt;|im_start|&gt;user" in page and "<script src" not in page and "tuned answer 5" in page
    assert "runs/tuned" not in page
    assert page.count("name='preferred_0'") == 3 and page.count("name='preferred_5'") == 3  # a choice per row


def test_filled_sheets_read_back_into_means_win_rate_and_agreement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sheet = tmp_path / "ratings.csv"
    write_sheet(sheet, PROMPTS, ANSWERS, seed=0)
    fill(sheet, tmp_path / "ann.csv", "ann", 5, 2)
    fill(sheet, tmp_path / "bob.csv", "bob", 4, 2, prefer_tuned=True)
    summary = read_ratings([tmp_path / "ann.csv", tmp_path / "bob.csv"], key=key_path(sheet))
    tuned, base = summary["models"]["runs/tuned"], summary["models"]["models/base"]
    assert tuned["means"] == {d: 4.5 for d in DIMENSIONS} and tuned["overall"] == 4.5
    assert base["overall"] == 2.0 and tuned["win_rate"] == 1.0 and base["win_rate"] == 0.0
    assert summary["raters"] == ["ann", "bob"] and summary["ratings"] == 12
    agree = summary["agreement"]
    assert agree["rows"] == 6 and agree["preference_agreement"] == 1.0
    assert agree["mean_score_difference"] == pytest.approx(0.5)  # 1 on the tuned side, 0 on the base side
    written = json.loads((tmp_path / "ann.summary.json").read_text())
    assert written["models"] == summary["models"]
    assert "runs/tuned" in capsys.readouterr().out


def test_disagreeing_raters_lower_kappa() -> None:
    assert fleiss_kappa([["a", "a"], ["b", "b"], ["a", "a"]]) == pytest.approx(1.0)
    assert fleiss_kappa([["a", "b"], ["b", "a"], ["a", "b"], ["b", "a"]]) == pytest.approx(-1.0)
    assert fleiss_kappa([["a"], ["b"]]) is None


def test_a_bad_cell_names_file_line_and_column(tmp_path: Path) -> None:
    sheet = tmp_path / "ratings.csv"
    write_sheet(sheet, PROMPTS, ANSWERS)
    rows = list(csv.DictReader(sheet.open(encoding="utf-8")))
    rows[1]["helpfulness_a"] = "6"
    with sheet.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(SftkitError, match=r"ratings.csv row 2, column helpfulness_a: '6' is not a rating"):
        read_ratings([sheet])
    with pytest.raises(SftkitError, match="no key file"):
        read_ratings([sheet], key=tmp_path / "missing.key.json")


NODE_DOM = """
const fs = require("fs");
const filled = JSON.parse(process.argv[2]);
const save = {};
let saved = null;
const sections = filled.map(row => ({
  querySelectorAll: () => Object.entries(row.scores).map(([name, value]) => ({name, value})),
  querySelector: q => q.includes("radio") ? (row.preferred ? {value: row.preferred} : null) : {value: "ok"},
}));
global.document = {
  getElementById: id => id === "rater" ? {value: "zoe"} : save,
  querySelectorAll: () => sections,
  createElement: () => ({click() { saved = this.href; }}),
};
global.Blob = class { constructor(parts) { this.text = parts.join(""); } };
global.URL = {createObjectURL: blob => blob};
eval(fs.readFileSync(process.argv[1].replace(/\\.dom\\.js$/, ".page.js"), "utf8"));
save.onclick();
process.stdout.write(saved.text);
"""


def test_the_html_page_saves_a_sheet_that_reads_back(tmp_path: Path) -> None:
    """The page's own script (run by node over a stand-in for the browser's DOM) saves the sheet's columns."""
    import shutil
    import subprocess

    if shutil.which("node") is None:
        pytest.skip("node is not installed: the page's script cannot run here")
    sheet = tmp_path / "ratings.csv"
    key = write_sheet(sheet, ['Say "hi", <b>please</b>\nthen stop'] + PROMPTS[1:], ANSWERS, seed=1)
    script = html_path(sheet).read_text().split("<script>")[1].split("</script>")[0]
    (tmp_path / "sheet.page.js").write_text(script, encoding="utf-8")
    (tmp_path / "sheet.dom.js").write_text(NODE_DOM, encoding="utf-8")
    filled = []
    for i in range(6):
        tuned = "a" if key["rows"][str(i)]["a"] == "runs/tuned" else "b"
        scores = {f"{d}_{side}": "5" if side == tuned else "1" for d in DIMENSIONS for side in ("a", "b")}
        filled.append({"scores": scores, "preferred": tuned if i else ""})
    saved = subprocess.run(
        ["node", str(tmp_path / "sheet.dom.js"), json.dumps(filled)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    (tmp_path / "zoe.csv").write_text(saved, encoding="utf-8")
    rows = list(csv.DictReader((tmp_path / "zoe.csv").open(encoding="utf-8")))
    assert rows[0]["prompt"] == 'Say "hi", <b>please</b>\nthen stop' and rows[0]["rater"] == "zoe"
    summary = read_ratings([tmp_path / "zoe.csv"], key=key_path(sheet))
    assert summary["models"]["runs/tuned"]["overall"] == 5.0 and summary["models"]["models/base"]["overall"] == 1.0
    assert summary["models"]["runs/tuned"]["wins"] == 5  # the first row has no preference
