from __future__ import annotations

import numpy as np
import pytest

from worker.contract.errors import CamsamError
from worker.pipeline.prompts import Prompts, find_peaks, main_region_box, make_prompts, seed_cam


def blob_cam(shape=(120, 200), centres=((60, 50),), sigma=10.0) -> np.ndarray:
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    cam = np.zeros(shape, np.float32)
    for cy, cx in centres:
        cam = np.maximum(cam, np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * sigma**2)))
    return cam / cam.max()


def test_argmax_is_the_single_brightest_point_in_x_y_order():
    cam = blob_cam(centres=((30, 150),))
    prompts = make_prompts(cam, "argmax")
    assert prompts.points.tolist() == [[150.0, 30.0]]
    assert prompts.labels.tolist() == [1]
    assert prompts.box is None


def test_prompts_agree_positives_inside_the_box_negatives_a_margin_outside():
    """SAM2 obeys boxes and negatives closely: a peak of another region would contradict the
    box, and a negative hard by the box would often sit on the object the CAM under-covers."""
    cam = blob_cam(centres=((30, 40), (90, 160)))
    prompts = make_prompts(cam, "peaks+box")
    x0, y0, x1, y1 = prompts.box
    assert x0 <= 40 <= x1 and y0 <= 30 <= y1
    positives = prompts.positives.astype(int).tolist()
    assert [40, 30] in positives
    for x, y in positives:
        assert x0 <= x <= x1 and y0 <= y <= y1
    assert len(prompts.negatives) >= 1
    margin = 0.25 * max(x1 - x0, y1 - y0)
    for x, y in prompts.negatives.astype(int):
        assert cam[y, x] < 0.15
        outside = max(x0 - x, x - x1, y0 - y, y - y1)
        assert outside >= margin, (x, y, outside, margin)


def test_each_object_of_a_class_gets_its_own_box_and_points():
    """Two defects of one class: one box per object (a box around both would take the surface
    between them), each object's positives inside its own box; a faint region is no object."""
    cam = blob_cam(shape=(120, 300), centres=((30, 40), (90, 160), (60, 260)))
    cam[:, 230:] *= 0.4  # the third blob peaks at 0.4, under the peak threshold
    prompts = make_prompts(cam, "peaks+box")
    assert len(prompts.others) == 1
    (other,) = prompts.others
    for one, (x, y) in ((prompts, (40, 30)), (other, (160, 90))):
        x0, y0, x1, y1 = one.box
        assert x0 <= x <= x1 and y0 <= y <= y1
        assert np.linalg.norm(one.positives - [x, y], axis=1).min() < 3  # found at 256 px
        for px, py in one.positives:
            assert x0 <= px <= x1 and y0 <= py <= y1
    assert prompts.box[2] < other.box[0]  # apart, as the objects are
    assert make_prompts(cam, "peaks+box", max_objects=1).others == ()
    assert make_prompts(cam, "argmax").others == ()
    assert (
        len(make_prompts(cam, "box").others) == 1
        and make_prompts(cam, "box").others[0].box is not None
    )


def test_prompts_of_a_large_cam_keep_every_object_at_the_cams_scale():
    small = blob_cam(shape=(120, 200), centres=((30, 40), (90, 160)))
    large = np.kron(small, np.ones((4, 4), np.float32))  # 480 x 800: found on a smaller copy
    prompts = make_prompts(large)
    (other,) = prompts.others
    for x, y in ((4 * 40, 4 * 30), (4 * 160, 4 * 90)):  # each blob in one of the boxes
        inside = [
            one.box[0] <= x <= one.box[2] and one.box[1] <= y <= one.box[3]
            for one in (prompts, other)
        ]
        assert sum(inside) == 1
    described = prompts.scaled(0.5, 0.5).to_dict()
    assert described["others"][0]["box"] == (other.box * 0.5).round(1).tolist()


def test_box_covers_the_peak_region_only():
    cam = blob_cam(centres=((60, 50),), sigma=8)
    x0, y0, x1, y1 = main_region_box(cam, 0.35)
    assert 30 < x0 < 50 < x1 < 70 and 40 < y0 < 60 < y1 < 80


def test_peaks_fall_back_to_argmax_on_a_flat_weak_cam():
    cam = np.full((40, 40), 0.1, np.float32)
    cam[5, 7] = 0.3
    assert find_peaks(cam, 3, 0.5).tolist() == [[7.0, 5.0]]


def test_box_strategy_has_no_points_and_unknown_strategy_is_refused():
    prompts = make_prompts(blob_cam(), "box")
    assert len(prompts.points) == 0 and prompts.box is not None
    with pytest.raises(CamsamError, match="choose one of"):
        make_prompts(blob_cam(), "clicks")


def test_seeded_cam_follows_the_person_not_only_the_classifier():
    cam = blob_cam(centres=((30, 40),))
    clicked = seed_cam(cam, Prompts(np.array([[160.0, 90.0]]), np.array([1])))
    assert np.unravel_index(np.argmax(clicked), clicked.shape) == (90, 160)  # CAM silent there
    boxed = seed_cam(
        cam, Prompts(np.zeros((0, 2)), np.zeros(0, int), np.array([100, 60, 190, 110]))
    )
    assert boxed[:, :100].max() == 0 and boxed[70, 150] > 0
    negative = seed_cam(cam, Prompts(np.array([[40.0, 30.0]]), np.array([0])))
    assert negative[30, 40] < 0.01


def test_prompts_of_a_large_cam_land_where_the_cam_is_high():
    ys, xs = np.mgrid[0:1200, 0:900]
    cam = np.exp(-((ys - 800) ** 2 + (xs - 300) ** 2) / (2 * 60.0**2)).astype(np.float32)
    prompts = make_prompts(cam)
    positives = prompts.points[prompts.labels == 1]
    assert len(positives) >= 1
    for x, y in positives:
        assert cam[int(y), int(x)] > 0.5
    x0, y0, x1, y1 = prompts.box
    assert x0 < 300 < x1 and y0 < 800 < y1 and x1 <= 900 and y1 <= 1200
    for x, y in prompts.points[prompts.labels == 0]:
        assert cam[min(int(y), 1199), min(int(x), 899)] < 0.2
