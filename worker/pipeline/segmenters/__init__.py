"""Segmenters: one mask per class from the image, its CAMs and their prompts.

``sam2`` asks SAM2 (the image embedded once, one decode per class) and picks one of its three
masks; ``cam`` refines the CAM itself along image edges and needs no SAM2 weights; ``threshold``
is the bare CAM cut at half its peak, the floor the others must beat.

Each is a :class:`worker.pipeline.segmenters.base.Segmenter` subclass named here by dotted path
(reading the names imports no torch) and built by ``from_options``. A new segmenter is one file,
one line here and its test (``docs/architecture.md``).
"""

from __future__ import annotations

SEGMENTERS = {
    "sam2": "worker.pipeline.segmenters.sam2.Sam2Segmenter",
    "cam": "worker.pipeline.segmenters.cam.CamSegmenter",
    "threshold": "worker.pipeline.segmenters.threshold.ThresholdSegmenter",
}
MASK_CHOICES = ("cam", "best-iou", "0", "1", "2")  # which of SAM's three masks (see sam2.py)
