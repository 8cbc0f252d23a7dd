"""/metrics under ``camsam serve --workers 2``: every scrape adds up both workers' counts
(prometheus_client's multiprocess mode), whichever worker answers it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, free_port, stop_process

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)
ROUTES = ("/health", "/setup")
BATCH = 10  # of each route


def start_web(command: list[str], env: dict) -> tuple[subprocess.Popen, str]:
    """Two web workers in Redis mode (the embedded mode forces one), up when this returns.

    The readiness probe asks an unknown path, so it counts under ``unmatched``, not ``ROUTES``.
    """
    port = free_port()
    command = [*command, "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    server = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if requests.get(url + "/ready", timeout=2).status_code == 404:
                return server, url
        except requests.RequestException:
            if server.poll() is not None:
                raise AssertionError(f"{command} exited with {server.returncode}") from None
            time.sleep(0.2)
    stop_web(server)
    raise AssertionError(f"{command} did not answer on {url}")


def stop_web(server: subprocess.Popen) -> None:
    """The parent stops its forked workers on SIGTERM; their group is killed if it does not."""
    stop_process(server, 30)


def send_batch(url: str) -> None:
    """Each request on a connection of its own, so either worker may accept it."""
    for _ in range(BATCH):
        assert requests.get(url + "/health", timeout=10).status_code == 200
        assert requests.post(url + "/setup", json={"project": "3.1"}, timeout=10).status_code == 200


def counting_processes(metrics_dir: Path) -> int:
    """How many processes counted requests to ``ROUTES`` (each writes its counter_<pid>.db)."""
    found = 0
    for path in metrics_dir.glob("counter_*.db"):
        samples = [s for m in MultiProcessCollector.merge([str(path)]) for s in m.samples]
        found += any(
            s.name == "camsam_requests_total" and s.labels["route"] in ROUTES for s in samples
        )
    return found


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """camsam's samples by (name, sorted labels)."""
    text = requests.get(url + "/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("camsam_request")
    }


def check_counts(url: str, sent: int) -> None:
    """Several scrapes, each on a connection of its own: every one says ``sent`` per route."""
    for _ in range(8):
        samples = scrape(url)
        for route in ROUTES:
            requests_total = sum(
                value
                for (name, labels), value in samples.items()
                if name == "camsam_requests_total" and ("route", route) in labels
            )
            assert requests_total == sent, (route, samples)
            assert samples[("camsam_request_seconds_count", (("route", route),))] == sent
            buckets = {
                dict(labels)["le"]: value
                for (name, labels), value in samples.items()
                if name == "camsam_request_seconds_bucket" and ("route", route) in labels
            }
            assert {"0.005", "1.0", "300.0", "+Inf"} <= buckets.keys(), buckets
            assert buckets["+Inf"] == sent


def send_until_both_workers_counted(url: str, metrics_dir: Path) -> int:
    """Batches until two processes wrote counts (the kernel picks who accepts a connection, so
    no number of requests is sure to reach both; fifty batches that all miss one would be a
    bug). Returns how many requests of each route were sent."""
    sent = 0
    while counting_processes(metrics_dir) < 2:
        assert sent < 50 * BATCH, f"one web worker answered all {sent} requests"
        send_batch(url)
        sent += BATCH
    return sent


@pytest.fixture
def web_env(redis_url, tmp_path) -> dict:
    env = {**os.environ, "REDIS_URL": redis_url, "MODEL_DIR": str(tmp_path / "models")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("prometheus_multiproc_dir", None)
    return env


def test_camsam_serve_adds_up_two_workers_in_a_private_directory(web_env, tmp_path):
    """No PROMETHEUS_MULTIPROC_DIR given: ``camsam serve`` makes its own (under TMPDIR) and
    removes it when it stops."""
    temp, home = tmp_path / "tmp", tmp_path / "home"
    temp.mkdir()
    home.mkdir()
    command = [sys.executable, "-m", "worker.cli", "serve"]
    env = {**web_env, "TMPDIR": str(temp), "HOME": str(home), "XDG_RUNTIME_DIR": ""}
    server, url = start_web(command, env)
    try:
        (metrics_dir,) = temp.glob("camsam-metrics-*")
        sent = send_until_both_workers_counted(url, metrics_dir)
        check_counts(url, sent)
        # Nothing written at a path every instance of the user would share.
        assert list(home.iterdir()) == []
    finally:
        stop_web(server)
    assert list(temp.iterdir()) == []


def test_python_m_ml_backend_clears_stale_counts_from_a_given_directory(web_env, tmp_path):
    """The web image's entry point, with a directory the user set that holds a dead run's
    counts: they are cleared at start, not added to this run's."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    stale = MmapedDict(str(metrics_dir / "counter_1.db"))
    key = mmap_key(
        "camsam_requests",
        "camsam_requests_total",
        ["route", "status"],
        ["/health", "200"],
        "HTTP requests by route and status.",
    )
    stale.write_value(key, 1000.0, 0.0)
    stale.close()
    env = {**web_env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    server, url = start_web([sys.executable, "-m", "ml_backend"], env)
    try:
        assert not (metrics_dir / "counter_1.db").exists()
        sent = send_until_both_workers_counted(url, metrics_dir)
        check_counts(url, sent)
    finally:
        stop_web(server)
    assert metrics_dir.is_dir()  # the user's directory stays
