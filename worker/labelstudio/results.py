"""The one place that speaks Label Studio JSON: pipeline results to predictions, and back."""

from __future__ import annotations

import logging
import uuid

import numpy as np

from worker.contract.errors import MaskError
from worker.contract.label_config import LabelConfig
from worker.data import rle
from worker.pipeline.pipeline import ImageResult
from worker.pipeline.segmenters.base import MaskResult

log = logging.getLogger(__name__)

# The names used in the repository's label_config.xml (a test keeps them in step).
DEFAULT_IMAGE_NAME = "image"
DEFAULT_CHOICES_NAME = "class"
DEFAULT_BRUSH_NAME = "mask"


def to_prediction(
    result: ImageResult,
    model_version: str,
    config: LabelConfig | None = None,
    size: tuple[int, int] | None = None,
) -> dict:
    """A Label Studio prediction: a ``choices`` region and one ``brushlabels`` region per mask.

    With a label config, only labels the config offers are written (a checkpoint trained on more
    classes than the project has must not invent labels); without one, the default names apply.
    ``size`` (width, height) is the image's own, when the pipeline ran on a smaller copy: masks
    are scaled up to it.
    """
    width, height = size or (result.width, result.height)
    image_name = config.image_name if config else DEFAULT_IMAGE_NAME
    regions = []
    choices = list(result.prediction.classes)
    if config is not None:
        choices = [c for c in choices if c in config.choice_labels]
    if choices and (config is None or config.choices is not None):
        regions.append(
            {
                "id": _region_id(),
                "from_name": config.choices.name if config else DEFAULT_CHOICES_NAME,
                "to_name": image_name,
                "type": "choices",
                "value": {"choices": choices},
                "score": result.prediction.score,
            }
        )
    for mask in result.masks:
        if config is None or mask.label in config.mask_labels:
            try:
                regions.append(brush_region(mask, width, height, config))
            except MaskError as error:
                log.warning("a %s mask is left out: %s", mask.label, error)
    return {"model_version": model_version, "score": result.score, "result": regions}


def brush_region(mask: MaskResult, width: int, height: int, config: LabelConfig | None) -> dict:
    """One ``brushlabels`` region of a ``width`` x ``height`` image (a smaller mask is scaled up);
    ``meta`` says which segmenter made it and from what prompts, in the image's pixels.

    Raises:
        MaskError: the mask is too fragmented to send (``worker.data.rle.MAX_RUNS``).
    """
    meta = {"segmenter": mask.segmenter, **mask.details}
    if mask.prompts is not None:
        scale = (width / mask.mask.shape[1], height / mask.mask.shape[0])
        meta["prompts"] = mask.prompts.scaled(*scale).to_dict()
    return {
        "id": _region_id(),
        "from_name": config.brush.name if config else DEFAULT_BRUSH_NAME,
        "to_name": config.image_name if config else DEFAULT_IMAGE_NAME,
        "type": "brushlabels",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "format": "rle",
            "rle": rle.encode(mask.mask, width, height),
            "brushlabels": [mask.label],
        },
        "score": mask.score,
        "readonly": False,
        "meta": {**meta, "text": [f"camsam {mask.segmenter} mask"]},
    }


def encode_mask(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of a boolean (H, W) mask."""
    return rle.encode(mask)


def decode_mask(encoded: list[int], width: int, height: int) -> np.ndarray:
    """Inverse of :func:`encode_mask`: the boolean (H, W) mask of a brush region.

    Raises:
        MaskError: the RLE does not decode to ``width`` x ``height``.
    """
    return rle.decode(encoded, width, height)


def _region_id() -> str:
    return uuid.uuid4().hex[:10]
