"""`sftkit webui`: configure, launch, watch, compare and chat in a browser (LLaMA Board's job, on Gradio).

What the page runs is a YAML config it writes and validates with the CLI's own loader, and the same `sftkit`
commands a terminal runs (train, validate, merge, export, serve) as child processes, so every run started in
the browser is reproducible from the terminal with the command the page prints beside it.

Modules: `form` (the form's keys and the YAML it writes), `jobs` (the child processes and what a run has
logged), `runs` (past runs side by side), `chat` (side-by-side streaming chat), `page` (the Gradio layout).
"""

from __future__ import annotations

import os
from pathlib import Path

from sftkit.errors import SftkitError

# the default theme asks Google Fonts for its typeface; a machine without internet should not wait for it
_SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
_MONO_FONTS = ["ui-monospace", "monospace"]


def webui(host: str = "127.0.0.1", port: int = 7860, share: bool = False, config_dir: Path = Path("sftkit_webui"),
          model: str = "", dataset_dir: str = "data", output_dir: str = "runs/webui") -> None:
    """Serves the page until Ctrl-C. Training runs it started go on after it stops; servers it started end.

    Args:
        host: address to listen on (127.0.0.1: this machine only).
        port: TCP port.
        share: ask Gradio for a public share link (off unless asked: the page can start training runs).
        config_dir: where the page writes the YAML files it runs, the jobs' logs and data statistics.
        model: the model path the form starts with.
        dataset_dir: the folder whose dataset_info.json the form lists.
        output_dir: the output_dir the form starts with (its parent is the Runs tab's folder).

    Raises:
        SftkitError: gradio is not installed, or the port is taken.
    """
    from sftkit.serve import check_listening

    check_listening(host, port)  # before Gradio loads: its own message names an environment variable
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a training machine
    try:
        import gradio as gr
    except ImportError:
        raise SftkitError("sftkit webui needs gradio: pip install 'sftkit[webui]'") from None
    from sftkit.webui.jobs import Jobs
    from sftkit.webui.page import PageSettings, build

    config_dir = config_dir.resolve()
    jobs = Jobs(config_dir / "logs")
    page = build(PageSettings(config_dir, model, dataset_dir, output_dir), jobs)
    print(f"sftkit webui: http://{host}:{port} (configs and logs in {config_dir}; Ctrl-C stops the page, not its "
          "training runs)", flush=True)
    try:
        page.queue(default_concurrency_limit=4).launch(
            server_name=host, server_port=port, share=share, allowed_paths=[str(config_dir)], quiet=True,
            footer_links=[], theme=gr.themes.Default(font=_SYSTEM_FONTS, font_mono=_MONO_FONTS))
    finally:
        jobs.stop_all()

