"""Running jobs: in-process (embedded default, no Redis) or on a Redis queue (``REDIS_URL``).

Jobs are named by dotted path (``"worker.jobs.predict"``) so the web process never imports the
job's code, and with it torch, unless it runs jobs itself.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time

from ml_backend.errors import Unavailable

log = logging.getLogger(__name__)
INTERACTIVE_QUEUE = "camsam-interactive"
PREDICT_QUEUE = "camsam-predict"


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

    def submit(self, name: str, payload: dict) -> None:
        """Run a long job in a thread, after whatever job runs now."""

        def work() -> None:
            with self.lock:
                try:
                    resolve(name)(payload)
                except Exception:  # a thread has nobody to raise to: say it in the log
                    log.exception("background job %s failed", name)

        threading.Thread(target=work, name=f"camsam-{name}", daemon=True).start()

    def queue_depth(self) -> int:
        return 0


class RqRunner:
    """Enqueues jobs on Redis for ``camsam worker`` processes and waits for their answer.

    Interactive jobs have their own queue, which workers serve first. A job not started within
    the caller's timeout is dropped (its ``ttl``), so nobody computes an answer nobody waits for.
    """

    mode = "redis"

    def __init__(self, redis_url: str) -> None:
        from redis import Redis
        from rq import Queue

        self.connection = Redis.from_url(redis_url)
        self.queues = {
            name: Queue(name, connection=self.connection)
            for name in (INTERACTIVE_QUEUE, PREDICT_QUEUE)
        }

    def run(self, name: str, payload: dict, timeout: float) -> object:
        import redis
        from rq.exceptions import InvalidJobOperation

        queue = self.queues[INTERACTIVE_QUEUE if name.endswith("interactive") else PREDICT_QUEUE]
        deadline = time.monotonic() + timeout
        try:
            job = queue.enqueue(
                name,
                payload,
                ttl=max(1, int(timeout)),
                job_timeout=int(timeout) + 30,
                result_ttl=60,
                failure_ttl=3600,
            )
            while time.monotonic() < deadline:
                status = job.get_status(refresh=True)
                if status == "finished":
                    return job.return_value(refresh=True)
                if status in ("failed", "stopped", "canceled"):
                    raise Unavailable(f"the worker failed on this request: {_last_line(job)}")
                time.sleep(0.01)
            # The caller gives up: nobody must compute this answer any more.
            queue.remove(job.id)
            try:
                job.cancel()
            except InvalidJobOperation:
                pass  # never started and already expired
        except redis.RedisError as error:
            raise Unavailable(f"Redis is unreachable: {error}") from error
        raise Unavailable(f"no worker answered within {timeout:.0f} s: is `camsam worker` running?")

    def submit(self, name: str, payload: dict, timeout: float = 6 * 3600) -> None:
        """Enqueue a long job and return; its outcome is in rq's registries and the worker log."""
        import redis

        try:
            self.queues[PREDICT_QUEUE].enqueue(
                name, payload, job_timeout=int(timeout), result_ttl=3600, failure_ttl=7 * 86400
            )
        except redis.RedisError as error:
            raise Unavailable(f"Redis is unreachable: {error}") from error

    def queue_depth(self) -> int:
        try:
            return sum(len(q) for q in self.queues.values())
        except Exception:  # noqa: BLE001 (metrics must answer even when Redis does not)
            return -1


def _last_line(job) -> str:
    result = job.latest_result()
    text = (result.exc_string or "") if result is not None else ""
    return text.strip().splitlines()[-1] if text.strip() else "unknown error"
