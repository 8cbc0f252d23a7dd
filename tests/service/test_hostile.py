"""Hostile input: the probes a tester ran against ``camsam serve``, each one able to fail.

One section per issue item (3, 6, 7, 8, 9, 10, 11), then the items fixed elsewhere (1, 2, 4:
image downloads; 5: version names; 12, a control socket every instance shared, is checked in
test_metrics.py), then each class of input that already held. The last test checks the shared
app still answers UP and this process's memory is back near where it was once the models were
warm.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ml_backend.app import create_app
from ml_backend.guard import RateLimiter
from ml_backend.projects import LOOKUP_RATE
from ml_backend.protocol import project_id
from ml_backend.runner import REQUEST
from tests.conftest import UNREACHABLE_LS, reply
from tests.service.test_app import SYNTHETIC_CONFIG, documents, fetching_app, predict_body
from worker.contract.errors import ImageError
from worker.contract.leases import QUEUED, known_projects, store_for
from worker.contract.settings import Settings
from worker.contract.store import ModelDir

SECRETS = ("sekrit-ls-key-1", "tok-auth-2", "hook-secret-3", "setup-token-4")


def assert_json_error(response, status: int) -> dict:
    """A JSON answer with an ``error`` and this status: never an HTML page or a traceback."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, (response.status_code, text[:300])
    assert response.is_json and "error" in response.json, text[:300]
    assert "<html" not in text.lower() and "Traceback" not in text
    return response.json


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with hardly any data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


class _Handler(BaseHTTPRequestHandler):
    """Counts every request. ``/drip``: one byte every 50 ms; ``/api/projects/<id>/``: 200 for
    ids in ``server.projects``, else 404; anything else: a small PNG."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.server.hits.append(self.path)
        if self.path.startswith("/drip"):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            for _ in range(2000):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.05)
            return
        project = re.fullmatch(r"/api/projects/(\d+)/", self.path)
        if project:
            found = project.group(1) in self.server.projects
            body = json.dumps({"id": int(project.group(1))} if found else {}).encode()
            reply(self, body, 200 if found else 404)
        else:
            reply(self, png_header(4, 4))

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A local HTTP server: ``.url``, ``.port``, ``.hits`` (paths asked), ``.projects``."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.hits, httpd.projects = [], set()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.port = httpd.server_address[1]
    httpd.url = f"http://127.0.0.1:{httpd.port}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One app that every probe of items 6 and 7 is thrown at; the last test checks it."""
    return create_app({"MODEL_DIR": tmp_path_factory.mktemp("shared-models")})


def resident_mb(field: str = "VmRSS") -> float:
    """This process's resident set (or, with ``VmHWM``, its peak since the last reset), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status: memory is measured on Linux")


@pytest.fixture(scope="module")
def huge(trained_model_dir, synthetic_dir, tmp_path_factory):
    """An app reading a 9000x6000 JPEG stored turned a quarter (EXIF orientation 6, so 6000 x
    9000 as shown) among its local files, its models warm; and this process's resident set
    once they are."""
    from worker.bench.memory import large_image

    root, _ = documents(tmp_path_factory.mktemp("huge"), synthetic_dir)
    (root / "huge.jpg").write_bytes(large_image("JPEG", 9000, 6000, orientation=6))
    app = create_app({"MODEL_DIR": trained_model_dir, "LOCAL_FILES_DOCUMENT_ROOT": root})
    warm = predict_body([{"id": 1, "data": {"image": "/data/local-files/?d=good.png"}}])
    assert app.test_client().post("/predict", json=warm).status_code == 200
    return app, resident_mb()


@pytest.fixture
def client(shared):
    return shared.test_client()


def fake_version(model_dir: Path, project: str) -> None:
    """A project that has a current version (by name only: the job is replaced in the test)."""
    (model_dir / project).mkdir(parents=True, exist_ok=True)
    (model_dir / project / "CURRENT").write_text("v0001\n")


def fake_answer(payload: dict, seconds: float = 0.0) -> dict:
    tasks = payload["tasks"]
    empty = {"result": [], "score": 0.0, "model_version": "v0001"}
    results = [empty] * len(tasks)
    return {"results": results, "model_version": "v0001", "failed": 0, "seconds": seconds}


def forget_training(*projects: str) -> None:
    """Clear the embedded mode's queued flags a test left (the store is the process's)."""
    for project in projects:
        store_for("").delete(QUEUED + project)


# Item 3: /setup may not name Label Studio unless the caller is trusted -----------------------


def test_an_unauthenticated_setup_cannot_point_camsam_at_another_label_studio(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ml_backend.app"):
        app = create_app({"MODEL_DIR": tmp_path})
    assert any("no LABEL_STUDIO_URL" in r.getMessage() for r in caplog.records)
    client = app.test_client()
    attacker = {"project": "4.1", "hostname": "http://attacker.test", "access_token": "theirs"}
    answer = client.post("/setup", json=attacker)
    assert answer.status_code == 200 and "ignored" in answer.json["label_studio"]
    own = {"project": "4.1", "hostname": "http://ls.test:8080", "access_token": "ours"}
    client.post("/setup", json=own)
    settings = app.extensions["camsam"].settings
    assert (settings.label_studio_url, settings.label_studio_api_key) == ("", "")
    (warning,) = client.get("/health").json["warnings"]
    assert "no LABEL_STUDIO_URL" in warning and "SETUP_CREDENTIALS=auth" in warning


def test_a_setup_has_nothing_to_say_about_the_label_studio_the_environment_names(tmp_path, caplog):
    app = create_app({"MODEL_DIR": tmp_path, **UNREACHABLE_LS})
    body = {"project": "4.1", "hostname": "http://ls.test:8080", "access_token": "theirs"}
    with caplog.at_level(logging.WARNING, logger="ml_backend.app"):
        answer = app.test_client().post("/setup", json=body)
    assert answer.status_code == 200 and "label_studio" not in answer.json
    assert not any("/setup" in r.getMessage() for r in caplog.records)
    settings = app.extensions["camsam"].settings
    assert (settings.label_studio_url, settings.label_studio_api_key) == ("http://127.0.0.1:9", "k")


def test_setup_credentials_always_without_auth_is_loud_and_the_latest_setup_wins(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ml_backend.app"):
        app = create_app({"MODEL_DIR": tmp_path, "SETUP_CREDENTIALS": "always"})
    assert any("SETUP_CREDENTIALS=always without" in r.getMessage() for r in caplog.records)
    client = app.test_client()
    warnings = client.get("/health").json["warnings"]
    assert any("anyone who can reach camsam" in w for w in warnings)
    for host, token in (("http://first.test", "a"), ("http://second.test", "b")):
        client.post("/setup", json={"project": "4.1", "hostname": host, "access_token": token})
    settings = app.extensions["camsam"].settings
    assert (settings.label_studio_url, settings.label_studio_api_key) == ("http://second.test", "b")


def test_only_an_authenticated_setup_names_label_studio(tmp_path):
    app = create_app({"MODEL_DIR": tmp_path, "BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": "pw"})
    client = app.test_client()
    assert client.get("/health").json["warnings"] == []
    body = {"project": "4.1", "hostname": "http://attacker.test", "access_token": "theirs"}
    assert_json_error(client.post("/setup", json=body), 401)
    assert app.extensions["camsam"].settings.label_studio_url == ""
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:pw").decode()}
    own = {**body, "hostname": "http://ls.test:8080", "access_token": "ours"}
    assert client.post("/setup", json=own, headers=good).status_code == 200
    settings = app.extensions["camsam"].settings
    assert (settings.label_studio_url, settings.label_studio_api_key) == (
        "http://ls.test:8080",
        "ours",
    )
    # Label Studio sends its HOSTNAME as it is: a bad one is ignored with a note, not a failure.
    bad_hosts = ("file:///etc/passwd", "gopher://ls.test/", "ls.test:8080", "http://" + "a" * 3000)
    for bad in (*bad_hosts, "http://[::1", "http://a b", "http://ls.test:99999", "http://"):
        answer = client.post("/setup", json={**own, "hostname": bad}, headers=good)
        assert answer.status_code == 200 and "ignored" in answer.json["label_studio"]
        assert app.extensions["camsam"].settings.label_studio_url == "http://ls.test:8080"
    never = create_app({"MODEL_DIR": tmp_path, "AUTH_TOKEN": "t", "SETUP_CREDENTIALS": "never"})
    never.test_client().post("/setup", json=own, headers={"Authorization": "Bearer t"})
    assert never.extensions["camsam"].settings.label_studio_url == ""


def test_an_unknown_setup_credentials_value_is_refused_with_the_choices(tmp_path):
    with pytest.raises(ValueError, match="auth, never, always"):
        create_app({"MODEL_DIR": tmp_path, "SETUP_CREDENTIALS": "maybe"})


# Item 6: size and shape ---------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/predict", "/setup", "/webhook"])
def test_a_body_over_max_request_bytes_is_refused_before_it_is_read(client, route):
    body = b'{"tasks": [' + b" " * (17 << 20) + b"]}"  # over the 16 MiB default
    answer = client.post(route, data=body, content_type="application/json")
    assert "MAX_REQUEST_BYTES" in assert_json_error(answer, 413)["error"]


def test_a_chunked_body_is_cut_off_at_max_request_bytes(tmp_path):
    client = create_app({"MODEL_DIR": tmp_path, "MAX_REQUEST_BYTES": 2000}).test_client()
    chunked = {"wsgi.input_terminated": True}  # what waitress sets: the body is read whole

    def post(data: bytes):
        return client.post(
            "/predict",
            input_stream=io.BytesIO(data),
            content_type="application/json",
            environ_overrides=chunked,
        )

    small = json.dumps(predict_body([], project="2.1")).encode()
    assert len(small) < 2000 and post(small).status_code == 200
    big = json.dumps(predict_body([{"id": k, "data": {}} for k in range(200)])).encode()
    assert "MAX_REQUEST_BYTES" in assert_json_error(post(big), 413)["error"]


def test_more_tasks_than_max_tasks_per_request_are_refused(client, tmp_path):
    tasks = [{"id": k, "data": {"image": f"/x/{k}.png"}} for k in range(10_001)]
    answer = client.post("/predict", json=predict_body(tasks))
    assert "MAX_TASKS_PER_REQUEST (10000)" in assert_json_error(answer, 413)["error"]
    small = create_app({"MODEL_DIR": tmp_path, "MAX_TASKS_PER_REQUEST": 5}).test_client()
    assert_json_error(small.post("/predict", json=predict_body(tasks[:6])), 413)
    assert small.post("/predict", json=predict_body(tasks[:5])).status_code == 200


@pytest.mark.parametrize("route", ["/predict", "/setup", "/webhook"])
@pytest.mark.parametrize("depth", [100_000, 70])
def test_deeply_nested_json_is_a_400(client, route, depth):
    nested = "[" * depth + "]" * depth
    body = '{"action": "START_TRAINING", "project": "1.1", "tasks": [], "x": ' + nested + "}"
    answer = client.post(route, data=body, content_type="application/json")
    assert "nested deeper than 64" in assert_json_error(answer, 400)["error"]


def test_json_that_is_not_json_is_a_400(client):
    for data in ('{"tasks": [], "project": "1.1", "x": NaN}', b"\xff\xfe{", "[1, 2]", "nope"):
        assert_json_error(client.post("/predict", data=data, content_type="application/json"), 400)
    assert_json_error(client.post("/predict", data="{}", content_type="text/plain"), 400)


@pytest.mark.parametrize(
    "project", ["1" * 300 + ".1", "1" * 19, "\u0663.1", "-1.1", "", "1e3", None, True, 4.5]
)
def test_a_project_id_that_is_not_one_is_a_400(client, project):
    assert_json_error(client.post("/predict", json={**predict_body([]), "project": project}), 400)
    assert_json_error(client.post("/setup", json={"project": project}), 400)
    hook = {"action": "START_TRAINING", "project": {"id": project}}
    assert_json_error(client.post("/webhook", json=hook), 400)


def test_project_ids_are_read_in_one_canonical_form():
    assert project_id("0007.1795423447") == "7" and project_id(12) == "12"
    assert project_id("9" * 18 + ".1") == "9" * 18


# Item 7: every request-level error is a 4xx JSON answer, anything else a JSON 500 --------

KEYPOINT = {"type": "keypointlabels", "value": {"x": 50.0, "y": 50.0, "keypointlabels": ["Spot"]}}
TASK = {"id": 1, "data": {"image": "/data/upload/a.png"}}


def _click(**value) -> dict:
    return {"result": [{**KEYPOINT, "value": {**KEYPOINT["value"], **value}}]}


BAD_PREDICTS = [
    {**predict_body([TASK]), "params": "x"},
    {**predict_body([TASK]), "params": [1]},
    {**predict_body([TASK]), "params": {"context": "x"}},
    {**predict_body([TASK]), "params": {"context": [1]}},
    predict_body([TASK], {"result": "abc"}),
    predict_body([TASK], {"result": {"a": 1}}),
    predict_body([TASK], {"result": [1]}),
    predict_body([TASK], {"result": [{"type": "keypointlabels", "value": "x"}]}),
    predict_body([TASK], {"result": [{**KEYPOINT, "value": {"y": 5, "keypointlabels": ["Spot"]}}]}),
    predict_body([TASK], _click(x="abc")),
    predict_body([TASK], _click(x=None)),
    predict_body([TASK], _click(x=True)),
    predict_body([TASK], _click(x=1e999)),
    predict_body([TASK], _click(x=-5)),
    predict_body([TASK], _click(keypointlabels="Spot")),
    predict_body([TASK], _click(keypointlabels=[1])),
    {**predict_body([TASK]), "label_config": 5},
    {**predict_body([TASK]), "label_config": ["<View/>"]},
    {**predict_body([TASK]), "tasks": "abc"},
    {**predict_body([TASK]), "tasks": {"0": TASK}},
    {**predict_body([TASK]), "project": [1]},
]
BAD_SETUPS = [
    {"project": "1.1", "schema": 5},
    {"project": "1.1", "hostname": 5},
    {"project": "1.1", "access_token": {"a": 1}},
    {"project": None},
]
BAD_WEBHOOKS = [
    {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "annotation": "abc"},
    {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "annotation": {"id": "abc"}},
    {"action": "ANNOTATION_UPDATED", "project": {"id": 1}, "annotation": {"id": True}},
    {"action": "ANNOTATION_UPDATED", "project": {"id": 1}, "annotation": [1]},
    {"action": "TASKS_CREATED", "project": {"id": 1}, "tasks": "abc"},
    {"action": "TASKS_CREATED", "project": {"id": 1}, "tasks": {"a": 1}},
    {"action": "START_TRAINING", "project": {"id": "abc"}},
    {"action": "START_TRAINING", "project": {"id": 1.5}},
    {"action": "START_TRAINING", "project": "1.2"},
    {"action": 5, "project": {"id": 1}},
    {"action": ["START_TRAINING"], "project": {"id": 1}},
]


@pytest.mark.parametrize(
    "route, body",
    [("/predict", b) for b in BAD_PREDICTS]
    + [("/setup", b) for b in BAD_SETUPS]
    + [("/webhook", b) for b in BAD_WEBHOOKS],
)
def test_a_wrong_type_in_a_nested_field_is_a_400_json_answer(client, route, body):
    assert_json_error(client.post(route, json=body), 400)


def test_unknown_routes_and_methods_answer_json(client):
    assert assert_json_error(client.get("/nope"), 404)["error"] == "404 Not Found"
    wrong = client.get("/predict")
    assert_json_error(wrong, 405)
    assert "POST" in wrong.headers["Allow"]
    assert_json_error(client.delete("/health"), 405)


def test_an_unexpected_error_is_a_json_500_that_says_nothing_inside(shared, client, monkeypatch):
    backend = shared.extensions["camsam"]

    def broken():
        raise RuntimeError("/srv/secret/path token=abc")

    monkeypatch.setattr(backend, "model_summary", broken)
    answer = client.get("/health")
    assert assert_json_error(answer, 500) == {"error": "internal error: camsam logged it"}
    assert "secret" not in answer.get_data(as_text=True)


# Item 8: one bad task gets one empty result ---------------------------------------------------


def test_each_bad_task_gets_one_empty_result_and_the_others_are_answered(
    trained_model_dir, synthetic_dir, label_studio, tmp_path
):
    root, good = documents(tmp_path, synthetic_dir)
    (root / "bomb.png").write_bytes(png_header(100_000, 100_000))  # a decompression bomb
    app = fetching_app(trained_model_dir, label_studio, root)
    client = app.test_client()
    ok = {"id": 1, "data": {"image": "/data/local-files/?d=good.png"}}
    tasks = [
        ok,
        "not a task",
        5,
        None,
        {"id": 2, "data": "x"},
        {"id": 3, "data": [1, 2]},
        {"id": 4, "data": {"image": "/data/local-files/?d=go\x00od.png"}},
        {"id": 5, "data": {"image": "/data/local-files/?d=\ud800.png"}},
        {"id": 6, "data": {"image": "http://[::1/"}},
        {"id": "abc", "data": {"image": f"s3://bucket/Spot/{good.name}"}},
        {"id": 7, "data": {"image": 12}},
        {"id": 8, "data": {"image": {"url": "x"}}},
        {"id": 9, "data": {"image": "/data/local-files/?d=bomb.png"}},
        {"id": 10, "data": {"image": "/data/local-files/?d=" + "a" * 5000}},
        ok,
    ]
    answer = client.post("/predict", json=predict_body(tasks))
    assert answer.status_code == 200, answer.get_data(as_text=True)[:300]
    results = answer.json["results"]
    assert [bool(r["result"]) for r in results] == [True] + [False] * 13 + [True]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'camsam_tasks_total{outcome="failed"} 13.0\n' in metrics
    # The job itself keeps the rule for what reaches it unchecked (camsam preannotate, Redis).
    from worker.jobs.predict import predict

    raw = [ok, *tasks[6:10], ok]
    payload = {
        "project": "3",
        "label_config": SYNTHETIC_CONFIG,
        "tasks": raw,
        "settings": app.extensions["camsam"].settings.for_worker(),
    }
    job = predict(payload)
    assert [bool(r["result"]) for r in job["results"]] == [True, False, False, False, False, True]
    # In an interactive request the same task is the person's to fix: a 4xx, never a 500.
    for bad in tasks[6:10]:
        body = predict_body([bad], {"result": [KEYPOINT]})
        assert "cannot read" in assert_json_error(client.post("/predict", json=body), 422)["error"]


# Item 9: a huge batch never holds the web side -------------------------------------------------


def test_an_empty_batch_and_health_never_wait_for_the_models(tmp_path):
    fake_version(tmp_path, "3")
    app = create_app({"MODEL_DIR": tmp_path, "PREDICT_TIMEOUT": 1})
    client = app.test_client()
    with app.extensions["camsam"].runner.lock:  # a long job holds the models
        empty = client.post("/predict", json=predict_body([]))
        assert empty.status_code == 200 and empty.json == {"results": [], "model_version": "v0001"}
        assert client.get("/health").json["status"] == "UP"
        waited = client.post("/predict", json=predict_body([TASK]))
        assert "stayed busy" in assert_json_error(waited, 503)["error"]


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.01)


def test_a_long_batch_takes_the_models_a_chunk_at_a_time_and_short_requests_go_first(
    tmp_path, monkeypatch
):
    import worker.jobs.predict

    fake_version(tmp_path, "3")
    calls, started, release = [], threading.Event(), threading.Event()

    def predict(payload):
        calls.append(len(payload["tasks"]))
        if len(calls) == 1:
            started.set()
            release.wait(30)
        return fake_answer(payload)

    monkeypatch.setattr(worker.jobs.predict, "predict", predict)
    app = create_app({"MODEL_DIR": tmp_path})
    runner = app.extensions["camsam"].runner
    answers = {}

    def post(name, tasks):
        answers[name] = app.test_client().post("/predict", json=predict_body(tasks))

    many = [{"id": k, "data": {"image": f"/x/{k}.png"}} for k in range(100)]
    big = threading.Thread(target=post, args=("big", many))
    big.start()
    assert started.wait(30)
    client = app.test_client()
    assert client.get("/health").json["status"] == "UP"
    assert client.post("/predict", json=predict_body([])).status_code == 200
    small = threading.Thread(target=post, args=("small", [TASK]))
    small.start()
    _wait_for(lambda: runner.lock.waiting[REQUEST] == 1, "the short request waiting")
    release.set()
    big.join(30)
    small.join(30)
    assert calls == [32, 1, 32, 32, 4]  # the short request went before the rest of the batch
    assert len(answers["big"].json["results"]) == 100 and len(answers["small"].json["results"]) == 1


def test_a_batch_that_cannot_be_answered_in_time_is_refused_or_cut_off(tmp_path, monkeypatch):
    import worker.jobs.predict

    fake_version(tmp_path, "3")
    calls = []

    def slow(payload):
        calls.append(len(payload["tasks"]))
        time.sleep(1.2)  # past PREDICT_TIMEOUT
        return fake_answer(payload, seconds=1.2)

    monkeypatch.setattr(worker.jobs.predict, "predict", slow)
    app = create_app({"MODEL_DIR": tmp_path, "PREDICT_TIMEOUT": 1})
    client = app.test_client()
    many = [{"id": k, "data": {"image": f"/x/{k}.png"}} for k in range(100)]
    late = client.post("/predict", json=predict_body(many))
    assert "PREDICT_TIMEOUT" in assert_json_error(late, 503)["error"]
    assert calls == [32]  # the rest was never computed: nobody waits for it
    # Now camsam has measured its speed: the next long batch is refused at once.
    refused = client.post("/predict", json=predict_body(many))
    assert "LABEL_STUDIO_URL" in assert_json_error(refused, 413)["error"] and calls == [32]
    capped = create_app({"MODEL_DIR": tmp_path, "PREDICT_INLINE_MAX_TASKS": 50}).test_client()
    answer = capped.post("/predict", json=predict_body(many))
    assert "PREDICT_INLINE_MAX_TASKS (50)" in assert_json_error(answer, 413)["error"]


def test_ten_thousand_tasks_go_to_write_back_and_short_requests_still_go_first(
    tmp_path, monkeypatch
):
    import worker.jobs.predict

    fake_version(tmp_path, "3")
    calls, started, release = [], threading.Event(), threading.Event()

    def preannotate(payload):
        calls.append(("write-back", len(payload["tasks"])))
        if len(calls) == 1:
            started.set()
            release.wait(30)
        return {"model_version": "v0001", "written": len(payload["tasks"]), "failed": 0}

    def predict(payload):
        calls.append(("predict", len(payload["tasks"])))
        return fake_answer(payload)

    monkeypatch.setattr(worker.jobs.predict, "preannotate", preannotate)
    monkeypatch.setattr(worker.jobs.predict, "predict", predict)
    app = create_app(
        {"MODEL_DIR": tmp_path, "LABEL_STUDIO_URL": "http://ls.test", "LABEL_STUDIO_API_KEY": "k"}
    )
    runner = app.extensions["camsam"].runner
    client = app.test_client()
    many = [{"id": k, "data": {"image": f"/x/{k}.png"}} for k in range(10_000)]
    many[5] = {"id": "abc", "data": {}}  # nowhere to write it: counted as failed
    deferred = client.post("/predict", json=predict_body(many))
    assert deferred.status_code == 200 and deferred.json["results"] == []
    assert deferred.json["status"].startswith("9999 tasks are predicted in the background")
    assert started.wait(30)
    small = {}
    thread = threading.Thread(
        target=lambda: small.update(a=app.test_client().post("/predict", json=predict_body([TASK])))
    )
    thread.start()
    _wait_for(lambda: runner.lock.waiting[REQUEST] == 1, "the short request waiting")
    release.set()
    thread.join(30)
    assert small["a"].status_code == 200
    _wait_for(lambda: len(calls) >= 3, "the next write-back chunk")  # it may start after
    assert calls[:3] == [("write-back", 32), ("predict", 1), ("write-back", 32)]
    _wait_for(lambda: runner.waiting_tasks == 0, "the write-back ending")
    assert sum(n for kind, n in calls if kind == "write-back") == 9999


def test_in_redis_mode_write_back_waits_for_at_most_two_of_the_largest_batches(redis_url, tmp_path):
    """No worker runs here: every submitted write-back waits. The third batch of the largest
    size is refused, in every web process; once a job is over its tasks no longer count."""
    from redis import Redis
    from rq.job import Job

    url = redis_url.rsplit("/", 1)[0] + "/8"
    Redis.from_url(url).flushdb()
    fake_version(tmp_path, "3")
    config = {
        "MODEL_DIR": tmp_path,
        "REDIS_URL": url,
        "LABEL_STUDIO_URL": "http://ls.test",
        "LABEL_STUDIO_API_KEY": "k",
        "MAX_TASKS_PER_REQUEST": 300,
        "PREDICT_INLINE_MAX_TASKS": 10,
    }
    one, other = create_app(config).test_client(), create_app(config).test_client()
    batch = [{"id": k, "data": {"image": f"/x/{k}.png"}} for k in range(300)]
    try:
        for client in (one, other):
            assert client.post("/predict", json=predict_body(batch)).json["results"] == []
        refused = one.post("/predict", json=predict_body(batch))
        error = assert_json_error(refused, 503)["error"]
        chunks = 2 * -(-300 // Settings.preannotate_chunk)
        assert f"600 tasks in {chunks} chunk jobs wait to be written back" in error
        assert_json_error(other.post("/predict", json=predict_body(batch[:20])), 503)
        connection = Redis.from_url(url)
        waiting = [key.decode() for key in connection.hkeys("camsam:write-back-backlog")]
        first = sorted(waiting)[0].rsplit("-", 1)[0]  # camsam-chunk-<batch>-<n>: one batch
        for job_id in waiting:
            if job_id.startswith(first):
                Job.fetch(job_id, connection=connection).delete()  # as if they ran and expired
        assert other.post("/predict", json=predict_body(batch)).json["results"] == []
    finally:
        Redis.from_url(url).flushdb()


# Item 10: webhooks grow no state for projects camsam has no reason to know ------------------


def test_a_flood_of_webhooks_for_unknown_projects_starts_nothing_and_writes_nothing(tmp_path):
    app = create_app({"MODEL_DIR": tmp_path / "models"})
    client = app.test_client()
    threads = threading.active_count()
    ids = [str(900_000 + k) for k in range(300)]
    for project in ids:
        hook = {"action": "ANNOTATION_CREATED", "project": {"id": int(project)}}
        answer = client.post("/webhook", json={**hook, "annotation": {"id": 1}})
        assert answer.status_code == 200 and answer.json["status"] == "ignored"
        assert "not one camsam knows" in answer.json["reason"]
    assert threading.active_count() <= threads + 1
    assert not (tmp_path / "models").exists()
    remembered = {p["project"] for p in known_projects(store_for(""))}
    assert not remembered & set(ids)


def test_known_projects_train_on_a_few_threads_whatever_the_number_of_webhooks(tmp_path):
    app = create_app({"MODEL_DIR": tmp_path / "models", "TRAIN_DEBOUNCE": 0})
    app.extensions["camsam"].why_no_training = lambda: None  # runs start, and fail at once
    client = app.test_client()
    ids = [str(910_000 + k) for k in range(30)]
    for project in ids:
        assert client.post("/setup", json={"project": f"{project}.1"}).status_code == 200
    threads = threading.active_count()
    for project in ids:
        answer = client.post("/webhook", json={"action": "START_TRAINING", "project": project})
        assert answer.json["status"] in ("training queued", "training pending")
    names = sorted(t.name for t in threading.enumerate())
    assert threading.active_count() <= threads + 8, names  # 4 training threads, 4 lease renewers


def test_webhooks_confirm_a_project_in_label_studio_once_and_lookups_are_bounded(tmp_path, server):
    server.projects.add("424242")
    app = create_app(
        {"MODEL_DIR": tmp_path, "LABEL_STUDIO_URL": server.url, "LABEL_STUDIO_API_KEY": "k"}
    )
    backend = app.extensions["camsam"]
    backend.known.lookups = RateLimiter(LOOKUP_RATE, clock=lambda: 0.0)  # time stands still
    submitted = []
    backend.submit = lambda name, payload: submitted.append(payload["project"])
    client = app.test_client()
    lookups = lambda: [h for h in server.hits if h.startswith("/api/projects/")]  # noqa: E731
    hook = {"action": "START_TRAINING", "project": {"id": 424242}}
    try:
        assert client.post("/webhook", json=hook).json["status"] == "training queued"
        assert client.post("/webhook", json=hook).json["status"] == "training pending"
        assert lookups() == ["/api/projects/424242/"]  # confirmed once, then known
        codes = []
        for k in range(50):
            flood = {"action": "START_TRAINING", "project": {"id": 800_000 + k}}
            codes.append(client.post("/webhook", json=flood).status_code)
        assert codes == [200] + [429] * 49  # the lookup budget (burst of 2) is spent
        assert len(lookups()) == int(LOOKUP_RATE)
        again = client.post("/webhook", json={**hook, "project": {"id": 800_000}})
        assert "Label Studio has no project 800000" in again.json["reason"]  # not asked again
        assert len(lookups()) == int(LOOKUP_RATE) and submitted == ["424242"]
    finally:
        forget_training("424242")


def test_label_studio_confirms_a_project_only_with_the_right_key(label_studio, tmp_path):
    hook = {"action": "START_TRAINING", "project": {"id": 434344}}
    answers = []
    for key in ("wrong", "secret"):
        app = create_app(
            {
                "MODEL_DIR": tmp_path,
                "LABEL_STUDIO_URL": label_studio.url,
                "LABEL_STUDIO_API_KEY": key,
            }
        )
        app.extensions["camsam"].submit = lambda name, payload: None
        answers.append(app.test_client().post("/webhook", json=hook))
    try:
        assert "check LABEL_STUDIO_API_KEY" in assert_json_error(answers[0], 503)["error"]
        assert answers[1].json["status"] == "training queued"
    finally:
        forget_training("434344")


def test_max_projects_bounds_what_is_known(tmp_path):
    app = create_app({"MODEL_DIR": tmp_path, "MAX_PROJECTS": 3, "AUTH_TOKEN": "t"})
    client = app.test_client()
    auth = {"Authorization": "Bearer t"}
    answers = [
        client.post("/setup", json={"project": f"{k}.1"}, headers=auth).json for k in range(1, 6)
    ]
    assert ["project" in a for a in answers] == [False, False, False, True, True]
    hook = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 5}})
    assert hook.json["status"] == "ignored"
    assert any(
        "MAX_PROJECTS (3)" in w for w in client.get("/health", headers=auth).json["warnings"]
    )


def test_an_open_setup_cannot_lock_real_projects_out(tmp_path, server):
    """Without credentials anyone can call /setup: 1000 made-up ids only churn among themselves.
    A project Label Studio confirms is still taken after the flood and then stays; one that
    Label Studio's own open /setup named is confirmed at its first webhook and stays too."""
    server.projects.update({"77", "78"})
    app = create_app(
        {
            "MODEL_DIR": tmp_path,
            "MAX_PROJECTS": 3,
            "LABEL_STUDIO_URL": server.url,
            "LABEL_STUDIO_API_KEY": "k",
        }
    )
    backend = app.extensions["camsam"]
    submitted = []
    backend.submit = lambda name, payload: submitted.append(payload["project"])
    client = app.test_client()
    flood = [f"{k}.1" for k in range(1000, 2000)]  # the attacker's ids
    try:
        for project in flood[:500]:
            assert "project" not in client.post("/setup", json={"project": project}).json
        assert client.get("/health").json["warnings"] == []  # full, but all of them make way
        hook = {"action": "START_TRAINING", "project": {"id": 77}}
        assert client.post("/webhook", json=hook).json["status"] == "training queued"
        assert client.post("/setup", json={"project": "78.1"}).status_code == 200  # Label Studio
        time.sleep(1.0)  # Label Studio lookups are rate-limited
        hook78 = {"action": "START_TRAINING", "project": {"id": 78}}
        assert client.post("/webhook", json=hook78).json["status"] == "training queued"
        for project in flood[500:]:
            client.post("/setup", json={"project": project})
        assert len(backend.known.local) == 3 and {"77", "78"} <= set(backend.known.local)
        forget_training("77", "78")
        assert client.post("/webhook", json=hook78).json["status"] == "training queued"
        assert submitted == ["77", "78", "78"]
    finally:
        forget_training("77", "78")


def test_the_webhook_secret_is_checked_when_set(tmp_path):
    app = create_app({"MODEL_DIR": tmp_path, "WEBHOOK_SECRET": "s3cret", "AUTH_TOKEN": "t"})
    client = app.test_client()
    hook = {"action": "PROJECT_UPDATED", "project": {"id": 1}}
    assert_json_error(client.post("/webhook", json=hook), 401)
    wrong = {"X-Webhook-Secret": "s3creT"}
    assert_json_error(client.post("/webhook", json=hook, headers=wrong), 401)
    right = {"X-Webhook-Secret": "s3cret"}
    assert client.post("/webhook", json=hook, headers=right).json["status"] == "ignored"
    assert "webhook_secret" not in app.extensions["camsam"].settings.for_worker()


def test_the_rate_limiter_keeps_a_bounded_number_of_buckets():
    limiter = RateLimiter(5, max_keys=100, clock=lambda: 0.0)
    allowed = [limiter.allow(str(k)) for k in range(10_000)]
    assert len(limiter.buckets) == 100 and allowed.count(True) == 100


def test_in_redis_mode_every_web_process_knows_the_same_bounded_projects(redis_url, tmp_path):
    from redis import Redis

    url = redis_url.rsplit("/", 1)[0] + "/7"  # a database of this test's own
    Redis.from_url(url).flushdb()
    # no Label Studio named here: in Redis mode the training workers' own settings win
    config = {"MODEL_DIR": tmp_path, "REDIS_URL": url, "MAX_PROJECTS": 2}
    first, second = create_app(config), create_app({**config, "AUTH_TOKEN": "t"})
    submitted = []
    second.extensions["camsam"].submit = lambda name, payload: submitted.append(payload["project"])
    one, other = first.test_client(), second.test_client()
    auth = {"Authorization": "Bearer t"}
    # An open /setup's project makes way for the next; an authenticated one's stays.
    for k in (50, 51):
        assert "project" not in one.post("/setup", json={"project": f"{k}.1"}).json
    for k in (52, 53):
        assert "project" not in other.post("/setup", json={"project": f"{k}.1"}, headers=auth).json
    answer = other.post("/setup", json={"project": "54.1"}, headers=auth).json
    assert "MAX_PROJECTS (2)" in answer["project"]
    assert "project" in one.post("/setup", json={"project": "55.1"}).json
    hook = {"action": "START_TRAINING", "project": {"id": 52}}
    try:
        assert other.post("/webhook", json=hook).json["status"] == "training queued"
        unknown = other.post("/webhook", json={**hook, "project": {"id": 51}})
        assert unknown.json["status"] == "ignored" and submitted == ["52"]
        for route, body in [("/predict", BAD_PREDICTS[9]), ("/webhook", BAD_WEBHOOKS[0])]:
            assert_json_error(other.post(route, json=body, headers=auth), 400)
        deep = "[" * 100_000
        assert_json_error(
            other.post("/predict", data=deep, content_type="application/json", headers=auth), 400
        )
        assert other.get("/health").json["status"] == "UP"
    finally:
        Redis.from_url(url).flushdb()


# Item 11: memory per image ------------------------------------------------------------------

HUGE = {"image": "/data/local-files/?d=huge.jpg"}


def test_eight_9000_pixel_jpegs_in_one_batch_cost_a_bounded_memory(huge):
    """Each is decoded reduced and worked on at MAX_WORK_SIDE; unbounded, the eight decoded
    images alone would be 8 x 162 MB (docs/operations.md has the measured figures)."""
    app, _ = huge
    before = resident_mb()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current resident set
    tasks = [{"id": k, "data": HUGE} for k in range(8)]
    answer = app.test_client().post("/predict", json=predict_body(tasks))
    growth = resident_mb("VmHWM") - before
    assert answer.status_code == 200 and len(answer.json["results"]) == 8
    assert growth < 900, f"the batch took {growth:.0f} MB"


def test_a_mask_on_a_huge_image_is_written_at_its_own_size(huge):
    from worker.labelstudio.results import decode_mask

    app, _ = huge
    click = {
        "type": "keypointlabels",
        "value": {"x": 50.0, "y": 50.0, "keypointlabels": ["Scratch"]},
    }
    body = predict_body([{"id": 1, "data": HUGE}], context={"result": [click]})
    answer = app.test_client().post("/predict", json=body)
    assert answer.status_code == 200, answer.get_data(as_text=True)[:300]
    (region,) = [r for r in answer.json["results"][0]["result"] if r["type"] == "brushlabels"]
    assert (region["original_width"], region["original_height"]) == (6000, 9000)
    mask = decode_mask(region["value"]["rle"], 6000, 9000)
    assert mask[4500, 3000] and not mask.all()  # the click, at the centre of the image shown


# Items fixed elsewhere: 1, 2, 4 (image downloads), 5 (version names) --------------------------


def test_item1_urls_parsers_read_differently_are_never_fetched(server):
    from worker.labelstudio.fetch import FetchLimits, ImageFetcher

    fetcher = ImageFetcher(limits=FetchLimits(timeout=5, hosts=("allowed.test",)))
    port = server.port
    for url in (
        f"http://allowed.test\\@127.0.0.1:{port}/x.png",
        f"http://127.0.0.1:{port}\\@allowed.test/x.png",
        f"http://allowed.test:80@127.0.0.1:{port}/x.png",
        f"http://allowed.test@127.0.0.1:{port}/x.png",
        f"http://127.0.0.1:{port}#@allowed.test/x.png",
        f"http://127.0.0.1:{port}?@allowed.test/x.png",
        f"http://allowed.test\t@127.0.0.1:{port}/x.png",
        f"http://allowed.test%2f@127.0.0.1:{port}/x.png",
        f"http://allowed.test /@127.0.0.1:{port}/x.png",
    ):
        with pytest.raises(ImageError):
            fetcher.fetch(url)
    assert server.hits == []


def test_item2_ipv6_spellings_of_the_metadata_address_are_refused_even_when_listed():
    from worker.labelstudio.fetch import FetchLimits, ImageFetcher

    urls = (
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[::a9fe:a9fe]/",
        "http://[2002:a9fe:a9fe::]/",
        "http://[fd00:ec2::254]/",
    )
    hosts = tuple(re.search(r"\[[^\]]+\]", u).group(0) for u in urls)
    fetcher = ImageFetcher(limits=FetchLimits(timeout=5, hosts=hosts))
    for url in urls:
        with pytest.raises(ImageError, match="link-local|metadata"):
            fetcher.fetch(url)


def test_item4_a_server_that_drips_bytes_is_cut_off_at_fetch_timeout(server):
    from worker.labelstudio.fetch import FetchLimits, ImageFetcher

    fetcher = ImageFetcher(limits=FetchLimits(timeout=1.0, hosts=(f"127.0.0.1:{server.port}",)))
    with pytest.raises(ImageError, match="took longer than 1 s"):
        fetcher.fetch(server.url + "/drip")


def test_item5_a_version_name_that_is_a_path_goes_nowhere(tmp_path, capsys):
    from worker.cli.main import main

    models = tmp_path / "models"
    (models / "versions").mkdir(parents=True)
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    for name in ("../../x", "../x", "/etc/passwd", "v0001/../../x"):
        assert main(["rollback", name, "--model-dir", str(models)]) == 2
        assert "is not a model version" in capsys.readouterr().err
    assert not (models / "CURRENT").exists()
    (models / "CURRENT").write_text("../../x\n")
    assert ModelDir(models).current_version() is None
    client = create_app({"MODEL_DIR": models}).test_client()
    assert client.post("/setup", json={"project": "1.1"}).json["model_version"] == "untrained"


# What already held ---------------------------------------------------------------------------


def test_local_files_never_leave_the_document_root(tmp_path):
    from worker.labelstudio.fetch import ImageFetcher

    root = tmp_path / "documents"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(b"inside")
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"outside")
    (root / "link.png").symlink_to(secret)
    fetcher = ImageFetcher(document_root=str(root))
    assert fetcher.fetch("/data/local-files/?d=a.png") == b"inside"
    for ref in (
        "/data/local-files/?d=../secret.png",
        "/data/local-files/?d=%2e%2e/secret.png",
        "/data/local-files/?d=%252e%252e/secret.png",
        "/data/local-files/?d=sub/../../secret.png",
        f"/data/local-files/?d={secret}",
        "/data/local-files/?d=link.png",
        str(secret),
        "../secret.png",
    ):
        with pytest.raises(ImageError):
            fetcher.fetch(ref)


def test_loopback_spellings_of_label_studios_host_are_not_its_host(server):
    from worker.labelstudio.fetch import ImageFetcher

    fetcher = ImageFetcher(server.url, "k")
    port = server.port
    for host in (
        "127.1",
        "0x7f000001",
        "2130706433",
        "0177.0.0.1",
        "127.000.000.001",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "localhost",
        "0.0.0.0",
        "127.0.0.1.nip.io",
    ):
        with pytest.raises(ImageError):
            fetcher.fetch(f"http://{host}:{port}/x.png")
    assert server.hits == []
    assert fetcher.fetch("/data/upload/x.png").startswith(b"\x89PNG")  # its own host: fetched


def test_file_gopher_data_and_other_schemes_are_refused(server):
    from worker.labelstudio.fetch import FetchLimits, ImageFetcher

    fetcher = ImageFetcher(server.url, "k", limits=FetchLimits(hosts=("127.0.0.1",)))
    for url in (
        "file:///etc/passwd",
        "file://localhost/etc/passwd",
        f"gopher://127.0.0.1:{server.port}/_GET%20/",
        "data:image/png;base64," + base64.b64encode(png_header(4, 4)).decode(),
        f"ftp://127.0.0.1:{server.port}/x.png",
        f"dict://127.0.0.1:{server.port}/",
        "jar:file:///x.zip!/x.png",
    ):
        with pytest.raises(ImageError):
            fetcher.fetch(url)
    assert server.hits == []


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE v [<!ENTITY a "aaaaaaaaaa">'
    + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9))
    + ']><View><Image name="image" value="$image"/><Choices name="c" toName="image">'
    + '<Choice value="&j;"/></Choices></View>'
)
XXE = (
    '<?xml version="1.0"?><!DOCTYPE v [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    '<View><Image name="image" value="$image"/><Choices name="c" toName="image">'
    '<Choice value="&x;"/></Choices></View>'
)


@pytest.mark.parametrize("config", [BILLION_LAUGHS, XXE], ids=["billion-laughs", "xxe"])
def test_xml_bombs_and_external_entities_in_a_label_config_are_refused(client, config):
    body = {**predict_body([TASK]), "label_config": config}
    answer = client.post("/predict", json=body)
    assert "label config" in assert_json_error(answer, 422)["error"]
    assert "root:" not in answer.get_data(as_text=True)
    setup = client.post("/setup", json={"project": "1.1", "schema": config})
    assert_json_error(setup, 422)


@pytest.mark.filterwarnings("ignore:Image size")
def test_a_decompression_bomb_is_refused_before_it_is_decoded():
    from worker.data.images import load_image

    with pytest.raises(ImageError, match="12000x12000 pixels, above MAX_IMAGE_PIXELS"):
        load_image(png_header(12_000, 12_000), max_pixels=100_000_000)
    with pytest.raises(ImageError, match="decompression bomb"):  # Pillow's own guard, further up
        load_image(png_header(100_000, 100_000), max_pixels=0)


def test_basic_auth_guards_every_route_but_health_and_webhook(tmp_path):
    app = create_app({"MODEL_DIR": tmp_path, "BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": "pw"})
    client = app.test_client()
    wrong = [
        {},
        {"Authorization": "Basic " + base64.b64encode(b"ls:no").decode()},
        {"Authorization": "Basic " + base64.b64encode(b"ls").decode()},
        {"Authorization": "Basic !!!"},
        {"Authorization": "Bearer pw"},
    ]
    rules = [r for r in app.url_map.iter_rules() if r.endpoint not in ("static",)]
    guarded = [r for r in rules if r.endpoint not in ("health", "index", "webhook")]
    assert {r.rule for r in guarded} == {"/setup", "/predict", "/metrics"}
    for rule in guarded:
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            for headers in wrong:
                answer = client.open(rule.rule, method=method, json={}, headers=headers)
                assert_json_error(answer, 401)
    assert_json_error(client.get("/nope"), 401)  # no route map for a stranger either
    assert client.get("/health").status_code == 200 and client.get("/").status_code == 200


def test_no_answer_echoes_a_key_a_token_or_a_secret(tmp_path, server):
    key, token, hook_secret, setup_token = SECRETS
    app = create_app(
        {
            "MODEL_DIR": tmp_path,
            "LABEL_STUDIO_URL": server.url,
            "LABEL_STUDIO_API_KEY": key,
            "AUTH_TOKEN": token,
            "WEBHOOK_SECRET": hook_secret,
        }
    )
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    app.extensions["camsam"].submit = lambda name, payload: None  # no training run here
    fake_version(tmp_path, "3")
    answers = [
        client.get("/health"),
        client.get("/metrics"),
        client.post(
            "/setup", json={"project": "3.1", "hostname": server.url, "access_token": setup_token}
        ),
        client.post("/setup", json={"project": "3.1", "access_token": 5}),
        client.post("/predict", json={**predict_body([TASK]), "label_config": "<View/>"}),
        client.post("/predict", json=predict_body([TASK], _click(x="abc"))),
        client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}}),
        client.post(
            "/webhook",
            json={"action": "START_TRAINING", "project": {"id": 3}},
            headers={"X-Webhook-Secret": hook_secret},
        ),
        client.get("/nope"),
    ]
    for answer in answers:
        text = answer.get_data(as_text=True)
        assert not [s for s in SECRETS if s in text], (answer.request.path, text[:300])
    worker = json.dumps(app.extensions["camsam"].settings.for_worker())
    assert token not in worker and hook_secret not in worker
    forget_training("3")


def test_a_webhook_burst_for_one_project_is_one_training_job(tmp_path):
    app = create_app({"MODEL_DIR": tmp_path, "WEBHOOK_RATE": 0})
    backend = app.extensions["camsam"]
    backend.why_no_training = lambda: None
    submitted = []
    backend.submit = lambda name, payload: submitted.append(name)
    client = app.test_client()
    assert client.post("/setup", json={"project": "434343.1"}).status_code == 200
    hook = {"action": "START_TRAINING", "project": {"id": 434343}}
    try:
        statuses = [client.post("/webhook", json=hook).json["status"] for _ in range(100)]
        assert statuses == ["training queued"] + ["training pending"] * 99
        assert submitted == ["worker.training.job.train_job"]
    finally:
        forget_training("434343")


def test_settings_read_the_new_limits_from_the_environment():
    settings = Settings.from_env(
        {"MAX_REQUEST_BYTES": "100", "MAX_TASKS_PER_REQUEST": "7", "MAX_PROJECTS": "2"}
    )
    assert (settings.max_request_bytes, settings.max_tasks_per_request) == (100, 7)
    assert settings.max_projects == 2 and Settings().setup_credentials == "auth"


# Last: the app every probe above was thrown at still serves ------------------------------------


def test_zz_the_service_is_still_up_after_every_probe(client, huge):
    health = client.get("/health")
    assert health.status_code == 200 and health.json["status"] == "UP"
    answer = client.post("/predict", json=predict_body([TASK]))
    assert answer.status_code == 200 and answer.json["results"][0]["model_version"] == "untrained"
    app, warm = huge
    assert app.test_client().get("/health").json["status"] == "UP"
    grown = resident_mb() - warm
    assert grown < 300, f"{grown:.0f} MB more resident than with the models warm"


def test_a_user_without_a_password_lets_nobody_in_and_health_says_so(tmp_path):
    app = create_app({"MODEL_DIR": tmp_path, "BASIC_AUTH_USER": "ls"})
    client = app.test_client()
    for given in (b"ls:", b"ls", b":"):
        headers = {"Authorization": "Basic " + base64.b64encode(given).decode()}
        for route in ("/predict", "/setup"):
            assert_json_error(client.post(route, json={}, headers=headers), 401)
        assert_json_error(client.get("/metrics", headers=headers), 401)
    warnings = client.get("/health").json["warnings"]
    assert any("BASIC_AUTH_USER without BASIC_AUTH_PASS" in w for w in warnings)


@pytest.mark.parametrize("field", ["label_config", "schema", "project"])
@pytest.mark.parametrize("route", ["/setup", "/predict"])
def test_a_lone_surrogate_in_the_body_is_a_400(client, route, field):
    """JSON's \\ud800 escape decodes to a string UTF-8 cannot hold: not text, the client's fault."""
    body = json.dumps({**predict_body([], project="2.1"), "label_config": SYNTHETIC_CONFIG})
    body = body[:-1] + f', "{field}": "a\\ud800b"' + "}"
    answer = client.post(route, data=body.encode(), content_type="application/json")
    assert "lone UTF-16 surrogate" in assert_json_error(answer, 400)["error"]
    key = '{"\\udfff": 1, ' + body[1:]
    answer = client.post(route, data=key.encode(), content_type="application/json")
    assert_json_error(answer, 400)
