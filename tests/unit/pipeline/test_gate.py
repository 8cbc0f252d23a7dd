"""The mask gate: a class's mask is shown only above the threshold its training chose."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from worker.pipeline.classifier import Prediction
from worker.pipeline.gate import (
    best_threshold,
    class_thresholds,
    evidence,
    hypergeometric_cdf,
    lower_bound,
    passes,
)
from worker.pipeline.pipeline import Pipeline, PipelineOptions
from worker.pipeline.segmenters.base import MaskResult


def _mask(label: str, score: float) -> MaskResult:
    return MaskResult(label, np.ones((2, 2), bool), score, "cam")


PREDICTION = Prediction({"Crack": 0.8, "Spot": 0.5}, ("Crack",), 0.8)


def test_evidence_is_the_class_probability_times_the_mask_score():
    assert evidence(PREDICTION, _mask("Crack", 0.5)) == pytest.approx(0.4)
    assert evidence(PREDICTION, _mask("Dent", 0.9)) == 0.0


def test_a_mask_passes_above_its_class_threshold_never_when_abstaining_always_ungated():
    gate = {"Crack": 0.3, "Spot": None}
    assert passes(gate, PREDICTION, _mask("Crack", 0.5))
    assert not passes(gate, PREDICTION, _mask("Crack", 0.25))
    assert not passes(gate, PREDICTION, _mask("Spot", 1.0))
    assert passes(gate, PREDICTION, _mask("Dent", 0.1))  # not gated: an older checkpoint


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([], None),  # nothing seen: abstain
        ([(0.9, False), (0.4, False)], None),  # every mask shown would have been deleted
        ([(0.9, True), (0.6, True)], 0.3),  # all accepted: open down to half the lowest
        ([(0.9, True), (0.8, True), (0.5, False), (0.3, False)], 0.65),  # cut between
        ([(0.9, False), (0.8, True), (0.7, True), (0.2, False)], 0.45),  # one miss is paid for
        ([(1.0, True)] + [(1.0, False)] * 6 + [(0.3, False)], None),  # ties are cut together
    ],
)
def test_the_threshold_saves_the_most_minutes(rows, expected):
    found = best_threshold(alone(rows), saved=0.8, lost=0.2, min_accepted=1)
    assert found == (None if expected is None else pytest.approx(expected))


def test_a_class_opens_only_on_enough_accepted_masks():
    rows = alone([(0.9, True), (0.8, False), (0.7, True), (0.6, True), (0.2, False)])
    assert best_threshold(rows[:1], saved=0.8, lost=0.2) is None  # one lucky mask: abstain
    assert best_threshold(rows[:3], saved=0.8, lost=0.2) is None  # two
    # The cut that saves the most once three are above it (not the 0.85 the best ratio gives).
    assert best_threshold(rows, saved=0.8, lost=0.2) == pytest.approx(0.4)


def test_a_class_opens_on_the_accept_rate_it_can_count_on_not_the_one_it_saw():
    # 3 of 8 accepted: 0.375 is above the 0.2 at which a mask pays for its review, but as few
    # as 0.16 is plausible (Wilson, one-sided 95%), so the class abstains.
    rows = alone([(0.9 - k / 100, k in (1, 4, 7)) for k in range(8)])
    assert best_threshold(rows, saved=0.8, lost=0.2, z=0) == pytest.approx(0.415)  # as seen
    assert best_threshold(rows, saved=0.8, lost=0.2) is None
    assert best_threshold(rows * 3, saved=0.8, lost=0.2) == pytest.approx(0.415)  # 9 of 24
    assert lower_bound(3, 8, 1.645) == pytest.approx(0.161, abs=1e-3)
    assert lower_bound(3, 8, 0) == 3 / 8


def test_accepted_masks_count_once_per_group():
    # Three accepted masks on photographs of one tile are one piece of evidence.
    rows = [(0.9, True, "tile-a"), (0.8, True, "tile-a"), (0.7, True, "tile-a"), (0.2, False, "b")]
    assert best_threshold(rows, saved=0.8, lost=0.2) is None
    assert best_threshold(alone([row[:2] for row in rows]), saved=0.8, lost=0.2) == pytest.approx(
        0.45
    )
    more = rows + [(0.6, True, "tile-c"), (0.5, True, "tile-d")]
    assert best_threshold(more, saved=0.8, lost=0.2) == pytest.approx(0.35)


def alone(rows: list[tuple[float, bool]]) -> list[tuple[float, bool, int]]:
    """Rows whose images are each a group of their own."""
    return [(value, accepted, index) for index, (value, accepted) in enumerate(rows)]


def test_the_pipeline_gates_masks_it_chose_but_not_classes_an_annotator_chose(trained_model_dir):
    from worker.contract.store import ModelDir
    from worker.data.synthetic import make_image

    pipeline = Pipeline.build(ModelDir(trained_model_dir).current_path())
    image, _ = make_image(np.random.default_rng(3), "Scratch", (96, 96))
    labels = pipeline.classifier.spec.mask_classes
    open_gate = replace(pipeline.classifier.spec, gate={})
    pipeline.classifier.spec = open_gate
    shown = pipeline.run(image)
    assert shown.masks  # ungated, the model masks its Scratch
    pipeline.classifier.spec = replace(open_gate, gate=dict.fromkeys(labels))
    held = pipeline.run(image)
    assert held.masks == () and held.held_back  # every class abstains
    assert held.score == pytest.approx(shown.score)  # held back, the mask still scores
    assert pipeline.run(image, labels=["Scratch"]).masks  # the class given: never gated
    ungated = Pipeline(pipeline.classifier, pipeline.segmenter, PipelineOptions(gate=False))
    assert ungated.run(image).masks


def _rows(group: str, *masks: tuple[float, bool]) -> list[tuple[float, bool, str]]:
    return [(value, accepted, f"{group}{k}") for k, (value, accepted) in enumerate(masks)]


A = _rows("a", (0.9, True), (0.85, True), (0.8, True), (0.3, False))  # earns 0.55
B = _rows("b", (0.7, True), (0.65, True), (0.6, True), (0.52, True), (0.2, False))  # earns 0.36


def test_a_class_too_rare_to_earn_a_threshold_borrows_the_one_common_classes_earned():
    rare = _rows("r", (0.6, True), (0.58, True))
    gate, borrowed = class_thresholds(
        {"A": A, "B": B, "Rare": rare, "Unseen": []}, saved=0.8, lost=0.2
    )
    assert gate["A"] == pytest.approx(0.55) and gate["B"] == pytest.approx(0.36)
    # Together A and B cut at 0.41, raised to the lowest of their masks above it: 0.52.
    assert best_threshold(A + B, saved=0.8, lost=0.2) == pytest.approx(0.41)
    assert borrowed == ["Rare"] and gate["Rare"] == pytest.approx(0.52)
    assert gate["Unseen"] is None  # none of its own masks was seen: nothing to judge it by


def test_a_rare_class_is_judged_only_where_the_common_classes_were_seen():
    below = _rows("r", (0.5, True), (0.45, True))  # under every mask that earned the threshold
    gate, borrowed = class_thresholds({"A": A, "B": B, "Rare": below}, saved=0.8, lost=0.2)
    assert borrowed == [] and gate["Rare"] is None
    # Failures below the threshold would never be shown: they do not count against it.
    mixed = _rows("r", (0.6, True), (0.58, True), *[(0.4, False)] * 5)
    assert class_thresholds({"A": A, "B": B, "Rare": mixed}, saved=0.8, lost=0.2)[1] == ["Rare"]


def test_a_rare_class_whose_own_masks_lose_time_or_fall_short_borrows_nothing():
    common = _rows("c", *[(0.9 - k / 100, True) for k in range(10)])
    # 1 of 5 accepted: not significantly below 7 of 9, but it would cost what it saves.
    assert hypergeometric_cdf(1, 5, 8, 14) > 0.05
    nine = _rows("c", *[(0.9 - k / 100, k < 7) for k in range(9)])
    losing = _rows("r", (0.88, True), *[(0.87, False)] * 4)
    assert class_thresholds({"C": nine, "Rare": losing}, saved=0.8, lost=0.2)[1] == []
    # 3 of 6 would pay for itself, but is significantly below 10 of 10.
    assert hypergeometric_cdf(3, 6, 13, 16) < 0.05 < hypergeometric_cdf(2, 3, 12, 13)
    short = _rows("r", *[(0.88, k < 3) for k in range(6)])
    assert class_thresholds({"C": common, "Rare": short}, saved=0.8, lost=0.2)[1] == []
    fine = _rows("r", *[(0.88, k < 2) for k in range(3)])
    assert class_thresholds({"C": common, "Rare": fine}, saved=0.8, lost=0.2)[1] == ["Rare"]


def test_the_exact_test_holds_for_large_counts():
    assert hypergeometric_cdf(2, 3, 18, 19) == pytest.approx(1 - 816 / 969)
    assert 0.0 < hypergeometric_cdf(300, 2000, 900, 5000) < 1e-4  # no overflow
    assert hypergeometric_cdf(5, 5, 10, 20) == pytest.approx(1.0)


def test_weak_classes_pooled_never_open_what_none_opens_alone():
    # Two accepted groups each: neither class earns a threshold, together they would have four.
    rows = {
        "A": _rows("a", (0.9, True), (0.8, True), (0.7, False)),
        "B": _rows("b", (0.85, True), (0.75, True), (0.65, False)),
    }
    assert best_threshold(rows["A"] + rows["B"], saved=0.8, lost=0.2, z=0) is not None
    assert class_thresholds(rows, saved=0.8, lost=0.2, z=0) == ({"A": None, "B": None}, [])
