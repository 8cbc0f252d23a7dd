"""Errors the web side turns into JSON responses, and the handlers that make every answer
JSON."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


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


class Unauthorized(BackendError):
    status = 401


class TooLarge(BackendError):
    """A body, or a batch, larger than camsam takes in one request."""

    status = 413


def register_error_handlers(app, redis: bool) -> None:
    """Every answer is JSON: camsam's own errors with their status and message, Flask's (404,
    405, 413) by name, and anything unexpected as a 500 that says nothing of the inside (the
    log has the traceback)."""
    from flask import jsonify, request
    from werkzeug.exceptions import HTTPException

    from worker.contract.errors import LabelConfigError

    @app.errorhandler(BackendError)
    def _backend_error(error: BackendError):
        return jsonify({"error": str(error)}), error.status

    @app.errorhandler(LabelConfigError)
    def _config_error(error: LabelConfigError):
        return jsonify({"error": f"cannot serve this label config: {error}"}), 422

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        headers = {k: v for k, v in error.get_headers() if k == "Allow"}
        return jsonify({"error": f"{error.code} {error.name}"}), error.code or 500, headers

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return jsonify({"error": "internal error: camsam logged it"}), 500

    if redis:
        from redis.exceptions import RedisError

        @app.errorhandler(RedisError)
        def _redis_error(error: RedisError):
            log.error("Redis is unreachable: %s", error)
            message = "Redis is unreachable (camsam logged why): it answers again once it is back"
            return jsonify({"error": message}), 503
