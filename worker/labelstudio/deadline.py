"""One deadline for a whole download: connect, TLS, headers, body and every redirect hop.

Timeouts bound each read, not a server that sends one byte just inside them, so a timer shuts
the download's sockets when the deadline passes; the connections requests uses register their
sockets with the deadline running on their thread (:class:`DeadlineAdapter`), through an HTTP(S)
proxy too. Each new connection's peer address is also checked against the download's address
rule: a name resolved once for the check and again for the connection may answer differently
the second time (DNS rebinding), so the address actually connected to is the one judged.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import ProxyManager

PeerRule = Callable[[str, str], None]  # (host, address connected to); raises to refuse


class Deadline:
    """The end of one download. Timeouts bound each read, not a server that sends one byte
    just inside them, so at the end a timer shuts the download's sockets, waking any read
    (TLS handshake, headers, body) blocked on them."""

    _current = threading.local()

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.expired = False
        self.peer_rule: PeerRule | None = None  # set per hop by the downloader
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        Deadline._current.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        Deadline._current.deadline = None

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def passed(self) -> bool:
        return self.expired or self.remaining() <= 0

    @classmethod
    def watch(cls, sock: socket.socket | None) -> None:
        """Shut ``sock`` at the deadline of the download running on this thread, if any."""
        deadline = getattr(cls._current, "deadline", None)
        if deadline is None or sock is None:
            return
        with deadline._lock:
            deadline._sockets.append(sock)
            if deadline.expired:
                _shut(sock)

    @classmethod
    def check_peer(cls, host: str, sock: socket.socket) -> None:
        """Apply the running download's peer rule to the address ``sock`` connected to; the
        socket is closed if it is refused."""
        deadline = getattr(cls._current, "deadline", None)
        if deadline is None or deadline.peer_rule is None:
            return
        try:
            deadline.peer_rule(host, str(sock.getpeername()[0]))
        except BaseException:
            sock.close()
            raise

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    # socket.socket's own shutdown, not SSLSocket's, which would drop its TLS state under a read.
    with contextlib.suppress(OSError):  # already closed: nothing left to wake
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watched:
    """Connection mixin: new sockets and each response's socket go to the running deadline, and a
    direct connection's peer is checked against its rule."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        Deadline.watch(sock)
        if not self.proxy:  # type: ignore[attr-defined]  (through a proxy, the proxy connects)
            Deadline.check_peer(self.host, sock)  # type: ignore[attr-defined]
        return sock

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        Deadline.watch(self.sock)  # type: ignore[attr-defined]
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_Watched, HTTPConnection):
    pass


class _HTTPSConnection(_Watched, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """requests' adapter with connections that the running download's deadline can shut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """HTTP(S) proxies use the watched connections too (a SOCKS proxy keeps its own, bounded
        by the per-read timeout only)."""
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is ProxyManager:
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}
