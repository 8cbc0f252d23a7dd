"""Fitting the learned refiner: per-class gradient-boosted trees on the training images' masks.

See :mod:`worker.pipeline.refiners.learned` for what the trees read and how they are used. The
cut on the trees' probability, and which parts of the cut mask to keep (every part, the major
ones, or only the largest), are chosen per class out of fold: two halves of the training images
each predict the other, so the figure training reports for the refiner (and compares with the
tuned hand-made refiners to pick one per class) was measured on images the trees did not see.
The halves split whole groups (near-duplicates, or the user's pattern): a photograph of the same
object under another light would otherwise flatter whatever the trees memorised of it, the place
in the frame above all. Whether the trees may read the place in the frame is chosen the same way:
it is kept only where it adds ``FRAME_MARGIN`` to the out-of-fold IoU, since it is the feature
least likely to carry over to a new camera or a new part.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from worker.data.dataset import Grouping
from worker.data.images import load_image
from worker.pipeline.cam.base import compute_cams
from worker.pipeline.masks import iou, major_parts
from worker.pipeline.refiners.learned import (
    FIELDS,
    ClassTrees,
    LearnedRefiner,
    blind,
    pixel_features,
)

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
PARTS = (0.0, 0.3, 1.0)  # every part of the cut mask, the major ones, only the largest
MIN_IMAGES = 6  # masked training images a class needs (three for each out-of-fold half)
PIXELS_PER_IMAGE = (800, 1200)  # at most this many mask pixels, and others, from each image
# 75 rounds at a rate of 0.2 cut masks as good as 150 at 0.1 with half the trees, which set
# the cost; 50 at 0.3 did worse on unseen tiles (docs/quality.md, the learned refiner).
ROUNDS, RATE = 75, 0.2
FRAME_MARGIN = 0.02  # out-of-fold IoU the place in the frame must add for the trees to read it


def fit_learned_refiner(
    classifier,
    samples: Sequence,
    per_class: int = 80,
    progress: bool = False,
    seed: int = 0,
    grouping: Grouping | None = None,
) -> tuple[LearnedRefiner, dict[str, float], dict[str, dict[str, float]]]:
    """Trees for every mask class with at least ``MIN_IMAGES`` masked training images; each
    class's out-of-fold mean IoU at the working size with the cut chosen; and each class's best
    out-of-fold IoU without and with the place in the frame. ``grouping`` (a sample's group,
    None: every image alone) keeps each group on one side of the out-of-fold halves."""
    rng = np.random.default_rng(seed)
    mask_classes = classifier.spec.mask_classes
    clear = [s for s in samples if not set(s.classes) & set(mask_classes)]
    chosen = {
        label: [s for s in samples if label in s.classes and s.has_mask(label)][:per_class]
        for label in mask_classes
    }
    refiners, quality, frame_iou = {}, {}, {}
    work = [label for label, group in chosen.items() if len(group) >= MIN_IMAGES]
    for label in tqdm(work, desc="learned refiner", disable=not progress, leave=False):
        group = chosen[label]
        count = min(len(clear), max(3, len(group) // 2))
        negatives = [clear[i] for i in rng.choice(len(clear), count, replace=False)]
        examples = [_example(classifier, sample, label) for sample in group + negatives]
        halves = _halves(group + negatives, len(group), grouping, rng)
        means = _out_of_fold(examples, len(group), halves, rng)
        choice, frame_iou[label] = _choose(means)
        refiners[label] = _fit(examples, rng, *choice)
        quality[label] = means[choice]
    return LearnedRefiner(refiners), quality, frame_iou


def _example(classifier, sample, label: str) -> tuple[np.ndarray, np.ndarray]:
    """A sample's pixel features and its mask of ``label``, at the working size."""
    image = load_image(sample.image)
    (cam,) = compute_cams(classifier, image, [label])
    features = pixel_features(image, cam.cam)
    truth = sample.mask(label, image.shape[:2]).astype(np.float32)
    small = cv2.resize(truth, features.shape[1::-1], interpolation=cv2.INTER_AREA) > 0.3
    return features, small


def _halves(
    samples: Sequence, masked: int, grouping: Grouping | None, rng: np.random.Generator
) -> list[list[int]]:
    """Two halves of the samples' indices, whole groups on each side, each group going to the
    side with fewer masked samples (the first ``masked``) so far. Where the masked samples are
    all one group, the halves split images instead: there is nothing else to split."""
    keys = [grouping(s) for s in samples] if grouping else []
    if len(set(keys[:masked])) < 2:
        keys = list(range(len(samples)))
    members: dict = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    groups = list(members.values())
    halves: list[list[int]] = [[], []]
    held: list[int] = [0, 0]  # masked samples on each side
    for j in rng.permutation(len(groups)):
        side = min((0, 1), key=lambda k: (held[k], len(halves[k])))
        halves[side] += groups[j]
        held[side] += sum(i < masked for i in groups[j])
    return halves


def _out_of_fold(examples, masked: int, halves, rng) -> dict[tuple, float]:
    """Mean IoU over the masked examples, each predicted by trees fitted on the other half, of
    every (cut, parts, frame) choice."""
    cuts = [(t, share) for t in THRESHOLDS for share in PARTS]
    scores: dict[tuple, list[float]] = {(*cut, f): [] for f in (False, True) for cut in cuts}
    for held, used in ((halves[0], halves[1]), (halves[1], halves[0])):
        rows, labels = _rows([examples[i] for i in used], rng)  # the same pixels for both
        for frame in (False, True):
            trees = _fit_rows(rows, labels, frame=frame)
            for i in held:
                if i >= masked:
                    continue  # defect-free images say nothing about the cut's IoU
                features, truth = examples[i]
                probability = trees.probability(features.reshape(-1, features.shape[-1]))
                probability = probability.reshape(truth.shape)
                for t, share in cuts:
                    scores[t, share, frame].append(iou(major_parts(probability > t, share), truth))
    return {choice: float(np.mean(v)) for choice, v in scores.items()}


def _balanced(
    inside: np.ndarray, outside: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and labels with the smaller side repeated to the larger one's count (whole copies,
    the remainder drawn at random), so that each class weighs the same, as balanced class
    weights would. scikit-learn bins weighted rows one weighted percentile at a time, which made
    a fit 10 to 20 times slower (docs/performance.md)."""
    count = max(len(inside), len(outside)) if len(inside) and len(outside) else 0
    if count:
        inside, outside = _repeated(inside, count, rng), _repeated(outside, count, rng)
    labels = np.r_[np.ones(len(inside)), np.zeros(len(outside))]
    return np.concatenate([inside, outside]), labels


def _repeated(rows: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    copies, rest = divmod(count, len(rows))
    extra = rng.choice(len(rows), rest, replace=False)
    return np.concatenate([np.tile(rows, (copies, 1)), rows[extra]])


def _choose(means: dict[tuple, float]) -> tuple[tuple, dict[str, float]]:
    """The (cut, parts, frame) choice of best out-of-fold IoU, the place in the frame only where
    it adds ``FRAME_MARGIN``; and the best IoU without and with it."""
    best = {
        frame: max((c for c in means if c[-1] == frame), key=means.__getitem__)
        for frame in (False, True)
    }
    framed = means[best[True]] > means[best[False]] + FRAME_MARGIN
    return best[framed], {"without": means[best[False]], "with": means[best[True]]}


def _fit(
    examples,
    rng: np.random.Generator,
    threshold: float = 0.5,
    parts: float = 0.0,
    frame: bool = True,
) -> ClassTrees:
    return _fit_rows(*_rows(examples, rng), threshold, parts, frame)


def _rows(examples, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``PIXELS_PER_IMAGE`` pixels inside and outside each example's mask, balanced."""
    inside, outside = [], []
    inside_cap, outside_cap = PIXELS_PER_IMAGE
    for features, truth in examples:
        flat, mask = features.reshape(-1, features.shape[-1]), truth.reshape(-1)
        positive, negative = np.flatnonzero(mask), np.flatnonzero(~mask)
        inside.append(flat[rng.choice(positive, min(len(positive), inside_cap), replace=False)])
        outside.append(flat[rng.choice(negative, min(len(negative), outside_cap), replace=False)])
    return _balanced(np.concatenate(inside), np.concatenate(outside), rng)


def _fit_rows(
    rows: np.ndarray,
    labels: np.ndarray,
    threshold: float = 0.5,
    parts: float = 0.0,
    frame: bool = True,
) -> ClassTrees:
    from sklearn.ensemble import HistGradientBoostingClassifier

    # No early stopping: its held-out rows would hold copies of the repeated ones.
    model = HistGradientBoostingClassifier(
        max_iter=ROUNDS, learning_rate=RATE, max_leaf_nodes=31, early_stopping=False, random_state=0
    )
    # One thread: the fitting shares its cores (a predict worker, other jobs), and OpenMP's
    # threads waiting on a busy core made a fit 2 to 15 times slower on 2 cores.
    with threadpool_limits(1, user_api="openmp"):
        model.fit(rows if frame else blind(rows), labels)
    trees = [iteration[0].nodes for iteration in model._predictors]
    starts = np.cumsum([0] + [len(t) for t in trees])
    nodes = {f: np.concatenate([t[f] for t in trees]) for f in FIELDS}
    baseline = float(np.ravel(model._baseline_prediction)[0])
    return ClassTrees(nodes, starts, baseline, threshold, parts, frame)
