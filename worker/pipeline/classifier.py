"""The image-level classifier: any timm architecture, one of two formulations.

Training picks the formulation from the labels and records it in the checkpoint:

- exclusive (every training image has exactly one class, e.g. one defect type or "Free"): a
  softmax over the classes, background classes included; the predicted set is the top class.
- multi-label (some image has several classes): one sigmoid per class, background classes
  included as ordinary classes. The predicted set is every class whose probability reaches its
  threshold; object classes win over background classes (a "Crack" image is not also "Free");
  when nothing reaches its threshold and the project has a background class, the most probable
  class is taken, so every image gets a label.

Accuracy counts an image as right when the predicted set equals the true set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import timm
import torch

from worker.contract import defaults
from worker.contract.errors import CheckpointError
from worker.pipeline.checkpoint import ClassifierSpec, load_checkpoint, load_state_strict
from worker.pipeline.clicker import PREFIX as CLICKER
from worker.pipeline.pretrained import resolve_start
from worker.pipeline.refiners.learned import PREFIX as REFINER
from worker.pipeline.refiners.learned import split_state
from worker.pipeline.signals import texture_residual


def resolve_device(name: str) -> str:
    """``auto`` is the GPU when there is one, else the CPU; any other name is taken as it is."""
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def create_model(
    arch: str,
    num_classes: int,
    pretrained: str | None = None,
    device: str = "cpu",
    pool: str = "avg",
    output_stride: int = 32,
) -> torch.nn.Module:
    """Build a timm model; ``pretrained`` is a local weights file (a camsam checkpoint, a state
    dict, or timm's ``.safetensors``), or ``"hub"`` to download the architecture's weights
    (``worker.pipeline.pretrained``, which training asks first).

    Raises:
        CheckpointError: the architecture is unknown, the pretrained file does not fit it, or
            the hub's weights cannot be had.
    """
    if arch not in timm.list_models():
        example = defaults.Recipe.arch
        raise CheckpointError(
            f"unknown --arch {arch!r}: pick any name from timm.list_models(), e.g. {example}"
        )
    options = {"num_classes": num_classes}
    if pool != "avg":
        # "avgmax" lets one small, strong response (a blowhole) decide, not the image's average.
        options["global_pool"] = pool
    if output_stride != 32:
        # Dilated last stages: the same receptive field on a finer grid, so a finer CAM.
        options["output_stride"] = output_stride
    if pretrained == "hub":
        pretrained = resolve_start(arch, "hub").file
    if pretrained is not None and Path(pretrained).suffix == ".safetensors":
        # timm's own loader: it adapts the file to the architecture and drops the 1000-class head.
        overlay = {"file": str(pretrained)}
        model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay, **options)
        return model.to(device)
    model = timm.create_model(arch, **options)
    if pretrained is not None:
        load_backbone(model, Path(pretrained))
    return model.to(device)


def load_backbone(model: torch.nn.Module, path: Path) -> None:
    """Load every weight of ``path`` except the classifier head, whose classes differ.

    Accepts a camsam checkpoint or a plain state dict (timm's files, a self-supervised warm start).
    """
    try:
        _, state = load_checkpoint(path)
    except CheckpointError:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CheckpointError(f"cannot read pretrained weights {path}: {error}") from error
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    head = model.get_classifier()
    head_keys = {f"{n}" for n, m in model.named_modules() if m is head}
    own = model.state_dict()
    keep = {
        k: v
        for k, v in state.items()
        if k in own and own[k].shape == v.shape and k.rsplit(".", 1)[0] not in head_keys
    }
    body = [k for k in own if k.rsplit(".", 1)[0] not in head_keys]
    missing = [k for k in body if k not in keep]
    if missing:
        raise CheckpointError(
            f"pretrained file {path} does not fit {type(model).__name__}: "
            f"{len(missing)} backbone keys missing or of another shape, e.g. {missing[:5]}"
        )
    model.load_state_dict(keep, strict=False)


@dataclass(frozen=True)
class Prediction:
    """The classifier's view of one image."""

    probabilities: dict[str, float]
    classes: tuple[str, ...]
    score: float


class Classifier:
    """A loaded classifier: spec, model in eval mode, and its device."""

    def __init__(
        self,
        spec: ClassifierSpec,
        model: torch.nn.Module,
        extras: dict | None = None,
        mirror: bool = False,
        source: str = "",
    ) -> None:
        self.spec = spec
        self.source = source  # the checkpoint file it came from, for error messages
        self.model = model.eval()
        self.extras = dict(extras or {})  # tensors saved beside the weights (learned refiner)
        self.mirror = mirror  # decide on the mean of the image's and its mirror image's scores

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", mirror: bool = False) -> Classifier:
        spec, state = load_checkpoint(path)
        model = create_model(
            spec.arch,
            len(spec.classes),
            device=device,
            pool=spec.pool,
            output_stride=spec.output_stride,
        )
        weights, extras = split_state(state, (REFINER, CLICKER))
        load_state_strict(model, weights, str(path))
        return cls(spec, model, extras, mirror, str(path))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to_tensor(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Resize and normalise RGB uint8 arrays into a batch on the model's device."""
        return images_to_tensor(images, self.spec).to(self.device)

    @torch.inference_mode()
    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        tensors = self.to_tensor(images)
        probabilities = to_probabilities(self.model(self.with_mirror(tensors)), self.spec)
        return self.fold_mirror(probabilities, len(tensors))

    def with_mirror(self, tensors: torch.Tensor) -> torch.Tensor:
        """The batch to run: ``tensors``, followed by their left-right mirror images when
        ``mirror`` is on (steadier calls from a classifier trained on flipped images, for one
        batch twice the size; see docs/quality.md)."""
        return torch.cat([tensors, tensors.flip(-1)]) if self.mirror else tensors

    @staticmethod
    def fold_mirror(probabilities: np.ndarray, count: int) -> np.ndarray:
        """Per image, the mean of its own probabilities and its mirror image's (rows ``count``
        on, when ``with_mirror`` added them)."""
        if len(probabilities) == count:
            return probabilities
        return (probabilities[:count] + probabilities[count:]) / 2

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        return [self.decide(p) for p in self.probabilities(images)]

    def decide(self, probabilities: np.ndarray) -> Prediction:
        return decide(probabilities, self.spec)


def to_probabilities(logits: torch.Tensor, spec: ClassifierSpec) -> np.ndarray:
    logits = logits.detach().float()
    squash = torch.softmax(logits, dim=-1) if spec.exclusive else torch.sigmoid(logits)
    return squash.cpu().numpy()


def decide(probabilities: np.ndarray, spec: ClassifierSpec) -> Prediction:
    """Turn per-class probabilities into a predicted class set (see the module docstring).

    The score is the probability of exactly that set (under independent sigmoids for multi-label
    models): high when the classifier is sure, low when a class is a toss-up (for ranking).
    """
    top = spec.classes[int(np.argmax(probabilities))]
    if spec.exclusive:
        chosen, score = {top}, float(probabilities.max())
    else:
        pairs = zip(spec.classes, probabilities, spec.thresholds, strict=True)
        chosen = {c for c, p, t in pairs if p >= t}
        if chosen & set(spec.mask_classes):
            chosen -= set(spec.background_classes)
        if not chosen and spec.background_classes:
            chosen = {top}
        inside = np.array([c in chosen for c in spec.classes])
        score = float(np.prod(np.where(inside, probabilities, 1.0 - probabilities)))
    return Prediction(
        probabilities={c: float(p) for c, p in zip(spec.classes, probabilities, strict=True)},
        classes=tuple(c for c in spec.classes if c in chosen),
        score=score,
    )


def images_to_tensor(images: Sequence[np.ndarray], spec: ClassifierSpec) -> torch.Tensor:
    batch = np.stack([prepare(image, spec) for image in images])
    return normalise(torch.from_numpy(batch).permute(0, 3, 1, 2), spec)


def prepare(image: np.ndarray, spec: ClassifierSpec) -> np.ndarray:
    """An RGB uint8 image as the classifier sees it: resized, in the spec's input encoding.

    ``rgb`` is the image itself. ``flat`` is for surfaces and microscopy, where a defect is what
    differs from the texture around it: gray level, its difference from the local background
    (a large blur, which also removes uneven lighting), and the local contrast of that difference.
    """
    size = spec.image_size
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    if spec.input == "rgb":
        return resized
    gray = cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY).astype(np.float32)
    z = texture_residual(gray, size / 16)
    contrast = cv2.GaussianBlur(np.abs(z), (0, 0), 2.0)
    channels = [gray, 128.0 + 16.0 * z, 32.0 * contrast]
    return np.clip(np.stack(channels, axis=2), 0, 255).astype(np.uint8)


def normalise(images: torch.Tensor, spec: ClassifierSpec) -> torch.Tensor:
    """uint8 NCHW (0..255) to the float input the classifier was trained on."""
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1) * 255.0
    std = torch.tensor(spec.std).view(1, -1, 1, 1) * 255.0
    return (images.float() - mean) / std
