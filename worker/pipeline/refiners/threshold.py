"""``none``: the CAM itself, cut at a share of its peak."""

from __future__ import annotations

import numpy as np


def refine_threshold(
    image, cam: np.ndarray, params, signal=None, min_area: float = 0.0
) -> np.ndarray:
    return cam >= params.cam_threshold
