"""`sftkit train` starting torchrun itself, as `llamafactory-cli train` does: on a machine with several GPUs, or
when FORCE_TORCHRUN=1, the command re-runs itself as `torchrun ... -m sftkit train ARGS`.

LLaMA-Factory's environment variables choose the layout: NNODES, NODE_RANK, NPROC_PER_NODE (default: the
GPUs here), MASTER_ADDR (127.0.0.1), MASTER_PORT (a free port; every node of a multi-node run must be given
the same one). Processes that a launcher started (LOCAL_RANK is set) never launch again.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from typing import Any

from sftkit.errors import SftkitError

LAYOUT_VARIABLES = ("NNODES", "NODE_RANK", "NPROC_PER_NODE", "MASTER_ADDR", "MASTER_PORT")


def enabled(name: str) -> bool:
    """LLaMA-Factory's reading of a switch variable: true, 1 or y (any case)."""
    return os.environ.get(name, "0").strip().lower() in ("true", "y", "1")


def launched_by_a_launcher() -> bool:
    """This process is one of those torchrun (or accelerate, or deepspeed) started."""
    return "LOCAL_RANK" in os.environ


def device_count() -> int:
    """The accelerators torch sees here (CUDA_VISIBLE_DEVICES applies); 0 on a CPU-only machine."""
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and accelerator.is_available():
        return accelerator.device_count()
    return torch.cuda.device_count()


def torchrun_command(args: list[str]) -> list[str] | None:
    """The torchrun command that re-runs `sftkit train ARGS` on every process, or None to train in this one.

    Raises:
        SftkitError: a layout variable is not a whole number of the right size.
    """
    if launched_by_a_launcher() or not (enabled("FORCE_TORCHRUN") or device_count() > 1):
        return None
    nnodes = _count("NNODES", "1", least=1)
    node_rank = _count("NODE_RANK", "0", least=0)
    if node_rank >= nnodes:
        raise SftkitError(f"NODE_RANK={node_rank}: must be below NNODES={nnodes} (node ranks count from 0)")
    nproc = _count("NPROC_PER_NODE", str(max(device_count(), 1)), least=1)
    master_addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
    master_port = _count("MASTER_PORT", str(free_port()) if nnodes == 1 else "29500", least=1)
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        str(nnodes),
        "--node_rank",
        str(node_rank),
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        master_addr,
        "--master_port",
        str(master_port),
        "-m",
        "sftkit",
        "train",
        *args,
    ]


def run_torchrun(command: list[str]) -> int:
    """Runs torchrun in the foreground and returns its exit code; SIGTERM is passed on, so the ranks save a
    checkpoint and stop as they do when torchrun itself is signalled."""
    process = subprocess.Popen(command)

    def forward(signum: int, _frame: Any) -> None:
        process.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                return process.wait()
            except KeyboardInterrupt:  # the terminal sent SIGINT to torchrun too; wait for it to stop the ranks
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)


def free_port() -> int:
    """A TCP port nothing listens on now (the one-node default of MASTER_PORT, as LLaMA-Factory picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _count(name: str, default: str, least: int) -> int:
    text = os.environ.get(name, default)
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise SftkitError(
            f"{name}={text}: expected a whole number of at least {least} (LLaMA-Factory's torchrun "
            f"layout: {', '.join(LAYOUT_VARIABLES)})"
        )
    return value
