"""The recipe, chosen on the project's own images when the user does not choose it.

A new project's images may be surfaces, cells or products: which input (the image as it is, or
``flat``) and which resolution serve them is measured, not assumed. A few candidates are each
trained briefly on the training side of the validation split :func:`train` itself makes (whole
groups of near-duplicates on one side), judged on its other side, and the winner is trained in
full with what is left of the time budget. The budget is a target: the trials' epochs and the
winner's are sized from a timed step of each candidate, so it holds to within the estimate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from worker.data.dataset import Dataset
from worker.pipeline.classifier import create_model
from worker.pipeline.pretrained import resolve_start
from worker.training.classifier import MIN_STEPS_PER_EPOCH, TrainConfig, train

# What the measurements in docs/quality.md and docs/datasets.md say matters: the input mode and
# the resolution. 224 px with the image as it is is also what ImageNet weights expect.
CANDIDATES = (
    {"input": "flat", "image_size": 128},
    {"input": "rgb", "image_size": 128},
    {"input": "rgb", "image_size": 224},
)
CHOSEN = ("input", "image_size")  # the fields the choice sets; a user's value is kept
TRIAL_SHARE = 0.35  # of the budget, for the trials; the rest trains the winner
MIN_TRIAL_EPOCHS = 4
MAX_TRIAL_EPOCHS = 15
MIN_EPOCHS = 10  # the winner's, whatever the budget: fewer would not settle the schedule
FINAL_SHARE = 0.8  # of the time left, for the winner's epochs (mask tuning takes the rest)


@dataclass(frozen=True)
class Candidate:
    input: str
    image_size: int
    pretrained: str | None  # None: the run's start (the hub's weights when they can be had)
    epoch_seconds: float  # estimated, from a timed step

    @property
    def name(self) -> str:
        start = "" if self.pretrained == "none" else ", pretrained"
        return f"{self.input} {self.image_size} px{start}"


def choose_recipe(
    dataset: Dataset,
    base: TrainConfig,
    given: set[str],
    budget: float,
    epochs_given: bool,
    say: Callable[[str], None] | None = None,
) -> TrainConfig:
    """``base`` with the input and resolution that won on ``dataset`` (those in ``given``, the
    user's, are kept), its epochs sized to what is left of ``budget`` seconds unless
    ``epochs_given``, and the trials recorded in ``choice`` (``say`` hears of each as it ends).
    With one candidate left there is nothing to try: it is the recipe (its choice says why)."""
    started = time.perf_counter()
    weights = resolve_start(base.arch, base.pretrained).pretrained is not None
    candidates = _candidates(dataset, base, given, weights)
    trial_epochs = _trial_epochs(candidates, budget)
    while len(candidates) > 1 and trial_epochs < MIN_TRIAL_EPOCHS:
        candidates = sorted(candidates, key=lambda c: c.epoch_seconds)[:-1]  # the costliest
        trial_epochs = _trial_epochs(candidates, budget)
    if len(candidates) == 1:
        (only,) = candidates
        reason = "the user chose" if given >= set(CHOSEN) else "the only one within the budget"
        chosen = _final(base, only)
        epochs = base.epochs if epochs_given else _final_epochs(only, budget, started, base)
        record = {"chosen": only.name, "why": reason, "budget_s": budget, "candidates": []}
        return replace(chosen, epochs=epochs, choice=record)
    say = say or (lambda text: None)
    say(f"trying {len(candidates)} recipes, {trial_epochs} epochs each, on the validation share")
    trials = []
    for candidate in candidates:
        trials.append(_trial(dataset, _as_recipe(base, candidate), candidate, trial_epochs))
        say(_describe_trial(trials[-1], trial_epochs))
    winner = _winner(trials)
    best = candidates[trials.index(winner)]
    epochs = base.epochs if epochs_given else _final_epochs(best, budget, started, base)
    record = {
        "chosen": best.name,
        "why": "best validation accuracy (ties within one image: lowest validation loss)",
        "budget_s": budget,
        "trial_epochs": trial_epochs,
        "trial_seconds": round(time.perf_counter() - started, 1),
        "candidates": trials,
    }
    return replace(_final(base, best), epochs=epochs, choice=record)


def _candidates(dataset: Dataset, base: TrainConfig, given: set[str], weights: bool) -> list:
    """The distinct candidates once the user's own values are put in, each with its estimated
    epoch time; the flat input starts from scratch (ImageNet weights expect the image as it is)."""
    out, seconds = {}, {}
    for changes in CANDIDATES:
        values = {k: getattr(base, k) if k in given else v for k, v in changes.items()}
        size = values["image_size"]
        if size not in seconds:
            seconds[size] = _epoch_seconds(dataset, base, size)
        pretrained = base.pretrained if weights and values["input"] == "rgb" else "none"
        key = (values["input"], size)
        out.setdefault(key, Candidate(values["input"], size, pretrained, seconds[size]))
    return list(out.values())


def _epoch_seconds(dataset: Dataset, base: TrainConfig, size: int, steps: int = 3) -> float:
    """One epoch's estimated seconds at ``size``: a few timed optimiser steps on random images
    (after one untimed), times the steps an epoch has (the training side, 85% of the images)."""
    model = create_model(base.arch, len(dataset.classes), None, base.device, base.pool)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=base.lr)
    images = torch.rand(base.batch_size, 3, size, size, device=base.device)
    targets = torch.randint(len(dataset.classes), (base.batch_size,), device=base.device)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    per_step = (time.perf_counter() - started) / steps
    training_side = len(dataset.samples) * (1 - base.val_fraction)
    images_per_epoch = max(training_side, base.batch_size * MIN_STEPS_PER_EPOCH)
    return per_step * math.ceil(images_per_epoch / base.batch_size)


def _trial_epochs(candidates: list[Candidate], budget: float) -> int:
    total = sum(c.epoch_seconds for c in candidates)
    return min(MAX_TRIAL_EPOCHS, int(budget * TRIAL_SHARE / max(total, 1e-9)))


def _final_epochs(best: Candidate, budget: float, started: float, base: TrainConfig) -> int:
    left = budget - (time.perf_counter() - started)
    fits = int(left * FINAL_SHARE / max(best.epoch_seconds, 1e-9))
    return min(base.epochs, max(MIN_EPOCHS, fits))  # never more than asked for


def _as_recipe(base: TrainConfig, candidate: Candidate) -> TrainConfig:
    return replace(
        base,
        input=candidate.input,
        image_size=candidate.image_size,
        pretrained=candidate.pretrained,
    )


def _final(base: TrainConfig, candidate: Candidate) -> TrainConfig:
    """The winner's recipe: an ``rgb`` one starts as the run asked (so a start without weights
    is said and recorded once, here), ``flat`` from scratch."""
    recipe = _as_recipe(base, candidate)
    return replace(recipe, pretrained=base.pretrained) if candidate.input == "rgb" else recipe


def _trial(dataset: Dataset, recipe: TrainConfig, candidate: Candidate, epochs: int) -> dict:
    """``candidate`` trained for ``epochs`` (no masks, no gate), as judged on the validation
    share training makes."""
    started = time.perf_counter()
    trial = replace(recipe, epochs=epochs, tune_masks=False, gate=False, progress=False)
    metrics = train(dataset, trial).spec.metrics
    return {
        "name": candidate.name,
        "input": candidate.input,
        "image_size": candidate.image_size,
        "pretrained": candidate.pretrained != "none",
        "epoch_seconds_estimated": round(candidate.epoch_seconds, 2),
        "seconds": round(time.perf_counter() - started, 1),
        "val_accuracy": metrics["val_accuracy"],
        "val_loss": metrics["val_loss"],
        "val_images": metrics["val_images"],
        "val_groups": metrics["val_groups"]["groups"],
    }


def _winner(trials: list[dict]) -> dict:
    """The best validation accuracy; among those within one validation image of it, the lowest
    validation loss (on a few dozen images, one image is noise, the loss less so)."""
    best = max(t["val_accuracy"] for t in trials)
    slack = 1.0 / max(trials[0]["val_images"], 1) + 1e-9
    close = [t for t in trials if t["val_accuracy"] >= best - slack]
    return min(close, key=lambda t: t["val_loss"])


def describe_choice(recipe: TrainConfig) -> str:
    """The choice in a line, for the command's output (each trial was said as it ended)."""
    choice = recipe.choice or {}
    return f"recipe: {choice.get('chosen')} ({choice.get('why')}), {recipe.epochs} epochs"


def _describe_trial(trial: dict, epochs: int) -> str:
    return (
        f"  {trial['name']:<24} validation accuracy {trial['val_accuracy']:.3f}, "
        f"loss {trial['val_loss']:.3f} ({epochs} epochs, {trial['seconds']:.0f} s)"
    )
