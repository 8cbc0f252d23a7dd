"""The mask gate: pre-annotate a class's mask only where it is expected to save time.

A wrong mask costs an annotator a review and a delete (or a redraw); no mask costs nothing over
painting by hand. So each class has a threshold on the mask's evidence (the classifier's
probability for the class times the mask's own score), chosen by training on images the model
did not learn from (:func:`worker.training.gate.calibrate_gate`), and a mask below it is not
shown. ``None`` for a class means abstain: no threshold was seen to save time yet, so its masks
are not shown until a version earns it. A checkpoint without a gate (older ones) shows every
mask.
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
    the classes that borrowed one: a class that earned none takes the threshold the masks of the
    classes that earned theirs earn together, when at least one of its own masks above it was
    accepted and its own accept rate there is not significantly below theirs (a one-sided
    binomial test at ``alpha`` against their rate's lower bound). No class earns one: none is
    lent, so a pool of weak classes never opens what none opens alone."""
    gate = {label: best_threshold(r, saved, lost, z=z) for label, r in rows.items()}
    earned = [row for label, r in rows.items() if gate[label] is not None for row in r]
    cut = best_threshold(earned, saved, lost, z=z) if earned else None
    if cut is None:
        return gate, []
    above = [accepted for value, accepted, _ in earned if value > cut]
    rate = lower_bound(sum(above), len(above), z)
    borrowed = []
    for label, threshold in gate.items():
        own = [accepted for value, accepted, _ in rows[label] if value > cut]
        if threshold is None and sum(own) and binomial_cdf(sum(own), len(own), rate) >= alpha:
            gate[label] = cut
            borrowed.append(label)
    return gate, borrowed


def binomial_cdf(successes: int, trials: int, rate: float) -> float:
    """P(at most ``successes`` of ``trials`` succeed) when each does with ``rate``."""
    return sum(
        math.comb(trials, k) * rate**k * (1 - rate) ** (trials - k) for k in range(successes + 1)
    )


def lower_bound(successes: int, trials: int, z: float) -> float:
    """Wilson's lower confidence bound on a rate seen as ``successes`` of ``trials``."""
    rate = successes / trials
    spread = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials))
    return (rate + z * z / (2 * trials) - spread) / (1 + z * z / trials)
