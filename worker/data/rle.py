"""Label Studio's brush RLE, encoded and decoded without a full-size RGBA copy of the mask.

The format (``@thi.ng/rle-pack``, as Label Studio's brush tool reads it) encodes the flattened
RGBA bytes of the image: a 32-bit count of bytes, a 5-bit word size minus one, four 4-bit run-size
fields minus one, then groups. A group is ``1`` (a run: one value repeated) or ``0`` (literals),
two bits choosing one of the four run sizes, the run length minus one in that many bits, and the
value(s) in word-size bits. label-studio-sdk's ``mask2rle`` builds the RGBA copy (4 bytes a pixel)
and a string of '0'/'1' characters; for a 9000x9000 image that is gigabytes. Here the mask is
read a band of rows at a time and, when it was computed smaller than the image, scaled up on the
fly (nearest pixel), so memory stays proportional to the band and to the number of runs.
"""

from __future__ import annotations

import numpy as np

from worker.contract.defaults import MAX_IMAGE_PIXELS
from worker.contract.errors import MaskError

WORD_BITS = 8
RUN_SIZES = (3, 4, 8, 16)  # bits of a run length, chosen by two bits per group
MAX_RUN = 1 << RUN_SIZES[-1]
BAND_PIXELS = 1 << 20  # full-size pixels expanded at once
PACK_GROUPS = 1 << 16  # groups turned into bits at once
MAX_RUNS = 2_000_000
"""More runs than this is noise, not a mask anyone would keep: several MB of RLE to delete."""


def encode(mask: np.ndarray, width: int | None = None, height: int | None = None) -> list[int]:
    """The RLE of a boolean (h, w) mask as a ``width`` x ``height`` brush (default: its own size).

    A smaller mask is scaled up by the nearest pixel; the output is byte-for-byte what
    label-studio-sdk's ``mask2rle`` gives for the full-size mask.

    Raises:
        MaskError: the mask has more than ``MAX_RUNS`` runs at that size.
    """
    small_h, small_w = mask.shape
    width, height = width or small_w, height or small_h
    values, lengths = _runs(
        np.asarray(mask, bool), _nearest(width, small_w), _nearest(height, small_h)
    )
    return _pack(values, lengths * 4, width * height * 4)


def decode(
    rle: list[int], width: int, height: int, max_pixels: int = MAX_IMAGE_PIXELS
) -> np.ndarray:
    """The boolean (height, width) mask of a brush region: its alpha channel >= 128.

    Raises:
        MaskError: the RLE is malformed, its byte count is not ``width * height * 4``, or the
            region is larger than ``max_pixels``.
    """
    if not (isinstance(width, int) and isinstance(height, int)) or width < 1 or height < 1:
        raise MaskError(f"a brush region of {width!r} x {height!r} pixels is not an image size")
    if width * height > max_pixels:
        raise MaskError(
            f"a brush region of {width}x{height} pixels is above MAX_IMAGE_PIXELS={max_pixels}"
        )
    try:
        data = np.asarray(rle, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as error:
        raise MaskError(f"a brush RLE must be a list of bytes: {error}") from error
    if data.ndim != 1 or data.size < 7 or data.min() < 0 or data.max() > 255:
        raise MaskError("a brush RLE must be a list of at least 7 values in 0..255")
    bits = np.unpackbits(data.astype(np.uint8)).tobytes().translate(_ASCII_BITS).decode("ascii")
    reader = _Bits(bits)
    count, word = reader.read(32), reader.read(5) + 1
    sizes = [reader.read(4) + 1 for _ in range(4)]
    if count != width * height * 4:
        raise MaskError(
            f"the RLE holds {count} bytes; a {width}x{height} RGBA image has {width * height * 4}"
        )
    alpha = np.zeros(width * height, bool)
    position = 0
    while position < count:
        repeated = reader.read(1)
        end = min(count, position + 1 + reader.read(sizes[reader.read(2)]))
        if repeated:
            if reader.read(word) >= 128:
                # Alpha is every fourth byte: pixel k's is byte 4k + 3.
                alpha[-(-(position - 3) // 4) : end // 4] = True
            position = end
            continue
        for index in range(position, end):
            if reader.read(word) >= 128 and index % 4 == 3:
                alpha[index // 4] = True
        position = end
    return alpha.reshape(height, width)


_ASCII_BITS = bytes.maketrans(b"\x00\x01", b"01")


class _Bits:
    """Fixed-width unsigned fields read in order from a string of '0'/'1'."""

    def __init__(self, bits: str) -> None:
        self.bits, self.at = bits, 0

    def read(self, size: int) -> int:
        end = self.at + size
        if end > len(self.bits):
            raise MaskError("the brush RLE ends in the middle of a group")
        value = int(self.bits[self.at : end], 2)
        self.at = end
        return value


def _nearest(full: int, small: int) -> np.ndarray:
    """For each of ``full`` pixels, the one of ``small`` whose centre is nearest its own."""
    return np.minimum(((np.arange(full) + 0.5) * (small / full)).astype(np.intp), small - 1)


def _runs(mask: np.ndarray, columns: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values and lengths of the runs of the scaled, row-major flattened mask."""
    band = max(1, BAND_PIXELS // len(columns))
    values: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    runs = 0
    for start in range(0, len(rows), band):
        flat = mask[rows[start : start + band]][:, columns].ravel()
        edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        runs += len(edges) + 1
        if runs > MAX_RUNS:
            raise MaskError(f"the mask breaks into more than {MAX_RUNS} runs: noise, not sent")
        starts = np.concatenate(([0], edges))
        values.append(flat[starts])
        lengths.append(np.diff(np.concatenate((starts, [flat.size]))))
    value, length = np.concatenate(values), np.concatenate(lengths)
    # Bands split runs that go on across them: join neighbours with the same value.
    keep = np.concatenate(([True], value[1:] != value[:-1]))
    groups = np.cumsum(keep) - 1
    return value[keep], np.bincount(groups, weights=length).astype(np.int64)


def _pack(values: np.ndarray, lengths: np.ndarray, count: int) -> list[int]:
    """The header, then one group per run (runs longer than ``MAX_RUN`` split), as bytes."""
    pieces = -(-lengths // MAX_RUN)
    value = np.repeat(np.where(values, 255, 0).astype(np.uint64), pieces)
    length = np.full(int(pieces.sum()), MAX_RUN, np.int64)
    length[np.cumsum(pieces) - 1] = lengths - (pieces - 1) * MAX_RUN
    size = np.searchsorted(np.array([1 << s for s in RUN_SIZES]), length)
    run_bits = np.array(RUN_SIZES)[size]
    flag = (length > 1).astype(np.uint64)  # a lone value is a literal group, as mask2rle writes it
    run_bits = np.where(length > 1, run_bits, RUN_SIZES[0])
    code = (
        (flag << np.uint64(2)) | np.where(length > 1, size, 0).astype(np.uint64)
    ) << run_bits.astype(np.uint64)
    code = ((code | (length - 1).astype(np.uint64)) << np.uint64(WORD_BITS)) | value
    widths = 3 + run_bits + WORD_BITS
    header = (count << 21) | ((WORD_BITS - 1) << 16)
    for k, bits in enumerate(RUN_SIZES):
        header |= (bits - 1) << (12 - 4 * k)
    chunks = [_bits_of(np.array([header], np.uint64), np.array([53]))]
    for start in range(0, len(code), PACK_GROUPS):
        end = start + PACK_GROUPS
        chunks.append(_bits_of(code[start:end], widths[start:end]))
    bits = np.concatenate(chunks)
    # Padded to whole bytes, with a whole zero byte when already whole, as mask2rle does.
    padding = np.zeros(8 - bits.size % 8, np.uint8)
    return np.packbits(np.concatenate((bits, padding))).tolist()


def _bits_of(codes: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """The low ``widths[i]`` bits of each ``codes[i]``, most significant first, concatenated."""
    top = int(widths.max())
    shifts = np.arange(top - 1, -1, -1, dtype=np.uint64)
    bits = ((codes[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return bits[np.arange(top)[None, :] >= (top - widths)[:, None]]
