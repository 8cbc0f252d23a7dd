"""``camsam serve`` and ``python -m ml_backend``: the Flask app under gunicorn, with threads so
/health answers meanwhile, and /metrics adding up every gunicorn worker's counts."""

from __future__ import annotations

import glob
import logging
import os
import shutil
import sys
import tempfile

from gunicorn.app.base import BaseApplication

from worker.contract.leases import reconcile_every

LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
# Not imported from ml_backend.metrics: that imports prometheus_client, before the variable is set.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# What prometheus_client's multiprocess mode writes: <kind>_<pid>.db (gauges: gauge_<mode>_<pid>).
METRIC_FILES = ("counter_*.db", "histogram_*.db", "gauge_*.db", "summary_*.db")


def serve(host: str, port: int, workers: int, threads: int) -> None:
    metrics_dir, private = metrics_directory()
    master = os.getpid()
    try:
        run(host, port, workers, threads, metrics_dir)
    finally:  # gunicorn exits with SystemExit, in the master and in each worker it forked
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
            "camsam serve: without REDIS_URL jobs run in the serving process, so one gunicorn "
            "worker serves them all (threads keep /health answering during a long /predict)",
            file=sys.stderr,
        )
        workers = 1

    class Server(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("timeout", 300)
            if "control_socket_disable" in self.cfg.settings:
                # gunicorn 24+ opens a control socket at one path per user
                # (~/.gunicorn/gunicorn.ctl): several instances would share, and remove, it.
                self.cfg.set("control_socket_disable", True)
            self.cfg.set(
                "child_exit",
                lambda _server, worker: multiprocess.mark_process_dead(worker.pid, metrics_dir),
            )
            if backend.runner.mode == "embedded":  # no trainer worker: reconcile in here
                self.cfg.set(
                    "post_worker_init",
                    lambda _: reconcile_every(
                        backend.settings.reconcile_seconds,
                        backend.training_store,
                        backend.submit,
                    ),
                )

        def load(self):
            return app

    print(
        f"camsam ML backend on http://{host}:{port} ({backend.runner.mode} mode, "
        f"models in {backend.settings.model_dir})",
        flush=True,  # before gunicorn forks, or each worker prints it again when it exits
    )
    Server().run()


def metrics_directory() -> tuple[str, bool]:
    """Where the gunicorn workers write their metrics, set in ``PROMETHEUS_MULTIPROC_DIR`` for
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
