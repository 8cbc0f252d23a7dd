"""Measuring pre-annotations against ground truth, the way an annotator would judge them.

For every object image the mask camsam would pre-annotate for each true class is compared with
the ground truth: once with the classes the classifier predicts (a class it misses scores IoU 0)
and once with the true classes given, as when an annotator has already chosen them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from worker.contract.defaults import ACCEPT_IOU, PREDICT_BATCH_SIZE
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
    shown: bool = False  # camsam pre-annotated a mask on it (the gate let one through)
    score: float = 1.0  # the prediction score Label Studio sorts by: low means label next
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
    scores = score_all(pipeline, dataset.samples, "eval", progress)
    report = summarise(
        scores, pipeline.classifier.spec.mask_classes, minutes_manual, minutes_review
    )
    report["cpu_seconds"] = time.process_time() - started
    report["model_version"] = pipeline.version
    report["segmenter"] = pipeline.segmenter.name
    return report


def score_all(
    pipeline: Pipeline, samples: Sequence[Sample], desc: str, progress: bool
) -> list[ImageScore]:
    """Every sample scored, in batches of the backend's size, with a progress bar."""
    scores: list[ImageScore] = []
    with tqdm(total=len(samples), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for i in range(0, len(samples), PREDICT_BATCH_SIZE):
            scores += score_batch(pipeline, samples[i : i + PREDICT_BATCH_SIZE])
            bar.update(len(scores) - bar.n)
    return scores


def score_image(pipeline: Pipeline, sample: Sample) -> ImageScore:
    return score_batch(pipeline, [sample])[0]


def score_batch(pipeline: Pipeline, samples: Sequence[Sample]) -> list[ImageScore]:
    """Score ``samples`` with one pipeline pass, as the backend predicts a batch; an image whose
    true classes the classifier missed is run again with them given (one more pass for all)."""
    started = time.perf_counter()
    images = [load_image(sample.image) for sample in samples]
    mask_classes = pipeline.classifier.spec.mask_classes
    truths = [[c for c in s.classes if c in mask_classes and s.has_mask(c)] for s in samples]
    results = pipeline.run_batch(images)  # what the backend pre-annotates
    # with the class given, the mask camsam draws for it whether the gate showed it or not
    given_masks = [list(result.masks + result.held_back) for result in results]
    missed = [
        [c for c in truth if c not in result.prediction.classes]
        for truth, result in zip(truths, results, strict=True)
    ]
    again = [i for i, labels in enumerate(missed) if labels]
    if again:  # the masks camsam draws when told a class it missed
        given = pipeline.run_batch([images[i] for i in again], [missed[i] for i in again])
        for i, result in zip(again, given, strict=True):
            given_masks[i] += result.masks
    seconds = (time.perf_counter() - started) / max(len(samples), 1)
    return [
        _score(sample, image.shape[:2], truth, result, image_masks, mask_classes, seconds)
        for sample, image, truth, result, image_masks in zip(
            samples, images, truths, results, given_masks, strict=True
        )
    ]


def _score(sample, shape, truth, result, given_masks, mask_classes, seconds) -> ImageScore:
    """``result`` is what the backend pre-annotates; ``given_masks`` every mask camsam draws
    when told the true classes."""
    prediction = result.prediction
    empty = np.zeros(shape, dtype=bool)
    shown, given = _by_label(result.masks, empty), _by_label(given_masks, empty)
    score = ImageScore(
        sample.key, sample.classes, prediction.classes, shown=bool(result.masks), score=result.score
    )
    for label in truth:
        ground = sample.mask(label, shape)
        predicted = shown.get(label, empty) if label in prediction.classes else empty
        score.iou[label] = iou(predicted, ground)
        score.iou_given[label] = iou(given.get(label, empty), ground)
        total = predicted.sum() + ground.sum()
        score.dice[label] = float(2 * (predicted & ground).sum() / total) if total else 1.0
    if not any(c in mask_classes for c in sample.classes):
        score.false_mask = any(label in prediction.classes for label in shown)
    score.seconds = seconds
    return score


def _by_label(masks, empty: np.ndarray) -> dict[str, np.ndarray]:
    """The masks of each label as one (instances of a class are one mask)."""
    by_label: dict[str, np.ndarray] = {}
    for mask in masks:
        by_label[mask.label] = by_label.get(mask.label, empty) | mask.mask
    return by_label


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
    accepted_given = sum(all(v >= ACCEPT_IOU for v in s.iou_given.values()) for s in objects)
    cost = labelling_cost(scores, mask_classes, minutes_manual, minutes_review)
    actions = cost["actions"]
    return {
        "images": len(scores),
        "accuracy": accuracy,
        "miou": _mean(v["iou"] for v in per_class.values()),
        "miou_given_class": _mean(v["iou_given_class"] for v in per_class.values()),
        "dice": _mean(v["dice"] for v in per_class.values()),
        "per_class": per_class,
        "object_images": len(objects),
        "accept_rate": actions["accepted"] / len(objects) if objects else 0.0,
        "accept_rate_given_class": accepted_given / len(objects) if objects else 0.0,
        "background_images": len(backgrounds),
        "false_mask_rate": actions["deleted"] / len(backgrounds) if backgrounds else 0.0,
        "labelling_minutes": cost,
        "seconds_per_image_median": float(np.median([s.seconds for s in scores]))
        if scores
        else 0.0,
        "images_detail": [vars(s) for s in scores],
    }


def labelling_cost(
    scores: list[ImageScore],
    mask_classes: tuple[str, ...],
    minutes_manual: float,
    minutes_review: float,
    minutes_relabel: float = 0.0,
) -> dict:
    """What labelling these images costs by hand and with camsam's pre-annotations.

    By hand, each image with objects costs ``minutes_manual`` to paint. With camsam, an image
    it pre-annotated with a mask is reviewed (``minutes_review``) and accepted when every mask
    reaches IoU ``ACCEPT_IOU`` with the ground truth, else redrawn (``minutes_manual`` more); one
    it gave no mask is painted as by hand; a false mask on a background image is reviewed and
    deleted; a wrong class is relabelled (``minutes_relabel``: choosing the class is part of
    labelling by hand too, so 0 by default).
    """
    objects = [s for s in scores if s.iou]
    shown = sum(s.shown for s in objects)
    accepted = sum(s.shown and all(v >= ACCEPT_IOU for v in s.iou.values()) for s in objects)
    backgrounds = [s for s in scores if not any(c in mask_classes for c in s.true_classes)]
    deleted = sum(s.false_mask for s in backgrounds)
    relabelled = sum(set(s.true_classes) != set(s.predicted_classes) for s in scores)
    hand = len(objects) * minutes_manual
    assisted = (
        shown * minutes_review
        + (len(objects) - accepted) * minutes_manual
        + deleted * minutes_review
        + relabelled * minutes_relabel
    )
    return {
        "by_hand": hand,
        "with_camsam": assisted,
        "saved_share": 1.0 - assisted / hand if hand else 0.0,
        "minutes_per_mask_by_hand": minutes_manual,
        "minutes_per_review": minutes_review,
        "minutes_per_relabel": minutes_relabel,
        "actions": {
            "accepted": accepted,
            "redrawn": shown - accepted,
            "painted": len(objects) - shown,  # no mask shown: by hand
            "relabelled": relabelled,
            "deleted": deleted,
        },
    }


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else 0.0
