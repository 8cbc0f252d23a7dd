"""Datasets camsam trains and evaluates on: a class-per-folder tree or a Label Studio JSON export.

Folder layout::

    DATA_DIR/<Class>/<stem>.<jpg|jpeg|png|bmp|tif>
    DATA_DIR/<Class>/masks/<stem>.png      optional ground truth, pixels >= 128 are the object

A Label Studio export (``tasks.json``) gives image-level classes from Choices and from BrushLabels
regions (an image with a "Crack" mask is a Crack image) and ground-truth masks from brush RLE.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from worker.contract.errors import DatasetError
from worker.data import rle
from worker.data.images import IMAGE_SUFFIXES, load_mask


@dataclass(frozen=True)
class Sample:
    """One image with its image-level classes and, where known, a ground-truth mask per class."""

    image: Path
    classes: tuple[str, ...]
    mask_paths: dict[str, Path] = field(default_factory=dict, compare=False)
    mask_arrays: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)
    key: str = ""

    def has_mask(self, name: str) -> bool:
        return name in self.mask_paths or name in self.mask_arrays

    def mask(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        """The ground truth for ``name`` at ``shape`` (H, W); empty if the class is absent."""
        if name in self.mask_arrays:
            return self.mask_arrays[name]
        if name in self.mask_paths:
            return load_mask(self.mask_paths[name], shape)
        return np.zeros(shape, dtype=bool)


Grouping = Callable[[Sample], str]  # the group a sample belongs to (``stratified_split``)


@dataclass(frozen=True)
class Dataset:
    samples: tuple[Sample, ...]
    classes: tuple[str, ...]
    background_classes: tuple[str, ...] = ()

    @property
    def mask_classes(self) -> tuple[str, ...]:
        return tuple(c for c in self.classes if c not in self.background_classes)

    def counts(self) -> dict[str, int]:
        counter = Counter(c for s in self.samples for c in s.classes)
        return {c: counter.get(c, 0) for c in self.classes}

    def subset(self, keys: Iterable[str]) -> Dataset:
        wanted = set(keys)
        chosen = tuple(s for s in self.samples if s.key in wanted)
        missing = wanted - {s.key for s in chosen}
        if missing:
            raise DatasetError(
                f"{len(missing)} entries of the split are not in the dataset, e.g. "
                f"{sorted(missing)[:3]}: was the split made for another dataset?"
            )
        return Dataset(chosen, self.classes, self.background_classes)


def load_dataset(source: str | Path, background_classes: Sequence[str] = (), **kwargs) -> Dataset:
    """Read a folder tree or a Label Studio JSON export, whichever ``source`` is.

    Raises:
        DatasetError: nothing usable was found, or a named background class does not exist.
    """
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".json":
        dataset = load_label_studio_export(source, background_classes, **kwargs)
    elif source.is_dir():
        dataset = load_folder(source, background_classes)
    else:
        raise DatasetError(f"{source} is neither a dataset folder nor a Label Studio JSON export")
    unknown = set(background_classes) - set(dataset.classes)
    if unknown:
        raise DatasetError(
            f"background class {sorted(unknown)} not found; classes are {list(dataset.classes)}"
        )
    return dataset


def load_folder(root: Path, background_classes: Sequence[str] = ()) -> Dataset:
    samples = []
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for class_dir in class_dirs:
        masks = class_dir / "masks"
        for image in sorted(class_dir.iterdir()):
            if image.suffix.lower() not in IMAGE_SUFFIXES or not image.is_file():
                continue
            mask = masks / f"{image.stem}.png"
            mask_paths = {class_dir.name: mask} if mask.is_file() else {}
            key = f"{class_dir.name}/{image.name}"
            samples.append(Sample(image, (class_dir.name,), mask_paths, key=key))
    if not samples:
        raise DatasetError(
            f"no images in {root}: expected {root}/<Class>/<stem>.<jpg|png|bmp|tif> "
            "(one folder per class)"
        )
    classes = tuple(c.name for c in class_dirs if any(s.classes[0] == c.name for s in samples))
    return Dataset(tuple(samples), classes, tuple(background_classes))


def load_label_studio_export(
    path: Path, background_classes: Sequence[str] = (), image_root: str | Path | None = None
) -> Dataset:
    """Read a Label Studio JSON export; the newest annotation of each task that was not skipped."""
    try:
        tasks = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetError(f"cannot read Label Studio export {path}: {error}") from error
    if not isinstance(tasks, list):
        raise DatasetError(f"{path} is not a Label Studio JSON export (expected a list of tasks)")
    roots = [Path(image_root)] if image_root else []
    roots.append(path.parent)
    samples = []
    for task in tasks:
        annotation = newest_annotation(task.get("annotations") or [])
        image_ref = next(iter((task.get("data") or {}).values()), None)
        if annotation is None or not isinstance(image_ref, str):
            continue
        classes, masks = read_annotation(annotation)
        if classes:
            image = resolve_image_path(image_ref, roots)
            key = str(task.get("id", image.name))
            samples.append(Sample(image, classes, {}, masks, key=key))
    if not samples:
        raise DatasetError(f"{path} holds no task with a usable (not skipped) annotation")
    seen = dict.fromkeys(c for sample in samples for c in sample.classes)
    return Dataset(tuple(samples), tuple(seen), tuple(background_classes))


def read_annotation(annotation: dict) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """An annotation's image-level classes (Choices, and every BrushLabels label: an image with
    a "Crack" mask is a Crack image) and its masks per label, from brush RLE."""
    classes, masks = [], {}
    for region in annotation.get("result") or []:
        value = region.get("value") or {}
        classes += value.get("choices") or []
        if region.get("type") == "brushlabels" and value.get("format") == "rle":
            height, width = region["original_height"], region["original_width"]
            alpha = rle.decode(value["rle"], width, height)
            for name in value.get("brushlabels") or []:
                classes.append(name)
                masks[name] = masks[name] | alpha if name in masks else alpha
    return tuple(dict.fromkeys(classes)), masks


def newest_annotation(annotations: list[dict]) -> dict | None:
    """The annotation that counts for a task: newest by update time, skipped ones ignored."""
    valid = [a for a in annotations if not a.get("was_cancelled") and a.get("result") is not None]
    if not valid:
        return None
    return max(valid, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a["id"]))


def resolve_image_path(ref: str, roots: Sequence[Path]) -> Path:
    """Map a task's image reference (local-files URL, upload URL, or path) to a local file.

    Raises:
        DatasetError: no candidate exists; the message names the flag that fixes it.
    """
    parsed = urlparse(ref)
    if parsed.path.startswith("/data/local-files"):
        relative = unquote(parse_qs(parsed.query).get("d", [""])[0])
        candidates = [root / relative for root in roots]
    elif parsed.path.startswith("/data/upload/"):
        rest = unquote(parsed.path[len("/data/upload/") :])
        candidates = [c for root in roots for c in (root / "media/upload" / rest, root / rest)]
    elif parsed.scheme in ("http", "https", "s3", "gs", "azure-blob"):
        raise DatasetError(
            f"image {ref} is remote: download the images and pass --image-root, "
            "or train through the ML backend, which fetches them from Label Studio"
        )
    else:
        candidates = [Path(ref)] + [root / ref for root in roots]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"image {ref} not found (looked in {[str(c) for c in candidates]}); "
        "pass --image-root pointing at Label Studio's LOCAL_FILES_DOCUMENT_ROOT or data dir"
    )


def stratified_split(
    samples: Sequence[Sample], fraction: float, seed: int = 0, group: Grouping | None = None
) -> tuple[list[Sample], list[Sample]]:
    """Split into (rest, held_out) so every class set keeps its share; rare sets keep >= 1 each.

    With ``group``, samples of one group (a part, a batch, a tile) land on the same side.
    """
    rng = random.Random(seed)
    rest, held = [], []
    for units in _strata(samples, group):
        rng.shuffle(units)
        target = round(sum(len(u) for u in units) * fraction)
        taken = held_images = 0
        for unit in units:
            if fraction > 0 and len(units) >= 2:
                wanted = held_images < target or taken == 0
                wanted = wanted and taken < len(units) - 1
            else:
                wanted = held_images < target
            (held if wanted else rest).extend(unit)
            taken += wanted
            held_images += len(unit) if wanted else 0
    return rest, held


def stable_split(
    samples: Sequence[Sample], fraction: float, group: Grouping | None = None
) -> tuple[list[Sample], list[Sample]]:
    """Split into (rest, held_out) so that an image, once trained on, stays out of the held-out
    part as the set grows: a unit (a group, or an image alone) is held out when its name's hash
    falls below ``fraction``. Not stratified by class set; instead a class with two units or
    more has one on each side (the lowest hash held where none falls below, the highest kept
    where all do: only then can a unit move into the held-out part later), and a class with one
    unit is only trained on. A version fine-tuned from the last is so judged on images neither
    learnt from (``worker.data.groups`` names found groups to keep that so).
    """
    units = _units(samples, group)
    share = {name: share_of(name) for name in units}
    held = {name for name in units if share[name] < fraction} if fraction > 0 else set()
    labels = sorted({c for s in samples for c in s.classes})
    having = {
        label: sorted(
            (n for n, unit in units.items() if any(label in s.classes for s in unit)),
            key=share.__getitem__,
        )
        for label in labels
    }
    for label in labels if fraction > 0 else ():
        if len(having[label]) >= 2 and not held.intersection(having[label]):
            held.add(having[label][0])
    for label in labels:  # last, so that no class is left without a unit to learn from
        if held.issuperset(having[label]):
            held.discard(having[label][-1])
    if held.issuperset(units):
        held.discard(max(units, key=share.__getitem__))
    parts: tuple[list[Sample], list[Sample]] = ([], [])
    for name, unit in units.items():
        parts[name in held].extend(unit)
    return parts


def natural_key(name: str) -> list:
    """``name`` for sorting with its numbers compared as numbers (img_9 before img_10)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in _DIGITS.split(name)]


_DIGITS = re.compile(r"(\d+)")


def share_of(name: str) -> float:
    """A fixed point in [0, 1) for ``name``, the same in every process and version."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def stratified_folds(
    samples: Sequence[Sample], folds: int, seed: int = 0, group: Grouping | None = None
) -> list[list[Sample]]:
    """``folds`` disjoint parts covering ``samples``, each with about the same class-set shares
    (with ``group``: whole groups, the largest first, each to the part with the fewest images)."""
    if folds < 2:
        raise DatasetError(f"cross-validation needs at least 2 folds, not {folds}")
    rng = random.Random(seed)
    parts: list[list[Sample]] = [[] for _ in range(folds)]
    offset = 0
    for units in _strata(samples, group):
        rng.shuffle(units)
        units.sort(key=len, reverse=True)  # stable: equal sizes keep the shuffled order
        for unit in units:
            # The smallest part; among equals, the next in turn (one image each: round-robin).
            chosen = min(range(folds), key=lambda i: (len(parts[i]), (i - offset) % folds))
            parts[chosen].extend(unit)
            offset = chosen + 1
    return parts


def group_by_pattern(pattern: str) -> Grouping:
    """Group samples by ``pattern``'s match in the image's file name (its first group if it has
    one); an image it does not match is a group of its own.

    Raises:
        DatasetError: ``pattern`` is not a regular expression.
    """
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise DatasetError(f"--group {pattern!r} is not a regular expression: {error}") from error

    def key(sample: Sample) -> str:
        found = compiled.search(sample.image.name)
        if found is None:
            return f"\0{sample.key}"  # no match: on its own
        return found.group(1) if compiled.groups else found.group(0)

    return key


def _units(samples: Sequence[Sample], group: Grouping | None) -> dict[str, list[Sample]]:
    """The samples that stay together, by the name of their group (or their own key)."""
    units: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        units[group(sample) if group else sample.key].append(sample)
    return units


def _strata(samples: Sequence[Sample], group: Grouping | None) -> list[list[list[Sample]]]:
    """The units that stay together (a group's samples, or each sample alone), by class set.

    A group whose samples differ in class set counts under its rarest set, so rare classes spread
    over both sides.
    """
    units = _units(samples, group)
    sizes = Counter(tuple(sorted(s.classes)) for s in samples)
    strata: dict[tuple[str, ...], list[list[Sample]]] = defaultdict(list)
    for unit in units.values():
        unit.sort(key=lambda s: s.key)
        sets = {tuple(sorted(s.classes)) for s in unit}
        strata[min(sets, key=lambda k: (sizes[k], k))].append(unit)
    return [sorted(strata[k], key=lambda u: u[0].key) for k in sorted(strata)]
