"""How one class's CAM becomes a mask: the settings (``RefineParams``) and ``refine_cam``, which
runs the refiner the settings name (see :mod:`worker.pipeline.refiners` for the list).

Settings can be chosen per class on training images with masks
(:mod:`worker.training.tune_refiners`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from worker.contract.errors import SegmenterError
from worker.contract.registry import resolve
from worker.pipeline.refiners import HAND_MADE, REFINERS
from worker.pipeline.signals import POLARITIES, contrast_map, ridge_map

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


def refine_cam(
    image: np.ndarray,
    cam: np.ndarray,
    params: RefineParams | None = None,
    signal: np.ndarray | None = None,
    min_area: float = 0.0005,
) -> np.ndarray:
    """Binary mask (H, W) for one class from its CAM and the RGB image.

    ``signal`` (``signal_map``) may be passed in when one image is refined many times (tuning).

    Raises:
        SegmenterError: ``params`` names the learned refiner, which needs its trained trees.
    """
    params = params or RefineParams()
    if params.method not in HAND_MADE:
        raise SegmenterError(
            "the learned refiner needs the trees trained with the model: use the cam segmenter "
            "of a checkpoint that has them"
        )
    cam = cam.astype(np.float32) / max(float(cam.max()), 1e-6)
    return resolve(HAND_MADE[params.method])(image, cam, params, signal, min_area)


def to_plain(params: dict[str, RefineParams]) -> dict[str, dict]:
    """Per-class settings as plain values, for the checkpoint's spec."""
    return {label: asdict(p) for label, p in params.items()}


def from_plain(plain: dict[str, dict]) -> dict[str, RefineParams]:
    return {label: RefineParams(**p) for label, p in plain.items()}


def signal_map(image: np.ndarray, params: RefineParams) -> np.ndarray:
    """The per-pixel signal a signal refiner cuts (see ``RefineParams.signal_key``)."""
    if params.method == "ridge":
        return ridge_map(image, params.polarity)
    return contrast_map(image, params.polarity, params.scale)
