"""Label Studio's ML backend requests, read into plain job payloads (no torch, no models)."""

from __future__ import annotations

import math
import re

from ml_backend.errors import BadRequest, TooLarge
from worker.contract.label_config import LabelConfig

# Label Studio's ids are positive 64-bit integers; 18 digits keep every one and nothing longer.
_ID = re.compile(r"[0-9]{1,18}")


def project_id(project: object) -> str:
    """Label Studio sends ``"<id>.<timestamp>"``; models are kept per project id.

    Raises:
        BadRequest: no id of ASCII digits (at most 18) before the dot.
    """
    text = project if isinstance(project, str) else _integer_text(project)
    head = text.strip().split(".", 1)[0]
    if not _ID.fullmatch(head):
        raise BadRequest(
            f"project {shown(project)} is not a Label Studio project id ('<id>.<time>', "
            "the id at most 18 digits)"
        )
    return str(int(head))


def record_id(value: object) -> int | None:
    """A task or annotation id (an integer, or a string of at most 18 digits); None if not one."""
    text = value if isinstance(value, str) else _integer_text(value)
    return int(text) if _ID.fullmatch(text) else None


def _integer_text(value: object) -> str:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else ""


def shown(value: object, limit: int = 40) -> str:
    """``value`` for an error message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def text_field(body: dict, key: str) -> str:
    """``body[key]`` when it is a string, ``""`` when absent or null.

    Raises:
        BadRequest: anything else.
    """
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{key!r} must be a string, not {shown(value)}")
    return value


def predict_payload(body: object, max_tasks: int = 0) -> dict:
    """The job payload for a ``/predict`` body.

    A task that is not an object, or has no object for ``data``, becomes one with no image, and
    an id that is not one becomes None: each gets an empty prediction, the others are answered.

    Raises:
        BadRequest: the body's own shape is wrong (tasks, params, context, label config).
        TooLarge: more than ``max_tasks`` tasks (when > 0).
    """
    if not isinstance(body, dict):
        raise BadRequest("/predict expects a JSON object with 'tasks'")
    tasks = body.get("tasks")
    if not isinstance(tasks, list):
        raise BadRequest("/predict needs 'tasks': a list of Label Studio tasks")
    if max_tasks > 0 and len(tasks) > max_tasks:
        raise TooLarge(
            f"{len(tasks)} tasks in one request: camsam takes at most MAX_TASKS_PER_REQUEST "
            f"({max_tasks}); send them in smaller batches"
        )
    params = _object(body, "params")
    context = _object(params, "context", "params.context")
    prompt = interactive_prompt(context) if context else None
    if prompt is not None and len(tasks) != 1:
        raise BadRequest("an interactive request must carry exactly one task")
    config = body.get("label_config")
    if config is not None and not isinstance(config, str):
        raise BadRequest(f"'label_config' must be the label config's XML, not {shown(config)}")
    return {
        "project": project_id(body.get("project")),
        "label_config": config or "",
        "tasks": [task_entry(t) for t in tasks],
        "prompt": prompt,
    }


def task_entry(task: object) -> dict:
    """What a job needs of a task: its id (or None) and its data (an object)."""
    if not isinstance(task, dict):
        return {"id": None, "data": {}}
    data = task.get("data")
    return {"id": record_id(task.get("id")), "data": data if isinstance(data, dict) else {}}


def interactive_prompt(context: dict) -> dict:
    """A smart-tool context as one prompt in percent of the image: label, points, box.

    Raises:
        BadRequest: a region or value of the wrong shape, a coordinate that is not a number in
            [0, 100], no keypoint or rectangle in the context, or regions with different labels.
    """
    points, box, labels = [], None, set()
    result = context.get("result")
    if not isinstance(result, list | None):
        raise BadRequest(f"params.context.result must be a list of regions, not {shown(result)}")
    for region in result or []:
        if not isinstance(region, dict):
            raise BadRequest(f"a region of the context is {shown(region)}, not an object")
        value = _object(region, "value", "a region's value")
        kind = region.get("type")
        if kind == "keypointlabels":
            labels.update(_labels(value, "keypointlabels"))
            positive = region.get("is_positive", True) is not False
            points.append([_percent(value, "x"), _percent(value, "y"), int(positive)])
        elif kind == "rectanglelabels":
            labels.update(_labels(value, "rectanglelabels"))
            x, y = _percent(value, "x"), _percent(value, "y")
            box = [x, y, x + _percent(value, "width"), y + _percent(value, "height")]
    if not points and box is None:
        raise BadRequest("the interactive context holds no keypoint or rectangle to segment")
    if len(labels) != 1:
        raise BadRequest(f"an interactive request needs exactly one label, got {sorted(labels)}")
    return {"label": labels.pop(), "points": points, "box": box}


def _object(parent: dict, key: str, name: str | None = None) -> dict:
    """``parent[key]`` when it is an object, ``{}`` when absent or null."""
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{name or repr(key)} must be an object, not {shown(value)}")
    return value


def _labels(value: dict, key: str) -> list[str]:
    labels = value.get(key)
    if labels is None:
        return []
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise BadRequest(f"{key} must be a list of label names, not {shown(labels)}")
    return labels


def _percent(value: dict, key: str) -> float:
    number = value.get(key)
    ok = isinstance(number, int | float) and not isinstance(number, bool)
    if not ok or not math.isfinite(number) or not 0.0 <= number <= 100.0:
        raise BadRequest(
            f"a region's {key!r} must be a number from 0 to 100 (percent of the image), "
            f"not {shown(number)}"
        )
    return float(number)


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
            f"model {version} predicts {gone}, which the label config does not have: "
            "they are left out of predictions"
        )
    return changes
