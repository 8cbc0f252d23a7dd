"""``guided`` and ``grabcut``: the CAM re-drawn along the image's own edges, then cut."""

from __future__ import annotations

import cv2
import numpy as np

from worker.pipeline.masks import remove_specks


def refine_guided(image, cam: np.ndarray, params, signal=None, min_area: float = 0.0005):
    """The guided filter (He et al.) steers the CAM by the image in linear time."""
    return remove_specks(_smoothed(image, cam) >= params.cam_threshold, min_area)


def refine_grabcut(image, cam: np.ndarray, params, signal=None, min_area: float = 0.0005):
    """GrabCut seeded by a trimap of the guided CAM: the heavier alternative."""
    return remove_specks(_grabcut(image, _smoothed(image, cam), params.cam_threshold), min_area)


def _smoothed(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    radius = max(2, int(round(0.02 * max(cam.shape))))
    return guided_filter(gray, cam, radius, eps=1e-3)


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
