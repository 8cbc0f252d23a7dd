"""The HTTP server under the Flask app: waitress, which reads every request whole on one event
loop before a thread runs it, so slow or idle clients hold a file descriptor and no thread
(docs/operations.md has the measurement that chose it). Around it: a lane of its own for
/health, a stop that lets the requests in flight finish, and forked workers on one socket."""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import NoReturn

from waitress import create_server, wasyncore
from waitress.task import ThreadedTaskDispatcher

log = logging.getLogger(__name__)

# Open connections one process holds (idle and slow clients included) before it stops accepting.
CONNECTION_LIMIT = 1000
# An idle kept-alive connection is closed after this long.
IDLE_SECONDS = 60
# A stopping process finishes the requests it holds for at most this long.
GRACE_SECONDS = 30
BACKLOG = 2048  # connections the kernel holds for a worker to accept
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
PR_SET_PDEATHSIG = 1  # linux/prctl.h
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
        # A request waitress refused before reading its path (a bad start line or header) has
        # none: it goes where its 400 is answered, the main lane. waitress serves "//health"
        # as "/health", and so routes it here.
        path = getattr(channel.requests[0], "path", "") if channel.requests else ""
        health = "/" + path.lstrip("/") in HEALTH_PATHS
        (self.health if health else self.main).add_task(channel)

    def shutdown(self, cancel_pending: bool = True, timeout: float = 5) -> None:
        self.main.shutdown(cancel_pending, timeout)
        self.health.shutdown(cancel_pending, timeout)


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before any worker starts (they share it)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    return socket.create_server((host, port), family=family, backlog=BACKLOG)


def allow_connections(wanted: int) -> None:
    """Raise this process's open-file limit towards ``wanted`` (at most the hard limit), so the
    connection limit is reached before the descriptors run out (an ``accept`` that fails for
    want of one is retried at once, and the loop spins)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def serve(app, listener: socket.socket, threads: int, body_limit: int | None) -> None:
    """Serve ``app`` on ``listener`` until SIGTERM or SIGINT, then finish what is in flight."""
    # A connection may hold three descriptors: its socket, a body and an answer spooled to disk.
    allow_connections(3 * CONNECTION_LIMIT + 64)
    server = create_server(
        app,
        sockets=[listener],
        _dispatcher=Lanes(threads),  # waitress's own hook for another dispatcher
        connection_limit=CONNECTION_LIMIT,
        channel_timeout=IDLE_SECONDS,
        backlog=BACKLOG,
        asyncore_use_poll=True,  # select() stops at 1024 descriptors
        # waitress refuses a body of this size or more (a chunked one counted with its framing);
        # the app's own check (ml_backend.body) answers exactly at MAX_REQUEST_BYTES.
        max_request_body_size=body_limit + 1 if body_limit else (1 << 62),
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
    """Whether a connection has a request arriving, running or not yet answered in full. A
    connection with none of these is closed (a stopping worker keeps no kept-alive ones)."""
    working = False
    for channel in list(server.active_channels.values()):
        if channel.requests or channel.request is not None or channel.total_outbufs_len:
            working = True
        else:
            channel.will_close = True
    return working


def prefork(
    workers: int,
    serve_one: Callable[[], None],
    on_exit: Callable[[int], None],
    listener: socket.socket,
) -> int:
    """Run ``serve_one`` in ``workers`` forked processes, start another when one dies, and stop
    them all on SIGTERM or SIGINT (this process then closes its ``listener``, so connections
    are refused rather than left waiting). ``on_exit`` hears of each worker's pid when it is
    gone. Returns the exit status: 0, or 1 when workers kept dying as soon as they started."""
    children: dict[int, float] = {}
    stopping: list[bool] = []
    early = 0
    parent = os.getpid()

    def start() -> None:
        # Held while forking: a stop cannot fall between the fork and the pid's record, and a
        # new worker never runs this process's handler.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            if stopping:
                return
            pid = os.fork()
            if pid == 0:
                for number in STOP_SIGNALS:
                    signal.signal(number, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
                worker(serve_one, parent)
            children[pid] = time.monotonic()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def stop(_signal, _frame) -> None:
        stopping.append(True)
        listener.close()
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


def worker(serve_one: Callable[[], None], parent: int) -> NoReturn:
    """A forked web worker: serve, and leave with os._exit (never into the parent's code)."""
    status = 1
    try:
        die_with(parent)
        serve_one()
        status = 0
    except BaseException:
        log.exception("camsam serve: a web worker failed")
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def die_with(parent: int) -> None:
    """Have this worker told to stop (SIGTERM) when ``parent`` dies, however it dies: a worker
    left behind would keep the port and serve on with nobody to replace or stop it. Linux's
    PR_SET_PDEATHSIG; elsewhere only the check that the parent is still there."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(0)
