"""``camsam worker``: serves the backend's Redis queues with the models loaded once.

A non-forking rq worker: CUDA does not survive fork, and the models stay warm between jobs
(``worker.jobs.predict`` keeps them per
process). A prediction worker first serves its own interactive
queue (clicks on images it has embedded, routed there by the web side), then the shared
interactive queue, then batch predictions. A training worker serves the training queue (so a
training run never holds up a prediction) and reconciles with Label Studio periodically.
"""

from __future__ import annotations

import logging
import os
import socket

from rq import Queue, SimpleWorker

from worker.contract.connections import redis_connection
from worker.contract.leases import reconcile_every, store_for, submitter
from worker.contract.queues import (
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
_name = ""


def work(redis_url: str, burst: bool = False, name: str | None = None, role: str = "predict"):
    global _name
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    _name = name or f"camsam-{socket.gethostname()}-{os.getpid()}"
    connection = redis_connection(redis_url, blocking=True)
    own = use_host_environment()  # this host's MODEL_DIR, whatever the web side's is
    names = []
    if role in ("predict", "all"):
        names += [own_queue(_name), INTERACTIVE_QUEUE, PREDICT_QUEUE]
    if role in ("train", "all"):
        names.append(TRAIN_QUEUE)
        seconds = Settings.from_env().reconcile_seconds
        if not burst:
            reconcile_every(seconds, store_for(redis_url), submitter(redis_url))
    queues = [Queue(q, connection=connection) for q in names]
    where = f", models in {own['model_dir']}" if own else ""
    print(f"camsam worker {_name} on {redis_url}: queues {', '.join(names)}{where}")
    SimpleWorker(queues, connection=connection, name=_name).work(burst=burst, with_scheduler=False)


def after_job(job, connection, result) -> None:
    """rq's success callback, in the worker: remember whose cache holds the clicked image, and
    report this worker's embedding cache counts for ``/metrics``."""
    route = job.meta.get("route")
    if route and _name:
        connection.set(ROUTE_PREFIX + route, own_queue(_name), ex=ROUTE_SECONDS)
    stats = result.get("embedding_cache") if isinstance(result, dict) else None
    if stats and _name:
        connection.hset(CACHE_STATS_KEY, mapping={f"{_name}:{k}": v for k, v in stats.items()})
