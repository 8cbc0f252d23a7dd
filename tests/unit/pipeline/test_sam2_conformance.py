"""What camsam asks of ``SAM2ImagePredictor``, recorded call by call for each kind of prompt and
held against sam2's documented use (sam2 1.1.0, the version requirements/run.txt pins:
``SAM2ImagePredictor.set_image`` / ``set_image_batch`` / ``predict`` and the image predictor
example notebook).

- ``set_image(image)``: an RGB ``np.ndarray``, HWC, uint8 in [0, 255]; ``set_image_batch`` a list
  of them; once an image, ``predict`` many times after it.
- ``predict``: ``point_coords`` (N, 2) float pixels x, y with ``point_labels`` (N,) 1 = object,
  0 = background, or both None; ``box`` XYXY pixels or None; pixel coordinates
  (``normalize_coords`` left True); ``multimask_output=True`` only for an ambiguous prompt, a
  single point without a box (SAM2.1's ``multimask_max_pt_num: 1``; the docstring: "for
  non-ambiguous prompts, such as multiple input prompts, multimask_output=False can give better
  results"); every call under ``torch.inference_mode``.
- One click: of the three masks, the one with the highest predicted IoU (the notebook's
  ``sorted_ind = np.argsort(scores)[::-1]``).

A sam2 upgrade that changes these signatures fails here first.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import SAM2_TINY_CONFIG
from worker.pipeline.cam.base import CamMap
from worker.pipeline.prompts import Prompts, make_prompts
from worker.pipeline.segmenters.base import SegmenterOptions, build_segmenter
from worker.pipeline.segmenters.sam2 import Sam2Segmenter

pytestmark = pytest.mark.slow


@pytest.fixture
def recorded(sam2_checkpoint, monkeypatch):
    """A SAM2 with no cache whose predictor records each call: its name, keyword arguments,
    whether inference mode was on, and what predict returned."""
    import torch

    shared = build_segmenter(
        "sam2",
        SegmenterOptions(sam2_config=SAM2_TINY_CONFIG, sam2_checkpoint=sam2_checkpoint),
        None,
    )
    segmenter = Sam2Segmenter(shared.predictor, cache_size=0)
    calls: list[dict] = []
    for name in ("set_image", "set_image_batch", "predict"):
        original = getattr(segmenter.predictor, name)

        def record(*args, _name=name, _original=original, **kwargs):
            assert not args or _name != "predict", "predict is called by keyword"
            call = {"name": _name, "args": args, "kwargs": kwargs}
            call["inference"] = torch.is_inference_mode_enabled()
            call["returned"] = _original(*args, **kwargs)
            calls.append(call)
            return call["returned"]

        monkeypatch.setattr(segmenter.predictor, name, record)
    return segmenter, calls


def scene(height=72, width=96):
    rng = np.random.default_rng(0)
    image = rng.integers(90, 160, (height, width, 3), dtype=np.uint8)
    image[20:44, 40:70] = 30
    ys, xs = np.mgrid[0:height, 0:width]
    cam = np.exp(-((ys - 32) ** 2 + (xs - 55) ** 2) / (2 * 10.0**2)).astype(np.float32)
    return image, CamMap("Spot", cam, 0.8)


def points(*xy_labels) -> Prompts:
    coords = np.array([xy for xy, _ in xy_labels], np.float32).reshape(-1, 2)
    return Prompts(coords, np.array([label for _, label in xy_labels], np.int32))


def assert_documented_predict(call: dict, prompts: Prompts, multimask: bool) -> None:
    kwargs = call["kwargs"]
    assert call["name"] == "predict" and call["inference"]
    assert set(kwargs) == {
        "point_coords",
        "point_labels",
        "box",
        "multimask_output",
        "return_logits",
    }
    if len(prompts.points):
        coords, labels = np.asarray(kwargs["point_coords"]), np.asarray(kwargs["point_labels"])
        assert coords.shape == (len(prompts.points), 2) and coords.dtype.kind == "f"
        assert labels.shape == (len(prompts.points),) and set(labels.tolist()) <= {0, 1}
        assert np.array_equal(coords, prompts.points)
    else:
        assert kwargs["point_coords"] is None and kwargs["point_labels"] is None
    if prompts.box is None:
        assert kwargs["box"] is None
    else:
        box = np.asarray(kwargs["box"])
        assert box.shape == (4,) and box[0] <= box[2] and box[1] <= box[3]
    assert kwargs["multimask_output"] is multimask
    masks, scores, _ = call["returned"]
    assert masks.shape[0] == scores.shape[0] == (3 if multimask else 1)


def assert_documented_image(call: dict, image: np.ndarray) -> None:
    (given,) = call["args"]
    assert call["inference"] and isinstance(given, np.ndarray)
    assert given.dtype == np.uint8 and given.shape == image.shape and given.shape[2] == 3


def test_automatic_prompts_box_and_points_ask_for_one_mask(recorded):
    segmenter, calls = recorded
    image, cam = scene()
    prompts = make_prompts(cam.cam)
    assert prompts.box is not None and len(prompts.points) >= 2
    (result,) = segmenter.segment(image, [cam], [prompts])
    embed, decode = calls
    assert embed["name"] == "set_image"
    assert_documented_image(embed, image)
    assert_documented_predict(decode, prompts, multimask=False)
    assert result.details["mask_index"] == 0 and result.details["mask_choice"] == "single"


def test_a_class_with_two_objects_asks_once_per_object_and_joins_the_masks(recorded):
    segmenter, calls = recorded
    image, _ = scene()
    ys, xs = np.mgrid[0:72, 0:96]
    blobs = [
        np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * 6.0**2)) for cy, cx in ((20, 20), (50, 75))
    ]
    cam = CamMap("Spot", np.maximum(*blobs).astype(np.float32), 0.8)
    prompts = make_prompts(cam.cam)
    assert len(prompts.others) == 1
    (result,) = segmenter.segment(image, [cam], [prompts])
    _, *decodes = calls
    assert len(decodes) == 2
    for decode, one in zip(decodes, (prompts, *prompts.others), strict=True):
        assert_documented_predict(decode, one, multimask=False)
    joined = np.logical_or(*[decode["returned"][0][0] > 0.0 for decode in decodes])
    assert np.array_equal(result.mask, joined) and result.details["objects"] == 2


def test_one_click_asks_for_three_and_takes_sams_best(recorded):
    """Even where the CAM would pick another: here the CAM is the mask SAM2 scores lowest."""
    segmenter, calls = recorded
    image, _ = scene()
    click = points(((55, 32), 1))
    with_cam = Sam2Segmenter(segmenter.predictor, cache_size=0)
    with_cam.segment(image, [CamMap("Spot", np.ones((72, 96), np.float32), 1.0)], [click])
    logits, scores, _ = calls[-1]["returned"]
    worst = int(np.argmin(scores))
    assert scores[worst] < scores.max()
    cam = CamMap("Spot", (logits[worst] > 0).astype(np.float32), 1.0)
    assert 0 < cam.cam.mean() < 1  # a mask the CAM choice can tell from the others
    (result,) = segmenter.for_prompts().segment(image, [cam], [click])
    assert_documented_predict(calls[-1], click, multimask=True)
    best = int(np.argmax(scores))
    assert result.details["mask_index"] == best
    assert np.array_equal(result.mask, logits[best] > 0.0)
    (by_cam,) = with_cam.segment(image, [cam], [click])  # pre-annotation's choice differs
    assert by_cam.details["mask_index"] == worst


@pytest.mark.parametrize(
    "prompts",
    [
        points(((55, 32), 1), ((10, 10), 0)),  # clicks
        points(((55, 32), 1), ((60, 30), 1)),  # two positive clicks
        Prompts(np.zeros((0, 2), np.float32), np.zeros(0, np.int32), np.array([40, 20, 70, 44.0])),
        Prompts(  # box and clicks
            np.array([[55, 32], [5, 5]], np.float32),
            np.array([1, 0], np.int32),
            np.array([40, 20, 70, 44], np.float32),
        ),
    ],
    ids=["click+negative", "two clicks", "box", "box+clicks"],
)
def test_every_prompt_that_is_not_one_point_asks_for_one_mask(recorded, prompts):
    segmenter, calls = recorded
    image, cam = scene()
    segmenter.for_prompts().segment(image, [cam], [prompts])
    _, decode = calls
    assert_documented_predict(decode, prompts, multimask=False)


def test_a_batch_embeds_once_then_decodes_each_image_as_one(recorded):
    segmenter, calls = recorded
    image, cam = scene()
    other = image[:, ::-1].copy()
    prompts = [make_prompts(cam.cam)]
    segmenter.segment_batch([image, other], [[cam], [cam]], [prompts, prompts])
    embed, *decodes = calls
    assert embed["name"] == "set_image_batch" and embed["inference"]
    (given,) = embed["args"]
    assert isinstance(given, list) and len(given) == 2
    assert all(g.dtype == np.uint8 and g.shape == image.shape for g in given)
    assert len(decodes) == 2
    for decode in decodes:
        assert_documented_predict(decode, prompts[0], multimask=False)
