"""Bad input, all of it: the corpus in tests/bad_inputs/ run through the CLI, plus the safety rules.

Every broken config or dataset must end the command with exit code 2, one `error:` line per problem
naming it, no traceback, and nothing written to output_dir. The cases run in this process through the
console entry point (`sftkit.cli.main`), once per module; the integration tier runs a few of them as
real subprocesses too, where a traceback would show on stderr.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import string
import struct
import subprocess
import sys
import traceback
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
MANIFEST: dict[str, dict[str, Any]] = yaml.safe_load((CORPUS / "manifest.yaml").read_text(encoding="utf-8"))
HUGE_LINE_BYTES = 5_000_000
DEEP_JSON = 100_000  # nesting levels of data/deep.json
MAX_ERROR_LINE = 1000  # characters: an error names the problem, it never echoes the data


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    output_dir: Path


def sftkit_command() -> list[str]:
    venv = Path(sys.executable).parent / "sftkit"
    return [str(venv)] if venv.exists() else [sys.executable, "-m", "sftkit"]


def run_sftkit(args: list[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    # one thread each: the cases run several at a time, and oversubscribed threads spin
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(cache),
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run([*sftkit_command(), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A copy of the corpus data, plus what is generated rather than kept in the repository: the huge line,
    deeply nested JSON, a file beside dataset_dir, damaged model and run folders (`damaged_folders`)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    data = root / "data"
    shutil.copytree(CORPUS / "data", data)
    with (data / "huge_line.jsonl").open("w", encoding="utf-8") as handle:
        handle.write('{"instruction": "' + "x" * HUGE_LINE_BYTES + '", "output": "the line ends before the string')
    (data / "deep.json").write_text("[" * DEEP_JSON + "]" * DEEP_JSON, encoding="utf-8")
    (root / "secrets.json").write_text(json.dumps([{"instruction": "secret", "output": "leaked"}]))
    damaged_folders(root, tiny_model_dir)
    return root


def damaged_folders(root: Path, tiny_model_dir: Path) -> None:
    """Model, run and checkpoint folders as an interrupted copy, save or download leaves them.

    truncated-model: the tiny model with its weights cut in half. lora-run: a LoRA run's files (its adapter
    config, a tiny valid safetensors file standing in for the adapter, its config); truncated-run: the same
    with the adapter cut short. run-without-optimizer and run-truncated-checkpoint: output_dirs whose only
    checkpoint lacks optimizer.pt, or holds a truncated adapter. user-folder: somebody's own files.
    """
    model = root / "truncated-model"
    shutil.copytree(tiny_model_dir, model)
    truncate(model / "model.safetensors")
    for name, cut in (("lora-run", False), ("truncated-run", True)):
        run = root / name
        run.mkdir()
        (run / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
        write_safetensors(run / "adapter_model.safetensors")
        if cut:
            truncate(run / "adapter_model.safetensors")
        (run / "sftkit_config.yaml").write_text(
            yaml.safe_dump({"model_name_or_path": str(tiny_model_dir), "dataset": "good", "output_dir": str(run)})
        )
    for name, cut in (("run-without-optimizer", False), ("run-truncated-checkpoint", True)):
        checkpoint = root / name / "checkpoint-2"
        checkpoint.mkdir(parents=True)
        (checkpoint / "trainer_state.json").write_text('{"global_step": 2}')
        write_safetensors(checkpoint / "adapter_model.safetensors")
        if cut:
            truncate(checkpoint / "adapter_model.safetensors")
            for state in ("optimizer.pt", "scheduler.pt"):
                with zipfile.ZipFile(checkpoint / state, "w") as archive:
                    archive.writestr("data.pkl", b"state")
    (root / "user-folder").mkdir()
    (root / "user-folder" / "notes.txt").write_text("my own notes")
    (root / "user-folder" / "config.json").write_text("{}")


def write_safetensors(path: Path) -> None:
    """A valid safetensors file of one small tensor, written without torch."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(64))


def truncate(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def case_config(case: str, workdir: Path, tiny_model_dir: Path) -> tuple[Path | None, Path]:
    """The case's config with ${MODEL}, ${DATA}, ${OUT} and ${WORK} filled in (None if it has none), and its
    output_dir. A config that is not UTF-8 is copied as it is."""
    out = workdir / f"out-{case}"
    source = CORPUS / "configs" / f"{case}.yaml"
    if not source.exists():
        return None, out
    config = workdir / f"{case}.yaml"
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        shutil.copyfile(source, config)
        return config, out
    config.write_text(fill(text, workdir, tiny_model_dir, out), encoding="utf-8")
    return config, out


def fill(text: str, workdir: Path, tiny_model_dir: Path, out: Path, config: Path | None = None) -> str:
    return string.Template(text).safe_substitute(
        MODEL=tiny_model_dir, DATA=workdir / "data", OUT=out, WORK=workdir, CONFIG=config or ""
    )


def case_args(case: str, workdir: Path, tiny_model_dir: Path) -> list[str]:
    """The command line of a case: its `args` (filled in) when given, else `COMMAND CONFIG`."""
    config, out = case_config(case, workdir, tiny_model_dir)
    entry = MANIFEST[case]
    if "args" not in entry:
        return [*entry["command"].split(), str(config)]
    return [fill(arg, workdir, tiny_model_dir, out, config) for arg in entry["args"]]


def run_in_process(args: list[str], cwd: Path, cache: Path) -> tuple[int, str, str]:
    """`sftkit ARGS` through the console entry point in this process: (exit code, stdout, stderr).

    An exception other than SystemExit escaping `main` is what a user would see as a traceback; its
    text goes to the returned stderr, so the checks below see it the same way.
    """
    import datasets

    from sftkit.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    saved = sys.argv, os.getcwd(), datasets.config.HF_DATASETS_CACHE
    sys.argv, datasets.config.HF_DATASETS_CACHE = ["sftkit", *args], str(cache)
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception:  # noqa: BLE001 - a bug: recorded as the traceback a user would see
        stderr.write(traceback.format_exc())
        code = 1
    finally:
        sys.argv, _, datasets.config.HF_DATASETS_CACHE = saved
        os.chdir(saved[1])
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def outcomes(workdir: Path, tiny_model_dir: Path) -> dict[str, Outcome]:
    """Every case of the manifest, run once, in this process."""
    results = {}
    for case in MANIFEST:
        _, out = case_config(case, workdir, tiny_model_dir)
        code, stdout, stderr = run_in_process(case_args(case, workdir, tiny_model_dir), workdir, workdir / "hf-cache")
        results[case] = Outcome(code, stdout, stderr, out)
    return results


def test_manifest_and_corpus_agree() -> None:
    configs = {path.stem for path in (CORPUS / "configs").glob("*.yaml")}
    assert configs <= set(MANIFEST)
    assert all(
        case in configs or "${CONFIG}" not in str(entry.get("args", "${CONFIG}")) for case, entry in MANIFEST.items()
    )
    commands = ("train", "validate", "data export", "eval", "predict", "merge", "chat")
    assert all(entry["command"] in commands and entry["expect"] for entry in MANIFEST.values())
    assert all(entry.get("args", [entry["command"]])[0] == entry["command"].split()[0] for entry in MANIFEST.values())


@pytest.mark.parametrize("case", list(MANIFEST))
def test_bad_input_gives_one_line_per_problem_and_exit_2(
    case: str, outcomes: dict[str, Outcome], workdir: Path
) -> None:
    outcome = outcomes[case]
    assert outcome.returncode == 2, outcome.stderr[-2000:]
    assert "Traceback" not in outcome.stderr + outcome.stdout
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("error: ")]
    expected = MANIFEST[case]["expect"]
    assert len(errors) == len(expected), outcome.stderr[-2000:]
    for line, text in zip(errors, expected):
        assert text in line, line
        assert len(line) <= MAX_ERROR_LINE
    assert not outcome.output_dir.exists(), "something was written to output_dir"
    assert not (workdir / "pwned").exists()  # the YAML python tag never ran


@pytest.mark.integration
@pytest.mark.parametrize("case", ["malformed_jsonl", "several_problems_at_once", "lora_target_matches_nothing"])
def test_the_real_command_line_agrees(
    case: str, outcomes: dict[str, Outcome], workdir: Path, tiny_model_dir: Path
) -> None:
    """A subprocess through the installed entry point: the same exit code and error lines, no traceback."""
    result = run_sftkit(case_args(case, workdir, tiny_model_dir), workdir, workdir / "hf-cache-subprocess")
    assert result.returncode == outcomes[case].returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [line for line in outcomes[case].stderr.splitlines() if line.startswith("error: ")]


def test_output_dir_that_is_a_file_is_left_alone(outcomes: dict[str, Outcome], workdir: Path) -> None:
    assert outcomes["output_dir_is_a_file"].returncode == 2
    assert (workdir / "data" / "good.json").read_bytes() == (CORPUS / "data" / "good.json").read_bytes()


# ---------------------------------------------------------------------------- safety


def control_token_ids(tiny_model_dir: Path, template_name: str) -> dict[str, int]:
    """Ids of every special token of the tokenizer prepared for the template (what the export uses)."""
    from transformers import AutoTokenizer

    from sftkit.templates import get_template, prepare_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prepare_tokenizer(tokenizer, get_template(template_name))
    return {token.content: token_id for token_id, token in tokenizer.added_tokens_decoder.items() if token.special}


@pytest.fixture(scope="module")
def hostile_exports(workdir: Path, tiny_model_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """`sftkit data export` of a dataset whose content is full of control-token text, for both templates."""

    def export(template: str) -> list[dict[str, Any]]:
        config = workdir / f"hostile-{template}.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "model_name_or_path": str(tiny_model_dir),
                    "dataset": "hostile",
                    "dataset_dir": str(workdir / "data"),
                    "template": template,
                    "output_dir": str(workdir / "unused"),
                    "cutoff_len": 4096,
                }
            )
        )
        out = workdir / f"hostile-{template}.jsonl"
        code, _, stderr = run_in_process(
            ["data", "export", str(config), "--out", str(out)], workdir, workdir / "hf-cache"
        )
        assert code == 0, stderr[-2000:]
        return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]

    return {template: export(template) for template in ("chatml", "ernie_nothink")}


def hostile_rows() -> list[list[dict[str, str]]]:
    lines = (CORPUS / "data" / "hostile.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["messages"] for line in lines]


def test_content_cannot_inject_chatml_control_tokens(hostile_exports: dict[str, Any], tiny_model_dir: Path) -> None:
    ids = control_token_ids(tiny_model_dir, "chatml")
    for row, messages in zip(hostile_exports["chatml"], hostile_rows()):
        counts = {token: row["input_ids"].count(token_id) for token, token_id in ids.items()}
        # exactly one <|im_start|> ... <|im_end|> pair per message; <s>, </s>, <pad> never appear
        assert counts == {token: len(messages) if token in ("<|im_start|>", "<|im_end|>") else 0 for token in ids}


def test_content_cannot_inject_ernie_control_tokens(hostile_exports: dict[str, Any], tiny_model_dir: Path) -> None:
    ids = control_token_ids(tiny_model_dir, "ernie_nothink")
    for row, messages in zip(hostile_exports["ernie_nothink"], hostile_rows()):
        replies = sum(message["role"] == "assistant" for message in messages)
        expected = {"<|begin_of_sentence|>": 1, "<|end_of_sentence|>": replies}
        counts = {token: row["input_ids"].count(token_id) for token, token_id in ids.items()}
        assert counts == {token: expected.get(token, 0) for token in ids}


def test_trust_remote_code_is_passed_only_when_the_config_sets_it(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftkit.config import validate_config
    from sftkit.data import load_tokenizer
    from sftkit.model import Precision, load_model

    seen: list[tuple[str, Any]] = []
    for cls in (AutoModelForCausalLM, AutoTokenizer):
        original = cls.from_pretrained.__func__

        def spy(klass: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            seen.append((klass.__name__, kwargs.get("trust_remote_code", False)))
            kwargs.pop("trust_remote_code", None)  # the tiny model has no remote code to trust
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    for trusted in (False, True):
        cfg = validate_config(
            {
                "model_name_or_path": str(tiny_model_dir),
                "dataset": "d",
                "output_dir": "o",
                "template": "chatml",
                **({"trust_remote_code": True} if trusted else {}),
            }
        )
        load_model(cfg, load_tokenizer(cfg), Precision("float32", "cpu", "fp32"))
        assert seen == [("AutoTokenizer", trusted), ("AutoModelForCausalLM", trusted)]
        seen.clear()


def test_model_weights_are_read_from_safetensors_only(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A model folder holding only a pickled pytorch_model.bin is refused, never unpickled."""
    import torch
    from safetensors.torch import load_file

    from sftkit.chat import load_for_inference
    from sftkit.config import validate_config
    from sftkit.data import load_tokenizer
    from sftkit.errors import SftkitError
    from sftkit.model import Precision, load_model

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    cfg = validate_config({"model_name_or_path": str(pickled), "dataset": "d", "output_dir": "o", "template": "chatml"})
    with pytest.raises(SftkitError, match="model_name_or_path: cannot load the model"):
        load_model(cfg, load_tokenizer(cfg), Precision("float32", "cpu", "fp32"))
    with pytest.raises(SftkitError, match="cannot load a causal LM"):  # `sftkit chat` / `eval` loading
        load_for_inference(str(pickled))


def test_yaml_is_read_with_a_safe_loader(tmp_path: Path) -> None:
    from sftkit.config import load_config
    from sftkit.errors import ConfigError

    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: !!python/object/apply:os.mkdir [{str(tmp_path / 'made')!r}]\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(config)
    assert not (tmp_path / "made").exists()


def test_file_name_resolves_inside_dataset_dir_unless_absolute(workdir: Path) -> None:
    from sftkit.config import validate_config
    from sftkit.data import validate_data
    from sftkit.errors import DataError

    data = workdir / "data"
    cfg = validate_config(
        {"model_name_or_path": "m", "dataset": "outside_dataset_dir", "dataset_dir": str(data), "output_dir": "o"}
    )
    with pytest.raises(DataError, match="points outside"):  # even though ../secrets.json exists
        validate_data(cfg)
    registry = workdir / "absolute"
    registry.mkdir(exist_ok=True)
    (registry / "dataset_info.json").write_text(json.dumps({"abs": {"file_name": str(data / "good.json")}}))
    cfg = validate_config(
        {"model_name_or_path": "m", "dataset": "abs", "dataset_dir": str(registry), "output_dir": "o"}
    )
    assert validate_data(cfg) == "1 dataset, 4 rows"


# ---------------------------------------------------------------------------- round two: what sftkit writes
# Every command that writes or replaces a file or folder follows one rule (run_dir: check_new_output,
# check_new_folder, check_writable_into): what it did not write is never replaced or truncated, and the place
# is checked before any slow work. Each case: one `error:` line, exit 2, every byte of the foreign file kept.


def one_error(code: int, err: str, *words: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert all(word in errors[0] for word in words), errors[0]
    return errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


ALPACA = [{"instruction": f"Task {i}", "input": "", "output": f"Answer {i}"} for i in range(3)]


def test_generate_never_truncates_a_file_it_did_not_write(tmp_path: Path, monkeypatch, capsys) -> None:
    from helpers import run_cli

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(row) + "\n" for row in ALPACA))
    foreign = tmp_path / "notes.jsonl"
    foreign.write_text('{"text": "my own rows"}\n{"text": "and more"}')  # another layout, no final newline
    url = ["--base-url", "http://127.0.0.1:9/v1", "--model", "m"]  # nothing listens: no request may be needed
    for out, words in (
        (seeds, ["is also an input"]),
        (foreign, ["line 1 is not a row", "choose a new --out"]),
        (tmp_path / "notes.jsonl" / "x.jsonl", ["is a file"]),
    ):
        before = snapshot(tmp_path)
        code, _, err = run_cli(["data", "generate", str(seeds), "--out", str(out), *url], monkeypatch, capsys)
        one_error(code, err, *words)
        assert snapshot(tmp_path) == before


def test_generate_keeps_a_registry_name_that_names_another_file(tmp_path: Path, monkeypatch, capsys) -> None:
    from helpers import run_cli

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(row) + "\n" for row in ALPACA))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"gen": {"file_name": "curated.json"}}))
    before = snapshot(tmp_path)
    code, _, err = run_cli(
        [
            "data",
            "generate",
            str(seeds),
            "--out",
            str(tmp_path / "gen.jsonl"),
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--model",
            "m",
        ],
        monkeypatch,
        capsys,
    )
    one_error(code, err, "'gen' names another file (curated.json)", "--name")
    assert snapshot(tmp_path) == before


def test_generate_resumes_its_own_rows_and_keeps_a_complete_last_row(tmp_path: Path) -> None:
    from sftkit.data.quality.generate import check_out, resume_rows

    out = tmp_path / "gen.jsonl"
    out.write_text(json.dumps(ALPACA[0]) + "\n" + json.dumps(ALPACA[1]))  # the last row lacks only its newline
    check_out(tmp_path / "seeds.jsonl", out, "gen")
    assert len(resume_rows(out)) == 2 and out.read_text().endswith("}")  # nothing truncated
    out.write_text(json.dumps(ALPACA[0]) + "\n" + '{"instruction": "cut sh')  # a killed run's half line
    assert len(resume_rows(out)) == 1 and out.read_text() == json.dumps(ALPACA[0]) + "\n"


def test_ollama_overwrite_needs_a_folder_sftkit_exported(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from helpers import run_cli

    models = tmp_path / "models"
    models.mkdir()
    (models / "llama-3-8b.Q4_K_M.gguf").write_bytes(b"GGUF my model")
    (models / "mistral.gguf").write_bytes(b"GGUF another")
    other = tmp_path / "theirs"
    other.mkdir()
    (other / "model.gguf").write_bytes(b"GGUF")
    (other / "Modelfile").write_text("FROM ./model.gguf\n")  # a Modelfile, not sftkit's
    for folder in (models, other):
        before = snapshot(folder)
        code, _, err = run_cli(
            ["export", str(tiny_model_dir), "--format", "ollama", "--no-verify", "--out", str(folder), "--overwrite"],
            monkeypatch,
            capsys,
        )
        one_error(code, err, "not an Ollama export", "no Modelfile written by `sftkit export`", "will not delete")
        assert snapshot(folder) == before


def test_report_and_cards_stay_out_of_a_base_model_folder(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from helpers import run_cli
    from sftkit.errors import SftkitError
    from sftkit.run_dir import update_card_evaluation

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    (base / "README.md").write_text("# The model's own card\n")
    before = snapshot(base)
    code, _, err = run_cli(["report", str(base)], monkeypatch, capsys)
    one_error(code, err, "holds no sftkit_config.yaml", "does not write the release checklist")
    with pytest.raises(SftkitError, match="not a folder sftkit wrote"):
        update_card_evaluation(base)
    assert snapshot(base) == before


def test_atomic_files_keep_the_umask_mode(tmp_path: Path) -> None:
    from sftkit.atomic import write_json, write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "card.md", "x")
        os.umask(0o007)
        write_json(tmp_path / "metrics.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "card.md").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o660


def rating_sheet(tmp_path: Path) -> Path:
    from sftkit.evaluate.ratings import write_sheet

    sheet = tmp_path / "sheet.csv"
    write_sheet(sheet, ["p0", "p1"], {"m1": ["a0", "a1"], "m2": ["b0", "b1"]})
    return sheet


def filled(sheet: Path, rows: list[int]) -> str:
    import csv

    with sheet.open(newline="") as handle:
        original = list(csv.DictReader(handle))
    lines = [",".join(original[0])]
    for i in rows:
        row = (
            original[i]
            | {f"{d}_{s}": "4" for d in ("helpfulness", "accuracy", "clarity", "safety") for s in "ab"}
            | {"preferred": "a", "rater": "ann"}
        )
        lines.append(",".join(f'"{v}"' for v in row.values()))
    return "\n".join(lines) + "\n"


def test_ratings_refuse_a_pasted_duplicate_row_and_a_windows_1252_sheet(tmp_path: Path, monkeypatch, capsys) -> None:
    from helpers import run_cli

    sheet = rating_sheet(tmp_path)
    dup = tmp_path / "dup.csv"
    dup.write_text(filled(sheet, [0, 1, 0]))
    code, _, err = run_cli(
        ["eval", "--ratings", str(dup), "--key", str(tmp_path / "sheet.key.json")], monkeypatch, capsys
    )
    one_error(code, err, "dup.csv row 3", "already rated id '0' (", "row 1)")
    cp1252 = tmp_path / "cp1252.csv"
    cp1252.write_bytes(filled(sheet, [0]).replace('"p0"', '"caf\u00e9 \u2013 p0"').encode("cp1252"))
    code, _, err = run_cli(
        ["eval", "--ratings", str(cp1252), "--key", str(tmp_path / "sheet.key.json")], monkeypatch, capsys
    )
    one_error(code, err, "not UTF-8", "Windows-1252", "CSV UTF-8")
    assert not list(tmp_path.glob("*.summary.json"))


def test_ratings_read_a_cell_past_csvs_default_limit(tmp_path: Path) -> None:
    from sftkit.evaluate.ratings import read_ratings

    sheet = rating_sheet(tmp_path)
    big = tmp_path / "big.csv"
    big.write_text(filled(sheet, [0]).replace('"a0"', '"' + "x" * 200_000 + '"'))  # the data readers' limit
    assert read_ratings([big], key=tmp_path / "sheet.key.json")["ratings"] == 1


@pytest.mark.parametrize("command", ["clean", "stats"])
def test_data_clean_and_stats_refuse_a_bad_out_before_the_work(
    command: str, bundled_data: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from helpers import run_cli

    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": "no/such-model",
                "dataset": "alpaca_en_demo",
                "dataset_dir": str(bundled_data),
                "template": "chatml",
                "output_dir": "o",
            }
        )
    )
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    code, _, err = run_cli(["data", command, str(config), "--out", str(blocker / "out")], monkeypatch, capsys)
    one_error(code, err, "is a file, so", "cannot be created under it")  # before the model's tokenizer loads
    assert blocker.read_text() == "mine"


# ---------------------------------------------------------------------------- round two: the server
# A hostile request gets a 4xx naming the limit, and the next request is answered at once.


@pytest.fixture(scope="module")
def serve_client(tiny_model_dir: Path):
    from fastapi.testclient import TestClient

    from sftkit.model import load_for_inference
    from sftkit.serve import build_app
    from sftkit.serve.engine import Engine, TransformersBackend

    backend = TransformersBackend(load_for_inference(str(tiny_model_dir)))
    with TestClient(
        build_app(Engine(backend, 4), "tiny", max_body_bytes=200_000), raise_server_exceptions=False
    ) as client:
        yield client


HI = [{"role": "user", "content": "Hi"}]
HOSTILE_REQUESTS = [
    ({"messages": [{"role": "user", "content": "x" * 150_000}]}, 400, "characters, more than"),  # no rendering
    ({"messages": HI, "stop": "y" * 400_000}, 413, "larger than this server's limit"),
    ({"messages": HI, "stop": "y" * 5_000}, 400, "at most 256 characters"),
    ({"messages": HI, "stop": ["a", "b", "c", "d", "e"]}, 400, "1 to 4 stop sequences (got a list of 5)"),
    ({"messages": HI, "stop": ["a", 7]}, 400, "item 1 of the list must be a string"),
    ({"messages": HI, "seed": 2**32}, 400, "seed: must be a whole number in 0..4294967295"),
    ({"messages": HI, "seed": -1}, 400, "seed: must be a whole number in 0..4294967295"),
    ({"messages": [{"role": "user", "content": "a\ud800b"}]}, 400, "lone surrogate"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]}, 400, "lone surrogate"),
]


@pytest.mark.parametrize(("body", "status", "words"), HOSTILE_REQUESTS, ids=[w for _, _, w in HOSTILE_REQUESTS])
def test_hostile_requests_get_a_4xx_and_the_next_one_is_answered(
    serve_client, body: dict, status: int, words: str
) -> None:
    import time

    raw = json.dumps({"max_tokens": 2, "temperature": 0} | body).encode()  # json keeps \ud800 as an escape
    response = serve_client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == status and words in response.json()["error"]["message"], response.text
    start = time.perf_counter()
    assert serve_client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 2}).status_code == 200
    assert time.perf_counter() - start < 10


def test_completion_list_limits_are_named(serve_client) -> None:
    for body, words in (
        ({"prompt": ["a"] * 65}, "a list of 1 to 64 prompts (got a list of 65)"),
        ({"prompt": []}, "a list of 1 to 64 prompts (got a list of 0)"),
        ({"prompt": "\ud800"}, "prompt: holds a lone surrogate"),
        ({"prompt": 5}, "prompt: must be a string"),
    ):
        response = serve_client.post(
            "/v1/completions", content=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )
        assert response.status_code == 400 and words in response.json()["error"]["message"], response.text


def test_stop_matching_looks_at_a_bounded_window() -> None:
    from sftkit.serve.engine import _held, first_stop

    text = "a" * 1_000_000 + "STOP"
    assert first_stop(text, ["STOP"], start=len(text) - 300) == 1_000_000
    assert _held("a" * 1_000_000 + "ST", ["STOP", "x" * 256]) == 2


def test_empty_api_key_fails_closed(tiny_model_dir: Path, monkeypatch, capsys) -> None:
    from helpers import run_cli

    for key in ("", "  "):
        code, _, err = run_cli(["serve", str(tiny_model_dir), "--api-key", key], monkeypatch, capsys)
        one_error(code, err, "--api-key is empty", "leave out --api-key")
        assert "note: template" not in err  # before the model loads


def test_the_port_is_held_from_the_check_to_the_server(tiny_model_dir: Path, monkeypatch, capsys) -> None:
    from helpers import run_cli
    from sftkit.serve import hold_listening

    held = hold_listening("127.0.0.1", 0)
    try:
        port = str(held.getsockname()[1])
        code, _, err = run_cli(["serve", str(tiny_model_dir), "--port", port], monkeypatch, capsys)
        one_error(code, err, f"--port {port}: cannot listen there")
    finally:
        held.close()


def test_a_half_sent_body_times_out_and_an_oversized_one_is_refused_unread() -> None:
    import asyncio

    from sftkit.serve.app import BodyLimit

    async def app(scope, receive, send) -> None:  # never reached by these requests
        raise AssertionError("the app saw the request")

    async def run(messages: list[dict], headers: list) -> list[dict]:
        sent: list[dict] = []
        queue: asyncio.Queue = asyncio.Queue()
        for message in messages:
            queue.put_nowait(message)

        async def send(message: dict) -> None:
            sent.append(message)

        limit = BodyLimit(app, max_bytes=100, timeout=0.2)
        await asyncio.wait_for(limit({"type": "http", "headers": headers}, queue.get, send), 5)
        return sent

    stalled = asyncio.run(run([{"type": "http.request", "body": b"{", "more_body": True}], []))
    assert stalled[0]["status"] == 408
    declared = asyncio.run(run([], [(b"content-length", b"1000000")]))
    assert declared[0]["status"] == 413


# ---------------------------------------------------------------------------- round two: endpoints
# An endpoint's answer is checked for its shape before anything uses or caches it; a slow one is named while
# sftkit waits, and given up on after --timeout.


def odd_endpoint_app(content: Any, delay: float = 0.0) -> Any:
    import asyncio

    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def complete(body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(delay)
        choices = (
            []
            if content == "no choices"
            else [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]
        )
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": choices}

    return app


@pytest.mark.parametrize("content", ["no choices", 7, None, ["[[8]]"]])
def test_a_judge_answer_without_text_is_one_line_and_not_cached(content: Any, tmp_path: Path) -> None:
    from test_judge import serve

    from sftkit.errors import SftkitError
    from sftkit.evaluate.judge import Judge

    for url in serve(odd_endpoint_app(content)):
        cache = tmp_path / "cache.jsonl"
        with pytest.raises(SftkitError, match="the judge's answer has no text") as raised:
            Judge(url, "m", cache).grade("Q?", "A.")
        assert "\n" not in str(raised.value)
        assert not cache.exists() or cache.read_text() == ""


def test_generate_counts_an_answer_without_text_as_malformed(tmp_path: Path) -> None:
    from test_judge import serve

    from sftkit.data.quality.generate import GenerateSettings, generate
    from sftkit.errors import SftkitError

    for url in serve(odd_endpoint_app(7)):
        settings = GenerateSettings(base_url=url, model="m", rows=1, attempts=1, backoff=0.0, max_retries=0)
        with pytest.raises(SftkitError, match="no text"):
            generate(ALPACA, tmp_path / "gen.jsonl", settings)


def test_a_silent_endpoint_is_named_while_waiting_and_given_up_on(tmp_path: Path, monkeypatch, capsys) -> None:
    import time

    from test_judge import serve

    from sftkit.data.quality import endpoint
    from sftkit.errors import SftkitError
    from sftkit.evaluate.judge import Judge

    monkeypatch.setattr(endpoint, "WAIT_LINE_S", 0.2)
    for url in serve(odd_endpoint_app("[[8]]", delay=4)):
        start = time.perf_counter()
        with pytest.raises(SftkitError, match=r"no answer within --judge-timeout 0.6 s \(2 tries\)"):
            Judge(url, "m", tmp_path / "cache.jsonl", timeout=0.6).grade("Q?", "A.")
        assert time.perf_counter() - start < 10
    assert "waiting for the endpoint" in capsys.readouterr().err


# ---------------------------------------------------------------------------- round two: the same text everywhere


def test_a_task_yaml_that_does_not_parse_is_named(tmp_path: Path) -> None:
    pytest.importorskip("lm_eval")
    from sftkit.errors import SftkitError
    from sftkit.evaluate.benchmarks import task_plan

    (tmp_path / "fine.yaml").write_text("task: fine_task\ndataset_path: json\noutput_type: multiple_choice\n")
    (tmp_path / "mine.yaml").write_text("task: my_task\n  dataset_path: [unclosed\n")
    with pytest.raises(SftkitError, match=r"mine.yaml: lm-eval cannot read this task YAML .*--tasks my_task"):
        task_plan(["my_task"], tmp_path, "auto")


def test_rendering_budget_stops_nested_loops_and_spares_real_templates() -> None:
    import time

    import jinja2

    from sftkit.templates.jinja import RenderBudgetExceeded, render_budget

    loops = jinja2.Environment().from_string(
        "{% for a in range(10**5) %}{% for b in range(10**5) %}{% endfor %}{% endfor %}"
    )
    start = time.perf_counter()
    with pytest.raises(RenderBudgetExceeded, match="more than 100,000 steps"), render_budget(steps=100_000):
        loops.render()
    assert time.perf_counter() - start < 5
    with pytest.raises(RenderBudgetExceeded, match="more than 0.2 s"), render_budget(seconds=0.2):
        loops.render()
    chat = jinja2.Environment().from_string("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}")
    with render_budget(steps=100_000):  # a thousand messages are far inside the budget
        assert chat.render(messages=[{"role": "user", "content": "hi"}] * 1000).count("user: hi") == 1000
    assert sys.gettrace() is None  # the tracer is gone afterwards


@pytest.mark.integration
def test_benchmarks_on_a_lora_run_are_one_line(tiny_model_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    pytest.importorskip("lm_eval")
    from test_merge import make_lora_run

    from helpers import run_cli

    run = make_lora_run(tiny_model_dir, tmp_path / "run")
    code, _, err = run_cli(["eval", str(run), "--tasks", "sftkit_mc", "--limit", "2"], monkeypatch, capsys)
    if code == 0:
        return  # the harness scores the run as it is (the run is merged in memory): nothing to refuse
    one_error(code, err, "--tasks")
