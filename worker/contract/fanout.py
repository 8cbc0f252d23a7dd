"""Fan-out: a long pre-annotation as chunk jobs that every predict worker, on every host, takes.

``camsam preannotate`` and a ``/predict`` batch too long to answer in the request both put their
tasks on the bulk queue a chunk at a time; workers serve it after clicks and short batches, so
those still go first. A chunk whose worker dies is found abandoned (see
:mod:`worker.jobs.queue_worker`) and run again by another worker, up to ``CHUNK_RETRIES``
times; the batch's :class:`Ledger` says which tasks it has written already, so a chunk run again
writes only the rest, and a run claims each task before writing it, so two runs of one chunk (a
worker declared dead that was only slow) never write the same task.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from worker.contract.queues import BULK_QUEUE, PREANNOTATE_JOB, describe

CHUNK_RETRIES = 3  # runs of a chunk after its first, for a dead worker or a failed write
RETRY_SECONDS = [10, 60, 300]  # the wait before each of those runs: Label Studio may be restarting
LEDGER_SECONDS = 7 * 86400  # how long a batch's ledger outlives its last write
# A claim on a task outlives any write begun under it: label-studio-sdk gives each request 60 s
# a phase (connect, send, answer) and tries it up to three times. Only then may another run ask
# Label Studio whether the write landed and take the task over.
CLAIM_SECONDS = 600

# Claims tasks for a run, in one step: KEYS = claims hash, written set; ARGV = run, lease,
# whether a claim past its lease may be taken, ids. Per id: "written" (by any run), "granted"
# (unclaimed, this run's, or past its lease when allowed), "stale" (another run's, past its
# lease), "busy" (another run's, within it).
CLAIM_SCRIPT = """
local now = tonumber(redis.call('TIME')[1])
local codes = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local code = 'granted'
  if redis.call('SISMEMBER', KEYS[2], id) == 1 then
    code = 'written'
  else
    local held = redis.call('HGET', KEYS[1], id)
    if held then
      local owner, since = string.match(held, '^(%S+) (%d+)$')
      if owner ~= ARGV[1] then
        if now - tonumber(since) < tonumber(ARGV[2]) then
          code = 'busy'
        elseif ARGV[3] ~= '1' then
          code = 'stale'
        end
      end
    end
    if code == 'granted' then
      redis.call('HSET', KEYS[1], id, ARGV[1] .. ' ' .. now)
    end
  end
  codes[#codes + 1] = code
end
return codes
"""

# Marks a run's claims as past their lease (KEYS = claims hash; ARGV = run, ids): its write
# failed, and whether it landed before failing is for the next run to ask Label Studio.
RELEASE_SCRIPT = """
for i = 2, #ARGV do
  local held = redis.call('HGET', KEYS[1], ARGV[i])
  if held and string.match(held, '^(%S+) ') == ARGV[1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[1] .. ' 0')
  end
end
return 0
"""


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
                retry=Retry(max=CHUNK_RETRIES, interval=RETRY_SECONDS),
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
    """Which tasks of one fan-out batch are written to Label Studio, and which run of a chunk
    may write each of the rest: a run writes only the tasks it holds a claim on."""

    def __init__(self, redis, batch: str, lease: int = CLAIM_SECONDS) -> None:
        self.redis = redis
        self.lease = lease
        self.claims = f"camsam:fanout:{batch}:claims"
        self.written_key = f"camsam:fanout:{batch}:written"

    def written(self, task_ids: list[int]) -> set[int]:
        """Those of ``task_ids`` the batch has written."""
        if not task_ids:
            return set()
        found = self.redis.smismember(self.written_key, task_ids)
        return {task_id for task_id, there in zip(task_ids, found, strict=True) if there}

    def claim(self, task_ids: list[int], run: str, take_stale: bool = False) -> dict[int, str]:
        """Claims ``task_ids`` for ``run``, all at once; each id's outcome: ``granted``,
        ``written``, ``busy`` (another run holds it) or ``stale`` (another run held it past
        the lease: whether its write landed is for Label Studio to say; then ``take_stale``)."""
        if not task_ids:
            return {}
        codes = self.redis.eval(
            CLAIM_SCRIPT,
            2,
            self.claims,
            self.written_key,
            run,
            self.lease,
            int(take_stale),
            *task_ids,
        )
        self.redis.expire(self.claims, LEDGER_SECONDS)
        return {t: c.decode() for t, c in zip(task_ids, codes, strict=True)}

    def release(self, task_ids: list[int], run: str) -> None:
        """``run``'s claims on ``task_ids`` lapse now: its write of them failed."""
        if task_ids:
            self.redis.eval(RELEASE_SCRIPT, 1, self.claims, run, *task_ids)

    def end(self, task_ids: list[int]) -> None:
        """``task_ids`` are in Label Studio: written, and claimed no more."""
        if task_ids:
            pipe = self.redis.pipeline()
            pipe.sadd(self.written_key, *task_ids)
            pipe.hdel(self.claims, *task_ids)
            pipe.expire(self.written_key, LEDGER_SECONDS)
            pipe.execute()
