"""The ML backend's routes, replaying requests a real Label Studio 1.23.2 sent."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from ml_backend.app import create_app
from ml_backend.errors import BadRequest
from ml_backend.protocol import predict_payload
from tests.conftest import REPO
from worker.labelstudio.results import decode_mask

FIXTURES = REPO.parent / "shared" / "fixtures" / "label-studio-1.23.2"
SYNTHETIC_CONFIG = (REPO / "tests" / "data" / "synthetic_config.xml").read_text()


def documents(tmp_path, synthetic_dir):
    """A local-files root holding ``good.png`` (a synthetic Spot image), and that image."""
    root = tmp_path / "documents"
    root.mkdir()
    good = sorted((synthetic_dir / "Spot").glob("*.png"))[0]
    (root / "good.png").write_bytes(good.read_bytes())
    return root, good


def fetching_app(model_dir, label_studio, root, **settings):
    """An app that reads images from the fake Label Studio and from local files under ``root``."""
    return create_app(
        {
            "MODEL_DIR": model_dir,
            "LABEL_STUDIO_URL": label_studio.url,
            "LABEL_STUDIO_API_KEY": "secret",
            "LOCAL_FILES_DOCUMENT_ROOT": root,
            **settings,
        }
    )


def predict_body(tasks: list, context: dict | None = None, project: str = "3.1") -> dict:
    """A /predict body as Label Studio sends it, for the synthetic label config."""
    return {
        "tasks": tasks,
        "project": project,
        "label_config": SYNTHETIC_CONFIG,
        "params": {"context": context},
    }


def fixture(name: str) -> dict:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"{path} is not here")
    return json.loads(path.read_text())


@pytest.fixture
def client(tmp_path):
    app = create_app({"MODEL_DIR": tmp_path / "models"})
    return app.test_client()


def test_health_and_cold_start_setup(client):
    request = fixture("008_health.json")
    health = client.get(request["path"])
    assert health.status_code == 200 and health.json["status"] == "UP"
    assert health.json["segmenter"] == "cam" and "no SAM2 checkpoint" in health.json["note"]
    assert "no project has a model yet" in health.json["models"]
    setup = client.post("/setup", json=fixture("009_setup.json")["body"])
    assert setup.status_code == 200
    assert setup.json["model_version"] == "untrained"
    assert "no model for project 4" in setup.json["status"]


def test_cold_start_predict_gives_one_empty_result_per_task(client):
    body = fixture("016_predict_batch_no_context.json")["body"]
    response = client.post("/predict", json=body)
    assert response.status_code == 200
    results = response.json["results"]
    assert len(results) == len(body["tasks"])
    assert all(r["result"] == [] and r["model_version"] == "untrained" for r in results)


def test_webhooks_are_acknowledged_and_cold_interactive_requests_answer_empty(client):
    for name in ("017_webhook_annotation_created.json", "019_webhook_start_training.json"):
        assert client.post("/webhook", json=fixture(name)["body"]).status_code == 200
    body = fixture("020_predict_interactive_keypoint.json")["body"]
    interactive = client.post("/predict", json=body)
    assert interactive.status_code == 200
    assert interactive.json["results"] == [
        {"result": [], "score": 0.0, "model_version": "untrained"}
    ]


def test_interactive_contexts_as_label_studio_sends_them():
    keypoints = fixture("021_predict_interactive_keypoints_pos_neg.json")["body"]
    prompt = predict_payload(keypoints)["prompt"]
    assert prompt == {"label": "Crack", "points": [[40.0, 50.0, 1], [60.0, 30.0, 0]], "box": None}
    rectangle = predict_payload(fixture("022_predict_interactive_rectangle.json")["body"])
    assert rectangle["prompt"] == {"label": "Uneven", "points": [], "box": [10.0, 20.0, 40.0, 45.0]}
    empty = {**keypoints, "params": {"context": {"result": []}}}
    with pytest.raises(BadRequest, match="no keypoint or rectangle"):
        predict_payload(empty)


def test_bad_requests_get_json_errors(client):
    assert client.post("/predict", data="nope", content_type="application/json").status_code == 400
    bad = client.post("/predict", json={"tasks": [], "project": "1.2", "label_config": "<View>"})
    assert bad.status_code == 422 and "label config" in bad.json["error"]
    assert client.post("/setup", json={"project": "x"}).status_code == 400


def test_predict_fetches_images_like_label_studio_and_isolates_failures(
    trained_model_dir, synthetic_dir, label_studio, tmp_path
):
    app = fetching_app(trained_model_dir, label_studio, synthetic_dir)
    client = app.test_client()
    spot = sorted((synthetic_dir / "Spot").glob("*.png"))[0]
    scratch = sorted((synthetic_dir / "Scratch").glob("*.png"))[0]
    tasks = [
        {"id": 1, "data": {"image": f"/data/local-files/?d=Spot/{spot.name}"}},
        {"id": 2, "data": {"image": "/data/upload/Spot/missing.png"}},
        {"id": 3, "data": {"image": f"/data/upload/Scratch/{scratch.name}"}},
        {"id": 4, "data": {"image": "/data/local-files/?d=../../etc/passwd"}},
        {"id": 5, "data": {"image": f"s3://bucket/Spot/{spot.name}"}},  # cloud storage
    ]
    body = predict_body(tasks, project="7.123")
    response = client.post("/predict", json=body)
    assert response.status_code == 200
    results = response.json["results"]
    assert len(results) == 5 and results[1]["result"] == [] and results[3]["result"] == []
    assert [r["value"] for r in results[4]["result"]][:1] == [{"choices": ["Spot"]}]
    assert response.json["model_version"] == "v0001"
    from PIL import Image

    for result, path, label in ((results[0], spot, "Spot"), (results[2], scratch, "Scratch")):
        assert result["model_version"] == "v0001"
        choices = [r for r in result["result"] if r["type"] == "choices"]
        assert choices[0]["from_name"] == "defect" and choices[0]["value"]["choices"] == [label]
        width, height = Image.open(path).size
        for region in result["result"]:
            if region["type"] == "brushlabels":
                assert decode_mask(region["value"]["rle"], width, height).any()
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'camsam_tasks_total{outcome="failed"} 2.0\n' in metrics
    assert 'camsam_requests_total{route="/predict",status="200"} 1.0\n' in metrics


def test_health_says_when_the_sam2_checkpoint_is_missing(tmp_path):
    missing = tmp_path / "sam2.1_hiera_tiny.pt"
    client = create_app({"MODEL_DIR": tmp_path, "SAM2_CHECKPOINT": missing}).test_client()
    health = client.get("/health").json
    assert health["segmenter"] == "sam2" and "does not exist" in health["note"]
    missing.write_bytes(b"weights")
    assert client.get("/health").json["note"] is None


def test_basic_auth_guards_everything_but_health(tmp_path):
    app = create_app({"MODEL_DIR": tmp_path, "BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": "pw"})
    client = app.test_client()
    assert client.get("/health").status_code == 200
    assert client.post("/setup", json={"project": "1.1"}).status_code == 401
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:pw").decode()}
    assert client.post("/setup", json={"project": "1.1"}, headers=good).status_code == 200
    wrong = {"Authorization": "Basic " + base64.b64encode(b"ls:no").decode()}
    assert client.post("/setup", json={"project": "1.1"}, headers=wrong).status_code == 401


def test_setup_reports_the_current_version_of_the_project(trained_model_dir, tmp_path):
    models = tmp_path / "models"
    (models / "4").mkdir(parents=True)
    for item in Path(trained_model_dir).iterdir():
        (models / "4" / item.name).symlink_to(item)
    client = create_app({"MODEL_DIR": models}).test_client()
    answer = client.post("/setup", json=fixture("009_setup.json")["body"]).json
    assert answer["model_version"] == "v0001" and isinstance(answer["model_version"], str)
    assert client.post("/setup", json={"project": "5.1"}).json["model_version"] == "untrained"
    health = client.get("/health").json
    assert health["model_versions"] == {"4": "v0001"} and "models" not in health


def test_interactive_click_and_box_give_a_mask_with_the_chosen_label(
    trained_model_dir, synthetic_dir
):
    from PIL import Image

    app = create_app({"MODEL_DIR": trained_model_dir, "LOCAL_FILES_DOCUMENT_ROOT": synthetic_dir})
    client = app.test_client()
    spot = sorted((synthetic_dir / "Spot").glob("*.png"))[0]
    width, height = Image.open(spot).size
    truth = np.asarray(Image.open(synthetic_dir / "Spot" / "masks" / spot.name)) >= 128
    ys, xs = np.nonzero(truth)
    cx, cy = 100 * xs.mean() / width, 100 * ys.mean() / height
    task = {"id": 1, "data": {"image": f"/data/local-files/?d=Spot/{spot.name}"}}
    click = {
        "type": "keypointlabels",
        "is_positive": True,
        "value": {"x": cx, "y": cy, "keypointlabels": ["Spot"]},
    }
    box = {
        "type": "rectanglelabels",
        "value": {
            "x": 0.0,
            "y": 0.0,
            "width": 50.0,
            "height": 50.0,
            "rectanglelabels": ["Scratch"],
        },
    }
    for context, label in (({"result": [click]}, "Spot"), ({"result": [box]}, "Scratch")):
        body = predict_body([task], context)
        response = client.post("/predict", json=body)
        assert response.status_code == 200
        (result,) = response.json["results"]
        (region,) = result["result"]
        assert region["value"]["brushlabels"] == [label]
        assert region["meta"]["segmenter"] == "cam" and region["meta"]["interactive"]
        mask = decode_mask(region["value"]["rle"], width, height)
        if label == "Spot":
            assert mask[int(ys.mean()), int(xs.mean())]
        else:  # nothing outside the box
            assert not mask[height // 2 + 2 :, :].any() and not mask[:, width // 2 + 2 :].any()
    missing = {"id": 2, "data": {"image": "/data/local-files/?d=Spot/missing.png"}}
    body = predict_body([missing], {"result": [click]})
    bad = client.post("/predict", json=body)
    assert bad.status_code == 422 and "missing.png" in bad.json["error"]


@pytest.mark.slow
def test_second_click_on_an_image_reuses_its_sam2_embedding(
    trained_model_dir, synthetic_dir, sam2_checkpoint
):
    from tests.conftest import SAM2_TINY_CONFIG

    app = create_app(
        {
            "MODEL_DIR": trained_model_dir,
            "LOCAL_FILES_DOCUMENT_ROOT": synthetic_dir,
            "SAM2_CONFIG": SAM2_TINY_CONFIG,
            "SAM2_CHECKPOINT": sam2_checkpoint,
        }
    )
    client = app.test_client()
    health = client.get("/health").json
    assert health["segmenter"] == "sam2" and health["sam2_precision"] is None  # not known yet
    spot = sorted((synthetic_dir / "Spot").glob("*.png"))[1]
    task = {"id": 1, "data": {"image": f"/data/local-files/?d=Spot/{spot.name}"}}

    def cache() -> dict[str, float]:
        """The process's SAM2 cache counts (one SAM2 a process: other tests' count too)."""
        metrics = client.get("/metrics").get_data(as_text=True)
        found = re.findall(r'^camsam_embedding_cache\{outcome="(\w+)"\} (\S+)$', metrics, re.M)
        return {outcome: float(value) for outcome, value in found}

    counts = []
    for x in (30.0, 60.0):
        click = {
            "type": "keypointlabels",
            "is_positive": True,
            "value": {"x": x, "y": 50.0, "keypointlabels": ["Spot"]},
        }
        body = predict_body([task], {"result": [click]})
        response = client.post("/predict", json=body)
        assert response.status_code == 200
        (region,) = response.json["results"][0]["result"]
        assert region["meta"]["segmenter"] == "sam2"
        counts.append(cache())
    first, second = counts
    assert second["hits"] == first["hits"] + 1 and second["misses"] == first["misses"]
    from worker.pipeline.classifier import resolve_device
    from worker.pipeline.segmenters.sam2 import sam2_precision

    expected = sam2_precision(resolve_device("auto"))  # float32 on a CPU
    assert client.get("/health").json["sam2_precision"] == expected


def test_a_batch_too_long_to_wait_for_is_written_back_through_the_api(
    trained_model_dir, synthetic_dir, label_studio
):
    app = create_app(
        {
            "MODEL_DIR": trained_model_dir,
            "LOCAL_FILES_DOCUMENT_ROOT": synthetic_dir,
            "PREDICT_INLINE_MAX_TASKS": 2,
            "AUTH_TOKEN": "t0ken",  # so /setup may name Label Studio (SETUP_CREDENTIALS=auth)
        }
    )
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer t0ken"
    spots = sorted((synthetic_dir / "Spot").glob("*.png"))[:3]
    tasks = [
        {"id": 10 + k, "data": {"image": f"/data/local-files/?d=Spot/{p.name}"}}
        for k, p in enumerate(spots)
    ]
    # Without a Label Studio to write to, a batch too long to answer in time is refused at once.
    refused = client.post("/predict", json=predict_body(tasks))
    assert refused.status_code == 413 and "LABEL_STUDIO_URL" in refused.json["error"]
    short = [
        client.post("/predict", json=predict_body(part)).json for part in (tasks[:2], tasks[2:])
    ]
    inline = short[0]["results"] + short[1]["results"]
    assert len(inline) == 3 and not label_studio.predictions
    # An authenticated /setup names Label Studio (the environment named none): now the batch
    # is written back.
    setup = {"project": "3.1", "hostname": label_studio.url, "access_token": "secret"}
    assert client.post("/setup", json=setup).status_code == 200
    deferred = client.post("/predict", json=predict_body(tasks)).json
    assert deferred["results"] == [] and "background" in deferred["status"]
    deadline = time.monotonic() + 60
    while len(label_studio.predictions) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    written = sorted(label_studio.predictions, key=lambda p: p["task"])
    assert [p["task"] for p in written] == [10, 11, 12]
    for prediction, answer in zip(written, inline, strict=True):
        assert prediction["model_version"] == "v0001"
        assert [r["type"] for r in prediction["result"]] == [r["type"] for r in answer["result"]]
    assert client.post("/predict", json=predict_body(tasks[:2])).json["results"]  # short: inline


def test_the_environment_wins_over_what_setup_sends(tmp_path):
    config = {"MODEL_DIR": tmp_path, "LABEL_STUDIO_URL": "http://ls.internal:8080"}
    app = create_app({**config, "AUTH_TOKEN": "t0ken"})
    client = app.test_client()
    bearer = {"Authorization": "Bearer t0ken"}
    elsewhere = {"project": "1.1", "hostname": "http://elsewhere", "access_token": "t"}
    assert client.post("/setup", json=elsewhere, headers=bearer).status_code == 200
    settings = app.extensions["camsam"].settings
    assert settings.label_studio_url == "http://ls.internal:8080"
    assert settings.label_studio_api_key == ""  # a token goes only to the host it came with
    same = {**elsewhere, "hostname": "http://LS.internal:8080/"}
    client.post("/setup", json=same, headers=bearer)
    assert (
        app.extensions["camsam"].settings.label_studio_api_key == "t"
    )  # the environment named no key
    # Without credentials nobody may name Label Studio's key through /setup.
    open_app = create_app(config)
    open_app.test_client().post("/setup", json={**same, "access_token": "u"})
    assert open_app.extensions["camsam"].settings.label_studio_api_key == ""


def test_setup_says_which_labels_the_model_and_the_config_do_not_share(trained_model_dir):
    client = create_app({"MODEL_DIR": trained_model_dir}).test_client()
    same = client.post("/setup", json={"project": "2.1", "schema": SYNTHETIC_CONFIG}).json
    assert "label_changes" not in same
    changed = SYNTHETIC_CONFIG.replace('<Choice value="Spot"/>', '<Choice value="Dent"/>').replace(
        '<Label value="Spot"/>', '<Label value="Dent"/>'
    )
    answer = client.post("/setup", json={"project": "2.1", "schema": changed}).json
    (new, gone) = answer["label_changes"]
    assert "['Dent']" in new and "not trained" in new
    assert "['Spot']" in gone and "does not have" in gone


def test_bad_tasks_in_a_batch_get_empty_results_and_the_others_are_answered(
    trained_model_dir, synthetic_dir, label_studio, tmp_path
):
    from PIL import Image

    root, good = documents(tmp_path, synthetic_dir)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    (root / "truncated.png").write_bytes(good.read_bytes()[:200])
    (root / "notes.txt").write_text("not an image")
    Image.new("L", (4000, 3000)).save(root / "huge.png")
    app = fetching_app(trained_model_dir, label_studio, root, MAX_IMAGE_PIXELS=1_000_000)
    client = app.test_client()
    refs = [
        "/data/local-files/?d=corrupt.png",
        "/data/local-files/?d=truncated.png",
        "/data/local-files/?d=notes.txt",
        "/data/local-files/?d=huge.png",
        "/data/upload/Spot/missing.png",
        "http://images.elsewhere.test/a.png",
        "/data/local-files/?d=good.png",
    ]
    tasks = [{"id": k, "data": {"image": ref}} for k, ref in enumerate(refs)]
    tasks.append({"id": 99, "data": {"text": "a task with no image"}})
    response = client.post("/predict", json=predict_body(tasks))
    assert response.status_code == 200
    results = response.json["results"]
    assert len(results) == len(tasks)
    assert [bool(r["result"]) for r in results] == [False] * 6 + [True, False]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'camsam_tasks_total{outcome="failed"} 7.0\n' in metrics
    # The same bad input in an interactive request is the person's to fix: a 4xx JSON error.
    click = {
        "type": "keypointlabels",
        "value": {"x": 50.0, "y": 50.0, "keypointlabels": ["Spot"]},
    }
    for ref in refs[:4]:
        body = predict_body([{"id": 1, "data": {"image": ref}}], context={"result": [click]})
        answer = client.post("/predict", json=body)
        assert answer.status_code == 422 and "cannot read the task's image" in answer.json["error"]
    unknown = {**click, "value": {**click["value"], "keypointlabels": ["Dent"]}}
    body = predict_body(tasks[6:7], context={"result": [unknown]})
    answer = client.post("/predict", json=body)
    assert (
        answer.status_code == 400
        and "'Dent' is not one of the config's BrushLabels" in (answer.json["error"])
    )
    assert client.get("/health").json["status"] == "UP"  # and the process keeps serving


def test_a_bearer_token_guards_all_but_health_and_webhook(tmp_path):
    app = create_app({"MODEL_DIR": tmp_path, "AUTH_TOKEN": "t0ken", "BASIC_AUTH_USER": "ls"})
    client = app.test_client()
    assert client.post("/setup", json={"project": "1.1"}).status_code == 401
    assert client.get("/metrics").status_code == 401
    bearer = {"Authorization": "Bearer t0ken"}
    assert client.post("/setup", json={"project": "1.1"}, headers=bearer).status_code == 200
    wrong = {"Authorization": "Bearer t0kem"}
    assert client.post("/setup", json={"project": "1.1"}, headers=wrong).status_code == 401
    # Label Studio sends webhooks without credentials: open, but only a trigger.
    hook = {"action": "PROJECT_UPDATED", "project": {"id": 1}}
    assert client.post("/webhook", json=hook).status_code == 200
    assert "t0ken" not in str(app.extensions["camsam"].settings.for_worker())


def test_webhooks_are_rate_limited_per_project(tmp_path):
    client = create_app({"MODEL_DIR": tmp_path, "WEBHOOK_RATE": 3}).test_client()
    for project in ("31.1", "32.1"):  # known to camsam: set up by Label Studio
        assert client.post("/setup", json={"project": project}).status_code == 200
    body = {"action": "START_TRAINING", "project": {"id": 31}}
    codes = [client.post("/webhook", json=body).status_code for _ in range(6)]
    assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
    other = {"action": "START_TRAINING", "project": {"id": 32}}
    assert client.post("/webhook", json=other).status_code == 200  # another project's own bucket
