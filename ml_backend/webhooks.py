"""Label Studio's webhooks, read: which project, and whether the event can change its labels.

What a webhook starts (a debounced training run) is :mod:`worker.contract.leases`'s business.
"""

from __future__ import annotations

from ml_backend.errors import BadRequest
from ml_backend.protocol import project_id, record_id, shown

# What Label Studio 1.23 sends that can change a project's labels.
TRAINING_EVENTS = {
    "ANNOTATION_CREATED",
    "ANNOTATION_UPDATED",
    "ANNOTATIONS_CREATED",
    "ANNOTATIONS_DELETED",
    "START_TRAINING",
    "TASKS_CREATED",
}


def webhook_project(data: dict) -> str:
    """The project id of a webhook: ``project`` is an object with ``id`` (or a bare id)."""
    project = data.get("project")
    value = project.get("id") if isinstance(project, dict) else project
    if value is None or isinstance(value, str) and "." in value:
        raise BadRequest("the webhook names no project id ('project': {'id': ...})")
    return project_id(value)


def imported_annotations(data: dict) -> bool:
    """Whether a TASKS_CREATED import brought annotations along."""
    tasks = data.get("tasks")
    if tasks is None:
        return False
    if not isinstance(tasks, list):
        raise BadRequest(f"'tasks' must be a list of tasks, not {shown(tasks)}")
    tasks = [t for t in tasks if isinstance(t, dict)]
    return any(t.get("is_labeled") or t.get("total_annotations") for t in tasks)


def submitted_annotation(data: dict) -> int | None:
    """The id of the annotation a webhook carries, unless it was skipped (None if none).

    Raises:
        BadRequest: ``annotation`` is not an object, or its id is not an id.
    """
    annotation = data.get("annotation")
    if annotation is None:
        return None
    if not isinstance(annotation, dict):
        raise BadRequest(f"'annotation' must be an object, not {shown(annotation)}")
    if annotation.get("id") is None:
        return None
    number = record_id(annotation["id"])
    if number is None:
        raise BadRequest(f"annotation id {shown(annotation['id'])} is not a Label Studio id")
    return None if annotation.get("was_cancelled") else number
