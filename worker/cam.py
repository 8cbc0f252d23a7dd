"""Class activation maps: where the classifier looked when it said a class is present.

This module picks the target layer (the last stage of a CNN, the last block of a ViT with its
tokens reshaped to a grid) and returns maps at the original image's size. Grad-CAM, the default,
is computed here: one forward pass gives the classifier's prediction and the activations, and the
gradients are taken with respect to those activations only, so the backward pass runs through the
head alone instead of the whole network (the maps equal pytorch-grad-cam's ``GradCAM``). The other
methods go through pytorch-grad-cam, one CAM per requested class in a single batched pass.
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
from worker.classify import Classifier, Prediction, to_probabilities
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
    _check_method(method)
    _check_labels(classifier, labels)
    pairs = [(i, label) for i, wanted in enumerate(labels) for label in wanted]
    if not pairs:
        return [[] for _ in images]
    if method == "gradcam":
        return classify_with_cams(classifier, images, lambda _: labels, stages, mirror=False)[1]
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


def classify_with_cams(
    classifier: Classifier,
    images: Sequence[np.ndarray],
    choose: Callable[[list[Prediction]], Sequence[Sequence[str]]],
    stages: int = 1,
    mirror: bool = True,
) -> tuple[list[Prediction], list[list[CamMap]]]:
    """Classify ``images`` and take the Grad-CAM of the classes ``choose`` picks for each (from
    the predictions, or regardless of them), all from one forward pass.

    The gradient of each chosen logit is taken with respect to the target layers' activations,
    never the weights: for the last stage that is a pass through the pooling and the head.
    ``mirror`` False leaves out the mirror images of a classifier with ``mirror`` on, which only
    steady the predictions: for a ``choose`` that names the classes itself.

    Raises:
        CamsamError: ``choose`` names a class the classifier does not know.
    """
    model = classifier.model
    layers, reshape = target_layers(model, stages)
    captured: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out: captured.append(out)) for layer in layers
    ]
    try:
        # The input requires grad so the activations join the graph even when the weights do not.
        tensors = classifier.to_tensor(images)
        tensors = (classifier.with_mirror(tensors) if mirror else tensors).requires_grad_(True)
        with torch.enable_grad():
            logits = model(tensors)
    finally:
        for hook in hooks:
            hook.remove()
    # Mirror images, when there are any, follow the images: no CAM is taken from them.
    probabilities = classifier.fold_mirror(to_probabilities(logits, classifier.spec), len(images))
    predictions = [classifier.decide(p) for p in probabilities]
    labels = [list(row) for row in choose(predictions)]
    _check_labels(classifier, labels)
    classes = classifier.spec.classes
    result: list[list[CamMap]] = [[] for _ in images]
    rounds = max((len(row) for row in labels), default=0)
    for rank in range(rounds):
        # One round takes each image's rank-th label: a sum of logits of different images has,
        # per image, the gradient of that image's own logit (no batch statistics in eval mode).
        rows = [i for i, row in enumerate(labels) if len(row) > rank]
        indices = [classes.index(labels[i][rank]) for i in rows]
        chosen = logits[rows, indices].sum()
        grads = torch.autograd.grad(chosen, captured, retain_graph=rank + 1 < rounds)
        per_layer = []
        for activation, grad in zip(captured, grads, strict=True):
            if reshape is not None:
                activation, grad = reshape(activation), reshape(grad)
            weights = grad[rows].mean(dim=(2, 3), keepdim=True)
            cam = torch.relu((weights * activation[rows].detach()).sum(dim=1))
            per_layer.append(
                _scale(cam.float().cpu().numpy(), tensors.shape[-1], tensors.shape[-2])
            )
        maps = _scale(np.mean(per_layer, axis=0))  # as pytorch-grad-cam: again after fusing
        for k, i in enumerate(rows):
            height, width = images[i].shape[:2]
            label = labels[i][rank]
            probability = float(probabilities[i, indices[k]])
            result[i].append(CamMap(label, _resize(maps[k], width, height), probability))
    return predictions, result


def _scale(maps: np.ndarray, width: int | None = None, height: int | None = None) -> np.ndarray:
    """Each map to [0, 1] by its own minimum and maximum, then to ``width`` x ``height``: the
    normalisation pytorch-grad-cam applies per layer and again after fusing layers."""
    out = []
    for cam in maps:
        cam = cam - cam.min()
        cam = cam / (1e-7 + cam.max())
        if width is not None:
            cam = cv2.resize(np.float32(cam), (width, height))
        out.append(cam)
    return np.float32(out)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise CamsamError(f"unknown CAM method {method!r}: choose one of {sorted(METHODS)}")


def _check_labels(classifier: Classifier, labels: Sequence[Sequence[str]]) -> None:
    unknown = sorted({x for wanted in labels for x in wanted} - set(classifier.spec.classes))
    if unknown:
        raise CamsamError(
            f"the classifier has no class {unknown}: it knows {classifier.spec.classes}"
        )


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
