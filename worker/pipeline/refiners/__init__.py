"""Refiners: turning a blobby CAM into a mask that follows the image, without SAM.

A CAM from a 7x7 feature map knows roughly where an object is but not where it stops. Each
hand-made refiner is a function ``refine(image, cam, params, signal, min_area) -> mask`` named
here by dotted path (looked up on use, so reading the names imports no image code):

- ``guided``: the guided filter (He et al.) re-draws the CAM along the image's own edges in
  linear time, then cuts it at a share of its peak.
- ``contrast``: inside the CAM's region, the pixels that differ from their local background by
  more than a number of robust standard deviations, or by more than a share of the strongest
  difference there: a blowhole or a crack is what the surface around it is not.
- ``ridge``: the same with a Hessian line filter, for thin dark (or bright) lines: cracks.
- ``grabcut``: GrabCut seeded by a CAM trimap, the heavier alternative.
- ``none``: the CAM cut at a share of its peak.

``learned`` (:mod:`worker.pipeline.refiners.learned`) is per-pixel trees trained with the
model on the project's masks: it needs its trees, so the cam segmenter runs it, not
:func:`worker.pipeline.refiners.base.refine_cam`. Training chooses a refiner per class.
"""

from __future__ import annotations

HAND_MADE = {
    "guided": "worker.pipeline.refiners.guided.refine_guided",
    "contrast": "worker.pipeline.refiners.signal.refine_signal",
    "ridge": "worker.pipeline.refiners.signal.refine_signal",
    "grabcut": "worker.pipeline.refiners.guided.refine_grabcut",
    "none": "worker.pipeline.refiners.threshold.refine_threshold",
}
REFINERS = (*HAND_MADE, "learned")
