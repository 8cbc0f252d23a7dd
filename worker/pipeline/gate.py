"""The mask gate: pre-annotate a class's mask only where it is expected to save time.

A wrong mask costs an annotator a review and a delete (or a redraw); no mask costs nothing over
painting by hand. So each class has a threshold on the mask's evidence (the classifier's
probability for the class times the mask's own score), chosen by training on images the model
did not learn from (:func:`worker.training.gate.calibrate_gate`), with the masks of the
segmenter that serves (SAM2's where its weights are configured on the trainer, else the ``cam``
segmenter's: their scores are on different scales), and a mask below it is not shown.
``None`` for a class means abstain: no threshold was seen to save time yet, so its masks are
not shown until a version earns it. A checkpoint without a gate (older ones) shows every mask.
"""

from __future__ import annotations

import math

from worker.contract.defaults import GATE_BORROW_ALPHA, GATE_MIN_ACCEPTED, GATE_Z
from worker.pipeline.classifier import Prediction
from worker.pipeline.segmenters.base import MaskResult


def evidence(prediction: Prediction, mask: MaskResult) -> float:
    """How sure camsam is of this mask: class probability times the mask's own score (SAM2's
    predicted IoU; the ``cam`` segmenter scores a mask by the class probability, so there the
    evidence is the probability squared)."""
    return float(prediction.probabilities.get(mask.label, 0.0)) * float(mask.score)


def passes(gate: dict, prediction: Prediction, mask: MaskResult) -> bool:
    """Whether ``mask`` is shown under ``gate`` (class -> threshold, None: abstain)."""
    if mask.label not in gate:
        return True
    threshold = gate[mask.label]
    return threshold is not None and evidence(prediction, mask) >= threshold


def best_threshold(
    rows: list[tuple[float, bool, object]],
    saved: float,
    lost: float,
    min_accepted: int = GATE_MIN_ACCEPTED,
    z: float = GATE_Z,
) -> float | None:
    """The evidence threshold expected to save the most minutes on masks like ``rows``
    ((evidence, accepted, group of the image) per mask shown): ``saved`` minutes for each
    accepted mask above it, ``lost`` for each other, at the accept rate's lower bound (``z``;
    0: the rate seen) among the masks above. The cut lies halfway to the next lower row (0 below
    the lowest); only a cut with accepted masks from at least ``min_accepted`` groups above it
    counts: photographs of one object are one piece of evidence. None when no threshold is
    expected to save anything (the class abstains)."""
    ordered = sorted(rows, key=lambda row: row[0], reverse=True)
    best, chosen, accepted_above, groups = 0.0, None, 0, set()
    for index, (value, accepted, group) in enumerate(ordered):
        accepted_above += accepted
        if accepted:
            groups.add(group)
        shown = index + 1
        rate = lower_bound(accepted_above, shown, z)
        total = shown * (rate * saved - (1 - rate) * lost)
        below = ordered[index + 1][0] if index + 1 < len(ordered) else 0.0
        # A cut can only fall between two values, and one lucky object is no evidence.
        if below < value and len(groups) >= min_accepted and total > best + 1e-9:
            best, chosen = total, (value + below) / 2
    return chosen


def class_thresholds(
    rows: dict[str, list[tuple[float, bool, object]]],
    saved: float,
    lost: float,
    z: float = GATE_Z,
    alpha: float = GATE_BORROW_ALPHA,
) -> tuple[dict[str, float | None], list[str]]:
    """Each class's threshold from its own masks (``best_threshold`` of ``rows[label]``), and
    the classes that borrowed one.

    A class that earned none may borrow the threshold the masks of the classes that earned
    theirs earn together, raised to the lowest of those masks above it (nothing is lent where
    they were not seen). It borrows when its own masks at or above that threshold would save time
    at the rate they show and that rate is not significantly below theirs there (Fisher's exact
    test, one-sided, at ``alpha``). No class earned one: none is lent, so a pool of weak classes
    never opens what none opens alone."""
    gate = {label: best_threshold(r, saved, lost, z=z) for label, r in rows.items()}
    earned = [row for label, r in rows.items() if gate[label] is not None for row in r]
    return lend(gate, rows, earned, saved, lost, z, alpha)


def lend(
    gate: dict[str, float | None],
    rows: dict[str, list[tuple[float, bool, object]]],
    pool: list[tuple[float, bool, object]],
    saved: float,
    lost: float,
    z: float = GATE_Z,
    alpha: float = GATE_BORROW_ALPHA,
) -> tuple[dict[str, float | None], list[str]]:
    """``gate`` with the threshold ``pool``'s masks earn together (raised to the lowest of them
    above it) lent to each class without one whose own masks ``rows[label]`` at or above it pay
    at their own rate and are not significantly worse (``fewer_by_chance``), and the classes
    lent it; ``gate`` unchanged where the pool earns none."""
    cut = best_threshold(pool, saved, lost, z=z)
    if cut is None:
        return gate, []
    above = [(value, accepted) for value, accepted, _ in pool if value >= cut]
    lent = min(value for value, _ in above)
    hits = sum(accepted for _, accepted in above)
    gate, borrowed = dict(gate), []
    for label, threshold in gate.items():
        own = [accepted for value, accepted, _ in rows[label] if value >= lent]
        own_hits = sum(own)
        pays = own_hits * saved > (len(own) - own_hits) * lost
        if threshold is None and pays and fewer_by_chance(own_hits, len(own), hits, len(above)):
            gate[label] = lent
            borrowed.append(label)
    return gate, borrowed


def fewer_by_chance(
    hits: int, trials: int, other_hits: int, other_trials: int, alpha: float = GATE_BORROW_ALPHA
) -> bool:
    """Whether ``hits`` of ``trials`` could be as few as they are by chance if the rate were the
    same as ``other_hits`` of ``other_trials``: Fisher's exact test, one-sided, at ``alpha``."""
    return hypergeometric_cdf(hits, trials, hits + other_hits, trials + other_trials) >= alpha


def hypergeometric_cdf(at_most: int, draws: int, successes: int, population: int) -> float:
    """P(at most ``at_most`` successes among ``draws`` drawn without replacement from
    ``population`` holding ``successes``), summed in logs so that large counts do not overflow."""

    def log_comb(n: int, k: int) -> float:
        return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)

    low = max(0, draws - (population - successes))
    whole = log_comb(population, draws)
    terms = (
        log_comb(successes, k) + log_comb(population - successes, draws - k) - whole
        for k in range(low, min(at_most, successes, draws) + 1)
    )
    return min(1.0, sum(math.exp(t) for t in terms))


def lower_bound(successes: int, trials: int, z: float) -> float:
    """Wilson's lower confidence bound on a rate seen as ``successes`` of ``trials``."""
    rate = successes / trials
    spread = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials))
    return (rate + z * z / (2 * trials) - spread) / (1 + z * z / trials)
