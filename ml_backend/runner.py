"""Running jobs: in-process (embedded default, no Redis) or on a Redis queue (``REDIS_URL``).

Jobs are named by dotted path (:mod:`worker.contract.queues`) so the web process never imports
the job's code, and with it torch, unless it runs jobs itself.
"""

from __future__ import annotations

import logging
import threading
import time

from ml_backend.errors import Unavailable
from worker.contract.connections import redis_connection
from worker.contract.queues import (
    AFTER_JOB,
    CACHE_STATS_KEY,
    INTERACTIVE_QUEUE,
    PREDICT_QUEUE,
    ROUTE_PREFIX,
    describe,
    route_key,
    run_in_thread,
)
from worker.contract.registry import resolve

log = logging.getLogger(__name__)


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
        run_in_thread(name, payload, self.lock)

    def queue_depth(self) -> int:
        return 0

    def problem(self) -> str | None:
        return None

    def embedding_cache(self) -> dict[str, int]:
        return {}


class RqRunner:
    """Enqueues jobs on Redis for ``camsam worker`` processes and waits for their answer.

    Interactive jobs have their own queue, which workers serve first. A click on an image that a
    worker has embedded goes to that worker's own queue, so its embedding cache answers. A job
    not started within the caller's timeout is dropped (its ``ttl``), so nobody computes an
    answer nobody waits for.
    """

    mode = "redis"

    def __init__(self, redis_url: str) -> None:
        from rq import Queue

        self.connection = redis_connection(redis_url)
        self.queues = {
            name: Queue(name, connection=self.connection)
            for name in (INTERACTIVE_QUEUE, PREDICT_QUEUE)
        }

    def run(self, name: str, payload: dict, timeout: float) -> object:
        import redis
        from rq import Callback
        from rq.exceptions import InvalidJobOperation

        deadline = time.monotonic() + timeout
        try:
            meta = {}
            if name.endswith("interactive"):
                meta["route"] = route_key(payload)
                queue = self._interactive_queue(meta["route"])
            else:
                queue = self.queues[PREDICT_QUEUE]
            job = queue.enqueue(
                name,
                payload,
                description=describe(name, payload),
                ttl=max(1, int(timeout)),
                job_timeout=int(timeout) + 30,
                result_ttl=60,
                failure_ttl=3600,
                meta=meta,
                on_success=Callback(AFTER_JOB, timeout=5),
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
                name,
                payload,
                description=describe(name, payload),
                job_timeout=int(timeout),
                result_ttl=3600,
                failure_ttl=7 * 86400,
            )
        except redis.RedisError as error:
            raise Unavailable(f"Redis is unreachable: {error}") from error

    def problem(self) -> str | None:
        """What keeps jobs from running, for /health (None when Redis answers)."""
        try:
            self.connection.ping()
        except Exception as error:  # noqa: BLE001 (any failure is the answer)
            return f"Redis is unreachable: {error}; /predict answers 503 until it is back"
        return None

    def _interactive_queue(self, key: str):
        """The queue of the live worker that embedded this image last, else the shared one."""
        from rq import Queue, Worker

        held = self.connection.get(ROUTE_PREFIX + key)
        if held:
            queue = Queue(held.decode(), connection=self.connection)
            if Worker.count(queue=queue):
                return queue
        return self.queues[INTERACTIVE_QUEUE]

    def embedding_cache(self) -> dict[str, int]:
        """Hits and misses of every worker's embedding cache, as the workers last reported."""
        try:
            raw = self.connection.hgetall(CACHE_STATS_KEY)
        except Exception:  # noqa: BLE001 (metrics must answer even when Redis does not)
            return {}
        return {k.decode(): int(v) for k, v in raw.items()}

    def queue_depth(self) -> int:
        try:
            return sum(len(q) for q in self.queues.values())
        except Exception:  # noqa: BLE001 (metrics must answer even when Redis does not)
            return -1


def _last_line(job) -> str:
    result = job.latest_result()
    text = (result.exc_string or "") if result is not None else ""
    return text.strip().splitlines()[-1] if text.strip() else "unknown error"
