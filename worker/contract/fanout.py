"""Fan-out: a long pre-annotation as chunk jobs that every predict worker, on every host, takes.

``camsam preannotate`` and a ``/predict`` batch too long to answer in the request both put their
tasks on the bulk queue a chunk at a time; workers serve it after clicks and short batches, so
those still go first. A chunk whose worker dies is found abandoned (see
:mod:`worker.jobs.queue_worker`) and run again by another worker, up to ``CHUNK_RETRIES``
times; the batch's :class:`Ledger` says which tasks it has written already, so a chunk run again
writes only the rest.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from worker.contract.queues import BULK_QUEUE, PREANNOTATE_JOB, describe

CHUNK_RETRIES = 3  # runs of a chunk after its first, for a dead worker or a failed write
LEDGER_SECONDS = 7 * 86400  # how long a batch's ledger outlives its last write


def enqueue_chunks(connection, payload: dict, size: int, timeout: int = 3600) -> list:
    """Put ``payload``'s tasks on the bulk queue, ``size`` a job; returns the jobs, in order.
    Each chunk carries the batch's id, which names its :class:`Ledger`."""
    from rq import Queue, Retry

    batch = uuid.uuid4().hex
    tasks = payload["tasks"]
    size = max(1, size)
    queue = Queue(BULK_QUEUE, connection=connection)
    specs = []
    for number, start in enumerate(range(0, len(tasks), size)):
        chunk = {**payload, "tasks": tasks[start : start + size], "batch": batch}
        specs.append(
            Queue.prepare_data(
                PREANNOTATE_JOB,
                args=(chunk,),
                job_id=f"camsam-chunk-{batch}-{number:05d}",
                description=describe(PREANNOTATE_JOB, chunk),
                timeout=timeout,
                result_ttl=86400,
                failure_ttl=LEDGER_SECONDS,
                retry=Retry(max=CHUNK_RETRIES),
            )
        )
    return queue.enqueue_many(specs) if specs else []


@dataclass
class Totals:
    """A fan-out's outcome so far: tasks in chunks that are over, and what they did."""

    tasks: int = 0
    done: int = 0
    written: int = 0
    skipped: int = 0
    failed: int = 0
    lost_chunks: int = 0  # chunks that failed every run: their tasks count as failed
    versions: set = field(default_factory=set)

    @property
    def over(self) -> bool:
        return self.done >= self.tasks


class Progress:
    """Follows a fan-out's chunk jobs; a chunk that is over is read once."""

    def __init__(self, connection, jobs: list) -> None:
        self.connection = connection
        self.sizes = {job.id: len(job.args[0]["tasks"]) for job in jobs}
        self.totals = Totals(tasks=sum(self.sizes.values()))
        self.pending = list(self.sizes)

    def poll(self) -> Totals:
        """Reads the chunks still pending; returns the totals."""
        from rq.job import Job

        still = []
        for job_id, job in zip(
            self.pending, Job.fetch_many(self.pending, self.connection), strict=True
        ):
            status = job.get_status(refresh=False) if job is not None else "failed"
            if status == "finished":
                self._add(job_id, job.return_value(refresh=True) or {})
            elif status in ("failed", "stopped", "canceled"):
                self.totals.lost_chunks += 1
                self._add(job_id, {"failed": self.sizes[job_id]})
            else:
                still.append(job_id)  # queued, started, or scheduled for a retry
        self.pending = still
        return self.totals

    def _add(self, job_id: str, answer: dict) -> None:
        totals = self.totals
        totals.done += self.sizes[job_id]
        totals.written += answer.get("written", 0)
        totals.skipped += answer.get("skipped", 0)
        totals.failed += answer.get("failed", 0)
        if answer.get("model_version"):
            totals.versions.add(answer["model_version"])


class Ledger:
    """Which tasks of one fan-out batch are written to Label Studio, and which were being
    written when their worker stopped (only those need asking Label Studio about)."""

    def __init__(self, redis, batch: str) -> None:
        self.redis = redis
        self.writing = f"camsam:fanout:{batch}:writing"
        self.written = f"camsam:fanout:{batch}:written"

    def done(self) -> set[int]:
        return {int(v) for v in self.redis.smembers(self.written)}

    def in_doubt(self) -> set[int]:
        """Tasks whose write began and never was seen to end."""
        return {int(v) for v in self.redis.sdiff(self.writing, self.written)}

    def begin(self, task_ids: list[int]) -> None:
        self._add(self.writing, task_ids)

    def end(self, task_ids: list[int]) -> None:
        self._add(self.written, task_ids)

    def _add(self, key: str, task_ids: list[int]) -> None:
        if task_ids:
            pipe = self.redis.pipeline()
            pipe.sadd(key, *task_ids)
            pipe.expire(key, LEDGER_SECONDS)
            pipe.execute()
