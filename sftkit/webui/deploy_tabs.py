"""The Chat and Export tabs: talking to the trained model beside its base, and merge / export / serve.

Chat runs in the page's process (streamed, greedy by default, as `sftkit chat` answers); merge, export and serve
are `sftkit` commands started as the page's jobs. Each action shows its terminal command.
"""

from __future__ import annotations

import signal
from typing import Any

import gradio as gr

from sftkit.model import GenerationSettings
from sftkit.webui import chat
from sftkit.webui.jobs import Jobs
from sftkit.webui.shown import said


# ---------------------------------------------------------------------------- chat

def chat_tab(output_dir: str, model: str, fields: dict[str, Any]) -> None:
    """The trained model (left) and its base (right) answering the same conversation; the form's paths follow."""
    with gr.Row():
        trained = gr.Textbox(value=output_dir, label="trained model (run directory or merged model)",
                             elem_id="chat-trained")
        base = gr.Textbox(value=model, label="base model (side by side; empty: none)", elem_id="chat-base")
    with gr.Row():
        system = gr.Textbox(label="system prompt (empty: the run's default_system, as in training)",
                            elem_id="chat-system")
        max_new = gr.Number(value=64, precision=0, label="max new tokens", elem_id="chat-max-new-tokens")
        temperature = gr.Number(value=0.0, label="temperature (0: greedy)", elem_id="chat-temperature")
    with gr.Row():
        left = gr.Chatbot(label="trained", render_markdown=False, elem_id="chat-left")
        right = gr.Chatbot(label="base", render_markdown=False, elem_id="chat-right")
    with gr.Row():
        message = gr.Textbox(label="message", scale=4, elem_id="chat-message")
        send = gr.Button("Send", variant="primary", elem_id="chat-send")
        clear = gr.Button("New conversation", elem_id="chat-clear")
    command_line = gr.Markdown(elem_id="chat-command")

    fields["output_dir"].change(lambda v: v, fields["output_dir"], trained)
    fields["model_name_or_path"].change(lambda v: v, fields["model_name_or_path"], base)

    def answer(trained_path: str, base_path: str, system_text: str, tokens: float, temp: float, text: str,
               history_left: list[dict[str, Any]], history_right: list[dict[str, Any]]) -> Any:
        generation = GenerationSettings(max_new_tokens=int(tokens or 64), temperature=float(temp or 0))
        if generation.problems() or not text.strip():
            raise gr.Error("\n".join(generation.problems()) or "type a message first")
        histories = [list(history_left or []), list(history_right or [])]
        paths = [trained_path.strip(), base_path.strip()]
        for side, path in enumerate(paths):
            if not path:
                continue
            system_used = system_text.strip() or (chat.default_system(path) if side == 0 else None) or None
            messages = chat.conversation(system_used, histories[side], text)
            histories[side] = histories[side] + [{"role": "user", "content": text}, {"role": "assistant",
                                                                                      "content": ""}]
            try:
                for reply in chat.stream_reply(path, messages, generation):
                    histories[side][-1] = {"role": "assistant", "content": reply}
                    yield histories[0], histories[1], ""
            except Exception as exc:  # noqa: BLE001 - the user's model path: one line on the page
                raise gr.Error(f"{path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        yield histories[0], histories[1], said(chat.chat_command(paths[0], system_text.strip() or None, text,
                                                                  generation))

    inputs = [trained, base, system, max_new, temperature, message, left, right]
    send.click(answer, inputs, [left, right, command_line])
    message.submit(answer, inputs, [left, right, command_line])
    clear.click(lambda: ([], [], ""), None, [left, right, command_line])


# ---------------------------------------------------------------------------- export

def export_tab(output_dir: str, jobs: Jobs, fields: dict[str, Any]) -> None:
    """Merge, GGUF and Ollama export, and serving, each as the `sftkit` command it shows."""
    model = gr.Textbox(value=output_dir, label="run directory (or merged model)", elem_id="export-model")
    fields["output_dir"].change(lambda v: v, fields["output_dir"], model)
    with gr.Row():
        overwrite = gr.Checkbox(False, label="--overwrite", elem_id="export-overwrite")
        verify = gr.Checkbox(True, label="check the GGUF file with llama.cpp (off: --no-verify)",
                             elem_id="export-verify")
        outtype = gr.Dropdown(["f16", "bf16", "f32", "q8_0", "q6_k", "q5_k_m", "q4_k_m"], value="f16", label="GGUF weight type",
                              elem_id="export-outtype")
        port = gr.Number(value=8000, precision=0, label="serve port", elem_id="serve-port")
    with gr.Row():
        merge = gr.Button("Merge", elem_id="merge-button")
        gguf = gr.Button("Export GGUF", elem_id="gguf-button")
        ollama = gr.Button("Export Ollama", elem_id="ollama-button")
        serve = gr.Button("Serve (OpenAI API)", elem_id="serve-button")
        stop = gr.Button("Stop server", variant="stop", elem_id="serve-stop")
    command_line = gr.Markdown(elem_id="export-command")
    state = gr.Markdown(elem_id="export-state")
    log = gr.Textbox(label="log", lines=12, max_lines=12, autoscroll=True, elem_id="export-log")
    timer = gr.Timer(1.0)

    def started(kind: str, path: str, *args: str) -> str:
        if not path.strip():
            raise gr.Error("name the run directory or merged model first")
        if path.strip().startswith("-"):  # it goes to the command as an argument: it must not read as an option
            raise gr.Error(f"{path.strip()!r}: a folder name cannot start with '-'; write ./{path.strip()}")
        try:
            return said(jobs.start(kind, *args).command)
        except RuntimeError as exc:
            raise gr.Error(str(exc)) from None

    def merged(path: str, replace: bool) -> str:
        return started("export", path, "merge", path.strip(), *(["--overwrite"] if replace else []))

    def exported(fmt: str) -> Any:
        def run(path: str, replace: bool, check: bool, weights: str) -> str:
            return started("export", path, "export", path.strip(), "--format", fmt, "--outtype", weights,
                           *(["--overwrite"] if replace else []), *([] if check else ["--no-verify"]))
        return run

    def served(path: str, number: float | None) -> str:
        if number is None or not 1 <= int(number) <= 65535:
            raise gr.Error("serve port: a TCP port, 1 to 65535")
        return started("serve", path, "serve", path.strip(), "--port", str(int(number))) + \
            f" (then http://127.0.0.1:{int(number)}/v1)"

    merge.click(merged, [model, overwrite], command_line)
    gguf.click(exported("gguf"), [model, overwrite, verify, outtype], command_line)
    ollama.click(exported("ollama"), [model, overwrite, verify, outtype], command_line)
    serve.click(served, [model, port], command_line)

    def stop_server() -> str:
        job = jobs.get("serve")
        if job is None or not job.running():
            raise gr.Error("no server of this page is running")
        job.stop(signal.SIGTERM)
        return f"server stopping (SIGTERM) {said(f'kill {job.process.pid}')}"

    stop.click(stop_server, None, command_line)

    def refresh() -> tuple[str, str]:
        lines = [f"**{kind}**: {job.state()}: `{job.command}`" for kind in ("export", "serve")
                 if (job := jobs.get(kind)) is not None]
        shown = jobs.newest("export", "serve")
        return "\n\n".join(lines), shown.log_tail() if shown is not None else ""

    timer.tick(refresh, None, [state, log])
