"""Clicks measured the way interactive segmentation is measured (``camsam eval --clicks N``).

Per object (a connected part of a class's ground truth; the class is given, as a person picks
the label before clicking): the first click at the object's interior point farthest from its
boundary, each next click at the interior point of the largest error region, positive where the
mask missed the object and negative where it spilled over. The masks are those Label Studio's
interactive requests get (``Pipeline.segment_prompted``), so every segmenter is measured alike.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from worker.contract.defaults import ACCEPT_IOU
from worker.data.dataset import Dataset
from worker.data.images import load_image
from worker.pipeline.masks import iou
from worker.pipeline.pipeline import Pipeline
from worker.pipeline.prompts import Prompts
from worker.pipeline.simulated_clicks import next_click, objects

# IoU thresholds of NoC (the number of clicks to reach it), as the field reports them.
NOC_IOUS = (0.5, 0.85, 0.9)


@dataclass
class ObjectClicks:
    """One object's replay: its IoU after each click and each click's seconds."""

    key: str
    label: str
    ious: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def clicks_to(self, threshold: float, cap: int) -> int:
        """NoC: the clicks until IoU reached ``threshold``; ``cap`` when it never did."""
        return next((k + 1 for k, value in enumerate(self.ious) if value >= threshold), cap)


def click_object(
    pipeline: Pipeline,
    image: np.ndarray,
    label: str,
    truth: np.ndarray,
    clicks: int,
    key: str,
    until: float | None = None,
) -> ObjectClicks:
    """Replay up to ``clicks`` clicks on one object; once the mask is exact its IoU stands.
    With ``until``, the clicking stops once the IoU reaches it (a person accepting the mask)."""
    record = ObjectClicks(key, label)
    points: list[tuple[float, float]] = []
    labels: list[int] = []
    predicted = np.zeros_like(truth)
    clicked = np.zeros_like(truth)
    for _ in range(clicks):
        click = next_click(truth, predicted, clicked)
        if click is None:
            record.ious.append(record.ious[-1] if record.ious else 1.0)
            continue
        clicked[int(click[1]), int(click[0])] = True
        points.append(click[:2])
        labels.append(click[2])
        prompts = Prompts(np.array(points, np.float32), np.array(labels, np.int32))
        started = time.perf_counter()
        result = pipeline.segment_prompted(image, label, prompts)
        record.seconds.append(time.perf_counter() - started)
        predicted = np.zeros_like(truth) if result is None else result.mask.astype(bool)
        record.ious.append(iou(predicted, truth))
        if until is not None and record.ious[-1] >= until:
            break
    return record


def evaluate_clicks(
    pipeline: Pipeline, dataset: Dataset, clicks: int, progress: bool = True
) -> dict:
    """Every object of every image with a ground-truth mask, replayed; the summary. Every class
    with a mask is clicked, one the classifier does not know included: a person may click any
    label of the project."""
    if clicks < 1:
        raise ValueError(f"clicks must be at least 1, not {clicks}")
    records: list[ObjectClicks] = []
    samples = [s for s in dataset.samples if any(s.has_mask(c) for c in s.classes)]
    for sample in tqdm(samples, desc="clicks", unit="img", disable=not progress, leave=False):
        image = load_image(sample.image)
        for label in (c for c in sample.classes if sample.has_mask(c)):
            for truth in objects(sample.mask(label, image.shape[:2])):
                records.append(click_object(pipeline, image, label, truth, clicks, sample.key))
    return summarise_clicks(records, clicks) | {
        "segmenter": pipeline.segmenter.name,
        "model_version": pipeline.version,
    }


def summarise_clicks(records: Sequence[ObjectClicks], clicks: int) -> dict:
    """The whole set's figures and each class's: mean IoU after 1..N clicks, NoC (capped at
    N), the share accepted at one click (IoU >= ACCEPT_IOU) and the median seconds a click took."""
    per_class = {
        label: _figures([r for r in records if r.label == label], clicks)
        for label in sorted({r.label for r in records})
    }
    return {"clicks": clicks, **_figures(records, clicks), "per_class": per_class}


def _figures(records: Sequence[ObjectClicks], clicks: int) -> dict:
    if not records:
        return {"objects": 0}
    ious = np.array([r.ious for r in records])
    seconds = [s for r in records for s in r.seconds]
    figures = {
        "objects": len(records),
        "miou_after": [round(float(v), 4) for v in ious.mean(axis=0)],
        "accepted_at_one_click": float(np.mean(ious[:, 0] >= ACCEPT_IOU)),
        "seconds_per_click": float(np.median(seconds)) if seconds else 0.0,
    }
    for threshold in NOC_IOUS:
        noc = [r.clicks_to(threshold, clicks) for r in records]
        figures[f"noc_{round(100 * threshold)}"] = float(np.mean(noc))
    return figures


def format_clicks(report: dict) -> str:
    lines = [
        f"clicks: model {report['model_version']}, segmenter {report['segmenter']}, "
        f"{report.get('objects', 0)} objects, up to {report['clicks']} clicks each",
        f"{'class':<14}{'objects':>8}{'IoU@1':>8}{'IoU@N':>8}{'ok@1':>7}{'NoC50':>7}"
        f"{'NoC85':>7}{'NoC90':>7}",
    ]
    rows = [*report["per_class"].items(), ("all", report)]
    for name, row in rows:
        if not row.get("objects"):
            continue
        lines.append(
            f"{name:<14}{row['objects']:>8}{row['miou_after'][0]:>8.3f}"
            f"{row['miou_after'][-1]:>8.3f}{row['accepted_at_one_click']:>7.2f}"
            f"{row['noc_50']:>7.2f}{row['noc_85']:>7.2f}{row['noc_90']:>7.2f}"
        )
    if report.get("objects"):
        lines.append(f"median {1000 * report['seconds_per_click']:.0f} ms a click")
    return "\n".join(lines)
