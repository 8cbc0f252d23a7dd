"""The Flask app Label Studio talks to: ``/health``, ``/setup``, ``/predict``, ``/webhook``,
``/metrics``. It parses requests, hands jobs to the runner and never imports torch itself.

Shape familiar from label-studio-ml: :class:`CamsamBackend` has ``setup``, ``predict(tasks,
context)`` and ``fit(event, data)``; the routes are thin wrappers around it.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

from flask import Flask, Response, g, jsonify, request

from ml_backend.batches import Batches
from ml_backend.body import json_object
from ml_backend.errors import (
    BadRequest,
    InputError,
    TooManyRequests,
    Unauthorized,
    register_error_handlers,
)
from ml_backend.guard import (
    OPEN_ENDPOINTS,
    WEBHOOK_SECRET_HEADER,
    RateLimiter,
    authorised,
    needs_credentials,
    setup_trusted,
    startup_warnings,
    webhook_allowed,
)
from ml_backend.metrics import CONTENT_TYPE, Metrics
from ml_backend.projects import KnownProjects
from ml_backend.protocol import label_changes, predict_payload, project_id, shown, text_field
from ml_backend.runner import EmbeddedRunner, RqRunner
from ml_backend.webhooks import (
    TRAINING_EVENTS,
    imported_annotations,
    submitted_annotation,
    webhook_project,
)
from worker.contract.label_config import LabelConfig, parse_label_config
from worker.contract.leases import remember_project, request_training, store_for, submitter
from worker.contract.live import live_stats
from worker.contract.queues import FEEDBACK_JOB, INTERACTIVE_JOB
from worker.contract.settings import Settings, same_origin
from worker.contract.store import UNTRAINED, models_for, named_model_dir

log = logging.getLogger(__name__)
FEEDBACK_BACKLOG = 100  # scoring jobs waiting; beyond, a submitted annotation goes unscored


class CamsamBackend:
    """What the routes do, in label-studio-ml's terms."""

    def __init__(self, settings: Settings, runner, metrics: Metrics) -> None:
        self.environment = settings  # what /setup may fill in, never override
        self.settings = settings
        self.runner = runner
        self.metrics = metrics
        self.batches = Batches(runner, metrics)
        self.training_store = store_for(settings.redis_url)
        self.submit = submitter(settings.redis_url)
        self.feedback = submitter(settings.redis_url, backlog=FEEDBACK_BACKLOG)
        self.webhooks = RateLimiter(settings.webhook_rate)
        self.known = KnownProjects(settings)
        self.warnings = startup_warnings(settings)
        self.setup_ignored = False
        self.untrainable: set[str] = set()  # projects whose webhooks could start no training

    def models(self, project: str):
        return models_for(self.settings, project)

    def model_version(self, project: str) -> str:
        return self.models(project).current_version() or UNTRAINED

    def setup(self, body: dict) -> dict:
        project = project_id(body.get("project"))
        hostname, token = text_field(body, "hostname"), text_field(body, "access_token")
        schema = text_field(body, "schema")
        config = parse_label_config(schema) if schema else None
        answer = {"model_version": self.model_version(project)}
        if answer["model_version"] == UNTRAINED:
            answer["status"] = f"no model for project {project} yet: predictions are empty"
        if config is not None and not config.mask_labels:
            answer["warning"] = "the label config has no BrushLabels: only choices are predicted"
        note = self.use_label_studio(hostname, token)
        if note:
            answer["label_studio"] = note
        # Without credentials anyone may have sent this /setup: its project may make way later.
        anyone = not needs_credentials(self.environment)
        if not self.known.add(project, "setup", evictable=anyone):
            answer["project"] = (
                f"MAX_PROJECTS ({self.settings.max_projects}) projects are known: webhooks of "
                f"project {project} do not start training"
            )
        changes = self.label_changes(project, config)
        if changes:
            answer["label_changes"] = changes
        return answer

    def use_label_studio(self, hostname: str, token: str) -> str | None:
        """Take Label Studio's address and key from a /setup when SETUP_CREDENTIALS trusts it
        (the latest trusted /setup wins; the environment always does). Returns why not."""
        if not (hostname or token):
            return None
        environment = self.environment
        if not setup_trusted(environment):
            if environment.reaches_label_studio:
                return None  # the environment names Label Studio: nothing to take, nothing lost
            note = (
                "hostname and access_token ignored: SETUP_CREDENTIALS="
                f"{environment.setup_credentials} takes them only from a caller that passed "
                "BASIC_AUTH_USER/PASS or AUTH_TOKEN; set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"
            )
            if not self.setup_ignored:  # Label Studio calls /setup often: say it once
                log.warning("/setup named a Label Studio: %s", note)
                self.setup_ignored = True
            return note
        if not hostname:
            return None
        if not http_address(hostname):
            # Label Studio sends its HOSTNAME setting as it is; a bad one must not fail the setup.
            return (
                f"hostname {shown(hostname)} is not an http(s) address: ignored; set "
                "LABEL_STUDIO_URL (and Label Studio's HOSTNAME) to one such as http://host:8080"
            )
        self.settings = environment.with_label_studio(hostname, token)
        if environment.label_studio_url and not same_origin(environment.label_studio_url, hostname):
            return "LABEL_STUDIO_URL names another address: the access_token sent is not used"
        return None

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
        payload = predict_payload(body, self.settings.max_tasks_per_request)
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
        tasks = payload["tasks"]
        version = self.model_version(payload["project"])
        # Nothing to run, so no job and no wait for the models (in the Redis mode the workers
        # say whether there is a model: theirs is the version that counts).
        embedded_untrained = version == UNTRAINED and self.runner.mode == "embedded"
        if not tasks or embedded_untrained:
            self.metrics.count_tasks("predicted", len(tasks))
            empty = {"result": [], "score": 0.0, "model_version": version}
            return {"results": [dict(empty) for _ in tasks], "model_version": version}
        payload["settings"] = self.settings.for_worker()
        if payload["prompt"]:
            answer = self.runner.run(INTERACTIVE_JOB, payload, self.settings.predict_timeout)
            if "error" in answer:
                raise InputError(answer["error"])
            self.batches.count(1, answer)
            return {
                "results": answer["results"],
                "model_version": answer["model_version"] or UNTRAINED,
            }
        return self.batches.answer(payload, self.settings, version)

    def projects(self) -> list[str]:
        """Projects with a model directory of their own under MODEL_DIR."""
        root = Path(self.settings.model_dir)
        found = root.iterdir() if root.is_dir() else []
        return sorted((p.name for p in found if re.fullmatch("[0-9]+", p.name)), key=int)

    def model_summary(self) -> dict:
        """For /health: each project's current version; a shared model; or why none."""
        versions = {p: self.model_version(p) for p in self.projects()}
        settings = self.settings
        shared = named_model_dir(  # serves every project
            settings.model_dir, "", settings.redis_url, settings.model_store
        ).current_version()
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
        against camsam's prediction. Nothing in it is trusted: the jobs read Label Studio, and
        only a project camsam knows (see :class:`KnownProjects`) starts anything."""
        if event not in TRAINING_EVENTS:
            return {"status": "ignored", "event": event[:64]}
        project = webhook_project(data)
        scored = event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
        annotation = submitted_annotation(data) if scored else None
        if event == "TASKS_CREATED" and not imported_annotations(data):
            return {"status": "ignored", "event": event, "reason": "no annotations imported"}
        if not self.webhooks.allow(project):
            raise TooManyRequests(
                f"more than {self.settings.webhook_rate:.0f} webhooks a second for project "
                f"{project}: this one is dropped (training re-reads Label Studio anyway)"
            )
        unknown = self.known.why_unknown(project, self.settings)
        if unknown:
            self.metrics.count_tasks("webhook_unknown_project")
            return {"status": "ignored", "event": event, "reason": unknown}
        reason = self.why_no_training()
        if reason:
            self.metrics.count_tasks("webhook_not_started")
            if project not in self.untrainable:  # Label Studio sends many: say it once a project
                self.untrainable.add(project)
                log.warning("project %s: no training started: %s", project, reason)
            return {"status": "training not started", "event": event, "reason": reason}
        payload = {"project": project, "settings": self.settings.for_worker()}
        remember_project(self.training_store, payload)
        queued = request_training(self.training_store, self.submit, payload, event)
        if annotation is not None:
            self.feedback(FEEDBACK_JOB, {**payload, "annotation": annotation})
        self.metrics.count_tasks(f"webhook_{event.lower()}")
        return {"status": "training queued" if queued else "training pending", "event": event}

    def why_no_training(self) -> str | None:
        """Why a training run started now could not read the labels, or None. Embedded only: in
        Redis mode the training workers' own LABEL_STUDIO_URL and key win over the web side's."""
        if self.runner.mode != "embedded" or self.settings.reaches_label_studio:
            return None
        return (
            "training reads the labels from Label Studio: set LABEL_STUDIO_URL and "
            "LABEL_STUDIO_API_KEY (or let an authenticated /setup supply them, see "
            "SETUP_CREDENTIALS)"
        )

    def health_warnings(self) -> list[str]:
        warnings = list(self.warnings)
        if self.known.full():
            warnings.append(
                f"MAX_PROJECTS ({self.settings.max_projects}) projects are known: webhooks of "
                "any other project are ignored"
            )
        return warnings


def http_address(text: str) -> bool:
    """Whether ``text`` is an http(s) address with a host (and a valid port, if any)."""
    if len(text) > 2048 or any(c.isspace() for c in text):
        return False
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError for a port out of range or not a number)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def create_app(test_config: dict | None = None) -> Flask:
    """Defaults, then the environment, then ``test_config`` (keys named like the variables)."""
    app = Flask(__name__)
    env = dict(os.environ)
    env.update({k: str(v) for k, v in (test_config or {}).items()})
    settings = Settings.from_env(env)
    body_limit = settings.max_request_bytes if settings.max_request_bytes > 0 else None
    app.config["MAX_CONTENT_LENGTH"] = body_limit
    metrics = Metrics()
    # Tasks waiting for write-back, at most: two of the largest batches.
    backlog = 2 * (settings.max_tasks_per_request or Settings.max_tasks_per_request)
    if settings.redis_url:
        runner = RqRunner(settings.redis_url, backlog, settings.preannotate_chunk)
    else:
        runner = EmbeddedRunner(backlog)
    backend = CamsamBackend(settings, runner, metrics)
    app.extensions["camsam"] = backend
    for warning in backend.warnings:
        log.warning("camsam: %s", warning)

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

    register_error_handlers(app, redis=bool(settings.redis_url))

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
                "sam2_precision": metrics.sam2_precision,
                "note": segmenter_note(settings),
                "warnings": backend.health_warnings(),
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
        if not webhook_allowed(request.headers.get(WEBHOOK_SECRET_HEADER), settings):
            raise Unauthorized(
                f"a webhook needs WEBHOOK_SECRET in its {WEBHOOK_SECRET_HEADER} header"
            )
        body = _json()
        action = body.get("action")
        if not isinstance(action, str | None):
            raise BadRequest(f"'action' must be an event name, not {shown(action)}")
        return jsonify(backend.fit(action or "", body))

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

    def _json() -> dict:
        return json_object(request, body_limit)

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
