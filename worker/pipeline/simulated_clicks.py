"""Where a simulated person clicks: the interactive segmentation protocol's clicker.

Per object (a connected part of a class's mask): the first click at the object's interior point
farthest from its boundary, each next click at the interior point of the largest error region,
positive where the mask missed the object and negative where it spilled over. ``camsam eval
--clicks`` measures with it, the click model is trained on the clicks it places, and the
campaign's annotator clicks where it says.
"""

from __future__ import annotations

import cv2
import numpy as np

# Ground-truth parts smaller than this share of the image are specks, not objects to click.
MIN_OBJECT_SHARE = 1e-4


def objects(truth: np.ndarray) -> list[np.ndarray]:
    """The connected parts of a ground-truth mask, specks left out."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(truth.astype(np.uint8), 8)
    smallest = MIN_OBJECT_SHARE * truth.size
    return [labels == k for k in range(1, count) if stats[k, cv2.CC_STAT_AREA] >= smallest]


def interior_point(region: np.ndarray) -> tuple[float, float, float]:
    """The point of ``region`` farthest from its boundary (the image's edge counts as one):
    x, y in pixels and that distance (0 for an empty region)."""
    if not region.any():
        return 0.0, 0.0, 0.0
    padded = np.pad(region.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    farthest = distance.max()
    # Of a ridge of equally far points (a rectangle's middle line), the one at its middle.
    ridge = np.argwhere(distance >= farthest - 1e-6)
    y, x = ridge[int(np.argmin(((ridge - ridge.mean(axis=0)) ** 2).sum(axis=1)))]
    return float(x), float(y), float(farthest)


def next_click(
    truth: np.ndarray, predicted: np.ndarray, clicked: np.ndarray | None = None
) -> tuple[float, float, int] | None:
    """Where the next click goes: inside the largest error region, positive (1) in what the mask
    missed, negative (0) in what it spilled over (a tie is negative, as the field's clicker has
    it); never on a pixel already ``clicked``; None when there is no error left."""
    free = ~clicked if clicked is not None else np.ones_like(truth)
    mx, my, missed = interior_point(truth & ~predicted & free)
    sx, sy, spilled = interior_point(predicted & ~truth & free)
    if max(missed, spilled) == 0:
        return None
    return (mx, my, 1) if missed > spilled else (sx, sy, 0)
