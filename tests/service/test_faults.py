"""Faults, with real processes where they matter: Redis going away and coming back, a corrupt
checkpoint, a training run that crashes, a training worker killed mid-run."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest

from ml_backend.app import create_app
from tests.conftest import free_port, start_redis
from tests.service.test_app import predict_body
from tests.service.test_queue import start_worker, stop
from tests.service.test_training import CONFIG, labelled_tasks, worker_settings
from worker.contract.errors import CheckpointError
from worker.contract.settings import Settings
from worker.contract.store import ModelDir
from worker.pipeline.checkpoint import rollback
from worker.training.job import training_status


def copy_models(trained_model_dir: Path, root: Path, project: str) -> ModelDir:
    shutil.copytree(trained_model_dir, root / project)
    return ModelDir(root / project)


def test_a_corrupt_checkpoint_is_refused_and_the_previous_version_answers(
    trained_model_dir, synthetic_dir, tmp_path
):
    models = copy_models(trained_model_dir, tmp_path / "models", "6")
    models.path("v0002").write_bytes(b"PK\x03\x04 half a file")
    models.info_path("v0002").write_text(models.info_path("v0001").read_text())
    with pytest.raises(CheckpointError, match="corrupt"):
        rollback(models, "v0002")  # a rollback to it is refused
    assert models.current_version() == "v0001"
    models.pointer.write_text("v0002\n")  # or the disk broke it after it was published
    client = create_app(
        {"MODEL_DIR": tmp_path / "models", "LOCAL_FILES_DOCUMENT_ROOT": synthetic_dir}
    ).test_client()
    spot = sorted((synthetic_dir / "Spot").glob("*.png"))[0]
    task = {"id": 1, "data": {"image": f"/data/local-files/?d=Spot/{spot.name}"}}
    answer = client.post("/predict", json=predict_body([task], project="6.1")).json
    assert answer["model_version"] == "v0001" and answer["results"][0]["result"]


def test_a_training_run_that_crashes_leaves_the_current_version(
    trained_model_dir, synthetic_dir, label_studio, tmp_path, monkeypatch
):
    import worker.training.classifier

    models = copy_models(trained_model_dir, tmp_path / "models", "15")
    label_studio.label_config = CONFIG
    label_studio.tasks = labelled_tasks(synthetic_dir, 6)

    def crash(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(worker.training.classifier, "train", crash)
    with pytest.raises(RuntimeError):
        from worker.training.job import train_project

        train_project("15", Settings.from_payload(worker_settings(tmp_path, label_studio)))
    assert models.current_version() == "v0001" and models.versions() == ["v0001"]
    status = training_status(models)
    assert status["outcome"] == "crashed" and "out of memory" in status["reason"]


def test_redis_going_away_degrades_and_recovers_without_a_restart(tmp_path):
    port = free_port()
    server, url = start_redis(port, tmp_path)
    client = create_app({"MODEL_DIR": tmp_path / "models", "REDIS_URL": url}).test_client()
    assert client.get("/health").json["status"] == "UP"
    server.terminate()
    server.wait(timeout=10)
    try:
        health = client.get("/health")
        assert health.status_code == 200 and health.json["status"] == "DEGRADED"
        assert "Redis is unreachable" in health.json["problem"]
        body = predict_body([{"id": 1, "data": {"image": "/x.png"}}], project="2.1")
        down = client.post("/predict", json=body)
        assert down.status_code == 503 and "Redis is unreachable" in down.json["error"]
        hook = {"action": "START_TRAINING", "project": {"id": 2}}
        assert client.post("/webhook", json=hook).status_code == 503
        server, url = start_redis(port, tmp_path)
        assert client.get("/health").json["status"] == "UP"  # the same app, reconnected
        assert client.post("/webhook", json=hook).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.slow
def test_a_training_worker_killed_mid_run_leaves_no_version_and_the_next_one_trains(
    redis_url, synthetic_dir, label_studio, tmp_path
):
    from redis import Redis

    label_studio.label_config = CONFIG
    label_studio.tasks = labelled_tasks(synthetic_dir, 8)
    settings = {
        "MODEL_DIR": tmp_path / "models",
        "REDIS_URL": redis_url,
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": "secret",
        "TRAIN_EPOCHS": 400,
        "TRAIN_IMAGE_SIZE": 64,
        "TRAIN_INPUT": "rgb",
        "MIN_PER_CLASS": 4,
        "TRAIN_DEBOUNCE": 0,
        "TRAIN_LEASE": 3,
    }
    client = create_app(settings).test_client()
    hook = {"action": "START_TRAINING", "project": {"id": 41}}
    running = "camsam:train:running:41"
    connection = Redis.from_url(redis_url)
    trainer = start_worker(redis_url, "doomed", role="train")
    try:
        assert client.post("/webhook", json=hook).json["status"] == "training queued"
        deadline = time.monotonic() + 120
        while not connection.exists(running) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert connection.exists(running), "the training run never started"
        time.sleep(2)
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(timeout=10)
    finally:
        if trainer.poll() is None:
            stop(trainer)
    models = ModelDir(tmp_path / "models" / "41")
    assert models.versions() == []  # nothing half-written
    time.sleep(4)  # the dead worker's lease runs out
    assert not connection.exists(running)
    fresh = {**settings, "TRAIN_EPOCHS": 3}
    client = create_app(fresh).test_client()
    replacement = start_worker(redis_url, "replacement", role="train")
    try:
        assert client.post("/webhook", json=hook).json["status"] == "training queued"
        deadline = time.monotonic() + 180
        while models.current_version() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert models.current_version() == "v0001"
    finally:
        stop(replacement)


@pytest.mark.slow
def test_sam2_failing_on_one_image_fails_only_that_task(
    trained_model_dir, synthetic_dir, sam2_checkpoint, tmp_path, monkeypatch
):
    """Out of memory, a shape SAM2 cannot take: the chunk is retried image by image, and the
    other tasks of the job still get their masks."""
    import cv2

    from tests.conftest import SAM2_TINY_CONFIG
    from tests.service.test_app import SYNTHETIC_CONFIG
    from worker.jobs.predict import load_pipeline, predict

    spots = sorted((synthetic_dir / "Spot").glob("*.png"))[:2]
    odd = tmp_path / "odd.png"
    cv2.imwrite(str(odd), cv2.resize(cv2.imread(str(spots[0])), (77, 61)))
    shutil.copy(odd, synthetic_dir / "Spot" / "odd-one.png")
    names = [spots[0].name, "odd-one.png", spots[1].name]
    tasks = [
        {"id": k, "data": {"image": f"/data/local-files/?d=Spot/{name}"}}
        for k, name in enumerate(names)
    ]
    settings = Settings(
        model_dir=str(trained_model_dir),
        local_files_document_root=str(synthetic_dir),
        sam2_config=SAM2_TINY_CONFIG,
        sam2_checkpoint=str(sam2_checkpoint),
        device="cpu",
        mask_gate=0,
    )
    models = ModelDir(trained_model_dir)
    predictor = load_pipeline(models, models.current_version(), settings).segmenter.predictor
    real = predictor.predict

    def fails_on_the_odd_one(**kwargs):
        if predictor._orig_hw[0] == (61, 77):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(**kwargs)

    monkeypatch.setattr(predictor, "predict", fails_on_the_odd_one)
    payload = {
        "project": "sam2-faults",
        "label_config": SYNTHETIC_CONFIG,
        "tasks": tasks,
        "settings": settings.for_worker(),
    }
    try:
        answer = predict(payload)
    finally:
        (synthetic_dir / "Spot" / "odd-one.png").unlink()
    masks = [any(r["type"] == "brushlabels" for r in a["result"]) for a in answer["results"]]
    assert masks == [True, False, True] and answer["failed"] == 1
