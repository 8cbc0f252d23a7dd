"""The campaign's picture: cumulative minutes against images labelled, and how the model's
accuracy and accept rate on the rest of the pool grow with the labels, one colour per order."""

from __future__ import annotations

from itertools import accumulate
from pathlib import Path


def plot_campaign(report: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    figure, (cost, quality) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, (order, state) in zip(colours, report["orders"].items(), strict=False):
        rounds = state["rounds"]
        labelled = list(accumulate(r["batch"]["images"] for r in rounds))
        hand = list(accumulate(r["batch"]["minutes_by_hand"] for r in rounds))
        assisted = list(accumulate(r["minutes_with_camsam"] for r in rounds))
        cost.plot(labelled, hand, color=colour, linestyle="--", label=f"{order}: by hand")
        cost.plot(labelled, assisted, color=colour, label=f"{order}: with camsam")
        measured = [r for r in rounds if "accuracy" in r]
        labels = [r["labelled"] for r in measured]
        quality.plot(
            labels, [r["accuracy"] for r in measured], color=colour, label=f"{order}: accuracy"
        )
        judged = [r for r in measured if r["accept_rate"] is not None]
        quality.plot(
            [r["labelled"] for r in judged],
            [r["accept_rate"] for r in judged],
            color=colour,
            linestyle=":",
            label=f"{order}: accept rate",
        )
    cost.set(xlabel="images labelled", ylabel="cumulative minutes", title="Labelling time")
    quality.set(
        xlabel="labelled images the model learnt from",
        ylabel="on the unlabelled rest",
        ylim=(0, 1),
        title="Model",
    )
    for axes in (cost, quality):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
