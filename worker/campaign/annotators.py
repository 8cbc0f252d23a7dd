"""The three annotators a campaign replays on every batch, side by side: what each one costs.

- ``paint``: every image with objects painted by hand, ``minutes_manual`` each (the baseline).
- ``clicks``: Label Studio's SAM2-backend workflow: no pre-annotation; each object (a connected
  part of a class's mask) is clicked, a mask answering each click, until the mask is accepted
  (IoU >= ``ACCEPT_IOU``) or ``max_clicks`` are spent; then it is painted, at its share of the
  image's by-hand minutes. The clicks are ``camsam eval --clicks``'s protocol and the masks the
  current version's answer to Label Studio's interactive requests (its click model).
- ``camsam``: the pre-annotation through the gate is reviewed; a class whose shown mask is
  accepted is done, the other classes' objects are clicked as ``clicks`` does; a false mask is
  reviewed and deleted, a wrong class relabelled (``labelling_cost``'s rules).

Each click costs ``seconds_per_click`` (docs/campaign.md says where the default comes from).
"""

from __future__ import annotations

from collections.abc import Sequence

from worker.campaign.options import CampaignOptions
from worker.contract.defaults import ACCEPT_IOU
from worker.data.images import load_image
from worker.evaluation.clicks import click_object
from worker.evaluation.evaluate import ImageScore
from worker.pipeline.pipeline import Pipeline
from worker.pipeline.simulated_clicks import objects

ANNOTATORS = ("paint", "clicks", "camsam")


def batch_minutes(
    pipeline: Pipeline,
    samples: Sequence,
    scores: Sequence[ImageScore],
    options: CampaignOptions,
) -> dict:
    """Minutes of each annotator on a batch, and what the clicking took. An image with a
    ground-truth mask is an object image, whether the version knows its class or not."""
    minutes = dict.fromkeys(ANNOTATORS, 0.0)
    clicks = {"objects": 0, "clicks": 0, "accepted": 0, "painted": 0}
    for sample, score in zip(samples, scores, strict=True):
        if not any(sample.has_mask(c) for c in sample.classes):
            minutes["camsam"] += options.minutes_review * score.false_mask
            continue
        if not score.iou:  # a class the version cannot mask yet: painted by everyone
            for name in ANNOTATORS:
                minutes[name] += options.minutes_manual
            continue
        by_class = _click_classes(pipeline, sample, list(score.iou), options, clicks)
        minutes["paint"] += options.minutes_manual
        minutes["clicks"] += sum(by_class.values())
        accepted = {c for c, v in score.iou.items() if score.shown and v >= ACCEPT_IOU}
        minutes["camsam"] += (
            options.minutes_review * score.shown
            + sum(m for c, m in by_class.items() if c not in accepted)
            + options.minutes_relabel * (set(score.true_classes) != set(score.predicted_classes))
        )
    return {"minutes": minutes, "clicking": clicks}


def _click_classes(
    pipeline: Pipeline, sample, labels: list[str], options: CampaignOptions, tally: dict
) -> dict[str, float]:
    """Minutes to click (and, where clicks fail, paint) each class's objects on one image."""
    image = load_image(sample.image)
    parts = {}
    for label in labels:
        truth = sample.mask(label, image.shape[:2])
        parts[label] = objects(truth) or ([truth] if truth.any() else [])
    share = options.minutes_manual / max(sum(len(p) for p in parts.values()), 1)
    by_class = {}
    for label, found in parts.items():
        spent = 0.0
        for truth in found:
            record = click_object(
                pipeline, image, label, truth, options.max_clicks, sample.key, until=ACCEPT_IOU
            )
            reached = record.clicks_to(ACCEPT_IOU, 0)
            used = reached or options.max_clicks
            spent += used * options.seconds_per_click / 60 + (0.0 if reached else share)
            tally["objects"] += 1
            tally["clicks"] += used
            tally["accepted" if reached else "painted"] += 1
        by_class[label] = spent
    return by_class


def click_totals(rounds: Sequence[dict]) -> dict:
    """The annotators' minutes over a campaign's rounds (a round without them, the first,
    costs every annotator its minutes by hand)."""
    totals = dict.fromkeys(ANNOTATORS, 0.0)
    for row in rounds:
        spent = row["batch"].get("annotators") or dict.fromkeys(
            ANNOTATORS, row["batch"]["minutes_by_hand"]
        )
        for name in ANNOTATORS:
            totals[name] += spent[name]
    return totals
