"""Label Studio's webhooks, read: which project, and whether the event can change its labels.

What a webhook starts (a debounced training run) is :mod:`worker.contract.leases`'s business.
"""

from __future__ import annotations

from ml_backend.errors import BadRequest

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
    if not str(value or "").isdigit():
        raise BadRequest("the webhook names no project id ('project': {'id': ...})")
    return str(value)


def imported_annotations(data: dict) -> bool:
    """Whether a TASKS_CREATED import brought annotations along."""
    tasks = data.get("tasks") or []
    return any(t.get("is_labeled") or t.get("total_annotations") for t in tasks)
