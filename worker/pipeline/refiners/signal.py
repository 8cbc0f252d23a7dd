"""``contrast`` and ``ridge``: inside the CAM's region, the pixels whose signal (difference from
the local background, or line strength) is strong: a blowhole or a crack is what the surface
around it is not. Darker only, brighter only, or both; against a narrower or wider background.
"""

from __future__ import annotations

import cv2
import numpy as np

from worker.pipeline.masks import fill_holes, largest_part, remove_specks
from worker.pipeline.refiners.base import signal_map


def refine_signal(image, cam: np.ndarray, params, signal=None, min_area: float = 0.0005):
    signal = signal_map(image, params) if signal is None else signal
    threshold = params.cam_threshold
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
