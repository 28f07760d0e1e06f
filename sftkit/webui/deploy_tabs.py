"""The Chat and Export tabs: talking to the trained model beside its base, and merge / export / serve.

Chat runs in the page's process (streamed, greedy by default, as `sftkit chat` answers); merge, export and serve
are `sftkit` commands started as the page's jobs. Each action shows its terminal command.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import gradio as gr

from sftkit.model import GenerationSettings
from sftkit.webui import chat, words
from sftkit.webui.jobs import Jobs
from sftkit.webui.shown import said

# ---------------------------------------------------------------------------- chat


def model_choices(runs_root: str) -> list[str]:
    """The runs under `runs_root` (newest first), each followed by its checkpoints and merged model."""
    from pathlib import Path

    from sftkit.webui.runs import run_folders

    choices: list[str] = []
    for run in run_folders(Path(runs_root)):
        choices.append(str(run))
        checkpoints = sorted(
            run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else 0
        )
        choices += [str(p) for p in checkpoints if p.is_dir()]
        if (run / "merged" / "config.json").is_file():
            choices.append(str(run / "merged"))
    return choices


def _model_list(runs_root: str, elem_id: str, label: str) -> tuple[Any, Any]:
    """A dropdown of the runs and checkpoints (a path of one's own can be typed too), and its refresh button."""
    with gr.Row():
        choices = model_choices(runs_root)
        dropdown = gr.Dropdown(
            choices,
            value=choices[0] if choices else None,
            allow_custom_value=True,
            label=label,
            elem_id=elem_id,
            scale=4,
        )
        refresh = gr.Button("↻ runs", elem_id=f"{elem_id}-refresh", scale=0, min_width=80)

    def listed(current: str | None) -> Any:
        found = model_choices(runs_root)
        return gr.update(choices=found, value=current if current in found else (found[0] if found else current))

    refresh.click(listed, dropdown, dropdown)
    return dropdown, refresh


def chat_tab(runs_root: str, model: str, labelled: list[tuple[Any, str, str]]) -> Any:
    """The trained model (left) and its base (right) answering the same conversation. Returns the base field
    (the form's model path fills it)."""
    with gr.Row():
        trained, _ = _model_list(
            runs_root, "chat-trained", "trained model: a run, one of its checkpoints, or a merged model"
        )
        base = gr.Textbox(value=model, label="base model (side by side; empty: none)", elem_id="chat-base")
    with gr.Row():
        system = gr.Textbox(
            label="system prompt (empty: the run's default_system, as in training)", elem_id="chat-system"
        )
        max_new = gr.Number(value=64, precision=0, label="max new tokens", elem_id="chat-max-new-tokens")
        temperature = gr.Number(value=0.0, label="temperature (0: greedy)", elem_id="chat-temperature")
    with gr.Row():
        left = gr.Chatbot(label="trained", render_markdown=False, elem_id="chat-left")
        right = gr.Chatbot(label="base", render_markdown=False, elem_id="chat-right")
    with gr.Row():
        message = gr.Textbox(label="message", scale=4, elem_id="chat-message")
        send = gr.Button(words.word("chat-send"), variant="primary", elem_id="chat-send")
        clear = gr.Button("New conversation", elem_id="chat-clear")
        unload = gr.Button(words.word("chat-unload"), elem_id="chat-unload")
    labelled += [(send, "button", "chat-send"), (unload, "button", "chat-unload")]
    command_line = gr.Markdown(elem_id="chat-command")

    def answer(
        trained_path: str | None,
        base_path: str,
        system_text: str,
        tokens: float,
        temp: float,
        text: str,
        history_left: list[dict[str, Any]],
        history_right: list[dict[str, Any]],
    ) -> Any:
        generation = GenerationSettings(max_new_tokens=int(tokens or 64), temperature=float(temp or 0))
        if generation.problems() or not text.strip():
            raise gr.Error("\n".join(generation.problems()) or "type a message first")
        histories = [list(history_left or []), list(history_right or [])]
        paths = [(trained_path or "").strip(), (base_path or "").strip()]
        for side, path in enumerate(paths):
            if not path:
                continue
            histories[side] = histories[side] + [
                {"role": "user", "content": text},
                {"role": "assistant", "content": ""},
            ]
            try:
                system_used = system_text.strip() or (chat.default_system(path) if side == 0 else None) or None
                messages = chat.conversation(system_used, histories[side][:-2], text)
                for reply in chat.stream_reply(path, messages, generation):
                    histories[side][-1] = {"role": "assistant", "content": reply}
                    yield histories[0], histories[1], ""
            except Exception as exc:  # noqa: BLE001 - the user's model path: one line, in that model's pane only
                histories[side][-1] = {"role": "assistant", "content": f"error: {chat.one_line(exc)}"}
                yield histories[0], histories[1], ""
        yield (
            histories[0],
            histories[1],
            said(chat.chat_command(paths[0], system_text.strip() or None, text, generation)),
        )

    inputs = [trained, base, system, max_new, temperature, message, left, right]
    send.click(answer, inputs, [left, right, command_line])
    message.submit(answer, inputs, [left, right, command_line])
    clear.click(lambda: ([], [], ""), None, [left, right, command_line])
    unload.click(lambda: chat.unload(), None, command_line)
    return base


# ---------------------------------------------------------------------------- evaluate & predict


def eval_tab(runs_root: str, config_dir: Path, jobs: Jobs, labelled: list[tuple[Any, str, str]]) -> None:
    """`sftkit eval` (loss and perplexity on the eval split) and `sftkit predict` (answers scored with BLEU and
    ROUGE) on a run, as the page's jobs; their result files are shown when they finish."""
    model, _ = _model_list(runs_root, "eval-model", "model to score: a run, a checkpoint or a merged model")
    with gr.Row():
        split = gr.Dropdown(["eval", "train"], value="eval", label="split", elem_id="eval-split")
        prompts = gr.Number(value=8, precision=0, label="prompts to answer (predict -n)", elem_id="predict-n")
        tokens = gr.Number(value=32, precision=0, label="max new tokens (predict)", elem_id="predict-max-new-tokens")
    with gr.Row():
        evaluate = gr.Button(words.word("eval-button"), variant="primary", elem_id="eval-button")
        predict = gr.Button(words.word("predict-button"), elem_id="predict-button")
    labelled += [(evaluate, "button", "eval-button"), (predict, "button", "predict-button")]
    command_line = gr.Markdown(elem_id="eval-command")
    state = gr.Markdown(elem_id="eval-state")
    result = gr.Code(language="json", label="result (the file the command wrote)", elem_id="eval-result")
    log = gr.Textbox(label="log (newest lines)", lines=10, max_lines=10, elem_id="eval-log")
    timer = gr.Timer(1.0, active=False)
    written: dict[str, Path] = {}

    def started(path: str | None, args: list[str], out: Path) -> list[Any]:
        path = (path or "").strip()
        if not path or path.startswith("-"):
            raise gr.Error("choose a run (or write its folder; a name cannot start with '-')")
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            job = jobs.start("eval", *args)
        except RuntimeError as exc:
            raise gr.Error(str(exc)) from None
        written["eval"] = out
        return [f"{said(job.command)}: writes `{out}` (log `{job.log}`)", gr.Timer(active=True)]

    def scored(path: str | None, which: str) -> list[Any]:
        out = config_dir / "eval" / f"eval_{_stamp(path)}_{which}.json"
        return started(path, ["eval", (path or "").strip(), "--split", which, "--out", str(out)], out)

    def predicted(path: str | None, which: str, n: float | None, new_tokens: float | None) -> list[Any]:
        out = config_dir / "eval" / f"predict_{_stamp(path)}_{which}.jsonl"
        return started(
            path,
            [
                "predict",
                (path or "").strip(),
                "--split",
                which,
                "-n",
                str(int(n or 8)),
                "--max-new-tokens",
                str(int(new_tokens or 32)),
                "--out",
                str(out),
            ],
            out,
        )

    evaluate.click(scored, [model, split], [command_line, timer])
    predict.click(predicted, [model, split, prompts, tokens], [command_line, timer])

    def refresh() -> list[Any]:
        job = jobs.get("eval")
        if job is None:
            return [gr.update(), gr.update(), gr.update(), gr.Timer(active=False)]
        out = written.get("eval")
        shown = _result_text(out) if out is not None and not job.running() else ""
        return [f"**eval**: {job.state()}: `{job.command}`", shown, job.log_tail(), gr.Timer(active=job.running())]

    timer.tick(refresh, None, [state, result, log, timer])


def _stamp(path: str | None) -> str:
    import time
    from pathlib import Path as P

    return f"{P((path or 'model').strip()).name}_{time.strftime('%Y%m%d-%H%M%S')}"


def _result_text(out: Path) -> str:
    """What eval or predict wrote: the JSON, or predict's scores and its first rows (a JSONL file)."""
    if not out.is_file():
        return f"(no {out}: see the log)"
    text = out.read_text(encoding="utf-8", errors="replace")
    if out.suffix == ".jsonl":
        scores = out.with_name(out.stem + "_scores.json")
        head = "\n".join(text.splitlines()[:5])
        found = sorted(p.name for p in out.parent.glob(out.stem + "*") if p != out)
        return f"// {out} (first 5 rows); beside it: {', '.join(found) or 'nothing'}\n{head}" + (
            f"\n// {scores}\n{scores.read_text(encoding='utf-8')}" if scores.is_file() else ""
        )
    return text[:20_000]


# ---------------------------------------------------------------------------- export


def export_tab(runs_root: str, jobs: Jobs) -> None:
    """Merge, GGUF and Ollama export, and serving, each as the `sftkit` command it shows."""
    model, _ = _model_list(runs_root, "export-model", "run directory (or merged model)")
    with gr.Row():
        out = gr.Textbox(
            label="output (--out; empty: the command's default: RUN/merged, RUN/model-F16.gguf, ...)",
            elem_id="export-out",
        )
        overwrite = gr.Checkbox(False, label="--overwrite", elem_id="export-overwrite")
        verify = gr.Checkbox(
            True, label="check the GGUF file with llama.cpp (off: --no-verify)", elem_id="export-verify"
        )
        outtype = gr.Dropdown(
            ["f16", "bf16", "f32", "q8_0", "q6_k", "q5_k_m", "q4_k_m"],
            value="f16",
            label="GGUF weight type",
            elem_id="export-outtype",
        )
        port = gr.Number(value=8000, precision=0, label="serve port", elem_id="serve-port")
    with gr.Row():
        merge = gr.Button("Merge", elem_id="merge-button")
        gguf = gr.Button("Export GGUF", elem_id="gguf-button")
        ollama = gr.Button("Export Ollama", elem_id="ollama-button")
        serve = gr.Button("Serve (OpenAI API)", elem_id="serve-button")
        stop = gr.Button("Stop server", variant="stop", elem_id="serve-stop")
    command_line = gr.Markdown(elem_id="export-command")
    state = gr.Markdown(elem_id="export-state")
    log = gr.Textbox(label="log (newest lines)", lines=12, max_lines=12, elem_id="export-log")
    timer = gr.Timer(1.0, active=False)

    def named(text: str | None, what: str) -> str:
        text = (text or "").strip()
        if text.startswith("-"):  # it goes to the command as an argument: it must not read as an option
            raise gr.Error(f"{what} {text!r}: a name cannot start with '-'; write ./{text}")
        return text

    def started(kind: str, path: str | None, target: str | None, *args: str) -> list[Any]:
        if not named(path, "model"):
            raise gr.Error("name the run directory or merged model first")
        where = named(target, "output")
        try:
            job = jobs.start(kind, *args, *(["--out", where] if where else []))
        except RuntimeError as exc:
            raise gr.Error(str(exc)) from None
        wrote = f": writes `{where}`" if where else ": writes to the command's default place (its log names it)"
        return [f"{said(job.command)}{wrote if kind == 'export' else ''} (log `{job.log}`)", gr.Timer(active=True)]

    def merged(path: str, target: str, replace: bool) -> list[Any]:
        return started("export", path, target, "merge", (path or "").strip(), *(["--overwrite"] if replace else []))

    def exported(fmt: str) -> Any:
        def run(path: str, target: str, replace: bool, check: bool, weights: str) -> list[Any]:
            return started(
                "export",
                path,
                target,
                "export",
                (path or "").strip(),
                "--format",
                fmt,
                "--outtype",
                weights,
                *(["--overwrite"] if replace else []),
                *([] if check else ["--no-verify"]),
            )

        return run

    def served(path: str, number: float | None) -> list[Any]:
        if number is None or not 1 <= int(number) <= 65535:
            raise gr.Error("serve port: a TCP port, 1 to 65535")
        shown = started("serve", path, None, "serve", (path or "").strip(), "--port", str(int(number)))
        return [shown[0] + f" (then http://127.0.0.1:{int(number)}/v1)", shown[1]]

    merge.click(merged, [model, out, overwrite], [command_line, timer])
    gguf.click(exported("gguf"), [model, out, overwrite, verify, outtype], [command_line, timer])
    ollama.click(exported("ollama"), [model, out, overwrite, verify, outtype], [command_line, timer])
    serve.click(served, [model, port], [command_line, timer])

    def stop_server() -> str:
        job = jobs.get("serve")
        if job is None or not job.running():
            raise gr.Error("no server of this page is running")
        job.stop(signal.SIGTERM)
        return f"server stopping (SIGTERM) {said(f'kill {job.process.pid}')}"

    stop.click(stop_server, None, command_line)

    def refresh() -> list[Any]:
        lines = [
            f"**{kind}**: {job.state()}: `{job.command}`"
            for kind in ("export", "serve")
            if (job := jobs.get(kind)) is not None
        ]
        shown = jobs.newest("export", "serve")
        busy = any(job is not None and job.running() for job in (jobs.get("export"), jobs.get("serve")))
        return ["\n\n".join(lines), shown.log_tail() if shown is not None else "", gr.Timer(active=busy)]

    timer.tick(refresh, None, [state, log, timer])
