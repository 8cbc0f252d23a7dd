"""Binary mask arithmetic shared by the refiners, the segmenters, training and evaluation."""

from __future__ import annotations

import cv2
import numpy as np


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill regions the mask encloses: a spot whose rim differs from the surface but whose middle
    matches it is still one solid defect."""
    padded = np.pad(mask.astype(np.uint8), 1)
    outside = padded.copy()
    flood = np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8)
    cv2.floodFill(outside, flood, (0, 0), 1)
    holes = outside[1:-1, 1:-1] == 0
    return mask | holes


def largest_part(mask: np.ndarray) -> np.ndarray:
    """Only the largest connected part: one blowhole, one crack."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    if count <= 2:
        return mask.astype(bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def major_parts(mask: np.ndarray, share: float) -> np.ndarray:
    """The connected parts at least ``share`` of the largest one's area (0: every part)."""
    if share <= 0:
        return mask.astype(bool)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    if count <= 2:
        return mask.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    return np.isin(labels, np.flatnonzero(areas >= share * areas.max()) + 1)


def remove_specks(mask: np.ndarray, min_area: float) -> np.ndarray:
    """Drop connected parts smaller than ``min_area`` of the image (but never the largest)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    if count <= 2:
        return mask.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = areas >= min_area * mask.size
    keep[int(np.argmax(areas))] = True
    return np.isin(labels, np.nonzero(keep)[0] + 1)


def clicked_parts(mask: np.ndarray, points: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
    """The connected parts of ``mask`` a positive click falls in, less, inside them, what lies
    nearer a negative click there than any positive one; None when nothing is left.
    ``points``: (N, 2) x, y pixels; ``labels``: 1 positive, 0 negative."""
    _, parts = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    height, width = mask.shape
    points = np.asarray(points, np.float32).reshape(-1, 2)
    # A click at the right or bottom edge (100% in Label Studio) is in the last pixel.
    columns = np.clip(np.floor(points[:, 0]).astype(int), 0, width - 1)
    rows = np.clip(np.floor(points[:, 1]).astype(int), 0, height - 1)
    hit = parts[rows, columns]
    positive = np.asarray(labels) == 1
    chosen = sorted(set(hit[positive & (hit > 0)].tolist()))
    if not chosen:
        return None
    kept = np.isin(parts, chosen)
    inside = np.isin(hit, chosen)
    negatives = ~positive & inside
    if negatives.any():
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)

        def nearest(selected: np.ndarray) -> np.ndarray:
            best = np.full((height, width), np.inf, np.float32)  # one map, however many clicks
            for x, y in points[selected]:
                np.minimum(best, (xs - x) ** 2 + (ys - y) ** 2, out=best)
            return best

        kept &= nearest(negatives) >= nearest(positive & inside)
    return kept if kept.any() else None
