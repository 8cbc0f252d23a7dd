"""What crosses the queue: queue names, Redis keys, job names, and running a job by name.

Jobs are named by dotted path (rq's habit), so the web process never imports a job's code, and
with it torch, unless it runs jobs itself (the embedded mode, through :func:`resolve`).
"""

from __future__ import annotations

import hashlib
import json
import logging

log = logging.getLogger(__name__)

INTERACTIVE_QUEUE = "camsam-interactive"
PREDICT_QUEUE = "camsam-predict"
TRAIN_QUEUE = "camsam-train"
BULK_QUEUE = "camsam-bulk"  # chunks of long pre-annotations: served after every other
# Where a worker says which image embeddings it holds, and how its embedding cache does.
ROUTE_PREFIX = "camsam:route:"
CACHE_STATS_KEY = "camsam:embedding-cache"

PREDICT_JOB = "worker.jobs.predict.predict"
INTERACTIVE_JOB = "worker.jobs.predict.interactive"
PREANNOTATE_JOB = "worker.jobs.predict.preannotate"
FEEDBACK_JOB = "worker.jobs.feedback.score_annotation"
TRAIN_JOB = "worker.training.job.train_job"
AFTER_JOB = "worker.jobs.queue_worker.after_job"


def own_queue(worker_name: str) -> str:
    """The interactive queue only one worker serves: clicks on images it has embedded."""
    return f"{INTERACTIVE_QUEUE}@{worker_name}"


def describe(name: str, payload: dict) -> str:
    """What rq logs for a job: its name, project and size, never the payload (it holds the
    Label Studio key)."""
    tasks = payload.get("tasks")
    size = f", {len(tasks)} tasks" if isinstance(tasks, list) else ""
    return f"{name}(project {payload.get('project')}{size})"


def route_key(payload: dict) -> str:
    """An interactive request's image, by project and task data (the same task, the same key)."""
    task = payload["tasks"][0]
    text = json.dumps([payload["project"], task.get("data")], sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
