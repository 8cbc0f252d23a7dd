"""Training from Label Studio's labels: the debounce, the job against a fake Label Studio, the
publishing rules, lineage and the live accept rate."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from ml_backend.app import create_app
from tests.conftest import REPO
from worker.contract.leases import (
    LocalStore,
    reconcile,
    remember_project,
    request_training,
    run_pending,
)
from worker.contract.live import live_stats
from worker.contract.settings import Settings
from worker.contract.store import ModelDir
from worker.jobs.feedback import compare, score_annotation
from worker.labelstudio.results import encode_mask
from worker.pipeline.checkpoint import ClassifierSpec
from worker.training.job import _reason_to_keep, train_project

CONFIG = (REPO / "tests" / "data" / "synthetic_config.xml").read_text()


def choice(label: str, from_name: str = "defect") -> dict:
    """A Choices region as Label Studio stores it (``defect``: the synthetic config's name)."""
    value = {"choices": [label]}
    return {"type": "choices", "from_name": from_name, "to_name": "image", "value": value}


def brush(label: str, mask: np.ndarray) -> dict:
    height, width = mask.shape
    return {
        "type": "brushlabels",
        "from_name": "mask",
        "to_name": "image",
        "original_width": width,
        "original_height": height,
        "value": {"format": "rle", "rle": encode_mask(mask), "brushlabels": [label]},
    }


def labelled_tasks(synthetic_dir, per_class: int) -> list[dict]:
    """Tasks of the synthetic images, each with one choice annotation."""
    tasks, ids = [], iter(range(1, 10_000))
    for label in ("Scratch", "Spot", "Clean"):
        for path in sorted((synthetic_dir / label).glob("*.png"))[:per_class]:
            task_id = next(ids)
            annotation = {
                "id": 1000 + task_id,
                "result": [choice(label)],
                "was_cancelled": False,
                "updated_at": "2026-11-24T10:00:00Z",
            }
            tasks.append(
                {
                    "id": task_id,
                    "data": {"image": f"/data/upload/{label}/{path.name}"},
                    "annotations": [annotation],
                }
            )
    return tasks


def worker_settings(tmp_path, label_studio, **overrides) -> dict:
    settings = Settings(
        model_dir=str(tmp_path / "models"),
        label_studio_url=label_studio.url,
        label_studio_api_key="secret",
        train_epochs=4,
        train_image_size=64,
        train_input="rgb",  # the recipe given: the choice is tested on its own
        min_per_class=4,
        train_debounce=0.0,
    )
    return replace(settings, **overrides).for_worker()


def test_a_burst_of_events_is_one_run_and_events_during_a_run_are_one_more():
    store, runs, jobs = LocalStore(), [], []
    started = threading.Event()

    def train_once():
        runs.append(time.monotonic())
        started.set()
        time.sleep(0.3)

    def submit(name, payload):
        job = threading.Thread(target=run_pending, args=(store, submit, payload, train_once, 0.2))
        jobs.append(job)
        job.start()

    payload = {"project": "5"}
    enqueued = [request_training(store, submit, payload, "ANNOTATION_CREATED") for _ in range(20)]
    assert enqueued.count(True) == 1  # the burst: one job
    started.wait(5)
    assert [request_training(store, submit, payload, "ANNOTATION_UPDATED") for _ in range(5)] == [
        False
    ] * 5  # during the run: no second job, one more run of this one
    for job in jobs:
        job.join(10)
    assert len(runs) == 2 and len(jobs) == 1
    assert request_training(store, submit, payload, "START_TRAINING")  # idle again: a new job
    jobs[-1].join(10)
    assert len(runs) == 3


def test_reconciliation_asks_every_known_project_for_a_run_once():
    store, submitted = LocalStore(), []
    for project in ("3", "8"):
        remember_project(store, {"project": project, "settings": {"model_dir": "m"}})
    assert reconcile(store, lambda name, payload: submitted.append(payload)) == 2
    assert sorted(p["project"] for p in submitted) == ["3", "8"]
    assert submitted[0]["settings"] == {"model_dir": "m"}
    assert reconcile(store, lambda name, payload: submitted.append(payload)) == 0  # still queued


def test_training_reads_label_studio_publishes_and_records_lineage(
    synthetic_dir, label_studio, tmp_path
):
    label_studio.label_config = CONFIG
    tasks = labelled_tasks(synthetic_dir, 6)
    # A skipped annotation does not count; of two annotations, the newest one does.
    tasks[0]["annotations"].append(
        {"id": 9001, "result": [], "was_cancelled": True, "updated_at": "2026-11-24T11:00:00Z"}
    )
    tasks[1]["annotations"].insert(
        0, {"id": 9002, "result": [choice("Spot")], "updated_at": "2026-11-01T00:00:00Z"}
    )
    tasks.append({"id": 500, "data": {"image": "/data/upload/x.png"}, "annotations": []})
    label_studio.tasks = tasks
    settings = worker_settings(tmp_path, label_studio, train_finetune_epochs=2)
    outcome = train_project("12", Settings.from_payload(settings))
    assert outcome["outcome"] == "published" and outcome["version"] == "v0001", outcome
    models = ModelDir(tmp_path / "models" / "12")
    info = models.info("v0001")
    assert info["classes"] == ["Scratch", "Spot", "Clean"]
    assert info["mask_classes"] == ["Scratch", "Spot"]  # Clean is a choice with no BrushLabel
    assert info["metrics"]["class_counts"] == {"Scratch": 6, "Spot": 6, "Clean": 6}
    lineage = info["lineage"]
    assert [row[:2] for row in lineage["snapshot"]][:2] == [[1, 1001], [2, 1002]]
    assert len(lineage["label_config_sha256"]) == 64 and lineage["code_version"]
    # Nothing new in Label Studio: the next run ends at once.
    assert train_project("12", Settings.from_payload(settings))["outcome"] == "skipped"
    # A new label: the next version fine-tunes from the current one.
    tasks[3]["annotations"][0]["updated_at"] = "2026-11-24T12:00:00Z"
    second = train_project("12", Settings.from_payload(settings))
    assert second["outcome"] == "published" and second["version"] == "v0002", second
    assert models.info("v0002")["lineage"]["started_from"].endswith("v0001.pt")
    # A fine-tune runs TRAIN_FINETUNE_EPOCHS; a first version, TRAIN_EPOCHS.
    assert [models.info(v)["recipe"]["epochs"] for v in ("v0001", "v0002")] == [4, 2]


def test_a_projects_first_version_chooses_the_recipe_and_later_ones_keep_it(
    synthetic_dir, label_studio, tmp_path, monkeypatch
):
    import worker.training.choose as choose
    import worker.training.job

    small = ({"input": "flat", "image_size": 40}, {"input": "rgb", "image_size": 48})
    monkeypatch.setattr(choose, "CANDIDATES", small)
    monkeypatch.setattr(choose, "_epoch_seconds", lambda dataset, base, size: 1.0)
    label_studio.label_config = CONFIG
    label_studio.tasks = labelled_tasks(synthetic_dir, 6)
    settings = worker_settings(
        tmp_path, label_studio, train_input="", train_image_size=0, train_budget=0.4
    )  # 24 s: four trial epochs each
    assert train_project("14", Settings.from_payload(settings))["outcome"] == "published"
    models = ModelDir(tmp_path / "models" / "14")
    recipe = models.info("v0001")["recipe"]
    trials = recipe["choice"]["candidates"]
    assert [t["name"] for t in trials] == ["flat 40 px", "rgb 48 px"]
    assert recipe["choice"]["trial_epochs"] == 4
    chosen = next(t for t in trials if t["name"] == recipe["choice"]["chosen"])
    assert (recipe["input"], recipe["image_size"]) == (chosen["input"], chosen["image_size"])

    def refuse(*args, **kwargs):
        raise AssertionError("a later version chose again")

    monkeypatch.setattr(choose, "choose_recipe", refuse)
    monkeypatch.setattr(worker.training.job, "_reason_to_keep", lambda *args: None)  # publish
    label_studio.tasks[3]["annotations"][0]["updated_at"] = "2026-11-24T12:00:00Z"
    assert train_project("14", Settings.from_payload(settings))["outcome"] == "published"
    again = models.info("v0002")["recipe"]
    assert (again["input"], again["image_size"]) == (recipe["input"], recipe["image_size"])


def test_training_waits_for_every_class_and_says_which(synthetic_dir, label_studio, tmp_path):
    label_studio.label_config = CONFIG
    tasks = labelled_tasks(synthetic_dir, 6)
    label_studio.tasks = [t for t in tasks if "Spot" not in t["data"]["image"]][:9]
    outcome = train_project("13", Settings.from_payload(worker_settings(tmp_path, label_studio)))
    assert outcome["outcome"] == "waiting"
    assert "'Spot': 0" in outcome["reason"] and "4 labelled images each" in outcome["reason"]
    assert ModelDir(tmp_path / "models" / "13").current_version() is None


def test_a_worse_candidate_is_kept_out_and_the_reason_recorded(
    trained_model_dir, synthetic_dataset
):
    from worker.training.classifier import TrainConfig, validation_split

    models = ModelDir(trained_model_dir)
    current = models.current_version()
    info = models.info(current)
    spec = ClassifierSpec(**{**info, "classes": tuple(info["classes"])})
    worse = replace(spec, metrics={**spec.metrics, "val_accuracy": 0.1})
    settings = Settings(min_publish_interval=0.0)
    _, held_out, _ = validation_split(synthetic_dataset.samples, TrainConfig(val_fraction=0.3))
    reason = _reason_to_keep(models, current, info, synthetic_dataset, worse, held_out, settings)
    assert reason and "0.100 <" in reason and f"{current} stays" in reason
    better = replace(spec, metrics={**spec.metrics, "val_accuracy": 1.0})
    assert (
        _reason_to_keep(models, current, info, synthetic_dataset, better, held_out, settings)
        is None
    )
    soon = Settings(min_publish_interval=3600.0)
    reason = _reason_to_keep(models, current, info, synthetic_dataset, better, held_out, soon)
    assert "MIN_PUBLISH_INTERVAL" in reason


def test_a_webhook_starts_no_training_that_cannot_read_the_labels(tmp_path, caplog):
    from tests.service.test_app import fixture

    app = create_app({"MODEL_DIR": tmp_path, "TRAIN_DEBOUNCE": 0})
    backend = app.extensions["camsam"]
    submitted = []
    backend.submit = backend.feedback = lambda name, payload: submitted.append(name)
    client = app.test_client()
    assert client.post("/setup", json=fixture("009_setup.json")["body"]).status_code == 200
    hook = fixture("017_webhook_annotation_created.json")["body"]
    with caplog.at_level(logging.WARNING, logger="ml_backend.app"):
        answers = [client.post("/webhook", json=hook) for _ in range(3)]
    assert {(a.status_code, a.json["status"]) for a in answers} == {(200, "training not started")}
    assert "LABEL_STUDIO_URL" in answers[0].json["reason"] and submitted == []
    said = [r for r in caplog.records if "no training started" in r.getMessage()]
    assert len(said) == 1  # Label Studio sends many: said once a project
    assert "webhook_not_started" in client.get("/metrics").get_data(as_text=True)


def test_a_failed_training_run_is_said_as_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="worker.training.job"):
        outcome = train_project("15", Settings.from_env({"MODEL_DIR": str(tmp_path)}))
    assert outcome["outcome"] == "failed" and "LABEL_STUDIO_URL" in outcome["reason"]
    (record,) = [r for r in caplog.records if "training failed" in r.getMessage()]
    assert record.levelno == logging.WARNING and "reading labels" in record.getMessage()


def test_webhooks_as_label_studio_sends_them_trigger_training(tmp_path):
    from tests.service.test_app import fixture

    # Label Studio sets the project up first; a webhook naming a project it did not is ignored.
    bare = create_app({"MODEL_DIR": tmp_path}).test_client()
    unknown = bare.post("/webhook", json=fixture("017_webhook_annotation_created.json")["body"])
    assert unknown.status_code == 200 and unknown.json["status"] == "ignored"
    app = create_app({"MODEL_DIR": tmp_path, "TRAIN_DEBOUNCE": 30})
    app.extensions["camsam"].why_no_training = lambda: None  # as if Label Studio were named
    client = app.test_client()
    assert client.post("/setup", json=fixture("009_setup.json")["body"]).status_code == 200
    answers = [
        client.post("/webhook", json=fixture(name)["body"]).json
        for name in (
            "017_webhook_annotation_created.json",
            "018_webhook_annotation_updated.json",
            "023_webhook_annotation_created_brush.json",
            "026_webhook_annotations_deleted.json",
            "019_webhook_start_training.json",
            "025_webhook_tasks_created_bulk_import.json",
        )
    ]
    assert answers[0]["status"] == "training queued"
    assert {a["status"] for a in answers[1:]} == {"training pending"}
    skipped = fixture("024_webhook_annotation_created_skipped.json")["body"]
    assert client.post("/webhook", json=skipped).json["status"] == "training pending"
    other = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 4}})
    assert other.status_code == 200 and other.json["status"] == "ignored"
    assert client.post("/webhook", json={"action": "START_TRAINING"}).status_code == 400


def test_submitted_masks_score_the_prediction_they_started_from(label_studio, tmp_path):
    models = ModelDir(tmp_path / "models" / "14")
    (models.versions_dir).mkdir(parents=True)
    models.path("v0003").write_bytes(b"weights")  # a version of ours, by name
    predicted = np.zeros((40, 60), bool)
    predicted[10:30, 10:30] = True
    close, far = predicted.copy(), np.zeros_like(predicted)
    close[10:30, 28:34] = True  # IoU 400/480: accepted
    far[0:5, 0:5] = True
    assert compare([brush("Spot", predicted)], [brush("Spot", close)]) == {
        "Spot": pytest.approx(400 / 480)
    }
    label_studio.predictions = [
        {"id": 1, "task": 7, "model_version": "v0003", "result": [brush("Spot", predicted)]},
        {"id": 2, "task": 7, "model_version": "someone-else", "result": []},
    ]
    label_studio.tasks = [
        {
            "id": 7,
            "data": {},
            "annotations": [
                {"id": 70, "result": [brush("Spot", close)], "parent_prediction": 1},
                {"id": 71, "result": [brush("Spot", far)], "parent_prediction": None},
                {"id": 72, "result": [], "was_cancelled": True},
                {"id": 73, "result": [choice("Spot")], "parent_prediction": None},
            ],
        }
    ]
    settings = worker_settings(tmp_path, label_studio)
    for annotation in (70, 71, 72, 73):  # 73: image-level only, not scored
        score_annotation({"project": "14", "annotation": annotation, "settings": settings})
    stats = live_stats(models)
    assert stats == {
        "v0003": {
            "masks": 2,
            "accepted": 1,
            "accept_rate": 0.5,
            "mean_iou": pytest.approx(400 / 960),
        }
    }
    client = create_app({"MODEL_DIR": tmp_path / "models"}).test_client()
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'camsam_live_accept_rate{project="14",version="v0003"} 0.5\n' in metrics
