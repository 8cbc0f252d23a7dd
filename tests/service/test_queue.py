"""The Redis mode: the web app enqueues, a real `camsam worker` process answers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from ml_backend.app import create_app
from tests.conftest import REPO, SAM2_TINY_CONFIG, stop_process
from tests.service.test_app import predict_body

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)


def start_worker(redis_url: str, name: str, role: str = "predict") -> subprocess.Popen:
    env = {**os.environ, "REDIS_URL": redis_url}
    return subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "worker", "--name", name, "--role", role],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(process: subprocess.Popen) -> None:
    stop_process(process, 20)


@pytest.fixture
def worker_process(redis_url):
    process = start_worker(redis_url, "w0")
    yield process
    stop(process)


def test_predictions_go_through_the_queue_to_a_worker(
    redis_url, worker_process, trained_model_dir, synthetic_dir
):
    app = create_app(
        {
            "MODEL_DIR": trained_model_dir,
            "REDIS_URL": redis_url,
            "LOCAL_FILES_DOCUMENT_ROOT": synthetic_dir,
            "PREDICT_TIMEOUT": 60,
        }
    )
    client = app.test_client()
    assert client.get("/health").json["mode"] == "redis"
    spot = sorted((synthetic_dir / "Spot").glob("*.png"))[0]
    tasks = [
        {"id": 1, "data": {"image": f"/data/local-files/?d=Spot/{spot.name}"}},
        {"id": 2, "data": {"image": "/data/local-files/?d=Spot/missing.png"}},
    ]
    body = predict_body(tasks, project="9.1")
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.json
    results = response.json["results"]
    assert len(results) == 2 and results[1]["result"] == []
    assert any(r["type"] == "brushlabels" for r in results[0]["result"])
    click = {
        "type": "keypointlabels",
        "is_positive": True,
        "value": {"x": 50.0, "y": 50.0, "keypointlabels": ["Spot"]},
    }
    body = {**body, "tasks": tasks[1:], "params": {"context": {"result": [click]}}}
    bad = client.post("/predict", json=body)
    assert bad.status_code == 422 and "missing.png" in bad.json["error"]
    assert "camsam_queue_depth 0.0\n" in client.get("/metrics").get_data(as_text=True)


def test_no_worker_means_a_clear_timeout_and_the_job_is_dropped(redis_url, tmp_path):
    from redis import Redis
    from rq import Queue

    from worker.contract.queues import PREDICT_QUEUE

    app = create_app({"MODEL_DIR": tmp_path, "REDIS_URL": redis_url, "PREDICT_TIMEOUT": 1})
    body = {
        "tasks": [{"id": 1, "data": {"image": "/x.png"}}],
        "project": "2.1",
        "label_config": "",
        "params": {"context": None},
    }
    started = time.monotonic()
    response = app.test_client().post("/predict", json=body)
    assert response.status_code == 503
    assert "camsam worker" in response.json["error"]
    assert time.monotonic() - started < 30  # it gave up instead of blocking the web worker
    assert len(Queue(PREDICT_QUEUE, connection=Redis.from_url(redis_url))) == 0


@pytest.mark.slow
def test_clicks_on_one_image_go_to_the_worker_that_embedded_it(
    redis_url, trained_model_dir, synthetic_dir, sam2_checkpoint
):
    from redis import Redis

    Redis.from_url(redis_url).delete("camsam:embedding-cache")
    workers = [start_worker(redis_url, name) for name in ("wa", "wb")]
    try:
        app = create_app(
            {
                "MODEL_DIR": trained_model_dir,
                "REDIS_URL": redis_url,
                "LOCAL_FILES_DOCUMENT_ROOT": synthetic_dir,
                "SAM2_CONFIG": SAM2_TINY_CONFIG,
                "SAM2_CHECKPOINT": sam2_checkpoint,
                "PREDICT_TIMEOUT": 180,
            }
        )
        client = app.test_client()
        spot = sorted((synthetic_dir / "Spot").glob("*.png"))[3]
        task = {"id": 7, "data": {"image": f"/data/local-files/?d=Spot/{spot.name}"}}
        for x in (30.0, 50.0, 60.0, 70.0):
            click = {
                "type": "keypointlabels",
                "is_positive": True,
                "value": {"x": x, "y": 50.0, "keypointlabels": ["Spot"]},
            }
            body = predict_body([task], context={"result": [click]}, project="11.1")
            response = client.post("/predict", json=body)
            assert response.status_code == 200, response.json
            (region,) = response.json["results"][0]["result"]
            assert region["value"]["brushlabels"] == ["Spot"]
        metrics = client.get("/metrics").get_data(as_text=True)
        counts = {"hits": 0, "misses": 0}
        for line in metrics.splitlines():
            if line.startswith("camsam_embedding_cache{") and 'worker="' in line:
                outcome = line.split('outcome="')[1].split('"')[0]
                counts[outcome] += float(line.rsplit(" ", 1)[1])
        assert counts == {"hits": 3, "misses": 1}  # embedded once, by one worker, for all clicks
    finally:
        for process in workers:
            stop(process)


@pytest.mark.slow
def test_a_burst_of_webhooks_trains_once_on_a_separate_worker_seen_by_every_process(
    redis_url, synthetic_dir, label_studio, tmp_path
):
    from redis import Redis
    from rq import Queue
    from rq.registry import FinishedJobRegistry

    from tests.service.test_app import fixture
    from tests.service.test_training import CONFIG, labelled_tasks
    from worker.contract.queues import TRAIN_JOB, TRAIN_QUEUE

    label_studio.label_config = CONFIG
    label_studio.tasks = labelled_tasks(synthetic_dir, 6)
    trainer = start_worker(redis_url, "trainer", role="train")
    try:
        settings = {
            "MODEL_DIR": tmp_path / "models",
            "REDIS_URL": redis_url,
            "LABEL_STUDIO_URL": label_studio.url,
            "LABEL_STUDIO_API_KEY": "secret",
            "TRAIN_EPOCHS": 3,
            "TRAIN_IMAGE_SIZE": 64,
            "TRAIN_INPUT": "rgb",
            "MIN_PER_CLASS": 4,
            "TRAIN_DEBOUNCE": 1,
            "WEBHOOK_RATE": 0,  # the burst itself is what this test is about
        }
        client = create_app(settings).test_client()
        body = fixture("019_webhook_start_training.json")["body"]
        body = {**body, "project": {**body["project"], "id": 21}}
        answers = [client.post("/webhook", json=body).json["status"] for _ in range(100)]
        assert answers == ["training queued"] + ["training pending"] * 99
        deadline = time.monotonic() + 300
        version = "untrained"
        while version == "untrained" and time.monotonic() < deadline:
            time.sleep(0.5)
            version = client.post("/setup", json={"project": "21.1"}).json["model_version"]
        assert version == "v0001"
        connection = Redis.from_url(redis_url)
        queue = Queue(TRAIN_QUEUE, connection=connection)
        deadline = time.monotonic() + 120
        while connection.exists("camsam:train:queued:21") and time.monotonic() < deadline:
            time.sleep(0.2)  # this project's job ends (other tests' jobs may linger)
        finished = FinishedJobRegistry(queue=queue).get_job_ids()
        jobs = [queue.fetch_job(job_id) for job_id in finished]
        ours = [j for j in jobs if j.func_name == TRAIN_JOB and "project 21" in j.description]
        assert [j.return_value() for j in ours] == [1]  # a hundred webhooks, one job, one run
        pointer = f"camsam:current:{(tmp_path / 'models' / '21').resolve()}"
        assert connection.get(pointer) == b"v0001"  # what every process reads
        # Another web process (a fresh app) agrees.
        other = create_app(settings).test_client()
        assert other.post("/setup", json={"project": "21.1"}).json["model_version"] == "v0001"
    finally:
        stop(trainer)


def test_what_rq_logs_of_a_job_holds_no_secret():
    from worker.contract.queues import describe

    payload = {"project": "3", "tasks": [{}, {}], "settings": {"label_studio_api_key": "s3cret"}}
    text = describe("worker.jobs.predict.predict", payload)
    assert text == "worker.jobs.predict.predict(project 3, 2 tasks)" and "s3cret" not in text


def test_a_worker_in_burst_mode_answers_what_is_queued_and_exits(
    redis_url, trained_model_dir, synthetic_dir
):
    from redis import Redis
    from rq import Queue

    from ml_backend.protocol import predict_payload
    from worker.contract.queues import PREDICT_QUEUE
    from worker.contract.settings import Settings

    spot = sorted((synthetic_dir / "Spot").glob("*.png"))[1]
    body = predict_body([{"id": 5, "data": {"image": f"/data/local-files/?d=Spot/{spot.name}"}}])
    payload = predict_payload(body)
    settings = Settings(model_dir=str(trained_model_dir), redis_url=redis_url)
    payload["settings"] = {
        **settings.for_worker(),
        "local_files_document_root": str(synthetic_dir),
    }
    queue = Queue(PREDICT_QUEUE, connection=Redis.from_url(redis_url))
    job = queue.enqueue("worker.jobs.predict.predict", payload, description="burst test")
    env = {**os.environ, "REDIS_URL": redis_url}
    command = [sys.executable, "-m", "worker.cli", "worker", "--burst", "--name", "burst"]
    finished = subprocess.run(command, cwd=REPO, env=env, capture_output=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    answer = job.return_value(refresh=True)
    assert answer["model_version"] == "v0001" and answer["failed"] == 0
    assert any(r["type"] == "brushlabels" for r in answer["results"][0]["result"])
