"""``camsam worker``: serves the backend's Redis queues with the models loaded once.

A non-forking rq worker: CUDA does not survive fork, and the models stay warm between jobs
(``worker.jobs`` keeps them per process). Interactive jobs are taken before batch predictions.
"""

from __future__ import annotations

import logging

from redis import Redis
from rq import Queue, SimpleWorker

from ml_backend.runner import INTERACTIVE_QUEUE, PREDICT_QUEUE


def work(redis_url: str, burst: bool = False) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    connection = Redis.from_url(redis_url)
    queues = [Queue(name, connection=connection) for name in (INTERACTIVE_QUEUE, PREDICT_QUEUE)]
    print(f"camsam worker on {redis_url}: queues {INTERACTIVE_QUEUE}, {PREDICT_QUEUE}")
    SimpleWorker(queues, connection=connection).work(burst=burst, with_scheduler=False)
