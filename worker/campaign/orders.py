"""The orders in which a campaign's annotators take the next images.

An order picks the next ``batch`` keys of the unlabelled pool from this round's predictions
(``ImageScore`` per key: its prediction score and predicted classes). Each is a small function,
named in ``ORDERS``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from worker.contract.errors import CamsamError
from worker.data.dataset import Sample, group_by_pattern, natural_key
from worker.evaluation.evaluate import ImageScore

Order = Callable[[list[str], dict[str, ImageScore], int, "OrderContext"], list[str]]


class OrderContext:
    """What orders may need besides the round's predictions: the samples, a fixed shuffle and
    the order of arrival (file names, or ``arrival``: groups of keys in the order they came)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        seed: int,
        group: str | None,
        arrival: list[list[str]] | None = None,
    ) -> None:
        keys = [s.key for s in samples]
        self.shuffled = {k: n for n, k in enumerate(random.Random(seed).sample(keys, len(keys)))}
        by_name = sorted(samples, key=lambda s: (natural_key(s.image.name), s.key))
        self.group_of = group_by_pattern(group) if group else None
        if arrival is not None:  # listed groups first, in their order; the rest by name after
            listed = {key: n for n, members in enumerate(arrival) for key in members}
            unknown = sorted(set(listed) - set(keys))
            if unknown:
                raise CamsamError(
                    f"the arrival file names {len(unknown)} images that are not in the "
                    f"campaign's pool, e.g. {unknown[:3]}: name them as a split file does "
                    f"(e.g. {keys[:1]}), and only images of the pool (a split's train part)"
                )
            by_name.sort(key=lambda s: listed.get(s.key, len(arrival)))
            self.group_of = lambda s: listed.get(s.key, f"\0{s.key}")
        self.arrival = {s.key: n for n, s in enumerate(by_name)}
        self.samples = {s.key: s for s in samples}


def read_arrival(path: str) -> list[list[str]]:
    """An arrival file: a JSON list whose items are image keys (as a split file names them) or
    lists of keys that arrived together (one part, batch or patient).

    Raises:
        CamsamError: the file cannot be read or is not such a list.
    """
    try:
        items = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise CamsamError(f"cannot read arrival file {path}: {error}") from error
    if not isinstance(items, list):
        raise CamsamError(f"arrival file {path}: expected a list of keys or of lists of keys")
    groups = [item if isinstance(item, list) else [item] for item in items]
    if not all(isinstance(key, str) for members in groups for key in members):
        raise CamsamError(f"arrival file {path}: every key must be a string")
    return groups


def by_random(pool: list[str], scores: dict[str, ImageScore], batch: int, ctx: OrderContext):
    """A fixed shuffle (seeded): the campaign without camsam's say."""
    return sorted(pool, key=ctx.shuffled.__getitem__)[:batch]


def by_score(pool: list[str], scores: dict[str, ImageScore], batch: int, ctx: OrderContext):
    """camsam's prediction score, lowest first: the order the README tells users to label in."""
    return sorted(pool, key=lambda k: (scores[k].score, ctx.shuffled[k]))[:batch]


def by_arrival(pool: list[str], scores: dict[str, ImageScore], batch: int, ctx: OrderContext):
    """File-name order (numbers as numbers: images taken one after another arrive together),
    or an arrival file's; with groups (a pattern's, or the file's), whole groups at a time (new
    parts arriving), so a batch may run over ``batch`` to finish its last group."""
    ordered = sorted(pool, key=ctx.arrival.__getitem__)
    if ctx.group_of is None:
        return ordered[:batch]
    groups: dict[str, list[str]] = {}
    for key in ordered:
        groups.setdefault(ctx.group_of(ctx.samples[key]), []).append(key)
    chosen: list[str] = []
    for members in groups.values():
        if len(chosen) >= batch:
            break
        chosen += members
    return chosen


def by_balance(pool: list[str], scores: dict[str, ImageScore], batch: int, ctx: OrderContext):
    """Lowest score first within each predicted class set, the sets taken in turn, so no class
    is starved of labels by a score that favours another."""
    queues: dict[tuple, list[str]] = {}
    for key in sorted(pool, key=lambda k: (scores[k].score, ctx.shuffled[k])):
        queues.setdefault(tuple(sorted(scores[key].predicted_classes)), []).append(key)
    chosen: list[str] = []
    while len(chosen) < batch and any(queues.values()):
        for members in queues.values():
            if members and len(chosen) < batch:
                chosen.append(members.pop(0))
    return chosen


ORDERS: dict[str, Order] = {
    "random": by_random,
    "score": by_score,
    "arrival": by_arrival,
    "balance": by_balance,
}
