"""Label Studio's ML backend requests, read into plain job payloads (no torch, no models)."""

from __future__ import annotations

from ml_backend.errors import BadRequest


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
    return {
        "project": project_id(body.get("project")),
        "label_config": body.get("label_config") or "",
        "tasks": [{"id": t.get("id"), "data": t.get("data") or {}} for t in tasks],
        "context": context or None,
    }
