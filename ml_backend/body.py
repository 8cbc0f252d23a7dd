"""A request's JSON body, read within bounds: its size (``MAX_REQUEST_BYTES``, with or without a
Content-Length), a body that can be read at all (a malformed chunked encoding is the client's
fault), its nesting depth, no ``NaN`` or ``Infinity``, and text that is text outside the tasks
(no lone UTF-16 surrogate, which JSON's escapes can carry and UTF-8 cannot)."""

from __future__ import annotations

import json

from werkzeug.exceptions import RequestEntityTooLarge

from ml_backend.errors import BadRequest, TooLarge

# Label Studio's deepest bodies (a task's annotations: result, value, rle) are under 10 levels.
MAX_JSON_DEPTH = 64
_READ = 1 << 16


def json_object(request, limit: int | None) -> dict:
    """The body of a Flask ``request`` as a JSON object.

    Raises:
        TooLarge: more than ``limit`` bytes (None: no limit).
        BadRequest: not JSON, not an object, nested deeper than ``MAX_JSON_DEPTH``, or NaN.
    """
    if not request.is_json:
        raise BadRequest("expected a JSON object body (Content-Type: application/json)")
    raw = read_body(request, limit)
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise BadRequest(_too_deep()) from None
    except ValueError as error:  # UnicodeDecodeError included
        raise BadRequest(f"the body is not valid JSON: {_short(error)}") from None
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object body")
    if deeper_than(body, MAX_JSON_DEPTH):
        raise BadRequest(_too_deep())
    # Tasks are judged one by one downstream: a bad one gets an empty result, not the batch's 400.
    if not all_text({key: value for key, value in body.items() if key != "tasks"}):
        raise BadRequest(
            "the JSON body holds a lone UTF-16 surrogate (an escape such as \\ud800 without its "
            "pair): not text"
        )
    return body


def read_body(request, limit: int | None) -> bytes:
    """At most ``limit`` bytes of the body; a chunked body (no Content-Length) is read only up
    to the limit, never whole first."""
    if limit is not None and request.content_length is not None and request.content_length > limit:
        raise TooLarge(_too_large(limit))
    chunks, size = [], 0
    try:
        if limit is None:
            return request.get_data()
        while chunk := request.stream.read(min(_READ, limit + 1 - size)):
            size += len(chunk)
            if size > limit:
                raise TooLarge(_too_large(limit))
            chunks.append(chunk)
    except RequestEntityTooLarge:  # Werkzeug's own check of MAX_CONTENT_LENGTH
        raise TooLarge(_too_large(limit)) from None
    except (OSError, ValueError) as error:
        # A body the server could not hand over whole (waitress refuses a malformed chunked
        # encoding itself, with a 400, before the app runs), or Werkzeug's reader: the
        # client's fault, not a 500.
        raise BadRequest(f"the request body cannot be read: {_unreadable(error)}") from None
    return b"".join(chunks)


def _unreadable(error: Exception) -> str:
    name = type(error).__name__
    return f"{name}: {_short(error)}" if str(error) else name


def all_text(value: object) -> bool:
    """Whether every string in ``value`` (keys too) encodes as UTF-8 (no recursion)."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return True


def deeper_than(value: object, limit: int) -> bool:
    """Whether ``value`` nests lists and objects more than ``limit`` levels (no recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _too_deep() -> str:
    return f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels"


def _too_large(limit: int) -> str:
    return f"the request body is larger than MAX_REQUEST_BYTES ({limit} bytes)"


def _short(error: Exception) -> str:
    return str(error)[:200]
