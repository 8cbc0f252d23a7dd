"""Calibrating the mask gate (:mod:`worker.pipeline.gate`) on images the model did not learn
from, against ``camsam eval``'s cost model: an accepted mask saves painting it (minus the
review), any other mask shown costs the review."""

from __future__ import annotations

from collections.abc import Sequence

from worker.contract.defaults import ACCEPT_IOU, GATE_Z
from worker.data.dataset import Grouping, Sample
from worker.data.images import load_image
from worker.pipeline.classifier import Classifier
from worker.pipeline.gate import class_thresholds, evidence
from worker.pipeline.masks import iou
from worker.pipeline.pipeline import Pipeline, PipelineOptions
from worker.pipeline.segmenters.base import SegmenterOptions, build_segmenter

MINUTES_MANUAL = 1.0  # camsam eval's defaults: only their ratio matters here
MINUTES_REVIEW = 0.2


def calibrate_gate(
    classifier: Classifier,
    held_out: Sequence[Sample],
    grouping: Grouping | None = None,
    z: float = GATE_Z,
    segmenter: SegmenterOptions | None = None,
) -> tuple[dict[str, float | None], list[str]]:
    """Per mask class, the threshold expected to save the most on ``held_out`` (None: abstain),
    with accepted masks from enough groups (``grouping``; None: every image its own) above it,
    at the accept rate's lower bound ``z`` (``best_threshold``), and the classes that, with
    too few masks of their own, borrowed the threshold of those that earned one
    (``class_thresholds``). The masks are those of the segmenter that will serve
    (``gate_segmenter``)."""
    saved, lost = MINUTES_MANUAL - MINUTES_REVIEW, MINUTES_REVIEW
    rows = gate_rows(classifier, held_out, grouping, segmenter)
    return class_thresholds(rows, saved, lost, z=z)


def gate_segmenter(options: SegmenterOptions | None) -> str:
    """The segmenter a gate is calibrated on: ``sam2`` where SAM2 weights are named, as the
    backend then serves SAM2's masks, whose evidence (probability times SAM2's predicted IoU)
    is on another scale than the ``cam`` segmenter's (the probability squared)."""
    return "sam2" if options is not None and options.has_sam2 else "cam"


def gate_rows(
    classifier: Classifier,
    held_out: Sequence[Sample],
    grouping: Grouping | None = None,
    segmenter: SegmenterOptions | None = None,
) -> dict[str, list[tuple[float, bool, str]]]:
    """Per mask class, (evidence, accepted, group) for each mask shown on ``held_out``.

    Images whose classes include a mask class without a ground-truth mask cannot judge masks
    and are left out. Masks are made as the backend will make them: by SAM2 where
    ``segmenter`` names its weights, else by the ``cam`` segmenter with the refinement training
    chose.
    """
    options = segmenter or SegmenterOptions()
    segmenter = build_segmenter(gate_segmenter(options), options, classifier)
    # Every mask is judged: a gate the classifier already carries must not hide any.
    pipeline = Pipeline(classifier, segmenter, PipelineOptions(gate=False))
    mask_classes = classifier.spec.mask_classes
    rows: dict[str, list[tuple[float, bool, str]]] = {label: [] for label in mask_classes}
    for sample in held_out:
        if any(c in mask_classes and not sample.has_mask(c) for c in sample.classes):
            continue
        image = load_image(sample.image)
        result = pipeline.run(image)
        group = grouping(sample) if grouping else sample.key
        for mask in result.masks:
            truth = sample.mask(mask.label, image.shape[:2])
            accepted = mask.label in sample.classes and iou(mask.mask, truth) >= ACCEPT_IOU
            rows[mask.label].append((evidence(result.prediction, mask), accepted, group))
    return rows
