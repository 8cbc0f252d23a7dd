"""Label Studio's API, from the worker side, through label-studio-sdk.

The SDK takes either kind of key: a legacy token, or a personal access token it exchanges for
short-lived access tokens itself.
"""

from __future__ import annotations

from collections.abc import Iterator

from worker.contract.errors import CamsamError


class LabelStudioError(CamsamError):
    """Label Studio could not be reached, or refused a call."""


def connect(url: str, api_key: str):
    """A label-studio-sdk client. Raises: LabelStudioError when url or key is missing."""
    if not url or not api_key:
        raise LabelStudioError(
            "reading labels from and writing predictions to Label Studio needs "
            "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (a legacy "
            "token or a personal access token from Account & Settings)"
        )
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=url.rstrip("/"), api_key=api_key)


def project_config(client, project: int | str) -> str:
    """The project's label config XML."""
    try:
        return client.projects.get(id=int(project)).label_config
    except Exception as error:  # the SDK raises its own API and transport errors
        message = f"cannot read project {project} from Label Studio: {error}"
        raise LabelStudioError(message) from error


def project_tasks(
    client, project: int | str, skip_version: str | None = None, counts: dict | None = None
) -> Iterator[dict]:
    """The project's tasks as ``{"id", "data"}``, leaving out those that already hold a
    prediction of ``skip_version`` (what Label Studio itself skips when it retrieves); how many
    were left out is added to ``counts["skipped"]``."""
    try:
        for task in client.tasks.list(project=int(project), fields="all"):
            versions = {_field(p, "model_version") for p in (task.predictions or [])}
            if skip_version is not None and skip_version in versions:
                if counts is not None:
                    counts["skipped"] = counts.get("skipped", 0) + 1
                continue
            yield {"id": task.id, "data": dict(task.data or {})}
    except LabelStudioError:
        raise
    except Exception as error:
        raise LabelStudioError(f"cannot list the tasks of project {project}: {error}") from error


def labelled_tasks(client, project: int | str) -> list[dict]:
    """The project's tasks that hold annotations, as plain dicts (``id``, ``data``,
    ``annotations`` with ``id``, ``result``, ``was_cancelled``, ``updated_at``)."""
    try:
        tasks = client.tasks.list(project=int(project), fields="all", only_annotated=True)
        return [_plain(task) for task in tasks]
    except Exception as error:
        raise LabelStudioError(f"cannot read the labels of project {project}: {error}") from error


def get_annotation(client, annotation_id: int) -> dict:
    try:
        return _plain(client.annotations.get(id=int(annotation_id)))
    except Exception as error:
        raise LabelStudioError(f"cannot read annotation {annotation_id}: {error}") from error


def task_predictions(client, task_id: int) -> list[dict]:
    try:
        return [_plain(p) for p in client.predictions.list(task=int(task_id))]
    except Exception as error:
        raise LabelStudioError(f"cannot read the predictions of task {task_id}: {error}") from error


def import_predictions(client, project: int | str, predictions: list[tuple[int, dict]]) -> int:
    """Store predictions, one per ``(task id, prediction)``, in one request; the count stored.

    One bulk import per chunk instead of a request per task: Label Studio writes them in one
    database transaction.
    """
    if not predictions:
        return 0
    from label_studio_sdk import PredictionRequest

    request = [
        PredictionRequest(
            task=int(task_id),
            result=prediction["result"],
            score=prediction.get("score"),
            model_version=prediction.get("model_version"),
        )
        for task_id, prediction in predictions
    ]
    try:
        answer = client.projects.import_predictions(id=int(project), request=request)
    except Exception as error:
        raise LabelStudioError(
            f"cannot store {len(request)} predictions in project {project}: {error}"
        ) from error
    created = _field(answer, "created")
    return len(request) if created is None else int(created)


def _plain(item) -> dict:
    """An SDK object as the JSON Label Studio sent (dates as ISO strings)."""
    if isinstance(item, dict):
        return item
    return item.model_dump(mode="json", exclude_none=False)


def _field(item, name: str):
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)
