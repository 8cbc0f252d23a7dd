"""load_image and load_mask: every image form users bring becomes one RGB uint8, upright array."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from worker.contract.errors import ImageError
from worker.data.images import load_image, load_mask, read_image

EXIF_ORIENTATION = 0x0112


def _gradient(height: int, width: int) -> np.ndarray:
    rows = np.arange(height, dtype=np.uint8)[:, None] * 5
    cols = np.arange(width, dtype=np.uint8)[None, :] * 3
    return (rows + cols).astype(np.uint8)


def test_gray_png_becomes_three_equal_channels(tmp_path):
    gray = _gradient(11, 17)
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)

    image = load_image(path)

    assert image.shape == (11, 17, 3)
    assert image.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(image[:, :, channel], gray)


def test_rgb_jpeg_keeps_its_colours(tmp_path):
    rgb = np.zeros((16, 24, 3), dtype=np.uint8)
    rgb[:, :8] = (200, 30, 30)
    rgb[:, 8:16] = (30, 200, 30)
    rgb[:, 16:] = (30, 30, 200)
    path = tmp_path / "colour.jpg"
    Image.fromarray(rgb).save(path, quality=95)

    image = load_image(str(path))

    assert image.shape == (16, 24, 3)
    assert image.dtype == np.uint8
    # JPEG is lossy: compare block means, away from the block edges.
    assert np.abs(image[4:12, 2:6].mean(axis=(0, 1)) - (200, 30, 30)).max() < 12
    assert np.abs(image[4:12, 10:14].mean(axis=(0, 1)) - (30, 200, 30)).max() < 12
    assert np.abs(image[4:12, 18:22].mean(axis=(0, 1)) - (30, 30, 200)).max() < 12


def test_rgba_png_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((6, 8, 4), dtype=np.uint8)
    rgba[:, :4] = (10, 20, 30, 255)  # opaque
    rgba[:, 4:6] = (0, 0, 0, 0)  # fully transparent
    rgba[:, 6:] = (0, 0, 0, 128)  # half-transparent black over white -> mid gray
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)

    image = load_image(path)

    assert image.shape == (6, 8, 3)
    assert (image[:, :4] == (10, 20, 30)).all()
    assert (image[:, 4:6] == 255).all()
    assert (np.abs(image[:, 6:].astype(int) - 127) <= 1).all()


def _palette_image() -> Image.Image:
    indices = np.zeros((5, 7), dtype=np.uint8)
    indices[:, 3:] = 1
    indices[0, 0] = 2
    image = Image.fromarray(indices, mode="P")
    palette = [255, 0, 0, 0, 0, 255, 0, 255, 0] + [0] * (256 * 3 - 9)
    image.putpalette(palette)
    return image


def test_palette_png_maps_indices_to_colours(tmp_path):
    path = tmp_path / "palette.png"
    _palette_image().save(path)

    image = load_image(path)

    assert image.shape == (5, 7, 3)
    assert (image[1:, :3] == (255, 0, 0)).all()
    assert (image[:, 3:] == (0, 0, 255)).all()
    assert tuple(image[0, 0]) == (0, 255, 0)


def test_palette_png_transparent_index_becomes_white(tmp_path):
    path = tmp_path / "palette_transparent.png"
    _palette_image().save(path, transparency=1)  # index 1 (blue) is transparent

    image = load_image(path)

    assert image.shape == (5, 7, 3)
    assert (image[:, 3:] == 255).all()
    assert (image[1:, :3] == (255, 0, 0)).all()
    assert tuple(image[0, 0]) == (0, 255, 0)


def _assert_stretched(image: np.ndarray, values: np.ndarray) -> None:
    """min -> 0, max -> 255, linear in between (to within rounding), same on all three channels."""
    low, high = values.min(), values.max()
    ideal = (values.astype(np.float64) - low) * 255.0 / (high - low)
    assert image.dtype == np.uint8
    assert image.shape == (*values.shape, 3)
    assert (image == image[:, :, :1]).all()
    assert image[values == low].max() == 0
    assert image[values == high].min() == 255
    assert np.abs(image[:, :, 0] - ideal).max() <= 1.0


def test_16bit_png_is_stretched_to_its_own_range(tmp_path):
    # A dim microscopy-like image: dividing by 257 would leave it nearly black.
    values = (1000 + np.arange(9 * 13).reshape(9, 13) * 7).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as stored:
        assert stored.mode in ("I;16", "I")

    _assert_stretched(load_image(path), values)


def test_32bit_int_tiff_is_stretched_to_its_own_range(tmp_path):
    values = (-50_000 + np.arange(8 * 10).reshape(8, 10) * 12_345).astype(np.int32)
    path = tmp_path / "deep.tif"
    Image.fromarray(values, mode="I").save(path)
    with Image.open(path) as stored:
        assert stored.mode == "I"

    _assert_stretched(load_image(path), values)


def test_constant_16bit_image_is_black_not_nan(tmp_path):
    path = tmp_path / "flat.png"
    Image.fromarray(np.full((4, 5), 4242, dtype=np.uint16)).save(path)

    image = load_image(path)

    assert image.shape == (4, 5, 3)
    assert (image == 0).all()


def test_rgb_tiff_is_read_exactly(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    path = tmp_path / "colour.tif"
    Image.fromarray(rgb).save(path)

    np.testing.assert_array_equal(load_image(path), rgb)


def test_cmyk_tiff_becomes_rgb(tmp_path):
    cmyk = np.zeros((4, 6, 4), dtype=np.uint8)
    cmyk[:, :3] = (255, 0, 0, 0)  # cyan
    cmyk[:, 3:] = (0, 0, 0, 255)  # black
    path = tmp_path / "print.tif"
    Image.fromarray(cmyk, mode="CMYK").save(path)

    image = load_image(path)

    assert image.shape == (4, 6, 3)
    assert (image[:, :3] == (0, 255, 255)).all()
    assert (image[:, 3:] == 0).all()


@pytest.mark.parametrize(
    ("orientation", "marker_at"),
    [
        # Stored top-left corner; 6 = rotate 90° clockwise to view, 8 = 90° counter-clockwise.
        (6, "top_right"),
        (8, "bottom_left"),
    ],
)
def test_exif_rotated_jpeg_is_returned_as_a_viewer_shows_it(tmp_path, orientation, marker_at):
    stored_height, stored_width = 32, 48
    pixels = np.full((stored_height, stored_width, 3), 255, dtype=np.uint8)
    pixels[:8, :8] = (220, 0, 0)  # red marker in the stored top-left corner
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    path = tmp_path / "phone.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)

    image = load_image(path)

    assert image.shape == (stored_width, stored_height, 3)
    corners = {
        "top_left": image[:8, :8],
        "top_right": image[:8, -8:],
        "bottom_left": image[-8:, :8],
        "bottom_right": image[-8:, -8:],
    }
    marker = corners.pop(marker_at)[2:6, 2:6].mean(axis=(0, 1))
    assert marker[0] > 180 and marker[1] < 60 and marker[2] < 60
    for corner in corners.values():
        assert corner[2:6, 2:6].min() > 200  # still white


def test_bytes_input_is_decoded_like_a_file():
    rgb = np.random.default_rng(1).integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")

    np.testing.assert_array_equal(load_image(buffer.getvalue()), rgb)


def test_missing_file_raises_image_error(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_garbage_bytes_raise_image_error():
    with pytest.raises(ImageError, match="<bytes>"):
        load_image(b"this is not an image at all")


def test_garbage_file_raises_image_error(tmp_path):
    path = tmp_path / "fake.png"
    path.write_bytes(b"\x89PNG but not really")
    with pytest.raises(ImageError, match="fake.png"):
        load_image(path)


def test_truncated_png_raises_image_error(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(_gradient(64, 64), mode="L").save(buffer, format="PNG")
    with pytest.raises(ImageError):
        load_image(buffer.getvalue()[:-40])


def test_mask_with_jpeg_like_noise_is_thresholded_at_128(tmp_path):
    rng = np.random.default_rng(2)
    truth = rng.random((20, 30)) < 0.4
    noisy = np.where(
        truth, rng.integers(225, 256, size=truth.shape), rng.integers(0, 31, size=truth.shape)
    ).astype(np.uint8)
    path = tmp_path / "mask.png"
    Image.fromarray(noisy, mode="L").save(path)

    mask = load_mask(path, shape=(20, 30))

    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, truth)


def test_mask_saved_as_jpeg_survives_compression(tmp_path):
    truth = np.zeros((32, 40), dtype=bool)
    truth[8:24, 16:32] = True
    path = tmp_path / "mask.jpg"
    Image.fromarray(truth.astype(np.uint8) * 255, mode="L").save(path, quality=50)

    np.testing.assert_array_equal(load_mask(path), truth)


def test_rgb_mask_is_read_through_its_luminance(tmp_path):
    truth = np.zeros((6, 6), dtype=bool)
    truth[:3] = True
    rgb = np.repeat((truth.astype(np.uint8) * 255)[:, :, None], 3, axis=2)
    path = tmp_path / "mask_rgb.png"
    Image.fromarray(rgb).save(path)

    np.testing.assert_array_equal(load_mask(path, (6, 6)), truth)


def test_mask_of_another_size_raises_image_error(tmp_path):
    path = tmp_path / "mask.png"
    Image.fromarray(np.zeros((20, 30), dtype=np.uint8), mode="L").save(path)

    with pytest.raises(ImageError, match="30x20.*31x20"):
        load_mask(path, shape=(20, 31))


def test_missing_mask_raises_image_error(tmp_path):
    with pytest.raises(ImageError, match="cannot read mask"):
        load_mask(tmp_path / "absent.png")


def test_an_image_above_the_pixel_limit_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("L", (4000, 3000)).save(path)  # 12 Mpx, a few kB on disk
    with pytest.raises(ImageError, match="MAX_IMAGE_PIXELS=1000000"):
        load_image(path.read_bytes(), max_pixels=1_000_000)
    assert load_image(path, max_pixels=20_000_000).shape == (3000, 4000, 3)


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    data = io.BytesIO()
    image.save(data, fmt, **options)
    return data.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
@pytest.mark.parametrize("orientation", [1, 6])
def test_a_large_image_is_read_smaller_with_its_own_size_kept(fmt, orientation):
    rgb = np.zeros((300, 500, 3), np.uint8)
    rgb[:, 250:] = 220  # right half bright: 'up' after the EXIF rotation is checkable
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    encoded = _encoded(Image.fromarray(rgb), fmt, exif=exif.tobytes())
    full = load_image(encoded)

    small = read_image(encoded, max_side=100)

    assert small.size == (full.shape[1], full.shape[0])
    assert max(small.pixels.shape[:2]) == 100
    assert small.pixels.shape[0] * full.shape[1] == pytest.approx(
        small.pixels.shape[1] * full.shape[0], rel=0.02
    )
    scaled = np.asarray(Image.fromarray(full).resize(small.pixels.shape[1::-1]))
    assert np.abs(small.pixels.astype(int) - scaled).mean() < 8


def test_a_jpeg_is_decoded_reduced_never_at_full_size(monkeypatch):
    """The decoder's own reduction: a 4000x4000 JPEG read for 500 px decodes 500x500 pixels."""
    encoded = _encoded(Image.new("RGB", (4000, 4000), (90, 90, 90)), "JPEG")
    decoded = []
    original = ImageFile.ImageFile.load

    def load(self):
        decoded.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)

    image = read_image(encoded, max_side=500)

    assert image.size == (4000, 4000) and image.pixels.shape == (500, 500, 3)
    assert decoded and max(max(size) for size in decoded) == 500


def test_sixteen_bit_images_are_scaled_down_before_their_range_is_stretched():
    rng = np.random.default_rng(0)
    deep = (rng.random((400, 300)) * 4000).astype(np.uint16)
    image = read_image(_encoded(Image.fromarray(deep), "PNG"), max_side=128)

    assert image.size == (300, 400) and image.pixels.shape == (128, 96, 3)
    assert image.pixels.max() > 200  # stretched to its own range, not divided by 257


def test_an_image_within_the_work_side_is_read_as_it_is():
    rgb = (np.random.default_rng(1).random((40, 60, 3)) * 255).astype(np.uint8)
    image = read_image(_encoded(Image.fromarray(rgb), "PNG"), max_side=100)
    np.testing.assert_array_equal(image.pixels, rgb)
    assert image.size == (60, 40)


def test_a_quarter_turned_image_keeps_its_own_size_even_when_its_copy_is_square():
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    encoded = _encoded(Image.new("RGB", (2001, 2000)), "JPEG", exif=exif.tobytes())
    image = read_image(encoded, max_side=1000)
    assert image.pixels.shape[:2] == (1000, 999) and image.size == (2000, 2001)


def test_a_malformed_exif_block_is_an_image_error_not_a_crash():
    png = _encoded(Image.new("RGB", (8, 8)), "PNG")
    chunk = b"eXIf" + b"MM\x00*\x00\x00\x00\x08\xff\xff" + b"\x00" * 6
    crc = zlib.crc32(chunk).to_bytes(4, "big")
    broken = png[:33] + len(chunk[4:]).to_bytes(4, "big") + chunk + crc + png[33:]
    try:
        image = read_image(broken, max_side=4)
    except ImageError:
        return
    assert image.size == (8, 8)
