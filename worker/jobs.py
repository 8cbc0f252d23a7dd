"""Jobs the web side enqueues by name. Each one takes and returns plain JSON-able values.

Models stay loaded in the process between jobs (one pipeline per project and model version), and
a newer version published by training is picked up at the next job without a restart.
"""

from __future__ import annotations

import logging
import threading

from ml_backend.label_config import parse_label_config
from worker.checkpoint import project_model_dir
from worker.errors import CamsamError
from worker.fetch import ImageFetcher
from worker.images import load_image
from worker.ls_format import to_prediction

log = logging.getLogger(__name__)
_pipelines: dict[tuple[str, str], object] = {}
_lock = threading.Lock()


def predict(payload: dict) -> dict:
    """Pre-annotate a batch: one prediction per task, in order; a failed task gets an empty one.

    Returns ``{"results": [...], "model_version": str, "failed": int}``.
    """
    settings = payload["settings"]
    model_dir = project_model_dir(settings["model_dir"], payload["project"])
    version = model_dir.current_version()
    tasks = payload["tasks"]
    if version is None:
        return {"results": [empty(None) for _ in tasks], "model_version": None, "failed": 0}
    config = parse_label_config(payload["label_config"]) if payload["label_config"] else None
    pipeline = load_pipeline(model_dir, version, settings)
    fetcher = ImageFetcher(
        settings["label_studio_url"],
        settings["label_studio_api_key"],
        settings["local_files_document_root"],
    )
    key = config.image_key if config else "image"
    results, failed = [], 0
    for task in tasks:
        try:
            image = load_image(fetcher.fetch(str(task["data"][key])))
            results.append(to_prediction(pipeline.run(image), version, config))
        except (CamsamError, KeyError) as error:
            failed += 1
            log.warning("task %s: no prediction: %s", task.get("id"), error)
            results.append(empty(version))
    return {"results": results, "model_version": version, "failed": failed}


def empty(version: str | None) -> dict:
    return {"result": [], "score": 0.0, "model_version": version or "untrained"}


def load_pipeline(model_dir, version: str, settings: dict):
    """The warm pipeline for this model version, built on first use."""
    from worker.cli import resolve_device
    from worker.pipeline import Pipeline

    key = (str(model_dir.root), version)
    with _lock:
        if key not in _pipelines:
            pipeline = Pipeline.build(
                model_dir.path(version),
                sam2_config=settings["sam2_config"] or None,
                sam2_checkpoint=settings["sam2_checkpoint"] or None,
                sam2_hub_id=settings["sam2_hub_id"] or None,
                device=resolve_device(settings["device"]),
            )
            for old in [k for k in _pipelines if k[0] == key[0]]:
                del _pipelines[old]
            _pipelines[key] = pipeline
        return _pipelines[key]
