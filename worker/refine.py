"""Turning a blobby CAM into a mask that follows the image, without SAM.

A CAM from a 7x7 feature map knows roughly where an object is but not where it stops.

- ``guided``: the guided filter (He et al.) re-draws the CAM along the image's own edges in
  linear time, then cuts it at a share of its peak.
- ``contrast``: inside the CAM's region, the pixels that differ from their local background
  (``texture_residual``) by more than a number of robust standard deviations, or by more than a
  share of the strongest difference there: a blowhole or a crack is what the surface around it
  is not. Darker only, brighter only, or both; against a narrower or wider background.
- ``ridge``: the same with a Hessian line filter, for thin dark (or bright) lines: cracks.
- ``grabcut``: GrabCut seeded by a CAM trimap, the heavier alternative.
- ``learned``: per-pixel trees trained on the project's masks (``worker/learned_refine.py``);
  it needs its trained model, so the cam segmenter runs it, not ``refine_cam``.

Thresholds can be chosen per class on training images with masks (``worker/tune.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from worker.errors import SegmenterError

REFINERS = ("guided", "contrast", "ridge", "grabcut", "none", "learned")
POLARITIES = ("both", "dark", "bright")
SIGNAL_REFINERS = ("contrast", "ridge")  # those that cut a per-pixel signal inside the CAM


@dataclass(frozen=True)
class RefineParams:
    """How to turn one class's CAM into a mask.

    ``cam_threshold`` is a share of the CAM's peak. The signal refiners then keep the pixels
    whose signal reaches ``contrast_threshold`` robust standard deviations or, when ``relative``
    is set, that share of the strongest signal inside the CAM's region. ``scale`` is the
    background's width as a share of the image's longer side; ``largest`` keeps one part.
    """

    method: str = "guided"
    cam_threshold: float = 0.5
    contrast_threshold: float = 3.0
    polarity: str = "both"
    scale: float = 1 / 16
    relative: float = 0.0
    largest: bool = False

    def __post_init__(self) -> None:
        if self.method not in REFINERS:
            raise SegmenterError(f"unknown refiner {self.method!r}: choose one of {REFINERS}")
        if self.polarity not in POLARITIES:
            raise SegmenterError(f"unknown polarity {self.polarity!r}: choose one of {POLARITIES}")

    @property
    def signal_key(self) -> tuple:
        """What the per-pixel signal depends on: images refined many ways share it."""
        return (self.method, self.polarity, self.scale)


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


def signal_map(image: np.ndarray, params: RefineParams) -> np.ndarray:
    """The per-pixel signal a signal refiner cuts (see ``RefineParams.signal_key``)."""
    if params.method == "ridge":
        return ridge_map(image, params.polarity)
    return contrast_map(image, params.polarity, params.scale)


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
    params: RefineParams | None = None,
    signal: np.ndarray | None = None,
    min_area: float = 0.0005,
) -> np.ndarray:
    """Binary mask (H, W) for one class from its CAM and the RGB image.

    ``signal`` (``signal_map``) may be passed in when one image is refined many times (tuning).
    """
    params = params or RefineParams()
    if params.method == "learned":
        raise SegmenterError(
            "the learned refiner needs the trees trained with the model: use the cam segmenter "
            "of a checkpoint that has them"
        )
    cam = cam.astype(np.float32) / max(float(cam.max()), 1e-6)
    threshold = params.cam_threshold
    if params.method == "none":
        return cam >= threshold
    if params.method in SIGNAL_REFINERS:
        signal = signal_map(image, params) if signal is None else signal
        region = cam >= threshold
        cut = params.contrast_threshold
        if params.relative:
            cut = max(params.relative * float(signal[region].max(initial=0.0)), 1e-6)
        mask = region & (signal >= cut)
        if not mask.any():
            return cam >= max(threshold, 0.5)
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
        mask = fill_holes(mask.astype(bool))
        return largest_part(mask) if params.largest else remove_specks(mask, min_area)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    radius = max(2, int(round(0.02 * max(cam.shape))))
    smoothed = guided_filter(gray, cam, radius, eps=1e-3)
    if params.method == "guided":
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
