"""ml_backend.wsgi: slow and idle clients hold no thread (``camsam serve`` answers /health while
200 of them hold connections), /health has a thread of its own, a stop finishes the request in
flight and takes no new one, and a web worker that dies is replaced."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from ml_backend.wsgi import Lanes
from tests.conftest import REPO, free_port, start_serve, stop_process, wait_until_up

pytestmark = pytest.mark.slow


def tiny(port: int, workers: int, threads: int = 2) -> subprocess.Popen:
    """tests/service/wsgi_app.py in a session of its own (killed whole if it outlives a stop)."""
    command = [sys.executable, "-m", "tests.service.wsgi_app", str(port), str(workers)]
    server = subprocess.Popen(
        [*command, str(threads)], cwd=REPO, stdout=subprocess.DEVNULL, start_new_session=True
    )
    wait_until_up(server, f"http://127.0.0.1:{port}")
    return server


class Slow:
    """``count`` connections of one shape: ``idle`` sends nothing; ``header`` sends a request
    head a byte at a time and never ends it; ``body`` sends a head, then a body a byte at a time
    (spaces, which JSON allows before ``{}``)."""

    BODY = 4096

    def __init__(self, port: int, shape: str, count: int) -> None:
        self.port, self.shape = port, shape
        self.sent = 0
        self.sockets = [socket.create_connection(("127.0.0.1", port), 30) for _ in range(count)]
        for connection in self.sockets:
            if shape == "header":
                connection.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            elif shape == "body":
                head = "POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                head += f"Content-Type: application/json\r\nContent-Length: {self.BODY}\r\n\r\n"
                connection.sendall(head.encode())

    def drip(self) -> None:
        if self.shape != "idle" and self.sent < self.BODY - 2:
            for connection in self.sockets:
                connection.sendall(b" " if self.shape == "body" else b"a")
            self.sent += 1

    def finish_one(self) -> bytes:
        """End the first connection's request and read its answer's status line."""
        connection = self.sockets[0]
        if self.shape == "header":
            connection.sendall(b"\r\nConnection: close\r\n\r\n")
        else:
            connection.sendall(b" " * (self.BODY - 2 - self.sent) + b"{}")
        return connection.recv(65536).split(b"\r\n", 1)[0]

    def close(self) -> None:
        for connection in self.sockets:
            connection.close()


def test_health_answers_while_200_slow_or_idle_clients_hold_connections(tmp_path):
    server, url = start_serve({"MODEL_DIR": str(tmp_path / "models")}, tmp_path / "serve.log")
    port, log = int(url.rsplit(":", 1)[1]), tmp_path / "serve.log"
    clients: list[Slow] = []
    done = threading.Event()
    try:
        clients = [Slow(port, "idle", 70), Slow(port, "header", 70), Slow(port, "body", 60)]

        def drip() -> None:
            while not done.wait(1.0):
                for client in clients:
                    client.drip()

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        for _ in range(5):
            # Under a thread per connection this waits until the clients go: 60 s is a hang.
            assert requests.get(url + "/health", timeout=60).json()["status"] == "UP"
        done.set()
        dripper.join()
        # They were held, not dropped: each shape's request still completes.
        assert clients[1].finish_one() == b"HTTP/1.1 200 OK"
        assert clients[2].finish_one().split(b" ")[1] < b"500"
        assert "Traceback" not in log.read_text(errors="replace")
    finally:
        done.set()
        for client in clients:
            client.close()
        stop_process(server, 30)


def test_health_has_a_thread_of_its_own_when_every_other_is_busy():
    lanes = Lanes(threads=1)
    release, health = threading.Event(), threading.Event()

    def channel(path: str, work):
        return SimpleNamespace(
            requests=[SimpleNamespace(path=path)], service=work, cancel=lambda: None
        )

    try:
        lanes.add_task(channel("/predict", release.wait))
        lanes.add_task(channel("/predict", release.wait))  # queued behind the first
        lanes.add_task(channel("/health", health.set))
        assert health.wait(60)
        assert not release.is_set()
    finally:
        release.set()
        lanes.shutdown(timeout=10)


def test_under_waitress_health_answers_while_the_only_other_thread_is_held(tmp_path):
    port = free_port()
    server = tiny(port, workers=1, threads=1)
    release = tmp_path / "release"
    slow = threading.Thread(
        target=requests.get, args=(f"http://127.0.0.1:{port}/slow?{release}",), daemon=True
    )
    try:
        slow.start()
        while not (tmp_path / "release.started").exists():
            assert server.poll() is None
            time.sleep(0.05)
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=60).text == "ok"
        assert slow.is_alive()  # /slow still holds the one thread
    finally:
        release.touch()
        stop_process(server, 10)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_stop_finishes_the_request_in_flight_and_takes_no_new_one(tmp_path, workers):
    port = free_port()
    server = tiny(port, workers=workers)
    release = tmp_path / "release"
    answers: list[requests.Response] = []
    slow = threading.Thread(
        target=lambda: answers.append(
            requests.get(f"http://127.0.0.1:{port}/slow?{release}", timeout=120)
        )
    )
    try:
        slow.start()
        while not (tmp_path / "release.started").exists():
            assert server.poll() is None
            time.sleep(0.05)
        server.send_signal(signal.SIGTERM)
        refused = False
        while not refused:  # every copy of the listening socket closes at once
            try:
                socket.create_connection(("127.0.0.1", port), 5).close()
                time.sleep(0.05)
            except ConnectionRefusedError:
                refused = True
        assert server.poll() is None  # still finishing /slow
        release.touch()
        slow.join(120)
        assert [answer.text for answer in answers] == ["ok"]
        assert server.wait(60) == 0
    finally:
        release.touch()
        stop_process(server, 10)


def test_a_request_still_arriving_when_the_stop_comes_is_answered(tmp_path):
    port = free_port()
    server = tiny(port, workers=1)
    try:
        with socket.create_connection(("127.0.0.1", port), 60) as connection:
            connection.sendall(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n{}")
            time.sleep(0.5)  # the head and half the body are in
            server.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            connection.sendall(b"  ")
            assert connection.recv(65536).startswith(b"HTTP/1.1 200")
        assert server.wait(60) == 0
    finally:
        stop_process(server, 10)


def children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(child) for child in path.read_text().split()} if path.exists() else set()


def two_workers(port: int) -> tuple[subprocess.Popen, set[int]]:
    """The tiny app forked into two web workers, and their pids once both are up."""
    server = tiny(port, workers=2)
    while len(workers := children(server.pid)) < 2:
        assert server.poll() is None
        time.sleep(0.05)
    return server, workers


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/task").exists(), reason="needs Linux /proc")
def test_a_web_worker_that_dies_is_replaced_and_a_stop_leaves_none(tmp_path):
    port = free_port()
    server, first = two_workers(port)
    try:
        killed = min(first)
        os.kill(killed, signal.SIGKILL)
        while len(now := children(server.pid)) < 2 or killed in now:
            assert server.poll() is None
            time.sleep(0.05)
        for _ in range(20):  # on fresh connections, whichever worker takes each
            assert requests.get(f"http://127.0.0.1:{port}/pid", timeout=60).text != str(killed)
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
        assert not [pid for pid in now if running(pid)]
    finally:
        stop_process(server, 10)


def running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_web_workers_stop_when_their_parent_is_killed(tmp_path):
    """A parent killed outright (SIGKILL, the OOM killer) leaves no worker holding the port."""
    port = free_port()
    server, workers = two_workers(port)
    try:
        os.kill(server.pid, signal.SIGKILL)
        server.wait(60)
        # Each is sent SIGTERM and ends within its grace (a zombie has ended).
        while [pid for pid in workers if running(pid)]:
            time.sleep(0.1)
        socket.create_server(("127.0.0.1", port)).close()  # the port is free again
    finally:
        stop_process(server, 10)
