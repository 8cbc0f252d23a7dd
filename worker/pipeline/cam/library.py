"""The CAM methods of pytorch-grad-cam, each a two-line subclass naming the library's class.

One CAM per requested class, in a single batched pass; the library's CAM object is always used as
a context manager, so its hooks are released after every call (a long-lived worker must not pile
them up).
"""

from __future__ import annotations

import torch
from pytorch_grad_cam import EigenCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from worker.pipeline.cam.base import CamMap, CamMethod, resize_map, target_layers
from worker.pipeline.classifier import to_probabilities


class LibraryCam(CamMethod):
    """A pytorch-grad-cam method: ``library_class`` is its CAM class."""

    library_class: type

    def maps(self, classifier, images, labels, stages):
        pairs = [(i, label) for i, wanted in enumerate(labels) for label in wanted]
        model = classifier.model
        layers, reshape = target_layers(model, stages)
        indices = [classifier.spec.classes.index(label) for _, label in pairs]
        tensors = classifier.to_tensor(images)
        batch = tensors[[i for i, _ in pairs]]
        with (
            torch.enable_grad(),
            self.library_class(model, layers, reshape_transform=reshape) as cam,
        ):
            maps = cam(input_tensor=batch, targets=[ClassifierOutputTarget(i) for i in indices])
            logits = cam.outputs.detach()
        model.zero_grad(set_to_none=True)
        probabilities = to_probabilities(logits, classifier.spec)
        result: list[list[CamMap]] = [[] for _ in images]
        for k, (i, label) in enumerate(pairs):
            height, width = images[i].shape[:2]
            resized = resize_map(maps[k], width, height)
            result[i].append(CamMap(label, resized, float(probabilities[k, indices[k]])))
        return result


class GradCamPlusPlus(LibraryCam):
    name, library_class = "gradcam++", GradCAMPlusPlus


class LayerCam(LibraryCam):
    name, library_class = "layercam", LayerCAM


class XGradCam(LibraryCam):
    name, library_class = "xgradcam", XGradCAM


class EigenCam(LibraryCam):
    name, library_class = "eigencam", EigenCAM


class ScoreCam(LibraryCam):
    name, library_class = "scorecam", ScoreCAM
