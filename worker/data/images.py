"""Reading images as users have them: 8/16-bit, grayscale, RGB(A), palette, TIFF, EXIF-rotated.

Everything downstream sees one form: an RGB uint8 array in the orientation a person sees, i.e.
after the EXIF orientation has been applied. Label Studio shows images EXIF-transposed, so masks and
points are in those coordinates too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from worker.contract.errors import ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class WorkImage:
    """An image as the models see it: ``pixels`` (RGB uint8, EXIF-transposed), possibly a smaller
    copy, and the image's own ``width`` and ``height``, which masks are scaled back to."""

    pixels: np.ndarray
    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


# Decodes that need more than this many pixels at full size run one at a time (formats without
# reduced decoding, such as PNG and TIFF, are decoded whole before they are scaled down).
LARGE_DECODE_PIXELS = 16_000_000
_large_decodes = threading.Semaphore(1)


def load_image(source: str | Path | bytes, max_pixels: int = 0) -> np.ndarray:
    """Decode a file path or encoded bytes into an HxWx3 uint8 RGB array, EXIF-transposed.

    ``max_pixels`` (if > 0) refuses larger images before decoding them (decompression bombs).

    Raises:
        ImageError: the file is missing, too large, or not an image Pillow can decode.
    """
    return read_image(source, max_pixels).pixels


def read_image(source: str | Path | bytes, max_pixels: int = 0, max_side: int = 0) -> WorkImage:
    """Like :func:`load_image`, with the pixels no longer than ``max_side`` on either side.

    A JPEG is decoded directly at a half, a quarter or an eighth of its size when that is still
    at least ``max_side`` (the decoder's own reduction, so the full-size image never exists in
    memory), then scaled down; other formats are decoded whole, one large one at a time.

    Raises:
        ImageError: the file is missing, too large, or not an image Pillow can decode.
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        width, height = image.size
        if max_pixels and width * height > max_pixels:
            raise ImageError(
                f"image {name} is {width}x{height} pixels, above MAX_IMAGE_PIXELS={max_pixels}"
            )
        target = _fitted((width, height), max_side)
        if target != (width, height):
            image.draft(None, target)  # JPEG only; other formats ignore it
        if image.size[0] * image.size[1] > LARGE_DECODE_PIXELS:
            with _large_decodes:
                image = _reduced(image, target)
                _return_freed_memory()
        else:
            image = _reduced(image, target)
        pixels = to_rgb8(ImageOps.exif_transpose(image))
    except FileNotFoundError as error:
        raise ImageError(f"image not found: {source}") from error
    except (*_DECODE_ERRORS, Image.DecompressionBombError) as error:
        raise ImageError(f"cannot decode image {name}: {error}") from error
    # A quarter turn (EXIF orientation 5 to 8) shows the pixels' shape turned: the image's own
    # size turns with it (a copy of a non-square image is never square, so this always shows).
    if pixels.shape[:2] != (image.height, image.width):
        width, height = height, width
    return WorkImage(pixels, width, height)


# What Pillow raises on a malformed file, its EXIF included.
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error)


def _return_freed_memory() -> None:
    """Give the full-size buffer just freed back to the system.

    Pillow allocates in 16 MB blocks, which glibc keeps in the decoding thread's heap once its
    mmap threshold has grown; without this, every download thread would hold a full-size image's
    worth of memory for good. A no-op where the C library has no ``malloc_trim``.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 (glibc only: the attribute lookup is the check)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()


def _fitted(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` scaled down (aspect kept) so that neither side exceeds ``max_side`` (0: as is)."""
    longest = max(size)
    if not max_side or longest <= max_side:
        return size
    width, height = (max(1, round(side * max_side / longest)) for side in size)
    if width == height and size[0] != size[1]:  # keep it non-square: a turn must stay visible
        if size[0] < size[1]:
            width -= 1
        else:
            height -= 1
    return max(1, width), max(1, height)


def _reduced(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """Decode ``image`` and scale it to ``target`` if it is larger."""
    image.load()
    if image.size == target:
        return image
    if image.mode in ("P", "1"):  # palette images would otherwise be scaled by nearest pixel
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    exif = image.getexif()
    scaled = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=2.0)
    scaled.info["exif"] = exif.tobytes()  # exif_transpose reads the orientation from here
    return scaled


def to_rgb8(image: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to RGB uint8; high bit depths are stretched to their own range.

    Sixteen-bit and float images (microscopy, X-ray) rarely use their full range, so they are
    rescaled from their own min..max rather than divided by 257, which would leave them black.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float32)
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
    except _DECODE_ERRORS as error:
        raise ImageError(f"cannot read mask {path}: {error}") from error
    if shape is not None and array.shape != tuple(shape):
        raise ImageError(
            f"mask {path} is {array.shape[1]}x{array.shape[0]} but its image is "
            f"{shape[1]}x{shape[0]}: masks must match their image's size"
        )
    return array >= 128
