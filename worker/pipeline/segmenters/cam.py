"""``cam``: the CAM refined with the image itself, useful masks with no SAM2 checkpoint at all."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from worker.pipeline.clicker import ClickModel
from worker.pipeline.masks import clicked_parts
from worker.pipeline.prompts import seed_cam
from worker.pipeline.refiners.base import SIGNAL_REFINERS, RefineParams, from_plain, refine_cam
from worker.pipeline.refiners.learned import LearnedRefiner
from worker.pipeline.segmenters.base import MaskResult, Segmenter, SegmenterOptions


class CamSegmenter(Segmenter):
    """The CAM refined with the image itself: useful masks with no SAM2 checkpoint at all.

    ``per_class`` holds refinement settings tuned on training images (kept in the checkpoint);
    classes without them use ``default``. ``learned`` holds the per-class trees of the learned
    refiner; a class set to ``learned`` that has none falls back to the guided CAM.
    """

    name = "cam"

    @classmethod
    def from_options(cls, options: SegmenterOptions, classifier) -> CamSegmenter:
        """A ``refiner`` in ``options`` applies to every class; else each class gets what
        training chose for it (kept in the checkpoint), and the rest the guided CAM."""
        tuned = None if options.refiner else from_plain(classifier.spec.refine)
        source, device = classifier.source, options.device
        learned = LearnedRefiner.from_state(classifier.extras, source, device)
        clicker = ClickModel.from_state(classifier.extras, source, device)
        return cls(RefineParams(options.refiner or "guided"), tuned, learned, clicker)

    def __init__(
        self,
        default: RefineParams | None = None,
        per_class: Mapping[str, RefineParams] | None = None,
        learned: LearnedRefiner | None = None,
        clicker: ClickModel | None = None,
    ) -> None:
        self.default = default or RefineParams()
        self.per_class = dict(per_class or {})
        self.learned = learned or LearnedRefiner({})
        self.clicker = clicker

    def for_prompts(self) -> CamSegmenter:
        """This segmenter for a person's click or box (see ClickedCam)."""
        return ClickedCam(self.default, self.per_class, self.learned, self.clicker)

    def segment(self, image, cams, prompts):
        results = []
        for cam, prompt in zip(cams, prompts, strict=True):
            params = self.per_class.get(cam.label, self.default)
            if params.method == "learned":
                if cam.label in self.learned:
                    mask = self.learned.mask(image, cam.cam, cam.label)
                    details = {"refiner": "learned", "cut": self.learned.threshold(cam.label)}
                    results.append(
                        MaskResult(cam.label, mask, cam.probability, self.name, prompt, details)
                    )
                    continue
                params = RefineParams()
            mask = refine_cam(image, cam.cam, params)
            details = {"refiner": params.method, "cam_threshold": params.cam_threshold}
            if params.method in SIGNAL_REFINERS:
                details["contrast_threshold"] = params.contrast_threshold
                details.update(polarity=params.polarity, relative=params.relative)
            results.append(MaskResult(cam.label, mask, cam.probability, self.name, prompt, details))
        return results


class ClickedCam(CamSegmenter):
    """A person's clicks answered by the click model training fitted on the project's masks
    (:mod:`worker.pipeline.clicker`), for any label. Where the checkpoint has none, or it
    draws nothing, clicks pick and cut the parts of the class's own mask: the refiner training
    chose for the class (learned trees or hand-made) cuts the CAM the positive clicks focused,
    the parts a positive click falls in are kept, and a negative click inside one cuts away
    what lies nearer it than any positive click. Where no part of the trees' mask holds a
    positive click, the guided CAM's mask (what answered clicks before) is cut the same way; a
    mask with no part to keep (a label the classifier does not know is all CAM), or a box
    alone, answers whole.
    """

    def click(self, image, label, prompts):
        if self.clicker is None:
            return None
        mask, confidence = self.clicker.mask(image, prompts, label)
        if not mask.any():
            return None
        details = {"clicker": "trees", "cut": self.clicker.trees.threshold}
        return MaskResult(label, mask, confidence, self.name, prompts, details)

    def focus(self, cam, prompts):
        """Focused by the positive clicks (or the box) only: here a negative click cuts the
        clicked part itself, where seed_cam's hole around it (6% of the image wide) would take
        the part, and the object, away. A box with negative clicks alone is focused by all."""
        positive = prompts.labels == 1
        if positive.any():
            positives = prompts.points[positive]
            prompts = replace(prompts, points=positives, labels=prompts.labels[positive])
        return seed_cam(cam, prompts)

    def segment(self, image, cams, prompts):
        before = CamSegmenter(self.default, self.per_class)  # no trees: the guided CAM for them
        results = []
        for cam, prompt in zip(cams, prompts, strict=True):
            if prompt is None or not len(prompt.positives):
                results += before.segment(image, [cam], [prompt])
                continue
            (own,) = super().segment(image, [cam], [prompt])
            kept = clicked_parts(own.mask, prompt.points, prompt.labels)
            if kept is None and self.per_class.get(cam.label, self.default).method == "learned":
                (own,) = before.segment(image, [cam], [prompt])
                kept = clicked_parts(own.mask, prompt.points, prompt.labels)
            if kept is None:
                results.append(own)
            else:
                details = {**own.details, "parts": "clicked"}
                results.append(replace(own, mask=kept, details=details))
        return results
