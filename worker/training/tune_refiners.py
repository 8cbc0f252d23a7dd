"""Choosing each class's CAM refinement on training images that have masks.

Label Studio projects collect masks as annotators accept or correct them, and a dataset folder may
carry ground truth: either way the training data says which refiner and thresholds turn this
classifier's CAMs into the best masks for each class. Only training images are used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from worker.data.dataset import Sample
from worker.data.images import load_image
from worker.pipeline.cam.base import compute_cams
from worker.pipeline.classifier import Classifier
from worker.pipeline.masks import iou
from worker.pipeline.refiners.base import SIGNAL_REFINERS, RefineParams, refine_cam, signal_map


def _grid() -> tuple[RefineParams, ...]:
    """What tuning tries: the CAM region itself, the guided CAM, and the signal refiners with
    each polarity, background width and cut (absolute, or a share of the region's peak)."""
    cuts = [dict(contrast_threshold=k) for k in (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)]
    cuts += [dict(relative=r) for r in (0.3, 0.5)]
    signals = [("contrast", p, s) for p in ("both", "dark", "bright") for s in (1 / 32, 1 / 16)]
    signals += [("ridge", p, 1 / 16) for p in ("dark", "bright")]
    grid = [RefineParams(m, t) for m in ("none", "guided") for t in (0.2, 0.35, 0.5, 0.65)]
    grid += [
        RefineParams(method, t, polarity=polarity, scale=scale, largest=largest, **cut)
        for method, polarity, scale in signals
        for t in (0.2, 0.4)
        for cut in cuts
        for largest in (False, True)
    ]
    return tuple(grid)


GRID = _grid()


def tune_refiners(
    classifier: Classifier,
    samples: Sequence[Sample],
    per_class: int = 40,
    minimum: int = 3,
    progress: bool = False,
) -> tuple[dict[str, RefineParams], dict[str, float]]:
    """Best refinement per mask class (mean IoU with the class given) and that IoU.

    Classes with fewer than ``minimum`` masked training images keep the default.
    """
    mask_classes = classifier.spec.mask_classes
    chosen: dict[str, list[Sample]] = {c: [] for c in mask_classes}
    for sample in samples:
        for label in sample.classes:
            if label in chosen and sample.has_mask(label) and len(chosen[label]) < per_class:
                chosen[label].append(sample)
    scores: dict[str, list[list[float]]] = {}
    work = [(label, s) for label, group in chosen.items() for s in group]
    for label, sample in tqdm(work, desc="tune masks", disable=not progress, leave=False):
        image = load_image(sample.image)
        (cam,) = compute_cams(classifier, image, [label])
        truth = sample.mask(label, image.shape[:2])
        signals: dict[tuple, object] = {}
        row = []
        for params in GRID:
            signal = None
            if params.method in SIGNAL_REFINERS:
                key = params.signal_key
                if key not in signals:
                    signals[key] = signal_map(image, params)
                signal = signals[key]
            row.append(iou(refine_cam(image, cam.cam, params, signal), truth))
        scores.setdefault(label, []).append(row)
    best, quality = {}, {}
    for label, rows in scores.items():
        if len(rows) < minimum:
            continue
        means = np.mean(rows, axis=0)
        index = int(np.argmax(means))
        best[label], quality[label] = GRID[index], float(means[index])
    return best, quality
