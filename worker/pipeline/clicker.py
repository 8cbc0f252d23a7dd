"""The click model: a person's clicks to a mask, learned from the project's own masks.

Without SAM2 weights a click used to only focus the class's CAM (``ClickedCam``), and a CAM
knows little about a new part. Here gradient-boosted trees read, per pixel, what the image says
there (the learned refiner's contrast, line, gray-level, band-pass and spread maps, but not the
CAM and not the place in the frame) and what the clicks say: the distance to the nearest
positive and negative click, and how far the pixel's own gray level, local mean, band-pass,
spread and contrasts lie from those at the nearest positive click (and the gray level and mean
from those at the nearest negative one); and which label the person chose, where the model
was fitted on it (a class's defects have their own size and shape). They say whether the pixel
belongs to the clicked object. One model answers every label, one it was not fitted on too
(it learnt to answer without the label). It is fitted on the training images' masks with
simulated clicks (:mod:`worker.training.click_model`) and travels in the checkpoint as plain
tensors under ``PREFIX``, as the learned refiner does.

The mask is the trees' probability above the cut training chose, the parts holding a positive
click, with what lies nearer a negative click than any positive one cut away, and holes filled.
A box is answered as a positive click at its middle (with the person's own clicks, if any), the
mask cut to the box.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from worker.contract.errors import CheckpointError
from worker.pipeline.masks import clicked_parts, fill_holes
from worker.pipeline.prompts import Prompts
from worker.pipeline.refiners.learned import (
    FEATURES,
    FRAME_FEATURES,
    ClassTrees,
    LearnedRefiner,
    _sigmoid,
    feature_maps,
)

PREFIX = "clicker."
NAME = "any"  # the one model's key under PREFIX: it answers every label
SIDE = 384  # the working size's longer side: a click wants finer edges than a CAM's refiner
IMAGE_MAPS = slice(2, -FRAME_FEATURES)  # of the refiner's maps: neither the CAM nor the frame
# Of the image maps: the gray level, its local mean, spread and band-pass, and the two-sided,
# dark and bright contrast at the middle width, compared with their values at a click.
COMPARED = (16, 17, 18, 19, 7, 1, 4)
COMPARED_TO_NEGATIVE = (16, 17)
# The trees read every 4th pixel first (ClassTrees.log_odds_map); from every 8th, a crack 3
# pixels wide between the samples went unread.
STRIDE = 4
FLOOR = 0.1  # a positive click's own probability below which it adds nothing
NO_CLICK = 2.0  # the distance to a negative click where there is none (1 is the longer side)


def image_maps(image: np.ndarray) -> list[np.ndarray]:
    """What the trees read of the image (h, w each), at the working size."""
    empty = np.zeros(image.shape[:2], np.float32)
    # Never larger than the image: a small image is read as it is, not upsampled.
    return feature_maps(image, empty, min(SIDE, max(image.shape[:2])))[IMAGE_MAPS]


def click_maps(
    maps: list[np.ndarray],
    points: np.ndarray,
    labels: np.ndarray,
    window: tuple[int, int, int, int] | None = None,
    label: int | None = None,
    labels_known: int = 0,
) -> list[np.ndarray]:
    """The image's maps followed by the clicks' (points in working-size pixels, labels 1/0),
    and one map per label the model knows (1 for the chosen ``label``'s index, None: none),
    cut to ``window`` (x0, y0, x1, y1; None: the whole image)."""
    height, width = maps[0].shape
    x0, y0, x1, y1 = window or (0, 0, width, height)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    side = float(max(height, width))
    shape = ys.shape
    extra = []
    for wanted, compared in ((1, COMPARED), (0, COMPARED_TO_NEGATIVE)):
        chosen = points[labels == wanted]
        if not len(chosen):
            extra.append(np.full(shape, NO_CLICK, np.float32))
            extra += [np.zeros(shape, np.float32) for _ in compared]
            continue
        nearest = np.zeros(shape, np.int64)
        best = np.full(shape, np.inf, np.float32)
        for index, (x, y) in enumerate(chosen):
            distance = (xs - x) ** 2 + (ys - y) ** 2
            closer = distance < best
            best[closer], nearest[closer] = distance[closer], index
        extra.append(np.sqrt(best) / side)
        for k in compared:
            at_clicks = np.array([_around(maps[k], x, y) for x, y in chosen], np.float32)
            extra.append(maps[k][y0:y1, x0:x1] - at_clicks[nearest])
    positive, negative = extra[0], extra[1 + len(COMPARED)]
    extra.append(positive / (positive + negative + 1e-6))
    extra += [np.full(shape, float(k == label), np.float32) for k in range(labels_known)]
    return [*(m[y0:y1, x0:x1] for m in maps), *extra]


def features(labels: int) -> int:
    """How many features the trees read for a model fitted on ``labels`` labels."""
    image = len(range(FEATURES)[IMAGE_MAPS])
    return image + 1 + len(COMPARED) + 1 + len(COMPARED_TO_NEGATIVE) + 1 + labels


def _around(values: np.ndarray, x: float, y: float) -> float:
    """The mean of ``values`` over the 3 x 3 pixels around (x, y)."""
    height, width = values.shape
    column = int(np.clip(np.floor(x), 0, width - 1))
    row = int(np.clip(np.floor(y), 0, height - 1))
    return float(values[max(row - 1, 0) : row + 2, max(column - 1, 0) : column + 2].mean())


def clicks_of(prompts: Prompts) -> tuple[np.ndarray, np.ndarray]:
    """The prompts' points (N, 2) and labels (N,), a box answered as a positive click at its
    middle beside the person's own clicks."""
    points, labels = prompts.points.reshape(-1, 2), prompts.labels.reshape(-1)
    if prompts.box is not None:
        x0, y0, x1, y1 = prompts.box
        points = np.vstack([points, [[(x0 + x1) / 2, (y0 + y1) / 2]]])
        labels = np.append(labels, 1)
    return points.astype(np.float32), labels.astype(np.int32)


@dataclass(frozen=True)
class ClickModel:
    """The trees and their cut."""

    trees: ClassTrees
    labels: tuple[str, ...] = ()  # the labels it was fitted on, each read as a map of its own
    # How far from a positive click the object may reach, a share of the longer side: the
    # farthest any training object reached from its first click, with a margin.
    reach: float = NO_CLICK

    def probability(
        self, image: np.ndarray, points: np.ndarray, labels: np.ndarray, label: str = ""
    ) -> np.ndarray:
        """The probability map at the working size of the clicks (image pixels) on ``image``
        for the object of ``label``."""
        maps = image_maps(image)
        height, width = maps[0].shape
        factor = np.array([width / image.shape[1], height / image.shape[0]], np.float32)
        # Pixel centres to pixel centres, as training places its clicks.
        working = (points + 0.5) * factor - 0.5
        return self.working_probability(maps, working, labels, self.index(label))

    def index(self, label: str) -> int | None:
        """The label's index among those the model knows (None: it knows none by that name)."""
        return self.labels.index(label) if label in self.labels else None

    def working_probability(
        self,
        maps: list[np.ndarray],
        points: np.ndarray,
        labels: np.ndarray,
        label: int | None = None,
    ) -> np.ndarray:
        """The probability map of the image's maps and the clicks on them (working pixels).

        Only the window within ``reach`` of a positive click is read (0 beyond it), coarse to
        fine from every ``STRIDE``-th pixel, and around each positive click pixel by pixel (its
        object may lie between the coarse pixels)."""
        height, width = maps[0].shape
        # A click on the right or bottom edge (100% in Label Studio), or a box's middle
        # beyond the image, is in the last pixel.
        positives = np.clip(points[labels == 1], 0, [width - 1, height - 1])
        margin = self.reach * max(height, width)
        x0, y0 = np.floor(positives.min(axis=0) - margin).astype(int)
        x1, y1 = np.ceil(positives.max(axis=0) + margin).astype(int) + 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        read = np.zeros((y1 - y0, x1 - x0), bool)
        for x, y in positives - np.array([x0, y0], np.float32):
            column, row = int(x), int(y)
            rows = slice(max(row - STRIDE, 0), row + STRIDE + 1)
            read[rows, max(column - STRIDE, 0) : column + STRIDE + 1] = True
        window = (x0, y0, x1, y1)
        cut = click_maps(maps, points, labels, window, label, len(self.labels))
        probability = np.zeros((height, width), np.float32)
        log_odds = self.trees.log_odds_map(cut, stride=STRIDE, read=read)
        probability[y0:y1, x0:x1] = _sigmoid(log_odds)
        return probability

    def mask(
        self, image: np.ndarray, prompts: Prompts, label: str = ""
    ) -> tuple[np.ndarray, float]:
        """The clicked object's mask (H, W) on ``image``, the person having chosen ``label``,
        and the trees' mean probability in it; all False (and 0) with no positive prompt."""
        height, width = image.shape[:2]
        points, labels = clicks_of(prompts)
        if not (labels == 1).any():
            return np.zeros((height, width), bool), 0.0
        small = self.probability(image, points, labels, label)
        full = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
        mask = self.cut(full, points, labels, prompts.box)
        return mask, float(full[mask].mean()) if mask.any() else 0.0

    def cut(
        self,
        probability: np.ndarray,
        points: np.ndarray,
        labels: np.ndarray,
        box: np.ndarray | None = None,
    ) -> np.ndarray:
        """The mask of a probability map: above the cut, the clicked parts, holes filled. A
        positive click the cut leaves out adds the part around it cut at its own probability
        (never below ``FLOOR``); the rest of the map keeps the cut."""
        height, width = probability.shape
        columns = np.clip(np.floor(points[:, 0]).astype(int), 0, width - 1)
        rows = np.clip(np.floor(points[:, 1]).astype(int), 0, height - 1)
        above = probability > self.trees.threshold
        for row, column in zip(rows[labels == 1], columns[labels == 1], strict=True):
            own = float(probability[row, column])
            if above[row, column] or own <= FLOOR:
                continue
            _, parts = cv2.connectedComponents((probability >= own).astype(np.uint8), 8)
            above |= parts == parts[row, column]
        if box is not None:
            x0, y0, x1, y1 = np.round(box).astype(int)
            inside = np.zeros_like(above)
            inside[max(y0, 0) : max(y1, 0) + 1, max(x0, 0) : max(x1, 0) + 1] = True
            above &= inside
        kept = clicked_parts(above, points, labels)
        return np.zeros_like(above) if kept is None else fill_holes(kept)

    def to_state(self) -> dict[str, torch.Tensor]:
        state = LearnedRefiner({NAME: self.trees}).to_state(PREFIX)
        state[f"{PREFIX}{NAME}.reach"] = torch.tensor(self.reach, dtype=torch.float64)
        # The label names as UTF-8 JSON bytes: a tensor, so the checkpoint loads weights-only.
        names = list(json.dumps(list(self.labels)).encode())
        state[f"{PREFIX}{NAME}.labels"] = torch.tensor(names, dtype=torch.uint8)
        return state

    @classmethod
    def from_state(
        cls, state: Mapping[str, torch.Tensor], source: str = "", device: str = "cpu"
    ) -> ClickModel | None:
        """The model saved by ``to_state``; None where the checkpoint has none (a project
        with no masks yet, or a checkpoint from before the click model).

        Raises:
            CheckpointError: its trees are incomplete, or read features this camsam does not
                compute.
        """
        loaded = LearnedRefiner.from_state(state, source, device, PREFIX).classes
        if NAME not in loaded:
            return None
        names = state.get(f"{PREFIX}{NAME}.labels")
        labels = tuple(json.loads(bytes(names.tolist()))) if names is not None else ()
        trees = loaded[NAME]
        if int(np.max(trees.nodes["feature_idx"], initial=0)) >= features(len(labels)):
            raise CheckpointError(
                f"checkpoint {source} has a click model that reads more features than this "
                "camsam computes (another camsam version wrote it): retrain the model"
            )
        return cls(trees, labels, float(state.get(f"{PREFIX}{NAME}.reach", NO_CLICK)))
