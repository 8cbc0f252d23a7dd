"""A campaign's options and the names of its orders: torch-free, so the command line's parser
can offer them without loading the models."""

from __future__ import annotations

from dataclasses import dataclass

ORDER_NAMES = ("random", "score", "arrival", "balance")  # worker.campaign.orders.ORDERS


@dataclass(frozen=True)
class CampaignOptions:
    start: int = 5  # images per class labelled by hand before the first version
    batch: int = 50  # images labelled per round
    rounds: int = 0  # rounds after the first version (0: until the pool is empty)
    seed: int = 0
    group: str | None = None  # ``arrival`` takes whole groups (file-name pattern)
    arrival: str | None = None  # a JSON file: the order images (or groups of them) arrived in
    minutes_manual: float = 1.0
    minutes_review: float = 0.2
    minutes_relabel: float = 0.0
    # A click of the interactive annotators: extreme clicking's four clicks took 7 s a box
    # (Papadopoulos et al., ICCV 2017), 1.75 s a click, and a person also looks at each
    # answer before the next (docs/campaign.md, "Clicks").
    seconds_per_click: float = 2.0
    max_clicks: int = 5  # clicks on one object before it is painted by hand
    target_accuracy: float = 0.0  # labels needed to reach it (0: what random ends with)
