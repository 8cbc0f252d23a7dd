"""to_prediction: a pipeline result as the Label Studio prediction JSON the backend returns."""

from __future__ import annotations

import json

import numpy as np
import pytest

from worker.contract.label_config import parse_label_config
from worker.labelstudio.results import (
    DEFAULT_BRUSH_NAME,
    DEFAULT_CHOICES_NAME,
    DEFAULT_IMAGE_NAME,
    decode_mask,
    encode_mask,
    to_prediction,
)
from worker.pipeline.classifier import Prediction
from worker.pipeline.pipeline import ImageResult
from worker.pipeline.prompts import Prompts
from worker.pipeline.segmenters.base import MaskResult

WIDTH, HEIGHT = 37, 23
PROJECT_CONFIG = """
<View>
  <Image name="photo" value="$img"/>
  <Choices name="defect" toName="photo" choice="multiple">
    <Choice value="Crack"/><Choice value="Uneven"/><Choice value="Free"/>
  </Choices>
  <BrushLabels name="paint" toName="photo">
    <Label value="Crack"/><Label value="Fray"/>
  </BrushLabels>
</View>
"""


def _mask(seed: int) -> np.ndarray:
    mask = np.random.default_rng(seed).random((HEIGHT, WIDTH)) < 0.3
    mask[0, :] = True  # make any row/column mix-up visible
    return mask


@pytest.fixture
def result() -> ImageResult:
    prompts = Prompts(
        points=np.array([[3.25, 4.0], [30.0, 20.5]]),
        labels=np.array([1, 0]),
        box=np.array([1.0, 2.0, 35.0, 21.0]),
    )
    masks = (
        MaskResult("Crack", _mask(0), 0.9, "sam2", prompts, {"mask_choice": "cam"}),
        MaskResult("Uneven", _mask(1), 0.6, "cam"),
        MaskResult("Fray", _mask(2), 0.75, "threshold"),
    )
    prediction = Prediction(
        probabilities={"Crack": 0.95, "Uneven": 0.7, "Fray": 0.8, "Free": 0.01},
        classes=("Crack", "Uneven", "Fray"),
        score=0.8,
    )
    return ImageResult(WIDTH, HEIGHT, prediction, masks, cams=())


def _regions(prediction: dict, kind: str) -> list[dict]:
    return [r for r in prediction["result"] if r["type"] == kind]


def test_without_config_uses_default_names_and_every_label(result):
    prediction = to_prediction(result, "camsam-v7")

    assert prediction["model_version"] == "camsam-v7"
    assert prediction["score"] == pytest.approx(0.8 * 0.6)
    (choices,) = _regions(prediction, "choices")
    assert choices["from_name"] == DEFAULT_CHOICES_NAME
    assert choices["to_name"] == DEFAULT_IMAGE_NAME
    assert choices["value"] == {"choices": ["Crack", "Uneven", "Fray"]}
    assert choices["score"] == pytest.approx(0.8)
    brushes = _regions(prediction, "brushlabels")
    assert [r["value"]["brushlabels"] for r in brushes] == [["Crack"], ["Uneven"], ["Fray"]]
    for region, mask in zip(brushes, result.masks, strict=True):
        assert region["from_name"] == DEFAULT_BRUSH_NAME
        assert region["to_name"] == DEFAULT_IMAGE_NAME
        assert region["original_width"] == WIDTH
        assert region["original_height"] == HEIGHT
        assert region["value"]["format"] == "rle"
        assert region["score"] == pytest.approx(mask.score)
        assert region["meta"]["segmenter"] == mask.segmenter
        decoded = decode_mask(region["value"]["rle"], WIDTH, HEIGHT)
        assert decoded.shape == (HEIGHT, WIDTH)
        np.testing.assert_array_equal(decoded, mask.mask)
    ids = [r["id"] for r in prediction["result"]]
    assert len(set(ids)) == len(ids)


def test_mask_meta_carries_prompts_and_details(result):
    crack = _regions(to_prediction(result, "v1"), "brushlabels")[0]

    assert crack["meta"]["mask_choice"] == "cam"
    assert crack["meta"]["prompts"] == {
        "points": [[3.2, 4.0], [30.0, 20.5]],
        "labels": [1, 0],
        "box": [1.0, 2.0, 35.0, 21.0],
    }
    uneven = _regions(to_prediction(result, "v1"), "brushlabels")[1]
    assert "prompts" not in uneven["meta"]


def test_with_config_uses_its_names_and_drops_labels_it_does_not_offer(result):
    config = parse_label_config(PROJECT_CONFIG)

    prediction = to_prediction(result, "camsam-v7", config)

    assert prediction["model_version"] == "camsam-v7"
    (choices,) = _regions(prediction, "choices")
    assert choices["from_name"] == "defect"
    assert choices["to_name"] == "photo"
    assert choices["value"]["choices"] == ["Crack", "Uneven"]  # no Fray choice in the project
    brushes = _regions(prediction, "brushlabels")
    assert [r["value"]["brushlabels"] for r in brushes] == [["Crack"], ["Fray"]]  # no Uneven brush
    for region in brushes:
        assert region["from_name"] == "paint"
        assert region["to_name"] == "photo"
    np.testing.assert_array_equal(
        decode_mask(brushes[1]["value"]["rle"], WIDTH, HEIGHT), result.masks[2].mask
    )


def test_config_without_choices_writes_masks_only(result):
    config = parse_label_config(
        '<View><Image name="image" value="$image"/>'
        '<BrushLabels name="mask" toName="image"><Label value="Uneven"/></BrushLabels></View>'
    )

    prediction = to_prediction(result, "v1", config)

    assert _regions(prediction, "choices") == []
    assert [r["value"]["brushlabels"] for r in prediction["result"]] == [["Uneven"]]


def test_config_without_brush_writes_choices_only(result):
    config = parse_label_config(
        '<View><Image name="image" value="$image"/>'
        '<Choices name="class" toName="image"><Choice value="Fray"/></Choices></View>'
    )

    prediction = to_prediction(result, "v1", config)

    assert [r["type"] for r in prediction["result"]] == ["choices"]
    assert prediction["result"][0]["value"]["choices"] == ["Fray"]


def test_no_predicted_class_gives_no_choices_region(result):
    empty = ImageResult(WIDTH, HEIGHT, Prediction({"Crack": 0.1}, (), 0.9), (), ())

    prediction = to_prediction(empty, "v1")

    assert prediction["result"] == []
    assert prediction["score"] == pytest.approx(0.9)


def test_prediction_is_json_serialisable(result):
    for config in (None, parse_label_config(PROJECT_CONFIG)):
        prediction = to_prediction(result, "v1", config)
        assert json.loads(json.dumps(prediction)) == prediction


def test_encode_decode_round_trip_on_edge_masks():
    for mask in (np.zeros((HEIGHT, WIDTH), bool), np.ones((HEIGHT, WIDTH), bool)):
        np.testing.assert_array_equal(decode_mask(encode_mask(mask), WIDTH, HEIGHT), mask)
