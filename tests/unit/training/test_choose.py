"""Choosing the recipe: candidates tried on the grouped validation share, within the budget."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import worker.training.choose as choose
from worker.data.dataset import load_dataset
from worker.training.classifier import TrainConfig

SMALL = (
    {"input": "flat", "image_size": 32},
    {"input": "rgb", "image_size": 32},
    {"input": "rgb", "image_size": 48},
)


@pytest.fixture(scope="module")
def hues(tmp_path_factory):
    """Two classes told apart by hue alone, at one gray level: the image as it is shows them,
    the ``flat`` input (gray and its local differences) cannot."""
    root = tmp_path_factory.mktemp("hues")
    rng = np.random.default_rng(0)
    colours = {"Reddish": (180, 90, 90), "Bluish": (60, 124, 230)}  # both gray 116.9
    for name, colour in colours.items():
        (root / name).mkdir()
        for k in range(24):
            noise = rng.normal(0, 25, (40, 40, 1))
            pixels = np.clip(np.array(colour, np.float32) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name.lower()}_{k:02d}.png")
    return load_dataset(root)


def base(**changes) -> TrainConfig:
    recipe = TrainConfig(batch_size=8, pretrained="none", tune_masks=False, progress=False)
    return TrainConfig(**{**recipe.__dict__, **changes})


def test_the_trials_choose_the_input_that_sees_the_classes(hues, monkeypatch):
    monkeypatch.setattr(choose, "CANDIDATES", SMALL)
    monkeypatch.setattr(choose, "_epoch_seconds", lambda dataset, base, size: 1.0)
    recipe = choose.choose_recipe(hues, base(epochs=12), set(), budget=36.0, epochs_given=True)
    choice = recipe.choice
    trials = {t["name"]: t for t in choice["candidates"]}
    assert set(trials) == {"flat 32 px", "rgb 32 px", "rgb 48 px"}
    assert choice["trial_epochs"] == 4  # 35% of 36 s over three candidates of 1 s an epoch
    assert recipe.input == "rgb" and choice["chosen"].startswith("rgb")
    assert trials["flat 32 px"]["val_accuracy"] < trials[choice["chosen"]]["val_accuracy"]
    # Judged on one validation share, the one training itself holds out by groups.
    assert len({t["val_images"] for t in trials.values()}) == 1
    assert all(t["val_groups"] == 48 for t in trials.values())
    assert recipe.epochs == 12


def test_the_users_own_values_are_kept_and_the_rest_chosen(hues, monkeypatch):
    monkeypatch.setattr(choose, "CANDIDATES", SMALL)
    monkeypatch.setattr(choose, "_epoch_seconds", lambda dataset, base, size: 1.0)
    monkeypatch.setattr(choose, "_trial", lambda d, r, c, epochs: trial(c, epochs))
    recipe = choose.choose_recipe(
        hues, base(input="flat", epochs=3), {"input"}, budget=60.0, epochs_given=True
    )
    names = [t["name"] for t in recipe.choice["candidates"]]
    assert names == ["flat 32 px", "flat 48 px"] and recipe.input == "flat"
    assert recipe.epochs == 3  # given: kept


def test_with_everything_given_nothing_is_tried(hues, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a trial ran")

    monkeypatch.setattr(choose, "train", refuse)
    monkeypatch.setattr(choose, "_epoch_seconds", lambda dataset, base, size: 1.0)
    given = base(input="flat", image_size=40)
    recipe = choose.choose_recipe(hues, given, {"input", "image_size"}, 60.0, False)
    assert (recipe.input, recipe.image_size) == ("flat", 40)
    assert recipe.choice["why"] == "the user chose" and recipe.choice["candidates"] == []


def test_a_candidate_the_budget_cannot_try_is_dropped_and_epochs_fit_what_is_left(
    hues, monkeypatch
):
    monkeypatch.setattr(choose, "CANDIDATES", SMALL)
    seconds = {32: 1.0, 48: 100.0}
    monkeypatch.setattr(choose, "_epoch_seconds", lambda dataset, base, size: seconds[size])
    monkeypatch.setattr(choose, "_trial", lambda d, r, c, epochs: trial(c, epochs))
    recipe = choose.choose_recipe(hues, base(epochs=60), set(), budget=40.0, epochs_given=False)
    names = [t["name"] for t in recipe.choice["candidates"]]
    assert names == ["flat 32 px", "rgb 32 px"]  # 48 px: not even four epochs would fit
    assert recipe.choice["trial_epochs"] == 7
    assert choose.MIN_EPOCHS <= recipe.epochs <= int(40 * choose.FINAL_SHARE)


def trial(candidate, epochs: int) -> dict:
    accuracy = {"flat": 0.75, "rgb": 0.7}[candidate.input]
    return {
        "name": candidate.name,
        "val_accuracy": accuracy,
        "val_loss": 0.5,
        "val_images": 20,
        "seconds": 0.0,
    }


def test_the_winner_is_the_most_accurate_and_within_one_image_the_lowest_loss():
    trials = [
        {"name": "a", "val_accuracy": 0.80, "val_loss": 0.6, "val_images": 20},
        {"name": "b", "val_accuracy": 0.75, "val_loss": 0.4, "val_images": 20},
        {"name": "c", "val_accuracy": 0.70, "val_loss": 0.1, "val_images": 20},
    ]
    assert choose._winner(trials)["name"] == "b"  # 0.05 is one image of 20
    trials[1]["val_accuracy"] = 0.70
    assert choose._winner(trials)["name"] == "a"


def test_pretrained_weights_go_to_the_candidates_that_see_the_image_as_it_is(hues, monkeypatch):
    monkeypatch.setattr(choose, "_epoch_seconds", lambda dataset, base, size: 1.0)
    found = choose._candidates(hues, base(pretrained="weights.safetensors"), set(), True)
    starts = {c.name: c.pretrained for c in found}
    assert starts == {
        "flat 128 px": "none",
        "rgb 128 px, pretrained": "weights.safetensors",
        "rgb 224 px, pretrained": "weights.safetensors",
    }
