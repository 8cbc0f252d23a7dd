"""``camsam serve``: the Flask app under gunicorn, with threads so /health answers meanwhile."""

from __future__ import annotations

import os
import sys

from gunicorn.app.base import BaseApplication

from ml_backend.app import create_app


def serve(host: str, port: int, workers: int, threads: int) -> None:
    if workers != 1 and not os.environ.get("REDIS_URL"):
        print(
            "camsam serve: without REDIS_URL jobs run in the serving process, so one gunicorn "
            "worker serves them all (threads keep /health answering during a long /predict)",
            file=sys.stderr,
        )
        workers = 1
    app = create_app()

    class Server(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("timeout", 300)

        def load(self):
            return app

    model_dir = os.environ.get("MODEL_DIR", "models")
    print(f"camsam ML backend on http://{host}:{port} (models in {model_dir})")
    Server().run()
