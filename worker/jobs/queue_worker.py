"""``camsam worker``: serves the backend's Redis queues with the models loaded once.

A non-forking rq worker: CUDA does not survive fork, and the models stay warm between jobs
(``worker.jobs.predict`` keeps them per
process). A prediction worker first serves its own interactive
queue (clicks on images it has embedded, routed there by the web side), then the shared
interactive queue, then batch predictions, then the chunks of long pre-annotations. A training
worker serves the training queue (so a training run never holds up a prediction) and
reconciles with Label Studio periodically.

A thread beats for the running job every ``BEAT_SECONDS``, so a worker that dies (SIGKILL, a
host lost) leaves a job that rq finds abandoned within ``BEAT_TTL`` seconds rather than after
its whole timeout; every worker looks for such jobs as often, and rq runs each again that has
retries left (the chunks of a fan-out do, after a wait) or marks it failed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from rq import Queue, SimpleWorker

from worker.contract.connections import redis_connection
from worker.contract.leases import reconcile_every, store_for, submitter
from worker.contract.queues import (
    BULK_QUEUE,
    CACHE_STATS_KEY,
    INTERACTIVE_QUEUE,
    PREDICT_QUEUE,
    ROUTE_PREFIX,
    TRAIN_QUEUE,
    own_queue,
)
from worker.contract.settings import Settings, use_host_environment

ROLES = ("predict", "train", "all")

ROUTE_SECONDS = 3600
BEAT_SECONDS = 5  # how often a running job is said to be alive, and abandoned ones looked for
BEAT_TTL = 30  # a job not said alive for this long is abandoned (its worker is gone)
_name = ""
log = logging.getLogger(__name__)


def work(redis_url: str, burst: bool = False, name: str | None = None, role: str = "predict"):
    global _name
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    _name = name or f"camsam-{socket.gethostname()}-{os.getpid()}"
    connection = redis_connection(redis_url, blocking=True)
    own = use_host_environment()  # this host's MODEL_DIR, whatever the web side's is
    names = queue_names(_name, role)
    if role in ("train", "all"):
        seconds = Settings.from_env().reconcile_seconds
        if not burst:
            reconcile_every(seconds, store_for(redis_url), submitter(redis_url))
    queues = [Queue(q, connection=connection) for q in names]
    where = f" (this host's own {', '.join(own)})" if own else ""
    print(f"camsam worker {_name} on {redis_url}: queues {', '.join(names)}{where}")
    reaper = threading.Thread(
        target=reap_abandoned, args=(redis_url, names), name="camsam-reaper", daemon=True
    )
    reaper.start()
    BeatingWorker(queues, connection=connection, name=_name).work(burst=burst, with_scheduler=False)


def queue_names(name: str, role: str) -> list[str]:
    """The queues a worker serves, most urgent first: rq takes the first job of the first
    queue that has one, so a click always goes before a batch, and a batch before a chunk of a
    long pre-annotation."""
    names = []
    if role in ("predict", "all"):
        names += [own_queue(name), INTERACTIVE_QUEUE, PREDICT_QUEUE, BULK_QUEUE]
    if role in ("train", "all"):
        names.append(TRAIN_QUEUE)
    return names


class BeatingWorker(SimpleWorker):
    """rq's SimpleWorker, whose running job a thread keeps saying is alive (the job itself runs
    in the worker's own thread, as with SimpleWorker, and may hold it for minutes)."""

    def execute_job(self, job, queue) -> None:
        from rq.worker import WorkerStatus

        execution = self.prepare_execution(job)
        stop = threading.Event()
        beat = threading.Thread(
            target=self._beat, args=(job, execution, stop), name="camsam-beat", daemon=True
        )
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            beat.join()
        self.set_state(WorkerStatus.IDLE)

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        return BEAT_TTL

    def _beat(self, job, execution, stop: threading.Event) -> None:
        while not stop.wait(BEAT_SECONDS):
            try:
                self.maintain_heartbeats(job, execution)
            except Exception as error:  # noqa: BLE001 (Redis away: the next beat may do)
                log.warning("job %s: no heartbeat: %s", job.id, error)


def reap_abandoned(redis_url: str, names: list[str]) -> None:
    """Every ``BEAT_SECONDS``: jobs of these queues whose worker stopped beating go back on
    their queue if they have retries left (rq's own handling), else to the failed ones; and
    retries whose wait is over are queued again (rq's scheduler, run here in the thread rather
    than as a forked process). One worker at a time does each, under a lock."""
    from rq.registry import StartedJobRegistry
    from rq.scheduler import RQScheduler

    connection = redis_connection(redis_url)
    scheduler = RQScheduler(names, connection=connection, name=f"{_name}-scheduler")
    stop = threading.Event()
    while not stop.wait(BEAT_SECONDS):
        try:
            lock = connection.lock("camsam:reaper", timeout=BEAT_SECONDS * 4)
            if lock.acquire(blocking=False):
                try:
                    for name in names:
                        StartedJobRegistry(name, connection=connection).cleanup()
                finally:
                    lock.release()
            if scheduler.acquire_locks():
                scheduler.enqueue_scheduled_jobs()
        except Exception as error:  # noqa: BLE001 (a thread has nobody to raise to)
            log.warning("looking for abandoned jobs failed: %s", error)


def after_job(job, connection, result) -> None:
    """rq's success callback, in the worker: remember whose cache holds the clicked image, and
    report this worker's embedding cache counts for ``/metrics``."""
    route = job.meta.get("route")
    if route and _name:
        connection.set(ROUTE_PREFIX + route, own_queue(_name), ex=ROUTE_SECONDS)
    stats = result.get("embedding_cache") if isinstance(result, dict) else None
    if stats and _name:
        connection.hset(CACHE_STATS_KEY, mapping={f"{_name}:{k}": v for k, v in stats.items()})
