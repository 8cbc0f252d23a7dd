"""The whole pre-annotation of one image: classify, CAM, prompts, segment, (split instances).

A Pipeline is built once per process (models loaded and kept warm) and then run per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from worker.pipeline.cam.base import CamMap, cam_method, compute_cams
from worker.pipeline.classifier import Classifier, Prediction
from worker.pipeline.gate import passes
from worker.pipeline.prompts import Prompts, make_prompts
from worker.pipeline.segmenters.base import (
    MaskResult,
    Segmenter,
    SegmenterOptions,
    build_segmenter,
)


@dataclass(frozen=True)
class PipelineOptions:
    cam_method: str = "gradcam"
    cam_stages: int = 1
    prompt_strategy: str = "peaks+box"
    instances: bool = False
    min_instance_area: float = 0.0005
    gate: bool = True  # show a class's mask only above the threshold training chose for it


@dataclass(frozen=True)
class ImageResult:
    """What camsam says about one image, in the image's own (EXIF-transposed) pixels."""

    width: int
    height: int
    prediction: Prediction
    masks: tuple[MaskResult, ...]
    cams: tuple[CamMap, ...]
    held_back: tuple[MaskResult, ...] = ()  # masks the gate did not show (they still score)

    @property
    def score(self) -> float:
        """The prediction score Label Studio sorts by: low means label this image next.

        The classifier's confidence in its class set, times, for each mask, its own confidence
        and how clearly the Grad-CAM activation sets the masked region apart from the rest (a
        diffuse CAM marks an image the model has not understood yet).
        """
        focus = {c.label: c.cam for c in self.cams}
        masks = self.masks + self.held_back  # a held-back mask marks an image to label next
        mask_scores = [m.score * cam_contrast(focus.get(m.label), m.mask) for m in masks]
        return float(self.prediction.score * min(mask_scores, default=1.0))


def cam_contrast(cam: np.ndarray | None, mask: np.ndarray) -> float:
    """Mean activation inside the mask minus outside it, in [0, 1] (1 with no CAM to judge)."""
    if cam is None or not mask.any() or mask.all():
        return 1.0
    return float(np.clip(cam[mask].mean() - cam[~mask].mean(), 0.0, 1.0))


class Pipeline:
    def __init__(
        self, classifier: Classifier, segmenter: Segmenter, options: PipelineOptions | None = None
    ) -> None:
        self.classifier = classifier
        self.segmenter = segmenter
        self.options = options or PipelineOptions()

    @classmethod
    def build(
        cls,
        path: str | Path,
        *,
        segmenter: str | None = None,
        sam2_config: str | None = None,
        sam2_checkpoint: str | Path | None = None,
        sam2_hub_id: str | None = None,
        mask_choice: str = "cam",
        refiner: str | None = None,
        options: PipelineOptions | None = None,
        device: str = "cpu",
        mirror: bool = True,
    ) -> Pipeline:
        """The one place a pipeline is assembled from a checkpoint and segmenter settings.

        ``segmenter`` (a name in ``worker.pipeline.segmenters.SEGMENTERS``) defaults to ``sam2``
        when SAM2 weights are named, else ``cam``; the ``cam`` segmenter uses the refinement
        training chose per class unless ``refiner`` overrides it. ``mirror`` classifies on each
        image and its mirror image (``Classifier.with_mirror``).
        """
        classifier = Classifier.load(path, device, mirror)
        built = SegmenterOptions(
            sam2_config=sam2_config,
            sam2_checkpoint=sam2_checkpoint,
            sam2_hub_id=sam2_hub_id,
            mask_choice=mask_choice,
            refiner=refiner,
            device=device,
        )
        name = segmenter or ("sam2" if built.has_sam2 else "cam")
        return cls(classifier, build_segmenter(name, built, classifier), options)

    @property
    def version(self) -> str:
        return self.classifier.spec.version

    def run(self, image: np.ndarray, labels: Sequence[str] | None = None) -> ImageResult:
        """Pre-annotate ``image``; ``labels`` (if given) are classes an annotator already chose."""
        return self.run_batch([image], None if labels is None else [labels])[0]

    def run_batch(
        self, images: Sequence[np.ndarray], labels: Sequence[Sequence[str]] | None = None
    ) -> list[ImageResult]:
        """Pre-annotate several images with one classifier pass, one CAM pass and, with SAM2,
        one batched image embedding: what a GPU needs to be busy."""
        if not images:
            return []
        mask_classes = self.classifier.spec.mask_classes
        gate = self.classifier.spec.gate if self.options.gate else {}
        options = self.options

        def wanted(predictions: Sequence[Prediction]) -> list[list[str]]:
            chosen = labels if labels is not None else [p.classes for p in predictions]
            return [[c for c in image_labels if c in mask_classes] for image_labels in chosen]

        # Grad-CAM classifies and takes its maps in one forward pass; other methods classify first.
        predictions, cams = cam_method(options.cam_method).classify_and_explain(
            self.classifier, images, wanted, options.cam_stages
        )
        prompts = [[make_prompts(c.cam, options.prompt_strategy) for c in row] for row in cams]
        masks = self.segmenter.segment_batch(images, cams, prompts)
        results = []
        for image, prediction, image_cams, image_masks in zip(
            images, predictions, cams, masks, strict=True
        ):
            kept = [m for m in image_masks if m.mask.any()]
            held: list[MaskResult] = []
            if labels is None and gate:  # classes an annotator chose are never gated
                held = [m for m in kept if not passes(gate, prediction, m)]
                kept = [m for m in kept if passes(gate, prediction, m)]
            if options.instances:
                area = options.min_instance_area
                kept = [part for m in kept for part in split_instances(m, area)]
            height, width = image.shape[:2]
            results.append(
                ImageResult(width, height, prediction, tuple(kept), tuple(image_cams), tuple(held))
            )
        return results

    def segment_prompted(
        self, image: np.ndarray, label: str, prompts: Prompts
    ) -> MaskResult | None:
        """The mask for a person's click or box on ``image``, labelled ``label``.

        SAM2 reads the prompt itself (the CAM only helps pick among its masks); the ``cam``
        segmenter answers with the click model training fitted on the project's masks, or,
        where the checkpoint has none (or it draws nothing), refines the class's CAM focused on
        the prompt, or the prompt alone for a label the classifier does not know.
        """
        if not len(prompts.positives) and prompts.box is None:
            # Negative clicks alone say only where the object is not: nothing to draw (SAM2 was
            # never trained on such a prompt, and the CAM they focus covers the rest).
            return None
        segmenter = self.segmenter.for_prompts()
        clicked = segmenter.click(image, label, prompts)
        if clicked is not None:
            return replace(clicked, details={**clicked.details, "interactive": True})
        height, width = image.shape[:2]
        if label in self.classifier.spec.classes:
            (cam,) = compute_cams(
                self.classifier, image, [label], self.options.cam_method, self.options.cam_stages
            )
        else:
            cam = CamMap(label, np.ones((height, width), np.float32), 1.0)
        seeded = replace(cam, cam=segmenter.focus(cam.cam, prompts))
        (mask,) = segmenter.segment(image, [seeded], [prompts])
        details = {**mask.details, "interactive": True}
        if not mask.mask.any():
            # A person marked the object: the focused CAM itself beats answering nothing.
            # seed_cam peaks at 1 wherever the prompt touches the image, and is 0 everywhere else.
            fallback = seeded.cam >= 0.5
            if not fallback.any():
                return None
            return replace(mask, mask=fallback, details={**details, "fallback": "focused CAM"})
        return replace(mask, details=details)


def split_instances(result: MaskResult, min_area: float) -> list[MaskResult]:
    """One result per connected part (cells, objects); specks below ``min_area`` are dropped."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(result.mask.astype(np.uint8), 8)
    kept = [k for k in range(1, count) if stats[k, cv2.CC_STAT_AREA] >= min_area * result.mask.size]
    parts = [
        replace(result, mask=labels == k, details={**result.details, "instance": number})
        for number, k in enumerate(kept, start=1)
    ]
    return parts or [result]
