"""Things named by dotted path: jobs, segmenters, CAM methods, refiners (rq's habit).

A registry is a plain dict from a name to a dotted path, kept where its kind lives; reading it
imports nothing, and :func:`lookup` imports the one entry asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping


def resolve(path: str):
    """The object a dotted path names (``"worker.jobs.predict.predict"``), imported on use."""
    module, _, attribute = path.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def lookup(table: Mapping[str, str], name: str, kind: str, error: type[Exception]):
    """The object ``table`` names ``name``.

    Raises:
        error: ``name`` is not in ``table`` (the message lists what is).
    """
    if name not in table:
        raise error(f"unknown {kind} {name!r}: choose one of {tuple(table)}")
    return resolve(table[name])
