"""The click protocol: where each click goes, what the segmenter is asked, and the figures."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from worker.evaluation.clicks import ObjectClicks, click_object, summarise_clicks
from worker.pipeline.simulated_clicks import interior_point, next_click, objects


def rectangle(shape=(40, 60), top=10, left=20, height=11, width=21) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top : top + height, left : left + width] = True
    return mask


def test_the_interior_point_is_the_centre_and_the_image_edge_is_a_boundary():
    x, y, distance = interior_point(rectangle())
    assert (x, y) == (30, 15) and distance == pytest.approx(6, abs=0.5)
    # A region along the top edge: its interior point is not on the edge.
    x, y, _ = interior_point(rectangle(top=0, height=9))
    assert y == 4
    assert interior_point(np.zeros((5, 5), bool)) == (0.0, 0.0, 0.0)


def test_the_next_click_goes_into_the_larger_error_positive_or_negative():
    truth = rectangle()
    assert next_click(truth, np.zeros_like(truth))[2] == 1  # all missed: positive
    spilled = truth | rectangle(top=0, left=0, height=40, width=15)
    x, y, label = next_click(truth, spilled)
    assert label == 0 and x < 15  # the spill is larger than anything missed: negative, in it
    assert next_click(truth, truth) is None
    # A tie between what was missed and what spilled over is a negative click, as in the field.
    tie = np.zeros((40, 60), bool)
    tie[10:15, 10:15] = True
    shifted = np.zeros_like(tie)
    shifted[10:15, 30:35] = True
    assert next_click(tie, shifted)[2] == 0
    # Never twice on one pixel.
    clicked = np.zeros_like(truth)
    clicked[15, 30] = True
    x, y, _ = next_click(truth, np.zeros_like(truth), clicked)
    assert (x, y) != (30, 15)


def test_objects_are_connected_parts_and_specks_are_left_out():
    mask = rectangle(shape=(200, 200)) | rectangle(shape=(200, 200), top=100, left=100)
    mask[190, 190] = True  # one pixel: a speck
    assert len(objects(mask)) == 2


@dataclass
class Drawn:
    mask: np.ndarray


class Recording:
    """A segmenter stand-in: draws a disc of radius 5 around each positive click, minus one
    around each negative; remembers every prompt it was asked."""

    def __init__(self, shape):
        self.shape, self.asked = shape, []

    def segment_prompted(self, image, label, prompts):
        self.asked.append((label, prompts.points.copy(), prompts.labels.copy(), prompts.box))
        yy, xx = np.mgrid[: self.shape[0], : self.shape[1]]
        mask = np.zeros(self.shape, bool)
        for (x, y), positive in zip(prompts.points, prompts.labels, strict=True):
            disc = (xx - x) ** 2 + (yy - y) ** 2 <= 25
            mask = mask | disc if positive else mask & ~disc
        return Drawn(mask) if mask.any() else None


def test_a_replay_adds_one_click_at_a_time_and_keeps_the_clicks_before():
    truth = rectangle()
    pipeline = Recording(truth.shape)
    record = click_object(pipeline, np.zeros((*truth.shape, 3), np.uint8), "Crack", truth, 4, "a")
    assert len(record.ious) == 4 and len(record.seconds) == len(pipeline.asked)
    for number, (label, points, labels, box) in enumerate(pipeline.asked, start=1):
        assert label == "Crack" and box is None and len(points) == len(labels) == number
    first = pipeline.asked[0]
    assert first[1].tolist() == [[30.0, 15.0]] and first[2].tolist() == [1]
    assert pipeline.asked[-1][1][:1].tolist() == [[30.0, 15.0]]  # earlier clicks stay
    assert record.ious[-1] > record.ious[0] > 0


def test_an_exact_mask_ends_the_clicks_and_keeps_its_iou():
    truth = rectangle(height=5, width=5, top=10, left=10)
    yy, xx = np.mgrid[:40, :60]

    class Exact(Recording):
        def segment_prompted(self, image, label, prompts):
            super().segment_prompted(image, label, prompts)
            return Drawn(truth.copy())

    pipeline = Exact(truth.shape)
    record = click_object(pipeline, np.zeros((40, 60, 3), np.uint8), "Spot", truth, 3, "b")
    assert record.ious == [1.0, 1.0, 1.0] and len(pipeline.asked) == 1


def test_no_mask_is_iou_zero():
    truth = rectangle()

    class Nothing(Recording):
        def segment_prompted(self, image, label, prompts):
            super().segment_prompted(image, label, prompts)

    record = click_object(Nothing(truth.shape), np.zeros((40, 60, 3), np.uint8), "x", truth, 2, "c")
    assert record.ious == [0.0, 0.0]


def test_the_summary_counts_noc_capped_and_the_share_accepted_at_one_click():
    records = [
        ObjectClicks("a", "Crack", [0.6, 0.9, 0.9], [0.1, 0.1, 0.1]),
        ObjectClicks("b", "Crack", [0.2, 0.4, 0.7], [0.2, 0.2, 0.2]),
        ObjectClicks("c", "Spot", [0.1, 0.1, 0.1], [0.3, 0.3, 0.3]),
    ]
    report = summarise_clicks(records, 3)
    assert report["objects"] == 3
    assert report["miou_after"] == pytest.approx([0.3, 0.4667, 0.5667], abs=1e-4)
    assert report["accepted_at_one_click"] == pytest.approx(1 / 3)
    assert report["noc_50"] == pytest.approx((1 + 3 + 3) / 3)  # b at 3, c never: capped at 3
    assert report["noc_85"] == pytest.approx((2 + 3 + 3) / 3)
    assert report["noc_90"] == pytest.approx((2 + 3 + 3) / 3)
    assert report["seconds_per_click"] == pytest.approx(0.2)
    assert report["per_class"]["Crack"]["noc_50"] == pytest.approx(2.0)
    assert report["per_class"]["Spot"]["accepted_at_one_click"] == 0.0
