"""Fan-out on a real Redis: chunks on the bulk queue, their totals, and the ledger that keeps a
chunk run again from writing a task twice."""

from __future__ import annotations

import threading
import uuid

import pytest

from worker.contract.fanout import (
    CHUNK_RETRIES,
    RETRY_SECONDS,
    Ledger,
    Progress,
    enqueue_chunks,
)
from worker.contract.queues import BULK_QUEUE, INTERACTIVE_QUEUE, PREDICT_QUEUE
from worker.labelstudio.client import LabelStudioError


@pytest.fixture
def connection(redis_url):
    from redis import Redis

    connection = Redis.from_url(redis_url)
    queues = [f"rq:queue:{name}" for name in (BULK_QUEUE, INTERACTIVE_QUEUE, PREDICT_QUEUE)]
    connection.delete(*queues)
    yield connection
    connection.delete(*queues)


def payload(count: int) -> dict:
    tasks = [{"id": k, "data": {"image": f"/data/upload/{k}.png"}} for k in range(1, count + 1)]
    return {"project": "5", "label_config": "", "tasks": tasks, "settings": {}}


def test_a_batch_goes_on_the_bulk_queue_in_chunks_with_retries(connection):
    jobs = enqueue_chunks(connection, payload(25), 10)
    chunks = [job.args[0] for job in jobs]
    assert [len(c["tasks"]) for c in chunks] == [10, 10, 5]
    assert [t["id"] for c in chunks for t in c["tasks"]] == list(range(1, 26))
    assert len({c["batch"] for c in chunks}) == 1
    assert all(job.retries_left == CHUNK_RETRIES and job.origin == BULK_QUEUE for job in jobs)
    assert enqueue_chunks(connection, payload(0), 10) == []


def test_progress_adds_up_the_chunks_and_counts_one_that_always_fails(connection, monkeypatch):
    from rq import Queue, SimpleWorker

    import worker.contract.fanout
    import worker.jobs.predict

    def chunk(job_payload: dict) -> dict:
        ids = [task["id"] for task in job_payload["tasks"]]
        if 21 in ids:
            raise RuntimeError("Label Studio refused the write (simulated)")
        return {"model_version": "v0003", "written": len(ids) - 1, "skipped": 1, "failed": 0}

    monkeypatch.setattr(worker.jobs.predict, "preannotate", chunk)
    monkeypatch.setattr(worker.contract.fanout, "RETRY_SECONDS", [0] * CHUNK_RETRIES)
    progress = Progress(connection, enqueue_chunks(connection, payload(25), 10))
    assert progress.poll().done == 0 and not progress.totals.over
    queue = Queue(BULK_QUEUE, connection=connection)
    SimpleWorker([queue], connection=connection).work(burst=True)
    totals = progress.poll()
    assert totals.over and (totals.done, totals.tasks) == (25, 25)
    assert (totals.written, totals.skipped, totals.failed) == (18, 2, 5)
    assert totals.lost_chunks == 1 and totals.versions == {"v0003"}


def test_a_failed_chunk_waits_before_it_runs_again(connection, monkeypatch):
    """Label Studio restarting fails every chunk at once: each waits before its next run."""
    from rq import Queue, SimpleWorker
    from rq.registry import ScheduledJobRegistry

    import worker.jobs.predict

    def chunk(job_payload: dict) -> dict:
        raise RuntimeError("Label Studio is restarting (simulated)")

    monkeypatch.setattr(worker.jobs.predict, "preannotate", chunk)
    (job,) = enqueue_chunks(connection, payload(5), 10)
    queue = Queue(BULK_QUEUE, connection=connection)
    SimpleWorker([queue], connection=connection).work(burst=True)
    job.refresh()
    assert job.get_status() == "scheduled" and job.retries_left == CHUNK_RETRIES - 1
    due = ScheduledJobRegistry(queue=queue).get_scheduled_time(job)
    wait = (due - job.ended_at).total_seconds()
    assert RETRY_SECONDS[0] - 1 <= wait <= RETRY_SECONDS[0] + 1
    ScheduledJobRegistry(queue=queue).remove(job)


def test_a_task_is_claimed_by_one_run_at_a_time(redis_url):
    from redis import Redis

    ledger = Ledger(Redis.from_url(redis_url), uuid.uuid4().hex)
    assert ledger.claim([1, 2, 3], "a") == dict.fromkeys([1, 2, 3], "granted")
    assert ledger.claim([2, 3, 4], "b") == {2: "busy", 3: "busy", 4: "granted"}
    assert ledger.claim([3], "a") == {3: "granted"}  # its own claim, again
    ledger.end([1, 2])
    assert ledger.claim([1, 2, 3], "b") == {1: "written", 2: "written", 3: "busy"}
    assert ledger.written([1, 2, 3, 4]) == {1, 2}
    ledger.release([3, 4], "a")  # a's write of 3 failed; 4 is b's, untouched
    assert ledger.claim([3, 4], "b") == {3: "stale", 4: "granted"}
    assert ledger.claim([3], "b", take_stale=True) == {3: "granted"}
    assert ledger.claim([3], "a", take_stale=True) == {3: "busy"}  # taken, and fresh again


def write_run(ledger, label_studio, tasks: list[int], version: str = "v0001"):
    from worker.jobs.predict import _Writes
    from worker.labelstudio.client import connect

    payload = {"project": "5", "batch": "-"}
    writes = _Writes(connect(label_studio.url, "secret"), payload, version, ledger)
    prediction = {"result": [], "score": 0.5, "model_version": version}
    left = writes.unwritten([{"id": t} for t in tasks])
    return writes, [(task["id"], prediction) for task in left]


def test_a_run_after_a_dead_one_asks_label_studio_about_its_writes_in_doubt(
    redis_url, label_studio
):
    from redis import Redis

    ledger = Ledger(Redis.from_url(redis_url), uuid.uuid4().hex, lease=0)
    ledger.claim([1, 2, 3], "dead")  # its write of 1 to 3 began, then it was killed
    ledger.end([1])
    label_studio.predictions.append({"id": 1, "task": 2, "model_version": "v0001", "result": []})
    label_studio.predictions.append({"id": 2, "task": 3, "model_version": "v0000", "result": []})
    writes, todo = write_run(ledger, label_studio, [1, 2, 3, 4])
    assert [t for t, _ in todo] == [2, 3, 4]  # 1 is in the ledger
    writes.write(todo)
    assert (writes.written, writes.skipped, writes.finish()) == (2, 2, 0)  # 2 landed before
    assert sorted(p["task"] for p in label_studio.predictions[2:]) == [3, 4]
    assert ledger.written([1, 2, 3, 4]) == {1, 2, 3, 4}


def test_two_runs_of_one_chunk_write_each_task_once(redis_url, label_studio, monkeypatch):
    """A worker declared dead that was only slow runs on beside the chunk's next run: each of
    their tasks still goes to Label Studio once, whichever claims it first."""
    from redis import Redis

    import worker.jobs.predict

    monkeypatch.setattr(worker.jobs.predict, "CLAIM_POLL_SECONDS", 0.05)
    ledger = Ledger(Redis.from_url(redis_url), uuid.uuid4().hex)
    slow, slow_todo = write_run(ledger, label_studio, list(range(1, 41)))
    fast, fast_todo = write_run(ledger, label_studio, list(range(1, 41)))
    slow.write(slow_todo[:10])  # the first run wrote 1-10 before it fell silent
    fast_todo = [(t, p) for t, p in fast_todo if t > 5]  # the second begins from a later chunk

    def writes(run, todo: list) -> None:  # a run writes from one thread, four tasks at a time
        for i in range(0, len(todo), 4):
            run.write(todo[i : i + 4])

    threads = [
        threading.Thread(target=writes, args=(run, todo))
        for run, todo in ((slow, slow_todo[10:]), (fast, fast_todo))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert slow.finish() == 0 and fast.finish() == 0
    tasks = sorted(p["task"] for p in label_studio.predictions)
    assert tasks == list(range(1, 41))
    assert slow.written + fast.written == 40
    assert fast.skipped + slow.skipped == len(fast_todo) + len(slow_todo) - 40


def test_a_failed_write_leaves_its_tasks_to_the_next_run_at_once(redis_url, label_studio):
    from redis import Redis

    ledger = Ledger(Redis.from_url(redis_url), uuid.uuid4().hex)
    failing, todo = write_run(ledger, label_studio, [1, 2])
    label_studio.refuse_imports = True
    with pytest.raises(LabelStudioError):
        failing.write(todo)
    label_studio.refuse_imports = False
    writes, todo = write_run(ledger, label_studio, [1, 2])
    writes.write(todo)
    assert (writes.written, writes.finish()) == (2, 0)  # no wait for a lease
    assert sorted(p["task"] for p in label_studio.predictions) == [1, 2]


def test_a_write_that_may_have_landed_keeps_its_claims(redis_url, label_studio, monkeypatch):
    """A timeout says nothing of whether Label Studio stored the predictions: the tasks stay
    claimed until the lease runs out, and only then does a run ask Label Studio."""
    from redis import Redis

    import worker.labelstudio.client

    def timed_out(*args):
        try:
            raise TimeoutError("read timed out (simulated)")
        except TimeoutError as error:
            raise LabelStudioError("cannot store 2 predictions") from error

    ledger = Ledger(Redis.from_url(redis_url), uuid.uuid4().hex)
    writes, todo = write_run(ledger, label_studio, [1, 2])
    monkeypatch.setattr(worker.labelstudio.client, "import_predictions", timed_out)
    with pytest.raises(LabelStudioError):
        writes.write(todo)
    assert ledger.claim([1, 2], "another run") == {1: "busy", 2: "busy"}


def test_a_worker_takes_clicks_then_batches_then_chunks(connection, monkeypatch):
    """Chunks queued first still wait for a click and a short batch queued after them."""
    from rq import Queue

    import worker.jobs.predict
    from worker.contract.queues import INTERACTIVE_QUEUE, PREDICT_QUEUE
    from worker.jobs.queue_worker import BeatingWorker, queue_names

    assert queue_names("w", "predict")[-1] == BULK_QUEUE
    order = []
    for name in ("preannotate", "predict", "interactive"):
        monkeypatch.setattr(
            worker.jobs.predict, name, lambda job, name=name: order.append(name) or {}
        )
    enqueue_chunks(connection, payload(20), 10)
    for queue, job in ((PREDICT_QUEUE, "predict"), (INTERACTIVE_QUEUE, "interactive")):
        Queue(queue, connection=connection).enqueue(f"worker.jobs.predict.{job}", {})
    names = queue_names("w", "predict")
    queues = [Queue(name, connection=connection) for name in names]
    BeatingWorker(queues, connection=connection, name="w").work(burst=True)
    assert order == ["interactive", "predict", "preannotate", "preannotate"]


def test_a_chunk_size_below_one_is_refused_or_taken_as_one(connection):
    from worker.contract.settings import Settings

    with pytest.raises(ValueError, match="PREANNOTATE_CHUNK"):
        Settings(preannotate_chunk=0)
    jobs = enqueue_chunks(connection, payload(3), size=-2)
    assert [len(job.args[0]["tasks"]) for job in jobs] == [1, 1, 1]  # each task once


def test_fanning_out_with_no_worker_to_take_it_says_so(connection, redis_url):
    from rq.worker_registration import WORKERS_BY_QUEUE_KEY

    from worker.cli.service import fan_out
    from worker.contract.errors import CamsamError
    from worker.contract.settings import Settings

    connection.delete(WORKERS_BY_QUEUE_KEY % BULK_QUEUE)  # another test's workers, gone or not
    with pytest.raises(CamsamError, match="--here"):
        fan_out(Settings(redis_url=redis_url), payload(3), "project 9")
    assert connection.llen(f"rq:queue:{BULK_QUEUE}") == 0  # nothing left queued for nobody
