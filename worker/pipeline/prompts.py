"""From a CAM to SAM prompts: points (positive and negative) and a box, in image pixels.

``argmax`` is the single brightest point, the weakest prompt, kept as a baseline. The default,
``peaks+box``, gives SAM the box of the CAM's main region, separated CAM peaks inside that region
as positive points, and low-CAM points around it as negatives (they tell SAM where the object
stops). The prompts agree with each other, since SAM2 obeys boxes and negative points closely:
no positive lies outside the box, and negatives keep a margin from the box, because a CAM covers
less of an object than the object itself.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from worker.contract.errors import CamsamError

STRATEGIES = ("argmax", "peaks", "box", "peaks+box")


@dataclass(frozen=True)
class Prompts:
    """Points as (N, 2) float x, y pixels; labels (N,) 1 = object, 0 = background; XYXY box.

    ``others``: the prompts of the class's other objects (separate CAM regions), each with a
    box of its own; a segmenter that prompts per object (SAM2) draws each and joins them.
    """

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None = None
    others: tuple[Prompts, ...] = ()

    @property
    def positives(self) -> np.ndarray:
        return self.points[self.labels == 1]

    @property
    def negatives(self) -> np.ndarray:
        return self.points[self.labels == 0]

    def scaled(self, x: float, y: float) -> Prompts:
        """The same prompts on the image scaled by ``x`` across and ``y`` down."""
        factor = np.array([x, y], np.float32)
        box = None if self.box is None else self.box * np.tile(factor, 2)
        others = tuple(other.scaled(x, y) for other in self.others)
        return Prompts(self.points * factor, self.labels, box, others)

    def to_dict(self) -> dict:
        found = {
            "points": self.points.round(1).tolist(),
            "labels": self.labels.tolist(),
            "box": None if self.box is None else self.box.round(1).tolist(),
        }
        if self.others:
            found["others"] = [other.to_dict() for other in self.others]
        return found


PROMPT_SIDE = 256


def make_prompts(
    cam: np.ndarray,
    strategy: str = "peaks+box",
    max_peaks: int = 3,
    max_negatives: int = 2,
    peak_threshold: float = 0.5,
    box_threshold: float = 0.35,
    max_objects: int = 4,
) -> Prompts:
    """Prompts for one class's CAM (H, W, values in [0, 1]): the main region's, with those of
    up to ``max_objects - 1`` other regions whose own peak reaches ``peak_threshold`` in
    ``others`` (not for ``argmax``, a single point).

    Raises:
        CamsamError: an unknown strategy.
    """
    if strategy not in STRATEGIES:
        raise CamsamError(f"unknown prompt strategy {strategy!r}: choose one of {STRATEGIES}")
    scale = max(cam.shape) / PROMPT_SIDE
    if scale > 1:
        # A CAM is a few cells upsampled: finding prompts on a smaller copy loses nothing, and
        # the peak search's wide dilation costs the square of the side.
        height, width = (max(1, round(n / scale)) for n in cam.shape)
        small = cv2.resize(cam, (width, height), interpolation=cv2.INTER_AREA)
        found = make_prompts(
            small, strategy, max_peaks, max_negatives, peak_threshold, box_threshold, max_objects
        )
        return found.scaled(cam.shape[1] / width, cam.shape[0] / height)
    if strategy == "argmax":
        y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
        return Prompts(np.array([[x, y]], dtype=np.float32), np.array([1], dtype=np.int32))
    main, *others = [
        object_prompts(cam, region, strategy, max_peaks, max_negatives, peak_threshold)
        for region in object_regions(cam, box_threshold, peak_threshold, max_objects)
    ]
    return replace(main, others=tuple(others))


def object_prompts(
    cam: np.ndarray,
    region: np.ndarray,
    strategy: str,
    max_peaks: int,
    max_negatives: int,
    peak_threshold: float,
) -> Prompts:
    """One object's prompts: its region's box, peaks inside the region, negatives around."""
    box = box_of(region)
    if strategy == "box":
        return Prompts(np.zeros((0, 2), np.float32), np.zeros(0, np.int32), box)
    positives = find_peaks(np.where(region, cam, 0), max_peaks, peak_threshold)
    negatives = find_negatives(cam, box, max_negatives)
    points = np.concatenate([positives, negatives]).astype(np.float32)
    labels = np.array([1] * len(positives) + [0] * len(negatives), dtype=np.int32)
    return Prompts(points, labels, box if strategy == "peaks+box" else None)


def object_regions(
    cam: np.ndarray, threshold: float, peak_threshold: float, count: int
) -> list[np.ndarray]:
    """The connected CAM regions (at ``threshold`` of the CAM's peak): the one holding the
    peak first, then up to ``count - 1`` others whose own peak reaches ``peak_threshold``,
    strongest first."""
    above = (cam >= threshold * float(cam.max())).astype(np.uint8)
    found, components = cv2.connectedComponents(above)
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    main = int(components[y, x])
    peaks = np.zeros(found, np.float32)
    np.maximum.at(peaks, components.ravel(), cam.ravel())
    others = [k for k in range(1, found) if k != main and peaks[k] >= peak_threshold]
    others.sort(key=lambda k: -peaks[k])
    return [components == k for k in [main, *others[: count - 1]]]


def find_peaks(cam: np.ndarray, count: int, threshold: float) -> np.ndarray:
    """Up to ``count`` local maxima at or above ``threshold``, strongest first, kept apart."""
    separation = max(3, int(0.08 * max(cam.shape)))
    # A square window is separable (cheap at any size); the distance check below keeps peaks apart.
    kernel = np.ones((2 * separation + 1,) * 2, np.uint8)
    is_peak = (cam >= cv2.dilate(cam, kernel)) & (cam >= threshold)
    ys, xs = np.nonzero(is_peak)
    order = np.argsort(-cam[ys, xs], kind="stable")
    chosen: list[tuple[int, int]] = []
    for index in order:
        x, y = int(xs[index]), int(ys[index])
        if all((x - cx) ** 2 + (y - cy) ** 2 >= separation**2 for cx, cy in chosen):
            chosen.append((x, y))
        if len(chosen) == count:
            break
    if not chosen:
        y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
        chosen = [(int(x), int(y))]
    return np.array(chosen, dtype=np.float32).reshape(-1, 2)


def find_negatives(cam: np.ndarray, box: np.ndarray, count: int) -> np.ndarray:
    """Low-CAM points in a ring around the box, a margin away from it: where the object is known
    to stop. The margin (a quarter of the box's larger side) is room for the object's parts the
    CAM did not light up; the first negative is the nearest such point, the next ones spread."""
    if count == 0:
        return np.zeros((0, 2), np.float32)
    height, width = cam.shape
    x0, y0, x1, y1 = box
    margin = 0.25 * max(x1 - x0, y1 - y0) + 2
    pad_x, pad_y = 0.5 * (x1 - x0) + margin + 4, 0.5 * (y1 - y0) + margin + 4
    ring = np.zeros_like(cam, dtype=bool)
    ring[
        int(max(0, y0 - pad_y)) : int(min(height, y1 + pad_y + 1)),
        int(max(0, x0 - pad_x)) : int(min(width, x1 + pad_x + 1)),
    ] = True
    ring[
        int(max(0, np.floor(y0 - margin))) : int(np.ceil(y1 + margin)) + 1,
        int(max(0, np.floor(x0 - margin))) : int(np.ceil(x1 + margin)) + 1,
    ] = False
    ring &= cam < 0.15
    if not ring.any():
        return np.zeros((0, 2), np.float32)
    ys, xs = np.nonzero(ring)
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    candidates = np.stack([xs, ys], axis=1).astype(np.float32)
    distance = np.linalg.norm(candidates - centre, axis=1)
    chosen = [candidates[int(np.argmin(distance))]]
    while len(chosen) < count:
        gaps = np.min([np.linalg.norm(candidates - c, axis=1) for c in chosen], axis=0)
        best = int(np.argmax(gaps))
        if gaps[best] < 4:
            break
        chosen.append(candidates[best])
    return np.array(chosen, dtype=np.float32)


def box_of(region: np.ndarray) -> np.ndarray:
    """The XYXY box of a region's pixels."""
    ys, xs = np.nonzero(region)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)


def main_region_box(cam: np.ndarray, threshold: float) -> np.ndarray:
    """XYXY box of the connected CAM region (at ``threshold`` of its peak) holding the peak."""
    (main,) = object_regions(cam, threshold, peak_threshold=1.0, count=1)
    return box_of(main)


def seed_cam(cam: np.ndarray, prompts: Prompts) -> np.ndarray:
    """A CAM focused by a person's prompt: kept near positive clicks, cut outside the box and
    near negative clicks. Used when there is no SAM2 to read the clicks itself.
    """
    height, width = cam.shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    sigma = 0.12 * max(height, width)
    focus = np.ones_like(cam, dtype=np.float32)
    if len(prompts.positives):
        near = [
            np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)) for x, y in prompts.positives
        ]
        focus = np.max(near, axis=0)
    for x, y in prompts.negatives:
        focus *= 1.0 - np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * (sigma / 2) ** 2))
    if prompts.box is not None:
        x0, y0, x1, y1 = prompts.box
        focus *= (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    # The person's prompt outranks the classifier: where the CAM is silent, the focus still counts.
    relative = cam.astype(np.float32) / max(float(cam.max()), 1e-6)
    seeded = focus * (0.2 + 0.8 * relative)
    return seeded / max(float(seeded.max()), 1e-6)
