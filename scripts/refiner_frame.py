"""Does the learned refiner's place in the frame help on a dataset? Out of fold, per class.

    python scripts/refiner_frame.py DATA_DIR --model-dir MODELS [--split SPLIT.json]
        [--background-class NAME] [--group auto|none|REGEX]

Fits the refiner the way training does, on the training part of SPLIT with the model's current
version: each class's trees are fitted on one half of the images (whole groups on each side) and
judged on the other, reading the place in the frame and not, and the best mean IoU of each way
is printed with the choice training would make (``FRAME_MARGIN``).
"""

from __future__ import annotations

import argparse
import json
import time

from worker.cli.datasets import load_split
from worker.contract.store import ModelDir
from worker.data.dataset import load_dataset
from worker.data.groups import groups_for
from worker.pipeline.classifier import Classifier
from worker.training.learned_refiner import fit_learned_refiner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--split")
    parser.add_argument("--background-class", action="append", default=[])
    parser.add_argument("--group", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dataset = load_dataset(args.data, args.background_class)
    keys = load_split(args.split, "train")
    if keys is not None:
        dataset = dataset.subset(keys)
    groups = groups_for(dataset.samples, args.group)
    classifier = Classifier.load(ModelDir(args.model_dir).current_path())
    started = time.perf_counter()
    refiner, quality, frame = fit_learned_refiner(
        classifier, dataset.samples, seed=args.seed, grouping=groups.grouping
    )
    seconds = time.perf_counter() - started
    print(f"{len(dataset.samples)} training images, {groups.count} groups ({groups.by})")
    for label, figures in frame.items():
        chosen = "reads the frame" if refiner.classes[label].frame else "blind to the frame"
        print(
            f"{label:<12} without {figures['without']:.3f}  with {figures['with']:.3f}  -> {chosen}"
        )
    print(json.dumps({"seconds": round(seconds, 1), "frame": frame, "groups": groups.count}))


if __name__ == "__main__":
    main()
