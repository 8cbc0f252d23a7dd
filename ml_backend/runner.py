"""Running jobs: in-process (embedded default, no Redis) or on a Redis queue (``REDIS_URL``).

Jobs are named by dotted path (``"worker.jobs.predict"``) so the web process never imports the
job's code, and with it torch, unless it runs jobs itself.
"""

from __future__ import annotations

import importlib
import threading

from ml_backend.errors import Unavailable


def resolve(name: str):
    module, _, attribute = name.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


class EmbeddedRunner:
    """Runs each job in the serving process, one at a time (the models are shared)."""

    mode = "embedded"

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def run(self, name: str, payload: dict, timeout: float) -> object:
        if not self.lock.acquire(timeout=timeout):
            raise Unavailable(f"the in-process worker stayed busy for {timeout:.0f} s: try again")
        try:
            return resolve(name)(payload)
        finally:
            self.lock.release()

    def queue_depth(self) -> int:
        return 0
