"""What every CAM method shares: the map type, the target layers, and the template the methods
fill in (pytorch-grad-cam's habit: a base class does the machinery, a method is a small subclass).

Maps come back at the original image's size, values in [0, 1]. The target layer is the last stage
of a CNN (the last few, fused, with ``stages`` > 1), or the last block of a ViT with its tokens
reshaped to a grid.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from worker.contract.errors import CamsamError
from worker.contract.registry import lookup
from worker.pipeline.cam import CAM_METHODS
from worker.pipeline.classifier import Classifier, Prediction

Choose = Callable[[list[Prediction]], Sequence[Sequence[str]]]


@dataclass(frozen=True)
class CamMap:
    """One class's activation map over the whole image, values in [0, 1], shape (H, W)."""

    label: str
    cam: np.ndarray
    probability: float


class CamMethod(ABC):
    """A CAM method: ``maps`` is the one thing a method must say.

    ``classify_and_explain`` classifies and then takes the maps; a method that can do both in one
    pass (Grad-CAM) overrides it.
    """

    name = ""

    @abstractmethod
    def maps(
        self,
        classifier: Classifier,
        images: Sequence[np.ndarray],
        labels: Sequence[Sequence[str]],
        stages: int,
    ) -> list[list[CamMap]]:
        """One map per label of each image (labels already checked, at least one in all)."""

    def __call__(
        self,
        classifier: Classifier,
        images: Sequence[np.ndarray],
        labels: Sequence[Sequence[str]],
        stages: int = 1,
    ) -> list[list[CamMap]]:
        check_labels(classifier, labels)
        if not any(labels):
            return [[] for _ in images]
        return self.maps(classifier, images, labels, stages)

    def classify_and_explain(
        self, classifier: Classifier, images: Sequence[np.ndarray], choose: Choose, stages: int = 1
    ) -> tuple[list[Prediction], list[list[CamMap]]]:
        """The predictions for ``images`` and the maps of the classes ``choose`` picks from them."""
        predictions = classifier.predict(images)
        return predictions, self(classifier, images, choose(predictions), stages)


def cam_method(name: str) -> CamMethod:
    """The CAM method registered as ``name`` (:data:`worker.pipeline.cam.CAM_METHODS`).

    Raises:
        CamsamError: no method has that name.
    """
    return lookup(CAM_METHODS, name, "CAM method", CamsamError)()


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
    return cam_method(method)(classifier, images, labels, stages)


def scale_maps(maps: np.ndarray, width: int | None = None, height: int | None = None) -> np.ndarray:
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


def check_labels(classifier: Classifier, labels: Sequence[Sequence[str]]) -> None:
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


def resize_map(cam: np.ndarray, width: int, height: int) -> np.ndarray:
    resized = cv2.resize(cam.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(resized, 0.0, 1.0)
