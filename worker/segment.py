"""Segmenters: one mask per class from the image, its CAMs and their prompts.

``sam2`` asks SAM2 (the image embedded once, one decode per class) and picks one of its three
masks; ``cam`` refines the CAM itself along image edges and needs no SAM2 weights; ``threshold``
is the bare CAM cut at half its peak, the floor the others must beat.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from worker.cam import CamMap
from worker.choices import MASK_CHOICES, SEGMENTERS
from worker.errors import SegmenterError
from worker.learned_refine import LearnedRefiner
from worker.prompts import Prompts
from worker.refine import SIGNAL_REFINERS, RefineParams, refine_cam


@dataclass(frozen=True)
class MaskResult:
    """One class's mask at the image's size and how it was made."""

    label: str
    mask: np.ndarray
    score: float
    segmenter: str
    prompts: Prompts | None = None
    details: dict = field(default_factory=dict)


class Segmenter(Protocol):
    name: str

    def segment(
        self, image: np.ndarray, cams: Sequence[CamMap], prompts: Sequence[Prompts]
    ) -> list[MaskResult]: ...

    def segment_batch(
        self,
        images: Sequence[np.ndarray],
        cams: Sequence[Sequence[CamMap]],
        prompts: Sequence[Sequence[Prompts]],
    ) -> list[list[MaskResult]]: ...


class _OneByOne:
    """Segmenters with nothing to share between images segment a batch one image at a time."""

    def segment_batch(self, images, cams, prompts):
        return [self.segment(*args) for args in zip(images, cams, prompts, strict=True)]


class ThresholdSegmenter(_OneByOne):
    name = "threshold"

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def segment(self, image, cams, prompts):
        return [
            MaskResult(c.label, c.cam >= self.threshold * c.cam.max(), c.probability, self.name, p)
            for c, p in zip(cams, prompts, strict=True)
        ]


class CamSegmenter(_OneByOne):
    """The CAM refined with the image itself: useful masks with no SAM2 checkpoint at all.

    ``per_class`` holds refinement settings tuned on training images (kept in the checkpoint);
    classes without them use ``default``. ``learned`` holds the per-class trees of the learned
    refiner; a class set to ``learned`` that has none falls back to the guided CAM.
    """

    name = "cam"

    def __init__(
        self,
        default: RefineParams | None = None,
        per_class: Mapping[str, RefineParams] | None = None,
        learned: LearnedRefiner | None = None,
    ) -> None:
        self.default = default or RefineParams()
        self.per_class = dict(per_class or {})
        self.learned = learned or LearnedRefiner({})

    def for_prompts(self) -> CamSegmenter:
        """This segmenter for a CAM a person's click or box has focused: the learned trees saw
        only the classifier's own CAMs, so their classes take the guided CAM here."""
        return CamSegmenter(self.default, self.per_class)

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


class Sam2Segmenter:
    """SAM2's image predictor, built once, with an LRU cache of image embeddings.

    One lock, because the predictor holds the current image's state. The cache means a second
    click on the same image (or the pre-annotation of an image clicked before) decodes without
    embedding it again; ``cache_stats`` counts hits and misses.
    """

    name = "sam2"

    def __init__(
        self,
        predictor,
        mask_choice: str = "cam",
        mask_threshold: float = 0.0,
        cache_size: int = 16,
    ) -> None:
        if mask_choice not in MASK_CHOICES:
            raise SegmenterError(
                f"unknown mask choice {mask_choice!r}: choose one of {MASK_CHOICES}"
            )
        predictor.model.eval()  # build_sam2 does this too; a predictor made elsewhere may not
        self.predictor = predictor
        self.mask_choice = mask_choice
        self.mask_threshold = mask_threshold
        self.lock = threading.Lock()
        self.cache_size = cache_size
        self.cache: OrderedDict[str, tuple] = OrderedDict()
        self.cache_stats = {"hits": 0, "misses": 0}

    def segment(self, image, cams, prompts):
        return self.segment_batch([image], [cams], [prompts])[0]

    def segment_batch(self, images, cams, prompts):
        """Embed the images not in the cache in one ``set_image_batch``, then decode each."""
        wanted = [i for i, image_cams in enumerate(cams) if image_cams]
        keys = {i: _image_key(images[i]) for i in wanted}
        with self.lock:
            missing = list({keys[i]: i for i in wanted if keys[i] not in self.cache}.values())
            self.cache_stats["hits"] += len(wanted) - len(missing)
            self.cache_stats["misses"] += len(missing)
            embedded = self._embed([images[i] for i in missing])
            results: list[list[MaskResult]] = [[] for _ in images]
            for i in wanted:
                self._restore(embedded.get(keys[i]) or self.cache[keys[i]])
                if keys[i] in self.cache:
                    self.cache.move_to_end(keys[i])
                pairs = zip(cams[i], prompts[i], strict=True)
                results[i] = [self._decode(c, p) for c, p in pairs]
            return results

    def _embed(self, images: list[np.ndarray]) -> dict[str, tuple]:
        """Image embeddings by image key, put in the cache; one batched pass for all images."""
        if not images:
            return {}
        predictor = self.predictor
        with sam2_context(predictor.device):
            if len(images) == 1:
                predictor.set_image(images[0])
            else:
                predictor.set_image_batch(images)
        features = predictor._features
        embedded = {}
        for k, image in enumerate(images):
            one = {
                "image_embed": features["image_embed"][k : k + 1],
                "high_res_feats": [f[k : k + 1] for f in features["high_res_feats"]],
            }
            embedded[_image_key(image)] = (one, [tuple(image.shape[:2])])
        if self.cache_size:
            self.cache.update(embedded)
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        return embedded

    def _restore(self, entry: tuple) -> None:
        """Make one image's embedding the predictor's current image, as ``set_image`` would."""
        predictor = self.predictor
        predictor._features, predictor._orig_hw = entry
        predictor._is_image_set, predictor._is_batch = True, False

    def _decode(self, cam: CamMap, prompts: Prompts) -> MaskResult:
        with sam2_context(self.predictor.device):
            logits, predicted_iou, _ = self.predictor.predict(
                point_coords=prompts.points if len(prompts.points) else None,
                point_labels=prompts.labels if len(prompts.points) else None,
                box=prompts.box,
                multimask_output=True,
                return_logits=True,
            )
        masks = logits > self.mask_threshold
        index, agreement = choose_mask(masks, predicted_iou, cam.cam, self.mask_choice)
        details = {
            "mask_index": index,
            "predicted_iou": float(predicted_iou[index]),
            "cam_agreement": agreement,
            "mask_choice": self.mask_choice,
        }
        score = cam.probability * float(np.clip(predicted_iou[index], 0.0, 1.0))
        return MaskResult(cam.label, masks[index], score, self.name, prompts, details)


def sam2_context(device) -> contextlib.ExitStack:
    """What every SAM2 call runs in: ``inference_mode``, and on a GPU bf16 autocast.

    Entered per call, because autocast is thread-local: a worker's request threads each get it,
    and nothing leaks into the classifier's Grad-CAM, which needs float32 gradients.
    """
    import torch

    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    if torch.device(device).type == "cuda":
        stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
    return stack


def _image_key(image: np.ndarray) -> str:
    """An image's identity by its pixels: the same picture from any URL hits the same entry."""
    return hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest() + str(image.shape)


def choose_mask(
    masks: np.ndarray, predicted_iou: np.ndarray, cam: np.ndarray, choice: str
) -> tuple[int, float]:
    """Pick one of SAM's candidate masks: by agreement with the CAM, SAM's own IoU, or index."""
    region = cam >= 0.5 * float(cam.max())
    agreements = [iou(mask, region) for mask in masks]
    if choice == "cam":
        index = max(range(len(masks)), key=lambda i: (agreements[i], float(predicted_iou[i])))
    elif choice == "best-iou":
        index = int(np.argmax(predicted_iou))
    else:
        index = min(int(choice), len(masks) - 1)
    return index, float(agreements[index])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def build_sam2_predictor(
    config: str | None,
    checkpoint: str | Path | None,
    device: str = "cpu",
    hub_id: str | None = None,
):
    """SAM2ImagePredictor from a config name + checkpoint file, or from a Hugging Face hub id.

    Raises:
        SegmenterError: neither is given, the checkpoint file is missing, or it does not load.
    """
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    if hub_id:
        return SAM2ImagePredictor.from_pretrained(hub_id, device=device)
    if not config or not checkpoint:
        raise SegmenterError(
            "the sam2 segmenter needs --sam2-config (e.g. configs/sam2.1/sam2.1_hiera_t.yaml) and "
            "--sam2-checkpoint (the .pt file), or --sam2-hub-id; use --segmenter cam without them"
        )
    if not Path(checkpoint).is_file():
        raise SegmenterError(f"SAM2 checkpoint {checkpoint} does not exist")
    try:
        model = build_sam2(config, str(checkpoint), device=device)
    except Exception as error:
        raise SegmenterError(f"cannot build SAM2 from {config} + {checkpoint}: {error}") from error
    return SAM2ImagePredictor(model)


def build_segmenter(
    name: str,
    *,
    sam2_config: str | None = None,
    sam2_checkpoint: str | Path | None = None,
    sam2_hub_id: str | None = None,
    mask_choice: str = "cam",
    refiner: str = "guided",
    tuned: Mapping[str, RefineParams] | None = None,
    learned: LearnedRefiner | None = None,
    device: str = "cpu",
) -> Segmenter:
    """Raises: SegmenterError for an unknown name or a sam2 segmenter without weights."""
    if name == "sam2":
        predictor = build_sam2_predictor(sam2_config, sam2_checkpoint, device, sam2_hub_id)
        return Sam2Segmenter(predictor, mask_choice)
    if name == "cam":
        return CamSegmenter(RefineParams(refiner), tuned, learned)
    if name == "threshold":
        return ThresholdSegmenter()
    raise SegmenterError(f"unknown segmenter {name!r}: choose one of {SEGMENTERS}")
