"""Load on loopback, bounded in count: concurrent batch and interactive /predict calls through
``camsam serve`` (waitress) to one and to two ``camsam worker`` processes; nothing lost, no
error; and a worker's memory stays flat over hundreds of predictions.

Figures are printed (``pytest tests/service/test_load.py -s``); the assertions are about
errors, lost jobs and memory growth, never about time.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import REPO, free_port, stop_process
from tests.service.test_app import predict_body
from tests.service.test_queue import start_worker, stop

pytestmark = pytest.mark.slow
CLICK = {
    "type": "keypointlabels",
    "is_positive": True,
    "value": {"x": 50.0, "y": 50.0, "keypointlabels": ["Spot"]},
}


@pytest.fixture(scope="module")
def backend(module_redis_url, trained_model_dir, synthetic_dir):
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": module_redis_url,
        "MODEL_DIR": str(trained_model_dir),
        "LOCAL_FILES_DOCUMENT_ROOT": str(synthetic_dir),
        "PREDICT_TIMEOUT": "80",
    }
    command = [sys.executable, "-m", "worker.cli", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "2", "--threads", "8"]
    server = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/health", timeout=2).ok:
                break
        except requests.RequestException:
            time.sleep(0.2)
    yield url
    stop_process(server, 20)


def images(synthetic_dir) -> list[dict]:
    files = sorted((synthetic_dir / "Spot").glob("*.png")) + sorted(
        (synthetic_dir / "Scratch").glob("*.png")
    )
    return [
        {"id": k, "data": {"image": f"/data/local-files/?d={p.parent.name}/{p.name}"}}
        for k, p in enumerate(files)
    ]


def run_load(url: str, tasks: list[dict], requests_total: int, concurrency: int) -> dict:
    """Half batches of 4 tasks, half single clicks, ``concurrency`` at a time."""

    def one(k: int):
        if k % 2:
            batch = [tasks[(k + j) % len(tasks)] for j in range(4)]
            body, expected = predict_body(batch, project="1.1"), 4
        else:
            task = tasks[k % len(tasks)]
            body, expected = predict_body([task], {"result": [CLICK]}, project="1.1"), 1
        started = time.perf_counter()
        try:
            response = requests.post(url + "/predict", json=body, timeout=120)
        except requests.RequestException as error:
            return time.perf_counter() - started, f"error: {error}", False
        seconds = time.perf_counter() - started
        answered = response.ok and len(response.json().get("results", [])) == expected
        return seconds, response.status_code, answered

    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(one, range(requests_total)))
    latencies = sorted(o[0] for o in outcomes)
    return {
        "requests": len(outcomes),
        "errors": sum(o[1] != 200 for o in outcomes),
        "lost": sum(not o[2] for o in outcomes),
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def test_concurrent_predictions_against_one_and_two_workers(
    module_redis_url, backend, synthetic_dir
):
    redis_url = module_redis_url
    tasks = images(synthetic_dir)
    workers = [start_worker(redis_url, "load-1")]
    try:
        requests.post(backend + "/predict", json=predict_body(tasks[:1], project="1.1"))  # warm
        one = run_load(backend, tasks, requests_total=60, concurrency=6)
        workers.append(start_worker(redis_url, "load-2"))
        requests.post(backend + "/predict", json=predict_body(tasks[1:2], project="1.1"))
        time.sleep(3)  # the second worker loads its models on its first job
        two = run_load(backend, tasks, requests_total=60, concurrency=6)
    finally:
        for worker in workers:
            stop(worker)
    for name, figures in (("one worker", one), ("two workers", two)):
        print(f"\nload, {name}: {figures}")
        assert figures["errors"] == 0 and figures["lost"] == 0


def test_worker_memory_stays_flat_over_hundreds_of_predictions(
    module_redis_url, backend, synthetic_dir
):
    redis_url = module_redis_url
    tasks = images(synthetic_dir)
    worker = start_worker(redis_url, "memory")
    try:
        samples = []
        for round_ in range(4):
            for k in range(25):  # 25 batches of 4 images: 100 predictions a round
                batch = [tasks[(4 * k + j + round_) % len(tasks)] for j in range(4)]
                response = requests.post(
                    backend + "/predict", json=predict_body(batch, project="1.1"), timeout=120
                )
                assert response.ok
            samples.append(rss_mb(worker.pid))
    finally:
        stop(worker)
    print(f"\nworker RSS after each 100 predictions (MB): {[round(s) for s in samples]}")
    # After warm-up (the first round loads the models), 300 more predictions add under 5%.
    assert samples[-1] <= samples[0] * 1.05


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")
