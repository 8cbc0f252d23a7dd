from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import SAM2_TINY_CONFIG
from worker.contract.store import ModelDir
from worker.data.synthetic import make_image
from worker.labelstudio.results import decode_mask, to_prediction
from worker.pipeline.cam.base import CamMap
from worker.pipeline.classifier import Classifier
from worker.pipeline.pipeline import Pipeline, PipelineOptions, split_instances
from worker.pipeline.segmenters.base import (
    MaskResult,
    Segmenter,
    SegmenterOptions,
    build_segmenter,
)
from worker.pipeline.segmenters.cam import CamSegmenter


@pytest.fixture(scope="module")
def checkpoint(trained_model_dir):
    return ModelDir(trained_model_dir).current_path()


def test_cam_pipeline_masks_the_defect_it_classifies(checkpoint):
    pipeline = Pipeline(Classifier.load(checkpoint), CamSegmenter())
    rng = np.random.default_rng(3)
    ious = []
    for _ in range(5):
        image, truth = make_image(rng, "Spot", (100, 140))
        result = pipeline.run(image)
        assert (result.width, result.height) == (140, 100)
        assert "Spot" in result.prediction.classes
        (mask,) = [m for m in result.masks if m.label == "Spot"]
        ious.append((mask.mask & truth).sum() / (mask.mask | truth).sum())
    assert np.median(ious) > 0.2


def test_background_images_get_no_mask_and_given_labels_are_used(checkpoint):
    pipeline = Pipeline(Classifier.load(checkpoint), CamSegmenter())
    image, _ = make_image(np.random.default_rng(5), "Clean", (90, 90))
    result = pipeline.run(image)
    assert result.prediction.classes == ("Clean",)
    assert result.masks == ()
    given = pipeline.run(image, labels=["Scratch", "Clean"])
    assert {m.label for m in given.masks} <= {"Scratch"}
    assert [c.label for c in given.cams] == ["Scratch"]


def test_a_batch_gives_what_each_image_gives_alone(checkpoint):
    pipeline = Pipeline(Classifier.load(checkpoint), CamSegmenter())
    rng = np.random.default_rng(11)
    images = [
        make_image(rng, kind, (80 + 10 * k, 120))[0]
        for k, kind in enumerate(["Spot", "Clean", "Scratch"])
    ]
    batch = pipeline.run_batch(images)
    assert pipeline.run_batch([]) == []
    for image, batched in zip(images, batch, strict=True):
        alone = pipeline.run(image)
        assert batched.prediction.classes == alone.prediction.classes
        assert (batched.width, batched.height) == (alone.width, alone.height)
        assert [m.label for m in batched.masks] == [m.label for m in alone.masks]
        for a, b in zip(alone.masks, batched.masks, strict=True):
            assert (a.mask == b.mask).mean() > 0.99


def test_instances_split_connected_parts():
    mask = np.zeros((50, 50), bool)
    mask[5:15, 5:15] = True
    mask[30:45, 30:45] = True
    mask[0, 49] = True  # a speck below the minimum area
    parts = split_instances(MaskResult("Cell", mask, 0.9, "cam"), 0.01)
    assert len(parts) == 2
    assert sum(p.mask.sum() for p in parts) == 100 + 225
    assert {p.details["instance"] for p in parts} == {1, 2}


@pytest.fixture
def sam2_segmenter(sam2_checkpoint):
    options = SegmenterOptions(sam2_config=SAM2_TINY_CONFIG, sam2_checkpoint=sam2_checkpoint)
    return build_segmenter("sam2", options, None)


@pytest.mark.slow
def test_sam2_pipeline_rle_round_trip_at_original_size(checkpoint, sam2_segmenter):
    pipeline = Pipeline(Classifier.load(checkpoint), sam2_segmenter, PipelineOptions())
    image, _ = make_image(np.random.default_rng(11), "Scratch", (77, 133))
    result = pipeline.run(image, labels=["Scratch"])
    prediction = to_prediction(result, pipeline.version)
    assert prediction["model_version"] == pipeline.version == "v0001"
    brushes = [r for r in prediction["result"] if r["type"] == "brushlabels"]
    assert len(brushes) == len(result.masks)
    for region, mask in zip(brushes, result.masks, strict=True):
        assert (region["original_width"], region["original_height"]) == (133, 77)
        assert region["meta"]["segmenter"] == "sam2"
        decoded = decode_mask(region["value"]["rle"], 133, 77)
        assert np.array_equal(decoded, mask.mask)


@pytest.mark.slow
def test_sam2_answers_a_click_for_known_and_unknown_labels(checkpoint, sam2_segmenter):
    from worker.pipeline.prompts import Prompts

    pipeline = Pipeline(Classifier.load(checkpoint), sam2_segmenter)
    image, _ = make_image(np.random.default_rng(2), "Spot", (90, 120))
    click = Prompts(np.array([[60.0, 45.0], [5.0, 5.0]]), np.array([1, 0]))
    for label in ("Spot", "Pore"):  # "Pore" is not a class of the classifier
        mask = pipeline.segment_prompted(image, label, click)
        # Random SAM2 weights may draw nothing; then the focused CAM answers, and says so.
        assert mask is not None and mask.mask.any()
        assert mask.label == label and mask.segmenter == "sam2"
        assert mask.mask.shape == (90, 120) and mask.details["interactive"]


def test_a_prompt_with_nothing_to_focus_on_gives_no_mask(checkpoint):
    from worker.pipeline.prompts import Prompts

    pipeline = Pipeline(Classifier.load(checkpoint), CamSegmenter())
    image, _ = make_image(np.random.default_rng(4), "Spot", (80, 100))
    outside = Prompts(
        np.zeros((0, 2), np.float32), np.zeros(0, np.int32), np.array([200, 200, 240, 240])
    )
    assert pipeline.segment_prompted(image, "Spot", outside) is None


class DrawsNothing(Segmenter):
    """A segmenter whose every answer is empty, as random SAM2 weights may give."""

    name = "nothing"

    def __init__(self) -> None:
        self.asked = 0

    def segment(self, image, cams, prompts):
        self.asked += 1
        empty = np.zeros(image.shape[:2], bool)
        pairs = zip(cams, prompts, strict=True)
        return [MaskResult(c.label, empty, 0.0, self.name, p) for c, p in pairs]


def test_negative_clicks_alone_ask_no_segmenter_and_paint_nothing(checkpoint):
    """Negative clicks say only where the object is not: SAM2 was never trained on such a
    prompt (its best of three would be painted), and the CAM they focus covers nearly the whole
    image. A positive click still gets a mask, the focused CAM where the segmenter draws none."""
    from worker.pipeline.prompts import Prompts

    nothing = DrawsNothing()
    pipeline = Pipeline(Classifier.load(checkpoint), nothing)
    image, _ = make_image(np.random.default_rng(5), "Spot", (80, 100))
    negatives = Prompts(np.array([[10.0, 10.0], [70, 60]], np.float32), np.array([0, 0], np.int32))
    nowhere = Prompts(np.zeros((0, 2), np.float32), np.zeros(0, np.int32))
    for prompts in (negatives, nowhere):
        for label in ("Pore", "Spot"):
            assert pipeline.segment_prompted(image, label, prompts) is None
    assert nothing.asked == 0
    cam_pipeline = Pipeline(Classifier.load(checkpoint), CamSegmenter())
    assert cam_pipeline.segment_prompted(image, "Spot", negatives) is None
    positive = Prompts(np.array([[50.0, 40.0]], np.float32), np.array([1], np.int32))
    mask = pipeline.segment_prompted(image, "Pore", positive)
    assert nothing.asked == 1
    assert mask.details["fallback"] == "focused CAM" and 0 < mask.mask.mean() < 0.5


def test_score_is_low_where_the_cam_does_not_set_the_mask_apart(checkpoint):
    from worker.pipeline.classifier import Prediction
    from worker.pipeline.pipeline import ImageResult, cam_contrast

    mask = np.zeros((20, 20), bool)
    mask[5:10, 5:10] = True
    focused = mask.astype(np.float32)
    diffuse = np.full((20, 20), 0.6, np.float32)
    assert cam_contrast(focused, mask) == 1.0
    assert cam_contrast(diffuse, mask) == pytest.approx(0.0, abs=1e-6)
    assert cam_contrast(None, mask) == 1.0
    prediction = Prediction({"Spot": 0.9}, ("Spot",), 0.9)
    results = {
        name: ImageResult(
            20, 20, prediction, (MaskResult("Spot", mask, 0.8, "cam"),), (CamMap("Spot", cam, 0.9),)
        )
        for name, cam in (("focused", focused), ("diffuse", diffuse))
    }
    assert results["focused"].score == pytest.approx(0.9 * 0.8)
    assert results["diffuse"].score < results["focused"].score  # label the diffuse one first
