"""The extension points: a segmenter or a CAM method is one class and one registry line.

The classes below are the worked examples of docs/architecture.md, registered here by dotted
path the way the real entries are, so the test proves that nothing else needs to change: the
pipeline, ``build_segmenter``, ``compute_cams`` and the command line's choices find them.
"""

from __future__ import annotations

import numpy as np
import pytest

from worker.cli.main import build_parser
from worker.contract.errors import CamsamError, SegmenterError
from worker.contract.store import ModelDir
from worker.data.synthetic import make_image
from worker.pipeline import cam, segmenters
from worker.pipeline.cam.base import CamMap, CamMethod, compute_cams, resize_map
from worker.pipeline.masks import largest_part
from worker.pipeline.pipeline import Pipeline
from worker.pipeline.refiners import HAND_MADE, REFINERS
from worker.pipeline.segmenters.base import (
    MaskResult,
    Segmenter,
    SegmenterOptions,
    build_segmenter,
)


class LargestPartSegmenter(Segmenter):
    """The CAM cut at ``cut`` of its peak, its largest connected part kept."""

    name = "largest"

    def __init__(self, cut: float = 0.5) -> None:
        self.cut = cut

    @classmethod
    def from_options(cls, options: SegmenterOptions, classifier) -> LargestPartSegmenter:
        return cls()

    def segment(self, image, cams, prompts):
        return [
            MaskResult(c.label, largest_part(c.cam >= self.cut), c.probability, self.name, p)
            for c, p in zip(cams, prompts, strict=True)
        ]


class CentreCam(CamMethod):
    """A map that peaks in the middle of the image, whatever the classifier says."""

    name = "centre"

    def maps(self, classifier, images, labels, stages):
        probabilities = classifier.probabilities(images)
        classes = classifier.spec.classes
        result = []
        for image, wanted, row in zip(images, labels, probabilities, strict=True):
            height, width = image.shape[:2]
            ys, xs = np.mgrid[0:9, 0:9]
            bump = np.exp(-((ys - 4) ** 2 + (xs - 4) ** 2) / 8.0).astype(np.float32)
            result.append(
                [
                    CamMap(label, resize_map(bump, width, height), float(row[classes.index(label)]))
                    for label in wanted
                ]
            )
        return result


@pytest.fixture
def registered(monkeypatch):
    here = __name__
    monkeypatch.setitem(segmenters.SEGMENTERS, "largest", f"{here}.LargestPartSegmenter")
    monkeypatch.setitem(cam.CAM_METHODS, "centre", f"{here}.CentreCam")


def test_a_registered_segmenter_is_built_by_the_pipeline(registered, trained_model_dir):
    pipeline = Pipeline.build(ModelDir(trained_model_dir).current_path(), segmenter="largest")
    assert isinstance(pipeline.segmenter, LargestPartSegmenter)
    image, _ = make_image(np.random.default_rng(3), "Spot", (100, 140))
    result = pipeline.run(image, labels=["Spot"])
    (mask,) = result.masks
    assert mask.segmenter == "largest" and mask.mask.shape == (100, 140)
    # A click uses it too: the base class's for_prompts is the segmenter itself.
    assert pipeline.segmenter.for_prompts() is pipeline.segmenter
    assert pipeline.segmenter.cache_stats() is None


def test_a_registered_cam_method_is_used_by_name(registered, trained_model_dir):
    from worker.pipeline.classifier import Classifier

    classifier = Classifier.load(ModelDir(trained_model_dir).current_path())
    image, _ = make_image(np.random.default_rng(4), "Spot", (60, 80))
    (spot,) = compute_cams(classifier, image, ["Spot"], method="centre")
    assert spot.cam.shape == (60, 80) and np.unravel_index(spot.cam.argmax(), (60, 80)) in {
        (29, 39),
        (29, 40),
        (30, 39),
        (30, 40),
    }
    with pytest.raises(CamsamError, match="has no class"):
        compute_cams(classifier, image, ["Dog"], method="centre")


def test_the_command_line_offers_what_is_registered(registered):
    args = build_parser().parse_args(
        ["predict", "x.png", "--model-dir", "m", "--out", "o.json", "--segmenter", "largest"]
    )
    assert args.segmenter == "largest"
    args = build_parser().parse_args(
        ["eval", "d", "--model-dir", "m", "--cam-method", "centre", "--refiner", "learned"]
    )
    assert args.cam_method == "centre" and args.refiner in REFINERS


def test_unknown_names_list_what_there_is():
    with pytest.raises(SegmenterError, match="unknown segmenter 'watershed'.*'sam2', 'cam'"):
        build_segmenter("watershed", SegmenterOptions(), None)
    with pytest.raises(CamsamError, match="unknown CAM method 'cam9'.*'gradcam'"):
        compute_cams(None, np.zeros((4, 4, 3), np.uint8), [], method="cam9")
    assert set(HAND_MADE) < set(REFINERS) and "learned" in REFINERS
