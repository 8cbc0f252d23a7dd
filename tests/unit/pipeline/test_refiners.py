from __future__ import annotations

import numpy as np
import pytest

from worker.contract.errors import SegmenterError
from worker.pipeline.masks import fill_holes, iou, major_parts, remove_specks
from worker.pipeline.refiners.base import RefineParams, from_plain, refine_cam
from worker.pipeline.refiners.guided import guided_filter
from worker.pipeline.signals import background, contrast_map, ridge_map, texture_residual
from worker.training.tune_refiners import GRID


def square_scene():
    """A dark square on a grey background, and a blobby CAM centred on it but too wide."""
    image = np.full((100, 120, 3), 160, np.uint8)
    image[30:70, 40:80] = 60
    truth = np.zeros((100, 120), bool)
    truth[30:70, 40:80] = True
    ys, xs = np.mgrid[0:100, 0:120]
    cam = np.exp(-((ys - 50) ** 2 + (xs - 60) ** 2) / (2 * 22.0**2)).astype(np.float32)
    return image, cam, truth


@pytest.mark.parametrize("method", ["guided", "grabcut"])
def test_refinement_follows_edges_better_than_the_raw_threshold(method):
    image, cam, truth = square_scene()
    raw = iou(cam >= 0.5, truth)
    refined = iou(refine_cam(image, cam, RefineParams(method)), truth)
    assert refined > raw


def test_guided_filter_keeps_constant_and_edges():
    guide = np.zeros((40, 40), np.float32)
    guide[:, 20:] = 1.0
    flat = guided_filter(guide, np.full_like(guide, 0.3), 4, 1e-3)
    assert np.allclose(flat, 0.3, atol=1e-4)
    step = guided_filter(guide, guide.copy(), 4, 1e-3)
    assert step[:, :18].max() < 0.1 and step[:, 22:].min() > 0.9


def test_major_parts_keep_the_parts_near_the_largest_in_size():
    mask = np.zeros((100, 100), bool)
    mask[0:20, 0:20] = True  # 400 px
    mask[50:60, 50:65] = True  # 150 px
    mask[90:95, 90:95] = True  # 25 px
    assert major_parts(mask, 0.0).sum() == 575
    assert major_parts(mask, 0.3).sum() == 550
    assert major_parts(mask, 1.0).sum() == 400
    assert not major_parts(np.zeros((9, 9), bool), 1.0).any()


def test_remove_specks_keeps_the_largest_part():
    mask = np.zeros((100, 100), bool)
    mask[10:40, 10:40] = True
    mask[80, 80] = True
    cleaned = remove_specks(mask, 0.001)
    assert cleaned[20, 20] and not cleaned[80, 80]
    tiny = np.zeros((100, 100), bool)
    tiny[5, 5] = tiny[50, 50] = True
    assert remove_specks(tiny, 0.5).sum() == 1


def test_unknown_refiner_is_refused():
    with pytest.raises(SegmenterError, match="choose one of"):
        RefineParams("crf")


def test_contrast_finds_a_small_spot_a_wide_cam_misses():
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(120, 6, (120, 160)), 0, 255).astype(np.uint8)
    image[50:56, 70:76] = 40  # a blowhole: tiny and dark
    image = np.repeat(image[:, :, None], 3, axis=2)
    truth = np.zeros((120, 160), bool)
    truth[50:56, 70:76] = True
    ys, xs = np.mgrid[0:120, 0:160]
    cam = np.exp(-((ys - 53) ** 2 + (xs - 73) ** 2) / (2 * 25.0**2)).astype(np.float32)
    plain = iou(refine_cam(image, cam, RefineParams("none")), truth)
    spot = refine_cam(image, cam, RefineParams("contrast", 0.3, 4.0))
    assert iou(spot, truth) > 0.4 > plain
    assert contrast_map(image)[53, 73] > 4.0


def test_texture_residual_is_in_robust_standard_deviations():
    rng = np.random.default_rng(1)
    gray = rng.normal(100, 5, (200, 200)).astype(np.float32)
    z = texture_residual(gray, 12)
    assert 0.8 < np.median(np.abs(z)) * 1.4826 < 1.2
    gray[100, 100] += 60
    assert texture_residual(gray, 12)[100, 100] > 8


def test_fill_holes_closes_rings_only():
    ring = np.zeros((30, 30), bool)
    ring[5:20, 5:20] = True
    ring[8:17, 8:17] = False
    open_cup = np.zeros((30, 30), bool)
    open_cup[22:28, 2:10] = True
    open_cup[22:27, 4:8] = False
    open_cup[27, 4:8] = False  # an opening to the outside: not a hole
    filled = fill_holes(ring | open_cup)
    assert filled[12, 12] and filled[5:20, 5:20].all()
    assert not filled[24, 5]


def spots_scene():
    """A dark spot and a bright spot of the same size on a grainy surface, the CAM over both."""
    rng = np.random.default_rng(2)
    gray = np.clip(rng.normal(120, 5, (120, 200)), 0, 255).astype(np.uint8)
    gray[55:63, 46:54] = 50  # dark: the defect
    gray[55:63, 146:154] = 190  # bright: a reflection
    dark = np.zeros((120, 200), bool)
    dark[55:63, 46:54] = True
    ys, xs = np.mgrid[0:120, 0:200]
    cam = np.exp(-((ys - 59) ** 2) / (2 * 30.0**2) - ((xs - 100) ** 2) / (2 * 80.0**2))
    return np.repeat(gray[:, :, None], 3, axis=2), cam.astype(np.float32), dark


def test_polarity_keeps_the_dark_spot_and_leaves_the_bright_one():
    image, cam, dark = spots_scene()
    both = refine_cam(image, cam, RefineParams("contrast", 0.2, 4.0))
    only_dark = refine_cam(image, cam, RefineParams("contrast", 0.2, 4.0, polarity="dark"))
    assert both[59, 150] and only_dark[59, 50] and not only_dark[59, 150]
    assert iou(only_dark, dark) > 0.5 > iou(both, dark)


def test_a_relative_cut_and_the_largest_part():
    image, cam, dark = spots_scene()
    image[20:23, 100:103] = 70  # a second, smaller dark speck
    params = RefineParams("contrast", 0.05, polarity="dark", relative=0.5, largest=True)
    mask = refine_cam(image, cam, params)
    assert iou(mask, dark) > 0.5 and not mask[21, 101]


def test_ridge_map_finds_a_thin_dark_line_not_a_bright_one():
    rng = np.random.default_rng(3)
    gray = np.clip(rng.normal(120, 4, (100, 160)), 0, 255).astype(np.uint8)
    gray[30, 10:150] = 60  # a crack, one pixel wide
    gray[70, 10:150] = 180  # a bright scratch
    image = np.repeat(gray[:, :, None], 3, axis=2)
    dark = ridge_map(image, "dark")
    assert dark[30, 80] > 5 * dark[70, 80] and dark[30, 80] > 10
    assert ridge_map(image, "bright")[70, 80] > 10


def test_the_wide_background_blur_on_a_shrunk_copy_matches_the_full_one():
    rng = np.random.default_rng(4)
    gray = cv2_blur(rng.normal(100, 20, (300, 420)).astype(np.float32), 20) + 50
    full = cv2_blur(gray, 26)
    fast = background(gray, 26)
    inner = (slice(60, -60), slice(60, -60))  # borders are handled a little differently
    assert np.abs(fast - full)[inner].max() < 0.5


def cv2_blur(x, sigma):
    import cv2

    return cv2.GaussianBlur(x, (0, 0), sigma)


def test_tuning_tries_every_refiner_and_polarity():
    assert {p.method for p in GRID} == {"none", "guided", "contrast", "ridge"}
    assert {p.polarity for p in GRID if p.method == "contrast"} == {"both", "dark", "bright"}
    assert any(p.relative for p in GRID) and any(p.largest for p in GRID)


def test_settings_of_older_versions_still_load_and_mean_what_they_meant():
    old = from_plain(
        {"Spot": {"method": "contrast", "cam_threshold": 0.3, "contrast_threshold": 4}}
    )
    assert old["Spot"] == RefineParams("contrast", 0.3, 4.0, polarity="both", scale=1 / 16)
    assert RefineParams("contrast", 0.3, 4.0) in GRID or len(GRID) > 100
    with pytest.raises(SegmenterError, match="polarity"):
        RefineParams("contrast", polarity="darker")
