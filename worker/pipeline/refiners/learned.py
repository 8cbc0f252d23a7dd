"""The learned refiner: which pixels of a class's CAM region are the defect, learned per class.

The hand-made refiners (:mod:`worker.pipeline.refiners`) each cut one signal; a class's defects
often need several at once (a blowhole is dark *and* round *and* where the CAM is; a break sits
at the tile's edge). Here gradient-boosted trees (scikit-learn's histogram boosting) read, per
pixel, the CAM, the dark, bright and two-sided contrast against three background widths (and the
darkest difference nearby), the line filters, the gray level, a band-pass, the local spread, the
distance to the border and the place in the frame, and say whether the pixel belongs to the
class's mask. One model per class, trained on the training images that carry masks (and some
defect-free ones, where every pixel is no), at a working size of ``SIDE`` px; the fitting is
:mod:`worker.training.learned_refiner`. The place in the frame helps where a fixed camera puts a
class's defects in some places more than others and misleads elsewhere, so the fitting decides
per class whether the trees may read it (``ClassTrees.frame``).

The cut on the trees' probability, and which parts of the cut mask to keep (every part, the
major ones, or only the largest), are chosen per class out of fold (see the fitting module).

The trees travel in the checkpoint as plain tensors (each node's feature, threshold, children
and value), so checkpoints still load with ``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

import cv2
import numpy as np
import torch

from worker.contract.errors import CheckpointError
from worker.pipeline.masks import major_parts
from worker.pipeline.refiners.device_trees import DeviceTrees
from worker.pipeline.signals import contrast_maps, ridge_maps

SIDE = 192
PREFIX = "refiner."  # state-dict keys of the learned refiner, beside the classifier's own
FIELDS = ("value", "feature_idx", "num_threshold", "missing_go_to_left", "left", "right", "is_leaf")
FEATURES = 25
FRAME_FEATURES = 3  # the last features: the distance to the border, the row and the column
SETTLED = 4.0  # log-odds from the cut (odds 55 to 1) at which a pixel between samples is settled
NO_CATEGORIES = np.zeros((0, 8), np.uint32)  # every feature is numeric
NO_FEATURE_MAP = np.zeros(0, np.uint32)
# The trees read a few thousand rows at a time; with a second OpenMP thread, waiting on a core
# that torch or another process holds, that took 2.7 times as long on 2 cores (docs/performance.md).
THREADS = 1


def pixel_features(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """Per-pixel features (h, w, FEATURES) of an RGB image and a class's CAM, at working size."""
    return np.stack(feature_maps(image, cam), axis=-1)


def feature_maps(image: np.ndarray, cam: np.ndarray, side: int = SIDE) -> list[np.ndarray]:
    """The FEATURES maps (h, w) of ``pixel_features``, float32, one per feature, the longer
    side ``side`` pixels."""
    height, width = image.shape[:2]
    scale = side / max(height, width)
    size = (max(8, round(width * scale)), max(8, round(height * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    region = cv2.resize(cam.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    maps = [region, cv2.GaussianBlur(region, (0, 0), 4)]
    polarities = ("dark", "bright", "both")
    shares = [contrast_maps(small, share, polarities) for share in (1 / 32, 1 / 16, 1 / 8)]
    maps += [by_polarity[polarity] for polarity in polarities for by_polarity in shares]
    near = np.ones((7, 7), np.uint8)
    maps += [cv2.dilate(dark, near) for dark in maps[2:5]]  # a dark difference close by
    for line in ridge_maps(small, ("dark", "bright")).values():
        maps += [line, cv2.dilate(line, np.ones((5, 5), np.uint8))]
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gray = (gray - gray.mean()) / (gray.std() + 1e-6)
    mean = cv2.GaussianBlur(gray, (0, 0), 3)
    spread = np.sqrt(np.maximum(cv2.GaussianBlur(gray * gray, (0, 0), 3) - mean * mean, 0))
    band = cv2.GaussianBlur(gray, (0, 0), 1) - cv2.GaussianBlur(gray, (0, 0), 8)
    maps += [gray, mean, spread, band, *_frame_maps(size)]
    return [m.astype(np.float32, copy=False) for m in maps]


@lru_cache(maxsize=8)
def _frame_maps(size: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Where in the frame (read only): the distance to the border, the row and the column.

    A fixed camera puts a class's defects in some places more than others."""
    rows, cols = np.mgrid[0 : size[1], 0 : size[0]].astype(np.float32)
    edge = np.minimum.reduce([rows, cols, size[1] - 1 - rows, size[0] - 1 - cols]) / max(size)
    maps = (edge, rows / size[1], cols / size[0])
    for frame in maps:
        frame.flags.writeable = False
    return maps


@dataclass(frozen=True)
class ClassTrees:
    """One class's boosted trees: node arrays of every tree, where each starts, and the cut."""

    nodes: Mapping[str, np.ndarray]
    starts: np.ndarray  # the first node of each tree, and the total at the end
    baseline: float
    threshold: float
    parts: float = 0.0  # keep the parts at least this share of the largest (0: every part)
    frame: bool = True  # whether the trees may read the place in the frame (else fitted blind)
    device: str = "cpu"  # where the trees are read: a CUDA device reads them as tensors

    @cached_property
    def _predictors(self) -> list:
        """scikit-learn's own compiled predictor for each tree, built once."""
        from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE
        from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor

        predictors = []
        for begin, end in zip(self.starts[:-1], self.starts[1:], strict=True):
            nodes = np.zeros(end - begin, PREDICTOR_RECORD_DTYPE)
            for field in FIELDS:
                nodes[field] = self.nodes[field][begin:end]
            predictors.append(TreePredictor(nodes, NO_CATEGORIES, NO_CATEGORIES))
        return predictors

    @cached_property
    def _on_device(self) -> DeviceTrees:
        return DeviceTrees(self.nodes, self.starts, self.baseline, self.device)

    def log_odds(self, features: np.ndarray) -> np.ndarray:
        """The trees' summed log-odds (n,) for each row of ``features`` (n, k)."""
        if torch.device(self.device).type == "cuda":  # float64 on the device: not on MPS
            return self._on_device.log_odds(features)
        rows = np.ascontiguousarray(features, dtype=np.float64)
        raw = np.full(len(rows), self.baseline)
        for tree in self._predictors:
            raw += tree.predict(rows, NO_CATEGORIES, NO_FEATURE_MAP, THREADS)
        return raw

    def probability(self, features: np.ndarray) -> np.ndarray:
        """The probability (n,) that each row of ``features`` (n, k) is inside the mask."""
        return _sigmoid(self.log_odds(features))

    def log_odds_map(
        self,
        maps: Sequence[np.ndarray],
        settled: float = SETTLED,
        stride: int = 2,
        read: np.ndarray | None = None,
    ) -> np.ndarray:
        """The log-odds map (h, w) of the feature maps (``feature_maps``), read coarse to fine.

        The trees read every ``stride``-th pixel of every ``stride``-th row first, then each
        grid of half the spacing in turn. A pixel of the finer grid whose (up to four) nearest
        pixels of the coarser one all lie ``settled`` log-odds or more on one side of the cut
        takes their bilinear interpolation, which lies on that side too; the trees read the
        others, and the pixels ``read`` marks (a person's clicks, whose object may be smaller
        than the coarse grid). Defects are small, so most of an image is settled far from the
        cut: at a stride of 2 the trees read about a quarter of its pixels.
        """
        height, width = maps[0].shape
        cut = float(np.log(self.threshold / (1 - self.threshold)))
        rows, cols = np.arange(0, height, stride), np.arange(0, width, stride)
        known = self.log_odds(np.stack([m[np.ix_(rows, cols)].ravel() for m in maps], axis=-1))
        known = known.reshape(len(rows), len(cols))
        while stride > 1:
            stride //= 2
            rows, cols = np.arange(0, height, stride), np.arange(0, width, stride)
            below = _neighbours(rows, stride, known.shape[0])
            beside = _neighbours(cols, stride, known.shape[1])
            corners = [known[np.ix_(r, c)] for r in below for c in beside]
            fine = sum(corners) / 4
            unsure = (np.maximum.reduce(corners) > cut - settled) & (
                np.minimum.reduce(corners) < cut + settled
            )
            if read is not None:
                unsure |= read[np.ix_(rows, cols)]
            unsure[::2, ::2] = False  # the coarser grid's own pixels were read
            if unsure.any():
                at = np.ix_(rows, cols)
                fine[unsure] = self.log_odds(np.stack([m[at][unsure] for m in maps], axis=-1))
            known = fine
        return known


def _neighbours(positions: np.ndarray, stride: int, count: int) -> list[np.ndarray]:
    """For pixels at ``positions`` on a grid of spacing ``stride``, the indices of the two
    nearest pixels (the same one twice for a pixel on it) of the grid twice as coarse."""
    index = positions // (2 * stride)
    odd = (positions // stride) % 2 == 1
    return [index, np.minimum(index + odd, count - 1)]


def blind(rows: np.ndarray) -> np.ndarray:
    """A copy of feature rows (n, FEATURES) with the place in the frame set to 0: trees fitted
    on such rows cannot split on it."""
    rows = np.array(rows)
    rows[:, -FRAME_FEATURES:] = 0.0
    return rows


def _sigmoid(raw: np.ndarray) -> np.ndarray:
    # clipped: exp(-raw) overflows for raw below -709, where the sigmoid is 0 to float precision
    return 1.0 / (1.0 + np.exp(-np.clip(raw, -60.0, 60.0)))


class LearnedRefiner:
    """The per-class trees of one checkpoint."""

    def __init__(self, classes: Mapping[str, ClassTrees]) -> None:
        self.classes = dict(classes)

    def __contains__(self, label: str) -> bool:
        return label in self.classes

    def mask(self, image: np.ndarray, cam: np.ndarray, label: str) -> np.ndarray:
        """The class's mask (H, W) on ``image`` from its CAM."""
        trees = self.classes[label]
        small = _sigmoid(trees.log_odds_map(feature_maps(image, cam))).astype(np.float32)
        height, width = image.shape[:2]
        full = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
        return major_parts(full > trees.threshold, trees.parts)

    def threshold(self, label: str) -> float:
        return self.classes[label].threshold

    def to_state(self, prefix: str = PREFIX) -> dict[str, torch.Tensor]:
        """Plain tensors under ``prefix``, to save beside the classifier's weights."""
        state = {}
        for label, trees in self.classes.items():
            key = f"{prefix}{label}."
            for field in FIELDS:
                values = np.asarray(trees.nodes[field])
                if values.dtype == np.uint32:  # children indices: a dtype every torch stores
                    values = values.astype(np.int64)
                state[key + field] = torch.from_numpy(values.copy())
            state[key + "starts"] = torch.from_numpy(trees.starts.astype(np.int64))
            state[key + "baseline"] = torch.tensor(trees.baseline, dtype=torch.float64)
            state[key + "threshold"] = torch.tensor(trees.threshold, dtype=torch.float64)
            state[key + "parts"] = torch.tensor(trees.parts, dtype=torch.float64)
            state[key + "frame"] = torch.tensor(float(trees.frame), dtype=torch.float64)
        return state

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, torch.Tensor],
        source: str = "",
        device: str = "cpu",
        prefix: str = PREFIX,
    ) -> LearnedRefiner:
        """The refiner saved by ``to_state`` under ``prefix`` (no keys: one with no classes),
        its trees read on ``device``.

        Raises:
            CheckpointError: a class's trees are incomplete.
        """
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            if key.startswith(prefix):
                label, _, field = key[len(prefix) :].rpartition(".")
                grouped.setdefault(label, {})[field] = value
        classes = {}
        for label, parts in grouped.items():
            missing = [f for f in (*FIELDS, "starts", "baseline", "threshold") if f not in parts]
            if missing:
                raise CheckpointError(
                    f"checkpoint {source} has an incomplete learned refiner for {label!r} "
                    f"(no {missing}): retrain the model"
                )
            nodes = {f: parts[f].numpy() for f in FIELDS}
            classes[label] = ClassTrees(
                nodes,
                parts["starts"].numpy(),
                float(parts["baseline"]),
                float(parts["threshold"]),
                float(parts.get("parts", 0.0)),  # checkpoints before the choice kept every part
                bool(parts.get("frame", 1.0)),  # and read the place in the frame
                device,
            )
        return cls(classes)


def split_state(
    state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...] = (PREFIX,)
) -> tuple[dict, dict]:
    """(the classifier's own weights, the tensors saved beside them under ``prefixes``: the
    learned refiner's, the click model's) of a checkpoint's state."""
    own = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    extras = {k: v for k, v in state.items() if k.startswith(prefixes)}
    return own, extras
