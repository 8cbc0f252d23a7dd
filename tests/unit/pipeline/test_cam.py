from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from worker.contract.errors import CamsamError
from worker.contract.store import ModelDir
from worker.data.synthetic import make_image
from worker.pipeline.cam import CAM_METHODS
from worker.pipeline.cam.base import compute_cams, target_layers
from worker.pipeline.cam.gradcam import classify_with_cams
from worker.pipeline.checkpoint import ClassifierSpec
from worker.pipeline.classifier import Classifier


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


@pytest.mark.parametrize("method", sorted(set(CAM_METHODS) - {"scorecam"}))
def test_every_method_runs_in_one_batched_pass(classifier, method):
    image = np.full((64, 80, 3), 128, np.uint8)
    cams = compute_cams(classifier, image, ["Scratch", "Spot"], method=method)
    assert [c.label for c in cams] == ["Scratch", "Spot"]
    assert all(c.cam.shape == (64, 80) for c in cams)


def library_gradcam(classifier, images, labels, stages=1) -> np.ndarray:
    """pytorch-grad-cam's GradCAM, one map per (image, label) pair, at the classifier's input
    size, over a batch of those images in that order."""
    layers, reshape = target_layers(classifier.model, stages)
    batch = classifier.to_tensor(images)
    targets = [ClassifierOutputTarget(classifier.spec.classes.index(x)) for x in labels]
    with torch.enable_grad(), GradCAM(classifier.model, layers, reshape_transform=reshape) as cam:
        maps = cam(input_tensor=batch, targets=targets)
    classifier.model.zero_grad(set_to_none=True)
    return maps


@pytest.mark.parametrize("stages", [1, 2])
def test_one_pass_gradcam_equals_pytorch_grad_cam(classifier, stages):
    size = classifier.spec.image_size
    rng = np.random.default_rng(3)
    images = [make_image(rng, kind, (size, size))[0] for kind in ("Spot", "Scratch", "Spot")]
    labels = ["Spot", "Scratch", "Scratch"]
    predictions, cams = classify_with_cams(
        classifier, images, lambda _: [[x] for x in labels], stages
    )
    assert predictions == classifier.predict(images)
    assert [[c.label for c in row] for row in cams] == [[x] for x in labels]
    expected = library_gradcam(classifier, images, labels, stages)
    np.testing.assert_allclose(np.stack([row[0].cam for row in cams]), expected, atol=1e-5)
    for prediction, (cam,) in zip(predictions, cams, strict=True):
        assert cam.probability == pytest.approx(prediction.probabilities[cam.label], abs=1e-6)


def test_one_pass_gradcam_takes_several_classes_of_an_image_in_rounds(classifier):
    size = classifier.spec.image_size
    rng = np.random.default_rng(3)
    images = [make_image(rng, kind, (size, size))[0] for kind in ("Spot", "Scratch", "Clean")]
    labels = [["Spot", "Scratch"], ["Scratch"], []]
    _, cams = classify_with_cams(classifier, images, lambda _: labels)
    assert [[c.label for c in row] for row in cams] == labels
    expected = library_gradcam(
        classifier, [images[0]] * 2 + [images[1]], ["Spot", "Scratch", "Scratch"]
    )
    got = np.stack([cams[0][0].cam, cams[0][1].cam, cams[1][0].cam])
    # the batches differ (three images here, a repeated one there): float noise, not a method gap
    np.testing.assert_allclose(got, expected, atol=1e-2)


def test_one_pass_gradcam_takes_the_classes_chosen_from_its_own_prediction(classifier):
    rng = np.random.default_rng(4)
    images = [make_image(rng, "Spot", (96, 96))[0] for _ in range(3)]
    seen = []

    def choose(predictions):
        seen.extend(predictions)
        return [p.classes[:1] for p in predictions]

    predictions, cams = classify_with_cams(classifier, images, choose)
    assert seen == predictions
    assert [tuple(c.label for c in row) for row in cams] == [p.classes[:1] for p in predictions]
    with pytest.raises(CamsamError, match="no class"):
        classify_with_cams(classifier, images, lambda p: [["Dog"]] * len(p))


def test_hooks_are_released_after_each_call(classifier):
    image = np.full((64, 64, 3), 100, np.uint8)
    for _ in range(3):
        compute_cams(classifier, image, ["Spot"])
        compute_cams(classifier, image, ["Spot"], method="layercam")
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
    vit = Classifier(spec, model)
    (cam,) = compute_cams(vit, np.zeros((50, 70, 3), np.uint8), ["A"])
    assert cam.cam.shape == (50, 70)
    image = np.random.default_rng(5).integers(0, 255, (64, 64, 3), np.uint8)
    (cam,) = compute_cams(vit, image, ["A"])
    np.testing.assert_allclose(cam.cam[None], library_gradcam(vit, [image], ["A"]), atol=1e-5)
