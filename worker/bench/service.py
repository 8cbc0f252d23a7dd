"""The service side of ``camsam bench``: queue round trip, HTTP latency, the web process's
memory, and ``preannotate`` throughput on a real Label Studio project.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def service_figures(
    models: Path, image: np.ndarray, work: Path, queue_runner: Callable[[str], object]
) -> dict:
    """Queue round trip, HTTP pre-annotation latency and the web process's memory, against a
    redis-server, a ``camsam worker`` and a ``camsam serve`` started here. ``queue_runner``
    builds, from a Redis URL, what the web side enqueues through (``ml_backend.runner.RqRunner``,
    handed in by the command line: nothing else in worker/ imports the web side)."""
    import cv2
    import requests

    figures: dict = {"queue_roundtrip_ms_p50": None, "web_rss_mb": None}
    if shutil.which("redis-server") is None:
        figures["service_note"] = "redis-server not installed: queue and web figures skipped"
        return figures
    redis_port, web_port = _free_port(), _free_port()
    url = f"redis://127.0.0.1:{redis_port}/0"
    cv2.imwrite(str(work / "bench.png"), image[:, :, ::-1])
    env = {**_env(), "REDIS_URL": url, "MODEL_DIR": str(models)}
    env["LOCAL_FILES_DOCUMENT_ROOT"] = str(work)
    cli = [sys.executable, "-m", "worker.cli"]
    processes = [
        subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
        )
    ]
    try:
        time.sleep(0.5)
        for command in (
            [*cli, "worker", "--name", "bench"],
            [*cli, "serve", "--host", "127.0.0.1", "--port", str(web_port), "--workers", "1"],
        ):
            processes.append(
                subprocess.Popen(
                    command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        runner = queue_runner(url)
        runner.run("worker.bench.service.noop", {}, 120)
        trips = [_timed(lambda: runner.run("worker.bench.service.noop", {}, 60)) for _ in range(50)]
        figures["queue_roundtrip_ms_p50"] = round(statistics.median(trips), 2)
        web = f"http://127.0.0.1:{web_port}"
        body = {
            "tasks": [{"id": 1, "data": {"image": "/data/local-files/?d=bench.png"}}],
            "project": "1.1",
            "label_config": "",
        }
        _wait_http(web + "/health")
        requests.post(web + "/predict", json=body, timeout=120)  # the worker loads its models
        latencies = [
            _timed(lambda: requests.post(web + "/predict", json=body, timeout=120))
            for _ in range(10)
        ]
        figures["http_predict_ms_p50"] = round(statistics.median(latencies), 2)
        serving = _children(processes[2].pid) or [processes[2].pid]
        figures["web_rss_mb"] = round(max(_rss_mb(pid) for pid in serving), 1)
        figures["web_loads_torch"] = any(_maps_torch(pid) for pid in serving)
    finally:
        for process in processes[::-1]:  # the web side first, Redis last
            stop([process], 20)
    return figures


def stop(processes: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM to each, then SIGKILL to any still running ``grace`` seconds later (a worker
    finishing a model pass on a busy machine): a bench leaves nothing running behind it."""
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - started)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str) -> None:
    import requests

    for _ in range(300):
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            time.sleep(0.2)


def _children(pid: int) -> list[int]:
    found = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(x) for x in path.read_text().split()]
    return found


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _maps_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def noop(payload: dict) -> dict:
    """A job that does nothing: the queue's own round trip."""
    return {}


def _env() -> dict:
    import os

    root = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


def preannotate_figures(project: str, repeat_pipeline: bool = True) -> dict:
    """``camsam preannotate`` over every task of a Label Studio project (``LABEL_STUDIO_URL``,
    ``LABEL_STUDIO_API_KEY``, ``MODEL_DIR`` as for the command), timed end to end: fetching each
    image, the pipeline, and writing each prediction through the API. Beside it, the pipeline
    alone on the same images, already decoded, in batches of the same size."""
    from worker.contract.settings import Settings
    from worker.jobs.predict import _Project, preannotate
    from worker.labelstudio.client import connect, project_config, project_tasks

    settings = Settings.from_env()
    client = connect(settings.label_studio_url, settings.label_studio_api_key)
    tasks = list(project_tasks(client, project))
    payload = {
        "project": project,
        "label_config": project_config(client, project),
        "tasks": tasks,
        "settings": settings.for_worker(),
    }
    started = time.perf_counter()
    answer = preannotate(payload)
    seconds = time.perf_counter() - started
    figures = {
        "tasks": len(tasks),
        "written": answer["written"],
        "failed": answer["failed"],
        "seconds": round(seconds, 2),
        "images_per_s": round(len(tasks) / seconds, 2) if seconds else None,
    }
    if repeat_pipeline and tasks:
        loaded = _Project(payload)
        pipeline = loaded.pipeline()
        images = [loaded.image(task) for task in tasks]
        started = time.perf_counter()
        for k in range(0, len(images), loaded.batch_size):
            pipeline.run_batch(images[k : k + loaded.batch_size])
        alone = time.perf_counter() - started
        figures["pipeline_images_per_s"] = round(len(images) / alone, 2)
        figures["preannotate_over_pipeline"] = round(seconds / alone, 3)
    return figures
