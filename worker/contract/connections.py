"""Redis connections: one client per URL and kind, shared by everything in the process."""

from __future__ import annotations

_connections: dict[tuple[str, bool], object] = {}


def redis_connection(url: str, blocking: bool = False):
    """The process's Redis client for ``url``.

    Commands time out after 5 s, so a lost Redis turns into an error and never a hang; a
    ``blocking`` client (an rq worker, whose dequeue waits on the queues for minutes) has no
    read timeout.
    """
    key = (url, blocking)
    if key not in _connections:
        from redis import Redis

        timeout = None if blocking else 5
        _connections[key] = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=2)
    return _connections[key]
