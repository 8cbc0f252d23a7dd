"""Segmenters; SAM2 runs for real (hiera-tiny config, random weights saved by the test)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import SAM2_TINY_CONFIG
from worker.contract.errors import SegmenterError
from worker.pipeline.cam.base import CamMap
from worker.pipeline.masks import clicked_parts
from worker.pipeline.prompts import Prompts, make_prompts
from worker.pipeline.refiners.base import RefineParams
from worker.pipeline.segmenters.base import SegmenterOptions, build_segmenter
from worker.pipeline.segmenters.cam import CamSegmenter
from worker.pipeline.segmenters.sam2 import (
    Sam2Segmenter,
    _image_key,
    choose_mask,
    known_config,
    sam2_context,
    sam2_precision,
)
from worker.pipeline.segmenters.threshold import ThresholdSegmenter


def scene(height=90, width=130):
    image = np.full((height, width, 3), 150, np.uint8)
    image[20:50, 60:100] = 40
    ys, xs = np.mgrid[0:height, 0:width]
    cam = np.exp(-((ys - 35) ** 2 + (xs - 80) ** 2) / (2 * 15.0**2)).astype(np.float32)
    return image, CamMap("Spot", cam, 0.9)


@pytest.fixture(scope="module")
def sam2(sam2_checkpoint) -> Sam2Segmenter:
    return build_segmenter(
        "sam2",
        SegmenterOptions(
            sam2_config=SAM2_TINY_CONFIG, sam2_checkpoint=sam2_checkpoint, device="cpu"
        ),
        None,
    )


@pytest.mark.slow
def test_sam2_contract_shapes_and_details(sam2):
    image, cam = scene()
    other = CamMap("Crack", np.roll(cam.cam, 40, axis=1), 0.6)
    prompts = [make_prompts(c.cam) for c in (cam, other)]
    results = sam2.segment(image, [cam, other], prompts)
    assert [r.label for r in results] == ["Spot", "Crack"]
    for result in results:
        assert result.segmenter == "sam2"
        assert result.mask.shape == (90, 130) and result.mask.dtype == bool
        assert result.details["mask_index"] in (0, 1, 2)
        assert 0.0 <= result.details["cam_agreement"] <= 1.0
        assert 0.0 <= result.score <= 1.0


@pytest.mark.slow
def test_sam2_embeds_each_image_once_and_caches_the_embedding(sam2, monkeypatch):
    image, cam = scene()
    sam2.cache.clear()  # earlier tests embedded this scene already
    calls = []
    original = sam2.predictor.set_image
    monkeypatch.setattr(sam2.predictor, "set_image", lambda im: calls.append(1) or original(im))
    cams = [cam, CamMap("Crack", cam.cam[::-1].copy(), 0.5), CamMap("Other", cam.cam, 0.5)]
    first = sam2.segment(image, cams, [make_prompts(c.cam) for c in cams])
    assert len(calls) == 1
    hits = sam2.cache_stats()["hits"]
    other = image.copy()
    other[0, 0] = 0
    sam2.segment(other, [cam], [make_prompts(cam.cam)])  # another image: embedded
    again = sam2.segment(image, cams, [make_prompts(c.cam) for c in cams])  # a second click
    assert len(calls) == 2 and sam2.cache_stats()["hits"] == hits + 1
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.mask, b.mask)  # the cached embedding decodes the same masks
    assert sam2.segment(image, [], []) == []


@pytest.mark.slow
def test_sam2_batch_embeds_new_images_in_one_pass_and_matches_one_by_one(sam2, monkeypatch):
    image, cam = scene()
    shifted = np.roll(image, 30, axis=1)
    sam2.cache.clear()
    prompts = [make_prompts(cam.cam)]
    one_by_one = [sam2.segment(im, [cam], prompts)[0] for im in (image, shifted)]
    sam2.cache.clear()
    calls = []
    original = sam2.predictor.set_image_batch
    monkeypatch.setattr(
        sam2.predictor, "set_image_batch", lambda ims: calls.append(len(ims)) or original(ims)
    )
    batch = sam2.segment_batch([image, shifted, image], [[cam], [cam], []], [prompts, prompts, []])
    assert calls == [2]  # the repeated image and the image without CAMs are not embedded
    assert [len(row) for row in batch] == [1, 1, 0]
    for single, batched in zip(one_by_one, batch[:2], strict=True):
        agree = (single.mask == batched[0].mask).mean()
        assert agree > 0.99  # batched and single convolutions may differ in the last bit


@pytest.mark.slow
def test_sam2_without_a_cache_embeds_every_time(sam2):
    image, cam = scene(64, 64)
    uncached = Sam2Segmenter(sam2.predictor, cache_size=0)
    for _ in range(2):
        (result,) = uncached.segment(image, [cam], [make_prompts(cam.cam)])
        assert result.mask.shape == (64, 64)
    assert uncached.cache_stats() == {"hits": 0, "misses": 2} and not uncached.cache


@pytest.mark.slow
def test_sam2_prompt_strategies_all_decode(sam2):
    image, cam = scene(64, 64)
    for strategy in ("argmax", "peaks", "box", "peaks+box"):
        (result,) = sam2.segment(image, [cam], [make_prompts(cam.cam, strategy)])
        assert result.mask.shape == (64, 64)


@pytest.mark.slow
def test_sam2_runs_in_eval_and_inference_mode(sam2, monkeypatch):
    import torch

    sam2.predictor.model.train()
    segmenter = Sam2Segmenter(sam2.predictor, cache_size=0)
    assert not segmenter.predictor.model.training
    seen = []
    embed = sam2.predictor.set_image

    def recording(image):
        seen.append((torch.is_inference_mode_enabled(), torch.is_autocast_enabled("cpu")))
        return embed(image)

    monkeypatch.setattr(sam2.predictor, "set_image", recording)
    image, cam = scene()
    segmenter.segment(image, [cam], [make_prompts(cam.cam)])
    assert seen == [(True, False)]  # no autocast on a CPU: float32 as the weights are
    assert not torch.is_inference_mode_enabled()  # and nothing leaks out of the call


def test_sam2_context_autocasts_to_bfloat16_only_on_a_gpu():
    import torch

    with sam2_context("cpu"):
        assert torch.is_inference_mode_enabled() and not torch.is_autocast_enabled("cpu")
    if not torch.cuda.is_available():
        return
    native = sam2_precision("cuda:0") == "bfloat16"
    with sam2_context("cuda:0"):
        assert torch.is_autocast_enabled("cuda") == native
        if native:
            assert torch.get_autocast_dtype("cuda") == torch.bfloat16
    assert not torch.is_autocast_enabled("cuda")


def test_bfloat16_only_where_the_gpu_computes_it_natively(monkeypatch):
    """T4/V100-class GPUs (compute capability 7.x) emulate bfloat16 slowly: float32 there."""
    import torch

    from worker.pipeline.segmenters import sam2 as module

    capability = {0: (7, 5), 1: (8, 0), 2: (9, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capability[index])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    module._native_bfloat16.cache_clear()
    try:
        assert sam2_precision("cuda:0") == "float32"
        assert sam2_precision("cuda:1") == "bfloat16"
        assert sam2_precision("cuda") == "bfloat16"  # the current device
        assert sam2_precision("cuda:2") == "bfloat16"
        assert sam2_precision("cpu") == "float32"
    finally:
        module._native_bfloat16.cache_clear()


@pytest.mark.gpu
@pytest.mark.slow
def test_sam2_on_a_gpu_matches_its_contract_from_several_threads(sam2_checkpoint):
    """bf16 autocast is per thread: request threads each get it, and each gets a whole mask."""
    import threading

    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    segmenter = build_segmenter(
        "sam2",
        SegmenterOptions(
            sam2_config=SAM2_TINY_CONFIG, sam2_checkpoint=sam2_checkpoint, device="cuda"
        ),
        None,
    )
    assert segmenter.predictor.device.type == "cuda" and not segmenter.predictor.model.training
    image, cam = scene()
    prompts = make_prompts(cam.cam)
    results = []

    def click():
        results.append(segmenter.segment(image, [cam], [prompts])[0])

    threads = [threading.Thread(target=click) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    for result in results:
        assert result.mask.shape == (90, 130) and result.mask.dtype == bool
        assert np.array_equal(result.mask, results[0].mask)
    assert not torch.is_autocast_enabled("cuda")


def test_sam2_without_weights_says_how_to_fix(tmp_path):
    with pytest.raises(SegmenterError, match="--segmenter cam"):
        build_segmenter("sam2", SegmenterOptions(), None)
    with pytest.raises(SegmenterError, match="does not exist"):
        build_segmenter(
            "sam2",
            SegmenterOptions(sam2_config=SAM2_TINY_CONFIG, sam2_checkpoint=tmp_path / "x.pt"),
            None,
        )
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"junk")
    with pytest.raises(SegmenterError, match="cannot build SAM2"):
        build_segmenter(
            "sam2", SegmenterOptions(sam2_config=SAM2_TINY_CONFIG, sam2_checkpoint=broken), None
        )
    with pytest.raises(SegmenterError, match="choose one of"):
        build_segmenter("watershed", SegmenterOptions(), None)


def test_sam2_errors_name_the_fix(tmp_path, monkeypatch):
    with pytest.raises(SegmenterError, match="sam2 knows no hub id 'facebook/sam3'.*sam2.1-hiera"):
        build_segmenter("sam2", SegmenterOptions(sam2_hub_id="facebook/sam3"), None)
    both = SegmenterOptions(
        sam2_hub_id="facebook/sam2.1-hiera-tiny",
        sam2_config=SAM2_TINY_CONFIG,
        sam2_checkpoint=tmp_path / "x.pt",
    )
    with pytest.raises(SegmenterError, match="unset SAM2_CONFIG and SAM2_CHECKPOINT"):
        build_segmenter("sam2", both, None)
    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    checkpoint.write_bytes(b"")
    a_file = tmp_path / "sam2.1_hiera_t.yaml"
    a_file.write_text("model: {}\n")
    training = "configs/sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml"
    for path in (str(a_file), "sam2.1_hiera_t.yaml", training):
        options = SegmenterOptions(sam2_config=path, sam2_checkpoint=checkpoint)
        with pytest.raises(SegmenterError, match="not a file.*configs/sam2.1/sam2.1_hiera_t.yaml"):
            build_segmenter("sam2", options, None)

    for name in ("configs/sam2.1/sam2.1_hiera_t", "/configs/sam2.1/sam2.1_hiera_t.yaml"):
        known_config(name)  # what hydra finds, build_sam2 finds

    from sam2.sam2_image_predictor import SAM2ImagePredictor

    def offline(hub_id, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(SAM2ImagePredictor, "from_pretrained", offline)
    with pytest.raises(
        SegmenterError, match=r"Without the internet: download sam2.1_hiera_tiny.pt"
    ):
        build_segmenter("sam2", SegmenterOptions(sam2_hub_id="facebook/sam2.1-hiera-tiny"), None)


@pytest.mark.slow
def test_one_sam2_serves_every_project_and_version(sam2, sam2_checkpoint):
    """SAM2 does not change with the classifier: built once a process for its weights, with one
    cache; a caller's mask choice is its own."""
    options = SegmenterOptions(
        sam2_config=SAM2_TINY_CONFIG, sam2_checkpoint=sam2_checkpoint, mask_choice="best-iou"
    )
    other = build_segmenter("sam2", options, object())
    assert other.predictor is sam2.predictor and other.cache is sam2.cache
    assert other.lock is sam2.lock and other.stats is sam2.stats
    assert other.mask_choice == "best-iou" and sam2.mask_choice == "cam"
    assert sam2.for_prompts().mask_choice == "best-iou" and sam2.mask_choice == "cam"
    with pytest.raises(SegmenterError, match="choose one of"):
        sam2.with_choice("largest")


@pytest.mark.slow
def test_sam2_reads_its_cache_hits_before_embedding_evicts_them(sam2):
    """Re-predicting recent tasks: a hit among the oldest entries must survive the embedding of
    the misses beside it, which makes room by evicting the oldest."""
    image, cam = scene(64, 64)
    small = Sam2Segmenter(sam2.predictor, cache_size=2)
    a, b, c, d = (np.roll(image, 9 * k, axis=1) for k in range(4))
    prompts = [make_prompts(cam.cam)]
    small.segment_batch([a, b], [[cam], [cam]], [prompts, prompts])
    rows = small.segment_batch([a, c, d], [[cam]] * 3, [prompts] * 3)
    assert [len(row) for row in rows] == [1, 1, 1]
    assert small.cache_stats() == {"hits": 1, "misses": 4} and len(small.cache) == 2


@pytest.mark.slow
def test_a_cached_embedding_owns_its_memory(sam2):
    """An entry that were a view into its batch's tensor would keep the whole batch alive."""
    image, cam = scene(64, 64)
    small = Sam2Segmenter(sam2.predictor, cache_size=4)
    prompts = [make_prompts(cam.cam)]
    small.segment_batch([image, image[::-1].copy()], [[cam], [cam]], [prompts, prompts])
    assert len(small.cache) == 2
    for features, _ in small.cache.values():
        for tensor in [features["image_embed"], *features["high_res_feats"]]:
            assert tensor.shape[0] == 1
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


@pytest.mark.slow
def test_a_sam2_failure_is_a_segmenter_error_the_job_retries_image_by_image(sam2, monkeypatch):
    image, cam = scene(64, 64)
    segmenter = Sam2Segmenter(sam2.predictor, cache_size=0)

    def broken(**kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(sam2.predictor, "predict", broken)
    with pytest.raises(SegmenterError, match="SAM2 failed on 1 image.*out of memory"):
        segmenter.segment(image, [cam], [make_prompts(cam.cam)])
    assert not segmenter.lock.locked()


def test_choose_mask_by_cam_agreement_iou_or_index():
    cam = np.zeros((10, 10), np.float32)
    cam[2:6, 2:6] = 1.0
    masks = np.zeros((3, 10, 10), bool)
    masks[0, 2:6, 2:6] = True  # agrees with the CAM
    masks[1, :, :] = True  # SAM's favourite
    masks[2, 8:, 8:] = True
    predicted_iou = np.array([0.2, 0.9, 0.5])
    assert choose_mask(masks, predicted_iou, cam, "cam") == (0, 1.0)
    assert choose_mask(masks, predicted_iou, cam, "best-iou")[0] == 1
    assert choose_mask(masks, predicted_iou, cam, "2")[0] == 2


def test_cam_segmenters_label_their_masks():
    image, cam = scene()
    prompts = [make_prompts(cam.cam)]
    (refined,) = CamSegmenter().segment(image, [cam], prompts)
    (plain,) = ThresholdSegmenter().segment(image, [cam], prompts)
    assert refined.segmenter == "cam" and plain.segmenter == "threshold"
    assert refined.details["refiner"] == "guided"
    assert refined.mask[35, 80] and not refined.mask[80, 10]


def test_an_image_is_known_by_its_pixels_and_shape_wherever_it_lies_in_memory():
    image = np.random.default_rng(5).integers(0, 255, (40, 60, 3), np.uint8)
    wide = np.zeros((40, 120, 3), np.uint8)
    wide[:, ::2] = image  # the same pixels, strided in memory
    assert _image_key(wide[:, ::2]) == _image_key(image.copy())
    changed = image.copy()
    changed[39, 59, 2] ^= 1
    assert _image_key(changed) != _image_key(image)
    assert _image_key(image.reshape(60, 40, 3)) != _image_key(image)  # same bytes, other shape


def two_spots() -> CamMap:
    """A CAM with two separate peaks, at (20, 30) and (60, 30) as x, y."""
    ys, xs = np.mgrid[0:60, 0:80].astype(np.float32)
    cam = np.maximum(
        np.exp(-((xs - 20) ** 2 + (ys - 30) ** 2) / 50),
        np.exp(-((xs - 60) ** 2 + (ys - 30) ** 2) / 50),
    )
    return CamMap("Spot", cam, 0.9)


def test_clicked_parts_keeps_what_a_positive_click_falls_in_and_a_negative_cuts_it():
    mask = two_spots().cam >= 0.5
    left = clicked_parts(mask, np.array([[20, 30]]), np.array([1]))
    assert left[30, 20] and not left[30, 60]
    both = clicked_parts(mask, np.array([[20, 30], [60, 30]]), np.array([1, 1]))
    assert both.sum() == mask.sum()
    # A negative click inside a kept part cuts away what lies nearer it than the positive one.
    cut = clicked_parts(mask, np.array([[18, 30], [24, 30]]), np.array([1, 0]))
    assert cut[30, 18] and not cut[30, 24] and cut.sum() < left.sum()
    # A negative click alone, or on nothing kept, keeps nothing; so does a click outside.
    assert clicked_parts(mask, np.array([[20, 30]]), np.array([0])) is None
    assert clicked_parts(mask, np.array([[40, 5]]), np.array([1])) is None
    # A click at the far edge (100% in Label Studio) lands in the last pixel.
    edge = np.zeros((60, 80), bool)
    edge[:, 79] = True
    assert clicked_parts(edge, np.array([[80.0, 60.0]]), np.array([1])) is not None


def test_a_click_keeps_the_part_of_the_class_mask_it_falls_in_else_the_mask_as_before():
    image = np.full((60, 80, 3), 128, np.uint8)
    cam = two_spots()
    own = CamSegmenter(per_class={"Spot": RefineParams("none", cam_threshold=0.5)})
    clicked = own.for_prompts()

    def click(points, labels):
        prompts = Prompts(np.array(points, np.float32), np.array(labels, np.int32))
        (result,) = clicked.segment(image, [cam], [prompts])
        return result

    right = click([[60, 30]], [1])
    assert right.details["parts"] == "clicked" and right.details["refiner"] == "none"
    assert right.mask[30, 60] and not right.mask[30, 20]
    (whole,) = own.segment(image, [cam], [None])
    assert (right.mask <= whole.mask).all() and right.mask.sum() < whole.mask.sum()
    # A click outside the class's mask: the mask cut as before clicks picked parts (the class's
    # hand-made refiner; the guided CAM where it has trees).
    outside = click([[40, 5]], [1])
    assert "parts" not in outside.details and outside.details["refiner"] == "none"


def test_a_class_with_trees_keeps_the_clicked_part_of_their_mask_else_the_guided_cam():
    """The trees (stood in for by a stub) draw only the left spot: a click there keeps it, a
    second positive click elsewhere adds nothing, a click on the right alone gets the part of
    the guided CAM's mask there (what answered clicks before)."""
    image = np.full((60, 80, 3), 128, np.uint8)
    cam = two_spots()

    class LeftOnly:
        def __contains__(self, label):
            return True

        def mask(self, image, cam, label):
            left = np.zeros(cam.shape, bool)
            left[25:36, 15:26] = True
            return left

        def threshold(self, label):
            return 0.5

    learned = CamSegmenter(per_class={"Spot": RefineParams("learned")}, learned=LeftOnly())

    def click(points, labels):
        prompts = Prompts(np.array(points, np.float32), np.array(labels, np.int32))
        (result,) = learned.for_prompts().segment(image, [cam], [prompts])
        return result

    both = click([[20, 30], [60, 30]], [1, 1])
    assert both.details["parts"] == "clicked" and both.details["refiner"] == "learned"
    assert both.mask.sum() == 11 * 11
    right = click([[60, 30]], [1])
    assert right.details["refiner"] == "guided" and right.mask[30, 60] and not right.mask[30, 20]
    # The focus leaves negative clicks out: they cut the clicked part instead.
    negative = Prompts(np.array([[20, 30], [24, 30]], np.float32), np.array([1, 0], np.int32))
    focused = learned.for_prompts().focus(cam.cam, negative)
    assert focused[30, 24] > 0.5 * focused.max()
    cut = click([[20, 30], [24, 30]], [1, 0])
    assert cut.mask[30, 20] and not cut.mask[30, 24]
