"""Errors the web side turns into JSON responses."""

from __future__ import annotations


class BackendError(Exception):
    status = 500


class BadRequest(BackendError):
    status = 400


class Unavailable(BackendError):
    """The worker did not answer in time, or the queue is unreachable."""

    status = 503
