"""``camsam serve`` and ``python -m ml_backend``: the Flask app under waitress (ml_backend.wsgi),
with threads so /health answers during a long /predict, and /metrics adding up every web
worker's counts."""

from __future__ import annotations

import glob
import logging
import os
import shutil
import sys
import tempfile

from ml_backend import wsgi
from worker.contract.errors import CamsamError
from worker.contract.leases import reconcile_every

LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
# Not imported from ml_backend.metrics: that imports prometheus_client, before the variable is set.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# What prometheus_client's multiprocess mode writes: <kind>_<pid>.db (gauges: gauge_<mode>_<pid>).
METRIC_FILES = ("counter_*.db", "histogram_*.db", "gauge_*.db", "summary_*.db")


def serve(host: str, port: int, workers: int, threads: int) -> None:
    if workers < 1 or threads < 1:
        raise CamsamError(f"--workers and --threads must be 1 or more, not {workers} and {threads}")
    metrics_dir, private = metrics_directory()
    master = os.getpid()
    try:
        run(host, port, workers, threads, metrics_dir)
    finally:  # the forked workers leave with os._exit and never come here
        if private and os.getpid() == master:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def log_to_stderr() -> None:
    """camsam's own lines (a training run's outcome, a job that failed) on stderr from INFO up;
    without a handler Python shows only warnings. The libraries' INFO lines (an HTTP client
    logs every request) stay out. Where logging is configured already, it is left as it is."""
    if logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    for name in ("ml_backend", "worker"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False


def run(host: str, port: int, workers: int, threads: int, metrics_dir: str) -> None:
    log_to_stderr()
    # Only now: prometheus_client picks its multiprocess mode when it is first imported.
    from prometheus_client import multiprocess

    from ml_backend.app import create_app

    app = create_app()
    backend = app.extensions["camsam"]
    if workers != 1 and backend.runner.mode == "embedded":
        print(
            "camsam serve: without REDIS_URL jobs run in the serving process, so one web "
            "worker serves them all (threads keep /health answering during a long /predict)",
            file=sys.stderr,
        )
        workers = 1
    listener = wsgi.listen(host, port)
    print(
        f"camsam ML backend on http://{host}:{port} ({backend.runner.mode} mode, "
        f"models in {backend.settings.model_dir})",
        flush=True,  # before the workers fork, or each prints it again when it exits
    )

    def serve_one() -> None:
        wsgi.serve(app, listener, threads, app.config["MAX_CONTENT_LENGTH"])  # None: no limit

    if workers == 1:
        if backend.runner.mode == "embedded":  # no trainer worker: reconcile in here
            reconcile_every(
                backend.settings.reconcile_seconds, backend.training_store, backend.submit
            )
        serve_one()
        return
    status = wsgi.prefork(
        workers,
        serve_one,
        lambda pid: multiprocess.mark_process_dead(pid, metrics_dir),
        listener,
    )
    if status:
        raise SystemExit(status)


def metrics_directory() -> tuple[str, bool]:
    """Where the web workers write their metrics, set in ``PROMETHEUS_MULTIPROC_DIR`` for
    them (they inherit it), and whether it is this instance's own temporary directory (removed
    on exit). A directory the user named is emptied of an earlier run's metric files, which
    /metrics would otherwise add to this run's counts."""
    given = os.environ.get(MULTIPROC_ENV)
    if not given:
        path = tempfile.mkdtemp(prefix="camsam-metrics-")
        os.environ[MULTIPROC_ENV] = path
        return path, True
    os.makedirs(given, exist_ok=True)
    for pattern in METRIC_FILES:
        for stale in glob.glob(os.path.join(given, pattern)):
            os.remove(stale)
    return given, False
