"""Many hosts, stood in for by real `camsam worker` processes with a MODEL_DIR each on one real
Redis (MODEL_STORE=redis): versions reach every worker, and a pre-annotation fanned out over
them writes each task once while one of them is killed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ml_backend.protocol import predict_payload
from tests.conftest import REPO, stop_process, wait_while_progressing
from tests.service.test_app import predict_body
from worker.contract.queues import BULK_QUEUE, PREDICT_JOB, own_queue
from worker.contract.settings import Settings
from worker.contract.store import named_model_dir
from worker.pipeline.checkpoint import load_checkpoint, publish

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)
PROJECT = "9"
WAIT = 600  # seconds before a test gives up on a worker (a guard against hanging, not a figure)


def start_host(redis_url: str, name: str, model_dir: Path, log: Path) -> subprocess.Popen:
    """A `camsam worker` as on a host of its own: its own MODEL_DIR, nothing shared but Redis."""
    env = {**os.environ, "REDIS_URL": redis_url, "MODEL_DIR": str(model_dir)}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "worker", "--name", name],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen) -> None:
    stop_process(process, 60)


def wait_for(check, what: str, seconds: float = WAIT):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {seconds:.0f} s")


def trainer(tmp_path: Path, redis_url: str, trained_model_dir: Path):
    """The training host's store for the project, its first version shared through Redis."""
    from redis import Redis

    connection = Redis.from_url(redis_url)
    for key in connection.scan_iter(f"camsam:models:{PROJECT}:*"):  # another test's versions
        connection.delete(key)
    shutil.copytree(trained_model_dir, tmp_path / "trainer" / PROJECT)
    models = named_model_dir(tmp_path / "trainer", PROJECT, redis_url, "redis")
    models.set_current("v0001", load_checkpoint)  # on this disk only so far: shared now
    return models


def ask(redis_url: str, worker: str, synthetic_dir: Path) -> str:
    """The model version the worker named ``worker`` predicts with (through its own queue)."""
    from redis import Redis
    from rq import Queue

    spot = sorted((synthetic_dir / "Spot").glob("*.png"))[0]
    task = {"id": 1, "data": {"image": f"/data/local-files/?d=Spot/{spot.name}"}}
    payload = predict_payload(predict_body([task], project=PROJECT))
    settings = Settings(model_dir="/web/side/path", redis_url=redis_url, model_store="redis")
    payload["settings"] = {
        **settings.for_worker(),
        "local_files_document_root": str(synthetic_dir),
    }
    queue = Queue(own_queue(worker), connection=Redis.from_url(redis_url))
    job = queue.enqueue(PREDICT_JOB, payload, description="which version")
    wait_for(lambda: job.get_status(refresh=True) in ("finished", "failed"), f"{worker} answering")
    answer = job.return_value(refresh=True)
    assert answer is not None, f"{worker} failed: see its log"
    assert answer["failed"] == 0 and answer["results"][0]["result"]
    return answer["model_version"]


@pytest.mark.slow
def test_versions_reach_every_host_late_or_not_and_so_does_a_rollback(
    redis_url, trained_model_dir, synthetic_dir, tmp_path, monkeypatch
):
    from worker.cli.main import main

    models = trainer(tmp_path, redis_url, trained_model_dir)
    first = start_host(redis_url, "host-a", tmp_path / "a", tmp_path / "a.log")
    late = None
    try:
        assert ask(redis_url, "host-a", synthetic_dir) == "v0001"
        copy = tmp_path / "a" / PROJECT / "versions" / "v0001.pt"
        assert copy.read_bytes() == models.path("v0001").read_bytes()
        spec, weights = load_checkpoint(models.path("v0001"))
        assert publish(models, spec, weights).version == "v0002"  # a new version, trained here
        late = start_host(redis_url, "host-b", tmp_path / "b", tmp_path / "b.log")
        assert ask(redis_url, "host-b", synthetic_dir) == "v0002"
        assert ask(redis_url, "host-a", synthetic_dir) == "v0002"
        monkeypatch.setenv("REDIS_URL", redis_url)
        monkeypatch.setenv("MODEL_STORE", "redis")
        rollback = ["rollback", "v0001", "--project", PROJECT]
        assert main([*rollback, "--model-dir", str(tmp_path / "c")]) == 0  # from a third disk
        assert [ask(redis_url, w, synthetic_dir) for w in ("host-a", "host-b")] == ["v0001"] * 2
        fetched = tmp_path / "b" / PROJECT / "versions" / "v0001.pt"  # b had never needed it
        assert fetched.read_bytes() == models.path("v0001").read_bytes()
    finally:
        stop(first)
        if late is not None:
            stop(late)


@pytest.mark.slow
def test_a_fanned_out_preannotation_writes_each_task_once_while_a_worker_is_killed(
    redis_url, trained_model_dir, synthetic_dir, label_studio, tmp_path
):
    from collections import Counter

    from redis import Redis
    from rq import Worker
    from rq.job import Job
    from rq.registry import FinishedJobRegistry, StartedJobRegistry

    from worker.contract.fanout import CHUNK_RETRIES, Ledger

    trainer(tmp_path, redis_url, trained_model_dir)
    label_studio.label_config = (REPO / "tests" / "data" / "synthetic_config.xml").read_text()
    images = sorted(synthetic_dir.glob("*/*.png"))
    count = 240
    label_studio.tasks = [
        {
            "id": k + 1,
            "data": {"image": f"/data/upload/{images[k % len(images)].relative_to(synthetic_dir)}"},
            "predictions": [],
        }
        for k in range(count)
    ]
    hosts = {
        name: start_host(redis_url, name, tmp_path / name, tmp_path / f"{name}.log")
        for name in ("host-a", "host-b")
    }
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "MODEL_STORE": "redis",
        "MODEL_DIR": str(tmp_path / "command"),
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": "secret",
        "PREANNOTATE_CHUNK": "40",
        "PREDICT_BATCH_SIZE": "4",  # ten writes a chunk: a kill can fall between two
    }
    connection = Redis.from_url(redis_url)
    both = {"host-a", "host-b"}
    wait_for(lambda: both <= {w.name for w in Worker.all(connection)}, "both workers up")
    with (tmp_path / "command.log").open("wb") as log:
        command = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "preannotate", "--project", PROJECT],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
    started = StartedJobRegistry(BULK_QUEUE, connection=connection)

    def victim_mid_chunk() -> bool:
        """host-b has written part of the chunk it is working on."""
        ids = started.get_job_ids(cleanup=False)
        for job in Job.fetch_many(ids, connection):
            if job is not None and job.worker_name == "host-b":
                chunk = job.args[0]
                if Ledger(connection, chunk["batch"]).written([t["id"] for t in chunk["tasks"]]):
                    return True
        return False

    try:
        wait_for(victim_mid_chunk, "host-b half way through a chunk")
        hosts["host-b"].send_signal(signal.SIGKILL)
        hosts["host-b"].wait(timeout=30)
        out = bytearray()
        reader = threading.Thread(target=lambda: out.extend(command.stdout.read()), daemon=True)
        reader.start()
        finished = FinishedJobRegistry(BULK_QUEUE, connection=connection)

        def progress() -> tuple:
            log = tmp_path / "command.log"
            jobs = (len(started), len(finished), len(label_studio.predictions))
            return (*jobs, log.stat().st_size if log.exists() else 0)

        # A killed worker's chunk waits, with nothing moving, until rq finds it abandoned.
        wait_while_progressing(lambda: command.poll() is not None, progress, "preannotate", WAIT)
        reader.join(60)
    finally:
        for process in [*hosts.values(), command]:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    assert command.returncode == 0, (tmp_path / "command.log").read_text()[-2000:]
    per_task = Counter(p["task"] for p in label_studio.predictions)
    assert sorted(per_task) == list(range(1, count + 1))  # nothing lost
    assert set(per_task.values()) == {1}  # nothing written twice
    assert all(p["model_version"] == "v0001" for p in label_studio.predictions)
    summary = bytes(out).decode().strip().splitlines()[-1]
    written, skipped = int(summary.split()[0]), int(summary.split(", ")[1].split()[0])
    assert written + skipped == count and summary.endswith("0 tasks failed"), summary
    assert skipped > 0  # the chunk run again left out what host-b had written of it
    finished = FinishedJobRegistry(BULK_QUEUE, connection=connection).get_job_ids()
    runs = [j.retries_left for j in Job.fetch_many(finished, connection) if j is not None]
    assert min(runs) < CHUNK_RETRIES, "no chunk was run again: the kill hit no chunk"
