"""`sftkit export MODEL --format gguf|ollama`: a verified GGUF file (and an Ollama Modelfile) for llama.cpp.

MODEL is a LoRA run directory (its adapter is folded into the base in memory, checked as `sftkit merge`
checks it), a merged or fully fine-tuned folder, or a base model. The GGUF file is written under a staging
name, loaded by llama.cpp and compared with the transformers model (verify.py), and only then renamed into
place: a file that fails the check is never left at --out. Arguments, the architecture and the output
place are checked before any weights load.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from sftkit.atomic import discard_stale_staging, staged_dir, staged_file, write_text
from sftkit.data.model_source import resolve_model
from sftkit.errors import SftkitError
from sftkit.export.convert import OUTTYPES, check_architecture, check_converter, write_gguf
from sftkit.export.ollama import MODELFILE, is_ollama_modelfile, modelfile, template_problem
from sftkit.export.verify import Report, llama_cpp_available, verify
from sftkit.merge import merge_in_memory
from sftkit.model import Loaded, load_for_inference
from sftkit.run_dir import check_new_folder, check_new_output, has_adapter, has_run_config, read_run_config

FORMATS = ("gguf", "ollama")
LLAMA_CPP_HINT = "run scripts/setup.sh (it builds llama-cpp-python: pip install 'sftkit[gguf]')"


def export(
    model: str,
    fmt: str = "gguf",
    out: str | Path | None = None,
    outtype: str = "f16",
    overwrite: bool = False,
    check: bool = True,
) -> Path:
    """Exports MODEL to a GGUF file (`fmt` gguf) or a folder with the GGUF file and a Modelfile (`fmt` ollama).

    Args:
        model: run directory, merged model directory, or base model path / hub id.
        fmt: gguf or ollama.
        out: the .gguf file (gguf) or the folder (ollama); default beside MODEL, named after it and `outtype`.
        outtype: f32, f16, bf16 (llama.cpp's converter), or q8_0, q6_k, q5_k_m, q4_k_m (its quantizer, from f32).
        overwrite: replace an existing `out` (for ollama, only a folder an earlier export wrote).
        check: load the file with llama.cpp and compare logits and greedy tokens with transformers.

    Returns:
        The path written.

    Raises:
        SftkitError: bad arguments, an architecture llama.cpp's converter does not know, an output place that
            cannot be used, or an export that llama.cpp loads differently from transformers (then nothing is written).
    """
    _check_arguments(fmt, outtype, check)
    name = _check_model(model, fmt)
    out = _resolve_out(model, name, fmt, out, outtype, overwrite)
    discard_stale_staging(out)
    loaded = _load(model)
    if fmt == "ollama" and (problem := template_problem(loaded.template)):
        raise SftkitError(f"--format ollama: {problem}")
    gguf_name = out.name if fmt == "gguf" else f"{name}-{outtype}.gguf"
    if fmt == "gguf":
        with staged_file(out) as staging:  # `out` never holds an unverified file
            report = _write_checked(staging, loaded, outtype, name, check)
    else:
        with staged_dir(out) as staging:
            report = _write_checked(staging / gguf_name, loaded, outtype, name, check)
            write_text(
                staging / MODELFILE,
                modelfile(
                    loaded.template, gguf_name, _stop_tokens(loaded), _default_system(model, loaded), source=str(model)
                ),
            )
    _summary(model, name, out, fmt, outtype, gguf_name, report)
    return out


def _write_checked(path: Path, loaded: Loaded, outtype: str, name: str, check: bool) -> Report | None:
    # the HF folder and f32 file the converter and quantizer work from: beside the output (same disk), removed
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.work-", dir=path.parent) as work:
        for note in write_gguf(path, loaded, outtype, name, Path(work)):
            print(f"export: {note}", file=sys.stderr)
    return verify(path, loaded.model, loaded.tokenizer, loaded.template, outtype) if check else None


# ---------------------------------------------------------------------------- checks before any work


def _check_arguments(fmt: str, outtype: str, check: bool) -> None:
    if fmt not in FORMATS:
        raise SftkitError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if outtype not in OUTTYPES:
        raise SftkitError(f"--outtype {outtype!r}: use one of {', '.join(OUTTYPES)}")
    if (check or outtype not in ("f32", "f16", "bf16")) and not llama_cpp_available():
        why = "the export cannot be checked with llama.cpp" if check else f"llama.cpp's quantizer makes {outtype}"
        raise SftkitError(
            f"llama_cpp is not installed, so {why}; {LLAMA_CPP_HINT}"
            + (" or pass --no-verify to skip the check" if check else "")
        )
    check_converter()


def _check_model(model: str, fmt: str) -> str:
    """The model's architecture (from its config.json alone) and, for Ollama, its template kind; returns a name
    for the output."""
    from transformers import AutoConfig

    path = Path(model)
    if has_adapter(path):
        cfg = read_run_config(path)
        if fmt == "ollama" and cfg.template is None:
            raise SftkitError(
                f"--format ollama: {path} trained with a Jinja chat template (no `template:` in its "
                "config), which has no Ollama form sftkit writes; use --format gguf"
            )
        source = resolve_model(cfg.model_name_or_path)
        trust = cfg.trust_remote_code
    else:
        source, trust = resolve_model(model), False
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust)
    except (OSError, ValueError) as exc:
        raise SftkitError(f"{source}: cannot read its config.json ({str(exc).splitlines()[0]})") from None
    check_architecture(config)
    return (path.resolve().name if path.is_dir() else model.replace("/", "-")) or "model"


def _resolve_out(model: str, name: str, fmt: str, out: str | Path | None, outtype: str, overwrite: bool) -> Path:
    """--out, or beside the model folder (`NAME-OUTTYPE.gguf`, `NAME-ollama/`): never inside it."""
    path = Path(model)
    home = path.resolve().parent if path.is_dir() else Path.cwd()
    if fmt == "gguf":
        out = Path(out) if out is not None else home / f"{name}-{outtype}.gguf"
        if out.suffix != ".gguf":
            raise SftkitError(f"--out {out}: a GGUF file's name ends in .gguf")
        check_new_output(out, overwrite)
        return out
    out = Path(out) if out is not None else home / f"{name}-ollama"
    check_new_folder(out, path, f"the model folder {model}", overwrite, _not_an_ollama_export, "an Ollama export")
    return out


def _not_an_ollama_export(folder: Path) -> str | None:
    """None for a folder `export --format ollama` wrote: its Modelfile carries sftkit's header, and nothing but
    GGUF files lie beside it (a models folder of one's own holds *.gguf too, and --overwrite deletes them all)."""
    foreign = [
        entry.name
        for entry in sorted(folder.iterdir())
        if entry.is_dir() or (entry.name != MODELFILE and entry.suffix != ".gguf")
    ]
    if foreign:
        return f"it holds {foreign[0]}"
    if not is_ollama_modelfile(folder / MODELFILE):
        return f"it has no {MODELFILE} written by `sftkit export`"
    return None


# ---------------------------------------------------------------------------- loading


def _load(model: str) -> Loaded:
    """The model in fp32 on the CPU with its tokenizer and trained template; a run's adapter merged in."""
    import torch

    if has_adapter(Path(model)):
        return merge_in_memory(model)[0]
    loaded = load_for_inference(model)
    loaded.model = loaded.model.to(device="cpu", dtype=torch.float32)
    return loaded


def _stop_tokens(loaded: Loaded) -> list[str]:
    return loaded.tokenizer.convert_ids_to_tokens(loaded.template.stop_token_ids(loaded.tokenizer))


def _default_system(model: str, loaded: Loaded) -> str | None:
    """The system prompt training gave rows without one: the run's default_system, else the template's."""
    path = Path(model)
    cfg = loaded.cfg or (read_run_config(path) if has_run_config(path) else None)
    return (cfg.default_system if cfg is not None else None) or loaded.template.default_system


def _summary(model: str, name: str, out: Path, fmt: str, outtype: str, gguf_name: str, report: Report | None) -> None:
    gguf_path = out if fmt == "gguf" else out / gguf_name
    size = gguf_path.stat().st_size / 1e6
    checked = (
        f"checked by llama.cpp on {len(report.prompts)} prompts with an f16 KV cache: max logit difference "
        f"{report.worst:.2%} of the largest (limit {report.limit:.0%})"
        if report
        else "NOT checked (--no-verify)"
    )
    print(f"exported {model} to {out} ({outtype}, {size:.1f} MB; {checked})")
    print(
        f"next: llama-cli -m {gguf_path} -cnv" if fmt == "gguf" else f"next: ollama create {name} -f {out / MODELFILE}",
        file=sys.stderr,
    )
