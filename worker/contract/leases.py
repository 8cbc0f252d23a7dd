"""When training runs: per project, debounced, never two runs at once, nothing lost.

Three flags per project, in Redis (or in this process in the embedded mode):

- ``pending``: something changed since the last run started (a webhook, a reconciliation);
- ``queued``: a training job for the project is on the queue or running, so a burst of events
  enqueues one job;
- ``running``: a job holds the project.

``queued`` and ``running`` are leases the running job renews: when its worker dies (even by
SIGKILL) they expire, and the next event or reconciliation starts a new job.

A job waits out the burst, takes ``running``, and trains while ``pending`` is set: events that
arrive during a run make exactly one more run. Webhooks are only a trigger: the job reads the
labels from Label Studio itself. The web side asks for runs; the training job keeps the leases.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable

from worker.contract.connections import redis_connection
from worker.contract.errors import CamsamError
from worker.contract.queues import TRAIN_JOB, TRAIN_QUEUE, describe
from worker.contract.registry import resolve
from worker.contract.settings import Settings

log = logging.getLogger(__name__)

PENDING, QUEUED, RUNNING = "camsam:train:pending:", "camsam:train:queued:", "camsam:train:running:"
PROJECTS = "camsam:projects"
JOB_TIMEOUT = 4 * 3600


class LocalStore:
    """The few Redis commands the flags need, for the embedded mode (one process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, str] = {}

    def set(self, key: str, value: str, nx: bool = False, ex: int | None = None) -> bool:
        with self.lock:
            if nx and key in self.values:
                return False
            self.values[key] = value
            return True

    def get(self, key: str) -> str | None:
        with self.lock:
            return self.values.get(key)

    def getdel(self, key: str) -> str | None:
        with self.lock:
            return self.values.pop(key, None)

    def delete(self, key: str) -> None:
        with self.lock:
            self.values.pop(key, None)

    def hset(self, key: str, field: str, value: str) -> None:
        with self.lock:
            self.values.setdefault(key, {})[field] = value

    def hgetall(self, key: str) -> dict:
        with self.lock:
            return dict(self.values.get(key, {}))


class JobThreads:
    """Named jobs run on at most ``workers`` daemon threads, started as jobs arrive: the
    embedded mode's background jobs, so a burst of webhooks never starts a thread per event.
    ``backlog`` (> 0) bounds the jobs waiting; beyond it a job is dropped (and logged)."""

    def __init__(self, name: str, workers: int = 1, backlog: int = 0) -> None:
        self.name = name
        self.workers = max(1, workers)
        self.jobs: queue.Queue = queue.Queue(maxsize=max(0, backlog))
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def __call__(self, name: str, payload: dict) -> bool:
        """Queue a job; False when the backlog is full and it was dropped."""
        try:
            self.jobs.put_nowait((name, payload))
        except queue.Full:
            log.warning("%s: %d jobs wait already: %s dropped", self.name, self.jobs.qsize(), name)
            return False
        with self.lock:
            if len(self.threads) < self.workers:
                thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self.threads.append(thread)
                thread.start()
        return True

    def _work(self) -> None:
        while True:
            name, payload = self.jobs.get()
            try:
                resolve(name)(payload)
            except CamsamError as error:  # said in a line: a setting or Label Studio's answer
                log.error("background job %s failed: %s", name, error)
            except Exception:  # a thread has nobody to raise to
                log.exception("background job %s failed", name)


_local = LocalStore()
# Embedded training: a few projects at a time (a project's job trains while its labels change).
_training = JobThreads("camsam-train", workers=4)
Submit = Callable[[str, dict], object]


def store_for(redis_url: str):
    """Redis when there is one, else this process's store (the embedded mode)."""
    if not redis_url:
        return _local
    return redis_connection(redis_url)


def submitter(redis_url: str, backlog: int = 0) -> Submit:
    """Enqueue on the training queue (``camsam worker --role train``), or, embedded, on the
    process's few training threads. With ``backlog`` > 0 (jobs that may be dropped, such as
    scoring feedback), a job is dropped while that many wait (in the embedded mode, on a
    thread of their own)."""
    if redis_url:
        from rq import Queue

        train_queue = Queue(TRAIN_QUEUE, connection=store_for(redis_url))

        def enqueue(name: str, payload: dict) -> bool:
            if backlog > 0 and train_queue.count >= backlog:
                log.warning("%d jobs wait on %s: %s dropped", backlog, TRAIN_QUEUE, name)
                return False
            train_queue.enqueue(
                name,
                payload,
                description=describe(name, payload),
                job_timeout=JOB_TIMEOUT,
                result_ttl=86400,
                failure_ttl=7 * 86400,
            )
            return True

        return enqueue

    return JobThreads("camsam-jobs", backlog=backlog) if backlog > 0 else _training


def remember_project(store, payload: dict) -> None:
    """Keep the project and the settings its jobs need, for the periodic reconciliation."""
    store.hset(PROJECTS, payload["project"], json.dumps(payload["settings"]))


def known_projects(store) -> list[dict]:
    """Training payloads of every project a webhook has named."""
    return [
        {"project": _text(k), "settings": json.loads(v)} for k, v in store.hgetall(PROJECTS).items()
    ]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def request_training(store, submit: Submit, payload: dict, reason: str) -> bool:
    """Mark the project changed; enqueue a training job unless one is queued or running.

    Returns whether a job was enqueued.
    """
    project = payload["project"]
    store.set(PENDING + project, reason)
    if not store.set(QUEUED + project, "1", nx=True, ex=_lease(payload)):
        return False
    submit(TRAIN_JOB, payload)
    return True


def run_pending(
    store,
    submit: Submit,
    payload: dict,
    train_once: Callable[[], None],
    debounce: float = 0.0,
    poll: float = 0.5,
) -> int:
    """The training job's loop: wait out the burst, then train while changes are pending.

    Returns the number of runs.
    """
    project, lease = payload["project"], _lease(payload)
    time.sleep(debounce)
    while not store.set(RUNNING + project, "1", nx=True, ex=lease):
        time.sleep(poll)  # a run of the previous job is ending on another worker
    done = threading.Event()

    def renew() -> None:
        while not done.wait(lease / 3):
            store.set(RUNNING + project, "1", ex=lease)
            store.set(QUEUED + project, "1", ex=lease)

    renewer = threading.Thread(target=renew, name=f"camsam-lease-{project}", daemon=True)
    renewer.start()
    runs = 0
    try:
        while store.getdel(PENDING + project) is not None:
            runs += 1
            train_once()
    finally:
        done.set()
        renewer.join()  # gone before the next job starts its own: one renewer a training thread
        store.delete(RUNNING + project)
        store.delete(QUEUED + project)
    if store.get(PENDING + project) is not None:  # came after the last check: one more job
        request_training(store, submit, payload, store.get(PENDING + project) or "pending")
    return runs


def _lease(payload: dict) -> int:
    lease = Settings.from_payload(payload.get("settings") or {}).train_lease
    return max(1, lease or Settings.train_lease)  # 0 (unset) is the default, not one second


def reconcile(store, submit: Submit) -> int:
    """Ask for a training run of every known project; a run with no new labels in Label Studio
    ends at once. So a lost webhook costs a delay, never a label. Returns the jobs enqueued."""
    return sum(
        request_training(store, submit, payload, "reconcile") for payload in known_projects(store)
    )


def reconcile_every(seconds: float, store, submit: Submit) -> threading.Thread:
    """Start a daemon thread that reconciles every ``seconds`` (none when ``seconds`` <= 0)."""

    def loop() -> None:
        while True:
            time.sleep(seconds)
            try:
                reconcile(store, submit)
            except Exception:  # a lost Redis or Label Studio must not end the loop
                log.exception("reconciliation failed; trying again in %.0f s", seconds)

    thread = threading.Thread(target=loop, name="camsam-reconcile", daemon=True)
    if seconds > 0:
        thread.start()
    return thread
