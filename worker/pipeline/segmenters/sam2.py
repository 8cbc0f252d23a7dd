"""``sam2``: SAM2's image predictor prompted by the CAM's points and box, one of its three masks
chosen by agreement with the CAM (or SAM2's own predicted IoU, or by index)."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from worker.contract.errors import SegmenterError
from worker.pipeline.cam.base import CamMap
from worker.pipeline.masks import iou
from worker.pipeline.prompts import Prompts
from worker.pipeline.segmenters import MASK_CHOICES
from worker.pipeline.segmenters.base import MaskResult, Segmenter, SegmenterOptions


class Sam2Segmenter(Segmenter):
    """SAM2's image predictor, built once, with an LRU cache of image embeddings.

    One lock, because the predictor holds the current image's state. The cache means a second
    click on the same image (or the pre-annotation of an image clicked before) decodes without
    embedding it again; ``cache_stats`` counts hits and misses.
    """

    name = "sam2"

    @classmethod
    def from_options(cls, options: SegmenterOptions, classifier) -> Sam2Segmenter:
        predictor = build_sam2_predictor(
            options.sam2_config, options.sam2_checkpoint, options.device, options.sam2_hub_id
        )
        return cls(predictor, options.mask_choice)

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
        self.stats = {"hits": 0, "misses": 0}

    def cache_stats(self) -> dict[str, int]:
        return dict(self.stats)

    def segment(self, image, cams, prompts):
        return self.segment_batch([image], [cams], [prompts])[0]

    def segment_batch(self, images, cams, prompts):
        """Embed the images not in the cache in one ``set_image_batch``, then decode each."""
        wanted = [i for i, image_cams in enumerate(cams) if image_cams]
        keys = {i: _image_key(images[i]) for i in wanted}
        with self.lock:
            missing = list({keys[i]: i for i in wanted if keys[i] not in self.cache}.values())
            self.stats["hits"] += len(wanted) - len(missing)
            self.stats["misses"] += len(missing)
            embedded = self._embed([images[i] for i in missing], [keys[i] for i in missing])
            results: list[list[MaskResult]] = [[] for _ in images]
            for i in wanted:
                self._restore(embedded.get(keys[i]) or self.cache[keys[i]])
                if keys[i] in self.cache:
                    self.cache.move_to_end(keys[i])
                pairs = zip(cams[i], prompts[i], strict=True)
                results[i] = [self._decode(c, p) for c, p in pairs]
            return results

    def _embed(self, images: list[np.ndarray], keys: list[str]) -> dict[str, tuple]:
        """Image embeddings by image key (``keys``, one an image), put in the cache; one
        batched pass for all images."""
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
        for k, (image, key) in enumerate(zip(images, keys, strict=True)):
            one = {
                "image_embed": features["image_embed"][k : k + 1],
                "high_res_feats": [f[k : k + 1] for f in features["high_res_feats"]],
            }
            embedded[key] = (one, [tuple(image.shape[:2])])
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
    """An image's identity by its pixels: the same picture from any URL hits the same entry.
    SHA-256 over the pixels themselves, without a copy: on a CPU with SHA instructions 0.8 ms
    for a 512 px image where BLAKE2b took 1.5, which counts beside a GPU's milliseconds."""
    digest = hashlib.sha256(np.ascontiguousarray(image).data).hexdigest()
    return f"{digest}{image.shape}{image.dtype.str}"


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
