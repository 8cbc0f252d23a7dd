"""Class activation maps: where the classifier looked when it said a class is present.

pytorch-grad-cam does the machinery; this module picks the target layer (the last stage of a CNN,
the last block of a ViT with its tokens reshaped to a grid), runs one CAM per requested class in a
single batched backward pass, and returns maps at the original image's size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from pytorch_grad_cam import (
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from worker.choices import CAM_METHODS
from worker.classify import Classifier, to_probabilities
from worker.errors import CamsamError

METHODS = dict(
    zip(
        CAM_METHODS,
        (GradCAM, GradCAMPlusPlus, LayerCAM, XGradCAM, EigenCAM, ScoreCAM),
        strict=True,
    )
)


@dataclass(frozen=True)
class CamMap:
    """One class's activation map over the whole image, values in [0, 1], shape (H, W)."""

    label: str
    cam: np.ndarray
    probability: float


def compute_cams(
    classifier: Classifier,
    image: np.ndarray,
    labels: Sequence[str],
    method: str = "gradcam",
    stages: int = 1,
) -> list[CamMap]:
    """One CAM per label in ``labels`` for an RGB uint8 image, resized back to its own size.

    ``stages`` > 1 fuses the CAMs of the last few stages of a CNN (finer maps for small objects).

    Raises:
        CamsamError: an unknown method or a label the classifier does not know.
    """
    return compute_cams_batch(classifier, [image], [labels], method, stages)[0]


def compute_cams_batch(
    classifier: Classifier,
    images: Sequence[np.ndarray],
    labels: Sequence[Sequence[str]],
    method: str = "gradcam",
    stages: int = 1,
) -> list[list[CamMap]]:
    """The CAMs of several images, each for its own labels, in one forward and backward pass.

    Raises:
        CamsamError: an unknown method or a label the classifier does not know.
    """
    if method not in METHODS:
        raise CamsamError(f"unknown CAM method {method!r}: choose one of {sorted(METHODS)}")
    unknown = sorted({x for wanted in labels for x in wanted} - set(classifier.spec.classes))
    if unknown:
        raise CamsamError(
            f"the classifier has no class {unknown}: it knows {classifier.spec.classes}"
        )
    pairs = [(i, label) for i, wanted in enumerate(labels) for label in wanted]
    if not pairs:
        return [[] for _ in images]
    model = classifier.model
    layers, reshape = target_layers(model, stages)
    indices = [classifier.spec.classes.index(label) for _, label in pairs]
    tensors = classifier.to_tensor(images)
    batch = tensors[[i for i, _ in pairs]]
    with torch.enable_grad(), METHODS[method](model, layers, reshape_transform=reshape) as cam:
        maps = cam(input_tensor=batch, targets=[ClassifierOutputTarget(i) for i in indices])
        logits = cam.outputs.detach()
    model.zero_grad(set_to_none=True)
    probabilities = to_probabilities(logits, classifier.spec)
    result: list[list[CamMap]] = [[] for _ in images]
    for k, (i, label) in enumerate(pairs):
        height, width = images[i].shape[:2]
        resized = _resize(maps[k], width, height)
        result[i].append(CamMap(label, resized, float(probabilities[k, indices[k]])))
    return result


def target_layers(
    model: torch.nn.Module, stages: int = 1
) -> tuple[list[torch.nn.Module], Callable | None]:
    """The layers to take activations from, and the reshape transform a transformer needs."""
    blocks = getattr(model, "blocks", None)
    if blocks is not None and hasattr(model, "patch_embed"):
        grid = tuple(model.patch_embed.grid_size)
        prefix = int(getattr(model, "num_prefix_tokens", 1))
        return [blocks[-1].norm1], _token_grid(grid, prefix)
    feature_info = getattr(model, "feature_info", None)
    if feature_info:
        names = [info["module"] for info in feature_info][-stages:]
        return [model.get_submodule(name) for name in names], None
    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    if not convolutions:
        raise CamsamError(
            f"cannot find a CAM target layer in {type(model).__name__}: it has no conv layer "
            "and is not a ViT with blocks and patch_embed"
        )
    return [convolutions[-1]], None


def _token_grid(grid: tuple[int, int], prefix: int) -> Callable:
    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, prefix:, :]
        return patches.reshape(tokens.size(0), grid[0], grid[1], -1).permute(0, 3, 1, 2)

    return reshape


def _resize(cam: np.ndarray, width: int, height: int) -> np.ndarray:
    resized = cv2.resize(cam.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(resized, 0.0, 1.0)
