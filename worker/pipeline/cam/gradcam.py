"""Grad-CAM in the forward pass that classifies, camsam's default CAM method.

One forward pass gives the classifier's prediction and the target layers' activations; the
gradients are taken with respect to those activations only, so the backward pass runs through the
head alone instead of the whole network. The maps equal pytorch-grad-cam's ``GradCAM``
(a test compares them); the speed figures are in ``docs/performance.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from worker.pipeline.cam.base import (
    CamMap,
    CamMethod,
    Choose,
    check_labels,
    resize_map,
    scale_maps,
    target_layers,
)
from worker.pipeline.classifier import Classifier, Prediction, to_probabilities


class GradCam(CamMethod):
    name = "gradcam"

    def maps(self, classifier, images, labels, stages):
        return classify_with_cams(classifier, images, lambda _: labels, stages, mirror=False)[1]

    def classify_and_explain(self, classifier, images, choose, stages=1):
        return classify_with_cams(classifier, images, choose, stages)


def classify_with_cams(
    classifier: Classifier,
    images: Sequence[np.ndarray],
    choose: Choose,
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
    check_labels(classifier, labels)
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
                scale_maps(cam.float().cpu().numpy(), tensors.shape[-1], tensors.shape[-2])
            )
        maps = scale_maps(np.mean(per_layer, axis=0))  # as pytorch-grad-cam: again after fusing
        for k, i in enumerate(rows):
            height, width = images[i].shape[:2]
            label = labels[i][rank]
            probability = float(probabilities[i, indices[k]])
            result[i].append(CamMap(label, resize_map(maps[k], width, height), probability))
    return predictions, result
