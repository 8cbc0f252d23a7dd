"""Near-duplicate groups found (planted copies, magnetic-tile's tiles) and splits that keep them."""

from __future__ import annotations

import importlib.util
import random
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from worker.contract.errors import DatasetError
from worker.data.dataset import Sample, load_dataset, share_of, stable_split, stratified_split
from worker.data.groups import _join, find_groups, groups_for
from worker.data.synthetic import surface

ROOT = Path(__file__).resolve().parents[3]
MAGNETIC_TILE = ROOT.parent / "shared" / "data" / "magnetic-tile"


def _scene(rng: np.random.Generator, size=(120, 160)) -> np.ndarray:
    """A surface with a few marks of its own: one object."""
    gray = surface(rng, size).astype(np.float32)
    for _ in range(4):
        centre = (int(rng.integers(10, size[1] - 10)), int(rng.integers(10, size[0] - 10)))
        axes = (int(rng.integers(4, 20)), int(rng.integers(2, 8)))
        cv2.ellipse(
            gray, centre, axes, float(rng.uniform(0, 180)), 0, 360, float(rng.integers(30, 220)), -1
        )
    return gray


def _another_look(rng: np.random.Generator, gray: np.ndarray) -> np.ndarray:
    """The same object under another light (gain, offset, a gradient) and slightly cropped."""
    height, width = gray.shape
    ramp = np.linspace(-1, 1, width)[None, :] * rng.uniform(-25, 25)
    lit = gray * rng.uniform(0.6, 1.3) + rng.uniform(-30, 30) + ramp
    top, left = int(rng.integers(0, 5)), int(rng.integers(0, 5))
    crop = lit[top : height - int(rng.integers(0, 5)), left : width - int(rng.integers(0, 5))]
    noisy = crop + rng.normal(0, 3, crop.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _planted(tmp_path: Path, objects: int = 24, seed: int = 0) -> tuple[list[Sample], dict]:
    """``objects`` distinct scenes, each photographed 1 to 4 times; the truth: key -> object."""
    rng = np.random.default_rng(seed)
    samples, truth = [], {}
    for number in range(objects):
        gray = _scene(rng)
        for look in range(int(rng.integers(1, 5))):
            key = f"img_{number:02d}_{look}.png"
            image = _another_look(rng, gray) if look else gray.astype(np.uint8)
            Image.fromarray(image).save(tmp_path / key)
            label = "Spot" if number % 3 else "Clean"
            samples.append(Sample(tmp_path / key, (label,), key=key))
            truth[key] = number
    random.Random(seed).shuffle(samples)
    return samples, truth


def test_planted_duplicates_are_found_and_distinct_images_stay_apart(tmp_path):
    samples, truth = _planted(tmp_path)
    groups = find_groups(samples)
    found = {s.key: groups.grouping(s) for s in samples}
    pairs = [(a.key, b.key) for i, a in enumerate(samples) for b in samples[i + 1 :]]
    joined = [(a, b) for a, b in pairs if found[a] == found[b]]
    same = [(a, b) for a, b in pairs if truth[a] == truth[b]]
    assert all(truth[a] == truth[b] for a, b in joined)  # no two objects joined
    assert len(joined) >= 0.75 * len(same)  # most other looks of an object found (0.81)
    assert groups.count == len(set(found.values()))
    assert groups.summary() == {"by": "near-duplicates", "groups": groups.count}


def test_the_synthetic_surfaces_are_all_distinct(synthetic_dataset):
    # Alike in their shading and grain alone: no two of them are one object.
    groups = find_groups(synthetic_dataset.samples)
    assert groups.count == len(synthetic_dataset.samples)


def test_a_chain_of_look_alikes_does_not_join_its_ends():
    # Each neighbour 0.95 alike, the ends far apart: joining pairs alone would make one group.
    angles = np.arange(8) * np.arccos(0.95)
    basis = np.linalg.qr(np.random.default_rng(0).normal(size=(256, 2)))[0]
    prints = np.stack([np.cos(a) * basis[:, 0] + np.sin(a) * basis[:, 1] for a in angles])
    owner = _join(prints.astype(np.float32), similarity=0.9, linkage=0.85, cap=8)
    assert len(set(owner)) > 1
    assert owner[0] != owner[-1]
    for group in set(owner):
        members = prints[[i for i, o in enumerate(owner) if o == group]]
        if len(members) > 1:  # the mean over pairs of distinct members
            alike = members @ members.T
            mean = (alike.sum() - np.trace(alike)) / (len(members) * (len(members) - 1))
            assert mean >= 0.85 - 1e-6


def test_no_group_outgrows_its_share(tmp_path):
    gray = _scene(np.random.default_rng(1))
    rng = np.random.default_rng(2)
    samples = []
    for look in range(10):
        path = tmp_path / f"copy_{look}.png"
        Image.fromarray(_another_look(rng, gray)).save(path)
        samples.append(Sample(path, ("Spot",), key=path.name))
    groups = find_groups(samples, max_share=0.3)
    sizes = Counter(groups.grouping(s) for s in samples)
    assert max(sizes.values()) == 3


def test_a_grouping_is_found_given_or_none(tmp_path):
    samples, _ = _planted(tmp_path, objects=6)
    assert groups_for(samples, "none").grouping is None
    assert groups_for(samples, "none").count == len(samples)
    assert groups_for(samples, "auto").by == "near-duplicates"
    by_name = groups_for(samples, r"img_(\d+)")
    assert by_name.count == 6 and by_name.by == r"img_(\d+)"
    with pytest.raises(DatasetError, match="regular expression"):
        groups_for(samples, "img_(")


def test_an_unreadable_image_is_named(tmp_path):
    sample = Sample(tmp_path / "gone.png", ("Spot",), key="gone.png")
    with pytest.raises(DatasetError, match="gone.png"):
        find_groups([sample])


def _samples(count: int, seed: int) -> list[Sample]:
    rng = random.Random(seed)
    labels = ["Clean"] * 6 + ["Spot"] * 3 + ["Scratch"]
    return [
        Sample(Path(f"{i}.png"), (rng.choice(labels),), key=f"part{i // 3}/{i}.png")
        for i in range(count)
    ]


def test_the_stable_split_moves_an_image_into_validation_only_to_cover_a_new_class():
    group = lambda s: s.key.split("/")[0]  # noqa: E731 (three images a part)
    everything = _samples(900, seed=0)
    before: set[str] = set()
    moved = 0
    for size in (12, 30, 90, 300, 600, 900):
        rest, held = stable_split(everything[:size], 0.15, group)
        trained = {s.key for s in rest}
        assert not trained & {s.key for s in held}
        assert not {group(s) for s in rest} & {group(s) for s in held}  # whole parts
        # Trained on, then held out: only while a class has a part or two (each class gets
        # one on each side), never once every class has several.
        again = [s for s in held if s.key in before]
        assert not again or size <= 30, f"at {size} images"
        moved += len(again)
        for label in ("Clean", "Spot", "Scratch") if size >= 90 else ():  # both sides
            assert any(s.classes == (label,) for s in held)
            assert any(s.classes == (label,) for s in rest)
        before = trained
    assert moved <= 9  # a few parts, at the start
    assert 0.1 <= len(held) / len(everything) <= 0.2


def test_no_class_is_left_without_an_image_to_learn_from():
    samples = [Sample(Path(f"{i}.png"), ("Clean",), key=str(i)) for i in range(40)]
    lone = min((str(i) for i in range(1000)), key=share_of)  # its hash is the lowest: held
    samples.append(Sample(Path("lone.png"), ("Spot",), key=lone))
    rest, held = stable_split(samples, 0.15)
    assert any(s.classes == ("Spot",) for s in rest)
    assert held and all(s.classes == ("Clean",) for s in held)
    one_group = stable_split(samples, 0.15, lambda s: "all")
    assert len(one_group[0]) == len(samples)  # nothing held rather than nothing to learn from


@pytest.mark.skipif(not MAGNETIC_TILE.is_dir(), reason="needs ../shared/data/magnetic-tile")
def test_magnetic_tiles_are_recovered():
    spec = importlib.util.spec_from_file_location("tile_split", ROOT / "scripts/tile_split.py")
    tile_split = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tile_split)
    tile = {
        key: f"{name}/{i}"
        for name, tiles in tile_split.tile_groups(MAGNETIC_TILE).items()
        for i, members in enumerate(tiles)
        for key in members
    }
    dataset = load_dataset(MAGNETIC_TILE, ["Free"])
    groups = find_groups(dataset.samples)
    by_tile = Counter(tile.values())
    found = {s.key: groups.grouping(s) for s in dataset.samples}
    # Of the pairs of photographs of one tile, most are found as one group.
    pairs = [(a, b) for a in tile for b in tile if a < b and tile[a] == tile[b]]
    recovered = sum(found[a] == found[b] for a, b in pairs) / len(pairs)
    assert recovered >= 0.5, recovered
    assert groups.count <= 1.5 * len(by_tile)

    def seen_tiles(grouping) -> float:
        """Validation images whose tile is also in training, median over five splits."""
        shares = []
        for seed in range(5):
            rest, held = stratified_split(dataset.samples, 0.15, seed, grouping)
            trained = {tile[s.key] for s in rest}
            shares.append(np.mean([tile[s.key] in trained for s in held]))
        return float(np.median(shares))

    assert seen_tiles(None) >= 0.75
    assert seen_tiles(groups.grouping) <= 0.5
