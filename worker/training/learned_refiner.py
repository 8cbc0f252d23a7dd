"""Fitting the learned refiner: per-class gradient-boosted trees on the training images' masks.

See :mod:`worker.pipeline.refiners.learned` for what the trees read and how they are used. The
cut on the trees' probability, and which parts of the cut mask to keep (every part, the major
ones, or only the largest), are chosen per class out of fold: two halves of the training images
each predict the other, so the figure training reports for the refiner (and compares with the
tuned hand-made refiners to pick one per class) was measured on images the trees did not see.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from tqdm import tqdm

from worker.data.images import load_image
from worker.pipeline.cam.base import compute_cams
from worker.pipeline.masks import iou, major_parts
from worker.pipeline.refiners.learned import FIELDS, ClassTrees, LearnedRefiner, pixel_features

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
PARTS = (0.0, 0.3, 1.0)  # every part of the cut mask, the major ones, only the largest
MIN_IMAGES = 6  # masked training images a class needs (three for each out-of-fold half)
PIXELS_PER_IMAGE = (800, 1200)  # at most this many mask pixels, and others, from each image


def fit_learned_refiner(
    classifier,
    samples: Sequence,
    per_class: int = 80,
    progress: bool = False,
    seed: int = 0,
) -> tuple[LearnedRefiner, dict[str, float]]:
    """Trees for every mask class with at least ``MIN_IMAGES`` masked training images, and each
    class's out-of-fold mean IoU at the working size with the cut chosen."""
    rng = np.random.default_rng(seed)
    mask_classes = classifier.spec.mask_classes
    clear = [s for s in samples if not set(s.classes) & set(mask_classes)]
    chosen = {
        label: [s for s in samples if label in s.classes and s.has_mask(label)][:per_class]
        for label in mask_classes
    }
    refiners, quality = {}, {}
    work = [label for label, group in chosen.items() if len(group) >= MIN_IMAGES]
    for label in tqdm(work, desc="learned refiner", disable=not progress, leave=False):
        group = chosen[label]
        count = min(len(clear), max(3, len(group) // 2))
        negatives = [clear[i] for i in rng.choice(len(clear), count, replace=False)]
        examples = []
        for sample in group + negatives:
            image = load_image(sample.image)
            (cam,) = compute_cams(classifier, image, [label])
            features = pixel_features(image, cam.cam)
            truth = sample.mask(label, image.shape[:2]).astype(np.float32)
            size = features.shape[1::-1]
            small = cv2.resize(truth, size, interpolation=cv2.INTER_AREA) > 0.3
            examples.append((features, small))
        order = rng.permutation(len(examples))
        halves = [order[0::2], order[1::2]]
        choices = [(t, share) for t in THRESHOLDS for share in PARTS]
        scores = {choice: [] for choice in choices}
        for held, used in ((halves[0], halves[1]), (halves[1], halves[0])):
            trees = _fit([examples[i] for i in used], rng)
            for i in held:
                if i >= len(group):
                    continue  # defect-free images say nothing about the cut's IoU
                features, truth = examples[i]
                probability = trees.probability(features.reshape(-1, features.shape[-1]))
                probability = probability.reshape(truth.shape)
                for t, share in choices:
                    mask = major_parts(probability > t, share)
                    scores[t, share].append(iou(mask, truth))
        means = {choice: float(np.mean(v)) for choice, v in scores.items()}
        best = max(choices, key=lambda choice: means[choice])
        refiners[label] = _fit(examples, rng, *best)
        quality[label] = means[best]
    return LearnedRefiner(refiners), quality


def _fit(
    examples, rng: np.random.Generator, threshold: float = 0.5, parts: float = 0.0
) -> ClassTrees:
    from sklearn.ensemble import HistGradientBoostingClassifier

    rows, labels = [], []
    inside_cap, outside_cap = PIXELS_PER_IMAGE
    for features, truth in examples:
        flat, inside = features.reshape(-1, features.shape[-1]), truth.reshape(-1)
        positive, negative = np.flatnonzero(inside), np.flatnonzero(~inside)
        positive = rng.choice(positive, min(len(positive), inside_cap), replace=False)
        negative = rng.choice(negative, min(len(negative), outside_cap), replace=False)
        rows.append(flat[np.concatenate([positive, negative])])
        labels.append(np.concatenate([np.ones(len(positive)), np.zeros(len(negative))]))
    # 75 rounds at a rate of 0.2 cut masks as good as 150 at 0.1 with half the trees, which set
    # the cost; 50 at 0.3 did worse on unseen tiles (docs/quality.md, the learned refiner).
    model = HistGradientBoostingClassifier(
        max_iter=75, learning_rate=0.2, max_leaf_nodes=31, class_weight="balanced", random_state=0
    )
    model.fit(np.concatenate(rows), np.concatenate(labels))
    trees = [iteration[0].nodes for iteration in model._predictors]
    starts = np.cumsum([0] + [len(t) for t in trees])
    nodes = {f: np.concatenate([t[f] for t in trees]) for f in FIELDS}
    baseline = float(np.ravel(model._baseline_prediction)[0])
    return ClassTrees(nodes, starts, baseline, threshold, parts)
