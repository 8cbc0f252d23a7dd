"""The measurement behind docs/operations.md, "On an open network": how long /health takes while
N idle or slow clients hold connections, per HTTP server under the same Flask app.

    .venv/bin/python docs/slow_clients.py [SERVER ...]

SERVER is ``camsam`` (``camsam serve`` as shipped), ``waitress`` (plain ``waitress-serve``),
``gthread`` or ``gevent`` (gunicorn's worker classes, 4 threads / 1 worker: ``pip install
gunicorn gevent`` into another folder and put it on PYTHONPATH). Each shape runs 12 s: /health
is asked every 0.5 s (10 s timeout, a timeout counted as a failure) while ``idle`` clients send
nothing, ``header`` ones a request head a byte every 2 s, ``body`` ones a /webhook body a byte
every 2 s. Prints one line per server, shape and N.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
APP = "ml_backend.app:create_app"


def command(server: str, port: int) -> list[str]:
    py, bind = sys.executable, f"127.0.0.1:{port}"
    gunicorn = [py, "-m", "gunicorn", "-b", bind, "--threads", "4", "-k"]
    return {
        "camsam": [py, "-m", "worker.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        "waitress": [py, "-m", "waitress", "--listen", bind, "--call", APP],
        "gthread": [*gunicorn, "gthread", f"{APP}()"],
        "gevent": [*gunicorn, "gevent", f"{APP}()"],
    }[server]


def start(server: str, port: int, root: str) -> subprocess.Popen:
    env = {**os.environ, "MODEL_DIR": f"{root}/models"}
    env.pop("REDIS_URL", None)
    log = open(f"{root}/{server}.log", "wb")  # noqa: SIM115 (the server's whole life)
    process = subprocess.Popen(command(server, port), cwd=REPO, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                return process
        except requests.RequestException:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(Path(f"{root}/{server}.log").read_text()[-2000:])


def health_seconds(port: int) -> float:
    started = time.monotonic()
    try:
        requests.get(f"http://127.0.0.1:{port}/health", timeout=10)
    except requests.RequestException:
        return float("inf")
    return time.monotonic() - started


def hold(port: int, shape: str, count: int, seconds: float = 12.0) -> list[float]:
    """/health's times while ``count`` clients of ``shape`` hold connections."""
    clients = []
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.setblocking(False)
        if shape == "header":
            client.send(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        elif shape == "body":
            client.send(
                b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 10000\r\n\r\n"
            )
        clients.append(client)
    times, dripped = [], 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if shape != "idle" and time.monotonic() - dripped > 2:
            for client in clients:
                try:
                    client.send(b" " if shape == "body" else b"a")
                except OSError:
                    pass
            dripped = time.monotonic()
        times.append(health_seconds(port))
        time.sleep(0.5)
    for client in clients:
        client.close()
    return times


def main(servers: list[str]) -> None:
    root = tempfile.mkdtemp(prefix="camsam-slow-clients-")
    for server in servers:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        process = start(server, port, root)
        try:
            for shape in ("idle", "header", "body"):
                for count in (60, 200):
                    times = hold(port, shape, count)
                    failed = sum(t == float("inf") for t in times)
                    answered = [t for t in times if t != float("inf")] or [float("inf")]
                    print(
                        f"{server:8} {shape:6} n={count:3}: /health median "
                        f"{statistics.median(answered):.3f} s, max {max(answered):.3f} s, "
                        f"no answer in 10 s {failed}/{len(times)}",
                        flush=True,
                    )
                    time.sleep(1)
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main(sys.argv[1:] or ["camsam"])
