"""Label Studio's ML backend requests, read into plain job payloads (no torch, no models)."""

from __future__ import annotations

from ml_backend.errors import BadRequest
from worker.contract.label_config import LabelConfig


def project_id(project: object) -> str:
    """Label Studio sends ``"<id>.<timestamp>"``; models are kept per project id."""
    text = str(project or "").strip()
    head = text.split(".", 1)[0]
    if not head.isdigit():
        raise BadRequest(f"project {project!r} is not a Label Studio project id ('<id>.<time>')")
    return head


def predict_payload(body: object) -> dict:
    """The job payload for a ``/predict`` body; raises BadRequest when it cannot be one."""
    if not isinstance(body, dict):
        raise BadRequest("/predict expects a JSON object with 'tasks'")
    tasks = body.get("tasks")
    if not isinstance(tasks, list):
        raise BadRequest("/predict needs 'tasks': a list of Label Studio tasks")
    context = (body.get("params") or {}).get("context")
    prompt = interactive_prompt(context) if context else None
    if prompt is not None and len(tasks) != 1:
        raise BadRequest("an interactive request must carry exactly one task")
    return {
        "project": project_id(body.get("project")),
        "label_config": body.get("label_config") or "",
        "tasks": [{"id": t.get("id"), "data": t.get("data") or {}} for t in tasks],
        "prompt": prompt,
    }


def interactive_prompt(context: dict) -> dict:
    """A smart-tool context as one prompt in percent of the image: label, points, box.

    Raises:
        BadRequest: no keypoint or rectangle in the context, or regions with different labels.
    """
    points, box, labels = [], None, set()
    for region in context.get("result") or []:
        value = region.get("value") or {}
        kind = region.get("type")
        if kind == "keypointlabels":
            labels.update(value.get("keypointlabels") or [])
            positive = region.get("is_positive", True) is not False
            points.append([float(value["x"]), float(value["y"]), int(positive)])
        elif kind == "rectanglelabels":
            labels.update(value.get("rectanglelabels") or [])
            x, y = float(value["x"]), float(value["y"])
            box = [x, y, x + float(value["width"]), y + float(value["height"])]
    if not points and box is None:
        raise BadRequest("the interactive context holds no keypoint or rectangle to segment")
    if len(labels) != 1:
        raise BadRequest(f"an interactive request needs exactly one label, got {sorted(labels)}")
    return {"label": labels.pop(), "points": points, "box": box}


def label_changes(config: LabelConfig, classes: list[str], version: str) -> list[str]:
    """Sentences naming the labels a config and a model's classes do not share (names match
    labels to classes, so a renamed label is one gone and one new)."""
    offered = set(config.choice_labels) | set(config.mask_labels)
    new, gone = sorted(offered - set(classes)), sorted(set(classes) - offered)
    changes = []
    if new:
        changes.append(
            f"labels {new} are in the label config but model {version} was not trained on them: "
            "they are predicted once a model is trained with them"
        )
    if gone:
        changes.append(
            f"model {version} predicts {gone}, which the label config no longer has: "
            "they are left out of predictions"
        )
    return changes
