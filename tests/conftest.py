"""Shared fixtures: a synthetic dataset, a classifier trained on it in seconds, a tiny SAM2."""

from __future__ import annotations

import os
import tempfile

# No test asks the model hub, nor finds weights a download left on this machine: training's
# default start (the hub's weights when they can be had) falls back at once; test_pretrained.py
# covers both ways with stand-ins. Set before anything imports huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="camsam-hf-")

import base64
import itertools
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import torch

from worker.contract.store import ModelDir
from worker.data.dataset import load_dataset
from worker.data.synthetic import write_dataset
from worker.pipeline.checkpoint import publish
from worker.training.classifier import TrainConfig, train

SAM2_TINY_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
REPO = Path(__file__).resolve().parent.parent
# Label Studio named but not listening (the discard port): a training run starts, then fails.
UNREACHABLE_LS = {"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "k"}


def pytest_unconfigure(config) -> None:
    cache = Path(os.environ["HF_HUB_CACHE"])  # the empty hub cache made above, and only that
    if cache.parent == Path(tempfile.gettempdir()) and cache.name.startswith("camsam-hf-"):
        shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("synthetic"), per_class=24, seed=0)


@pytest.fixture(scope="session")
def synthetic_dataset(synthetic_dir):
    return load_dataset(synthetic_dir, background_classes=["Clean"])


@pytest.fixture(scope="session")
def trained_model_dir(synthetic_dataset, tmp_path_factory) -> Path:
    """A model directory whose current version was trained on the synthetic dataset."""
    config = TrainConfig(image_size=96, epochs=8, batch_size=16, progress=False)
    result = train(synthetic_dataset, config)
    root = tmp_path_factory.mktemp("models")
    publish(ModelDir(root), result.spec, result.state_dict)
    return root


@pytest.fixture(scope="session")
def sam2_checkpoint(tmp_path_factory) -> Path:
    """SAM2 hiera-tiny with random weights, saved the way Meta's checkpoints are ({"model": sd})."""
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2(SAM2_TINY_CONFIG, None, device="cpu")
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny_random.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


def reply(handler, body: bytes, status: int = 200) -> None:
    """Answer an ``http.server`` request with ``body`` and its length."""
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def stop_process(process: subprocess.Popen, grace: float = 20.0) -> None:
    """Ask a process to stop (SIGTERM); kill it if it has not within ``grace`` seconds, its whole
    session where it leads one. A worker still in a SAM2 pass on a busy machine may outlast
    the grace: left alive, it would take later tests' jobs from the queues they share."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            pass
        try:
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        except ProcessLookupError:
            pass
    process.wait()


def wait_while_progressing(done, progress, what: str, stall: float = 300.0):
    """Wait until ``done()`` is true for as long as ``progress()`` keeps changing: on a busy
    machine a test waits while the work goes on, and fails once nothing has moved for ``stall``
    seconds (a hang, not a slow machine)."""
    last, moved = progress(), time.monotonic()
    while not done():
        now = progress()
        if now != last:
            last, moved = now, time.monotonic()
        elif time.monotonic() - moved > stall:
            raise AssertionError(f"{what}: nothing moved for {stall:.0f} s (last: {last})")
        time.sleep(0.2)


def start_serve(env: dict, log: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """``camsam serve`` on a free loopback port in a session of its own (``env`` added to this
    process's environment; no ``REDIS_URL`` unless ``env`` gives one), its output in ``log``;
    its address once /health answers."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "REDIS_URL"}, **env}
    command = [sys.executable, "-m", "worker.cli", "serve", "--host", "127.0.0.1"]
    with log.open("wb") as out:
        server = subprocess.Popen(
            [*command, "--port", str(port), *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    wait_until_up(server, url, log)
    return server, url


def wait_until_up(server: subprocess.Popen, url: str, log: Path | None = None) -> None:
    """Until ``url``/health answers; fails at once (with the log's end) if ``server`` exits."""
    import requests

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(log.read_text()[-2000:] if log else f"exit {server.returncode}")
        try:
            if requests.get(url + "/health", timeout=5).ok:
                return
        except requests.RequestException:
            time.sleep(0.2)
    stop_process(server, 10)
    raise AssertionError(f"nothing answered on {url}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int, workdir: Path, databases: int = 16) -> tuple[subprocess.Popen, str]:
    """A redis-server on ``port`` (loopback, no persistence), up when this returns; the address
    of its database 0."""
    from redis import Redis

    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(workdir), "--databases", str(databases)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            Redis.from_url(url).ping()
            break
        except Exception:  # noqa: BLE001 (not up yet)
            time.sleep(0.05)
    return server, url


# One database per test (and per module fixture): far more than a run uses.
DATABASES = 4096
_databases = itertools.count(1)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[str]:
    """A redis-server of the tests' own on a free loopback port; its address, no database."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server, url = start_redis(free_port(), tmp_path_factory.mktemp("redis"), DATABASES)
    yield url.rsplit("/", 1)[0]
    stop_process(server, 10)


def own_database(server: str) -> Iterator[str]:
    """A database no other test uses, empty when handed over and emptied afterwards. A process
    another test left behind listens on its own database and cannot take this one's jobs."""
    from redis import Redis

    database = next(_databases)
    assert database < DATABASES, "more Redis databases asked for than the server has"
    url = f"{server}/{database}"
    Redis.from_url(url).flushdb()
    yield url
    Redis.from_url(url).flushdb()


@pytest.fixture
def redis_url(redis_server) -> Iterator[str]:
    """This test's own Redis database (see own_database)."""
    yield from own_database(redis_server)


@pytest.fixture(scope="module")
def module_redis_url(redis_server) -> Iterator[str]:
    """A module's own Redis database, for module fixtures (a stack its tests share)."""
    yield from own_database(redis_server)


class _LabelStudioHandler(SimpleHTTPRequestHandler):
    """A little Label Studio: /data/upload/<file>, the task presign endpoint and a few API
    routes (projects, tasks, annotations, predictions), only with the right token; what
    ``POST /api/projects/<id>/import/predictions`` imports is kept in ``server.predictions``."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path.startswith("/signed/"):  # a storage's signed URL: no Label Studio token
            if self.headers.get("Authorization"):
                self.send_error(400, "the token leaked to the storage host")
                return
            self.path = self.path.removeprefix("/signed").split("?")[0]
            super().do_GET()
            return
        if self.headers.get("Authorization") != "Token secret":
            self.send_error(401)
            return
        if self.path.startswith("/api/"):
            self._api_get()
            return
        if self.path.startswith("/tasks/"):
            uri = base64.urlsafe_b64decode(self.path.split("fileuri=")[1]).decode()
            self.send_response(303)
            self.send_header("Location", "/signed/" + uri.removeprefix("s3://bucket/") + "?sig=1")
            self.end_headers()
            return
        self.path = self.path.replace("/data/upload", "", 1)
        super().do_GET()

    def _api_get(self) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query)
        parts = url.path.strip("/").split("/")
        tasks = self.server.tasks
        if parts[1] == "projects":
            answer = {"id": int(parts[2]), "label_config": self.server.label_config}
        elif parts[1] == "annotations":
            wanted = int(parts[2])
            answer = next(
                {**a, "task": t["id"]} for t in tasks for a in t["annotations"] if a["id"] == wanted
            )
        elif parts[1] == "predictions":
            task = int(query["task"][0])
            answer = [p for p in self.server.predictions if p["task"] == task]
        else:  # /api/tasks/: pages of tasks, then an empty page
            if query.get("only_annotated") == ["true"]:
                tasks = [t for t in tasks if t.get("annotations")]
            page = int(query.get("page", ["1"])[0])
            answer = {"tasks": tasks if page == 1 else [], "total": len(tasks)}
        self._json(200, answer)

    def _json(self, status: int, answer: dict) -> None:
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802
        route = re.fullmatch(r"/api/projects/(\d+)/import/predictions", self.path)
        if route is None or self.headers.get("Authorization") != "Token secret":
            self.send_error(404 if route is None else 401)
            return
        items = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.server.refuse_imports:
            self.send_error(400, "refused (as the test asked)")
            return
        for item in items:
            item["id"] = len(self.server.predictions) + 1
            self.server.predictions.append(item)
        self._json(201, {"created": len(items)})

    def log_message(self, *args):
        pass


@pytest.fixture
def label_studio(synthetic_dir):
    """A fake Label Studio on loopback serving the synthetic images; ``.url``, ``.predictions``
    (what was posted), ``.tasks`` and ``.label_config`` (what it lists), ``.refuse_imports``."""
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_LabelStudioHandler, directory=str(synthetic_dir))
    )
    server.predictions, server.tasks, server.label_config = [], [], ""
    server.refuse_imports = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
