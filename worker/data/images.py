"""Reading images as users have them: 8/16-bit, grayscale, RGB(A), palette, TIFF, EXIF-rotated.

Everything downstream sees one form: an RGB uint8 array in the orientation a person sees, i.e.
after the EXIF orientation has been applied. Label Studio shows images EXIF-transposed, so masks and
points are in those coordinates too.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from worker.contract.errors import ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def load_image(source: str | Path | bytes, max_pixels: int = 0) -> np.ndarray:
    """Decode a file path or encoded bytes into an HxWx3 uint8 RGB array, EXIF-transposed.

    ``max_pixels`` (if > 0) refuses larger images before decoding them (decompression bombs).

    Raises:
        ImageError: the file is missing, too large, or not an image Pillow can decode.
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        if isinstance(source, bytes):
            image = Image.open(io.BytesIO(source))
        else:
            image = Image.open(source)
        width, height = image.size
        if max_pixels and width * height > max_pixels:
            raise ImageError(
                f"image {name} is {width}x{height} pixels, above MAX_IMAGE_PIXELS={max_pixels}"
            )
        image.load()
    except FileNotFoundError as error:
        raise ImageError(f"image not found: {source}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageError(f"cannot decode image {name}: {error}") from error
    return to_rgb8(ImageOps.exif_transpose(image))


def to_rgb8(image: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to RGB uint8; high bit depths are stretched to their own range.

    Sixteen-bit and float images (microscopy, X-ray) rarely use their full range, so they are
    rescaled from their own min..max rather than divided by 257, which would leave them black.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        span = high - low if high > low else 1.0
        gray = np.rint((array - low) * 255.0 / span).clip(0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, as Label Studio's canvas shows them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def load_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a ground-truth mask: pixels >= 128 are the object (tolerates JPEG noise).

    Raises:
        ImageError: unreadable, or its size differs from the image's ``shape`` (H, W).
    """
    try:
        with Image.open(path) as image:
            array = np.asarray(ImageOps.exif_transpose(image).convert("L"))
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise ImageError(f"cannot read mask {path}: {error}") from error
    if shape is not None and array.shape != tuple(shape):
        raise ImageError(
            f"mask {path} is {array.shape[1]}x{array.shape[0]} but its image is "
            f"{shape[1]}x{shape[0]}: masks must match their image's size"
        )
    return array >= 128
