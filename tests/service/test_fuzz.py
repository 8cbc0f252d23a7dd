"""Every route of a real ``camsam serve`` fuzzed over HTTP (hypothesis, derandomized: the same
examples each run, a bounded number of them): bodies shaped like Label Studio's and arbitrary
ones, headers (credentials, content types, the webhook secret) and query strings. Never a 5xx,
never a traceback in an answer or the log, never a hang (each answer within 120 s), and the
server's resident memory back within 300 MB of where it was warm."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import start_serve, stop_process
from tests.service.test_app import SYNTHETIC_CONFIG, documents, predict_body

pytestmark = pytest.mark.slow

TOKEN = "fuzz-token-0123456789"
SECRET = "fuzz-secret-0123456789"
FUZZ = settings(
    derandomize=True,  # seeded: each run sends the same requests
    database=None,
    deadline=None,  # a hang is caught by the request's own timeout
    max_examples=120,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def served(trained_model_dir, synthetic_dir, tmp_path_factory):
    """``camsam serve`` (embedded) with a model, local files, a bearer token and a webhook
    secret; its address, log and pid."""
    root = tmp_path_factory.mktemp("fuzz")
    files, _ = documents(root, synthetic_dir)
    env = {
        "MODEL_DIR": str(trained_model_dir),
        "LOCAL_FILES_DOCUMENT_ROOT": str(files),
        "AUTH_TOKEN": TOKEN,
        "WEBHOOK_SECRET": SECRET,
    }
    log = root / "serve.log"
    server, url = start_serve(env, log)
    warm = predict_body([{"id": 1, "data": {"image": "/data/local-files/?d=good.png"}}])
    answer = requests.post(url + "/predict", json=warm, headers=bearer(), timeout=120)
    assert answer.status_code == 200, answer.text
    yield url, log, server.pid, resident_mb(server.pid)
    stop_process(server, 30)


def bearer() -> dict:
    return {"Authorization": f"Bearer {TOKEN}"}


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


# Header values that the HTTP client sends: latin-1, no CR or LF, no leading white space.
header_text = st.text(
    st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x85\xa0"),
    max_size=60,
).filter(lambda text: not text[:1].isspace())
authorization = st.one_of(
    st.just(f"Bearer {TOKEN}"),
    st.just(None),
    header_text,
    st.builds(lambda raw: "Basic " + base64.b64encode(raw).decode(), st.binary(max_size=40)),
    st.builds(lambda text: f"Bearer {text}", header_text),
)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
ids = st.one_of(st.integers(), st.text(max_size=12), st.sampled_from(["3", "3.1", "0007", "-1"]))
images = st.one_of(
    st.sampled_from(
        [
            "/data/local-files/?d=good.png",
            "/data/local-files/?d=../../etc/passwd",
            "/data/upload/1/x.png",
            "http://127.0.0.1:1/x.png",
            "http://169.254.169.254/latest",
            "s3://bucket/key.png",
            "file:///etc/passwd",
            "data:image/png;base64,AAAA",
        ]
    ),
    st.text(max_size=40),
    json_value,
)
region_value = st.fixed_dictionaries(
    {},
    optional={
        "x": json_value | st.floats(-10, 110),
        "y": json_value | st.floats(-10, 110),
        "keypointlabels": st.lists(st.sampled_from(["Scratch", "Spot", "Nope"]), max_size=2),
        "brushlabels": st.lists(st.sampled_from(["Scratch", "Spot"]), max_size=2),
        "rle": st.lists(st.integers(-5, 300), max_size=30),
        "format": st.just("rle"),
        "width": json_value | st.floats(0, 100),
        "height": json_value | st.floats(0, 100),
        "is_positive": json_value,
    },
)
region = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["keypointlabels", "brushlabels", "rectanglelabels", "x"]),
        "value": region_value | json_value,
        "from_name": st.sampled_from(["mask", "defect", "x"]),
        "to_name": st.sampled_from(["image", "x"]),
        "original_width": json_value | st.integers(0, 20000),
        "original_height": json_value | st.integers(0, 20000),
        "is_positive": json_value,
    },
)
task_data = st.fixed_dictionaries({}, optional={"image": images}) | json_value
task = st.fixed_dictionaries({}, optional={"id": ids, "data": task_data})
label_configs = st.one_of(
    st.just(SYNTHETIC_CONFIG),
    st.text(max_size=80),
    st.builds(lambda cut: SYNTHETIC_CONFIG[:cut], st.integers(0, len(SYNTHETIC_CONFIG))),
    json_value,
)
contexts = st.fixed_dictionaries(
    {},
    optional={
        "context": st.fixed_dictionaries(
            {}, optional={"result": st.lists(region, max_size=3) | json_value}
        )
        | json_value
    },
)
# Label Studio's shape with the details fuzzed (so predictions and clicks run), or anything.
predict_bodies = st.fixed_dictionaries(
    {
        "tasks": st.lists(
            st.fixed_dictionaries(
                {
                    "id": st.integers(1, 9),
                    "data": st.fixed_dictionaries(
                        {"image": st.sampled_from(["/data/local-files/?d=good.png"]) | images}
                    ),
                }
            ),
            min_size=1,
            max_size=3,
        ),
        "project": st.sampled_from(["3.1", "3"]),
        "label_config": st.just(SYNTHETIC_CONFIG),
    },
    optional={"params": contexts},
) | st.fixed_dictionaries(
    {},
    optional={
        "tasks": st.lists(task | json_value, max_size=4) | json_value,
        "project": ids | json_value,
        "label_config": label_configs,
        "params": contexts | json_value,
    },
)
setup_bodies = st.fixed_dictionaries(
    {},
    optional={
        "project": ids | json_value,
        "label_config": label_configs,
        "schema": label_configs,
        "hostname": st.sampled_from(["http://127.0.0.1:1", "file:///", "ls.test:8080", "x"])
        | json_value,
        "access_token": st.text(max_size=20) | json_value,
        "model_version": json_value,
        "extra_params": json_value,
    },
)
webhook_bodies = st.fixed_dictionaries(
    {},
    optional={
        "action": st.sampled_from(
            ["ANNOTATION_CREATED", "ANNOTATIONS_DELETED", "START_TRAINING", "TASKS_CREATED", "x"]
        )
        | json_value,
        "project": st.fixed_dictionaries({}, optional={"id": ids}) | ids | json_value,
        "annotation": st.fixed_dictionaries(
            {}, optional={"id": ids, "result": st.lists(region, max_size=2), "task": ids}
        )
        | json_value,
        "task": task | json_value,
        "tasks": st.lists(task, max_size=3) | json_value,
    },
)
BODIES = {"/predict": predict_bodies, "/setup": setup_bodies, "/webhook": webhook_bodies}


@st.composite
def requests_to_send(draw) -> dict:
    """One request: a route (the known ones, or another path), a method, headers, a query
    string, and a body (shaped like Label Studio's, any JSON value, or raw bytes)."""
    path = draw(st.sampled_from([*BODIES, "/", "/health", "/metrics"]) | st.text(max_size=20))
    path = path if path.startswith("/") else "/" + path
    method = draw(st.sampled_from(["POST", "GET"]) | st.sampled_from(["PUT", "DELETE", "HEAD"]))
    headers = {}
    if (auth := draw(authorization)) is not None:
        headers["Authorization"] = auth
    if draw(st.booleans()):
        headers["X-Webhook-Secret"] = draw(st.just(SECRET) | header_text)
    shaped = BODIES.get(path, json_value)
    body = draw(
        st.builds(lambda value: json.dumps(value).encode(), shaped | json_value)
        | st.binary(max_size=200)
    )
    headers["Content-Type"] = draw(
        st.sampled_from(["application/json", "text/plain", "application/json; charset=latin-1"])
        | header_text
    )
    query = draw(st.dictionaries(st.text(max_size=8), st.text(max_size=12), max_size=3))
    return {"method": method, "path": path, "headers": headers, "params": query, "data": body}


def check(url: str, request: dict) -> None:
    answer = requests.request(
        request["method"],
        url + request["path"],
        timeout=120,
        allow_redirects=False,
        **{key: request[key] for key in ("headers", "params", "data")},
    )
    assert answer.status_code < 500, (request, answer.status_code, answer.text[:500])
    assert "Traceback" not in answer.text, (request, answer.text[:500])
    if answer.status_code >= 400 and request["method"] != "HEAD":
        assert "error" in answer.json(), (request, answer.text[:500])


@FUZZ
@given(request=requests_to_send())
def test_fuzzed_requests_get_an_answer_that_is_not_a_5xx(served, request):
    url, log, _, _ = served
    check(url, request)


@FUZZ
@given(route=st.sampled_from(sorted(BODIES)), data=st.data())
def test_fuzzed_bodies_with_valid_credentials_reach_the_routes(served, route, data):
    url, _, _, _ = served
    body = data.draw(BODIES[route])
    headers = {**bearer(), "X-Webhook-Secret": SECRET, "Content-Type": "application/json"}
    request = {"method": "POST", "path": route, "headers": headers, "params": {}}
    check(url, {**request, "data": json.dumps(body).encode()})


def test_after_the_fuzzing_the_log_holds_no_traceback_and_memory_is_back(served):
    url, log, pid, warm_mb = served
    assert requests.get(url + "/health", timeout=60).json()["status"] == "UP"
    assert "Traceback" not in log.read_text(errors="replace")
    assert resident_mb(pid) < warm_mb + 300
