"""Groups of near-duplicate images, found or given, that every split keeps on one side.

One object photographed several times (a tile under several lights, a part from two angles, a
slide scanned twice) makes a random validation share measure recognition of objects already
seen: it flatters a recipe and lets a worse version be published. When no grouping is given,
images whose fingerprints (a small gray thumbnail, its shading, brightness and contrast taken
out) are close are joined: pairs from the closest down, two groups merging only while their
images are close on average too (so one chance look-alike does not chain two objects together),
and no group outgrowing a share of the images (so a validation share can still be drawn by
group).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from worker.contract import defaults
from worker.contract.errors import DatasetError
from worker.data.dataset import Grouping, Sample, group_by_pattern, natural_key
from worker.data.images import read_image

FINGERPRINT_SIDE = 16  # the fingerprint is this many cells a side
POOL = 4  # pixels a cell averages, on a side
SHADING_SIGMA = 8.0  # the blur (in pixels of the 64-pixel copy) that is taken as shading
BLOCK = 1024  # rows of the similarity matrix held at once
NEIGHBOURS = 32  # the closest images of each that may join it (more than any object's photographs)


@dataclass(frozen=True)
class Groups:
    """How a set of samples is grouped: ``by`` (``near-duplicates``, a pattern, or ``none``),
    the grouping itself (None: every image alone) and how many groups it makes."""

    by: str
    grouping: Grouping | None
    count: int

    def summary(self) -> dict:
        return {"by": self.by, "groups": self.count}


def groups_for(samples: Sequence[Sample], spec: str) -> Groups:
    """The grouping ``spec`` asks for: ``auto`` (near-duplicates found), ``none``, or a regular
    expression over file names (``worker.data.dataset.group_by_pattern``).

    Raises:
        DatasetError: ``spec`` is neither ``auto``, ``none`` nor a regular expression.
    """
    if spec in ("none", ""):
        return Groups("none", None, len(samples))
    if spec == "auto":
        return find_groups(samples)
    grouping = group_by_pattern(spec)
    return Groups(spec, grouping, len({grouping(s) for s in samples}))


def find_groups(
    samples: Sequence[Sample],
    similarity: float = defaults.GROUP_SIMILARITY,
    linkage: float = defaults.GROUP_LINKAGE,
    max_share: float = defaults.GROUP_MAX_SHARE,
) -> Groups:
    """Near-duplicate groups: pairs of fingerprints at least ``similarity`` alike (cosine) are
    joined, closest first, while the two groups' images stay ``linkage`` alike on average and
    the joined group holds at most ``max_share`` of the images (and at least 2).

    Raises:
        DatasetError: an image is missing.
        ImageError: an image cannot be decoded.
    """
    if not samples:
        return Groups("near-duplicates", None, 0)
    prints = np.stack([fingerprint(s.image) for s in samples])
    owner = _join(prints, similarity, linkage, max(2, math.floor(max_share * len(samples))))
    # Named after its first image (numbers in keys compared as numbers: task 11 before 100), so
    # a group keeps its name, and its side of worker.data.dataset.stable_split, as later images
    # join it.
    first: dict[int, str] = {}
    for i, sample in enumerate(samples):
        here = first.get(owner[i])
        if here is None or natural_key(sample.key) < natural_key(here):
            first[owner[i]] = sample.key
    names = {sample.key: first[owner[i]] for i, sample in enumerate(samples)}
    return Groups("near-duplicates", lambda s: names.get(s.key, s.key), len(set(owner)))


def fingerprint(path: Path) -> np.ndarray:
    """A unit vector that another light or a slight crop of the same view barely moves."""
    path = Path(path)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError as error:
        raise DatasetError(f"image {path} cannot be read: {error}") from error
    return _fingerprint(str(path), stamp)


@lru_cache(maxsize=65536)
def _fingerprint(path: str, stamp: int) -> np.ndarray:
    side = FINGERPRINT_SIDE * POOL
    pixels = read_image(path, max_side=side).pixels
    gray = Image.fromarray(pixels).convert("L").resize((side, side), Image.Resampling.BILINEAR)
    image = np.asarray(gray, dtype=np.float32)
    # Less the shading (a blur far wider than the pooling): a light from another side, or the
    # same vignetting over different objects, says nothing about which object it is.
    detail = image - cv2.GaussianBlur(image, (0, 0), SHADING_SIGMA, borderType=cv2.BORDER_REFLECT)
    vector = detail.reshape(FINGERPRINT_SIDE, POOL, FINGERPRINT_SIDE, POOL).mean((1, 3)).ravel()
    vector = vector - vector.mean()
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 1e-6 else vector  # a flat image is like nothing


def _join(prints: np.ndarray, similarity: float, linkage: float, cap: int) -> list[int]:
    """Each fingerprint's group (the index of one member), joined closest pair first; each
    image's ``NEIGHBOURS`` closest at most (memory stays linear where every image looks alike)."""
    pairs: dict[tuple[int, int], float] = {}
    nearest = min(NEIGHBOURS, len(prints) - 1)
    for start in range(0, len(prints) if nearest > 0 else 0, BLOCK):
        block = prints[start : start + BLOCK] @ prints.T
        rows = np.arange(len(block))
        block[rows, start + rows] = -np.inf  # not its own neighbour
        columns = np.argpartition(-block, nearest - 1, axis=1)[:, :nearest]
        for row, cols in enumerate(columns):
            for col in cols[block[row, cols] >= similarity].tolist():
                first, second = min(start + row, col), max(start + row, col)
                pairs[(first, second)] = float(block[row, col])
    owner = list(range(len(prints)))
    members = {i: [i] for i in range(len(prints))}
    sums = {i: prints[i].astype(np.float64) for i in range(len(prints))}
    for first, second in sorted(pairs, key=lambda pair: (-pairs[pair], pair)):
        a, b = owner[first], owner[second]
        if a == b or len(members[a]) + len(members[b]) > cap:
            continue
        # The mean cosine over every cross pair: the dot product of the two groups' sums.
        mean = float(sums[a] @ sums[b]) / (len(members[a]) * len(members[b]))
        if mean < linkage:
            continue
        for index in members[b]:
            owner[index] = a
        members[a] += members.pop(b)
        sums[a] += sums.pop(b)
    return owner
