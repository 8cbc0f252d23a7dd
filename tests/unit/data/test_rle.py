"""Brush RLE: byte for byte what label-studio-sdk writes, scaled up without a full-size copy."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from worker.contract.errors import MaskError
from worker.data import rle


def _masks():
    rng = np.random.default_rng(0)
    yield rng.random((23, 31)) < 0.5  # many short runs
    yield np.zeros((7, 5), bool)
    yield np.ones((9, 11), bool)
    block = np.zeros((400, 420), bool)
    block[90:310, 40:] = True  # runs longer than one RLE group holds (65536 bytes)
    yield block
    yield np.ones((1, 1), bool)


@pytest.mark.parametrize("mask", list(_masks()), ids=lambda m: f"{m.shape}")
def test_encoding_is_what_the_sdk_writes_and_decodes_back(mask):
    encoded = rle.encode(mask)
    assert encoded == mask2rle(mask.astype(np.uint8) * 255)
    np.testing.assert_array_equal(rle.decode(encoded, mask.shape[1], mask.shape[0]), mask)


def test_a_small_mask_is_encoded_at_the_image_size_by_nearest_pixel():
    small = np.random.default_rng(2).random((30, 20)) < 0.3
    encoded = rle.encode(small, 97, 143)

    theirs = decode_rle(encoded).reshape(143, 97, 4)[:, :, 3] >= 128
    rows = np.minimum(((np.arange(143) + 0.5) * 30 / 143).astype(int), 29)
    columns = np.minimum(((np.arange(97) + 0.5) * 20 / 97).astype(int), 19)
    np.testing.assert_array_equal(theirs, small[rows][:, columns])
    np.testing.assert_array_equal(rle.decode(encoded, 97, 143), theirs)


def test_encoding_at_a_large_size_works_in_bands(monkeypatch):
    """Bands split runs; joined again, the bytes are those of the whole mask at once."""
    mask = np.zeros((64, 48), bool)
    mask[10:50, 5:40] = True
    whole = rle.encode(mask, 300, 200)
    monkeypatch.setattr(rle, "BAND_PIXELS", 700)
    assert rle.encode(mask, 300, 200) == whole


@pytest.mark.parametrize(
    ("encoded", "message"),
    [
        (rle.encode(np.ones((4, 4), bool)), "holds 64 bytes"),  # declared 5x4
        (rle.encode(np.ones((5, 4), bool))[:7], "ends in the middle"),
        ([0, 1, 300, 4, 5, 6, 7], "0..255"),
        (["a"] * 8, "list of bytes"),
        ([1, 2], "at least 7"),
    ],
)
def test_a_malformed_rle_is_refused(encoded, message):
    with pytest.raises(MaskError, match=message):
        rle.decode(encoded, 5, 4)


def test_a_region_larger_than_the_pixel_limit_is_refused_before_decoding():
    encoded = rle.encode(np.ones((2, 2), bool), 3000, 3000)  # 9 Mpx declared in 60 bytes
    with pytest.raises(MaskError, match="above MAX_IMAGE_PIXELS=1000000"):
        rle.decode(encoded, 3000, 3000, max_pixels=1_000_000)
    with pytest.raises(MaskError, match="not an image size"):
        rle.decode(encoded, 0, 3000)


def test_a_mask_of_noise_is_refused_rather_than_encoded_at_any_size(monkeypatch):
    stripes = np.zeros((40, 40), bool)
    stripes[:, ::2] = True  # 40 runs a row
    monkeypatch.setattr(rle, "MAX_RUNS", 2000)
    assert rle.encode(stripes)  # 1600 runs at its own size
    with pytest.raises(MaskError, match="more than 2000 runs"):
        rle.encode(stripes, 400, 400)
