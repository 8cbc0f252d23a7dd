"""``sam2``: SAM2's image predictor prompted by the CAM's points and box, used as sam2's own
predictor and examples use it.

- Three masks only for a prompt SAM2 learnt to answer with three: one point, no box (every SAM2.1
  config says ``multimask_max_pt_num: 1``, a box counting as two points). A box or several points
  get one mask, with the stability fallback ``build_sam2`` turns on for single-mask outputs.
- Of three masks, pre-annotation picks by agreement with the CAM (or SAM2's predicted IoU, or an
  index: ``mask_choice``); a person's click takes SAM2's own best (highest predicted IoU), as
  sam2's notebook and Label Studio's SAM2 backend do.
- One SAM2 per process and set of weights, shared by every project and classifier version (SAM2
  does not change with the classifier), with one embedding cache whose entries own their memory.
- bfloat16 autocast only on GPUs that compute it natively; float32 elsewhere.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import threading
from collections import OrderedDict
from importlib import resources
from pathlib import Path

import numpy as np

from worker.contract.errors import CamsamError, SegmenterError
from worker.pipeline.cam.base import CamMap
from worker.pipeline.masks import iou
from worker.pipeline.prompts import Prompts
from worker.pipeline.segmenters import MASK_CHOICES
from worker.pipeline.segmenters.base import MaskResult, Segmenter, SegmenterOptions

# One SAM2 per process for each set of weights and device (``Sam2Segmenter.from_options``).
_shared: dict[tuple, Sam2Segmenter] = {}
_shared_lock = threading.Lock()


class Sam2Segmenter(Segmenter):
    """SAM2's image predictor, built once, with an LRU cache of image embeddings.

    One lock, because the predictor holds the current image's state. The cache means a second
    click on the same image (or the pre-annotation of an image clicked before) decodes without
    embedding it again; ``cache_stats`` counts hits and misses.
    """

    name = "sam2"

    @classmethod
    def from_options(cls, options: SegmenterOptions, classifier) -> Sam2Segmenter:
        """The process's SAM2 for these weights, built on first use: every project and version
        shares it, its lock and its embedding cache; only the mask choice is this caller's."""
        checkpoint = options.sam2_checkpoint
        key = (
            options.sam2_config,
            str(Path(checkpoint).resolve()) if checkpoint else "",
            options.sam2_hub_id,
            str(exact_device(options.device)),
        )
        with _shared_lock:
            if key not in _shared:
                predictor = build_sam2_predictor(
                    options.sam2_config,
                    options.sam2_checkpoint,
                    options.device,
                    options.sam2_hub_id,
                )
                _shared[key] = cls(predictor)
            return _shared[key].with_choice(options.mask_choice)

    def __init__(
        self,
        predictor,
        mask_choice: str = "cam",
        mask_threshold: float = 0.0,
        cache_size: int = 16,
    ) -> None:
        predictor.model.eval()  # build_sam2 does this too; a predictor made elsewhere may not
        self.predictor = predictor
        self.mask_choice = checked_choice(mask_choice)
        self.mask_threshold = mask_threshold
        self.lock = threading.Lock()
        self.cache_size = cache_size
        self.cache: OrderedDict[str, tuple] = OrderedDict()
        self.stats = {"hits": 0, "misses": 0}

    def with_choice(self, mask_choice: str) -> Sam2Segmenter:
        """This SAM2 (the same predictor, lock and cache) choosing among masks by ``mask_choice``.

        Raises:
            SegmenterError: an unknown choice.
        """
        view = copy.copy(self)
        view.mask_choice = checked_choice(mask_choice)
        return view

    def for_prompts(self) -> Sam2Segmenter:
        """A person's click or box: SAM2's own best mask, as sam2's examples take it."""
        return self.with_choice("best-iou")

    @property
    def precision(self) -> str:
        return sam2_precision(self.predictor.device)

    def cache_stats(self) -> dict[str, int]:
        return dict(self.stats)

    def segment(self, image, cams, prompts):
        return self.segment_batch([image], [cams], [prompts])[0]

    def segment_batch(self, images, cams, prompts):
        """Embed the images not in the cache in one ``set_image_batch``, then decode each.

        Raises:
            SegmenterError: SAM2 failed on this batch (the caller may retry image by image).
        """
        wanted = [i for i, image_cams in enumerate(cams) if image_cams]
        keys = {i: _image_key(images[i]) for i in wanted}
        try:
            with self.lock:
                # The hits are taken before embedding the misses, which may evict them.
                entries = {keys[i]: self.cache[keys[i]] for i in wanted if keys[i] in self.cache}
                for key in entries:
                    self.cache.move_to_end(key)
                missing = list({keys[i]: i for i in wanted if keys[i] not in entries}.values())
                self.stats["hits"] += len(wanted) - len(missing)
                self.stats["misses"] += len(missing)
                entries.update(
                    self._embed([images[i] for i in missing], [keys[i] for i in missing])
                )
                results: list[list[MaskResult]] = [[] for _ in images]
                for i in wanted:
                    self._restore(entries[keys[i]])
                    pairs = zip(cams[i], prompts[i], strict=True)
                    results[i] = [self._decode(c, p) for c, p in pairs]
                return results
        except CamsamError:
            raise
        except Exception as error:  # torch's own (out of memory, a shape): name the step
            raise SegmenterError(
                f"SAM2 failed on {len(wanted)} image(s): {type(error).__name__}: {error}"
            ) from error

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
        # What the cache keeps is a copy of its image's slice: a view would keep the whole
        # batch's tensor alive. One image's slice is its whole tensor already.
        copied = self.cache_size > 0 and len(images) > 1

        def own(tensor):
            return tensor.clone() if copied else tensor

        for k, (image, key) in enumerate(zip(images, keys, strict=True)):
            one = {
                "image_embed": own(features["image_embed"][k : k + 1]),
                "high_res_feats": [own(f[k : k + 1]) for f in features["high_res_feats"]],
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
        """The class's mask: SAM2 asked once per object (``prompts``, then its ``others``, each
        with its own box), the answers joined. The predicted IoU is the objects' own, weighted
        by their areas: an estimate of the joined mask's."""
        answers = [self._ask(cam, one) for one in (prompts, *prompts.others)]
        mask = np.logical_or.reduce([answer["mask"] for answer in answers])
        areas = [max(int(answer["mask"].sum()), 1) for answer in answers]
        ious = [answer["predicted_iou"] for answer in answers]
        predicted = float(np.average(ious, weights=areas))
        details = {
            "mask_index": answers[0]["index"],
            "predicted_iou": predicted,
            "cam_agreement": iou(mask, cam_region(cam.cam)),
            "mask_choice": answers[0]["choice"],
            "precision": self.precision,
        }
        if prompts.others:
            details["objects"] = len(answers)
            details["object_ious"] = [round(value, 4) for value in ious]
        score = cam.probability * float(np.clip(predicted, 0.0, 1.0))
        return MaskResult(cam.label, mask, score, self.name, prompts, details)

    def _ask(self, cam: CamMap, prompts: Prompts) -> dict:
        """One object's answer: SAM2's mask for ``prompts`` (of three, the chosen one)."""
        multimask = answers_with_three(prompts)
        with sam2_context(self.predictor.device):
            logits, predicted_iou, _ = self.predictor.predict(
                point_coords=prompts.points if len(prompts.points) else None,
                point_labels=prompts.labels if len(prompts.points) else None,
                box=prompts.box,
                multimask_output=multimask,
                return_logits=True,
            )
        masks = logits > self.mask_threshold
        index, _ = choose_mask(masks, predicted_iou, cam.cam, self.mask_choice)
        return {
            "mask": masks[index],
            "index": index,
            "predicted_iou": float(predicted_iou[index]),
            "choice": self.mask_choice if multimask else "single",
        }


def checked_choice(mask_choice: str) -> str:
    if mask_choice not in MASK_CHOICES:
        raise SegmenterError(f"unknown mask choice {mask_choice!r}: choose one of {MASK_CHOICES}")
    return mask_choice


def answers_with_three(prompts: Prompts) -> bool:
    """Whether SAM2 was trained to answer ``prompts`` with three masks: one point and no box
    (SAM2.1's ``multimask_max_pt_num: 1``; a box counts as two points). sam2's predictor says
    a single mask gives better results for prompts that are not ambiguous."""
    return prompts.box is None and len(prompts.points) == 1


@functools.cache
def _native_bfloat16(index: int) -> bool:
    import torch

    return torch.cuda.get_device_capability(index) >= (8, 0)


def sam2_precision(device) -> str:
    """``bfloat16`` on a GPU that computes it natively (compute capability 8.0 and up: A100,
    L4, H100, RTX 30xx and later); ``float32`` elsewhere, where T4/V100-class GPUs would
    emulate bfloat16 slowly and a CPU gains nothing. (sam2's notebooks autocast to bfloat16 on
    any GPU; its image path needs no autocast, casting to float32 where it matters.)"""
    device = exact_device(device)
    if device.type != "cuda":
        return "float32"
    return "bfloat16" if _native_bfloat16(device.index) else "float32"


def exact_device(device):
    """``device`` as a ``torch.device``, a GPU with its index (``cuda`` is the current one)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def sam2_context(device) -> contextlib.ExitStack:
    """What every SAM2 call runs in: ``inference_mode``, and bfloat16 autocast where
    ``sam2_precision`` chooses it.

    Entered per call, because autocast is thread-local: a worker's request threads each get it,
    and nothing leaks into the classifier's Grad-CAM, which needs float32 gradients.
    """
    import torch

    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    if sam2_precision(device) == "bfloat16":
        stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
    return stack


def _image_key(image: np.ndarray) -> str:
    """An image's identity by its pixels: the same picture from any URL hits the same entry.
    SHA-256 over the pixels themselves, without a copy: on a CPU with SHA instructions 0.8 ms
    for a 512 px image where BLAKE2b took 1.5, which counts beside a GPU's milliseconds."""
    digest = hashlib.sha256(np.ascontiguousarray(image).data).hexdigest()
    return f"{digest}{image.shape}{image.dtype.str}"


def cam_region(cam: np.ndarray) -> np.ndarray:
    """Where the CAM is at half its peak or more: what a mask is held against."""
    return cam >= 0.5 * float(cam.max())


def choose_mask(
    masks: np.ndarray, predicted_iou: np.ndarray, cam: np.ndarray, choice: str
) -> tuple[int, float]:
    """Pick one of SAM's candidate masks: by agreement with the CAM, SAM's own IoU, or index."""
    region = cam_region(cam)
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
    """SAM2ImagePredictor from a config name + checkpoint file, or from a Hugging Face hub id,
    built as sam2 builds it (``build_sam2``, eval mode, its post-processing on).

    Raises:
        SegmenterError: neither or both are given, a hub id or config name sam2 does not know,
            a download that fails, a checkpoint that is missing or does not load.
    """
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    if hub_id and (config or checkpoint):
        raise SegmenterError(
            f"SAM2 hub id {hub_id!r} names its own config and weights: unset SAM2_CONFIG and "
            "SAM2_CHECKPOINT (--sam2-config, --sam2-checkpoint), or unset SAM2_HUB_ID to use them"
        )
    if hub_id:
        config_name, filename = known_hub_id(hub_id)
        try:
            return SAM2ImagePredictor.from_pretrained(hub_id, device=device)
        except Exception as error:  # huggingface_hub's and the network's errors alike
            raise SegmenterError(
                f"cannot load SAM2 {hub_id!r} from the Hugging Face hub "
                f"({type(error).__name__}: {error}). Without the internet: download {filename} "
                f"from https://huggingface.co/{hub_id} on a machine that has it, then set "
                f"SAM2_CONFIG={config_name} and SAM2_CHECKPOINT=<that file> instead of SAM2_HUB_ID"
            ) from error
    if not config or not checkpoint:
        raise SegmenterError(
            "the sam2 segmenter needs --sam2-config (e.g. configs/sam2.1/sam2.1_hiera_t.yaml) and "
            "--sam2-checkpoint (the .pt file), or --sam2-hub-id; use --segmenter cam without them"
        )
    known_config(config)
    if not Path(checkpoint).is_file():
        raise SegmenterError(f"SAM2 checkpoint {checkpoint} does not exist")
    try:
        model = build_sam2(config, str(checkpoint), device=device)
    except Exception as error:
        raise SegmenterError(f"cannot build SAM2 from {config} + {checkpoint}: {error}") from error
    return SAM2ImagePredictor(model)


def known_hub_id(hub_id: str) -> tuple[str, str]:
    """The config name and checkpoint file sam2 downloads for ``hub_id``.

    Raises:
        SegmenterError: a hub id sam2 does not list, with the ones it does.
    """
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    if hub_id not in HF_MODEL_ID_TO_FILENAMES:
        raise SegmenterError(
            f"sam2 knows no hub id {hub_id!r}: use one of {', '.join(HF_MODEL_ID_TO_FILENAMES)}"
        )
    return HF_MODEL_ID_TO_FILENAMES[hub_id]


def known_config(config: str) -> None:
    """sam2 finds configs by name inside its own package (hydra), not by file path: asked
    here of hydra itself, as ``build_sam2`` will ask it.

    Raises:
        SegmenterError: a name hydra does not find, or a config without a model (a training
            one), with the names that would do.
    """
    import sam2  # noqa: F401 (importing sam2 points hydra at its configs)
    from hydra import compose
    from hydra.errors import MissingConfigException

    try:
        found = "model" in compose(config_name=config)
    except MissingConfigException:
        found = False
    if found:
        return
    configs = resources.files("sam2").joinpath("configs")
    names = sorted(
        f"configs/{folder.name}/{entry.name}"
        for folder in configs.iterdir()
        if folder.is_dir() and not folder.name.endswith("_training")
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    )
    raise SegmenterError(
        f"SAM2 config {config!r} is not one of sam2's model configs: SAM2_CONFIG "
        f"(--sam2-config) names a config inside the sam2 package, not a file, e.g. "
        f"configs/sam2.1/sam2.1_hiera_t.yaml for sam2.1_hiera_tiny.pt; sam2 has {', '.join(names)}"
    )
