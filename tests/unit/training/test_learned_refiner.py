"""The fitting's own choices, on pixel features made here: whether the trees may read the place in
the frame, and out-of-fold halves that keep each group whole."""

from __future__ import annotations

import numpy as np

from worker.pipeline.refiners.learned import FEATURES, FRAME_FEATURES, _frame_maps
from worker.training.learned_refiner import _balanced, _choose, _fit, _halves, _out_of_fold

SIZE = (32, 24)  # the working size (width, height) of the made-up examples


def example(rng: np.random.Generator, box: tuple[int, int] | None, cue: float):
    """(features, truth): noise, the frame's own maps, and a 6 x 8 box (at ``box``, a corner)
    that the first feature shows with strength ``cue``; no box: a defect-free example."""
    width, height = SIZE
    truth = np.zeros((height, width), bool)
    if box is not None:
        truth[box[0] : box[0] + 6, box[1] : box[1] + 8] = True
    features = rng.normal(size=(height, width, FEATURES)).astype(np.float32)
    features[..., 0] += cue * truth
    features[..., -FRAME_FEATURES:] = np.stack(_frame_maps(SIZE), axis=-1)
    return features, truth


def corner(rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(0, 24 - 6)), int(rng.integers(0, 32 - 8))


def choose(examples, masked: int, keys=None, seed: int = 0):
    rng = np.random.default_rng(seed)
    samples = keys if keys is not None else list(range(len(examples)))
    grouping = (lambda key: key) if keys is not None else None
    halves = _halves(samples, masked, grouping, rng)
    return _choose(_out_of_fold(examples, masked, halves, rng))


def test_the_place_in_the_frame_is_read_where_it_tells_the_defect():
    rng = np.random.default_rng(0)
    placed = [example(rng, (3, 4), cue=0.5) for _ in range(12)]
    clear = [example(rng, None, cue=0.5) for _ in range(6)]
    (threshold, parts, frame), figures = choose(placed + clear, 12)
    assert frame and figures["with"] > figures["without"] + 0.2, figures


def test_the_place_in_the_frame_is_left_out_where_it_says_nothing():
    rng = np.random.default_rng(1)
    anywhere = [example(rng, corner(rng), cue=3.0) for _ in range(12)]
    clear = [example(rng, None, cue=3.0) for _ in range(6)]
    (threshold, parts, frame), figures = choose(anywhere + clear, 12)
    assert not frame and figures["without"] > 0.5, figures


def test_groups_keep_near_duplicates_from_vouching_for_the_place_in_the_frame():
    """Two objects photographed six times each, each object's defect at its own place: split
    image by image, each held photograph's twins sit in the other half and the place looks
    telling; split by object, it is not."""
    rng = np.random.default_rng(2)
    places = [(2, 2), (15, 22)]
    photographs = [example(rng, places[k], cue=0.5) for k in range(2) for _ in range(6)]
    clear = [example(rng, None, cue=0.5) for _ in range(6)]
    keys = [f"object{k}" for k in range(2) for _ in range(6)] + [f"clear{k}" for k in range(6)]
    (_, _, by_image), flattered = choose(photographs + clear, 12)
    (_, _, by_object), honest = choose(photographs + clear, 12, keys)
    assert by_image and not by_object, (flattered, honest)
    assert flattered["with"] > honest["with"] + 0.2


def test_halves_keep_groups_whole_and_masked_samples_on_both_sides():
    rng = np.random.default_rng(3)
    keys = ["a", "a", "a", "b", "b", "c", "d", "d", "e", "e"]  # the first 6 are masked
    halves = _halves(keys, 6, lambda key: key, rng)
    assert sorted(halves[0] + halves[1]) == list(range(10))
    sides = [{keys[i] for i in half} for half in halves]
    assert not sides[0] & sides[1]
    assert all(any(i < 6 for i in half) for half in halves)
    one = _halves(["a"] * 6 + ["x", "y"], 6, lambda key: key, rng)  # one masked group: by image
    assert all(sum(i < 6 for i in half) == 3 for half in one)


def test_trees_fitted_blind_never_split_on_the_frame():
    rng = np.random.default_rng(4)
    placed = [example(rng, (3, 4), cue=0.5) for _ in range(8)]
    for frame in (False, True):
        trees = _fit(placed, rng, frame=frame)
        splits = trees.nodes["feature_idx"][~trees.nodes["is_leaf"].astype(bool)]
        assert (splits >= FEATURES - FRAME_FEATURES).any() == frame


def test_the_rarer_side_is_repeated_whole_and_the_rest_drawn():
    rng = np.random.default_rng(5)
    inside, outside = np.arange(4.0)[:, None], np.arange(10.0, 20.0)[:, None]
    rows, labels = _balanced(inside, outside, rng)
    assert labels.sum() == 10 and len(rows) == 20
    counts = np.bincount(rows[labels == 1, 0].astype(int))
    assert sorted(counts) == [2, 2, 3, 3]  # two whole copies, two rows drawn once more
    np.testing.assert_array_equal(rows[labels == 0, 0], outside[:, 0])
