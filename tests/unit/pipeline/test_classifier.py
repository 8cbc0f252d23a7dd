from __future__ import annotations

import numpy as np
import pytest
import torch

from worker.contract.errors import CheckpointError
from worker.pipeline.checkpoint import ClassifierSpec, publish, save_checkpoint
from worker.pipeline.classifier import Classifier, create_model, decide, load_backbone, prepare

SPEC = ClassifierSpec(
    arch="resnet10t",
    classes=("Crack", "Spot", "Free"),
    mask_classes=("Crack", "Spot"),
    image_size=64,
)


@pytest.mark.parametrize(
    ("probabilities", "expected"),
    [
        ([0.9, 0.1, 0.2], ("Crack",)),
        ([0.9, 0.8, 0.1], ("Crack", "Spot")),  # multi-label
        ([0.9, 0.1, 0.7], ("Crack",)),  # an object class beats the background class
        ([0.1, 0.2, 0.3], ("Free",)),  # nothing sure: the most probable class
        ([0.1, 0.4, 0.3], ("Spot",)),
    ],
)
def test_decide(probabilities, expected):
    assert decide(np.array(probabilities), SPEC).classes == expected


def test_score_is_probability_of_the_predicted_set():
    prediction = decide(np.array([0.9, 0.2, 0.1]), SPEC)
    assert prediction.score == pytest.approx(0.9 * 0.8 * 0.9)
    unsure = decide(np.array([0.55, 0.45, 0.1]), SPEC)
    assert unsure.score < prediction.score


def test_exclusive_models_take_the_top_class():
    exclusive = ClassifierSpec(
        arch="resnet10t",
        classes=("Crack", "Spot", "Free"),
        mask_classes=("Crack", "Spot"),
        image_size=64,
        exclusive=True,
    )
    prediction = decide(np.array([0.3, 0.6, 0.1]), exclusive)
    assert prediction.classes == ("Spot",)
    assert prediction.score == pytest.approx(0.6)
    assert decide(np.array([0.2, 0.2, 0.6]), exclusive).classes == ("Free",)


def test_without_background_class_nothing_is_a_valid_answer():
    spec = ClassifierSpec(
        arch="resnet10t", classes=("A", "B"), mask_classes=("A", "B"), image_size=32
    )
    assert decide(np.array([0.1, 0.2]), spec).classes == ()


def test_unknown_arch_names_the_fix():
    with pytest.raises(CheckpointError, match="timm.list_models"):
        create_model("resnet_does_not_exist", 3)


def test_classifier_loads_from_checkpoint_and_predicts(tmp_path):
    model = create_model("resnet10t", 3)
    save_checkpoint(tmp_path / "c.pt", SPEC, model.state_dict())
    classifier = Classifier.load(tmp_path / "c.pt")
    images = [np.zeros((50, 70, 3), np.uint8), np.full((90, 40, 3), 200, np.uint8)]
    probabilities = classifier.probabilities(images)
    assert probabilities.shape == (2, 3)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    assert len(classifier.predict(images)) == 2


def test_the_mirror_averages_the_image_and_its_mirror_image_everywhere_it_decides(tmp_path):
    from worker.contract.settings import Settings
    from worker.contract.store import ModelDir
    from worker.jobs.predict import load_pipeline
    from worker.pipeline.cam.base import compute_cams
    from worker.pipeline.cam.gradcam import classify_with_cams
    from worker.pipeline.pipeline import Pipeline

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "c.pt", SPEC, create_model("resnet10t", 3).state_dict())
    plain = Classifier.load(tmp_path / "c.pt")
    mirror = Classifier.load(tmp_path / "c.pt", mirror=True)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (60, 80, 3), np.uint8) for _ in range(2)]
    flipped = [image[:, ::-1].copy() for image in images]
    expected = (plain.probabilities(images) + plain.probabilities(flipped)) / 2
    assert not np.allclose(plain.probabilities(images), expected, atol=1e-4)  # the test can fail
    np.testing.assert_allclose(mirror.probabilities(images), expected, atol=1e-5)
    predictions, cams = classify_with_cams(mirror, images, lambda p: [["Crack"]] * len(p))
    assert [p.classes for p in predictions] == [p.classes for p in mirror.predict(images)]
    for prediction, row in zip(predictions, expected, strict=True):
        assert list(prediction.probabilities.values()) == pytest.approx(list(row), abs=1e-5)
    # The CAM is the image's own, mirrored or not: the classes were given.
    (given,) = compute_cams(mirror, images[0], ["Crack"])
    np.testing.assert_allclose(given.cam, cams[0][0].cam, atol=1e-3)
    np.testing.assert_allclose(given.cam, compute_cams(plain, images[0], ["Crack"])[0].cam)

    assert Pipeline.build(tmp_path / "c.pt").classifier.mirror  # on by default
    models = ModelDir(tmp_path / "models")
    torch.manual_seed(0)
    version = publish(models, SPEC, create_model("resnet10t", 3).state_dict()).version
    env = {"MODEL_DIR": str(models.root), "DEVICE": "cpu"}
    backend = load_pipeline(models, version, Settings.from_env(env))
    off = {**env, "CLASSIFIER_MIRROR": "0"}
    assert backend.classifier.mirror
    assert not load_pipeline(models, version, Settings.from_env(off)).classifier.mirror


def test_checkpoint_of_another_arch_is_refused(tmp_path):
    other = create_model("resnet18", 3)
    save_checkpoint(tmp_path / "c.pt", SPEC, other.state_dict())
    with pytest.raises(CheckpointError, match="another --arch"):
        Classifier.load(tmp_path / "c.pt")


def test_pretrained_file_loads_backbone_but_not_head(tmp_path):
    source = create_model("resnet10t", 7)
    torch.save(source.state_dict(), tmp_path / "backbone.pth")
    target = create_model("resnet10t", 3, pretrained=str(tmp_path / "backbone.pth"))
    assert torch.equal(target.conv1[0].weight, source.conv1[0].weight)
    assert target.fc.out_features == 3
    wrong = create_model("resnet18", 7)
    torch.save(wrong.state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_backbone(create_model("resnet10t", 3), tmp_path / "wrong.pth")


def test_flat_input_and_max_pooling_survive_a_checkpoint(tmp_path):
    spec = ClassifierSpec(
        arch="resnet10t",
        classes=("A", "Free"),
        mask_classes=("A",),
        image_size=48,
        input="flat",
        pool="avgmax",
    )
    image = np.full((60, 90, 3), 120, np.uint8)
    image[20:30, 40:50] = 30  # a dark spot on an even surface
    prepared = prepare(image, spec)
    assert prepared.shape == (48, 48, 3) and prepared.dtype == np.uint8
    gray, residual = prepared[..., 0].astype(int), prepared[..., 1].astype(int)
    assert residual[16, 26] < residual[2, 2] - 20  # the spot stands out from its background
    assert abs(residual[2, 2] - 128) < abs(gray[16, 26] - gray[2, 2])
    model = create_model("resnet10t", 2, pool="avgmax")
    save_checkpoint(tmp_path / "c.pt", spec, model.state_dict())
    loaded = Classifier.load(tmp_path / "c.pt")
    assert loaded.spec.input == "flat" and loaded.spec.pool == "avgmax"
    assert loaded.probabilities([image]).shape == (1, 2)


def test_a_finer_output_stride_survives_a_checkpoint_and_gives_a_finer_cam(tmp_path):
    from dataclasses import replace

    from worker.pipeline.cam.base import target_layers

    spec = replace(SPEC, output_stride=16)
    save_checkpoint(
        tmp_path / "c.pt", spec, create_model("resnet10t", 3, output_stride=16).state_dict()
    )
    loaded = Classifier.load(tmp_path / "c.pt")
    coarse = create_model("resnet10t", 3)
    grids = []
    for model in (coarse, loaded.model):
        (layer,) = target_layers(model)[0]
        seen = []
        hook = layer.register_forward_hook(lambda m, i, out, seen=seen: seen.append(out.shape))
        model.eval()(torch.zeros(1, 3, 64, 64))
        hook.remove()
        grids.append(seen[0][-2:])
    assert loaded.spec.output_stride == 16
    assert tuple(grids[0]) == (2, 2) and tuple(grids[1]) == (4, 4)
