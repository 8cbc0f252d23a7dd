"""The click model alone, on a split: fitted on the training part, clicked on the test part.

Training fits the click model beside the classifier (``camsam train``); this fits only it, which
takes minutes rather than the classifier's half hour, so that folds and variants can be compared.
The clicks are ``camsam eval --clicks``'s; the classifier plays no part in a click model's answer.

    python docs/click_model.py ../shared/data/magnetic-tile splits/magnetic-tile-tiles.json \\
        --background-class Free --clicks 1,20
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

from worker.cli.datasets import load_split
from worker.data.dataset import load_dataset
from worker.data.groups import groups_for
from worker.evaluation.clicks import evaluate_clicks, format_clicks
from worker.pipeline.pipeline import Pipeline
from worker.pipeline.segmenters.cam import CamSegmenter
from worker.training.click_model import fit_click_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("split", help="a camsam split file: fitted on train, clicked on test")
    parser.add_argument("--background-class", action="append", default=[])
    parser.add_argument("--clicks", default="1,20", help="comma-separated click budgets")
    parser.add_argument("--out", help="the reports as JSON")
    args = parser.parse_args()
    dataset = load_dataset(args.data, args.background_class)
    train = dataset.subset(load_split(args.split, "train"))
    test = dataset.subset(load_split(args.split, "test"))
    started = time.perf_counter()
    grouping = groups_for(train.samples, "auto").grouping  # as training groups them
    model, figures = fit_click_model(train.samples, grouping=grouping, progress=True)
    print(f"fitted in {time.perf_counter() - started:.0f} s: {figures}")
    if model is None:
        raise SystemExit("too few images with masks to fit a click model")
    # The click model answers before any CAM is asked for: no classifier is needed.
    nobody = SimpleNamespace(spec=SimpleNamespace(version="click model only", classes=()))
    pipeline = Pipeline(nobody, CamSegmenter(clicker=model))
    reports = {"fit": figures}
    for budget in (int(n) for n in args.clicks.split(",")):
        started = time.perf_counter()
        reports[budget] = evaluate_clicks(pipeline, test, budget)
        print(format_clicks(reports[budget]))
        print(f"{time.perf_counter() - started:.0f} s")
    if args.out:
        with open(args.out, "w") as out:
            json.dump(reports, out, indent=1)


if __name__ == "__main__":
    main()
