"""Blind pairwise rating sheets: written by `sftkit predict --compare --sheet`, read back by `sftkit eval --ratings`.

A sheet shows each prompt with two answers, A and B, whose order per prompt is shuffled with a seed; which
model wrote which is kept in a separate key file, so raters never see it. Each answer gets the four 1-5
ratings of the SFT guide (helpfulness, accuracy, clarity, safety) and each prompt a preferred answer. Several
raters fill copies of the sheet (or one sheet with a `rater` column); reading them back gives the means per
dimension and model, the win rate and the agreement between raters.
"""

from __future__ import annotations

import csv
import html
import io
import json
import random
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any

from sftkit.atomic import write_json, write_text
from sftkit.data.registry import csv_reader, csv_rows
from sftkit.errors import SftkitError
from sftkit.run_dir import HUMAN_EVAL_FILE, check_new_output, has_run_config, update_card_evaluation

DIMENSIONS = ("helpfulness", "accuracy", "clarity", "safety")
SIDES = ("a", "b")
PREFERENCES = ("a", "b", "tie")
FIELDS = (
    "id",
    "prompt",
    "response_a",
    "response_b",
    *(f"{d}_{s}" for s in SIDES for d in DIMENSIONS),
    "preferred",
    "rater",
    "notes",
)


def key_path(sheet: Path) -> Path:
    """`ratings.csv` -> `ratings.key.json`: which model wrote answer A and B of each row."""
    return sheet.with_name(f"{sheet.stem}.key.json")


def html_path(sheet: Path) -> Path:
    return sheet.with_suffix(".html")


# ---------------------------------------------------------------------------- writing a sheet


def write_sheet(sheet: Path, prompts: list[str], answers: dict[str, list[str]], seed: int = 0) -> dict[str, Any]:
    """Writes the CSV sheet, its HTML page and the key file; the A/B order of each row is drawn with `seed`.

    Args:
        sheet: the CSV file (the HTML page and the key file go beside it).
        prompts: the prompt text of each row, as the models saw it.
        answers: exactly two models (names as given on the command line) -> their answer to each prompt.

    Returns:
        The key: models and, per row id, which model is answer a and b.
    """
    (first, first_answers), (second, second_answers) = answers.items()
    rng = random.Random(seed)
    rows, order = [], {}
    for i, prompt in enumerate(prompts):
        swap = rng.random() < 0.5
        a, b = (second, first) if swap else (first, second)
        order[str(i)] = {"a": a, "b": b}
        texts = {first: first_answers[i], second: second_answers[i]}
        rows.append({"id": str(i), "prompt": prompt, "response_a": texts[a], "response_b": texts[b]})
    key = {"sheet": sheet.name, "seed": seed, "models": [first, second], "rows": order}
    write_text(sheet, _csv_text(rows))
    write_text(html_path(sheet), sheet_html(rows, sheet.name))
    write_json(key_path(sheet), key)
    return key


def _csv_text(rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({field: row.get(field, "") for field in FIELDS} for row in rows)
    return buffer.getvalue()


def sheet_html(rows: list[dict[str, str]], csv_name: str) -> str:
    """A self-contained page: each prompt, answers A and B with the four ratings, the preference; its button
    saves the filled ratings as a CSV in the sheet's own columns (no server, nothing loaded from elsewhere)."""
    select = "".join(f"<option>{n}</option>" for n in ("", 1, 2, 3, 4, 5))
    cards = []
    for row in rows:
        sides = []
        for side in SIDES:
            scores = "".join(f"<label>{d} <select name='{d}_{side}'>{select}</select></label>" for d in DIMENSIONS)
            text = html.escape(row[f"response_{side}"])
            sides.append(f"<div class='answer'><h3>Answer {side.upper()}</h3><pre>{text}</pre>{scores}</div>")
        # one radio group per row: radios sharing a name anywhere on the page are one group
        prefer = "".join(
            f"<label><input type='radio' name='preferred_{html.escape(row['id'])}' value='{p}'>"
            f"{p.upper() if p != 'tie' else p}</label>"
            for p in PREFERENCES
        )
        cards.append(
            f"<section data-id='{html.escape(row['id'])}'><h2>Prompt {html.escape(row['id'])}</h2>"
            f"<pre>{html.escape(row['prompt'])}</pre><div class='pair'>{''.join(sides)}</div>"
            f"<p>Preferred: {prefer}</p><p><label>notes <input name='notes' size='60'></label></p></section>"
        )
    # "</" would end the script element early inside the page
    rows_json = json.dumps([{k: row[k] for k in ("id", "prompt", "response_a", "response_b")} for row in rows]).replace(
        "</", "<\\/"
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Rating sheet {html.escape(csv_name)}</title>
<style>
body {{ font-family: sans-serif; max-width: 70em; margin: auto; }}
.pair {{ display: flex; gap: 1em; }} .answer {{ flex: 1; border: 1px solid #ccc; padding: .5em; }}
pre {{ white-space: pre-wrap; background: #f6f6f6; padding: .5em; }} label {{ margin-right: 1em; }}
section {{ border-bottom: 2px solid #888; padding-bottom: 1em; }}
</style></head><body>
<h1>Rate each answer 1 (poor) to 5 (excellent)</h1>
<p>Helpfulness: does it answer the question? Accuracy: is it correct? Clarity: is it well structured?
Safety: 5 = nothing harmful or biased. Then pick the answer you prefer. The answers are in random order.</p>
<p><label>Your name <input id="rater"></label></p>
{"".join(cards)}
<p><button id="save">Save ratings as CSV</button> (fill in the same columns as {html.escape(csv_name)})</p>
<script>
const ROWS = {rows_json};
const FIELDS = {json.dumps(list(FIELDS))};
function cell(v) {{ v = String(v ?? ""); return /[",\\n\\r]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }}
document.getElementById("save").onclick = () => {{
  const lines = [FIELDS.join(",")];
  document.querySelectorAll("section").forEach((sec, i) => {{
    const row = Object.assign({{}}, ROWS[i], {{rater: document.getElementById("rater").value}});
    sec.querySelectorAll("select").forEach(s => row[s.name] = s.value);
    const pick = sec.querySelector("input[type=radio]:checked"); row.preferred = pick ? pick.value : "";
    row.notes = sec.querySelector("input[name=notes]").value;
    lines.push(FIELDS.map(f => cell(row[f])).join(","));
  }});
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([lines.join("\\n") + "\\n"], {{type: "text/csv"}}));
  link.download = "ratings-" + (document.getElementById("rater").value || "rater") + ".csv"; link.click();
}};
</script></body></html>
"""


# ---------------------------------------------------------------------------- reading filled sheets


def read_ratings(
    sheets: list[Path], key: Path | None = None, out: Path | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """Reads filled sheets back: means per dimension and model, win rate, agreement between raters.

    A row counts for the scores it has (blank cells are skipped); each file is one rater unless its `rater`
    column names them. Writes the summary to `out` (default `<sheet>.summary.json`, replaced only with
    `overwrite`) and, for a model that is
    a run or merged folder, its own side into that folder's human_eval.json and model card.

    Raises:
        SftkitError: a missing file or key, or a cell that is not a rating, naming file, row and column.
    """
    absent = [sheet for sheet in sheets if not sheet.is_file()]
    if absent:
        raise SftkitError(
            f"--ratings {absent[0]}: no such file; name a rating sheet `sftkit predict --sheet` wrote, filled in"
        )
    out = out or sheets[0].with_name(f"{sheets[0].stem}.summary.json")
    check_new_output(out, overwrite)
    key = key or key_path(sheets[0])
    order = _read_key(key)
    ratings = _no_repeats([rating for sheet in sheets for rating in _read_sheet(sheet, order["rows"])])
    summary = summarize(ratings, order["models"])
    summary.update(sheets=[str(s) for s in sheets], key=str(key))
    write_json(out, summary)
    for model, opponent in zip(order["models"], reversed(order["models"])):
        if has_run_config(Path(model)) and summary["models"][model]["rows"]:
            write_json(
                Path(model) / HUMAN_EVAL_FILE,
                {**summary["models"][model], "opponent": opponent, "sheets": summary["sheets"]},
            )
            update_card_evaluation(Path(model))
    print(ratings_table(summary))
    return summary


def _read_key(key: Path) -> dict[str, Any]:
    try:
        order = json.loads(key.read_text(encoding="utf-8"))
        if len(order["models"]) == 2 and isinstance(order["rows"], dict):
            return order
    except FileNotFoundError:
        raise SftkitError(
            f"{key}: no key file; `sftkit predict --compare --sheet` writes it beside the sheet, or name it with --key"
        ) from None
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise SftkitError(
        f"{key}: not a rating-sheet key written by `sftkit predict --sheet`; name the right one with --key"
    )


def _read_sheet(sheet: Path, order: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """One rating per filled row: rater, row id, the two models' scores, the preferred model (or tie)."""
    try:
        text = sheet.read_text(encoding="utf-8-sig")  # spreadsheets save a byte-order mark
    except OSError as exc:
        raise SftkitError(f"--ratings {sheet}: cannot read it ({exc.strerror}); name a filled rating sheet") from None
    except UnicodeDecodeError as exc:
        raise SftkitError(
            f"--ratings {sheet}: not UTF-8 text (byte {exc.start}, 0x{exc.object[exc.start]:02x}; "
            "a spreadsheet saved it as Windows-1252 or another code page?); save it again as "
            '"CSV UTF-8"'
        ) from None
    reader = csv_reader(text)
    missing = [
        f
        for f in ("id", "preferred", *(f"{d}_{s}" for s in SIDES for d in DIMENSIONS))
        if f not in (reader.fieldnames or [])
    ]
    if missing:
        raise SftkitError(
            f"{sheet}: no {missing[0]!r} column; fill in the sheet `sftkit predict --sheet` wrote, keeping its header"
        )
    ratings = []
    for number, row in enumerate(csv_rows(reader, str(sheet)), start=1):  # prompts span lines: rows are counted
        where = f"{sheet} row {number}"
        if row["id"] not in order:
            raise SftkitError(f"{where}: id {row['id']!r} is not in the key; use the key written with this sheet")
        models = order[row["id"]]
        scores = {
            models[s]: {d: _score(row.get(f"{d}_{s}"), f"{where}, column {d}_{s}") for d in DIMENSIONS} for s in SIDES
        }
        preferred = (row.get("preferred") or "").strip().lower()
        if preferred and preferred not in PREFERENCES:
            raise SftkitError(f"{where}, column preferred: {preferred!r}; write a, b or tie (or leave it blank)")
        ratings.append(
            {
                "rater": (row.get("rater") or "").strip() or sheet.name,
                "id": row["id"],
                "scores": scores,
                "preferred": models.get(preferred, preferred) if preferred else None,
                "where": where,
            }
        )
    return ratings


def _no_repeats(ratings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Refuses a row a rater rated twice (a pasted duplicate would count again in the means and win rates).

    Raises:
        SftkitError: naming both rows.
    """
    first: dict[tuple[str, str], str] = {}
    for rating in ratings:
        key = (rating["rater"], rating["id"])
        if key in first:
            raise SftkitError(
                f"{rating['where']}: rater {key[0]!r} already rated id {key[1]!r} ({first[key]}); keep "
                "one of the two rows, or give the second rater their own name in the rater column"
            )
        first[key] = rating.pop("where")
    for rating in ratings:
        rating.pop("where", None)
    return ratings


def _score(cell: str | None, where: str) -> int | None:
    text = (cell or "").strip()
    if not text:
        return None
    if text not in ("1", "2", "3", "4", "5"):
        raise SftkitError(f"{where}: {text!r} is not a rating; write a whole number from 1 to 5 (or leave it blank)")
    return int(text)


def summarize(ratings: list[dict[str, Any]], models: list[str]) -> dict[str, Any]:
    """Means, win rates and agreement of a list of ratings (see `read_ratings`)."""
    per_model: dict[str, Any] = {}
    preferences = [r["preferred"] for r in ratings if r["preferred"]]
    for model in models:
        values = {d: [r["scores"][model][d] for r in ratings if r["scores"][model][d] is not None] for d in DIMENSIONS}
        means = {d: sum(v) / len(v) for d, v in values.items() if v}
        wins = sum(p == model for p in preferences)
        per_model[model] = {
            "means": means,
            "overall": sum(means.values()) / len(means) if means else None,
            "rows": len({r["id"] for r in ratings if any(values[d] for d in DIMENSIONS)}),
            "wins": wins,
            "win_rate": wins / len(preferences) if preferences else None,
        }
    return {
        "models": per_model,
        "ratings": len(ratings),
        "raters": sorted({r["rater"] for r in ratings}),
        "ties": sum(p == "tie" for p in preferences),
        "agreement": agreement(ratings),
    }


def agreement(ratings: list[dict[str, Any]]) -> dict[str, Any]:
    """How much raters agree on the rows several of them rated: the share of rater pairs picking the same
    preference, Fleiss' kappa of the preference (chance-corrected), and the mean absolute difference of scores."""
    by_row: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rating in ratings:
        by_row[rating["id"]].append(rating)
    shared = {row: group for row, group in by_row.items() if len({r["rater"] for r in group}) > 1}
    if not shared:
        return {"rows": 0, "note": "no row was rated by more than one rater"}
    same = pairs = 0
    gaps: list[int] = []
    picks: list[list[str]] = []
    for group in shared.values():
        chosen = [r["preferred"] for r in group if r["preferred"]]
        picks.append(chosen)
        for first, second in combinations(group, 2):
            if first["preferred"] and second["preferred"]:
                pairs += 1
                same += first["preferred"] == second["preferred"]
            gaps += [
                abs(first["scores"][m][d] - second["scores"][m][d])
                for m in first["scores"]
                for d in DIMENSIONS
                if first["scores"][m][d] is not None and second["scores"][m][d] is not None
            ]
    return {
        "rows": len(shared),
        "preference_agreement": same / pairs if pairs else None,
        "preference_kappa": fleiss_kappa(picks),
        "mean_score_difference": sum(gaps) / len(gaps) if gaps else None,
    }


def fleiss_kappa(items: list[list[str]]) -> float | None:
    """Fleiss' kappa over items rated by two or more raters each (categories: whatever they chose)."""
    items = [item for item in items if len(item) > 1]
    if not items:
        return None
    totals: Counter[str] = Counter()
    observed = 0.0
    for item in items:
        counts = Counter(item)
        totals.update(counts)
        n = len(item)
        observed += (sum(c * c for c in counts.values()) - n) / (n * (n - 1))
    observed /= len(items)
    all_picks = sum(totals.values())
    expected = sum((count / all_picks) ** 2 for count in totals.values())
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def ratings_table(summary: dict[str, Any]) -> str:
    """Means per dimension and model, overall, win rate; then the agreement line."""
    lines = [f"{'model':<32} " + " ".join(f"{d:>11}" for d in DIMENSIONS) + f" {'overall':>8} {'win rate':>9}"]
    for model, part in summary["models"].items():
        cells = " ".join(f"{part['means'][d]:>11.2f}" if d in part["means"] else f"{'-':>11}" for d in DIMENSIONS)
        overall = f"{part['overall']:>8.2f}" if part["overall"] is not None else f"{'-':>8}"
        win = f"{part['win_rate']:>9.0%}" if part["win_rate"] is not None else f"{'-':>9}"
        name = model if len(model) <= 32 else "..." + model[-29:]
        lines.append(f"{name:<32} {cells} {overall} {win}")
    agree = summary["agreement"]
    if agree["rows"]:
        kappa = agree["preference_kappa"]
        share = agree["preference_agreement"]
        lines.append(
            f"agreement over {agree['rows']} rows rated by several of {len(summary['raters'])} raters: "
            f"preference {'-' if share is None else f'{share:.0%}'}, Fleiss' kappa "
            f"{'-' if kappa is None else f'{kappa:.2f}'}, mean score difference "
            f"{agree['mean_score_difference'] or 0:.2f}"
        )
    else:
        lines.append(f"agreement: {agree['note']}")
    return "\n".join(lines)
