"""Jobs the web side enqueues by name. Each one takes and returns plain JSON-able values.

Models stay loaded in the process between jobs (one pipeline per project and model version), and
a newer version published by training is picked up at the next job without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from worker.contract.errors import CamsamError, CheckpointError, ImageError, MaskError
from worker.contract.label_config import parse_label_config
from worker.contract.settings import Settings
from worker.contract.store import UNTRAINED, models_for
from worker.data.images import WorkImage, read_image
from worker.labelstudio.fetch import FetchLimits, ImageFetcher
from worker.labelstudio.results import brush_region, to_prediction

log = logging.getLogger(__name__)
_pipelines: dict[tuple, object] = {}
_lock = threading.Lock()
FETCH_THREADS = 4  # downloads in flight: Label Studio and storages answer a few at a time well
WRITES_IN_FLIGHT = 2  # chunks of predictions waiting for Label Studio before the model pauses
CLAIM_POLL_SECONDS = 5  # how often a run looks again at tasks another run was writing


def predict(payload: dict) -> dict:
    """Pre-annotate a batch: one prediction per task, in order; a failed task gets an empty one.

    Returns ``{"results": [...], "model_version": str, "failed": int, "seconds": float}``.
    """
    started = time.perf_counter()
    project = _Project(payload)
    results, failed = [], 0
    for chunk, images in project.chunks(payload["tasks"]):
        answers = project.predict(chunk, images)
        failed += sum(answer is None for answer in answers)
        results += [answer or empty(project.version) for answer in answers]
    return {
        "results": results,
        "model_version": project.version,
        "failed": failed,
        "seconds": time.perf_counter() - started,
        **project.segmenter_figures(),
    }


def preannotate(payload: dict, progress=None) -> dict:
    """Predict tasks and store each batch's predictions in Label Studio through its API.

    For batches too long to answer within Label Studio's request timeout, and for
    ``camsam preannotate``: the whole of them, or one chunk of a fan-out (``payload["batch"]``,
    see :mod:`worker.contract.fanout`), where a task the batch has written already is skipped.
    Three things overlap: the next chunk's images download while the model works on this one,
    and each chunk's predictions go to Label Studio in one bulk import on a writer thread.
    ``progress`` (a tqdm bar) is advanced per task.
    Returns ``{"model_version", "written", "skipped", "failed"}``.
    """
    from worker.labelstudio.client import connect

    project = _Project(payload)
    if project.version is None:
        if "batch" in payload:  # a chunk of a fan-out: tried again (Redis may be back), not lost
            raise CheckpointError(
                f"no current model version for project {payload['project']}: the chunk is retried"
            )
        return {"model_version": None, "written": 0, "skipped": 0, "failed": 0}
    client = connect(project.settings.label_studio_url, project.settings.label_studio_api_key)
    writes = _Writes(client, payload, project.version, _ledger(payload, project.settings))
    tasks = writes.unwritten(payload["tasks"])
    failed = 0
    with ThreadPoolExecutor(1, thread_name_prefix="camsam-write") as writer:
        pending: list[Future] = []
        for chunk, images in project.chunks(tasks):
            answers = project.predict(chunk, images)
            done = [(task["id"], a) for task, a in zip(chunk, answers, strict=True) if a]
            failed += len(chunk) - len(done)
            pending.append(writer.submit(writes.write, done))
            while len(pending) > WRITES_IN_FLIGHT:
                pending.pop(0).result()
            if progress is not None:
                progress.update(len(chunk))
        for write in pending:
            write.result()
    failed += writes.finish()
    log.info(
        "project %s: %d predictions written, %d skipped (written already), %d failed",
        payload["project"],
        writes.written,
        writes.skipped,
        failed,
    )
    return {
        "model_version": project.version,
        "written": writes.written,
        "skipped": writes.skipped,
        "failed": failed,
    }


def _ledger(payload: dict, settings: Settings):
    """The fan-out batch's ledger, for a chunk of one (with Redis); else None."""
    if not payload.get("batch") or not settings.redis_url:
        return None
    from worker.contract.connections import redis_connection
    from worker.contract.fanout import Ledger

    return Ledger(redis_connection(settings.redis_url), payload["batch"])


class _Writes:
    """One run's writes of predictions to Label Studio. In a chunk of a fan-out, a task is
    written only under this run's claim on it (:class:`worker.contract.fanout.Ledger`): a task
    written already is skipped, one another run is writing waits for it, and one whose claim
    outlived its run is asked of Label Studio before it is written again."""

    def __init__(self, client, payload: dict, version: str, ledger) -> None:
        self.client = client
        self.project = payload["project"]
        self.version = version
        self.ledger = ledger
        self.run = uuid.uuid4().hex
        self.written = self.skipped = 0
        self.waiting: list[tuple[int, dict]] = []  # claimed by another run when we came to them

    def unwritten(self, tasks: list[dict]) -> list[dict]:
        if self.ledger is None:
            return tasks
        done = self.ledger.written([task["id"] for task in tasks])
        self.skipped += len(done)
        return [task for task in tasks if task["id"] not in done]

    def write(self, predictions: list[tuple[int, dict]]) -> None:
        from worker.labelstudio.client import import_predictions

        if self.ledger is None:
            self.written += import_predictions(self.client, self.project, predictions)
            return
        codes = self._claim([task_id for task_id, _ in predictions])
        mine = [(t, p) for t, p in predictions if codes[t] == "granted"]
        ids = [task_id for task_id, _ in mine]
        try:
            self.written += import_predictions(self.client, self.project, mine)
        except Exception as error:
            if _refused(error):  # Label Studio answered no: nothing landed, the next run may
                self.ledger.release(ids, self.run)  # ask it at once; else the claims run out
            raise
        self.ledger.end(ids)
        self.skipped += sum(code == "written" for code in codes.values())
        self.waiting += [(t, p) for t, p in predictions if codes[t] == "busy"]

    def finish(self) -> int:
        """Waits out the tasks other runs held, writing those they did not; returns how many
        could not be settled (counted failed)."""
        deadline = time.monotonic() + (self.ledger.lease if self.ledger else 0) + 60
        while self.waiting and time.monotonic() < deadline:
            time.sleep(CLAIM_POLL_SECONDS)
            waiting, self.waiting = self.waiting, []
            self.write(waiting)
        if self.waiting:
            log.warning("project %s: %d tasks left to another run", self.project, len(self.waiting))
        return len(self.waiting)

    def _claim(self, task_ids: list[int]) -> dict[int, str]:
        """This run's claims; a stale one is taken over unless Label Studio holds the task's
        prediction of this version already (its run wrote it, then died)."""
        from worker.labelstudio.client import task_predictions

        codes = self.ledger.claim(task_ids, self.run)
        stale = [t for t, code in codes.items() if code == "stale"]
        try:
            landed = [t for t in stale if self._holds_version(task_predictions(self.client, t))]
        except Exception:  # nothing was written under these claims: the next run may take them
            self.ledger.release([t for t, c in codes.items() if c == "granted"], self.run)
            raise
        self.ledger.end(landed)
        codes.update(dict.fromkeys(landed, "written"))
        rest = [t for t in stale if t not in landed]
        codes.update(self.ledger.claim(rest, self.run, take_stale=True))
        return codes

    def _holds_version(self, predictions: list[dict]) -> bool:
        return any(p.get("model_version") == self.version for p in predictions)


def _refused(error: Exception) -> bool:
    """Label Studio answered a write with a 4xx: it stored nothing. (A timeout or a 5xx from a
    proxy says nothing of whether the write landed.)"""
    status = getattr(error.__cause__, "status_code", None)
    return isinstance(status, int) and 400 <= status < 500


def interactive(payload: dict) -> dict:
    """The mask for one click or box on one task, labelled as the person chose.

    Bad input here is the person's to fix, so it answers ``{"error": ...}`` rather than empty.
    """
    import numpy as np

    from worker.pipeline.prompts import Prompts

    project = _Project(payload)
    if project.version is None:
        return {"results": [empty(None)], "model_version": None, "failed": 0}
    pipeline = project.pipeline()
    (task,) = payload["tasks"]
    try:
        image = project.image(task)
    except (CamsamError, KeyError) as error:
        return {"error": f"cannot read the task's image: {error}"}
    height, width = image.pixels.shape[:2]  # the prompt is in percent of the image
    prompt = payload["prompt"]
    scale = np.array([width / 100.0, height / 100.0], dtype=np.float32)
    points = np.array([p[:2] for p in prompt["points"]], np.float32).reshape(-1, 2) * scale
    labels = np.array([p[2] for p in prompt["points"]], np.int32)
    box = None
    if prompt["box"] is not None:
        box = np.array(prompt["box"], np.float32) * np.tile(scale, 2)
    mask = pipeline.segment_prompted(image.pixels, prompt["label"], Prompts(points, labels, box))
    try:
        regions = [] if mask is None else [brush_region(mask, *image.size, project.config)]
    except MaskError as error:
        return {"error": f"no mask for this prompt: {error}"}
    score = 0.0 if mask is None else mask.score
    result = {"result": regions, "score": score, "model_version": project.version}
    return {
        "results": [result],
        "model_version": project.version,
        "failed": 0,
        **project.segmenter_figures(),
    }


class _Project:
    """What every job reads from its payload: the project's model, label config and images."""

    def __init__(self, payload: dict) -> None:
        self.settings = Settings.from_payload(payload["settings"])
        self.model_dir = models_for(self.settings, payload["project"])
        self.version = self.model_dir.current_version()
        raw = payload["label_config"]
        self.config = parse_label_config(raw) if raw else None
        self.image_key = self.config.image_key if self.config else "image"
        self.batch_size = max(1, self.settings.predict_batch_size)
        self._pipeline = None
        self.fetcher = ImageFetcher(
            self.settings.label_studio_url,
            self.settings.label_studio_api_key,
            self.settings.local_files_document_root,
            FetchLimits.from_settings(self.settings),
        )

    def pipeline(self):
        """The warm pipeline of the current version, chosen once per job; if its checkpoint is
        refused (corrupt, unreadable), the newest older version that loads answers instead."""
        if self._pipeline is None:
            self._pipeline = self._choose_pipeline()
        return self._pipeline

    def _choose_pipeline(self):
        try:
            return load_pipeline(self.model_dir, self.version, self.settings)
        except CheckpointError as error:
            versions = self.model_dir.versions()  # in number order: v9999 before v10000
            older = (
                versions[: versions.index(self.version)][::-1] if self.version in versions else []
            )
            log.error("project %s: %s refused: %s", self.model_dir.root, self.version, error)
            for version in older:
                try:
                    pipeline = load_pipeline(self.model_dir, version, self.settings)
                except CheckpointError:
                    continue
                log.error("serving %s instead of %s", version, self.version)
                self.version = version
                return pipeline
            raise

    def image(self, task: dict) -> WorkImage:
        """The task's image, at most ``MAX_WORK_SIDE`` pixels on its longest side.

        Raises:
            ImageError: the task has no image reference camsam can read (not a string, a NUL
                or a lone surrogate in it, a malformed URL, an id that is not a number), or
                the image is unreadable.
            KeyError: no image in the task.
        """
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict) or self.image_key not in data:
            raise KeyError(self.image_key)
        ref = data[self.image_key]
        if not isinstance(ref, str):
            raise ImageError(f"the task's {self.image_key!r} is {type(ref).__name__}, not a URL")
        try:
            encoded = self.fetcher.fetch(ref, task.get("id"))
        except (ValueError, TypeError) as error:  # UnicodeError included
            raise ImageError(f"{ref[:200]!r} is not an image reference camsam can read") from error
        return read_image(encoded, self.settings.max_image_pixels, self.settings.max_work_side)

    def chunks(self, tasks: list[dict]) -> Iterator[tuple[list[dict], dict[int, WorkImage]]]:
        """``tasks`` in chunks of the batch size, each with its images by position in the chunk
        (a task whose image cannot be read is logged and left out). Images download a few at a
        time, and the next chunk's while the caller works on this one."""
        parts = list(_chunks(tasks, self.batch_size))
        if self.version is None:  # nothing to predict with: no downloads either
            yield from ((chunk, {}) for chunk in parts)
            return
        with ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="camsam-fetch") as pool:
            upcoming = [pool.submit(self.image, task) for task in parts[0]] if parts else []
            for number, chunk in enumerate(parts):
                current = upcoming
                if number + 1 < len(parts):
                    upcoming = [pool.submit(self.image, task) for task in parts[number + 1]]
                yield chunk, self._collect(chunk, current)

    def _collect(self, tasks: list[dict], futures: list[Future]) -> dict[int, WorkImage]:
        images = {}
        for k, (task, future) in enumerate(zip(tasks, futures, strict=True)):
            try:
                images[k] = future.result()
            except (CamsamError, KeyError) as error:
                task_id = task.get("id") if isinstance(task, dict) else None
                log.warning("task %s: no prediction: %s", task_id, error)
        return images

    def predict(self, tasks: list[dict], images: dict[int, WorkImage]) -> list[dict | None]:
        """Predictions for ``tasks`` in one batched pipeline pass; None for a task that failed
        (its image is missing from ``images``, or the pipeline refused it)."""
        if self.version is None:
            return [empty(None) for _ in tasks]
        pipeline = self.pipeline()
        try:
            pixels = [image.pixels for image in images.values()]
            results = dict(zip(images, pipeline.run_batch(pixels), strict=True))
        except CamsamError as error:  # one image spoilt the batch: find it, keep the others
            log.warning("batch of %d failed (%s): predicting one by one", len(images), error)
            results = {}
            for k, image in images.items():
                try:
                    results[k] = pipeline.run(image.pixels)
                except CamsamError as single:
                    log.warning("task %s: no prediction: %s", tasks[k].get("id"), single)
        return [
            to_prediction(results[k], self.version, self.config, images[k].size)
            if k in results
            else None
            for k in range(len(tasks))
        ]

    def segmenter_figures(self) -> dict:
        """When SAM2 is in use: its embedding cache's hits and misses in this process, and the
        precision it runs in on this worker's device (``/health`` shows the last reported)."""
        if self.version is None:
            return {}
        segmenter = self.pipeline().segmenter
        stats = segmenter.cache_stats()
        figures = {"embedding_cache": dict(stats)} if stats is not None else {}
        precision = segmenter.precision
        return {**figures, "sam2_precision": precision} if precision else figures


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def empty(version: str | None) -> dict:
    return {"result": [], "score": 0.0, "model_version": version or UNTRAINED}


def load_pipeline(model_dir, version: str, settings: Settings):
    """The warm pipeline for this model version, built on first use."""
    from worker.pipeline.classifier import resolve_device
    from worker.pipeline.pipeline import Pipeline, PipelineOptions

    names = (
        "sam2_config",
        "sam2_checkpoint",
        "sam2_hub_id",
        "cam_refiner",
        "classifier_mirror",
        "mask_gate",
    )
    options = tuple(getattr(settings, k) for k in names)  # what builds differently
    key = (str(model_dir.root), version, options, settings.device)
    with _lock:
        if key not in _pipelines:
            pipeline = Pipeline.build(
                model_dir.fetch(version),
                sam2_config=settings.sam2_config or None,
                sam2_checkpoint=settings.sam2_checkpoint or None,
                sam2_hub_id=settings.sam2_hub_id or None,
                refiner=settings.cam_refiner or None,
                mirror=bool(settings.classifier_mirror),
                options=PipelineOptions(gate=bool(settings.mask_gate)),
                device=resolve_device(settings.device),
            )
            for old in [k for k in _pipelines if k[0] == key[0] and k[1] != version]:
                del _pipelines[old]  # an older version of this model: training replaced it
            _pipelines[key] = pipeline
            warn_of_another_gate(pipeline)
        return _pipelines[key]


def warn_of_another_gate(pipeline) -> None:
    """Say so when a version's gate was calibrated on another segmenter's masks than the one
    serving (a version trained without the SAM2 settings, served with them, or the reverse):
    the thresholds then sit on another scale of evidence."""
    spec = pipeline.classifier.spec
    calibrated = spec.metrics.get("gate_segmenter", "cam")
    serving = pipeline.segmenter.name
    if pipeline.options.gate and spec.gate and calibrated != serving:
        log.warning(
            "%s: its mask gate was calibrated on %s masks, and %s serves: train the next version "
            "with the same SAM2 settings as the prediction workers (SAM2_* on the trainer, or "
            "camsam train --sam2-...) to calibrate it on %s's, or set MASK_GATE=0",
            spec.version,
            calibrated,
            serving,
            serving,
        )
