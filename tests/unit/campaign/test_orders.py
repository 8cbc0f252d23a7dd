"""The campaign's orders: each picks the next batch from the pool as its docstring says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.campaign.options import ORDER_NAMES
from worker.campaign.orders import (
    ORDERS,
    OrderContext,
    by_arrival,
    by_balance,
    by_random,
    by_score,
    read_arrival,
)
from worker.contract.errors import CamsamError
from worker.data.dataset import Sample
from worker.evaluation.evaluate import ImageScore


def _samples(rows):
    return [Sample(Path(f"/d/{name}.png"), classes, key=name) for name, classes in rows]


SAMPLES = _samples(
    [
        ("tile2_a", ("Crack",)),
        ("tile1_b", ("Free",)),
        ("tile1_a", ("Crack",)),
        ("tile3_a", ("Free",)),
        ("tile2_b", ("Free",)),
        ("tile3_b", ("Crack",)),
    ]
)
SCORES = {
    s.key: ImageScore(s.key, s.classes, s.classes, score=score)
    for s, score in zip(SAMPLES, (0.9, 0.1, 0.5, 0.3, 0.2, 0.8), strict=True)
}
POOL = [s.key for s in SAMPLES]


def test_score_takes_the_lowest_scores_first():
    assert by_score(POOL, SCORES, 3, OrderContext(SAMPLES, 0, None)) == [
        "tile1_b",
        "tile2_b",
        "tile3_a",
    ]


def test_random_is_a_fixed_shuffle_whatever_the_scores():
    context = OrderContext(SAMPLES, 7, None)
    first = by_random(POOL, SCORES, 6, context)
    assert sorted(first) == sorted(POOL)
    assert by_random(POOL[::-1], {}, 6, OrderContext(SAMPLES, 7, None)) == first
    assert by_random(POOL, SCORES, 6, OrderContext(SAMPLES, 8, None)) != first


def test_arrival_takes_file_names_in_order_and_whole_groups():
    assert by_arrival(POOL, SCORES, 3, OrderContext(SAMPLES, 0, None)) == [
        "tile1_a",
        "tile1_b",
        "tile2_a",
    ]
    grouped = OrderContext(SAMPLES, 0, r"tile\d")
    assert by_arrival(POOL, SCORES, 3, grouped) == [
        "tile1_a",
        "tile1_b",
        "tile2_a",
        "tile2_b",
    ]


def test_arrival_compares_the_numbers_in_file_names_as_numbers():
    samples = _samples([("num_10", ("Free",)), ("num_9", ("Free",)), ("num_100", ("Free",))])
    context = OrderContext(samples, 0, None)
    assert by_arrival([s.key for s in samples], {}, 3, context) == ["num_9", "num_10", "num_100"]


def test_an_arrival_file_sets_the_order_and_its_lists_are_groups(tmp_path):
    path = tmp_path / "arrival.json"
    path.write_text(json.dumps([["tile3_b", "tile1_a"], "tile2_b", ["tile2_a", "tile3_a"]]))
    context = OrderContext(SAMPLES, 0, None, read_arrival(str(path)))
    # tile1_b is not listed: it comes last; a batch of 1 still takes its whole first group
    # (within a group, by name).
    assert by_arrival(POOL, SCORES, 1, context) == ["tile1_a", "tile3_b"]
    assert by_arrival(POOL, SCORES, 3, context) == ["tile1_a", "tile3_b", "tile2_b"]
    assert by_arrival(POOL, SCORES, 6, context)[-1] == "tile1_b"
    path.write_text(json.dumps({"tile1_a": 1}))
    with pytest.raises(CamsamError, match="a list of keys"):
        read_arrival(str(path))
    path.write_text("[[1, 2]]")
    with pytest.raises(CamsamError, match="must be a string"):
        read_arrival(str(path))
    with pytest.raises(CamsamError, match="cannot read arrival file"):
        read_arrival(str(tmp_path / "missing.json"))
    with pytest.raises(CamsamError, match=r"2 images that are not in the campaign's pool"):
        OrderContext(SAMPLES, 0, None, [["tile1_a", "Tile1_B"], ["held/out.png"]])


def test_balance_takes_each_predicted_class_set_in_turn():
    chosen = by_balance(POOL, SCORES, 4, OrderContext(SAMPLES, 0, None))
    assert chosen == ["tile1_b", "tile1_a", "tile2_b", "tile3_b"]


def test_the_parser_offers_exactly_the_registered_orders():
    assert tuple(ORDERS) == ORDER_NAMES
