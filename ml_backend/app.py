"""The Flask app Label Studio talks to: ``/health``, ``/setup``, ``/predict``, ``/webhook``,
``/metrics``. It parses requests, hands jobs to the runner and never imports torch itself.

Shape familiar from label-studio-ml: :class:`CamsamBackend` has ``setup``, ``predict(tasks,
context)`` and ``fit(event, data)``; the routes are thin wrappers around it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from flask import Flask, Response, g, jsonify, request

from ml_backend.errors import BackendError, BadRequest, InputError, TooManyRequests
from ml_backend.guard import OPEN_ENDPOINTS, RateLimiter, authorised, needs_credentials
from ml_backend.metrics import CONTENT_TYPE, Metrics
from ml_backend.protocol import label_changes, predict_payload, project_id
from ml_backend.runner import EmbeddedRunner, RqRunner
from ml_backend.webhooks import TRAINING_EVENTS, imported_annotations, webhook_project
from worker.contract.errors import LabelConfigError
from worker.contract.label_config import LabelConfig, parse_label_config
from worker.contract.leases import remember_project, request_training, store_for, submitter
from worker.contract.live import live_stats
from worker.contract.queues import FEEDBACK_JOB, INTERACTIVE_JOB, PREANNOTATE_JOB, PREDICT_JOB
from worker.contract.settings import Settings
from worker.contract.store import UNTRAINED, ModelDir, project_model_dir

log = logging.getLogger(__name__)


class CamsamBackend:
    """What the routes do, in label-studio-ml's terms."""

    def __init__(self, settings: Settings, runner, metrics: Metrics) -> None:
        self.settings = settings
        self.runner = runner
        self.metrics = metrics
        # Seconds one task of a batch takes, learnt from answers; a guess until the first one.
        self.seconds_per_task = 1.0
        self.training_store = store_for(settings.redis_url)
        self.submit = submitter(settings.redis_url)
        self.webhooks = RateLimiter(settings.webhook_rate)

    def models(self, project: str):
        return project_model_dir(self.settings.model_dir, project, self.settings.redis_url)

    def model_version(self, project: str) -> str:
        return self.models(project).current_version() or UNTRAINED

    def setup(self, body: dict) -> dict:
        project = project_id(body.get("project"))
        self.settings = self.settings.with_label_studio(
            str(body.get("hostname") or ""), str(body.get("access_token") or "")
        )
        schema = body.get("schema") or ""
        config = parse_label_config(schema) if schema else None
        answer = {"model_version": self.model_version(project)}
        if answer["model_version"] == UNTRAINED:
            answer["status"] = f"no model for project {project} yet: predictions are empty"
        if config is not None and not config.mask_labels:
            answer["warning"] = "the label config has no BrushLabels: only choices are predicted"
        changes = self.label_changes(project, config)
        if changes:
            answer["label_changes"] = changes
        return answer

    def label_changes(self, project: str, config: LabelConfig | None) -> list[str]:
        """What differs between the config's labels and the classes the current model knows."""
        models = self.models(project)
        version = models.current_version()
        info = models.info(version) if version and config is not None else None
        if info is None:
            return []
        changes = label_changes(config, info["classes"], version)
        for change in changes:
            log.warning("project %s: %s", project, change)
        return changes

    def predict(self, body: dict) -> dict:
        payload = predict_payload(body)
        config = parse_label_config(payload["label_config"]) if payload["label_config"] else None
        if payload["prompt"] and config is not None:
            label = payload["prompt"]["label"]
            if config.brush is None:
                raise BadRequest("interactive masks need a <BrushLabels> tag in the label config")
            if label not in config.mask_labels:
                raise BadRequest(
                    f"label {label!r} is not one of the config's BrushLabels "
                    f"{list(config.mask_labels)}: a mask can only carry one of those"
                )
        payload["settings"] = self.settings.for_worker()
        if payload["prompt"] is None and self.too_long(len(payload["tasks"])):
            return self.defer(payload)
        job = INTERACTIVE_JOB if payload["prompt"] else PREDICT_JOB
        answer = self.runner.run(job, payload, self.settings.predict_timeout)
        if "error" in answer:
            raise InputError(answer["error"])
        tasks = len(payload["tasks"])
        self.metrics.count_tasks("predicted", tasks - answer["failed"])
        self.metrics.count_tasks("failed", answer["failed"])
        if "embedding_cache" in answer:
            self.metrics.embedding_cache = answer["embedding_cache"]
        if "seconds" in answer and tasks:
            self.seconds_per_task = 0.7 * self.seconds_per_task + 0.3 * answer["seconds"] / tasks
        version = answer["model_version"] or UNTRAINED
        return {"results": answer["results"], "model_version": version}

    def too_long(self, tasks: int) -> bool:
        """Whether a batch would outlast Label Studio's wait, so it is written back instead."""
        if not (self.settings.label_studio_url and self.settings.label_studio_api_key):
            return False  # nowhere to write to: answer in the request, as fast as it goes
        limit = self.settings.predict_inline_max_tasks
        if limit > 0:
            return tasks > limit
        return tasks * self.seconds_per_task > 0.8 * self.settings.predict_timeout

    def defer(self, payload: dict) -> dict:
        """Answer at once with no results (Label Studio then stores none for this call) and let
        a job write each prediction to Label Studio through its API as it is ready."""
        self.runner.submit(PREANNOTATE_JOB, payload)
        count = len(payload["tasks"])
        self.metrics.count_tasks("deferred", count)
        log.info("project %s: %d tasks queued for write-back", payload["project"], count)
        return {
            "results": [],
            "model_version": self.model_version(payload["project"]),
            "status": f"{count} tasks are predicted in the background and written to Label "
            "Studio as they are ready",
        }

    def projects(self) -> list[str]:
        """Projects with a model directory of their own under MODEL_DIR."""
        root = Path(self.settings.model_dir)
        found = root.iterdir() if root.is_dir() else []
        return sorted((p.name for p in found if p.name.isdigit()), key=int)

    def model_summary(self) -> dict:
        """For /health: each project's current version; a shared model; or why none."""
        versions = {p: self.model_version(p) for p in self.projects()}
        shared = ModelDir(self.settings.model_dir).current_version()  # serves every project
        summary: dict = {"model_versions": versions}
        if shared:
            summary["shared_model_version"] = shared
        elif not any(v != UNTRAINED for v in versions.values()):
            summary["models"] = (
                "no project has a model yet: predictions are empty until labels in Label Studio "
                "train one (or camsam train writes one into MODEL_DIR/<project id>)"
            )
        return summary

    def project_gauges(self) -> dict[str, list[tuple[dict, float]]]:
        """Per project: the current model version, and each version's live accept rate and
        mean IoU on the masks annotators submitted."""
        gauges: dict[str, list] = {
            "camsam_model_version": [],
            "camsam_live_masks": [],
            "camsam_live_accept_rate": [],
            "camsam_live_mean_iou": [],
        }
        for project in self.projects():
            models = self.models(project)
            current = models.current_version()
            if current:
                gauges["camsam_model_version"].append(({"project": project, "version": current}, 1))
            for version, row in sorted(live_stats(models).items()):
                labels = {"project": project, "version": version}
                gauges["camsam_live_masks"].append((labels, row["masks"]))
                gauges["camsam_live_accept_rate"].append((labels, round(row["accept_rate"], 4)))
                gauges["camsam_live_mean_iou"].append((labels, round(row["mean_iou"], 4)))
        return gauges

    def fit(self, event: str, data: dict) -> dict:
        """A webhook: a trigger for training (debounced), and for scoring a submitted annotation
        against camsam's prediction. Nothing in it is trusted: the jobs read Label Studio."""
        if event not in TRAINING_EVENTS:
            return {"status": "ignored", "event": event}
        project = webhook_project(data)
        if not self.webhooks.allow(project):
            raise TooManyRequests(
                f"more than {self.settings.webhook_rate:.0f} webhooks a second for project "
                f"{project}: this one is dropped (training re-reads Label Studio anyway)"
            )
        if event == "TASKS_CREATED" and not imported_annotations(data):
            return {"status": "ignored", "event": event, "reason": "no annotations imported"}
        payload = {"project": project, "settings": self.settings.for_worker()}
        remember_project(self.training_store, payload)
        queued = request_training(self.training_store, self.submit, payload, event)
        annotation = data.get("annotation") or {}
        if event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED") and annotation.get("id"):
            if not annotation.get("was_cancelled"):
                self.submit(FEEDBACK_JOB, {**payload, "annotation": int(annotation["id"])})
        self.metrics.count_tasks(f"webhook_{event.lower()}")
        return {"status": "training queued" if queued else "training pending", "event": event}


def create_app(test_config: dict | None = None) -> Flask:
    """Defaults, then the environment, then ``test_config`` (keys named like the variables)."""
    app = Flask(__name__)
    env = dict(os.environ)
    env.update({k: str(v) for k, v in (test_config or {}).items()})
    settings = Settings.from_env(env)
    metrics = Metrics()
    runner = RqRunner(settings.redis_url) if settings.redis_url else EmbeddedRunner()
    backend = CamsamBackend(settings, runner, metrics)
    app.extensions["camsam"] = backend

    @app.before_request
    def _start():
        g.started = time.perf_counter()
        if needs_credentials(settings) and request.endpoint not in OPEN_ENDPOINTS:
            if not authorised(request.headers.get("Authorization", ""), settings):
                answer = jsonify({"error": "authentication required"})
                return answer, 401, {"WWW-Authenticate": 'Basic realm="camsam"'}
        return None

    @app.after_request
    def _observe(response):
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.observe(route, response.status_code, time.perf_counter() - g.get("started", 0))
        return response

    @app.errorhandler(BackendError)
    def _backend_error(error: BackendError):
        return jsonify({"error": str(error)}), error.status

    if settings.redis_url:
        from redis.exceptions import RedisError

        @app.errorhandler(RedisError)
        def _redis_error(error: RedisError):
            message = f"Redis is unreachable: {error}; camsam answers again once it is back"
            return jsonify({"error": message}), 503

    @app.errorhandler(LabelConfigError)
    def _config_error(error: LabelConfigError):
        return jsonify({"error": f"cannot serve this label config: {error}"}), 422

    @app.get("/")
    @app.get("/health")
    def health():
        problem = runner.problem()
        return jsonify(
            {
                "status": "DEGRADED" if problem else "UP",
                "problem": problem,
                "model_class": "CamsamBackend",
                "mode": runner.mode,
                "segmenter": "sam2" if settings.has_sam2 else "cam",
                "note": segmenter_note(settings),
                **backend.model_summary(),
            }
        )

    @app.post("/setup")
    def setup():
        return jsonify(backend.setup(_json()))

    @app.post("/predict")
    def predict():
        return jsonify(backend.predict(_json()))

    @app.post("/webhook")
    def webhook():
        body = _json()
        return jsonify(backend.fit(str(body.get("action", "")), body))

    @app.get("/metrics")
    def metrics_route():
        return Response(
            metrics.render(
                {
                    "camsam_queue_depth": [({}, runner.queue_depth())],
                    "camsam_embedding_cache": embedding_cache_samples(
                        metrics.embedding_cache, runner.embedding_cache()
                    ),
                    **backend.project_gauges(),
                }
            ),
            content_type=CONTENT_TYPE,
        )

    return app


def segmenter_note(settings: Settings) -> str | None:
    if not settings.has_sam2:
        return "no SAM2 checkpoint configured: masks come from the CAM refined with the image"
    checkpoint = settings.sam2_checkpoint
    if checkpoint and not Path(checkpoint).is_file():
        return (
            f"SAM2_CHECKPOINT {checkpoint} does not exist here: masks fail until it does "
            "(download it, or unset SAM2_CHECKPOINT to use the cam segmenter)"
        )
    return None


def embedding_cache_samples(own: dict, workers: dict) -> list[tuple[dict, float]]:
    """Cache hits and misses: this process's (embedded mode) or each worker's (Redis mode)."""
    samples = [({"outcome": k}, v) for k, v in sorted(own.items())]
    for key, value in sorted(workers.items()):
        worker, _, outcome = key.rpartition(":")
        samples.append(({"worker": worker, "outcome": outcome}, value))
    return samples


def _json() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object body")
    return body
