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
from typing import TYPE_CHECKING

from sftkit.errors import SftkitError

if TYPE_CHECKING:
    import gradio as gr

    from sftkit.webui.guard import Access

# the default theme asks Google Fonts for its typeface; a machine without internet should not wait for it
_SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
_MONO_FONTS = ["ui-monospace", "monospace"]


def webui(
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    config_dir: Path = Path("sftkit_webui"),
    model: str = "",
    dataset_dir: str = "data",
    output_dir: str = "",
) -> None:
    """Serves the page until Ctrl-C. Training runs it started go on after it stops; servers it started end.

    Args:
        host: address to listen on (127.0.0.1: this machine only).
        port: TCP port.
        share: also a public Gradio share link, guarded by the same per-launch token (off unless asked).
        config_dir: where the page writes the YAML files it runs, the jobs' logs and data statistics.
        model: the model path the form starts with.
        dataset_dir: the folder whose dataset_info.json the form lists.
        output_dir: the first run's output_dir (its parent is the Runs tab's folder and where later runs go);
            empty: runs/train_<date-time>, a fresh folder for each run.

    Raises:
        SftkitError: gradio is not installed, or the port is taken.
    """
    from sftkit.serve import check_listening

    check_listening(host, port)  # before Gradio loads: its own message names an environment variable
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a training machine
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise SftkitError("sftkit webui needs gradio: pip install 'sftkit[webui]'")
    from sftkit.webui.jobs import Jobs
    from sftkit.webui.page import PageSettings, build

    config_dir = config_dir.resolve()
    jobs = Jobs(config_dir / "logs")
    runs_root = str(Path(output_dir).parent) if output_dir else "runs"
    page = build(PageSettings(config_dir, model, dataset_dir, output_dir, runs_root), jobs)
    try:
        _serve(page.queue(default_concurrency_limit=4), host, port, share, config_dir)
    finally:
        jobs.stop_all()


def _serve(page: gr.Blocks, host: str, port: int, share: bool, config_dir: Path) -> None:
    """The page behind its guard (Host, Origin, per-launch token), on uvicorn; with --share also a Gradio share
    link, which the same token guards."""
    import gradio as gr
    import uvicorn

    from sftkit.webui.guard import TOKEN_PARAM, Access, guarded_app, new_token

    access = Access.for_bind(host, port, new_token())
    app = guarded_app(
        page,
        access,
        allowed_paths=[str(config_dir)],
        footer_links=[],
        theme=gr.themes.Default(font=_SYSTEM_FONTS, font_mono=_MONO_FONTS),
    )
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5))
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    lines = [f"sftkit webui: http://{shown}:{port}/?{TOKEN_PARAM}={access.token}"]
    if share:
        lines.append(f"  public link: {_share_link(host, port, access)}/?{TOKEN_PARAM}={access.token}")
    print(
        "\n".join(lines) + f"\n  (the token is this launch's: the page refuses requests without it; configs and "
        f"logs in {config_dir}; Ctrl-C stops the page, not its training runs)",
        flush=True,
    )
    server.run()


def _share_link(host: str, port: int, access: Access) -> str:
    """A Gradio share tunnel to the local port; its host joins the addresses the guard accepts (over https)."""
    import secrets
    from urllib.parse import urlsplit

    from gradio import networking

    try:
        url = networking.setup_tunnel(
            "127.0.0.1" if host in ("0.0.0.0", "::", "") else host, port, secrets.token_urlsafe(32), None, None
        )
    except Exception as exc:  # noqa: BLE001 - no internet, or Gradio's share server refused: one line
        raise SftkitError(f"--share: no share link ({exc}); the page is not started") from None
    access.https_hosts.add(urlsplit(url).netloc.lower())
    return url.rstrip("/")
