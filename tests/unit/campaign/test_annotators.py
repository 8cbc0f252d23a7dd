"""The three annotators' minutes on a batch, with a click answer made here: what is clicked,
what is painted, and what camsam's accepted pre-annotations spare."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from worker.campaign.annotators import batch_minutes, click_totals
from worker.campaign.options import CampaignOptions
from worker.data.dataset import Sample
from worker.evaluation.evaluate import ImageScore
from worker.pipeline.segmenters.base import MaskResult

OPTIONS = CampaignOptions(seconds_per_click=6.0, max_clicks=3)  # a click: 0.1 minute


class Clicks:
    """Answers a click with the object under it, after ``needed`` clicks (never: 0)."""

    def __init__(self, truth: dict[str, np.ndarray], needed: int) -> None:
        self.truth, self.needed, self.asked = truth, needed, 0

    def segment_prompted(self, image, label, prompts):
        self.asked += 1
        x, y = prompts.points[0].astype(int)
        _, parts = cv2.connectedComponents(self.truth[label].astype(np.uint8))
        under = parts == parts[y, x]
        done = self.needed and len(prompts.points) >= self.needed
        mask = under if done else np.zeros_like(under)
        return MaskResult(label, mask, 1.0, "stub", prompts)


def sample(tmp_path: Path, masks: dict[str, np.ndarray]) -> Sample:
    path = tmp_path / "image.png"
    cv2.imwrite(str(path), np.full((40, 60, 3), 128, np.uint8))
    return Sample(path, tuple(masks), mask_arrays=masks, key="image.png")


def two_spots() -> np.ndarray:
    mask = np.zeros((40, 60), bool)
    mask[5:15, 5:15] = mask[20:30, 40:50] = True
    return mask


def score(iou: dict[str, float], shown: bool, classes=("Spot",)) -> ImageScore:
    return ImageScore("image.png", classes, classes, iou=iou, shown=shown)


def test_each_object_is_clicked_until_accepted_and_a_pre_annotation_spares_its_class(tmp_path):
    truth = {"Spot": two_spots()}
    image = sample(tmp_path, truth)
    answer = Clicks(truth, needed=2)
    missed = batch_minutes(answer, [image], [score({"Spot": 0.2}, True)], OPTIONS)
    assert missed["clicking"] == {"objects": 2, "clicks": 4, "accepted": 2, "painted": 0}
    minutes = missed["minutes"]
    assert minutes["paint"] == 1.0
    assert minutes["clicks"] == pytest.approx(0.4)  # two objects, two clicks each
    assert minutes["camsam"] == pytest.approx(0.2 + 0.4)  # reviewed, then clicked
    accepted = batch_minutes(answer, [image], [score({"Spot": 0.8}, True)], OPTIONS)
    assert accepted["minutes"]["camsam"] == pytest.approx(0.2)  # reviewed and accepted
    assert accepted["minutes"]["clicks"] == pytest.approx(0.4)  # clicks know no pre-annotation


def test_an_object_clicks_never_accept_is_painted_at_its_share(tmp_path):
    truth = {"Spot": two_spots()}
    answer = Clicks(truth, needed=0)
    found = batch_minutes(answer, [sample(tmp_path, truth)], [score({"Spot": 0.0}, False)], OPTIONS)
    assert found["clicking"] == {"objects": 2, "clicks": 6, "accepted": 0, "painted": 2}
    # Three clicks on each, then each painted at half the image's minute.
    assert found["minutes"]["clicks"] == pytest.approx(2 * (0.3 + 0.5))
    assert found["minutes"]["camsam"] == found["minutes"]["clicks"]  # nothing shown


def test_background_images_cost_only_camsams_false_masks(tmp_path):
    background = sample(tmp_path, {})
    clean = ImageScore("image.png", ("Clean",), ("Spot",), false_mask=True, shown=True)
    found = batch_minutes(Clicks({}, 1), [background], [clean], OPTIONS)
    assert found["minutes"] == {"paint": 0.0, "clicks": 0.0, "camsam": 0.2}
    assert found["clicking"]["objects"] == 0


def test_a_campaigns_first_round_costs_every_annotator_its_minutes_by_hand():
    rounds = [
        {"batch": {"minutes_by_hand": 5.0}},
        {"batch": {"minutes_by_hand": 4.0, "annotators": {"paint": 4, "clicks": 2, "camsam": 1}}},
    ]
    assert click_totals(rounds) == {"paint": 9.0, "clicks": 7.0, "camsam": 6.0}


def test_an_object_of_a_class_the_version_cannot_mask_is_painted_by_every_annotator(tmp_path):
    truth = {"Pore": two_spots()}
    unknown = ImageScore("image.png", ("Pore",), ("Clean",), shown=False)  # no IoU: unknown
    found = batch_minutes(Clicks(truth, 1), [sample(tmp_path, truth)], [unknown], OPTIONS)
    assert found["minutes"] == {"paint": 1.0, "clicks": 1.0, "camsam": 1.0}
