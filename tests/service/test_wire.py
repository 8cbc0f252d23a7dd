"""What reaches ``camsam serve`` (gunicorn) on the wire, byte by byte: malformed chunked bodies
are the client's fault (400, no traceback in the log), on the routes that need no credentials
and on those that do."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import REPO, free_port, stop_process

# Each a chunked body gunicorn's reader refuses part way through.
MALFORMED = {
    "size not hex": b"zz\r\n{}\r\n0\r\n\r\n",
    "size with 0x": b"0x2\r\n{}\r\n0\r\n\r\n",
    "negative size": b"-2\r\n{}\r\n0\r\n\r\n",
    "junk after size": b"2 x\r\n{}\r\n0\r\n\r\n",
    "CR alone": b"2\r{}\r\n0\r\n\r\n",
    "chunk longer than its size": b"1\r\n{}\r\n0\r\n\r\n",
    "trailer without colon": b"2\r\n{}\r\n0\r\nX-Trailer\r\n\r\n",
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("wire")
    port = free_port()
    log = root / "serve.log"
    env = {
        **os.environ,
        "MODEL_DIR": str(root / "models"),
        "AUTH_TOKEN": "wire-token-0123456789",
    }
    command = [sys.executable, "-m", "worker.cli", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1"]
    with log.open("wb") as out:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if requests.get(url + "/health", timeout=2).ok:
                break
        except requests.RequestException:
            time.sleep(0.2)
    assert server.poll() is None, log.read_text()[-2000:]
    yield port, log
    stop_process(server, 20)


def send(port: int, route: str, body: bytes, token: str | None = None) -> bytes:
    """A raw chunked POST; the whole answer."""
    head = [
        f"POST {route} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        "Transfer-Encoding: chunked",
        "Connection: close",
    ]
    if token:
        head.append(f"Authorization: Bearer {token}")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        connection.shutdown(socket.SHUT_WR)
        answer = b""
        while part := connection.recv(65536):
            answer += part
    return answer


@pytest.mark.slow
@pytest.mark.parametrize("shape", MALFORMED)
@pytest.mark.parametrize("route", ["/webhook", "/predict", "/setup"])
def test_a_malformed_chunked_body_is_a_400_and_no_traceback(served, route, shape):
    port, log = served
    token = None if route == "/webhook" else "wire-token-0123456789"
    answer = send(port, route, MALFORMED[shape], token)
    status = answer.split(b"\r\n", 1)[0]
    assert status.startswith(b"HTTP/1.1 400"), (status, answer[-300:])
    assert b"Traceback" not in answer
    assert "Traceback" not in log.read_text(errors="replace")


@pytest.mark.slow
def test_a_well_formed_chunked_body_still_reads(served):
    port, _ = served
    body = b'{"action": "PROJECT_UPDATED", "project": {"id": 3}}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    answer = send(port, "/webhook", chunked)
    status = int(answer.split(b" ", 2)[1])
    assert status < 400, answer[-300:]
