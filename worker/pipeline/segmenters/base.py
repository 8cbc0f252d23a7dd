"""What every segmenter is: the result type, the options it is built from, and the base class.

A segmenter reads numpy images, the CAMs of the classes to segment and their prompts, and returns
one :class:`MaskResult` per CAM. It builds itself from :class:`SegmenterOptions` and the loaded
classifier (whose checkpoint may carry what training chose for it), and reports its own cache
figures, so the pipeline never needs to know which one it holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from worker.contract.errors import SegmenterError
from worker.contract.registry import lookup
from worker.pipeline.cam.base import CamMap
from worker.pipeline.prompts import Prompts, seed_cam
from worker.pipeline.segmenters import SEGMENTERS


@dataclass(frozen=True)
class MaskResult:
    """One class's mask at the image's size and how it was made."""

    label: str
    mask: np.ndarray
    score: float
    segmenter: str
    prompts: Prompts | None = None
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SegmenterOptions:
    """What a segmenter is built from, besides the classifier: the settings of the command line
    or the backend (``SAM2_*``, ``CAM_REFINER``)."""

    sam2_config: str | None = None
    sam2_checkpoint: str | Path | None = None
    sam2_hub_id: str | None = None
    mask_choice: str = "cam"
    refiner: str | None = None  # the cam segmenter's refiner for every class (None: as trained)
    device: str = "cpu"

    @property
    def has_sam2(self) -> bool:
        return bool(self.sam2_checkpoint or self.sam2_hub_id)


class Segmenter(ABC):
    """The base class: ``segment`` is what a segmenter must do; the rest has defaults."""

    name = ""

    @classmethod
    def from_options(cls, options: SegmenterOptions, classifier) -> Segmenter:
        """Build from ``options`` and the loaded classifier. Raises: SegmenterError."""
        return cls()

    @abstractmethod
    def segment(
        self, image: np.ndarray, cams: Sequence[CamMap], prompts: Sequence[Prompts]
    ) -> list[MaskResult]: ...

    def segment_batch(
        self,
        images: Sequence[np.ndarray],
        cams: Sequence[Sequence[CamMap]],
        prompts: Sequence[Sequence[Prompts]],
    ) -> list[list[MaskResult]]:
        """A batch, one image at a time: for segmenters with nothing to share between images."""
        return [self.segment(*args) for args in zip(images, cams, prompts, strict=True)]

    def for_prompts(self) -> Segmenter:
        """This segmenter for a CAM that a person's click or box has focused."""
        return self

    def click(self, image: np.ndarray, label: str, prompts: Prompts) -> MaskResult | None:
        """A person's prompt answered without the class's CAM (a click model's mask); None
        where this segmenter reads the CAM the prompt focuses."""
        return None

    def focus(self, cam: np.ndarray, prompts: Prompts) -> np.ndarray:
        """The CAM focused by a person's prompt, as this segmenter reads it (``seed_cam``)."""
        return seed_cam(cam, prompts)

    def cache_stats(self) -> dict[str, int] | None:
        """Hits and misses of the segmenter's image cache (None: it keeps none)."""
        return None

    @property
    def precision(self) -> str | None:
        """The precision its model runs in on its device (None: no model of its own)."""
        return None


def build_segmenter(name: str, options: SegmenterOptions, classifier) -> Segmenter:
    """The segmenter registered as ``name``, built for ``classifier``.

    Raises:
        SegmenterError: an unknown name, or a segmenter that cannot be built (a sam2 segmenter
            without weights, say).
    """
    return lookup(SEGMENTERS, name, "segmenter", SegmenterError).from_options(options, classifier)
