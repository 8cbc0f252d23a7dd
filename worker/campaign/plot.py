"""The campaign's picture: cumulative minutes against images labelled (by hand, camsam then
painting, clicking alone, camsam then clicking), and how the model's accuracy and accept rate
grow with the labels (on the held-out images where the campaign has some, else on the rest of
the pool), one colour per order."""

from __future__ import annotations

from itertools import accumulate
from pathlib import Path

from worker.campaign.annotators import click_totals


def plot_campaign(report: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    figure, (cost, quality) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    held_out = bool(report.get("held_out"))

    def judged_on(row: dict) -> dict | None:
        return row.get("held_out") if held_out else (row if "accuracy" in row else None)

    for colour, (order, state) in zip(colours, report["orders"].items(), strict=False):
        rounds = state["rounds"]
        labelled = list(accumulate(r["batch"]["images"] for r in rounds))
        hand = list(accumulate(r["batch"]["minutes_by_hand"] for r in rounds))
        assisted = list(accumulate(r["minutes_with_camsam"] for r in rounds))
        cost.plot(labelled, hand, color=colour, linestyle="--", label=f"{order}: by hand")
        cost.plot(
            labelled, assisted, color=colour, linestyle="-.", label=f"{order}: camsam, then paint"
        )
        for name, style in (("clicks", ":"), ("camsam", "-")):
            spent = [click_totals(rounds[: k + 1])[name] for k in range(len(rounds))]
            shown = "clicks (no pre-annotation)" if name == "clicks" else "camsam, then clicks"
            cost.plot(labelled, spent, color=colour, linestyle=style, label=f"{order}: {shown}")
        measured = [(r["labelled"], f) for r in rounds if (f := judged_on(r))]
        quality.plot(
            [n for n, _ in measured],
            [f["accuracy"] for _, f in measured],
            color=colour,
            label=f"{order}: accuracy",
        )
        judged = [(n, f) for n, f in measured if f["accept_rate"] is not None]
        quality.plot(
            [n for n, _ in judged],
            [f["accept_rate"] for _, f in judged],
            color=colour,
            linestyle=":",
            label=f"{order}: accept rate",
        )
    cost.set(xlabel="images labelled", ylabel="cumulative minutes", title="Labelling time")
    quality.set(
        xlabel="labelled images the model learnt from",
        ylabel="on the held-out images" if held_out else "on the unlabelled rest",
        ylim=(0, 1),
        title="Model",
    )
    for axes in (cost, quality):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
