from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from worker.cam import METHODS, compute_cams, target_layers
from worker.checkpoint import ClassifierSpec, ModelDir
from worker.classify import Classifier
from worker.errors import CamsamError
from worker.synthetic import make_image


@pytest.fixture(scope="module")
def classifier(trained_model_dir) -> Classifier:
    return Classifier.load(ModelDir(trained_model_dir).current_path())


def test_cam_is_at_image_size_and_peaks_on_the_defect(classifier):
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(6):
        image, mask = make_image(rng, "Spot", (110, 150))
        (cam,) = compute_cams(classifier, image, ["Spot"])
        assert cam.cam.shape == (110, 150) and cam.cam.dtype == np.float32
        assert 0.0 <= cam.cam.min() and cam.cam.max() <= 1.0
        assert 0.0 <= cam.probability <= 1.0
        inside = cam.cam[mask].mean()
        outside = cam.cam[~mask].mean()
        hits += inside > outside
    assert hits >= 5


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"scorecam"}))
def test_every_method_runs_in_one_batched_pass(classifier, method):
    image = np.full((64, 80, 3), 128, np.uint8)
    cams = compute_cams(classifier, image, ["Scratch", "Spot"], method=method)
    assert [c.label for c in cams] == ["Scratch", "Spot"]
    assert all(c.cam.shape == (64, 80) for c in cams)


def test_hooks_are_released_after_each_call(classifier):
    image = np.full((64, 64, 3), 100, np.uint8)
    for _ in range(3):
        compute_cams(classifier, image, ["Spot"])
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in classifier.model.modules())
    assert hooks == 0
    assert all(p.grad is None for p in classifier.model.parameters())


def test_multi_stage_fusion_and_errors(classifier):
    image = np.full((64, 64, 3), 100, np.uint8)
    (fused,) = compute_cams(classifier, image, ["Spot"], stages=2)
    assert fused.cam.shape == (64, 64)
    assert compute_cams(classifier, image, []) == []
    with pytest.raises(CamsamError, match="no class"):
        compute_cams(classifier, image, ["Dog"])
    with pytest.raises(CamsamError, match="choose one of"):
        compute_cams(classifier, image, ["Spot"], method="magic")


def test_vit_target_layer_reshapes_tokens_to_a_grid():
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=64, depth=2
    ).eval()
    spec = ClassifierSpec(
        arch="vit_tiny_patch16_224", classes=("A", "B"), mask_classes=("A",), image_size=64
    )
    layers, reshape = target_layers(model)
    assert layers == [model.blocks[-1].norm1]
    tokens = torch.zeros(2, 1 + 16, 192)
    assert reshape(tokens).shape == (2, 192, 4, 4)
    (cam,) = compute_cams(Classifier(spec, model), np.zeros((50, 70, 3), np.uint8), ["A"])
    assert cam.cam.shape == (50, 70)
