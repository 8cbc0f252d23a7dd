"""Per-pixel image signals: how a pixel differs from the texture around it, and line strength.

Shared by the classifier's ``flat`` input encoding, the signal refiners and the learned
refiner's features.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

POLARITIES = ("both", "dark", "bright")


def texture_residual(gray: np.ndarray, sigma: float) -> np.ndarray:
    """Signed difference from the local background (a wide blur), in robust standard deviations."""
    gray = gray.astype(np.float32)
    residual = gray - background(gray, sigma)
    sample = np.abs(residual[::2, ::2])  # a robust spread needs no more than a quarter
    spread = 1.4826 * float(np.median(sample)) + 1e-3 * float(gray.max() + 1)
    return residual / spread


def background(gray: np.ndarray, sigma: float) -> np.ndarray:
    """A wide Gaussian blur of ``gray``. The blurred surface has no detail finer than ``sigma``,
    so it is computed on a copy shrunk until ``sigma`` is 4 px and scaled back up: the cost of a
    wide blur falls with the square of the shrink."""
    shrink = max(1.0, sigma / 4.0)
    if shrink < 2:
        return cv2.GaussianBlur(gray, (0, 0), sigma)
    height, width = gray.shape
    size = (max(1, round(width / shrink)), max(1, round(height / shrink)))
    small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(small, (0, 0), sigma * size[0] / width)
    return cv2.resize(blurred, (width, height), interpolation=cv2.INTER_LINEAR)


def contrast_map(image: np.ndarray, polarity: str = "both", scale: float = 1 / 16) -> np.ndarray:
    """How unusual each pixel is against the texture around it (>= 0, lightly smoothed):
    darker, brighter or either, against a background ``scale`` of the longer side wide."""
    return contrast_maps(image, scale, (polarity,))[polarity]


def contrast_maps(
    image: np.ndarray, scale: float, polarities: Sequence[str] = POLARITIES
) -> dict[str, np.ndarray]:
    """``contrast_map`` for several polarities at one scale, sharing the one residual."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    z = texture_residual(gray, max(image.shape[:2]) * scale)
    signed = {
        "both": np.abs,
        "dark": lambda r: np.maximum(-r, 0),
        "bright": lambda r: np.maximum(r, 0),
    }
    return {p: cv2.GaussianBlur(signed[p](z), (0, 0), 1.5) for p in polarities}


def ridge_map(image: np.ndarray, polarity: str = "dark") -> np.ndarray:
    """Line strength (>= 0, in robust standard deviations) from the Hessian's eigenvalues at a
    scale of a few pixels: a dark line curves the brightness up across it, a bright one down."""
    return ridge_maps(image, (polarity,))[polarity]


def ridge_maps(image: np.ndarray, polarities: Sequence[str] = POLARITIES) -> dict[str, np.ndarray]:
    """``ridge_map`` for several polarities, sharing the one Hessian."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    sigma = max(1.5, max(image.shape[:2]) / 128)
    smooth = cv2.GaussianBlur(gray, (0, 0), sigma)
    dxx = cv2.Sobel(smooth, cv2.CV_32F, 2, 0)
    dyy = cv2.Sobel(smooth, cv2.CV_32F, 0, 2)
    dxy = cv2.Sobel(smooth, cv2.CV_32F, 1, 1)
    root = np.sqrt((dxx - dyy) ** 2 + 4 * dxy**2)
    dark, bright = np.maximum((dxx + dyy + root) / 2, 0), np.maximum(-(dxx + dyy - root) / 2, 0)
    maps = {}
    for polarity in polarities:
        line = {"dark": dark, "bright": bright}.get(polarity, np.maximum(dark, bright))
        maps[polarity] = line / (1.4826 * float(np.median(line[::2, ::2])) + 1e-3)
    return maps
