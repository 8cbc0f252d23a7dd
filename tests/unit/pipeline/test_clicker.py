"""The click model: what it reads of the clicks, the mask it answers, and its place in the
checkpoint and in Label Studio's interactive requests."""

from __future__ import annotations

import numpy as np
import pytest

from worker.contract.errors import CheckpointError
from worker.contract.store import ModelDir
from worker.data.synthetic import make_image
from worker.pipeline.classifier import Classifier
from worker.pipeline.clicker import (
    COMPARED,
    NO_CLICK,
    ClickModel,
    click_maps,
    clicks_of,
    image_maps,
)
from worker.pipeline.masks import iou
from worker.pipeline.pipeline import Pipeline
from worker.pipeline.prompts import Prompts
from worker.pipeline.refiners.learned import ClassTrees
from worker.pipeline.segmenters.base import SegmenterOptions, build_segmenter
from worker.pipeline.simulated_clicks import interior_point
from worker.training.click_model import MIN_IMAGES, fit_click_model


def click(x: float, y: float, label: int = 1) -> Prompts:
    return Prompts(np.array([[x, y]], np.float32), np.array([label], np.int32))


@pytest.fixture(scope="module")
def model(synthetic_dataset) -> ClickModel:
    fitted, figures = fit_click_model(synthetic_dataset.samples, seed=0)
    assert fitted is not None
    assert figures["objects"] > 0 and 0.0 <= figures["accepted_at_one_click"] <= 1.0
    return fitted


def test_the_clicks_maps_measure_from_the_nearest_click_of_each_kind():
    image, _ = make_image(np.random.default_rng(0), "Spot", (60, 80))
    maps = image_maps(image)
    height, width = maps[0].shape
    points = np.array([[10.0, 12.0], [40.0, 30.0], [70.0, 5.0]], np.float32)
    labels = np.array([1, 1, 0], np.int32)
    extra = click_maps(maps, points, labels)[len(maps) :]
    positive, negative = extra[0], extra[1 + len(COMPARED)]
    assert positive[12, 10] == 0 and positive[30, 40] == 0 and negative[5, 70] == 0
    assert positive[12, 20] == pytest.approx(10 / max(height, width))
    # The gray level's difference from the nearest positive click: each click's own
    # neighbourhood, so near (40, 30) it is measured from there, not from (10, 12).
    gray = COMPARED.index(16)
    near = maps[16][29:32, 39:42].mean()
    assert extra[1 + gray][30, 41] == pytest.approx(maps[16][30, 41] - near, abs=1e-5)
    alone = click_maps(maps, points[:1], labels[:1])[len(maps) :]
    assert np.all(alone[1 + len(COMPARED)] == NO_CLICK)  # no negative click: far away


def test_a_box_is_a_positive_click_at_its_middle():
    box = Prompts(np.zeros((0, 2), np.float32), np.zeros(0, np.int32), np.array([10, 20, 30, 60]))
    points, labels = clicks_of(box)
    assert points.tolist() == [[20.0, 40.0]] and labels.tolist() == [1]


def test_one_click_masks_an_unseen_object_of_a_known_and_an_unknown_shape(model):
    rng = np.random.default_rng(7)
    ious = []
    for label in ("Spot", "Scratch"):
        for _ in range(4):
            image, truth = make_image(rng, label, (100, 130))
            x, y, _ = interior_point(truth)
            mask, confidence = model.mask(image, click(x, y))
            assert mask.shape == truth.shape and mask[int(y), int(x)]
            assert 0.0 < confidence <= 1.0
            ious.append(iou(mask, truth))
    assert np.median(ious) > 0.5, ious


def test_negative_clicks_alone_and_boxes_outside_the_image_draw_nothing(model):
    image, truth = make_image(np.random.default_rng(8), "Spot", (90, 120))
    mask, confidence = model.mask(image, click(30, 30, label=0))
    assert not mask.any() and confidence == 0.0
    outside = Prompts(
        np.zeros((0, 2), np.float32), np.zeros(0, np.int32), np.array([200, 200, 240, 240])
    )
    assert not model.mask(image, outside)[0].any()
    x, y, _ = interior_point(truth)
    ys, xs = np.nonzero(truth)
    box = Prompts(
        np.zeros((0, 2), np.float32),
        np.zeros(0, np.int32),
        np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32),
    )
    boxed, _ = model.mask(image, box)
    outside_box = np.ones_like(boxed)
    outside_box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = False
    assert boxed.any() and not (boxed & outside_box).any()


def test_a_negative_click_takes_away_what_it_marks(model):
    image, truth = make_image(np.random.default_rng(9), "Spot", (100, 130))
    x, y, _ = interior_point(truth)
    mask, _ = model.mask(image, click(x, y))
    ys, xs = np.nonzero(mask)
    far = int(np.argmax((xs - x) ** 2 + (ys - y) ** 2))  # the mask's point farthest from the click
    both = Prompts(np.array([[x, y], [xs[far], ys[far]]], np.float32), np.array([1, 0], np.int32))
    cut, _ = model.mask(image, both)
    assert not cut[ys[far], xs[far]] and cut[int(y), int(x)] and cut.sum() < mask.sum()


def test_the_model_travels_in_the_checkpoint_and_answers_label_studios_clicks(
    trained_model_dir, synthetic_dataset
):
    """Training fits the click model beside the classifier; the checkpoint loads strictly
    (its tensors are not the classifier's), and interactive requests of any label, known to the
    classifier or not, get the click model's mask."""
    classifier = Classifier.load(ModelDir(trained_model_dir).current_path())
    assert any(key.startswith("clicker.") for key in classifier.extras)
    assert "click_model" in classifier.spec.metrics
    loaded = ClickModel.from_state(classifier.extras, classifier.source)
    assert loaded.labels == ("Scratch", "Spot") and 0 < loaded.reach <= 2
    saved = ClickModel.from_state(loaded.to_state())
    assert saved.labels == loaded.labels and saved.reach == loaded.reach
    image, truth = make_image(np.random.default_rng(10), "Spot", (100, 120))
    x, y, _ = interior_point(truth)
    assert np.array_equal(loaded.mask(image, click(x, y))[0], saved.mask(image, click(x, y))[0])
    segmenter = build_segmenter("cam", SegmenterOptions(), classifier)
    pipeline = Pipeline(classifier, segmenter)
    for label in ("Spot", "Pore"):  # "Pore" is no class of the classifier
        answer = pipeline.segment_prompted(image, label, click(x, y))
        assert answer.details["clicker"] == "trees" and answer.details["interactive"]
        assert answer.label == label and answer.segmenter == "cam"
        assert np.array_equal(answer.mask, loaded.mask(image, click(x, y))[0])


def test_a_checkpoint_without_the_model_keeps_the_focused_cam(trained_model_dir):
    classifier = Classifier.load(ModelDir(trained_model_dir).current_path())
    assert ClickModel.from_state({}) is None
    classifier.extras = {k: v for k, v in classifier.extras.items() if not k.startswith("clicker.")}
    pipeline = Pipeline(classifier, build_segmenter("cam", SegmenterOptions(), classifier))
    image, truth = make_image(np.random.default_rng(11), "Spot", (100, 120))
    x, y, _ = interior_point(truth)
    answer = pipeline.segment_prompted(image, "Spot", click(x, y))
    assert "clicker" not in answer.details and answer.details["interactive"]


def test_too_few_masked_images_fit_no_model(synthetic_dataset):
    masked = [s for s in synthetic_dataset.samples if "Spot" in s.classes][: MIN_IMAGES - 1]
    assert fit_click_model(masked) == (None, {})


def test_a_click_the_cut_leaves_out_adds_only_its_own_part():
    """A positive click below the cut adds the part around it cut at its own probability; the
    rest keeps the cut, and a click at almost no probability adds nothing (it once let every
    pixel of the image in)."""
    model = ClickModel(ClassTrees({}, np.array([0]), 0.0, 0.5))
    probability = np.full((40, 60), 1e-7, np.float32)
    probability[5:15, 5:15] = 0.9
    probability[20:30, 40:50] = 0.3
    probability[20:30, 20:30] = 0.2  # below the cut too, and clicked by nobody
    points = np.array([[10, 10], [45, 25], [2, 38]], np.float32)
    mask = model.cut(probability, points, np.array([1, 1, 1], np.int32))
    expected = np.zeros_like(mask)
    expected[5:15, 5:15] = expected[20:30, 40:50] = True
    assert np.array_equal(mask, expected)
    alone = model.cut(probability, points[2:], np.array([1], np.int32))
    assert not alone.any()


def test_a_checkpoint_whose_trees_read_other_features_is_refused(model):
    state = model.to_state()
    state["clicker.any.feature_idx"] = state["clicker.any.feature_idx"] + 100
    with pytest.raises(CheckpointError, match="retrain the model"):
        ClickModel.from_state(state, "v0007.pt")
