"""Running jobs: in-process (embedded default, no Redis) or on a Redis queue (``REDIS_URL``).

Jobs are named by dotted path (:mod:`worker.contract.queues`) so the web process never imports
the job's code, and with it torch, unless it runs jobs itself.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from ml_backend.errors import Unavailable
from worker.contract.connections import redis_connection
from worker.contract.errors import CamsamError
from worker.contract.fanout import enqueue_chunks
from worker.contract.queues import (
    AFTER_JOB,
    BULK_QUEUE,
    CACHE_STATS_KEY,
    INTERACTIVE_QUEUE,
    PREANNOTATE_JOB,
    PREDICT_QUEUE,
    ROUTE_PREFIX,
    describe,
    route_key,
)
from worker.contract.registry import resolve

log = logging.getLogger(__name__)

# How much a job may ask of the models, most urgent first: a request of its own (a click, a
# short batch), a chunk of a long batch someone waits for, a chunk of a write-back.
REQUEST, CHUNK, BACKGROUND = 0, 1, 2


class ModelLock:
    """The embedded mode's models, one job at a time; a job waits while a more urgent one
    does (``acquire(priority=...)``), so a long batch, taken a chunk at a time, never keeps a
    click or a short batch waiting for more than one chunk. ``with lock:`` is a request."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.held = False
        self.waiting = [0, 0, 0]  # by priority

    def acquire(self, timeout: float | None = None, priority: int = REQUEST) -> bool:
        def free() -> bool:
            return not self.held and not any(self.waiting[:priority])

        with self.condition:
            self.waiting[priority] += 1
            try:
                if not self.condition.wait_for(free, timeout):
                    return False
                self.held = True
                return True
            finally:
                self.waiting[priority] -= 1
                self.condition.notify_all()  # a less urgent job may go now

    def release(self) -> None:
        with self.condition:
            self.held = False
            self.condition.notify_all()

    def __enter__(self) -> ModelLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class EmbeddedRunner:
    """Runs each job in the serving process, one at a time (the models are shared).

    A long batch is handed over ``chunk`` tasks at a time (see :class:`ModelLock`); a job
    submitted for the background (write-back) runs on one thread of its own, a chunk at a time,
    whenever no request waits for the models. At most ``backlog`` tasks wait for it.
    """

    mode = "embedded"
    chunk = 32  # tasks: a request waits at most this many tasks' time for the models

    def __init__(self, backlog: int = 20_000) -> None:
        self.lock = ModelLock()
        self.backlog = backlog
        self.waiting_tasks = 0
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.guard = threading.Lock()
        self.thread: threading.Thread | None = None

    def run(
        self, name: str, payload: dict, timeout: float | None, priority: int = REQUEST
    ) -> object:
        if not self.lock.acquire(timeout=timeout, priority=priority):
            raise Unavailable(
                f"the in-process worker stayed busy for {timeout or 0:.0f} s: try again"
            )
        try:
            return resolve(name)(payload)
        finally:
            self.lock.release()

    def submit(self, name: str, payload: dict) -> None:
        """Run a long job in the background, a chunk of its tasks at a time.

        Raises:
            Unavailable: ``backlog`` tasks wait for the background already.
        """
        count = len(payload.get("tasks") or [])
        with self.guard:
            if self.waiting_tasks + count > self.backlog:
                raise Unavailable(
                    f"{self.waiting_tasks} tasks wait to be written back already: try again "
                    "once they are done"
                )
            self.waiting_tasks += count
            self.jobs.put((name, payload))
            if self.thread is None:
                self.thread = threading.Thread(target=self._work, name="camsam-write-back")
                self.thread.daemon = True
                self.thread.start()

    def _work(self) -> None:
        while True:
            name, payload = self.jobs.get()
            tasks = payload.get("tasks") or []
            for start in range(0, len(tasks), self.chunk):
                part = tasks[start : start + self.chunk]
                try:
                    self.run(name, {**payload, "tasks": part}, None, priority=BACKGROUND)
                except CamsamError as error:  # said in a line: a setting or Label Studio's answer
                    log.error("background job %s failed on %d tasks: %s", name, len(part), error)
                except Exception:  # a thread has nobody to raise to; the next chunk may do
                    log.exception("background job %s failed on %d tasks", name, len(part))
                finally:
                    with self.guard:
                        self.waiting_tasks -= len(part)

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
    chunk = 0  # a batch is one job: the workers' queues, not chunks, put clicks first

    def __init__(self, redis_url: str, backlog: int = 20_000, chunk_tasks: int = 64) -> None:
        from rq import Queue

        self.backlog = backlog
        self.chunk_tasks = max(1, chunk_tasks)
        self.connection = redis_connection(redis_url)
        self.queues = {
            name: Queue(name, connection=self.connection)
            for name in (INTERACTIVE_QUEUE, PREDICT_QUEUE, BULK_QUEUE)
        }

    def run(self, name: str, payload: dict, timeout: float, priority: int = REQUEST) -> object:
        """Enqueue and wait up to ``timeout`` seconds (workers order by queue, not
        ``priority``)."""
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
                    log.error("job %s failed: %s", job.id, _last_line(job))
                    raise Unavailable(
                        f"the worker failed on this request (job {job.id}: its error is in "
                        "the worker's log)"
                    )
                time.sleep(0.01)
            # The caller gives up: nobody must compute this answer any more.
            queue.remove(job.id)
            try:
                job.cancel()
            except InvalidJobOperation:
                pass  # never started and already expired
        except redis.RedisError as error:
            raise _unreachable(error) from error
        raise Unavailable(f"no worker answered within {timeout:.0f} s: is `camsam worker` running?")

    def submit(self, name: str, payload: dict, timeout: float = 3600) -> None:
        """Enqueue a long job as chunk jobs on the bulk queue (see :mod:`worker.contract.fanout`)
        and return; their outcome is in rq's registries and the workers' logs.

        Raises:
            Unavailable: ``backlog`` tasks wait in such jobs already (across every web process),
                or Redis is unreachable.
        """
        import redis
        from redis.exceptions import LockError

        assert name == PREANNOTATE_JOB, f"only pre-annotation fans out, not {name}"
        count = len(payload.get("tasks") or [])
        try:
            # One web process at a time counts and enqueues, so together they keep the bound.
            with self.connection.lock(BACKLOG_KEY + ":lock", timeout=30, blocking_timeout=10):
                waiting, jobs = self._waiting()
                if waiting + count > self.backlog or jobs >= MAX_WRITE_BACK_JOBS:
                    raise Unavailable(
                        f"{waiting} tasks in {jobs} chunk jobs wait to be written back already: "
                        "try again once they are done"
                    )
                chunks = enqueue_chunks(self.connection, payload, self.chunk_tasks, int(timeout))
                sizes = {job.id: len(job.args[0]["tasks"]) for job in chunks}
                self.connection.hset(BACKLOG_KEY, mapping=sizes)
        except (redis.RedisError, LockError) as error:
            raise _unreachable(error) from error

    def _waiting(self) -> tuple[int, int]:
        """Tasks, and jobs, submitted and not yet over; the entries of those that are go."""
        from rq.job import Job

        entries = {k.decode(): int(v) for k, v in self.connection.hgetall(BACKLOG_KEY).items()}
        if not entries:
            return 0, 0
        jobs = Job.fetch_many(list(entries), connection=self.connection)
        over = [
            job_id
            for job_id, job in zip(entries, jobs, strict=True)
            if job is None or job.get_status(refresh=False) in _OVER
        ]
        if over:
            self.connection.hdel(BACKLOG_KEY, *over)
        waiting = {job_id: count for job_id, count in entries.items() if job_id not in over}
        return sum(waiting.values()), len(waiting)

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


BACKLOG_KEY = "camsam:write-back-backlog"  # chunk job id -> tasks, for submitted chunks
MAX_WRITE_BACK_JOBS = 1000  # each submit reads their states in one round trip: keep it bounded
_OVER = ("finished", "failed", "stopped", "canceled")


def _unreachable(error: Exception) -> Unavailable:
    log.error("Redis is unreachable: %s", error)
    return Unavailable("Redis is unreachable (camsam logged why): try again once it is back")


def _last_line(job) -> str:
    result = job.latest_result()
    text = (result.exc_string or "") if result is not None else ""
    return text.strip().splitlines()[-1] if text.strip() else "unknown error"
