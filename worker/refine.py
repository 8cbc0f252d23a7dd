"""Turning a blobby CAM into a mask that follows the image's edges, without SAM.

A CAM from a 7x7 feature map knows roughly where an object is but not where it stops. The guided
filter (He et al.) re-draws the CAM along the image's own edges in linear time; GrabCut, seeded
by a CAM trimap, is the heavier alternative. Thresholds are relative to the CAM's peak.
"""

from __future__ import annotations

import cv2
import numpy as np

from worker.errors import SegmenterError

REFINERS = ("guided", "grabcut", "none")


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Edge-preserving smoothing of ``source`` steered by the grayscale ``guide`` (both float)."""
    size = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, cv2.CV_32F, size, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = box(guide), box(source)
    var_i = box(guide * guide) - mean_i * mean_i
    cov_ip = box(guide * source) - mean_i * mean_p
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)


def refine_cam(
    image: np.ndarray,
    cam: np.ndarray,
    method: str = "guided",
    threshold: float = 0.5,
    min_area: float = 0.0005,
) -> np.ndarray:
    """Binary mask (H, W) for one class from its CAM and the RGB image.

    Raises:
        SegmenterError: an unknown refinement method.
    """
    if method not in REFINERS:
        raise SegmenterError(f"unknown refiner {method!r}: choose one of {REFINERS}")
    cam = cam.astype(np.float32) / max(float(cam.max()), 1e-6)
    if method == "none":
        return cam >= threshold
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    radius = max(2, int(round(0.02 * max(cam.shape))))
    smoothed = guided_filter(gray, cam, radius, eps=1e-3)
    if method == "guided":
        mask = smoothed >= threshold
    else:
        mask = _grabcut(image, smoothed, threshold)
    return remove_specks(mask, min_area)


def _grabcut(image: np.ndarray, cam: np.ndarray, threshold: float) -> np.ndarray:
    trimap = np.full(cam.shape, cv2.GC_BGD, dtype=np.uint8)
    trimap[cam >= 0.5 * threshold] = cv2.GC_PR_BGD
    trimap[cam >= threshold] = cv2.GC_PR_FGD
    trimap[cam >= min(0.95, 1.6 * threshold)] = cv2.GC_FGD
    if not (trimap == cv2.GC_BGD).any() or not (trimap >= cv2.GC_PR_FGD).any():
        return cam >= threshold
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    cv2.grabCut(bgr, trimap, None, background, foreground, 3, cv2.GC_INIT_WITH_MASK)
    return (trimap == cv2.GC_FGD) | (trimap == cv2.GC_PR_FGD)


def remove_specks(mask: np.ndarray, min_area: float) -> np.ndarray:
    """Drop connected parts smaller than ``min_area`` of the image (but never the largest)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    if count <= 2:
        return mask.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = areas >= min_area * mask.size
    keep[int(np.argmax(areas))] = True
    return np.isin(labels, np.nonzero(keep)[0] + 1)
