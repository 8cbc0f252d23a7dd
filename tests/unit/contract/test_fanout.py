"""Fan-out on a real Redis: chunks on the bulk queue, their totals, and the ledger that keeps a
chunk run again from writing a task twice."""

from __future__ import annotations

import uuid

import pytest

from worker.contract.fanout import CHUNK_RETRIES, Ledger, Progress, enqueue_chunks
from worker.contract.queues import BULK_QUEUE, INTERACTIVE_QUEUE, PREDICT_QUEUE


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

    import worker.jobs.predict

    def chunk(job_payload: dict) -> dict:
        ids = [task["id"] for task in job_payload["tasks"]]
        if 21 in ids:
            raise RuntimeError("Label Studio refused the write (simulated)")
        return {"model_version": "v0003", "written": len(ids) - 1, "skipped": 1, "failed": 0}

    monkeypatch.setattr(worker.jobs.predict, "preannotate", chunk)
    progress = Progress(connection, enqueue_chunks(connection, payload(25), 10))
    assert progress.poll().done == 0 and not progress.totals.over
    queue = Queue(BULK_QUEUE, connection=connection)
    SimpleWorker([queue], connection=connection).work(burst=True)
    totals = progress.poll()
    assert totals.over and (totals.done, totals.tasks) == (25, 25)
    assert (totals.written, totals.skipped, totals.failed) == (18, 2, 5)
    assert totals.lost_chunks == 1 and totals.versions == {"v0003"}


def test_a_chunk_run_again_leaves_out_what_its_batch_wrote(redis_url, label_studio):
    from redis import Redis

    from worker.jobs.predict import _unwritten
    from worker.labelstudio.client import connect

    ledger = Ledger(Redis.from_url(redis_url), uuid.uuid4().hex)
    ledger.begin([1, 2, 3])
    ledger.end([1])  # 2 and 3 were being written when the worker died
    label_studio.predictions.append({"id": 1, "task": 2, "model_version": "v0001", "result": []})
    label_studio.predictions.append({"id": 2, "task": 3, "model_version": "v0000", "result": []})
    tasks = payload(4)["tasks"]
    client = connect(label_studio.url, "secret")
    assert [t["id"] for t in _unwritten(tasks, ledger, client, "v0001")] == [3, 4]
    assert ledger.in_doubt() == {2, 3} and ledger.done() == {1}
    assert _unwritten(tasks, None, client, "v0001") == tasks  # no batch: no ledger


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
