"""Serve stage: a trained, merged or base model behind OpenAI's HTTP API (`sftkit serve MODEL`).

Modules: `protocol` (request bodies, errors, response and chunk shapes), `engine` (the generation worker
and its bounded queue; the transformers backend on sftkit's model stage), `vllm_backend` (vLLM) and
`app` (the FastAPI routes, auth, streaming). uvicorn runs the app and shuts it down gracefully on SIGTERM.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from typing import Any

from sftkit.errors import SftkitError
from sftkit.model import load_for_inference, trained_default_system
from sftkit.serve.app import build_app, check_api_key
from sftkit.serve.engine import Backend, Engine, TransformersBackend

BACKENDS = ("transformers", "vllm")
GRACEFUL_SHUTDOWN_S = 30  # after SIGTERM: the most seconds running answers get before they are cancelled


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_queue: int = 32,
    backend: str = "transformers",
    max_batch: int | None = None,
) -> None:
    """Serves `model` with OpenAI's chat and completion routes until SIGTERM or Ctrl-C.

    Args:
        model: run directory, merged model directory, or base model path / hub id (as for `sftkit chat`).
        host: address to listen on (loopback unless told otherwise).
        port: TCP port.
        api_key: when set, requests need `Authorization: Bearer <api_key>`.
        max_queue: requests that may wait for the generation worker; more are answered 503.
        backend: transformers, or vllm (needs the vllm package and a CUDA GPU).
        max_batch: requests answered together in one batched generation (default: 8 on a CUDA GPU, 1 on the
            CPU, so that an answer there never depends on what else was queued).

    Raises:
        SftkitError: a bad option, a port in use, a backend that cannot run here, or no loadable model.
    """
    if api_key is not None:
        check_api_key(api_key)
    check_options(host, port, max_queue, backend, max_batch)
    # held from the check to uvicorn: a second server started meanwhile finds the port taken, not uvicorn's error
    listener = hold_listening(host, port)
    try:
        engine = Engine(load_backend(model, backend), max_queue, max_batch or default_max_batch())
        app = build_app(engine, model, api_key, trained_default_system(model))
        print(
            f"note: serving {model} at http://{host}:{port}/v1 ({backend}, up to {engine.max_batch} requests per "
            f"batch; {'API key required' if api_key else 'no API key'})",
            file=sys.stderr,
        )
        run_server(app, listener)
    finally:
        listener.close()


def run_server(app: Any, listener: socket.socket) -> None:
    """uvicorn on the socket already bound. SIGTERM or Ctrl-C: it stops listening, lets running answers finish
    for at most GRACEFUL_SHUTDOWN_S seconds (then cancels them), and re-raises the signal."""
    import uvicorn

    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, timeout_keep_alive=5)
    try:
        uvicorn.Server(config).run(sockets=[listener])
    except KeyboardInterrupt:  # Ctrl-C after that graceful shutdown: not an error
        pass


def default_max_batch() -> int:
    """8 on a CUDA GPU (a batch costs about as much as one request there), else 1 (answers independent of the
    queue, bit for bit)."""
    import torch

    return 8 if torch.cuda.is_available() else 1


def check_options(host: str, port: int, max_queue: int, backend: str, max_batch: int | None = None) -> None:
    """Refuses bad options before the model loads, the port being taken included."""
    problems = [
        line
        for line in (
            f"--port {port}: must be in 1..65535" if not 0 < port < 65536 else "",
            f"--max-queue {max_queue}: must be at least 1" if max_queue < 1 else "",
            f"--max-batch {max_batch}: must be at least 1" if max_batch is not None and max_batch < 1 else "",
            f"--backend {backend}: use one of {', '.join(BACKENDS)}" if backend not in BACKENDS else "",
        )
        if line
    ]
    if problems:
        raise SftkitError(*problems)
    if backend == "vllm":
        _check_vllm()
    check_listening(host, port)


def check_listening(host: str, port: int) -> None:
    """Refuses a port this machine cannot listen on (taken, or an address it does not have), before anything loads.

    Shared by `sftkit serve` and `sftkit webui`.
    """
    if not 0 < port < 65536:
        raise SftkitError(f"--port {port}: must be in 1..65535")
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise SftkitError(
            f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); pick another "
            "--port, or stop what is using it"
        ) from None


def hold_listening(host: str, port: int) -> socket.socket:
    """A socket listening on host:port, for uvicorn to serve on (`check_listening`'s refusal when it cannot).

    Raises:
        SftkitError: the port is taken, or the address is not this machine's.
    """
    try:
        return socket.create_server((host, port), family=_family(host), backlog=2048)
    except OSError as exc:
        raise SftkitError(
            f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); pick another "
            "--port, or stop what is using it"
        ) from None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def load_backend(model: str, backend: str) -> Backend:
    """The model loaded for the chosen backend."""
    if backend == "vllm":
        from sftkit.serve.vllm_backend import VllmBackend

        return VllmBackend(model)
    return TransformersBackend(load_for_inference(model))


def _check_vllm() -> None:
    import torch

    if importlib.util.find_spec("vllm") is None:
        raise SftkitError(
            "--backend vllm: the vllm package is not installed (pip install vllm, on a machine with a "
            "CUDA GPU); without it, leave --backend at transformers"
        )
    if not torch.cuda.is_available():
        raise SftkitError(
            "--backend vllm: no CUDA GPU is visible here, and vLLM needs one; leave --backend at transformers"
        )


__all__ = ["BACKENDS", "build_app", "check_listening", "check_options", "load_backend", "serve"]
