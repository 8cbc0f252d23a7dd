"""The HTTP server under the Flask app: waitress, which reads every request whole on one event
loop before a thread runs it, so slow or idle clients hold a file descriptor and no thread
(docs/operations.md has the measurement that chose it). Around it: a lane of its own for
/health, a stop that lets the requests in flight finish, and forked workers on one socket."""

from __future__ import annotations

import logging
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable

from waitress import create_server, wasyncore
from waitress.task import ThreadedTaskDispatcher

log = logging.getLogger(__name__)

# Open connections one process holds (idle and slow clients included) before it stops accepting.
CONNECTION_LIMIT = 1000
# An idle kept-alive connection is closed after this long.
IDLE_SECONDS = 60
# A stopping process finishes the requests it holds for at most this long.
GRACE_SECONDS = 30
HEALTH_PATHS = frozenset({"/", "/health"})
# A worker that exits this soon after it started, this many times in a row, stops the service.
EARLY_EXIT_SECONDS, EARLY_EXITS = 5.0, 5


class Lanes:
    """waitress's task dispatcher with a thread of its own for /health: requests that wait on a
    long job (a batch, a click embedding) take the other threads, and Label Studio's health check
    still answers."""

    def __init__(self, threads: int) -> None:
        self.main, self.health = ThreadedTaskDispatcher(), ThreadedTaskDispatcher()
        self.main.set_thread_count(threads)
        self.health.set_thread_count(1)

    def add_task(self, channel) -> None:
        path = channel.requests[0].path if channel.requests else ""
        (self.health if path in HEALTH_PATHS else self.main).add_task(channel)

    def set_thread_count(self, count: int) -> None:
        self.main.set_thread_count(count)

    def shutdown(self, cancel_pending: bool = True, timeout: float = 5) -> None:
        self.main.shutdown(cancel_pending, timeout)
        self.health.shutdown(cancel_pending, timeout)


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before any worker starts (they share it)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    listener = socket.create_server((host, port), family=family, backlog=2048)
    listener.set_inheritable(True)
    return listener


def allow_connections(wanted: int) -> None:
    """Raise this process's open-file limit towards ``wanted`` (at most the hard limit), so the
    connection limit is reached before the descriptors run out."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def serve(app, listener: socket.socket, threads: int, body_limit: int | None) -> None:
    """Serve ``app`` on ``listener`` until SIGTERM or SIGINT, then finish what is in flight."""
    allow_connections(CONNECTION_LIMIT + 64)
    server = create_server(
        app,
        sockets=[listener],
        _dispatcher=Lanes(threads),  # waitress's own hook for another dispatcher
        connection_limit=CONNECTION_LIMIT,
        channel_timeout=IDLE_SECONDS,
        asyncore_use_poll=True,  # select() stops at 1024 descriptors
        max_request_body_size=body_limit or (1 << 62),
        ident="camsam",
    )
    stopping: list[float] = []

    def stop(_signal, _frame) -> None:
        if not stopping:
            stopping.append(time.monotonic())

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        wasyncore.loop(timeout=1.0, map=server._map, use_poll=True, count=1)
    wasyncore.dispatcher.close(server)  # the listening socket only: no new connections
    deadline = stopping[0] + GRACE_SECONDS
    while busy(server) and time.monotonic() < deadline:
        wasyncore.loop(timeout=0.2, map=server._map, use_poll=True, count=1)
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=1)
    wasyncore.close_all(server._map)


def busy(server) -> bool:
    """Whether a connection has a request running or an answer not yet sent."""
    return any(
        channel.requests or channel.total_outbufs_len
        for channel in list(server.active_channels.values())
    )


def prefork(workers: int, serve_one: Callable[[], None], on_exit: Callable[[int], None]) -> int:
    """Run ``serve_one`` in ``workers`` forked processes, start another when one dies, and stop
    them all on SIGTERM or SIGINT. ``on_exit`` hears of each worker's pid when it is gone.
    Returns the exit status: 0, or 1 when workers kept dying as soon as they started."""
    children: dict[int, float] = {}
    stopping: list[bool] = []
    early = 0

    def start() -> None:
        pid = os.fork()
        if pid == 0:
            status = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                serve_one()
            except BaseException:
                log.exception("camsam serve: a web worker failed")
                status = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        children[pid] = time.monotonic()

    def stop(_signal, _frame) -> None:
        stopping.append(True)
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(workers):
        start()
    while children:
        try:
            pid, _status = os.wait()
        except ChildProcessError:
            break
        started = children.pop(pid, None)
        if started is None:
            continue
        on_exit(pid)
        if stopping:
            continue
        early = early + 1 if time.monotonic() - started < EARLY_EXIT_SECONDS else 0
        if early >= EARLY_EXITS:
            log.error("camsam serve: web workers exit as soon as they start; stopping")
            stop(None, None)
            continue
        log.warning("camsam serve: web worker %d exited; starting another", pid)
        start()
    return 1 if early >= EARLY_EXITS else 0
