"""Datasets from a class-per-folder tree and from a Label Studio export; stratified splits."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle
from PIL import Image

from worker.contract.errors import DatasetError
from worker.data.dataset import (
    Dataset,
    Sample,
    group_by_pattern,
    load_dataset,
    load_label_studio_export,
    stratified_folds,
    stratified_split,
)

HEIGHT, WIDTH = 12, 20


def _write_image(path: Path, height: int = HEIGHT, width: int = WIDTH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 128, dtype=np.uint8)).save(path)
    return path


def _crack_mask() -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[2:5, 3:17] = True
    mask[7, 1:4] = True
    return mask


@pytest.fixture
def folder(tmp_path) -> Path:
    """Crack/{a.png, b.jpg, masks/a.png, notes.txt}, Free/c.bmp, Empty/, .hidden/d.png, README."""
    root = tmp_path / "data"
    _write_image(root / "Crack" / "a.png")
    _write_image(root / "Crack" / "b.jpg")
    mask_path = root / "Crack" / "masks" / "a.png"
    mask_path.parent.mkdir()
    Image.fromarray(_crack_mask().astype(np.uint8) * 255).save(mask_path)
    (root / "Crack" / "notes.txt").write_text("not an image")
    _write_image(root / "Free" / "c.bmp")
    (root / "Empty").mkdir()
    _write_image(root / ".hidden" / "d.png")
    (root / "README.md").write_text("a dataset")
    return root


def test_folder_classes_keys_and_masks(folder):
    dataset = load_dataset(folder)

    assert dataset.classes == ("Crack", "Free")
    by_key = {s.key: s for s in dataset.samples}
    assert sorted(by_key) == ["Crack/a.png", "Crack/b.jpg", "Free/c.bmp"]
    assert by_key["Crack/a.png"].classes == ("Crack",)
    assert by_key["Free/c.bmp"].classes == ("Free",)
    assert by_key["Crack/a.png"].image == folder / "Crack" / "a.png"
    assert by_key["Crack/a.png"].has_mask("Crack")
    assert by_key["Crack/a.png"].mask_paths == {"Crack": folder / "Crack" / "masks" / "a.png"}
    assert not by_key["Crack/b.jpg"].has_mask("Crack")
    assert dataset.counts() == {"Crack": 2, "Free": 1}


def test_folder_sample_mask_reads_the_file_or_is_empty(folder):
    samples = {s.key: s for s in load_dataset(folder).samples}

    mask = samples["Crack/a.png"].mask("Crack", (HEIGHT, WIDTH))
    np.testing.assert_array_equal(mask, _crack_mask())
    empty = samples["Crack/b.jpg"].mask("Crack", (HEIGHT, WIDTH))
    assert empty.shape == (HEIGHT, WIDTH) and not empty.any()


def test_background_classes_are_not_mask_classes(folder):
    dataset = load_dataset(folder, background_classes=["Free"])

    assert dataset.background_classes == ("Free",)
    assert dataset.mask_classes == ("Crack",)


def test_unknown_background_class_raises(folder):
    with pytest.raises(DatasetError, match="Clean"):
        load_dataset(folder, background_classes=["Clean"])


def test_empty_folder_raises(tmp_path):
    (tmp_path / "Crack").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_dataset(tmp_path)


def test_missing_source_raises(tmp_path):
    with pytest.raises(DatasetError, match="neither"):
        load_dataset(tmp_path / "absent")


def _samples() -> list[Sample]:
    groups = {("A",): 10, ("B",): 2, ("A", "B"): 3, ("C",): 1, ("D",): 5}
    samples = []
    for classes, count in groups.items():
        for index in range(count):
            key = f"{'+'.join(classes)}/{index}.png"
            samples.append(Sample(Path(key), classes, key=key))
    return samples


def test_stratified_split_is_disjoint_complete_and_keeps_every_class_set():
    samples = _samples()

    rest, held = stratified_split(samples, fraction=0.2, seed=0)

    rest_keys, held_keys = {s.key for s in rest}, {s.key for s in held}
    assert len(rest_keys) == len(rest) and len(held_keys) == len(held)
    assert not rest_keys & held_keys
    assert rest_keys | held_keys == {s.key for s in samples}
    for classes in {s.classes for s in samples}:
        size = sum(s.classes == classes for s in samples)
        in_rest = sum(s.classes == classes for s in rest)
        in_held = sum(s.classes == classes for s in held)
        if size >= 2:
            assert in_rest >= 1 and in_held >= 1, classes
        else:
            assert in_rest == 1 and in_held == 0, classes
    assert sum(s.classes == ("A",) for s in held) == 2  # its share: round(10 * 0.2)


def test_stratified_split_class_set_ignores_label_order():
    samples = [
        Sample(Path(f"{i}"), ("A", "B") if i % 2 else ("B", "A"), key=str(i)) for i in range(4)
    ]

    rest, held = stratified_split(samples, fraction=0.5, seed=0)

    assert len(rest) == 2 and len(held) == 2


def test_stratified_split_is_deterministic_and_ignores_input_order():
    samples = _samples()
    shuffled = list(samples)
    random.Random(7).shuffle(shuffled)

    first = stratified_split(samples, fraction=0.3, seed=5)
    again = stratified_split(samples, fraction=0.3, seed=5)
    reordered = stratified_split(shuffled, fraction=0.3, seed=5)

    assert [s.key for s in first[1]] == [s.key for s in again[1]]
    assert {s.key for s in first[1]} == {s.key for s in reordered[1]}
    others = [{s.key for s in stratified_split(samples, 0.3, seed)[1]} for seed in range(6, 12)]
    assert any(keys != {s.key for s in first[1]} for keys in others)


def test_stratified_split_with_zero_fraction_holds_nothing_out():
    rest, held = stratified_split(_samples(), fraction=0.0)
    assert held == [] and len(rest) == len(_samples())


def _parts(count: int = 12, shots: int = 3) -> list[Sample]:
    """``count`` parts, each photographed ``shots`` times; every third part has a scratch."""
    samples = []
    for part in range(count):
        for shot in range(shots):
            classes = ("Scratch",) if part % 3 == 0 else ("Clean",)
            key = f"{classes[0]}/part{part:02d}_shot{shot}.png"
            samples.append(Sample(Path(key), classes, key=key))
    # One more picture of part 0, where the scratch does not show, and one that names no part.
    samples.append(Sample(Path("Clean/part00_shot9.png"), ("Clean",), key="Clean/part00_shot9.png"))
    samples.append(Sample(Path("Clean/loose.png"), ("Clean",), key="Clean/loose.png"))
    return samples


def _sides(parts: list[list[Sample]], pattern: str = r"part(\d+)_") -> list[set[str]]:
    group = group_by_pattern(pattern)
    return [{group(s) for s in part} for part in parts]


def test_grouped_split_keeps_each_part_on_one_side_and_the_class_shares():
    samples = _parts()
    group = group_by_pattern(r"part(\d+)_")

    rest, held = stratified_split(samples, fraction=0.25, seed=0, group=group)
    ungrouped = stratified_split(samples, fraction=0.25, seed=0)

    assert sorted(s.key for s in rest + held) == sorted(s.key for s in samples)
    in_rest, in_held = _sides([rest, held])
    assert not in_rest & in_held  # part 00's clean picture follows its scratched ones
    assert {s.classes for s in held} == {("Scratch",), ("Clean",)}
    assert 0.15 <= len(held) / len(samples) <= 0.35
    assert _sides(list(ungrouped))[0] & _sides(list(ungrouped))[1]  # without it, parts leak
    assert group(Sample(Path("Clean/loose.png"), ("Clean",), key="Clean/loose.png")) != group(
        Sample(Path("Clean/other.png"), ("Clean",), key="Clean/other.png")
    )


def test_grouped_folds_are_disjoint_complete_and_even():
    samples = _parts(count=20)

    parts = stratified_folds(samples, folds=4, seed=1, group=group_by_pattern(r"part(\d+)_"))

    assert sorted(s.key for p in parts for s in p) == sorted(s.key for s in samples)
    sides = _sides(parts)
    assert all(not a & b for i, a in enumerate(sides) for b in sides[i + 1 :])
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 4  # a part is 3-4 images
    assert all(any(s.classes == ("Scratch",) for s in p) for p in parts)


def test_group_pattern_must_be_a_regular_expression():
    with pytest.raises(DatasetError, match="not a regular expression"):
        group_by_pattern("part(")


def test_subset_picks_keys_and_rejects_unknown_ones():
    dataset = Dataset(tuple(_samples()), ("A", "B", "C", "D"), ("D",))

    subset = dataset.subset(["A/0.png", "C/0.png"])

    assert {s.key for s in subset.samples} == {"A/0.png", "C/0.png"}
    assert subset.classes == dataset.classes
    assert subset.background_classes == ("D",)
    with pytest.raises(DatasetError, match="not in the dataset"):
        dataset.subset(["A/0.png", "Z/9.png"])


# --- Label Studio export ----------------------------------------------------------------------


def _choices(*names: str) -> dict:
    return {
        "from_name": "class",
        "to_name": "image",
        "type": "choices",
        "value": {"choices": list(names)},
    }


def _brush(mask: np.ndarray, label: str) -> dict:
    return {
        "from_name": "mask",
        "to_name": "image",
        "type": "brushlabels",
        "original_width": mask.shape[1],
        "original_height": mask.shape[0],
        "image_rotation": 0,
        "value": {
            "format": "rle",
            "rle": mask2rle(mask.astype(np.uint8) * 255),
            "brushlabels": [label],
        },
    }


def _annotation(annotation_id: int, result: list[dict], updated_at: str, **extra) -> dict:
    return {
        "id": annotation_id,
        "result": result,
        "created_at": "2024-01-01T00:00:00.000000Z",
        "updated_at": updated_at,
        "was_cancelled": False,
        **extra,
    }


def _task(task_id: int, image: str, *annotations: dict) -> dict:
    return {"id": task_id, "data": {"image": image}, "annotations": list(annotations)}


def _write_export(tmp_path: Path, tasks: list[dict]) -> Path:
    path = tmp_path / "export" / "tasks.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tasks))
    return path


@pytest.fixture
def image_root(tmp_path) -> Path:
    root = tmp_path / "ls-data"
    _write_image(root / "rel" / "path.png")
    _write_image(root / "media" / "upload" / "3" / "x.png")
    return root


def test_export_resolves_every_kind_of_image_reference(tmp_path, image_root):
    absolute = _write_image(tmp_path / "elsewhere" / "abs.png")
    crack = _crack_mask()
    tasks = [
        _task(1, str(absolute), _annotation(11, [_choices("Free")], "2024-01-02T00:00:00Z")),
        _task(
            2,
            "/data/local-files/?d=rel/path.png",
            _annotation(12, [_brush(crack, "Crack")], "2024-01-02T00:00:00Z"),
        ),
        _task(3, "/data/upload/3/x.png", _annotation(13, [_choices("Uneven")], "2024-01-02Z")),
    ]
    export = _write_export(tmp_path, tasks)

    dataset = load_label_studio_export(export, image_root=image_root)

    samples = {s.key: s for s in dataset.samples}
    assert set(samples) == {"1", "2", "3"}
    assert samples["1"].image == absolute
    assert samples["2"].image == image_root / "rel" / "path.png"
    assert samples["3"].image == image_root / "media" / "upload" / "3" / "x.png"
    assert set(dataset.classes) == {"Free", "Crack", "Uneven"}


def test_export_brush_region_makes_a_class_and_decodes_to_the_mask(tmp_path, image_root):
    crack = _crack_mask()
    tasks = [
        _task(
            2,
            "/data/local-files/?d=rel/path.png",
            _annotation(12, [_brush(crack, "Crack")], "2024-01-02T00:00:00Z"),
        )
    ]

    dataset = load_dataset(_write_export(tmp_path, tasks), image_root=image_root)

    (sample,) = dataset.samples
    assert sample.classes == ("Crack",)
    assert sample.has_mask("Crack")
    decoded = sample.mask("Crack", (HEIGHT, WIDTH))
    assert decoded.dtype == bool
    np.testing.assert_array_equal(decoded, crack)


def test_export_two_brush_regions_of_one_label_are_merged(tmp_path, image_root):
    top, bottom = np.zeros((HEIGHT, WIDTH), bool), np.zeros((HEIGHT, WIDTH), bool)
    top[1:3, 2:6] = True
    bottom[9:11, 10:18] = True
    regions = [_choices("Crack"), _brush(top, "Crack"), _brush(bottom, "Crack")]
    tasks = [_task(5, "/data/upload/3/x.png", _annotation(1, regions, "2024-01-02Z"))]

    (sample,) = load_label_studio_export(
        _write_export(tmp_path, tasks), image_root=image_root
    ).samples

    assert sample.classes == ("Crack",)
    np.testing.assert_array_equal(sample.mask("Crack", (HEIGHT, WIDTH)), top | bottom)


def test_export_skips_cancelled_and_takes_the_newest_annotation(tmp_path, image_root):
    tasks = [
        _task(
            1,
            "/data/upload/3/x.png",
            _annotation(21, [_choices("Crack")], "2024-01-01T00:00:00Z", was_cancelled=True),
        ),
        _task(
            2,
            "/data/local-files/?d=rel/path.png",
            # The newer annotation has the lower id: update time decides, not id.
            _annotation(31, [_choices("Uneven")], "2024-03-01T10:00:00Z"),
            _annotation(30, [_choices("Free")], "2024-03-02T09:00:00Z"),
        ),
    ]

    dataset = load_label_studio_export(_write_export(tmp_path, tasks), image_root=image_root)

    assert [s.key for s in dataset.samples] == ["2"]
    assert dataset.samples[0].classes == ("Free",)
    assert dataset.classes == ("Free",)


def test_export_with_only_skipped_tasks_raises(tmp_path, image_root):
    cancelled = _annotation(1, [_choices("Crack")], "2024-01-01Z", was_cancelled=True)
    tasks = [_task(1, "/data/upload/3/x.png", cancelled), _task(2, "/data/upload/3/x.png")]

    with pytest.raises(DatasetError, match="no task"):
        load_label_studio_export(_write_export(tmp_path, tasks), image_root=image_root)


def test_export_remote_image_asks_for_image_root(tmp_path):
    annotation = _annotation(1, [_choices("Crack")], "2024-01-01Z")
    tasks = [_task(1, "https://example.com/images/x.png", annotation)]

    with pytest.raises(DatasetError, match="--image-root"):
        load_label_studio_export(_write_export(tmp_path, tasks))


def test_export_missing_local_file_asks_for_image_root(tmp_path):
    annotation = _annotation(1, [_choices("Crack")], "2024-01-01Z")
    tasks = [_task(1, "/data/local-files/?d=rel/absent.png", annotation)]

    with pytest.raises(DatasetError, match="--image-root"):
        load_label_studio_export(_write_export(tmp_path, tasks), image_root=tmp_path)


def test_export_that_is_not_a_task_list_raises(tmp_path):
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({"tasks": []}))

    with pytest.raises(DatasetError, match="list of tasks"):
        load_label_studio_export(path)


def test_export_unknown_background_class_raises(tmp_path, image_root):
    tasks = [_task(1, "/data/upload/3/x.png", _annotation(1, [_choices("Crack")], "2024-01-01Z"))]

    with pytest.raises(DatasetError, match="background class"):
        load_dataset(_write_export(tmp_path, tasks), ["Free"], image_root=image_root)


def test_stratified_folds_cover_everything_once_with_even_shares(tmp_path):
    from worker.data.dataset import stratified_folds

    samples = [
        Sample(tmp_path / f"{c}{i}.png", (c,), key=f"{c}/{i}")
        for c, n in (("A", 23), ("B", 7), ("Free", 50))
        for i in range(n)
    ]
    parts = stratified_folds(samples, 5, seed=1)
    keys = [s.key for part in parts for s in part]
    assert sorted(keys) == sorted(s.key for s in samples)
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    for part in parts:
        assert sum(s.classes == ("B",) for s in part) >= 1
    assert [s.key for s in stratified_folds(samples, 5, seed=1)[2]] == [s.key for s in parts[2]]
    with pytest.raises(DatasetError, match="at least 2 folds"):
        stratified_folds(samples, 1)
