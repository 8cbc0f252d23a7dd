"""A tiny campaign on synthetic data: the report adds up, and a cut-off run resumes the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import worker.campaign.replay as replay
from worker.campaign.options import CampaignOptions
from worker.campaign.plot import plot_campaign
from worker.campaign.replay import run_campaign
from worker.contract.errors import CamsamError
from worker.contract.settings import Settings
from worker.contract.store import ModelDir
from worker.data.dataset import load_dataset
from worker.data.synthetic import write_dataset

OPTIONS = CampaignOptions(start=2, batch=5, seed=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = write_dataset(tmp_path_factory.mktemp("tiny"), per_class=6, seed=1)
    return load_dataset(root, background_classes=["Clean"])


def settings(tmp_path) -> Settings:
    return Settings(
        model_dir=str(tmp_path / "models"),
        train_epochs=1,
        train_image_size=48,
        train_input="flat",
        device="cpu",
    )


def test_a_campaign_labels_every_image_once_and_its_totals_add_up(tiny, tmp_path):
    out = tmp_path / "campaign.json"
    report = run_campaign(tiny, ["random", "score"], settings(tmp_path), OPTIONS, out, False, False)
    assert json.loads(out.read_text()) == report
    for state in report["orders"].values():
        rounds, totals = state["rounds"], state["totals"]
        assert sorted(state["labelled"]) == sorted(s.key for s in tiny.samples)
        assert [r["labelled"] for r in rounds[1:]] == [6, 11, 16]  # 2 a class, then 5 a round
        assert sum(r["batch"]["images"] for r in rounds) == len(tiny.samples)
        assert totals["minutes_by_hand"] == sum(r["batch"]["minutes_by_hand"] for r in rounds)
        assert totals["minutes_by_hand"] == 12.0  # the 12 images with a mask, a minute each
        for row in rounds[1:]:
            actions = row["batch"]["actions"]
            masked = row["batch"]["minutes_by_hand"]  # a minute per image with a mask
            assert actions["accepted"] + actions["redrawn"] + actions["painted"] == masked
            reviewed = masked - actions["painted"] + actions["deleted"]
            redone = actions["redrawn"] + actions["painted"]
            assert row["minutes_with_camsam"] == pytest.approx(0.2 * reviewed + redone)
            assert row["minutes_with_camsam"] <= masked + 0.2 * actions["deleted"]
            assert 0.0 <= row["accuracy"] <= 1.0 and row["version"].startswith("v")
            # The three annotators on the same batch: painting is the by-hand cost; every
            # object of an image with a mask was clicked (or painted after the last click).
            annotators, clicking = row["batch"]["annotators"], row["batch"]["clicking"]
            assert annotators["paint"] == masked
            assert clicking["accepted"] + clicking["painted"] == clicking["objects"] >= masked
            assert clicking["objects"] <= clicking["clicks"] <= 5 * clicking["objects"]
            clicked = clicking["clicks"] * OPTIONS.seconds_per_click / 60
            assert annotators["clicks"] >= clicked
            reviewed_at_most = 0.2 * (masked + actions["deleted"])
            assert annotators["camsam"] <= annotators["clicks"] + reviewed_at_most + 1e-9
            opened = {label for label, cut in row["gate"].items() if cut is not None}
            assert set(row["gate_borrowed"]) <= opened  # a class that borrowed is open
        assert totals["annotators"]["paint"] == totals["minutes_by_hand"]
        spent = totals["annotators"]
        assert totals["saved_against_clicks"] == pytest.approx(
            1 - spent["camsam"] / spent["clicks"]
        )
    # One start and one first version for every order: their first rounds see the same model.
    first = [state["rounds"][1] for state in report["orders"].values()]
    assert first[0]["accuracy"] == first[1]["accuracy"]
    assert report["orders"]["score"]["rounds"][0]["copied_from"] == "random"  # not retrained
    assert report["target_accuracy"] == report["orders"]["random"]["rounds"][-1]["accuracy"]
    plot_campaign(report, tmp_path / "campaign.png")
    assert (tmp_path / "campaign.png").stat().st_size > 10_000


def test_held_out_images_judge_every_round_and_set_the_target(tiny, tmp_path):
    keys = [s.key for s in tiny.samples]
    held_out = tiny.subset(keys[::3])
    pool = tiny.subset([k for k in keys if k not in set(keys[::3])])
    report = run_campaign(
        pool, ["random"], settings(tmp_path), OPTIONS, tmp_path / "c.json", False, False, held_out
    )
    assert report["held_out"]["images"] == len(held_out.samples) == 6
    assert report["accuracy_on"] == "held_out"
    rounds = report["orders"]["random"]["rounds"][1:]
    assert all(0.0 <= r["held_out"]["accuracy"] <= 1.0 for r in rounds)
    assert report["target_accuracy"] == rounds[-1]["held_out"]["accuracy"]
    target = report["target_accuracy"]
    reached = [r["labelled"] for r in rounds if r["held_out"]["accuracy"] >= target]
    expected = reached[0] if target else None  # a target of 0 is no target
    assert report["orders"]["random"]["totals"]["labels_to_reach_target"] == expected
    labelled = set(report["orders"]["random"]["labelled"])
    assert labelled == {s.key for s in pool.samples}  # held-out images are never labelled
    plot_campaign(report, tmp_path / "held-out.png")
    assert (tmp_path / "held-out.png").stat().st_size > 10_000


def test_a_campaign_cut_off_in_training_resumes_where_it_stopped(tiny, tmp_path, monkeypatch):
    straight = settings(tmp_path / "whole")
    whole = run_campaign(tiny, ["score"], straight, OPTIONS, tmp_path / "whole.json", False, False)
    real, calls = replay.train_version, []

    def cut_off(*args, **kwargs):
        outcome = real(*args, **kwargs)  # publishes, then the machine goes down
        calls.append(outcome)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return outcome

    monkeypatch.setattr(replay, "train_version", cut_off)
    out, cut = tmp_path / "cut.json", settings(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        run_campaign(tiny, ["score"], cut, OPTIONS, out, False, False)
    assert len(json.loads(out.read_text())["orders"]["score"]["rounds"]) == 2
    monkeypatch.setattr(replay, "train_version", real)
    resumed = run_campaign(tiny, ["score"], cut, OPTIONS, out, True, False)

    def outline(report):
        return [
            (r["labelled"], r.get("version"), r.get("accuracy"), r["batch"]["images"])
            for r in report["orders"]["score"]["rounds"]
        ]

    assert outline(resumed) == outline(whole)  # the cut-off run's version was discarded
    versions = [ModelDir(Path(s.model_dir) / "score").versions() for s in (cut, straight)]
    assert versions[0] == versions[1]
    assert resumed["orders"]["score"]["labelled"] == whole["orders"]["score"]["labelled"]
    other = CampaignOptions(start=3, batch=5)
    with pytest.raises(CamsamError, match="other options"):
        run_campaign(tiny, ["score"], cut, other, out, True, False)


def test_an_unknown_order_or_an_empty_batch_is_refused(tiny, tmp_path):
    with pytest.raises(CamsamError, match="random, score, arrival, balance"):
        run_campaign(tiny, ["best"], settings(tmp_path), OPTIONS, tmp_path / "c.json")
    with pytest.raises(CamsamError, match="at least 1"):
        run_campaign(tiny, ["score"], settings(tmp_path), CampaignOptions(batch=0), tmp_path / "c")


def test_a_new_campaign_never_starts_from_another_campaigns_models(tiny, tmp_path):
    old = tmp_path / "models" / "score" / "versions"
    old.mkdir(parents=True)
    (old / "v0001.pt").write_bytes(b"a version another campaign left")
    with pytest.raises(CamsamError, match="holds model versions no round of this campaign"):
        run_campaign(tiny, ["score"], settings(tmp_path), OPTIONS, tmp_path / "c.json")
