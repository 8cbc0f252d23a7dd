"""Fitting the click model (:mod:`worker.pipeline.clicker`) on the training images' masks.

Interactive segmentation is trained on clicks simulated from the ground truth and from the
model's own errors, and so is this. Each object (a connected part of any label's mask) gives
the protocol's first click (its interior point farthest from the boundary), and a random state:
one or two positive clicks well inside, up to three negative ones near it or anywhere. Then,
out of fold, trees fitted on one half of the images (whole groups on each side) click the other
half's objects as ``camsam eval --clicks`` does, each next click in the largest error the
half-trained trees left; those states, whose errors are the kind an unseen part brings, join
the rows of the final fit. Each object's label is read too (a class's objects have their own
size and shape), but left out of a quarter of the drawn states, so that a label the model never
saw is answered as well. The same out-of-fold replay chooses the cut and gives the figures
training reports: the share of objects one click accepts, and the mean IoU after one and after
``REPLAYED`` clicks, on images the trees did not see.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import cv2
import numpy as np
from tqdm import tqdm

from worker.contract.defaults import ACCEPT_IOU
from worker.data.dataset import Grouping
from worker.data.images import load_image
from worker.pipeline.clicker import NO_CLICK, ClickModel, click_maps, image_maps
from worker.pipeline.masks import iou
from worker.pipeline.refiners.learned import ClassTrees
from worker.pipeline.simulated_clicks import interior_point, next_click, objects
from worker.training.learned_refiner import _balanced, _fit_rows, _halves

log = logging.getLogger(__name__)

MIN_IMAGES = 4  # masked training images the model needs (two for each out-of-fold half)
MAX_IMAGES = 160  # at most this many, drawn at random: the fit's cost grows with them
MAX_OBJECTS = 6  # objects of one label on one image, the largest
PIXELS = 300  # pixels drawn from each state inside the object, near it, and anywhere
CUTS = (0.3, 0.4, 0.5, 0.6, 0.7)
REPLAYED = 4  # clicks replayed on each held-out object
BLANK = 0.25  # the share of drawn states whose label is left out
# The window a click's trees read reaches 1.5 times as far as any training object did from its
# first click, and 5% of the longer side more: an object somewhat larger than the project's so
# far still fits, and a second click farther out widens the window.
REACH_MARGIN, REACH_EXTRA = 1.5, 0.05


@dataclass(frozen=True)
class _Object:
    maps: list[np.ndarray]  # its image's maps (shared by the image's objects)
    truth: np.ndarray  # at the working size
    label: int  # its label's index among the model's labels

    @cached_property
    def near(self) -> np.ndarray:
        """Outside the object, within twice its equivalent radius (at least 5 pixels)."""
        radius = max(5.0, 2 * np.sqrt(self.truth.sum() / np.pi))
        outside = (~self.truth).astype(np.uint8)
        return (cv2.distanceTransform(outside, cv2.DIST_L2, 5) <= radius) & ~self.truth


def fit_click_model(
    samples: Sequence,
    seed: int = 0,
    grouping: Grouping | None = None,
    progress: bool = False,
) -> tuple[ClickModel | None, dict]:
    """The click model of ``samples``' masks (None with fewer than ``MIN_IMAGES`` masked
    images) and its out-of-fold figures."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    masked = [s for s in samples if any(s.has_mask(label) for label in s.classes)]
    if len(masked) < MIN_IMAGES:
        return None, {}
    if len(masked) > MAX_IMAGES:
        masked = [masked[i] for i in sorted(rng.choice(len(masked), MAX_IMAGES, replace=False))]
    names = tuple(sorted({c for s in masked for c in s.classes if s.has_mask(c)}))
    bar = tqdm(masked, desc="click model", disable=not progress, leave=False)
    per_image = [_objects(sample, names) for sample in bar]
    halves = _halves(masked, len(masked), grouping, rng)
    drawn = [
        [_rows(obj, state, rng, names) for obj in objs for state in _states(obj, rng)]
        for objs in per_image
    ]
    replayed, first, after = [], {cut: [] for cut in CUTS}, []
    if not any(per_image):  # every mask a speck at the working size
        return None, {}
    for held, used in ((halves[0], halves[1]), (halves[1], halves[0])):
        if not any(per_image[i] for i in used) or not any(per_image[i] for i in held):
            continue  # a half with nothing to click teaches nothing, and judges nothing
        trees = _fit([rows for i in used for rows in drawn[i]], rng)
        model = ClickModel(trees, names, _reach([obj for i in used for obj in per_image[i]]))
        for obj in (obj for i in held for obj in per_image[i]):
            states, ious, first_ious = _replay(model, obj)
            replayed += [_rows(obj, state, rng, names, blank=False) for state in states]
            after.append(ious[-1])
            for cut, value in first_ious.items():
                first[cut].append(value)
    # With one half empty nothing was judged out of fold: the middle cut, and no figures.
    cut = max(CUTS, key=lambda c: np.mean(first[c])) if after else CUTS[len(CUTS) // 2]
    final = _fit([rows for image in drawn for rows in image] + replayed, rng, cut)
    reach = _reach([obj for objs in per_image for obj in objs])
    figures = {
        "images": len(masked),
        "objects": sum(len(objs) for objs in per_image),
        "judged_out_of_fold": len(after),
        "cut": cut,
        "reach": reach,
        "accepted_at_one_click": _mean(np.array(first[cut]) >= ACCEPT_IOU),
        "iou_at_one_click": _mean(first[cut]),
        f"iou_after_{REPLAYED}_clicks": _mean(after),
        "seconds": round(time.perf_counter() - started, 1),
    }
    log.info("click model: %s", figures)
    return ClickModel(final, names, reach), figures


def _mean(values) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _objects(sample, names: tuple[str, ...]) -> list[_Object]:
    """The sample's objects at the working size, up to ``MAX_OBJECTS`` of each label."""
    image = load_image(sample.image)
    maps = image_maps(image)
    size = maps[0].shape[::-1]
    found = []
    for label in (c for c in sample.classes if sample.has_mask(c)):
        truth = sample.mask(label, image.shape[:2]).astype(np.float32)
        small = cv2.resize(truth, size, interpolation=cv2.INTER_AREA) > 0.3
        parts = sorted(objects(small), key=lambda part: -int(part.sum()))[:MAX_OBJECTS]
        found += [_Object(maps, part, names.index(label)) for part in parts]
    return found


def _states(obj: _Object, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """The protocol's first click, and a random state of positive and negative clicks."""
    x, y, _ = interior_point(obj.truth)
    first = (np.array([[x, y]], np.float32), np.array([1], np.int32))
    inside = cv2.distanceTransform(np.pad(obj.truth.astype(np.uint8), 1), cv2.DIST_L2, 5)
    weight = inside[1:-1, 1:-1].ravel()
    positives = rng.choice(len(weight), rng.integers(1, 3), p=weight / weight.sum())
    pool = (
        np.flatnonzero(obj.near)
        if obj.near.any() and rng.random() < 0.7
        else np.flatnonzero(~obj.truth)
    )
    negatives = rng.choice(pool, min(len(pool), rng.integers(0, 4)), replace=False)
    width = obj.truth.shape[1]
    chosen = np.r_[positives, negatives]
    points = np.stack([chosen % width, chosen // width], axis=1).astype(np.float32)
    labels = np.r_[np.ones(len(positives)), np.zeros(len(negatives))].astype(np.int32)
    return [first, (points, labels)]


def _rows(
    obj: _Object, state, rng: np.random.Generator, names: tuple[str, ...], blank: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows of pixels inside the object, near it and anywhere, with their labels; the
    object's label left out (``blank``) at a rate of ``BLANK``, so that the model answers a
    label it was not fitted on too."""
    points, labels = state
    label = None if blank and rng.random() < BLANK else obj.label
    truth = obj.truth.ravel()
    chosen = []
    for pool in (truth, obj.near.ravel(), ~truth):
        where = np.flatnonzero(pool)
        chosen.append(rng.choice(where, min(len(where), PIXELS), replace=False))
    pixels = np.concatenate(chosen)
    maps = click_maps(obj.maps, points, labels, None, label, len(names))
    return np.stack([m.ravel()[pixels] for m in maps], axis=-1), truth[pixels]


def _fit(rows: list[tuple[np.ndarray, np.ndarray]], rng, cut: float = 0.5) -> ClassTrees:
    features = np.concatenate([r for r, _ in rows])
    inside = np.concatenate([t for _, t in rows])
    balanced, labels = _balanced(features[inside], features[~inside], rng)
    return _fit_rows(balanced, labels, threshold=cut, frame=True)


def _reach(found: Sequence[_Object]) -> float:
    """How far from its first click an object reached, at most, with a margin: a share of the
    longer side (``ClickModel.reach``)."""
    farthest = 0.0
    for obj in found:
        x, y, _ = interior_point(obj.truth)
        ys, xs = np.nonzero(obj.truth)
        distance = np.sqrt(((xs - x) ** 2 + (ys - y) ** 2).max()) / max(obj.truth.shape)
        farthest = max(farthest, float(distance))
    return min(NO_CLICK, REACH_MARGIN * farthest + REACH_EXTRA)


def _replay(model: ClickModel, obj: _Object):
    """The protocol replayed on one object: the click states after the first, the IoU after
    each click, and the first click's IoU at every cut."""
    trees = model.trees
    points = np.zeros((0, 2), np.float32)
    labels = np.zeros(0, np.int32)
    clicked = np.zeros_like(obj.truth)
    predicted = np.zeros_like(obj.truth)
    states, ious, first = [], [], {}
    for step in range(REPLAYED):
        click = next_click(obj.truth, predicted, clicked)
        if click is None:
            ious.append(ious[-1])
            continue
        clicked[int(click[1]), int(click[0])] = True
        points = np.vstack([points, [click[:2]]]).astype(np.float32)
        labels = np.append(labels, click[2]).astype(np.int32)
        if step:
            states.append((points, labels))
        probability = model.working_probability(obj.maps, points, labels, obj.label)
        if not step:
            for cut in CUTS:
                at_cut = ClickModel(replace(trees, threshold=cut))
                first[cut] = iou(at_cut.cut(probability, points, labels), obj.truth)
        predicted = model.cut(probability, points, labels)
        ious.append(iou(predicted, obj.truth))
    return states, ious, first
