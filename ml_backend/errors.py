"""Errors the web side turns into JSON responses."""

from __future__ import annotations


class BackendError(Exception):
    status = 500


class BadRequest(BackendError):
    status = 400


class InputError(BackendError):
    """The request's own input cannot be served (an unreadable image, an unusable label)."""

    status = 422


class Unavailable(BackendError):
    """The worker did not answer in time, or the queue is unreachable."""

    status = 503


class TooManyRequests(BackendError):
    status = 429
