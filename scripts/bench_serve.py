"""Throughput and latency of `sftkit serve` for N concurrent clients.

Starts `sftkit serve MODEL` on a free loopback port (MODEL: --model, else the tiny model re-initialised at std
0.3 so that it answers every request to the token budget), sends one untimed warm-up request, then lets
--clients threads send --requests streamed chat requests each, one after another, all greedy with the same
token budget. Per request: time to the first content chunk (TTFT) and to `data: [DONE]` (latency), and the
completion tokens the server counted. Reported: requests/s and completion tokens/s over the wall time, TTFT
and latency p50/p95, and the number of failed requests (any status but 200, or a stream without [DONE]).

    .venv/bin/python scripts/bench_serve.py --clients 8 --requests 5 --out bench_serve.json
    .venv/bin/python scripts/bench.py --serve --clients 8      # the same, from the main benchmark
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PROMPT = [{"role": "user", "content": "Tell me about the sea."}]


def main(argv: list[str] | None = None) -> int:
    """Runs the load, prints one summary line and writes the JSON report."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sftkit-bench-serve-") as tmp:
        model = args.model or str(varied_tiny_model(Path(tmp) / "tiny"))
        server, url = start_server(model, Path(tmp) / "server.log", args.max_batch)
        try:
            one_request(url, args.max_tokens)  # warm-up: the first generation pays for lazy set-up
            report = load(url, args.clients, args.requests, args.max_tokens)
            report["largest_batch"] = _health(url)["largest_batch"]
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    report |= {
        "model": args.model or "tiny (std 0.3)",
        "clients": args.clients,
        "max_tokens": args.max_tokens,
        "max_batch": args.max_batch,
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    print(
        f"serve: {report['clients']} clients x {args.requests} requests, {report['requests_per_s']} req/s, "
        f"{report['tokens_per_s']} tok/s, TTFT p50 {report['ttft_p50_s']}s p95 {report['ttft_p95_s']}s, "
        f"latency p50 {report['latency_p50_s']}s p95 {report['latency_p95_s']}s, {report['errors']} errors, "
        f"batches up to {report['largest_batch']} (--max-batch {args.max_batch or 'default'})"
    )
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if report["errors"] else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model to serve (default: the tiny model, built here)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=5, help="requests per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=32, help="token budget of every answer")
    parser.add_argument("--max-batch", type=int, help="the server's --max-batch (default: its own, 1 on the CPU)")
    parser.add_argument("--out", default="bench_serve.json")
    return parser.parse_args(argv)


def varied_tiny_model(out: Path) -> Path:
    """The tiny model at std 0.3: its greedy answers do not stop early, so every request costs max_tokens."""
    sys.path.insert(0, str(REPO))
    from sftkit.tiny import build_tiny_model

    return build_tiny_model(out, initializer_range=0.3)


def start_server(model: str, log: Path, max_batch: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """`sftkit serve` in a subprocess, returned once /health answers."""
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = os.environ | {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    batch = ["--max-batch", str(max_batch)] if max_batch else []
    server = subprocess.Popen(
        [sys.executable, "-m", "sftkit", "serve", model, "--port", str(port), "--max-queue", "1024", *batch],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            time.sleep(0.3)
    server.kill()
    raise SystemExit(f"sftkit serve did not come up:\n{log.read_text()[-3000:]}")


def _health(url: str) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{url}/health", timeout=10).json()


def one_request(url: str, max_tokens: int) -> dict[str, Any]:
    """One streamed chat request: TTFT, latency, completion tokens, or the error it met."""
    import httpx

    body = {
        "messages": PROMPT,
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft, tokens, done = None, 0, False
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
            if response.status_code != 200:
                return {"error": f"status {response.status_code}: {response.read()[:200]!r}"}
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    chunk = json.loads(line[6:])
                    if ttft is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        ttft = time.perf_counter() - start
                    tokens = chunk.get("usage", {}).get("completion_tokens", tokens)
    except httpx.HTTPError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if not done:
        return {"error": "the stream ended without data: [DONE]"}
    latency = time.perf_counter() - start
    return {"ttft": ttft if ttft is not None else latency, "latency": latency, "tokens": tokens}


def load(url: str, clients: int, requests: int, max_tokens: int) -> dict[str, Any]:
    """`clients` threads sending `requests` each; the measurements summed up."""
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(requests):
            result = one_request(url, max_tokens)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    good = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    ttft, latency = sorted(r["ttft"] for r in good), sorted(r["latency"] for r in good)
    return {
        "requests": len(results),
        "errors": len(errors),
        "error_examples": errors[:3],
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(good) / wall, 3),
        "tokens_per_s": round(sum(r["tokens"] for r in good) / wall, 1),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p95_s": percentile(ttft, 95),
        "latency_p50_s": percentile(latency, 50),
        "latency_p95_s": percentile(latency, 95),
    }


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile by linear interpolation (numpy's default), rounded to milliseconds."""
    if not sorted_values:
        return 0.0
    rank = (len(sorted_values) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return round(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low), 4)


if __name__ == "__main__":
    raise SystemExit(main())
