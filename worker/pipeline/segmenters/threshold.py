"""``threshold``: the bare CAM cut at half its peak, the floor the other segmenters must beat."""

from __future__ import annotations

from worker.pipeline.segmenters.base import MaskResult, Segmenter


class ThresholdSegmenter(Segmenter):
    name = "threshold"

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def segment(self, image, cams, prompts):
        return [
            MaskResult(c.label, c.cam >= self.threshold * c.cam.max(), c.probability, self.name, p)
            for c, p in zip(cams, prompts, strict=True)
        ]
