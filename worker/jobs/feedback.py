"""Corrections are the real measure: submitted masks compared with camsam's predicted ones.

For an annotation started from a camsam prediction (``parent_prediction``), or one with masks
on a task camsam had pre-annotated before it was made, each predicted mask is compared with the
submitted mask of its label: accepted when IoU >= 0.5. Image-level labels alone on a task are
not a verdict on masks and are not scored. Kept per annotation (an update replaces its
earlier score) in ``<model dir>/live.json`` (see :mod:`worker.contract.live`).
"""

from __future__ import annotations

import logging

import numpy as np

from worker.contract.errors import MaskError
from worker.contract.live import record
from worker.contract.settings import Settings
from worker.contract.store import models_for
from worker.labelstudio.results import decode_mask
from worker.pipeline.masks import iou

log = logging.getLogger(__name__)


def score_annotation(payload: dict) -> dict:
    """The job: ``{"project", "annotation", "settings"}``; reads both sides from Label Studio."""
    from worker.labelstudio.client import connect, get_annotation, task_predictions

    settings = Settings.from_payload(payload["settings"])
    models = models_for(settings, payload["project"])
    client = connect(settings.label_studio_url, settings.label_studio_api_key)
    annotation = get_annotation(client, payload["annotation"])
    if annotation.get("was_cancelled"):
        return {"scored": 0}
    ours = set(models.versions())
    predictions = [
        p for p in task_predictions(client, annotation["task"]) if p.get("model_version") in ours
    ]
    parent = annotation.get("parent_prediction")
    if parent:
        chosen = [p for p in predictions if p.get("id") == parent]
    elif masks_by_label(annotation.get("result") or []):
        # Not started from a prediction: the newest camsam one the annotator could have seen.
        made = str(annotation.get("created_at") or "")
        chosen = [p for p in predictions if str(p.get("created_at") or "") <= made][-1:]
    else:
        chosen = []  # image-level labels only, on a task camsam had not pre-annotated
    if not chosen:
        return {"scored": 0}
    prediction = chosen[0]
    ious = compare(prediction.get("result") or [], annotation.get("result") or [])
    if not ious:
        return {"scored": 0}
    record(models, annotation["id"], prediction["model_version"], ious)
    return {"scored": len(ious), "version": prediction["model_version"], "iou": ious}


def compare(predicted: list[dict], submitted: list[dict]) -> dict[str, float]:
    """IoU per label of each predicted brush mask with the submitted mask of the same label."""
    theirs = masks_by_label(submitted)
    scores = {}
    for label, mask in masks_by_label(predicted).items():
        truth = theirs.get(label, np.zeros_like(mask))
        scores[label] = iou(mask, truth) if truth.shape == mask.shape else 0.0
    return scores


def masks_by_label(result: list[dict]) -> dict[str, np.ndarray]:
    masks: dict[str, np.ndarray] = {}
    for region in result:
        value = region.get("value") or {}
        if region.get("type") != "brushlabels" or value.get("format") != "rle":
            continue
        try:
            mask = decode_mask(value["rle"], region["original_width"], region["original_height"])
        except (MaskError, KeyError) as error:
            log.warning("a brush region is not scored: %s", error)
            continue
        for label in value.get("brushlabels") or []:
            masks[label] = masks[label] | mask if label in masks else mask
    return masks
