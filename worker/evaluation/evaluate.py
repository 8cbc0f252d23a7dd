"""Measuring pre-annotations against ground truth, the way an annotator would judge them.

For every object image the mask camsam would pre-annotate for each true class is compared with
the ground truth: once with the classes the classifier predicts (a class it misses scores IoU 0)
and once with the true classes given, as when an annotator has already chosen them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from worker.contract.defaults import ACCEPT_IOU
from worker.data.dataset import Dataset, Sample
from worker.data.images import load_image
from worker.pipeline.masks import iou
from worker.pipeline.pipeline import Pipeline


@dataclass
class ImageScore:
    """Per-image record, kept for the report's best/worst grid."""

    key: str
    true_classes: tuple[str, ...]
    predicted_classes: tuple[str, ...]
    iou: dict[str, float] = field(default_factory=dict)
    iou_given: dict[str, float] = field(default_factory=dict)
    dice: dict[str, float] = field(default_factory=dict)
    false_mask: bool = False
    seconds: float = 0.0


def evaluate(
    pipeline: Pipeline,
    dataset: Dataset,
    minutes_manual: float = 1.0,
    minutes_review: float = 0.2,
    progress: bool = True,
) -> dict:
    """Run the pipeline over ``dataset`` and return the report (see ``summarise``)."""
    started = time.process_time()
    scores = [
        score_image(pipeline, sample)
        for sample in tqdm(dataset.samples, desc="eval", unit="img", disable=not progress)
    ]
    report = summarise(
        scores, pipeline.classifier.spec.mask_classes, minutes_manual, minutes_review
    )
    report["cpu_seconds"] = time.process_time() - started
    report["model_version"] = pipeline.version
    report["segmenter"] = pipeline.segmenter.name
    return report


def score_image(pipeline: Pipeline, sample: Sample) -> ImageScore:
    started = time.perf_counter()
    image = load_image(sample.image)
    shape = image.shape[:2]
    mask_classes = pipeline.classifier.spec.mask_classes
    truth = [c for c in sample.classes if c in mask_classes and sample.has_mask(c)]
    prediction = pipeline.classifier.predict([image])[0]
    wanted = list(dict.fromkeys([*prediction.classes, *truth]))
    empty = np.zeros(shape, dtype=bool)
    by_label: dict[str, np.ndarray] = {}
    for mask in pipeline.run(image, labels=wanted).masks:  # instances of a class are one mask
        by_label[mask.label] = by_label.get(mask.label, empty) | mask.mask
    score = ImageScore(sample.key, sample.classes, prediction.classes)
    for label in truth:
        ground = sample.mask(label, shape)
        predicted = by_label.get(label, empty) if label in prediction.classes else empty
        score.iou[label] = iou(predicted, ground)
        score.iou_given[label] = iou(by_label.get(label, empty), ground)
        total = predicted.sum() + ground.sum()
        score.dice[label] = float(2 * (predicted & ground).sum() / total) if total else 1.0
    if not any(c in mask_classes for c in sample.classes):
        score.false_mask = any(label in prediction.classes for label in by_label)
    score.seconds = time.perf_counter() - started
    return score


def summarise(
    scores: list[ImageScore],
    mask_classes: tuple[str, ...],
    minutes_manual: float,
    minutes_review: float,
) -> dict:
    accuracy = float(np.mean([set(s.true_classes) == set(s.predicted_classes) for s in scores]))
    per_class = {}
    for label in mask_classes:
        rows = [s for s in scores if label in s.iou]
        if rows:
            per_class[label] = {
                "images": len(rows),
                "iou": float(np.mean([s.iou[label] for s in rows])),
                "iou_given_class": float(np.mean([s.iou_given[label] for s in rows])),
                "dice": float(np.mean([s.dice[label] for s in rows])),
            }
    objects = [s for s in scores if s.iou]
    backgrounds = [s for s in scores if not any(c in mask_classes for c in s.true_classes)]
    accepted = sum(all(v >= ACCEPT_IOU for v in s.iou.values()) for s in objects)
    accepted_given = sum(all(v >= ACCEPT_IOU for v in s.iou_given.values()) for s in objects)
    false_masks = sum(s.false_mask for s in backgrounds)
    hand = len(objects) * minutes_manual
    assisted = (
        len(objects) * minutes_review
        + (len(objects) - accepted) * minutes_manual
        + false_masks * minutes_review
    )
    return {
        "images": len(scores),
        "accuracy": accuracy,
        "miou": _mean(v["iou"] for v in per_class.values()),
        "miou_given_class": _mean(v["iou_given_class"] for v in per_class.values()),
        "dice": _mean(v["dice"] for v in per_class.values()),
        "per_class": per_class,
        "object_images": len(objects),
        "accept_rate": accepted / len(objects) if objects else 0.0,
        "accept_rate_given_class": accepted_given / len(objects) if objects else 0.0,
        "background_images": len(backgrounds),
        "false_mask_rate": false_masks / len(backgrounds) if backgrounds else 0.0,
        "labelling_minutes": {
            "by_hand": hand,
            "with_camsam": assisted,
            "saved_share": 1.0 - assisted / hand if hand else 0.0,
            "minutes_per_mask_by_hand": minutes_manual,
            "minutes_per_review": minutes_review,
        },
        "seconds_per_image_median": float(np.median([s.seconds for s in scores]))
        if scores
        else 0.0,
        "images_detail": [vars(s) for s in scores],
    }


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else 0.0
