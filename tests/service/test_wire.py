"""What reaches ``camsam serve`` (waitress) on the wire, byte by byte: malformed chunked bodies
are the client's fault (400, no traceback in the log), on the routes that need no credentials
and on those that do."""

from __future__ import annotations

import select
import socket

import pytest

from tests.conftest import start_serve, stop_process

# Each a chunked body whose framing breaks part way through.
MALFORMED = {
    "size not hex": b"zz\r\n{}\r\n0\r\n\r\n",
    "size with 0x": b"0x2\r\n{}\r\n0\r\n\r\n",
    "negative size": b"-2\r\n{}\r\n0\r\n\r\n",
    "junk after size": b"2 x\r\n{}\r\n0\r\n\r\n",
    "CR alone": b"2\r{}\r\n0\r\n\r\n",
    "chunk longer than its size": b"1\r\n{}\r\n0\r\n\r\n",
}
# A trailer that is no header: RFC 9112 (7.1.2) lets a recipient discard trailers, and the body
# before it is whole.
BAD_TRAILER = b"2\r\n{}\r\n0\r\nX-Trailer\r\n\r\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("wire")
    log = root / "serve.log"
    env = {"MODEL_DIR": str(root / "models"), "AUTH_TOKEN": "wire-token-0123456789"}
    server, url = start_serve(env, log, "--workers", "1")
    port = int(url.rsplit(":", 1)[1])
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
def test_a_trailer_that_is_no_header_is_dropped_and_the_body_reads(served):
    port, log = served
    body = b'{"action": "PROJECT_UPDATED", "project": {"id": 3}}'
    chunked = b"%x\r\n%s\r\n" % (len(body), body) + BAD_TRAILER[len(b"2\r\n{}\r\n") :]
    answer = send(port, "/webhook", chunked)
    assert answer.startswith(b"HTTP/1.1 200"), answer[-300:]
    assert "Traceback" not in log.read_text(errors="replace")


@pytest.mark.slow
def test_a_well_formed_chunked_body_still_reads(served):
    port, _ = served
    body = b'{"action": "PROJECT_UPDATED", "project": {"id": 3}}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    answer = send(port, "/webhook", chunked)
    status = int(answer.split(b" ", 2)[1])
    assert status < 400, answer[-300:]


@pytest.mark.slow
def test_a_body_over_max_request_bytes_is_refused_on_the_wire_before_it_is_all_sent(served):
    """With a Content-Length over the limit nothing of the body is read; chunked, the answer
    comes once the limit is passed (16 MiB by default), whatever more the client would send."""
    port, log = served
    head = "POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        connection.sendall(f"{head}Content-Length: {17 << 20}\r\n\r\n".encode())
        assert connection.recv(65536).startswith(b"HTTP/1.1 413"), log.read_text()[-500:]
    megabyte = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20))
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        connection.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
        sent = 0
        try:
            while sent < 64 and not select.select([connection], [], [], 0)[0]:
                connection.sendall(megabyte)  # 64 MiB offered; the answer comes before the end
                sent += 1
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed part way
        assert connection.recv(65536).startswith(b"HTTP/1.1 413")
        assert sent < 64


@pytest.mark.slow
@pytest.mark.parametrize(
    "head",
    [b"get / HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /health HTTP/1.1\r\nBadheader\r\n\r\n"],
)
def test_a_request_refused_before_its_path_is_read_is_a_400_and_no_traceback(served, head):
    port, log = served
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(head)
        assert connection.recv(65536).split(b" ", 2)[1] == b"400"
    assert "Traceback" not in log.read_text(errors="replace")
    assert "uncaptured python exception" not in log.read_text(errors="replace")
