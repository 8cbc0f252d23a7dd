"""How a /predict batch is answered: in the request (in the embedded mode a chunk at a time, so
a click never waits for a whole batch), written back to Label Studio through its API when it
would outlast Label Studio's wait, or refused at once when it would and there is nowhere to
write it to."""

from __future__ import annotations

import logging
import time

from ml_backend.errors import TooLarge, Unavailable
from ml_backend.metrics import Metrics
from ml_backend.runner import CHUNK, REQUEST
from worker.contract.queues import PREANNOTATE_JOB, PREDICT_JOB
from worker.contract.settings import Settings
from worker.contract.store import UNTRAINED

log = logging.getLogger(__name__)


class Batches:
    """Runs batches and learns, from each answer, how long a task takes."""

    def __init__(self, runner, metrics: Metrics) -> None:
        self.runner = runner
        self.metrics = metrics
        self.seconds_per_task = 1.0  # a guess until the first answer measures it
        self.measured = False

    def answer(self, payload: dict, settings: Settings, version: str) -> dict:
        """The answer to a batch (``payload`` with its settings), ``version`` the project's
        current model version.

        Raises:
            TooLarge: too long to answer in time, with no Label Studio to write it back to.
            Unavailable: it took longer than PREDICT_TIMEOUT after all, or the runner is busy.
        """
        count = len(payload["tasks"])
        if self.too_long(count, settings):
            if settings.reaches_label_studio:
                return self.defer(payload, version)
            raise TooLarge(self.too_long_message(count, settings))
        return self.run(payload, settings)

    def run(self, payload: dict, settings: Settings) -> dict:
        """Answer in the request, ``runner.chunk`` tasks a job; past PREDICT_TIMEOUT the rest
        is not computed (Label Studio has stopped waiting) and the answer is a 503."""
        tasks = payload["tasks"]
        size = self.runner.chunk or len(tasks)
        priority = REQUEST if len(tasks) <= size else CHUNK
        deadline = time.monotonic() + settings.predict_timeout
        results: list = []
        version = None
        for start in range(0, len(tasks), size):
            part = tasks[start : start + size]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(self.too_long_message(len(tasks), settings, late=True))
            answer = self.runner.run(PREDICT_JOB, {**payload, "tasks": part}, remaining, priority)
            self.count(len(part), answer)
            results += answer["results"]
            version = answer["model_version"]
        return {"results": results, "model_version": version or UNTRAINED}

    def count(self, tasks: int, answer: dict) -> None:
        """Metrics, and the time per task, from a job's answer."""
        failed = answer.get("failed", 0)
        self.metrics.count_tasks("predicted", tasks - failed)
        self.metrics.count_tasks("failed", failed)
        if "embedding_cache" in answer:
            self.metrics.embedding_cache = answer["embedding_cache"]
        if "sam2_precision" in answer:
            self.metrics.sam2_precision = answer["sam2_precision"]
        if "seconds" in answer and tasks:
            measured = answer["seconds"] / tasks
            old = self.seconds_per_task if self.measured else measured
            self.seconds_per_task, self.measured = 0.7 * old + 0.3 * measured, True

    def too_long(self, tasks: int, settings: Settings) -> bool:
        """Whether a batch would outlast Label Studio's wait: more than PREDICT_INLINE_MAX_TASKS
        when that is set, else by the time per task. Before an answer has measured it, the
        guess only decides what is written back; with nowhere to write to, the batch is tried."""
        limit = settings.predict_inline_max_tasks
        if limit > 0:
            return tasks > limit
        estimate = tasks * self.seconds_per_task
        if settings.reaches_label_studio:
            return estimate > 0.8 * settings.predict_timeout
        # Nowhere to write to: refuse only what the measured speed says cannot fit at all (a
        # first answer also paid for loading the models, so it overestimates).
        return self.measured and estimate > settings.predict_timeout

    def too_long_message(self, tasks: int, settings: Settings, late: bool = False) -> str:
        timeout, limit = settings.predict_timeout, settings.predict_inline_max_tasks
        if late:
            why = f"took longer than PREDICT_TIMEOUT ({timeout:.0f} s)"
        elif limit > 0:
            why = f"are more than PREDICT_INLINE_MAX_TASKS ({limit})"
        else:
            why = (
                f"would take about {tasks * self.seconds_per_task:.0f} s at "
                f"{self.seconds_per_task:.2f} s a task, longer than PREDICT_TIMEOUT "
                f"({timeout:.0f} s) allows"
            )
        return (
            f"{tasks} tasks {why}, and camsam has no Label Studio to write long batches back "
            "to: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, or send fewer tasks at a time"
        )

    def defer(self, payload: dict, version: str) -> dict:
        """Answer at once with no results (Label Studio then stores none for this call) and let
        a job write each prediction to Label Studio through its API as it is ready. A task
        with no id has nowhere to be written: it is counted as failed."""
        tasks = [t for t in payload["tasks"] if t["id"] is not None]
        if tasks:
            self.runner.submit(PREANNOTATE_JOB, {**payload, "tasks": tasks})
        count = len(tasks)
        self.metrics.count_tasks("deferred", count)
        self.metrics.count_tasks("failed", len(payload["tasks"]) - count)
        log.info("project %s: %d tasks queued for write-back", payload["project"], count)
        return {
            "results": [],
            "model_version": version,
            "status": f"{count} tasks are predicted in the background and written to Label "
            "Studio as they are ready",
        }
