"""``camsam serve``: the Flask app under gunicorn, with threads so /health answers meanwhile."""

from __future__ import annotations

import sys

from gunicorn.app.base import BaseApplication

from ml_backend.app import create_app
from worker.contract.leases import reconcile_every


def serve(host: str, port: int, workers: int, threads: int) -> None:
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
        f"models in {backend.settings.model_dir})"
    )
    Server().run()
