"""``camsam bench --project ID --workers N``: figures for many hosts, with real processes.

What one version costs Redis (``MODEL_STORE=redis``), how long a new host takes from the start of
its ``camsam worker`` to its first prediction (with an empty ``MODEL_DIR``, then with the copy it
fetched), and a fanned-out pre-annotation of the project with one worker and with N. Every
worker is started here with a ``MODEL_DIR`` of its own, as on a host of its own; it serves
whatever else is queued meanwhile, so run this on a quiet system.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from worker.bench.service import _env, stop
from worker.contract.connections import redis_connection
from worker.contract.errors import CamsamError
from worker.contract.fanout import Progress, enqueue_chunks
from worker.contract.queues import PREDICT_JOB, own_queue
from worker.contract.settings import Settings
from worker.contract.store import models_for

WAIT = 1800  # seconds a figure may take before the bench gives up on it


def hosts_figures(project: str, workers: int = 2) -> dict:
    """Raises: CamsamError without REDIS_URL and MODEL_STORE=redis, or with no model yet."""
    settings = Settings.from_env()
    if not settings.redis_url or settings.model_store != "redis":
        raise CamsamError("the many-hosts figures need REDIS_URL and MODEL_STORE=redis")
    models = models_for(settings, project)
    version = models.current_version()
    if version is None:
        raise CamsamError(f"project {project} has no model in Redis yet: train one first")
    connection = redis_connection(settings.redis_url)
    figures = {"version": version, **redis_cost(connection, models.shared, version)}
    payload = _payload(settings, project)
    with tempfile.TemporaryDirectory(prefix="camsam-hosts-") as work:
        cache = Path(work) / "new-host"
        figures["first_prediction_s_empty_cache"] = first_prediction(settings, payload, cache)
        figures["first_prediction_s_warm_cache"] = first_prediction(settings, payload, cache)
        for count in sorted({1, workers}):
            figures[f"preannotate_images_per_s_{count}_workers"] = fan_out_speed(
                settings, payload, Path(work), count
            )
    one = figures["preannotate_images_per_s_1_workers"]
    if workers > 1 and one:
        figures["speedup"] = round(figures[f"preannotate_images_per_s_{workers}_workers"] / one, 2)
    figures["cpu_cores"] = os.cpu_count()
    return figures


def redis_cost(connection, shared, version: str) -> dict:
    """Bytes Redis holds for one version (its pieces and its entry) and for all kept ones."""
    meta = shared.meta(version)
    one = connection.memory_usage(shared.file_key(version)) or 0
    kept = shared.kept()
    every = sum(connection.memory_usage(shared.file_key(v)) or 0 for v in kept)
    return {
        "checkpoint_mb": round(meta["size"] / 1e6, 1),
        "redis_mb_per_version": round(one / 1e6, 1),
        "versions_kept": len(kept),
        "redis_mb_all_versions": round(every / 1e6, 1),
    }


def first_prediction(settings: Settings, payload: dict, model_dir: Path) -> float:
    """Seconds from starting a worker with ``model_dir`` to its answer to a one-task job."""
    from rq import Queue

    name = f"camsam-bench-{os.getpid()}-{time.monotonic_ns()}"
    queue = Queue(own_queue(name), connection=redis_connection(settings.redis_url))
    job = queue.enqueue(PREDICT_JOB, {**payload, "tasks": payload["tasks"][:1]})
    started = time.perf_counter()
    with _workers(settings, [(name, model_dir)]):
        _wait(lambda: job.get_status(refresh=True) in ("finished", "failed"), "first answer")
    if job.get_status() != "finished":
        raise CamsamError(f"the new worker failed its first job {job.id}: see rq's failed jobs")
    return round(time.perf_counter() - started, 2)


def fan_out_speed(settings: Settings, payload: dict, work: Path, count: int) -> float:
    """Images a second over every task of the project, fanned out over ``count`` warm workers
    (each has loaded the model before the clock starts)."""
    from rq import Queue

    connection = redis_connection(settings.redis_url)
    names = [(f"camsam-bench-{os.getpid()}-{count}-{k}", work / f"w{k}") for k in range(count)]
    with _workers(settings, names):
        warm = [
            Queue(own_queue(n), connection=connection).enqueue(
                PREDICT_JOB, {**payload, "tasks": payload["tasks"][:1]}
            )
            for n, _ in names
        ]
        _wait(lambda: all(j.get_status(refresh=True) == "finished" for j in warm), "warm-up")
        started = time.perf_counter()
        chunks = enqueue_chunks(connection, payload, settings.preannotate_chunk)
        progress = Progress(connection, chunks)
        _wait(lambda: progress.poll().over, "the fanned-out pre-annotation")
        seconds = time.perf_counter() - started
    return round(progress.totals.tasks / seconds, 2)


def _payload(settings: Settings, project: str) -> dict:
    from worker.labelstudio.client import connect, project_config, project_tasks

    client = connect(settings.label_studio_url, settings.label_studio_api_key)
    return {
        "project": project,
        "label_config": project_config(client, project),
        "tasks": list(project_tasks(client, project)),
        "settings": settings.for_worker(),
    }


class _workers:
    """``camsam worker`` processes, each with its name and MODEL_DIR; stopped on exit."""

    def __init__(self, settings: Settings, names: list[tuple[str, Path]]) -> None:
        self.settings = settings
        self.names = names
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> _workers:
        for name, model_dir in self.names:
            env = {**_env(), "REDIS_URL": self.settings.redis_url, "MODEL_DIR": str(model_dir)}
            command = [sys.executable, "-m", "worker.cli", "worker", "--name", name]
            self.processes.append(
                subprocess.Popen(
                    command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.processes, 120)


def _wait(check, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            raise CamsamError(f"{what} took more than {WAIT} s: are the workers starting?")
        time.sleep(0.1)
