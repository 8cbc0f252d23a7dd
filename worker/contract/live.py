"""Live accept rates: how annotators' submitted masks matched camsam's, per model version.

Plain JSON in ``<model dir>/live.json``, one entry per annotation (an update replaces its earlier
score), read without torch by the web side for ``/metrics`` and by ``camsam versions``.
"""

from __future__ import annotations

import json
import threading

from worker.contract.defaults import ACCEPT_IOU
from worker.contract.store import ModelDir, atomic_write

LIVE_FILE = "live.json"
_lock = threading.Lock()


def record(models: ModelDir, annotation_id: int, version: str, ious: dict[str, float]) -> None:
    with _lock:
        scores = _read(models)
        scores[str(annotation_id)] = {"version": version, "iou": ious}
        data = json.dumps(scores).encode()
        atomic_write(models.root / LIVE_FILE, lambda f: f.write(data))


def live_stats(models: ModelDir) -> dict[str, dict]:
    """Per model version: masks compared, accepted, the accept rate and mean IoU."""
    totals: dict[str, dict] = {}
    for entry in _read(models).values():
        row = totals.setdefault(entry["version"], {"masks": 0, "accepted": 0, "iou_sum": 0.0})
        for value in entry["iou"].values():
            row["masks"] += 1
            row["accepted"] += value >= ACCEPT_IOU
            row["iou_sum"] += value
    for row in totals.values():
        row["accept_rate"] = row["accepted"] / row["masks"]
        row["mean_iou"] = row.pop("iou_sum") / row["masks"]
    return totals


def _read(models: ModelDir) -> dict:
    try:
        return json.loads((models.root / LIVE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
