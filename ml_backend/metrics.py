"""The web side's Prometheus metrics, through prometheus_client.

Requests, their latency and tasks are counted in the process that answered. ``camsam serve``
runs several web workers, so it sets ``PROMETHEUS_MULTIPROC_DIR`` (:mod:`ml_backend.server`)
before prometheus_client is first imported: each worker then writes its counts to files there,
and ``/metrics`` adds up every worker's, whichever worker answers the scrape. Without the variable
(tests, one process) the counts stay in the app's own registry.

The gauges (queue depth, embedding cache, model versions, live stats) are not stored: they are
read when ``/metrics`` is scraped and yielded by :class:`ScrapeTimeGauges`.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from worker.contract.defaults import ACCEPT_IOU
from worker.contract.errors import CamsamError

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# From a click answered from the embedding cache to a batch that runs for minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
GAUGE_HELP = {
    "camsam_queue_depth": "Jobs waiting on the Redis queues.",
    "camsam_embedding_cache": "SAM2 embedding cache hits and misses, per worker in Redis mode.",
    "camsam_model_version": "Each project's current model version (always 1).",
    "camsam_live_masks": "Masks annotators submitted, by project and model version.",
    "camsam_live_accept_rate": (
        f"Share of predicted masks annotators kept (IoU >= {ACCEPT_IOU} with what they submitted)."
    ),
    "camsam_live_mean_iou": "Mean IoU of predicted masks with the submitted ones.",
}

# What ``/metrics`` reads at scrape time: a gauge's name to its (labels, value) samples.
Gauges = dict[str, list[tuple[dict, float]]]


class ScrapeTimeGauges:
    """A collector for gauges read for one scrape (a custom collector, never stored)."""

    def __init__(self, gauges: Gauges) -> None:
        self.gauges = gauges

    def collect(self):
        for name, samples in self.gauges.items():
            family = GaugeMetricFamily(name, GAUGE_HELP.get(name, name))
            for labels, value in samples:
                # Not add_metric: one family may mix label sets (the web process's own cache
                # counts have no worker label, each queue worker's do).
                family.add_sample(name, {k: str(v) for k, v in labels.items()}, value)
            yield family


class Metrics:
    """One app's counters and latency histogram, in a registry of its own (tests build many
    apps in one process; the default registry would refuse the second)."""

    def __init__(self) -> None:
        self.multiprocess_dir = multiprocess_dir()
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "camsam_requests_total",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "camsam_request_seconds",
            "Time spent answering requests, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tasks = Counter(
            "camsam_tasks_total",
            "Tasks predicted, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        # The embedded mode's own SAM2 cache counts, as the last answer reported them.
        self.embedding_cache: dict[str, int] = {}
        # The precision SAM2 runs in on the device that answered last (None: not known yet).
        self.sam2_precision: str | None = None

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def count_tasks(self, outcome: str, count: int = 1) -> None:
        self.tasks.labels(outcome=outcome).inc(count)

    def render(self, gauges: Gauges) -> bytes:
        """The text exposition: the counters (every worker's in multiprocess mode) and
        ``gauges`` as read for this scrape."""
        registry = CollectorRegistry()  # per scrape, as prometheus_client's multiprocess docs say
        if self.multiprocess_dir:
            MultiProcessCollector(registry, path=self.multiprocess_dir)
        else:
            registry.register(self.registry)
        registry.register(ScrapeTimeGauges(gauges))
        return generate_latest(registry)


def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR``, when set and in effect.

    Raises:
        CamsamError: the variable is set but prometheus_client was imported before it was, so
            the counts would stay in each process and /metrics would add up none of them.
    """
    path = os.environ.get(MULTIPROC_ENV) or None
    if path and values.ValueClass is values.MutexValue:
        raise CamsamError(
            f"{MULTIPROC_ENV}={path} was set after prometheus_client was imported: set it "
            "before the process starts (camsam serve and python -m ml_backend set it themselves)"
        )
    return path
